"""Fused C kernel of relative axis attention (the positional step of GSA), forward and backward.

Status: stable; checked against the batched-matmul path, a naive einsum and gradcheck in
``tests/test_relative_native.py``.

``out[n, s, i] = sum_a (q[n, i, s] . emb[n, i, a]) v[n, s, a]`` (see ``_relative.py``). The kernel
works on units of ``SB`` sequences of one head, numbered heads innermost: on a channels-last map the
heads of a pixel share its cache lines, so the units of one thread that follow each other read them
from cache (with the heads outermost, each line came from memory once per head: 30% more time at 4-8
channels per head). For every block of ``IB`` query positions it forms
the ``IB x SB x L_a`` logits in a small thread-local buffer (the embeddings of a position are read
once for the ``SB`` sequences), applies them to the values (each value row read once for the ``IB``
positions) and writes the result; nothing ``L x L`` sized ever reaches memory, so no logits are
saved for backward: the backward forms them again in the same tiles (``d_k`` multiply-adds per
logit, cheaper than storing and reloading them) and computes, per tile,

* ``d_logits = g . v`` and ``d_v += logits^T g`` (a unit owns its sequences: no write conflicts);
* ``d_q = d_logits emb`` (a unit owns its ``(sequence, position)`` rows);
* ``d_emb += d_logits^T q``, summed over sequences: into one private buffer per thread (no atomics),
  summed once at the end.

Inputs are read through their strides (any layout: the strided views the block passes need no
copy) into zero-padded tiles whose widths are whole SIMD vectors, so the inner loops are register
tiles of GCC vector-extension types with no remainder loops (``d_k``, ``d_v`` and ``L_a`` need not
be multiples of the vector width). float32 and float64.

**Lane kernels** (float32, ``d_k = d_v`` of 4, 8, 16 or 32, ``L_a * d <= LANE_MAX_TILE``; see
:func:`lane_width`): the same units, but the unit's 8 sequences sit in the 8 lanes of each vector and
a unit's q, v (and, backward, output-gradient) rows are gathered once into lane-major tiles (8 x 8
or 8 x 4 blocks transposed in registers where channels or positions are contiguous). Every
multiply-add is then dense, whatever the head width: the kernel above pads 4 channels to a vector
of 8 and wastes half its work on the narrow heads of the proxy models. Per position: logits (the
embeddings broadcast across lanes), the weighted sum of the values; backward, the logits again,
``d_logits``, ``d_q`` and ``d_emb`` (rows of ``d_k`` along a vector, summed over the lanes) per
position and ``d_v`` per block of 8 positions. Measured against the kernel above (batch 64, 4 heads,
forward + backward of one axial step, 2 threads, alternating): 1.5-1.7x faster at 4 channels per
head on 16x16 and 32x32 maps, 1.1-1.35x at 8, 1.05-1.2x at 16, 1.08x at 32 (8x8 and 4x4 maps,
whole block); it ran even at 64 keys of 16 channels, so larger tiles keep the kernel above.

Built, cached and run by :mod:`~gsa_search.blocks._native`; wrapped as the custom operators
``gsa_search::relative_axis`` and ``gsa_search::relative_axis_backward`` (one op each for FLOP
counters and ``torch.compile``).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Optional

import torch
from torch.nn import functional as F

from ._native import LANE_TRANSPOSES, NativeKernel, eager

__all__ = ["native_available", "relative_axis_native", "relative_axis_native_backward"]

SB, IB = 8, 8  # sequences and query positions per tile (must match the C source)

_SOURCE = r"""
#if defined(__GNUC__) && !defined(__clang__)
/* keep short row copies and clears as inline loops: GCC would turn them into libc calls, which
   cost more than copying a 16-element row */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID() omp_get_thread_num()
#else
#define THREAD_ID() 0
#endif

#define SB 8 /* sequences per unit */
#define IB 8 /* query positions per tile */
#define INLINE static inline __attribute__((always_inline))

typedef float vf32 __attribute__((vector_size(32)));
typedef float uf32 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double vf64 __attribute__((vector_size(32)));
typedef double uf64 __attribute__((vector_size(32), aligned(8), may_alias));

/* Shapes: N heads, L query positions, S = S_hi * Slo sequences, La keys, dk, dv; P-suffixed sizes
   are padded to whole vectors. Strides (5 each, in elements) in the order (head, s_hi, s_lo,
   position or key, channel): q/dq (position i), v/dv (key a), out/g (position i). E: (N, L, LaP, dkP), ET: (N, L, dkP, LaP), zero-padded,
   contiguous. dE: per-slot partial sums (slots, N, L, LaP, dkP). */
typedef struct {
    int64_t N, L, S, La, dk, dv, LaP, dkP, dvP, Slo;
} dims_t;
/* sequence s = s_hi * Slo + s_lo: strides xs[1] (s_hi) and xs[2] (s_lo) */
/* short row copies: inline loops (a libc call per 16-element row costs more than the copy) */
#define COPY(dst, src, w) do { for (int64_t e_ = 0; e_ < (w); ++e_) (dst)[e_] = (src)[e_]; } while (0)
/* so[j] = offset of sequence s0 + j through strides xs[1] (s_hi) and xs[2] (s_lo), for the
   sequences of a unit that exist; returns their count (one division per call, not one per row) */
static inline int64_t seq_offsets(int64_t *so, const int64_t *xs, int64_t s0, const dims_t *d) {
    const int64_t m = d->S - s0 < SB ? d->S - s0 : SB;
    int64_t hi = s0 / d->Slo, lo = s0 % d->Slo;
    for (int64_t j = 0; j < m; ++j) {
        so[j] = hi * xs[1] + lo * xs[2];
        if (++lo == d->Slo) { lo = 0; ++hi; }
    }
    return m;
}

#define HELPERS(T, S_, V, U)                                                                       \
enum { VW_##S_ = sizeof(V) / sizeof(T) };                                                          \
INLINE V ld_##S_(const T *p) { return *(const U *)p; }                                             \
INLINE void st_##S_(T *p, V x) { *(U *)p = x; }

#define RELATIVE_KERNELS(T, S_, V)                                                                 \
/* lg[ib][j][a0 .. a0+nv*VW) = sum_k Q[ib][j][k] ET_i[k][a] for j in [j0, j0+rows) */             \
INLINE void logits_tile_##S_(const T *restrict Q, const T *restrict et, T *restrict lg, int ib,    \
                             int64_t j0, int64_t a0, int nv, int rows, const dims_t *d) {          \
    V acc[8][2];                                                                                   \
    for (int r_ = 0; r_ < rows; ++r_) acc[r_][0] = acc[r_][1] = (V){0};                           \
    for (int64_t k = 0; k < d->dk; ++k) {                                                          \
        V e[2];                                                                                    \
        for (int c = 0; c < nv; ++c) e[c] = ld_##S_(et + k * d->LaP + a0 + c * VW_##S_);           \
        for (int jj = 0; jj < rows; ++jj) {                                                        \
            const T x = Q[((int64_t)ib * SB + j0 + jj) * d->dkP + k];                              \
            for (int c = 0; c < nv; ++c) acc[jj][c] += e[c] * x;                                   \
        }                                                                                          \
    }                                                                                              \
    for (int jj = 0; jj < rows; ++jj)                                                              \
        for (int c = 0; c < nv; ++c)                                                               \
            st_##S_(lg + ((int64_t)ib * SB + j0 + jj) * d->LaP + a0 + c * VW_##S_, acc[jj][c]);    \
}                                                                                                  \
static void logits_##S_(const T *restrict Q, const T *restrict ET, T *restrict lg, int64_t n,      \
                        int64_t i0, int nib, const dims_t *d) {                                    \
    for (int ib = 0; ib < IB; ++ib) {                                                              \
        if (ib >= nib) { /* zero rows: tiles of 4 or 8 rows read them */                          \
            memset(lg + (int64_t)ib * SB * d->LaP, 0, sizeof(T) * SB * d->LaP); /* tiles of 8 rows read them */ \
            continue;                                                                              \
        }                                                                                          \
        const T *et = ET + (n * d->L + i0 + ib) * d->dkP * d->LaP;                                 \
        if (d->LaP == VW_##S_) { /* one vector of keys: 8 sequences per tile keep 8 FMA chains */  \
            logits_tile_##S_(Q, et, lg, ib, 0, 0, 1, 8, d);                                        \
            continue;                                                                              \
        }                                                                                          \
        for (int64_t j0 = 0; j0 < SB; j0 += 4) {                                                   \
            int64_t a0 = 0;                                                                        \
            for (; a0 + 2 * VW_##S_ <= d->LaP; a0 += 2 * VW_##S_) logits_tile_##S_(Q, et, lg, ib, j0, a0, 2, 4, d); \
            if (a0 < d->LaP) logits_tile_##S_(Q, et, lg, ib, j0, a0, 1, 4, d);                     \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* O[ib][j][e] = sum_a lg[ib][j][a] X[j][a][e] (X: SB x LaP x width, rows of width w) */          \
INLINE void apply_tile_##S_(const T *restrict lg, const T *restrict X, T *restrict O, int64_t j,   \
                            int ib0, int64_t e0, int nv, int rows, int64_t w, int64_t La,          \
                            const dims_t *d) {                                                     \
    V acc[8][2];                                                                                   \
    for (int r_ = 0; r_ < rows; ++r_) acc[r_][0] = acc[r_][1] = (V){0};                           \
    const T *x = X + j * d->LaP * w + e0;                                                          \
    const T *l = lg + ((int64_t)ib0 * SB + j) * d->LaP;                                            \
    for (int64_t a = 0; a < La; ++a) {                                                             \
        V xv[2];                                                                                   \
        for (int c = 0; c < nv; ++c) xv[c] = ld_##S_(x + a * w + c * VW_##S_);                     \
        for (int ii = 0; ii < rows; ++ii) {                                                        \
            const T s = l[(int64_t)ii * SB * d->LaP + a];                                          \
            for (int c = 0; c < nv; ++c) acc[ii][c] += xv[c] * s;                                  \
        }                                                                                          \
    }                                                                                              \
    for (int ii = 0; ii < rows; ++ii)                                                              \
        for (int c = 0; c < nv; ++c)                                                               \
            st_##S_(O + ((int64_t)(ib0 + ii) * SB + j) * w + e0 + c * VW_##S_, acc[ii][c]);        \
}                                                                                                  \
static void apply_##S_(const T *restrict lg, const T *restrict X, T *restrict O, int64_t w,        \
                       int64_t La, int nib, const dims_t *d) {                                     \
    for (int64_t j = 0; j < SB; ++j) {                                                             \
        if (w == VW_##S_) { /* one vector wide: all IB = 8 positions (zero logits past nib) */     \
            apply_tile_##S_(lg, X, O, j, 0, 0, 1, 8, w, La, d);                                    \
            continue;                                                                              \
        }                                                                                          \
        for (int ib0 = 0; ib0 < nib; ib0 += 4) {                                                   \
            int64_t e0 = 0;                                                                        \
            for (; e0 + 2 * VW_##S_ <= w; e0 += 2 * VW_##S_) apply_tile_##S_(lg, X, O, j, ib0, e0, 2, 4, w, La, d); \
            if (e0 < w) apply_tile_##S_(lg, X, O, j, ib0, e0, 1, 4, w, La, d);                     \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* dlg[ib][j][a] = sum_e G[ib][j][e] VT[j][e][a] */                                                \
INLINE void dlogits_tile_##S_(const T *restrict G, const T *restrict VT, T *restrict dlg, int64_t j, \
                              int ib0, int64_t a0, int nv, const dims_t *d) {                      \
    V acc[4][2];                                                                                   \
    for (int r_ = 0; r_ < 4; ++r_) acc[r_][0] = acc[r_][1] = (V){0};                              \
    const T *vt = VT + j * d->dvP * d->LaP + a0;                                                   \
    const T *g = G + ((int64_t)ib0 * SB + j) * d->dvP;                                             \
    for (int64_t e = 0; e < d->dv; ++e) {                                                          \
        V x[2];                                                                                    \
        for (int c = 0; c < nv; ++c) x[c] = ld_##S_(vt + e * d->LaP + c * VW_##S_);                \
        for (int ii = 0; ii < 4; ++ii) {                                                           \
            const T s = g[(int64_t)ii * SB * d->dvP + e];                                          \
            for (int c = 0; c < nv; ++c) acc[ii][c] += x[c] * s;                                   \
        }                                                                                          \
    }                                                                                              \
    for (int ii = 0; ii < 4; ++ii)                                                                 \
        for (int c = 0; c < nv; ++c)                                                               \
            st_##S_(dlg + ((int64_t)(ib0 + ii) * SB + j) * d->LaP + a0 + c * VW_##S_, acc[ii][c]); \
}                                                                                                  \
/* acc rows r0..r0+3 of Y (row width w) += sum_m lgm[m][r] X[m][e] over m < M, i.e. Y += lg^T X: */ \
/* d_v (rows a, sum over positions) and d_emb (rows a, sum over sequences) */                      \
INLINE void outer_tile_##S_(T *restrict Y, const T *restrict lgm, int64_t lstride,                 \
                            const T *restrict X, int64_t xstride, int64_t M, int64_t r0,           \
                            int64_t e0, int nv, int rows, int64_t w) {                             \
    V acc[8][2];                                                                                   \
    for (int rr = 0; rr < rows; ++rr)                                                              \
        for (int c = 0; c < nv; ++c) acc[rr][c] = ld_##S_(Y + (r0 + rr) * w + e0 + c * VW_##S_);   \
    for (int64_t m = 0; m < M; ++m) {                                                              \
        V x[2];                                                                                    \
        for (int c = 0; c < nv; ++c) x[c] = ld_##S_(X + m * xstride + e0 + c * VW_##S_);           \
        const T *l = lgm + m * lstride + r0;                                                       \
        for (int rr = 0; rr < rows; ++rr)                                                          \
            for (int c = 0; c < nv; ++c) acc[rr][c] += x[c] * l[rr];                               \
    }                                                                                              \
    for (int rr = 0; rr < rows; ++rr)                                                              \
        for (int c = 0; c < nv; ++c) st_##S_(Y + (r0 + rr) * w + e0 + c * VW_##S_, acc[rr][c]);     \
}                                                                                                  \
static void outer_##S_(T *restrict Y, const T *restrict lgm, int64_t lstride, const T *restrict X, \
                       int64_t xstride, int64_t M, int64_t rows, int64_t w) {                      \
    if (w == VW_##S_ && rows % 8 == 0) { /* one vector wide: 8 rows per tile keep 8 FMA chains */ \
        for (int64_t r0 = 0; r0 < rows; r0 += 8) outer_tile_##S_(Y, lgm, lstride, X, xstride, M, r0, 0, 1, 8, w); \
        return;                                                                                    \
    }                                                                                              \
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {                                                     \
        int64_t e0 = 0;                                                                            \
        for (; e0 + 2 * VW_##S_ <= w; e0 += 2 * VW_##S_) outer_tile_##S_(Y, lgm, lstride, X, xstride, M, r0, e0, 2, 4, w); \
        if (e0 < w) outer_tile_##S_(Y, lgm, lstride, X, xstride, M, r0, e0, 1, 4, w);              \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
static void gather_values_##S_(const T *restrict v, const int64_t *vs, T *restrict X, int64_t n,   \
                               int64_t s0, const dims_t *d) {                                      \
    int64_t so[SB];                                                                                \
    const int64_t m = seq_offsets(so, vs, s0, d);                                                  \
    memset(X, 0, sizeof(T) * SB * d->LaP * d->dvP);                                                \
    for (int64_t j = 0; j < m; ++j)                                              \
        for (int64_t a = 0; a < d->La; ++a) {                                                      \
            const T *src = v + n * vs[0] + so[j] + a * vs[3];                          \
            T *dst = X + (j * d->LaP + a) * d->dvP;                                                \
            if (vs[4] == 1) COPY(dst, src, d->dv);                                   \
            else for (int64_t e = 0; e < d->dv; ++e) dst[e] = src[e * vs[4]];                      \
        }                                                                                          \
}                                                                                                  \
/* rows (position i0 + ib, sequence s0 + j) of x into X[ib][j] (row width wP, zero-padded) */       \
static void gather_rows_##S_(const T *restrict x, const int64_t *xs, T *restrict X,                \
                             int64_t w, int64_t wP, int64_t n, int64_t i0, int nib, int64_t s0,     \
                             const dims_t *d) {                                                    \
    int64_t so[SB];                                                                                \
    const int64_t m = seq_offsets(so, xs, s0, d);                                                  \
    memset(X, 0, sizeof(T) * IB * SB * wP);                                                        \
    if (xs[3] == 1 && xs[4] != 1) { /* positions innermost (an NCHW map): read along them */       \
        for (int64_t j = 0; j < m; ++j)                                          \
            for (int64_t e = 0; e < w; ++e) {                                                      \
                const T *src = x + n * xs[0] + i0 + so[j] + e * xs[4];                 \
                for (int ib = 0; ib < nib; ++ib) X[((int64_t)ib * SB + j) * wP + e] = src[ib];     \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    for (int ib = 0; ib < nib; ++ib)                                                               \
        for (int64_t j = 0; j < m; ++j) {                                        \
            const T *src = x + n * xs[0] + (i0 + ib) * xs[3] + so[j];                  \
            T *dst = X + ((int64_t)ib * SB + j) * wP;                                              \
            if (xs[4] == 1) COPY(dst, src, w);                                       \
            else for (int64_t e = 0; e < w; ++e) dst[e] = src[e * xs[4]];                          \
        }                                                                                          \
}                                                                                                  \
static void scatter_rows_##S_(T *restrict x, const int64_t *xs, const T *restrict X,               \
                              int64_t w, int64_t wP, int64_t n, int64_t i0, int nib, int64_t s0,    \
                              const dims_t *d) {                                                   \
    int64_t so[SB];                                                                                \
    const int64_t m = seq_offsets(so, xs, s0, d);                                                  \
    if (xs[3] == 1 && xs[4] != 1) { /* positions innermost (an NCHW map): write along them */      \
        for (int64_t j = 0; j < m; ++j)                                          \
            for (int64_t e = 0; e < w; ++e) {                                                      \
                T *dst = x + n * xs[0] + i0 + so[j] + e * xs[4];                       \
                for (int ib = 0; ib < nib; ++ib) dst[ib] = X[((int64_t)ib * SB + j) * wP + e];     \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    for (int ib = 0; ib < nib; ++ib)                                                               \
        for (int64_t j = 0; j < m; ++j) {                                        \
            T *dst = x + n * xs[0] + (i0 + ib) * xs[3] + so[j];                        \
            const T *src = X + ((int64_t)ib * SB + j) * wP;                                        \
            if (xs[4] == 1) COPY(dst, src, w);                                       \
            else for (int64_t e = 0; e < w; ++e) dst[e * xs[4]] = src[e];                          \
        }                                                                                          \
}                                                                                                  \
                                                                                                   \
int relative_fwd_##S_(const T *q, const int64_t *qs, const T *v, const int64_t *vs, const T *ET,   \
                      T *out, const int64_t *os, const int64_t *dd, int64_t nt, int64_t u0,       \
                      int64_t u1) {                                                                \
    const dims_t dm = {dd[0], dd[1], dd[2], dd[3], dd[4], dd[5], dd[6], dd[7], dd[8], dd[9]}, *d = &dm;   \
    /* a unit is (head, SB sequences), u = sequence block * N + head */                           \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        const size_t nX = SB * d->LaP * d->dvP, nQ = IB * SB * d->dkP, nL = IB * SB * d->LaP,      \
                     nO = IB * SB * d->dvP;                                                        \
        T *buf = NULL;                                                                             \
        if (posix_memalign((void **)&buf, 64, sizeof(T) * (nX + nQ + nL + nO))) { buf = NULL; failed = 1; } \
        T *X = buf, *Q = X + nX, *lg = Q + nQ, *O = lg + nL;                                       \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t n = u % d->N, s0 = (u / d->N) * SB;                                    \
            gather_values_##S_(v, vs, X, n, s0, d);                                                \
            for (int64_t i0 = 0; i0 < d->L; i0 += IB) {                                            \
                const int nib = (int)(d->L - i0 < IB ? d->L - i0 : IB);                            \
                gather_rows_##S_(q, qs, Q, d->dk, d->dkP, n, i0, nib, s0, d);                   \
                logits_##S_(Q, ET, lg, n, i0, nib, d);                                             \
                apply_##S_(lg, X, O, d->dvP, d->La, nib, d);                                            \
                scatter_rows_##S_(out, os, O, d->dv, d->dvP, n, i0, nib, s0, d);                \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
                                                                                                   \
int relative_bwd_##S_(const T *q, const int64_t *qs, const T *v, const int64_t *vs, const T *E,    \
                      const T *ET, const T *g, const int64_t *gs, T *dq, const int64_t *dqs,       \
                      T *dv, const int64_t *dvs, T *dE, const int64_t *dd, int64_t nt, int64_t u0, \
                      int64_t u1, int64_t slot0) {                                                 \
    const dims_t dm = {dd[0], dd[1], dd[2], dd[3], dd[4], dd[5], dd[6], dd[7], dd[8], dd[9]}, *d = &dm;   \
    /* a unit is (head, SB sequences), u = sequence block * N + head */                           \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        const size_t nX = SB * d->LaP * d->dvP, nQ = IB * SB * d->dkP, nL = IB * SB * d->LaP,      \
                     nG = IB * SB * d->dvP;                                                        \
        T *buf = NULL;                                                                             \
        if (posix_memalign((void **)&buf, 64, sizeof(T) * (3 * nX + nQ + 2 * nL + nG + nQ))) { buf = NULL; failed = 1; } \
        T *X = buf, *XT = X + nX, *dX = XT + nX, *Q = dX + nX, *lg = Q + nQ, *dlg = lg + nL,       \
          *G = dlg + nL, *dQ = G + nG;                                                             \
        T *dEp = dE + (slot0 + THREAD_ID()) * d->N * d->L * d->LaP * d->dkP;                       \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t n = u % d->N, s0 = (u / d->N) * SB;                                    \
            gather_values_##S_(v, vs, X, n, s0, d);                                                \
            for (int64_t j = 0; j < SB; ++j) /* XT[j][e][a] = X[j][a][e] */                        \
                for (int64_t a = 0; a < d->LaP; ++a)                                               \
                    for (int64_t e = 0; e < d->dvP; ++e)                                           \
                        XT[(j * d->dvP + e) * d->LaP + a] = X[(j * d->LaP + a) * d->dvP + e];      \
            memset(dX, 0, sizeof(T) * nX);                                                         \
            for (int64_t i0 = 0; i0 < d->L; i0 += IB) {                                            \
                const int nib = (int)(d->L - i0 < IB ? d->L - i0 : IB);                            \
                gather_rows_##S_(q, qs, Q, d->dk, d->dkP, n, i0, nib, s0, d);                   \
                gather_rows_##S_(g, gs, G, d->dv, d->dvP, n, i0, nib, s0, d);                   \
                logits_##S_(Q, ET, lg, n, i0, nib, d);                                             \
                for (int64_t j = 0; j < SB; ++j)                                                   \
                    for (int ib0 = 0; ib0 < nib; ib0 += 4) {                                       \
                        int64_t a0 = 0;                                                            \
                        for (; a0 + 2 * VW_##S_ <= d->LaP; a0 += 2 * VW_##S_) dlogits_tile_##S_(G, XT, dlg, j, ib0, a0, 2, d); \
                        if (a0 < d->LaP) dlogits_tile_##S_(G, XT, dlg, j, ib0, a0, 1, d);          \
                    }                                                                              \
                /* d_v[j] += lg[:, j]^T G[:, j] */                                                 \
                for (int64_t j = 0; j < SB; ++j)                                                   \
                    outer_##S_(dX + j * d->LaP * d->dvP, lg + j * d->LaP, SB * d->LaP,             \
                               G + j * d->dvP, SB * d->dvP, nib, d->LaP, d->dvP);                  \
                /* d_q[ib][j] = dlg[ib][j] E_i */                                                  \
                for (int ib = 0; ib < nib; ++ib)                                                   \
                    apply_##S_##_rows(dlg + (int64_t)ib * SB * d->LaP,                             \
                                      E + (n * d->L + i0 + ib) * d->LaP * d->dkP,                  \
                                      dQ + (int64_t)ib * SB * d->dkP, d);                          \
                scatter_rows_##S_(dq, dqs, dQ, d->dk, d->dkP, n, i0, nib, s0, d);               \
                /* d_emb[i] += dlg[ib]^T Q[ib] (sum over the unit's sequences) */                  \
                for (int ib = 0; ib < nib; ++ib)                                                   \
                    outer_##S_(dEp + (n * d->L + i0 + ib) * d->LaP * d->dkP,                       \
                               dlg + (int64_t)ib * SB * d->LaP, d->LaP,                            \
                               Q + (int64_t)ib * SB * d->dkP, d->dkP, SB, d->LaP, d->dkP);         \
            }                                                                                      \
            int64_t so[SB];                                                                        \
            const int64_t m = seq_offsets(so, dvs, s0, d);                                         \
            for (int64_t j = 0; j < m; ++j) /* d_v rows out */                                     \
                for (int64_t a = 0; a < d->La; ++a) {                                              \
                    T *dst = dv + n * dvs[0] + so[j] + a * dvs[3];                                 \
                    const T *src = dX + (j * d->LaP + a) * d->dvP;                                 \
                    if (dvs[4] == 1) COPY(dst, src, d->dv);                          \
                    else for (int64_t e = 0; e < d->dv; ++e) dst[e * dvs[4]] = src[e];             \
                }                                                                                  \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}

/* dQ[j][k] = sum_a dl[j][a] Ei[a][k] for the SB sequences of one position (rows j of width dkP) */
#define APPLY_ROWS(T, S_, V)                                                                       \
INLINE void apply_rows_tile_##S_(const T *restrict dl, const T *restrict Ei, T *restrict dQ,       \
                                 int64_t j0, int64_t k0, int nv, int rows, const dims_t *d) {      \
    V acc[8][2];                                                                                   \
    for (int r_ = 0; r_ < rows; ++r_) acc[r_][0] = acc[r_][1] = (V){0};                           \
    for (int64_t a = 0; a < d->La; ++a) {                                                          \
        V x[2];                                                                                    \
        for (int c = 0; c < nv; ++c) x[c] = ld_##S_(Ei + a * d->dkP + k0 + c * VW_##S_);           \
        for (int jj = 0; jj < rows; ++jj) {                                                        \
            const T s = dl[(j0 + jj) * d->LaP + a];                                                \
            for (int c = 0; c < nv; ++c) acc[jj][c] += x[c] * s;                                   \
        }                                                                                          \
    }                                                                                              \
    for (int jj = 0; jj < rows; ++jj)                                                              \
        for (int c = 0; c < nv; ++c) st_##S_(dQ + (j0 + jj) * d->dkP + k0 + c * VW_##S_, acc[jj][c]); \
}                                                                                                  \
static void apply_##S_##_rows(const T *restrict dl, const T *restrict Ei, T *restrict dQ,          \
                              const dims_t *d) {                                                   \
    if (d->dkP == VW_##S_) { /* one vector wide: all SB = 8 sequences in one tile */             \
        apply_rows_tile_##S_(dl, Ei, dQ, 0, 0, 1, 8, d);                                           \
        return;                                                                                    \
    }                                                                                              \
    for (int64_t j0 = 0; j0 < SB; j0 += 4) {                                                       \
        int64_t k0 = 0;                                                                            \
        for (; k0 + 2 * VW_##S_ <= d->dkP; k0 += 2 * VW_##S_) apply_rows_tile_##S_(dl, Ei, dQ, j0, k0, 2, 4, d); \
        if (k0 < d->dkP) apply_rows_tile_##S_(dl, Ei, dQ, j0, k0, 1, 4, d);                        \
    }                                                                                              \
}

#ifdef _OPENMP
int relative_openmp(void) { return 1; }
#else
int relative_openmp(void) { return 0; }
#endif
int relative_vector_width(int double_precision) { return double_precision ? 4 : 8; }
"""

LANE_WIDTHS = (4, 8, 16, 32)  # d_k = d_v of the lane kernels (must match the instantiations below)

_SOURCE += LANE_TRANSPOSES + r"""
/* ---- lane kernels (float32): the SB = 8 sequences of a unit in the 8 lanes of one vector ----
   Every multiply-add is dense whatever d_k and d_v are (no vector runs along a few channels).
   Buffers hold (row, channel) tiles with the lanes innermost: X[(r * C + c) * 8 + j]. */
/* X[r][c][j] = x[so[j] + r * rs + c * cs] for rows r < R, channels c < C and the m sequences j < m;
   lanes m.. and rows R..Rpad are zero. With all 8 sequences and channels (or rows) contiguous, 8 x 8
   tiles (8 x 4: 4 channels) are read as vectors and transposed in registers. */
static void lane_gather(float *restrict X, const float *restrict x, const int64_t *so, int64_t m,
                        int64_t R, int64_t Rpad, int64_t rs, int64_t C, int64_t cs) {
    if (m < SB) memset(X, 0, sizeof(float) * R * C * SB);
    if (Rpad > R) memset(X + R * C * SB, 0, sizeof(float) * (Rpad - R) * C * SB);
    int64_t r0 = 0;
#ifdef LANE_SHUFFLES
    if (m == SB && cs == 1 && C % 8 == 0) {
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
                const float *src[8];
                float *dst[8];
                for (int j = 0; j < 8; ++j) src[j] = x + so[j] + r * rs + c0;
                for (int t = 0; t < 8; ++t) dst[t] = X + (r * C + c0 + t) * SB;
                transpose8(src, dst);
            }
        return;
    }
    if (m == SB && cs == 1 && C == 4) {
        for (int64_t r = 0; r < R; ++r) {
            lv_t in[4];
            for (int j = 0; j < 4; ++j) in[j] = pair4(x + so[j] + r * rs, x + so[j + 4] + r * rs);
            transpose4(in, (lv_t *)(X + r * C * SB));
        }
        return;
    }
    if (m == SB && rs == 1) { /* positions contiguous (an NCHW map): 8 positions at a time */
        for (; r0 + 8 <= R; r0 += 8)
            for (int64_t c = 0; c < C; ++c) {
                const float *src[8];
                float *dst[8];
                for (int j = 0; j < 8; ++j) src[j] = x + so[j] + c * cs + r0;
                for (int t = 0; t < 8; ++t) dst[t] = X + ((r0 + t) * C + c) * SB;
                transpose8(src, dst);
            }
    }
#endif
    for (int64_t j = 0; j < m; ++j) {
        const float *xj = x + so[j];
        for (int64_t r = r0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) X[(r * C + c) * SB + j] = xj[r * rs + c * cs];
    }
}
/* x[so[j] + r * rs + c * cs] = X[r][c][j] for the m sequences j < m (as lane_gather, the other way) */
static void lane_scatter(float *restrict x, const float *restrict X, const int64_t *so, int64_t m,
                         int64_t R, int64_t rs, int64_t C, int64_t cs) {
    int64_t r0 = 0;
#ifdef LANE_SHUFFLES
    if (m == SB && cs == 1 && C % 8 == 0) {
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
                const float *src[8];
                float *dst[8];
                for (int t = 0; t < 8; ++t) src[t] = X + (r * C + c0 + t) * SB;
                for (int j = 0; j < 8; ++j) dst[j] = x + so[j] + r * rs + c0;
                transpose8(src, dst);
            }
        return;
    }
    if (m == SB && cs == 1 && C == 4) {
        for (int64_t r = 0; r < R; ++r) {
            lv_t out[4];
            transpose4((const lv_t *)(X + r * C * SB), out);
            for (int j = 0; j < 4; ++j) {
                *(k4_t *)(x + so[j] + r * rs) = SHUF(out[j], out[j], 0, 1, 2, 3);
                *(k4_t *)(x + so[j + 4] + r * rs) = SHUF(out[j], out[j], 4, 5, 6, 7);
            }
        }
        return;
    }
    if (m == SB && rs == 1) {
        for (; r0 + 8 <= R; r0 += 8)
            for (int64_t c = 0; c < C; ++c) {
                const float *src[8];
                float *dst[8];
                for (int t = 0; t < 8; ++t) src[t] = X + ((r0 + t) * C + c) * SB;
                for (int j = 0; j < 8; ++j) dst[j] = x + so[j] + c * cs + r0;
                transpose8(src, dst);
            }
    }
#endif
    for (int64_t j = 0; j < m; ++j) {
        float *xj = x + so[j];
        for (int64_t r = r0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) xj[r * rs + c * cs] = X[(r * C + c) * SB + j];
    }
}
static void lane_offsets(int64_t *so, const int64_t *xs, int64_t n, int64_t s0, const dims_t *d) {
    for (int j = 0; j < SB; ++j) so[j] = 0;
    seq_offsets(so, xs, s0, d);
    for (int j = 0; j < SB; ++j) so[j] += n * xs[0];
}

#define LANE_KERNELS(DK, DV)                                                                       \
enum { PB_##DK##_##DV = (DK <= 4 && DV <= 4) ? 2 : 1, /* positions per step */                     \
       EB_##DK##_##DV = DV < 8 ? DV : 8, KB_##DK##_##DV = DK < 8 ? DK : 8 };                       \
/* lg[a] = sum_k Q[k] Ei[k][a] for a < LaP (Ei: the d_k x LaP table of one position) */            \
INLINE void lane_logits_##DK##_##DV(const lv_t *restrict Q, const float *restrict Ei,               \
                                    lv_t *restrict lg, int64_t LaP) {                              \
    for (int64_t a0 = 0; a0 < LaP; a0 += 8) {                                                      \
        lv_t acc[8];                                                                               \
        for (int t = 0; t < 8; ++t) acc[t] = (lv_t){0};                                            \
        for (int k = 0; k < DK; ++k) {                                                             \
            const lv_t qk = Q[k];                                                                  \
            const float *e = Ei + k * LaP + a0;                                                    \
            for (int t = 0; t < 8; ++t) acc[t] += qk * e[t];                                       \
        }                                                                                          \
        for (int t = 0; t < 8; ++t) lg[a0 + t] = acc[t];                                           \
    }                                                                                              \
}                                                                                                  \
/* O[p][e] = sum_{a < La} lg[p][a] V[a][e] for the PB positions p (lg rows LaP apart) */          \
INLINE void lane_apply_##DK##_##DV(const lv_t *restrict lg, int64_t LaP, const lv_t *restrict V,   \
                                   lv_t *restrict O, int64_t La) {                                 \
    enum { P = PB_##DK##_##DV, EB = EB_##DK##_##DV };                                              \
    for (int e0 = 0; e0 < DV; e0 += EB) {                                                          \
        lv_t acc[P][EB];                                                                           \
        for (int p = 0; p < P; ++p)                                                                \
            for (int e = 0; e < EB; ++e) acc[p][e] = (lv_t){0};                                    \
        for (int64_t a = 0; a < La; ++a) {                                                         \
            const lv_t *va = V + a * DV + e0;                                                      \
            for (int p = 0; p < P; ++p) {                                                          \
                const lv_t l = lg[p * LaP + a];                                                    \
                for (int e = 0; e < EB; ++e) acc[p][e] += l * va[e];                               \
            }                                                                                      \
        }                                                                                          \
        for (int p = 0; p < P; ++p)                                                                \
            for (int e = 0; e < EB; ++e) O[p * DV + e0 + e] = acc[p][e];                           \
    }                                                                                              \
}                                                                                                  \
int lane_fwd_##DK##_##DV(const float *q, const int64_t *qs, const float *v, const int64_t *vs,     \
                         const float *ET, float *out, const int64_t *os, const int64_t *dd,        \
                         int64_t nt, int64_t u0, int64_t u1) {                                     \
    const dims_t dm = {dd[0], dd[1], dd[2], dd[3], dd[4], dd[5], dd[6], dd[7], dd[8], dd[9]}, *d = &dm; \
    enum { P = PB_##DK##_##DV };                                                                   \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        const int64_t Lp = d->L + P - 1; /* rows of whole steps of P positions */                  \
        const size_t nV = d->LaP * DV * SB, nQ = Lp * DK * SB, nO = Lp * DV * SB, nL = P * d->LaP * SB; \
        float *buf = NULL;                                                                         \
        if (posix_memalign((void **)&buf, 64, sizeof(float) * (nV + nQ + nO + nL))) { buf = NULL; failed = 1; } \
        float *V = buf, *Q = V + nV, *O = Q + nQ, *lg = O + nO;                                    \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t n = u % d->N, s0 = (u / d->N) * SB;                                      \
            int64_t so[SB];                                                                        \
            const int64_t m = d->S - s0 < SB ? d->S - s0 : SB;                                     \
            lane_offsets(so, vs, n, s0, d);                                                        \
            lane_gather(V, v, so, m, d->La, d->LaP, vs[3], DV, vs[4]);                             \
            lane_offsets(so, qs, n, s0, d);                                                        \
            lane_gather(Q, q, so, m, d->L, Lp, qs[3], DK, qs[4]);                                  \
            for (int64_t i = 0; i < d->L; i += P) {                                                \
                for (int p = 0; p < P; ++p) {                                                      \
                    if (i + p < d->L)                                                              \
                        lane_logits_##DK##_##DV((const lv_t *)Q + (i + p) * DK,                    \
                                                ET + (n * d->L + i + p) * d->dkP * d->LaP,         \
                                                (lv_t *)lg + p * d->LaP, d->LaP);                  \
                    else memset(lg + p * d->LaP * SB, 0, sizeof(float) * d->LaP * SB);            \
                }                                                                                  \
                lane_apply_##DK##_##DV((const lv_t *)lg, d->LaP, (const lv_t *)V,                  \
                                       (lv_t *)O + i * DV, d->La);                                 \
            }                                                                                      \
            lane_offsets(so, os, n, s0, d);                                                        \
            lane_scatter(out, O, so, m, d->L, os[3], DV, os[4]);                                   \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
int lane_bwd_##DK##_##DV(const float *q, const int64_t *qs, const float *v, const int64_t *vs,     \
                         const float *E, const float *ET, const float *g, const int64_t *gs,       \
                         float *dq, const int64_t *dqs, float *dv, const int64_t *dvs, float *dE,  \
                         const int64_t *dd, int64_t nt, int64_t u0, int64_t u1, int64_t slot0) {   \
    const dims_t dm = {dd[0], dd[1], dd[2], dd[3], dd[4], dd[5], dd[6], dd[7], dd[8], dd[9]}, *d = &dm; \
    enum { P = PB_##DK##_##DV, KB = KB_##DK##_##DV, EB = EB_##DK##_##DV, AB = EB < 8 ? 2 : 1 };   \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        const int64_t Lp = d->L + P - 1, LaP = d->LaP, dkP = d->dkP;                               \
        const size_t nV = LaP * DV * SB, nQ = Lp * DK * SB, nG = Lp * DV * SB, nL = IB * LaP * SB; \
        float *buf = NULL;                                                                         \
        if (posix_memalign((void **)&buf, 64,                                                      \
                           sizeof(float) * (2 * nV + 2 * nQ + nG + 2 * nL + SB * DK))) { buf = NULL; failed = 1; } \
        float *V = buf, *dV = V + nV, *Q = dV + nV, *dQ = Q + nQ, *G = dQ + nQ, *lg = G + nG;      \
        float *dlg = lg + nL, *qr = dlg + nL;                                                      \
        float *dEp = dE + (slot0 + THREAD_ID()) * d->N * d->L * LaP * dkP;                         \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t u = u0; u < u1; ++u) {                                                        \
            if (!buf) continue;                                                                    \
            const int64_t n = u % d->N, s0 = (u / d->N) * SB;                                      \
            int64_t so[SB];                                                                        \
            const int64_t m = d->S - s0 < SB ? d->S - s0 : SB;                                     \
            lane_offsets(so, vs, n, s0, d);                                                        \
            lane_gather(V, v, so, m, d->La, LaP, vs[3], DV, vs[4]);                                \
            lane_offsets(so, qs, n, s0, d);                                                        \
            lane_gather(Q, q, so, m, d->L, Lp, qs[3], DK, qs[4]);                                  \
            lane_offsets(so, gs, n, s0, d);                                                        \
            lane_gather(G, g, so, m, d->L, Lp, gs[3], DV, gs[4]);                                  \
            memset(dV, 0, sizeof(float) * nV);                                                     \
            const lv_t *Vv = (const lv_t *)V, *Gv = (const lv_t *)G;                               \
            lv_t *dVv = (lv_t *)dV, *lgv = (lv_t *)lg, *dlgv = (lv_t *)dlg;                        \
            /* blocks of IB positions (IB a multiple of P): logits and their gradients per step of */ \
            /* P positions, then d_v for the whole block */                                       \
            for (int64_t i0 = 0; i0 < d->L; i0 += IB) {                                            \
                const int nb = d->L - i0 < IB ? (int)(d->L - i0) : IB;                             \
                for (int b0 = 0; b0 < nb; b0 += P) {                                               \
                    const int64_t i = i0 + b0;                                                     \
                    const int np = d->L - i < P ? (int)(d->L - i) : P;                             \
                    for (int p = 0; p < P; ++p) {                                                  \
                        lv_t *l = lgv + (b0 + p) * LaP, *dl = dlgv + (b0 + p) * LaP;               \
                        if (p >= np) {                                                             \
                            memset(l, 0, sizeof(lv_t) * LaP);                                      \
                            memset(dl, 0, sizeof(lv_t) * LaP);                                     \
                            continue;                                                              \
                        }                                                                          \
                        lane_logits_##DK##_##DV((const lv_t *)Q + (i + p) * DK,                    \
                                                ET + (n * d->L + i + p) * dkP * LaP, l, LaP);      \
                        /* dl[a] = sum_e G[i + p][e] V[a][e] (V's padding rows are zero) */        \
                        const lv_t *gi = Gv + (i + p) * DV;                                        \
                        for (int64_t a0 = 0; a0 < LaP; a0 += 8) {                                  \
                            lv_t acc[8];                                                           \
                            for (int t = 0; t < 8; ++t) acc[t] = (lv_t){0};                        \
                            for (int e = 0; e < DV; ++e) {                                         \
                                const lv_t ge = gi[e];                                             \
                                for (int t = 0; t < 8; ++t) acc[t] += ge * Vv[(a0 + t) * DV + e];  \
                            }                                                                      \
                            for (int t = 0; t < 8; ++t) dl[a0 + t] = acc[t];                       \
                        }                                                                          \
                    }                                                                              \
                    /* dQ[i + p][k] = sum_a dl[p][a] E[i + p][a][k] */                             \
                    for (int k0 = 0; k0 < DK; k0 += KB) {                                          \
                        lv_t acc[P][KB];                                                           \
                        for (int p = 0; p < P; ++p)                                                \
                            for (int k = 0; k < KB; ++k) acc[p][k] = (lv_t){0};                    \
                        for (int64_t a = 0; a < d->La; ++a)                                        \
                            for (int p = 0; p < P; ++p) {                                          \
                                const int64_t ip = i + p < d->L ? i + p : i;                       \
                                const float *ea = E + ((n * d->L + ip) * LaP + a) * dkP + k0;      \
                                const lv_t dla = dlgv[(b0 + p) * LaP + a];                         \
                                for (int k = 0; k < KB; ++k) acc[p][k] += dla * ea[k];             \
                            }                                                                      \
                        for (int p = 0; p < P; ++p)                                                \
                            for (int k = 0; k < KB; ++k) ((lv_t *)dQ)[(i + p) * DK + k0 + k] = acc[p][k]; \
                    }                                                                              \
                    /* dE[i + p][a][k] += sum_j dl[p][a][j] q[j][i + p][k]: rows of k along a */  \
                    /* vector, 4 rows a at a time (4 independent chains) */                        \
                    for (int p = 0; p < np; ++p) {                                                 \
                        const float *Qi = Q + (i + p) * DK * SB;                                   \
                        for (int j = 0; j < SB; ++j)                                               \
                            for (int k = 0; k < DK; ++k) qr[j * DK + k] = Qi[k * SB + j];          \
                        const float *dl = dlg + (b0 + p) * LaP * SB;                               \
                        float *de = dEp + (n * d->L + i + p) * LaP * dkP;                          \
                        for (int64_t a0 = 0; a0 < LaP; a0 += 4) { /* padding rows: dl = 0 */       \
                            if (DK == 4) {                                                         \
                                k4_t x[4];                                                         \
                                for (int t = 0; t < 4; ++t) x[t] = *(k4_t *)(de + (a0 + t) * dkP); \
                                for (int j = 0; j < SB; ++j) {                                     \
                                    const k4_t qj = *(const k4_t *)(qr + j * DK);                  \
                                    for (int t = 0; t < 4; ++t) x[t] += dl[(a0 + t) * SB + j] * qj; \
                                }                                                                  \
                                for (int t = 0; t < 4; ++t) *(k4_t *)(de + (a0 + t) * dkP) = x[t]; \
                            } else {                                                               \
                                for (int k0 = 0; k0 < DK; k0 += 8) {                               \
                                    k8_t x[4];                                                     \
                                    for (int t = 0; t < 4; ++t) x[t] = *(k8_t *)(de + (a0 + t) * dkP + k0); \
                                    for (int j = 0; j < SB; ++j) {                                 \
                                        const k8_t qj = *(const k8_t *)(qr + j * DK + k0);         \
                                        for (int t = 0; t < 4; ++t) x[t] += dl[(a0 + t) * SB + j] * qj; \
                                    }                                                              \
                                    for (int t = 0; t < 4; ++t) *(k8_t *)(de + (a0 + t) * dkP + k0) = x[t]; \
                                }                                                                  \
                            }                                                                      \
                        }                                                                          \
                    }                                                                              \
                }                                                                                  \
                /* dV[a][e] += sum_p lg[p][a] G[i0 + p][e] over the block (AB rows a at a time) */ \
                const int nbp = (nb + P - 1) / P * P; /* whole steps: their padding rows are zero */ \
                for (int e0 = 0; e0 < DV; e0 += EB)                                               \
                    for (int64_t a0 = 0; a0 < d->La; a0 += AB) {                                   \
                        const int na = d->La - a0 < AB ? (int)(d->La - a0) : AB;                   \
                        lv_t acc[AB][EB];                                                          \
                        for (int t = 0; t < AB; ++t)                                               \
                            for (int e = 0; e < EB; ++e) acc[t][e] = dVv[(a0 + t) * DV + e0 + e];  \
                        for (int p = 0; p < nbp; ++p) {                                            \
                            const lv_t *gp = Gv + (i0 + p) * DV + e0;                              \
                            for (int t = 0; t < AB; ++t) {                                         \
                                const lv_t l = lgv[p * LaP + a0 + t];                              \
                                for (int e = 0; e < EB; ++e) acc[t][e] += l * gp[e];               \
                            }                                                                      \
                        }                                                                          \
                        for (int t = 0; t < na; ++t)                                               \
                            for (int e = 0; e < EB; ++e) dVv[(a0 + t) * DV + e0 + e] = acc[t][e];  \
                    }                                                                              \
            }                                                                                      \
            lane_offsets(so, dqs, n, s0, d);                                                       \
            lane_scatter(dq, dQ, so, m, d->L, dqs[3], DK, dqs[4]);                                 \
            lane_offsets(so, dvs, n, s0, d);                                                       \
            lane_scatter(dv, dV, so, m, d->La, dvs[3], DV, dvs[4]);                                \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}
"""

# The C above defines the kernels through macros: instantiate them once per dtype (the lane
# kernels once per width).
_SOURCE += r"""
HELPERS(float, f32, vf32, uf32)
APPLY_ROWS(float, f32, vf32)
RELATIVE_KERNELS(float, f32, vf32)
HELPERS(double, f64, vf64, uf64)
APPLY_ROWS(double, f64, vf64)
RELATIVE_KERNELS(double, f64, vf64)
LANE_KERNELS(4, 4)
LANE_KERNELS(8, 8)
LANE_KERNELS(16, 16)
LANE_KERNELS(32, 32)
"""


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, arr = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
    for s in ("f32", "f64"):
        fwd, bwd = getattr(lib, f"relative_fwd_{s}"), getattr(lib, f"relative_bwd_{s}")
        # q, qs, v, vs, ET, out, os, dims, nt, u0, u1
        fwd.argtypes = [ptr, arr, ptr, arr, ptr, ptr, arr, arr, i64, i64, i64]
        # q, qs, v, vs, E, ET, g, gs, dq, dqs, dv, dvs, dE, dims, nt, u0, u1, slot0
        bwd.argtypes = [ptr, arr, ptr, arr, ptr, ptr, ptr, arr, ptr, arr, ptr, arr, ptr, arr, i64, i64, i64, i64]
        fwd.restype = bwd.restype = ctypes.c_int
    for width in LANE_WIDTHS:
        fwd, bwd = getattr(lib, f"lane_fwd_{width}_{width}"), getattr(lib, f"lane_bwd_{width}_{width}")
        fwd.argtypes = [ptr, arr, ptr, arr, ptr, ptr, arr, arr, i64, i64, i64]
        bwd.argtypes = [ptr, arr, ptr, arr, ptr, ptr, ptr, arr, ptr, arr, ptr, arr, ptr, arr, i64, i64, i64, i64]
        fwd.restype = bwd.restype = ctypes.c_int


KERNEL = NativeKernel("relative", _SOURCE, _declare, label="relative-attention",
                      used_for="axial positional attention (batched matmuls instead)")


def native_available() -> bool:
    """Whether the compiled kernel is used for CPU tensors (builds it on first call)."""
    return KERNEL.available()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernel can run on these tensors: CPU, one dtype, float32 or float64, built."""
    return KERNEL.usable(*tensors)


def _loaded() -> ctypes.CDLL:
    lib = KERNEL.library()
    if lib is None:
        raise RuntimeError(f"relative_axis: compiled kernel unavailable ({KERNEL.failed})")
    return lib


def _round_up(x: int, width: int) -> int:
    return (x + width - 1) // width * width


def _width(dtype: torch.dtype) -> int:
    """Elements per SIMD vector of the kernel (32 bytes)."""
    return 4 if dtype == torch.float64 else 8


def _strides(t: torch.Tensor, row: int, s_lo: int):
    """``t``'s strides in the kernel's order (head, s_hi, s_lo, position or key, channel) for ``t`` shaped
    ``(N, *S, ., .)`` with the position (or key) axis at ``row`` (1 for queries, -2 otherwise) and one
    sequence axis (split here as ``s_hi * s_lo + s_lo``) or two."""
    st = list(t.stride())
    row = row % t.dim()
    seq = [d for d in range(1, t.dim() - 1) if d != row]
    s_hi, s_lo = (st[seq[0]] * s_lo, st[seq[0]]) if len(seq) == 1 else (st[seq[0]], st[seq[1]])
    return (ctypes.c_int64 * 5)(st[0], s_hi, s_lo, st[row], st[-1])


def _seq_shape(v: torch.Tensor) -> tuple[int, ...]:
    return tuple(v.shape[1:-2])


def _tables(emb: torch.Tensor):
    """``E (N, L, La_p, dk_p)`` and ``ET (N, L, dk_p, La_p)``: zero-padded to whole vectors, contiguous."""
    width = _width(emb.dtype)
    keys, d_k = emb.shape[2:]
    table = F.pad(emb, (0, _round_up(d_k, width) - d_k, 0, _round_up(keys, width) - keys)).contiguous()
    return table, table.transpose(2, 3).contiguous()


def _dims(qt: torch.Tensor, v: torch.Tensor):
    width = _width(qt.dtype)
    n, length, d_k = qt.shape[0], qt.shape[1], qt.shape[-1]
    seqs = math.prod(qt.shape[2:-1])
    keys, d_v = v.shape[-2:]
    return (ctypes.c_int64 * 10)(
        n, length, seqs, keys, d_k, d_v, _round_up(keys, width), _round_up(d_k, width), _round_up(d_v, width),
        _seq_shape(v)[-1],
    )


def _check(qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor) -> None:
    """The shapes the kernel relies on (it reads raw memory), checked in the operators themselves."""
    if not 4 <= qt.dim() <= 5 or not 4 <= v.dim() <= 5 or emb.dim() != 4:
        raise ValueError("relative_axis: q (N, L, *S, d_k), v (N, *S, L_a, d_v), emb (N, L, L_a, d_k) expected, "
                         "with one or two sequence axes S in v (and one, or v's two, in q)")
    n, length, d_k = qt.shape[0], qt.shape[1], qt.shape[-1]
    seqs = math.prod(qt.shape[2:-1])
    if (
        (v.shape[0], math.prod(_seq_shape(v))) != (n, seqs)
        or (qt.dim() == 5 and tuple(qt.shape[2:-1]) != _seq_shape(v))
        or tuple(emb.shape) != (n, length, v.shape[-2], d_k)
    ):
        raise ValueError(
            f"relative_axis: shapes q {tuple(qt.shape)}, v {tuple(v.shape)}, emb {tuple(emb.shape)} "
            "do not fit (N, L, S, d_k), (N, *S, L_a, d_v), (N, L, L_a, d_k)"
        )
    if len({qt.dtype, v.dtype, emb.dtype}) != 1:
        raise ValueError("relative_axis: q, v and emb must share a dtype")


def output_shape(qt: torch.Tensor, v: torch.Tensor, transpose_out: bool) -> tuple[int, ...]:
    """``(N, *S, L, d_v)``, or ``(N, *S, d_v, L)`` with ``transpose_out`` (``S`` as in ``v``)."""
    tail = (v.shape[-1], qt.shape[1]) if transpose_out else (qt.shape[1], v.shape[-1])
    return (qt.shape[0], *_seq_shape(v), *tail)


def empty_in_order(shape, order: list[int] | None, like: torch.Tensor) -> torch.Tensor:
    """An empty tensor of ``shape`` whose memory holds its dimensions in ``order`` (outermost first;
    ``None``: contiguous)."""
    if not order:
        return like.new_empty(shape)
    if sorted(order) != list(range(len(shape))):
        raise ValueError(f"relative_axis: out_order {order} is not a permutation of {len(shape)} dimensions")
    dense = like.new_empty([shape[d] for d in order])
    return dense.permute([order.index(d) for d in range(len(shape))])


def _units(dims) -> int:
    return dims[0] * -(-dims[2] // SB)


def relative_axis_native(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, transpose_out: bool, out_order: list[int] | None = None
) -> torch.Tensor:
    """Forward on the compiled kernel (no checks, no autograd; see :func:`relative_axis`)."""
    out = empty_in_order(output_shape(qt, v, transpose_out), out_order, v)
    if not out.numel():
        return out
    _, table_t = _tables(emb)
    dims = _dims(qt, v)
    view = out.transpose(-1, -2) if transpose_out else out  # (N, *S, L, d_v)
    s_lo = dims[9]
    _run("fwd", qt.dtype, _units(dims), lane_width(qt, v), qt.data_ptr(), _strides(qt, 1, s_lo), v.data_ptr(), _strides(v, -2, s_lo),
         table_t.data_ptr(), out.data_ptr(), _strides(view, -2, s_lo), dims)
    return out


# The lane kernel's per-unit tiles grow with L_a * d; at 64 keys of 16 channels (1024 elements per
# row tile) it measured no faster than the other kernel, at 512 (32 x 16, 64 x 8) faster.
LANE_MAX_TILE = 512


def lane_width(qt: torch.Tensor, v: torch.Tensor) -> int | None:
    """``d_k`` when the lane kernel runs these operands (float32, ``d_k = d_v`` one of
    ``LANE_WIDTHS``, ``L_a * d_k <= LANE_MAX_TILE``), else ``None`` (the kernel with vectors
    along channels and keys)."""
    d_k = qt.shape[-1]
    usable = qt.dtype == torch.float32 and d_k == v.shape[-1] and d_k in LANE_WIDTHS
    return d_k if usable and v.shape[-2] * d_k <= LANE_MAX_TILE else None


def _run(direction: str, dtype: torch.dtype, units: int, lane: int | None, *args: Any, slots: bool = False,
         threads: int | None = None) -> None:
    """The kernel ``relative_<direction>_<dtype>`` (or ``lane_<direction>_<lane>_<lane>``) over
    ``units`` work units (``NativeKernel.call``)."""
    _loaded()
    name = f"lane_{direction}_{lane}_{lane}" if lane else f"relative_{direction}_{'f64' if dtype == torch.float64 else 'f32'}"
    KERNEL.call(name, units, *args, slots=slots, threads=threads)


def empty_in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like ``t`` whose memory runs in the order of ``t``'s strides (the dense
    counterpart of a strided view), so gradients go back through the caller's views contiguously."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    return empty_in_order(tuple(t.shape), order, t)


def relative_axis_native_backward(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, grad: torch.Tensor, transpose_out: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward on the compiled kernel: ``(d_qt, d_v, d_emb)``, gradients laid out like the inputs."""
    d_qt, d_v = empty_in_memory_order(qt), empty_in_memory_order(v)
    if not d_qt.numel() or not d_v.numel():
        return d_qt.zero_(), d_v.zero_(), torch.zeros_like(emb)
    table, table_t = _tables(emb)
    dims = _dims(qt, v)
    units = _units(dims)
    slots = KERNEL.threads(units)  # one private d_emb buffer per thread, summed at the end
    partial = qt.new_zeros((slots, *table.shape))
    g = grad.transpose(-1, -2) if transpose_out else grad  # (N, *S, L, d_v)
    s_lo = dims[9]
    _run("bwd", qt.dtype, units, lane_width(qt, v), qt.data_ptr(), _strides(qt, 1, s_lo), v.data_ptr(), _strides(v, -2, s_lo),
         table.data_ptr(), table_t.data_ptr(), g.data_ptr(), _strides(g, -2, s_lo), d_qt.data_ptr(),
         _strides(d_qt, 1, s_lo), d_v.data_ptr(), _strides(d_v, -2, s_lo), partial.data_ptr(), dims, slots=True,
         threads=slots)
    d_emb = partial[0] if slots == 1 else partial.sum(0)
    if d_emb.shape != emb.shape:
        d_emb = d_emb[:, :, : emb.shape[2], : emb.shape[3]].contiguous()
    return d_qt, d_v, d_emb


# Custom operators, so FLOP counters (torch.utils.flop_counter), torch.compile and the meta device see
# one op each. Called only for CPU float32/float64 tensors (the autograd function in ``_relative.py``
# decides); they carry no autograd of their own.
@torch.library.custom_op("gsa_search::relative_axis", mutates_args=())
def relative_axis(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, transpose_out: bool, out_order: Optional[list[int]] = None
) -> torch.Tensor:
    _check(qt, v, emb)
    return relative_axis_native(qt, v, emb, transpose_out, out_order)


@relative_axis.register_fake
def _(qt, v, emb, transpose_out, out_order=None):  # type: ignore[no-untyped-def]
    _check(qt, v, emb)
    return empty_in_order(output_shape(qt, v, transpose_out), out_order, v)


@torch.library.custom_op("gsa_search::relative_axis_backward", mutates_args=())
def relative_axis_backward(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, grad: torch.Tensor, transpose_out: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(qt, v, emb)
    if tuple(grad.shape) != output_shape(qt, v, transpose_out) or grad.dtype != qt.dtype:
        raise ValueError(f"relative_axis_backward: gradient {tuple(grad.shape)} {grad.dtype} does not fit the output")
    return relative_axis_native_backward(qt, v, emb, grad, transpose_out)


@relative_axis_backward.register_fake
def _(qt, v, emb, grad, transpose_out):  # type: ignore[no-untyped-def]
    _check(qt, v, emb)
    return empty_in_memory_order(qt), empty_in_memory_order(v), torch.empty_like(emb)


def forward(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, transpose_out: bool, out_order: list[int] | None = None
) -> torch.Tensor:
    """:func:`relative_axis`, through the dispatcher only where something may be watching it."""
    if eager():
        _check(qt, v, emb)
        return relative_axis_native(qt, v, emb, transpose_out, out_order)
    return relative_axis(qt, v, emb, transpose_out, out_order)


def backward(
    qt: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, grad: torch.Tensor, transpose_out: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`relative_axis_backward`, through the dispatcher only where something may be watching it."""
    if eager() and tuple(grad.shape) == output_shape(qt, v, transpose_out) and grad.dtype == qt.dtype:
        _check(qt, v, emb)
        return relative_axis_native_backward(qt, v, emb, grad, transpose_out)
    return relative_axis_backward(qt, v, emb, grad, transpose_out)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    # torch counts 2 FLOPs per multiply-add. Forward: logits N*L*S*L_a*d_k + weighting N*L*S*L_a*d_v
    # (what the batched-matmul path's two bmm calls count). Backward: twice that (d_logits, d_v,
    # d_q, d_emb), as the batched-matmul path with kept logits; the kernel's in-tile recomputation
    # of the logits is not counted.
    def macs(qt_shape, v_shape) -> int:
        return math.prod(qt_shape) // qt_shape[-1] * v_shape[-2] * (qt_shape[-1] + v_shape[-1])

    def forward_flops(qt_shape, v_shape, *args, **kwargs) -> int:
        return 2 * macs(qt_shape, v_shape)

    def backward_flops(qt_shape, v_shape, *args, **kwargs) -> int:
        return 4 * macs(qt_shape, v_shape)

    for op, formula in ((torch.ops.gsa_search.relative_axis, forward_flops),
                        (torch.ops.gsa_search.relative_axis_backward, backward_flops)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)


_register_flop_formulas()
