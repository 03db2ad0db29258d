"""Full global multi-head softmax self-attention over all H*W positions (Vaswani et al., 2017), the
quadratic-cost reference for GSA's cost comparisons.

Status: stable. ``softmax(Q K^T / sqrt(d_k)) V`` per head through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where the device has them).
No positional encoding: this block is a cost baseline, not an accuracy contender.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_bool, check_positive_int, normalize_numbers
from .base import BlockConfig, SpatialMixer, downsample_pool, head_dims, register_block

__all__ = ["MHSAConfig", "MHSABlock"]


@dataclasses.dataclass(frozen=True)
class MHSAConfig(BlockConfig):
    """``heads``; ``dim_key``/``dim_value`` per head (defaults as for GSA); optional ``output_proj``."""

    heads: int = 8
    dim_key: Union[int, None] = None
    dim_value: Union[int, None] = None
    output_proj: bool = False

    def __post_init__(self) -> None:
        normalize_numbers(self)
        check_positive_int("mhsa", "heads", self.heads)
        check_positive_int("mhsa", "dim_key", self.dim_key, allow_none=True)
        check_positive_int("mhsa", "dim_value", self.dim_value, allow_none=True)
        check_bool("mhsa", "output_proj", self.output_proj)

    def flops(self, in_channels: int, out_channels: int, height: int, width: int, *, stride: int = 1) -> int:
        """``MHSABlock.forward``: qkv 1x1 conv, SDPA over all ``L = H*W`` positions (logits and
        weighting), optional projection, then the (uncounted) pool."""
        n = self.heads
        d_k, d_v = head_dims(
            "mhsa",
            heads=n,
            dim_key=self.dim_key,
            dim_value=self.dim_value,
            out_channels=out_channels,
            output_proj=self.output_proj,
        )
        length = height * width
        macs = length * in_channels * n * (2 * d_k + d_v) + n * length * length * (d_k + d_v)
        if self.output_proj:
            macs += length * n * d_v * out_channels
        return macs


@register_block("mhsa", config=MHSAConfig)
class MHSABlock(SpatialMixer):
    def __init__(self, cfg: MHSAConfig, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(cfg, in_channels, out_channels, stride)
        dim_key, dim_value = head_dims(
            "mhsa",
            heads=cfg.heads,
            dim_key=cfg.dim_key,
            dim_value=cfg.dim_value,
            out_channels=out_channels,
            output_proj=cfg.output_proj,
        )
        self.heads, self.dim_key, self.dim_value = cfg.heads, dim_key, dim_value
        self.split = (cfg.heads * dim_key, cfg.heads * dim_key, cfg.heads * dim_value)
        self.qkv = nn.Conv2d(in_channels, sum(self.split), 1, bias=False)
        self.proj = (
            nn.Conv2d(cfg.heads * dim_value, out_channels, 1, bias=False) if cfg.output_proj else nn.Identity()
        )
        self.pool = downsample_pool(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, _, h, w = x.shape
        n = self.heads
        q, k, v = torch.split(self.qkv(x), self.split, dim=1)
        q = q.reshape(b, n, self.dim_key, h * w).transpose(-1, -2)  # (B, N, H*W, d_k)
        k = k.reshape(b, n, self.dim_key, h * w).transpose(-1, -2)
        v = v.reshape(b, n, self.dim_value, h * w).transpose(-1, -2)  # (B, N, H*W, d_v)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, N, H*W, d_v)
        out = out.transpose(-1, -2).reshape(b, n * self.dim_value, h, w)
        return self.pool(self.proj(out))
