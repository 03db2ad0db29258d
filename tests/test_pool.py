"""The attention mixers' 2x2 average pool (``blocks._pool``, ``blocks.base.DownsamplePool``): the
compiled kernel against ``F.avg_pool2d(2, 2, ceil_mode=True, count_include_pad=False)`` on even and
odd sizes (windows cut by the edge), values and gradients, float32 and float64; thread counts;
where ``F.avg_pool2d`` runs instead (non-contiguous input, tracing, FLOP counters, the switch); the
blocks' FLOPs breakdown unchanged."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import _pool, block_config, create_block
from gsa_search.blocks.base import DownsamplePool
from gsa_search.measure import count_flops


@pytest.fixture
def kernel():
    if not _pool.KERNEL.available():
        reason = f"compiled pool kernel unavailable: {_pool.KERNEL.failed or 'GSA_SEARCH_NATIVE=0'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


def _calls(monkeypatch) -> list[int]:
    """Record each kernel call's plane count."""
    calls = []
    real = _pool.KERNEL.run

    def run(fn, rows, *args, **kwargs):
        calls.append(rows)
        return real(fn, rows, *args, **kwargs)

    monkeypatch.setattr(_pool.KERNEL, "run", run)
    return calls


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 5, 7), (1, 2, 1, 1), (2, 2, 6, 3), (1, 1, 3, 2), (3, 5, 16, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_avg_pool2d(kernel, monkeypatch, shape, dtype):
    calls = _calls(monkeypatch)
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, dtype=dtype, generator=g)
    x_ref = x.clone().requires_grad_(True)
    x = x.requires_grad_(True)
    out = _pool.avg_pool_2x2(x)
    expected = reference(x_ref)
    grad = torch.randn(expected.shape, dtype=dtype, generator=g)
    assert out.shape == expected.shape and out.dtype == dtype
    (dx,) = torch.autograd.grad(out, x, grad)
    (dx_ref,) = torch.autograd.grad(expected, x_ref, grad)
    assert calls == [shape[0] * shape[1]] * 2  # the kernel ran, forward and backward
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-6, atol=1e-6)


def test_gradcheck_float64(kernel):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_pool.avg_pool_2x2, (x,))


def test_thread_counts_give_the_same_results(kernel):
    x = torch.randn(4, 6, 9, 10, requires_grad=True)
    grad = torch.randn(4, 6, 5, 5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = _pool.avg_pool_2x2(x)
            results.append((out, *torch.autograd.grad(out, x, grad)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_avg_pool2d_runs_elsewhere(kernel, monkeypatch):
    """Non-contiguous maps, half precision, FLOP counters and ``GSA_SEARCH_NATIVE=0`` take
    ``F.avg_pool2d``, with the same results."""
    calls = _calls(monkeypatch)
    x = torch.randn(2, 3, 6, 7)
    strided = x.transpose(2, 3)
    torch.testing.assert_close(_pool.avg_pool_2x2(strided), reference(strided))
    assert _pool.avg_pool_2x2(x.bfloat16()).dtype == torch.bfloat16
    with FlopCounterMode(display=False):
        torch.testing.assert_close(_pool.avg_pool_2x2(x), reference(x))
    monkeypatch.setenv("GSA_SEARCH_NATIVE", "0")
    torch.testing.assert_close(_pool.avg_pool_2x2(x), reference(x))
    assert calls == []


def test_downsample_pool_module(kernel):
    pool = DownsamplePool()
    assert isinstance(pool, torch.nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(pool(x), reference(x), rtol=1e-6, atol=1e-6)
    assert pool(torch.empty(2, 4, 7, 7, device="meta")).shape == (2, 4, 4, 4)


def test_block_flops_see_the_same_pool(kernel, monkeypatch):
    """A stride-2 GSA block counts the same with the kernel on and off: traced, the pool is
    ``aten::avg_pool2d`` (listed as uncounted) either way, twice: the positional output's and the
    content path's queries'."""
    block = create_block(block_config("gsa", heads=2).with_feature_size(8), 8, 8, stride=2)
    counts = []
    for native in ("1", "0"):
        monkeypatch.setenv("GSA_SEARCH_NATIVE", native)
        count = count_flops(block, (1, 8, 8, 8))
        counts.append((count.total, count.by_operator, count.uncounted["aten::avg_pool2d"]))
    assert counts[0] == counts[1] and counts[0][2] == 2


def test_second_derivatives_raise(kernel):
    """The kernel's backward is not differentiable again: asking for it fails loudly instead of
    returning a gradient that silently ignores the pool."""
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    (gx,) = torch.autograd.grad(_pool.avg_pool_2x2(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
