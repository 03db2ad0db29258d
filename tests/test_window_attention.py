"""``blocks._window.window_attention``: local 2D positional attention with the logits formed inside
the compiled kernel (forward and backward) instead of being stored.

Checked against plain loops (logits, then the window sum), against the unfused path that CUDA and
machines without a compiler run (outputs and all three gradients), by float64 finite differences,
across thread counts, and for what FLOP counters see; plus the block really using it on CPU. The
lane kernels (float32, d_k = d_v in ``LANE_WIDTHS``, maps >= ``LANE_MIN_WIDTH`` wide) on their own:
when they are chosen, outputs and gradients against the float64 unfused path (maps whose width is
and is not a multiple of 8, windows taller than the map, ry != rx, strided q and v), and against
the older fused kernel on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import create_block, block_config
from gsa_search.blocks import _window
from gsa_search.blocks._window import fused_usable, lane_width, window_attention, window_sum
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


@pytest.mark.parametrize("b,h,w,n,d,ry,rx,strided,lane", [
    (3, 8, 8, 2, 8, 2, 2, False, True),
    (2, 5, 13, 3, 4, 1, 3, True, True),  # a scalar remainder of 5 columns
    (3, 8, 6, 2, 8, 2, 2, False, False),  # narrower than a vector: the older fused kernel
])
def test_thread_counts_agree(b, h, w, n, d, ry, rx, strided, lane):
    """Forward: bitwise identical (units are independent); backward: the per-thread sums of the
    offsets' gradient are added in another order, so equal to rounding."""
    q, v, rel = _inputs(b, h, w, n, d, d, ry, rx, strided=strided, seed=5)
    assert (lane_width(q, v) is not None) == lane
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.detach().requires_grad_(True) for t in (q, v, rel)]  # strided views stay strided
            out = window_attention(*leaves, ry, rx)
            out.square().sum().backward()
            results.append([out] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])
    d_rel = results[0][3]
    torch.testing.assert_close(results[1][3], d_rel, rtol=1e-5, atol=1e-5 * d_rel.abs().max().item())


LANE_CASES = [
    # b, h, w, n, d (= d_k = d_v), ry, rx, strided
    (1, 3, 8, 1, 4, 1, 2, True),  # one whole vector of columns
    (2, 5, 9, 2, 8, 3, 3, False),  # one column left over; window taller than the map
    (1, 11, 13, 3, 4, 2, 0, True),  # 5 left over, a 5 x 1 window
    (2, 3, 16, 2, 8, 0, 3, True),  # two whole vectors, a 1 x 7 window
    (1, 5, 20, 1, 8, 1, 2, True),  # 2 vectors and 4 columns
    (2, 11, 16, 3, 4, 3, 3, False),
    (1, 3, 13, 2, 8, 3, 3, True),  # window more than twice the map's height
    (2, 5, 20, 2, 4, 2, 0, False),
    (1, 11, 9, 1, 4, 0, 3, True),
    (1, 3, 8, 3, 8, 2, 5, True),  # window wider than the map
    # the wide kernels (offsets padded to whole vectors per window row)
    (1, 5, 8, 2, 16, 1, 2, True),
    (2, 4, 13, 1, 16, 3, 3, False),  # window taller than the map, 5 columns left over
    (1, 3, 9, 2, 32, 1, 4, True),  # 9 offsets per row: two vectors of offsets
    (1, 6, 17, 1, 32, 2, 0, False),  # a 5 x 1 window
]


def _float64_reference(q, v, rel, ry, rx, grad):
    """Output and gradients of q, v and rel of the unfused path in float64 (its window sum is
    checked against the plain loop in ``test_window``)."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, v, rel)]
    out = _unfused(*leaves, ry, rx)
    out.backward(grad.double())
    return [out] + [t.grad for t in leaves]


def _run(q, v, rel, ry, rx, grad):
    """Output and gradients of ``window_attention`` on q, v and rel as given (views stay views)."""
    leaves = [t.detach().requires_grad_(True) for t in (q, v, rel)]
    out = window_attention(*leaves, ry, rx)
    out.backward(grad)
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("b,h,w,n,d,ry,rx,strided", LANE_CASES)
def test_lane_kernels_match_float64(b, h, w, n, d, ry, rx, strided):
    q, v, rel = _inputs(b, h, w, n, d, d, ry, rx, strided=strided, seed=10)
    assert lane_width(q, v) == d and strided == (not q.is_contiguous())
    grad = torch.randn(b, h, w, n, d, generator=torch.Generator().manual_seed(11))
    for got, ref in zip(_run(q, v, rel, ry, rx, grad), _float64_reference(q, v, rel, ry, rx, grad)):
        assert got.shape == ref.shape and got.dtype == torch.float32
        atol = 1e-4 * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("b,h,w,n,d,ry,rx,strided", [
    (2, 5, 13, 2, 4, 2, 1, True),
    (1, 6, 16, 3, 8, 1, 3, False),
    (2, 5, 11, 2, 16, 2, 3, True),
    (1, 4, 9, 2, 32, 1, 1, False),
])
def test_lane_kernels_match_the_older_fused_kernel(monkeypatch, b, h, w, n, d, ry, rx, strided):
    """Same inputs through ``wlane_*`` and, with ``lane_width`` forced to ``None``, ``wattn_*``."""
    q, v, rel = _inputs(b, h, w, n, d, d, ry, rx, strided=strided, seed=12)
    grad = torch.randn(b, h, w, n, d, generator=torch.Generator().manual_seed(13))
    called, call = [], _window.KERNEL.call

    def recording(name, *args, **kwargs):
        called.append(name)
        call(name, *args, **kwargs)

    monkeypatch.setattr(_window.KERNEL, "call", recording)
    lane = _run(q, v, rel, ry, rx, grad)
    assert called == [f"wlane_fwd_{d}", f"wlane_bwd_{d}"]
    called.clear()
    monkeypatch.setattr(_window, "lane_width", lambda *a: None)
    older = _run(q, v, rel, ry, rx, grad)
    assert called == [f"wattn_fwd_f32_{d}", f"wattn_bwd_f32_{d}"]
    for a, b_ in zip(lane, older):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5 * b_.abs().max().item())


def test_lane_width_dispatch():
    def lane(w=8, d_k=4, d_v=None, dtype=torch.float32):
        q, v = torch.empty(1, 3, w, 2, d_k, dtype=dtype), torch.empty(1, 3, w, 2, d_v or d_k, dtype=dtype)
        return lane_width(q, v)

    assert lane() == 4 and lane(d_k=8) == 8 and lane(w=20, d_k=8) == 8 and lane(w=9) == 4
    assert lane(d_k=16) == 16 and lane(d_k=32) == 32
    assert lane(dtype=torch.float64) is None and lane(d_k=4, d_v=8) is None and lane(d_k=8, d_v=4) is None
    assert lane(d_k=64) is None and lane(d_k=5) is None and lane(w=7) is None and lane(w=7, d_k=16) is None


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
    """A local 2D GSA block on CPU runs the fused op; its output and gradients agree with the
    unfused path's (``GSA_SEARCH_NATIVE=0``, what CUDA runs), both checked against the block in
    float64 (the offsets' gradient sums hundreds of products up to ~500 in size, so two float32
    summation orders differ by more than 1e-5 in absolute terms), and its FLOPs breakdown is the
    same."""
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
    block.double().zero_grad()
    x64 = x.double().requires_grad_(True)
    out64 = block(x64)
    out64.square().sum().backward()
    reference = (out64, x64.grad, block.positional.rel.grad)
    for path in (fused, unfused):
        for a, b in zip(path[:3], reference):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    assert fused[3:] == unfused[3:]
