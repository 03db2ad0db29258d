"""Host memory: keep what a training step frees for the next step instead of returning it to the
system.

Status: stable. glibc's ``malloc`` serves large blocks with fresh ``mmap`` pages and trims the
heap's free top back to the system; its thresholds adapt to the largest block freed so far, but a
training step that frees most of its activations at once still hands the memory back, and the next
step faults every page in again (zeroed by the kernel). Measured on this project's 2-core CPU
machine (digits at 16x16, batch 64, one epoch per model in one process): the conv proxy took
110-190 thousand page faults per epoch and 1.2-1.34 s; with the memory kept, none and 1.01-1.05 s
(15-20% faster); ``proxy_gsa_resnet`` 30-60 thousand faults, 1.62-1.77 s -> 1.57-1.61 s; the
content-only proxy 1.32 -> 1.24 s.

:func:`retain_freed_memory` sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB
(``mallopt``), so blocks below that come from the heap and its free top is kept up to that size.
The process then holds its peak heap, which a training loop reaches at every step anyway. The
trainer and the training benchmarks call it; ``GSA_SEARCH_RETAIN_MEMORY=0`` switches it off. It
does nothing off Linux/glibc (musl, macOS, Windows) and nothing for CUDA memory, which PyTorch's
caching allocator already keeps.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["retain_freed_memory", "mmap_threshold"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30
# older glibc releases refuse mmap thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); 2.36
# accepts 1 GiB
FALLBACK_MMAP_BYTES = 32 << 20

_lock = threading.Lock()
_state: bool | None = None
mmap_threshold: int | None = None  # the mmap threshold set, once in effect (larger blocks are still mapped)


def _disabled() -> bool:
    return os.environ.get("GSA_SEARCH_RETAIN_MEMORY", "1").strip().lower() in ("0", "false", "no", "off")


def retain_freed_memory() -> bool:
    """Keep freed host memory in this process for reuse (glibc only); ``True`` when in effect.

    Idempotent and thread-safe; the first call decides for the process. Both thresholds are set
    or neither: setting either one alone switches glibc's adaptive thresholds off and made every
    step several times slower here (each large block from ``mmap``, or the heap trimmed at 128 KiB).

    Example:
        >>> isinstance(retain_freed_memory(), bool)
        True
    """
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> bool:
    if _disabled() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's own symbol: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global mmap_threshold
    for size in (KEEP_BYTES, FALLBACK_MMAP_BYTES):
        if mallopt(M_MMAP_THRESHOLD, size):
            mmap_threshold = size
            return bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    return False  # nothing changed: glibc keeps its adaptive thresholds
