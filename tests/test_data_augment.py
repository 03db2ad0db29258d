"""Tests for on-device augmentation (translation with a fill value, flip) and mini-batching."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from gsa_search.data import augment, batches, load_dataset


def _shift(img: torch.Tensor, dy: int, dx: int, fill: float | Sequence[float] = 0.0) -> torch.Tensor:
    """``img`` (C, H, W) moved by (dy, dx) pixels; uncovered pixels set to ``fill`` (per channel)."""
    out = torch.empty_like(img)
    out[:] = torch.as_tensor(fill, dtype=img.dtype).reshape(-1, 1, 1)
    height, width = img.shape[-2:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = img[
        :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def _shifts(pad: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]


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
        matches = [(dy, dx) for dy, dx in _shifts(pad) if torch.equal(result, _shift(img, dy, dx))]
        assert len(matches) == 1, "output is the input shifted with zero fill"
        seen.add(matches[0])
    assert len(seen) > 10, "shifts vary per sample"


@pytest.mark.parametrize("fill", [-1.5, (-1.0, 0.25, 2.0), torch.tensor([3.0, -3.0, 0.5])])
def test_augment_fill_value_per_channel(fill: float | Sequence[float]) -> None:
    pad = 2
    x = torch.rand(48, 3, 6, 7) + 5  # no pixel equals a fill value
    out = augment(x, pad=pad, flip=False, fill=fill, generator=torch.Generator().manual_seed(3))
    fill_values = fill.tolist() if isinstance(fill, torch.Tensor) else fill
    moved = 0
    for img, result in zip(x, out):
        matches = [(dy, dx) for dy, dx in _shifts(pad) if torch.equal(result, _shift(img, dy, dx, fill_values))]
        assert len(matches) == 1, "output is the input shifted, new pixels set to fill"
        moved += matches[0] != (0, 0)
    assert moved > 40


def test_augment_rejects_bad_fill() -> None:
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"augment: fill has 2 values but x has 3 channel\(s\)"):
        augment(x, fill=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"augment: fill must be finite numbers"):
        augment(x, fill=float("nan"))
    with pytest.raises(ValueError, match=r"augment: fill must be a number or one number per channel"):
        augment(x, fill=None)  # type: ignore[arg-type]


def test_augment_pads_digits_with_black_not_grey() -> None:
    """Translation runs after normalisation: the new border is the normalised black value, not 0 (grey)."""
    digits = load_dataset("digits", seed=0)
    (black,) = digits.black
    assert black == pytest.approx(-0.96, abs=0.03)
    x = digits.train_x[:32]
    out = augment(x, pad=4, flip=False, fill=digits.black, generator=torch.Generator().manual_seed(0))
    shifted = 0
    for img, result in zip(x, out):
        matches = [(dy, dx) for dy, dx in _shifts(4) if torch.equal(result, _shift(img, dy, dx, black))]
        assert matches, "output is the input shifted with black fill"
        dy, dx = matches[0]
        if dy > 0:
            assert torch.equal(result[:, :dy], torch.full_like(result[:, :dy], black))
            # black on the pixel scale too (a 0 fill would be the dataset mean: grey)
            assert torch.allclose(digits.unnormalize(result)[:, :dy], torch.zeros(1, dy, 32), atol=1e-5)
            shifted += 1
        if dx < 0:
            assert torch.equal(result[:, :, dx:], torch.full_like(result[:, :, dx:], black))
    assert shifted > 5


def test_augment_flip_and_translate() -> None:
    x = torch.rand(32, 1, 6, 6) + 0.5
    out = augment(x, pad=1, flip=True, generator=torch.Generator().manual_seed(2))
    for img, result in zip(x, out):
        candidates = [_shift(base, dy, dx) for base in (img, img.flip(-1)) for dy, dx in _shifts(1)]
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
