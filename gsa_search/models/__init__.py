"""Backbones (bottleneck ResNets with a per-stage spatial mixer) and their named presets."""

from .presets import DEPTHS, create_model, list_models, model_config, register_model
from .resnet import Bottleneck, GSAResNet, ModelConfig, build_model, stage_feature_sizes

__all__ = [
    "DEPTHS",
    "Bottleneck",
    "GSAResNet",
    "ModelConfig",
    "build_model",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
    "stage_feature_sizes",
]
