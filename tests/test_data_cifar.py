"""Tests for the ``cifar10`` / ``cifar100`` loaders, with small files in the real CIFAR on-disk format.

The files are Python 2 protocol-2 pickles (keys and strings are py2 ``str``, which load as ``str``
with ``encoding='latin1'`` as torchvision reads them, and as ``bytes`` with ``encoding='bytes'`` as
the CIFAR web page reads them).
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gsa_search.data import DatasetBundle, DatasetError, load_dataset

# --------------------------------------------------------------------------------------------------
# Writing the real CIFAR format
# --------------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING),
    as the official CIFAR files (pickled by Python 2) do."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _write_py2_pickle(path: Path, obj: object) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_batch(rng: np.random.Generator, count: int, label: str, labels: dict[bytes, list[int]]) -> dict:
    return {
        b"batch_label": label.encode(),
        **labels,
        b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        b"filenames": [f"img_{label.replace(' ', '_')}_{i}.png".encode() for i in range(count)],
    }


def _write_cifar10(root: Path, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i in range(1, 6):
        labels = {b"labels": rng.integers(0, 10, size=40).tolist()}
        written[f"data_batch_{i}"] = _cifar_batch(rng, 40, f"training batch {i} of 5", labels)
    written["test_batch"] = _cifar_batch(rng, 50, "testing batch 1 of 1", {b"labels": rng.integers(0, 10, size=50).tolist()})
    for name, batch in written.items():
        _write_py2_pickle(folder / name, batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": 40, b"label_names": names, b"num_vis": 3072})
    return written


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    return tmp_path, _write_cifar10(tmp_path)


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    # 5 training images per fine class (a stratified 10% split needs a validation image per class).
    fine = {"train": rng.permutation(np.repeat(np.arange(100), 5)), "test": rng.integers(0, 100, size=60)}
    for name, count in (("train", 500), ("test", 60)):
        labels = {
            b"fine_labels": fine[name].tolist(),
            b"coarse_labels": rng.integers(0, 20, size=count).tolist(),
        }
        written[name] = _cifar_batch(rng, count, name, labels)
        _write_py2_pickle(folder / name, written[name])
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _write_py2_pickle(folder / "meta", meta)
    return tmp_path, written


def _as_chw(row: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32))


def _pixels(bundle: DatasetBundle, x: torch.Tensor) -> torch.Tensor:
    """Normalised images back on the 0..255 scale of the files."""
    return bundle.unnormalize(x) * 255


def _train_rows(written: dict[str, dict]) -> tuple[np.ndarray, list[int]]:
    rows = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    return rows, labels


# --------------------------------------------------------------------------------------------------
# Loading, and the three splits
# --------------------------------------------------------------------------------------------------


def test_cifar10_loads_real_format_and_round_trips(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar10_dir
    bundle = load_dataset("cifar10", data_dir=root)
    # validation is held out of the 200 training images; the 50-image test batch is the test split
    assert bundle.num_train + bundle.num_val == 200 and bundle.test_x.shape == (50, 3, 32, 32)
    assert bundle.train_x.shape[1:] == (3, 32, 32) and bundle.val_x.shape[1:] == (3, 32, 32)
    assert (bundle.num_classes, bundle.in_channels, bundle.flip) == (10, 3, True)
    assert bundle.classes[0] == "airplane"
    rows, labels = _train_rows(written)
    first = _as_chw(rows[bundle.info["train_indices"][0]])
    assert torch.allclose(_pixels(bundle, bundle.train_x[0]), first, atol=1e-3)
    last_test = _as_chw(written["test_batch"][b"data"][-1])
    assert torch.allclose(_pixels(bundle, bundle.test_x[-1]), last_test, atol=1e-3)
    assert bundle.test_y.tolist() == written["test_batch"][b"labels"] and bundle.test_y.dtype == torch.int64
    assert bundle.train_y.tolist() == [labels[i] for i in bundle.info["train_indices"]]
    assert bundle.train_y.dtype == torch.int64
    # per-channel normalisation with train statistics
    assert torch.allclose(bundle.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(bundle.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "not verified"):
        assert name in bundle.source


def test_cifar10_validation_is_held_out_of_training_batches(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    """The official test batch never becomes the validation split a search ranks trials on."""
    root, written = cifar10_dir
    bundle = load_dataset("cifar10", data_dir=root, seed=0)
    rows, labels = _train_rows(written)
    train_idx, val_idx = bundle.info["train_indices"], bundle.info["val_indices"]
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(200))  # a partition
    assert np.allclose(_pixels(bundle, bundle.val_x).round().flatten(1).numpy(), rows[val_idx].astype(np.float32))
    assert bundle.val_y.tolist() == [labels[i] for i in val_idx]
    test_rows = written["test_batch"][b"data"].astype(np.float32)
    val_rows = _pixels(bundle, bundle.val_x).round().flatten(1).numpy()
    assert not any((test_rows == row).all(axis=1).any() for row in val_rows), "no test image in validation"
    # stratified: 10% of every class, rounded half up
    counts = Counter(labels)
    assert Counter(bundle.val_y.tolist()) == {c: math.floor(n * 0.1 + 0.5) for c, n in counts.items()}
    # the source line names each split and where it comes from
    assert "validation = " in bundle.source and "held out of the same training batches" in bundle.source
    assert "test = test_batch (50 images, the official test set)" in bundle.source


def test_cifar10_split_is_seeded_and_val_fraction_is_an_option(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    first = load_dataset("cifar10", data_dir=root, seed=0)
    again = load_dataset("cifar10", data_dir=root, seed=0)
    other = load_dataset("cifar10", data_dir=root, seed=1)
    assert np.array_equal(first.info["val_indices"], again.info["val_indices"])
    assert not np.array_equal(first.info["val_indices"], other.info["val_indices"])
    # the test images do not depend on the seed (their normalisation, from the training split, does)
    assert torch.allclose(_pixels(first, first.test_x), _pixels(other, other.test_x), atol=1e-3)
    assert torch.equal(first.test_y, other.test_y)
    wide = load_dataset("cifar10", data_dir=root, val_fraction=0.3)
    assert abs(wide.num_val - 60) <= 5 and wide.num_test == 50
    with pytest.raises(DatasetError, match=r"cifar10: option val_fraction must be a number in \(0, 1\)"):
        load_dataset("cifar10", data_dir=root, val_fraction=1.0)


def test_cifar10_accepts_batches_folder_and_resizes(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    bundle = load_dataset("cifar10", data_dir=root / "cifar-10-batches-py", image_size=16)
    assert bundle.train_x.shape[1:] == (3, 16, 16) and bundle.image_size == 16
    assert bundle.test_x.shape == (50, 3, 16, 16) and "resized to 16x16" in bundle.source


def test_cifar100_loads_fine_labels(cifar100_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar100_dir
    bundle = load_dataset("cifar100", data_dir=str(root))
    assert (bundle.num_train, bundle.num_val) == (400, 100) and bundle.test_x.shape == (60, 3, 32, 32)
    assert bundle.num_classes == 100 and bundle.classes[5] == "fine5"
    fine = written["train"][b"fine_labels"]
    assert bundle.train_y.tolist() == [fine[i] for i in bundle.info["train_indices"]]
    assert sorted(bundle.val_y.tolist()) == list(range(100))  # one validation image per class
    assert bundle.test_y.tolist() == written["test"][b"fine_labels"]
    first = _as_chw(written["train"][b"data"][bundle.info["train_indices"][0]])
    assert torch.allclose(_pixels(bundle, bundle.train_x[0]), first, atol=1e-3)
    assert "train = 400 images of train" in bundle.source and "test = test (60 images" in bundle.source


def test_cifar_reads_each_pickle_once(cifar10_dir: tuple[Path, dict[str, dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = cifar10_dir
    reads: Counter[str] = Counter()
    real_load = pickle.load

    def counting_load(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads[Path(getattr(file, "name", "?")).name] += 1
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(pickle, "load", counting_load)
    load_dataset("cifar10", data_dir=root)
    expected = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    assert dict(reads) == {name: 1 for name in expected}
    # a corrupt file is diagnosed from that one read, not by unpickling everything again
    reads.clear()
    _write_py2_pickle(root / "cifar-10-batches-py" / "data_batch_2", {b"pixels": 1, b"labels": [0]})
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=root)
    assert max(reads.values()) == 1


def test_cifar_download_fetches_missing_files_then_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=True goes through torchvision's public download_and_extract_archive (stubbed: no network)."""
    from torchvision.datasets import utils as tv_utils

    calls = []

    def fake_download(url: str, download_root: str, **kwargs: object) -> None:
        calls.append((url, kwargs.get("filename"), kwargs.get("md5")))
        _write_cifar10(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    bundle = load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert bundle.num_test == 50 and calls[0][1] == "cifar-10-python.tar.gz" and calls[0][2]
    load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert len(calls) == 1, "files already there: no second download"

    def failing_download(url: str, download_root: str, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing_download)
    with pytest.raises(DatasetError, match=r"cifar100: could not get CIFAR-100 into .*network unreachable.*the download failed"):
        load_dataset("cifar100", data_dir=tmp_path, download=True)


# --------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------


def test_cifar_verify_reports_checksum_mismatch(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*data_batch_1.*expected c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", data_dir=root, verify=True)


def test_cifar_verify_passes_with_matching_checksums(
    cifar10_dir: tuple[Path, dict[str, dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With checksums that match torchvision's official list (patched here), verify=True loads."""
    import hashlib

    import torchvision.datasets as tvd

    root, written = cifar10_dir
    folder = root / "cifar-10-batches-py"
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5["batches.meta"]})
    bundle = load_dataset("cifar10", data_dir=root, verify=True)
    assert "checksums verified" in bundle.source
    rows, _ = _train_rows(written)
    first = _as_chw(rows[bundle.info["train_indices"][0]])
    assert torch.allclose(_pixels(bundle, bundle.train_x[0]), first, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Missing and malformed data: one-line DatasetErrors naming the file
# --------------------------------------------------------------------------------------------------


def test_cifar_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", data_dir=missing)
    message = str(info.value)
    assert str(missing) in message and "no such directory" in message
    assert "torchvision.datasets.CIFAR10(root, download=True)" in message and "download=True" in message
    assert "\n" not in message


def test_cifar_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar100", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "missing train, test, meta" in message
    assert "torchvision.datasets.CIFAR100(root, download=True)" in message


def test_cifar_missing_data_requires_data_dir() -> None:
    with pytest.raises(DatasetError, match="data_dir is required.*download=True"):
        load_dataset("cifar10")


def test_cifar_corrupted_batch_file(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_3 is not a valid CIFAR file: could not unpickle") as info:
        load_dataset("cifar10", data_dir=root)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_cifar_batch_with_wrong_keys_or_shape(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    folder = root / "cifar-10-batches-py"
    _write_py2_pickle(folder / "data_batch_2", {b"pixels": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4})
    with pytest.raises(DatasetError, match=r"data_batch_2 is not a valid CIFAR file: missing key 'data'"):
        load_dataset("cifar10", data_dir=root)
    # 1024 rows of 3000 bytes would silently reshape into 1000 images: must be caught.
    _write_py2_pickle(folder / "data_batch_2", {b"data": np.zeros((1024, 3000), np.uint8), b"labels": [0] * 1024})
    with pytest.raises(DatasetError, match=r"data_batch_2 .*shape \(1024, 3000\).*expected \(N, 3072\) uint8"):
        load_dataset("cifar10", data_dir=root)


def test_cifar_batch_with_bad_labels(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    folder = root / "cifar-10-batches-py"
    data = np.zeros((4, 3072), np.uint8)
    _write_py2_pickle(folder / "test_batch", {b"data": data, b"labels": [0, 1, 12, 3]})
    with pytest.raises(DatasetError, match=r"test_batch is not a valid CIFAR file: labels run from 0 to 12, expected \[0, 10\)"):
        load_dataset("cifar10", data_dir=root)
    _write_py2_pickle(folder / "test_batch", {b"data": data, b"labels": [0, 1, 2]})
    with pytest.raises(DatasetError, match=r"test_batch is not a valid CIFAR file: 3 labels for 4 images"):
        load_dataset("cifar10", data_dir=root)
    _write_py2_pickle(folder / "test_batch", {b"data": data, b"fine_labels": [0, 1, 2, 3]})
    with pytest.raises(DatasetError, match=r"test_batch is not a valid CIFAR file: missing key 'labels'"):
        load_dataset("cifar10", data_dir=root)


def test_cifar_bad_meta_file(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    _write_py2_pickle(root / "cifar-10-batches-py" / "batches.meta", {b"names": [b"a", b"b"]})
    with pytest.raises(DatasetError, match=r"batches.meta is not a valid CIFAR file: missing key 'label_names'"):
        load_dataset("cifar10", data_dir=root)


def test_cifar_python3_bytes_keys_are_explained(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar10_dir
    with open(root / "cifar-10-batches-py" / "data_batch_4", "wb") as f:
        pickle.dump(written["data_batch_4"], f)  # Python 3 pickle: keys stay bytes
    with pytest.raises(DatasetError, match=r"data_batch_4 .*Python 3 bytes"):
        load_dataset("cifar10", data_dir=root)


def test_cifar_unknown_option(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    with pytest.raises(DatasetError, match=r"allowed: download, val_fraction"):
        load_dataset("cifar10", data_dir=cifar10_dir[0], test_fraction=0.1)
