"""``blocks._content.content_attention``: the GSA content path as one compiled kernel.

Checked against a float64 einsum reference (softmax over positions per key channel, then
``G = K^T V`` and ``G^T Q`` per head), against the PyTorch path that CUDA and machines without a
compiler run (outputs and all three gradients), by float64 finite differences, across thread
counts, with keys far from zero (the kernel's own float32 ``exp``), and for what FLOP counters see;
plus the block really using it on CPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import block_config, create_block
from gsa_search.blocks import _content
from gsa_search.blocks import gsa
from gsa_search.blocks._content import content_attention, content_usable
from gsa_search.blocks.gsa import ContentAttention
from gsa_search.measure import count_flops


@pytest.fixture(autouse=True)
def _kernel():
    """Every test here needs the compiled kernel (skips, or fails with ``CI=true``, without it)."""
    if not _content.KERNEL.available():
        reason = f"compiled content kernel unavailable: {_content.KERNEL.failed or 'GSA_SEARCH_NATIVE=0'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def reference(q, k, v):
    """``out[b, n, j, l] = sum_i G[b, n, i, j] q[b, l, n, i]``, ``G[b, n] = softmax_l(k[b, :, n])^T v[b, :, n]``,
    in float64."""
    k = k.double().softmax(dim=1)
    context = torch.einsum("blni,blnj->bnij", k, v.double())
    return torch.einsum("bnij,blni->bnjl", context, q.double())


def torch_path(q, k, v):
    """What :class:`ContentAttention` runs where the kernel cannot: per-head batched matmuls."""
    saved = gsa.content_usable
    gsa.content_usable = lambda *tensors: False
    try:
        return ContentAttention()(q, k, v)
    finally:
        gsa.content_usable = saved


def _inputs(b, length, n, d_k, d_v, *, dtype=torch.float32, strided=False, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # q, k, v as the block hands them over: slices of one channels-last projection
        qkv = torch.randn(b, length, n * (2 * d_k + d_v) + 3, generator=g, dtype=dtype) * scale
        q = qkv[..., : n * d_k].unflatten(-1, (n, d_k))
        k = qkv[..., n * d_k : 2 * n * d_k].unflatten(-1, (n, d_k))
        v = qkv[..., 2 * n * d_k : n * (2 * d_k + d_v)].unflatten(-1, (n, d_v))
    else:
        q, k = (torch.randn(b, length, n, d_k, generator=g, dtype=dtype) * scale for _ in range(2))
        v = torch.randn(b, length, n, d_v, generator=g, dtype=dtype) * scale
    return q, k, v


CASES = [
    # b, L, n, d_k, d_v, strided
    (2, 20, 2, 4, 4, False),  # a specialised width (4)
    (3, 64, 4, 8, 8, True),  # specialised (8), strided
    (2, 49, 3, 16, 16, True),  # specialised (16), L not a multiple of the vector width
    (1, 16, 2, 32, 32, False),  # specialised (32)
    (2, 35, 2, 3, 5, True),  # d_k != d_v: the generic kernel
    (2, 12, 1, 64, 64, False),  # a width without its own build: the generic kernel
    (3, 1, 2, 4, 4, False),  # one position: the softmax is 1 and G = v^T
]


@pytest.mark.parametrize("b,length,n,d_k,d_v,strided", CASES)
def test_matches_reference(b, length, n, d_k, d_v, strided):
    q, k, v = _inputs(b, length, n, d_k, d_v, strided=strided, seed=1)
    assert strided == (not q.is_contiguous())
    out = content_attention(q, k, v)
    assert out.shape == (b, n, d_v, length) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), reference(q, k, v), rtol=1e-5, atol=1e-5)


def _kernel_and_torch_path(q, k, v, grad):
    """``[out, dq, dk, dv]`` of the kernel and of the per-head matmuls, for the output gradient ``grad``."""
    results = []
    for fn in (content_attention, torch_path):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad)
        results.append([out] + [t.grad for t in leaves])
    return results


@pytest.mark.parametrize("b,length,n,d_k,d_v,strided", CASES)
def test_gradients_match_the_torch_path(b, length, n, d_k, d_v, strided):
    """Output and the gradients of q, k and v, kernel vs per-head matmuls."""
    q, k, v = _inputs(b, length, n, d_k, d_v, strided=strided, seed=2)
    grad = torch.randn(b, n, d_v, length, generator=torch.Generator().manual_seed(3))
    for fused, unfused in zip(*_kernel_and_torch_path(q, k, v, grad)):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


QUERY_CASES = [
    # b, L (keys), L_q (queries), n, d_k, d_v, strided
    (2, 64, 16, 4, 8, 8, True),  # a stride-2 block's pooled queries: 8x8 keys, 4x4 queries
    (3, 25, 9, 2, 4, 4, True),  # 5x5 -> 3x3 (odd map)
    (2, 20, 33, 2, 16, 16, False),  # more queries than keys
    (2, 12, 5, 3, 3, 5, True),  # the generic kernel
    (1, 7, 1, 2, 32, 32, False),  # one query
]


@pytest.mark.parametrize("b,length,queries,n,d_k,d_v,strided", QUERY_CASES)
def test_queries_need_not_match_the_keys_in_number(b, length, queries, n, d_k, d_v, strided):
    """``L_q`` queries against ``L`` keys: the output against the float64 reference, and output
    and gradients against the per-head matmuls."""
    _, k, v = _inputs(b, length, n, d_k, d_v, strided=strided, seed=13)
    q, _, _ = _inputs(b, queries, n, d_k, d_v, strided=strided, seed=14)
    grad = torch.randn(b, n, d_v, queries, generator=torch.Generator().manual_seed(15))
    results = _kernel_and_torch_path(q, k, v, grad)
    assert results[0][0].shape == (b, n, d_v, queries)
    torch.testing.assert_close(results[0][0].double(), reference(q, k, v), rtol=1e-5, atol=1e-5)
    for fused, unfused in zip(*results):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_gradcheck_with_fewer_queries():
    _, k, v = _inputs(2, 9, 2, 4, 3, dtype=torch.float64, seed=16)
    q, _, _ = _inputs(2, 4, 2, 4, 3, dtype=torch.float64, seed=17)
    inputs = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(content_attention, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("length,d_k,d_v", [(7, 3, 2), (9, 4, 4), (5, 8, 8)])
def test_gradcheck(length, d_k, d_v):
    q, k, v = _inputs(2, length, 2, d_k, d_v, dtype=torch.float64, seed=4)
    inputs = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(content_attention, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("low,high", [(-60.0, 20.0), (500.0, 560.0), (-2000.0, 0.0)])
def test_keys_far_from_zero(low, high):
    """The softmax subtracts each channel's maximum, so large keys neither overflow nor lose the
    float32 ``exp``'s accuracy; keys more than 87 below the maximum weigh (almost) nothing."""
    q, _, v = _inputs(2, 50, 2, 8, 8, seed=5)
    k = torch.empty(2, 50, 2, 8).uniform_(low, high, generator=torch.Generator().manual_seed(6))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = content_attention(*leaves)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference(q, k, v), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    ref = [t.double().clone().requires_grad_(True) for t in (q, k, v)]
    reference(*ref).square().sum().backward()
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


def test_thread_counts_agree_bitwise():
    """Each image is one unit, computed the same way whichever thread takes it."""
    q, k, v = _inputs(5, 40, 2, 8, 8, strided=True, seed=7)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            out = content_attention(*leaves)
            out.square().sum().backward()
            results.append([out] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_bad_inputs_are_rejected_with_the_shapes():
    q, k, v = _inputs(2, 9, 2, 4, 4)
    with pytest.raises(ValueError, match=r"do not fit \(B, L_q, N, d_k\), \(B, L, N, d_k\)"):
        content_attention(q, k[:, :8], v)  # keys and values of different lengths
    with pytest.raises(ValueError, match="do not fit"):
        content_attention(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="do not fit"):
        content_attention(q[..., :3], k, v)  # queries and keys of different widths
    with pytest.raises(ValueError, match="do not fit"):
        content_attention(q[:1, :4], k, v)  # queries of another batch
    with pytest.raises(ValueError, match="at least one key and one value channel"):
        content_attention(q[..., :0], k[..., :0], v)
    with pytest.raises(ValueError, match=r"\(B, L_q, N, d_k\), .* expected"):
        content_attention(q.flatten(2), k, v)
    with pytest.raises(ValueError, match="float32 or float64"):
        content_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    with pytest.raises(ValueError, match="one dtype"):
        content_attention(q.double(), k, v)
    assert not content_usable(q.bfloat16()) and content_usable(q, k, v)
    assert not content_usable(q, k.double(), v)  # mixed dtypes: the block takes the PyTorch path


def test_empty_batch():
    q, k, v = _inputs(0, 6, 2, 4, 4)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = content_attention(*leaves)
    assert out.shape == (0, 2, 4, 6)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)


def test_torch_flop_counter_sees_forward_and_backward():
    """``K^T V`` and ``G^T Q``: ``2 * B * L * N * d_k * d_v`` multiply-adds (2 FLOPs each) forward,
    twice that backward, as the per-head matmuls count."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 10, 3, 6, 5, seed=8))
    macs = 2 * 2 * 10 * 3 * 6 * 5
    with FlopCounterMode(display=False) as counter:
        out = content_attention(q, k, v)
    assert counter.get_total_flops() == 2 * macs
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * macs
    with FlopCounterMode(display=False) as counter:  # the PyTorch path counts the same
        torch_path(q, k, v).sum().backward()
    assert counter.get_total_flops() == 6 * macs


def test_flop_counter_with_fewer_queries():
    """``K^T V`` over the ``L`` keys, ``G^T Q`` over the ``L_q`` queries: ``B*(L + L_q)*N*d_k*d_v``
    multiply-adds, as the per-head matmuls count."""
    _, k, v = _inputs(2, 12, 3, 6, 5, seed=18)
    q, _, _ = _inputs(2, 4, 3, 6, 5, seed=19)
    macs = 2 * (12 + 4) * 3 * 6 * 5
    for fn in (content_attention, torch_path):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        with FlopCounterMode(display=False) as counter:
            out = fn(*leaves)
        assert counter.get_total_flops() == 2 * macs
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
        assert counter.get_total_flops() == 4 * macs


@pytest.mark.parametrize("stride", [1, 2])
def test_the_block_uses_it_on_cpu_and_counts_the_same(monkeypatch, stride):
    """A GSA block (content + axial) on CPU runs the kernel; its output, gradients, FLOPs breakdown
    and uncounted operators equal the PyTorch path's (``GSA_SEARCH_NATIVE=0``, what CUDA runs)."""
    cfg = block_config("gsa", heads=2, feature_size=10)
    torch.manual_seed(9)
    block = create_block(cfg, 8, 8, stride=stride)
    x = torch.randn(3, 8, 10, 10)
    with FlopCounterMode(display=False) as counter:
        block(x)
    assert torch.ops.gsa_search.content_attention in counter.get_flop_counts()["Global"]
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("GSA_SEARCH_NATIVE", native)
        block.zero_grad()
        x_ = x.clone().requires_grad_(True)
        out = block(x_)
        out.square().sum().backward()
        count = count_flops(block, (1, 8, 10, 10))
        softmax = count.uncounted.get("aten::softmax")  # the kernel's, listed as the unfused one is
        results.append((out, x_.grad, block.qkv.weight.grad, count.total, count.by_operator, softmax))
    fused, unfused = results
    for a, b in zip(fused[:3], unfused[:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert fused[3:] == unfused[3:] and fused[5] == 1


def test_query_norm_keeps_the_torch_path():
    """``query_norm=True`` (a softmax over each query's channels) is not in the kernel: the block
    runs the PyTorch path, and matches the reference with the queries normalised."""
    q, k, v = _inputs(2, 16, 2, 4, 4, seed=10)
    with FlopCounterMode(display=False) as counter:
        out = ContentAttention(query_norm=True)(q, k, v)
    assert torch.ops.gsa_search.content_attention not in counter.get_flop_counts()["Global"]
    torch.testing.assert_close(out.double(), reference(q.softmax(-1), k, v), rtol=1e-5, atol=1e-5)


def test_build_without_openmp_splits_images_over_python_threads(monkeypatch, tmp_path):
    """Compilers without OpenMP get a plain build; the images are then split over Python threads,
    with the same results, forward and backward (the library is restored after the test)."""
    from gsa_search.blocks import _native

    kernel = _content.KERNEL
    for name in ("lib", "failed", "openmp"):
        monkeypatch.setattr(kernel, name, None if name != "openmp" else kernel.openmp)
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_openmp_flags", lambda compiler: [[]])
    assert content_usable(torch.zeros(1)) and not kernel.openmp
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the images really are split (over two Python threads)
    try:
        q, k, v = (t.requires_grad_(True) for t in _inputs(5, 30, 2, 8, 8, seed=11))
        out = content_attention(q, k, v)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(12))
        got = torch.autograd.grad(out, (q, k, v), grad)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out.double(), reference(q, k, v), rtol=1e-5, atol=1e-5)
    want = torch.autograd.grad(torch_path(q, k, v), (q, k, v), grad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
