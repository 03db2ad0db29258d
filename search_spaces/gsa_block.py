"""``gsa_block_v1``: which spatial mixer, and how it is configured, in a proxy bottleneck ResNet.

Status: stable (v1 never changes; a changed space gets a new version). Conditional where it must
be: a 3x3 conv has no heads, content-only GSA has no positional span, 2D positional attention takes
local windows (1-3) while axial takes local spans or ``global``. Every sampled config is valid by
construction except combinations only the builder can judge; those are rejected by the block's own
``ValueError`` before anything trains and recorded as the trial's reason.

Parameters (names are what the results table shows as ``param_<name>``):

- ``mixer``: ``conv`` | ``gsa`` | ``explicit`` | ``mhsa``
- ``attention_stages``: which of the 4 stages use the mixer, the rest keep the 3x3 conv:
  ``all`` | ``last2`` | ``last`` (not for ``conv``)
- ``heads`` (gsa, mhsa): 1, 2, 4, 8; ``dim_key`` (gsa, mhsa): 4, 8, 16 per head
- ``positional`` (gsa): ``axial`` | ``2d`` | ``none``; ``content`` (gsa with positional): on/off
- ``rel_span_axial``: ``global`` | 3 | 7; ``rel_span_2d``: 1 | 2 | 3
- ``query_norm`` (gsa with content): on/off
- ``placement`` (explicit): ``replace`` | ``beside`` the 3x3 conv
- ``width_multiplier``: 0.5 | 1.0 | 1.5 of the proxy's base width 16
"""

from __future__ import annotations

from typing import Any

from gsa_search.blocks import block_config
from gsa_search.models import model_config
from gsa_search.trial import TrialConfig

from .registry import register_space

__all__ = ["gsa_block_v1", "sample_model", "STAGE_CHOICES"]

BASE_MODEL = "proxy_resnet"
STAGE_CHOICES = {"all": (True, True, True, True), "last2": (False, False, True, True), "last": (False, False, False, True)}


def sample_mixer(trial: Any) -> tuple[str, Any]:
    """``(mixer name, block config)`` sampled from ``trial``."""
    mixer = trial.suggest_categorical("mixer", ["conv", "gsa", "explicit", "mhsa"])
    if mixer == "conv":
        return mixer, block_config("conv")
    if mixer == "explicit":
        return mixer, block_config("explicit", placement=trial.suggest_categorical("placement", ["replace", "beside"]))
    heads = trial.suggest_categorical("heads", [1, 2, 4, 8])
    dim_key = trial.suggest_categorical("dim_key", [4, 8, 16])
    if mixer == "mhsa":
        return mixer, block_config("mhsa", heads=heads, dim_key=dim_key)
    positional = trial.suggest_categorical("positional", ["axial", "2d", "none"])
    content = True if positional == "none" else trial.suggest_categorical("content", [True, False])
    fields: dict[str, Any] = {"heads": heads, "dim_key": dim_key, "positional": positional, "content": content}
    if positional == "axial":
        span = trial.suggest_categorical("rel_span_axial", ["global", "3", "7"])
        fields["rel_span"] = span if span == "global" else int(span)
    elif positional == "2d":
        fields["rel_span"] = trial.suggest_categorical("rel_span_2d", [1, 2, 3])
    if content:
        fields["query_norm"] = trial.suggest_categorical("query_norm", [False, True])
    return mixer, block_config("gsa", **fields)


def sample_model(trial: Any) -> Any:
    """The proxy backbone with the sampled mixer in the sampled stages."""
    mixer, cfg = sample_mixer(trial)
    stages = (True,) * 4
    if mixer != "conv":
        stages = STAGE_CHOICES[trial.suggest_categorical("attention_stages", list(STAGE_CHOICES))]
    width = trial.suggest_categorical("width_multiplier", [0.5, 1.0, 1.5])
    mixers = tuple(cfg if use else block_config("conv") for use in stages)
    return model_config(BASE_MODEL, mixers=mixers, width_multiplier=width)


@register_space("gsa_block_v1")
def gsa_block_v1(trial: Any) -> TrialConfig:
    """Mixer type and its configuration in ``proxy_resnet`` (see the module docstring)."""
    return TrialConfig(model=sample_model(trial))
