"""``train_hparams_v1``: the training recipe of a fixed proxy GSA model.

Status: stable (v1 never changes). Samples the recipe only; the model is ``proxy_gsa_resnet``
(content + global axial GSA in every stage). Parameters:

- ``lr``: log-uniform in [3e-4, 3e-2]; ``weight_decay``: log-uniform in [1e-5, 0.3]
- ``label_smoothing``: 0 to 0.2; ``optimizer``: ``adamw`` | ``sgd``
- ``epochs``: 4 | 8 | 12 (the epochs budget of the trial); ``batch_size``: 32 | 64 | 128

The learning-rate range suits AdamW; SGD usually wants more (the sampler learns that).
"""

from __future__ import annotations

from typing import Any

from gsa_search.models import model_config
from gsa_search.trial import TrialConfig

from .registry import register_space

__all__ = ["train_hparams_v1", "sample_recipe"]

MODEL = "proxy_gsa_resnet"


def sample_recipe(trial: Any) -> dict[str, Any]:
    """Recipe overrides sampled from ``trial``."""
    return {
        "lr": trial.suggest_float("lr", 3e-4, 3e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 0.3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "optimizer": trial.suggest_categorical("optimizer", ["adamw", "sgd"]),
        "epochs": trial.suggest_categorical("epochs", [4, 8, 12]),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
    }


@register_space("train_hparams_v1")
def train_hparams_v1(trial: Any) -> TrialConfig:
    """The recipe of ``proxy_gsa_resnet`` (see the module docstring)."""
    return TrialConfig(model=model_config(MODEL), recipe=sample_recipe(trial))
