"""The ``digits-pairs`` dataset: a long-range proxy task built from the real scikit-learn digits.

Status: stable. Two real digits in opposite corners of a larger canvas; label = "same class?".
Local 3x3 mixers cannot solve it in early layers; a global mixer can (see
:func:`load_digits_pairs`). Train and validation pairs are composed from disjoint digit images.
There is no test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._common import finish_bundle, resize, stratified_split
from .bundle import DatasetBundle, DatasetError
from .digits import digits_source
from .registry import check_fraction, check_int, register_dataset

# "Same class" pairs take two different images of one class, so every class needs two images in
# each pool; each split needs two pairs (one image's statistics are not enough to normalise).
_MIN_PER_CLASS = 2
_MIN_PAIRS = 2


RULES = ("same", "greater", "parity")


def _classes(rule: str, positive: bool, rng: np.random.Generator) -> tuple[int, int]:
    """Classes (A, B) of one pair with label ``positive`` under ``rule``, drawn uniformly among those pairs."""
    if rule == "same":
        if positive:
            c = int(rng.integers(10))
            return c, c
        a, b = rng.choice(10, size=2, replace=False)
        return int(a), int(b)
    if rule == "greater":  # A > B; ties never drawn
        a, b = sorted(int(c) for c in rng.choice(10, size=2, replace=False))
        return (b, a) if positive else (a, b)
    a = int(rng.integers(10))  # parity: A + B odd
    b = 2 * int(rng.integers(5)) + (a + int(positive)) % 2
    return a, b


@register_dataset("digits-pairs")
def load_digits_pairs(
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
    rule: str = "same",
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
    canvas = check_int(name, "canvas", canvas, minimum=4)
    digit_size = check_int(name, "digit_size", digit_size, minimum=2)
    jitter = check_int(name, "jitter", jitter, minimum=0)
    num_samples = check_int(name, "num_samples", num_samples, minimum=2 * _MIN_PAIRS)
    val_fraction = check_fraction(name, "val_fraction", val_fraction)
    if not isinstance(rule, str) or rule not in RULES:
        raise DatasetError(f"{name}: option rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
    if 2 * (digit_size + jitter) > canvas:
        raise DatasetError(
            f"{name}: canvas {canvas} is too small for two separated corner regions; need "
            f"canvas >= 2 * (digit_size + jitter) = {2 * (digit_size + jitter)}"
        )
    n_val = max(_MIN_PAIRS, int(round(num_samples * val_fraction)))
    n_train = num_samples - n_val
    if n_train < _MIN_PAIRS:
        raise DatasetError(
            f"{name}: num_samples={num_samples} with val_fraction={val_fraction:g} leaves {n_train} training "
            f"pair(s) ({n_val} for validation); each split needs at least {_MIN_PAIRS}: use val_fraction <= "
            f"{(num_samples - _MIN_PAIRS) / num_samples:.4g} or a larger num_samples"
        )
    size = canvas if image_size is None else image_size

    images, labels, path = digits_source()
    train_idx, val_idx = stratified_split(labels, val_fraction, seed, dataset=name, min_per_class=_MIN_PER_CLASS)
    digit_px = resize(torch.from_numpy(images).unsqueeze(1), digit_size)[:, 0]  # (1797, d, d)
    rng = np.random.default_rng([seed, 1])

    def compose(pool: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        by_class = [pool[labels[pool] == c] for c in range(10)]
        target = np.zeros(count, dtype=np.int64)
        target[: count // 2] = 1
        target = rng.permutation(target)
        pairs = np.empty((count, 2), dtype=np.int64)
        for i, positive in enumerate(target):
            first, second = _classes(rule, bool(positive), rng)
            if first == second:
                pairs[i] = rng.choice(by_class[first], size=2, replace=False)
            else:
                pairs[i] = rng.choice(by_class[first]), rng.choice(by_class[second])
        offsets = rng.integers(0, jitter + 1, size=(count, 4))  # (dy_a, dx_a, dy_b, dx_b)
        x = torch.zeros(count, 1, canvas, canvas)
        far = canvas - digit_size
        for i in range(count):
            ya, xa, yb, xb = (int(o) for o in offsets[i])
            x[i, 0, ya : ya + digit_size, xa : xa + digit_size] = digit_px[pairs[i, 0]]
            x[i, 0, far - yb : far - yb + digit_size, far - xb : far - xb + digit_size] = digit_px[pairs[i, 1]]
        return resize(x, size), torch.from_numpy(target), pairs

    train_x, train_y, train_pairs = compose(train_idx, n_train)
    val_x, val_y, val_pairs = compose(val_idx, n_val)
    return finish_bundle(
        name,
        train=(train_x, train_y),
        val=(val_x, val_y),
        num_classes=2,
        flip=False,
        source=(
            f"pairs of real digits from sklearn.datasets.load_digits() ({path}): {n_train} train pairs "
            f"from {len(train_idx)} digits, {n_val} val pairs from {len(val_idx)} disjoint digits; "
            f"canvas={canvas} digit_size={digit_size} jitter={jitter} seed={seed}"
            + (f", resized to {size}x{size}" if size != canvas else "")
            + "; no test split"
        ),
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
