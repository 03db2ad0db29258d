"""Contract tests parametrised over the block registry: every registered block gets them the moment
it is registered (shape, finiteness, gradients, eval determinism, config round trips, errors)."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gsa_search.blocks as blocks_package
from gsa_search.blocks import (
    BlockConfig,
    ExplicitConfig,
    GSAConfig,
    MHSAConfig,
    as_block_config,
    block_config,
    block_config_from_dict,
    create_block,
    list_blocks,
    register_block,
)
from gsa_search.blocks import base as blocks_base
from gsa_search.blocks.conv import ConvBlock, ConvConfig
from gsa_search.blocks.gsa import window_path

SIZE = 8


def _config(name: str) -> BlockConfig:
    fields = {"heads": 2} if "heads" in {f for f in block_config(name).to_dict()} else {}
    return block_config(name, **fields).with_feature_size(SIZE)


def test_registry_lists_the_paper_blocks():
    assert {"gsa", "explicit", "conv", "mhsa"} <= set(list_blocks())


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_shape_finite_and_gradients(name, stride):
    torch.manual_seed(0)
    block = create_block(_config(name), 6, 8, stride=stride)
    x = torch.randn(2, 6, SIZE, SIZE, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 8, SIZE // stride, SIZE // stride)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in block.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {pname} got a zero gradient"


@pytest.mark.parametrize("name", list_blocks())
def test_channels_last_input_gives_the_same_result_and_gradient(name):
    """``channels_last`` models (a trainer option, the CPU default) feed blocks NHWC-strided maps."""
    torch.manual_seed(0)
    block = create_block(_config(name), 6, 8)
    x = torch.randn(2, 6, SIZE, SIZE)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.clone(memory_format=layout).requires_grad_(True)
        out = block(xi)
        out.square().mean().backward()
        results.append((out.detach(), xi.grad))
    (out_a, grad_a), (out_b, grad_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-6)
    # every block hands the layout on, as a convolution does: the layers after it need no conversion
    assert out_a.is_contiguous() and not out_b.is_contiguous()
    assert out_b.is_contiguous(memory_format=torch.channels_last)


GSA_LAYOUT_CASES = {
    "axial": {},
    "2d-window": {"positional": "2d", "rel_span": 1},
    "2d-rows": {"positional": "2d", "rel_span": SIZE - 1},
    "content-only": {"positional": "none"},
    "positional-only": {"content": False},
    "query-norm": {"query_norm": True},
    "output-proj": {"output_proj": True},
}


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("shape", [(SIZE, SIZE), (7, 5)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("case", list(GSA_LAYOUT_CASES))
def test_gsa_keeps_a_channels_last_layout(case, stride, shape, native, monkeypatch):
    """A channels-last input runs the channels-last paths (projection as a 1x1 convolution, the row
    step writing channels last, sums and pools on (B, H, W, N, d) maps): the same output and
    gradients as from the NCHW input, in float64 to rounding, and the output and input gradient
    stay channels last, so the layers after the block need no conversion. ``native`` "0" runs the
    PyTorch paths (what CUDA runs)."""
    monkeypatch.setenv("GSA_SEARCH_NATIVE", native)
    torch.manual_seed(0)
    cfg = block_config("gsa", heads=2, **GSA_LAYOUT_CASES[case]).with_feature_size(SIZE)
    block = create_block(cfg, 6, 8, stride=stride).double()
    x = torch.randn(2, 6, *shape, dtype=torch.float64)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        block.zero_grad(set_to_none=True)
        xi = x.clone(memory_format=layout).requires_grad_(True)
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in block.named_parameters()}))
    (out_a, grad_a, params_a), (out_b, grad_b, params_b) = results
    assert out_a.is_contiguous() and grad_a.is_contiguous()
    assert not out_b.is_contiguous() and out_b.is_contiguous(memory_format=torch.channels_last)
    assert grad_b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_b, out_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-12, atol=1e-12)
    for name, grad in params_a.items():
        torch.testing.assert_close(params_b[name], grad, rtol=1e-12, atol=1e-12, msg=name)


AUTOCAST_CASES = {name: _config(name) for name in list_blocks()} | {
    # r=1 on an 8x8 map runs the window path (compiled kernel on CPU), r=7 (global) the banded rows
    "gsa-2d": block_config("gsa", heads=2, positional="2d", rel_span=1).with_feature_size(SIZE),
    "gsa-2d-rows": block_config("gsa", heads=2, positional="2d", rel_span=SIZE - 1).with_feature_size(SIZE),
    "gsa-content": block_config("gsa", heads=2, positional="none").with_feature_size(SIZE),
}


def test_the_2d_cases_cover_both_algorithms():
    assert window_path(SIZE, SIZE, 1, 1) and not window_path(SIZE, SIZE, SIZE - 1, SIZE - 1)


@pytest.mark.parametrize("case", ["conv", "explicit", "mhsa", "gsa", "gsa-2d", "gsa-2d-rows", "gsa-content"])
def test_blocks_run_on_the_meta_device(case):
    """Shape inference without memory (``torch.device('meta')``), e.g. to size a model before building it."""
    cfg = AUTOCAST_CASES[case]
    block = create_block(cfg, 6, 8, stride=2).to("meta")
    out = block(torch.empty(2, 6, SIZE, SIZE, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 8, SIZE // 2, SIZE // 2)


@pytest.mark.parametrize("case", list(AUTOCAST_CASES))
def test_bf16_autocast_forward_and_backward_follow_float32(case):
    """Mixed precision (how the trainer runs on CUDA; CPU autocast exercises the same casts): every
    block runs forward and backward, parameters keep float32 gradients, and those gradients point
    the same way as the float32 ones."""
    torch.manual_seed(0)
    block = create_block(AUTOCAST_CASES[case], 6, 8)
    x = torch.randn(2, 6, SIZE, SIZE)
    grads = []
    for autocast in (False, True):
        block.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = block(x)
        out.float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in block.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in block.parameters())
    full, mixed = grads
    assert torch.isfinite(mixed).all()
    assert torch.nn.functional.cosine_similarity(full, mixed, dim=0) > 0.99


@pytest.mark.parametrize("name", list_blocks())
def test_odd_sizes_downsample_like_a_strided_conv(name):
    block = create_block(_config(name).with_feature_size(7), 4, 4, stride=2)
    assert block(torch.randn(1, 4, 7, 5)).shape == (1, 4, 4, 3)


@pytest.mark.parametrize("name", list_blocks())
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    block = create_block(_config(name), 4, 4).eval()
    x = torch.randn(2, 4, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(block(x), block(x))


@pytest.mark.parametrize("name", list_blocks())
def test_config_round_trips_through_a_dict(name):
    cfg = _config(name)
    data = cfg.to_dict()
    assert data["type"] == name
    assert block_config_from_dict(data) == cfg
    assert create_block(data, 4, 4).cfg == cfg


def test_every_gsa_ablation_knob_builds_and_runs():
    variants = [
        dict(positional="none"),
        dict(content=False),
        dict(positional="2d", rel_span=2),
        dict(query_norm=True),
        dict(axial_norm=False),
        dict(shared_embeddings=True),
        dict(output_proj=True, dim_value=3),
        dict(dim_key=5),
        dict(rel_span=1),
    ]
    x = torch.randn(2, 8, SIZE, SIZE)
    for change in variants:
        cfg = GSAConfig(heads=2, feature_size=SIZE).replace(**change)
        assert create_block(cfg, 8, 8)(x).shape == x.shape, change


def test_shared_embeddings_have_one_table():
    per_head = create_block(GSAConfig(heads=4, feature_size=SIZE), 8, 8)
    shared = create_block(GSAConfig(heads=4, feature_size=SIZE, shared_embeddings=True), 8, 8)
    assert per_head.positional.rel_col.shape[0] == 4
    assert shared.positional.rel_col.shape[0] == 1
    assert per_head.positional.rel_col.shape[1] == 2 * (SIZE - 1) + 1


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: create_block(GSAConfig(heads=3, feature_size=8), 8, 8), "heads=3 must divide out_channels=8"),
        (lambda: GSAConfig(heads=0), r"gsa\.heads must be a positive integer"),
        (lambda: GSAConfig(dim_key=-1), r"gsa\.dim_key must be a positive integer"),
        (lambda: GSAConfig(dim_value=0), r"gsa\.dim_value must be a positive integer"),
        (lambda: GSAConfig(positional="3d"), r"gsa\.positional must be one of 'axial', '2d', 'none'"),
        (lambda: GSAConfig(rel_span=9, feature_size=8), r"gsa\.rel_span=9 is larger than allowed.*at most"),
        (lambda: GSAConfig(rel_span=0), r"gsa\.rel_span must be 'global' or a positive integer"),
        (lambda: GSAConfig(content=False, positional="none"), "leaves nothing"),
        (lambda: GSAConfig(query_norm="yes"), r"gsa\.query_norm must be True or False"),
        (lambda: create_block(GSAConfig(), 8, 8), "rel_span='global' needs feature_size"),
        (
            lambda: create_block(GSAConfig(heads=2, dim_value=3), 8, 8),
            r"heads\*dim_value = 2\*3 = 6 must equal out_channels=8 unless output_proj=True",
        ),
        (lambda: block_config("conv", kernel_size=2), r"conv\.kernel_size must be odd"),
        (lambda: create_block(ConvConfig(groups=3), 8, 8), r"conv\.groups=3 must divide"),
        (lambda: block_config("explicit", init_radius=0), r"explicit\.init_radius must be a positive finite number"),
        (lambda: block_config("explicit", placement="after"), r"explicit\.placement must be one of"),
        (lambda: block_config("mhsa", heads=-2), r"mhsa\.heads must be a positive integer"),
        (lambda: block_config("nope"), r"unknown block 'nope'; known: conv, explicit, gsa, mhsa"),
        (lambda: block_config("gsa", head=2), r"unknown field\(s\) head; allowed: .*heads"),
        (lambda: block_config_from_dict({"heads": 2}), "needs a 'type' key"),
        (lambda: create_block("conv", 8, 8, stride=3), r"create_block\.stride must be one of 1, 2"),
        (lambda: create_block("conv", 0, 8), "in_channels must be a positive integer"),
    ],
)
def test_invalid_configs_name_the_field_and_what_is_allowed(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_feature_map_larger_than_the_global_span_is_rejected():
    block = create_block(GSAConfig(heads=2, feature_size=8), 4, 4)
    block(torch.randn(1, 4, 8, 6))  # smaller maps are fine
    with pytest.raises(ValueError, match=r"input feature map 9x8 is larger than the 8x8 its global span was built for"):
        block(torch.randn(1, 4, 9, 8))


def test_global_2d_span_warns_that_it_is_quadratic():
    with pytest.warns(UserWarning, match=r"O\(\(H\*W\)\^2\)"):
        GSAConfig(positional="2d", feature_size=8)


def test_with_feature_size_clamps_an_explicit_span_to_the_map():
    assert GSAConfig(rel_span=5).with_feature_size(4).rel_span == "global"
    assert GSAConfig(rel_span=2).with_feature_size(4).rel_span == 2
    assert GSAConfig().with_feature_size(4).span() == 3


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="block 'conv' is already registered"):
        register_block("conv", config=ConvConfig)(ConvBlock)


# --- numpy scalars (configs rebuilt from a results table) -------------------------------------------


def _numpy(value):
    """The numpy scalar a results table hands back for a plain value (other values as they are)."""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    return value


def _assert_plain(data: dict) -> None:
    json.dumps(data)  # JSON-serialisable
    for key, value in data.items():
        assert type(value) in (bool, int, float, str, type(None)), f"{key}={value!r} is a {type(value).__name__}"


@pytest.mark.parametrize("name", list_blocks())
def test_config_from_a_dict_of_numpy_scalars_stores_plain_numbers(name):
    cfg = _config(name)
    data = {key: _numpy(value) for key, value in cfg.to_dict().items()}
    assert any(isinstance(value, np.generic) for value in data.values())
    rebuilt = block_config_from_dict(data)
    assert rebuilt == cfg
    _assert_plain(rebuilt.to_dict())


@pytest.mark.parametrize(
    "cfg",
    [
        GSAConfig(
            heads=np.int64(4), dim_key=np.int32(3), dim_value=np.int16(2), rel_span=np.int64(2),
            feature_size=np.uint8(8), query_norm=np.bool_(True), output_proj=np.True_,
        ),
        GSAConfig(heads=np.int64(2), rel_span="global").with_feature_size(np.int64(8)),
        ExplicitConfig(init_radius=np.float32(1.5)),
        ExplicitConfig(init_radius=np.int64(2)),
        MHSAConfig(heads=np.int64(2), dim_key=np.int64(3), dim_value=np.int64(5), output_proj=np.bool_(True)),
        ConvConfig(kernel_size=np.int64(5), groups=np.int32(2)),
    ],
    ids=lambda cfg: type(cfg).__name__,
)
def test_every_config_accepts_numpy_scalars_and_stores_python_numbers(cfg):
    data = cfg.to_dict()
    _assert_plain(data)
    assert block_config_from_dict(json.loads(json.dumps(data))) == cfg  # round trip through JSON


def test_numpy_scalars_are_stored_as_the_equal_plain_values():
    cfg = GSAConfig(heads=np.int64(4), rel_span=np.int64(2), feature_size=np.int64(8), content=np.bool_(False))
    assert cfg == GSAConfig(heads=4, rel_span=2, feature_size=8, content=False)
    assert type(cfg.heads) is int and type(cfg.rel_span) is int and type(cfg.content) is bool
    assert type(ExplicitConfig(init_radius=np.float32(1.5)).init_radius) is float


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GSAConfig(heads=np.float64(4.0)), r"gsa\.heads must be a positive integer"),
        (lambda: GSAConfig(heads=np.int64(0)), r"gsa\.heads must be a positive integer"),
        (lambda: GSAConfig(heads=np.bool_(True)), r"gsa\.heads must be a positive integer"),
        (lambda: GSAConfig(rel_span=np.float64(2.0)), r"gsa\.rel_span must be 'global' or a positive integer"),
        (lambda: GSAConfig(rel_span=np.int64(0)), r"gsa\.rel_span must be 'global' or a positive integer"),
        (lambda: GSAConfig(query_norm=np.int64(1)), r"gsa\.query_norm must be True or False"),
        (lambda: ExplicitConfig(init_radius=np.float64("nan")), r"explicit\.init_radius must be a positive finite"),
        (lambda: MHSAConfig(dim_key=np.int64(-1)), r"mhsa\.dim_key must be a positive integer"),
        (lambda: ConvConfig(kernel_size=np.int64(4)), r"conv\.kernel_size must be odd"),
    ],
)
def test_invalid_numpy_values_are_still_rejected(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --- the input contract, checked once in SpatialMixer -------------------------------------------------


BAD_INPUTS = {
    "wrong_channels": (2, 5, SIZE, SIZE),
    "three_dims": (6, SIZE, SIZE),
    "five_dims": (1, 2, 6, SIZE, SIZE),
    "empty_batch": (0, 6, SIZE, SIZE),
    "empty_height": (2, 6, 0, SIZE),
}


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_wrong_input_shape_fails_with_the_expected_shape(name, case):
    block = create_block(_config(name), 6, 8)
    shape = BAD_INPUTS[case]
    expected = f"{name} block: expected input of shape (B, in_channels=6, H, W) with B, H, W >= 1, got {shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        block(torch.randn(shape))
    with pytest.raises(ValueError, match="expected input of shape"):
        block.to("meta")(torch.empty(shape, device="meta"))


@pytest.mark.parametrize("name", list_blocks())
def test_a_non_tensor_input_is_rejected(name):
    block = create_block(_config(name), 6, 8)
    expected = f"{name} block: expected a tensor of shape (B, in_channels=6, H, W), got list"
    with pytest.raises(ValueError, match=re.escape(expected)):
        block([[0.0]])


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list_blocks())
def test_the_input_check_runs_no_tensor_operation(name):
    """Shape arithmetic only: no kernel, no device sync, nothing a tracer records."""
    block = create_block(_config(name), 6, 8)
    x = torch.randn(2, 6, SIZE, SIZE)
    with _RecordOps() as recorder:
        block._check_input(x)
    assert recorder.ops == []


@pytest.mark.parametrize("name", list_blocks())
def test_the_input_check_works_under_torch_compile_and_jit_trace(name):
    torch._dynamo.reset()
    block = create_block(_config(name), 6, 8).eval()
    x = torch.randn(2, 6, SIZE, SIZE)
    compiled = torch.compile(block, backend="eager")  # dynamo traces the check; no inductor build
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x))
        with pytest.raises(ValueError, match=r"in_channels=6"):
            compiled(torch.randn(2, 5, SIZE, SIZE))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(block, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), block(x))
    torch._dynamo.reset()
    assert not [w for w in caught if w.filename == blocks_base.__file__]  # the check records nothing


def test_as_block_config_is_public():
    assert "as_block_config" in blocks_package.__all__ and "as_block_config" in blocks_base.__all__
    assert not hasattr(blocks_base, "_as_config")
    assert as_block_config("conv") == ConvConfig()
    assert as_block_config({"type": "conv", "kernel_size": 5}) == ConvConfig(kernel_size=5)
    cfg = GSAConfig(heads=2)
    assert as_block_config(cfg) is cfg
    with pytest.raises(ValueError, match="a BlockConfig, a block name or a dict; got int"):
        as_block_config(3)
