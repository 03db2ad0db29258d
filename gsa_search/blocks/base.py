"""Block registry: spatial mixers (the part of a bottleneck that mixes pixels) built from configs.

Status: stable. Each block type registers a frozen config dataclass and an ``nn.Module`` class:

    @register_block("conv", config=ConvConfig)
    class ConvBlock(SpatialMixer): ...

``create_block(cfg, in_channels, out_channels, stride=...)`` builds one. Every mixer maps
``(B, in_channels, H, W) -> (B, out_channels, ceil(H/stride), ceil(W/stride))``. Convolutions
downsample with their own stride; attention mixers mix at full resolution and then downsample with
a 2x2 average pool (the GSA paper's choice).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from ..config import ConfigMixin, check_choice
from ..registry import Registry

__all__ = [
    "BlockConfig",
    "SpatialMixer",
    "register_block",
    "create_block",
    "list_blocks",
    "block_config",
    "block_config_from_dict",
    "downsample_pool",
    "head_dims",
]


@dataclasses.dataclass(frozen=True)
class BlockConfig(ConfigMixin):
    """Base class of block configs. ``block_type`` is set by :func:`register_block`."""

    block_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.block_type, **super().to_dict()}

    def with_feature_size(self, size: int) -> "BlockConfig":
        """Return the config for a block that will see feature maps up to ``size`` x ``size``.

        Blocks whose maths depends on the map size (global relative spans) override this; the
        model builder calls it for every block, so "global" always means the stage's resolution.
        """
        return self


class SpatialMixer(nn.Module):
    """Base class of registered blocks: keeps the config and the channel/stride contract."""

    def __init__(self, cfg: BlockConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride


_BLOCKS: Registry[tuple[type[BlockConfig], type[SpatialMixer]]] = Registry("block")


def register_block(name: str, *, config: type[BlockConfig]):
    """Class decorator registering a :class:`SpatialMixer` under ``name`` with its config class."""

    def decorator(cls: type[SpatialMixer]) -> type[SpatialMixer]:
        _BLOCKS.add(name, (config, cls))
        config.block_type = name
        return cls

    return decorator


def list_blocks(pattern: str | None = None) -> list[str]:
    """Registered block names (``'gsa'``, ``'conv'``, ...), optionally filtered by a glob."""
    return _BLOCKS.names(pattern)


def block_config(name: str, **fields: Any) -> BlockConfig:
    """The config of block ``name`` with ``fields`` set (defaults elsewhere)."""
    config_cls, _ = _BLOCKS.get(name)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"block {name!r}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    return config_cls(**fields)


def block_config_from_dict(data: dict[str, Any]) -> BlockConfig:
    """Inverse of ``BlockConfig.to_dict()``: ``{'type': 'gsa', 'heads': 8, ...}``."""
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"a block config dict needs a 'type' key (one of {', '.join(list_blocks())}); got {data!r}")
    fields = dict(data)
    name = fields.pop("type")
    return block_config(name, **fields)


def _as_config(cfg: BlockConfig | str | dict[str, Any]) -> BlockConfig:
    if isinstance(cfg, BlockConfig):
        return cfg
    if isinstance(cfg, str):
        return block_config(cfg)
    if isinstance(cfg, dict):
        return block_config_from_dict(cfg)
    raise ValueError(f"block config must be a BlockConfig, a block name or a dict; got {type(cfg).__name__}")


def create_block(
    cfg: BlockConfig | str | dict[str, Any],
    in_channels: int,
    out_channels: int,
    *,
    stride: int = 1,
) -> SpatialMixer:
    """Build the spatial mixer described by ``cfg`` (a config, a registered name or a dict).

    Example:
        >>> from gsa_search.blocks import create_block, GSAConfig
        >>> block = create_block(GSAConfig(heads=4, feature_size=16), 32, 32)
        >>> import torch; block(torch.randn(2, 32, 16, 16)).shape
        torch.Size([2, 32, 16, 16])
    """
    cfg = _as_config(cfg)
    for field, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"create_block: {field} must be a positive integer, got {value!r}")
    check_choice("create_block", "stride", stride, (1, 2))
    _, module_cls = _BLOCKS.get(cfg.block_type)
    return module_cls(cfg, in_channels, out_channels, stride)


def downsample_pool(stride: int) -> nn.Module:
    """The attention mixers' downsampling: 2x2 average pool, ``ceil`` sizes like a strided conv."""
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)


def head_dims(
    owner: str,
    *,
    heads: int,
    dim_key: int | None,
    dim_value: int | None,
    out_channels: int,
    output_proj: bool,
) -> tuple[int, int]:
    """Resolve per-head key and value widths for multi-head attention mixers.

    ``dim_value`` defaults to ``out_channels // heads`` (so that ``heads * dim_value == out_channels``,
    the GSA paper's setup) and ``dim_key`` defaults to ``dim_value``. Without an output projection
    the concatenated heads *are* the output, so ``heads * dim_value`` must equal ``out_channels``.
    """
    if dim_value is None:
        if out_channels % heads:
            raise ValueError(
                f"{owner}.heads={heads} must divide out_channels={out_channels} "
                f"(or set dim_value, with output_proj=True if heads*dim_value != out_channels)"
            )
        dim_value = out_channels // heads
    if not output_proj and heads * dim_value != out_channels:
        raise ValueError(
            f"{owner}: heads*dim_value = {heads}*{dim_value} = {heads * dim_value} must equal "
            f"out_channels={out_channels} unless output_proj=True"
        )
    return (dim_key if dim_key is not None else dim_value), dim_value
