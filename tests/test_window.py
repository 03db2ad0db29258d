"""``blocks._window.window_sum``, the inner step of local 2D positional attention.

Checked against a plain loop over pixels and offsets, for the compiled kernel and the PyTorch
implementation alike (value widths the kernel specialises and one it does not, strided values,
non-square maps, different spans per axis), plus gradients, dtypes, devices, FLOP counting and the
kernel's build (cache folder, fallback when no compiler works).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import _native, _window
from gsa_search.blocks._window import window_sum


def naive_window_sum(a, v, ry, rx):
    """``out[b,i,j,n,:] = sum_{dy,dx} a[n,b,i,j,dy*(2rx+1)+dx] * v[b, i+dy-ry, j+dx-rx, n, :]``."""
    n_heads, bs, h, w, _ = a.shape
    out = torch.zeros(v.shape, dtype=torch.float64)
    a, v = a.double(), v.double()
    for b in range(bs):
        for n in range(n_heads):
            for i in range(h):
                for j in range(w):
                    for dy in range(2 * ry + 1):
                        for dx in range(2 * rx + 1):
                            ii, jj = i + dy - ry, j + dx - rx
                            if 0 <= ii < h and 0 <= jj < w:
                                out[b, i, j, n] += a[n, b, i, j, dy * (2 * rx + 1) + dx] * v[b, ii, jj, n]
    return out


@pytest.fixture(params=["native", "torch"])
def implementation(request, monkeypatch):
    if request.param == "native":
        request.getfixturevalue("native_kernel")
    else:
        monkeypatch.setenv("GSA_SEARCH_NATIVE", "0")
    return request.param


def _inputs(n, b, h, w, d, ry, rx, *, dtype=torch.float32, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, b, h, w, (2 * ry + 1) * (2 * rx + 1), generator=g, dtype=dtype)
    if strided:  # values as the block hands them over: a slice of the channels-last projection
        v = torch.randn(b, h, w, 3 * n * d, generator=g, dtype=dtype)[..., n * d : 2 * n * d].unflatten(-1, (n, d))
    else:
        v = torch.randn(b, h, w, n, d, generator=g, dtype=dtype)
    return a, v


@pytest.mark.parametrize(
    "n,b,h,w,d,ry,rx,strided",
    [
        (2, 2, 5, 7, 16, 1, 2, False),  # a specialised width (16), ry != rx
        (1, 1, 6, 4, 5, 2, 1, True),  # a generic width, strided values
        (3, 2, 4, 9, 8, 3, 3, True),  # window taller than half the map
        (1, 1, 1, 6, 16, 0, 2, False),  # one row: a 1 x 5 window
        (1, 1, 1, 5, 3, 2, 0, False),  # rx = 0, and a window taller than the one-row map
        (2, 2, 4, 1, 16, 1, 2, True),  # one column, window wider than the map
    ],
)
def test_matches_naive_loop(implementation, n, b, h, w, d, ry, rx, strided):
    a, v = _inputs(n, b, h, w, d, ry, rx, strided=strided, seed=1)
    out = window_sum(a, v, ry, rx)
    assert out.shape == (b, h, w, n, d) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), naive_window_sum(a, v, ry, rx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [5, 8, 16, 32, 64])  # every compiled width, and a generic one
def test_implementations_agree_with_gradients(native_kernel, monkeypatch, d):
    """Compiled and PyTorch paths: same output and same gradients for a and v (float32, strided v)."""
    a, v = _inputs(4, 2, 9, 11, d, 3, 3, strided=True, seed=2)
    grad = torch.randn(2, 9, 11, 4, d, generator=torch.Generator().manual_seed(3))
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("GSA_SEARCH_NATIVE", native)
        a_, v_ = a.clone().requires_grad_(True), v.detach().requires_grad_(True)
        assert not v_.is_contiguous()  # the strided read of the values is what is compared
        out = window_sum(a_, v_, 3, 3)
        out.backward(grad)
        results.append((out, a_.grad, v_.grad))
    for native, torch_path in zip(*results):
        torch.testing.assert_close(native, torch_path, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ry,rx", [(1, 1), (2, 1)])
def test_gradcheck(implementation, ry, rx):
    a, v = _inputs(2, 1, 4, 5, 3, ry, rx, dtype=torch.float64, seed=4)
    a.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, v: window_sum(a, v, ry, rx), (a, v), eps=1e-6, atol=1e-6)


def test_thread_counts_give_identical_results(native_kernel):
    a, v = _inputs(2, 3, 8, 8, 16, 2, 2, seed=5)
    expected = naive_window_sum(a, v, 2, 2)
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outputs.append(window_sum(a, v, 2, 2))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(outputs[0].double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(outputs[0], outputs[1])  # rows are independent: bitwise identical


def test_bfloat16_runs_and_stays_close(implementation):
    a, v = _inputs(2, 1, 6, 6, 16, 1, 1, seed=6)
    out = window_sum(a.bfloat16(), v.bfloat16(), 1, 1)
    assert out.dtype == torch.bfloat16
    reference = naive_window_sum(a.bfloat16().float(), v.bfloat16().float(), 1, 1)
    torch.testing.assert_close(out.double(), reference, rtol=0.05, atol=0.05)


def test_values_are_cast_to_the_weights_dtype(implementation):
    a, v = _inputs(1, 1, 3, 3, 2, 1, 1, dtype=torch.float64, seed=7)
    out = window_sum(a, v.float(), 1, 1)
    assert out.dtype == torch.float64


def test_meta_device_gives_shapes():
    a = torch.empty(4, 2, 7, 9, 25, device="meta")
    v = torch.empty(2, 7, 9, 4, 16, device="meta")
    out = window_sum(a, v, 2, 2)
    assert out.device.type == "meta" and out.shape == (2, 7, 9, 4, 16)


def test_mismatched_shapes_are_rejected():
    a, v = _inputs(2, 1, 4, 4, 3, 1, 1)
    with pytest.raises(ValueError, match=r"window_sum: weights \(2, 1, 4, 4, 9\) do not fit values .* window \(2, 1\)"):
        window_sum(a, v, 2, 1)
    with pytest.raises(ValueError, match="do not fit values"):
        window_sum(a, v[:, :3], 1, 1)
    with pytest.raises(ValueError, match="radii must be >= 0"):
        window_sum(a[..., :1], v, -1, -1)


def test_the_operators_check_their_inputs_too(implementation):
    """The kernel reads raw memory: calling the registered operators directly with a mismatched
    dtype or shape raises instead of reading out of bounds."""
    a, v = _inputs(2, 1, 4, 4, 3, 1, 1)
    with pytest.raises(ValueError, match="must share a dtype"):
        torch.ops.gsa_search.window_sum(a, v.double(), 1, 1)
    with pytest.raises(ValueError, match="do not fit values"):
        torch.ops.gsa_search.window_sum(a[..., :1], v, 1, 1)
    with pytest.raises(ValueError, match="gradient"):
        torch.ops.gsa_search.window_sum_backward(a, v, v[:, :2], 1, 1)


@pytest.mark.parametrize("shape", [(0, 4, 4, 2, 3), (1, 4, 4, 2, 0), (1, 0, 4, 2, 3)], ids=["batch0", "width0", "rows0"])
def test_empty_inputs(implementation, shape):
    b, h, w, n, d = shape
    a = torch.randn(n, b, h, w, 9, requires_grad=True)
    v = torch.randn(shape, requires_grad=True)
    out = window_sum(a, v, 1, 1)
    assert out.shape == shape
    out.sum().backward()
    assert a.grad.shape == a.shape and v.grad.shape == v.shape


def test_torch_flop_counter_sees_forward_and_backward(implementation):
    """One multiply-add (2 FLOPs) per weight and value channel forward, twice that backward."""
    a, v = _inputs(2, 3, 5, 4, 6, 1, 2, seed=8)
    a.requires_grad_(True)
    macs = a.numel() * 6
    with FlopCounterMode(display=False) as counter:
        out = window_sum(a, v, 1, 2)
    assert counter.get_total_flops() == 2 * macs
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * macs


def _fresh_build(monkeypatch):
    """As in a new process: the kernel forgets its library (restored after the test)."""
    kernel = _window.KERNEL
    monkeypatch.setattr(kernel, "lib", None)
    monkeypatch.setattr(kernel, "failed", None)
    monkeypatch.setattr(kernel, "openmp", kernel.openmp)


def test_kernel_builds_into_the_cache_folder_once(native_kernel, monkeypatch, tmp_path):
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(tmp_path))
    _fresh_build(monkeypatch)
    assert _window.native_available()
    built = list(tmp_path.glob("window_*.so"))
    assert len(built) == 1 and built[0].stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no build folders left behind
    stamp = built[0].stat().st_mtime_ns
    _fresh_build(monkeypatch)  # a new process: loads the cached library instead of compiling
    assert _window.native_available()
    assert list(tmp_path.glob("window_*.so")) == built and built[0].stat().st_mtime_ns == stamp
    a, v = _inputs(1, 1, 4, 4, 16, 1, 1, seed=9)
    torch.testing.assert_close(window_sum(a, v, 1, 1).double(), naive_window_sum(a, v, 1, 1), rtol=1e-5, atol=1e-5)


def test_compiler_given_with_arguments(native_kernel, monkeypatch, tmp_path):
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", f"{shutil.which('cc') or shutil.which('gcc')} -g")  # like CC="ccache gcc"
    _fresh_build(monkeypatch)
    assert _window.native_available()
    assert len(list(tmp_path.glob("window_*.so"))) == 1


def test_a_cache_folder_others_can_write_is_not_used(native_kernel, monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "private-tmp"))
    (tmp_path / "private-tmp").mkdir()
    _fresh_build(monkeypatch)
    assert _window.native_available()
    assert not list(shared.iterdir())  # nothing built or loaded there
    assert len(list((tmp_path / "private-tmp").glob("gsa_search-*/window_*.so"))) == 1


def test_broken_compiler_falls_back_to_pytorch_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.delenv("GSA_SEARCH_NATIVE", raising=False)
    _fresh_build(monkeypatch)
    with pytest.warns(RuntimeWarning, match="compiled local-window kernel unavailable .*false failed"):
        assert not _window.native_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _window.native_available()  # decided once: no second build, no second warning
    a, v = _inputs(1, 2, 5, 3, 4, 1, 1, seed=10)
    torch.testing.assert_close(window_sum(a, v, 1, 1).double(), naive_window_sum(a, v, 1, 1), rtol=1e-5, atol=1e-5)


def test_build_without_openmp_splits_rows_over_python_threads(native_kernel, monkeypatch, tmp_path):
    """Compilers without OpenMP (Apple's clang) get a plain build; rows are then split over Python
    threads, with the same results as the naive loop, forward and backward."""
    monkeypatch.setenv("GSA_SEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_openmp_flags", lambda compiler: [[]])
    _fresh_build(monkeypatch)
    assert _window.native_available() and not _window._openmp
    assert torch.get_num_threads() == 2  # conftest: the rows really are split
    a, v = _inputs(2, 3, 7, 5, 16, 2, 1, strided=True, seed=11)
    a.requires_grad_(True)
    v.requires_grad_(True)
    out = window_sum(a, v, 2, 1)
    torch.testing.assert_close(out.double(), naive_window_sum(a.detach(), v.detach(), 2, 1), rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(12))
    ga, gv = torch.autograd.grad(out, (a, v), grad)
    monkeypatch.setenv("GSA_SEARCH_NATIVE", "0")
    ta, tv = torch.autograd.grad(window_sum(a, v, 2, 1), (a, v), grad)
    torch.testing.assert_close((ga, gv), (ta, tv), rtol=1e-5, atol=1e-5)
