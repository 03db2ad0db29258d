"""The ``digits`` dataset: scikit-learn's bundled real 8x8 handwritten digits.

Status: stable. ``sklearn.datasets.load_digits()`` (1,797 real grey images, 10 classes; offline, the
embedded default), scaled to ``[0, 1]``, upsampled to ``image_size`` (default 32) with bilinear
interpolation and split into train/validation with a deterministic stratified split
(``val_fraction``, ``seed``). There is no test split. ``info['train_indices']`` /
``info['val_indices']`` are the ``load_digits`` indices of each split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._common import finish_bundle, resize, stratified_split
from .bundle import DatasetBundle
from .registry import check_fraction, register_dataset


def digits_source() -> tuple[np.ndarray, np.ndarray, str]:
    """The real digits: images ``(1797, 8, 8)`` on ``[0, 1]``, labels, and the file they come from."""
    from importlib import resources

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel counts 0..16 -> [0, 1]
    path = resources.files("sklearn.datasets.data") / "digits.csv.gz"
    return images, digits.target.astype(np.int64), str(path)


@register_dataset("digits")
def load_digits_dataset(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    val_fraction: float = 0.2,
) -> DatasetBundle:
    """scikit-learn's bundled digits (``data_dir`` and ``verify`` do not apply)."""
    name = "digits"
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    size = 32 if image_size is None else image_size
    images, labels, path = digits_source()
    train_idx, val_idx = stratified_split(labels, val_fraction, seed, dataset=name)
    x = resize(torch.from_numpy(images).unsqueeze(1), size)  # (N, 1, size, size)
    return finish_bundle(
        name,
        train=(x[train_idx], labels[train_idx]),
        val=(x[val_idx], labels[val_idx]),
        num_classes=10,
        flip=False,
        source=(
            f"sklearn.datasets.load_digits() from {path} ({len(labels)} real 8x8 images), "
            f"resized to {size}x{size}; stratified split seed={seed} val_fraction={val_fraction}: "
            f"{len(train_idx)} train / {len(val_idx)} val; no test split"
        ),
        classes=tuple(str(c) for c in range(10)),
        info={"train_indices": train_idx, "val_indices": val_idx},
    )
