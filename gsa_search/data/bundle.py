"""The loaded-dataset container :class:`DatasetBundle`, its one-time validation, and :class:`DatasetError`.

Status: stable. A bundle holds three splits: *train* (what the optimiser sees), *validation* (what
a search ranks trials on) and an optional *test* split (never touched by a search; reported once at
the end). Small datasets are resident ``float32`` tensors that a training loop moves to the device
once and slices (the airbench recipe); large image folders are served by ``DataLoader``s instead.
Every bundle is validated once, on construction, so a loader cannot hand back an empty split, NaN
statistics or labels outside ``[0, num_classes)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["DatasetBundle", "DatasetError"]


class DatasetError(ValueError):
    """Missing or malformed data, or a bad dataset option. The message is one line naming the
    dataset, the path (or option) and what was expected."""


_SPLITS = (("train", "training"), ("val", "validation"), ("test", "test"))


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetBundle:
    """A loaded dataset: resident tensors, or (for large image folders) datasets served by loaders.

    ``train_x``/``val_x``/``test_x`` are normalised ``float32`` ``(N, C, H, W)``;
    ``train_y``/``val_y``/``test_y`` are ``int64`` class indices. The test split is optional
    (``test_x = test_y = None`` when the data has none; see :attr:`has_test`). ``mean``/``std`` are
    the per-channel statistics (of the training split, on the ``[0, 1]`` pixel scale) that were
    subtracted/divided; :meth:`unnormalize` undoes them and :attr:`black` is a black pixel in
    normalised units (the right fill for translations). ``flip`` says whether horizontal-flip
    augmentation preserves labels for this data. ``source`` says exactly what was loaded, split by
    split. ``info`` holds dataset-specific extras (e.g. source indices).

    When the tensors are ``None`` (large ``imagefolder``), ``train_dataset``/``val_dataset``/
    ``test_dataset`` yield ``(image, label)`` pairs already resized and normalised; use
    :meth:`train_loader` / :meth:`val_loader` / :meth:`test_loader`, which work for resident
    bundles too.

    Construction validates the bundle (non-empty train and validation splits, matching lengths,
    image shapes, label range, finite statistics) and raises :class:`DatasetError` otherwise.
    """

    name: str
    train_x: torch.Tensor | None = dataclasses.field(repr=False)
    train_y: torch.Tensor | None = dataclasses.field(repr=False)
    val_x: torch.Tensor | None = dataclasses.field(repr=False)
    val_y: torch.Tensor | None = dataclasses.field(repr=False)
    num_classes: int
    in_channels: int
    image_size: int
    flip: bool
    source: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    info: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    train_dataset: Dataset | None = dataclasses.field(default=None, repr=False)
    val_dataset: Dataset | None = dataclasses.field(default=None, repr=False)
    test_x: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    test_y: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    test_dataset: Dataset | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            name = self.name if isinstance(self.name, str) and self.name else "dataset"
            raise DatasetError(f"{name}: invalid bundle: {problem}")

    # -- sizes and placement ------------------------------------------------------------------------

    @property
    def is_resident(self) -> bool:
        """True when the whole dataset is held as tensors (every dataset but large image folders)."""
        return self.train_x is not None

    @property
    def has_test(self) -> bool:
        """True when the bundle has a test split (``test_x``/``test_y`` or ``test_dataset``)."""
        return self.test_x is not None or self.test_dataset is not None

    @property
    def num_train(self) -> int:
        if self.train_x is not None:
            return int(self.train_x.shape[0])
        return len(self.train_dataset)  # type: ignore[arg-type]

    @property
    def num_val(self) -> int:
        if self.val_x is not None:
            return int(self.val_x.shape[0])
        return len(self.val_dataset)  # type: ignore[arg-type]

    @property
    def num_test(self) -> int:
        """Size of the test split; 0 when there is none."""
        if self.test_x is not None:
            return int(self.test_x.shape[0])
        return 0 if self.test_dataset is None else len(self.test_dataset)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device | None:
        return None if self.train_x is None else self.train_x.device

    def to(self, device: torch.device | str) -> DatasetBundle:
        """A bundle whose tensors (test split included) live on ``device`` (no copy if already there)."""
        if not self.is_resident:
            return self
        names = ["train_x", "train_y", "val_x", "val_y"] + (["test_x", "test_y"] if self.test_x is not None else [])
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in names})

    # -- normalisation ------------------------------------------------------------------------------

    @property
    def black(self) -> tuple[float, ...]:
        """A black pixel in normalised units, per channel: ``(0 - mean_c) / std_c``.

        Augmentation runs after normalisation, so this (not 0, which is the mean: grey) is the value
        that pads a translated image with black: ``augment(x, fill=bundle.black)``.
        """
        return tuple((0.0 - m) / s for m, s in zip(self.mean, self.std))

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images ``(..., C, H, W)`` back to the ``[0, 1]`` pixel scale."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    # -- loaders ------------------------------------------------------------------------------------

    def train_loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        generator: torch.Generator | None = None,
        pin_memory: bool = False,
    ) -> DataLoader:
        """A ``DataLoader`` over the training split (resident tensors or the on-disk dataset)."""
        return DataLoader(
            self._dataset("train"),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=generator,
            pin_memory=pin_memory,
        )

    def val_loader(self, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` over the validation split, in order."""
        return DataLoader(
            self._dataset("val"), batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
        )

    def test_loader(self, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` over the test split, in order; :class:`DatasetError` if there is none."""
        if not self.has_test:
            raise DatasetError(f"{self.name}: has no test split ({self.source})")
        return DataLoader(
            self._dataset("test"), batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
        )

    def _dataset(self, split: str) -> Dataset:
        dataset = getattr(self, f"{split}_dataset")
        if dataset is None:
            dataset = TensorDataset(getattr(self, f"{split}_x"), getattr(self, f"{split}_y"))
        return dataset


# --------------------------------------------------------------------------------------------------
# Validation: the first problem found, as one line, or None
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(bundle: DatasetBundle) -> str | None:
    if not isinstance(bundle.name, str) or not bundle.name:
        return f"name must be a non-empty string, got {bundle.name!r}"
    for field, minimum in (("num_classes", 2), ("in_channels", 1), ("image_size", 1)):
        value = getattr(bundle, field)
        if not _is_int(value) or value < minimum:
            return f"{field} must be an integer >= {minimum}, got {value!r}"
    if not isinstance(bundle.flip, bool):
        return f"flip must be a bool, got {bundle.flip!r}"
    if not isinstance(bundle.source, str) or not bundle.source:
        return "source must say what was loaded (a non-empty string)"
    for field in ("mean", "std"):
        values = getattr(bundle, field)
        if len(values) != bundle.in_channels:
            return f"{field} has {len(values)} value(s) for {bundle.in_channels} channel(s)"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"{field} must be finite, got {tuple(values)} (is the training split empty or constant?)"
    if any(s <= 0 for s in bundle.std):
        return f"std must be > 0 per channel, got {tuple(bundle.std)}"
    if bundle.classes and len(bundle.classes) != bundle.num_classes:
        return f"{len(bundle.classes)} class names for num_classes={bundle.num_classes}"

    resident = bundle.train_x is not None
    for split, title in _SPLITS:
        x, y, dataset = (getattr(bundle, f"{split}_{part}") for part in ("x", "y", "dataset"))
        if split == "test" and x is None and y is None and dataset is None:
            continue  # the test split is optional
        if resident:
            if dataset is not None:
                return f"{split}_dataset is set but the bundle holds tensors; give one or the other"
            problem = _tensor_problem(bundle, split, title, x, y)
        else:
            if x is not None or y is not None:
                return f"{split}_x/{split}_y are set but train_x is None; a streamed bundle has only *_dataset fields"
            problem = _dataset_problem(split, title, dataset)
        if problem is not None:
            return problem
    return None


def _tensor_problem(bundle: DatasetBundle, split: str, title: str, x: Any, y: Any) -> str | None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return f"{split}_x and {split}_y must both be tensors, got {type(x).__name__} and {type(y).__name__}"
    expected = (bundle.in_channels, bundle.image_size, bundle.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        return f"{split}_x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, expected))})"
    if not x.is_floating_point():
        return f"{split}_x has dtype {x.dtype}, expected a floating-point dtype"
    if y.dim() != 1 or y.dtype != torch.int64:
        return f"{split}_y must be a 1-D int64 tensor, got shape {tuple(y.shape)} and dtype {y.dtype}"
    if x.shape[0] != y.shape[0]:
        return f"{split}_x has {x.shape[0]} images but {split}_y has {y.shape[0]} labels"
    if x.shape[0] == 0:
        return f"the {title} split is empty"
    if y.device.type == "meta":
        return None  # shapes only: there are no values to check
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= bundle.num_classes:
        return f"{split}_y has labels in [{low}, {high}], expected [0, {bundle.num_classes})"
    return None


def _dataset_problem(split: str, title: str, dataset: Any) -> str | None:
    if dataset is None:
        return f"{split}_dataset is None and so is {split}_x: the {title} split is missing"
    try:
        size = len(dataset)
    except TypeError:
        return f"{split}_dataset has no len(); expected a map-style Dataset"
    if size == 0:
        return f"the {title} split is empty"
    return None
