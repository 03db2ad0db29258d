"""Search settings: everything a search needs, validated before anything is created or trained.

Status: stable. :class:`SearchSettings` is backend-neutral (the Optuna and Ray runners take the same
object); :meth:`SearchSettings.validate` rejects bad input with :class:`UserError` (one line naming
the option and what is allowed) before a study folder, database or process exists.
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
from gsa_search.trainer import DIGITS_IMAGE_SIZE, DIGITS_RECIPE, Recipe
from gsa_search.trial import Budgets

__all__ = [
    "UserError",
    "SearchSettings",
    "OBJECTIVES",
    "SAMPLERS",
    "PRUNERS",
    "default_recipe",
    "default_image_size",
    "suggest",
]

OBJECTIVES = (M.ACCURACY, M.FLOPS, M.PARAMS, M.LATENCY_MS)
SAMPLERS = ("auto", "tpe", "nsga2", "nsga3", "gp", "random", "grid", "bruteforce")
PRUNERS = ("auto", "none", "median", "sha", "hyperband", "pareto")
SINGLE_OBJECTIVE_PRUNERS = ("median", "sha", "hyperband")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints the message as one line and exits 2."""


def suggest(name: str, known: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def default_recipe(dataset: str) -> Recipe:
    """The base recipe: the tuned digits proxy recipe for the digits datasets, else ``Recipe()``."""
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
        return "pareto" if self.multi_objective else "median"

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
        """The settings that define *what* a study computes: a resumed run must match them."""
        return {
            "space": self.space, "objectives": list(self.objectives), "dataset": self.dataset,
            "image_size": self.resolved_image_size(), "dataset_options": self.dataset_options,
            "recipe": self.base_recipe().to_dict(), "max_flops": self.max_flops, "max_params": self.max_params,
        }  # fmt: skip

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
        if self.backend not in ("optuna",):
            raise UserError(f"unknown backend {self.backend!r} (allowed: optuna)")
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
