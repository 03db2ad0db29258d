"""Relative attention along one axis, the kernel of GSA's positional attention.

Status: stable; checked by gradcheck and against plain-loop references in the tests, on both
implementations.

``out[n, s, i] = sum_a (q[n, i, s] . emb[n, i, a]) v[n, s, a]`` for ``N`` heads,
``S`` independent sequences (batch x the other axis) of length ``L``, with ``emb`` the relative
embeddings expanded to absolute pairs (zero outside the span). Queries come position-major,
``(N, L, S, d_k)``, the layout in which the logits are one batched matmul per ``(head, position)``;
values and the output come sequence-major, ``(N, S, L, d)`` (or, for the output, ``(N, S, d_v, L)``:
the layout of an NCHW map, so a block's last step writes its result without a transpose).

The operands may be strided views (of a channels-last projection, say): any layout works in which
each ``(S, d_k)`` / ``(L, d_v)`` matrix is row- or column-major, which batched BLAS reads in place,
so callers pass views and nothing is permuted through memory here, forward or backward.

Two implementations behind one autograd function (``_RelativeAxisAttention``, the op FLOP counters
see): CPU float32/float64 tensors run the fused C kernel of ``_relative_native.py`` (one call
forward, one backward, logits never leave a thread-local tile, so none are saved; it reads any
strides and can write the result in any memory order); everything else (CUDA, meta, bfloat16 under
autocast, no C compiler, ``GSA_SEARCH_NATIVE=0``) runs the batched matmuls below.

Why a custom autograd function for the batched matmuls: the two contractions want different
layouts of the ``(L_i, L_a)`` logits (batched over ``(head, i)`` to compute them, over
``(head, sequence)`` to apply them), and
``einsum`` reconciles them with full copies of the logits and, in backward, with per-matrix copies
of non-BLAS-compatible operands. Here every batched matmul reads the logits in place through
strided views, and the logits are processed in cache-sized chunks; they are kept for backward,
or, with ``recompute=True`` (GSA's ``memory_efficient`` option), formed again there so that no
``L x L`` logits are among the saved activations.
"""

from __future__ import annotations

import math

import torch

from . import _relative_native as _native

__all__ = ["relative_axis_attention"]


# Logits are formed and consumed in chunks of sequences holding about this many elements (2 MiB of
# float32): a chunk stays in cache between the matmul that writes it and the one that reads it.
CHUNK_ELEMENTS = 1 << 19


def _chunks(sequences: int, length: int, keys: int) -> list[slice]:
    size = max(1, CHUNK_ELEMENTS // (length * keys))
    return [slice(start, min(sequences, start + size)) for start in range(0, sequences, size)]


def _blas_ok(t: torch.Tensor) -> bool:
    """Whether every matrix of a batch is row- or column-major (what batched BLAS reads in place)."""
    s0, s1 = t.stride(-2), t.stride(-1)
    return (s1 == 1 and s0 >= max(1, t.shape[-1])) or (s0 == 1 and s1 >= max(1, t.shape[-2]))


def _blas(t: torch.Tensor) -> torch.Tensor:
    return t if _blas_ok(t) else t.contiguous()


def _bmm_into(dest: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dest = a @ b``, written in place when ``dest`` is contiguous (BLAS writes only those fast)."""
    if dest.is_contiguous():
        torch.bmm(a, b, out=dest)
    else:
        dest.copy_(torch.bmm(a, b))


class _RelativeAxisAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qt, v, emb, transpose_out: bool, recompute: bool, out_order):  # type: ignore[override]
        # qt: (N, L_i, *S, d_k), v: (N, *S, L_a, d_v) (two sequence axes only on the native path);
        # emb: (N, L_i, L_a, d_k)
        ctx.native = _native.usable(qt, v, emb)
        if ctx.native:  # the fused kernel keeps no logits: it forms them again in backward
            ctx.transpose_out = transpose_out
            ctx.save_for_backward(qt, v, emb)
            return _native.forward(qt, v, emb, transpose_out, out_order)
        device = qt.device.type
        if not torch.amp.is_autocast_available(device):  # e.g. the meta device
            return _RelativeAxisAttention._forward(ctx, qt, v, emb, transpose_out, recompute)
        with torch.autocast(device, enabled=False):  # the inputs share one dtype already
            return _RelativeAxisAttention._forward(ctx, qt, v, emb, transpose_out, recompute)

    @staticmethod
    def _forward(ctx, qt, v, emb, transpose_out: bool, recompute: bool):  # type: ignore[no-untyped-def]
        n, length, s, _ = qt.shape
        d_v = v.shape[-1]
        keys = emb.transpose(2, 3)  # (N, L_i, d_k, L_a)
        out = v.new_empty((n, s, d_v, length) if transpose_out else (n, s, length, d_v))
        kept = []
        for h in range(n):
            for part in _chunks(s, length, v.shape[2]):
                logits = torch.bmm(qt[h, :, part], keys[h])  # (L_i, S_c, L_a)
                if not recompute:
                    kept.append(logits)
                if transpose_out:  # out^T = V^T A^T: (S_c, d_v, L_a) @ (S_c, L_a, L_i)
                    a, b = v[h, part].transpose(1, 2), logits.permute(1, 2, 0)
                else:  # out = A V: (S_c, L_i, L_a) @ (S_c, L_a, d_v)
                    a, b = logits.transpose(0, 1), v[h, part]
                torch.bmm(a, b, out=out[h, part])
        ctx.transpose_out = transpose_out
        ctx.save_for_backward(qt, v, emb, *kept)  # saved tensors, so memory accounting sees them
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.native:
            qt, v, emb = ctx.saved_tensors
            d_qt, d_v, d_emb = _native.backward(qt, v, emb, grad, ctx.transpose_out)
            return d_qt, d_v, d_emb, None, None, None
        return (*_RelativeAxisAttention._backward(ctx, grad), None, None, None)

    @staticmethod
    def _backward(ctx, grad):  # type: ignore[no-untyped-def]
        qt, v, emb, *logits_kept = ctx.saved_tensors
        n, length, s, _ = qt.shape
        keys = emb.transpose(2, 3)
        # gradients laid out like the callers' tensors, so that autograd hands contiguous gradients
        # back through the callers' views (chunks BLAS cannot write in place are copied, in cache)
        d_qt = _native.empty_in_memory_order(qt)
        d_v = _native.empty_in_memory_order(v)
        d_emb = torch.zeros_like(emb)
        kept = iter(logits_kept)
        for h in range(n):
            for part in _chunks(s, length, v.shape[2]):
                g = grad[h, part]
                g = _blas(g.transpose(1, 2) if ctx.transpose_out else g)  # (S_c, L_i, d_v)
                logits = next(kept) if logits_kept else torch.bmm(qt[h, :, part], keys[h])  # (L_i, S_c, L_a)
                attn = logits.transpose(0, 1)  # (S_c, L_i, L_a)
                _bmm_into(d_v[h, part], attn.transpose(1, 2), g)
                d_logits = torch.bmm(g, v[h, part].transpose(1, 2)).transpose(0, 1)  # (L_i, S_c, L_a)
                _bmm_into(d_qt[h, :, part], d_logits, emb[h])
                d_emb[h].baddbmm_(d_logits.transpose(1, 2), qt[h, :, part])
        return d_qt, d_v, d_emb


def relative_axis_attention(
    qt: torch.Tensor,
    v: torch.Tensor,
    emb: torch.Tensor,
    *,
    transpose_out: bool = False,
    recompute: bool = False,
    out_order: list[int] | None = None,
) -> torch.Tensor:
    """``(N, L, S, d_k), (N, *S, L_a, d_v), (N, L, L_a, d_k) -> (N, *S, L, d_v)``.

    The values (and so the result) may split the ``S`` sequences into two axes ``(S_hi, S_lo)``
    (e.g. the column step's images and columns, read in place from a channels-last map); the
    queries may keep one or split them the same way, ``(N, L, S_hi, S_lo, d_k)`` (read in place by
    the compiled kernel; the batched matmuls copy them where the two axes do not merge). Each
    sequence's ``L_a`` keys are usually its own ``L`` positions; the 2D path gives each row the keys
    of all the rows in its window instead.

    With ``transpose_out`` the result is ``(N, *S, d_v, L)`` instead: positions innermost, the
    layout of an NCHW map. The result is contiguous unless ``out_order`` names the order in which
    its dimensions lie in memory, outermost first (``[1, 3, 2, 0, 4]`` for ``(N, B, W, H, d_v)``
    stored as ``(B, H, W, N, d_v)``: channels last). ``recompute`` keeps no logits for backward on
    the batched-matmul path and forms them again there: ``N*S*L*L`` fewer elements stored, one more
    matmul pass (about 15% of the kernel's time); the fused CPU kernel never keeps them. See the
    module docstring.
    """
    seqs = tuple(v.shape[1:-2])
    n, length, d_k = qt.shape[0], qt.shape[1], qt.shape[-1]
    if (
        qt.dim() not in (4, 5)
        or not 1 <= len(seqs) <= 2
        or (v.shape[0], math.prod(seqs)) != (n, math.prod(qt.shape[2:-1]))
        or (qt.dim() == 5 and tuple(qt.shape[2:-1]) != seqs)
        or tuple(emb.shape) != (n, length, v.shape[-2], d_k)
    ):
        raise ValueError(
            f"relative_axis_attention: shapes q {tuple(qt.shape)}, v {tuple(v.shape)}, emb {tuple(emb.shape)} "
            "do not fit (N, L, S, d_k), (N, *S, L_a, d_v), (N, L, L_a, d_k) with one or two sequence axes S "
            "(q may split S as v does)"
        )
    # one dtype throughout, the queries' (under autocast: the projection's lower precision); the
    # casts are outside the function, so autograd returns each gradient in its input's dtype
    v, emb = v.to(qt.dtype), emb.to(qt.dtype)
    if _native.usable(qt, v, emb):  # the fused kernel reads any strides and writes any layout
        return _RelativeAxisAttention.apply(qt, v, emb.contiguous(), transpose_out, recompute, out_order)
    if len(seqs) > 1:  # the batched matmuls take one sequence axis
        v = v.flatten(1, 2)
    qt = qt.reshape(n, length, -1, d_k)  # a copy where q's two sequence axes do not merge
    qt = qt if _blas_ok(qt[0]) else qt.contiguous()
    v = v if _blas_ok(v[0]) else v.contiguous()
    out = _RelativeAxisAttention.apply(qt, v, emb.contiguous(), transpose_out, recompute, None).unflatten(1, seqs)
    if out_order:
        out = _native.empty_in_order(out.shape, list(out_order), out).copy_(out)
    return out
