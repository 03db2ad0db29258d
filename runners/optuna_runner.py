"""The Optuna runner: a search space + objectives + budgets -> trials in a resumable Optuna study.

Status: stable. One process runs trials in a loop until the study holds ``n_trials`` counted trials
(complete, infeasible, pruned, or failed for a reason of their own; a trial whose worker died or was
interrupted does not count and its config is retried). ``workers > 1`` starts that many processes on
one study, each with its own sampler seed derived from ``seed`` and ``cores / workers`` threads;
workers on other machines join by pointing ``storage`` at the same PostgreSQL URL.

Per trial: the space samples a :class:`~gsa_search.trial.TrialConfig`, the model is fitted to the
data and measured (FLOPs, params) before training, budgets are checked (an infeasible config is
recorded COMPLETE with its cost and ``set_constraint`` values > 0, accuracy 0, and never trains),
then :func:`~gsa_search.trial.run_trial` trains it with a report hook that feeds Optuna's pruner in
single-objective studies. Failures (invalid config, divergence, out of memory, any exception) mark
that trial FAIL with the reason stored in its user attributes; the search goes on.

Dead workers: with an RDB storage (PostgreSQL) trials send heartbeats and a stale trial is failed and
re-enqueued by ``RetryHeartbeatStaleTrialCallback``; on every storage, a starting worker takes over
trials left RUNNING by a dead process of its own host (pid + process start time recorded on each
trial). Ctrl-C records the running trial as ``interrupted`` and stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, ProgrammingError

import search_spaces
from gsa_search import metrics as M
from gsa_search.environment import environment
from gsa_search.pruning import Decision, ParetoPruningRule, TrialRecord
from gsa_search.trial import Infeasible, load_data_cached

from . import _process
from ._trial_exec import execute, failure_reason, pareto_decide, pareto_rule, pruned_reason, sample_config
from .results import optuna_rows, pareto_front, results_table, save_results
from .settings import SINGLE_OBJECTIVE_PRUNERS, SearchSettings, UserError

__all__ = [
    "SearchResult",
    "Progress",
    "run_search",
    "results",
    "open_study",
    "create_storage",
    "make_sampler",
    "make_pruner",
    "state_counts",
    "setup_log_file",
    "quiet_optuna",
]

log = logging.getLogger("gsa_search.search")

COUNTED = ("complete", "infeasible", "pruned", "failed")
HEARTBEAT_S, GRACE_S = 10, 30  # RDB storages: a trial silent for 30 s belongs to a dead worker


@dataclasses.dataclass
class SearchResult:
    """What a finished (or interrupted) search leaves: its folder, results table, state counts and front."""

    settings: SearchSettings
    study_dir: Path
    storage: str
    table: Any
    counts: dict[str, int]
    front: Any
    wall_s: float
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        cols = ["trial"] + list(self.settings.objectives)
        front = self.front[cols + [c for c in self.front.columns if c.startswith("param_")]]
        return {
            "study": self.settings.study_name,
            "study_dir": str(self.study_dir),
            "storage": self.storage,
            "backend": self.settings.backend,
            "objectives": list(self.settings.objectives),
            "directions": self.settings.directions,
            "counts": self.counts,
            "trials": int(len(self.table)),
            "pareto_front": json.loads(front.to_json(orient="records")),
            "results": [str(self.study_dir / "trials.csv"), str(self.study_dir / "trials.parquet")],
            "wall_s": round(self.wall_s, 3),
            "interrupted": self.interrupted,
        }


# --- storage, sampler, pruner --------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__


def create_storage(settings: SearchSettings) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``settings`` (creating the SQLite/journal file's folder)."""
    url = settings.storage_url()
    kind = settings.storage_kind()
    if kind == "journal":
        path = Path(url[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.JournalStorage(backend)
    if kind == "sqlite":
        database = url[len("sqlite:///"):]
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
        except (IntegrityError, ProgrammingError) as error:  # another worker is creating Optuna's tables now
            if attempt == 5:
                raise UserError(f"cannot create Optuna's tables in {_redact(url)}: {_one_line(error)}") from None
            time.sleep(0.2 + random.random())
        except Exception as error:  # sqlalchemy.exc.OperationalError, ImportError of a driver, ...
            raise UserError(f"cannot open the database {_redact(url)}: {_one_line(error)}; check that the server "
                            "runs and the URL (user, password, host, port, database) is right") from None
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_sampler(name: str, *, seed: int, n_trials: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """A sampler by name: ``tpe``, ``nsga2``, ``nsga3``, ``gp``, ``random``, ``grid``/``bruteforce``."""
    samplers = optuna.samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 4)))
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 3)))
    if name == "nsga3":
        return samplers.NSGAIIISampler(seed=seed, population_size=max(4, min(50, n_trials // 3)))
    if name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 4)))
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name in ("grid", "bruteforce"):
        return samplers.BruteForceSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``none``, ``median`` (after 2 epochs, once 3 trials finished), ``sha`` or ``hyperband``.

    ``pareto`` is not an Optuna pruner (Optuna cannot prune multi-objective trials): the study gets
    the NopPruner and the objective applies :class:`~gsa_search.pruning.ParetoPruningRule` itself."""
    if name in ("none", "pareto"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2)
    raise UserError(f"unknown pruner {name!r}")


def worker_seed(seed: int, worker: int, workers: int) -> int:
    """Sampler seed of worker ``worker``: ``seed`` itself for a single worker, else derived from it."""
    if workers == 1:
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


def open_study(settings: SearchSettings, storage: optuna.storages.BaseStorage, *, worker: int = 0) -> optuna.Study:
    """Create the study or load it (resume); a stored study with different settings is refused."""
    sampler = make_sampler(settings.resolved_sampler(), seed=worker_seed(settings.seed, worker, settings.workers),
                           n_trials=settings.n_trials, multi_objective=settings.multi_objective)
    try:
        study = optuna.create_study(
            study_name=settings.study_name, storage=storage, directions=settings.directions,
            sampler=sampler, pruner=make_pruner(settings.resolved_pruner()), load_if_exists=True,
        )  # fmt: skip
    except ValueError as error:  # stored directions differ
        raise UserError(f"study {settings.study_name!r} exists in {_redact(settings.storage_url())} with other "
                        f"objectives ({_one_line(error)}); use another --study name") from None
    identity = json.loads(json.dumps(settings.identity(), default=str))
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("settings", json.loads(json.dumps(settings.to_dict(), default=str)))
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    elif settings.identity_changes(stored):
        changed = settings.identity_changes(stored)
        raise UserError(f"study {settings.study_name!r} already exists with different settings "
                        f"({', '.join(changed)}); re-run with the same options to resume, or pick another --study")
    return study


# --- counting and recovery -------------------------------------------------------------------------------


def results(study: optuna.Study) -> Any:
    """The results table (one row per trial, see :mod:`runners.results`) of an Optuna study."""
    return results_table(optuna_rows(study.get_trials(deepcopy=False)))


def state_counts(table: Any) -> dict[str, int]:
    counts = {state: 0 for state in ("complete", "infeasible", "pruned", "failed", "running", "interrupted", "died", "waiting")}
    for state, n in table["state"].value_counts().items():
        counts[str(state)] = int(n)
    return counts


class _Surplus(Exception):
    """A trial started after the budget was used up by other workers (recorded, not counted, not shown)."""


def _counted(study: optuna.Study, *, before: int | None = None) -> int:
    """Trials that use up the budget: finished ones plus those running or queued now (with ``before``,
    only trials numbered lower)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if before is not None and t.number >= before:
            continue
        if t.user_attrs.get("status") == "surplus":
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
            n += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed":
            n += 1
    return n


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue trials left RUNNING by a dead process of this host; returns their numbers."""
    recovered = []
    storage = study._storage  # noqa: SLF001 - Optuna exposes no public way to fail another process's trial
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("host") != _process.HOST or "pid" not in attrs:
            continue
        if _process.process_alive(attrs["pid"], attrs.get("proc_start")):
            continue
        reason = f"worker process {attrs['pid']} on {attrs['host']} died while training; its config was re-queued"
        storage.set_trial_user_attr(t._trial_id, "status", "died")  # noqa: SLF001
        storage.set_trial_user_attr(t._trial_id, "reason", reason)  # noqa: SLF001
        try:
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
        except RuntimeError:  # another worker got there first
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        log.warning("trial %d: %s", t.number, reason)
        recovered.append(t.number)
    return recovered


# --- one trial ----------------------------------------------------------------------------------------------


def trial_records(trials: Any, *, exclude: int | None = None) -> list[TrialRecord]:
    """What the Pareto-aware rule knows of a study's trials: cost (measured before training) and the
    accuracy curve so far, for every complete, pruned or running trial that trained."""
    records = []
    for t in trials:
        if t.number == exclude or t.user_attrs.get("status") == "infeasible" or "cost" not in t.user_attrs:
            continue
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            continue
        records.append(TrialRecord(key=t.number, cost=t.user_attrs["cost"], curve=list(t.user_attrs.get("curve") or ()),
                                   finished=t.state != TrialState.RUNNING))
    return records


def pareto_decision(rule: ParetoPruningRule, trial: optuna.Trial, curve: list[float]) -> Decision:
    """The Optuna adapter of the Pareto-aware rule: this trial against the others in the storage."""
    if not rule.is_rung(len(curve)):
        return Decision(prune=False, reason="not a rung")
    others = trial_records(trial.study.get_trials(deepcopy=False), exclude=trial.number)
    return pareto_decide(rule, trial.number, trial.user_attrs.get("cost"), curve, others)



class _Objective:
    """``study.optimize`` objective: sample, measure, check budgets, train, record."""

    def __init__(self, settings: SearchSettings, worker: int) -> None:
        self.settings = settings
        self.worker = worker
        self.space = search_spaces.get_space(settings.space)
        self.pruner_name = settings.resolved_pruner()
        self.pareto = pareto_rule(settings)

    def _values(self, metrics: dict[str, float]) -> list[float]:
        return [float(metrics[o]) for o in self.settings.objectives]

    def __call__(self, trial: optuna.Trial) -> list[float] | float:
        settings = self.settings
        ident = _process.identity()
        trial.set_user_attr("proc_start", ident["proc_start"])  # before the pid: a pid alone is trusted
        trial.set_user_attr("host", ident["host"])
        trial.set_user_attr("pid", ident["pid"])
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("backend", "optuna")
        if _counted(trial.study, before=trial.number) >= settings.n_trials:
            # two workers counted n-1 at the same moment: trial numbers are assigned atomically, so
            # exactly the later one steps back without training
            trial.set_user_attr("status", "surplus")
            trial.set_user_attr("reason", "the study reached its trial budget while this trial started")
            raise _Surplus()
        curve: list[float] = []

        def fail(status: str, reason: str) -> None:
            trial.set_user_attr("status", status)
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("curve", curve)
            log.info("trial %d %s: %s", trial.number, status, reason)

        try:
            config = sample_config(self.space, trial)
            trial.set_user_attr("config", config.to_dict())

            def on_cost(cost: dict[str, float]) -> None:
                trial.set_user_attr("cost", cost)
                for key, value in settings.budgets.violations(cost).items():
                    trial.set_constraint(key, value)

            def report(epoch: int, metrics: dict[str, float]) -> None:
                curve.append(float(metrics[M.ACCURACY]))
                trial.set_user_attr("curve", curve)
                if self.pareto is not None:
                    decision = pareto_decision(self.pareto, trial, curve)
                    if decision.prune:
                        raise optuna.TrialPruned(pruned_reason("pareto", epoch + 1, decision.reason))
                elif self.pruner_name in SINGLE_OBJECTIVE_PRUNERS:
                    trial.report(float(metrics[M.ACCURACY]), epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} by the {self.pruner_name} pruner "
                                                 f"(accuracy {metrics[M.ACCURACY]:.4f})")

            outcome = execute(config, settings, report=report, on_cost=on_cost)
        except Infeasible as error:
            trial.set_user_attr("status", "infeasible")
            trial.set_user_attr("reason", error.reason)
            metrics = {**error.cost, M.ACCURACY: 0.0}
            trial.set_user_attr("metrics", metrics)
            log.info("trial %d infeasible: %s", trial.number, error.reason)
            return self._finish(self._values(metrics))
        except optuna.TrialPruned as error:
            fail("pruned", str(error) or "pruned")
            raise
        except KeyboardInterrupt:
            fail("interrupted", "interrupted by the user (Ctrl-C) while training; it will run again on resume")
            raise
        except Exception as error:  # invalid config, divergence, out of memory, a bug in a user's space: record, go on
            fail("failed", failure_reason(error))
            raise
        trial.set_user_attr("status", "complete")
        trial.set_user_attr("config", {**config.to_dict(), "model": outcome.model_config, "recipe": outcome.recipe})
        trial.set_user_attr("metrics", {k: v for k, v in outcome.metrics.items() if not (isinstance(v, float) and math.isnan(v))})
        values = self._values(outcome.metrics)
        log.info("trial %d complete: %s", trial.number,
                 ", ".join(f"{o}={v:.4g}" for o, v in zip(settings.objectives, values)))
        return self._finish(values)

    def _finish(self, values: list[float]) -> list[float] | float:
        return values if self.settings.multi_objective else values[0]


# --- worker loop and the search ----------------------------------------------------------------------------


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we record failures ourselves, in one line each


def _save(study: optuna.Study, study_dir: Path) -> Any:
    """Read the study and write its table under a lock, so an older snapshot never lands last."""
    import fcntl

    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".trials.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = results(study)
        save_results(table, study_dir)
    return table


def run_worker(settings: SearchSettings, worker: int = 0, *, on_trial: Callable[[Any], None] | None = None) -> None:
    """Run trials of ``settings``' study in this process until its budget is used up."""
    quiet_optuna()
    storage = create_storage(settings)
    study = open_study(settings, storage, worker=worker)
    recover_dead_trials(study)
    objective = _Objective(settings, worker)
    study_dir = settings.study_dir

    def after_trial(study: optuna.Study, trial: Any) -> None:
        table = _save(study, study_dir)
        if on_trial is not None:
            on_trial(table)

    while _counted(study) < settings.n_trials or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[after_trial], gc_after_trial=False)


def _worker_entry(settings_dict: dict[str, Any], worker: int, threads: int, log_path: str) -> None:
    import torch

    torch.set_num_threads(threads)
    setup_log_file(Path(log_path))
    settings = SearchSettings(**{**settings_dict, "objectives": tuple(settings_dict["objectives"])})
    with contextlib.suppress(KeyboardInterrupt):
        run_worker(settings, worker)


def setup_log_file(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [pid {os.getpid()}] %(levelname)s %(message)s"))
    root = logging.getLogger("gsa_search")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


class Progress:
    """The stderr progress of a search: trials done (ok / pruned / failed / infeasible), front size,
    best values, elapsed time and ETA.

    On a terminal, a tqdm bar redrawn in place. Otherwise (CI logs, ``make demo > log``) plain lines:
    one at the start, one when the first trial finishes, then at most one every
    :attr:`LINE_INTERVAL_S` seconds when more have finished, and a last one at :meth:`close` if
    anything finished since.
    """

    LINE_INTERVAL_S = 15.0

    def __init__(self, settings: SearchSettings, enabled: bool, already: int, *, stream: Any = None) -> None:
        self.settings = settings
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        self.lines = False  # plain lines (not a terminal)
        self.total = settings.n_trials
        self.start_done = self.done = self.printed_done = min(already, self.total)
        self.started = time.perf_counter()
        self.last_line = -math.inf
        self.status = ""
        if not enabled:
            return
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.start_done, desc=settings.study_name, unit="trial",
                            file=self.stream, dynamic_ncols=True)
        else:
            self.lines = True
            todo = self.total - self.start_done
            self._print(f"{settings.study_name}: {self.start_done}/{self.total} trials done, "
                        f"{todo} to run" + (" (resumed)" if self.start_done else ""))
            self.last_line = -math.inf  # the first finished trial prints at once (with the first ETA)

    def _summary(self, table: Any) -> dict[str, Any]:
        counts = state_counts(table)
        postfix: dict[str, Any] = {"ok": counts["complete"], "pruned": counts["pruned"], "failed": counts["failed"],
                                   "infeasible": counts["infeasible"]}
        front = pareto_front(table, self.settings.objectives)
        if self.settings.multi_objective:
            postfix["front"] = len(front)
        if len(front):
            for objective in self.settings.objectives:
                column = front[objective]
                best = column.max() if M.DIRECTIONS[objective] == "maximize" else column.min()
                postfix[objective] = f"{best:.4g}"
        self.done = min(sum(counts[s] for s in COUNTED), self.total)
        return postfix

    def update(self, table: Any) -> None:
        if self.bar is None and not self.lines:
            return
        postfix = self._summary(table)
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
            return
        self.status = ", ".join(f"{k} {v}" for k, v in postfix.items())
        now = time.perf_counter()
        if self.done != self.printed_done and now - self.last_line >= self.LINE_INTERVAL_S:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.started
        ran = self.done - self.start_done
        eta = ""
        if 0 < ran and self.done < self.total:
            eta = f", ETA {_duration(elapsed / ran * (self.total - self.done))}"
        self._print(f"{self.settings.study_name}: {self.done}/{self.total} trials ({self.status}), "
                    f"{_duration(elapsed)} elapsed{eta}")
        self.printed_done = self.done

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.done != self.printed_done:
            self._line()
        self.lines = False


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_search(settings: SearchSettings, *, progress: bool = True) -> SearchResult:
    """Validate, create or resume the study, run it to its trial budget, save and return the results.

    Raises :class:`UserError` for bad settings or data that cannot be loaded (before anything is
    created: a study folder made by this call is removed again when opening the storage fails).
    Ctrl-C returns the partial result with ``interrupted=True`` once the running trial is recorded.
    """
    settings.validate().check_data()
    quiet_optuna()
    tic = time.perf_counter()
    study_dir = settings.study_dir
    if (study_dir / "ray" / "identity.json").exists():
        raise UserError(f"{study_dir} holds a Ray Tune experiment: re-run it with --backend ray, or pick another --study")
    created_dir = not study_dir.exists()
    try:
        storage = create_storage(settings)
        study = open_study(settings, storage)
    except BaseException:
        if created_dir and study_dir.exists():
            import shutil

            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    study_dir.mkdir(parents=True, exist_ok=True)
    handler = setup_log_file(study_dir / "log.txt")
    record = {**settings.to_dict(), "environment": environment(), "dataset_source": _dataset_source(settings)}
    (study_dir / "search.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("search %s: %s", settings.study_name, json.dumps(settings.to_dict(), default=str))
    table = results(study)
    bar = Progress(settings, progress, sum(state_counts(table)[s] for s in COUNTED))
    interrupted = False
    try:
        if settings.workers == 1:
            import torch

            if settings.threads is not None:
                torch.set_num_threads(settings.threads)
            run_worker(settings, 0, on_trial=bar.update)
        else:
            _run_processes(settings, study, bar)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        logging.getLogger("gsa_search").removeHandler(handler)
        handler.close()
    table = _save(study, study_dir)
    return SearchResult(settings=settings, study_dir=study_dir, storage=_redact(settings.storage_url()), table=table,
                        counts=state_counts(table), front=pareto_front(table, settings.objectives),
                        wall_s=time.perf_counter() - tic, interrupted=interrupted)


def _dataset_source(settings: SearchSettings) -> str:
    """The dataset's ``source`` line (what exactly was loaded), for the record; loaded once, cached."""
    try:
        data = load_data_cached(settings.dataset, data_dir=settings.data_dir, image_size=settings.resolved_image_size(),
                                seed=settings.base_recipe().seed, **settings.dataset_options)
    except Exception as error:  # noqa: BLE001 - the trials will report it; the record says why
        return f"could not load: {type(error).__name__}: {error}"
    return data.source


def _run_processes(settings: SearchSettings, study: optuna.Study, bar: Progress) -> None:
    """``settings.workers`` processes on one study; GPUs spread one per worker, cores shared evenly."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    threads = settings.threads_per_worker()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    settings_dict = dataclasses.asdict(settings)
    processes = []
    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    try:
        for worker in range(settings.workers):
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
            process = context.Process(target=_worker_entry, name=f"gsa-search-worker-{worker}",
                                      args=(settings_dict, worker, threads, str(settings.study_dir / "log.txt")))
            process.start()
            processes.append(process)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            bar.update(results(study))
    except KeyboardInterrupt:
        for process in processes:  # they got the same Ctrl-C: let them record their trial
            process.join(timeout=60)
        raise
    for process in processes:
        process.join()
    failed = [p for p in processes if p.exitcode not in (0, None)]
    if failed:
        log.warning("%d worker(s) exited with errors: %s", len(failed), ", ".join(str(p.exitcode) for p in failed))
