"""The fused C kernel of relative axis attention (``blocks._relative_native``) against the
batched-matmul path of ``blocks._relative`` and a naive einsum reference.

Random shapes with odd lengths, ``L_a != L``, widths that are not multiples of the SIMD vector,
sequence counts that leave a partial tile, strided inputs (views of a channels-last projection,
transposed and overlapping views), ``transpose_out`` and ``recompute``; gradients against the
reference and gradcheck in float64; the fallback for meta tensors and ``GSA_SEARCH_NATIVE=0``;
FLOP counting; the whole axial and 2D blocks on both paths.

The float32 lane kernels (8 sequences in the lanes of a vector, ``d_k = d_v`` in 4, 8, 16): their
dispatch rule (``lane_width``); against the reference for odd and even ``L`` (down to 1 and 2, the
``d = 4`` phantom position), ``L`` past one block of 8, ``S`` that fills its units of 8 or not, all
layouts (the vector gather/scatter paths and the scalar one) and ``transpose_out``; against the
other kernel, also on the axial block's two calls (two sequence axes, ``out_order``); bitwise
equal results for different thread counts.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gsa_search.blocks import _relative_native, block_config, create_block
from gsa_search.blocks._native import native_enabled
from gsa_search.blocks._relative import relative_axis_attention


@pytest.fixture
def native():
    """The compiled kernel; skips (fails with ``CI=true``) where it cannot be built or is switched off."""
    if not native_enabled():
        pytest.skip("native kernels switched off (GSA_SEARCH_NATIVE=0)")
    if not _relative_native.native_available():
        reason = f"compiled relative-attention kernel unavailable: {_relative_native.KERNEL.failed}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def naive(qt, v, emb, transpose_out=False):
    """``out[n, s, i] = sum_a (q[n, i, s] . emb[n, i, a]) v[n, s, a]`` in float64."""
    logits = torch.einsum("nisk,niak->nsia", qt.double(), emb.double())
    out = torch.einsum("nsia,nsae->nsie", logits, v.double())
    return out.transpose(2, 3) if transpose_out else out


def _inputs(n, length, seqs, keys, d_k, d_v, *, layout="contiguous", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, length, keys, d_k, generator=g, dtype=dtype)
    if layout == "contiguous":
        qt = torch.randn(n, length, seqs, d_k, generator=g, dtype=dtype)
        v = torch.randn(n, seqs, keys, d_v, generator=g, dtype=dtype)
    elif layout == "channels_last":  # slices of one (S, L, channels) projection, as the block passes them
        proj = torch.randn(seqs, max(length, keys), n * (d_k + d_v) + 3, generator=g, dtype=dtype)
        qt = proj[:, :length, : n * d_k].unflatten(-1, (n, d_k)).permute(2, 1, 0, 3)
        v = proj[:, :keys, n * d_k : n * (d_k + d_v)].unflatten(-1, (n, d_v)).permute(2, 0, 1, 3)
    elif layout == "transposed":  # channels not innermost
        qt = torch.randn(n, d_k, seqs, length, generator=g, dtype=dtype).permute(0, 3, 2, 1)
        v = torch.randn(n, d_v, keys, seqs, generator=g, dtype=dtype).permute(0, 3, 2, 1)
    elif layout == "overlapping":  # a sliding window of rows, like the 2D path's values
        qt = torch.randn(n, length, seqs, d_k, generator=g, dtype=dtype)
        rows = torch.randn(n, seqs + keys, d_v, generator=g, dtype=dtype)
        v = rows.unfold(1, keys, 1)[:, :seqs].transpose(2, 3)
    else:
        raise ValueError(layout)
    assert qt.shape == (n, length, seqs, d_k) and v.shape == (n, seqs, keys, d_v)
    return qt, v, emb


SHAPES = [  # n, L, S, L_a, d_k, d_v
    (1, 1, 1, 1, 1, 1),
    (2, 5, 11, 5, 3, 7),
    (3, 9, 17, 21, 5, 13),
    (2, 13, 8, 6, 16, 16),
    (1, 16, 9, 16, 9, 17),
    (4, 7, 33, 35, 20, 4),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "overlapping"])
@pytest.mark.parametrize("transpose_out", [False, True])
def test_native_matches_naive_and_bmm_path(native, monkeypatch, shape, layout, transpose_out):
    qt, v, emb = _inputs(*shape, layout=layout, seed=sum(shape))
    leaves = [t.detach().clone().requires_grad_(True) for t in (qt, v, emb)]
    grad = torch.randn(naive(qt, v, emb, transpose_out).shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for path in ("native", "bmm"):
        if path == "bmm":
            monkeypatch.setattr(_relative_native, "usable", lambda *tensors: False)
        for recompute in (False, True):
            out = relative_axis_attention(*leaves, transpose_out=transpose_out, recompute=recompute)
            assert out.is_contiguous() and out.dtype == torch.float32
            results[path, recompute] = (out.detach(), *torch.autograd.grad(out, leaves, grad))
    ref = [t.double().requires_grad_(True) for t in (qt, v, emb)]
    expected_out = naive(*ref, transpose_out)
    expected = (expected_out.detach(), *torch.autograd.grad(expected_out, ref, grad.double()))
    for key, got in results.items():
        for a, b in zip(got, expected):
            assert a.shape == b.shape, key
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("transpose_out", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 9, 7, 3, 5), (1, 4, 3, 4, 5, 2)])
def test_gradcheck_float64_on_the_native_path(native, shape, transpose_out):
    qt, v, emb = _inputs(*shape, layout="channels_last", dtype=torch.float64, seed=3)
    leaves = [t.detach().clone().requires_grad_(True) for t in (qt, v, emb)]
    assert _relative_native.usable(*leaves)
    assert torch.autograd.gradcheck(
        lambda q, v, e: relative_axis_attention(q, v, e, transpose_out=transpose_out), leaves, eps=1e-6, atol=1e-6
    )


def test_float64_is_exact_to_rounding(native):
    qt, v, emb = _inputs(3, 9, 17, 21, 5, 13, dtype=torch.float64, seed=4)
    out = relative_axis_attention(qt, v, emb)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive(qt, v, emb), rtol=1e-12, atol=1e-12)


def test_thread_counts_give_the_same_results(native):
    qt, v, emb = _inputs(2, 12, 40, 12, 16, 16, seed=5)
    leaves = [t.requires_grad_(True) for t in (qt, v, emb)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = relative_axis_attention(*leaves)
            results.append((out, *torch.autograd.grad(out.sum(), leaves)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):  # d_emb sums per-thread partials: equal up to rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_native_path_keeps_no_logits(native):
    qt, v, emb = _inputs(2, 9, 11, 9, 4, 4, seed=6)
    leaves = [t.requires_grad_(True) for t in (qt, v, emb)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        relative_axis_attention(*leaves)
    assert sum(saved) == sum(t.numel() for t in leaves)


def test_meta_tensors_use_the_fallback():
    qt, v, emb = (t.to("meta") for t in _inputs(2, 5, 7, 6, 3, 4))
    assert not _relative_native.usable(qt, v, emb)
    out = relative_axis_attention(qt, v, emb, transpose_out=True)
    assert out.device.type == "meta" and out.shape == (2, 7, 4, 5)


def test_switched_off_by_the_environment(native, monkeypatch):
    qt, v, emb = _inputs(2, 5, 7, 6, 3, 4)
    assert _relative_native.usable(qt, v, emb)
    monkeypatch.setenv("GSA_SEARCH_NATIVE", "0")
    assert not _relative_native.usable(qt, v, emb)
    torch.testing.assert_close(relative_axis_attention(qt, v, emb).double(), naive(qt, v, emb), rtol=1e-5, atol=1e-5)


def test_bfloat16_and_mixed_dtypes_use_the_fallback(native):
    qt, v, emb = _inputs(2, 5, 7, 6, 3, 4)
    assert not _relative_native.usable(qt.bfloat16(), v.bfloat16(), emb.bfloat16())
    out = relative_axis_attention(qt.double(), v, emb)  # v and emb are cast to the queries' dtype
    assert out.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relative_axis_attention(qt.bfloat16(), v, emb)
    assert out.dtype == torch.bfloat16


def test_operators_check_their_inputs(native):
    qt, v, emb = _inputs(2, 5, 7, 6, 3, 4)
    with pytest.raises(ValueError, match="do not fit"):
        torch.ops.gsa_search.relative_axis(qt, v, emb[:, :, :5], False)
    with pytest.raises(ValueError, match="share a dtype"):
        torch.ops.gsa_search.relative_axis(qt, v.double(), emb, False)


def test_torch_flop_counter_sees_one_op_each_way(native):
    n, length, seqs, keys, d_k, d_v = 2, 5, 7, 6, 3, 4
    qt, v, emb = (t.requires_grad_(True) for t in _inputs(n, length, seqs, keys, d_k, d_v))
    macs = n * length * seqs * keys * (d_k + d_v)
    with FlopCounterMode(display=False) as counter:
        out = relative_axis_attention(qt, v, emb)
    assert counter.get_total_flops() == 2 * macs
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * macs


@pytest.mark.parametrize("positional", ["axial", "2d"])
def test_blocks_agree_on_both_paths(native, monkeypatch, positional):
    """Whole GSA blocks (axial; 2D on its banded-row path) with input and parameter gradients."""
    fields = {"heads": 2, "dim_key": 5, "feature_size": 11}
    if positional == "2d":
        fields.update(positional="2d", rel_span=8)
    torch.manual_seed(7)
    block = create_block(block_config("gsa", **fields), 6, 6).double()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64, requires_grad=True)
    results = []
    for path in ("native", "bmm"):
        if path == "bmm":
            monkeypatch.setattr(_relative_native, "usable", lambda *tensors: False)
        out = block(x)
        results.append((out, *torch.autograd.grad(out.pow(2).sum(), (x, *block.parameters()))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", ["native", "bmm"])
def test_two_sequence_axes_and_an_output_layout(native, monkeypatch, path):
    """The column step's call: values ``(N, B, W, H, d_v)`` read in place from a channels-last map,
    queries ``(N, H, B*W, d_k)``, the result stored channels last via ``out_order``."""
    if path == "bmm":
        monkeypatch.setattr(_relative_native, "usable", lambda *tensors: False)
    b, h, w, n, d_k, d_v = 2, 5, 3, 2, 3, 5
    g = torch.Generator().manual_seed(8)
    proj = torch.randn(b, h, w, n * (d_k + d_v), generator=g, dtype=torch.float64)
    q, v = proj[..., : n * d_k].unflatten(-1, (n, d_k)), proj[..., n * d_k :].unflatten(-1, (n, d_v))
    qt = q.transpose(1, 2).reshape(b * w, h, n, d_k).permute(2, 1, 0, 3)  # (N, H, B*W, d_k)
    values = v.permute(3, 0, 2, 1, 4)  # (N, B, W, H, d_v), a view
    emb = torch.randn(n, h, h, d_k, generator=g, dtype=torch.float64)
    leaves = [t.detach().clone().requires_grad_(True) for t in (qt, values, emb)]
    out = relative_axis_attention(*leaves, out_order=[1, 3, 2, 0, 4])
    assert out.shape == (n, b, w, h, d_v)
    assert out.permute(1, 3, 2, 0, 4).is_contiguous()  # (B, H, W, N, d_v) in memory
    expected = naive(qt, values.flatten(1, 2), emb).unflatten(1, (b, w))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda q, v, e: relative_axis_attention(q, v, e, out_order=[1, 3, 2, 0, 4]), leaves, eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("path", ["native", "lane", "bmm"])
def test_queries_with_two_sequence_axes(native, monkeypatch, path):
    """The axial block's column step passes the queries as a strided view ``(N, H, B, W, d_k)`` of
    the channels-last map (no copy): the same results and gradients as the queries copied to
    ``(N, H, B*W, d_k)``, on each kernel and the batched matmuls; mismatched axes are rejected."""
    if path == "bmm":
        monkeypatch.setattr(_relative_native, "usable", lambda *tensors: False)
    elif path == "native":
        monkeypatch.setattr(_relative_native, "lane_width", lambda *a: None)
    b, h, w, n, d = 3, 7, 10, 2, 4
    g = torch.Generator().manual_seed(12)
    proj = torch.randn(b, h, w, 2 * n * d + 3, generator=g)
    emb = torch.randn(n, h, h, d, generator=g)
    grad = torch.randn(n, b, w, h, d, generator=g)
    results = []
    for split in (True, False):
        leaf = proj.clone().requires_grad_(True)
        q, v = leaf[..., : n * d].unflatten(-1, (n, d)), leaf[..., n * d : 2 * n * d].unflatten(-1, (n, d))
        if split:
            qt = q.permute(3, 1, 0, 2, 4)  # (N, H, B, W, d), a view
        else:
            qt = q.transpose(1, 2).reshape(b * w, h, n, d).permute(2, 1, 0, 3)  # (N, H, B*W, d), a copy
        values = v.permute(3, 0, 2, 1, 4)  # (N, B, W, H, d)
        e = emb.clone().requires_grad_(True)
        out = relative_axis_attention(qt, values, e, out_order=[1, 3, 2, 0, 4])
        results.append((out, *torch.autograd.grad(out, (leaf, e), grad)))
    if path == "lane":
        assert _relative_native.lane_width(qt, values) == d
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    q5 = proj[..., : n * d].unflatten(-1, (n, d)).permute(3, 1, 0, 2, 4)
    with pytest.raises(ValueError, match="sequence axes"):  # q splits S differently from v
        relative_axis_attention(q5.transpose(2, 3), values.detach(), emb)


def _with_grads(fn, leaves, seed=1):
    """``fn(*leaves)`` and the gradients of the leaves for a random output gradient."""
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


LANE_SHAPES = [  # n, L, S, L_a, d_k, d_v: all run the lane kernel
    (1, 1, 9, 3, 4, 4),  # one position (a phantom second one for d = 4), one full unit and one lane
    (2, 2, 8, 5, 4, 4),
    (2, 13, 17, 11, 4, 4),  # odd L past one block of 8 positions
    (1, 10, 24, 7, 8, 8),
    (3, 8, 3, 64, 8, 8),  # S < 8: no full unit; L_a * d at the tile limit
    (2, 9, 3, 20, 16, 16),
    (1, 17, 9, 32, 16, 16),  # L_a * d at the tile limit
    (2, 5, 19, 9, 32, 32),
    (1, 16, 8, 16, 32, 32),  # L_a * d at the tile limit
]


@pytest.mark.parametrize("shape", LANE_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "overlapping"])
@pytest.mark.parametrize("transpose_out", [False, True])
def test_lane_kernel_matches_naive(native, shape, layout, transpose_out):
    qt, v, emb = _inputs(*shape, layout=layout, seed=sum(shape))
    assert _relative_native.lane_width(qt, v) == shape[4]
    leaves = [t.requires_grad_(True) for t in (qt, v, emb)]  # the views themselves: their strides
    got = _with_grads(lambda *a: relative_axis_attention(*a, transpose_out=transpose_out), leaves)
    ref = [t.detach().double().requires_grad_(True) for t in leaves]
    expected = _with_grads(lambda *a: naive(*a, transpose_out), ref)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def _assert_kernels_agree(monkeypatch, fn, leaves):
    """``fn`` (calling ``relative_axis_attention``) on the lane kernel and on the other kernel."""
    run, lanes = _relative_native._run, []

    def spy(direction, dtype, units, lane, *args, **kwargs):
        lanes.append(lane)
        run(direction, dtype, units, lane, *args, **kwargs)

    monkeypatch.setattr(_relative_native, "_run", spy)
    lane = _with_grads(fn, leaves)
    assert lanes and None not in lanes  # every call, forward and backward, ran a lane kernel
    monkeypatch.setattr(_relative_native, "lane_width", lambda *a: None)
    other = _with_grads(fn, leaves)
    assert lanes[-1] is None
    for a, b in zip(lane, other):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("shape", LANE_SHAPES)
@pytest.mark.parametrize("transpose_out", [False, True])
def test_lane_kernel_matches_the_other_kernel(native, monkeypatch, shape, transpose_out):
    qt, v, emb = _inputs(*shape, layout="channels_last", seed=sum(shape) + 1)
    assert _relative_native.lane_width(qt, v) is not None
    leaves = [t.requires_grad_(True) for t in (qt, v, emb)]
    _assert_kernels_agree(monkeypatch, lambda *a: relative_axis_attention(*a, transpose_out=transpose_out), leaves)


@pytest.mark.parametrize("d", [4, 8])
@pytest.mark.parametrize("size", [(3, 16, 16), (3, 12, 10)])  # (B, H, W); 12 x 10: units span images
def test_lane_kernel_on_the_axial_blocks_calls(native, monkeypatch, size, d):
    """The column step then the row step as ``AxialPositionalAttention`` calls them, from the
    slices of one channels-last projection, on both kernels."""
    (b, h, w), n = size, 2
    g = torch.Generator().manual_seed(9)
    proj = torch.randn(b, h, w, 2 * n * d + 3, generator=g).requires_grad_(True)
    emb_col = torch.randn(n, h, h, d, generator=g).requires_grad_(True)
    emb_row = torch.randn(n, w, w, d, generator=g).requires_grad_(True)

    def steps(proj, emb_col, emb_row):
        q, v = proj[..., : n * d].unflatten(-1, (n, d)), proj[..., n * d : 2 * n * d].unflatten(-1, (n, d))
        qt_col = q.transpose(1, 2).contiguous().view(b * w, h, n, d).permute(2, 1, 0, 3)  # (N, H, B*W, d)
        c = relative_axis_attention(qt_col, v.permute(3, 0, 2, 1, 4), emb_col, out_order=[1, 3, 2, 0, 4])
        c = c.permute(1, 3, 2, 0, 4)  # (B, H, W, N, d), contiguous
        qt_row = q.reshape(b * h, w, n, d).permute(2, 1, 0, 3)  # (N, W, B*H, d)
        p = relative_axis_attention(qt_row, c.permute(3, 0, 1, 2, 4), emb_row, transpose_out=True,
                                    out_order=[1, 0, 3, 2, 4])
        return p.permute(1, 0, 3, 2, 4)  # (B, N, d, H, W), contiguous

    _assert_kernels_agree(monkeypatch, steps, [proj, emb_col, emb_row])


def test_lane_width_dispatch(native):
    def width(keys, d_k, d_v=None, dtype=torch.float32):
        qt, v, _ = _inputs(1, 3, 5, keys, d_k, d_v or d_k, dtype=dtype)
        return _relative_native.lane_width(qt, v)

    assert _relative_native.LANE_WIDTHS == (4, 8, 16, 32) and _relative_native.LANE_MAX_TILE == 512
    assert [width(7, d) for d in (4, 8, 16, 32)] == [4, 8, 16, 32]
    assert width(64, 8) == 8 and width(16, 32) == 32  # L_a * d = 512, the limit
    assert width(7, 8, dtype=torch.float64) is None
    assert width(7, 8, 4) is None and width(7, 4, 8) is None  # d_k != d_v
    assert width(7, 64) is None and width(7, 5) is None
    assert width(64, 16) is None and width(129, 4) is None and width(17, 32) is None  # tile past LANE_MAX_TILE


@pytest.mark.parametrize("d", [4, 16])
def test_lane_kernel_thread_counts_give_the_same_results(native, d):
    qt, v, emb = _inputs(2, 11, 37, 9, d, d, layout="channels_last", seed=10)
    assert _relative_native.lane_width(qt, v) == d
    leaves = [t.requires_grad_(True) for t in (qt, v, emb)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_with_grads(lambda *a: relative_axis_attention(*a, transpose_out=True), leaves))
    finally:
        torch.set_num_threads(before)
    (out1, dq1, dv1, de1), (out2, dq2, dv2, de2) = results
    for a, b in ((out1, out2), (dq1, dq2), (dv1, dv2)):  # each unit is computed by one thread
        assert torch.equal(a, b)
    torch.testing.assert_close(de1, de2, rtol=1e-5, atol=1e-5)  # summed over per-thread partials
