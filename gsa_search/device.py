"""Where computation runs: the one device resolver every module uses.

Status: stable. ``'auto'`` means CUDA when available, else CPU. Asking for CUDA on a machine
without it raises one clear :class:`ValueError` (not the driver's message), whoever asks: the
trainer, the latency measurement or the benchmarks.
"""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device", "check_device_name"]

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|meta")


def check_device_name(owner: str, field: str, device: object) -> None:
    """Reject anything but ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` (and ``'meta'``)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ValueError(f"{owner}.{field} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def resolve_device(device: str | torch.device = "auto", *, owner: str = "device") -> torch.device:
    """The :class:`torch.device` for ``device``; a clear error when CUDA is asked for but absent.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    check_device_name(owner, "device", device)
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{owner}: device={name!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(
                f"{owner}: device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return torch.device(name)
