"""Search settings: everything a search needs, validated before anything is created or trained.

Status: stable. :class:`SearchSettings` is backend-neutral (the Optuna and Ray runners take the same
object); :meth:`SearchSettings.validate` rejects bad input with :class:`UserError` (one line naming
the option and what is allowed) before a study folder, database or process exists. The Ray backend
(``backend="ray"``) adds ``address`` (join a running cluster, ``HOST:PORT``), ``cpus_per_trial``,
``gpus_per_trial`` (fractional allowed) and ``max_failures``; they are refused with the Optuna
backend, as Optuna's ``storage``/``workers`` are with Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from gsa_search import metrics as M
from gsa_search.data import list_datasets
from gsa_search.trainer import DIGITS_IMAGE_SIZE, DIGITS_PAIRS_RECIPE, DIGITS_RECIPE, Recipe
from gsa_search.trial import Budgets

__all__ = [
    "UserError",
    "SearchSettings",
    "OBJECTIVES",
    "SAMPLERS",
    "PRUNERS",
    "BACKENDS",
    "RAY_PRUNERS",
    "default_recipe",
    "default_image_size",
    "suggest",
]

OBJECTIVES = (M.ACCURACY, M.FLOPS, M.PARAMS, M.LATENCY_MS)
SAMPLERS = ("auto", "tpe", "nsga2", "nsga3", "gp", "random", "grid", "bruteforce")
PRUNERS = ("auto", "none", "median", "sha", "hyperband", "asha", "pareto")
SINGLE_OBJECTIVE_PRUNERS = ("median", "sha", "hyperband", "asha")
BACKENDS = ("optuna", "ray")
OPTUNA_PRUNERS = ("auto", "none", "median", "sha", "hyperband", "pareto")
RAY_PRUNERS = ("auto", "none", "asha", "pareto")  # asha: Ray's ASHAScheduler; pareto: ray_scheduler.ParetoScheduler
DEFAULT_MAX_FAILURES = 3  # Ray: restarts of a trial whose worker died (Optuna's RDB retry count is 3 too)
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints the message as one line and exits 2."""


def suggest(name: str, known: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def default_recipe(dataset: str) -> Recipe:
    """The base recipe: the tuned proxy recipes for ``digits`` and ``digits-pairs``, else ``Recipe()``."""
    if dataset == "digits-pairs":
        return DIGITS_PAIRS_RECIPE
    return DIGITS_RECIPE if dataset.startswith("digits") else Recipe()


def default_image_size(dataset: str) -> int | None:
    return DIGITS_IMAGE_SIZE if dataset == "digits" else None


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """One search: what to sample, what to optimise, on which data, where to store it, how to run it.

    ``recipe`` holds the base :class:`~gsa_search.trainer.Recipe` fields (a space's recipe overrides
    apply on top); ``storage`` is ``None`` (an SQLite file in the study folder; with ``workers > 1``
    a journal file), an SQLAlchemy URL (``postgresql+psycopg://...``, ``sqlite:///...``) or
    ``journal:PATH``.
    """

    space: str = "gsa_block_v1"
    objectives: tuple[str, ...] = (M.ACCURACY,)
    n_trials: int = 20
    study: str | None = None
    sampler: str = "auto"
    pruner: str = "auto"
    seed: int = 0
    storage: str | None = None
    workers: int = 1
    threads: int | None = None
    max_flops: float | None = None
    max_params: float | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    reports_dir: str = "reports"
    backend: str = "optuna"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_failures: int | None = None

    # --- derived -------------------------------------------------------------------------------------

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        return f"{self.space.rsplit(':', 1)[-1].replace('.py', '')}-{self.dataset}-{'-'.join(self.objectives)}"

    @property
    def study_dir(self) -> Path:
        return Path(self.reports_dir) / self.study_name

    @property
    def directions(self) -> list[str]:
        return [M.DIRECTIONS[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def budgets(self) -> Budgets:
        return Budgets(max_flops=self.max_flops, max_params=self.max_params)

    def base_recipe(self) -> Recipe:
        return default_recipe(self.dataset).replace(**self.recipe)

    def resolved_image_size(self) -> int | None:
        return self.image_size if self.image_size is not None else default_image_size(self.dataset)

    def resolved_sampler(self) -> str:
        return "tpe" if self.sampler == "auto" else self.sampler

    def resolved_pruner(self) -> str:
        if self.pruner != "auto":
            return self.pruner
        if self.backend == "ray":
            if M.ACCURACY not in self.objectives:
                return "none"
            return "pareto" if self.multi_objective else "asha"
        return "pareto" if self.multi_objective else "median"

    # --- Ray -------------------------------------------------------------------------------------------

    def resolved_cpus_per_trial(self) -> float:
        return 1.0 if self.cpus_per_trial is None else float(self.cpus_per_trial)

    def resolved_gpus_per_trial(self) -> float:
        """``gpus_per_trial``, else 1 when this machine has CUDA and 0 otherwise (the Ray runner
        decides by the cluster's GPUs instead: a cluster joined with ``address`` may differ)."""
        if self.gpus_per_trial is not None:
            return float(self.gpus_per_trial)
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0

    def resolved_max_failures(self) -> int:
        return DEFAULT_MAX_FAILURES if self.max_failures is None else int(self.max_failures)

    def ray_threads(self) -> int:
        """Torch threads of one Ray trial: ``threads``, else its CPUs (at least 1)."""
        if self.threads is not None:
            return self.threads
        return max(1, int(self.resolved_cpus_per_trial()))

    def cost_keys(self) -> tuple[str, ...]:
        """The costs the Pareto-aware pruner compares: the search's cost objectives, else FLOPs."""
        return tuple(o for o in self.objectives if o != M.ACCURACY) or (M.FLOPS,)

    def threads_per_worker(self) -> int:
        if self.threads is not None:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.workers)

    def storage_kind(self) -> str:
        """``sqlite`` | ``journal`` | ``rdb`` (any other SQLAlchemy URL)."""
        url = self.storage
        if url is None:
            return "journal" if self.workers > 1 else "sqlite"
        if url.startswith("journal:"):
            return "journal"
        return "sqlite" if url.startswith("sqlite:") else "rdb"

    def storage_url(self) -> str:
        """The storage as given, or the default in the study folder (``sqlite:///.../study.db`` or
        ``journal:.../journal.log``)."""
        if self.storage is not None:
            return self.storage
        if self.workers > 1:
            return f"journal:{self.study_dir / 'journal.log'}"
        return f"sqlite:///{self.study_dir / 'study.db'}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that define *what* a study computes: a resumed run must match them (the
        recipe's :meth:`~gsa_search.trainer.Recipe.identity`, without its memory format)."""
        return {
            "space": self.space, "objectives": list(self.objectives), "dataset": self.dataset,
            "image_size": self.resolved_image_size(), "dataset_options": self.dataset_options,
            "recipe": self.base_recipe().identity(), "max_flops": self.max_flops, "max_params": self.max_params,
        }  # fmt: skip

    def identity_changes(self, stored: dict[str, Any] | None) -> list[str]:
        """The identity keys on which a stored study differs from these settings (``[]``: the same
        study). A stored recipe is read through :class:`Recipe`, so a recipe field added since the
        study was stored, at its default value, is no change."""
        identity = json.loads(json.dumps(self.identity(), default=str))
        stored = dict(stored or {})
        if isinstance(stored.get("recipe"), dict):
            try:
                stored["recipe"] = json.loads(json.dumps(Recipe.from_dict(stored["recipe"]).identity(), default=str))
            except (TypeError, ValueError):
                pass  # an unreadable recipe stays as stored, and differs
        return sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))

    # --- validation ----------------------------------------------------------------------------------

    def validate(self) -> "SearchSettings":
        """Raise :class:`UserError` for anything wrong; returns ``self``."""
        from search_spaces import get_space, list_spaces

        objectives = list(self.objectives)
        if not objectives:
            raise UserError(f"--objectives is empty; choose from {', '.join(OBJECTIVES)}")
        for objective in objectives:
            if objective not in OBJECTIVES:
                raise UserError(f"unknown objective {objective!r}{suggest(objective, list(OBJECTIVES))} "
                                f"(allowed: {', '.join(OBJECTIVES)})")
        if len(set(objectives)) != len(objectives):
            raise UserError(f"--objectives lists an objective twice: {','.join(objectives)}")
        if M.ACCURACY not in objectives and self.pruner not in ("auto", "none"):
            raise UserError("--pruner needs accuracy among the objectives (pruners watch the accuracy curve)")
        if self.study is not None and not _STUDY_NAME.fullmatch(self.study):
            raise UserError(f"--study {self.study!r} is not a valid name: use letters, digits, '_', '.', '-' "
                            "(up to 100 characters, starting with a letter or digit)")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise UserError(f"--trials must be a positive integer, got {self.n_trials!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UserError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}{suggest(self.sampler, list(SAMPLERS))} "
                            f"(allowed: {', '.join(SAMPLERS)})")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}{suggest(self.pruner, list(PRUNERS))} "
                            f"(allowed: {', '.join(PRUNERS)})")
        if self.multi_objective and self.pruner in SINGLE_OBJECTIVE_PRUNERS:
            raise UserError(f"--pruner {self.pruner} prunes on one objective; this search has "
                            f"{len(objectives)} ({','.join(objectives)}): use --pruner pareto or none")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}{suggest(self.backend, list(BACKENDS))} "
                            f"(allowed: {', '.join(BACKENDS)})")
        self._validate_backend_options()
        for name, value in (("--max-flops", self.max_flops), ("--max-params", self.max_params)):
            if value is not None and not value > 0:
                raise UserError(f"{name} must be a positive number, got {value!r}")
        if self.dataset not in list_datasets():
            raise UserError(f"unknown dataset {self.dataset!r}{suggest(self.dataset, list_datasets())} "
                            f"(known: {', '.join(list_datasets())})")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise UserError(f"--data-dir {self.data_dir} does not exist or is not a directory")
        try:
            get_space(self.space)
        except ValueError as error:
            message = str(error)
            if ":" not in self.space:
                message += suggest(self.space, list_spaces())
            raise UserError(message) from None
        try:
            self.base_recipe()
        except ValueError as error:
            raise UserError(str(error)) from None
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise UserError(f"--image-size must be a positive integer, got {self.image_size!r}")
        self._validate_storage()
        json.dumps(self.identity(), default=str)
        return self

    def check_data(self) -> "SearchSettings":
        """Load the search's data once (cached in this process: the runner and an in-process worker
        reuse it), so that missing or broken data is one :class:`UserError` before the study exists
        instead of a study of failed trials; returns ``self``."""
        from gsa_search.data import DatasetError
        from gsa_search.trial import load_data_cached

        try:
            load_data_cached(self.dataset, data_dir=self.data_dir, image_size=self.resolved_image_size(),
                             seed=self.base_recipe().seed, **self.dataset_options)
        except DatasetError as error:
            raise UserError(" ".join(str(error).split())) from None
        return self

    def _validate_backend_options(self) -> None:
        ray_options = {"--address": self.address, "--cpus-per-trial": self.cpus_per_trial,
                       "--gpus-per-trial": self.gpus_per_trial, "--max-failures": self.max_failures}
        if self.backend != "ray":
            for flag, value in ray_options.items():
                if value is not None:
                    raise UserError(f"{flag} is an option of the Ray backend: add --backend ray")
            if self.pruner not in OPTUNA_PRUNERS:
                raise UserError(f"--pruner {self.pruner} needs --backend ray (with Optuna use "
                                f"{', '.join(p for p in OPTUNA_PRUNERS if p != 'auto')})")
            return
        if self.storage is not None:
            raise UserError("--storage is an option of the Optuna backend; with --backend ray the experiment is "
                            f"stored in {self.study_dir / 'ray'}")
        if self.workers != 1:
            raise UserError("--workers is an option of the Optuna backend; with --backend ray as many trials run at "
                            "once as the cluster's CPUs/GPUs allow (see --cpus-per-trial, --gpus-per-trial)")
        if self.pruner not in RAY_PRUNERS:
            raise UserError(f"--pruner {self.pruner} is an Optuna pruner; with --backend ray use "
                            f"{', '.join(p for p in RAY_PRUNERS if p != 'auto')}")
        if self.address is not None:
            address = str(self.address).strip()
            match = _ADDRESS.fullmatch(address)
            if address != "auto" and (not match or not 0 < int(match.group("port")) < 65536):
                raise UserError(f"--address {self.address!r} is not HOST:PORT (e.g. 127.0.0.1:6379, the address "
                                "`ray start --head` prints) or auto")
        for flag, value, least in (("--cpus-per-trial", self.cpus_per_trial, 0.0),
                                   ("--gpus-per-trial", self.gpus_per_trial, 0.0)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value or value < least \
                    or value == float("inf"):
                raise UserError(f"{flag} must be a number >= 0, got {value!r}")
        if self.cpus_per_trial is not None and not self.cpus_per_trial > 0:
            raise UserError(f"--cpus-per-trial must be a positive number, got {self.cpus_per_trial!r}")
        gpus = self.gpus_per_trial
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            raise UserError(f"--gpus-per-trial {gpus:g}: a fraction must be below 1 (GPUs shared by several trials); "
                            "more than one GPU per trial must be a whole number")
        failures = self.max_failures
        if failures is not None and (isinstance(failures, bool) or not isinstance(failures, int) or failures < 0):
            raise UserError(f"--max-failures must be an integer >= 0, got {failures!r}")

    def _validate_storage(self) -> None:
        url = self.storage
        kind = self.storage_kind()
        if url is not None and kind == "journal" and not url[len("journal:"):]:
            raise UserError("--storage journal: needs a file path, e.g. journal:reports/my-study/journal.log")
        if url is not None and kind != "journal":
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                parsed = make_url(url)
            except ArgumentError:
                raise UserError(
                    f"--storage {url!r} is not a database URL; expected e.g. "
                    "postgresql+psycopg://user:password@host:5432/dbname, sqlite:///path/study.db or journal:PATH"
                ) from None
            if kind == "rdb" and not parsed.drivername.startswith(("postgresql", "mysql")):
                raise UserError(f"--storage {url!r}: unsupported database {parsed.drivername!r}; "
                                "use postgresql+psycopg://..., mysql+pymysql://..., sqlite:///... or journal:PATH")
        if kind == "sqlite" and url is not None and self.workers > 1:
            raise UserError(
                "SQLite cannot serve several workers (\"database is locked\"): use a PostgreSQL URL "
                "(--storage postgresql+psycopg://...) or a journal file (--storage journal:PATH, or no --storage)"
            )
