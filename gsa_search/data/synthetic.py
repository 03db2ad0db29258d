"""The ``synthetic`` dataset: seeded standard-normal images with uniform labels, for tests and benchmarks.

Status: stable. Nothing to learn (labels are independent of the images); the images are already
``N(0, 1)``, so the declared statistics are mean 0 and std 1 and nothing is renormalised. There is
no test split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .bundle import DatasetBundle
from .registry import check_fraction, check_int, register_dataset


@register_dataset("synthetic")
def load_synthetic(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    num_samples: int = 512,
    num_classes: int = 10,
    in_channels: int = 3,
    val_fraction: float = 0.2,
) -> DatasetBundle:
    """Standard-normal images with uniformly random labels (nothing to learn): for tests and speed."""
    name = "synthetic"
    num_samples = check_int(name, "num_samples", num_samples, minimum=2)
    num_classes = check_int(name, "num_classes", num_classes, minimum=2)
    in_channels = check_int(name, "in_channels", in_channels, minimum=1)
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    size = 32 if image_size is None else image_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, in_channels, size, size, generator=generator)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator)
    n_val = min(max(1, int(round(num_samples * val_fraction))), num_samples - 1)
    return DatasetBundle(
        name=name,
        train_x=x[n_val:].clone(),
        train_y=y[n_val:].clone(),
        val_x=x[:n_val].clone(),
        val_y=y[:n_val].clone(),
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=size,
        flip=False,
        source=(
            f"synthetic N(0, 1) images and uniform labels, seed={seed}: {num_samples - n_val} train / "
            f"{n_val} val; no test split"
        ),
        mean=(0.0,) * in_channels,
        std=(1.0,) * in_channels,
        classes=tuple(str(c) for c in range(num_classes)),
    )
