"""``gsa-search report``: build the HTML/Markdown report of a finished (or running) study folder.

Status: stable. :func:`report_main` checks that ``reports/<study>/`` holds a results table (a
:class:`~runners.settings.UserError` naming the command to run first, with the closest existing
study suggested, otherwise), then calls :func:`gsa_search.report.build_report` with
:func:`param_importances` — the part that needs Optuna, which the domain library does not import.

Parameter importance: Optuna 5's PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator`` via
``optuna.importance.get_param_importances``) on an in-memory study rebuilt from the results table —
one ``FrozenTrial`` per completed trial, each parameter a ``CategoricalDistribution`` of the values
observed — so it works the same for Optuna- and Ray-backed tables. PED-ANOVA ranks parameters by how
much they matter for reaching *low* target values, so accuracy (maximised) is negated; in
multi-objective studies ``target=None`` ranks them by importance for reaching the Pareto front.

Example:
    >>> document, text = report_main(Path("reports/gsa_block_v1-digits-pairs"))  # doctest: +SKIP
    >>> document["files"][0]  # doctest: +SKIP
    'reports/gsa_block_v1-digits-pairs/report.html'
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.report import Importance, build_report

from .settings import UserError, suggest

__all__ = ["report_main", "param_importances", "importance_study"]

TARGET_QUANTILE = 0.1  # PedAnovaImportanceEvaluator's default


def _plain(value: Any) -> Any:
    """A parameter value as Optuna's CategoricalDistribution accepts it; ``None`` when missing."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def importance_study(completed: pd.DataFrame, objectives: Sequence[str]) -> Any:
    """An in-memory Optuna study holding the completed trials of a results table (params with
    categorical distributions of the observed values, values = ``objectives``, ``accuracy`` as a
    user attribute). Parameters with one observed value are left out (they cannot matter)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    columns = [c for c in completed.columns if c.startswith("param_")]
    distributions = {}
    for column in columns:
        observed = {_plain(v) for v in completed[column]} - {None}
        if len(observed) > 1:
            choices = sorted(observed, key=lambda v: (type(v).__name__, v))
            distributions[column.removeprefix("param_")] = CategoricalDistribution(choices)
    study = optuna.create_study(directions=[M.DIRECTIONS[o] for o in objectives],
                                storage=optuna.storages.InMemoryStorage())
    for _, row in completed.iterrows():
        values = [float(row[o]) for o in objectives]
        if not all(math.isfinite(v) for v in values):
            continue
        params = {}
        for name in distributions:
            value = _plain(row[f"param_{name}"])
            if value is not None:
                params[name] = value
        accuracy = float(row[M.ACCURACY]) if M.ACCURACY in row and pd.notna(row[M.ACCURACY]) else float("nan")
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=params,
                                     distributions={n: distributions[n] for n in params}, values=values,
                                     user_attrs={"accuracy": accuracy, "trial": int(row["trial"])}))
    return study


def param_importances(completed: pd.DataFrame, objectives: Sequence[str]) -> Importance:
    """PED-ANOVA importances for accuracy and, with several objectives, for reaching the front."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns that it ranks low targets: we negate on purpose
            study = importance_study(completed, objectives)
            trials = study.get_trials(deepcopy=False)
            rankings: list[tuple[str, dict[str, float]]] = []
            if not any(t.params for t in trials):
                return Importance(evaluator=_evaluator_text(len(trials)), rankings=[],
                                  note="Every parameter took a single value among the completed trials: nothing to rank.")
            accuracy_ok = all(math.isfinite(t.user_attrs["accuracy"]) for t in trials)
            if accuracy_ok:
                ranking = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                                target=lambda t: -t.user_attrs["accuracy"])
                rankings.append(("For accuracy (target = -accuracy: PED-ANOVA ranks low target values)",
                                 {k: float(v) for k, v in ranking.items()}))
            if len(objectives) > 1:
                ranking = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=None)
                rankings.append((f"For reaching the Pareto front of {', '.join(objectives)} (target=None: "
                                 "non-domination rank with hypervolume subset selection)",
                                 {k: float(v) for k, v in ranking.items()}))
    finally:
        optuna.logging.set_verbosity(verbosity)
    top = math.ceil(TARGET_QUANTILE * len(trials))
    note = (f"{len(trials)} completed trials; the top {TARGET_QUANTILE:.0%} PED-ANOVA compares against is {top} "
            f"trial(s). Importances sum to 1 per ranking; 0 means the top trials' values look like all trials'.")
    if top < 5:
        note += " Optuna advises at least 5 trials in the top quantile: with fewer, read the ranking as rough."
    return Importance(evaluator=_evaluator_text(len(trials)), rankings=rankings, note=note)


def _evaluator_text(n: int) -> str:
    import optuna

    return (f"PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, Optuna {optuna.__version__}, defaults: "
            f"target_quantile {TARGET_QUANTILE}, region_quantile 1.0, evaluate_on_local) through "
            f"optuna.importance.get_param_importances, on an in-memory study rebuilt from the results table "
            f"({n} completed trials; each parameter a categorical distribution of its observed values)")


def _study_command(study_dir: Path) -> str:
    command = f"gsa-search search --study {study_dir.name}"
    if study_dir.parent != Path("reports"):
        command += f" --reports-dir {study_dir.parent}"
    return command


def _known_studies(reports_dir: Path) -> list[str]:
    if not reports_dir.is_dir():
        return []
    return sorted(p.name for p in reports_dir.iterdir()
                  if p.is_dir() and ((p / "trials.parquet").exists() or (p / "trials.csv").exists()))


def report_main(study_dir: Path, *, json_out: bool = False) -> tuple[dict[str, Any], str]:
    """Build the report of ``study_dir``; returns ``(document, text)`` for the CLI to print.

    ``document`` (JSON-able): study, study_dir, files, counts, front_size, hypervolume, reference
    (objective -> value), objectives, directions; with ``json_out`` also ``pareto_front`` (the
    front's trial numbers, objectives and parameters); for an ablation folder also ``ablation`` (the
    comparisons with the baseline: difference, 95% CI, method, Holm p, verdict). Raises :class:`UserError` when the folder or
    its results table does not exist.
    """
    study_dir = Path(study_dir)
    has_table = (study_dir / "trials.parquet").exists() or (study_dir / "trials.csv").exists()
    if not has_table:
        known = _known_studies(study_dir.parent)
        hint = suggest(study_dir.name, known)
        if not study_dir.is_dir():
            raise UserError(f"no study at {study_dir}: run `{_study_command(study_dir)}` first{hint}")
        raise UserError(f"{study_dir} has no results table (trials.parquet or trials.csv): run "
                        f"`{_study_command(study_dir)}` first (a search writes it after its first trial){hint}")
    try:  # an ablation folder (ablation.csv, cells.csv, runs.csv) gets its sections from build_report
        paths = build_report(study_dir, importance=param_importances)
    except ValueError as error:
        raise UserError(f"{study_dir}: {error}") from None
    summary = paths.summary
    reference = summary["reference"]
    document: dict[str, Any] = {
        "study": summary["study"],
        "study_dir": str(study_dir),
        "files": [str(p) for p in paths.files],
        "counts": summary["counts"],
        "trials": summary["trials"],
        "front_size": summary["front_size"],
        "hypervolume": summary["hypervolume"],
        "reference": reference,
        "objectives": summary["objectives"],
        "directions": summary["directions"],
    }
    if "ablation" in summary:
        document["ablation"] = summary["ablation"]
    if json_out:
        front = pd.read_csv(paths.pareto_csv)
        columns = ["trial", *summary["objectives"], *[c for c in front.columns if c.startswith("param_")]]
        document["pareto_front"] = json.loads(front[[c for c in columns if c in front]].to_json(orient="records"))
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n) or "no trials"
    lines = [f"report for study {summary['study']}: {counts}"]
    if summary["hypervolume"] is not None:
        ref = ", ".join(f"{k} {v:.4g}" for k, v in reference.items())
        lines.append(f"front: {summary['front_size']} trial(s); hypervolume {summary['hypervolume']:.6g} "
                     f"(reference {ref}; FLOPs = multiply-accumulates per image)")
    else:
        lines.append("no completed trial yet: no front or hypervolume")
    for row in (summary.get("ablation") or {}).get("comparisons", []):
        if row["metric"] == summary["ablation"]["primary"] and row["difference"] is not None:
            interval = "" if row["ci_low"] is None else f" [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
            lines.append(f"  {row['cell']} - baseline: {row['metric']} {row['difference']:+.4f}{interval} "
                         f"({row['verdict']})")
    lines.append(f"wrote {paths.html}, {paths.markdown}, {paths.pareto_csv} and {len(paths.figures)} figure file(s) "
                 f"in {study_dir / 'figures'}")
    return document, "\n".join(lines)
