"""The global self-attention (GSA) module of Shen et al., "Global Self-Attention Networks for Image
Recognition" (arXiv 2010.03019), with every ablation knob exposed.

Status: stable; the maths is checked against plain-loop references in ``tests/test_gsa_maths.py``.

Input ``x: (B, C_in, H, W)``; ``N`` heads with ``d_k`` key/query and ``d_v`` value channels each.
Q, K, V come from one bias-free 1x1 convolution. The output is the sum of two parallel paths:

* **content attention** (linear in H*W, no 1/sqrt(d) scale): per head, every key channel is
  softmax-normalised over the H*W positions, ``G = softmax_HW(K) @ V^T`` (``d_k x d_v``) and
  ``F_c = G^T @ Q``. ``query_norm=True`` also softmaxes Q over its ``d_k`` channels (the original
  "efficient attention"; GSA drops it).
* **positional attention** with learned relative embeddings and no softmax:
  - ``axial`` (paper default): a column step
    ``c[i,j] = sum_{|a-i|<=r} (q[i,j] . R_col[a-i]) v[a,j]``, batch norm on ``c`` (``axial_norm``),
    then a row step ``p[i,j] = sum_{|b-j|<=r} (q[i,j] . R_row[b-j]) c[i,b]``.
  - ``2d``: ``p[i,j] = sum_{|a-i|<=r, |b-j|<=r} (q[i,j] . R[a-i, b-j]) v[a,b]``; its cost grows
    with ``r^2``, so it is meant to be local. A global 2D window is allowed but is quadratic in H*W
    (a warning says so).

``rel_span='global'`` means ``r = feature_size - 1``: every output pixel then depends on every input
pixel. The largest map the block will see (``feature_size``) must be known at build time; the
backbone builder fills it in per stage.

Implementation: the projection returns q, k, v channels last (from an NCHW input one batched
matmul, no copy of the input; from a channels-last input a 1x1 convolution), which both positional
steps and the content path read in place through strided views; the relative-attention kernel
(``_relative.py``) writes the row step's result in the input's layout (NCHW order, or channels
last), so the block needs no transpose at its output and hands on the layout it was given. On CPU
the content path is one compiled kernel (``_content.py``: softmax, ``K^T V`` and ``G^T Q`` for all
heads of an image). A stride-2 block pools the positional path's output, and the content path's
queries instead of its output (``G^T Q`` is linear in Q, so that is the same pool; with
``query_norm`` the output is pooled): ``G^T Q``, the sum of the paths and the output projection run
at the pooled size. Local 2D windows are computed key by key (on CPU by the fused window-attention
kernel of ``_window.py``, which never stores the logits; elsewhere a logits matmul and the window
sum); windows about as wide as the map reuse the banded row kernel (:func:`window_path` decides).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Union

import torch
from torch import nn

from ..config import check_bool, check_choice, check_positive_int, normalize_numbers
from ._content import content_attention, content_usable
from ._relative import relative_axis_attention
from ._window import fused_usable, window_attention, window_sum
from .base import BlockConfig, SpatialMixer, downsample_pool, head_dims, is_channels_last, register_block

__all__ = [
    "GSAConfig",
    "GSABlock",
    "PointwiseProjection",
    "ContentAttention",
    "AxialPositionalAttention",
    "Positional2DAttention",
]

POSITIONAL_MODES = ("axial", "2d", "none")


@dataclasses.dataclass(frozen=True)
class GSAConfig(BlockConfig):
    """Configuration of a GSA module.

    Attributes:
        heads: number of attention heads ``N``.
        dim_key: key/query channels per head; ``None`` = ``dim_value`` (the paper's setup).
        dim_value: value channels per head; ``None`` = ``out_channels // heads``.
        content: include the content-attention path.
        positional: ``'axial'`` (paper), ``'2d'`` or ``'none'`` (content-only).
        rel_span: largest relative offset ``r`` of the positional embeddings, or ``'global'``
            (``r = feature_size - 1``).
        feature_size: largest H or W the block will see; required for a global span.
        query_norm: softmax the queries over channels in the content path.
        axial_norm: batch norm between the axial column and row steps.
        shared_embeddings: one set of relative embeddings shared by all heads (paper: per head).
        output_proj: a final 1x1 projection (the paper has none).
        memory_efficient: keep no positional logits for backward and recompute them there:
            ``heads * B * H * W * (H + W)`` fewer stored elements for 0-10% more time (measured). Changes
            neither the maths nor the FLOPs count. No effect on the local 2D window path, which
            stores only ``(2r+1)^2`` logits per query and head, nor on the fused CPU kernel of the
            axial and row paths, which never stores logits.
    """

    heads: int = 8
    dim_key: Union[int, None] = None
    dim_value: Union[int, None] = None
    content: bool = True
    positional: str = "axial"
    rel_span: Union[int, str] = "global"
    feature_size: Union[int, None] = None
    query_norm: bool = False
    axial_norm: bool = True
    shared_embeddings: bool = False
    output_proj: bool = False
    memory_efficient: bool = False

    def __post_init__(self) -> None:
        normalize_numbers(self)  # numpy scalars (results tables) -> int/float/bool; 'global' stays
        check_positive_int("gsa", "heads", self.heads)
        check_positive_int("gsa", "dim_key", self.dim_key, allow_none=True)
        check_positive_int("gsa", "dim_value", self.dim_value, allow_none=True)
        for field in ("content", "query_norm", "axial_norm", "shared_embeddings", "output_proj", "memory_efficient"):
            check_bool("gsa", field, getattr(self, field))
        check_choice("gsa", "positional", self.positional, POSITIONAL_MODES)
        if not self.content and self.positional == "none":
            raise ValueError("gsa: content=False with positional='none' leaves nothing; enable at least one path")
        check_positive_int("gsa", "feature_size", self.feature_size, allow_none=True)
        if self.rel_span != "global":
            if isinstance(self.rel_span, bool) or not isinstance(self.rel_span, int) or self.rel_span < 1:
                raise ValueError(f"gsa.rel_span must be 'global' or a positive integer, got {self.rel_span!r}")
            if self.feature_size is not None and self.rel_span > self.feature_size - 1:
                raise ValueError(
                    f"gsa.rel_span={self.rel_span} is larger than allowed for feature_size={self.feature_size}: "
                    f"the largest offset on that map is {self.feature_size - 1}; use at most that or 'global'"
                )
        if self.positional == "2d" and self.rel_span == "global" and self.feature_size is not None:
            warnings.warn(
                f"gsa: positional='2d' with a global span costs O((H*W)^2) per head "
                f"({self.feature_size}x{self.feature_size} map); use a local rel_span to keep it affordable",
                stacklevel=3,
            )

    def with_feature_size(self, size: int) -> "GSAConfig":
        """This config for maps up to ``size``; an explicit span beyond the map is clamped to it."""
        span = self.rel_span
        if span != "global" and span > size - 1:
            span = "global"
        return self.replace(feature_size=size, rel_span=span)

    @property
    def global_span(self) -> bool:
        return self.rel_span == "global"

    def span(self) -> int:
        """The resolved maximum relative offset ``r``."""
        if self.rel_span != "global":
            return int(self.rel_span)
        if self.feature_size is None:
            raise ValueError(
                "gsa: rel_span='global' needs feature_size (the largest H or W the block will see); "
                "set feature_size or give an explicit rel_span"
            )
        return self.feature_size - 1

    def flops(self, in_channels: int, out_channels: int, height: int, width: int, *, stride: int = 1) -> int:
        """``GSABlock.forward``: the projection and the positional path at full resolution, then the
        (uncounted) 2x2 pool; at stride 2 the content path's ``G^T Q`` (without ``query_norm``) and
        the output projection run at the pooled size."""
        n = self.heads
        d_k, d_v = head_dims(
            "gsa",
            heads=n,
            dim_key=self.dim_key,
            dim_value=self.dim_value,
            out_channels=out_channels,
            output_proj=self.output_proj,
        )
        length = height * width
        pooled = math.ceil(height / 2) * math.ceil(width / 2) if stride == 2 else length
        macs = length * in_channels * (n * d_k * (2 if self.content else 1) + n * d_v)  # qkv projection
        if self.content:  # ContentAttention: K V^T, then G^T Q (on the pooled queries at stride 2)
            macs += n * d_k * d_v * (length + (length if self.query_norm else pooled))
        if self.positional == "axial":
            # AxialPositionalAttention: relative_axis_attention along H (S = W sequences of length H),
            # then along W; each costs N * L * axis * (d_k + d_v) whatever the span (dense L x L tables).
            macs += n * length * (height + width) * (d_k + d_v)
        elif self.positional == "2d":
            # Positional2DAttention: window path, every query against its (2ry+1) x (2rx+1) offsets
            # (logits matmul + window sum); row path, every query row (H + ry per image: the padding
            # rows' queries are zero but computed) against the 2ry+1 whole rows of its window.
            span = self.span() if self.feature_size is not None or not self.global_span else max(height, width) - 1
            ry, rx = min(span, height - 1), min(span, width - 1)
            if window_path(height, width, ry, rx):
                macs += n * length * (2 * ry + 1) * (2 * rx + 1) * (d_k + d_v)
            else:
                macs += n * (height + ry) * width * (2 * ry + 1) * width * (d_k + d_v)
        if self.output_proj:
            macs += pooled * n * d_v * out_channels
        return macs


def relative_to_absolute(rel: torch.Tensor, length: int, span: int) -> torch.Tensor:
    """Expand relative embeddings to absolute pairs.

    ``rel``: ``(E, 2*span+1, d)`` for offsets ``-span..span``. Returns ``(E, length, length, d)`` with
    ``out[:, i, a] = rel[:, a - i + span]`` where ``|a - i| <= span`` and zero elsewhere (a span
    longer than the map uses only its centre). Built as a sliding window over the offsets
    (``unfold``), whose backward is a cheap scatter-add.
    """
    reach = length - 1
    if span >= reach:
        offsets = rel[:, span - reach : span + reach + 1]
    else:
        offsets = nn.functional.pad(rel, (0, 0, reach - span, reach - span))
    # offsets[:, m] is offset m - reach, so out[:, i, a] = offsets[:, a + (reach - i)]
    return offsets.unfold(1, length, 1).flip(1).transpose(2, 3)  # (E, L_i, L_a, d)


def pool_positions(t: torch.Tensor) -> torch.Tensor:
    """The blocks' 2x2 average pool (:func:`~gsa_search.blocks.base.downsample_pool`: ceil sizes,
    edge windows average their in-map pixels) of a channels-last map ``(B, H, W, *C)``; returns
    ``(B, ceil(H/2), ceil(W/2), *C)`` with the channels contiguous."""
    nchw = t.flatten(3).permute(0, 3, 1, 2)  # channels-last strides: the pool keeps that layout
    pooled = nn.functional.avg_pool2d(nchw, 2, 2, ceil_mode=True, count_include_pad=False)
    return pooled.permute(0, 2, 3, 1).unflatten(3, t.shape[3:])


def one_matmul_weight_grad(channels: int, pixels: int) -> bool:
    """Whether the projection's weight gradient runs as one matmul over all pixels of the batch
    rather than as per-image products: on small maps with many channels. Measured (batch 64, GSA
    block forward + backward): 128 channels at 4x4 and 8x8, 64 at 4x4 and 256 at 8x8 ran 5-20%
    faster with the one matmul, 32 at 4x4 the same, 64 at 8x8 4% slower."""
    return 2 * pixels <= channels


class _Projection(torch.autograd.Function):
    """``x (B, C, H, W)`` -> one channels-last ``(B, H, W, C_j)`` tensor per row block ``W_j`` of
    ``weight (sum C_j, C)``; the input gradient comes back NCHW, as ``x`` is."""

    @staticmethod
    def forward(ctx, x, weight, splits):  # type: ignore[override]
        b, c, h, w = x.shape
        xt = x.flatten(2).transpose(1, 2)  # (B, L, C): a view, BLAS reads it in place
        out = torch.bmm(xt, weight.view(-1, c).t().expand(b, -1, -1)).view(b, h, w, -1)  # one pass over x
        ctx.save_for_backward(x, weight)
        ctx.splits = splits
        return tuple(out.split(splits, dim=-1))

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        xt = x.flatten(2).transpose(1, 2)
        need_x, need_weight = ctx.needs_input_grad[:2]
        d_x = None  # NCHW, (B, C, L)
        d_weight = []
        # Weight gradient: one (C_j, L) @ (L, C) product per image, summed; on maps with at most
        # half as many pixels as input channels, one (C_j, B*L) @ (B*L, C) matmul over a
        # channels-last copy of x instead (see one_matmul_weight_grad)
        x_rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c) if one_matmul_weight_grad(c, h * w) else None
        for part, grad in zip(weight.view(-1, c).split(ctx.splits), grads):
            if grad is None:
                d_weight.append(torch.zeros_like(part))
                continue
            # under autocast the outputs (and so their gradients) are in the autocast dtype
            g = grad.reshape(b, h * w, -1).transpose(1, 2)  # (B, C_j, L)
            if need_x:
                w_t = part.to(g.dtype).t().expand(b, -1, -1)  # (B, C, C_j)
                d_x = torch.bmm(w_t, g) if d_x is None else d_x.baddbmm_(w_t, g)
            if need_weight:
                if x_rows is not None:
                    rows = grad.reshape(b * h * w, -1)  # (B*L, C_j)
                    d_weight.append(torch.mm(rows.t(), x_rows.to(rows.dtype)).to(weight.dtype))
                else:
                    d_weight.append(torch.bmm(g, xt.to(g.dtype)).sum(0).to(weight.dtype))  # (C_j, C)
        if need_x and d_x is None:
            d_x = x.new_zeros(b, c, h * w)
        return (
            d_x.view(b, c, h, w).to(x.dtype) if need_x else None,
            torch.cat(d_weight).view_as(weight) if need_weight else None,
            None,
        )


class PointwiseProjection(nn.Module):
    """Bias-free 1x1 convolution ``(B, C_in, H, W) -> (B, H, W, C_out)``, channels last.

    The weight has a ``Conv2d``'s shape ``(C_out, C_in, 1, 1)`` and initialisation. ``forward(x,
    splits)`` returns one channels-last tensor per group of ``splits`` output channels (q, k, v).
    From an NCHW input all come from one batched matmul over a transposed view of it (no copy); on
    a CPU this measured about 2x faster forward + backward than an NCHW 1x1 ``Conv2d`` with the same
    multiply-adds, and it returns the layout the GSA paths read in place. From a channels-last input
    they are slices of one 1x1 ``Conv2d``, whose output already lies channels last (oneDNN on CPU:
    1.1-1.6x faster forward + backward than the matmul, batch 64 on the proxies' 4x4 to 32x32 maps).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # what nn.Conv2d does

    def forward(self, x: torch.Tensor, splits: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
        splits = tuple(splits or (self.weight.shape[0],))
        if is_channels_last(x):
            # the map is already channels last: a 1x1 convolution writes (B, H, W, C_out) memory
            # (oneDNN on CPU: 1.1-1.6x faster forward + backward than one matmul over the pixels)
            return tuple(nn.functional.conv2d(x, self.weight).permute(0, 2, 3, 1).split(splits, dim=-1))
        return _Projection.apply(x, self.weight, splits)


class ContentAttention(nn.Module):
    """``F_c = (softmax_HW(K) @ V^T)^T @ Q`` per head, without scaling.

    ``q: (B, L_q, N, d_k)``, ``k: (B, L, N, d_k)``, ``v: (B, L, N, d_v)`` channels last with
    ``L = H*W`` (strided views are fine; a stride-2 block passes pooled queries, ``L_q < L``);
    returns ``(B, N, d_v, L_q)``, i.e. NCHW. On CPU (float32/float64, without
    ``query_norm``) one compiled kernel computes all heads of an image in place
    (:func:`~gsa_search.blocks._content.content_attention`); elsewhere per-head batched matmuls.
    """

    def __init__(self, *, query_norm: bool = False) -> None:
        super().__init__()
        self.query_norm = query_norm

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.query_norm and content_usable(q, k, v):  # CPU: one compiled kernel, all heads
            return content_attention(q, k, v)
        k = k.softmax(dim=1)  # over the L positions, per key channel
        if self.query_norm:
            q = q.softmax(dim=-1)  # over the d_k channels of each head
        heads = []
        for q_n, k_n, v_n in zip(q.unbind(2), k.unbind(2), v.unbind(2)):  # (B, L, d) each, in place
            context = torch.bmm(k_n.transpose(1, 2), v_n)  # (B, d_k, d_v)
            heads.append(torch.bmm(context.transpose(1, 2), q_n.transpose(1, 2)))  # (B, d_v, L)
        return torch.stack(heads, dim=1)


def _embedding(heads: int, length: int, dim: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(heads, length, dim) * dim**-0.5)


def _position_major(t: torch.Tensor) -> torch.Tensor:
    """``(S, L, N, d) -> (N, L, S, d)`` view."""
    return t.permute(2, 1, 0, 3)


def _sequence_major(t: torch.Tensor) -> torch.Tensor:
    """``(S, L, N, d) -> (N, S, L, d)`` view."""
    return t.permute(2, 0, 1, 3)


class AxialPositionalAttention(nn.Module):
    """Axial relative positional attention: column step, optional BN, row step (no softmax).

    Channels last in: ``q: (B, H, W, N, d_k)``, ``v: (B, H, W, N, d_v)`` (strided views are fine).
    Returns ``(B, N, d_v, H, W)`` in NCHW memory order, or with ``channels_last=True`` as a view of
    ``(B, H, W, N, d_v)`` memory: the row step writes either directly. The column step reads q and v
    in place (its sequences are the (image, column) pairs: two sequence axes) and writes channels
    last; the norm between the steps runs on a channels-last view.
    """

    def __init__(
        self,
        *,
        heads: int,
        dim_key: int,
        dim_value: int,
        span: int,
        shared: bool = False,
        norm: bool = True,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.heads, self.span, self.recompute = heads, span, recompute
        tables = 1 if shared else heads
        self.rel_col = _embedding(tables, 2 * span + 1, dim_key)  # offsets -span..span along H
        self.rel_row = _embedding(tables, 2 * span + 1, dim_key)  # offsets -span..span along W
        self.norm = nn.BatchNorm2d(heads * dim_value) if norm else nn.Identity()

    def _absolute(self, rel: torch.Tensor, length: int) -> torch.Tensor:
        return relative_to_absolute(rel, length, self.span).expand(self.heads, -1, -1, -1)

    def forward(self, q: torch.Tensor, v: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        b, h, w, n, d_v = v.shape
        d_k = q.shape[-1]
        # column step: sequences (b, w) along H; queries and values are read in place (two
        # sequence axes); written channels last: (N, B, W, H, d_v) stored as (B, H, W, N, d_v)
        c = relative_axis_attention(
            q.permute(3, 1, 0, 2, 4),  # (N, H, B, W, d_k)
            v.permute(3, 0, 2, 1, 4),  # (N, B, W, H, d_v)
            self._absolute(self.rel_col, h),
            recompute=self.recompute,
            out_order=[1, 3, 2, 0, 4],
        )
        c = c.permute(1, 3, 2, 0, 4).reshape(b, h, w, n * d_v)  # a view, (B, H, W, N*d_v)
        # batch norm over its channels on an NCHW view of it (channels-last memory)
        c = self.norm(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # row step: sequences (b, h) along W (two sequence axes for the values), written NCHW,
        # (N, B, H, d_v, W) stored as (B, N, d_v, H, W), or channels last, (N, B, H, W, d_v)
        # stored as (B, H, W, N, d_v)
        p = relative_axis_attention(
            _position_major(q.reshape(b * h, w, n, d_k)),  # (N, W, B*H, d_k)
            c.reshape(b, h, w, n, d_v).permute(3, 0, 1, 2, 4),  # (N, B, H, W, d_v)
            self._absolute(self.rel_row, w),
            transpose_out=not channels_last,
            recompute=self.recompute,
            out_order=[1, 2, 3, 0, 4] if channels_last else [1, 0, 3, 2, 4],
        )
        return p.permute(1, 0, 4, 2, 3) if channels_last else p.permute(1, 0, 3, 2, 4)  # (B, N, d_v, H, W)


# How many times more a multiply-add of the window path costs than one of the banded rows: the 2D
# path reads only its window unless the rows have fewer multiply-adds than this many times the
# window's. 1: whichever does less work, so a local window (r <= size - 2 on a square map) reads
# only its window and a global one runs as banded rows (batched matmuls on CUDA, where the window
# path's PyTorch form loops over the offsets). Measured on CPU (batch 64, 4 heads, forward +
# backward of the block, compiled kernels, 2 threads): the window path ran 2.1-2.9x faster than
# the rows on 8x8 and 16x16 maps with r = 3 (4 to 32 channels per head), and 1.4-5.8x faster even
# for global windows; 2 (this rule's previous value) sent r = 3 on 8x8 maps, where the window has
# fewer multiply-adds, to the rows.
WINDOW_COST = 1.0
# Where both algorithms have as many multiply-adds (windows covering the whole map: r = 3 on a 4x4
# map), windows of at most this many offsets (7x7) read only their window: the window kernel
# measured 2.1x faster there, and the PyTorch form's loop over the offsets is no longer than for
# any local r = 3 window.
SMALL_WINDOW = 49


def window_path(height: int, width: int, ry: int, rx: int) -> bool:
    """Whether :class:`Positional2DAttention` computes a ``(2ry+1) x (2rx+1)`` window on a ``height x
    width`` map key by key (:func:`~gsa_search.blocks._window.window_attention` on CPU, else a logits
    matmul and :func:`~gsa_search.blocks._window.window_sum`; ``(2ry+1)(2rx+1)`` keys per query)
    rather than as banded rows (``(2ry+1) * width`` keys per query, ``ry`` padding rows per image):
    when the rows would cost more than ``WINDOW_COST`` times the window's multiply-adds, or as much
    for a window of at most ``SMALL_WINDOW`` offsets."""
    window, rows = WINDOW_COST * (2 * rx + 1) * height, width * (height + ry)
    return window < rows or (window == rows and (2 * ry + 1) * (2 * rx + 1) <= SMALL_WINDOW)


class Positional2DAttention(nn.Module):
    """2D relative positional attention over a ``(2r+1) x (2r+1)`` window (no softmax).

    Two exact algorithms, picked by :func:`window_path` from the window and map sizes alone (so the
    FLOPs count of a block never depends on the machine):

    * window: logits ``q . R[dy, dx]`` for the ``(2r+1)^2`` offsets, then each query's weighted sum
      over its own window; ``(2r+1)^2 (d_k + d_v)`` multiply-adds per query and head. On CPU one
      compiled kernel does both without storing the logits
      (:func:`~gsa_search.blocks._window.window_attention`); elsewhere the logits are one matmul and
      the sum is :func:`~gsa_search.blocks._window.window_sum`.
    * rows, for windows about as wide as the map: the axial kernel
      (:func:`relative_axis_attention`), every query row against the ``2r+1`` whole rows around it
      with the window's row ``R[dy, :]`` as a banded table; ``(2r+1) W (d_k + d_v)`` per query plus
      ``r`` padding rows per image, quadratic in H*W for a global window.

    Layouts as :class:`AxialPositionalAttention` (the window path always writes channels last; NCHW
    callers get a permuted view).
    """

    def __init__(self, *, heads: int, dim_key: int, span: int, shared: bool = False, recompute: bool = False) -> None:
        super().__init__()
        self.heads, self.span, self.recompute = heads, span, recompute
        tables = 1 if shared else heads
        self.rel = nn.Parameter(torch.randn(tables, 2 * span + 1, 2 * span + 1, dim_key) * dim_key**-0.5)

    def forward(self, q: torch.Tensor, v: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        b, h, w, n, d_v = v.shape
        d_k = q.shape[-1]
        ry, rx = min(self.span, h - 1), min(self.span, w - 1)
        s = self.span
        rel = self.rel[:, s - ry : s + ry + 1, s - rx : s + rx + 1]  # (E, 2ry+1, 2rx+1, d_k)
        if window_path(h, w, ry, rx):
            kk = (2 * ry + 1) * (2 * rx + 1)
            if fused_usable(q, v, rel):  # CPU: logits formed inside the kernel, never stored
                table = rel.reshape(rel.shape[0], kk, d_k).expand(n, -1, -1)
                return window_attention(q, v, table, ry, rx).permute(0, 3, 4, 1, 2)
            logits = torch.matmul(q.flatten(0, 2).transpose(0, 1), rel.reshape(-1, kk, d_k).transpose(1, 2))
            out = window_sum(logits.view(n, b, h, w, kk), v, ry, rx)  # (B, H, W, N, d_v)
            return out.permute(0, 3, 4, 1, 2)
        # Every image followed by ry zero rows, all flattened into one sequence axis (after ry more
        # zero rows for the values): query row t = b*(H+ry) + i attends to value rows t .. t + 2ry,
        # i.e. rows i - ry .. i + ry of its image; the ry zero rows between two images pad both.
        # Those rows are consecutive in the flattened values, so every query row's (2ry+1) * W keys
        # are one window of them (a view): one kernel call for all rows, images and row offsets.
        rows = h + ry
        seqs = b * rows  # padding rows included (zero queries): fixed work per image
        q_frame = nn.functional.pad(q, (0, 0, 0, 0, 0, 0, 0, ry)).reshape(seqs, w, n, d_k)
        v_frame = nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, ry)).reshape(seqs, w, n, d_v)
        v_frame = nn.functional.pad(v_frame, (0, 0, 0, 0, 0, 0, ry, ry)).view(-1, n, d_v)
        values = v_frame.unfold(0, (2 * ry + 1) * w, w)[:seqs].permute(1, 0, 3, 2)  # (N, seqs, keys, d_v)
        # embeddings of every (query column, key row offset, key column), side by side for each dy
        tables = [relative_to_absolute(rel[:, dy], w, rx) for dy in range(2 * ry + 1)]
        out = relative_axis_attention(
            _position_major(q_frame),
            values,
            torch.cat(tables, dim=2).expand(n, -1, -1, -1),
            transpose_out=not channels_last,
            recompute=self.recompute,
            out_order=[1, 2, 0, 3] if channels_last else None,
        )  # (N, seqs, d_v, W), or (N, seqs, W, d_v) stored as (seqs, W, N, d_v)
        if channels_last:
            return out.view(n, b, rows, w, d_v)[:, :, :h].permute(1, 0, 4, 2, 3)
        return out.view(n, b, rows, d_v, w)[:, :, :h].permute(1, 0, 3, 2, 4)


@register_block("gsa", config=GSAConfig)
class GSABlock(SpatialMixer):
    """GSA module: ``content(Q, K, V) + positional(Q, V)`` -> 2x2 pool -> optional 1x1 projection
    (at stride 2 the content path gets pooled queries; the pool commutes with the sum and the
    projection)."""

    def __init__(self, cfg: GSAConfig, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(cfg, in_channels, out_channels, stride)
        dim_key, dim_value = head_dims(
            "gsa",
            heads=cfg.heads,
            dim_key=cfg.dim_key,
            dim_value=cfg.dim_value,
            out_channels=out_channels,
            output_proj=cfg.output_proj,
        )
        self.heads, self.dim_key, self.dim_value = cfg.heads, dim_key, dim_value
        key_channels = cfg.heads * dim_key if cfg.content else 0
        self.split = (cfg.heads * dim_key, key_channels, cfg.heads * dim_value)
        self.qkv = PointwiseProjection(in_channels, sum(self.split))
        self.content = ContentAttention(query_norm=cfg.query_norm) if cfg.content else None
        self.positional: nn.Module | None = None
        if cfg.positional != "none":
            span = cfg.span()
            if cfg.positional == "axial":
                self.positional = AxialPositionalAttention(
                    heads=cfg.heads,
                    dim_key=dim_key,
                    dim_value=dim_value,
                    span=span,
                    shared=cfg.shared_embeddings,
                    norm=cfg.axial_norm,
                    recompute=cfg.memory_efficient,
                )
            else:
                self.positional = Positional2DAttention(
                    heads=cfg.heads,
                    dim_key=dim_key,
                    span=span,
                    shared=cfg.shared_embeddings,
                    recompute=cfg.memory_efficient,
                )
        self.proj = (
            nn.Conv2d(cfg.heads * dim_value, out_channels, 1, bias=False) if cfg.output_proj else nn.Identity()
        )
        self.pool = downsample_pool(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, _, h, w = x.shape
        cfg: GSAConfig = self.cfg  # type: ignore[assignment]
        if self.positional is not None and cfg.global_span and max(h, w) > cfg.feature_size:  # type: ignore[operator]
            raise ValueError(
                f"gsa: input feature map {h}x{w} is larger than the {cfg.feature_size}x{cfg.feature_size} "
                f"its global span was built for; rebuild the block with feature_size >= {max(h, w)}"
            )
        n, d_k, d_v = self.heads, self.dim_key, self.dim_value
        splits = tuple(c for c in self.split if c)
        q, *k, v = self.qkv(x, splits)  # channels last, (B, H, W, .)
        q, v = q.unflatten(-1, (n, d_k)), v.unflatten(-1, (n, d_v))
        # The 2x2 pool is linear and acts on positions, so it commutes with everything after the
        # positional attention (the sum, the 1x1 output projection) and with the content path's
        # G^T q: a stride-2 block pools the positional output and the content path's queries
        # (unless query_norm softmaxes them first) and runs the rest at the pooled size.
        pooled = self.stride == 2
        ho, wo = ((h + 1) // 2, (w + 1) // 2) if pooled else (h, w)
        if is_channels_last(x):  # the output keeps the input's layout, as a convolution's does
            return self._forward_channels_last(q, k, v, pooled, (ho, wo))
        out = None
        if self.content is not None:
            pool_queries = pooled and not cfg.query_norm
            q_c = pool_positions(q) if pool_queries else q
            out = self.content(q_c.flatten(1, 2), k[0].unflatten(-1, (n, d_k)).flatten(1, 2), v.flatten(1, 2))
            if pooled and not pool_queries:  # query_norm: the whole path's output is pooled
                out = self.pool(out.view(b, n * d_v, h, w))
            out = out.view(b, n, d_v, ho, wo)
        if self.positional is not None:
            p = self.positional(q, v)  # (B, N, d_v, H, W), W innermost
            if pooled:
                p = self.pool(p.reshape(b, n * d_v, h, w)).view(b, n, d_v, ho, wo)
            out = p if out is None else out + p
        return self.proj(out.reshape(b, n * d_v, ho, wo))

    def _forward_channels_last(self, q, k, v, pooled: bool, size: tuple[int, int]) -> torch.Tensor:
        """The paths of :meth:`forward` on a channels-last input, kept channels last: every sum and
        pool runs on ``(B, H, W, N, d_v)`` maps and the result is a channels-last ``(B, C, H, W)``
        map (an NCHW result would make every layer after the block convert it back)."""
        b, h, w, n, d_v = v.shape
        ho, wo = size
        out = None
        if self.positional is not None:
            out = self.positional(q, v, channels_last=True).permute(0, 3, 4, 1, 2)  # (B, H, W, N, d_v)
            if pooled:
                out = pool_positions(out)
        if self.content is not None:
            pool_output = pooled and self.cfg.query_norm  # type: ignore[attr-defined]
            q_c = pool_positions(q) if pooled and not pool_output else q
            c = self.content(q_c.flatten(1, 2), k[0].unflatten(-1, (n, self.dim_key)).flatten(1, 2), v.flatten(1, 2))
            c = c.unflatten(-1, (h, w) if pool_output else (ho, wo)).permute(0, 3, 4, 1, 2)
            if pool_output:  # query_norm: the whole path's output is pooled
                c = pool_positions(c)
            out = c if out is None else out + c
        out = out.reshape(b, ho, wo, n * d_v).permute(0, 3, 1, 2)  # channels last
        return self.proj(out.contiguous(memory_format=torch.channels_last))
