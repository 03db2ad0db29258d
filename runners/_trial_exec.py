"""What every backend does the same way around one trial: sample the config, run it, name a failure,
and ask the Pareto-aware rule.

Status: stable (internal). Both runners build a trial the same way: the space samples a
:class:`~gsa_search.trial.TrialConfig` (a ``ValueError`` of the space or of a block builder is an
invalid config), :func:`execute` calls :func:`~gsa_search.trial.run_trial` with the search's budgets,
base recipe and dataset options, and :func:`failure_reason` turns an exception into the one-line
reason the results table shows. :func:`pareto_rule` and :func:`pareto_decide` are the single place
where the pruning rule is configured and asked, so the Optuna adapter (``optuna_runner.pareto_decision``)
and the Ray ``TrialScheduler`` (``ray_scheduler.ParetoScheduler``) decide identically on identical
records. Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from gsa_search import metrics as M
from gsa_search.pruning import Decision, ParetoPruningRule, TrialRecord
from gsa_search.trial import InvalidConfig, TrialConfig, TrialOutcome, run_trial

from .settings import SearchSettings

__all__ = ["sample_config", "execute", "failure_reason", "pareto_rule", "pareto_decide", "pruned_reason"]


def sample_config(space: Callable[[Any], Any], trial: Any) -> TrialConfig:
    """``space(trial)`` as a :class:`TrialConfig`; raises :class:`InvalidConfig` for a ``ValueError``
    (the block builders' and ``TrialConfig``'s) or a space that returns something else."""
    try:
        config = space(trial)
        if not isinstance(config, TrialConfig):
            raise InvalidConfig(f"the space returned {type(config).__name__}, not a TrialConfig")
    except ValueError as error:
        raise InvalidConfig(str(error)) from None
    return config


def execute(config: TrialConfig, settings: SearchSettings, *, report: Callable[[int, dict[str, float]], None] | None,
            on_cost: Callable[[dict[str, float]], None] | None) -> TrialOutcome:
    """:func:`run_trial` with the search's base recipe, data, budgets and latency option."""
    return run_trial(
        config, base_recipe=settings.base_recipe(), dataset=settings.dataset, data_dir=settings.data_dir,
        image_size=settings.resolved_image_size(), dataset_options=settings.dataset_options,
        budgets=settings.budgets, latency=M.LATENCY_MS in settings.objectives, report=report, on_cost=on_cost,
    )  # fmt: skip


def failure_reason(error: BaseException) -> str:
    """The results table's reason for a failed trial (one line)."""
    if isinstance(error, InvalidConfig):
        return f"invalid config: {error}"
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def pareto_rule(settings: SearchSettings) -> ParetoPruningRule | None:
    """The rule a search with ``--pruner pareto`` uses (``None`` for any other pruner)."""
    if settings.resolved_pruner() != "pareto" or M.ACCURACY not in settings.objectives:
        return None
    return ParetoPruningRule(cost_keys=settings.cost_keys(), max_epochs=settings.base_recipe().epochs)


def pareto_decide(rule: ParetoPruningRule, key: Hashable, cost: Mapping[str, float] | None, curve: Sequence[float],
                  others: Iterable[TrialRecord]) -> Decision:
    """The rule's decision for trial ``key`` after ``len(curve)`` epochs, against ``others`` (the
    other trials that trained, in trial-number order): what ``optuna_runner.pareto_decision`` does."""
    if not rule.is_rung(len(curve)):
        return Decision(prune=False, reason="not a rung")
    me = TrialRecord(key=key, cost=dict(cost or {}), curve=list(curve))
    return rule.decide(me, list(others))


def pruned_reason(pruner: str, epochs_done: int, detail: str) -> str:
    """``pruned at epoch N by the P pruner: ...`` (the Optuna runner's wording)."""
    return f"pruned at epoch {epochs_done} by the {pruner} pruner: {detail}"
