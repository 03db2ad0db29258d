"""The results table: one row per trial, the same columns whichever backend ran the study.

Status: stable. Everything downstream (Pareto fronts, ablation statistics, reports, comparisons)
reads this table and never a live backend. A backend adapter turns its trials into *rows* (plain
dicts with the keys below); :func:`results_table` orders and completes them; :func:`save_results`
writes ``trials.csv`` and ``trials.parquet`` atomically (temporary file, then rename) so a reader
never sees half a table.

Columns, in order: ``trial`` (number), ``state`` (``complete`` | ``pruned`` | ``failed`` |
``infeasible`` | ``running`` | ``interrupted`` | ``died`` | ``waiting``), ``reason``, ``cell`` and
``seed`` (the ablation cell and seed of the run; empty outside ablation studies), every metric
of :mod:`gsa_search.metrics` that trials report (FLOPs are multiply-accumulates per image, measured
before training), ``curve`` (JSON list of per-epoch validation accuracy), ``epochs_run``,
``duration_s``, ``datetime_start``, ``datetime_complete``, ``worker``, ``host``, ``pid``,
``backend``, ``config`` (JSON of the trained model config and recipe), then ``param_<name>`` for
every sampled parameter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.pareto import pareto_mask

__all__ = [
    "METRIC_COLUMNS",
    "BASE_COLUMNS",
    "STATES",
    "results_table",
    "save_results",
    "load_results",
    "optuna_rows",
    "ray_rows",
    "pareto_front",
]

STATES = ("complete", "pruned", "failed", "infeasible", "running", "interrupted", "died", "waiting")
METRIC_COLUMNS = (
    M.ACCURACY, M.TEST_ACCURACY, M.TOP5, M.VAL_LOSS, M.TRAIN_LOSS, M.FLOPS, M.PARAMS, M.LATENCY_MS,
    M.TRAIN_TIME_S, M.IMAGES_PER_S,
)  # fmt: skip
BASE_COLUMNS = (
    ("trial", "state", "reason", "cell", "seed") + METRIC_COLUMNS
    + ("curve", "epochs_run", "duration_s", "datetime_start", "datetime_complete", "worker", "host", "pid",
       "backend", "config")
)  # fmt: skip


def results_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The table for ``rows`` (dicts; missing columns become NaN/empty), sorted by trial number."""
    rows = [dict(r) for r in rows]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    records = []
    for row in rows:
        record = {c: row.get(c) for c in BASE_COLUMNS}
        for key in ("curve", "config"):
            if not isinstance(record[key], (str, type(None))):
                record[key] = json.dumps(record[key], default=str)
        record.update({p: row.get(p) for p in params})
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=list(BASE_COLUMNS) + params)
    for column in METRIC_COLUMNS + ("duration_s",):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["epochs_run"] = pd.to_numeric(table["epochs_run"], errors="coerce").fillna(0).astype(int)
    table["reason"] = table["reason"].fillna("").astype(str)
    for column in params:  # mixed types (e.g. 'global' and 3) are stored as text
        values = table[column].dropna()
        if len({type(v) for v in values}) > 1:
            table[column] = table[column].map(lambda v: None if v is None or v != v else str(v))
    return table.sort_values("trial", kind="stable").reset_index(drop=True)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_results(table: pd.DataFrame, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``trials.csv`` and ``trials.parquet`` into ``folder`` atomically; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "trials.csv", folder / "trials.parquet"
    _atomic_write(csv, lambda p: table.to_csv(p, index=False))
    _atomic_write(parquet, lambda p: table.to_parquet(p, index=False))
    return [csv, parquet]


def load_results(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a saved table (Parquet when present, else CSV)."""
    folder = Path(folder)
    if (folder / "trials.parquet").exists():
        return pd.read_parquet(folder / "trials.parquet")
    if (folder / "trials.csv").exists():
        return pd.read_csv(folder / "trials.csv")
    raise FileNotFoundError(f"no results table (trials.parquet or trials.csv) in {folder}")


def pareto_front(table: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The completed, feasible trials that no other completed trial dominates on ``objectives``."""
    done = table[table["state"] == "complete"]
    if done.empty:
        return done
    directions = [M.DIRECTIONS[o] for o in objectives]
    mask = pareto_mask(done[list(objectives)].to_numpy(dtype=float), directions)
    return done[mask]


# --- Optuna -------------------------------------------------------------------------------------------


def _optuna_state(trial: Any) -> str:
    from optuna.trial import TrialState

    status = trial.user_attrs.get("status")
    if trial.state == TrialState.COMPLETE:
        return "infeasible" if status == "infeasible" else "complete"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if status in ("failed", "interrupted", "died"):
        return status
    return "died"  # FAIL without our record: the worker stopped (heartbeat expired)


def optuna_rows(trials: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of the results table from Optuna ``FrozenTrial``\\ s (what the Optuna runner stores)."""
    rows = []
    for t in trials:
        attrs = t.user_attrs
        if attrs.get("status") == "surplus":  # started after the budget was used up; never trained
            continue
        state = _optuna_state(t)
        reason = attrs.get("reason", "")
        if state == "died" and not reason:
            reason = "the worker stopped sending heartbeats (process or machine died); the trial was retried"
            if "failed_trial" in t.system_attrs:
                reason = "retry of trial whose worker died"
        metrics = dict(attrs.get("metrics") or {})
        for key, value in (attrs.get("cost") or {}).items():
            metrics.setdefault(key, value)
        curve = attrs.get("curve") or []
        fixed = t.system_attrs.get("fixed_params") or {}  # an enqueued trial shows its pair before it starts
        cell = t.params.get("cell", attrs.get("cell", fixed.get("cell", np.nan)))
        seed = t.params.get("seed", attrs.get("seed", fixed.get("seed", np.nan)))
        row: dict[str, Any] = {
            "trial": t.number,
            "state": state,
            "reason": reason,
            "cell": cell,
            "seed": seed,
            **{m: metrics.get(m, np.nan) for m in METRIC_COLUMNS},
            "curve": json.dumps(curve),
            "epochs_run": len(curve),
            "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else attrs.get("duration_s", np.nan),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "worker": attrs.get("worker"),
            "host": attrs.get("host"),
            "pid": attrs.get("pid"),
            "backend": attrs.get("backend", "optuna"),
            "config": json.dumps(attrs.get("config")) if attrs.get("config") is not None else None,
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


# --- Ray Tune -----------------------------------------------------------------------------------------

RAY_TRIAL_KEY = "gsa_trial"  # the trial number in a Ray trial's config and results (runners.ray_scheduler.TRIAL_KEY)


def _maybe_json(value: Any, default: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return default if value is None else value


def _iso(timestamp: Any) -> str | None:
    if timestamp is None or (isinstance(timestamp, float) and timestamp != timestamp):
        return None
    from datetime import datetime

    return datetime.fromtimestamp(float(timestamp)).isoformat()


def _ray_state(status: str | None, reported: str | None, pruned: str | None, error: str | None) -> tuple[str, str]:
    """``(state, reason)`` of a Ray trial from Ray's status, the last reported ``status`` and the
    scheduler's recorded stop decision."""
    if reported in ("complete", "infeasible", "failed"):
        return reported, ""
    if reported == "training" and pruned and status == "TERMINATED":
        return "pruned", pruned
    if status == "ERROR":
        line = " ".join(str(error or "").split())[:500]
        return "died", (f"the trial's worker died and its retries were used up ({line}); re-running the "
                        "command resumes it" if line else "the trial's worker died; re-running the command resumes it")
    if status == "RUNNING":
        return "running", ""
    if status in ("PENDING", "PAUSED"):
        if reported is None:
            return "waiting", ""
        return "interrupted", "stopped before it finished (driver interrupted or restarted); it runs again on resume"
    return "interrupted", "stopped before it finished (the search was interrupted); it runs again on resume"


def ray_rows(trials: Iterable[Mapping[str, Any]], decisions: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows of the results table from Ray Tune trials (what the Ray runner stores).

    Each trial is a mapping with ``trial_id``, ``status`` (Ray's: ``PENDING``, ``RUNNING``,
    ``TERMINATED``, ``ERROR``, ``PAUSED``), ``config`` (Ray's flat parameter dict, with the trial
    number under ``gsa_trial``), ``last_result`` (the last reported result: the Ray runner's
    trainable reports ``status``, ``reason``, the metrics, ``cost``, ``curve`` and ``trial_config``
    as JSON text, ``host`` and ISO start/end times in every result; Ray adds ``pid``) and ``error``
    (the last line of Ray's error file, or ``None``); ``decisions`` maps a trial number (as text) to
    the reason a scheduler stopped it. ``runners.ray_runner`` takes them from the live trials or from
    ``ExperimentAnalysis(experiment).trials``. As in :func:`optuna_rows`, only complete and
    infeasible trials show their metrics; the others show their cost (measured before training).
    """
    decisions = dict(decisions or {})
    rows = []
    for t in trials:
        config = dict(t.get("config") or {})
        last = dict(t.get("last_result") or {})
        number = config.get(RAY_TRIAL_KEY, last.get("trial"))
        reported = last.get("status") if last.get("status") in ("training", "complete", "infeasible", "failed") else None
        state, reason = _ray_state(t.get("status"), reported, decisions.get(str(number)), t.get("error"))
        if state in ("complete", "infeasible", "failed"):
            reason = last.get("reason") or reason
        metrics: dict[str, Any] = {}
        if state in ("complete", "infeasible"):  # as optuna_rows: other trials show their cost only
            metrics = {m: last.get(m) for m in METRIC_COLUMNS if last.get(m) is not None}
        if reported is not None:
            for key, value in (_maybe_json(last.get("cost"), {}) or {}).items():
                metrics.setdefault(key, value)
        curve = _maybe_json(last.get("curve"), []) if reported is not None else []
        start = last.get("datetime_start") if reported is not None else None
        finished = state in ("complete", "infeasible", "failed", "pruned")
        complete = (last.get("datetime_complete") or _iso(last.get("timestamp"))) if finished else None
        duration = np.nan
        if start and complete:
            from datetime import datetime

            duration = (datetime.fromisoformat(complete) - datetime.fromisoformat(start)).total_seconds()
        config_json = last.get("trial_config") if reported is not None else None
        row: dict[str, Any] = {
            "trial": number,
            "state": state,
            "reason": reason,
            "cell": config.get("cell", np.nan),  # ablation studies sample their (cell, seed) pairs
            "seed": config.get("seed", np.nan),
            **{m: metrics.get(m, np.nan) for m in METRIC_COLUMNS},
            "curve": json.dumps(curve),
            "epochs_run": len(curve),
            "duration_s": duration,
            "datetime_start": start,
            "datetime_complete": complete,
            "worker": t.get("trial_id"),
            "host": last.get("host") if reported is not None else None,
            "pid": last.get("pid") if reported is not None else None,
            "backend": "ray",
            "config": config_json if isinstance(config_json, str) or config_json is None else json.dumps(config_json),
        }
        row.update({f"param_{k}": v for k, v in config.items() if k != RAY_TRIAL_KEY})
        rows.append(row)
    return rows
