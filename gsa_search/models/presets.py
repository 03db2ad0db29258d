"""Named model presets: ``create_model(name, num_classes=..., image_size=..., **overrides)``.

Status: stable. Depths 26/38/50 use [1,2,4,1], [2,3,5,2] and [3,4,6,3] bottlenecks per stage.
Full-size presets (ImageNet stem, 224x224) follow the papers; ``proxy_*`` presets (CIFAR stem,
32x32, a quarter of the width, one block per stage) train in seconds on a CPU and are what sweeps
use by default.

GSA presets follow the paper: 8 heads (4 in proxies) and ``heads * dim_key = heads * dim_value =``
the bottleneck width, with global axial positional attention in every stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from torch import nn

from ..blocks.base import BlockConfig, block_config
from ..registry import Registry
from .base import BackboneConfig, build_model
from .resnet import ModelConfig

__all__ = ["register_model", "create_model", "list_models", "model_config", "apply_overrides", "DEPTHS"]

DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}

_MODELS: Registry[Callable[[], BackboneConfig]] = Registry("model preset")


def register_model(name: str) -> Callable[[Callable[[], BackboneConfig]], Callable[[], BackboneConfig]]:
    """Register a zero-argument function returning the preset's config (a :class:`ModelConfig` or
    the config of any other registered backbone)."""
    return _MODELS.register(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Preset names, optionally filtered by a glob such as ``'proxy_*'``."""
    return _MODELS.names(pattern)


def model_config(name: str, **overrides: Any) -> BackboneConfig:
    """The preset's config with ``overrides`` applied.

    An override naming a field of the preset's config replaces it (``num_classes``, ``image_size``,
    ``mixers``, ``width_multiplier``...). Any other name is a mixer field and is applied to every
    stage whose mixer has that field (``heads=4`` changes the GSA stages of a hybrid model); a name
    that neither the model nor any of its mixers knows is an error. ``feature_size`` is not an
    override: the backbone derives each stage's map size from ``image_size`` (set that instead).
    """
    return apply_overrides(_MODELS.get(name)(), overrides, owner=name)


def apply_overrides(cfg: BackboneConfig, overrides: Mapping[str, Any], *, owner: str | None = None) -> BackboneConfig:
    """``cfg`` with ``overrides`` applied by the rules of :func:`model_config` (model fields first,
    then every other name on each stage's mixer that has that field; an unknown name or a
    ``feature_size`` is a ``ValueError``, prefixed with ``owner`` when given).

    Example:
        >>> cfg = apply_overrides(model_config("proxy_gsa_resnet"), {"positional": "none"})
        >>> {m.positional for m in cfg.mixers}
        {'none'}
    """
    prefix = f"{owner}: " if owner else ""
    model_fields = {f.name for f in dataclasses.fields(cfg)}
    if "feature_size" in overrides and "feature_size" not in model_fields:
        raise ValueError(
            f"{prefix}feature_size={overrides['feature_size']!r} cannot be overridden: the backbone sets each "
            f"stage's feature_size from image_size; set image_size instead"
        )
    model_changes = {k: v for k, v in overrides.items() if k in model_fields}
    mixer_changes = {k: v for k, v in overrides.items() if k not in model_fields}
    if model_changes:
        cfg = cfg.replace(**model_changes)
    if mixer_changes:
        mixers = list(getattr(cfg, "mixers", ()))
        for key in mixer_changes:
            if not any(key in _field_names(m) for m in mixers):
                known = sorted(model_fields.union(*(_field_names(m) for m in mixers)))
                raise ValueError(f"{prefix}unknown override {key!r}; allowed: {', '.join(known)}")
        mixers = [
            m.replace(**{k: v for k, v in mixer_changes.items() if k in _field_names(m)}) for m in mixers
        ]
        cfg = cfg.replace(mixers=tuple(mixers))
    return cfg


def _field_names(cfg: BlockConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg)}


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset, e.g. ``create_model('proxy_gsa_resnet', num_classes=10, heads=2)``.

    Example:
        >>> import torch
        >>> model = create_model("proxy_gsa_resnet", num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return build_model(model_config(name, **overrides))


# --- full-size presets (ImageNet stem, 224x224) ----------------------------------------------------

def _full(depth: int, mixers: Any) -> Callable[[], ModelConfig]:
    return lambda: ModelConfig(stage_blocks=DEPTHS[depth], mixers=mixers, stem="imagenet", image_size=224)


_GSA_PAPER = block_config("gsa", heads=8, positional="axial", rel_span="global")
_EXPLICIT = block_config("explicit")

for _depth in (26, 38, 50):
    register_model(f"resnet{_depth}")(_full(_depth, "conv"))
    register_model(f"gsa_resnet{_depth}")(_full(_depth, _GSA_PAPER))
for _depth in (26, 50):
    register_model(f"explicit_resnet{_depth}")(_full(_depth, _EXPLICIT))


# --- proxy presets (CIFAR stem, 32x32, quarter width, one bottleneck per stage) -------------------

def _proxy(mixers: Any) -> Callable[[], ModelConfig]:
    return lambda: ModelConfig(
        stage_blocks=(1, 1, 1, 1), mixers=mixers, stem="cifar", base_width=16, num_classes=10, image_size=32
    )


_GSA_PROXY = block_config("gsa", heads=4)
_PROXIES: dict[str, Any] = {
    "proxy_resnet": "conv",
    "proxy_gsa_resnet": _GSA_PROXY,
    "proxy_gsa_content": _GSA_PROXY.replace(positional="none"),
    "proxy_gsa_positional": _GSA_PROXY.replace(content=False),
    "proxy_gsa_2d": _GSA_PROXY.replace(positional="2d", rel_span=3),
    "proxy_gsa_late": ("conv", "conv", _GSA_PROXY, _GSA_PROXY),
    "proxy_explicit_resnet": _EXPLICIT,
    "proxy_explicit_beside": _EXPLICIT.replace(placement="beside"),
    "proxy_mhsa_resnet": block_config("mhsa", heads=4),
}
for _name, _mixers in _PROXIES.items():
    register_model(_name)(_proxy(_mixers))
