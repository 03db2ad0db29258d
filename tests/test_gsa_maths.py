"""The blocks' maths, checked against naive references written plainly in this file.

Every reference below is an explicit Python loop over pixels and offsets, computed in float64 with
``math`` on nested lists (``tensor.tolist()``); none calls a library helper, so a wrong offset sign,
a wrong embedding index, a missing mask, a wrong channel split or a wrong pooling rule in the
library breaks these tests. Inputs are tiny (B <= 2, 2 heads, d_k = 3, d_v = 2, maps up to 9x2)
and non-square where possible, so that rows and columns cannot be confused.

What is checked (see DESIGN.md, "Block builder: the math"):

1. Content attention (``ContentAttention`` and a content-only ``GSABlock``):
   ``F_c = (softmax_HW(K) @ V^T)^T @ Q`` per head, no scaling; ``query_norm`` softmaxes Q over d_k.
2. Axial positional attention (``AxialPositionalAttention``): column step with ``R_col[a - i]``,
   batch norm (off; eval with hand-set statistics; train with batch statistics), row step with
   ``R_row[b - j]``; global and local spans, spans larger than the map (only the central part of
   the embeddings is used), per-head and shared embeddings.
3. 2D positional attention (``Positional2DAttention``) for every window geometry: window smaller
   than the map, window covering the map only partly (offsets outside it must be masked), window
   covering every offset (global), and spans larger than the map; plus gradients (gradcheck) of
   the axial and 2D paths, which run through a custom autograd kernel.
4. The whole ``GSABlock`` (qkv split q, k, v; content + positional; optional output projection;
   stride 2 = 2x2 average pool in ceil mode after mixing).
5. Explicit (Gaussian) attention: 2D Gaussian weights normalised over the whole map,
   ``sigma = softplus(rho) == init_radius`` at init, ``placement='beside'`` adds a 3x3 conv,
   gradient w.r.t. ``rho`` non-zero (and equal to a finite difference of the reference).
6. The MHSA baseline: ``softmax(Q K^T / sqrt(d_k)) V`` per head.
7. Receptive fields (eval mode, gradient of one output pixel w.r.t. the input): global GSA reaches
   the opposite corner; a local span ``r`` reaches exactly the ``(2r+1) x (2r+1)`` box (axial and
   2D); a 3x3 conv reaches exactly one pixel around; explicit attention is global.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from gsa_search.blocks import (
    AxialPositionalAttention,
    ContentAttention,
    ExplicitConfig,
    GaussianAttention,
    GSAConfig,
    MHSAConfig,
    Positional2DAttention,
    create_block,
)
from gsa_search.blocks import gsa as gsa_module
from gsa_search.blocks.conv import ConvConfig
from gsa_search.blocks.explicit import gaussian_kernel

B, HEADS, DK, DV = 2, 2, 3, 2
EXACT = dict(rtol=1e-9, atol=1e-9)  # float64 paths: the library and the loops agree to rounding
# GaussianAttention builds its kernel from sigma cast to float32 (explicit.py, forward), so even a
# float64 module carries float32 rounding (~1e-7) in its weights; 1e-6 still catches any real error.
GAUSS = dict(rtol=1e-6, atol=1e-6)
BN_EPS = 1e-5  # nn.BatchNorm2d's default


# ---------------------------------------------------------------------------------------------
# Naive references (plain loops on nested lists; tensors only at the boundary)
# ---------------------------------------------------------------------------------------------


def _zeros(*shape):
    if len(shape) == 1:
        return [0.0] * shape[0]
    return [_zeros(*shape[1:]) for _ in range(shape[0])]


def _out(nested) -> torch.Tensor:
    return torch.tensor(nested, dtype=torch.float64)


def _softmax(values):
    m = max(values)
    e = [math.exp(x - m) for x in values]
    z = sum(e)
    return [x / z for x in e]


def _table(n_tables: int, head: int) -> int:
    """Per-head embeddings use table ``head``; shared embeddings (one table) use table 0."""
    return head if n_tables > 1 else 0


def ref_content(q, k, v, *, query_norm=False):
    """Content attention per head on ``(B, N, d, H, W)`` maps."""
    bs, n_heads, dk, h, w = q.shape
    dv = v.shape[2]
    q, k, v = q.tolist(), k.tolist(), v.tolist()
    pixels = [(i, j) for i in range(h) for j in range(w)]
    out = _zeros(bs, n_heads, dv, h, w)
    for b in range(bs):
        for n in range(n_heads):
            # softmax of every key channel over all H*W positions
            sk = []
            for c in range(dk):
                probs = _softmax([k[b][n][c][i][j] for i, j in pixels])
                sk.append(dict(zip(pixels, probs)))
            # context G[c][e] = sum_p softmax(k)[c, p] * v[e, p]   (d_k x d_v)
            g = [[sum(sk[c][(i, j)] * v[b][n][e][i][j] for i, j in pixels) for e in range(dv)] for c in range(dk)]
            for i, j in pixels:
                qq = [q[b][n][c][i][j] for c in range(dk)]
                if query_norm:
                    qq = _softmax(qq)
                for e in range(dv):
                    out[b][n][e][i][j] = sum(g[c][e] * qq[c] for c in range(dk))
    return _out(out)


def _dot(q, b, n, i, j, emb):
    return sum(q[b][n][c][i][j] * emb[c] for c in range(len(emb)))


def ref_axial_column(q, v, rel_col):
    """``c[i,j] = sum_{|a-i|<=r} (q[i,j] . R_col[a-i]) v[a,j]``, ``R_col`` indexed by offset + r."""
    bs, n_heads, _, h, w = q.shape
    dv = v.shape[2]
    n_tables, length, _ = rel_col.shape
    r = (length - 1) // 2
    q, v, rel = q.tolist(), v.tolist(), rel_col.tolist()
    out = _zeros(bs, n_heads, dv, h, w)
    for b in range(bs):
        for n in range(n_heads):
            t = _table(n_tables, n)
            for i in range(h):
                for j in range(w):
                    for a in range(h):
                        if abs(a - i) > r:
                            continue
                        weight = _dot(q, b, n, i, j, rel[t][a - i + r])
                        for e in range(dv):
                            out[b][n][e][i][j] += weight * v[b][n][e][a][j]
    return _out(out)


def ref_axial_row(q, c, rel_row):
    """``p[i,j] = sum_{|b-j|<=r} (q[i,j] . R_row[b-j]) c[i,b]``."""
    bs, n_heads, _, h, w = q.shape
    dv = c.shape[2]
    n_tables, length, _ = rel_row.shape
    r = (length - 1) // 2
    q, c, rel = q.tolist(), c.tolist(), rel_row.tolist()
    out = _zeros(bs, n_heads, dv, h, w)
    for b in range(bs):
        for n in range(n_heads):
            t = _table(n_tables, n)
            for i in range(h):
                for j in range(w):
                    for col in range(w):
                        if abs(col - j) > r:
                            continue
                        weight = _dot(q, b, n, i, j, rel[t][col - j + r])
                        for e in range(dv):
                            out[b][n][e][i][j] += weight * c[b][n][e][i][col]
    return _out(out)


def ref_batch_norm(c, bn: nn.BatchNorm2d):
    """Batch norm on ``(B, N, d_v, H, W)`` with channel ``n * d_v + e``.

    Train mode: statistics of the batch (mean and biased variance over B, H, W); eval mode: the
    running statistics. Then the affine ``weight``, ``bias``.
    """
    bs, n_heads, dv, h, w = c.shape
    data = c.tolist()
    weight, bias = bn.weight.tolist(), bn.bias.tolist()
    out = _zeros(bs, n_heads, dv, h, w)
    for n in range(n_heads):
        for e in range(dv):
            ch = n * dv + e
            samples = [data[b][n][e][i][j] for b in range(bs) for i in range(h) for j in range(w)]
            if bn.training:
                mean = sum(samples) / len(samples)
                var = sum((s - mean) ** 2 for s in samples) / len(samples)
            else:
                mean, var = bn.running_mean[ch].item(), bn.running_var[ch].item()
            scale = 1.0 / math.sqrt(var + bn.eps)
            for b in range(bs):
                for i in range(h):
                    for j in range(w):
                        out[b][n][e][i][j] = (data[b][n][e][i][j] - mean) * scale * weight[ch] + bias[ch]
    return _out(out)


def ref_axial(q, v, rel_col, rel_row, bn=None):
    c = ref_axial_column(q, v, rel_col)
    if bn is not None:
        c = ref_batch_norm(c, bn)
    return ref_axial_row(q, c, rel_row)


def ref_positional_2d(q, v, rel):
    """``p[i,j] = sum_{|a-i|<=r, |b-j|<=r} (q[i,j] . R[a-i, b-j]) v[a,b]``; ``R`` indexed by offset + r."""
    bs, n_heads, _, h, w = q.shape
    dv = v.shape[2]
    n_tables, length = rel.shape[:2]
    r = (length - 1) // 2
    q, v, rel = q.tolist(), v.tolist(), rel.tolist()
    out = _zeros(bs, n_heads, dv, h, w)
    for bb in range(bs):
        for n in range(n_heads):
            t = _table(n_tables, n)
            for i in range(h):
                for j in range(w):
                    for a in range(h):
                        for b in range(w):
                            if abs(a - i) > r or abs(b - j) > r:
                                continue
                            weight = _dot(q, bb, n, i, j, rel[t][a - i + r][b - j + r])
                            for e in range(dv):
                                out[bb][n][e][i][j] += weight * v[bb][n][e][a][b]
    return _out(out)


def ref_conv1x1(x, weight):
    """Bias-free 1x1 convolution, ``weight: (C_out, C_in, 1, 1)``."""
    bs, c_in, h, w = x.shape
    c_out = weight.shape[0]
    xs, ws = x.tolist(), weight[:, :, 0, 0].tolist()
    out = _zeros(bs, c_out, h, w)
    for b in range(bs):
        for o in range(c_out):
            for i in range(h):
                for j in range(w):
                    out[b][o][i][j] = sum(ws[o][c] * xs[b][c][i][j] for c in range(c_in))
    return _out(out)


def ref_conv3x3(x, weight, stride):
    """Bias-free 3x3 convolution with zero padding 1 and ``stride``."""
    bs, c_in, h, w = x.shape
    c_out = weight.shape[0]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xs, ws = x.tolist(), weight.tolist()
    out = _zeros(bs, c_out, ho, wo)
    for b in range(bs):
        for o in range(c_out):
            for i in range(ho):
                for j in range(wo):
                    total = 0.0
                    for c in range(c_in):
                        for di in range(3):
                            for dj in range(3):
                                a, bb = stride * i + di - 1, stride * j + dj - 1
                                if 0 <= a < h and 0 <= bb < w:
                                    total += ws[o][c][di][dj] * xs[b][c][a][bb]
                    out[b][o][i][j] = total
    return _out(out)


def ref_avg_pool_2x2_ceil(x):
    """2x2 / stride 2 average pool; windows hanging over the edge average the pixels they cover."""
    bs, ch, h, w = x.shape
    ho, wo = (h + 1) // 2, (w + 1) // 2
    xs = x.tolist()
    out = _zeros(bs, ch, ho, wo)
    for b in range(bs):
        for c in range(ch):
            for i in range(ho):
                for j in range(wo):
                    cells = [xs[b][c][a][bb] for a in (2 * i, 2 * i + 1) for bb in (2 * j, 2 * j + 1) if a < h and bb < w]
                    out[b][c][i][j] = sum(cells) / len(cells)
    return _out(out)


def ref_split_qkv(x, qkv_weight, heads, dk, dv, content):
    """The block's 1x1 qkv projection, split along channels as q, k, v; heads are channel-major."""
    y = ref_conv1x1(x, qkv_weight)
    bs, _, h, w = x.shape
    nk = heads * dk if content else 0
    q = y[:, : heads * dk].reshape(bs, heads, dk, h, w)
    k = y[:, heads * dk : heads * dk + nk].reshape(bs, heads, dk, h, w) if content else None
    v = y[:, heads * dk + nk :].reshape(bs, heads, dv, h, w)
    assert v.shape[1] * v.shape[2] == heads * dv
    return q, k, v


def ref_gaussian_attention(v, sigma):
    """``out(p) = sum_p' w(p,p') v(p')``, ``w ∝ exp(-||p-p'||^2 / (2 sigma^2))`` normalised over the map."""
    bs, ch, h, w = v.shape
    vs = v.tolist()
    pixels = [(a, b) for a in range(h) for b in range(w)]
    out = _zeros(bs, ch, h, w)
    for i in range(h):
        for j in range(w):
            raw = [math.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2)) for a, b in pixels]
            z = sum(raw)
            for bb in range(bs):
                for c in range(ch):
                    out[bb][c][i][j] = sum(wt / z * vs[bb][c][a][b] for wt, (a, b) in zip(raw, pixels))
    return _out(out)


def ref_mhsa(q, k, v):
    """``softmax(Q K^T / sqrt(d_k)) V`` per head on ``(B, N, d, H, W)`` maps."""
    bs, n_heads, dk, h, w = q.shape
    dv = v.shape[2]
    q, k, v = q.tolist(), k.tolist(), v.tolist()
    pixels = [(i, j) for i in range(h) for j in range(w)]
    out = _zeros(bs, n_heads, dv, h, w)
    for b in range(bs):
        for n in range(n_heads):
            for i, j in pixels:
                scores = [
                    sum(q[b][n][c][i][j] * k[b][n][c][a][bb] for c in range(dk)) / math.sqrt(dk) for a, bb in pixels
                ]
                probs = _softmax(scores)
                for e in range(dv):
                    out[b][n][e][i][j] = sum(p * v[b][n][e][a][bb] for p, (a, bb) in zip(probs, pixels))
    return _out(out)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _randn(*shape, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def _set_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, set by hand."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.3)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))


def _gsa_block(in_channels=3, out_channels=HEADS * DV, stride=1, **fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the global-2D cost warning
        cfg = GSAConfig(heads=HEADS, dim_key=DK, **fields)
    return create_block(cfg, in_channels, out_channels, stride=stride).double()


def _qv(h, w, seed=0):
    torch.manual_seed(seed)
    return _randn(B, HEADS, DK, h, w), _randn(B, HEADS, DV, h, w)


def run_positional(module, q, v):
    """A positional module on ``(B, N, d, H, W)`` tensors (it reads channels last, ``(B, H, W, N, d)``)."""
    return module(q.permute(0, 3, 4, 1, 2), v.permute(0, 3, 4, 1, 2))


def run_content(module, q, k, v):
    """Content attention on ``(B, N, d, L)`` tensors (it reads channels last, ``(B, L, N, d)``)."""
    return module(*(t.permute(0, 3, 1, 2) for t in (q, k, v)))


def assert_matches(actual, expected, tol=EXACT):
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)


# ---------------------------------------------------------------------------------------------
# 1. Content attention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query_norm", [False, True])
@pytest.mark.parametrize("size", [(5, 4), (1, 3)])
def test_content_attention_matches_naive(query_norm, size):
    h, w = size
    torch.manual_seed(1)
    q, k = _randn(B, HEADS, DK, h, w), _randn(B, HEADS, DK, h, w) * 2
    v = _randn(B, HEADS, DV, h, w)
    module = ContentAttention(query_norm=query_norm).double()
    out = run_content(module, q.flatten(-2), k.flatten(-2), v.flatten(-2))
    assert_matches(out.view(B, HEADS, DV, h, w), ref_content(q, k, v, query_norm=query_norm))


def test_content_attention_has_no_scale_and_is_not_query_normalised_by_default():
    """Scaling q by s scales F_c by s exactly (no softmax on q, no 1/sqrt(d) anywhere)."""
    torch.manual_seed(2)
    q, k, v = _randn(1, HEADS, DK, 6), _randn(1, HEADS, DK, 6), _randn(1, HEADS, DV, 6)
    module = ContentAttention().double()
    assert_matches(run_content(module, 3.0 * q, k, v), 3.0 * run_content(module, q, k, v))


@pytest.mark.parametrize("query_norm", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_content_only_gsa_block_matches_naive(query_norm, stride):
    torch.manual_seed(3)
    block = _gsa_block(positional="none", query_norm=query_norm, stride=stride).eval()
    x = _randn(B, 3, 5, 3)
    q, k, v = ref_split_qkv(x, block.qkv.weight.detach(), HEADS, DK, DV, content=True)
    expected = ref_content(q, k, v, query_norm=query_norm).reshape(B, HEADS * DV, 5, 3)
    if stride == 2:
        expected = ref_avg_pool_2x2_ceil(expected)
    with torch.no_grad():
        assert_matches(block(x), expected)


# ---------------------------------------------------------------------------------------------
# 2. Axial positional attention
# ---------------------------------------------------------------------------------------------

# (module span, H, W): global on 5x4 (r = 4 = size - 1), local r = 1, and spans larger than the map
AXIAL_CASES = [(4, 5, 4), (1, 5, 4), (2, 5, 4), (6, 5, 4), (3, 2, 5)]


@pytest.mark.parametrize("span,h,w", AXIAL_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_axial_without_norm_matches_naive(span, h, w, shared):
    torch.manual_seed(10)
    module = AxialPositionalAttention(
        heads=HEADS, dim_key=DK, dim_value=DV, span=span, shared=shared, norm=False
    ).double()
    assert module.rel_col.shape == ((1 if shared else HEADS), 2 * span + 1, DK)
    assert module.rel_row.shape == module.rel_col.shape
    q, v = _qv(h, w, seed=11)
    expected = ref_axial(q, v, module.rel_col.detach(), module.rel_row.detach())
    assert_matches(run_positional(module, q, v), expected)


@pytest.mark.parametrize("span,h,w", [(4, 5, 4), (1, 5, 4), (6, 5, 4)])
@pytest.mark.parametrize("shared", [False, True])
def test_axial_with_eval_batch_norm_matches_naive(span, h, w, shared):
    torch.manual_seed(12)
    module = AxialPositionalAttention(heads=HEADS, dim_key=DK, dim_value=DV, span=span, shared=shared).double()
    _set_bn(module.norm, seed=13)
    module.eval()
    q, v = _qv(h, w, seed=14)
    expected = ref_axial(q, v, module.rel_col.detach(), module.rel_row.detach(), bn=module.norm)
    with torch.no_grad():
        assert_matches(run_positional(module, q, v), expected)


@pytest.mark.parametrize("span,h,w", [(4, 5, 4), (1, 5, 4)])
def test_axial_with_train_batch_norm_uses_batch_statistics(span, h, w):
    torch.manual_seed(15)
    module = AxialPositionalAttention(heads=HEADS, dim_key=DK, dim_value=DV, span=span).double()
    _set_bn(module.norm, seed=16)  # running stats must be ignored in train mode; affine is used
    module.train()
    q, v = _qv(h, w, seed=17)
    expected = ref_axial(q, v, module.rel_col.detach(), module.rel_row.detach(), bn=module.norm)
    assert_matches(run_positional(module, q, v), expected)


def test_axial_column_and_row_steps_are_not_interchangeable():
    """Swapping the roles of R_col and R_row in the reference gives a different answer, so the
    tests above pin which table goes with which axis (and the offset sign, via asymmetric tables)."""
    torch.manual_seed(18)
    module = AxialPositionalAttention(heads=HEADS, dim_key=DK, dim_value=DV, span=3, norm=False).double()
    q, v = _qv(4, 4, seed=19)
    rc, rr = module.rel_col.detach(), module.rel_row.detach()
    out = run_positional(module, q, v).detach()
    assert not torch.allclose(out, ref_axial(q, v, rr, rc), atol=1e-3)
    assert not torch.allclose(out, ref_axial(q, v, rc.flip(1), rr.flip(1)), atol=1e-3)
    assert_matches(out, ref_axial(q, v, rc, rr))


# ---------------------------------------------------------------------------------------------
# 3. 2D positional attention
# ---------------------------------------------------------------------------------------------

# (module span, H, W, window geometry). Labelled by geometry, not by the implementation's internal
# paths, so the cases stay meaningful whatever the implementation does: "inside" = the (clipped)
# window is smaller than the map (the unfold regime of a sliding-window implementation); "masked" =
# the window covers at least H*W cells but some offsets on the map lie outside it; "full" = every
# offset on the map lies inside the window (global).
POS2D_CASES = [
    (1, 5, 5, "inside"),
    (1, 5, 4, "inside"),
    (2, 6, 5, "inside"),
    (2, 9, 2, "inside"),  # window clipped to 5x3 along W, still smaller than the map
    (2, 4, 4, "masked"),
    (2, 3, 5, "masked"),
    (3, 4, 3, "full"),  # global for a 4-map
    (1, 2, 2, "full"),
    (5, 4, 3, "full"),  # span larger than the map: only the central part of the table is used
]


def _window_geometry(span, h, w):
    ry, rx = min(span, h - 1), min(span, w - 1)
    if (2 * ry + 1) * (2 * rx + 1) < h * w:
        return "inside"
    full = all(abs(a - i) <= span for i in range(h) for a in range(h)) and all(
        abs(b - j) <= span for j in range(w) for b in range(w)
    )
    return "full" if full else "masked"


@pytest.fixture(params=["rows", "window", "window-torch"])
def pos2d_path(request, monkeypatch):
    """Force one of ``Positional2DAttention``'s algorithms: banded whole rows, the window path with
    its compiled CPU kernel, or the window path in plain PyTorch (what CUDA and machines without a C
    compiler run)."""
    monkeypatch.setattr(gsa_module, "WINDOW_COST", math.inf if request.param == "rows" else 0.0)
    if request.param == "rows":
        monkeypatch.setattr(gsa_module, "SMALL_WINDOW", 0)
    if request.param == "window-torch":
        monkeypatch.setenv("GSA_SEARCH_NATIVE", "0")
    elif request.param == "window":
        request.getfixturevalue("native_kernel")
    return request.param


def test_window_path_is_chosen_by_sizes_alone():
    """The algorithm with fewer multiply-adds: local windows read only their keys (also r = 3 on
    the 8x8 maps of a proxy's third stage, and r = size - 2); global windows use whole rows, unless
    they have at most 7x7 offsets."""
    assert gsa_module.window_path(32, 32, 3, 3) and gsa_module.window_path(64, 64, 3, 3)
    assert gsa_module.window_path(16, 16, 3, 3) and gsa_module.window_path(32, 32, 7, 7)
    assert gsa_module.window_path(8, 8, 3, 3) and gsa_module.window_path(16, 16, 14, 14)
    assert not gsa_module.window_path(32, 32, 31, 31)  # global
    assert not gsa_module.window_path(8, 8, 7, 7) and not gsa_module.window_path(5, 5, 4, 4)
    # a global 7x7 or 3x3 window: as many multiply-adds as the rows, small enough for the window
    assert gsa_module.window_path(4, 4, 3, 3) and gsa_module.window_path(2, 2, 1, 1)
    assert not gsa_module.window_path(16, 4, 3, 3)  # 7 columns on a 4-wide map: more work than rows


@pytest.mark.parametrize("span,h,w,geometry", POS2D_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_positional_2d_matches_naive(pos2d_path, span, h, w, geometry, shared):
    assert _window_geometry(span, h, w) == geometry  # the case really has the intended geometry
    torch.manual_seed(20)
    module = Positional2DAttention(heads=HEADS, dim_key=DK, span=span, shared=shared).double()
    assert module.rel.shape == ((1 if shared else HEADS), 2 * span + 1, 2 * span + 1, DK)
    q, v = _qv(h, w, seed=21)
    assert_matches(run_positional(module, q, v), ref_positional_2d(q, v, module.rel.detach()))


def test_positional_2d_offsets_are_not_transposed_or_flipped(pos2d_path):
    torch.manual_seed(22)
    module = Positional2DAttention(heads=HEADS, dim_key=DK, span=1).double()
    q, v = _qv(5, 4, seed=23)
    rel = module.rel.detach()
    out = run_positional(module, q, v).detach()
    assert not torch.allclose(out, ref_positional_2d(q, v, rel.transpose(1, 2)), atol=1e-3)
    assert not torch.allclose(out, ref_positional_2d(q, v, rel.flip(1, 2)), atol=1e-3)


@pytest.mark.parametrize("kind,span,h,w", [("axial", 1, 4, 3), ("axial", 5, 4, 3), ("2d", 1, 4, 4), ("2d", 2, 3, 3)])
def test_positional_gradients_match_finite_differences(kind, span, h, w):
    """The positional paths' backward (q, v and the embeddings) against float64 finite differences."""
    torch.manual_seed(24)
    if kind == "axial":
        module = AxialPositionalAttention(heads=HEADS, dim_key=DK, dim_value=DV, span=span, norm=False).double()
    else:
        module = Positional2DAttention(heads=HEADS, dim_key=DK, span=span).double()
    q, v = _qv(h, w, seed=25)
    q.requires_grad_(True)
    v.requires_grad_(True)
    params = tuple(module.parameters())
    inputs = (q, v) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(lambda *a: _functional(module, a), inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("span,h,w", [(1, 4, 5), (2, 3, 3), (1, 6, 2)])
def test_positional_2d_gradients_on_every_path(pos2d_path, span, h, w):
    """Both 2D algorithms (and both implementations of the window sum) against float64 finite
    differences, for q, v and the embedding table."""
    torch.manual_seed(26)
    module = Positional2DAttention(heads=HEADS, dim_key=DK, span=span).double()
    q, v = _qv(h, w, seed=27)
    q.requires_grad_(True)
    v.requires_grad_(True)
    inputs = (q, v, module.rel.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *a: _functional(module, a), inputs, eps=1e-6, atol=1e-6)


def _functional(module, args):
    """``run_positional(module, q, v)`` with its embedding tables replaced by ``args[2:]`` (differentiable)."""
    q, v, *tables = args
    names = [name for name, _ in module.named_parameters()]
    q, v = q.permute(0, 3, 4, 1, 2), v.permute(0, 3, 4, 1, 2)  # the modules work channels last
    return torch.func.functional_call(module, dict(zip(names, tables)), (q, v))


# ---------------------------------------------------------------------------------------------
# 4. The whole GSA block
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "positional,axial_norm", [("axial", False), ("axial", True), ("2d", False)], ids=["axial", "axial-bn", "2d"]
)
@pytest.mark.parametrize("rel_span", ["global", 1])
@pytest.mark.parametrize("output_proj", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("content", [True, False])
def test_gsa_block_matches_naive(positional, axial_norm, rel_span, output_proj, stride, content):
    h, w, c_in = 5, 4, 3
    c_out = 5 if output_proj else HEADS * DV  # with a projection, heads * d_v need not equal C_out
    torch.manual_seed(30)
    block = _gsa_block(
        c_in,
        c_out,
        stride,
        dim_value=DV,
        content=content,
        positional=positional,
        rel_span=rel_span,
        feature_size=5,
        axial_norm=axial_norm,
        output_proj=output_proj,
    )
    if axial_norm:
        _set_bn(block.positional.norm, seed=31)
    block.eval()
    x = _randn(B, c_in, h, w, seed=32)

    q, k, v = ref_split_qkv(x, block.qkv.weight.detach(), HEADS, DK, DV, content=content)
    if positional == "axial":
        pos = block.positional
        bn = pos.norm if axial_norm else None
        mixed = ref_axial(q, v, pos.rel_col.detach(), pos.rel_row.detach(), bn=bn)
    else:
        mixed = ref_positional_2d(q, v, block.positional.rel.detach())
    if content:
        mixed = mixed + ref_content(q, k, v)
    expected = mixed.reshape(B, HEADS * DV, h, w)
    if output_proj:
        expected = ref_conv1x1(expected, block.proj.weight.detach())
    if stride == 2:
        expected = ref_avg_pool_2x2_ceil(expected)
    with torch.no_grad():
        assert_matches(block(x), expected)


@pytest.mark.parametrize(
    "fields",
    [
        dict(positional="axial"),  # content + axial with train-mode batch norm: the paper's block
        dict(positional="axial", query_norm=True, shared_embeddings=True, axial_norm=False),
        dict(positional="2d", rel_span=1),
        dict(positional="none"),
        dict(content=False, positional="axial", rel_span=1),
        dict(positional="axial", memory_efficient=True),
        dict(positional="2d", rel_span=1, memory_efficient=True),
    ],
    ids=["paper", "qnorm-shared", "2d-local", "content", "axial-local", "recompute", "2d-recompute"],
)
def test_gsa_block_gradients_match_finite_differences(fields):
    """The whole block's backward (projection, content, positional kernels, the norm between the
    axial steps) against float64 finite differences, for the input and every parameter."""
    torch.manual_seed(31)
    block = _gsa_block(3, HEADS * DV, 1, dim_value=DV, feature_size=5, **fields).train()
    x = _randn(2, 3, 5, 4).requires_grad_(True)
    names = [name for name, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in block.named_parameters())

    def run(x, *tables):
        return torch.func.functional_call(block, dict(zip(names, tables)), (x,))

    assert torch.autograd.gradcheck(run, (x,) + params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_gsa_block_2d_matches_naive_and_finite_differences_on_every_path(pos2d_path, shared):
    """The whole 2D block (projection, content, 2D positional) on each 2D algorithm: output against
    the naive loops, and every gradient against float64 finite differences."""
    torch.manual_seed(34)
    block = _gsa_block(
        3, HEADS * DV, 1, dim_value=DV, feature_size=6, positional="2d", rel_span=1, shared_embeddings=shared
    ).eval()
    x = _randn(2, 3, 6, 5, seed=35)
    q, k, v = ref_split_qkv(x, block.qkv.weight.detach(), HEADS, DK, DV, content=True)
    expected = (ref_positional_2d(q, v, block.positional.rel.detach()) + ref_content(q, k, v)).reshape(2, -1, 6, 5)
    with torch.no_grad():
        assert_matches(block(x), expected)
    names = [name for name, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in block.named_parameters())

    def run(x, *tables):
        return torch.func.functional_call(block, dict(zip(names, tables)), (x,))

    assert torch.autograd.gradcheck(run, (x.requires_grad_(True),) + params, eps=1e-6, atol=1e-6)


def test_block_parameter_gradients_do_not_need_an_input_gradient():
    """With an input that needs no gradient (a first layer, a frozen stem) the input gradient is
    skipped and the parameters' gradients are unchanged."""
    torch.manual_seed(33)
    block = _gsa_block(3, HEADS * DV, 1, dim_value=DV, feature_size=5)
    x = _randn(2, 3, 5, 4)
    grads = []
    for needs in (True, False):
        out = block(x.clone().requires_grad_(needs))
        grads.append(torch.autograd.grad(out.pow(2).sum(), tuple(block.parameters())))
    for a, b in zip(*grads):
        assert_matches(b, a)


@pytest.mark.parametrize("kernel", ["native", "bmm"])
@pytest.mark.parametrize("positional", ["axial", "2d"])
def test_memory_efficient_block_is_the_same_function_and_keeps_no_logits(positional, kernel, monkeypatch):
    """``memory_efficient`` recomputes the positional logits in backward: identical outputs and
    gradients, and exactly the ``L x L`` logits of every step fewer saved activations on the
    batched-matmul path; the fused CPU kernel never keeps logits, with or without the option."""
    from gsa_search.blocks import _relative_native

    if kernel == "bmm":
        monkeypatch.setattr(_relative_native, "usable", lambda *tensors: False)
    elif not _relative_native.native_available():
        pytest.skip("compiled relative-attention kernel unavailable or switched off")
    if positional == "2d":  # the banded rows, whose batched matmuls keep logits (a local window keeps none)
        monkeypatch.setattr(gsa_module, "WINDOW_COST", math.inf)
        monkeypatch.setattr(gsa_module, "SMALL_WINDOW", 0)
    torch.manual_seed(32)
    fields = dict(dim_value=DV, feature_size=6, positional=positional, rel_span=1 if positional == "2d" else "global")
    plain = _gsa_block(3, HEADS * DV, 1, **fields)
    lean = _gsa_block(3, HEADS * DV, 1, memory_efficient=True, **fields)
    lean.load_state_dict(plain.state_dict())
    x = _randn(2, 3, 6, 5)
    results = []
    for block in (plain, lean):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = block(x)
        grads = torch.autograd.grad(out.pow(2).sum(), tuple(block.parameters()))
        results.append((out.detach(), grads, sum(saved)))
    (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = results
    assert_matches(out_b, out_a)
    for a, b in zip(grads_a, grads_b):
        assert_matches(b, a)
    h, w, batch = 6, 5, 2
    if positional == "axial":  # a column step (L = H) and a row step (L = W)
        logits = HEADS * batch * (w * h * h + h * w * w)
    else:  # 2r+1 dense row steps over frames of H+r rows: B*(H+r) sequences of length W
        logits = 3 * HEADS * batch * (h + 1) * w * w
    assert saved_a - saved_b == (logits if kernel == "bmm" else 0)


# ---------------------------------------------------------------------------------------------
# 5. Explicit (Gaussian) attention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0.3, 1.0, 2.0, 7.5])
def test_explicit_sigma_equals_init_radius(radius):
    # rho is created as a float32 parameter (PyTorch's default dtype), hence rel=1e-6
    module = GaussianAttention(init_radius=radius)
    assert module.sigma.item() == pytest.approx(radius, rel=1e-6)
    assert _softplus(module.rho.item()) == pytest.approx(radius, rel=1e-6)


@pytest.mark.parametrize("length,sigma", [(5, 1.3), (1, 2.0), (7, 0.6)])
def test_gaussian_kernel_matches_naive(length, sigma):
    kernel = gaussian_kernel(length, torch.tensor(sigma, dtype=torch.float64))
    expected = []
    for i in range(length):
        raw = [math.exp(-((a - i) ** 2) / (2 * sigma**2)) for a in range(length)]
        expected.append([x / sum(raw) for x in raw])
    assert_matches(kernel, _out(expected))


@pytest.mark.parametrize("size", [(5, 4), (3, 6)])
@pytest.mark.parametrize("radius", [0.7, 2.0])
def test_gaussian_attention_matches_naive_2d(size, radius):
    module = GaussianAttention(init_radius=radius).double()
    with torch.no_grad():
        module.rho.add_(0.37)  # a rho other than the initial one
    v = _randn(B, 3, *size, seed=40)
    sigma = _softplus(module.rho.item())
    with torch.no_grad():
        assert_matches(module(v), ref_gaussian_attention(v, sigma), GAUSS)


@pytest.mark.parametrize("placement", ["replace", "beside"])
@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_block_matches_naive(placement, stride):
    torch.manual_seed(41)
    block = create_block(ExplicitConfig(init_radius=1.5, placement=placement), 3, 4, stride=stride).double()
    assert (block.conv is not None) == (placement == "beside")
    x = _randn(B, 3, 5, 4, seed=42)
    sigma = _softplus(block.attention.rho.item())
    assert sigma == pytest.approx(1.5, rel=1e-6)
    expected = ref_gaussian_attention(ref_conv1x1(x, block.value.weight.detach()), sigma)
    if stride == 2:
        expected = ref_avg_pool_2x2_ceil(expected)
    if placement == "beside":
        expected = expected + ref_conv3x3(x, block.conv.weight.detach(), stride)
    with torch.no_grad():
        assert_matches(block(x), expected, GAUSS)


def test_explicit_radius_gradient_is_nonzero_and_matches_finite_difference():
    torch.manual_seed(43)
    block = create_block(ExplicitConfig(init_radius=1.2), 3, 4).double()
    x = _randn(1, 3, 5, 4, seed=44)
    target = _randn(1, 4, 5, 4, seed=45)
    (block(x) * target).sum().backward()
    grad = block.attention.rho.grad
    assert grad is not None and grad.abs().item() > 1e-6

    value = ref_conv1x1(x, block.value.weight.detach())
    rho, eps = block.attention.rho.item(), 1e-5

    def loss(r):
        return (ref_gaussian_attention(value, _softplus(r)) * target).sum().item()

    numeric = (loss(rho + eps) - loss(rho - eps)) / (2 * eps)
    assert grad.item() == pytest.approx(numeric, rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# 6. MHSA baseline
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_proj", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_mhsa_block_matches_naive(output_proj, stride):
    torch.manual_seed(50)
    c_out = 5 if output_proj else HEADS * DV
    block = create_block(
        MHSAConfig(heads=HEADS, dim_key=DK, dim_value=DV, output_proj=output_proj), 3, c_out, stride=stride
    ).double()
    x = _randn(B, 3, 3, 4, seed=51) * 2
    y = ref_conv1x1(x, block.qkv.weight.detach())
    nq = HEADS * DK
    q = y[:, :nq].reshape(B, HEADS, DK, 3, 4)
    k = y[:, nq : 2 * nq].reshape(B, HEADS, DK, 3, 4)
    v = y[:, 2 * nq :].reshape(B, HEADS, DV, 3, 4)
    expected = ref_mhsa(q, k, v).reshape(B, HEADS * DV, 3, 4)
    if output_proj:
        expected = ref_conv1x1(expected, block.proj.weight.detach())
    if stride == 2:
        expected = ref_avg_pool_2x2_ceil(expected)
    with torch.no_grad():
        assert_matches(block(x), expected)


# ---------------------------------------------------------------------------------------------
# 7. Receptive fields
# ---------------------------------------------------------------------------------------------


def _input_gradient(block, x, i0, j0):
    """Gradient of a random projection of output pixel (i0, j0) of batch item 0 w.r.t. the input."""
    x = x.clone().requires_grad_(True)
    out = block(x)
    weights = torch.randn(out.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (out[0, :, i0, j0] * weights).sum().backward()
    grad = x.grad.abs().sum(dim=1)  # (B, H, W): total sensitivity per input pixel
    assert torch.all(grad[1:] == 0), "eval mode: one batch item must not depend on the others"
    return grad[0]


def _assert_box_receptive_field(grad, i0, j0, r):
    h, w = grad.shape
    for a in range(h):
        for b in range(w):
            inside = abs(a - i0) <= r and abs(b - j0) <= r
            if not inside:
                assert grad[a, b] == 0, f"output ({i0},{j0}) with r={r} depends on input ({a},{b})"
    corners = [(i0 + di, j0 + dj) for di in (-r, r) for dj in (-r, r)]
    corners = [(a, b) for a, b in corners if 0 <= a < h and 0 <= b < w]
    assert corners, "pick an output pixel whose box has a corner inside the map"
    for a, b in corners:
        assert grad[a, b] > 1e-12, f"output ({i0},{j0}) with r={r} does not reach its box corner ({a},{b})"


@pytest.mark.parametrize(
    "content,positional", [(True, "axial"), (False, "axial"), (False, "2d")], ids=["content+axial", "axial", "2d"]
)
def test_global_gsa_reaches_the_opposite_corner(content, positional):
    h, w = 6, 5
    torch.manual_seed(60)
    block = _gsa_block(content=content, positional=positional, feature_size=max(h, w)).eval()
    grad = _input_gradient(block, _randn(B, 3, h, w, seed=61), 0, 0)
    assert grad[h - 1, w - 1] > 1e-12
    assert torch.all(grad > 0), "a global block's output pixel depends on every input pixel"


@pytest.mark.parametrize("positional", ["axial", "2d"])
@pytest.mark.parametrize("r,i0,j0", [(1, 3, 2), (2, 3, 2), (1, 0, 0), (2, 6, 5), (2, 1, 4)])
def test_local_positional_gsa_reaches_exactly_its_box(positional, r, i0, j0):
    h, w = 7, 6
    torch.manual_seed(62)
    block = _gsa_block(content=False, positional=positional, rel_span=r, feature_size=max(h, w)).eval()
    grad = _input_gradient(block, _randn(B, 3, h, w, seed=63), i0, j0)
    _assert_box_receptive_field(grad, i0, j0, r)


def test_local_2d_with_a_map_sized_window_reaches_exactly_its_box():
    """r = 2 on a 4x4 map: the window is as large as the map, yet offsets of 3 must stay out."""
    torch.manual_seed(64)
    block = _gsa_block(content=False, positional="2d", rel_span=2, feature_size=4).eval()
    for i0, j0 in [(0, 0), (3, 1)]:
        grad = _input_gradient(block, _randn(B, 3, 4, 4, seed=65), i0, j0)
        _assert_box_receptive_field(grad, i0, j0, 2)


@pytest.mark.parametrize("i0,j0", [(2, 3), (0, 0), (4, 1)])
def test_conv3x3_reaches_one_pixel_around(i0, j0):
    torch.manual_seed(66)
    block = create_block(ConvConfig(), 3, 4).double().eval()
    grad = _input_gradient(block, _randn(B, 3, 5, 6, seed=67), i0, j0)
    _assert_box_receptive_field(grad, i0, j0, 1)


def test_explicit_attention_is_global():
    torch.manual_seed(68)
    block = create_block(ExplicitConfig(init_radius=2.0), 3, 4).double().eval()
    grad = _input_gradient(block, _randn(B, 3, 7, 6, seed=69), 0, 0)
    assert grad[6, 5] > 1e-12
    assert torch.all(grad > 0)


@pytest.mark.parametrize("c,h,w", [(8, 2, 2), (9, 3, 1), (9, 2, 3), (5, 4, 4), (5, 9, 8)], ids=lambda s: str(s))
def test_projection_matches_a_1x1_convolution_forward_and_backward(c, h, w):
    """``PointwiseProjection`` against ``conv2d`` with the same weight: the channels-last outputs,
    the input gradient and the weight gradient, on maps with at most half as many pixels as input
    channels (the weight gradient is then one matmul over all pixels) and more (per-image
    products), with one output unused."""
    assert gsa_module.one_matmul_weight_grad(c, h * w) == (2 * h * w <= c)
    torch.manual_seed(32)
    proj = gsa_module.PointwiseProjection(c, 9).double()
    x = _randn(3, c, h, w).requires_grad_(True)
    q, k, v = proj(x, (2, 3, 4))
    grads = [_randn(*t.shape) for t in (q, v)]
    torch.autograd.backward([q, v], grads)  # k unused: no gradient flows from it
    x_ref = x.detach().clone().requires_grad_(True)
    weight = proj.weight.detach().clone().requires_grad_(True)
    ref = nn.functional.conv2d(x_ref, weight).permute(0, 2, 3, 1)  # (B, H, W, 9)
    torch.testing.assert_close(torch.cat([q, k, v], -1), ref)
    torch.autograd.backward([ref[..., :2], ref[..., 5:]], grads)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(proj.weight.grad, weight.grad)
    assert not proj.weight.grad[2:5].any()
