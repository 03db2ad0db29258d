"""Local-window weighted sum, the inner step of local 2D positional attention.

``out[b, i, j, n] = sum_{dy, dx} a[n, b, i, j, dy, dx] * v[b, i + dy - ry, j + dx - rx, n]``
with ``(dy, dx)`` over a ``(2ry+1) x (2rx+1)`` window and keys outside the map counting as zero.
Each output reads only its window: ``(2ry+1)(2rx+1) * d_v`` multiply-adds, where the banded-matmul
form of :func:`~gsa_search.blocks._relative.relative_axis_attention` reads whole rows.

Two implementations with the same results behind one custom operator, ``gsa_search::window_sum``
(so FLOP counters see the same op whatever runs it):

* a small C kernel (forward, and a backward that gathers instead of scattering so it needs no atomics),
  built, cached and run by :mod:`~gsa_search.blocks._native` (system C compiler on first use, disk
  cache ``GSA_SEARCH_CACHE_DIR``, :mod:`ctypes`, torch's OpenMP threads). Used for CPU tensors
  whenever a compiler is found; ``GSA_SEARCH_NATIVE=0`` switches it off.
* plain PyTorch otherwise (CUDA, meta, no compiler): one multiply-add per window offset on the
  overlapping slices.

On CPU the block does not store the logits at all: ``gsa_search::window_attention`` (with its
backward ``gsa_search::window_attention_backward``) forms each query's ``(2ry+1)(2rx+1)`` logits
``q . rel`` inside the kernel, forward and backward. Stored, they are ``(2ry+1)(2rx+1) / d_k`` times
the queries' size (51 MB per call for a 7x7 window on 32x32 maps, batch 64, 4 heads of 4 channels),
written and read again in both passes, in buffers too large for the allocator to reuse. The
backward works on one (image, head) at a time, which alone writes its rows of the queries' and
values' gradients: per query it forms the logits again, the logits' gradient ``g . v`` for 8
column offsets at once (from a transposed copy of the unit's values), the query's and the offsets'
gradients (each thread sums its offsets' gradient privately), and adds ``logit * g`` into the
unit's own values' gradient, copied out at the end (no write conflicts, nothing of size ``H*W*K``
kept). Channel loops are compiled for ``d_k == d_v`` in 4, 8, 16, 32, 64 and generic otherwise.
Measured on the proxies' shapes (batch 64, 4 heads, 7x7 window, 2 threads), forward + backward of
the 2D attention: 83 -> 39 ms at 32x32 with 4 channels per head, 97 -> 48 ms with 8, and about
16 -> 15 ms at 16x16 with 16 channels (the stored logits are small there).

**Lane kernels** (float32, ``d_k = d_v`` of 4, 8, 16 or 32, maps at least 8 wide; see
:func:`lane_width`): the 8 lanes of a vector are 8 neighbouring query columns of one row, so every
multiply-add is dense whatever the head width (the kernel above runs its vectors along 4 or 8
channels). A unit copies q, v (and g) into rows transposed to (row, channel, column), zero-padded
left and right: a window offset is then the vector at a shifted column and keys off the map read
zeros. The backward's ``d_v`` pass puts 8 neighbouring keys in the lanes and gathers over the
queries whose window holds them, so nothing is scattered. From 16 channels ("wide") the logits of
all offsets go to a small buffer first and 8 channels at a time are weighed against them (the
query's and output's vectors no longer fit in registers). Measured against the kernel above (batch
64, 4 heads, 7x7 window, forward + backward, alternating): 2.4-2.9x faster with 4 channels per
head, 1.5-1.7x with 8, 1.13-1.42x with 16, 1.46-1.61x with 32.
"""

from __future__ import annotations

import ctypes
import math

import torch

from ._native import LANE_TRANSPOSES, NativeKernel

__all__ = ["window_sum", "window_attention", "native_available", "fused_usable"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID() omp_get_thread_num()
#else
#define THREAD_ID() 0
#endif

#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define MAX(x, y) ((x) > (y) ? (x) : (y))

/* a: (N, B, H, W, KY*KX) contiguous; v: (B, H, W, N, D) with strides vs[0..3] and unit last stride;
   out, g, gv: (B, H, W, N, D) contiguous; ga: like a. One call handles rows r = b*H + i in [r0, r1), on nt OpenMP threads.
   DD > 0: D == DD known at compile time, so the loops over D unroll into whole vectors. */
#define WINDOW_KERNELS(T, S, DD)                                                                   \
static void fwd_row_##S##_##DD(const T *restrict a, const T *restrict v, T *restrict out,         \
                               int64_t B, int64_t H, int64_t W, int64_t N, int64_t D0,            \
                               int64_t ry, int64_t rx, const int64_t *restrict vs, int64_t r) {   \
    const int64_t D = DD ? DD : D0, KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, P = B * H * W;        \
    const int64_t b = r / H, i = r % H;                                                            \
    const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i); /* dy with a row */       \
    T acc[DD ? DD : D0];                                                                           \
    for (int64_t n = 0; n < N; ++n) { /* one head at a time: its weights of the row stay in cache */ \
        for (int64_t j = 0; j < W; ++j) {                                                          \
            const int64_t p = r * W + j, x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);            \
            const T *restrict ap = a + (n * P + p) * KK;                                           \
            for (int64_t e = 0; e < D; ++e) acc[e] = 0;                                            \
            for (int64_t dy = y0; dy < y1; ++dy) {                                                 \
                const T *restrict vrow = v + b * vs[0] + (i + dy - ry) * vs[1] + n * vs[3];        \
                for (int64_t dx = x0; dx < x1; ++dx) {                                             \
                    const T w = ap[dy * KX + dx];                                                  \
                    const T *restrict vp = vrow + (j + dx - rx) * vs[2];                           \
                    for (int64_t e = 0; e < D; ++e) acc[e] += w * vp[e];                           \
                }                                                                                  \
            }                                                                                      \
            T *restrict o = out + (p * N + n) * D;                                                 \
            for (int64_t e = 0; e < D; ++e) o[e] = acc[e];                                         \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* ga[q, k] = g[q] . v[q + k]; gv[p] = sum_k a[p - k, k] g[p - k] (a gather: no write conflicts) */ \
static void bwd_row_##S##_##DD(const T *restrict a, const T *restrict v, const T *restrict g,     \
                               T *restrict ga, T *restrict gv, int64_t B, int64_t H, int64_t W,   \
                               int64_t N, int64_t D0, int64_t ry, int64_t rx,                     \
                               const int64_t *restrict vs, int64_t r) {                           \
    const int64_t D = DD ? DD : D0, KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, P = B * H * W;        \
    const int64_t b = r / H, i = r % H;                                                            \
    /* key rows i + dy - ry and query rows i - dy + ry inside the map share one dy range */        \
    const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i);                           \
    const int64_t z0 = MAX(0, i + ry - (H - 1)), z1 = MIN(2 * ry + 1, i + ry + 1);                 \
    T acc[DD ? DD : D0];                                                                           \
    for (int64_t n = 0; n < N; ++n) { /* one head at a time: the weights it gathers stay in cache */ \
        for (int64_t j = 0; j < W; ++j) {                                                          \
            const int64_t p = r * W + j, x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);            \
            const int64_t u0 = MAX(0, j + rx - (W - 1)), u1 = MIN(KX, j + rx + 1);                 \
            const T *restrict gp = g + (p * N + n) * D;                                            \
            T *restrict gap = ga + (n * P + p) * KK;                                               \
            for (int64_t k = 0; k < KK; ++k) gap[k] = 0;                                           \
            for (int64_t dy = y0; dy < y1; ++dy) {                                                 \
                const T *restrict vrow = v + b * vs[0] + (i + dy - ry) * vs[1] + n * vs[3];        \
                for (int64_t dx = x0; dx < x1; ++dx) {                                             \
                    const T *restrict vp = vrow + (j + dx - rx) * vs[2];                           \
                    T s = 0;                                                                       \
                    _Pragma("omp simd reduction(+ : s)")                                           \
                    for (int64_t e = 0; e < D; ++e) s += gp[e] * vp[e];                            \
                    gap[dy * KX + dx] = s;                                                         \
                }                                                                                  \
            }                                                                                      \
            for (int64_t e = 0; e < D; ++e) acc[e] = 0;                                            \
            for (int64_t dy = z0; dy < z1; ++dy) {                                                 \
                const int64_t qrow = (b * H + i - dy + ry) * W; /* the query whose key is (i, j) */ \
                for (int64_t dx = u0; dx < u1; ++dx) {                                             \
                    const int64_t q = qrow + j - dx + rx;                                          \
                    const T w = a[(n * P + q) * KK + dy * KX + dx];                                \
                    const T *restrict gq = g + (q * N + n) * D;                                    \
                    for (int64_t e = 0; e < D; ++e) acc[e] += w * gq[e];                           \
                }                                                                                  \
            }                                                                                      \
            T *restrict gvp = gv + (p * N + n) * D;                                                \
            for (int64_t e = 0; e < D; ++e) gvp[e] = acc[e];                                       \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
void window_fwd_##S##_##DD(const T *a, const T *v, T *out, int64_t B, int64_t H, int64_t W,       \
                           int64_t N, int64_t D, int64_t ry, int64_t rx, const int64_t *vs,        \
                           int64_t nt, int64_t r0, int64_t r1) {                                   \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t r = r0; r < r1; ++r) fwd_row_##S##_##DD(a, v, out, B, H, W, N, D, ry, rx, vs, r); \
}                                                                                                  \
void window_bwd_##S##_##DD(const T *a, const T *v, const T *g, T *ga, T *gv, int64_t B, int64_t H, \
                           int64_t W, int64_t N, int64_t D, int64_t ry, int64_t rx,                \
                           const int64_t *vs, int64_t nt, int64_t r0, int64_t r1) {                \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t r = r0; r < r1; ++r)                                                              \
        bwd_row_##S##_##DD(a, v, g, ga, gv, B, H, W, N, D, ry, rx, vs, r);                         \
}

#ifdef _OPENMP
int window_openmp(void) { return 1; }
#else
int window_openmp(void) { return 0; }
#endif


/* Fused local-window attention: the logits are never written to memory.
   out[b,i,j,n] = sum over in-map (dy,dx) of (q[b,i,j,n] . R[n,dy,dx]) v[b,i+dy-ry,j+dx-rx,n].
   q: (B,H,W,N,DK) strides qs[0..3], v: (B,H,W,N,D) strides vs[0..3] (unit last strides);
   R: (N, KK, DK) and RT: (N, DK, KKP) contiguous (RT zero-padded to KKP = KK rounded up to 8);
   out, g, dv: (B,H,W,N,D) contiguous; dq: (B,H,W,N,DK) contiguous; dR: (slots, N, KK, DK).
   A unit is one (image, head), u = b * N + n: a thread's consecutive units are the heads of one
   image, whose channels-last pixels share cache lines. */
#define FUSED_KERNELS(T, S, DD)                                                                        \
static inline void wlogits_##S##_##DD(const T *restrict qp, const T *restrict RTn, T *restrict l,   \
                               int64_t DK0, int64_t KKP) {                                         \
    const int64_t DK = DD ? DD : DK0;                                                              \
    for (int64_t k0 = 0; k0 < KKP; k0 += 8) { /* 8 offsets at a time, summed in registers */      \
        T acc8[8] = {0};                                                                           \
        for (int64_t c = 0; c < DK; ++c) {                                                         \
            const T x = qp[c];                                                                     \
            const T *restrict rt = RTn + c * KKP + k0;                                             \
            _Pragma("omp simd")                                                                    \
            for (int k = 0; k < 8; ++k) acc8[k] += x * rt[k];                                      \
        }                                                                                          \
        for (int k = 0; k < 8; ++k) l[k0 + k] = acc8[k];                                           \
    }                                                                                              \
}                                                                                                  \
int wattn_fwd_##S##_##DD(const T *q, const int64_t *qs, const T *v, const int64_t *vs, const T *RT,       \
                  T *out, int64_t B, int64_t H, int64_t W, int64_t N, int64_t DK0, int64_t D0,      \
                  int64_t ry, int64_t rx, int64_t nt, int64_t u0, int64_t u1) {                    \
    const int64_t DK = DD ? DD : DK0, D = DD ? DD : D0;                                            \
    const int64_t KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, KKP = (KK + 7) & ~(int64_t)7;          \
    int failed = 0;                                                                                \
    (void)B;                                                                                       \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        T *l = (T *)malloc(sizeof(T) * (KKP + D));                                                 \
        if (!l) failed = 1;                                                                        \
        T *acc = l ? l + KKP : NULL;                                                               \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!l) continue;                                                                      \
            const int64_t b = u / N, n = u % N;                                                    \
            const T *RTn = RT + n * DK * KKP;                                                      \
            for (int64_t i = 0; i < H; ++i) {                                                      \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i);               \
                for (int64_t j = 0; j < W; ++j) {                                                  \
                    const int64_t x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);                   \
                    wlogits_##S##_##DD(q + b * qs[0] + i * qs[1] + j * qs[2] + n * qs[3], RTn, l, DK, KKP); \
                    for (int64_t e = 0; e < D; ++e) acc[e] = 0;                                    \
                    for (int64_t dy = y0; dy < y1; ++dy) {                                         \
                        const T *restrict vrow = v + b * vs[0] + (i + dy - ry) * vs[1] + n * vs[3]; \
                        for (int64_t dx = x0; dx < x1; ++dx) {                                     \
                            const T w = l[dy * KX + dx];                                           \
                            const T *restrict vp = vrow + (j + dx - rx) * vs[2];                   \
                            _Pragma("omp simd")                                                    \
                            for (int64_t e = 0; e < D; ++e) acc[e] += w * vp[e];                   \
                        }                                                                          \
                    }                                                                              \
                    T *restrict o = out + (((b * H + i) * W + j) * N + n) * D;                     \
                    for (int64_t e = 0; e < D; ++e) o[e] = acc[e];                                 \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        free(l);                                                                                   \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
/* Backward of one unit (one image and head, which alone writes its rows of dq and dv), per query:
   its logits again (d_k multiply-adds each), the logits' gradient dl = g . v for 8 offsets dx at
   once from a transposed copy of the unit's values, dq = dl R and dR += dl q (a per-thread partial),
   and dv[key] += logit * g into the unit's own dv buffer (no write conflicts), copied out at the
   end. Nothing of size H*W*K is kept. */                                                          \
int wattn_bwd_##S##_##DD(const T *q, const int64_t *qs, const T *v, const int64_t *vs, const T *R,        \
                  const T *RT, const T *g, T *dq, T *dv, T *dR, int64_t B, int64_t H, int64_t W,    \
                  int64_t N, int64_t DK0, int64_t D0, int64_t ry, int64_t rx, int64_t nt,          \
                  int64_t u0, int64_t u1, int64_t slot0) {                                         \
    const int64_t DK = DD ? DD : DK0, D = DD ? DD : D0;                                            \
    const int64_t KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, KKP = (KK + 7) & ~(int64_t)7;          \
    const int64_t WP = W + 2 * rx + 8; /* a row of values, transposed, zero-padded both sides */   \
    int failed = 0;                                                                                \
    (void)B;                                                                                       \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        T *l = (T *)malloc(sizeof(T) * (2 * KKP + H * D * WP + H * W * D));                        \
        if (!l) failed = 1;                                                                        \
        T *dl = l ? l + KKP : NULL, *VT = l ? dl + KKP : NULL, *DV = l ? VT + H * D * WP : NULL;   \
        T *dRp = dR + (slot0 + THREAD_ID()) * N * KK * DK;                                         \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!l) continue;                                                                      \
            const int64_t b = u / N, n = u % N;                                                    \
            const T *RTn = RT + n * DK * KKP, *Rn = R + n * KK * DK;                               \
            T *dRn = dRp + n * KK * DK;                                                            \
            /* VT[y][e][rx + x] = v[b, y, x, n, e] */                                              \
            memset(VT, 0, sizeof(T) * H * D * WP);                                                 \
            memset(DV, 0, sizeof(T) * H * W * D);                                                  \
            for (int64_t y = 0; y < H; ++y)                                                        \
                for (int64_t x = 0; x < W; ++x) {                                                  \
                    const T *restrict vp = v + b * vs[0] + y * vs[1] + x * vs[2] + n * vs[3];      \
                    for (int64_t e = 0; e < D; ++e) VT[(y * D + e) * WP + rx + x] = vp[e];         \
                }                                                                                  \
            for (int64_t i = 0; i < H; ++i) {                                                      \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i);               \
                for (int64_t j = 0; j < W; ++j) {                                                  \
                    const int64_t x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);                   \
                    const T *restrict qp = q + b * qs[0] + i * qs[1] + j * qs[2] + n * qs[3];      \
                    const T *restrict gp = g + (((b * H + i) * W + j) * N + n) * D;                \
                    wlogits_##S##_##DD(qp, RTn, l, DK, KKP);                                       \
                    for (int64_t dy = y0; dy < y1; ++dy) { /* dl = g . v, 8 offsets dx at once */ \
                        const T *restrict vt = VT + (i + dy - ry) * D * WP + j;                    \
                        for (int64_t dx0 = 0; dx0 < KX; dx0 += 8) {                                \
                            T acc8[8] = {0};                                                       \
                            for (int64_t e = 0; e < D; ++e) {                                      \
                                const T ge = gp[e];                                                \
                                const T *restrict r = vt + e * WP + dx0;                           \
                                _Pragma("omp simd")                                                \
                                for (int t = 0; t < 8; ++t) acc8[t] += ge * r[t];                  \
                            }                                                                      \
                            const int64_t nd = MIN(8, KX - dx0);                                   \
                            for (int64_t t = 0; t < nd; ++t) dl[dy * KX + dx0 + t] = acc8[t];      \
                        }                                                                          \
                    }                                                                              \
                    T *restrict dqp = dq + (((b * H + i) * W + j) * N + n) * DK;                   \
                    for (int64_t c = 0; c < DK; ++c) dqp[c] = 0;                                   \
                    for (int64_t dy = y0; dy < y1; ++dy) {                                         \
                        T *restrict dvrow = DV + (i + dy - ry) * W * D;                            \
                        for (int64_t dx = x0; dx < x1; ++dx) {                                     \
                            const int64_t k = dy * KX + dx;                                        \
                            const T d_ = dl[k], w_ = l[k];                                         \
                            const T *restrict rk = Rn + k * DK;                                    \
                            T *restrict drk = dRn + k * DK;                                        \
                            _Pragma("omp simd")                                                    \
                            for (int64_t c = 0; c < DK; ++c) {                                     \
                                dqp[c] += d_ * rk[c];                                              \
                                drk[c] += d_ * qp[c];                                              \
                            }                                                                      \
                            T *restrict dvp = dvrow + (j + dx - rx) * D;                           \
                            _Pragma("omp simd")                                                    \
                            for (int64_t e = 0; e < D; ++e) dvp[e] += w_ * gp[e];                  \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            for (int64_t y = 0; y < H; ++y) /* the unit's dv rows out */                           \
                for (int64_t x = 0; x < W; ++x) {                                                  \
                    T *restrict o = dv + (((b * H + y) * W + x) * N + n) * D;                      \
                    const T *restrict src = DV + (y * W + x) * D;                                  \
                    for (int64_t e = 0; e < D; ++e) o[e] = src[e];                                 \
                }                                                                                  \
        }                                                                                          \
        free(l);                                                                                   \
    }                                                                                              \
    return failed;                                                                                 \
}

#ifndef INLINE
#define INLINE static inline __attribute__((always_inline))
#endif
"""
_SOURCE += LANE_TRANSPOSES + r"""
/* ---- lane kernels of the fused window attention (float32, d_k = d_v = DD): the 8 lanes of a
   vector are 8 neighbouring query columns of one row (forward, and the backward's d_q / d_offsets
   pass) or 8 neighbouring key columns (the backward's d_v pass, which gathers over the queries whose
   window holds each key, so nothing is scattered). A unit (image, head) first copies q, v (and g)
   into rows transposed to (row, channel, column), zero-padded by rx columns on the left and
   rx + 8 on the right: a window offset dx is then the vector at column j0 + dx, keys off the map
   read zeros, and no edge needs its own loop. */
/* XT[y][c][rx + x] = x[b, y, x, n, c] for x < W, zero elsewhere (rows XP long) */
static void wl_transpose(float *restrict XT, const float *restrict x, const int64_t *xs, int64_t b,
                         int64_t n, int64_t H, int64_t W, int64_t C, int64_t rx, int64_t XP) {
    memset(XT, 0, sizeof(float) * H * C * XP);
    for (int64_t y = 0; y < H; ++y) {
        const float *row = x + b * xs[0] + y * xs[1] + n * xs[3];
        float *dst = XT + y * C * XP + rx;
        int64_t x0 = 0;
#ifdef LANE_SHUFFLES
        if (C % 8 == 0)
            for (; x0 + 8 <= W; x0 += 8)
                for (int64_t c0 = 0; c0 < C; c0 += 8) {
                    const float *src[8];
                    float *out[8];
                    for (int j = 0; j < 8; ++j) src[j] = row + (x0 + j) * xs[2] + c0;
                    for (int t = 0; t < 8; ++t) out[t] = dst + (c0 + t) * XP + x0;
                    transpose8(src, out);
                }
        else if (C == 4)
            for (; x0 + 8 <= W; x0 += 8) {
                lv_t in[4], out[4];
                for (int j = 0; j < 4; ++j) in[j] = pair4(row + (x0 + j) * xs[2], row + (x0 + j + 4) * xs[2]);
                transpose4(in, out);
                for (int c = 0; c < 4; ++c) *(k8_t *)(dst + c * XP + x0) = out[c];
            }
#endif
        for (; x0 < W; ++x0)
            for (int64_t c = 0; c < C; ++c) dst[c * XP + x0] = row[x0 * xs[2] + c];
    }
}
/* x[t * ps + c] = A[c][t] for t < cnt: cnt <= 8 pixels (ps apart) of C channels from C lane vectors */
static inline void wl_store(float *restrict x, int64_t ps, const lv_t *A, int64_t C, int64_t cnt) {
#ifdef LANE_SHUFFLES
    if (cnt == 8 && C % 8 == 0) {
        for (int64_t c0 = 0; c0 < C; c0 += 8) {
            const float *src[8];
            float *dst[8];
            for (int t = 0; t < 8; ++t) src[t] = (const float *)(A + c0 + t);
            for (int j = 0; j < 8; ++j) dst[j] = x + j * ps + c0;
            transpose8(src, dst);
        }
        return;
    }
    if (cnt == 8 && C == 4) {
        lv_t out[4];
        transpose4(A, out);
        for (int j = 0; j < 4; ++j) {
            *(k4_t *)(x + j * ps) = SHUF(out[j], out[j], 0, 1, 2, 3);
            *(k4_t *)(x + (j + 4) * ps) = SHUF(out[j], out[j], 4, 5, 6, 7);
        }
        return;
    }
#endif
    for (int64_t t = 0; t < cnt; ++t)
        for (int64_t c = 0; c < C; ++c) x[t * ps + c] = A[c][t];
}

#define WLANE_KERNELS(DD)                                                                          \
int wlane_fwd_##DD(const float *q, const int64_t *qs, const float *v, const int64_t *vs,           \
                   const float *R, float *out, int64_t B, int64_t H, int64_t W, int64_t N,         \
                   int64_t DK0, int64_t D0, int64_t ry, int64_t rx, int64_t nt, int64_t u0,        \
                   int64_t u1) {                                                                   \
    enum { DK = DD, D = DD };                                                                      \
    const int64_t KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, XP = W + 2 * rx + 8;                    \
    int failed = 0;                                                                                \
    (void)B; (void)DK0; (void)D0;                                                                  \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        float *buf = NULL;                                                                         \
        if (posix_memalign((void **)&buf, 64, sizeof(float) * H * (DK + D) * XP)) { buf = NULL; failed = 1; } \
        float *QT = buf, *VT = buf ? buf + H * DK * XP : NULL;                                     \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t b = u / N, n = u % N;                                                    \
            const float *Rn = R + n * KK * DK;                                                     \
            wl_transpose(QT, q, qs, b, n, H, W, DK, rx, XP);                                       \
            wl_transpose(VT, v, vs, b, n, H, W, D, rx, XP);                                        \
            for (int64_t i = 0; i < H; ++i) {                                                      \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i);               \
                for (int64_t j0 = 0; j0 < W; j0 += 8) {                                            \
                    lv_t qv[DK], acc[2][D];                                                        \
                    for (int k = 0; k < DK; ++k) qv[k] = *(const k8_t *)(QT + (i * DK + k) * XP + rx + j0); \
                    for (int e = 0; e < D; ++e) acc[0][e] = acc[1][e] = (lv_t){0};                 \
                    for (int64_t dy = y0; dy < y1; ++dy) {                                         \
                        const float *vrow = VT + (i + dy - ry) * D * XP + j0;                      \
                        const float *Rd = Rn + dy * KX * DK;                                       \
                        for (int64_t dx = 0; dx < KX; ++dx) {                                      \
                            lv_t l = (lv_t){0};                                                    \
                            for (int k = 0; k < DK; ++k) l += qv[k] * Rd[dx * DK + k];             \
                            lv_t *a = acc[dx & 1];                                                 \
                            for (int e = 0; e < D; ++e) a[e] += l * *(const k8_t *)(vrow + e * XP + dx); \
                        }                                                                          \
                    }                                                                              \
                    for (int e = 0; e < D; ++e) acc[0][e] += acc[1][e];                            \
                    wl_store(out + (((b * H + i) * W + j0) * N + n) * D, N * D, acc[0], D, MIN(8, W - j0)); \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
/* Backward: d_q and the offsets' gradient per query block (lanes = queries; the offsets' gradient */ \
/* summed in lane vectors, then across lanes once per unit), then d_v per key block (lanes = keys), */ \
/* each key gathering over the queries whose window holds it. */                                  \
int wlane_bwd_##DD(const float *q, const int64_t *qs, const float *v, const int64_t *vs,           \
                   const float *R, const float *RT, const float *g, float *dq, float *dv,          \
                   float *dR, int64_t B, int64_t H, int64_t W, int64_t N, int64_t DK0, int64_t D0, \
                   int64_t ry, int64_t rx, int64_t nt, int64_t u0, int64_t u1, int64_t slot0) {    \
    enum { DK = DD, D = DD };                                                                      \
    const int64_t KX = 2 * rx + 1, KY = 2 * ry + 1, KK = KY * KX, XP = W + 2 * rx + 8;             \
    const int64_t gs[4] = {H * W * N * D, W * N * D, N * D, D};                                    \
    int failed = 0;                                                                                \
    (void)B; (void)DK0; (void)D0; (void)RT;                                                        \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        float *buf = NULL;                                                                         \
        const int64_t nT = (H * (DK + 2 * D) * XP + 15) & ~(int64_t)15; /* dRL: whole vectors */  \
        if (posix_memalign((void **)&buf, 64, sizeof(float) * (nT + KK * DK * 8))) { buf = NULL; failed = 1; } \
        float *QT = buf, *VT = buf ? QT + H * DK * XP : NULL, *GT = buf ? VT + H * D * XP : NULL;  \
        lv_t *dRL = buf ? (lv_t *)(buf + nT) : NULL;                                               \
        float *dRp = dR + (slot0 + THREAD_ID()) * N * KK * DK;                                     \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t b = u / N, n = u % N;                                                    \
            const float *Rn = R + n * KK * DK;                                                     \
            wl_transpose(QT, q, qs, b, n, H, W, DK, rx, XP);                                       \
            wl_transpose(VT, v, vs, b, n, H, W, D, rx, XP);                                        \
            wl_transpose(GT, g, gs, b, n, H, W, D, rx, XP);                                        \
            memset(dRL, 0, sizeof(lv_t) * KK * DK);                                                \
            for (int64_t i = 0; i < H; ++i) { /* d_q, d_offsets: lanes are queries (i, j0 + t) */ \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(KY, H + ry - i);                       \
                for (int64_t j0 = 0; j0 < W; j0 += 8) {                                            \
                    lv_t qv[DK], gv[D], dqa[DK];                                                   \
                    for (int k = 0; k < DK; ++k) {                                                 \
                        qv[k] = *(const k8_t *)(QT + (i * DK + k) * XP + rx + j0);                 \
                        dqa[k] = (lv_t){0};                                                        \
                    }                                                                              \
                    for (int e = 0; e < D; ++e) gv[e] = *(const k8_t *)(GT + (i * D + e) * XP + rx + j0); \
                    for (int64_t dy = y0; dy < y1; ++dy) {                                         \
                        const float *vrow = VT + (i + dy - ry) * D * XP + j0;                      \
                        const float *Rd = Rn + dy * KX * DK;                                       \
                        lv_t *dRd = dRL + dy * KX * DK;                                            \
                        for (int64_t dx = 0; dx < KX; ++dx) {                                      \
                            lv_t dl = (lv_t){0};                                                   \
                            for (int e = 0; e < D; ++e) dl += gv[e] * *(const k8_t *)(vrow + e * XP + dx); \
                            for (int k = 0; k < DK; ++k) {                                         \
                                dqa[k] += dl * Rd[dx * DK + k];                                    \
                                dRd[dx * DK + k] += dl * qv[k];                                    \
                            }                                                                      \
                        }                                                                          \
                    }                                                                              \
                    wl_store(dq + (((b * H + i) * W + j0) * N + n) * DK, N * DK, dqa, DK, MIN(8, W - j0)); \
                }                                                                                  \
            }                                                                                      \
            for (int64_t y = 0; y < H; ++y) { /* d_v: lanes are keys (y, x0 + t) */               \
                /* queries i = y - dy + ry on the map */                                           \
                const int64_t dy0 = MAX(0, y + ry - (H - 1)), dy1 = MIN(KY, y + ry + 1);           \
                for (int64_t x0 = 0; x0 < W; x0 += 8) {                                            \
                    lv_t dva[2][D];                                                                \
                    for (int e = 0; e < D; ++e) dva[0][e] = dva[1][e] = (lv_t){0};                 \
                    for (int64_t dy = dy0; dy < dy1; ++dy) {                                       \
                        const int64_t i = y - dy + ry;                                             \
                        /* query column j = x - dx + rx sits at column rx + j of the copies */    \
                        const float *qrow = QT + i * DK * XP + x0 + 2 * rx;                        \
                        const float *grow = GT + i * D * XP + x0 + 2 * rx;                         \
                        const float *Rd = Rn + dy * KX * DK;                                       \
                        for (int64_t dx = 0; dx < KX; ++dx) {                                      \
                            lv_t l = (lv_t){0};                                                    \
                            for (int k = 0; k < DK; ++k) l += *(const k8_t *)(qrow + k * XP - dx) * Rd[dx * DK + k]; \
                            lv_t *a = dva[dx & 1];                                                 \
                            for (int e = 0; e < D; ++e) a[e] += l * *(const k8_t *)(grow + e * XP - dx); \
                        }                                                                          \
                    }                                                                              \
                    for (int e = 0; e < D; ++e) dva[0][e] += dva[1][e];                            \
                    wl_store(dv + (((b * H + y) * W + x0) * N + n) * D, N * D, dva[0], D, MIN(8, W - x0)); \
                }                                                                                  \
            }                                                                                      \
            for (int64_t kk = 0; kk < KK * DK; ++kk) { /* the offsets' gradient, summed over lanes */ \
                float s = 0;                                                                       \
                for (int t = 0; t < 8; ++t) s += dRL[kk][t];                                       \
                dRp[n * KK * DK + kk] += s;                                                        \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}

/* Wide lane kernels (d_k = d_v = DD, a multiple of 8): too many channels to keep a query's and an
   output's vectors in registers, so each query block works in phases over small buffers of lane
   vectors, one per window offset: the logits (or their gradient) for all offsets first, then
   blocks of 8 channels against them. The offsets table is padded to KXP = 8k columns per window row
   (zeros) so the logits' loops run over whole vectors of offsets; the transposed rows are
   XP = W + KXP + 8 columns long. */
#define WLANE_WIDE_KERNELS(DD)                                                                     \
int wlane_fwd_##DD(const float *q, const int64_t *qs, const float *v, const int64_t *vs,           \
                   const float *R, float *out, int64_t B, int64_t H, int64_t W, int64_t N,         \
                   int64_t DK0, int64_t D0, int64_t ry, int64_t rx, int64_t nt, int64_t u0,        \
                   int64_t u1) {                                                                   \
    enum { DK = DD, D = DD };                                                                      \
    const int64_t KX = 2 * rx + 1, KY = 2 * ry + 1, KXP = (KX + 7) & ~(int64_t)7, XP = W + KXP + 8; \
    int failed = 0;                                                                                \
    (void)B; (void)DK0; (void)D0;                                                                  \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        float *buf = NULL;                                                                         \
        const int64_t nT = (H * (DK + D) * XP + 15) & ~(int64_t)15;                                \
        if (posix_memalign((void **)&buf, 64, sizeof(float) * (nT + KY * KXP * 8))) { buf = NULL; failed = 1; } \
        float *QT = buf, *VT = buf ? buf + H * DK * XP : NULL;                                     \
        lv_t *lg = buf ? (lv_t *)(buf + nT) : NULL;                                                \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t b = u / N, n = u % N;                                                    \
            const float *Rn = R + n * KY * KXP * DK;                                               \
            wl_transpose(QT, q, qs, b, n, H, W, DK, rx, XP);                                       \
            wl_transpose(VT, v, vs, b, n, H, W, D, rx, XP);                                        \
            for (int64_t i = 0; i < H; ++i) {                                                      \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(KY, H + ry - i);                       \
                for (int64_t j0 = 0; j0 < W; j0 += 8) {                                            \
                    const float *qb = QT + i * DK * XP + rx + j0;                                  \
                    for (int64_t dy = y0; dy < y1; ++dy) /* logits, 8 offsets at a time */         \
                        for (int64_t dx0 = 0; dx0 < KXP; dx0 += 8) {                               \
                            const float *Rd = Rn + (dy * KXP + dx0) * DK;                          \
                            lv_t acc[8];                                                           \
                            for (int t = 0; t < 8; ++t) acc[t] = (lv_t){0};                        \
                            for (int k = 0; k < DK; ++k) {                                         \
                                const lv_t qk = *(const k8_t *)(qb + k * XP);                      \
                                for (int t = 0; t < 8; ++t) acc[t] += qk * Rd[t * DK + k];         \
                            }                                                                      \
                            for (int t = 0; t < 8; ++t) lg[dy * KXP + dx0 + t] = acc[t];           \
                        }                                                                          \
                    for (int e0 = 0; e0 < D; e0 += 8) { /* 8 channels against every offset */      \
                        lv_t acc[8];                                                               \
                        for (int e = 0; e < 8; ++e) acc[e] = (lv_t){0};                            \
                        for (int64_t dy = y0; dy < y1; ++dy) {                                     \
                            const float *vrow = VT + ((i + dy - ry) * D + e0) * XP + j0;           \
                            for (int64_t dx = 0; dx < KX; ++dx) {                                  \
                                const lv_t l = lg[dy * KXP + dx];                                  \
                                for (int e = 0; e < 8; ++e) acc[e] += l * *(const k8_t *)(vrow + e * XP + dx); \
                            }                                                                      \
                        }                                                                          \
                        wl_store(out + (((b * H + i) * W + j0) * N + n) * D + e0, N * D, acc, 8, MIN(8, W - j0)); \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
int wlane_bwd_##DD(const float *q, const int64_t *qs, const float *v, const int64_t *vs,           \
                   const float *R, const float *RT, const float *g, float *dq, float *dv,          \
                   float *dR, int64_t B, int64_t H, int64_t W, int64_t N, int64_t DK0, int64_t D0, \
                   int64_t ry, int64_t rx, int64_t nt, int64_t u0, int64_t u1, int64_t slot0) {    \
    enum { DK = DD, D = DD };                                                                      \
    const int64_t KX = 2 * rx + 1, KY = 2 * ry + 1, KK = KY * KX, KXP = (KX + 7) & ~(int64_t)7;    \
    const int64_t XP = W + KXP + 8;                                                                \
    const int64_t gs[4] = {H * W * N * D, W * N * D, N * D, D};                                    \
    int failed = 0;                                                                                \
    (void)B; (void)DK0; (void)D0; (void)RT;                                                        \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        float *buf = NULL;                                                                         \
        const int64_t nT = (H * (DK + 2 * D) * XP + 15) & ~(int64_t)15, nO = KY * KXP * 8;         \
        if (posix_memalign((void **)&buf, 64, sizeof(float) * (nT + 2 * nO + KY * KXP * DK * 8))) { buf = NULL; failed = 1; } \
        float *QT = buf, *VT = buf ? QT + H * DK * XP : NULL, *GT = buf ? VT + H * D * XP : NULL;  \
        lv_t *dl = buf ? (lv_t *)(buf + nT) : NULL, *lk = buf ? dl + KY * KXP : NULL;             \
        lv_t *dRL = buf ? lk + KY * KXP : NULL;                                                    \
        float *dRp = dR + (slot0 + THREAD_ID()) * N * KK * DK;                                     \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t b = u / N, n = u % N;                                                    \
            const float *Rn = R + n * KY * KXP * DK;                                               \
            wl_transpose(QT, q, qs, b, n, H, W, DK, rx, XP);                                       \
            wl_transpose(VT, v, vs, b, n, H, W, D, rx, XP);                                        \
            wl_transpose(GT, g, gs, b, n, H, W, D, rx, XP);                                        \
            memset(dRL, 0, sizeof(lv_t) * KY * KXP * DK);                                          \
            for (int64_t i = 0; i < H; ++i) { /* d_q, d_offsets: lanes are queries (i, j0 + t) */ \
                const int64_t y0 = MAX(0, ry - i), y1 = MIN(KY, H + ry - i);                       \
                for (int64_t j0 = 0; j0 < W; j0 += 8) {                                            \
                    const float *qb = QT + i * DK * XP + rx + j0, *gb = GT + i * D * XP + rx + j0; \
                    for (int64_t dy = y0; dy < y1; ++dy) /* dl = g . v, 8 offsets at a time */     \
                        for (int64_t dx0 = 0; dx0 < KXP; dx0 += 8) {                               \
                            const float *vrow = VT + (i + dy - ry) * D * XP + j0 + dx0;            \
                            lv_t acc[8];                                                           \
                            for (int t = 0; t < 8; ++t) acc[t] = (lv_t){0};                        \
                            for (int e = 0; e < D; ++e) {                                          \
                                const lv_t ge = *(const k8_t *)(gb + e * XP);                      \
                                for (int t = 0; t < 8; ++t) acc[t] += ge * *(const k8_t *)(vrow + e * XP + t); \
                            }                                                                      \
                            for (int t = 0; t < 8; ++t) dl[dy * KXP + dx0 + t] = acc[t];           \
                        }                                                                          \
                    for (int k0 = 0; k0 < DK; k0 += 8) {                                           \
                        lv_t acc[8], qv[8];                                                        \
                        for (int k = 0; k < 8; ++k) {                                              \
                            acc[k] = (lv_t){0};                                                    \
                            qv[k] = *(const k8_t *)(qb + (k0 + k) * XP);                           \
                        }                                                                          \
                        for (int64_t dy = y0; dy < y1; ++dy)                                       \
                            for (int64_t dx = 0; dx < KX; ++dx) {                                  \
                                const int64_t o = dy * KXP + dx;                                   \
                                const lv_t d_ = dl[o];                                             \
                                const float *Ro = Rn + o * DK + k0;                                \
                                lv_t *dRo = dRL + o * DK + k0;                                     \
                                for (int k = 0; k < 8; ++k) {                                      \
                                    acc[k] += d_ * Ro[k];                                          \
                                    dRo[k] += d_ * qv[k];                                          \
                                }                                                                  \
                            }                                                                      \
                        wl_store(dq + (((b * H + i) * W + j0) * N + n) * DK + k0, N * DK, acc, 8, MIN(8, W - j0)); \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            for (int64_t y = 0; y < H; ++y) { /* d_v: lanes are keys (y, x0 + t) */               \
                const int64_t dy0 = MAX(0, y + ry - (H - 1)), dy1 = MIN(KY, y + ry + 1);           \
                for (int64_t x0 = 0; x0 < W; x0 += 8) {                                            \
                    for (int64_t dy = dy0; dy < dy1; ++dy) { /* the logits of the queries j = x - dx + rx */ \
                        const float *qrow = QT + (y - dy + ry) * DK * XP + x0 + 2 * rx;            \
                        const float *Rd = Rn + dy * KXP * DK;                                      \
                        for (int64_t dx = 0; dx < KX; ++dx) {                                      \
                            lv_t l0 = (lv_t){0}, l1 = (lv_t){0};                                   \
                            for (int k = 0; k < DK; k += 2) {                                      \
                                l0 += *(const k8_t *)(qrow + k * XP - dx) * Rd[dx * DK + k];       \
                                l1 += *(const k8_t *)(qrow + (k + 1) * XP - dx) * Rd[dx * DK + k + 1]; \
                            }                                                                      \
                            lk[dy * KXP + dx] = l0 + l1;                                           \
                        }                                                                          \
                    }                                                                              \
                    for (int e0 = 0; e0 < D; e0 += 8) {                                            \
                        lv_t acc[8];                                                               \
                        for (int e = 0; e < 8; ++e) acc[e] = (lv_t){0};                            \
                        for (int64_t dy = dy0; dy < dy1; ++dy) {                                   \
                            const float *grow = GT + ((y - dy + ry) * D + e0) * XP + x0 + 2 * rx;  \
                            for (int64_t dx = 0; dx < KX; ++dx) {                                  \
                                const lv_t l = lk[dy * KXP + dx];                                  \
                                for (int e = 0; e < 8; ++e) acc[e] += l * *(const k8_t *)(grow + e * XP - dx); \
                            }                                                                      \
                        }                                                                          \
                        wl_store(dv + (((b * H + y) * W + x0) * N + n) * D + e0, N * D, acc, 8, MIN(8, W - x0)); \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            for (int64_t dy = 0; dy < KY; ++dy) /* the offsets' gradient, summed over lanes */     \
                for (int64_t dx = 0; dx < KX; ++dx)                                                \
                    for (int k = 0; k < DK; ++k) {                                                 \
                        const lv_t x = dRL[(dy * KXP + dx) * DK + k];                              \
                        float s = 0;                                                               \
                        for (int t = 0; t < 8; ++t) s += x[t];                                     \
                        dRp[(n * KK + dy * KX + dx) * DK + k] += s;                                \
                    }                                                                              \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}

WLANE_KERNELS(4)
WLANE_KERNELS(8)
WLANE_WIDE_KERNELS(16)
WLANE_WIDE_KERNELS(32)

FUSED_KERNELS(float, f32, 0)
FUSED_KERNELS(float, f32, 4)
FUSED_KERNELS(float, f32, 8)
FUSED_KERNELS(float, f32, 16)
FUSED_KERNELS(float, f32, 32)
FUSED_KERNELS(float, f32, 64)
FUSED_KERNELS(double, f64, 0)

WINDOW_KERNELS(float, f32, 0)
WINDOW_KERNELS(float, f32, 4)
WINDOW_KERNELS(float, f32, 8)
WINDOW_KERNELS(float, f32, 16)
WINDOW_KERNELS(float, f32, 32)
WINDOW_KERNELS(float, f32, 64)
WINDOW_KERNELS(double, f64, 0)
"""

_VARIANTS = ("f32_0", "f32_4", "f32_8", "f32_16", "f32_32", "f32_64", "f64_0")
# d_k = d_v of the lane kernels (must match the instantiations above); from 16 channels the "wide"
# ones, which take the offsets padded to whole vectors per window row. Not used on maps narrower
# than a vector (measured no faster).
LANE_WIDTHS = (4, 8, 16, 32)
WIDE_LANES = (16, 32)
LANE_MIN_WIDTH = 8


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, strides = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    for s in _VARIANTS:
        getattr(lib, f"window_fwd_{s}").argtypes = [ptr] * 3 + [i64] * 7 + [strides, i64, i64, i64]
        getattr(lib, f"window_bwd_{s}").argtypes = [ptr] * 5 + [i64] * 7 + [strides, i64, i64, i64]
    for s in _VARIANTS:
        fwd, bwd = getattr(lib, f"wattn_fwd_{s}"), getattr(lib, f"wattn_bwd_{s}")
        # q, qs, v, vs, RT, out, B, H, W, N, DK, D, ry, rx, nt, u0, u1
        fwd.argtypes = [ptr, strides, ptr, strides, ptr, ptr] + [i64] * 8 + [i64, i64, i64]
        # q, qs, v, vs, R, RT, g, dq, dv, dR, B, H, W, N, DK, D, ry, rx, nt, u0, u1, slot0
        bwd.argtypes = [ptr, strides, ptr, strides, ptr, ptr, ptr, ptr, ptr, ptr] + [i64] * 8 + [i64] * 4
        fwd.restype = bwd.restype = ctypes.c_int
    for width in LANE_WIDTHS:  # the same arguments, with the offsets (N, K, d_k) in place of RT
        fwd, bwd = getattr(lib, f"wlane_fwd_{width}"), getattr(lib, f"wlane_bwd_{width}")
        fwd.argtypes = [ptr, strides, ptr, strides, ptr, ptr] + [i64] * 8 + [i64, i64, i64]
        bwd.argtypes = [ptr, strides, ptr, strides, ptr, ptr, ptr, ptr, ptr, ptr] + [i64] * 8 + [i64] * 4
        fwd.restype = bwd.restype = ctypes.c_int


KERNEL = NativeKernel("window", _SOURCE, _declare, label="local-window",
                      used_for="local 2D positional attention")


def native_available() -> bool:
    """Whether the compiled kernel is used for CPU tensors (builds it on first call)."""
    return KERNEL.available()


def __getattr__(name: str):  # read-only views of the kernel's state, for diagnostics
    if name in ("_lib", "_failed", "_openmp"):
        return {"_lib": KERNEL.lib, "_failed": KERNEL.failed, "_openmp": KERNEL.openmp}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _variant(v: torch.Tensor) -> str:
    if v.dtype == torch.float64:
        return "f64_0"
    return f"f32_{v.shape[-1]}" if f"f32_{v.shape[-1]}" in _VARIANTS else "f32_0"


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides4(t: torch.Tensor):
    return (ctypes.c_int64 * 4)(*t.stride()[:4])


def _native_forward(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    b, h, w, n, d = v.shape
    out = torch.empty(b, h, w, n, d, dtype=v.dtype)
    if out.numel():
        fn = getattr(KERNEL.lib, f"window_fwd_{_variant(v)}")
        KERNEL.run(fn, b * h, a.data_ptr(), v.data_ptr(), out.data_ptr(), b, h, w, n, d, ry, rx, _strides4(v))
    return out


def _native_backward(
    a: torch.Tensor, v: torch.Tensor, g: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w, n, d = v.shape
    ga, gv = torch.empty_like(a), torch.empty(b, h, w, n, d, dtype=v.dtype)
    if not gv.numel():
        return ga.zero_(), gv
    fn = getattr(KERNEL.lib, f"window_bwd_{_variant(v)}")
    args = (a.data_ptr(), v.data_ptr(), g.data_ptr(), ga.data_ptr(), gv.data_ptr(), b, h, w, n, d, ry, rx, _strides4(v))
    KERNEL.run(fn, b * h, *args)
    return ga, gv


def _overlaps(h: int, w: int, ry: int, rx: int):
    """``(k, query slices, key slices)`` for every window offset ``k`` that overlaps the map."""
    for dy in range(2 * ry + 1):
        oy = dy - ry
        qy, ky = slice(max(0, -oy), min(h, h - oy)), slice(max(0, oy), min(h, h + oy))
        if qy.start >= qy.stop:
            continue
        for dx in range(2 * rx + 1):
            ox = dx - rx
            qx, kx = slice(max(0, -ox), min(w, w - ox)), slice(max(0, ox), min(w, w + ox))
            if qx.start < qx.stop:
                yield dy * (2 * rx + 1) + dx, (slice(None), qy, qx), (slice(None), ky, kx)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """Sums over the window run in float32 for half-precision inputs (CUDA autocast)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _torch_forward(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    b, h, w, n, d = v.shape
    weights = a.permute(1, 2, 3, 0, 4)  # (B, H, W, N, K)
    out = torch.zeros(b, h, w, n, d, dtype=_accumulator(v.dtype), device=v.device)
    for k, q, key in _overlaps(h, w, ry, rx):
        out[q].addcmul_(weights[q][..., k, None], v[key])
    return out.to(v.dtype)


def _torch_backward(
    a: torch.Tensor, v: torch.Tensor, g: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = a.permute(1, 2, 3, 0, 4)
    ga = torch.zeros_like(a)
    gv = torch.zeros(v.shape, dtype=_accumulator(v.dtype), device=v.device)
    ga_view = ga.permute(1, 2, 3, 0, 4)
    for k, q, key in _overlaps(v.shape[1], v.shape[2], ry, rx):
        ga_view[q][..., k] = torch.linalg.vecdot(g[q], v[key])
        gv[key].addcmul_(weights[q][..., k, None], g[q])
    return ga, gv.to(v.dtype)


def _use_native(*tensors: torch.Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
        and native_available()
    )


def _check(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int, grad: torch.Tensor | None = None) -> None:
    """Shapes and dtypes the kernel relies on (it reads raw memory): checked in the operators
    themselves, so calling ``torch.ops.gsa_search.window_sum`` directly is as safe as the wrapper."""
    if ry < 0 or rx < 0:
        raise ValueError(f"window_sum: window radii must be >= 0, got ({ry}, {rx})")
    if a.dim() != 5 or v.dim() != 5:
        raise ValueError(f"window_sum: weights (N, B, H, W, K) and values (B, H, W, N, d_v), got {tuple(a.shape)} and {tuple(v.shape)}")
    n, b, h, w, k = a.shape
    if tuple(v.shape[:4]) != (b, h, w, n) or k != (2 * ry + 1) * (2 * rx + 1):
        raise ValueError(
            f"window_sum: weights {tuple(a.shape)} do not fit values {tuple(v.shape)} and window ({ry}, {rx})"
        )
    if grad is not None and grad.shape != v.shape:
        raise ValueError(f"window_sum: gradient {tuple(grad.shape)} does not match values {tuple(v.shape)}")
    dtypes = {t.dtype for t in (a, v, grad) if t is not None}
    if len(dtypes) != 1:
        raise ValueError(f"window_sum: weights, values (and gradient) must share a dtype, got {sorted(map(str, dtypes))}")


# A custom operator (not an autograd.Function), so FLOP counters (fvcore's trace and
# torch.utils.flop_counter), torch.compile and the meta device all see one opaque op.
@torch.library.custom_op("gsa_search::window_sum", mutates_args=())
def _window_sum_op(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    _check(a, v, ry, rx)
    a, v = a.contiguous(), _unit_last(v)
    return (_native_forward if _use_native(a, v) else _torch_forward)(a, v, ry, rx)


@_window_sum_op.register_fake
def _(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    _check(a, v, ry, rx)
    return v.new_empty(v.shape)


@torch.library.custom_op("gsa_search::window_sum_backward", mutates_args=())
def _window_sum_backward_op(
    a: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, v, ry, rx, grad)
    a, grad, v = a.contiguous(), grad.contiguous(), _unit_last(v)
    return (_native_backward if _use_native(a, v, grad) else _torch_backward)(a, v, grad, ry, rx)


@_window_sum_backward_op.register_fake
def _(a: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, ry: int, rx: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, v, ry, rx, grad)
    return a.new_empty(a.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    a, v, ry, rx = inputs
    ctx.save_for_backward(a, v)
    ctx.window = (ry, rx)


def _backward(ctx, grad: torch.Tensor):
    a, v = ctx.saved_tensors
    ga, gv = _window_sum_backward_op(a, v, grad, *ctx.window)
    return ga, gv, None, None


_window_sum_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    # torch counts 2 FLOPs per multiply-add; the backward does the forward's work twice (a and v)
    def forward_flops(a_shape, v_shape, *args, **kwargs) -> int:
        return 2 * math.prod(a_shape) * v_shape[-1]

    def backward_flops(a_shape, v_shape, *args, **kwargs) -> int:
        return 4 * math.prod(a_shape) * v_shape[-1]

    for op, formula in ((torch.ops.gsa_search.window_sum, forward_flops),
                        (torch.ops.gsa_search.window_sum_backward, backward_flops)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)


_register_flop_formulas()


def window_sum(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """``out[b, i, j, n] = sum_k a[n, b, i, j, k] * v[b, i + dy_k - ry, j + dx_k - rx, n]``.

    ``a``: ``(N, B, H, W, (2ry+1)(2rx+1))`` weights, offsets row-major (``k = dy * (2rx+1) + dx``);
    ``v``: ``(B, H, W, N, d_v)`` values (any strides, cast to ``a``'s dtype); keys outside the map
    are zero. Returns ``(B, H, W, N, d_v)``, contiguous. Differentiable in ``a`` and ``v``.

    Example:
        >>> a, v = torch.ones(1, 1, 3, 3, 9), torch.arange(9.0).view(1, 3, 3, 1, 1)
        >>> window_sum(a, v, 1, 1)[0, :, :, 0, 0]  # 3x3 box sums, zero outside the map
        tensor([[ 8., 15., 12.],
                [21., 36., 27.],
                [20., 33., 24.]])
    """
    if v.dtype != a.dtype:
        v = v.to(a.dtype)
    if a.device.type == "cpu" and a.dtype in (torch.bfloat16, torch.float16) and native_available():
        # the compiled kernel runs in float32 (CPU autocast hands it bfloat16)
        return _window_sum_op(a.float(), v.float(), ry, rx).to(a.dtype)
    return _window_sum_op(a, v, ry, rx)


# --- fused window attention: logits formed in the kernel, never stored ------------------------------------


def _padded_keys(kk: int) -> int:
    return -(-kk // 8) * 8


def _transposed_table(rel: torch.Tensor) -> torch.Tensor:
    """``(N, K, d_k)`` -> ``(N, d_k, K rounded up to 8)``, zero-padded: the kernel's logits run over
    whole vectors of offsets."""
    n, kk, d_k = rel.shape
    table = rel.new_zeros(n, d_k, _padded_keys(kk))
    table[:, :, :kk] = rel.transpose(1, 2)
    return table


def _check_attention(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, ry: int, rx: int,
                     grad: torch.Tensor | None = None) -> None:
    if ry < 0 or rx < 0:
        raise ValueError(f"window_attention: window radii must be >= 0, got ({ry}, {rx})")
    if q.dim() != 5 or v.dim() != 5 or rel.dim() != 3:
        raise ValueError(
            f"window_attention: queries (B, H, W, N, d_k), values (B, H, W, N, d_v) and offsets "
            f"(N, K, d_k) expected, got {tuple(q.shape)}, {tuple(v.shape)} and {tuple(rel.shape)}"
        )
    kk = (2 * ry + 1) * (2 * rx + 1)
    if q.shape[:4] != v.shape[:4] or tuple(rel.shape) != (q.shape[3], kk, q.shape[4]):
        raise ValueError(
            f"window_attention: queries {tuple(q.shape)}, values {tuple(v.shape)} and offsets "
            f"{tuple(rel.shape)} do not fit a ({2 * ry + 1}x{2 * rx + 1}) window"
        )
    if grad is not None and grad.shape != v.shape:
        raise ValueError(f"window_attention: gradient {tuple(grad.shape)} does not match values {tuple(v.shape)}")
    tensors = [t for t in (q, v, rel, grad) if t is not None]
    if not fused_usable(*tensors):
        raise ValueError(
            "window_attention: CPU float32 or float64 tensors of one dtype and the compiled kernel are "
            "needed (window_sum runs everywhere else)"
        )


def fused_usable(*tensors: torch.Tensor) -> bool:
    """Whether :func:`window_attention` can run on these tensors (CPU, one dtype, float32 or
    float64, kernel built)."""
    return KERNEL.usable(*tensors)


def lane_width(q: torch.Tensor, v: torch.Tensor) -> int | None:
    """``d_k`` when the lane kernels run the fused window attention on these operands (float32,
    ``d_k = d_v`` one of ``LANE_WIDTHS``, maps at least ``LANE_MIN_WIDTH`` wide), else ``None``."""
    d_k = q.shape[-1]
    usable = q.dtype == torch.float32 and d_k == v.shape[-1] and d_k in LANE_WIDTHS
    return d_k if usable and v.shape[2] >= LANE_MIN_WIDTH else None


def _lane_table(rel: torch.Tensor, ry: int, rx: int, lane: int) -> torch.Tensor:
    """The offsets as the lane kernels read them: ``(N, K, d_k)``, or for the wide ones ``(N, 2ry+1,
    KXP, d_k)`` with each window row zero-padded to a multiple of 8 offsets."""
    if lane not in WIDE_LANES:
        return rel.contiguous()
    n, _, d_k = rel.shape
    kx = 2 * rx + 1
    rows = rel.reshape(n, 2 * ry + 1, kx, d_k)
    return torch.nn.functional.pad(rows, (0, 0, 0, -(-kx // 8) * 8 - kx)).contiguous()


def _call(name: str, q: torch.Tensor, v: torch.Tensor, units: int, *args, slots: bool = False,
          threads: int | None = None, lane: int | None = None) -> None:
    """The fused kernel ``name`` for ``q``/``v``'s dtype, specialised to their channel count when
    ``d_k == d_v`` is one of the compiled widths (the loops over channels then unroll); with
    ``lane``, its lane kernel of that width."""
    if lane:
        KERNEL.call(f"{name.replace('wattn', 'wlane')}_{lane}", units, *args, slots=slots, threads=threads)
        return
    variant = "f64_0" if v.dtype == torch.float64 else f"f32_{v.shape[-1]}"
    if q.shape[-1] != v.shape[-1] or variant not in _VARIANTS:
        variant = "f64_0" if v.dtype == torch.float64 else "f32_0"
    KERNEL.call(f"{name}_{variant}", units, *args, slots=slots, threads=threads)


@torch.library.custom_op("gsa_search::window_attention", mutates_args=())
def _window_attention_op(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    _check_attention(q, v, rel, ry, rx)
    q, v = _unit_last(q), _unit_last(v)
    b, h, w, n, d = v.shape
    out = torch.empty(b, h, w, n, d, dtype=v.dtype, device=v.device)
    if out.numel():
        lane = lane_width(q, v)
        table = _lane_table(rel, ry, rx, lane) if lane else _transposed_table(rel)
        _call("wattn_fwd", q, v, b * n, q.data_ptr(), _strides4(q), v.data_ptr(), _strides4(v),
              table.data_ptr(), out.data_ptr(), b, h, w, n, q.shape[-1], d, ry, rx, lane=lane)
    return out


@_window_attention_op.register_fake
def _(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    return v.new_empty(v.shape)


@torch.library.custom_op("gsa_search::window_attention_backward", mutates_args=())
def _window_attention_backward_op(
    q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, grad: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_attention(q, v, rel, ry, rx, grad)
    q, v, grad = _unit_last(q), _unit_last(v), grad.contiguous()
    b, h, w, n, d = v.shape
    d_k = q.shape[-1]
    dq = torch.empty(b, h, w, n, d_k, dtype=q.dtype, device=q.device)
    dv = torch.empty(b, h, w, n, d, dtype=v.dtype, device=v.device)
    if not dq.numel() or not dv.numel():
        return dq.zero_(), dv.zero_(), torch.zeros_like(rel)
    lane = lane_width(q, v)
    table = _lane_table(rel, ry, rx, lane) if lane else rel.contiguous()
    table_t = _transposed_table(rel)  # both alive until the kernel returns
    slots = KERNEL.threads(b * n)  # one private offsets gradient per thread, summed at the end
    partial = rel.new_zeros(slots, *rel.shape)
    _call("wattn_bwd", q, v, b * n, q.data_ptr(), _strides4(q), v.data_ptr(), _strides4(v), table.data_ptr(),
          table_t.data_ptr(), grad.data_ptr(), dq.data_ptr(), dv.data_ptr(), partial.data_ptr(),
          b, h, w, n, d_k, d, ry, rx, slots=True, threads=slots, lane=lane)
    return dq, dv, partial[0] if slots == 1 else partial.sum(0)


@_window_attention_backward_op.register_fake
def _(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, grad: torch.Tensor, ry: int, rx: int):
    return q.new_empty(q.shape), v.new_empty(v.shape), rel.new_empty(rel.shape)


def _attention_setup_context(ctx, inputs, output) -> None:
    q, v, rel, ry, rx = inputs
    ctx.save_for_backward(q, v, rel)
    ctx.window = (ry, rx)


def _attention_backward(ctx, grad: torch.Tensor):
    q, v, rel = ctx.saved_tensors
    dq, dv, d_rel = _window_attention_backward_op(q, v, rel, grad, *ctx.window)
    return dq, dv, d_rel, None, None


_window_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def _register_attention_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    # logits (d_k) and weighting (d_v) per query, head and window offset; backward twice that
    def forward_flops(q_shape, v_shape, rel_shape, *args, **kwargs) -> int:
        return 2 * math.prod(q_shape[:4]) * rel_shape[1] * (q_shape[4] + v_shape[4])

    def backward_flops(q_shape, v_shape, rel_shape, *args, **kwargs) -> int:
        return 2 * forward_flops(q_shape, v_shape, rel_shape)

    for op, formula in ((torch.ops.gsa_search.window_attention, forward_flops),
                        (torch.ops.gsa_search.window_attention_backward, backward_flops)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)


_register_attention_flop_formulas()


def window_attention(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """``out[b, i, j, n] = sum_k (q[b, i, j, n] . rel[n, k]) v[b, i + dy_k - ry, j + dx_k - rx, n]``,
    i.e. ``window_sum`` of the logits ``q . rel`` without storing them: the fused kernel forms each
    query's ``(2ry+1)(2rx+1)`` logits in a small per-thread buffer, forward and backward.

    ``q``: ``(B, H, W, N, d_k)``, ``v``: ``(B, H, W, N, d_v)`` (strided views are fine),
    ``rel``: ``(N, (2ry+1)(2rx+1), d_k)``, offsets row-major; keys outside the map are zero.
    Returns ``(B, H, W, N, d_v)``, contiguous; differentiable in ``q``, ``v`` and ``rel``. CPU
    float32/float64 with the compiled kernel only (see :func:`fused_usable`).
    """
    return _window_attention_op(q, v, rel, ry, rx)
