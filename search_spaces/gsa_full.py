"""``gsa_full_v1``: ``gsa_block_v1`` and ``train_hparams_v1`` together (architecture and recipe).

Status: stable (v1 never changes).
"""

from __future__ import annotations

from typing import Any

from gsa_search.trial import TrialConfig

from .gsa_block import sample_model
from .registry import register_space
from .train_hparams import sample_recipe

__all__ = ["gsa_full_v1"]


@register_space("gsa_full_v1")
def gsa_full_v1(trial: Any) -> TrialConfig:
    """Mixer, its configuration and the training recipe, sampled together."""
    return TrialConfig(model=sample_model(trial), recipe=sample_recipe(trial))
