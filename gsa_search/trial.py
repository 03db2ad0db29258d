"""One trial of a search or an ablation, whichever backend runs it: config -> cost -> budgets -> train.

Status: stable. The data flow of the design (``DESIGN.md``, "Search, pruning, statistics"):

    space(trial) -> TrialConfig -> fit the model to the data -> FLOPs/params (before any training)
    -> budgets (infeasible: recorded, never trained) -> train(..., report=hook) -> metrics

:class:`TrialConfig` is what a search space returns: a backbone config, recipe overrides and
dataset options, all plain and frozen. :func:`run_trial` executes one; it knows nothing of Optuna or
Ray: a runner passes a ``report(epoch, metrics)`` hook (which may raise to prune) and turns the
outcome or the exception into its backend's trial state. Outcomes that are not training failures
have their own exceptions: :class:`InvalidConfig` (the block builder or the recipe rejected the
sampled values; nothing ran) and :class:`Infeasible` (a budget is exceeded; the cost was measured).

Example:
    >>> from gsa_search.models import model_config
    >>> cfg = TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25), recipe={"epochs": 1})
    >>> out = run_trial(cfg, dataset="synthetic", dataset_options={"num_samples": 64}, image_size=8)
    >>> sorted(k for k in ("accuracy", "flops", "params") if k in out.metrics)
    ['accuracy', 'flops', 'params']
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Mapping

from . import metrics as M
from .config import ConfigMixin
from .data import DatasetBundle, load_dataset
from .measure import measure_latency, model_macs, model_params
from .models import build_model, model_config_from_dict
from .trainer import Recipe, train

__all__ = [
    "TrialConfig",
    "TrialOutcome",
    "Budgets",
    "InvalidConfig",
    "Infeasible",
    "run_trial",
    "trial_cost",
    "load_data_cached",
]

ReportFn = Callable[[int, dict[str, float]], None]


class InvalidConfig(ValueError):
    """The sampled values do not make a valid model or recipe (nothing was built or trained)."""


class Infeasible(Exception):
    """The config exceeds a budget; ``cost`` holds what was measured (``flops``, ``params``, ...)."""

    def __init__(self, reason: str, cost: dict[str, float], violations: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason, self.cost, self.violations = reason, cost, violations


@dataclasses.dataclass(frozen=True)
class TrialConfig(ConfigMixin):
    """What one trial trains: a backbone config, overrides of the base recipe, dataset options.

    ``model`` is any registered backbone config (or its dict); it is fitted to the dataset (classes,
    channels, size) when the trial runs. ``recipe`` holds :class:`~gsa_search.trainer.Recipe` fields
    that override the runner's base recipe; ``dataset_options`` are passed to
    :func:`~gsa_search.data.load_dataset` on top of the runner's.
    """

    model: Any
    recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        model = self.model
        if isinstance(model, dict):
            try:
                model = model_config_from_dict(model)
            except (ValueError, TypeError) as error:
                raise InvalidConfig(str(error)) from None
        if not hasattr(model, "fit_to_data") or not hasattr(model, "to_dict"):
            raise InvalidConfig(f"TrialConfig.model must be a backbone config or its dict, got {type(model).__name__}")
        object.__setattr__(self, "model", model)
        for field in ("recipe", "dataset_options"):
            value = getattr(self, field)
            if not isinstance(value, Mapping):
                raise InvalidConfig(f"TrialConfig.{field} must be a dict, got {type(value).__name__}")
            object.__setattr__(self, field, dict(value))
        known = {f.name for f in dataclasses.fields(Recipe)}
        unknown = sorted(set(self.recipe) - known)
        if unknown:
            raise InvalidConfig(f"TrialConfig.recipe: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "recipe": dict(self.recipe), "dataset_options": dict(self.dataset_options)}

    def key(self) -> str:
        """A canonical JSON string: equal configs have equal keys (used to reuse finished trials)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class Budgets:
    """Upper bounds checked after building the model and before training (``None`` = no bound)."""

    max_flops: float | None = None
    max_params: float | None = None

    def __post_init__(self) -> None:
        for field in ("max_flops", "max_params"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"budgets.{field} must be a positive number or None, got {value!r}")

    @property
    def active(self) -> bool:
        return self.max_flops is not None or self.max_params is not None

    def violations(self, cost: Mapping[str, float]) -> dict[str, float]:
        """``{metric: cost - bound}`` for every bound (> 0 means violated), what samplers are told."""
        out = {}
        if self.max_flops is not None:
            out[M.FLOPS] = float(cost[M.FLOPS] - self.max_flops)
        if self.max_params is not None:
            out[M.PARAMS] = float(cost[M.PARAMS] - self.max_params)
        return out


@dataclasses.dataclass
class TrialOutcome:
    """What a finished trial produced: ``metrics`` (see :mod:`gsa_search.metrics`), the config that was
    trained, the per-epoch ``history`` and wall-clock seconds."""

    metrics: dict[str, float]
    model_config: dict[str, Any]
    recipe: dict[str, Any]
    history: list[dict[str, float]]
    duration_s: float


_DATA_CACHE: dict[str, DatasetBundle] = {}
_DATA_CACHE_SIZE = 4


def load_data_cached(name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                     **options: Any) -> DatasetBundle:
    """:func:`~gsa_search.data.load_dataset`, remembered in-process (a search loads its data once)."""
    key = json.dumps({"name": name, "data_dir": str(data_dir) if data_dir else None, "image_size": image_size,
                      "seed": seed, **options}, sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) >= _DATA_CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = load_dataset(name, data_dir=data_dir, image_size=image_size, seed=seed, **options)
    return _DATA_CACHE[key]


def _fit(config: TrialConfig, data: DatasetBundle) -> Any:
    try:
        return config.model.fit_to_data(num_classes=data.num_classes, in_channels=data.in_channels,
                                        image_size=data.image_size)
    except (ValueError, TypeError) as error:
        raise InvalidConfig(str(error)) from None


def trial_cost(model_cfg: Any, data: DatasetBundle, *, latency: bool = False, device: str = "auto") -> dict[str, float]:
    """FLOPs (MACs per image) and parameters of a fitted model config, measured before training;
    with ``latency`` also ``latency_ms``: median eval-mode forward time of one image on ``device``."""
    shape = (1, data.in_channels, data.image_size, data.image_size)
    try:
        cost: dict[str, float] = {M.FLOPS: model_macs(model_cfg, shape), M.PARAMS: model_params(model_cfg)}
    except ValueError as error:  # the block builder rejects a combination only when building
        raise InvalidConfig(str(error)) from None
    if latency:
        model = build_model(model_cfg)
        cost[M.LATENCY_MS] = measure_latency(model, shape, device=device, backward=False, repeats=10).latency_ms
    return cost


def run_trial(
    config: TrialConfig,
    *,
    base_recipe: Recipe | None = None,
    dataset: str | DatasetBundle = "digits",
    data_dir: str | None = None,
    image_size: int | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    budgets: Budgets | None = None,
    latency: bool = False,
    report: ReportFn | None = None,
    on_cost: Callable[[dict[str, float]], None] | None = None,
) -> TrialOutcome:
    """Run one trial: fit, measure, check budgets, train. Raises :class:`InvalidConfig`,
    :class:`Infeasible`, the trainer's :class:`~gsa_search.trainer.TrainError`\\ s, or whatever
    ``report`` raises (a pruner's exception) unchanged.

    ``on_cost(cost)`` is called once the cost is known, before the budget check and before training,
    so a runner can record FLOPs/params (and tell its sampler about constraints) for every trial.
    """
    tic = time.perf_counter()
    base_recipe = base_recipe or Recipe()
    try:
        recipe = base_recipe.replace(**config.recipe)
    except (ValueError, TypeError) as error:
        raise InvalidConfig(str(error)) from None
    if isinstance(dataset, DatasetBundle):
        data = dataset
    else:
        options = {**(dataset_options or {}), **config.dataset_options}
        data = load_data_cached(dataset, data_dir=data_dir, image_size=image_size, seed=recipe.seed, **options)
    fitted = _fit(config, data)
    cost = trial_cost(fitted, data, latency=latency, device=recipe.device)
    if on_cost is not None:
        on_cost(dict(cost))
    budgets = budgets or Budgets()
    violations = budgets.violations(cost)
    exceeded = {k: v for k, v in violations.items() if v > 0}
    if exceeded:
        bounds = {M.FLOPS: budgets.max_flops, M.PARAMS: budgets.max_params}
        reason = "; ".join(f"{k} {cost[k]:,.0f} > budget {bounds[k]:,.0f}" for k in exceeded)
        raise Infeasible(f"over budget: {reason}", cost, violations)
    result = train(fitted, recipe, data, report=report)
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(cost)
    for key, value in list(metrics.items()):
        if isinstance(value, float) and not math.isfinite(value):
            metrics[key] = float("nan")
    return TrialOutcome(
        metrics=metrics,
        model_config=fitted.to_dict(),
        recipe=recipe.to_dict(),
        history=list(result["history"]),
        duration_s=time.perf_counter() - tic,
    )
