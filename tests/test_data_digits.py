"""Tests for the ``digits`` and ``digits-pairs`` loaders (scikit-learn's real bundled digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsa_search.data import DatasetBundle, DatasetError, load_dataset

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
    assert not digits.has_test and digits.num_test == 0 and "no test split" in digits.source


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


def test_digits_black_is_normalised_zero(digits: DatasetBundle) -> None:
    (black,) = digits.black
    assert black == pytest.approx((0 - digits.mean[0]) / digits.std[0])
    assert -1.0 < black < -0.9  # about -0.96: the digits are mostly background
    assert float(digits.unnormalize(torch.full((1, 1, 1), black))) == pytest.approx(0.0, abs=1e-6)
    assert float(digits.train_x.min()) == pytest.approx(black, abs=1e-5)  # background pixels are black


@pytest.mark.parametrize("fraction", [0.002, 0.999])
def test_digits_val_fraction_that_empties_a_class_is_explained(fraction: float) -> None:
    """0.002 of the smallest class (174 images) rounds to no validation image; 0.999 to no training image."""
    with pytest.raises(DatasetError) as info:
        load_dataset("digits", val_fraction=fraction)
    message = str(info.value)
    assert message.startswith(f"digits: val_fraction={fraction:g} leaves class ")
    assert "smallest class, use val_fraction in [0.0058, 0.9942]" in message and "\n" not in message


def test_digits_smallest_working_val_fraction_loads() -> None:
    bundle = load_dataset("digits", val_fraction=0.0058, image_size=8)
    assert torch.bincount(bundle.val_y, minlength=10).min() >= 1


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
    assert not pairs.has_test


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
    assert {"canvas", "digit_size", "jitter"} <= set(pairs.info)


def test_pairs_deterministic_per_seed(pairs: DatasetBundle) -> None:
    again = load_dataset("digits-pairs", seed=0, num_samples=1000)
    assert torch.equal(again.train_x, pairs.train_x) and torch.equal(again.val_y, pairs.val_y)
    other = load_dataset("digits-pairs", seed=1, num_samples=1000)
    assert not torch.equal(other.train_x, pairs.train_x)


def test_pairs_split_leaving_no_training_pairs_is_an_error() -> None:
    """Before: 0 training pairs and NaN statistics; now a one-line error with the working range."""
    with pytest.raises(DatasetError) as info:
        load_dataset("digits-pairs", num_samples=4, val_fraction=0.9)
    message = str(info.value)
    assert message.startswith("digits-pairs: num_samples=4 with val_fraction=0.9 leaves 0 training pair(s)")
    assert "use val_fraction <= 0.5" in message and "\n" not in message
    small = load_dataset("digits-pairs", num_samples=4, val_fraction=0.5, canvas=20)
    assert (small.num_train, small.num_val) == (2, 2)


def test_pairs_val_fraction_too_small_for_same_class_pairs() -> None:
    """0.004 puts one digit per class into validation: no "same class" pair can be drawn (numpy failed)."""
    with pytest.raises(DatasetError, match=r"^digits-pairs: val_fraction=0.004 leaves class \d \(\d+ examples\) with 1 validation example\(s\), need at least 2; .* use val_fraction in \[0.0115, 0.9885\]$"):
        load_dataset("digits-pairs", num_samples=100, val_fraction=0.004)
