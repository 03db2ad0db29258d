"""The Ray Tune runner: the same search as the Optuna runner, with trials spread over a Ray cluster.

Status: stable. ``gsa-search search --backend ray`` (or :func:`run_ray_search`) runs the *same*
define-by-run space through ``ray.tune.search.optuna.OptunaSearch`` (several objectives: its
``metric``/``mode`` lists; one objective: a single metric) with the same sampler as the Optuna
runner, and a function trainable that rebuilds the :class:`~gsa_search.trial.TrialConfig` from Ray's
flat parameter dict by replaying the space on ``optuna.trial.FixedTrial(params)`` and calls
:func:`~gsa_search.trial.run_trial` with the same budgets, base recipe and dataset options
(``runners._trial_exec``). Only Ray's Train-V2 Tune APIs are used (``ray.tune.report``,
``tune.RunConfig``, ``tune.FailureConfig``); the trainable never touches ``ray.train``.

What a trial reports, once per epoch (``ray.tune.report``): ``trial`` (its number, given by the
searcher: the number of its Optuna trial, so trials are numbered 0, 1, ... as in the Optuna runner),
``status`` (``training``; the last epoch is reported once, with the final metrics and ``complete``),
the epoch's metrics, the objectives, ``cost`` (FLOPs/params measured before training), ``curve``,
``trial_config`` (JSON), ``host`` and ISO start/end times. An infeasible config reports its cost with
accuracy 0 and ``status=infeasible`` and never trains; an invalid config or any exception in the
trial reports ``status=failed`` with the reason (objectives NaN) and the trial ends normally, so Ray
never retries a deterministic failure. Only a trial whose worker *died* (process killed, node lost)
errors in Ray, and ``FailureConfig(max_failures=...)`` restarts it from scratch.

Pruning: ``asha`` (one objective; Ray's ASHAScheduler on accuracy, grace 2 epochs) and ``pareto``
(several objectives, the default there): :class:`runners.ray_scheduler.ParetoScheduler`, the same
rule on the same inputs as the Optuna runner. The schedulers record why they stopped a trial.

Where things live: the Ray experiment in ``reports/<study>/ray/tune`` (absolute ``storage_path``;
a multi-node cluster needs that folder on shared storage), the stop decisions in
``reports/<study>/ray/decisions.json``, and the results table (same columns as the Optuna runner's,
``backend`` = ``ray``) in ``reports/<study>/trials.csv``/``.parquet``, rewritten after every trial.

Resume: re-running the same command restores the experiment (``Tuner.restore(...,
resume_errored=True)``): finished trials are kept, unfinished and errored ones run again from the
start with the same parameters, and new trials are sampled until ``n_trials`` (Ray's
``num_samples``; a stored experiment's budget cannot change). The experiment state is saved every
2 seconds (``TUNE_GLOBAL_CHECKPOINT_S``, unless set), so a driver killed with SIGKILL loses at
most that much bookkeeping: a trial that finished in that window runs again (same parameters and
seed, same values).

Cluster: ``address`` (``HOST:PORT``) joins a running cluster (``ray start --head``); without it a
local cluster starts with this machine's cores. Each trial asks for ``cpus_per_trial`` CPUs (1) and
``gpus_per_trial`` GPUs (fractions share a GPU; default 1 when the cluster has a GPU, else 0), so
as many trials run at once as the cluster holds; trial actors are reused (the dataset stays loaded). A loopback address (and the local cluster) keeps
Ray on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); token authentication is switched on
(``RAY_AUTH_MODE=token``) when a token is present (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``) and the variable is unset. An unreachable cluster and more CPUs or GPUs per
trial than the cluster has are :class:`~runners.settings.UserError`\\ s, raised before a study folder
exists. The cluster must have gsa-search installed (the trainable imports it on the workers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from gsa_search import metrics as M
from gsa_search.trial import Infeasible, InvalidConfig

from . import _process
from ._trial_exec import execute, failure_reason, pareto_rule, sample_config
from .optuna_runner import COUNTED, Progress, SearchResult, make_sampler, quiet_optuna, setup_log_file, state_counts
from .ray_scheduler import STATUS, TRAINING, TRIAL_KEY, ParetoScheduler, RecordingASHA, read_decisions
from .results import pareto_front, ray_rows, results_table, save_results
from .settings import SearchSettings, UserError

__all__ = ["run_ray_search", "ray_results", "GsaOptunaSearch", "SpaceSampler", "trainable", "EXPERIMENT"]

log = logging.getLogger("gsa_search.search")

EXPERIMENT = "tune"  # the Ray experiment's folder in reports/<study>/ray/
DECISIONS = "decisions.json"
IDENTITY = "identity.json"
CHECKPOINT_PERIOD_S = "2"
_CONNECT_TIMEOUT_S = 3.0
_LIVE: dict[str, Any] = {}  # study folder -> the driver's live progress bar (callbacks are pickled with the experiment)


# --- the searcher: the space, sampled by Optuna inside Ray ------------------------------------------------


class SpaceSampler:
    """The define-by-run function ``OptunaSearch`` calls: it samples the space and returns ``None``
    (``OptunaSearch`` wants ``None`` or a dict of constants, not a ``TrialConfig``). An error of the
    space is swallowed here: the parameters sampled so far go to the trainable, whose replay raises
    the same error and records it as the trial's reason. Picklable (Ray saves the searcher with
    ``pickle``): it keeps the space's name or ``FILE.py:FUNCTION`` and resolves it when called."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fn: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self._fn = state["spec"], None

    def __call__(self, trial: Any) -> None:
        if self._fn is None:
            self._fn = search_spaces.get_space(self.spec)
        with contextlib.suppress(Exception):
            self._fn(trial)
        return None


class GsaOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that numbers trials (the number of their Optuna trial, in the config under
    ``gsa_trial``) and tells Optuna what happened: a trial stopped by the scheduler is PRUNED (Ray
    would report its partial accuracy as a final value), a failed one FAIL, an infeasible one
    COMPLETE with accuracy 0 (as in the Optuna runner)."""

    def suggest(self, trial_id: str) -> Any:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config[TRIAL_KEY] = self._ot_trials[trial_id].number
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        status = (result or {}).get(STATUS)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or status not in (TRAINING, "failed"):
            return super().on_trial_complete(trial_id, result=result, error=error)
        state = optuna.trial.TrialState.PRUNED if status == TRAINING and not error else optuna.trial.TrialState.FAIL
        with contextlib.suppress(Exception):
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


# --- the trainable ----------------------------------------------------------------------------------------


class _ReportFailed(BaseException):
    """``ray.tune.report`` raised (Ray is stopping this trial): leave, never record it as a failure."""


def _now() -> str:
    return datetime.now().isoformat()


def _settings_from(data: dict[str, Any]) -> SearchSettings:
    return SearchSettings(**{**data, "objectives": tuple(data["objectives"])})


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value) if isinstance(value, float) else value
    return out


def trainable(config: dict[str, Any], settings: dict[str, Any] | None = None) -> None:
    """Ray Tune function trainable: one trial of the search ``settings`` (a ``SearchSettings`` dict)."""
    import torch

    search = _settings_from(settings or {})
    torch.set_num_threads(search.ray_threads())
    quiet_optuna()
    number = config.get(TRIAL_KEY)
    params = {k: v for k, v in config.items() if k != TRIAL_KEY}
    ident = _process.identity()
    base = {"trial": number, "host": ident["host"], "datetime_start": _now()}
    state: dict[str, Any] = {"cost": {}, "curve": [], "config": None, "pending": None, "epochs": None}

    def send(status: str, metrics: dict[str, Any], *, reason: str = "", final: bool = False) -> None:
        result: dict[str, Any] = {o: float("nan") for o in search.objectives}
        result.update(_numbers(metrics))
        result.update(base)
        result.update({STATUS: status, "reason": reason, "cost": json.dumps(state["cost"]),
                       "curve": json.dumps(state["curve"]), "trial_config": state["config"],
                       "epochs_run": len(state["curve"])})
        if final:
            result["datetime_complete"] = _now()
        try:
            tune.report(result)
        except Exception as error:  # noqa: BLE001 - Ray is tearing the trial down
            raise _ReportFailed(str(error)) from None

    def on_cost(cost: dict[str, float]) -> None:
        state["cost"] = dict(cost)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        state["curve"].append(float(metrics[M.ACCURACY]))
        metrics = {k: v for k, v in metrics.items() if k != M.EPOCH}
        if len(state["curve"]) >= state["epochs"]:  # the last epoch goes out once, with the final metrics
            state["pending"] = metrics
            return
        send(TRAINING, {**state["cost"], **metrics})

    try:
        trial_config = sample_config(search_spaces.get_space(search.space),
                                     optuna.trial.FixedTrial(params, number=number or 0))
        state["config"] = json.dumps(trial_config.to_dict())
        try:
            state["epochs"] = search.base_recipe().replace(**trial_config.recipe).epochs
        except (ValueError, TypeError) as error:  # run_trial would say the same
            raise InvalidConfig(str(error)) from None
        outcome = execute(trial_config, search, report=report, on_cost=on_cost)
    except _ReportFailed:
        raise
    except Infeasible as error:
        state["cost"] = dict(error.cost)
        send("infeasible", {**error.cost, M.ACCURACY: 0.0}, reason=error.reason, final=True)
        return
    except Exception as error:  # noqa: BLE001 - invalid config, divergence, OOM, a bug in a space: record it
        send("failed", dict(state["cost"]), reason=failure_reason(error), final=True)
        return
    state["config"] = json.dumps({**trial_config.to_dict(), "model": outcome.model_config, "recipe": outcome.recipe})
    metrics = {k: v for k, v in outcome.metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    send("complete", {**(state["pending"] or {}), **metrics}, final=True)


def _trial_dirname(trial: Any) -> str:
    number = (trial.config or {}).get(TRIAL_KEY)
    return f"trial_{number:05d}_{trial.trial_id}" if isinstance(number, int) else f"trial_{trial.trial_id}"


# --- reading the experiment -------------------------------------------------------------------------------


def _error_text(trial: Any) -> str | None:
    """The last line of the trial's error file (``error.txt`` in its folder), or None."""
    if not trial.run_metadata.error_filename:
        return None
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the file went missing: the status still says ERROR
        return "the trial errored"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Failure #", "Traceback", "File ", "^"))]
    return lines[-1] if lines else "the trial errored"


def _snapshot(trial: Any, status: str | None = None) -> dict[str, Any]:
    return {"trial_id": trial.trial_id, "status": status or trial.status, "config": dict(trial.config or {}),
            "last_result": dict(trial.run_metadata.last_result or {}), "error": _error_text(trial)}


def ray_results(trials: Any, study_dir: Path, *, now: tuple[Any, str] | None = None) -> Any:
    """The results table of Ray ``Trial`` objects (live ones, or ``ExperimentAnalysis(path).trials``).
    ``now``: ``(trial, status)`` for the trial a callback is about (Ray sets its new status, RUNNING or
    TERMINATED, only after telling the callbacks)."""
    decisions = read_decisions(study_dir / "ray" / DECISIONS)
    snapshots = [_snapshot(t, now[1] if now is not None and t is now[0] else None) for t in trials]
    return results_table(ray_rows(snapshots, decisions))


class _Silent(tune.ProgressReporter):
    """Ray's progress tables stay off stdout (the CLI prints results there): our own bar is on stderr."""

    def should_report(self, trials: list, done: bool = False) -> bool:
        return False

    def report(self, trials: list, done: bool, *sys_info: Any) -> None:
        pass


class _Recorder(tune.Callback):
    """Driver-side: when a trial starts or ends, rewrite the results table; move the progress bar.
    Pickled with the experiment; it finds the live bar through the module's ``_LIVE``."""

    def __init__(self, study_dir: str) -> None:
        self.study_dir = study_dir

    def _update(self, trials: list, trial: Any, status: str | None, quiet: bool = False) -> None:
        try:
            table = ray_results(trials, Path(self.study_dir), now=(trial, status) if status else None)
            save_results(table, self.study_dir)
        except Exception as error:  # noqa: BLE001 - never let bookkeeping stop the search
            log.warning("could not save the results table: %s", error)
            return
        if quiet:
            return
        row = table[table["trial"] == (trial.config or {}).get(TRIAL_KEY)]
        if len(row):
            r = row.iloc[0]
            log.info("trial %s %s%s", r["trial"], r["state"], f": {r['reason']}" if r["reason"] else "")
        bar = _LIVE.get(self.study_dir)
        if bar is not None:
            bar.update(table)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trials, trial, "RUNNING", quiet=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trials, trial, None)


# --- connecting to the cluster ----------------------------------------------------------------------------


def _token_present() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _keep_on_loopback() -> None:
    """Keep Ray on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): for processes started from
    here, and for this already imported ``ray`` (which read the variable at import)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _enable_token_auth() -> None:
    """``RAY_AUTH_MODE=token`` for this process (whose Ray read its configuration at import) and its
    children: what ``ray.init()`` does by itself for a cluster it finds, but never for an explicit address."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
    except ImportError:  # another Ray version: refresh the cached configuration directly
        from ray._raylet import Config

        Config.initialize("")
        return
    enable()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _reach(address: str) -> None:
    """A TCP connection to the cluster's GCS port, or a :class:`UserError` (``ray.init`` itself would
    retry an unreachable address for minutes)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        detail = error.strerror or str(error) or type(error).__name__
        raise UserError(f"cannot reach the Ray cluster at {address}: {detail}; start one with `ray start --head` "
                        "(or leave out --address for a local cluster)") from None


def _connect(settings: SearchSettings) -> bool:
    """``ray.init`` for ``settings``; True when this call started Ray in this process."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    address = settings.address
    if address is None:
        _keep_on_loopback()
        # "local": a new cluster of this process, even when `ray start` runs one on this machine
        ray.init(address="local", num_cpus=_cores(), include_dashboard=False, **quiet)
        return True
    if address != "auto":
        _reach(address)
        if _loopback(address.rpartition(":")[0]):
            _keep_on_loopback()
    if "RAY_AUTH_MODE" not in os.environ and _token_present():
        _enable_token_auth()
    try:
        with _quiet_stderr():
            ray.init(address=address, **quiet)
    except Exception as error:  # noqa: BLE001 - ConnectionError, AuthenticationError, ...
        with contextlib.suppress(Exception):
            ray.shutdown()
        text = " ".join(str(error).split())
        hint = ""
        if "auth" in text.lower() or "token" in text.lower() or isinstance(error, ConnectionError):
            hint = " (a cluster started with token authentication needs RAY_AUTH_MODE=token and its token)"
        raise UserError(f"cannot reach the Ray cluster at {address}: {text[:300]}{hint}; "
                        "start one with `ray start --head`") from None
    return True


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Ray's C++ core writes connection retries to file descriptor 2: keep them out of the CLI's
    one-line errors (they are in Ray's own logs)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _check_resources(settings: SearchSettings) -> tuple[float, float]:
    """``(cpus, gpus)`` per trial, refused when one trial needs more than the whole cluster has. The
    GPU default: 1 when the cluster has CUDA GPUs (Ray detects them; for the local cluster that is
    this machine's CUDA), else 0."""
    cluster = ray.cluster_resources()
    where = f"the Ray cluster at {settings.address}" if settings.address else "the local Ray cluster"
    have_cpus, have_gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    cpus = settings.resolved_cpus_per_trial()
    gpus = float(settings.gpus_per_trial) if settings.gpus_per_trial is not None else (1.0 if have_gpus >= 1 else 0.0)
    if gpus > have_gpus:
        raise UserError(f"--gpus-per-trial {gpus:g} is more than {where} has "
                        f"({have_gpus:g} GPU{'s' if have_gpus != 1 else ''}); use --gpus-per-trial "
                        f"{min(have_gpus, 1):g} or a cluster with GPUs")
    if cpus > have_cpus:
        raise UserError(f"--cpus-per-trial {cpus:g} is more than {where} has ({have_cpus:g} CPUs)")
    return cpus, gpus


# --- the search -------------------------------------------------------------------------------------------


def _absolute(settings: SearchSettings) -> SearchSettings:
    """Paths the trials use, made absolute (Ray runs each trial in a folder of its own)."""
    import dataclasses

    changes: dict[str, Any] = {"reports_dir": str(Path(settings.reports_dir).expanduser().resolve())}
    if settings.data_dir is not None:
        changes["data_dir"] = str(Path(settings.data_dir).expanduser().resolve())
    path, sep, function = settings.space.rpartition(":")
    if sep and path.endswith(".py"):
        changes["space"] = f"{Path(path).expanduser().resolve()}:{function}"
    return dataclasses.replace(settings, **changes)


def _check_study(settings: SearchSettings, study_dir: Path) -> bool:
    """Refuse a study folder of the other backend or of a different search; True when the Ray
    experiment exists (resume)."""
    for name in ("study.db", "journal.log"):
        if (study_dir / name).exists():
            raise UserError(f"study {settings.study_name!r} in {study_dir} was run with the Optuna backend; "
                            "re-run it without --backend ray, or pick another --study")
    path = study_dir / "ray" / IDENTITY
    if not path.exists():
        return False
    stored = json.loads(path.read_text())
    changed = settings.identity_changes(stored.get("identity"))
    if changed:
        raise UserError(f"study {settings.study_name!r} already exists with different settings "
                        f"({', '.join(changed)}); re-run with the same options to resume, or pick another --study")
    if stored.get("n_trials") != settings.n_trials:
        raise UserError(f"study {settings.study_name!r} was started with --trials {stored.get('n_trials')}; a stored "
                        "Ray Tune experiment keeps its budget: re-run with that number, or pick another --study")
    return True


def _searcher(settings: SearchSettings) -> GsaOptunaSearch:
    sampler = make_sampler(settings.resolved_sampler(), seed=settings.seed, n_trials=settings.n_trials,
                           multi_objective=settings.multi_objective)
    modes = ["max" if d == "maximize" else "min" for d in settings.directions]
    if settings.multi_objective:
        return GsaOptunaSearch(space=SpaceSampler(settings.space), metric=list(settings.objectives), mode=modes,
                               sampler=sampler)
    return GsaOptunaSearch(space=SpaceSampler(settings.space), metric=settings.objectives[0], mode=modes[0],
                           sampler=sampler)


def _scheduler(settings: SearchSettings, decisions: Path) -> Any:
    pruner = settings.resolved_pruner()
    if pruner == "pareto":
        rule = pareto_rule(settings)
        if rule is not None:
            return ParetoScheduler(rule, decisions_path=str(decisions))
    if pruner == "asha":
        return RecordingASHA(max_t=settings.base_recipe().epochs, grace_period=2, decisions_path=str(decisions))
    return None


def _trainable(settings: SearchSettings, cpus: float, gpus: float) -> Any:
    resources = {"cpu": cpus, "gpu": gpus} if gpus else {"cpu": cpus}
    return tune.with_resources(tune.with_parameters(trainable, settings=settings.to_dict()), resources)


def _tuner(settings: SearchSettings, experiment: Path, study_dir: Path, cpus: float, gpus: float,
           resume: bool) -> Any:
    fn = _trainable(settings, cpus, gpus)
    if resume and tune.Tuner.can_restore(str(experiment)):
        if any(experiment.glob("experiment_state-*.json")):
            return tune.Tuner.restore(str(experiment), fn, resume_errored=True)
    if experiment.exists():  # created, then killed before its first state was saved: nothing ran
        shutil.rmtree(experiment)
    tune_config = tune.TuneConfig(
        search_alg=_searcher(settings), scheduler=_scheduler(settings, study_dir / "ray" / DECISIONS),
        num_samples=settings.n_trials, reuse_actors=True, trial_dirname_creator=_trial_dirname,
    )  # fmt: skip
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=str(experiment.parent), verbose=0,
        failure_config=tune.FailureConfig(max_failures=settings.resolved_max_failures()),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None), callbacks=[_Recorder(str(study_dir))],
        progress_reporter=_Silent(),
    )  # fmt: skip
    return tune.Tuner(fn, tune_config=tune_config, run_config=run_config)


@contextlib.contextmanager
def _quiet_ray_logs() -> Any:
    """Ray Tune's own output off: its loggers at ERROR, the legacy reporter (``RAY_AIR_NEW_OUTPUT=0``,
    which honours ``verbose=0``; the new one prints its heading whatever the verbosity) and anything
    still printed sent to stderr, never stdout."""
    names = ("ray", "ray.tune", "ray.train", "ray.air")
    levels = {n: logging.getLogger(n).level for n in names}
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def run_ray_search(settings: SearchSettings, *, progress: bool = True) -> SearchResult:
    """Validate, connect (or start a local cluster), create or restore the Ray experiment, run it to
    its trial budget, save and return the results (same :class:`SearchResult` as the Optuna runner).

    Raises :class:`UserError` for bad settings, data that cannot be loaded here, an unreachable
    cluster, or more CPUs/GPUs per trial than the cluster has, before a study folder exists. Ctrl-C
    stops the running trials and returns the partial result with ``interrupted=True``; re-running
    the same command resumes.
    """
    settings.validate().check_data()
    settings = _absolute(settings)
    quiet_optuna()
    tic = time.perf_counter()
    study_dir = settings.study_dir
    resume = _check_study(settings, study_dir)
    started = _connect(settings)
    created_dir = not study_dir.exists()
    handler = None
    bar = None
    table = None
    interrupted = False
    try:
        try:
            cpus, gpus = _check_resources(settings)
            ray_dir = study_dir / "ray"
            ray_dir.mkdir(parents=True, exist_ok=True)
            identity = json.loads(json.dumps(settings.identity(), default=str))
            (ray_dir / IDENTITY).write_text(json.dumps({"identity": identity, "n_trials": settings.n_trials}, indent=2) + "\n")
            with _quiet_ray_logs():
                tuner = _tuner(settings, ray_dir / EXPERIMENT, study_dir, cpus, gpus, resume)
        except BaseException:
            if created_dir and study_dir.exists():
                shutil.rmtree(study_dir, ignore_errors=True)
            raise
        handler = setup_log_file(study_dir / "log.txt")
        (study_dir / "search.json").write_text(json.dumps(settings.to_dict(), indent=2, default=str) + "\n")
        log.info("search %s (ray, %s): %s", settings.study_name, "resumed" if resume else "new",
                 json.dumps(settings.to_dict(), default=str))
        table = _table(ray_dir / EXPERIMENT, study_dir)
        bar = Progress(settings, progress, 0 if table is None else sum(state_counts(table)[s] for s in COUNTED))
        _LIVE[str(study_dir)] = bar
        try:
            with _quiet_ray_logs():
                tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        table = _table(study_dir / "ray" / EXPERIMENT, study_dir)
    finally:
        _LIVE.pop(str(study_dir), None)
        if bar is not None:
            bar.close()
        if handler is not None:
            logging.getLogger("gsa_search").removeHandler(handler)
            handler.close()
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()
    if table is None:
        table = results_table([])
    save_results(table, study_dir)
    counts = state_counts(table)
    if counts["running"] or counts["interrupted"] or counts["waiting"]:  # Ray stopped them on Ctrl-C
        interrupted = True
    return SearchResult(settings=settings, study_dir=study_dir, storage=str(study_dir / "ray" / EXPERIMENT),
                        table=table, counts=counts, front=pareto_front(table, settings.objectives),
                        wall_s=time.perf_counter() - tic, interrupted=interrupted)


def _table(experiment: Path, study_dir: Path) -> Any:
    """The results table from the experiment's last saved state (``None`` before there is one)."""
    if not any(experiment.glob("experiment_state-*.json")):
        return None
    from ray.tune import ExperimentAnalysis

    with _quiet_ray_logs():
        analysis = ExperimentAnalysis(str(experiment))
    return ray_results(analysis.trials, study_dir)
