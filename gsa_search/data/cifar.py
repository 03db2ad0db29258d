"""The ``cifar10`` / ``cifar100`` datasets: the real CIFAR python-pickle files, read once.

Status: stable. Reads ``data_dir/cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``) or ``data_dir/cifar-100-python`` (``train``, ``test``, ``meta``; fine labels).
File names, the download URL and the official MD5s come from torchvision's public class attributes
(``torchvision.datasets.CIFAR10.train_list`` ...); each pickle is read exactly once here, checked
(keys, ``(N, 3072) uint8`` data, label count and range) and any problem becomes a one-line
:class:`DatasetError` naming the file. Checksums are compared only with ``verify=True``, so
re-packed subsets load too; ``download=True`` fetches the official archive through
``torchvision.datasets.utils.download_and_extract_archive`` when files are missing.

Splits: the validation split is held out of the *training* batches (stratified per class,
``val_fraction`` default 0.1, ``seed``); the official test batch is the separate *test* split, so a
search never ranks trials on test data. ``info['train_indices']`` / ``info['val_indices']`` index
the concatenated official training batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import finish_bundle, one_line, resize, stratified_split
from .bundle import DatasetBundle, DatasetError
from .registry import check_bool, check_fraction, register_dataset


@dataclasses.dataclass(frozen=True)
class _Spec:
    title: str
    torchvision_class: str
    label_key: str


_SPECS = {
    "cifar10": _Spec(title="CIFAR-10", torchvision_class="CIFAR10", label_key="labels"),
    "cifar100": _Spec(title="CIFAR-100", torchvision_class="CIFAR100", label_key="fine_labels"),
}


@register_dataset("cifar10")
def load_cifar10(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    download: bool = False,
    val_fraction: float = 0.1,
) -> DatasetBundle:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py``: train and validation from data_batch_1..5,
    test = test_batch."""
    return _load_cifar(
        "cifar10", data_dir=data_dir, image_size=image_size, seed=seed, verify=verify,
        download=download, val_fraction=val_fraction,
    )


@register_dataset("cifar100")
def load_cifar100(
    *,
    data_dir: Path | None,
    image_size: int | None,
    seed: int,
    verify: bool,
    download: bool = False,
    val_fraction: float = 0.1,
) -> DatasetBundle:
    """CIFAR-100 (fine labels) from ``data_dir/cifar-100-python``: train and validation from
    ``train``, test = ``test``, classes from ``meta``."""
    return _load_cifar(
        "cifar100", data_dir=data_dir, image_size=image_size, seed=seed, verify=verify,
        download=download, val_fraction=val_fraction,
    )


def _load_cifar(
    name: str, *, data_dir: Path | None, image_size: int | None, seed: int, verify: bool, download: Any,
    val_fraction: Any,
) -> DatasetBundle:
    import torchvision.datasets as tvd

    download = check_bool(name, "download", download)
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    spec = _SPECS[name]
    stock = getattr(tvd, spec.torchvision_class)  # public class attributes: file names, md5s, url
    base = stock.base_folder
    train_files = [str(f) for f, _ in stock.train_list]
    test_files = [str(f) for f, _ in stock.test_list]
    meta_file = str(stock.meta["filename"])
    official_md5 = {str(f): str(m) for f, m in stock.train_list + stock.test_list} | {meta_file: stock.meta["md5"]}
    hint = (
        f"download it with torchvision.datasets.{spec.torchvision_class}(root, download=True) or pass download=True"
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
    every_file = train_files + test_files + [meta_file]

    def missing() -> list[str]:
        return [f for f in every_file if not (folder / f).is_file()]

    if download and missing():
        from torchvision.datasets import utils as tv_utils

        try:
            tv_utils.download_and_extract_archive(stock.url, str(root), filename=stock.filename, md5=stock.tgz_md5)
        except Exception as error:  # noqa: BLE001 - turned into a DatasetError naming the folder
            raise DatasetError(
                f"{name}: could not get {spec.title} into {folder} ({one_line(error)}); {hint}"
            ) from error
    if missing():
        raise DatasetError(
            f"{name}: {folder} is not in the {spec.title} python format: missing {', '.join(missing())} "
            f"(expected {', '.join(every_file)}); {hint}"
        )
    if verify:
        for filename in every_file:
            path = folder / filename
            actual = _md5(path)
            if actual != official_md5[filename]:
                raise DatasetError(
                    f"{name}: checksum mismatch for {path}: md5 {actual}, expected {official_md5[filename]} "
                    f"(the official {spec.title} file); re-packed or partial copies never match, load them "
                    "with verify=False"
                )

    classes = _read_meta(name, folder / meta_file, key=str(stock.meta["key"]))
    num_classes = len(classes)
    train_parts = [_read_batch(name, folder / f, spec.label_key, num_classes) for f in train_files]
    test_parts = [_read_batch(name, folder / f, spec.label_key, num_classes) for f in test_files]
    train_u8 = torch.cat([torch.from_numpy(x) for x, _ in train_parts])  # (N, 3, 32, 32) uint8
    train_labels = np.concatenate([y for _, y in train_parts])
    test_u8 = torch.cat([torch.from_numpy(x) for x, _ in test_parts])
    test_labels = np.concatenate([y for _, y in test_parts])

    train_idx, val_idx = stratified_split(train_labels, val_fraction, seed, dataset=name)
    size = 32 if image_size is None else image_size

    def pixels(u8: torch.Tensor) -> torch.Tensor:
        return resize(u8.float().div_(255), size)

    return finish_bundle(
        name,
        train=(pixels(train_u8[train_idx]), train_labels[train_idx]),
        val=(pixels(train_u8[val_idx]), train_labels[val_idx]),
        test=(pixels(test_u8), test_labels),
        num_classes=num_classes,
        flip=True,
        source=(
            f"{spec.title} python pickles in {folder}: train = {len(train_idx)} images of {', '.join(train_files)}; "
            f"validation = {len(val_idx)} images held out of the same training batches (stratified, "
            f"seed={seed} val_fraction={val_fraction}); test = {', '.join(test_files)} ({len(test_labels)} "
            f"images, the official test set); classes from {meta_file}; checksums "
            f"{'verified' if verify else 'not verified'}"
            + (f"; resized to {size}x{size}" if size != 32 else "")
        ),
        classes=classes,
        info={"train_indices": train_idx, "val_indices": val_idx},
    )


# --------------------------------------------------------------------------------------------------
# Reading and checking one file
# --------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _invalid(name: str, path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{name}: {path} is not a valid CIFAR file: {problem}")


def _read_dict(name: str, path: Path) -> dict:
    """The unpickled dict of a CIFAR file (Python 2 pickles: ``encoding='latin1'``, as torchvision)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as error:  # noqa: BLE001 - any failure to unpickle is the diagnosis
        raise _invalid(name, path, f"could not unpickle it ({one_line(error)})") from error
    if not isinstance(entry, dict):
        raise _invalid(name, path, f"expected a pickled dict, found {type(entry).__name__}")
    if any(isinstance(k, bytes) for k in entry) and not any(isinstance(k, str) for k in entry):
        keys = ", ".join(repr(k) for k in list(entry)[:6])
        raise _invalid(
            name, path,
            f"its keys are Python 3 bytes ({keys}); the official files are Python 2 pickles whose keys "
            "load as str with encoding='latin1'",
        )
    return entry


def _missing_key(entry: dict, key: str) -> str:
    return f"missing key {key!r} (found {', '.join(repr(k) for k in list(entry)[:6])})"


def _read_meta(name: str, path: Path, *, key: str) -> tuple[str, ...]:
    entry = _read_dict(name, path)
    if key not in entry:
        raise _invalid(name, path, _missing_key(entry, key))
    names = entry[key]
    if not isinstance(names, (list, tuple)) or len(names) < 2:
        raise _invalid(name, path, f"{key!r} must list at least 2 class names, got {names!r:.80}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _read_batch(name: str, path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one batch file."""
    entry = _read_dict(name, path)
    for key in ("data", label_key):
        if key not in entry:
            raise _invalid(name, path, _missing_key(entry, key))
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise _invalid(name, path, f"'data' has shape {shape} and dtype {dtype}, expected (N, 3072) uint8")
    try:
        labels = np.asarray(entry[label_key])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"shape {labels.shape} dtype {labels.dtype}")
    except Exception as error:  # noqa: BLE001 - a malformed label list
        raise _invalid(name, path, f"{label_key!r} is not a list of integers ({one_line(error)})") from error
    if len(labels) != len(data):
        raise _invalid(name, path, f"{len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _invalid(
            name, path,
            f"labels run from {labels.min()} to {labels.max()}, expected [0, {num_classes}) for the classes "
            "in the meta file",
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
