"""Fused content attention, the linear-cost path of the GSA module, as one compiled kernel.

``out[b, n, :, l] = G[b, n]^T q[b, l, n]`` with ``G[b, n] = sum_l softmax_l(k[b, :, n])[l]^T v[b, l, n]``
(``d_k x d_v`` per image and head; the softmax runs over the ``L = H*W`` positions of every key
channel; no scaling). The same maths as :class:`~gsa_search.blocks.gsa.ContentAttention`, whose
PyTorch path runs it as per-head batched matmuls on ``(d x L)`` slices, with per-head
``unbind``/``stack`` copies and a softmax over a strided view. Measured on CPU (batch 64, 4 heads,
q, k, v slices of one projection output, forward + backward, 2 threads, alternating): 23.5 -> 12.1
ms on 32x32 maps with 8 channels per head, 11.7 -> 6.0 ms with 4, 13.1 -> 9.3 ms on 16x16 with 16,
5.6 -> 4.9 ms on 8x8 with 32; about even (1.3 vs 1.6 ms) on 4x4 with 32.

One custom operator, ``gsa_search::content_attention`` (backward
``gsa_search::content_attention_backward``), so FLOP counters see one opaque op. The C kernel
(built, cached and run by :mod:`~gsa_search.blocks._native`) takes one image per unit, all heads
at once, reading q, k, v in place from the projection's channels-last output:

* forward: the keys' maxima, then one pass that forms ``exp(k - max)`` (a vectorisable polynomial
  in float32, ``exp`` in float64), the sums and ``G``; then q transposed to channels-major and
  ``G^T q`` as multiply-adds along positions, written NCHW row by row. Saved for backward: ``G``, the maxima and the sums' reciprocals (``N d_k (d_v + 2)``
  numbers per image).
* backward: the output gradient transposed to positions-major (16 positions at a time), then per
  position ``dG += q g^T`` and ``dq = G g``, both as vector multiply-adds along channels (no
  horizontal sums, ``dq`` written row by row); then per position the keys' softmax again,
  ``dv = ks dG`` and ``d ks = dG v``, whose softmax backward needs one more pass for the
  per-channel sum ``sum_l ks * d ks``. The rows of q, k and v, strided slices of wider pixels, are
  prefetched a few positions ahead.

Heads of 8, 16 or 32 float32 channels run register-blocked versions of the same passes
(``CONTENT_BLOCKED``): every product is a small matrix product per head, computed over tiles of 32
positions with a block of 8 vectors of the result in registers, so an operand row is read once per
tile instead of the whole ``d_k x d_v`` matrix being updated in memory at every position; the
output gradient is read in place (no transposed copy) and the output tile is transposed in
registers on its way out. Measured against the kernels above (forward + backward, 2 threads,
alternating in one process): 1.4x faster at 16 channels on 8x8 and 32x32 maps, 1.95x at 32
channels, 1.16x at 64x64 with 16; even at 8 channels (memory-bound there); the forward alone
1.45-3.5x.

``GSA_SEARCH_NATIVE=0``, CUDA, half precision and ``query_norm=True`` keep the PyTorch path.
"""

from __future__ import annotations

import ctypes
import math

import torch

from ._native import LANE_TRANSPOSES, NativeKernel, eager

__all__ = ["content_attention", "content_usable"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
int content_openmp(void) { return 1; }
#else
int content_openmp(void) { return 0; }
#endif

#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define AHEAD 8 /* rows prefetched ahead: the rows are strided slices of wider pixels */
/* prefetch the n channels at p (one row of q, k or v): their first and last cache lines */
#define PREFETCH_ROW(p, n) do { __builtin_prefetch(p); __builtin_prefetch((p) + (n) - 1); } while (0)

/* exp(x) for x <= 0 (softmax inputs after subtracting the maximum), float32: 2^n p(r) with n the
   nearest integer to x / ln2 (rounded by adding 1.5 * 2^23), r = x - n ln2, |r| <= ln2 / 2, Cephes'
   expf polynomial; relative error below 1e-7. Branch-free, so the loops over channels vectorise
   (GCC needs -fno-trapping-math for the clamp, which changes no result). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "no-tree-loop-distribute-patterns")
#endif
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.44269504088896341f + 12582912.0f;
    const float n = t - 12582912.0f;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) * (1 << 23); /* 2^n: n sits in t's low mantissa bits */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp_f64(double x) { return exp(x); }

/* q: (B, LQ, N*DK), k: (B, L, N*DK), v: (B, L, N*DV), each with strides (s[0], s[1]) and the
   channels contiguous (LQ query positions: L, or fewer where the queries were pooled); out:
   (B, N, DV, LQ) contiguous; stats: per image G (N, DK, DV), then the maxima (N*DK) and the
   reciprocal sums (N*DK). Units are images b in [u0, u1); each thread keeps one image's queries
   transposed, (N*DK, LP), so the products over positions run along rows; the row length
   LP = LQ + 16 keeps the transposing stores off a single cache set when LQ is a power of 2. */
#define CONTENT_KERNELS(T, S, DD)                                                                  \
/* per head n: M[n, i, :] += a[n * DK + i] * b[n * DV : (n + 1) * DV] (a rank-1 update per head) */ \
static inline void rank1_##S##_##DD(T *restrict M, const T *restrict a, const T *restrict b,       \
                                    int64_t N, int64_t DK, int64_t DV) {                           \
    for (int64_t n = 0; n < N; ++n)                                                                \
        for (int64_t i = 0; i < DK; ++i) {                                                         \
            const T ai = a[n * DK + i];                                                            \
            T *restrict row = M + (n * DK + i) * DV;                                               \
            _Pragma("omp simd")                                                                    \
            for (int64_t j = 0; j < DV; ++j) row[j] += ai * b[n * DV + j];                         \
        }                                                                                          \
}                                                                                                  \
/* per head n: y[n * C : (n + 1) * C] = sum_r a[n * R + r] M[n, r, :], M (N, R, C) */           \
static inline void vecmat_##S##_##DD(T *restrict y, const T *restrict a, const T *restrict M,      \
                                     int64_t N, int64_t R, int64_t C) {                            \
    for (int64_t n = 0; n < N; ++n) {                                                              \
        T *restrict yn = y + n * C;                                                                \
        for (int64_t c = 0; c < C; ++c) yn[c] = 0;                                                 \
        for (int64_t r = 0; r < R; ++r) {                                                          \
            const T ar = a[n * R + r];                                                             \
            const T *restrict row = M + (n * R + r) * C;                                           \
            _Pragma("omp simd")                                                                    \
            for (int64_t c = 0; c < C; ++c) yn[c] += ar * row[c];                                  \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* per head n: MT[n, j, i] = M[n, i, j] */                                                        \
static inline void transpose_##S##_##DD(T *restrict MT, const T *restrict M, int64_t N, int64_t DK, \
                                        int64_t DV) {                                              \
    for (int64_t n = 0; n < N; ++n)                                                                \
        for (int64_t i = 0; i < DK; ++i)                                                           \
            for (int64_t j = 0; j < DV; ++j) MT[(n * DV + j) * DK + i] = M[(n * DK + i) * DV + j];  \
}                                                                                                  \
int content_fwd_##S##_##DD(const T *q, const int64_t *qs, const T *k, const int64_t *ks,          \
                           const T *v, const int64_t *vs, T *out, T *stats, int64_t L, int64_t LQ, \
                           int64_t N, int64_t DK0, int64_t DV0, int64_t nt, int64_t u0, int64_t u1) { \
    const int64_t DK = DD ? DD : DK0, DV = DD ? DD : DV0, CK = N * DK, GS = N * DK * DV, LP = LQ + 16; \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        T *buf = (T *)malloc(sizeof(T) * (CK + CK * LP));                                          \
        if (!buf) failed = 1;                                                                      \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t b = u0; b < u1; ++b) {                                                        \
            if (!buf) continue;                                                                    \
            T *restrict e = buf, *restrict qT = buf + CK;                                          \
            T *restrict G = stats + b * (GS + 2 * CK), *restrict m = G + GS, *restrict rs = m + CK; \
            const T *kb = k + b * ks[0], *vb = v + b * vs[0], *qb = q + b * qs[0];                 \
            for (int64_t c = 0; c < CK; ++c) m[c] = kb[c];                                         \
            for (int64_t l = 1; l < L; ++l) {                                                      \
                const T *restrict kr = kb + l * ks[1];                                             \
                if (l + AHEAD < L) PREFETCH_ROW(kr + AHEAD * ks[1], CK);                           \
                _Pragma("omp simd")                                                                \
                for (int64_t c = 0; c < CK; ++c) m[c] = kr[c] > m[c] ? kr[c] : m[c];               \
            }                                                                                      \
            for (int64_t c = 0; c < GS; ++c) G[c] = 0;                                             \
            for (int64_t c = 0; c < CK; ++c) rs[c] = 0;                                            \
            for (int64_t l = 0; l < L; ++l) { /* G[n, i, :] += exp(k[l, n, i] - m) v[l, n, :] */   \
                const T *restrict kr = kb + l * ks[1], *restrict vr = vb + l * vs[1];              \
                if (l + AHEAD < L) PREFETCH_ROW(vr + AHEAD * vs[1], N * DV);                       \
                if (l < LQ) PREFETCH_ROW(qb + l * qs[1], CK); /* for the last pass */              \
                _Pragma("omp simd")                                                                \
                for (int64_t c = 0; c < CK; ++c) {                                                 \
                    e[c] = exp_##S(kr[c] - m[c]);                                                  \
                    rs[c] += e[c];                                                                 \
                }                                                                                  \
                rank1_##S##_##DD(G, e, vr, N, DK, DV);                                             \
            }                                                                                      \
            for (int64_t c = 0; c < CK; ++c) {                                                     \
                rs[c] = 1 / rs[c];                                                                 \
                T *restrict g = G + c * DV;                                                        \
                for (int64_t j = 0; j < DV; ++j) g[j] *= rs[c];                                    \
            }                                                                                      \
            for (int64_t l = 0; l < LQ; ++l) {                                                     \
                const T *restrict qr = qb + l * qs[1];                                             \
                for (int64_t c = 0; c < CK; ++c) qT[c * LP + l] = qr[c];                            \
            }                                                                                      \
            for (int64_t n = 0; n < N; ++n) /* out[n, j, :] = sum_i G[n, i, j] q[:, n, i] */       \
                for (int64_t j = 0; j < DV; ++j) {                                                 \
                    T *restrict o = out + ((b * N + n) * DV + j) * LQ;                             \
                    const T *restrict q0 = qT + n * DK * LP;                                        \
                    const T g0 = G[n * DK * DV + j];                                               \
                    _Pragma("omp simd")                                                            \
                    for (int64_t l = 0; l < LQ; ++l) o[l] = g0 * q0[l];                            \
                    for (int64_t i = 1; i < DK; ++i) {                                             \
                        const T gij = G[(n * DK + i) * DV + j];                                    \
                        const T *restrict qi = q0 + i * LP;                                         \
                        _Pragma("omp simd")                                                        \
                        for (int64_t l = 0; l < LQ; ++l) o[l] += gij * qi[l];                      \
                    }                                                                              \
                }                                                                                  \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}                                                                                                  \
/* g: (B, N, DV, LQ) contiguous; dq: (B, LQ, N*DK), dk: (B, L, N*DK), dv: (B, L, N*DV) contiguous.
   Each thread keeps one image's output gradient transposed, (LQ, N*DV), so that every pass runs over
   positions. */                                                                                   \
int content_bwd_##S##_##DD(const T *q, const int64_t *qs, const T *k, const int64_t *ks,          \
                           const T *v, const int64_t *vs, const T *stats, const T *g,             \
                           T *dq, T *dk, T *dv, int64_t L, int64_t LQ, int64_t N, int64_t DK0,     \
                           int64_t DV0, int64_t nt, int64_t u0, int64_t u1) {                      \
    const int64_t DK = DD ? DD : DK0, DV = DD ? DD : DV0;                                          \
    const int64_t CK = N * DK, CV = N * DV, GS = N * DK * DV;                                      \
    int failed = 0;                                                                                \
    _Pragma("omp parallel num_threads(nt)")                                                        \
    {                                                                                              \
        T *buf = (T *)malloc(sizeof(T) * (3 * GS + 2 * CK + LQ * CV));                             \
        if (!buf) failed = 1;                                                                      \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t b = u0; b < u1; ++b) {                                                        \
            if (!buf) continue;                                                                    \
            T *restrict dG = buf, *restrict dGT = buf + GS, *restrict GT = dGT + GS;               \
            T *restrict e = GT + GS, *restrict sum = e + CK, *restrict gT = sum + CK;              \
            const T *restrict G = stats + b * (GS + 2 * CK), *restrict m = G + GS, *restrict rs = m + CK; \
            const T *kb = k + b * ks[0], *vb = v + b * vs[0], *qb = q + b * qs[0];                 \
            const T *gb = g + b * CV * LQ;                                                         \
            T *dqb = dq + b * LQ * CK, *dkb = dk + b * L * CK, *dvb = dv + b * L * CV;             \
            transpose_##S##_##DD(GT, G, N, DK, DV);                                                \
            for (int64_t l0 = 0; l0 < LQ; l0 += 16) { /* gT[l, c] = g[c, l], 16 positions at a time */ \
                const int64_t nl = MIN(16, LQ - l0);                                               \
                for (int64_t c = 0; c < CV; ++c) {                                                 \
                    const T *restrict gr = gb + c * LQ + l0;                                       \
                    for (int64_t t = 0; t < nl; ++t) gT[(l0 + t) * CV + c] = gr[t];                \
                }                                                                                  \
            }                                                                                      \
            for (int64_t c = 0; c < GS; ++c) dG[c] = 0;                                            \
            for (int64_t l = 0; l < LQ; ++l) { /* dG[n, i, :] += q[l, n, i] g[n, :, l]; dq = G g */ \
                const T *restrict qr = qb + l * qs[1], *restrict gr = gT + l * CV;                 \
                T *restrict dqr = dqb + l * CK;                                                    \
                if (l + AHEAD < LQ) PREFETCH_ROW(qr + AHEAD * qs[1], CK);                          \
                rank1_##S##_##DD(dG, qr, gr, N, DK, DV);                                           \
                vecmat_##S##_##DD(dqr, gr, GT, N, DV, DK);                                         \
            }                                                                                      \
            transpose_##S##_##DD(dGT, dG, N, DK, DV);                                              \
            for (int64_t c = 0; c < CK; ++c) sum[c] = 0;                                           \
            for (int64_t l = 0; l < L; ++l) { /* dv = ks dG, d ks = dG v (kept in dk for now) */  \
                const T *restrict kr = kb + l * ks[1], *restrict vr = vb + l * vs[1];              \
                T *restrict dkr = dkb + l * CK, *restrict dvr = dvb + l * CV;                      \
                if (l + AHEAD < L) {                                                               \
                    PREFETCH_ROW(kr + AHEAD * ks[1], CK);                                          \
                    PREFETCH_ROW(vr + AHEAD * vs[1], CV);                                          \
                }                                                                                  \
                _Pragma("omp simd")                                                                \
                for (int64_t c = 0; c < CK; ++c) e[c] = exp_##S(kr[c] - m[c]) * rs[c];             \
                vecmat_##S##_##DD(dvr, e, dG, N, DK, DV);                                          \
                vecmat_##S##_##DD(dkr, vr, dGT, N, DV, DK);                                        \
                _Pragma("omp simd")                                                                \
                for (int64_t c = 0; c < CK; ++c) sum[c] += e[c] * dkr[c];                          \
            }                                                                                      \
            for (int64_t l = 0; l < L; ++l) { /* softmax backward: dk = ks (d ks - sum ks d ks) */ \
                const T *restrict kr = kb + l * ks[1];                                             \
                T *restrict dkr = dkb + l * CK;                                                    \
                _Pragma("omp simd")                                                                \
                for (int64_t c = 0; c < CK; ++c)                                                   \
                    dkr[c] = exp_##S(kr[c] - m[c]) * rs[c] * (dkr[c] - sum[c]);                    \
            }                                                                                      \
        }                                                                                          \
        free(buf);                                                                                 \
    }                                                                                              \
    return failed;                                                                                 \
}

CONTENT_KERNELS(float, f32, 0)
CONTENT_KERNELS(float, f32, 4)
CONTENT_KERNELS(double, f64, 0)
"""

# Register-blocked kernels for float32 heads of 8, 16 or 32 channels (d_k = d_v = DD). Every
# product of the content path is a small matrix product per head; these run them over tiles of
# TB positions with a block of R rows x DD channels of the result in registers (8 vectors), so a
# product reads each operand row once per tile instead of updating the whole d_k x d_v matrix in
# memory at every position. Same passes, same saved statistics as the kernels above.
_BLOCKED = r'''
#define INLINE static inline __attribute__((always_inline))
''' + LANE_TRANSPOSES + r'''
#define TB 32 /* positions per tile */
/* the n rows of C channels at p, p + s, ...: their first and last cache lines */
static inline void prefetch_rows(const float *p, int64_t s, int64_t C, int64_t n) {
    for (int64_t t = 0; t < n; ++t) PREFETCH_ROW(p + t * s, C);
}
/* e[t * C + c] = exp(k[t * ks + c] - m[c]), times scale[c] unless scale is NULL, for the n key rows
   of a tile; the next n_next key rows and this tile's value rows (v, vs apart) are prefetched */
static inline void exp_tile(float *restrict e, const float *k, int64_t ks, const float *restrict m,
                            const float *restrict scale, int64_t C, int64_t n, int64_t n_next, const float *v,
                            int64_t vs) {
    if (n_next > 0) prefetch_rows(k + n * ks, ks, C, n_next);
    prefetch_rows(v, vs, C, n);
    for (int64_t t = 0; t < n; ++t) {
        const float *restrict kr = k + t * ks;
        float *restrict et = e + t * C;
        if (scale) {
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) et[c] = exp_f32(kr[c] - m[c]) * scale[c];
        } else {
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) et[c] = exp_f32(kr[c] - m[c]);
        }
    }
}
/* o[j * os + t] = x[t * C + j] for t < n, j < C (C a multiple of 8): a tile of position rows
   written to channel rows, 8 x 8 blocks transposed in registers where the compiler can */
static void store_transposed(float *restrict o, int64_t os, const float *restrict x, int C, int64_t n) {
    int64_t t0 = 0;
#ifdef LANE_SHUFFLES
    for (; t0 + 8 <= n; t0 += 8)
        for (int c0 = 0; c0 < C; c0 += 8) {
            const float *src[8];
            float *dst[8];
            for (int j = 0; j < 8; ++j) src[j] = x + (t0 + j) * C + c0;
            for (int t = 0; t < 8; ++t) dst[t] = o + (c0 + t) * os + t0;
            transpose8(src, dst);
        }
#endif
    for (int j = 0; j < C; ++j)
        for (int64_t t = t0; t < n; ++t) o[j * os + t] = x[t * C + j];
}
typedef float cv8 __attribute__((vector_size(32)));
typedef float cv8u __attribute__((vector_size(32), aligned(4))); /* unaligned rows */
#define LOADU(p) (*(const cv8u *)(p))
#define STOREU(p, x) (*(cv8u *)(p) = (x))
#define CONTENT_BLOCKED(DD)
enum { V_##DD = DD / 8, R_##DD = DD == 8 ? 8 : DD == 16 ? 4 : 2 }; /* vectors per row, rows per block */
/* M[r] (DD) += sum_t a[t * as + r * ar] b[t] over n rows, b[t] = b + t * bs (DD contiguous) */
static inline void outer_acc_##DD(float *restrict M, const float *restrict a, int64_t as, int64_t ar,
                                  const float *restrict b, int64_t bs, int64_t n) {
    enum { V = V_##DD, R = R_##DD };
    for (int i0 = 0; i0 < DD; i0 += R) {
        cv8 acc[R][V];
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < V; ++v) acc[r][v] = LOADU(M + (i0 + r) * DD + 8 * v);
        for (int64_t t = 0; t < n; ++t) {
            const float *at = a + t * as + i0 * ar, *bt = b + t * bs;
            cv8 bv[V];
            for (int v = 0; v < V; ++v) bv[v] = LOADU(bt + 8 * v);
            for (int r = 0; r < R; ++r) {
                const float s = at[r * ar];
                for (int v = 0; v < V; ++v) acc[r][v] += s * bv[v];
            }
        }
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < V; ++v) STOREU(M + (i0 + r) * DD + 8 * v, acc[r][v]);
    }
}
/* out[t] (DD) = sum_k a[t * as + k * ak] B[k] for n rows, out[t] = out + t * os, B (DD x DD) */
static inline void rows_mm_##DD(float *restrict out, int64_t os, const float *restrict a, int64_t as,
                                int64_t ak, const float *restrict B, int64_t n) {
    enum { V = V_##DD, R = R_##DD };
    int64_t t0 = 0;
    for (; t0 + R <= n; t0 += R) {
        cv8 acc[R][V];
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < V; ++v) acc[r][v] = (cv8){0};
        for (int k = 0; k < DD; ++k) {
            cv8 bv[V];
            for (int v = 0; v < V; ++v) bv[v] = LOADU(B + k * DD + 8 * v);
            for (int r = 0; r < R; ++r) {
                const float s = a[(t0 + r) * as + k * ak];
                for (int v = 0; v < V; ++v) acc[r][v] += s * bv[v];
            }
        }
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < V; ++v) STOREU(out + (t0 + r) * os + 8 * v, acc[r][v]);
    }
    for (; t0 < n; ++t0) {
        cv8 acc[V];
        for (int v = 0; v < V; ++v) acc[v] = (cv8){0};
        for (int k = 0; k < DD; ++k) {
            const float s = a[t0 * as + k * ak];
            for (int v = 0; v < V; ++v) acc[v] += s * LOADU(B + k * DD + 8 * v);
        }
        for (int v = 0; v < V; ++v) STOREU(out + t0 * os + 8 * v, acc[v]);
    }
}
static inline void transpose_blk_##DD(float *restrict MT, const float *restrict M, int64_t N) {
    for (int64_t n = 0; n < N; ++n)
        for (int i = 0; i < DD; ++i)
            for (int j = 0; j < DD; ++j) MT[(n * DD + j) * DD + i] = M[(n * DD + i) * DD + j];
}
int content_fwd_f32_##DD(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                         const float *v, const int64_t *vs, float *out, float *stats, int64_t L,
                         int64_t LQ, int64_t N, int64_t DK0, int64_t DV0, int64_t nt, int64_t u0,
                         int64_t u1) {
    const int64_t CK = N * DD, GS = N * DD * DD;
    int failed = 0;
    _Pragma("omp parallel num_threads(nt)")
    {
        float *buf = (float *)malloc(sizeof(float) * (TB * CK + TB * DD));
        if (!buf) failed = 1;
        _Pragma("omp for schedule(static)")
        for (int64_t b = u0; b < u1; ++b) {
            if (!buf) continue;
            float *restrict e = buf, *restrict ot = buf + TB * CK;
            float *restrict G = stats + b * (GS + 2 * CK), *restrict m = G + GS, *restrict rs = m + CK;
            const float *kb = k + b * ks[0], *vb = v + b * vs[0], *qb = q + b * qs[0];
            for (int64_t c = 0; c < CK; ++c) m[c] = kb[c];
            for (int64_t l = 1; l < L; ++l) {
                const float *restrict kr = kb + l * ks[1];
                if (l + AHEAD < L) PREFETCH_ROW(kr + AHEAD * ks[1], CK);
                _Pragma("omp simd")
                for (int64_t c = 0; c < CK; ++c) m[c] = kr[c] > m[c] ? kr[c] : m[c];
            }
            for (int64_t c = 0; c < GS; ++c) G[c] = 0;
            for (int64_t c = 0; c < CK; ++c) rs[c] = 0;
            for (int64_t l0 = 0; l0 < L; l0 += TB) { /* G[n] += exp(k - m)^T v over a tile */
                const int64_t nl = MIN(TB, L - l0);
                exp_tile(e, kb + l0 * ks[1], ks[1], m, NULL, CK, nl, MIN(TB, L - l0 - TB), vb + l0 * vs[1], vs[1]);
                for (int64_t t = 0; t < nl; ++t) {
                    const float *restrict et = e + t * CK;
                    _Pragma("omp simd")
                    for (int64_t c = 0; c < CK; ++c) rs[c] += et[c];
                }
                for (int64_t n = 0; n < N; ++n)
                    outer_acc_##DD(G + n * DD * DD, e + n * DD, CK, 1, vb + l0 * vs[1] + n * DD, vs[1], nl);
            }
            for (int64_t c = 0; c < CK; ++c) {
                rs[c] = 1 / rs[c];
                float *restrict g = G + c * DD;
                for (int j = 0; j < DD; ++j) g[j] *= rs[c];
            }
            for (int64_t l0 = 0; l0 < LQ; l0 += TB) { /* out[n, j, l] = sum_i q[l, n, i] G[n, i, j] */
                const int64_t nl = MIN(TB, LQ - l0);
                if (l0 + TB < LQ) prefetch_rows(qb + (l0 + TB) * qs[1], qs[1], CK, MIN(TB, LQ - l0 - TB));
                for (int64_t n = 0; n < N; ++n) {
                    rows_mm_##DD(ot, DD, qb + l0 * qs[1] + n * DD, qs[1], 1, G + n * DD * DD, nl);
                    store_transposed(out + (b * N + n) * DD * LQ + l0, LQ, ot, DD, nl);
                }
            }
        }
        free(buf);
    }
    return failed;
}
int content_bwd_f32_##DD(const float *q, const int64_t *qs, const float *k, const int64_t *ks,
                         const float *v, const int64_t *vs, const float *stats, const float *g,
                         float *dq, float *dk, float *dv, int64_t L, int64_t LQ, int64_t N, int64_t DK0,
                         int64_t DV0, int64_t nt, int64_t u0, int64_t u1) {
    const int64_t CK = N * DD, GS = N * DD * DD;
    int failed = 0;
    _Pragma("omp parallel num_threads(nt)")
    {
        float *buf = (float *)malloc(sizeof(float) * (3 * GS + CK + TB * CK));
        if (!buf) failed = 1;
        _Pragma("omp for schedule(static)")
        for (int64_t b = u0; b < u1; ++b) {
            if (!buf) continue;
            float *restrict dG = buf, *restrict dGT = buf + GS, *restrict GT = dGT + GS;
            float *restrict sum = GT + GS, *restrict e = sum + CK;
            const float *restrict G = stats + b * (GS + 2 * CK), *restrict m = G + GS, *restrict rs = m + CK;
            const float *kb = k + b * ks[0], *vb = v + b * vs[0], *qb = q + b * qs[0];
            const float *gb = g + b * CK * LQ;
            float *dqb = dq + b * LQ * CK, *dkb = dk + b * L * CK, *dvb = dv + b * L * CK;
            transpose_blk_##DD(GT, G, N);
            for (int64_t c = 0; c < GS; ++c) dGT[c] = 0;
            for (int64_t l0 = 0; l0 < LQ; l0 += TB) { /* dG[n]^T += g q; dq[l, n] = G[n] g[l, n] */
                const int64_t nl = MIN(TB, LQ - l0);
                if (l0 + TB < LQ) prefetch_rows(qb + (l0 + TB) * qs[1], qs[1], CK, MIN(TB, LQ - l0 - TB));
                for (int64_t n = 0; n < N; ++n) {
                    const float *gn = gb + n * DD * LQ + l0; /* g[n, j, l0 + t] at t + j * LQ */
                    outer_acc_##DD(dGT + n * DD * DD, gn, 1, LQ, qb + l0 * qs[1] + n * DD, qs[1], nl);
                    rows_mm_##DD(dqb + l0 * CK + n * DD, CK, gn, 1, LQ, GT + n * DD * DD, nl);
                }
            }
            transpose_blk_##DD(dG, dGT, N);
            for (int64_t c = 0; c < CK; ++c) sum[c] = 0;
            for (int64_t l0 = 0; l0 < L; l0 += TB) { /* dv = ks dG, d ks = dG v (kept in dk for now) */
                const int64_t nl = MIN(TB, L - l0);
                /* the softmax: exp(k - m) / sum */
                exp_tile(e, kb + l0 * ks[1], ks[1], m, rs, CK, nl, MIN(TB, L - l0 - TB), vb + l0 * vs[1], vs[1]);
                for (int64_t n = 0; n < N; ++n) {
                    rows_mm_##DD(dvb + l0 * CK + n * DD, CK, e + n * DD, CK, 1, dG + n * DD * DD, nl);
                    rows_mm_##DD(dkb + l0 * CK + n * DD, CK, vb + l0 * vs[1] + n * DD, vs[1], 1, dGT + n * DD * DD,
                                 nl);
                }
                for (int64_t t = 0; t < nl; ++t) {
                    const float *restrict et = e + t * CK, *restrict dkr = dkb + (l0 + t) * CK;
                    _Pragma("omp simd")
                    for (int64_t c = 0; c < CK; ++c) sum[c] += et[c] * dkr[c];
                }
            }
            for (int64_t l = 0; l < L; ++l) { /* softmax backward: dk = ks (d ks - sum ks d ks) */
                const float *restrict kr = kb + l * ks[1];
                float *restrict dkr = dkb + l * CK;
                if (l + AHEAD < L) PREFETCH_ROW(kr + AHEAD * ks[1], CK);
                _Pragma("omp simd")
                for (int64_t c = 0; c < CK; ++c) dkr[c] = exp_f32(kr[c] - m[c]) * rs[c] * (dkr[c] - sum[c]);
            }
        }
        free(buf);
    }
    return failed;
}
'''
# one C macro from the body above: every line but the last continued
_prelude, _body = _BLOCKED.split("#define CONTENT_BLOCKED(DD)\n")
_SOURCE += _prelude + "#define CONTENT_BLOCKED(DD) " + " \\\n".join(_body.rstrip("\n").split("\n")) + "\n"
_SOURCE += "CONTENT_BLOCKED(8)\nCONTENT_BLOCKED(16)\nCONTENT_BLOCKED(32)\n"

_VARIANTS = ("f32_0", "f32_4", "f32_8", "f32_16", "f32_32", "f64_0")


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, strides = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    for s in _VARIANTS:
        fwd, bwd = getattr(lib, f"content_fwd_{s}"), getattr(lib, f"content_bwd_{s}")
        # q, qs, k, ks, v, vs, out, stats, L, LQ, N, DK, DV, nt, u0, u1
        fwd.argtypes = [ptr, strides, ptr, strides, ptr, strides, ptr, ptr] + [i64] * 8
        # q, qs, k, ks, v, vs, stats, g, dq, dk, dv, L, LQ, N, DK, DV, nt, u0, u1
        bwd.argtypes = [ptr, strides, ptr, strides, ptr, strides, ptr, ptr, ptr, ptr, ptr] + [i64] * 8
        fwd.restype = bwd.restype = ctypes.c_int


KERNEL = NativeKernel("content", _SOURCE, _declare, label="content-attention",
                      used_for="the GSA content path")


def content_usable(*tensors: torch.Tensor) -> bool:
    """Whether :func:`content_attention` can run on these tensors (CPU, one dtype, float32 or
    float64, kernel built)."""
    return KERNEL.usable(*tensors)


def _packed(t: torch.Tensor) -> torch.Tensor:
    """``(B, L, N, d)`` with the heads' channels contiguous (``N*d`` numbers per position), as the
    kernel reads them; a copy only when they are not."""
    return t if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] else t.contiguous()


def _strides2(t: torch.Tensor):
    return (ctypes.c_int64 * 2)(t.stride(0), t.stride(1))


def _stats_size(n: int, d_k: int, d_v: int) -> int:
    return n * d_k * (d_v + 2)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"content_attention: queries (B, L_q, N, d_k), keys (B, L, N, d_k) and values (B, L, N, d_v) "
            f"expected, got {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if (q.shape[0], *q.shape[2:]) != (k.shape[0], *k.shape[2:]) or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"content_attention: queries {tuple(q.shape)}, keys {tuple(k.shape)} and values "
            f"{tuple(v.shape)} do not fit (B, L_q, N, d_k), (B, L, N, d_k), (B, L, N, d_v)"
        )
    b, length, n, _ = q.shape
    if not q.shape[-1] or not v.shape[-1]:
        raise ValueError(f"content_attention: heads need at least one key and one value channel, got "
                         f"d_k={q.shape[-1]}, d_v={v.shape[-1]}")
    if grad is not None and tuple(grad.shape) != (b, n, v.shape[-1], length):
        raise ValueError(
            f"content_attention: gradient {tuple(grad.shape)} does not match the output {(b, n, v.shape[-1], length)}"
        )
    tensors = [t for t in (q, k, v, grad) if t is not None]
    if not content_usable(*tensors):
        raise ValueError(
            "content_attention: CPU float32 or float64 tensors of one dtype and the compiled kernel are "
            "needed (ContentAttention's PyTorch path runs everywhere else)"
        )


def _call(name: str, q: torch.Tensor, v: torch.Tensor, units: int, *args) -> None:
    """The kernel ``name`` for the dtype, specialised to the channel count when ``d_k == d_v`` is
    one of the compiled widths."""
    variant = "f64_0" if v.dtype == torch.float64 else f"f32_{v.shape[-1]}"
    if q.shape[-1] != v.shape[-1] or variant not in _VARIANTS:
        variant = "f64_0" if v.dtype == torch.float64 else "f32_0"
    KERNEL.call(f"{name}_{variant}", units, *args)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and the statistics saved for backward, on the kernel (checks, no autograd)."""
    _check(q, k, v)
    q, k, v = _packed(q), _packed(k), _packed(v)
    b, length, n, d_k = q.shape
    d_v = v.shape[-1]
    out = torch.empty(b, n, d_v, length, dtype=v.dtype, device=v.device)  # the kernel writes all of it
    stats = torch.zeros(b, _stats_size(n, d_k, d_v), dtype=v.dtype, device=v.device)
    if out.numel() and k.shape[1]:
        _call("content_fwd", q, v, b, q.data_ptr(), _strides2(q), k.data_ptr(), _strides2(k), v.data_ptr(),
              _strides2(v), out.data_ptr(), stats.data_ptr(), k.shape[1], length, n, d_k, d_v)
    else:  # no keys: G is an empty sum
        out.zero_()
    return out, stats


@torch.library.custom_op("gsa_search::content_attention", mutates_args=())
def _content_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v)


@_content_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, length, n, d_k = q.shape
    d_v = v.shape[-1]
    return v.new_empty(b, n, d_v, length), v.new_empty(b, _stats_size(n, d_k, d_v))


def _backward_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` on the kernel (checks, no autograd)."""
    _check(q, k, v, grad)
    q, k, v, grad = _packed(q), _packed(k), _packed(v), grad.contiguous()
    b, length, n, d_k = q.shape
    d_v = v.shape[-1]
    if tuple(stats.shape) != (b, _stats_size(n, d_k, d_v)) or not stats.is_contiguous():
        raise ValueError(f"content_attention_backward: saved statistics {tuple(stats.shape)} do not fit the inputs")
    dq = torch.empty(b, length, n, d_k, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if not dq.numel() or not dk.numel():  # no positions (or images): nothing to spread the gradient over
        return dq.zero_(), dk.zero_(), dv.zero_()
    _call("content_bwd", q, v, b, q.data_ptr(), _strides2(q), k.data_ptr(), _strides2(k), v.data_ptr(),
          _strides2(v), stats.data_ptr(), grad.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
          k.shape[1], length, n, d_k, d_v)
    return dq, dk, dv


@torch.library.custom_op("gsa_search::content_attention_backward", mutates_args=())
def _content_backward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(q, k, v, stats, grad)


@_content_backward_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad: torch.Tensor, grad_stats: torch.Tensor | None):
    q, k, v, stats = ctx.saved_tensors
    return _content_backward_op(q, k, v, stats, grad)


_content_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    # K^T V and G^T Q: B * N * (L + L_q) * d_k * d_v multiply-adds (torch counts 2 FLOPs each);
    # the backward does that work twice
    def forward_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
        return 2 * (math.prod(q_shape) + math.prod(k_shape)) * v_shape[-1]

    def backward_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
        return 2 * forward_flops(q_shape, k_shape, v_shape)

    for op, formula in ((torch.ops.gsa_search.content_attention, forward_flops),
                        (torch.ops.gsa_search.content_attention_backward, backward_flops)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)


_register_flop_formulas()


class _ContentAttention(torch.autograd.Function):
    """The operators through autograd. In plain eager execution the kernels are called directly:
    the custom operators' dispatch and their autograd wrapper cost about 300 us per forward and
    backward, as much as the kernels themselves on small batches. Under a dispatch mode (FLOP
    counters, fake tensors) or compilation, the operators run, so those see one op each way."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        out, stats = _forward(q, k, v) if eager() else _content_op(q, k, v)
        ctx.save_for_backward(q, k, v, stats)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, stats = ctx.saved_tensors
        if eager():
            return _backward_impl(q, k, v, stats, grad)
        return _content_backward_op(q, k, v, stats, grad)


def content_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out[b, n, :, l] = (softmax_L(k[b, :, n])^T v[b, :, n])^T q[b, l, n]``, one image at a time.

    ``q``: ``(B, L_q, N, d_k)``, ``k``: ``(B, L, N, d_k)``, ``v``: ``(B, L, N, d_v)`` (strided views
    whose heads' channels are contiguous are read in place). The queries may be fewer than the
    keys: a stride-2 block passes its pooled queries (the output is linear in them, so pooling the
    queries equals pooling the output). Returns ``(B, N, d_v, L_q)``, contiguous (NCHW once ``L_q``
    is unflattened); differentiable in all three. CPU float32/float64 with the compiled kernel only
    (see :func:`content_usable`).
    """
    return _ContentAttention.apply(q, k, v)
