"""Plumbing shared by the loaders: stratified splits, resizing, and :func:`finish_bundle`.

Status: stable, private. :func:`finish_bundle` is the one place where a loader's ``[0, 1]`` images
become a :class:`DatasetBundle`: per-channel statistics of the *training* split, every split
(train, validation, optional test) normalised with them, and the bundle built (and so validated).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import DatasetBundle, DatasetError

Split = tuple[torch.Tensor, Any]


def one_line(error: BaseException) -> str:
    """``'TypeName: message'`` with all whitespace runs collapsed, for one-line error messages."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    *,
    dataset: str,
    min_per_class: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: ``n_c * val_fraction`` (rounded half up) of each class goes to validation.

    Every class present must keep at least ``min_per_class`` examples on each side; otherwise a
    :class:`DatasetError` names the class and the ``val_fraction`` range that works (or says that
    the class is too small for any). Returns sorted index arrays ``(train, val)``.
    """
    rng = np.random.default_rng(seed)
    present, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.min()) if len(counts) else 0
    train, val = [], []
    for cls in present:
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = math.floor(len(idx) * val_fraction + 0.5)  # round half up (round() would send 0.5 to 0)
        if n_val < min_per_class or len(idx) - n_val < min_per_class:
            side = "validation" if n_val < min_per_class else "training"
            have = n_val if side == "validation" else len(idx) - n_val
            if smallest < 2 * min_per_class:
                raise DatasetError(
                    f"{dataset}: class {cls} has {len(idx)} example(s); every class needs at least "
                    f"{2 * min_per_class} ({min_per_class} for training, {min_per_class} for validation)"
                )
            low = math.ceil(min_per_class / smallest * 1e4) / 1e4
            high = math.floor((1 - min_per_class / smallest) * 1e4) / 1e4
            raise DatasetError(
                f"{dataset}: val_fraction={val_fraction:g} leaves class {cls} ({len(idx)} examples) with "
                f"{have} {side} example(s), need at least {min_per_class}; with {smallest} examples in "
                f"the smallest class, use val_fraction in [{low:g}, {high:g}]"
            )
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    if not train:
        raise DatasetError(f"{dataset}: no labelled examples to split")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def resize(x: torch.Tensor, size: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size`` x ``size`` (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    out = [
        F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        for part in x.split(chunk)
    ]
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], size, size))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` (float64 accumulation; std floored at 1e-6)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*H*W)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalize_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, in place."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def as_labels(y: Any) -> torch.Tensor:
    """Class indices as an ``int64`` tensor."""
    if isinstance(y, torch.Tensor):
        return y.to(torch.int64)
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def finish_bundle(
    name: str,
    *,
    train: Split,
    val: Split,
    test: Split | None = None,
    num_classes: int,
    flip: bool,
    source: str,
    classes: Sequence[str] = (),
    info: dict[str, Any] | None = None,
) -> DatasetBundle:
    """Normalise ``[0, 1]`` images ``(N, C, S, S)`` with the training split's per-channel statistics
    and build the :class:`DatasetBundle` (which validates itself).

    Each split is ``(images, labels)``; images are normalised in place, labels become ``int64``.
    """
    train_x = train[0]
    if train_x.dim() != 4 or train_x.shape[0] < 2:
        raise DatasetError(
            f"{name}: the training split has {train_x.shape[0] if train_x.dim() else 0} image(s); need at least 2 "
            "to compute normalisation statistics"
        )
    mean, std = channel_stats(train_x)
    splits = {"train": train, "val": val} | ({"test": test} if test is not None else {})
    fields: dict[str, torch.Tensor] = {}
    for split, (x, y) in splits.items():
        fields[f"{split}_x"] = normalize_(x.contiguous(), mean, std)
        fields[f"{split}_y"] = as_labels(y)
    return DatasetBundle(
        name=name,
        **fields,
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=int(train_x.shape[-1]),
        flip=flip,
        source=source,
        mean=mean,
        std=std,
        classes=tuple(classes),
        info={} if info is None else info,
    )
