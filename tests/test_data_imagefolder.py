"""Tests for the ``imagefolder`` loader: train/val/test folders, hidden folders, streaming, pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gsa_search.data import DatasetBundle, DatasetError, load_dataset


def _write_pngs(folder: Path, classes: dict[str, int], *, size: int = 12, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def _png(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float()


def test_imagefolder_train_val_layout(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"cat": 6, "dog": 5, "emu": 4})
    _write_pngs(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)  # a class may be absent from val
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=16)
    assert bundle.train_x.shape == (15, 3, 16, 16) and bundle.val_x.shape == (4, 3, 16, 16)
    assert bundle.classes == ("cat", "dog", "emu") and bundle.num_classes == 3
    assert bundle.val_y.tolist() == [0, 0, 1, 1]
    assert bundle.flip and "ImageFolder" in bundle.source
    assert not bundle.has_test and "no test split" in bundle.source


def test_imagefolder_pixels_round_trip(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"a": 3, "b": 3}, size=32)
    _write_pngs(tmp_path / "val", {"a": 1, "b": 1}, size=32, seed=2)
    bundle = load_dataset("imagefolder", data_dir=tmp_path)  # image_size 32: no resampling
    written = _png(tmp_path / "train" / "a" / "0.png")
    assert torch.allclose(bundle.unnormalize(bundle.train_x[0]) * 255, written, atol=1e-3)


def test_imagefolder_split_without_subfolders(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"x": 10, "y": 10})
    first = load_dataset("imagefolder", data_dir=tmp_path, seed=3, image_size=8)
    again = load_dataset("imagefolder", data_dir=tmp_path, seed=3, image_size=8)
    assert first.num_train == 16 and first.num_val == 4
    assert torch.bincount(first.val_y).tolist() == [2, 2]
    assert torch.equal(first.val_x, again.val_x)
    assert "held out of" in first.source and "seed=3" in first.source


def test_imagefolder_test_folder_is_the_test_split(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"cat": 4, "dog": 4, "emu": 4})
    _write_pngs(tmp_path / "val", {"cat": 1, "emu": 1}, seed=1)
    _write_pngs(tmp_path / "test", {"dog": 2, "emu": 1}, seed=2)  # same class list as train/
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=12)
    assert bundle.has_test and bundle.num_test == 3 and bundle.test_x.shape == (3, 3, 12, 12)
    assert bundle.test_y.tolist() == [1, 1, 2]
    assert torch.allclose(bundle.unnormalize(bundle.test_x[2]) * 255, _png(tmp_path / "test" / "emu" / "0.png"), atol=1e-3)
    assert f"test = {tmp_path / 'test'} (3 images)" in bundle.source
    assert f"validation = {tmp_path / 'val'} (2 images)" in bundle.source
    # without val/, validation is split off train/ and test/ stays the test split
    (tmp_path / "val" / "cat" / "0.png").unlink()
    (tmp_path / "val" / "emu" / "0.png").unlink()
    for folder in (tmp_path / "val" / "cat", tmp_path / "val" / "emu", tmp_path / "val"):
        folder.rmdir()
    split = load_dataset("imagefolder", data_dir=tmp_path, image_size=12, val_fraction=0.25)
    assert (split.num_train, split.num_val, split.num_test) == (9, 3, 3)


def test_imagefolder_test_folder_errors(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "only_test" / "test", {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match=r"has test/ but no train/"):
        load_dataset("imagefolder", data_dir=tmp_path / "only_test")
    _write_pngs(tmp_path / "extra" / "train", {"a": 2, "b": 2})
    _write_pngs(tmp_path / "extra" / "test", {"a": 1, "zebra": 1})
    with pytest.raises(DatasetError, match=r"extra.test has class folders not in .*train: zebra"):
        load_dataset("imagefolder", data_dir=tmp_path / "extra")
    _write_pngs(tmp_path / "empty_test" / "train", {"a": 2, "b": 2})
    (tmp_path / "empty_test" / "test" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty_test.test has no images"):
        load_dataset("imagefolder", data_dir=tmp_path / "empty_test")


@pytest.mark.parametrize("hidden_has_images", [True, False])
def test_imagefolder_ignores_hidden_folders_everywhere(tmp_path: Path, hidden_has_images: bool) -> None:
    """``.cache/``, ``.ipynb_checkpoints/``: never classes, never images; one class list for all splits."""
    _write_pngs(tmp_path / "train", {"a": 3, "b": 3})
    _write_pngs(tmp_path / "val", {"a": 1, "b": 1}, seed=1)
    _write_pngs(tmp_path / "test", {"a": 1, "b": 1}, seed=2)
    for folder in ("train/.cache", "train/.ipynb_checkpoints", "val/.ipynb_checkpoints", "test/.cache",
                   "train/a/.ipynb_checkpoints"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        if hidden_has_images:
            _write_pngs(tmp_path / folder, {"z": 2}, seed=9)  # even images inside are ignored
            _write_pngs(tmp_path / folder.rsplit("/", 1)[0], {".hidden": 1}, seed=9)
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=8)
    assert bundle.classes == ("a", "b") and bundle.num_classes == 2
    assert (bundle.num_train, bundle.num_val, bundle.num_test) == (6, 2, 2)
    for y in (bundle.train_y, bundle.val_y, bundle.test_y):
        assert int(y.max()) < 2
    assert bundle.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    streamed = load_dataset("imagefolder", data_dir=tmp_path, image_size=8, max_resident=1)
    assert streamed.classes == ("a", "b") and (streamed.num_train, streamed.num_val, streamed.num_test) == (6, 2, 2)
    assert [int(y) for _, y in streamed.train_dataset] == [0, 0, 0, 1, 1, 1]


def _streamed(tmp_path: Path) -> DatasetBundle:
    _write_pngs(tmp_path / "train", {"a": 5, "b": 5})
    _write_pngs(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    _write_pngs(tmp_path / "test", {"a": 1, "b": 2}, seed=2)
    return load_dataset("imagefolder", data_dir=tmp_path, image_size=8, max_resident=5)


def test_imagefolder_large_uses_loaders(tmp_path: Path) -> None:
    bundle = _streamed(tmp_path)
    assert not bundle.is_resident and bundle.train_x is None
    assert (bundle.num_train, bundle.num_val, bundle.num_test) == (10, 4, 3) and bundle.has_test
    assert bundle.to("cpu") is bundle
    assert "streamed from disk" in bundle.source
    xb, yb = next(iter(bundle.train_loader(4, shuffle=False)))
    assert xb.shape == (4, 3, 8, 8) and xb.dtype == torch.float32 and yb.tolist() == [0, 0, 0, 0]
    resident = load_dataset("imagefolder", data_dir=tmp_path, image_size=8)
    vx, vy = next(iter(bundle.val_loader(4)))
    # same images and labels as the resident path, up to the (sampled) normalisation statistics
    assert torch.allclose(bundle.unnormalize(vx), resident.unnormalize(resident.val_x), atol=1e-5)
    assert torch.equal(vy, resident.val_y)
    tx, ty = next(iter(bundle.test_loader(8)))
    assert torch.allclose(bundle.unnormalize(tx), resident.unnormalize(resident.test_x), atol=1e-5)
    assert ty.tolist() == [0, 1, 1] == resident.test_y.tolist()


def test_imagefolder_streamed_datasets_pickle(tmp_path: Path) -> None:
    """DataLoader workers started with spawn/forkserver receive the dataset by pickling."""
    bundle = _streamed(tmp_path)
    for dataset in (bundle.train_dataset, bundle.val_dataset, bundle.test_dataset):
        clone = pickle.loads(pickle.dumps(dataset))
        assert len(clone) == len(dataset)
        x, y = clone[len(clone) - 1]
        x0, y0 = dataset[len(dataset) - 1]
        assert torch.equal(x, x0) and y == y0


def test_imagefolder_streamed_loader_with_spawned_worker(tmp_path: Path) -> None:
    bundle = _streamed(tmp_path)
    loader = bundle.train_loader(4, shuffle=False, num_workers=1)
    loader.multiprocessing_context = "spawn"
    xb, yb = next(iter(loader))
    ref_x, ref_y = next(iter(bundle.train_loader(4, shuffle=False)))
    assert torch.equal(xb, ref_x) and torch.equal(yb, ref_y)


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
    _write_pngs(tmp_path / "tiny", {"a": 1, "b": 4})
    with pytest.raises(DatasetError, match=r"imagefolder: class 0 has 1 example\(s\); every class needs at least 2"):
        load_dataset("imagefolder", data_dir=tmp_path / "tiny")
    with pytest.raises(DatasetError, match=r"imagefolder: option flip must be True or False"):
        load_dataset("imagefolder", data_dir=tmp_path / "tiny", flip="no")
