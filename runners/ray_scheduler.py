"""Ray Tune schedulers of the Ray runner: the Pareto-aware rule as a ``TrialScheduler``, and ASHA
that says why it stopped a trial.

Status: stable. Ray Tune's schedulers watch one metric, so multi-objective searches get
:class:`ParetoScheduler`: a ``FIFOScheduler`` whose ``on_trial_result`` asks the same
:class:`~gsa_search.pruning.ParetoPruningRule` as the Optuna runner (through
:func:`runners._trial_exec.pareto_decide`), with the same inputs: this trial's cost (FLOPs/params,
measured before training) and accuracy curve so far, against the records of the other trials that
trained (complete, pruned or still running; failed, infeasible and dead ones never count), keyed by
trial number and in trial-number order. It returns ``STOP`` when the rule prunes.

What a trial reports (see ``runners.ray_runner``): every result carries ``trial`` (the trial
number), ``status`` (``training`` for an epoch that is not the last, ``complete``, ``failed``,
``infeasible``), ``cost`` and ``curve`` (JSON text). The scheduler rebuilds its records from those
results, so it needs no state of its own across a driver restart: trials restored as finished are
re-read from their last result (``on_trial_add``), and a trial that restarts from scratch (its
worker died, or the driver did) starts with an empty curve, as its retry does in the Optuna runner.

Both schedulers append their stop decisions to a JSON file (``{trial number: reason}``), which the
results table reads to tell a pruned trial from one that was interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Hashable

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from gsa_search import metrics as M
from gsa_search.pruning import ParetoPruningRule, TrialRecord

from ._trial_exec import pareto_decide, pruned_reason

__all__ = ["ParetoScheduler", "RecordingASHA", "TRIAL_KEY", "STATUS", "TRAINING", "read_decisions",
           "record_decision", "trial_number"]

TRIAL_KEY = "gsa_trial"  # the trial number, in Ray's trial config (set by the searcher) and in each result
STATUS = "status"
TRAINING = "training"
_TERMINATED, _ERROR = "TERMINATED", "ERROR"


def trial_number(trial: Any) -> Hashable:
    """The trial number the searcher gave a Ray trial (its ``trial_id`` for a trial without one)."""
    number = (getattr(trial, "config", None) or {}).get(TRIAL_KEY)
    return trial.trial_id if number is None else number


def _json(value: Any, default: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return default if value is None else value


def read_decisions(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{str(trial number): reason}`` of the stop decisions recorded in ``path`` (``{}`` when none)."""
    if path is None:
        return {}
    try:
        return dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return {}


def record_decision(path: str | os.PathLike[str] | None, key: Hashable, reason: str) -> None:
    """Add ``key: reason`` to the decisions file (atomically: write a temporary file, rename)."""
    if path is None:
        return
    path = Path(path)
    decisions = read_decisions(path)
    decisions[str(key)] = reason
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decisions, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _forget_decision(path: str | os.PathLike[str] | None, key: Hashable) -> None:
    if path is None:
        return
    decisions = read_decisions(path)
    if str(key) in decisions:
        decisions.pop(str(key))
        tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(decisions, indent=1, sort_keys=True))
        os.replace(tmp, path)


class _View:
    """What the scheduler knows of one Ray trial: the rule's record, or None while it does not count."""

    __slots__ = ("key", "cost", "curve", "finished", "excluded", "failures")

    def __init__(self, key: Hashable, failures: int) -> None:
        self.key, self.cost, self.curve = key, None, []
        self.finished, self.excluded, self.failures = False, False, failures

    def observe(self, result: dict[str, Any]) -> None:
        status = result.get(STATUS)
        cost = _json(result.get("cost"), None)
        if isinstance(cost, dict):
            self.cost = cost
        curve = _json(result.get("curve"), None)
        if isinstance(curve, list):
            self.curve = [float("nan") if v is None else float(v) for v in curve]
        if status in ("failed", "infeasible"):
            self.excluded = True
        elif status == "complete":
            self.finished = True

    def record(self) -> TrialRecord | None:
        if self.excluded or self.cost is None:
            return None
        return TrialRecord(key=self.key, cost=self.cost, curve=list(self.curve), finished=self.finished)


def _failures(trial: Any) -> int:
    return int(getattr(trial, "num_failures", 0) or 0)


class ParetoScheduler(FIFOScheduler):
    """``STOP`` a trial when :class:`~gsa_search.pruning.ParetoPruningRule` prunes it (see the module
    docstring); ``decisions_path`` collects the reasons (``{trial number: reason}``)."""

    def __init__(self, rule: ParetoPruningRule, *, decisions_path: str | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.decisions_path = decisions_path
        self._views: dict[str, _View] = {}

    # the scheduler is pickled with the experiment (tuner.pkl): its views are rebuilt from results
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = {}
        return state

    def _view(self, trial: Any) -> _View:
        view = self._views.get(trial.trial_id)
        if view is None or view.failures != _failures(trial):  # new, or restarted after its worker died
            view = _View(trial_number(trial), _failures(trial))
            self._views[trial.trial_id] = view
        return view

    def records(self, *, exclude: str | None = None) -> list[TrialRecord]:
        """The other trials' records, in trial-number order (as the Optuna adapter reads a study)."""
        out = [v.record() for tid, v in self._views.items() if tid != exclude]
        return sorted((r for r in out if r is not None), key=lambda r: (str(type(r.key)), r.key))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._views.pop(trial.trial_id, None)
        if getattr(trial, "status", None) == _TERMINATED and trial.last_result:  # restored as finished
            view = self._view(trial)
            view.observe(dict(trial.last_result))
            view.finished = True
        elif getattr(trial, "last_result", None):  # restored unfinished: it runs again from scratch
            _forget_decision(self.decisions_path, trial_number(trial))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        view = self._view(trial)
        view.observe(result)
        if result.get("done") or result.get(STATUS) != TRAINING or view.cost is None:
            return TrialScheduler.CONTINUE
        decision = pareto_decide(self.rule, view.key, view.cost, view.curve,
                                 self.records(exclude=trial.trial_id))
        if not decision.prune:
            return TrialScheduler.CONTINUE
        view.finished = True
        record_decision(self.decisions_path, view.key, pruned_reason("pareto", len(view.curve), decision.reason))
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        view = self._view(trial)
        if result:
            view.observe(result)
        view.finished = True

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._views.pop(trial.trial_id, None)  # its worker died: a dead trial never counts

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._views.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"Pareto-aware pruning ({self.rule})"


class RecordingASHA(AsyncHyperBandScheduler):
    """Ray's ASHA (``ASHAScheduler``) on ``accuracy`` over epochs, fed only the epochs of trials that
    train (failed and infeasible results never enter a rung), recording why it stopped a trial."""

    def __init__(self, *, max_t: int, grace_period: int = 2, reduction_factor: float = 3,
                 decisions_path: str | None = None) -> None:
        grace_period = max(1, min(grace_period, max_t))
        super().__init__(time_attr="training_iteration", metric=M.ACCURACY, mode="max", max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)
        self.grace_period = grace_period
        self.decisions_path = decisions_path

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if getattr(trial, "status", None) != _TERMINATED and getattr(trial, "last_result", None):
            _forget_decision(self.decisions_path, trial_number(trial))  # restored unfinished: runs again

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("done") or result.get(STATUS) != TRAINING:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            curve = _json(result.get("curve"), [])
            accuracy = result.get(M.ACCURACY, float("nan"))
            record_decision(self.decisions_path, trial_number(trial),
                            pruned_reason("asha", len(curve), f"accuracy {accuracy:.4f} below its rung's cut-off "
                                                              f"(grace {self.grace_period} epochs, reduction factor "
                                                              f"{self._reduction_factor:g})"))
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if result and result.get(STATUS) in ("failed", "infeasible"):  # never ranked against trials that trained
            self._trial_info.pop(trial.trial_id, None)
            return
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)
