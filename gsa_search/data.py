"""Datasets for proxy training, and GPU-resident augmentation / batching.

Status: stable. Implements a dataset registry (``register_dataset`` / ``load_dataset`` /
``list_datasets``) whose loaders all return a :class:`DatasetBundle`: normalised ``float32``
tensors ``(N, C, H, W)`` and ``int64`` labels that a training loop moves to the device once and then
slices (the airbench recipe: the whole dataset resident on the GPU, augmentation done there too).

Registered datasets:

- ``digits``: scikit-learn's bundled ``load_digits()`` (1,797 real 8x8 grey images, 10 classes;
  offline, the embedded default), upsampled to ``image_size`` with bilinear interpolation and split
  into train/validation with a deterministic stratified split.
- ``digits-pairs``: a long-range proxy task built from the same real digits (see
  :func:`_load_digits_pairs`): two digits in opposite corners of a larger canvas, label = "same
  class?". Local 3x3 mixers cannot solve it in early layers; a global mixer can.
- ``cifar10`` / ``cifar100``: the real CIFAR python-pickle files on disk, read by
  ``torchvision.datasets.CIFAR10/CIFAR100``. torchvision only accepts the official files (MD5
  checks); here checksums are checked only with ``verify=True`` so re-packed subsets load too.
- ``imagefolder``: any directory in torchvision's ``ImageFolder`` layout; small ones are loaded as
  tensors, large ones are served by ``DataLoader``s (``bundle.train_loader(...)``).
- ``synthetic``: seeded random tensors, for tests and benchmarks.

Augmentation (:func:`augment`) is batched random translation with zero fill (= random crop of a
zero-padded image) plus random horizontal flip, computed on the tensor's device without a Python
loop over samples. :func:`batches` yields index-sliced mini-batches of resident tensors.

Example:
    >>> bundle = load_dataset("digits", seed=0)
    >>> bundle.train_x.shape[1:], bundle.num_classes
    (torch.Size([1, 32, 32]), 10)
    >>> xb, yb = next(batches(bundle.train_x, bundle.train_y, batch_size=64, shuffle=False))
    >>> augment(xb, pad=4, flip=bundle.flip).shape
    torch.Size([64, 1, 32, 32])
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .registry import Registry

__all__ = [
    "DatasetBundle",
    "DatasetError",
    "register_dataset",
    "list_datasets",
    "load_dataset",
    "augment",
    "batches",
]

# Arguments every loader receives from :func:`load_dataset`; anything else is a dataset option.
_COMMON_ARGS = ("data_dir", "image_size", "seed", "verify")


class DatasetError(ValueError):
    """Missing or malformed data, or a bad dataset option. The message is one line naming the path
    (or option) and what was expected."""


# --------------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetBundle:
    """A loaded dataset: resident tensors, or (for large image folders) datasets served by loaders.

    ``train_x``/``val_x`` are normalised ``float32`` ``(N, C, H, W)``; ``train_y``/``val_y`` are
    ``int64`` class indices. ``mean``/``std`` are the per-channel statistics (of the training split,
    on the ``[0, 1]`` pixel scale) that were subtracted/divided; :meth:`unnormalize` undoes them.
    ``flip`` says whether horizontal-flip augmentation preserves labels for this data. ``source``
    says exactly what was loaded. ``info`` holds dataset-specific extras (e.g. source indices).

    When the tensors are ``None`` (large ``imagefolder``), ``train_dataset``/``val_dataset`` yield
    ``(image, label)`` pairs already resized and normalised; use :meth:`train_loader` /
    :meth:`val_loader`, which work for resident bundles too.
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

    @property
    def is_resident(self) -> bool:
        """True when the whole dataset is held as tensors (every dataset but large image folders)."""
        return self.train_x is not None

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
    def device(self) -> torch.device | None:
        return None if self.train_x is None else self.train_x.device

    def to(self, device: torch.device | str) -> DatasetBundle:
        """A bundle whose tensors live on ``device`` (moved once; no copy if already there)."""
        if not self.is_resident:
            return self
        moved = {
            name: getattr(self, name).to(device)
            for name in ("train_x", "train_y", "val_x", "val_y")
        }
        return dataclasses.replace(self, **moved)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images ``(..., C, H, W)`` back to the ``[0, 1]`` pixel scale."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

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
        dataset = self.train_dataset
        if dataset is None:
            dataset = TensorDataset(self.train_x, self.train_y)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=generator,
            pin_memory=pin_memory,
        )

    def val_loader(self, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` over the validation split, in order."""
        dataset = self.val_dataset
        if dataset is None:
            dataset = TensorDataset(self.val_x, self.val_y)  # type: ignore[arg-type]
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
        )


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_DATASETS: Registry[Callable[..., DatasetBundle]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[..., DatasetBundle]], Callable[..., DatasetBundle]]:
    """Register a loader ``fn(*, data_dir, image_size, seed, verify, <options>) -> DatasetBundle``.

    The loader's other keyword-only parameters (with defaults) are the dataset's options; a
    ``**kwargs`` parameter accepts any option.
    """
    return _DATASETS.register(name)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, optionally filtered by a glob such as ``'cifar*'``."""
    return _DATASETS.names(pattern)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
    verify: bool = False,
    **options: Any,
) -> DatasetBundle:
    """Load a registered dataset as a :class:`DatasetBundle`.

    ``image_size`` (default: the dataset's own, 32 for all built-ins) resizes square images;
    ``seed`` fixes splits and generated data; ``verify`` checks checksums where the format has
    official ones (CIFAR). Other keyword arguments are dataset options; unknown ones are an error
    that lists the allowed ones.

    Example:
        >>> load_dataset("synthetic", num_samples=10, image_size=8).train_x.shape
        torch.Size([8, 3, 8, 8])
    """
    loader = _DATASETS.get(name)
    allowed, accepts_any = _loader_options(loader)
    unknown = sorted(set(options) - set(allowed))
    if unknown and not accepts_any:
        raise DatasetError(
            f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= 4096
    ):
        raise DatasetError(f"{name}: image_size must be an integer in [1, 4096] or None, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"{name}: seed must be an integer, got {seed!r}")
    path = None if data_dir is None else Path(data_dir).expanduser()
    return loader(data_dir=path, image_size=image_size, seed=seed, verify=bool(verify), **options)


def _loader_options(loader: Callable[..., DatasetBundle]) -> tuple[list[str], bool]:
    params = inspect.signature(loader).parameters.values()
    allowed = sorted(
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON_ARGS
    )
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return allowed, accepts_any


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _check_int(dataset: str, option: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetError(f"{dataset}: option {option} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_fraction(dataset: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DatasetError(f"{dataset}: option {option} must be a number in (0, 1), got {value!r}")
    return float(value)


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: ``round(n_c * val_fraction)`` of each class (at least one,
    leaving at least one for training) goes to validation. Returns sorted index arrays."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _resize(x: torch.Tensor, size: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size`` x ``size`` (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    out = [
        F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        for part in x.split(chunk)
    ]
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], size, size))


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` (float64 accumulation)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*H*W)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _normalize_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _labels(y: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn)
# --------------------------------------------------------------------------------------------------


def _digits_source() -> tuple[np.ndarray, np.ndarray, str]:
    """The real digits: images ``(1797, 8, 8)`` on ``[0, 1]``, labels, and the file they come from."""
    from importlib import resources

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel counts 0..16 -> [0, 1]
    path = resources.files("sklearn.datasets.data") / "digits.csv.gz"
    return images, digits.target.astype(np.int64), str(path)


@register_dataset("digits")
def _load_digits(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    val_fraction: float = 0.2,
) -> DatasetBundle:
    """scikit-learn's bundled digits (``data_dir`` and ``verify`` do not apply)."""
    val_fraction = _check_fraction("digits", "val_fraction", val_fraction)
    size = 32 if image_size is None else image_size
    images, labels, path = _digits_source()
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    x = _resize(torch.from_numpy(images).unsqueeze(1), size)  # (N, 1, size, size)
    train_x, val_x = x[train_idx].contiguous(), x[val_idx].contiguous()
    mean, std = _channel_stats(train_x)
    return DatasetBundle(
        name="digits",
        train_x=_normalize_(train_x, mean, std),
        train_y=_labels(labels[train_idx]),
        val_x=_normalize_(val_x, mean, std),
        val_y=_labels(labels[val_idx]),
        num_classes=10,
        in_channels=1,
        image_size=size,
        flip=False,
        source=(
            f"sklearn.datasets.load_digits() from {path} ({len(labels)} real 8x8 images), "
            f"resized to {size}x{size}; stratified split seed={seed} val_fraction={val_fraction}: "
            f"{len(train_idx)} train / {len(val_idx)} val"
        ),
        mean=mean,
        std=std,
        classes=tuple(str(c) for c in range(10)),
        info={"train_indices": train_idx, "val_indices": val_idx},
    )


# --------------------------------------------------------------------------------------------------
# digits-pairs: a long-range proxy task
# --------------------------------------------------------------------------------------------------


@register_dataset("digits-pairs")
def _load_digits_pairs(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    canvas: int = 32,
    digit_size: int = 8,
    jitter: int = 2,
    num_samples: int = 4000,
    val_fraction: float = 0.2,
) -> DatasetBundle:
    """Two real digits in opposite corners of a ``canvas`` x ``canvas`` image; label 1 iff same class.

    Digit A is pasted at ``(dy, dx)`` and digit B at ``(canvas - digit_size - dy', canvas -
    digit_size - dx')`` with independent jitters in ``[0, jitter]``; the background is 0. Labels are
    exactly balanced (half "same class", half "different class"; "same" pairs use two different
    images of the class, so the task is class comparison, not image matching).

    Why it is long-range: the answer depends jointly on both digits, which lie in opposite corners
    (with the defaults, each digit's box spans at most 10 pixels and the two boxes are 12 pixels
    apart on each axis; covering both takes a window of at least 28 x 28). A stack of stride-1 3x3
    convolutions has a receptive field of ``2L + 1`` after ``L`` layers, so no unit of the first
    dozen layers sees both digits: early local layers can only describe each digit separately and
    the comparison must wait for deep or downsampled stages. A global mixer (GSA, explicit
    attention, full attention) relates the two corners in its first layer.

    Honest validation: the real digits are split (stratified, ``val_fraction``, ``seed``) *before*
    composing, so validation pairs are made only of digit images never seen in training.
    ``info['train_pairs']`` / ``info['val_pairs']`` hold the ``load_digits`` indices (A, B) of
    every pair.
    """
    name = "digits-pairs"
    canvas = _check_int(name, "canvas", canvas, minimum=4)
    digit_size = _check_int(name, "digit_size", digit_size, minimum=2)
    jitter = _check_int(name, "jitter", jitter, minimum=0)
    num_samples = _check_int(name, "num_samples", num_samples, minimum=4)
    val_fraction = _check_fraction(name, "val_fraction", val_fraction)
    if 2 * (digit_size + jitter) > canvas:
        raise DatasetError(
            f"{name}: canvas {canvas} is too small for two separated corner regions; need "
            f"canvas >= 2 * (digit_size + jitter) = {2 * (digit_size + jitter)}"
        )
    size = canvas if image_size is None else image_size

    images, labels, path = _digits_source()
    digit_px = _resize(torch.from_numpy(images).unsqueeze(1), digit_size)[:, 0]  # (1797, d, d)
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    rng = np.random.default_rng([seed, 1])
    n_val = max(2, int(round(num_samples * val_fraction)))
    n_train = num_samples - n_val

    def compose(pool: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        by_class = [pool[labels[pool] == c] for c in range(10)]
        same = np.zeros(count, dtype=np.int64)
        same[: count // 2] = 1
        same = rng.permutation(same)
        pairs = np.empty((count, 2), dtype=np.int64)
        for i, is_same in enumerate(same):
            if is_same:
                members = by_class[rng.integers(10)]
                pairs[i] = rng.choice(members, size=2, replace=False)
            else:
                first, second = rng.choice(10, size=2, replace=False)
                pairs[i] = rng.choice(by_class[first]), rng.choice(by_class[second])
        offsets = rng.integers(0, jitter + 1, size=(count, 4))  # (dy_a, dx_a, dy_b, dx_b)
        x = torch.zeros(count, 1, canvas, canvas)
        far = canvas - digit_size
        for i in range(count):
            ya, xa, yb, xb = (int(o) for o in offsets[i])
            x[i, 0, ya : ya + digit_size, xa : xa + digit_size] = digit_px[pairs[i, 0]]
            x[i, 0, far - yb : far - yb + digit_size, far - xb : far - xb + digit_size] = digit_px[pairs[i, 1]]
        return _resize(x, size), torch.from_numpy(same), pairs

    train_x, train_y, train_pairs = compose(train_idx, n_train)
    val_x, val_y, val_pairs = compose(val_idx, n_val)
    mean, std = _channel_stats(train_x)
    return DatasetBundle(
        name=name,
        train_x=_normalize_(train_x, mean, std),
        train_y=train_y,
        val_x=_normalize_(val_x, mean, std),
        val_y=val_y,
        num_classes=2,
        in_channels=1,
        image_size=size,
        flip=False,
        source=(
            f"pairs of real digits from sklearn.datasets.load_digits() ({path}): {n_train} train pairs "
            f"from {len(train_idx)} digits, {n_val} val pairs from {len(val_idx)} disjoint digits; "
            f"canvas={canvas} digit_size={digit_size} jitter={jitter} seed={seed}"
            + (f", resized to {size}x{size}" if size != canvas else "")
        ),
        mean=mean,
        std=std,
        classes=("different", "same"),
        info={
            "train_pairs": train_pairs,
            "val_pairs": val_pairs,
            "train_digits": train_idx,
            "val_digits": val_idx,
            "canvas": canvas,
            "digit_size": digit_size,
            "jitter": jitter,
        },
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 through torchvision
# --------------------------------------------------------------------------------------------------

_CIFAR = {
    "cifar10": {"title": "CIFAR-10", "class": "CIFAR10", "label_key": "labels"},
    "cifar100": {"title": "CIFAR-100", "class": "CIFAR100", "label_key": "fine_labels"},
}


def _cifar_classes(name: str) -> tuple[type, type]:
    """torchvision's class, and a subclass that checks file presence instead of official MD5s."""
    import torchvision.datasets as tvd

    stock = getattr(tvd, _CIFAR[name]["class"])

    class Unverified(stock):  # type: ignore[misc, valid-type]
        """torchvision's CIFAR loader, minus the MD5 comparison against the official archive."""

        def _check_integrity(self) -> bool:
            return all(
                os.path.isfile(os.path.join(self.root, self.base_folder, filename))
                for filename, _ in self.train_list + self.test_list
            )

        def _load_meta(self) -> None:  # as torchvision's, without the MD5 check
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as infile:
                data = pickle.load(infile, encoding="latin1")
                self.classes = data[self.meta["key"]]
            self.class_to_idx = {_class: i for i, _class in enumerate(self.classes)}

    return stock, Unverified


def _cifar_files(stock: type) -> list[tuple[str, str]]:
    """``(filename, official md5)`` of every file the loader reads: batches, then meta."""
    return [tuple(f) for f in stock.train_list + stock.test_list] + [(stock.meta["filename"], stock.meta["md5"])]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _diagnose_cifar_file(path: Path, *, label_key: str | None, meta_key: str | None = None) -> str | None:
    """Why ``path`` is not a valid CIFAR batch (or meta) file, or None if it looks fine."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as error:  # noqa: BLE001 - any failure to unpickle is the diagnosis
        return f"could not unpickle it ({_one_line(error)})"
    if not isinstance(entry, dict):
        return f"expected a pickled dict, found {type(entry).__name__}"
    keys = ", ".join(repr(k) for k in list(entry)[:6])
    if any(isinstance(k, bytes) for k in entry) and not any(isinstance(k, str) for k in entry):
        return (
            f"its keys are Python 3 bytes ({keys}); the official files are Python 2 pickles whose keys "
            "load as str with encoding='latin1'"
        )
    if meta_key is not None:
        if meta_key not in entry:
            return f"missing key {meta_key!r} (found {keys})"
        return None
    if "data" not in entry:
        return f"missing key 'data' (found {keys})"
    if "labels" not in entry and "fine_labels" not in entry:
        return f"missing key {label_key!r} (found {keys})"
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        return f"'data' has shape {shape} and dtype {dtype}, expected (N, 3072) uint8"
    targets = entry.get("labels", entry.get("fine_labels"))
    if len(targets) != len(data):
        return f"{len(targets)} labels for {len(data)} images"
    return None


def _load_cifar(
    name: str, *, data_dir: Path | None, image_size: int | None, verify: bool, download: bool
) -> DatasetBundle:
    spec = _CIFAR[name]
    title = spec["title"]
    stock, unverified = _cifar_classes(name)
    base = stock.base_folder
    hint = (
        f"download it with torchvision.datasets.{spec['class']}(root, download=True) or pass download=True"
        if not download
        else f"the download failed: check the network, or fetch {stock.url} elsewhere and unpack it into data_dir"
    )
    if data_dir is None:
        raise DatasetError(f"{name}: data_dir is required: the folder that contains {base}/; {hint}")
    root = data_dir
    if not root.exists() and not download:
        raise DatasetError(f"{name}: no such directory {root}; expected a folder containing {base}/; {hint}")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{name}: {root} is not a directory; expected a folder containing {base}/; {hint}")
    if root.name == base and not (root / base).is_dir():
        root = root.parent  # accept the batches folder itself
    folder = root / base
    files = _cifar_files(stock)
    if not download:
        missing = [f for f, _ in files if not (folder / f).is_file()]
        if missing:
            expected = ", ".join(f for f, _ in files)
            raise DatasetError(
                f"{name}: {folder} is not in the {title} python format: missing {', '.join(missing)} "
                f"(expected {expected}); {hint}"
            )

    def load(train: bool, *, fetch: bool = False) -> Any:
        cls = stock if verify and not fetch else unverified
        try:
            return cls(str(root), train=train, download=fetch)
        except Exception as error:  # noqa: BLE001 - turned into a DatasetError naming the file
            if not all((folder / f).is_file() for f, _ in files):
                raise DatasetError(
                    f"{name}: could not get {title} into {folder} ({_one_line(error)}); {hint}"
                ) from error
            raise _cifar_corruption(name, folder, files, spec["label_key"], stock.meta["key"], error) from error

    # download=True: torchvision fetches the official archive if the files are not there yet.
    train_set = load(True, fetch=True) if download else None
    if verify:
        for filename, expected_md5 in files:
            path = folder / filename
            actual = _md5(path)
            if actual != expected_md5:
                raise DatasetError(
                    f"{name}: checksum mismatch for {path}: md5 {actual}, expected {expected_md5} "
                    f"(the official {title} file); re-packed or partial copies never match, load them "
                    "with verify=False"
                )
        train_set = None  # load again through torchvision's own checked path
    if train_set is None:
        train_set = load(True)
    test_set = load(False)

    num_classes = len(train_set.classes)
    splits = []
    for split_name, ds in (("train", train_set), ("test", test_set)):
        targets = np.asarray(ds.targets, dtype=np.int64)
        if len(targets) != len(ds.data) or (len(targets) and (targets.min() < 0 or targets.max() >= num_classes)):
            raise _cifar_corruption(
                name, folder, files, spec["label_key"], stock.meta["key"],
                ValueError(f"{split_name}: {len(ds.data)} images, {len(targets)} labels, {num_classes} classes"),
            )
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
        splits.append((x, torch.from_numpy(targets)))

    size = 32 if image_size is None else image_size
    (train_u8, train_y), (val_u8, val_y) = splits
    train_x = _resize(train_u8.float().div_(255), size).contiguous()
    val_x = _resize(val_u8.float().div_(255), size).contiguous()
    mean, std = _channel_stats(train_x)
    train_files = ", ".join(f for f, _ in stock.train_list)
    test_files = ", ".join(f for f, _ in stock.test_list)
    return DatasetBundle(
        name=name,
        train_x=_normalize_(train_x, mean, std),
        train_y=train_y,
        val_x=_normalize_(val_x, mean, std),
        val_y=val_y,
        num_classes=num_classes,
        in_channels=3,
        image_size=size,
        flip=True,
        source=(
            f"torchvision.datasets.{spec['class']} from {folder}: train = {train_files} "
            f"({len(train_y)} images), val = {test_files} ({len(val_y)} images), classes from "
            f"{stock.meta['filename']}; checksums {'verified' if verify else 'not verified'}"
            + (f"; resized to {size}x{size}" if size != 32 else "")
        ),
        mean=mean,
        std=std,
        classes=tuple(str(c) for c in train_set.classes),
    )


def _cifar_corruption(
    name: str,
    folder: Path,
    files: list[tuple[str, str]],
    label_key: str,
    meta_key: str,
    error: BaseException,
) -> DatasetError:
    meta_file = files[-1][0]
    for filename, _ in files:
        problem = _diagnose_cifar_file(
            folder / filename,
            label_key=label_key,
            meta_key=meta_key if filename == meta_file else None,
        )
        if problem is not None:
            return DatasetError(f"{name}: {folder / filename} is not a valid CIFAR file: {problem}")
    return DatasetError(f"{name}: could not load the batches in {folder}: {_one_line(error)}")


@register_dataset("cifar10")
def _load_cifar10(
    *, data_dir: Path | None, image_size: int | None, seed: int, verify: bool, download: bool = False
) -> DatasetBundle:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py`` (train = data_batch_1..5, val = test_batch)."""
    return _load_cifar("cifar10", data_dir=data_dir, image_size=image_size, verify=verify, download=download)


@register_dataset("cifar100")
def _load_cifar100(
    *, data_dir: Path | None, image_size: int | None, seed: int, verify: bool, download: bool = False
) -> DatasetBundle:
    """CIFAR-100 (fine labels) from ``data_dir/cifar-100-python`` (train, test, meta)."""
    return _load_cifar("cifar100", data_dir=data_dir, image_size=image_size, verify=verify, download=download)


# --------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------


def _image_folder(root: Path, classes: Sequence[str] | None, transform: Any) -> Any:
    """torchvision ``ImageFolder``; with ``classes`` given, their indices are fixed (for val/)."""
    from torchvision.datasets import ImageFolder

    if classes is None:
        return ImageFolder(str(root), transform=transform)

    class FixedClasses(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return list(classes), {c: i for i, c in enumerate(classes)}

    return FixedClasses(str(root), transform=transform, allow_empty=True)


def _class_dirs(path: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


@register_dataset("imagefolder")
def _load_imagefolder(
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
    """``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (or ``data_dir/<class>/*``, split
    deterministically with ``val_fraction`` and ``seed``). Images are converted to RGB and resized
    to ``image_size`` (default 32) squares. Up to ``max_resident`` images are loaded as tensors;
    beyond that the bundle serves them through ``DataLoader``s, normalised with statistics from
    ``stats_samples`` seeded training images."""
    from torchvision import transforms

    name = "imagefolder"
    max_resident = _check_int(name, "max_resident", max_resident, minimum=0)
    val_fraction = _check_fraction(name, "val_fraction", val_fraction)
    stats_samples = _check_int(name, "stats_samples", stats_samples, minimum=1)
    size = 32 if image_size is None else image_size
    if data_dir is None:
        raise DatasetError(f"{name}: data_dir is required: a folder with train/<class>/ and val/<class>/ images")
    if not data_dir.is_dir():
        raise DatasetError(f"{name}: no such directory {data_dir}; expected train/<class>/ and val/<class>/ folders")
    if (data_dir / "val").is_dir() and not (data_dir / "train").is_dir():
        raise DatasetError(f"{name}: {data_dir} has val/ but no train/; expected train/<class>/ next to val/<class>/")
    train_root = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    has_val = train_root != data_dir and (data_dir / "val").is_dir()
    classes = _class_dirs(train_root)
    if len(classes) < 2:
        raise DatasetError(
            f"{name}: {train_root} has {len(classes)} class folder(s) {classes}; expected at least 2 "
            "class folders of images (<class>/*.png)"
        )
    if has_val:
        extra = sorted(set(_class_dirs(data_dir / "val")) - set(classes))
        if extra:
            raise DatasetError(f"{name}: {data_dir / 'val'} has class folders not in {train_root}: {', '.join(extra)}")

    resize = transforms.Resize((size, size))
    try:
        train_full = _image_folder(train_root, None, None)
        val_full = _image_folder(data_dir / "val", classes, None) if has_val else None
    except (FileNotFoundError, OSError) as error:
        raise DatasetError(f"{name}: could not read {data_dir}: {_one_line(error)}") from error

    train_targets = np.asarray(train_full.targets, dtype=np.int64)
    if has_val:
        train_indices, val_indices = np.arange(len(train_targets)), None
        split = f"train = {train_root}, val = {data_dir / 'val'}"
    else:
        train_indices, val_indices = _stratified_split(train_targets, val_fraction, seed)
        split = f"split of {train_root} with seed={seed} val_fraction={val_fraction}"
    num_val = len(val_full) if val_full is not None else len(val_indices)  # type: ignore[arg-type]
    total = len(train_indices) + num_val
    if num_val == 0:
        raise DatasetError(f"{name}: {data_dir} has no validation images; expected images in val/<class>/")

    def subset(full: Any, indices: np.ndarray | None) -> Dataset:
        return full if indices is None else Subset(full, indices.tolist())

    def read_all(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
        xs, ys = [], []
        try:
            for xb, yb in loader:
                xs.append(xb)
                ys.append(yb)
        except OSError as error:
            raise DatasetError(f"{name}: could not decode an image under {data_dir}: {_one_line(error)}") from error
        return torch.cat(xs).float().div_(255), torch.cat(ys).long()

    to_uint8 = transforms.Compose([resize, transforms.PILToTensor()])
    train_full.transform = to_uint8
    if val_full is not None:
        val_full.transform = to_uint8
    source = f"torchvision.datasets.ImageFolder: {split}; {len(classes)} classes, {len(train_indices)} train / {num_val} val images, resized to {size}x{size}"

    if total <= max_resident:
        train_x, train_y = read_all(subset(train_full, train_indices))
        if val_full is not None:
            val_x, val_y = read_all(val_full)
        else:
            val_x, val_y = read_all(subset(train_full, val_indices))
        mean, std = _channel_stats(train_x)
        return DatasetBundle(
            name=name,
            train_x=_normalize_(train_x, mean, std),
            train_y=train_y,
            val_x=_normalize_(val_x, mean, std),
            val_y=val_y,
            num_classes=len(classes),
            in_channels=3,
            image_size=size,
            flip=bool(flip),
            source=source,
            mean=mean,
            std=std,
            classes=tuple(classes),
        )

    # Large: statistics from a seeded sample, then normalising transforms applied by the loaders.
    rng = np.random.default_rng(seed)
    sample = rng.choice(train_indices, size=min(stats_samples, len(train_indices)), replace=False)
    sample_x, _ = read_all(Subset(train_full, np.sort(sample).tolist()))
    mean, std = _channel_stats(sample_x)
    normalise = transforms.Compose([resize, transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_full = _image_folder(train_root, None, normalise)
    val_full = _image_folder(data_dir / "val", classes, normalise) if has_val else None
    return DatasetBundle(
        name=name,
        train_x=None,
        train_y=None,
        val_x=None,
        val_y=None,
        num_classes=len(classes),
        in_channels=3,
        image_size=size,
        flip=bool(flip),
        source=f"{source}; streamed from disk (more than max_resident={max_resident}), statistics from {len(sample)} images",
        mean=mean,
        std=std,
        classes=tuple(classes),
        train_dataset=subset(train_full, train_indices),
        val_dataset=val_full if val_full is not None else subset(train_full, val_indices),
    )


# --------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------


@register_dataset("synthetic")
def _load_synthetic(
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
    num_samples = _check_int(name, "num_samples", num_samples, minimum=2)
    num_classes = _check_int(name, "num_classes", num_classes, minimum=2)
    in_channels = _check_int(name, "in_channels", in_channels, minimum=1)
    val_fraction = _check_fraction(name, "val_fraction", val_fraction)
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
        source=f"synthetic N(0, 1) images and uniform labels, seed={seed}: {num_samples - n_val} train / {n_val} val",
        mean=(0.0,) * in_channels,
        std=(1.0,) * in_channels,
        classes=tuple(str(c) for c in range(num_classes)),
    )


# --------------------------------------------------------------------------------------------------
# On-device augmentation and batching
# --------------------------------------------------------------------------------------------------


def augment(
    x: torch.Tensor, *, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels with zero fill, then random horizontal flip.

    Equivalent to a random ``H x W`` crop of the image zero-padded by ``pad`` on each side, with an
    independent shift ``(dy, dx)`` in ``[-pad, pad]^2`` and a fair coin for flipping per sample. Runs
    on ``x.device`` with two ``gather``s (no Python loop over samples). Deterministic for a given
    ``generator``, which must live on ``x.device``. With ``pad=0`` and ``flip=False`` returns ``x``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.ones(2, 3, 8, 8), pad=2, generator=g).shape
        torch.Size([2, 3, 8, 8])
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"augment: pad must be a non-negative integer, got {pad!r}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"augment: generator is on {generator.device}, x on {x.device}; they must match")
    if pad == 0 and not flip:
        return x
    batch, channels, height, width = x.shape
    device = x.device
    rows = torch.arange(height, device=device).expand(batch, height)  # (B, H)
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if pad > 0:
        # Offsets of the crop window inside the padded image: 0..2*pad (shift = offset - pad).
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=device, generator=generator)
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
        source = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros outside
    else:
        source = x
    if flip:
        flipped = torch.rand(batch, device=device, generator=generator) < 0.5  # (B,)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded_width = source.shape[-1]
    out = source.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded_width))  # (B, C, H, W+2p)
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))  # (B, C, H, W)


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], y[idx])`` mini-batches of resident tensors; one pass = one epoch.

    With ``shuffle`` the permutation is drawn on ``x.device`` (from ``generator`` if given), so
    batching never leaves the device; without it batches are contiguous slices (views).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batches: x has {x.shape[0]} samples but y has {y.shape[0]}")
    count = x.shape[0]
    stop = count - count % batch_size if drop_last else count
    if shuffle:
        order = torch.randperm(count, device=x.device, generator=generator)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
    else:
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
