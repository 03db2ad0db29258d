"""Block registry: spatial mixers (the part of a bottleneck that mixes pixels) built from configs.

Status: stable. Each block type registers a frozen config dataclass and an ``nn.Module`` class:

    @register_block("conv", config=ConvConfig)
    class ConvBlock(SpatialMixer): ...

``create_block(cfg, in_channels, out_channels, stride=...)`` builds one. Every mixer maps
``(B, in_channels, H, W) -> (B, out_channels, ceil(H/stride), ceil(W/stride))`` and checks that
contract first thing in its ``forward`` (:meth:`SpatialMixer._check_input`). Convolutions
downsample with their own stride; attention mixers mix at full resolution and then downsample with
a 2x2 average pool (the GSA paper's choice).

Each config also carries its block's analytic cost, :meth:`BlockConfig.flops` (multiply-accumulates,
the convention of :mod:`gsa_search.measure`), so a new block type is one module: config (fields,
validation, FLOPs formula) + mixer + ``@register_block``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import ConfigMixin, check_choice
from ..registry import Registry
from ._pool import avg_pool_2x2

__all__ = [
    "BlockConfig",
    "SpatialMixer",
    "register_block",
    "create_block",
    "list_blocks",
    "block_config",
    "block_config_from_dict",
    "as_block_config",
    "DownsamplePool",
    "downsample_pool",
    "head_dims",
    "conv_macs",
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

    def flops(self, in_channels: int, out_channels: int, height: int, width: int, *, stride: int = 1) -> int:
        """Multiply-accumulates of this block on one ``height`` x ``width`` image (batch of 1).

        Same convention as :func:`gsa_search.measure.count_flops` (1 MAC = 1 FLOP; pooling, norms,
        softmax and element-wise ops not counted); the tests check that both agree exactly for
        every registered block. Every block config implements it.
        """
        name = self.block_type or type(self).__name__
        raise NotImplementedError(
            f"block {name!r} has no analytic FLOPs formula: implement {type(self).__name__}.flops("
            f"in_channels, out_channels, height, width, *, stride=1) -> int in its module"
        )


class SpatialMixer(nn.Module):
    """Base class of registered blocks: keeps the config and the channel/stride contract.

    Every ``forward`` starts with ``self._check_input(x)``, so a wrong input fails with one clear
    message instead of deep inside the block.
    """

    def __init__(self, cfg: BlockConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is ``(B, in_channels, H, W)`` with ``B, H, W >= 1``.

        Plain shape arithmetic (no tensor ops, no sync; well under a microsecond): it runs the same
        eagerly, on the meta device and under ``torch.compile``. Under ``torch.jit.trace`` (how
        fvcore counts FLOPs) sizes are traced values, so only the number of dimensions is checked
        there: comparing sizes would record ops in the graph and warn.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{self.cfg.block_type} block: expected a tensor of shape (B, in_channels={self.in_channels}, H, W), "
                f"got {type(x).__name__}"
            )
        shape = x.shape
        if torch.jit.is_tracing():
            bad = x.dim() != 4
        else:
            bad = len(shape) != 4 or shape[1] != self.in_channels or shape[0] < 1 or shape[2] < 1 or shape[3] < 1
        if bad:
            raise ValueError(
                f"{self.cfg.block_type} block: expected input of shape (B, in_channels={self.in_channels}, H, W) "
                f"with B, H, W >= 1, got {tuple(shape)}"
            )


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


def as_block_config(cfg: BlockConfig | str | dict[str, Any]) -> BlockConfig:
    """A block config from a config (returned as is), a registered name (defaults) or a dict
    (``BlockConfig.to_dict()`` form, with its ``'type'``).

    Example:
        >>> as_block_config({"type": "conv", "kernel_size": 5})
        ConvConfig(kernel_size=5, groups=1)
    """
    if isinstance(cfg, BlockConfig):
        return cfg
    if isinstance(cfg, str):
        return block_config(cfg)
    if isinstance(cfg, dict):
        return block_config_from_dict(cfg)
    raise ValueError(f"block config must be a BlockConfig, a block name or a dict; got {type(cfg).__name__}")


# Temporary alias for callers of the old private name (gsa_search.models.resnet); use as_block_config.


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
    cfg = as_block_config(cfg)
    for field, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"create_block: {field} must be a positive integer, got {value!r}")
    check_choice("create_block", "stride", stride, (1, 2))
    _, module_cls = _BLOCKS.get(cfg.block_type)
    return module_cls(cfg, in_channels, out_channels, stride)


class DownsamplePool(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`` that runs the compiled 2x2
    pool of :mod:`~gsa_search.blocks._pool` on CPU: the same numbers (to 1 ulp in windows cut by an
    odd edge), several times faster, and no saved input (autograd keeps the map's size only)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether the map ``x (B, C, H, W)`` lies in memory as ``(B, H, W, C)`` and not also as NCHW
    (maps of one pixel or one channel are both: they take the NCHW paths)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def downsample_pool(stride: int) -> nn.Module:
    """The attention mixers' downsampling: 2x2 average pool, ``ceil`` sizes like a strided conv."""
    if stride == 1:
        return nn.Identity()
    return DownsamplePool()


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


def conv_macs(
    in_channels: int, out_channels: int, height: int, width: int, *, kernel_size: int, stride: int = 1, groups: int = 1
) -> int:
    """MACs of a same-padded ``kernel_size`` x ``kernel_size`` convolution on one image: output
    ``ceil(size / stride)`` per axis, ``out_channels * (in_channels / groups) * kernel_size^2`` per pixel."""
    out_pixels = math.ceil(height / stride) * math.ceil(width / stride)
    return out_pixels * out_channels * (in_channels // groups) * kernel_size * kernel_size
