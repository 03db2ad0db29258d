"""Backbones (bottleneck ResNets with a per-stage spatial mixer, and any other registered backbone)
and their named presets.

``register_backbone`` / ``build_model`` / ``list_backbones`` / ``model_config_from_dict`` work for
every backbone; ``register_model`` / ``create_model`` / ``list_models`` / ``model_config`` for presets.
"""

from .base import (
    DEFAULT_BACKBONE,
    BackboneConfig,
    backbone_config_class,
    build_model,
    list_backbones,
    model_config_from_dict,
    register_backbone,
)
from .presets import DEPTHS, apply_overrides, create_model, list_models, model_config, register_model
from .resnet import Bottleneck, GSAResNet, ModelConfig, stage_feature_sizes

__all__ = [
    "DEFAULT_BACKBONE",
    "DEPTHS",
    "BackboneConfig",
    "Bottleneck",
    "GSAResNet",
    "apply_overrides",
    "ModelConfig",
    "backbone_config_class",
    "build_model",
    "create_model",
    "list_backbones",
    "list_models",
    "model_config",
    "model_config_from_dict",
    "register_backbone",
    "register_model",
    "stage_feature_sizes",
]
