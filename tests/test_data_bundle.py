"""Tests for DatasetBundle (splits, test split, loaders, devices, ``black``, validation) and finish_bundle."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from gsa_search.data import DatasetBundle, DatasetError, load_dataset
from gsa_search.data._common import finish_bundle


def _bundle(**changes: Any) -> DatasetBundle:
    """A small valid resident bundle with a test split, with ``changes`` applied to its fields."""
    g = torch.Generator().manual_seed(0)
    fields: dict[str, Any] = dict(
        name="tiny",
        train_x=torch.randn(6, 2, 4, 4, generator=g),
        train_y=torch.tensor([0, 1, 2, 0, 1, 2]),
        val_x=torch.randn(3, 2, 4, 4, generator=g),
        val_y=torch.tensor([0, 1, 2]),
        test_x=torch.randn(2, 2, 4, 4, generator=g),
        test_y=torch.tensor([2, 1]),
        num_classes=3,
        in_channels=2,
        image_size=4,
        flip=False,
        source="tiny: made up in a test",
        mean=(0.5, 0.25),
        std=(0.25, 0.5),
    )
    fields.update(changes)
    return DatasetBundle(**fields)


# --------------------------------------------------------------------------------------------------
# Splits, loaders, devices
# --------------------------------------------------------------------------------------------------


def test_bundle_to_device_and_loaders() -> None:
    bundle = load_dataset("synthetic", num_samples=20, image_size=4)
    moved = bundle.to("cpu")
    assert moved.train_x.device.type == "cpu" and moved.train_x is bundle.train_x  # no copy
    xb, yb = next(iter(bundle.train_loader(8, shuffle=False)))
    assert torch.equal(xb, bundle.train_x[:8]) and torch.equal(yb, bundle.train_y[:8])
    assert sum(len(y) for _, y in bundle.val_loader(3)) == bundle.num_val
    assert "tensor" not in repr(bundle)  # repr stays short


def test_bundle_test_split_fields_and_loader() -> None:
    bundle = _bundle()
    assert bundle.has_test and bundle.num_test == 2
    batches = list(bundle.test_loader(1))
    assert [int(y) for _, y in batches] == [2, 1]
    assert torch.equal(torch.cat([x for x, _ in batches]), bundle.test_x)
    assert "tensor" not in repr(bundle)


def test_bundle_without_test_split() -> None:
    bundle = _bundle(test_x=None, test_y=None)
    assert not bundle.has_test and bundle.num_test == 0
    with pytest.raises(DatasetError, match=r"tiny: has no test split"):
        bundle.test_loader(4)


def test_bundle_to_moves_the_test_split() -> None:
    moved = _bundle().to("meta")  # shapes only: no accelerator needed to see that everything moves
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert getattr(moved, name).device.type == "meta", name
    assert moved.num_test == 2
    without = _bundle(test_x=None, test_y=None).to("meta")
    assert without.test_x is None and not without.has_test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bundle_to_cuda() -> None:
    from gsa_search.data import augment

    bundle = load_dataset("synthetic", num_samples=20, image_size=4).to("cuda")
    assert bundle.train_x.is_cuda and bundle.val_y.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    assert augment(bundle.train_x, generator=g).is_cuda
    with_test = _bundle().to("cuda")
    assert with_test.test_x.is_cuda and with_test.test_y.is_cuda
    assert augment(with_test.test_x, fill=with_test.black, generator=g).is_cuda


def test_black_is_the_normalised_black_pixel() -> None:
    bundle = _bundle()
    assert bundle.black == pytest.approx((-2.0, -0.5))  # (0 - 0.5) / 0.25, (0 - 0.25) / 0.5
    black = torch.tensor(bundle.black).view(2, 1, 1)
    assert torch.allclose(bundle.unnormalize(black), torch.zeros(2, 1, 1))
    assert load_dataset("synthetic", num_samples=10, in_channels=3, image_size=4).black == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# Validation on construction: one-line DatasetErrors naming the dataset and the problem
# --------------------------------------------------------------------------------------------------

_EMPTY_X = torch.zeros(0, 2, 4, 4)
_EMPTY_Y = torch.zeros(0, dtype=torch.int64)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (dict(train_x=_EMPTY_X, train_y=_EMPTY_Y), r"the training split is empty"),
        (dict(val_x=_EMPTY_X, val_y=_EMPTY_Y), r"the validation split is empty"),
        (dict(test_x=_EMPTY_X, test_y=_EMPTY_Y), r"the test split is empty"),
        (dict(train_y=torch.tensor([0, 1, 2])), r"train_x has 6 images but train_y has 3 labels"),
        (dict(test_y=None), r"test_x and test_y must both be tensors"),
        (dict(mean=(float("nan"), 0.0)), r"mean must be finite"),
        (dict(std=(0.25, float("inf"))), r"std must be finite"),
        (dict(std=(0.25, 0.0)), r"std must be > 0"),
        (dict(std=(0.25,)), r"std has 1 value\(s\) for 2 channel\(s\)"),
        (dict(val_y=torch.tensor([0, 1, 3])), r"val_y has labels in \[0, 3\], expected \[0, 3\)"),
        (dict(train_y=torch.tensor([0, 1, -1, 0, 1, 2])), r"train_y has labels in \[-1, 2\]"),
        (dict(num_classes=1, train_y=torch.zeros(6, dtype=torch.int64), val_y=torch.zeros(3, dtype=torch.int64),
              test_y=torch.zeros(2, dtype=torch.int64)), r"num_classes must be an integer >= 2"),
        (dict(train_x=torch.zeros(6, 2, 16)), r"train_x has shape \(6, 2, 16\), expected \(N, 2, 4, 4\)"),
        (dict(val_x=torch.zeros(3, 1, 4, 4)), r"val_x has shape \(3, 1, 4, 4\), expected \(N, 2, 4, 4\)"),
        (dict(test_x=torch.zeros(2, 2, 4, 5)), r"test_x has shape \(2, 2, 4, 5\), expected \(N, 2, 4, 4\)"),
        (dict(train_y=torch.zeros(6, dtype=torch.int32)), r"train_y must be a 1-D int64 tensor"),
        (dict(classes=("a", "b")), r"2 class names for num_classes=3"),
        (dict(train_dataset=torch.utils.data.TensorDataset(torch.zeros(1))), r"train_dataset is set but the bundle holds tensors"),
    ],
)
def test_bundle_validation(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(DatasetError, match=rf"^tiny: invalid bundle: {problem}") as info:
        _bundle(**changes)
    assert "\n" not in str(info.value)


def test_streamed_bundle_validation() -> None:
    dataset = torch.utils.data.TensorDataset(torch.zeros(3, 2, 4, 4), torch.zeros(3, dtype=torch.int64))
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 2, 4, 4), torch.zeros(0, dtype=torch.int64))
    streamed = dict(train_x=None, train_y=None, val_x=None, val_y=None, test_x=None, test_y=None)
    ok = _bundle(**streamed, train_dataset=dataset, val_dataset=dataset)
    assert not ok.is_resident and not ok.has_test and ok.num_val == 3
    with pytest.raises(DatasetError, match=r"tiny: invalid bundle: val_dataset is None .* validation split is missing"):
        _bundle(**streamed, train_dataset=dataset)
    with pytest.raises(DatasetError, match=r"tiny: invalid bundle: the training split is empty"):
        _bundle(**streamed, train_dataset=empty, val_dataset=dataset)


def test_replace_revalidates() -> None:
    with pytest.raises(DatasetError, match=r"invalid bundle: train_y has labels in \[0, 2\], expected \[0, 2\)"):
        dataclasses.replace(_bundle(), num_classes=2)


# --------------------------------------------------------------------------------------------------
# finish_bundle: training statistics -> normalise every split -> bundle
# --------------------------------------------------------------------------------------------------


def test_finish_bundle_normalises_every_split_with_training_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    train_x = torch.rand(8, 3, 4, 4, generator=g) * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    val_x, test_x = torch.rand(4, 3, 4, 4, generator=g), torch.rand(5, 3, 4, 4, generator=g)
    raw = (train_x.clone(), val_x.clone(), test_x.clone())
    bundle = finish_bundle(
        "made", train=(train_x, [0, 1] * 4), val=(val_x, [1, 0, 1, 0]), test=(test_x, [0] * 5),
        num_classes=2, flip=True, source="made up", classes=("x", "y"), info={"k": 1},
    )
    mean = raw[0].mean(dim=(0, 2, 3))
    std = raw[0].transpose(0, 1).reshape(3, -1).std(dim=1)
    assert torch.allclose(torch.tensor(bundle.mean, dtype=torch.float32), mean, atol=1e-6)
    assert torch.allclose(torch.tensor(bundle.std, dtype=torch.float32), std, atol=1e-6)
    for x, original in zip((bundle.train_x, bundle.val_x, bundle.test_x), raw):
        assert torch.allclose(x, (original - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), atol=1e-5)
    assert bundle.test_y.dtype == torch.int64 and bundle.test_y.tolist() == [0] * 5
    assert (bundle.in_channels, bundle.image_size, bundle.info, bundle.classes) == (3, 4, {"k": 1}, ("x", "y"))
    no_test = finish_bundle("made", train=(raw[0].clone(), [0, 1] * 4), val=(raw[1].clone(), [1, 0, 1, 0]),
                            num_classes=2, flip=False, source="made up")
    assert not no_test.has_test


def test_finish_bundle_rejects_a_training_split_too_small_for_statistics() -> None:
    with pytest.raises(DatasetError, match=r"^made: the training split has 0 image\(s\); need at least 2"):
        finish_bundle("made", train=(torch.zeros(0, 1, 2, 2), []), val=(torch.zeros(1, 1, 2, 2), [0]),
                      num_classes=2, flip=False, source="made up")
