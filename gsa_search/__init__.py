"""gsa-search: ablation studies and architecture/hyperparameter search over global self-attention blocks.

The domain library: spatial-mixer blocks (GSA, explicit attention, conv, full softmax attention),
ResNet-style backbones and their presets. It imports neither Optuna nor Ray.
"""

from .blocks import (
    BlockConfig,
    ConvConfig,
    ExplicitConfig,
    GSAConfig,
    MHSAConfig,
    block_config,
    block_config_from_dict,
    create_block,
    list_blocks,
    register_block,
)
from .models import ModelConfig, build_model, create_model, list_models, model_config, register_model

__version__ = "0.1.0"

__all__ = [
    "BlockConfig",
    "ConvConfig",
    "ExplicitConfig",
    "GSAConfig",
    "MHSAConfig",
    "ModelConfig",
    "block_config",
    "block_config_from_dict",
    "build_model",
    "create_model",
    "create_block",
    "list_blocks",
    "list_models",
    "model_config",
    "register_block",
    "register_model",
]
