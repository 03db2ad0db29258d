"""Relative attention along one axis, the kernel of GSA's positional attention.

Status: stable; checked by gradcheck and against plain-loop references in the tests.

``out[n, s, i] = sum_a (q[n, i, s] . emb[n, i, a]) v[n, s, a]`` for ``N`` heads,
``S`` independent sequences (batch x the other axis) of length ``L``, with ``emb`` the relative
embeddings expanded to absolute pairs (zero outside the span). Queries come position-major,
``(N, L, S, d_k)``, the layout in which the logits are one batched matmul per ``(head, position)``;
values and the output come sequence-major, ``(N, S, L, d)`` (or, for the output, ``(N, S, d_v, L)``:
the layout of an NCHW map, so a block's last step writes its result without a transpose).

The operands may be strided views (of a channels-last projection, say): any layout works in which
each ``(S, d_k)`` / ``(L, d_v)`` matrix is row- or column-major, which batched BLAS reads in place,
so callers pass views and nothing is permuted through memory here, forward or backward.

Why a custom autograd function: the two contractions want different layouts of the ``(L_i, L_a)``
logits (batched over ``(head, i)`` to compute them, over ``(head, sequence)`` to apply them), and
``einsum`` reconciles them with full copies of the logits and, in backward, with per-matrix copies
of non-BLAS-compatible operands. Here every batched matmul reads the logits in place through
strided views, and the logits are processed in cache-sized chunks; they are kept for backward,
or, with ``recompute=True`` (GSA's ``memory_efficient`` option), formed again there so that no
``L x L`` logits are among the saved activations.
"""

from __future__ import annotations

import torch

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


def _empty_in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like ``t`` whose memory runs in the order of ``t``'s strides: the
    dense counterpart of a strided view (a channel slice of a projection, say), so the gradient
    handed back through the caller's views is contiguous in the caller's layout."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    dense = t.new_empty([t.shape[d] for d in order])
    return dense.permute([order.index(d) for d in range(t.dim())])


def _bmm_into(dest: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dest = a @ b``, written in place when ``dest`` is contiguous (BLAS writes only those fast)."""
    if dest.is_contiguous():
        torch.bmm(a, b, out=dest)
    else:
        dest.copy_(torch.bmm(a, b))


class _RelativeAxisAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qt, v, emb, transpose_out: bool, recompute: bool):  # type: ignore[override]
        # qt: (N, L_i, S, d_k); v: (N, S, L_a, d_v); emb: (N, L_i, L_a, d_k)
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
        qt, v, emb, *logits_kept = ctx.saved_tensors
        n, length, s, _ = qt.shape
        keys = emb.transpose(2, 3)
        # gradients laid out like the callers' tensors, so that autograd hands contiguous gradients
        # back through the callers' views (chunks BLAS cannot write in place are copied, in cache)
        d_qt = _empty_in_memory_order(qt)
        d_v = _empty_in_memory_order(v)
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
        return d_qt, d_v, d_emb, None, None


def relative_axis_attention(
    qt: torch.Tensor,
    v: torch.Tensor,
    emb: torch.Tensor,
    *,
    transpose_out: bool = False,
    recompute: bool = False,
) -> torch.Tensor:
    """``(N, L, S, d_k), (N, S, L_a, d_v), (N, L, L_a, d_k) -> (N, S, L, d_v)``, contiguous.

    Each sequence's ``L_a`` keys are usually its own ``L`` positions; the 2D path gives each row the
    keys of all the rows in its window instead.

    With ``transpose_out`` the result is ``(N, S, d_v, L)`` instead: positions
    innermost, the layout of an NCHW map. ``recompute`` keeps no logits for backward and forms
    them again there: ``N*S*L*L`` fewer elements stored, one more matmul pass (about 15% of the
    kernel's time). See the module docstring.
    """
    n, length, s, _ = qt.shape
    keys = v.shape[2]
    if v.shape[:2] != (n, s) or emb.shape[:3] != (n, length, keys) or emb.shape[3] != qt.shape[3]:
        raise ValueError(
            f"relative_axis_attention: shapes q {tuple(qt.shape)}, v {tuple(v.shape)}, emb {tuple(emb.shape)} "
            "do not fit (N, L, S, d_k), (N, S, L_a, d_v), (N, L, L_a, d_k)"
        )
    # one dtype throughout, the queries' (under autocast: the projection's lower precision); the
    # casts are outside the function, so autograd returns each gradient in its input's dtype
    v, emb = v.to(qt.dtype), emb.to(qt.dtype)
    qt = qt if _blas_ok(qt[0]) else qt.contiguous()
    v = v if _blas_ok(v[0]) else v.contiguous()
    return _RelativeAxisAttention.apply(qt, v, emb.contiguous(), transpose_out, recompute)
