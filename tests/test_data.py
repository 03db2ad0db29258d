"""Tests for gsa_search.data: every dataset through its real loading path, plus augmentation/batching.

CIFAR is tested with small files written in the real on-disk format: Python 2 protocol-2 pickles
(keys and strings are py2 ``str``, which load as ``str`` with ``encoding='latin1'`` as torchvision
reads them, and as ``bytes`` with ``encoding='bytes'`` as the CIFAR web page reads them).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gsa_search.data import (
    DatasetBundle,
    DatasetError,
    augment,
    batches,
    list_datasets,
    load_dataset,
)

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


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for i in range(1, 6):
        labels = {b"labels": rng.integers(0, 10, size=40).tolist()}
        written[f"data_batch_{i}"] = _cifar_batch(rng, 40, f"training batch {i} of 5", labels)
    written["test_batch"] = _cifar_batch(rng, 50, "testing batch 1 of 1", {b"labels": rng.integers(0, 10, size=50).tolist()})
    for name, batch in written.items():
        _write_py2_pickle(folder / name, batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": 40, b"label_names": names, b"num_vis": 3072})
    return tmp_path, written


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for name, count in (("train", 200), ("test", 60)):
        labels = {
            b"fine_labels": rng.integers(0, 100, size=count).tolist(),
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


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_lists_builtin_datasets() -> None:
    assert {"digits", "digits-pairs", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: .*cifar10.*digits.*synthetic"):
        load_dataset("mnist")


def test_unknown_option_names_allowed_ones() -> None:
    with pytest.raises(DatasetError, match=r"digits: unknown option\(s\) colour; allowed: val_fraction"):
        load_dataset("digits", colour=True)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", True])
def test_bad_image_size(bad: object) -> None:
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("synthetic", image_size=bad)


def test_bad_option_value() -> None:
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(DatasetError, match="canvas"):
        load_dataset("digits-pairs", canvas=16, digit_size=8)


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits", seed=0)


def test_digits_shapes_and_types(digits: DatasetBundle) -> None:
    assert digits.num_train + digits.num_val == 1797
    assert digits.train_x.shape[1:] == (1, 32, 32) and digits.val_x.shape[1:] == (1, 32, 32)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.image_size, digits.flip) == (10, 1, 32, False)
    assert abs(digits.num_val / 1797 - 0.2) < 0.01
    assert "load_digits" in digits.source and "digits.csv.gz" in digits.source


def test_digits_normalised_by_train_stats(digits: DatasetBundle) -> None:
    assert abs(float(digits.train_x.mean())) < 1e-4
    assert abs(float(digits.train_x.std()) - 1) < 1e-3
    raw = digits.unnormalize(digits.train_x)
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5


def test_digits_split_is_deterministic_and_seeded(digits: DatasetBundle) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.val_y, digits.val_y)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.info["val_indices"], digits.info["val_indices"])
    assert set(digits.info["train_indices"]).isdisjoint(digits.info["val_indices"])


def test_digits_split_is_stratified(digits: DatasetBundle) -> None:
    train_counts = torch.bincount(digits.train_y, minlength=10).float()
    val_counts = torch.bincount(digits.val_y, minlength=10).float()
    fraction = val_counts / (train_counts + val_counts)
    assert float(fraction.min()) > 0.17 and float(fraction.max()) < 0.23


def test_digits_resize_and_val_fraction() -> None:
    bundle = load_dataset("digits", image_size=16, val_fraction=0.5)
    assert bundle.train_x.shape[1:] == (1, 16, 16)
    assert abs(bundle.num_val - 1797 / 2) < 10


def test_digits_pixels_come_from_sklearn(digits: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    index = int(digits.info["train_indices"][0])
    raw = digits.unnormalize(digits.train_x[:1])
    shrunk = torch.nn.functional.interpolate(raw, size=(8, 8), mode="area")[0, 0]
    # Area-downsampling the bilinear 4x upsample recovers the 8x8 image up to edge blur.
    assert torch.corrcoef(torch.stack([shrunk.flatten(), torch.tensor(load_digits().images[index] / 16).float().flatten()]))[0, 1] > 0.9


# --------------------------------------------------------------------------------------------------
# digits-pairs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs() -> DatasetBundle:
    return load_dataset("digits-pairs", seed=0, num_samples=1000)


def test_pairs_shapes_and_balance(pairs: DatasetBundle) -> None:
    assert pairs.train_x.shape == (800, 1, 32, 32) and pairs.val_x.shape == (200, 1, 32, 32)
    assert pairs.num_classes == 2 and not pairs.flip
    assert abs(float(pairs.train_y.float().mean()) - 0.5) < 0.01
    assert abs(float(pairs.val_y.float().mean()) - 0.5) < 0.01


def test_pairs_digits_sit_in_opposite_corners(pairs: DatasetBundle) -> None:
    raw = pairs.unnormalize(pairs.train_x)[:, 0]  # (N, 32, 32)
    ink = raw.abs() > 1e-4
    corner = 8 + 2  # digit_size + jitter
    top_left = torch.zeros(32, 32, dtype=torch.bool)
    top_left[:corner, :corner] = True
    bottom_right = top_left.flip(0).flip(1)
    assert not ink[:, ~(top_left | bottom_right)].any(), "ink outside the two corner regions"
    assert ink[:, top_left].any(dim=1).all() and ink[:, bottom_right].any(dim=1).all()
    # The regions are far apart: 12 empty rows and columns between them.
    assert 32 - 2 * corner == 12


def test_pairs_labels_match_source_classes(pairs: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    pair_idx = pairs.info["train_pairs"]
    same = target[pair_idx[:, 0]] == target[pair_idx[:, 1]]
    assert np.array_equal(same.astype(np.int64), pairs.train_y.numpy())


def test_pairs_train_and_val_digits_are_disjoint(pairs: DatasetBundle) -> None:
    train_used = set(pairs.info["train_pairs"].ravel().tolist())
    val_used = set(pairs.info["val_pairs"].ravel().tolist())
    assert train_used.isdisjoint(val_used)
    assert train_used <= set(pairs.info["train_digits"].tolist())
    assert val_used <= set(pairs.info["val_digits"].tolist())


def test_pairs_deterministic_per_seed(pairs: DatasetBundle) -> None:
    again = load_dataset("digits-pairs", seed=0, num_samples=1000)
    assert torch.equal(again.train_x, pairs.train_x) and torch.equal(again.val_y, pairs.val_y)
    other = load_dataset("digits-pairs", seed=1, num_samples=1000)
    assert not torch.equal(other.train_x, pairs.train_x)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------------


def test_cifar10_loads_real_format_and_round_trips(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar10_dir
    bundle = load_dataset("cifar10", data_dir=root)
    assert bundle.train_x.shape == (200, 3, 32, 32) and bundle.val_x.shape == (50, 3, 32, 32)
    assert (bundle.num_classes, bundle.in_channels, bundle.flip) == (10, 3, True)
    assert bundle.classes[0] == "airplane"
    first = _as_chw(written["data_batch_1"][b"data"][0])
    assert torch.allclose(bundle.unnormalize(bundle.train_x[0]) * 255, first, atol=1e-3)
    last_val = _as_chw(written["test_batch"][b"data"][-1])
    assert torch.allclose(bundle.unnormalize(bundle.val_x[-1]) * 255, last_val, atol=1e-3)
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert bundle.train_y.tolist() == labels and bundle.train_y.dtype == torch.int64
    # per-channel normalisation with train statistics
    assert torch.allclose(bundle.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(bundle.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "not verified"):
        assert name in bundle.source


def test_cifar10_accepts_batches_folder_and_resizes(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    bundle = load_dataset("cifar10", data_dir=root / "cifar-10-batches-py", image_size=16)
    assert bundle.train_x.shape == (200, 3, 16, 16) and bundle.image_size == 16


def test_cifar100_loads_fine_labels(cifar100_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar100_dir
    bundle = load_dataset("cifar100", data_dir=str(root))
    assert bundle.train_x.shape == (200, 3, 32, 32) and bundle.val_x.shape == (60, 3, 32, 32)
    assert bundle.num_classes == 100 and bundle.classes[5] == "fine5"
    assert bundle.train_y.tolist() == written["train"][b"fine_labels"]
    first = _as_chw(written["train"][b"data"][0])
    assert torch.allclose(bundle.unnormalize(bundle.train_x[0]) * 255, first, atol=1e-3)


def test_cifar_verify_reports_checksum_mismatch(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, _ = cifar10_dir
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*data_batch_1.*expected c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", data_dir=root, verify=True)


def test_cifar_verify_passes_with_matching_checksums(
    cifar10_dir: tuple[Path, dict[str, dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With checksums that match, verify=True loads through torchvision's stock (MD5-checking) class."""
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
    first = _as_chw(written["data_batch_1"][b"data"][0])
    assert torch.allclose(bundle.unnormalize(bundle.train_x[0]) * 255, first, atol=1e-3)


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
    assert str(bad) in str(info.value)


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


def test_cifar_python3_bytes_keys_are_explained(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    root, written = cifar10_dir
    with open(root / "cifar-10-batches-py" / "data_batch_4", "wb") as f:
        pickle.dump(written["data_batch_4"], f)  # Python 3 pickle: keys stay bytes
    with pytest.raises(DatasetError, match=r"data_batch_4 .*Python 3 bytes"):
        load_dataset("cifar10", data_dir=root)


def test_cifar_unknown_option(cifar10_dir: tuple[Path, dict[str, dict]]) -> None:
    with pytest.raises(DatasetError, match="allowed: download"):
        load_dataset("cifar10", data_dir=cifar10_dir[0], val_fraction=0.1)


# --------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------


def _write_pngs(folder: Path, classes: dict[str, int], *, size: int = 12, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder_train_val_layout(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"cat": 6, "dog": 5, "emu": 4})
    _write_pngs(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)  # a class may be absent from val
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=16)
    assert bundle.train_x.shape == (15, 3, 16, 16) and bundle.val_x.shape == (4, 3, 16, 16)
    assert bundle.classes == ("cat", "dog", "emu") and bundle.num_classes == 3
    assert bundle.val_y.tolist() == [0, 0, 1, 1]
    assert bundle.flip and "ImageFolder" in bundle.source


def test_imagefolder_pixels_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    _write_pngs(tmp_path / "train", {"a": 3, "b": 3}, size=32)
    _write_pngs(tmp_path / "val", {"a": 1, "b": 1}, size=32, seed=2)
    bundle = load_dataset("imagefolder", data_dir=tmp_path)  # image_size 32: no resampling
    written = torch.from_numpy(np.array(Image.open(tmp_path / "train" / "a" / "0.png"))).permute(2, 0, 1).float()
    assert torch.allclose(bundle.unnormalize(bundle.train_x[0]) * 255, written, atol=1e-3)


def test_imagefolder_split_without_subfolders(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"x": 10, "y": 10})
    first = load_dataset("imagefolder", data_dir=tmp_path, seed=3, image_size=8)
    again = load_dataset("imagefolder", data_dir=tmp_path, seed=3, image_size=8)
    assert first.num_train == 16 and first.num_val == 4
    assert torch.bincount(first.val_y).tolist() == [2, 2]
    assert torch.equal(first.val_x, again.val_x)


def test_imagefolder_large_uses_loaders(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"a": 5, "b": 5})
    _write_pngs(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=8, max_resident=5)
    assert not bundle.is_resident and bundle.train_x is None
    assert (bundle.num_train, bundle.num_val) == (10, 4)
    assert bundle.to("cpu") is bundle
    xb, yb = next(iter(bundle.train_loader(4, shuffle=False)))
    assert xb.shape == (4, 3, 8, 8) and xb.dtype == torch.float32 and yb.tolist() == [0, 0, 0, 0]
    resident = load_dataset("imagefolder", data_dir=tmp_path, image_size=8)
    vx, vy = next(iter(bundle.val_loader(4)))
    # same images and labels as the resident path, up to the (sampled) normalisation statistics
    assert torch.allclose(bundle.unnormalize(vx), resident.unnormalize(resident.val_x), atol=1e-5)
    assert torch.equal(vy, resident.val_y)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no such directory .*nowhere"):
        load_dataset("imagefolder", data_dir=tmp_path / "nowhere")
    _write_pngs(tmp_path / "one" / "train", {"only": 3})
    with pytest.raises(DatasetError, match=r"one.train has 1 class folder.*at least 2"):
        load_dataset("imagefolder", data_dir=tmp_path / "one")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"could not read .*empty"):
        load_dataset("imagefolder", data_dir=tmp_path / "empty")


# --------------------------------------------------------------------------------------------------
# synthetic and the bundle
# --------------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism() -> None:
    bundle = load_dataset("synthetic", num_samples=50, num_classes=3, in_channels=2, image_size=8, seed=4)
    assert bundle.train_x.shape == (40, 2, 8, 8) and bundle.val_x.shape == (10, 2, 8, 8)
    assert int(bundle.train_y.max()) < 3 and bundle.train_y.dtype == torch.int64
    again = load_dataset("synthetic", num_samples=50, num_classes=3, in_channels=2, image_size=8, seed=4)
    assert torch.equal(again.train_x, bundle.train_x)
    assert not torch.equal(load_dataset("synthetic", num_samples=50, image_size=8, seed=5).train_x[:, :2], bundle.train_x)


def test_bundle_to_device_and_loaders() -> None:
    bundle = load_dataset("synthetic", num_samples=20, image_size=4)
    moved = bundle.to("cpu")
    assert moved.train_x.device.type == "cpu" and moved.train_x is bundle.train_x  # no copy
    xb, yb = next(iter(bundle.train_loader(8, shuffle=False)))
    assert torch.equal(xb, bundle.train_x[:8]) and torch.equal(yb, bundle.train_y[:8])
    assert sum(len(y) for _, y in bundle.val_loader(3)) == bundle.num_val
    assert "tensor" not in repr(bundle)  # repr stays short


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bundle_to_cuda() -> None:
    bundle = load_dataset("synthetic", num_samples=20, image_size=4).to("cuda")
    assert bundle.train_x.is_cuda and bundle.val_y.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    assert augment(bundle.train_x, generator=g).is_cuda


# --------------------------------------------------------------------------------------------------
# augment and batches
# --------------------------------------------------------------------------------------------------


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` (C, H, W) moved by (dy, dx) pixels with zero fill."""
    out = torch.zeros_like(img)
    height, width = img.shape[-2:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = img[
        :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_augment_shape_device_dtype() -> None:
    x = torch.randn(5, 3, 10, 12)
    out = augment(x, pad=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_augment_deterministic_with_generator() -> None:
    x = torch.randn(16, 3, 8, 8)
    first = augment(x, generator=torch.Generator().manual_seed(7))
    again = augment(x, generator=torch.Generator().manual_seed(7))
    other = augment(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_augment_noop() -> None:
    x = torch.randn(4, 2, 6, 6)
    assert torch.equal(augment(x, pad=0, flip=False), x)


def test_augment_flip_only() -> None:
    x = torch.randn(400, 1, 5, 5)
    out = augment(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(dim=1)
    flipped = (out == x.flip(-1)).flatten(1).all(dim=1)
    assert bool((same ^ flipped).all()), "each sample is either untouched or mirrored"
    assert 0.4 < float(flipped.float().mean()) < 0.6


def test_augment_translation_content() -> None:
    pad = 2
    x = torch.rand(64, 3, 7, 9) + 0.5  # no zeros in the images: zero fill is unambiguous
    out = augment(x, pad=pad, flip=False, generator=torch.Generator().manual_seed(1))
    seen = set()
    for img, result in zip(x, out):
        matches = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(result, _shift(img, dy, dx))
        ]
        assert len(matches) == 1, "output is the input shifted with zero fill"
        seen.add(matches[0])
    assert len(seen) > 10, "shifts vary per sample"


def test_augment_flip_and_translate() -> None:
    x = torch.rand(32, 1, 6, 6) + 0.5
    out = augment(x, pad=1, flip=True, generator=torch.Generator().manual_seed(2))
    for img, result in zip(x, out):
        candidates = [_shift(base, dy, dx) for base in (img, img.flip(-1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(result, c) for c in candidates)


def test_augment_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pad"):
        augment(torch.zeros(1, 1, 4, 4), pad=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(torch.zeros(1, 4, 4))


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_cover_every_index_once(drop_last: bool) -> None:
    x = torch.arange(103).float().view(103, 1, 1, 1)
    y = torch.arange(103)
    seen: list[int] = []
    sizes = []
    for xb, yb in batches(x, y, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=drop_last):
        assert torch.equal(xb.flatten().long(), yb)
        seen += yb.tolist()
        sizes.append(len(yb))
    if drop_last:
        assert sizes == [10] * 10 and len(set(seen)) == 100
    else:
        assert sorted(seen) == list(range(103)) and sizes[-1] == 3
    assert seen[:10] != list(range(10))  # shuffled


def test_batches_shuffle_is_seeded_and_unshuffled_is_ordered() -> None:
    x, y = torch.randn(20, 1, 2, 2), torch.arange(20)
    order = lambda seed: torch.cat([yb for _, yb in batches(x, y, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(seed))])  # noqa: E731
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    plain = torch.cat([yb for _, yb in batches(x, y, batch_size=6, shuffle=False)])
    assert torch.equal(plain, y)
