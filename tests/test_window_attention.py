"""``blocks._window.window_attention``: local 2D positional attention with the logits formed inside
the compiled kernel (forward and backward) instead of being stored.

Checked against plain loops (logits, then the window sum), against the unfused path that CUDA and
machines without a compiler run (outputs and all three gradients), by float64 finite differences,
across thread counts, and for what FLOP counters see; plus the block really using it on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import create_block, block_config
from gsa_search.blocks._window import fused_usable, window_attention, window_sum
from gsa_search.measure import count_flops
from test_window import naive_window_sum


@pytest.fixture(autouse=True)
def _kernel(native_kernel):
    """Every test here needs the compiled kernel (skips, or fails with ``CI=true``, without it)."""


def naive_attention(q, v, rel, ry, rx):
    """``out[b,i,j,n] = sum_{dy,dx in the map} (q[b,i,j,n] . rel[n, dy*(2rx+1)+dx]) v[b,i+dy-ry,j+dx-rx,n]``:
    the logits by einsum, then the plain loop over pixels and offsets of ``test_window``."""
    logits = torch.einsum("bhwnc,nkc->nbhwk", q.double(), rel.double())
    return naive_window_sum(logits, v.double(), ry, rx)


def _inputs(b, h, w, n, d_k, d_v, ry, rx, *, dtype=torch.float32, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # q and v as the block hands them over: slices of one channels-last projection
        qkv = torch.randn(b, h, w, n * (d_k + d_v + 3), generator=g, dtype=dtype)
        q = qkv[..., : n * d_k].unflatten(-1, (n, d_k))
        v = qkv[..., n * d_k : n * (d_k + d_v)].unflatten(-1, (n, d_v))
    else:
        q = torch.randn(b, h, w, n, d_k, generator=g, dtype=dtype)
        v = torch.randn(b, h, w, n, d_v, generator=g, dtype=dtype)
    rel = torch.randn(n, (2 * ry + 1) * (2 * rx + 1), d_k, generator=g, dtype=dtype)
    return q, v, rel


def _unfused(q, v, rel, ry, rx):
    """What the block runs without the fused kernel: stored logits, then the window sum."""
    return window_sum(torch.einsum("bhwnc,nkc->nbhwk", q, rel), v, ry, rx)


CASES = [
    # b, h, w, n, d_k, d_v, ry, rx, strided
    (2, 5, 7, 2, 4, 4, 1, 2, False),  # a specialised width (4), ry != rx
    (1, 6, 6, 2, 8, 8, 2, 2, True),  # specialised (8), strided q and v
    (2, 4, 9, 3, 16, 16, 3, 3, True),  # specialised (16), window taller than half the map
    (1, 5, 4, 2, 3, 5, 1, 1, False),  # d_k != d_v: the generic kernel
    (1, 1, 6, 1, 4, 4, 0, 2, False),  # one row: a 1 x 5 window
    (1, 3, 1, 2, 8, 8, 2, 0, True),  # one column, window taller than the map
    (1, 3, 4, 2, 32, 32, 1, 1, True),  # specialised (32)
    (2, 2, 3, 1, 64, 64, 0, 0, False),  # specialised (64), a 1x1 window (one offset, 7 padding)
]


@pytest.mark.parametrize("b,h,w,n,d_k,d_v,ry,rx,strided", CASES)
def test_matches_naive_loop(b, h, w, n, d_k, d_v, ry, rx, strided):
    q, v, rel = _inputs(b, h, w, n, d_k, d_v, ry, rx, strided=strided, seed=1)
    assert strided == (not q.is_contiguous())
    out = window_attention(q, v, rel, ry, rx)
    assert out.shape == (b, h, w, n, d_v) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), naive_attention(q, v, rel, ry, rx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,h,w,n,d_k,d_v,ry,rx,strided", CASES)
def test_gradients_match_the_unfused_path(b, h, w, n, d_k, d_v, ry, rx, strided):
    """Output and the gradients of q, v and the offsets table, fused vs stored logits."""
    q, v, rel = _inputs(b, h, w, n, d_k, d_v, ry, rx, strided=strided, seed=2)
    grad = torch.randn(b, h, w, n, d_v, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (window_attention, _unfused):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, v, rel)]
        out = fn(*leaves, ry, rx)
        out.backward(grad)
        results.append([out] + [t.grad for t in leaves])
    for fused, unfused in zip(*results):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ry,rx,d_k,d_v", [(1, 1, 3, 2), (2, 1, 4, 4), (1, 2, 8, 8)])
def test_gradcheck(ry, rx, d_k, d_v):
    q, v, rel = _inputs(2, 4, 5, 2, d_k, d_v, ry, rx, dtype=torch.float64, seed=4)
    inputs = tuple(t.requires_grad_(True) for t in (q, v, rel))
    assert torch.autograd.gradcheck(lambda *a: window_attention(*a, ry, rx), inputs, eps=1e-6, atol=1e-6)


def test_thread_counts_agree():
    """Forward: bitwise identical (units are independent); backward: the per-thread sums of the
    offsets' gradient are added in another order, so equal to rounding."""
    q, v, rel = _inputs(3, 8, 8, 2, 8, 8, 2, 2, seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_(True) for t in (q, v, rel)]
            out = window_attention(*leaves, 2, 2)
            out.square().sum().backward()
            results.append([out] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])
    torch.testing.assert_close(results[0][3], results[1][3], rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_rejected_with_the_shapes():
    q, v, rel = _inputs(1, 4, 4, 2, 4, 4, 1, 1)
    with pytest.raises(ValueError, match=r"do not fit a \(3x3\) window"):
        window_attention(q, v, rel[:, :4], 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        window_attention(q, v[:, :3], rel, 1, 1)
    with pytest.raises(ValueError, match="radii must be >= 0"):
        window_attention(q, v, rel, -1, 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        window_attention(q.bfloat16(), v.bfloat16(), rel.bfloat16(), 1, 1)
    with pytest.raises(ValueError, match="one dtype"):
        window_attention(q.double(), v, rel, 1, 1)
    assert not fused_usable(q.bfloat16()) and fused_usable(q, v, rel)
    assert not fused_usable(q, v.double(), rel)  # mixed dtypes: the block takes the unfused path


def test_empty_batch():
    q, v, rel = _inputs(0, 3, 3, 2, 4, 4, 1, 1)
    leaves = [t.requires_grad_(True) for t in (q, v, rel)]
    out = window_attention(*leaves, 1, 1)
    assert out.shape == (0, 3, 3, 2, 4)
    out.sum().backward()
    assert leaves[2].grad is not None and not leaves[2].grad.any()


def test_torch_flop_counter_sees_forward_and_backward():
    """Logits (d_k) and weighting (d_v) per query, head and offset: 2 FLOPs each forward, twice
    that backward, as for the unfused path."""
    q, v, rel = _inputs(2, 5, 4, 2, 6, 3, 1, 2, seed=8)
    q.requires_grad_(True)
    macs = 2 * 5 * 4 * 2 * 15 * (6 + 3)
    with FlopCounterMode(display=False) as counter:
        out = window_attention(q, v, rel, 1, 2)
    assert counter.get_total_flops() == 2 * macs
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * macs


def test_the_block_uses_it_on_cpu_and_counts_the_same(monkeypatch):
    """A local 2D GSA block on CPU runs the fused op; its output, gradients and FLOPs breakdown
    equal the unfused path's (``GSA_SEARCH_NATIVE=0``, what CUDA runs)."""
    cfg = block_config("gsa", heads=2, positional="2d", rel_span=2, content=False, feature_size=12)
    torch.manual_seed(9)
    block = create_block(cfg, 8, 8)
    x = torch.randn(2, 8, 12, 12)
    with FlopCounterMode(display=False) as counter:
        block(x)
    assert torch.ops.gsa_search.window_attention in counter.get_flop_counts()["Global"]
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("GSA_SEARCH_NATIVE", native)
        block.zero_grad()
        x_ = x.clone().requires_grad_(True)
        out = block(x_)
        out.square().sum().backward()
        count = count_flops(block, (1, 8, 12, 12))
        results.append((out, x_.grad, block.positional.rel.grad, count.total, count.by_operator))
    fused, unfused = results
    for a, b in zip(fused[:3], unfused[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert fused[3:] == unfused[3:]
