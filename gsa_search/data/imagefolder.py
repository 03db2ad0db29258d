"""The ``imagefolder`` dataset: images in torchvision's ``ImageFolder`` layout, for custom data.

Status: stable. ``data_dir/train/<class>/*`` with ``data_dir/val/<class>/*`` (or, without ``val/``,
a stratified ``val_fraction`` split of ``train/``), and optionally ``data_dir/test/<class>/*`` as the
test split; or a flat ``data_dir/<class>/*`` split into train/validation. One class list, the
non-hidden sub-folders of the training folder, indexes every split; hidden files and folders (names
starting with ``'.'``) are ignored everywhere. Images are converted to RGB and resized to
``image_size`` (default 32) squares. Up to ``max_resident`` images are loaded as tensors; beyond
that the bundle serves them through ``DataLoader``s (``bundle.train_loader(...)``), normalised
with statistics from ``stats_samples`` seeded training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ._common import channel_stats, finish_bundle, one_line, stratified_split
from .bundle import DatasetBundle, DatasetError
from .registry import check_bool, check_fraction, check_int, register_dataset

_NAME = "imagefolder"


@register_dataset("imagefolder")
def load_imagefolder(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    max_resident: int = 20000,
    val_fraction: float = 0.2,
    flip: bool = True,
    stats_samples: int = 2000,
) -> DatasetBundle:
    """``data_dir/train/<class>/*``, ``data_dir/val/<class>/*`` and optional ``data_dir/test/<class>/*``
    (or ``data_dir/<class>/*``, split deterministically with ``val_fraction`` and ``seed``)."""
    from torchvision import transforms

    from ._folder import FixedClassImageFolder, visible_class_dirs

    name = _NAME
    max_resident = check_int(name, "max_resident", max_resident, minimum=0)
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    flip = check_bool(name, "flip", flip)
    stats_samples = check_int(name, "stats_samples", stats_samples, minimum=1)
    size = 32 if image_size is None else image_size
    if data_dir is None:
        raise DatasetError(f"{name}: data_dir is required: a folder with train/<class>/ and val/<class>/ images")
    if not data_dir.is_dir():
        raise DatasetError(f"{name}: no such directory {data_dir}; expected train/<class>/ and val/<class>/ folders")
    has_train = (data_dir / "train").is_dir()
    for split in ("val", "test"):
        if (data_dir / split).is_dir() and not has_train:
            raise DatasetError(
                f"{name}: {data_dir} has {split}/ but no train/; expected train/<class>/ next to {split}/<class>/"
            )
    train_root = data_dir / "train" if has_train else data_dir
    val_root = data_dir / "val" if has_train and (data_dir / "val").is_dir() else None
    test_root = data_dir / "test" if has_train and (data_dir / "test").is_dir() else None
    classes = visible_class_dirs(train_root)
    if len(classes) < 2:
        raise DatasetError(
            f"{name}: {train_root} has {len(classes)} class folder(s) {classes}; expected at least 2 "
            "class folders of images (<class>/*.png)"
        )
    for root in (val_root, test_root):
        if root is not None:
            extra = sorted(set(visible_class_dirs(root)) - set(classes))
            if extra:
                raise DatasetError(f"{name}: {root} has class folders not in {train_root}: {', '.join(extra)}")

    try:
        train_full = FixedClassImageFolder(train_root, classes)
        val_full = None if val_root is None else FixedClassImageFolder(val_root, classes, allow_empty=True)
        test_full = None if test_root is None else FixedClassImageFolder(test_root, classes, allow_empty=True)
    except (FileNotFoundError, OSError) as error:
        raise DatasetError(f"{name}: could not read {data_dir}: {one_line(error)}") from error
    for root, folder in ((val_root, val_full), (test_root, test_full)):
        if root is not None and folder is not None and len(folder) == 0:
            raise DatasetError(f"{name}: {root} has no images; expected images in {root.name}/<class>/")

    train_targets = np.asarray(train_full.targets, dtype=np.int64)
    if val_full is not None:
        train_indices, val_indices = np.arange(len(train_targets)), None
        val_text = f"validation = {val_root} ({len(val_full)} images)"
    else:
        train_indices, val_indices = stratified_split(train_targets, val_fraction, seed, dataset=name)
        val_text = (
            f"validation = {len(val_indices)} images held out of {train_root} (stratified, seed={seed} "
            f"val_fraction={val_fraction})"
        )
    test_text = f"test = {test_root} ({len(test_full)} images)" if test_full is not None else "no test split"
    num_val = len(val_full) if val_full is not None else len(val_indices)  # type: ignore[arg-type]
    num_test = 0 if test_full is None else len(test_full)
    total = len(train_indices) + num_val + num_test
    source = (
        f"torchvision.datasets.ImageFolder layout: train = {train_root} ({len(train_indices)} images), "
        f"{val_text}, {test_text}; {len(classes)} classes, resized to {size}x{size}"
    )

    def subset(full: Any, indices: np.ndarray | None) -> Dataset:
        return full if indices is None else Subset(full, indices.tolist())

    def read_all(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        try:
            for xb, yb in DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0):
                xs.append(xb)
                ys.append(yb)
        except OSError as error:
            raise DatasetError(f"{name}: could not decode an image under {data_dir}: {one_line(error)}") from error
        return torch.cat(xs).float().div_(255), torch.cat(ys).long()

    resize = transforms.Resize((size, size))
    to_uint8 = transforms.Compose([resize, transforms.PILToTensor()])
    folders = [f for f in (train_full, val_full, test_full) if f is not None]
    for folder in folders:
        folder.transform = to_uint8
    train_set = subset(train_full, train_indices)
    val_set = val_full if val_full is not None else subset(train_full, val_indices)

    if total <= max_resident:
        return finish_bundle(
            name,
            train=read_all(train_set),
            val=read_all(val_set),
            test=None if test_full is None else read_all(test_full),
            num_classes=len(classes),
            flip=flip,
            source=source,
            classes=classes,
        )

    # Large: statistics from a seeded sample, then normalising transforms applied by the loaders.
    rng = np.random.default_rng(seed)
    sample = rng.choice(train_indices, size=min(stats_samples, len(train_indices)), replace=False)
    sample_x, _ = read_all(Subset(train_full, np.sort(sample).tolist()))
    mean, std = channel_stats(sample_x)
    normalise = transforms.Compose([resize, transforms.ToTensor(), transforms.Normalize(mean, std)])
    for folder in folders:
        folder.transform = normalise
    return DatasetBundle(
        name=name,
        train_x=None,
        train_y=None,
        val_x=None,
        val_y=None,
        num_classes=len(classes),
        in_channels=3,
        image_size=size,
        flip=flip,
        source=(
            f"{source}; streamed from disk (more than max_resident={max_resident}), statistics from "
            f"{len(sample)} images"
        ),
        mean=mean,
        std=std,
        classes=tuple(classes),
        train_dataset=train_set,
        val_dataset=val_set,
        test_dataset=test_full,
    )
