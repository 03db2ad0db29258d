"""The attention mixers' 2x2 average pool (stride 2, ``ceil`` sizes, windows cut by the map's edge
averaging only their in-map pixels) as a small compiled CPU kernel, forward and backward.

Status: stable; checked against ``F.avg_pool2d`` (values and gradients, odd sizes, thread counts)
in ``tests/test_pool.py``.

The attention blocks compute at full resolution and pool their output (the paper's downsampling),
so on CPU the pool runs on the largest maps of a stride-2 block. PyTorch's NCHW ``avg_pool2d`` and
its backward read each window element by element; here each output row is two input rows of one
plane, summed in pairs (vectorised by the compiler), and the backward writes each gradient row pair
from one pooled row. Measured (batch 64, forward + backward, 2 threads, alternating, against
``F.avg_pool2d``): 7.2 -> 0.64 ms on (64, 32, 32, 32) maps, 2.2 -> 0.24 ms on (64, 64, 16, 16),
1.1 -> 0.22 ms on (64, 128, 8, 8), 0.58 -> 0.20 ms on (64, 256, 4, 4). Used by
:class:`~gsa_search.blocks.base.DownsamplePool` for contiguous CPU float32/float64 maps in eager
mode; traced, compiled, under a dispatch mode (FLOP counters), on CUDA or in half precision that
module runs ``F.avg_pool2d``, so FLOP counts see the same operator.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ._native import NativeKernel, eager

__all__ = ["avg_pool_2x2", "pool_usable"]

_SOURCE = r"""
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
int pool_openmp(void) { return 1; }
#else
int pool_openmp(void) { return 0; }
#endif

/* x: planes of H x W, out: planes of Ho x Wo (Ho = ceil(H / 2), Wo = ceil(W / 2)), contiguous.
   Planes p in [p0, p1) on nt threads. A window cut by the edge averages its in-map pixels. */
#define POOL_KERNELS(T, S)                                                                         \
void pool_fwd_##S(const T *x, T *out, int64_t H, int64_t W, int64_t nt, int64_t p0, int64_t p1) {  \
    const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2, W2 = W / 2;                                  \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t p = p0; p < p1; ++p)                                                              \
        for (int64_t i = 0; i < Ho; ++i) {                                                         \
            const T *a = x + (p * H + 2 * i) * W;                                                  \
            /* a last odd row is read twice: a quarter of twice its pair is the pair's mean */    \
            const T *b = 2 * i + 1 < H ? a + W : a;                                                \
            T *o = out + (p * Ho + i) * Wo;                                                        \
            for (int64_t j = 0; j < W2; ++j)                                                       \
                o[j] = (a[2 * j] + a[2 * j + 1] + b[2 * j] + b[2 * j + 1]) * (T)0.25;              \
            if (W2 < Wo) o[W2] = (a[W - 1] + b[W - 1]) * (T)0.5;                                   \
        }                                                                                          \
}                                                                                                  \
void pool_bwd_##S(const T *g, T *dx, int64_t H, int64_t W, int64_t nt, int64_t p0, int64_t p1) {   \
    const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2, W2 = W / 2;                                  \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t p = p0; p < p1; ++p)                                                              \
        for (int64_t r = 0; r < H; ++r) {                                                          \
            const int64_t i = r / 2;                                                               \
            const T scale = 2 * i + 1 < H ? (T)0.25 : (T)0.5;                                      \
            const T *gi = g + (p * Ho + i) * Wo;                                                   \
            T *d = dx + (p * H + r) * W;                                                           \
            for (int64_t j = 0; j < W2; ++j) {                                                     \
                const T v = gi[j] * scale;                                                         \
                d[2 * j] = v;                                                                      \
                d[2 * j + 1] = v;                                                                  \
            }                                                                                      \
            if (W2 < Wo) d[W - 1] = gi[W2] * scale * 2;                                            \
        }                                                                                          \
}

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)
"""


def _declare(lib: ctypes.CDLL) -> None:
    for s in ("f32", "f64"):
        for direction in ("fwd", "bwd"):
            fn = getattr(lib, f"pool_{direction}_{s}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 5
            fn.restype = None


KERNEL = NativeKernel("pool", _SOURCE, _declare, label="2x2 average pool", used_for="the attention blocks' pool")


def pool_usable(x: torch.Tensor) -> bool:
    """Whether :func:`avg_pool_2x2` runs the kernel on ``x``: a contiguous CPU float32/float64
    ``(B, C, H, W)`` map in plain eager mode (not traced), kernel built. Its backward is not
    differentiable again (``create_graph`` second derivatives raise); such uses can switch the
    kernels off with ``GSA_SEARCH_NATIVE=0``."""
    return (
        x.dim() == 4
        and x.is_contiguous()
        and not torch.jit.is_tracing()
        and eager()
        and KERNEL.usable(x)
    )


def _run(direction: str, src: torch.Tensor, dst: torch.Tensor, height: int, width: int) -> None:
    planes = src.shape[0] * src.shape[1]
    if planes and dst.numel():
        name = f"pool_{direction}_{'f64' if src.dtype == torch.float64 else 'f32'}"
        KERNEL.run(getattr(KERNEL.library(), name), planes, src.data_ptr(), dst.data_ptr(), height, width)


class _AvgPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        b, c, h, w = x.shape
        out = x.new_empty(b, c, (h + 1) // 2, (w + 1) // 2)
        _run("fwd", x, out, h, w)
        ctx.size = (h, w)
        return out

    @staticmethod
    @once_differentiable  # a second derivative raises instead of silently being zero
    def backward(ctx, grad):  # type: ignore[override]
        h, w = ctx.size
        grad = grad.contiguous()
        dx = grad.new_empty(grad.shape[0], grad.shape[1], h, w)
        _run("bwd", grad, dx, h, w)
        return dx


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)``, on the kernel where
    :func:`pool_usable`."""
    if pool_usable(x):
        return _AvgPool2x2.apply(x)
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
