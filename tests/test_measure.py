"""Tests of gsa_search.measure: counted FLOPs == analytic formulas == torch's FlopCounterMode / 2 for
every registered block (parametrised over the registry), the paper reference points, scaling laws,
the uncounted-operator list, latency/memory fields and the per-layer table."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import warnings
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gsa_search import measure, metrics
from gsa_search.blocks import BlockConfig, block_config, create_block, list_blocks
from gsa_search.measure import (
    analytic_flops,
    count_flops,
    count_params,
    flops_breakdown,
    measure_latency,
    model_flops,
    model_params,
)
from gsa_search.models import build_model, create_model, model_config

SIZES = [(8, 8), (12, 10), (16, 16)]
C_IN, C_OUT = 6, 8
MAC_OPS = ("conv", "mm", "matmul", "einsum", "attention", "linear", "PythonOp")  # "mm": mm, bmm, addmm


def _config(name: str, size: int) -> BlockConfig:
    fields = {"heads": 2} if "heads" in block_config(name).to_dict() else {}
    return block_config(name, **fields).with_feature_size(size)


def _torch_macs(module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 2  # FlopCounterMode counts a multiply-add as 2 FLOPs


@pytest.mark.parametrize("name", list_blocks())
def test_every_registered_block_has_a_formula(name):
    """The formula is a method of the block's own config (beside its code), not a base-class stub."""
    cfg = _config(name, 8)
    assert type(cfg).flops is not BlockConfig.flops
    assert inspect.getmodule(type(cfg).flops) is inspect.getmodule(type(create_block(cfg, C_IN, C_OUT)))
    macs = cfg.flops(C_IN, C_OUT, 8, 8, stride=2)
    assert type(macs) is int and macs > 0
    assert analytic_flops(cfg, C_IN, C_OUT, 8, 8, stride=2) == macs


@dataclasses.dataclass(frozen=True)
class _NoFormulaConfig(BlockConfig):
    block_type: ClassVar[str] = "no_formula"  # never registered: the registry stays as the tests expect


def test_a_config_without_a_formula_says_which_block_and_what_to_implement():
    with pytest.raises(NotImplementedError, match=r"block 'no_formula' has no analytic FLOPs formula: implement "
                       r"_NoFormulaConfig\.flops\(in_channels, out_channels, height, width, \*, stride=1\)"):
        analytic_flops(_NoFormulaConfig(), 4, 4, 8, 8)


def test_measure_names_no_block_module():
    """Adding a block is one module plus its registration: measure.py imports only the block base."""
    tree = ast.parse(inspect.getsource(measure))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in imported if m.startswith("blocks")} == {"blocks.base"}
    assert not hasattr(measure, "register_flop_formula") and not hasattr(measure, "list_flop_formulas")


@pytest.mark.parametrize("name", list_blocks())
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stride", [1, 2])
def test_counted_flops_match_the_formula_and_torch(name, size, stride):
    h, w = size
    cfg = _config(name, max(h, w))
    block = create_block(cfg, C_IN, C_OUT, stride=stride)
    count = count_flops(block, (2, C_IN, h, w))
    expected = analytic_flops(cfg, C_IN, C_OUT, h, w, stride=stride)
    assert count.per_image == expected  # exact, so a formula drifting from its block is caught
    assert count.total == 2 * expected
    assert _torch_macs(block.eval(), torch.randn(2, C_IN, h, w)) == pytest.approx(count.total, rel=0.01)


GSA_VARIANTS = {
    "content_only": dict(positional="none"),
    "positional_only": dict(content=False),
    "axial_local": dict(rel_span=2),
    "axial_no_norm": dict(axial_norm=False),
    "2d_local_r1": dict(positional="2d", rel_span=1),
    "2d_global": dict(positional="2d"),
    "query_norm": dict(query_norm=True),
    "output_proj": dict(output_proj=True, dim_value=3),
    "dim_key_ne_dim_value": dict(dim_key=6),
    "shared_embeddings": dict(shared_embeddings=True, heads=4),
    "everything": dict(positional="2d", rel_span=2, query_norm=True, output_proj=True, dim_key=5, dim_value=7),
}
OTHER_VARIANTS = {
    "explicit_beside": block_config("explicit", placement="beside"),
    "mhsa_proj_dims": block_config("mhsa", heads=2, dim_key=3, dim_value=5, output_proj=True),
    "conv_5x5_grouped": block_config("conv", kernel_size=5, groups=2),
}


def _gsa(variant: str, size: int) -> BlockConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a global 2D window warns that it is quadratic
        return block_config("gsa", **{"heads": 2, **GSA_VARIANTS[variant]}).with_feature_size(size)


@pytest.mark.parametrize("variant", [*GSA_VARIANTS, *OTHER_VARIANTS])
@pytest.mark.parametrize("size", [(8, 8), (12, 10)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("stride", [1, 2])
def test_block_variants_match_the_formula_and_torch(variant, size, stride):
    h, w = size
    cfg = _gsa(variant, max(h, w)) if variant in GSA_VARIANTS else OTHER_VARIANTS[variant]
    block = create_block(cfg, C_IN, C_OUT, stride=stride)
    count = count_flops(block, (1, C_IN, h, w))
    assert count.total == analytic_flops(cfg, C_IN, C_OUT, h, w, stride=stride)
    assert _torch_macs(block.eval(), torch.randn(1, C_IN, h, w)) == pytest.approx(count.total, rel=0.01)


@pytest.mark.parametrize("name", ["proxy_resnet", "proxy_gsa_resnet", "proxy_gsa_2d", "proxy_mhsa_resnet",
                                  "proxy_explicit_beside"])
def test_proxy_models_agree_with_torch_flop_counter(name):
    model = create_model(name).eval()
    count = count_flops(model, (2, 3, 32, 32))
    assert _torch_macs(model, torch.randn(2, 3, 32, 32)) == pytest.approx(count.total, rel=0.01)
    assert count.per_image * 2 == count.total


def test_resnet50_is_about_4_1_gmacs():
    count = count_flops(create_model("resnet50"), (1, 3, 224, 224))
    assert 4.0e9 < count.total < 4.2e9
    assert "multiply-accumulates" in count.convention


def test_handles_count_broadcast_matmul_and_einsum_exactly():
    class Ops(nn.Module):
        def forward(self, x):  # x: (B=2, C=3, H=4, W=5)
            k_h, k_w = torch.ones(4, 4), torch.ones(5, 5)
            a = k_h @ x  # (H, H) @ (B, C, H, W): batch 2*3, M=K=4, N=5
            b = x @ k_w  # batch 2*3, M=4, K=N=5
            c = torch.ones(5) @ k_w  # 1-D @ 2-D: 5*5
            d = torch.einsum("bchw,hk->bckw", x, k_h)  # b c h w k: 2*3*4*5*4
            e = torch.einsum("...hw,wv->...hv", x, k_w)  # (b c) h w v: 2*3*4*5*5
            f = torch.einsum("bchw,hk,wv->bckv", x, k_h, k_w)  # (b c h w k) then (b c k w v)
            g = torch.einsum("bchw->bc", x)  # one operand: no multiply-adds
            return a.sum() + b.sum() + c.sum() + d.sum() + e.sum() + f.sum() + g.sum()

    count = count_flops(Ops(), (2, 3, 4, 5))
    assert count.by_operator["matmul"] == 2 * 3 * 4 * 4 * 5 + 2 * 3 * 4 * 5 * 5 + 5 * 5
    assert count.by_operator["einsum"] == 480 + 600 + (480 + 600)
    assert _torch_macs(Ops(), torch.randn(2, 3, 4, 5)) == count.total


def test_scaling_laws():
    def count(cfg, side):
        return count_flops(create_block(cfg.with_feature_size(side), 16, 16), (1, 16, side, side))

    content = block_config("gsa", heads=2, positional="none")
    assert count(content, 16).total == 4 * count(content, 8).total  # linear in H*W
    axial = block_config("gsa", heads=2, content=False)
    small, large = count(axial, 8), count(axial, 16)
    assert large.by_module["positional"] == 8 * small.by_module["positional"]  # O(HW (H+W))
    mhsa = block_config("mhsa", heads=2)
    small, large = count(mhsa, 8), count(mhsa, 16)
    attention = [c.total - c.by_module["qkv"] for c in (small, large)]
    assert attention[1] == 16 * attention[0]  # quadratic in H*W


def test_uncounted_lists_norms_and_softmax_and_nothing_mac_bearing():
    count = count_flops(create_model("proxy_gsa_resnet"), (1, 3, 32, 32))
    assert {"aten::batch_norm", "aten::softmax"} <= set(count.uncounted)
    assert all(n > 0 for n in count.uncounted.values())
    leaked = [op for op in count.uncounted if any(mac in op for mac in MAC_OPS)]
    assert not leaked, f"MAC-bearing operators left uncounted: {leaked}"
    assert "batch_norm" in count.convention and "softmax" in count.convention


def test_count_flops_leaves_model_and_rng_alone():
    model = create_model("proxy_gsa_content").train()
    state = torch.get_rng_state()
    first = count_flops(torch.compile(model), (1, 3, 32, 32))  # counts _orig_mod, compiles nothing
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and all(m.training for m in model.modules())
    assert first == count_flops(model, (1, 3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model, (1, 3, 0, 32))


def test_analytic_flops_accepts_names_and_dicts_and_rejects_unknown_types():
    assert analytic_flops("conv", 4, 4, 8, 8) == analytic_flops({"type": "conv"}, 4, 4, 8, 8) == 8 * 8 * 4 * 4 * 9
    assert analytic_flops("conv", 4, 4, 7, 7, stride=2) == 4 * 4 * 4 * 4 * 9  # ceil(7/2) = 4
    with pytest.raises(ValueError, match="known"):
        analytic_flops({"type": "nope"}, 4, 4, 8, 8)


def test_the_flops_convention_is_defined_once():
    assert measure.CONVENTION is metrics.FLOPS_CONVENTION
    count = count_flops(create_block("conv", 4, 4), (1, 4, 4, 4))
    assert count.convention == f"{metrics.FLOPS_CONVENTION}; uncounted: nothing"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_raises_the_clear_error():
    block = create_block("conv", 4, 4)
    with pytest.raises(ValueError, match=r"measure_latency: device='cuda' but CUDA is not available on this machine"):
        measure_latency(block, (1, 4, 4, 4), device="cuda", warmup=0, repeats=1)
    with pytest.raises(ValueError, match=r"count_flops: device='cuda:0' but CUDA is not available"):
        count_flops(block, (1, 4, 4, 4), device="cuda:0")
    with pytest.raises(ValueError, match=r"measure_latency\.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        measure_latency(block, (1, 4, 4, 4), device="gpu", warmup=0, repeats=1)
    assert all(p.device.type == "cpu" for p in block.parameters())  # rejected before moving anything


def test_measure_latency_on_cpu():
    model = create_model("proxy_gsa_resnet").eval()
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    result = measure_latency(model, (2, 3, 32, 32), device="cpu", warmup=1, repeats=3)
    assert result.device == "cpu" and result.repeats == 3
    assert result.latency_ms > 0 and result.latency_fwd_bwd_ms > 0
    assert result.latency_iqr_ms >= 0 and result.latency_fwd_bwd_iqr_ms >= 0
    assert result.peak_memory_mb is None
    assert result.activation_mb > 0
    assert not model.training and not any(m.training for m in model.modules())  # mode restored
    assert all(torch.equal(before[name], buf) for name, buf in model.named_buffers())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    double = measure_latency(model, (4, 3, 32, 32), device="cpu", warmup=0, repeats=1, backward=False)
    assert double.latency_fwd_bwd_ms is None
    assert double.activation_mb / result.activation_mb == pytest.approx(2.0, rel=0.2)


def test_flops_breakdown_rows_sum_to_the_totals():
    model = create_model("proxy_gsa_resnet", stage_blocks=(2, 1, 1, 1))
    count = count_flops(model, (2, 3, 32, 32))
    table = flops_breakdown(model, (2, 3, 32, 32), depth=2)
    assert list(table.columns[:2]) == ["module", "type"] and {"params", "flops", "flops_share"} <= set(table.columns)
    top = table[table["depth"] == 1]
    assert list(top["module"]) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert top["flops"].sum() == count.per_image
    assert top["params"].sum() == count_params(model)
    assert top["flops_share"].sum() == pytest.approx(1.0)
    blocks = table[table["module"].str.startswith("stages.0.")]
    assert list(blocks["module"]) == ["stages.0.0", "stages.0.1"] and set(blocks["type"]) == {"Bottleneck"}
    stage = table.set_index("module").loc["stages.0"]
    assert blocks["flops"].sum() == stage["flops"] and blocks["params"].sum() == stage["params"]
    shallow = flops_breakdown(model, (1, 3, 32, 32), depth=1)
    assert list(shallow["module"]) == list(top["module"])
    assert list(shallow["flops"]) == list(top["flops"])  # per image, whatever the batch


@pytest.mark.parametrize("variant", ["2d_local_r1", "2d_global", "everything", "axial_local"])
def test_per_image_flops_do_not_depend_on_the_batch(variant):
    cfg = _gsa(variant, 10)
    block = create_block(cfg, C_IN, C_OUT)
    single, triple = (count_flops(block, (b, C_IN, 10, 9)) for b in (1, 3))
    assert triple.total == 3 * single.total
    assert triple.per_image == single.per_image == analytic_flops(cfg, C_IN, C_OUT, 10, 9)


def test_2d_counts_only_the_window_for_local_spans():
    """A local 2D window is computed key by key: the count (fvcore, through the window-sum op's
    handle) and the formula both give logits + weighting over the (2r+1)^2 offsets, far below the
    whole-row cost; torch's flop counter sees the same op."""
    cfg = block_config("gsa", heads=2, positional="2d", rel_span=1, feature_size=48)
    block = create_block(cfg, C_IN, C_OUT)
    count = count_flops(block, (1, C_IN, 6, 48))
    assert count.total == analytic_flops(cfg, C_IN, C_OUT, 6, 48)
    d = C_OUT // 2
    assert count.by_module["positional"] == 2 * 6 * 48 * 9 * (d + d)
    assert count.by_operator["window_sum"] == 2 * 6 * 48 * 9 * d
    whole_rows = 2 * (6 + 1) * 48 * 3 * 48 * (d + d)
    assert count.by_module["positional"] < 0.1 * whole_rows
    assert _torch_macs(block.eval(), torch.randn(1, C_IN, 6, 48)) == pytest.approx(count.total, rel=0.01)


# --- per-config cost cache ----------------------------------------------------------------------------


@pytest.fixture
def traces(monkeypatch):
    """Counts calls of ``count_flops`` (what model_flops would trace) with an empty cache."""
    calls: list[tuple[int, ...]] = []
    real = measure.count_flops

    def counting(model, input_shape, **kwargs):
        calls.append(tuple(input_shape))
        return real(model, input_shape, **kwargs)

    monkeypatch.setattr(measure, "count_flops", counting)
    measure.clear_cost_caches()
    yield calls
    measure.clear_cost_caches()


def test_model_flops_traces_each_config_once(traces):
    cfg = model_config("proxy_gsa_content", num_classes=7)
    first = model_flops(cfg, (1, 3, 32, 32))
    assert traces == [(1, 3, 32, 32)]
    assert first.per_image == count_flops(build_model(cfg), (1, 3, 32, 32)).per_image
    again = model_flops(model_config("proxy_gsa_content", num_classes=7), (1, 3, 32, 32))  # equal, not the same
    from_dict = model_flops(cfg.to_dict(), np.array([1, 3, 32, 32]))  # a dict and numpy sizes: same key
    assert again is first and from_dict is first and len(traces) == 1
    other = model_flops(model_config("proxy_gsa_content", num_classes=9), (1, 3, 32, 32))
    assert len(traces) == 2 and other.per_image != first.per_image  # a bigger head
    bigger = model_flops(cfg, (1, 3, 16, 16))  # the input size is part of the key
    assert len(traces) == 3 and bigger.per_image < first.per_image


def test_model_flops_leaves_the_global_rng_alone(traces):
    state = torch.get_rng_state()
    model_flops(model_config("proxy_resnet", num_classes=5), (1, 3, 32, 32))
    assert torch.equal(state, torch.get_rng_state())


def test_model_flops_cache_is_bounded(traces, monkeypatch):
    monkeypatch.setattr(measure, "_FLOPS_CACHE", measure._LRU(2))
    for classes in (3, 4, 5, 3):  # 3 was evicted by 5
        model_flops(model_config("proxy_resnet", num_classes=classes), (1, 3, 16, 16))
    assert len(traces) == 4 and len(measure._FLOPS_CACHE) == 2


def test_model_params_is_cached_and_matches_the_built_model(traces, monkeypatch):
    cfg = model_config("proxy_mhsa_resnet", num_classes=6)
    expected = count_params(build_model(cfg))
    built = []
    real_build = measure._build
    monkeypatch.setattr(measure, "_build", lambda c: built.append(c) or real_build(c))
    assert model_params(cfg) == expected and len(built) == 1
    assert model_params(model_config("proxy_mhsa_resnet", num_classes=6)) == expected and len(built) == 1
    model_flops(cfg, (1, 3, 32, 32))  # builds once more (to trace); its params were already known
    assert len(built) == 2
    other = model_config("proxy_mhsa_resnet", num_classes=8)
    model_flops(other, (1, 3, 32, 32))
    assert model_params(other) == count_params(build_model(other)) and len(built) == 3  # filled by model_flops


def test_model_flops_rejects_what_is_not_a_model_config():
    with pytest.raises(ValueError, match="a model config must be"):
        model_flops(object(), (1, 3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        model_flops(model_config("proxy_resnet"), (1, 3, 0, 32))
