"""The ablation runner: every (cell, seed) pair of an :class:`~search_spaces.ablation.AblationStudy`
trained exactly once through the search runners, then compared to the baseline.

Status: new. An ablation is a search whose space enumerates pairs: ``cell =
trial.suggest_categorical("cell", cells)``, ``seed = trial.suggest_int("seed", ...)`` -> the cell's
:class:`~gsa_search.trial.TrialConfig` with recipe seed ``seed`` (seed ``s`` gives the same data
split, initialisation, data order and augmentation in every cell, so differences pair by seed).
Nothing is left to a sampler:

- **Optuna** (default): every pair without a finished trial is enqueued once
  (``study.enqueue_trial({"cell": ..., "seed": ...})``) and the search budget is the number of
  trials the study already counts plus the enqueued ones, so :func:`runners.optuna_runner.run_search`
  runs exactly the queue (workers, storage, failure isolation, dead-worker recovery and the results
  table are its own). Re-running trains nothing that finished: completed and failed pairs are kept,
  pairs left interrupted (Ctrl-C) or dead are enqueued again; with ``retry_failed`` the failed pairs
  are enqueued again too and the budget grows by that many.
- **Ray**: :func:`runners.ray_runner.run_ray_search` with the same space and Optuna's
  ``BruteForceSampler``, which samples each (cell, seed) combination of the space once (running,
  failed and finished trials count as visited) and ``n_trials`` = the number of pairs; seeds must
  therefore be a contiguous range. Resume restores the Ray experiment; a Ray experiment keeps its
  budget, so ``retry_failed`` needs the Optuna backend.

Worker processes rebuild the space from a generated file, ``reports/<study>/ablation_space.py``
(the cells' configs as JSON + the seeds), passed to the runner as ``FILE.py:space``, so a study from
a registered name, a ``.py`` or a ``.toml`` file runs the same way in any process. The study's cells
(names and configs) are stored in the Optuna study: resuming with other cells (a changed study, other
recipe overrides) is refused; other seeds are fine (new pairs run, old ones are reused).

Afterwards the results table (``trials.csv``, one row per trial, with ``cell`` and ``seed``) is
reduced to one run per (cell, seed) -- the completed run if there is one, else the latest -- and
:func:`gsa_search.stats.cell_summary` / :func:`gsa_search.stats.compare_all` compare every cell to
``baseline`` (primary metric: the study's first objective; FLOPs and parameters, deterministic per
cell, exactly). Written beside ``trials.csv``: ``cells.csv`` (per-cell summary), ``ablation.csv``
(comparisons, Holm-adjusted over the study), ``main_effects.csv`` (full designs), ``runs.csv``
(the runs the statistics used) and ``ablation.json`` (study, cells, seeds).

Example:
    >>> import tempfile
    >>> from search_spaces.ablation import AblationStudy, Baseline
    >>> study = AblationStudy(name="tiny", baseline=Baseline(model="proxy_resnet", dataset="synthetic",
    ...     image_size=8, dataset_options={"num_samples": 64}, model_overrides={"width_multiplier": 0.25},
    ...     recipe={"epochs": 1}), factors={"lr": {"low": {"recipe": {"lr": 1e-3}}}}, seeds=2)
    >>> result = run_ablation(study, reports_dir=tempfile.mkdtemp(), progress=False, device="cpu")
    >>> sorted(result.runs["cell"].unique()), len(result.runs)
    (['baseline', 'lr=low'], 4)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search import stats
from search_spaces.ablation import BASELINE_CELL, AblationStudy, StudyError, load_study

from .settings import SearchSettings, UserError

__all__ = ["AblationResult", "run_ablation", "ablation_runs", "analyse", "SPACE_FILE", "BACKENDS"]

SPACE_FILE = "ablation_space.py"
BACKENDS = ("optuna", "ray")
_COUNTED = ("complete", "infeasible", "pruned", "failed", "running", "waiting")  # what uses up the budget
_FINISHED = ("complete", "infeasible", "pruned")  # a pair with one of these is never run again
_PREFERENCE = {"complete": 0, "infeasible": 1, "pruned": 2, "failed": 3}  # which run of a pair the statistics use


@dataclasses.dataclass
class AblationResult:
    """A finished (or interrupted) ablation: the trials, the runs used, the per-cell summary, the
    comparisons to the baseline (and main effects of a full design), where they were written."""

    study: AblationStudy
    study_name: str
    study_dir: Path
    storage: str
    backend: str
    seeds: list[int]
    metrics: list[str]
    table: pd.DataFrame  # every trial (trials.csv)
    runs: pd.DataFrame  # one row per (cell, seed): what the statistics read
    summary: pd.DataFrame  # stats.cell_summary (cells.csv)
    comparisons: pd.DataFrame  # stats.compare_all (ablation.csv)
    main_effects: pd.DataFrame | None  # stats.main_effects (full designs; main_effects.csv)
    scheduled: int  # pairs this call ran (enqueued now, or left queued by an earlier run)
    reused: int  # pairs already finished before this call (not retrained)
    counts: dict[str, int]
    files: list[Path]
    wall_s: float
    interrupted: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
            return None if frame is None else json.loads(frame.to_json(orient="records"))

        return {
            "study": self.study_name,
            "definition": self.study.name,
            "design": self.study.design,
            "study_dir": str(self.study_dir),
            "storage": self.storage,
            "backend": self.backend,
            "cells": {cell: {"levels": levels, "config": self.study.cells()[cell].to_dict()}
                      for cell, levels in self.study.cell_levels().items()},
            "baseline": BASELINE_CELL,
            "seeds": self.seeds,
            "primary_metric": self.metrics[0],
            "metrics": self.metrics,
            "counts": self.counts,
            "trials": int(len(self.table)),
            "scheduled": self.scheduled,
            "reused": self.reused,
            "summary": records(self.summary),
            "comparisons": records(self.comparisons),
            "main_effects": records(self.main_effects),
            "files": [str(p) for p in self.files],
            "wall_s": round(self.wall_s, 3),
            "interrupted": self.interrupted,
            "problems": self.problems,
            "flops_convention": M.FLOPS_CONVENTION,
        }


# --- the space file worker processes import ---------------------------------------------------------------


def _space_source(study: AblationStudy, seeds: Sequence[int], device: str | None,
                  channels_last: bool | str | None = None) -> str:
    cells = {name: cfg.to_dict() for name, cfg in study.cells().items()}
    payload = json.dumps({"cells": cells, "seeds": list(seeds), "device": device, "channels_last": channels_last},
                         sort_keys=True)
    return (
        f'"""The (cell, seed) pairs of ablation study {study.name!r}, written by runners.ablation_runner on every\n'
        'run (do not edit: the study definition is the source). The runners import `space` from here, in\n'
        'this process and in worker processes."""\n\n'
        "import json\n\n"
        "from search_spaces.ablation import cells_space\n\n"
        f"_PAIRS = json.loads({payload!r})\n"
        'space = cells_space(_PAIRS["cells"], _PAIRS["seeds"], device=_PAIRS["device"],\n'
        '                    channels_last=_PAIRS.get("channels_last"))\n'
    )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- which pairs to run ----------------------------------------------------------------------------------


def _cell_keys(study: AblationStudy) -> dict[str, str]:
    return {name: cfg.key() for name, cfg in study.cells().items()}


def _compare_cells(stored: Mapping[str, str], keys: Mapping[str, str], study_name: str) -> None:
    """Refuse to resume a study whose stored cells (names and configs, in order) differ from ``keys``."""
    if dict(stored) == dict(keys) and list(stored) == list(keys):
        return
    if list(stored) != list(keys):
        added = [c for c in keys if c not in stored]
        removed = [c for c in stored if c not in keys]
        detail = "; ".join(part for part in (f"new cells: {', '.join(added)}" if added else "",
                                              f"cells no longer in the study: {', '.join(removed)}" if removed else "")
                           if part) or "the cells are in another order"
    else:
        detail = f"cells with another config: {', '.join(c for c in keys if stored[c] != keys[c])}"
    raise UserError(f"ablation {study_name!r} was run with other cells ({detail}); re-run with the same study and "
                    "recipe options to resume, or pick another --study-name")


def _check_folder(path: Path, keys: Mapping[str, str], seeds: Sequence[int], backend: str, study_name: str) -> None:
    """What ``ablation.json`` says an earlier run of this folder computed must match."""
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return
    if isinstance(stored.get("cell_keys"), dict):
        _compare_cells(stored["cell_keys"], keys, study_name)
    if backend == "ray" and stored.get("backend") == "ray" and stored.get("seeds") != list(seeds):
        raise UserError(f"ablation {study_name!r} ran on Ray with seeds {stored.get('seeds')}; a Ray experiment keeps "
                        "its runs: use those seeds, the optuna backend (which adds seeds to a study), or another "
                        "--study-name")


def _check_cells(optuna_study: Any, study: AblationStudy, study_name: str) -> None:
    """Store the study's cells in a new Optuna study; refuse a stored study with other cells."""
    keys = _cell_keys(study)
    stored = optuna_study.user_attrs.get("ablation_cells")
    if stored is None:
        optuna_study.set_user_attr("ablation_cells", keys)
        optuna_study.set_user_attr("ablation_study", study.to_dict())
        return
    _compare_cells(stored, keys, study_name)


def _pairs_to_run(table: pd.DataFrame, cells: Sequence[str], seeds: Sequence[int], *,
                  retry_failed: bool) -> tuple[list[tuple[str, int]], int, int]:
    """``(pairs to enqueue, pairs already finished, pairs queued or running already)`` from the
    results table."""
    state_of: dict[tuple[str, int], set[str]] = {}
    for row in table.itertuples(index=False):
        cell, seed = getattr(row, "cell"), getattr(row, "seed")
        if not isinstance(cell, str) or seed is None or (isinstance(seed, float) and np.isnan(seed)):
            continue
        state_of.setdefault((cell, int(seed)), set()).add(str(row.state))
    todo, finished, queued = [], 0, 0
    for cell in cells:
        for seed in seeds:
            states = state_of.get((cell, int(seed)), set())
            if states & set(_FINISHED):
                finished += 1
            elif states & {"running", "waiting"}:  # queued or running now (a dead worker's trial is re-queued)
                queued += 1
            elif "failed" in states and not retry_failed:
                finished += 1
            else:
                todo.append((cell, int(seed)))
    return todo, finished, queued


def _counted(table: pd.DataFrame) -> int:
    """Trials that use up a search budget (as ``runners.optuna_runner`` counts them)."""
    return int(table["state"].isin(_COUNTED).sum()) if len(table) else 0


# --- the statistics -----------------------------------------------------------------------------------------


def ablation_runs(table: pd.DataFrame, cells: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """One row per (cell, seed) of the study from a results table: the completed run when there is
    one, else the latest counted one (failed, pruned, infeasible); pairs that never ran, or only
    ran interrupted, appear with their state (``missing`` when there is no row at all)."""
    frame = table.copy()
    if "cell" not in frame or frame["cell"].isna().all():  # e.g. a Ray table: the sampled parameters
        frame["cell"] = frame.get("param_cell")
        frame["seed"] = frame.get("param_seed")
    frame = frame[frame["cell"].isin(list(cells)) & frame["seed"].notna()].copy()
    frame["seed"] = frame["seed"].astype(float).astype(int)
    frame = frame[frame["seed"].isin([int(s) for s in seeds])]
    frame["_rank"] = frame["state"].map(_PREFERENCE).fillna(9)
    frame = frame.sort_values(["_rank", "trial"], ascending=[True, False], kind="stable")
    frame = frame.drop_duplicates(["cell", "seed"], keep="first").drop(columns="_rank")
    order = {cell: i for i, cell in enumerate(cells)}
    rows = []
    have = {(c, s) for c, s in zip(frame["cell"], frame["seed"])}
    for cell in cells:
        for seed in seeds:
            if (cell, int(seed)) not in have:
                rows.append({"cell": cell, "seed": int(seed), "state": "missing", "reason": "never ran"})
    if rows:
        frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    frame["_order"] = frame["cell"].map(order)
    frame = frame.sort_values(["_order", "seed"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return frame


def _metrics(study: AblationStudy) -> list[str]:
    return list(dict.fromkeys([*study.objectives, M.FLOPS, M.PARAMS]))


def analyse(study: AblationStudy, runs: pd.DataFrame, *, alpha: float = 0.05
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """``(cell summary, comparisons to the baseline, main effects or None)`` of the runs table."""
    metrics = _metrics(study)
    data = runs[["cell", "seed", "state", *metrics]].copy()
    for metric in metrics:
        data[metric] = pd.to_numeric(data[metric], errors="coerce").astype(float)
    summary = stats.cell_summary(data, metrics, confidence=1 - alpha)
    comparisons = stats.compare_all(data, BASELINE_CELL, metrics, alpha=alpha)
    effects = None
    if study.design == "full":
        effects = stats.main_effects(data, study.cell_levels(), study.resolved_baseline_levels(), metrics[0],
                                     alpha=alpha)
    return summary, comparisons, effects


def _save_csv(frame: pd.DataFrame, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


# --- the run ---------------------------------------------------------------------------------------------------


def _resolve_seeds(study: AblationStudy, seeds: int | Sequence[int] | None) -> list[int]:
    if seeds is None:
        return study.seed_list()
    try:
        return study.replace(seeds=seeds).seed_list()
    except StudyError as error:
        raise UserError(str(error).replace("seeds", "--seeds", 1)) from None


def run_ablation(
    study: AblationStudy | str,
    *,
    seeds: int | Sequence[int] | None = None,
    backend: str = "optuna",
    study_name: str | None = None,
    reports_dir: str = "reports",
    retry_failed: bool = False,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
    device: str | None = None,
    recipe_overrides: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    address: str | None = None,
    alpha: float = 0.05,
    channels_last: bool | str | None = None,
) -> AblationResult:
    """Run every (cell, seed) pair of ``study`` once (reusing finished ones), then compare the cells.

    ``study`` is an :class:`AblationStudy` or what :func:`search_spaces.ablation.load_study` takes
    (a registered name, ``FILE.py:NAME``, ``FILE.toml``). ``seeds`` replaces the study's seeds (a
    count or a list); ``recipe_overrides`` change the baseline recipe (levels still apply on top);
    ``device`` is the training device of every run and ``channels_last`` its memory format (the
    recipe field; ``None``: the recipe's, a ``channels_last`` among ``recipe_overrides`` is taken as
    this); neither is part of what the study computes: a resume on another device or in the other
    layout reuses the finished runs. ``storage``, ``workers`` and ``threads`` are the
    Optuna runner's (``storage=None``: an SQLite file in ``reports_dir/<study>/``, a journal file
    with ``workers > 1``); ``address`` is the Ray backend's (``HOST:PORT`` of a running cluster,
    else a local one). Raises :class:`~runners.settings.UserError` for a study that cannot run
    (validated before anything is created or trained) or bad options.
    """
    tic = time.perf_counter()
    recipe_overrides = dict(recipe_overrides or {})
    if "channels_last" in recipe_overrides:  # how the runs execute, not what the cells compute
        layout = recipe_overrides.pop("channels_last")
        channels_last = layout if channels_last is None else channels_last
    try:
        study = load_study(study)
        if recipe_overrides:
            study = study.with_overrides(recipe=dict(recipe_overrides))
    except StudyError as error:
        raise UserError(str(error)) from None
    if backend not in BACKENDS:
        from .settings import suggest

        raise UserError(f"unknown backend {backend!r}{suggest(backend, list(BACKENDS))} (allowed: {', '.join(BACKENDS)})")
    seed_list = _resolve_seeds(study, seeds)
    baseline = study.baseline
    name = study_name or study.name
    cells = list(study.cells())
    pairs = [(cell, seed) for cell in cells for seed in seed_list]
    ray = backend == "ray"
    if ray:
        if retry_failed:
            raise UserError("--retry-failed needs the optuna backend: a stored Ray experiment keeps its budget")
        if seed_list != list(range(seed_list[0], seed_list[0] + len(seed_list))):
            raise UserError(f"the ray backend enumerates seeds as a range: use a count or consecutive seeds, got "
                            f"{seed_list}")
    settings = SearchSettings(
        space="gsa_block_v1",  # replaced by the study's space file once the settings are known to be valid
        objectives=tuple(study.objectives), n_trials=len(pairs), study=name,
        sampler="bruteforce" if ray else "random", pruner="none", seed=0, storage=storage, workers=workers,
        threads=threads, dataset=baseline.dataset, data_dir=data_dir, image_size=baseline.image_size,
        dataset_options=dict(baseline.dataset_options), recipe={}, reports_dir=reports_dir, backend=backend,
        address=address,
    )  # fmt: skip
    settings.validate()  # bad storage, workers, dataset ...: before a folder exists
    try:
        study.validate(base_recipe=settings.base_recipe(), data_dir=data_dir)
    except StudyError as error:
        raise UserError(str(error)) from None
    study_dir = settings.study_dir
    keys = _cell_keys(study)
    _check_folder(study_dir / "ablation.json", keys, seed_list, backend, name)
    space_file = study_dir / SPACE_FILE
    settings = dataclasses.replace(settings, space=f"{space_file}:space")

    def write_files() -> None:
        _write_atomic(space_file, _space_source(study, seed_list, device, channels_last))
        _write_atomic(study_dir / "ablation.json", json.dumps(
            {"study_name": name, "backend": backend, "seeds": seed_list, "cells": study.cell_levels(),
             "cell_keys": keys, "study": study.to_dict()}, indent=2, default=str) + "\n")

    import optuna

    if ray:
        from . import ray_runner

        created = not study_dir.exists()
        write_files()  # before the search: Ray's trial processes import the space file
        scheduled, reused = len(pairs), 0
        try:
            with warnings.catch_warnings():  # BruteForceSampler is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                result = ray_runner.run_ray_search(settings, progress=progress)
        except BaseException:
            # e.g. an unreachable cluster: leave no half-written folder behind (one with results stays)
            if created and study_dir.exists() and not (study_dir / "trials.csv").exists():
                import shutil

                shutil.rmtree(study_dir, ignore_errors=True)
            raise
    else:
        from . import optuna_runner

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # as the runner: failures are recorded, not logged
        created = not study_dir.exists()
        try:
            optuna_study = optuna_runner.open_study(settings, optuna_runner.create_storage(settings))
            _check_cells(optuna_study, study, name)
        except BaseException:
            if created and study_dir.exists():
                import shutil

                shutil.rmtree(study_dir, ignore_errors=True)
            raise
        write_files()
        todo, reused, queued = _pairs_to_run(optuna_runner.results(optuna_study), cells, seed_list,
                                             retry_failed=retry_failed)
        for cell, seed in todo:
            optuna_study.enqueue_trial({"cell": cell, "seed": seed}, skip_if_exists=False)
        scheduled = len(todo) + queued
        budget = _counted(optuna_runner.results(optuna_study))
        settings = dataclasses.replace(settings, n_trials=max(1, budget))
        result = optuna_runner.run_search(settings, progress=progress)

    table = result.table
    runs = ablation_runs(table, cells, seed_list)
    summary, comparisons, effects = analyse(study, runs, alpha=alpha)
    problems = _problems(table, cells, seed_list)
    files = [study_dir / "trials.csv", study_dir / "trials.parquet",
             _save_csv(summary, study_dir / "cells.csv"), _save_csv(comparisons, study_dir / "ablation.csv"),
             _save_csv(runs, study_dir / "runs.csv")]
    if effects is not None:
        files.append(_save_csv(effects, study_dir / "main_effects.csv"))
    files.append(study_dir / "ablation.json")
    return AblationResult(
        study=study, study_name=name, study_dir=study_dir, storage=result.storage, backend=backend, seeds=seed_list,
        metrics=_metrics(study), table=table, runs=runs, summary=summary, comparisons=comparisons,
        main_effects=effects, scheduled=scheduled, reused=reused, counts=dict(result.counts), files=files,
        wall_s=time.perf_counter() - tic, interrupted=result.interrupted, problems=problems,
    )  # fmt: skip


def _problems(table: pd.DataFrame, cells: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """Anything that should not happen in an ablation: a trial outside the study's pairs, a pair run
    twice to completion (a second process on the same study, or a sampler that sampled)."""
    frame = table
    if "cell" not in frame or frame["cell"].isna().all():
        frame = frame.assign(cell=frame.get("param_cell"), seed=frame.get("param_seed"))
    problems = []
    pairs = {(c, int(s)) for c in cells for s in seeds}
    done = frame[frame["state"] == "complete"]
    for row in done.itertuples(index=False):
        if not isinstance(row.cell, str) or row.seed is None or row.seed != row.seed:
            problems.append(f"trial {row.trial} has no cell/seed")
        elif row.cell not in cells:
            problems.append(f"trial {row.trial} ran cell {row.cell!r}, which the study does not have")
    counts = done.dropna(subset=["cell", "seed"]).groupby(["cell", "seed"]).size()
    for (cell, seed), n in counts.items():
        if n > 1 and (cell, int(seed)) in pairs:
            problems.append(f"pair ({cell}, seed {int(seed)}) completed {n} times; the statistics use the latest")
    return problems
