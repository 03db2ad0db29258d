"""Cost measurement: parameters, FLOPs (counted and analytic), latency and memory, per-layer tables.

Status: stable. FLOPs follow the GSA and ResNet papers' convention: **multiply-accumulates**, one
multiply-add = one FLOP (ResNet-50 at 224x224 = about 4.1 G). ``torch.utils.flop_counter`` counts
2x that.

* :func:`count_flops` traces the model with fvcore's ``FlopCountAnalysis`` and counts only the
  operators that do multiply-accumulates: convolutions, linear/addmm, ``matmul``/``mm``/``bmm``
  (with broadcast batch dims, which fvcore's own matmul handle gets wrong), ``einsum`` (exact, for
  any number of operands), ``scaled_dot_product_attention`` and the compiled GSA kernels (custom
  operators or autograd functions, opaque to the tracer: relative attention, window sum and window
  attention, content attention, whose inner softmax is listed as uncounted like the unfused
  path's). Everything else
  that runs (batch norm, which folds into the preceding conv at inference, softmax, element-wise
  ops, pooling, gather/index, ...) is **not counted** and is listed with its number of calls in
  ``FlopCount.uncounted``; only pure shape and memory operators (view, reshape, permute, cat, to,
  ...) go unlisted. Custom autograd functions are opaque to the tracer: each needs a handle here
  (``prim::PythonOp.<class name>``), or it shows up in ``uncounted``.
* :func:`analytic_flops` gives the same number from a block config and the map size: each block
  config carries its own short formula (:meth:`~gsa_search.blocks.BlockConfig.flops`, beside the
  block's code); the tests check that the two agree exactly for every registered block, so a
  formula that drifts from its implementation is caught.
* :func:`model_flops` / :func:`model_params` build a model from its config and count it once per
  ``(config, input shape)``: a cache for searches and training runs that ask again.
* :func:`measure_latency` times forward and forward+backward runs (medians and IQRs) and reports
  memory: the CUDA allocator's peak on GPUs, and everywhere the bytes autograd saves for backward.
* :func:`flops_breakdown` is a per-stage / per-bottleneck table of parameters and MACs.

Example:
    >>> from gsa_search.models import create_model
    >>> model = create_model("proxy_resnet")
    >>> count = count_flops(model, (1, 3, 32, 32))
    >>> count.per_image == count.total and "aten::batch_norm" in count.uncounted
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import statistics
import threading
import time
import warnings
from collections import Counter, OrderedDict
from typing import Any, Callable, Hashable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn

from .blocks.base import BlockConfig, as_block_config
from .config import as_int
from .device import resolve_device
from .metrics import FLOPS_CONVENTION

__all__ = [
    "CONVENTION",
    "FlopCount",
    "LatencyResult",
    "analytic_flops",
    "clear_cost_caches",
    "count_flops",
    "count_params",
    "flops_breakdown",
    "measure_latency",
    "model_flops",
    "model_macs",
    "model_params",
]

CONVENTION = FLOPS_CONVENTION  # alias: the convention is defined once, in gsa_search.metrics


# --- parameters --------------------------------------------------------------------------------------


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters once); ``trainable_only`` skips frozen ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- counted FLOPs (fvcore trace + our MAC handles) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """MACs of one traced forward pass.

    ``total``, ``by_operator`` and ``by_module`` are for the whole input batch; ``per_image`` is
    ``total / batch_size``. ``uncounted`` maps every operator that ran but was not counted (no
    multiply-accumulates, or deliberately skipped like batch norm) to its number of calls.
    """

    total: int
    per_image: int
    batch_size: int
    by_operator: dict[str, int]
    by_module: dict[str, int]
    uncounted: dict[str, int]

    @property
    def convention(self) -> str:
        names = ", ".join(sorted(op.split("::")[-1] for op in self.uncounted)) or "nothing"
        return f"{FLOPS_CONVENTION}; uncounted: {names}"


def _shape(value: Any) -> list[int]:
    """Shape of a traced ``torch._C.Value``."""
    if not value.isCompleteTensor():
        raise ValueError(f"FLOPs counting: an operand has no static shape ({value.type()})")
    return list(value.type().sizes())


def _matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``matmul``/``mm``/``bmm`` with numpy broadcasting: batch * M * K * N (1-D operands allowed)."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    m = a[-2] if len(a) > 1 else 1
    k = a[-1]
    n = b[-1] if len(b) > 1 else 1
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return math.prod(batch) * m * k * n


def _baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm(input, batch1, batch2)``: the bmm part."""
    return _matmul_macs(inputs[1:3], outputs)


def _einsum_operand_labels(equation: str, shapes: list[list[int]]) -> tuple[list[str], str]:
    """Per-operand label strings (``...`` replaced by upper-case letters, right-aligned) and the output."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum {equation!r}: {len(terms)} terms for {len(shapes)} operands")
    ellipsis = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    broadcast = "".join(chr(ord("A") + i) for i in range(ellipsis))
    labels = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            own = len(shape) - len(term.replace("...", ""))
            term = term.replace("...", broadcast[ellipsis - own :])
        labels.append(term)
    if arrow:
        out = rhs.replace("...", broadcast)
    else:  # implicit output: broadcast dims, then labels appearing once, sorted
        letters = Counter("".join(t for t in terms).replace("...", "").replace(".", ""))
        out = broadcast + "".join(sorted(c for c, n in letters.items() if n == 1))
    return labels, out


def _einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """Exact einsum MACs: two operands cost the product of the sizes of all their distinct labels.

    More operands are contracted left to right (torch's order without opt_einsum), each pairwise
    step costing the product of its labels. One operand costs nothing (a transpose or a sum).
    """
    equation = inputs[0].toIValue()
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    labels, out = _einsum_operand_labels(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(labels, shapes):
        for label, size in zip(term, shape):
            sizes[label] = max(sizes.get(label, 1), size)  # broadcast size-1 dims
    macs, current = 0, labels[0]
    for i in range(1, len(labels)):
        step = set(current) | set(labels[i])
        macs += math.prod(sizes[c] for c in step)
        needed = set(out).union(*labels[i + 1 :])
        current = "".join(c for c in sorted(step) if c in needed)
    return macs


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``scaled_dot_product_attention(q, k, v)``: batch*heads * L * S * (E + Ev) (logits + weighting)."""
    q, k, v = (_shape(t) for t in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _relative_axis_macs(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``blocks._relative.relative_axis_attention(qt, v, emb)``: logits ``N*L_i*S*L_a*d_k`` + weighting
    ``N*S*L_i*L_a*d_v`` with ``qt (N, L_i, S, d_k)`` (or ``(N, L_i, S_hi, S_lo, d_k)``), ``v (N, S, L_a, d_v)``."""
    q = _shape(inputs[0])
    n, length, seqs, d_k = q[0], q[1], math.prod(q[2:-1]), q[-1]
    length_a, d_v = _shape(inputs[1])[-2:]
    return Counter({"relative_axis_attention": n * length * seqs * length_a * (d_k + d_v)})


def _window_sum_macs(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``blocks._window.window_sum(a, v)``: one multiply-add per weight and value channel,
    ``N*B*H*W*K*d_v`` with ``a (N, B, H, W, K)`` (offsets falling outside the map included, as a
    padded convolution counts its zero taps)."""
    return Counter({"window_sum": math.prod(_shape(inputs[0])) * _shape(inputs[1])[-1]})


def _window_attention_macs(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``blocks._window.window_attention(q, v, rel)``, the fused local window: the logits
    ``N*B*H*W*K*d_k`` (counted as the ``matmul`` the unfused path runs) and the weighting
    ``N*B*H*W*K*d_v`` (as its ``window_sum``), so the breakdown does not depend on which ran."""
    q, v, rel = (_shape(t) for t in inputs[:3])
    pairs = math.prod(q[:4]) * rel[1]
    return Counter({"matmul": pairs * q[4], "window_sum": pairs * v[4]})


def _content_attention_macs(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``blocks._content.content_attention(q, k, v)``, the fused content path: ``K^T V`` and
    ``G^T Q``, ``B*(L + L_q)*N*d_k*d_v`` with ``q (B, L_q, N, d_k)``, ``k (B, L, N, d_k)``,
    ``v (B, L, N, d_v)`` (booked as the ``bmm`` the unfused path runs, so the breakdown does not
    depend on which ran)."""
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    return Counter({"bmm": (math.prod(q) + math.prod(k)) * v[-1]})


# Fused operators that run uncounted work inside: listed in ``uncounted`` as the unfused path's own
# operators would be, so the convention names the same operators whichever path ran.
_FUSED_UNCOUNTED = {
    "gsa_search::content_attention": ("aten::softmax",),
    "prim::PythonOp._ContentAttention": ("aten::softmax",),  # its autograd function, as traced
}


def _projection_macs(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """``blocks.gsa.PointwiseProjection``: a 1x1 convolution, ``B*H*W*C_in*C_out``."""
    x, weight = _shape(inputs[0]), _shape(inputs[1])
    return Counter({"pointwise_projection": math.prod(x) * weight[0]})


def _fvcore_handles() -> dict[str, Callable[[list[Any], list[Any]], Any]]:
    from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit

    return {
        "aten::_convolution": conv_flop_jit,
        "aten::addmm": addmm_flop_jit,
        "aten::linear": linear_flop_jit,
        "aten::matmul": _matmul_macs,
        "aten::mm": _matmul_macs,
        "aten::bmm": _matmul_macs,
        "aten::baddbmm": _baddbmm_macs,
        "aten::einsum": _einsum_macs,
        "aten::scaled_dot_product_attention": _sdpa_macs,
        # custom autograd functions are traced as one opaque node named after the class
        "prim::PythonOp._RelativeAxisAttention": _relative_axis_macs,
        "prim::PythonOp._Projection": _projection_macs,
        "gsa_search::window_sum": _window_sum_macs,
        "gsa_search::window_attention": _window_attention_macs,
        "gsa_search::content_attention": _content_attention_macs,
        "prim::PythonOp._ContentAttention": _content_attention_macs,
    }


# fvcore silently ignores these although they compute something; we list them as uncounted instead.
_LISTED_IGNORED_OPS = (
    "aten::relu", "aten::relu_", "aten::clamp", "aten::clamp_", "aten::max", "aten::gather",
    "aten::index", "aten::index_put_", "aten::masked_fill", "aten::floor", "aten::floor_divide",
    "aten::remainder", "aten::eq", "aten::ge", "aten::gt", "aten::__and__", "aten::bitwise_not",
    "aten::nonzero", "aten::roll",
)  # fmt: skip


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence TorchScript's deprecation/tracer warnings and fvcore's logging during a trace."""
    loggers = [logging.getLogger(name) for name in ("fvcore", "fvcore.nn.jit_analysis", "torch.jit")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _random_input(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed random input that leaves the global RNG alone (seeded runs stay reproducible)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of plain ints (numpy integers accepted), each >= 1."""
    shape = tuple(as_int(s) for s in input_shape)
    if len(shape) < 2 or any(s is None or s < 1 for s in shape):
        raise ValueError(f"input_shape must be (batch, channels, ...) positive integers, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def count_flops(
    model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device | None = None
) -> FlopCount:
    """MACs of one forward pass on a random input of ``input_shape`` (batch dimension included).

    Counts on an eval-mode deep copy (the model is not touched), before ``torch.compile`` (a compiled
    model's ``_orig_mod`` is counted), on ``device`` (default: the model's). See the module
    docstring for what is counted.

    Example:
        >>> from gsa_search.blocks import create_block
        >>> count = count_flops(create_block("conv", 8, 8), (2, 8, 4, 4))
        >>> count.total, count.per_image  # 4*4 positions * 8 out * 8 in * 3*3
        (18432, 9216)
    """
    with _quiet():  # importing fvcore scripts functions: TorchScript deprecation warnings
        from fvcore.nn import FlopCountAnalysis

    shape = _check_shape(input_shape)
    model = getattr(model, "_orig_mod", model)
    model_device, dtype = _model_device_dtype(model)
    device = resolve_device(device, owner="count_flops") if device is not None else model_device
    counted = copy.deepcopy(model).to(device).eval()
    x = _random_input(shape, device, dtype)
    listed: Counter[str] = Counter()

    def listing(name: str) -> Callable[[list[Any], list[Any]], int]:
        def handle(inputs: list[Any], outputs: list[Any]) -> int:
            listed[name] += 1
            return 0

        return handle

    def fused(op: str, handle: Callable[[list[Any], list[Any]], Any]) -> Callable[[list[Any], list[Any]], Any]:
        def count(inputs: list[Any], outputs: list[Any]) -> Any:
            for inner in _FUSED_UNCOUNTED[op]:
                listed[inner] += 1
            return handle(inputs, outputs)

        return count

    handles = _fvcore_handles()
    handles.update({op: fused(op, handles[op]) for op in _FUSED_UNCOUNTED})
    analysis = FlopCountAnalysis(counted, (x,))
    analysis.clear_op_handles()  # drops fvcore's batch-norm, norm, pooling and upsampling counts
    analysis.set_op_handle(**handles, **{op: listing(op) for op in _LISTED_IGNORED_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with _quiet(), torch.no_grad():
        total = int(analysis.total())
        by_operator = {op: int(v) for op, v in analysis.by_operator().items() if v}
        by_module = {name: int(v) for name, v in analysis.by_module().items()}
        uncounted = Counter(analysis.unsupported_ops()) + listed
    batch = shape[0]
    return FlopCount(
        total=total,
        per_image=round(total / batch),
        batch_size=batch,
        by_operator=by_operator,
        by_module=by_module,
        uncounted=dict(sorted(uncounted.items())),
    )


# --- analytic FLOPs (each block config's own formula) ------------------------------------------------


def analytic_flops(
    block_cfg: BlockConfig | str | dict[str, Any],
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    *,
    stride: int = 1,
) -> int:
    """MACs of one block on one ``height`` x ``width`` image, from its config (same convention as
    :func:`count_flops`: pooling, norms, softmax and element-wise ops are not counted).

    The formula lives beside its block, as :meth:`~gsa_search.blocks.BlockConfig.flops` on the
    block's config; this function accepts a config, a registered block name or a config dict.

    Example:
        >>> analytic_flops("conv", 8, 8, 4, 4)
        9216
    """
    cfg = as_block_config(block_cfg)
    return int(cfg.flops(in_channels, out_channels, height, width, stride=stride))


# --- per-config cost cache (what a search asks for again and again) -------------------------------------


class _LRU:
    """A small thread-safe least-recently-used dict (trials may run in threads)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_CACHE_SIZE = 512
_FLOPS_CACHE = _LRU(_CACHE_SIZE)
_PARAMS_CACHE = _LRU(_CACHE_SIZE)


def _model_config(model_cfg: Any) -> Any:
    """A dict becomes its config (so that equal configs get equal keys); anything else needs ``to_dict()``."""
    from .models import model_config_from_dict  # imported here: models import blocks, like this module

    if isinstance(model_cfg, dict):
        return model_config_from_dict(model_cfg)
    if not callable(getattr(model_cfg, "to_dict", None)):
        raise ValueError(
            f"a model config must be a backbone config (e.g. ModelConfig), its dict, or have to_dict(); "
            f"got {type(model_cfg).__name__}"
        )
    return model_cfg


def _config_key(model_cfg: Any) -> str:
    """The cache key of a model config: its ``to_dict()`` as sorted JSON."""
    return json.dumps(model_cfg.to_dict(), sort_keys=True, default=repr)


def _build(model_cfg: Any) -> nn.Module:
    """``build_model(cfg)`` (on the CPU) without touching the global RNG: seeded runs stay reproducible."""
    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        return build_model(model_cfg)


def model_flops(model_cfg: Any, input_shape: Sequence[int]) -> FlopCount:
    """:func:`count_flops` of the model built from ``model_cfg`` (a
    :class:`~gsa_search.models.ModelConfig`, its dict, or anything with ``to_dict()``) on
    ``input_shape``, cached by ``(config, input_shape)``.

    The count depends only on the config and the input size, so a search (or ``train``) asking
    again for an equal config, even a separately built one, gets the same :class:`FlopCount`
    object back without building or tracing anything. The last 512 entries are kept; the model is
    built on the CPU without touching the global RNG. Treat the result as read-only (it is shared).

    Example:
        >>> from gsa_search.models import model_config
        >>> cfg = model_config("proxy_resnet")
        >>> model_flops(cfg, (1, 3, 32, 32)) is model_flops(cfg, (1, 3, 32, 32))
        True
    """
    shape = _check_shape(input_shape)
    model_cfg = _model_config(model_cfg)
    key = (_config_key(model_cfg), shape)
    count = _FLOPS_CACHE.get(key)
    if count is None:
        model = _build(model_cfg)
        count = count_flops(model, shape)
        _FLOPS_CACHE.put(key, count)
        _PARAMS_CACHE.put(key[0], count_params(model))
    return count


def model_macs(model_cfg: Any, input_shape: Sequence[int]) -> int:
    """MACs per image of the model built from ``model_cfg``: the backbone's closed form
    (``cfg.flops()``) when it has one and ``input_shape`` is its own input, else
    :func:`model_flops` (a cached fvcore trace, about 0.5 s per new config on a CPU).

    The closed forms are checked against the traced count for every preset and for configs sampled
    from every shipped search space (``tests/test_models.py``), so both give the same number.

    Example:
        >>> from gsa_search.models import model_config
        >>> cfg = model_config("proxy_resnet")
        >>> model_macs(cfg, (1, 3, 32, 32)) == model_flops(cfg, (1, 3, 32, 32)).per_image
        True
    """
    shape = _check_shape(input_shape)
    model_cfg = _model_config(model_cfg)
    own = (1, getattr(model_cfg, "in_channels", None), getattr(model_cfg, "image_size", None),
           getattr(model_cfg, "image_size", None))
    if shape == own:
        try:
            return int(model_cfg.flops())
        except NotImplementedError:
            pass
    return model_flops(model_cfg, shape).per_image


def model_params(model_cfg: Any) -> int:
    """:func:`count_params` of the model built from ``model_cfg`` (as :func:`model_flops`), cached
    by config.

    Example:
        >>> from gsa_search.models import model_config
        >>> model_params(model_config("proxy_resnet")) > 0
        True
    """
    model_cfg = _model_config(model_cfg)
    key = _config_key(model_cfg)
    params = _PARAMS_CACHE.get(key)
    if params is None:
        params = count_params(_build(model_cfg))
        _PARAMS_CACHE.put(key, params)
    return params


def clear_cost_caches() -> None:
    """Forget every cached :func:`model_flops` / :func:`model_params` result (e.g. after editing a
    block's code in a notebook session)."""
    _FLOPS_CACHE.clear()
    _PARAMS_CACHE.clear()


# --- latency and memory --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """Timings (milliseconds, median and inter-quartile range over ``repeats`` runs) and memory.

    ``peak_memory_mb``: the CUDA allocator's peak during forward+backward (forward alone when
    ``backward=False``), model and input included; ``None`` on CPU, where no allocator reports it
    honestly. ``activation_mb``: bytes of the tensors autograd saves for backward during one
    training-mode forward (storages counted once, parameters excluded, the input included),
    measured exactly with ``torch.autograd.graph.saved_tensors_hooks`` on every device.
    """

    latency_ms: float
    latency_iqr_ms: float
    latency_fwd_bwd_ms: float | None
    latency_fwd_bwd_iqr_ms: float | None
    peak_memory_mb: float | None
    activation_mb: float
    device: str
    repeats: int


def _loss(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return sum((_loss(o) for o in out), torch.zeros(()))
    raise ValueError(f"measure_latency: cannot sum a model output of type {type(out).__name__}")


def _median_iqr(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q3 - q1


def _saved_tensor_bytes(model: nn.Module, x: torch.Tensor, autocast: Callable[[], Any]) -> int:
    """Bytes of the storages autograd saves during one forward (each storage once, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a storage
            return tensor
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[(str(tensor.device), ptr)] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        out = model(x)
    del out
    return sum(seen.values())


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    device: str | torch.device = "auto",
    backward: bool = True,
    warmup: int = 3,
    repeats: int = 10,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> LatencyResult:
    """Median forward (eval mode, no grad) and forward+backward (train mode, ``sum(output)`` as the
    loss, gradients zeroed each run) times on a random input, after ``warmup`` runs of each.

    The model is moved to ``device`` (``'auto'``: CUDA when available, else CPU) and, with
    ``channels_last``, to that memory format, and stays there like after ``model.to(...)``; its
    train/eval flags, buffers (BatchNorm running statistics) and ``.grad`` are restored. On CUDA every
    timed run is synchronised. Single runs on shared machines vary a lot: compare models measured
    side by side (interleaved), never two separate calls.

    Example:
        >>> from gsa_search.blocks import create_block
        >>> result = measure_latency(create_block("conv", 8, 8), (2, 8, 8, 8), device="cpu", repeats=3)
        >>> result.device, result.peak_memory_mb, result.activation_mb > 0
        ('cpu', None, True)
    """
    shape = _check_shape(input_shape)
    for field, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"measure_latency: {field} must be an integer >= {low}, got {value!r}")
    dev = resolve_device(device, owner="measure_latency")
    cuda = dev.type == "cuda"
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _, dtype = _model_device_dtype(model)
    x = _random_input(shape, dev, dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast() -> Any:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=autocast_dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(step: Callable[[], None]) -> list[float]:
        for _ in range(warmup):
            step()
        samples = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            samples.append((time.perf_counter() - start) * 1e3)
        return samples

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad(), autocast():
            loss = _loss(model(x))
        if not loss.requires_grad:
            raise ValueError("measure_latency: the model has no trainable parameters; use backward=False")
        loss.backward()

    modes = {module: module.training for module in model.modules()}
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    grads = {param: param.grad for param in model.parameters()}
    try:
        model.eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        fwd = _median_iqr(timed(forward))
        fwd_bwd: tuple[float | None, float | None] = (None, None)
        if backward:
            model.train()
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            fwd_bwd = _median_iqr(timed(forward_backward))
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
        model.train()
        model.zero_grad(set_to_none=True)
        activation = _saved_tensor_bytes(model, x, autocast) / 2**20
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in buffers:
                    buf.copy_(buffers[name])
        for param, grad in grads.items():
            param.grad = grad
    return LatencyResult(
        latency_ms=fwd[0],
        latency_iqr_ms=fwd[1],
        latency_fwd_bwd_ms=fwd_bwd[0],
        latency_fwd_bwd_iqr_ms=fwd_bwd[1],
        peak_memory_mb=peak,
        activation_mb=activation,
        device=str(dev),
        repeats=repeats,
    )


# --- per-layer table ------------------------------------------------------------------------------------


def _is_group(module: nn.Module) -> bool:
    """A pure grouping container (``stages``): its children are containers, it is no unit itself."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return True
    children = list(module.children())
    return isinstance(module, nn.Sequential) and bool(children) and all(isinstance(c, nn.Sequential) for c in children)


def _units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The rows one level below ``module``: its children, looking through grouping containers."""
    rows = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        rows.extend(_units(child, full) if _is_group(child) else [(full, child)])
    return rows


def _expandable(module: nn.Module) -> bool:
    """Expand blocks made of blocks (a stage of bottlenecks), not layers made of layers (the stem)."""
    return any(any(True for _ in child.children()) for _, child in _units(module, ""))


def flops_breakdown(model: nn.Module, input_shape: Sequence[int], *, depth: int = 2) -> pd.DataFrame:
    """Per-stage / per-block table: ``module``, ``type``, ``depth``, ``params``, ``flops`` (MACs per
    image, the :func:`count_flops` convention) and ``flops_share`` (of the model's total).

    Depth-1 rows are the model's top-level units, looking through pure containers: for a
    :class:`~gsa_search.models.GSAResNet` ``stem``, ``stages.<i>``, ``head``. Each deeper level
    expands the rows that are made of blocks (``stages.<i>`` -> its bottlenecks ``stages.<i>.<j>``),
    listed right after their parent. The rows of one level under a parent sum to it (an extra
    ``'<parent> (rest)'`` row holds MACs or parameters of the parent's own code, if any), so the
    depth-1 rows sum to the total.

    Example:
        >>> from gsa_search.models import create_model
        >>> table = flops_breakdown(create_model("proxy_resnet"), (1, 3, 32, 32), depth=1)
        >>> list(table["module"])
        ['stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3', 'head']
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"flops_breakdown: depth must be a positive integer, got {depth!r}")
    model = getattr(model, "_orig_mod", model)
    count = count_flops(model, input_shape)
    batch = count.batch_size
    total = count.per_image
    rows: list[dict[str, Any]] = []

    def add(parent: nn.Module, parent_name: str, level: int) -> None:
        units = _units(parent, parent_name)
        flops_sum = params_sum = 0
        for name, module in units:
            flops = round(count.by_module.get(name, 0) / batch)
            params = count_params(module)
            flops_sum, params_sum = flops_sum + flops, params_sum + params
            rows.append(dict(module=name, type=type(module).__name__, depth=level, params=params, flops=flops))
            if level < depth and _expandable(module):
                add(module, name, level + 1)
        rest_flops = round(count.by_module.get(parent_name, 0) / batch) - flops_sum
        rest_params = count_params(parent) - params_sum
        if rest_flops or rest_params:
            rest = f"{parent_name} (rest)" if parent_name else "(rest)"
            rows.append(dict(module=rest, type="", depth=level, params=rest_params, flops=rest_flops))

    add(model, "", 1)
    table = pd.DataFrame(rows, columns=["module", "type", "depth", "params", "flops"])
    table["flops_share"] = table["flops"] / total if total else 0.0
    return table
