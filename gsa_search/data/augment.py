"""On-device augmentation (:func:`augment`) and mini-batching (:func:`batches`) of resident tensors.

Status: stable. :func:`augment` is batched random translation (a random crop of the image padded
with ``fill``) plus random horizontal flip, computed on the tensor's device without a Python loop
over samples. It runs after normalisation, so the padding value is in normalised units: pass
``fill=bundle.black`` to pad with black (``fill=0.0`` pads with the dataset mean, i.e. grey).
:func:`batches` yields index-sliced mini-batches of resident tensors (the airbench recipe).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator, Sequence

import torch

__all__ = ["augment", "batches"]


def augment(
    x: torch.Tensor,
    *,
    pad: int = 4,
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels, new pixels set to ``fill``; then random horizontal flip.

    Equivalent to a random ``H x W`` crop of the image padded by ``pad`` on each side with ``fill``
    (a number, or one number per channel, in the units of ``x``: normalised images want
    ``fill=bundle.black``), with an independent shift ``(dy, dx)`` in ``[-pad, pad]^2`` and a fair
    coin for flipping per sample. Runs on ``x.device`` with two ``gather``s (no Python loop over
    samples). Deterministic for a given ``generator``, which must live on ``x.device``. With
    ``pad=0`` and ``flip=False`` returns ``x``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.ones(2, 3, 8, 8), pad=2, fill=(-1.0, 0.0, 1.0), generator=g).shape
        torch.Size([2, 3, 8, 8])
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"augment: pad must be a non-negative integer, got {pad!r}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"augment: generator is on {generator.device}, x on {x.device}; they must match")
    batch, channels, height, width = x.shape
    fill_values = _fill_values(fill, channels)
    if pad == 0 and not flip:
        return x
    device = x.device
    rows = torch.arange(height, device=device).expand(batch, height)  # (B, H)
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if pad > 0:
        # Offsets of the crop window inside the padded image: 0..2*pad (shift = offset - pad).
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=device, generator=generator)
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
        source = x.new_empty((batch, channels, height + 2 * pad, width + 2 * pad))  # (B, C, H+2p, W+2p)
        if len(set(fill_values)) == 1:
            source.fill_(fill_values[0])
        else:  # one scalar fill per channel: no host-to-device copy
            for channel, value in enumerate(fill_values):
                source[:, channel].fill_(value)
        source[:, :, pad : pad + height, pad : pad + width] = x
    else:
        source = x
    if flip:
        flipped = torch.rand(batch, device=device, generator=generator) < 0.5  # (B,)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    padded_width = source.shape[-1]
    out = source.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded_width))  # (B, C, H, W+2p)
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))  # (B, C, H, W)


def _fill_values(fill: float | Sequence[float], channels: int) -> list[float]:
    """``fill`` as one finite float per channel; a ``ValueError`` naming the problem otherwise."""
    if isinstance(fill, torch.Tensor):
        fill = fill.tolist() if fill.dim() else float(fill)
    values = [fill] if isinstance(fill, numbers.Real) else fill
    try:
        values = [v for v in values]  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"augment: fill must be a number or one number per channel, got {fill!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"augment: fill must be finite numbers, got {fill!r}")
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"augment: fill has {len(values)} values but x has {channels} channel(s)")
    return [float(v) for v in values]


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
