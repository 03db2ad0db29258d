"""ResNet bottleneck backbones whose spatial mixer is chosen per stage (He et al., 2016; the GSA paper's
GSA-ResNets replace every bottleneck 3x3 convolution with a GSA module).

Status: stable. A bottleneck is ``1x1 reduce -> BN/ReLU -> mixer -> BN/ReLU -> 1x1 expand -> BN``
plus the shortcut (a strided 1x1 conv + BN when the shape changes). The stride of a downsampling block
sits on the mixer (ResNet v1.5): a convolution uses its stride, attention mixers pool after mixing.
Every mixer config is given the resolution it will see (``with_feature_size``), so a "global" span
always covers its stage; a mixer config that already names a ``feature_size`` is rejected (the
backbone derives it from ``image_size`` per stage, so a stored value would never be used).

Registered as backbone ``"resnet"`` (:mod:`gsa_search.models.base`); :class:`ModelConfig` is its config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence, Union

import torch
from torch import nn

from ..blocks.base import BlockConfig, as_block_config, block_config_from_dict, create_block
from ..config import as_int, check_bool, check_choice, check_positive, check_positive_int, normalize_numbers
from .base import BackboneConfig, register_backbone

__all__ = ["ModelConfig", "GSAResNet", "Bottleneck", "stage_feature_sizes"]

STEMS = ("cifar", "imagenet")
MixerSpec = Union[BlockConfig, str, dict]


@dataclasses.dataclass(frozen=True)
class ModelConfig(BackboneConfig):
    """A bottleneck ResNet with one spatial-mixer config per stage.

    ``mixers`` may be given as one config (or block name) for every stage; it is stored as a tuple
    with one entry per stage. Widths: stage ``i`` has ``round(base_width * width_multiplier) * 2**i``
    bottleneck channels and ``expansion`` times that at its output.

    Example:
        >>> cfg = ModelConfig(stage_blocks=(1, 1), mixers="gsa", stem="cifar", image_size=16,
        ...                   base_width=16, num_classes=10)
        >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    mixers: Any = "conv"
    stem: str = "imagenet"
    base_width: int = 64
    width_multiplier: float = 1.0
    expansion: int = 4
    num_classes: int = 1000
    image_size: int = 224
    in_channels: int = 3
    zero_init_residual: bool = True

    def __post_init__(self) -> None:
        normalize_numbers(self)
        blocks = self.stage_blocks
        if isinstance(blocks, int) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"model.stage_blocks must be a non-empty sequence of positive ints, got {blocks!r}")
        for count in blocks:
            check_positive_int("model", "stage_blocks[]", count)
        object.__setattr__(self, "stage_blocks", tuple(as_int(count) for count in blocks))
        mixers = self.mixers
        if isinstance(mixers, (BlockConfig, str, dict)):
            mixers = (mixers,) * len(blocks)
        if not isinstance(mixers, Sequence) or len(mixers) != len(blocks):
            raise ValueError(
                f"model.mixers must be one block config or one per stage ({len(blocks)}), got {mixers!r}"
            )
        object.__setattr__(self, "mixers", tuple(as_block_config(m) for m in mixers))
        for i, mixer in enumerate(self.mixers):
            if getattr(mixer, "feature_size", None) is not None:
                raise ValueError(
                    f"model.mixers[{i}].feature_size={mixer.feature_size!r} would be ignored: the backbone sets "
                    f"each stage's feature_size from image_size; set image_size instead"
                )
        check_choice("model", "stem", self.stem, STEMS)
        for field in ("base_width", "expansion", "image_size", "in_channels"):
            check_positive_int("model", field, getattr(self, field))
        check_positive("model", "width_multiplier", self.width_multiplier)
        check_bool("model", "zero_init_residual", self.zero_init_residual)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"model.num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.width < 1:
            raise ValueError(
                f"model.width_multiplier={self.width_multiplier} leaves no channels with base_width={self.base_width}"
            )

    @property
    def width(self) -> int:
        """Bottleneck channels of the first stage (also the stem's output width)."""
        return int(round(self.base_width * self.width_multiplier))

    def stage_widths(self) -> list[int]:
        return [self.width * 2**i for i in range(len(self.stage_blocks))]

    def flops(self) -> int:
        """Closed-form MACs per image: stem, every bottleneck (1x1 reduce, the mixer's own formula,
        1x1 expand, strided 1x1 shortcut) and the classifier; norms, pooling and activations are not
        counted, as in :func:`~gsa_search.measure.count_flops` (the tests check they agree exactly)."""
        width = self.width
        size = self.image_size
        if self.stem == "cifar":
            macs = _conv_macs(self.in_channels, width, size, 3)
        else:
            size = _half(size)
            macs = _conv_macs(self.in_channels, width, size, 7)
        in_channels = width
        for i, (blocks, stage_width, (size_in, size_out), mixer) in enumerate(
            zip(self.stage_blocks, self.stage_widths(), stage_feature_sizes(self), self.mixers)
        ):
            out_channels = stage_width * self.expansion
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                block_in = size_in if j == 0 else size_out
                macs += _conv_macs(in_channels, stage_width, block_in, 1)  # reduce
                macs += mixer.with_feature_size(block_in).flops(stage_width, stage_width, block_in, block_in,
                                                               stride=stride)
                macs += _conv_macs(stage_width, out_channels, size_out, 1)  # expand
                if stride != 1 or in_channels != out_channels:
                    macs += _conv_macs(in_channels, out_channels, size_out, 1)  # shortcut
                in_channels = out_channels
        return int(macs + in_channels * self.num_classes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        if "mixers" in data:
            mixers = data["mixers"]
            if isinstance(mixers, (list, tuple)):
                data["mixers"] = tuple(block_config_from_dict(m) if isinstance(m, dict) else m for m in mixers)
        if "stage_blocks" in data and isinstance(data["stage_blocks"], list):
            data["stage_blocks"] = tuple(data["stage_blocks"])
        return super().from_dict(data)


def _conv_macs(in_channels: int, out_channels: int, size: int, kernel: int) -> int:
    """A square convolution producing ``size`` x ``size`` outputs (bias-free)."""
    return size * size * out_channels * in_channels * kernel * kernel


def _half(size: int) -> int:
    return math.ceil(size / 2)


def stage_feature_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """``(input, output)`` resolution of each stage; the first block's mixer sees the input size."""
    size = cfg.image_size if cfg.stem == "cifar" else _half(_half(cfg.image_size))
    sizes = []
    for i in range(len(cfg.stage_blocks)):
        out = size if i == 0 else _half(size)  # every stage but the first halves the resolution
        sizes.append((size, out))
        size = out
    return sizes


class Bottleneck(nn.Module):
    """``1x1 reduce -> mixer -> 1x1 expand`` with BN/ReLU and a residual shortcut."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int,
        mixer: BlockConfig,
        *,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.mixer = create_block(mixer, width, width, stride=stride)
        self.mixer_norm = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.expand = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        if zero_init_residual:  # each residual branch starts as the identity (Goyal et al., 2017)
            nn.init.zeros_(self.expand[1].weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.mixer_norm(self.mixer(self.reduce(x))))
        return self.act(out + self.shortcut(x))


def _stem(cfg: ModelConfig) -> nn.Sequential:
    width = cfg.width
    if cfg.stem == "cifar":
        return nn.Sequential(
            nn.Conv2d(cfg.in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
    return nn.Sequential(
        nn.Conv2d(cfg.in_channels, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


@register_backbone("resnet", config=ModelConfig)
class GSAResNet(nn.Module):
    """The backbone built from a :class:`ModelConfig` (``cfg`` is kept on the module)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = _stem(cfg)
        stages = []
        in_channels = cfg.width
        for i, (blocks, width, (size_in, size_out), mixer) in enumerate(
            zip(cfg.stage_blocks, cfg.stage_widths(), stage_feature_sizes(cfg), cfg.mixers)
        ):
            out_channels = width * cfg.expansion
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                block_size = size_in if j == 0 else size_out
                mixer_cfg = mixer.with_feature_size(block_size)
                layers.append(
                    Bottleneck(
                        in_channels, width, out_channels, stride, mixer_cfg, zero_init_residual=cfg.zero_init_residual
                    )
                )
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, cfg.num_classes))
        self.num_features = in_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

