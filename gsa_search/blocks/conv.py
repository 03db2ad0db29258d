"""The convolution baseline: the 3x3 convolution of a ResNet bottleneck (He et al., 2016).

Status: stable. ``kernel_size`` and ``groups`` are exposed so that depthwise or larger-kernel
baselines can be compared without a new block type.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import check_positive_int, normalize_numbers
from .base import BlockConfig, SpatialMixer, conv_macs, register_block

__all__ = ["ConvConfig", "ConvBlock"]


@dataclasses.dataclass(frozen=True)
class ConvConfig(BlockConfig):
    """A ``kernel_size`` x ``kernel_size`` convolution (bias-free; the bottleneck adds BN)."""

    kernel_size: int = 3
    groups: int = 1

    def __post_init__(self) -> None:
        normalize_numbers(self)
        check_positive_int("conv", "kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"conv.kernel_size must be odd (1, 3, 5, ...), got {self.kernel_size}")
        check_positive_int("conv", "groups", self.groups)

    def flops(self, in_channels: int, out_channels: int, height: int, width: int, *, stride: int = 1) -> int:
        """``ConvBlock.forward``: one strided, same-padded convolution."""
        return conv_macs(
            in_channels, out_channels, height, width, kernel_size=self.kernel_size, stride=stride, groups=self.groups
        )


@register_block("conv", config=ConvConfig)
class ConvBlock(SpatialMixer):
    def __init__(self, cfg: ConvConfig, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(cfg, in_channels, out_channels, stride)
        for field, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % cfg.groups:
                raise ValueError(f"conv.groups={cfg.groups} must divide {field}={channels}")
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            cfg.kernel_size,
            stride=stride,
            padding=cfg.kernel_size // 2,
            groups=cfg.groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.conv(x)
