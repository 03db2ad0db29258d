"""The search report: one self-contained HTML page and the same content in Markdown, from a study folder.

Status: stable. :func:`build_report` reads only what a search saved in ``reports/<study>/`` — the
results table (``trials.parquet``, else ``trials.csv``), ``search.json`` (the settings; optional)
and, for provenance only, the SQLite storage ``study.db`` (opened read-only with :mod:`sqlite3`;
optional) — and never reruns or retrains anything. It writes, into that folder:

- ``report.html``: one page with its CSS inline and every figure inlined as SVG (hover a point for
  its trial and parameters); no scripts, no network fetches; a print stylesheet;
- ``report.md``: the same sections, figures linked to ``figures/*.png``;
- ``pareto.csv``: the front (full rows of the results table);
- ``figures/*.svg`` and ``figures/*.png``.

Sections: the study (backend, dataset, recipe, objectives and directions, budgets, sampler, pruner,
trials by state, wall time, compute, provenance and environment), the Pareto front (figures and
table; FLOPs are multiply-accumulates per image), the hypervolume with its reference point and its
history, parameter importance, failures/prunings/infeasible configurations with their reasons,
trials still in progress, and, for an ablation study folder (``ablation.csv`` beside the table), the
ablation sections of :mod:`~gsa_search.report.ablation`: cells (mean ± std, 95% CI), differences
from the baseline (95% CI, test, Holm-adjusted p, verdict), a forest plot and learning curves.

Layering: the domain library does not import Optuna, so parameter importance (Optuna's PED-ANOVA)
is computed by the caller and passed in as ``importance`` (``runners.report_cmd`` does); without it
the section says how to get it. Ablation tables are read from the study folder (``ablation.csv``,
``cells.csv``, ``runs.csv``, ``main_effects.csv``); a caller may pass ``comparisons`` (a DataFrame,
e.g. from ``gsa_search.stats.compare_all``; any other frame is printed as it is) instead of ablation.csv.

Example:
    >>> paths = build_report("reports/demo-search")  # doctest: +SKIP
    >>> paths.html.name, paths.summary["front_size"]  # doctest: +SKIP
    ('report.html', 3)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.environment import environment
from gsa_search.pareto import pareto_mask

from . import figures as F
from .ablation import ablation_section, load_ablation
from .hypervolume import REFERENCE_RULE, hypervolume, hypervolume_history, reference_point

__all__ = ["ReportPaths", "Table", "Importance", "build_report", "report_context", "load_table", "STATES",
           "DEFAULT_OBJECTIVES"]

STATES = ("complete", "pruned", "failed", "infeasible", "running", "interrupted", "died", "waiting")
PROBLEM_STATES = ("failed", "pruned", "infeasible", "interrupted", "died")
IN_PROGRESS_STATES = ("running", "waiting")
DEFAULT_OBJECTIVES = (M.ACCURACY, M.FLOPS)
MIN_TRIALS_FOR_IMPORTANCE = 4
COLUMN_LABELS = {
    M.ACCURACY: "accuracy (val top-1)",
    M.TEST_ACCURACY: "test accuracy",
    M.FLOPS: "FLOPs (MACs per image)",
    M.PARAMS: "parameters",
    M.LATENCY_MS: "latency (ms per image)",
}
TEMPLATES = Path(__file__).with_name("templates")


@dataclasses.dataclass(frozen=True)
class Table:
    """A table as the templates print it: header labels, rows of already formatted cells, an HTML
    ``id`` and which columns are numeric (right-aligned)."""

    columns: list[str]
    rows: list[list[str]]
    id: str = ""
    numeric: list[bool] = dataclasses.field(default_factory=list)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, id: str = "", labels: Mapping[str, str] | None = None) -> "Table":
        labels = labels or {}
        numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
                   for c in frame.columns]
        rows = [[_cell(c, v) for c, v in zip(frame.columns, record)] for record in frame.itertuples(index=False)]
        return cls(columns=[labels.get(c, _label(c)) for c in frame.columns], rows=rows, id=id, numeric=numeric)


@dataclasses.dataclass(frozen=True)
class Importance:
    """Parameter importances computed by the caller: which evaluator, and one ranking per target
    (``(what it ranks for, {parameter: importance})``), plus a note (e.g. how many trials)."""

    evaluator: str
    rankings: list[tuple[str, dict[str, float]]]
    note: str = ""


ImportanceFn = Callable[[pd.DataFrame, Sequence[str]], Importance]


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """What :func:`build_report` wrote, and the headline numbers (``summary``: study, counts,
    front_size, hypervolume, reference, objectives, directions)."""

    study_dir: Path
    html: Path
    markdown: Path
    pareto_csv: Path
    figures: tuple[Path, ...]
    summary: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.html, self.markdown, self.pareto_csv, *self.figures]


# --- formatting ---------------------------------------------------------------------------------------------


def _label(column: str) -> str:
    if column in COLUMN_LABELS:
        return COLUMN_LABELS[column]
    return column.removeprefix("param_").replace("_", " ") if column.startswith("param_") else column.replace("_", " ")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _cell(column: str, value: Any) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if column not in ("trial", "pid", "worker") else str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if column in (M.FLOPS, M.PARAMS):
            return F.short_number(value)
        if column in (M.ACCURACY, M.TEST_ACCURACY, M.TOP5):
            return f"{value:.4f}"
        if column.startswith("param_") and value.is_integer():
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_value(objective: str, value: float) -> str:
    if objective in (M.FLOPS, M.PARAMS):
        return f"{F.short_number(value)} ({value:.6g})"
    return f"{value:.6g}"


# --- reading ------------------------------------------------------------------------------------------------


def load_table(study_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The saved results table of a study folder (Parquet when present, else CSV)."""
    folder = Path(study_dir)
    if (folder / "trials.parquet").exists():
        table = pd.read_parquet(folder / "trials.parquet")
    elif (folder / "trials.csv").exists():
        table = pd.read_csv(folder / "trials.csv")
    else:
        raise FileNotFoundError(f"no results table (trials.parquet or trials.csv) in {folder}")
    for column, default in (("trial", None), ("state", "complete"), ("reason", ""), ("epochs_run", 0),
                            ("curve", "[]"), ("backend", None)):
        if column not in table:
            table[column] = default if column != "trial" else range(len(table))
    table["reason"] = table["reason"].fillna("").astype(str)
    table["state"] = table["state"].astype(str)
    table["epochs_run"] = pd.to_numeric(table["epochs_run"], errors="coerce").fillna(0).astype(int)
    for metric in (M.ACCURACY, M.FLOPS, M.PARAMS, M.LATENCY_MS):
        if metric in table:
            table[metric] = pd.to_numeric(table[metric], errors="coerce").astype(float)
    return table.sort_values("trial", kind="stable").reset_index(drop=True)


def _read_settings(study_dir: Path) -> tuple[dict[str, Any], list[str]]:
    path = study_dir / "search.json"
    if not path.exists():
        return {}, [f"search.json is missing in {study_dir}: the settings are unknown; objectives assumed to be "
                    f"{', '.join(DEFAULT_OBJECTIVES)}"]
    try:
        return json.loads(path.read_text()), []
    except (OSError, ValueError) as error:
        return {}, [f"search.json could not be read ({error}); objectives assumed to be {', '.join(DEFAULT_OBJECTIVES)}"]


def _storage_provenance(study_dir: Path, settings: Mapping[str, Any]) -> str:
    url = settings.get("storage")
    if url:
        shown = url.split("@", 1)[-1] if "@" in url else url
        scheme = url.split(":", 1)[0]
        return f"{scheme} storage ({shown}); not read: the report uses the saved table"
    for name in ("study.db", "journal.log"):
        if (study_dir / name).exists():
            break
    else:
        return "no storage file in the study folder (the results table is the record)"
    if name == "journal.log":
        return "Optuna journal file journal.log (not read: the report uses the saved table)"
    try:
        connection = sqlite3.connect(f"file:{study_dir / 'study.db'}?mode=ro", uri=True, timeout=2)
        try:
            version = connection.execute("SELECT library_version FROM version_info").fetchone()
            studies = [r[0] for r in connection.execute("SELECT study_name FROM studies")]
            trials = connection.execute("SELECT count(*) FROM trials").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as error:
        return f"SQLite storage study.db (unreadable: {error})"
    made = f", written by Optuna {version[0]}" if version else ""
    return f"Optuna SQLite storage study.db{made}: study {', '.join(studies) or '-'}, {trials} trials stored"


def _environment(settings: Mapping[str, Any], table: pd.DataFrame) -> tuple[list[tuple[str, str]], str]:
    """The environment rows and where they come from (recorded by the search, else this process)."""
    recorded = settings.get("environment")
    if isinstance(recorded, Mapping) and recorded:
        rows = [(str(k), str(v)) for k, v in recorded.items()]
        return rows, "recorded by the search in search.json"
    rows = list(environment().items())
    return rows, ("the machine and process that BUILT THIS REPORT (the search did not record its own "
                  "environment); the trials ran on the hosts listed above")


# --- the context ------------------------------------------------------------------------------------------------


def _objectives(settings: Mapping[str, Any]) -> list[str]:
    objectives = list(settings.get("objectives") or DEFAULT_OBJECTIVES)
    unknown = [o for o in objectives if o not in M.DIRECTIONS]
    if unknown:
        raise ValueError(f"search.json lists unknown objective(s) {unknown}; known: {sorted(M.DIRECTIONS)}")
    return objectives


def _resolved(name: str, value: Any, multi_objective: bool) -> str:
    if value in (None, ""):
        return "not recorded"
    if value != "auto":
        return str(value)
    if name == "sampler":
        return "auto (TPE)"
    return f"auto ({'pareto' if multi_objective else 'median'})"


def _curve_of(value: Any) -> list[float]:
    try:
        return [float(v) for v in (json.loads(value) if isinstance(value, str) else (value or []))]
    except (TypeError, ValueError):
        return []


def _time_span(table: pd.DataFrame) -> tuple[str, float]:
    starts = pd.to_datetime(table.get("datetime_start"), errors="coerce", format="ISO8601")
    ends = pd.to_datetime(table.get("datetime_complete"), errors="coerce", format="ISO8601")
    if starts is None or starts.dropna().empty:
        return "not recorded", float("nan")
    first = starts.min()
    last = max(x for x in (starts.max(), ends.max() if ends is not None else pd.NaT) if not pd.isna(x))
    seconds = (last - first).total_seconds()
    return f"{_fmt_seconds(seconds)} ({first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S})", seconds


def _front_frame(table: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    done = table[table["state"] == "complete"]
    if done.empty:
        return done
    mask = pareto_mask(done[list(objectives)].to_numpy(dtype=float), [M.DIRECTIONS[o] for o in objectives])
    front = done[mask]
    sort = next((o for o in objectives if M.DIRECTIONS[o] == "minimize"), objectives[0])
    return front.sort_values([sort, "trial"], ascending=[M.DIRECTIONS[sort] == "minimize", True], kind="stable")


def _front_table(front: pd.DataFrame, objectives: Sequence[str]) -> Table:
    metrics = list(objectives) + [m for m in (M.ACCURACY, M.FLOPS, M.PARAMS, M.LATENCY_MS, M.TEST_ACCURACY)
                                  if m not in objectives and m in front and front[m].notna().any()]
    params = [c for c in front.columns if c.startswith("param_") and front[c].notna().any()]
    columns = ["trial", *metrics, "epochs_run", *params]
    return Table.from_frame(front[columns], id="pareto-front", labels={"epochs_run": "epochs"})


def _problems_table(table: pd.DataFrame) -> Table:
    rows = table[table["state"].isin(PROBLEM_STATES)]
    frame = pd.DataFrame({"trial": rows["trial"], "state": rows["state"], "epochs_run": rows["epochs_run"],
                          "reason": rows["reason"].replace("", "(no reason recorded)")})
    return Table.from_frame(frame, id="problems", labels={"epochs_run": "epochs"})


def _in_progress_table(table: pd.DataFrame) -> Table:
    rows = table[table["state"].isin(IN_PROGRESS_STATES)]
    last = rows["curve"].map(lambda c: (_curve_of(c) or [float("nan")])[-1])
    frame = pd.DataFrame({"trial": rows["trial"], "state": rows["state"], "epochs_run": rows["epochs_run"],
                          "accuracy so far": last.astype(float),
                          "started": rows.get("datetime_start", pd.Series(index=rows.index, dtype=object)),
                          "host": rows.get("host", pd.Series(index=rows.index, dtype=object))})
    return Table.from_frame(frame, id="in-progress", labels={"epochs_run": "epochs"})


def _importance_tables(importance: Importance) -> list[tuple[str, Table]]:
    out = []
    for index, (title, ranking) in enumerate(importance.rankings):
        frame = pd.DataFrame({"parameter": [k.removeprefix("param_") for k in ranking],
                              "importance": [float(v) for v in ranking.values()]})
        out.append((title, Table.from_frame(frame, id=f"importance-{index}")))
    return out


def _settings_rows(settings: Mapping[str, Any], table: pd.DataFrame, objectives: Sequence[str],
                   study_dir: Path) -> list[tuple[str, str]]:
    multi = len(objectives) > 1
    backends = sorted({str(b) for b in table["backend"].dropna()}) if "backend" in table else []
    backend = ", ".join(backends) or str(settings.get("backend") or "not recorded")
    dataset = str(settings.get("dataset") or "not recorded")
    details = []
    if settings.get("image_size"):
        details.append(f"image size {settings['image_size']}")
    if settings.get("dataset_options"):
        details.append("options " + json.dumps(settings["dataset_options"], sort_keys=True))
    if settings.get("data_dir"):
        details.append(f"data dir {settings['data_dir']}")
    if details:
        dataset += f" ({'; '.join(details)})"
    source = settings.get("dataset_source") or settings.get("source")
    recipe = settings.get("recipe")
    recipe_text = (json.dumps(recipe, sort_keys=True) if recipe else "{}") + " (overrides of the dataset's base recipe)"
    budgets = []
    if settings.get("max_flops"):
        budgets.append(f"FLOPs <= {F.short_number(float(settings['max_flops']))} (multiply-accumulates per image)")
    if settings.get("max_params"):
        budgets.append(f"parameters <= {F.short_number(float(settings['max_params']))}")
    rows = [
        ("study", str(settings.get("study") or study_dir.name)),
        ("backend", backend),
        ("search space", str(settings.get("space") or "not recorded")),
        ("dataset", dataset),
        ("dataset source", str(source) if source else "not recorded by the search"),
        ("recipe", recipe_text),
        ("objectives", ", ".join(f"{o} ({M.DIRECTIONS[o]})" for o in objectives)),
        ("budgets", "; ".join(budgets) or "none"),
        ("trial budget", str(settings.get("n_trials", "not recorded"))),
        ("sampler", _resolved("sampler", settings.get("sampler"), multi)),
        ("pruner", _resolved("pruner", settings.get("pruner"), multi)),
        ("seed", str(settings.get("seed", "not recorded"))),
        ("workers", str(settings.get("workers", "not recorded"))),
    ]
    return rows


def _full_recipe(table: pd.DataFrame) -> str | None:
    for value in table.get("config", pd.Series(dtype=object)).dropna():
        try:
            recipe = json.loads(value).get("recipe")
        except (TypeError, ValueError, AttributeError):
            continue
        if recipe:
            return json.dumps(recipe, sort_keys=True)
    return None


def _notes(done: pd.DataFrame, counts: Mapping[str, int]) -> list[str]:
    in_progress = sum(counts[s] for s in IN_PROGRESS_STATES)
    notes = []
    if done.empty:
        notes.append("No trial has completed yet: there is no Pareto front, hypervolume or parameter importance. "
                     + ("Trials still running: run the report again later." if in_progress else
                        "Every trial so far ended without a result; see the failures below."))
    if in_progress:
        notes.append(f"The study is still running ({in_progress} trial(s) running or waiting): this report shows "
                     "what had finished when it was built.")
    return notes


def _hypervolume_section(table: pd.DataFrame, objectives: list[str]) -> dict[str, Any]:
    """The hypervolume of the completed trials, its reference point (stated) and its history."""
    done = table[table["state"] == "complete"]
    directions = [M.DIRECTIONS[o] for o in objectives]
    reference = reference_point(table, objectives)
    hv = fraction = None
    parts = []
    if reference is not None and len(done):
        hv = hypervolume(done[objectives].to_numpy(dtype=float), directions, reference)
        best = [done[o].max() if d == "maximize" else done[o].min() for o, d in zip(objectives, directions)]
        box = float(np.prod([abs(r - b) for r, b in zip(reference, best)]))
        fraction = hv / box if box > 0 else None
        for objective, value in zip(objectives, reference):
            if M.DIRECTIONS[objective] == "maximize":
                parts.append(f"{objective} = {_fmt_value(objective, value)} (maximised: 0)")
            else:
                largest = float(done[objective].max())
                parts.append(f"{objective} = {_fmt_value(objective, value)} (minimised: 1.1 x the largest "
                             f"completed value, {_fmt_value(objective, largest)})")
    history = hypervolume_history(table, objectives, reference) if hv is not None else pd.DataFrame()
    return {
        "reference": reference if hv is not None else None,
        "history": history,
        "hypervolume": hv,
        "hypervolume_text": "-" if hv is None else f"{hv:.6g}",
        "hypervolume_exact": "" if hv is None else repr(float(hv)),
        "hypervolume_fraction": None if fraction is None else f"{fraction:.4f}",
        "reference_text": "; ".join(parts),
        "reference_short": ", ".join(f"{o} {F.short_number(v)}" for o, v in zip(objectives, reference or [])),
        "reference_rule": REFERENCE_RULE,
        "hypervolume_units": " x ".join(COLUMN_LABELS.get(o, o) for o in objectives),
    }


def _figures(table: pd.DataFrame, history: pd.DataFrame, reference_short: str,
             figures_dir: Path | None) -> tuple[list[F.FigureFile], F.FigureFile | None]:
    """The accuracy-vs-cost scatters (FLOPs, params, latency when measured) and the history plot."""
    scatters: list[F.FigureFile] = []
    if figures_dir is None:
        return scatters, None
    if M.ACCURACY in table:
        for cost in (M.FLOPS, M.PARAMS, M.LATENCY_MS):
            if cost in table and table[cost].notna().any():
                figure = F.pareto_scatter(table, x=cost, out_dir=figures_dir, name=f"accuracy-vs-{cost}")
                if figure is not None:
                    scatters.append(figure)
    history_figure = None
    if not history.empty:
        history_figure = F.hypervolume_figure(history, out_dir=figures_dir, name="hypervolume-history",
                                              reference_text=reference_short)
    return scatters, history_figure


def _importance_section(done: pd.DataFrame, objectives: list[str], importance: ImportanceFn | None) -> dict[str, Any]:
    section: dict[str, Any] = {"tables": [], "evaluator": "", "note": ""}
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        section["note"] = (f"Skipped: {len(done)} completed trial(s); parameter importance needs at least "
                           f"{MIN_TRIALS_FOR_IMPORTANCE}.")
    elif importance is None:
        section["note"] = ("Not computed: parameter importance uses Optuna, which the domain library does not "
                           "import. `gsa-search report` (runners.report_cmd) computes it.")
    else:
        try:
            result = importance(done, objectives)
            section = {"tables": _importance_tables(result), "evaluator": result.evaluator, "note": result.note}
        except Exception as error:  # noqa: BLE001 - one failed section must not lose the report
            section["note"] = f"Parameter importance failed: {type(error).__name__}: {error}"
    return section


def _recorded_devices(table: pd.DataFrame) -> str:
    devices = set()
    for value in table.get("config", pd.Series(dtype=object)).dropna():
        try:
            devices.add(str(json.loads(value).get("recipe", {}).get("device")))
        except (TypeError, ValueError, AttributeError):
            continue
    return ", ".join(sorted(d for d in devices if d and d != "None")) or "not recorded"


def report_context(study_dir: str | os.PathLike[str], *, figures_dir: Path | None = None,
                   importance: ImportanceFn | None = None, comparisons: pd.DataFrame | None = None) -> dict[str, Any]:
    """Everything the templates print (figures are written to ``figures_dir`` when given)."""
    study_dir = Path(study_dir)
    table = load_table(study_dir)
    settings, notes = _read_settings(study_dir)
    objectives = _objectives(settings)
    directions = [M.DIRECTIONS[o] for o in objectives]
    counts = {state: int((table["state"] == state).sum()) for state in STATES}
    for state in sorted(set(table["state"]) - set(STATES)):
        counts[state] = int((table["state"] == state).sum())
    done = table[table["state"] == "complete"]
    notes += _notes(done, counts)
    wall_text, wall_s = _time_span(table)
    epochs = int(table["epochs_run"].sum())
    hosts = sorted({str(h) for h in table["host"].dropna()}) if "host" in table else []
    trial_time = _fmt_seconds(float(table["duration_s"].sum())) if "duration_s" in table else "-"
    front = _front_frame(table, objectives)
    hv = _hypervolume_section(table, objectives)
    pareto_figures, history_figure = _figures(table, hv["history"], hv["reference_short"], figures_dir)
    environment, environment_origin = _environment(settings, table)
    ablation_data = load_ablation(study_dir, table, objectives, comparisons)
    ablation = None if ablation_data is None else ablation_section(ablation_data, figures_dir)
    summary = {
        "study": str(settings.get("study") or study_dir.name),
        "objectives": objectives,
        "directions": directions,
        "counts": counts,
        "trials": int(len(table)),
        "front_size": int(len(front)),
        "hypervolume": hv["hypervolume"],
        "reference": dict(zip(objectives, hv["reference"])) if hv["reference"] else None,
        "wall_s": None if not np.isfinite(wall_s) else wall_s,
        "epochs_run": epochs,
    }
    if ablation is not None:
        summary["ablation"] = ablation["summary"]
    return {
        **{k: v for k, v in hv.items() if k not in ("history", "reference")},
        "title": f"gsa-search report: {summary['study']}",
        "summary": summary,
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "study_dir": str(study_dir),
        "notes": notes,
        "settings_rows": _settings_rows(settings, table, objectives, study_dir),
        "full_recipe": _full_recipe(table),
        "counts": [(state, n) for state, n in counts.items() if n] or [("trials", 0)],
        "total": int(len(table)),
        "wall": wall_text,
        "compute": f"{epochs:,} epochs trained in total (all trials, pruned and failed ones included); "
                   f"{trial_time} of trial time",
        "hosts": ", ".join(hosts) or "not recorded",
        "devices": _recorded_devices(table),
        "storage": _storage_provenance(study_dir, settings),
        "environment": environment,
        "environment_origin": environment_origin,
        "multi_objective": len(objectives) > 1,
        "objectives": objectives,
        "directions": directions,
        "flops_convention": M.FLOPS_CONVENTION,
        "pareto_figures": pareto_figures,
        "front_table": _front_table(front, objectives) if len(front) else None,
        "no_front_reason": "no completed trial" if done.empty else "no completed trial has a value for every objective",
        "front_size": int(len(front)),
        "completed": int(len(done)),
        "history_figure": history_figure,
        "importance": _importance_section(done, objectives, importance),
        "problems": _problems_table(table),
        "in_progress": _in_progress_table(table),
        "ablation": ablation,
        "_written": pareto_figures + ([history_figure] if history_figure else []) + (ablation or {}).get("figures", []),
        "_front": front,
    }


# --- writing --------------------------------------------------------------------------------------------------


def _environment_jinja() -> Any:
    import jinja2

    def md(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = md
    return env


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(study_dir: str | os.PathLike[str], *, importance: ImportanceFn | None = None,
                 comparisons: pd.DataFrame | None = None) -> ReportPaths:
    """Write ``report.html``, ``report.md``, ``pareto.csv`` and ``figures/`` into ``study_dir``.

    Reads only the saved table, ``search.json`` and (read-only) ``study.db``. ``importance`` computes
    parameter importances from the completed trials (see :class:`Importance`); ``comparisons`` adds
    the ablation sections (default: ablation.csv of the folder, when there is one). Raises ``FileNotFoundError`` when the folder has no results table.
    """
    study_dir = Path(study_dir)
    figures_dir = study_dir / "figures"
    context = report_context(study_dir, figures_dir=figures_dir, importance=importance, comparisons=comparisons)
    env = _environment_jinja()
    html = env.get_template("report.html.j2").render(**context)
    markdown = env.get_template("report.md.j2").render(**context)
    paths = ReportPaths(study_dir=study_dir, html=study_dir / "report.html", markdown=study_dir / "report.md",
                        pareto_csv=study_dir / "pareto.csv",
                        figures=tuple(p for f in context["_written"] for p in (f.svg, f.png)),
                        summary=context["summary"])
    _atomic_write_text(paths.html, html)
    _atomic_write_text(paths.markdown, markdown)
    front: pd.DataFrame = context["_front"]
    if front.empty:
        front = load_table(study_dir).iloc[0:0]
    _atomic_write_text(paths.pareto_csv, front.to_csv(index=False))
    return paths
