"""Explicitly modelled attention maps, after Tan et al., "Explicitly Modeled Attention Maps for Image
Classification" (AAAI 2021, arXiv 2006.07872).

Status: stable. **The exact form is this project's reading of the paper's abstract** (the full paper
was not available): the attention map is a fixed function of pixel distance, independent of content,

    w(p, p') = exp(-||p - p'||^2 / (2 sigma^2)) / sum_{p''} exp(-||p - p''||^2 / (2 sigma^2)),

with ``sigma = softplus(rho)`` and ``rho`` the module's single learnable scalar (the "radius"). The
output is ``sum_{p'} w(p, p') v(p')`` with ``v`` a bias-free 1x1 projection of the input. The
Gaussian of a squared Euclidean distance factorises by axis, and so does its normaliser over a
rectangular map, so the map is applied exactly as two 1-D passes: ``K_H @ V @ K_W^T``.

``placement='replace'`` uses it instead of the 3x3 convolution; ``placement='beside'`` adds it to a
3x3 convolution of the same input (the paper's "in addition to" use).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_choice, check_positive, normalize_numbers
from .base import BlockConfig, SpatialMixer, conv_macs, downsample_pool, is_channels_last, register_block

__all__ = ["ExplicitConfig", "ExplicitBlock", "GaussianAttention", "gaussian_kernel"]


@dataclasses.dataclass(frozen=True)
class ExplicitConfig(BlockConfig):
    """``init_radius``: sigma (pixels) at initialisation; ``placement``: ``'replace'`` or ``'beside'``."""

    init_radius: float = 2.0
    placement: str = "replace"

    def __post_init__(self) -> None:
        normalize_numbers(self)
        check_positive("explicit", "init_radius", self.init_radius)
        check_choice("explicit", "placement", self.placement, ("replace", "beside"))

    def flops(self, in_channels: int, out_channels: int, height: int, width: int, *, stride: int = 1) -> int:
        """``ExplicitBlock.forward``: 1x1 value conv, ``K_H @ V @ K_W^T`` (full resolution), then the
        (uncounted) pool; ``'beside'`` adds the strided 3x3 conv."""
        macs = height * width * in_channels * out_channels + out_channels * height * width * (height + width)
        if self.placement == "beside":
            macs += conv_macs(in_channels, out_channels, height, width, kernel_size=3, stride=stride)
        return macs


def gaussian_kernel(length: int, sigma: torch.Tensor) -> torch.Tensor:
    """Row-normalised 1-D Gaussian kernel ``K[i, a] ∝ exp(-(a - i)^2 / (2 sigma^2))``: ``(L, L)``."""
    pos = torch.arange(length, device=sigma.device, dtype=sigma.dtype)
    dist2 = (pos[None, :] - pos[:, None]) ** 2
    kernel = torch.exp(-dist2 / (2 * sigma**2))
    return kernel / kernel.sum(dim=-1, keepdim=True)


class GaussianAttention(nn.Module):
    """Content-independent attention with one learnable radius: ``K_H @ V @ K_W^T`` per channel."""

    def __init__(self, *, init_radius: float = 2.0) -> None:
        super().__init__()
        # inverse softplus, so that sigma == init_radius at initialisation
        self.rho = nn.Parameter(torch.tensor(init_radius + math.log(-math.expm1(-init_radius))))

    @property
    def sigma(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # v: (B, C, H, W)
        h, w = v.shape[-2:]
        # the kernel is built in at least float32 (also under bf16 autocast), then cast to v's dtype
        sigma = self.sigma.to(torch.promote_types(v.dtype, torch.float32))
        k_h = gaussian_kernel(h, sigma).to(v.dtype)  # (H, H)
        k_w = gaussian_kernel(w, sigma).to(v.dtype)  # (W, W)
        if is_channels_last(v):  # the same products on (B, H, W, C) memory; the result stays channels last
            b, c = v.shape[:2]
            rows = k_w @ v.permute(0, 2, 3, 1)  # (B, H, W, C): along W
            out = k_h @ rows.reshape(b, h, w * c)  # along H
            return out.view(b, h, w, c).permute(0, 3, 1, 2)
        return k_h @ v @ k_w.transpose(0, 1)


@register_block("explicit", config=ExplicitConfig)
class ExplicitBlock(SpatialMixer):
    def __init__(self, cfg: ExplicitConfig, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(cfg, in_channels, out_channels, stride)
        self.value = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.attention = GaussianAttention(init_radius=cfg.init_radius)
        self.pool = downsample_pool(stride)
        self.conv = (
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
            if cfg.placement == "beside"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        out = self.pool(self.attention(self.value(x)))
        if self.conv is not None:
            out = out + self.conv(x)
        return out
