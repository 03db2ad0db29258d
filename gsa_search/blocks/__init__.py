"""Spatial mixers (the block registry): GSA, explicit attention, 3x3 conv, full softmax attention."""

from .base import (
    BlockConfig,
    SpatialMixer,
    as_block_config,
    block_config,
    block_config_from_dict,
    create_block,
    list_blocks,
    register_block,
)
from .conv import ConvBlock, ConvConfig
from .explicit import ExplicitBlock, ExplicitConfig, GaussianAttention
from .gsa import (
    AxialPositionalAttention,
    ContentAttention,
    GSABlock,
    GSAConfig,
    Positional2DAttention,
)
from .mhsa import MHSABlock, MHSAConfig

__all__ = [
    "AxialPositionalAttention",
    "BlockConfig",
    "ContentAttention",
    "ConvBlock",
    "ConvConfig",
    "ExplicitBlock",
    "ExplicitConfig",
    "GSABlock",
    "GSAConfig",
    "GaussianAttention",
    "MHSABlock",
    "MHSAConfig",
    "Positional2DAttention",
    "SpatialMixer",
    "as_block_config",
    "block_config",
    "block_config_from_dict",
    "create_block",
    "list_blocks",
    "register_block",
]
