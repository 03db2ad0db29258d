"""``gsa-search bench pruning``: what early stopping costs a multi-objective search, replayed exactly.

Status: stable. Method (also printed with every result):

1. **Record.** For each seed, one search with *no* pruning: ``gsa_block_v1``, objectives accuracy
   and FLOPs (multiply-accumulates per image, counted before training), random sampler, digits at a
   small image size, the digits recipe with ``--epochs`` epochs on CPU. Every trial's full
   per-epoch validation-accuracy curve and its cost come from the results table (``curve``,
   ``flops``, ``state``); the tables stay under ``--reports-dir`` so ``--replay-only`` can reuse
   them.
2. **Replay.** Training is deterministic on CPU for a given config and seed, so a trial stopped
   after epoch ``e`` would have produced exactly the first ``e`` points of its recorded curve, and
   the random sampler proposes the same configs whatever was pruned before. Each rule is replayed
   on the same sequence, one worker, in trial-number order: trial ``i`` is judged after each epoch
   against trials ``0..i-1`` as that rule left them (full curves if they completed, truncated if
   they were pruned). A trial is never stopped after its last epoch (that would save nothing).
3. **Score.** Per rule and seed: the hypervolume of the accuracy/FLOPs front of the trials that
   *completed* (pruned trials have no final accuracy), reference point (accuracy 0, FLOPs = 1.1 x
   the largest FLOPs in that seed's table), divided by the hypervolume without pruning; compute
   used = epochs actually run, divided by the epochs run without pruning (also weighted by each
   trial's measured seconds per epoch). Mean ± std over the seeds.
4. **Choose.** Our rule is swept over ``OURS_GRID``; the default is the setting that keeps at least
   ``TARGET_HV`` of the unpruned hypervolume for at most ``TARGET_COMPUTE`` of the compute (means
   over seeds) with the best worst-seed hypervolume; it is compared with MOASHA (swept over
   ``MOASHA_GRID``) at the MOASHA setting whose compute is closest. A leave-one-seed-out check
   (choose on two seeds, score on the third) shows how much the choice overfits three seeds.

Failed trials (no curve) are left out of every rule alike and counted in the output. Syne Tune's own
MOASHA is not needed: :class:`gsa_search.pruning.MOASHARule` re-implements it, and its
``syne_tune_literal`` variant (the Syne Tune 0.16 code as written) is scored as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from gsa_search.pareto import hypervolume
from gsa_search.pruning import MOASHARule, ParetoPruningRule, TrialRecord

__all__ = [
    "Recorded",
    "Replay",
    "record_seed",
    "load_recorded",
    "replay",
    "score",
    "evaluate",
    "summarize",
    "choose_default",
    "frontier",
    "leave_one_seed_out",
    "main",
    "OURS_GRID",
    "MOASHA_GRID",
]

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TRIALS = 30
DEFAULT_EPOCHS = 12
DEFAULT_IMAGE_SIZE = 8
TARGET_HV, TARGET_COMPUTE = 0.95, 0.60
REFERENCE_FLOPS_FACTOR = 1.1
COMPUTE_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
OURS_GRID = {
    "grace_epochs": (1, 2, 3),
    "rung_every": (1, 2),
    "min_dominators": (1, 2, 3),
    "margin": (0.0, 0.01, 0.02, 0.05),
}
MOASHA_GRID = {"grace_period": (1, 2, 3), "reduction_factor": (1.5, 2.0, 3.0, 4.0)}

METHOD = (
    "method: per seed, one unpruned search (gsa_block_v1, objectives accuracy+FLOPs, random sampler, digits, CPU) "
    "records every trial's full accuracy curve; each rule is replayed on the same trials in trial-number order "
    "(one worker; a trial stopped after epoch e would have produced the first e points of its deterministic curve). "
    "hv = hypervolume of the completed trials' accuracy/FLOPs front, reference (accuracy 0, FLOPs 1.1 x max FLOPs "
    "of the seed), relative to no pruning; compute = epochs run relative to no pruning (time: weighted by each "
    "trial's measured seconds per epoch); mean ± std over seeds."
)


# --- recording -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One completed trial of a recorded (unpruned) search."""

    key: int
    flops: float
    curve: tuple[float, ...]
    seconds_per_epoch: float

    def record(self, curve: Sequence[float] | None = None, finished: bool = False) -> TrialRecord:
        return TrialRecord(key=self.key, cost={"flops": self.flops}, curve=self.curve if curve is None else curve,
                           finished=finished)


def study_name(seed: int) -> str:
    return f"bench-pruning-seed{seed}"


def record_seed(seed: int, *, trials: int, epochs: int, image_size: int, reports_dir: str | Path,
                progress: bool = False) -> tuple[Path, float]:
    """Run (or resume) the unpruned search of ``seed``; returns its folder and the wall time it took."""
    from .optuna_runner import run_search
    from .settings import SearchSettings

    settings = SearchSettings(
        space="gsa_block_v1", objectives=("accuracy", "flops"), sampler="random", seed=seed, pruner="none",
        dataset="digits", image_size=image_size, recipe={"epochs": epochs, "device": "cpu"}, n_trials=trials,
        study=study_name(seed), reports_dir=str(reports_dir), threads=1,
    )  # fmt: skip
    tic = time.perf_counter()
    result = run_search(settings, progress=progress)
    return result.study_dir, time.perf_counter() - tic


def _read_table(path: str | Path) -> pd.DataFrame:
    from .results import load_results

    path = Path(path)
    if path.is_dir():
        return load_results(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def load_recorded(path: str | Path) -> tuple[list[Recorded], dict[str, Any]]:
    """The completed trials of a saved results table (a study folder or a ``trials.csv``/``.parquet``
    file), in trial-number order, and facts about the table (max FLOPs, skipped trials)."""
    table = _read_table(path).sort_values("trial", kind="stable")
    out: list[Recorded] = []
    skipped: dict[str, int] = {}
    for row in table.itertuples(index=False):
        curve = json.loads(row.curve) if isinstance(row.curve, str) and row.curve else []
        if row.state != "complete" or not curve or not np.isfinite(row.flops):
            skipped[str(row.state)] = skipped.get(str(row.state), 0) + 1
            continue
        seconds = float(row.duration_s) / len(curve) if np.isfinite(row.duration_s) else 1.0
        out.append(Recorded(key=int(row.trial), flops=float(row.flops), curve=tuple(float(v) for v in curve),
                            seconds_per_epoch=seconds))
    flops = pd.to_numeric(table["flops"], errors="coerce")
    meta = {"path": str(path), "trials": int(len(table)), "used": len(out), "skipped": skipped,
            "max_flops": float(flops.max()), "epochs": max((len(t.curve) for t in out), default=0)}
    settings = Path(path) / "search.json"
    if settings.is_file():  # a study folder written by the runner: name the run by its seed
        meta["seed"] = json.loads(settings.read_text()).get("seed")
    return out, meta


# --- replay and score --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Replay:
    """What a rule left: each trial's curve as far as it ran, and whether it was pruned."""

    curves: tuple[tuple[float, ...], ...]
    pruned: tuple[bool, ...]


def replay(trials: Sequence[Recorded], rule: Any | None) -> Replay:
    """Replay ``rule`` (``None``: no pruning) on ``trials`` in order, one worker (see the module docstring)."""
    curves: list[tuple[float, ...]] = []
    pruned: list[bool] = []
    history: list[TrialRecord] = []
    for trial in trials:
        full = trial.curve
        stop = len(full)
        if rule is not None:
            for epoch in range(1, len(full)):  # never after the last epoch
                if not rule.is_rung(epoch):
                    continue
                if rule.decide(trial.record(full[:epoch]), history).prune:
                    stop = epoch
                    break
        curves.append(full[:stop])
        pruned.append(stop < len(full))
        history.append(trial.record(full[:stop], finished=True))
    return Replay(tuple(curves), tuple(pruned))


def score(trials: Sequence[Recorded], result: Replay, *, reference: tuple[float, float]) -> dict[str, float]:
    """Hypervolume of the completed trials' (accuracy, FLOPs) front, epochs run, seconds run."""
    done = [(t.curve[-1], t.flops) for t, p in zip(trials, result.pruned) if not p]
    return {
        "hv": hypervolume(done, ("maximize", "minimize"), reference),
        "epochs": float(sum(len(c) for c in result.curves)),
        "seconds": float(sum(len(c) * t.seconds_per_epoch for t, c in zip(trials, result.curves))),
        "pruned": float(sum(result.pruned)),
    }


def _rule_name(rule: Any | None) -> str:
    if rule is None:
        return "none"
    if isinstance(rule, ParetoPruningRule):
        return f"ours grace={rule.grace_epochs} every={rule.rung_every} k={rule.min_dominators} margin={rule.margin:g}"
    if isinstance(rule, MOASHARule):
        kind = "moasha-literal" if rule.syne_tune_literal else "moasha"
        return f"{kind} grace={rule.grace_period} eta={rule.reduction_factor:g}"
    return type(rule).__name__


def candidate_rules(epochs: int) -> list[Any | None]:
    """No pruning, every setting of ours and of MOASHA in the grids, and Syne Tune's literal MOASHA."""
    rules: list[Any | None] = [None]
    keys = list(OURS_GRID)
    for values in itertools.product(*(OURS_GRID[k] for k in keys)):
        rules.append(ParetoPruningRule(**dict(zip(keys, values)), max_epochs=epochs))
    for grace, eta in itertools.product(MOASHA_GRID["grace_period"], MOASHA_GRID["reduction_factor"]):
        if grace < epochs:
            rules.append(MOASHARule(grace_period=grace, reduction_factor=eta, max_t=epochs))
    rules.append(MOASHARule(grace_period=1, reduction_factor=3.0, max_t=epochs, syne_tune_literal=True))
    return rules


def evaluate(runs: Mapping[Any, tuple[Sequence[Recorded], Mapping[str, Any]]],
             rules: Iterable[Any | None] | None = None) -> pd.DataFrame:
    """One row per (rule, seed): hv/epochs/seconds and their ratios to no pruning."""
    rows = []
    for seed, (trials, meta) in runs.items():
        epochs = max(len(t.curve) for t in trials)
        reference = (0.0, REFERENCE_FLOPS_FACTOR * float(meta["max_flops"]))
        base = score(trials, replay(trials, None), reference=reference)
        for rule in candidate_rules(epochs) if rules is None else rules:
            if isinstance(rule, ParetoPruningRule) and rule.max_epochs is None:
                rule = dataclasses.replace(rule, max_epochs=epochs)
            s = score(trials, replay(trials, rule), reference=reference)
            rows.append({
                "rule": _rule_name(rule), "family": _rule_name(rule).split(" ")[0], "seed": seed,
                "hv_ratio": s["hv"] / base["hv"], "compute_ratio": s["epochs"] / base["epochs"],
                "time_ratio": s["seconds"] / base["seconds"], "pruned": s["pruned"], "trials": len(trials),
                "hv": s["hv"], "epochs_run": s["epochs"], "reference_flops": reference[1],
            })  # fmt: skip
    return pd.DataFrame(rows)


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per rule: mean and std over seeds of the ratios, the worst seed's hv ratio, mean pruned."""
    grouped = per_seed.groupby(["rule", "family"], sort=False)
    summary = grouped.agg(
        hv_mean=("hv_ratio", "mean"), hv_std=("hv_ratio", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0),
        hv_min=("hv_ratio", "min"), compute_mean=("compute_ratio", "mean"),
        compute_std=("compute_ratio", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0),
        time_mean=("time_ratio", "mean"), time_std=("time_ratio", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0),
        pruned_mean=("pruned", "mean"), seeds=("seed", "count"),
    ).reset_index()  # fmt: skip
    return summary


def choose_default(summary: pd.DataFrame) -> tuple[str, bool]:
    """Our setting meeting both targets with the best worst-seed hv (ties: less compute); when none
    meets them, the best mean hv at compute <= target. Returns ``(rule, met_targets)``."""
    ours = summary[summary["family"] == "ours"]
    ok = ours[(ours["hv_mean"] >= TARGET_HV) & (ours["compute_mean"] <= TARGET_COMPUTE)]
    if len(ok):
        best = ok.sort_values(["hv_min", "compute_mean"], ascending=[False, True], kind="stable").iloc[0]
        return str(best["rule"]), True
    cheap = ours[ours["compute_mean"] <= TARGET_COMPUTE]
    pool = cheap if len(cheap) else ours
    best = pool.sort_values(["hv_mean", "compute_mean"], ascending=[False, True], kind="stable").iloc[0]
    return str(best["rule"]), False


def closest_moasha(summary: pd.DataFrame, compute: float) -> str:
    moasha = summary[summary["family"] == "moasha"]
    index = (moasha["compute_mean"] - compute).abs().sort_values(kind="stable").index[0]
    return str(moasha.loc[index, "rule"])


def frontier(summary: pd.DataFrame, budgets: Sequence[float] = COMPUTE_BUDGETS) -> pd.DataFrame:
    """Per compute budget: the best mean hv ratio each family reaches with mean compute <= budget
    (both families tuned on the same seeds, so equally optimistic)."""
    rows = []
    for budget in budgets:
        row: dict[str, Any] = {"compute <=": budget}
        for family in ("ours", "moasha"):
            pool = summary[(summary["family"] == family) & (summary["compute_mean"] <= budget + 1e-12)]
            if len(pool):
                best = pool.sort_values(["hv_mean", "compute_mean"], ascending=[False, True], kind="stable").iloc[0]
                row[f"{family} hv"] = f"{best['hv_mean']:.3f} ± {best['hv_std']:.3f}"
                row[f"{family} setting"] = f"{best['rule'].split(' ', 1)[1]} (compute {best['compute_mean']:.3f})"
            else:
                row[f"{family} hv"], row[f"{family} setting"] = "-", "-"
        rows.append(row)
    return pd.DataFrame(rows)


def leave_one_seed_out(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Choose our setting on all seeds but one, score it on that one."""
    rows = []
    for held in sorted(per_seed["seed"].unique()):
        rest = summarize(per_seed[per_seed["seed"] != held])
        rule, met = choose_default(rest)
        row = per_seed[(per_seed["seed"] == held) & (per_seed["rule"] == rule)].iloc[0]
        rows.append({"held_out_seed": held, "chosen_on_others": rule, "met_targets_on_others": met,
                     "hv_ratio": row["hv_ratio"], "compute_ratio": row["compute_ratio"]})
    return pd.DataFrame(rows)


# --- command line ---------------------------------------------------------------------------------------------


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _table(summary: pd.DataFrame, names: Sequence[str]) -> str:
    rows = []
    for name in names:
        r = summary[summary["rule"] == name].iloc[0]
        rows.append({"rule": name, "hv ratio": _pm(r["hv_mean"], r["hv_std"]), "worst hv": f"{r['hv_min']:.3f}",
                     "compute ratio": _pm(r["compute_mean"], r["compute_std"]),
                     "time ratio": _pm(r["time_mean"], r["time_std"]), "pruned/seed": f"{r['pruned_mean']:.1f}"})
    return pd.DataFrame(rows).to_string(index=False)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gsa-search bench pruning", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="search seeds (default 0 1 2)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"trials per seed (default {DEFAULT_TRIALS})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per trial (default {DEFAULT_EPOCHS})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"digits image size (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--reports-dir", default="reports/bench-pruning",
                        help="where the recorded studies and bench_pruning.csv go (default reports/bench-pruning)")
    parser.add_argument("--replay-only", nargs="+", metavar="PATH", default=None,
                        help="reuse saved results tables (study folders or trials.csv/.parquet files) instead of "
                             "running searches")
    parser.add_argument("--progress", action="store_true", help="show the searches' progress bars")
    args = parser.parse_args(argv)
    for name in ("trials", "epochs", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.epochs < 2 and args.replay_only is None:
        parser.error("--epochs must be at least 2 (a one-epoch trial cannot be stopped early)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Record (or load) the searches, replay every rule, print the tables, write ``bench_pruning.csv``."""
    args = parse_args(argv)
    out = Path(args.reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    runs: dict[Any, tuple[list[Recorded], dict[str, Any]]] = {}
    lines = [METHOD]
    if args.replay_only:
        for i, path in enumerate(args.replay_only):
            trials, meta = load_recorded(path)
            label = meta.get("seed")
            runs[label if label is not None and label not in runs else f"{i}:{Path(path).name}"] = (trials, meta)
        lines.append("replayed saved tables: " + ", ".join(args.replay_only))
    else:
        for seed in args.seeds:
            study_dir, wall = record_seed(seed, trials=args.trials, epochs=args.epochs, image_size=args.image_size,
                                          reports_dir=out, progress=args.progress)
            runs[seed] = load_recorded(study_dir)
            lines.append(f"seed {seed}: recorded {study_dir} in {wall:.0f} s")
        lines.append(f"settings: {args.trials} trials x {args.epochs} epochs, digits {args.image_size}x{args.image_size}, "
                     "CPU, 1 thread")
    for seed, (trials, meta) in runs.items():
        lines.append(f"  {seed}: {meta['used']} completed trials of {meta['trials']} used (left out: "
                     f"{meta['skipped'] or 'none'}), {meta['epochs']} epochs, reference point (accuracy 0, FLOPs "
                     f"{REFERENCE_FLOPS_FACTOR} x {meta['max_flops']:.4g} = {REFERENCE_FLOPS_FACTOR * meta['max_flops']:.4g})")
    record_s = time.perf_counter() - tic
    per_seed = evaluate(runs)
    summary = summarize(per_seed)
    chosen, met = choose_default(summary)
    chosen_row = summary[summary["rule"] == chosen].iloc[0]
    matched = closest_moasha(summary, float(chosen_row["compute_mean"]))
    epochs = max(meta["epochs"] for _, meta in runs.values())
    moasha_default = _rule_name(MOASHARule(grace_period=1, reduction_factor=3.0, max_t=epochs))
    literal = _rule_name(MOASHARule(grace_period=1, reduction_factor=3.0, max_t=epochs, syne_tune_literal=True))
    default_ours = _rule_name(dataclasses.replace(ParetoPruningRule(), max_epochs=epochs))
    names = list(dict.fromkeys(["none", chosen, default_ours, matched, moasha_default, literal]))
    lines += ["", "main comparison (ratios to no pruning, mean ± std over seeds):", _table(summary, names)]
    lines.append(f"\nour setting chosen by the targets (hv >= {TARGET_HV}, compute <= {TARGET_COMPUTE}): {chosen} "
                 f"({'meets both targets' if met else 'NO setting meets both targets; best hv at compute <= target shown'})")
    m = summary[summary["rule"] == matched].iloc[0]
    verdict = "beats" if chosen_row["hv_mean"] > m["hv_mean"] else "does not beat"
    lines.append(f"MOASHA at the closest compute: {matched} (compute {m['compute_mean']:.3f} vs ours "
                 f"{chosen_row['compute_mean']:.3f}); ours {verdict} it on hv ({chosen_row['hv_mean']:.3f} vs "
                 f"{m['hv_mean']:.3f})")
    lines += ["", "best hv ratio each family reaches within a compute budget (mean over seeds):",
              frontier(summary).to_string(index=False)]
    lines += ["", "every setting, sorted by compute:",
              _table(summary, list(summary.sort_values(["family", "compute_mean"], kind="stable")["rule"]))]
    if len(runs) > 2:
        lines += ["", "leave one seed out (choose on the other seeds, score on this one):",
                  leave_one_seed_out(per_seed).to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    summary.to_csv(out / "bench_pruning.csv", index=False)
    per_seed.to_csv(out / "bench_pruning_seeds.csv", index=False)
    lines.append(f"\nwrote {out / 'bench_pruning.csv'} and {out / 'bench_pruning_seeds.csv'}; "
                 f"recording {record_s:.0f} s, replay {time.perf_counter() - tic - record_s:.1f} s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
