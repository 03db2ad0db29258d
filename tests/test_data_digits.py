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


# The sklearn classes of every digit image (the loader's pairs hold indices into load_digits()).
@pytest.fixture(scope="module")
def target() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


@pytest.fixture(scope="module")
def pairs() -> DatasetBundle:
    return load_dataset("digits-pairs", seed=0, num_samples=1000)


def test_pairs_defaults() -> None:
    """The measured defaults (see load_digits_pairs' docstring): 12x12 canvas, 5-pixel digits, no
    jitter, 5,000 pairs (4,000 train / 1,000 val), rule 'same'."""
    import inspect

    from gsa_search.data.digits_pairs import load_digits_pairs

    defaults = {k: p.default for k, p in inspect.signature(load_digits_pairs).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"canvas": 12, "digit_size": 5, "jitter": 0, "num_samples": 5000, "val_fraction": 0.2,
                        "rule": "same"}
    bundle = load_dataset("digits-pairs")
    assert bundle.train_x.shape == (4000, 1, 12, 12) and bundle.val_x.shape == (1000, 1, 12, 12)
    assert bundle.classes == ("different", "same") and bundle.info["rule"] == "same"
    assert "rule=same canvas=12 digit_size=5 jitter=0" in bundle.source


def test_pairs_shapes_and_balance(pairs: DatasetBundle) -> None:
    assert pairs.train_x.shape == (800, 1, 12, 12) and pairs.val_x.shape == (200, 1, 12, 12)
    assert pairs.num_classes == 2 and not pairs.flip and pairs.image_size == 12
    assert int(pairs.train_y.sum()) == 400 and int(pairs.val_y.sum()) == 100  # exactly balanced
    assert not pairs.has_test


def test_pairs_digits_sit_in_separated_opposite_corners(pairs: DatasetBundle) -> None:
    raw = pairs.unnormalize(pairs.train_x)[:, 0]  # (N, 12, 12)
    ink = raw.abs() > 1e-4
    top_left = torch.zeros(12, 12, dtype=torch.bool)
    top_left[:5, :5] = True  # digit_size 5, jitter 0
    bottom_right = top_left.flip(0).flip(1)
    assert not ink[:, ~(top_left | bottom_right)].any(), "ink outside the two corner regions"
    assert ink[:, top_left].any(dim=1).all() and ink[:, bottom_right].any(dim=1).all()
    # A 2-pixel empty gutter separates the regions on each axis: the digits never touch.
    assert not ink[:, 5:7, :].any() and not ink[:, :, 5:7].any()


def test_pairs_jitter_stays_inside_the_corner_regions() -> None:
    bundle = load_dataset("digits-pairs", seed=0, num_samples=200, canvas=20, digit_size=6, jitter=2)
    ink = bundle.unnormalize(bundle.train_x)[:, 0].abs() > 1e-4
    corner = torch.zeros(20, 20, dtype=torch.bool)
    corner[:8, :8] = True  # digit_size + jitter
    assert not ink[:, ~(corner | corner.flip(0).flip(1))].any()
    # jitter moves the digits: some image has ink in row 7 (a digit shifted by 2), some none there
    assert ink[:, 7, :8].any() and not ink[:, 7, :8].any(dim=1).all()


def test_pair_label_on_hand_made_pairs() -> None:
    from gsa_search.data.digits_pairs import RULES, pair_label

    assert set(RULES) == {"same", "greater", "parity"}
    assert [pair_label("same", a, b) for a, b in [(3, 3), (0, 0), (3, 8), (9, 1)]] == [1, 1, 0, 0]
    assert [pair_label("greater", a, b) for a, b in [(7, 2), (1, 0), (2, 7), (0, 9), (4, 4)]] == [1, 1, 0, 0, 0]
    assert [pair_label("parity", a, b) for a, b in [(2, 7), (1, 0), (3, 5), (4, 4), (0, 0), (9, 8)]] == [1, 1, 0, 0, 0, 1]
    with pytest.raises(DatasetError, match=r"^digits-pairs: option rule must be one of 'same', 'greater', 'parity', got 'xor'$"):
        pair_label("xor", 1, 2)


@pytest.mark.parametrize("rule", ["same", "greater", "parity"])
def test_pairs_labels_follow_the_rule_and_are_balanced(rule: str, target: np.ndarray) -> None:
    from gsa_search.data.digits_pairs import pair_label

    bundle = load_dataset("digits-pairs", seed=0, num_samples=600, rule=rule)
    for split in ("train", "val"):
        idx = bundle.info[f"{split}_pairs"]
        y = getattr(bundle, f"{split}_y").numpy()
        expected = [pair_label(rule, a, b) for a, b in zip(target[idx[:, 0]], target[idx[:, 1]])]
        assert np.array_equal(np.asarray(expected), y)
        assert 2 * int(y.sum()) == len(y)
        assert (idx[:, 0] != idx[:, 1]).all(), "a pair is two different images"
    classes = target[bundle.info["train_pairs"]]
    if rule == "greater":
        assert (classes[:, 0] != classes[:, 1]).all(), "'greater' never draws a tie"
    # every class occurs in both corners (the sampler is not stuck on a subset)
    assert set(classes[:, 0]) == set(range(10)) and set(classes[:, 1]) == set(range(10))
    assert bundle.classes == {"same": ("different", "same"), "greater": ("smaller", "greater"),
                              "parity": ("even sum", "odd sum")}[rule]


def test_pairs_same_class_pairs_use_two_images_of_the_class(pairs: DatasetBundle, target: np.ndarray) -> None:
    idx = pairs.info["train_pairs"]
    same = pairs.train_y.numpy() == 1
    assert (target[idx[same, 0]] == target[idx[same, 1]]).all()
    assert (idx[same, 0] != idx[same, 1]).all()


def test_pairs_validation_uses_only_held_out_digits(pairs: DatasetBundle, target: np.ndarray) -> None:
    train_digits, val_digits = pairs.info["train_digits"], pairs.info["val_digits"]
    assert set(train_digits.tolist()).isdisjoint(val_digits.tolist())
    assert len(train_digits) + len(val_digits) == len(target)
    train_used = set(pairs.info["train_pairs"].ravel().tolist())
    val_used = set(pairs.info["val_pairs"].ravel().tolist())
    assert train_used.isdisjoint(val_used)
    assert train_used <= set(train_digits.tolist()) and val_used <= set(val_digits.tolist())
    assert {"canvas", "digit_size", "jitter", "rule"} <= set(pairs.info)


def test_pairs_pixels_are_the_listed_digits(pairs: DatasetBundle) -> None:
    """The image really holds the digits named in info: rebuild one pair from the source."""
    from gsa_search.data._common import resize
    from gsa_search.data.digits import digits_source

    images = torch.from_numpy(digits_source()[0]).unsqueeze(1)
    raw = pairs.unnormalize(pairs.val_x)[:, 0]
    for i in (0, 7):
        a, b = pairs.info["val_pairs"][i]
        assert torch.allclose(raw[i, :5, :5], resize(images[a : a + 1], 5)[0, 0], atol=1e-5)
        assert torch.allclose(raw[i, 7:, 7:], resize(images[b : b + 1], 5)[0, 0], atol=1e-5)


def test_pairs_deterministic_per_seed(pairs: DatasetBundle) -> None:
    again = load_dataset("digits-pairs", seed=0, num_samples=1000)
    assert torch.equal(again.train_x, pairs.train_x) and torch.equal(again.val_y, pairs.val_y)
    assert np.array_equal(again.info["val_pairs"], pairs.info["val_pairs"])
    other = load_dataset("digits-pairs", seed=1, num_samples=1000)
    assert not torch.equal(other.train_x, pairs.train_x)


def test_pairs_old_geometry_and_resizing_still_load() -> None:
    """The previous defaults stay valid options (32x32 canvas, 8-pixel digits, jitter 2)."""
    old = load_dataset("digits-pairs", num_samples=100, canvas=32, digit_size=8, jitter=2)
    assert old.train_x.shape == (80, 1, 32, 32)
    resized = load_dataset("digits-pairs", num_samples=100, image_size=24)
    assert resized.train_x.shape == (80, 1, 24, 24) and "resized to 24x24" in resized.source


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rule": "xor"}, r"^digits-pairs: option rule must be one of 'same', 'greater', 'parity', got 'xor'$"),
        ({"rule": 1}, r"^digits-pairs: option rule must be one of .*, got 1$"),
        ({"canvas": 10}, r"^digits-pairs: canvas 10 is too small for two separated corner regions of "
                         r"digit_size \+ jitter = 5 pixels; need canvas >= 2 \* \(digit_size \+ jitter\) \+ 1 = 11$"),
        ({"canvas": 16, "digit_size": 8}, r"need canvas >= .* = 17$"),
        ({"jitter": 1}, r"need canvas >= .* = 13$"),
        ({"digit_size": 1}, r"^digits-pairs: option digit_size must be an integer >= 2, got 1$"),
        ({"jitter": -1}, r"^digits-pairs: option jitter must be an integer >= 0, got -1$"),
        ({"num_samples": 2.5}, r"^digits-pairs: option num_samples must be an integer >= 4, got 2.5$"),
    ],
)
def test_pairs_bad_options(options: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("digits-pairs", **options)
    assert "\n" not in str(info.value)


def test_pairs_smallest_separated_canvas_loads() -> None:
    bundle = load_dataset("digits-pairs", num_samples=20, canvas=11)
    assert bundle.train_x.shape[-1] == 11


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
