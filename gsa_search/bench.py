"""Block benchmark: time and memory of every spatial mixer vs resolution, measured side by side.

Status: stable. A benchmark, not a test: this machine class is shared and noisy (single runs vary by
up to 2x), so every candidate is warmed up, then timed in interleaved rounds (round 1: all blocks,
round 2: all blocks, ...); each round keeps the best of its ``repeats`` runs and the median over
rounds is reported. A ratio is the median over rounds of a ratio measured within each round, never
two separate runs: ``over_conv`` pairs every block with a conv timed right after it (same moment,
same machine state), ``over_gsa`` with GSA's time of the same round.

Every block is timed as a **middle layer**: its input requires grad, so forward + backward
includes the input gradient that earlier layers need (``input_grad=False`` times a first layer).

Setup (defaults follow the GSA speed target): batch 8, 64 channels, 4 heads, ``dim_key`` 16,
forward + backward, float32 on CPU; on CUDA bf16 autocast and batch 64. The process keeps freed
host memory for reuse, as a training process does (:mod:`~gsa_search.host_memory`). Candidates: the 3x3 conv,
GSA (content + global axial), its content-only, positional-only and local 2D (r=3) variants,
explicit attention, full softmax attention (up to ``--mhsa-max-size``, it is quadratic) and, when
the optional ``gsa-pytorch`` package is installed (``pip install gsa-search[bench]``), its ``GSA``
module configured the same way (global relative span, content + positional).

``gsa-search bench blocks --sizes 16 32 64 --out reports/bench`` writes ``blocks.csv`` and
``blocks.png`` (time and memory vs resolution) and prints the ratios.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from .blocks import block_config, create_block
from .device import resolve_device
from .host_memory import retain_freed_memory
from .measure import count_flops, count_params

__all__ = ["candidates", "bench_blocks", "bench_ratios", "plot_bench", "time_block"]


def candidates(size: int, *, channels: int, heads: int, dim_key: int) -> dict[str, Callable[[], nn.Module]]:
    """Builders of every benchmarked module for ``size`` x ``size`` maps with ``channels`` in and out."""
    gsa = block_config("gsa", heads=heads, dim_key=dim_key, feature_size=size)
    out: dict[str, Callable[[], nn.Module]] = {
        "conv": lambda: create_block("conv", channels, channels),
        "gsa": lambda: create_block(gsa, channels, channels),
        "gsa_content": lambda: create_block(gsa.replace(positional="none"), channels, channels),
        "gsa_positional": lambda: create_block(gsa.replace(content=False), channels, channels),
        "gsa_2d_r3": lambda: create_block(gsa.replace(positional="2d", rel_span=min(3, size - 1)), channels, channels),
        "explicit": lambda: create_block("explicit", channels, channels),
        "mhsa": lambda: create_block(block_config("mhsa", heads=heads, dim_key=dim_key), channels, channels),
    }
    try:
        from gsa_pytorch import GSA  # optional reference implementation
    except ImportError:
        return out
    out["gsa_pytorch"] = lambda: GSA(channels, dim_out=channels, heads=heads, dim_key=dim_key, rel_pos_length=size)
    return out


def _saved_mb(model: nn.Module, x: torch.Tensor, autocast: Callable[[], Any]) -> float:
    """MB of the storages autograd saves during one training-mode forward (each once, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        out = model(x)
    del out
    return sum(seen.values()) / 2**20


def time_block(
    model: nn.Module,
    x: torch.Tensor,
    *,
    repeats: int = 2,
    input_grad: bool = True,
    autocast_dtype: torch.dtype | None = None,
    min_ms: float = 20.0,
) -> tuple[float, float]:
    """Best forward (eval, no grad) and forward+backward (train mode, ``sum`` as the loss) times in
    ms, over at least ``repeats`` runs each and as many more as fit in ``min_ms``. With
    ``input_grad`` the input requires grad (a middle layer: the backward also computes the gradient
    that flows on to earlier layers)."""
    cuda = x.device.type == "cuda"
    autocast = (lambda: torch.autocast(x.device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    x = x.detach().requires_grad_(input_grad)

    def clock(step: Callable[[], None]) -> float:
        best, spent, runs = float("inf"), 0.0, 0
        # at least `repeats` runs, and short ones repeated up to min_ms in all (a 2 ms block timed
        # twice is mostly noise: thread wake-ups, page faults)
        while runs < repeats or (spent < min_ms and runs < 50):
            if cuda:
                torch.cuda.synchronize(x.device)
            tic = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(x.device)
            elapsed = (time.perf_counter() - tic) * 1e3
            best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
        return best

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        with torch.enable_grad(), autocast():
            loss = model(x).float().sum()
        loss.backward()

    model.eval()
    fwd = clock(forward)
    model.train()
    return fwd, clock(forward_backward)


def bench_blocks(
    sizes: tuple[int, ...] = (16, 32, 64),
    *,
    batch: int | None = None,
    channels: int = 64,
    heads: int = 4,
    dim_key: int = 16,
    device: str = "auto",
    rounds: int = 9,
    repeats: int = 2,
    mhsa_max_size: int = 32,
    include: tuple[str, ...] | None = None,
    input_grad: bool = True,
    warmup: int = 2,
    channels_last: bool = False,
) -> pd.DataFrame:
    """One row per (block, size): medians over interleaved rounds of forward and forward+backward
    (each round the best of ``repeats`` runs), after ``warmup`` untimed runs of every block. With
    ``input_grad`` (the default) the input requires grad: each block is timed as a middle layer.
    ``channels_last`` times every block (weights and input) in that memory format, as a model
    trained channels last runs it."""
    dev = resolve_device(device, owner="bench")
    retain_freed_memory()  # as in a training process (host_memory)
    cuda = dev.type == "cuda"
    batch = batch or (64 if cuda else 8)
    autocast_dtype = torch.bfloat16 if cuda else None
    rows = []
    for size in sizes:
        builders = candidates(size, channels=channels, heads=heads, dim_key=dim_key)
        names = [n for n in builders if (include is None or n in include) and not (n == "mhsa" and size > mhsa_max_size)]
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        models = {name: builders[name]().to(dev).to(memory_format=fmt) for name in names}
        x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
        x = x.contiguous(memory_format=fmt)
        for name in names:  # first-call costs (kernel builds, allocator growth) belong to no round
            for _ in range(warmup):
                time_block(models[name], x, repeats=1, input_grad=input_grad, autocast_dtype=autocast_dtype)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        conv_pairs: dict[str, list[float]] = {name: [] for name in names}  # block / conv timed back to back
        timing = {"repeats": repeats, "input_grad": input_grad, "autocast_dtype": autocast_dtype}
        for round_ in range(rounds):
            # each round starts with a different block, so that no block always follows the same one
            # (a large allocation or a slow neighbour would otherwise bias the same pair every round)
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                samples[name].append(time_block(models[name], x, **timing))
                if "conv" in models and name != "conv":
                    # the conv again right after this block: the pair shares the machine's
                    # state of the moment, so the ratio is far steadier than across the round
                    conv_pairs[name].append(samples[name][-1][1] / time_block(models["conv"], x, **timing)[1])
        autocast = (lambda: torch.autocast(dev.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext

        for name in names:
            results = samples[name]
            rows.append({
                "block": name,
                "size": size,
                "batch": batch,
                "fwd_ms": float(pd.Series([r[0] for r in results]).median()),
                "fwd_bwd_ms": float(pd.Series([r[1] for r in results]).median()),
                "activation_mb": _saved_mb(models[name].train(), x.detach().requires_grad_(input_grad), autocast),
                "peak_memory_mb": _peak_mb(models[name], x, input_grad, autocast_dtype) if dev.type == "cuda" else None,
                "input_grad": input_grad,
                "channels_last": channels_last,
                "flops": count_flops(models[name], (1, channels, size, size)).total,
                "params": count_params(models[name]),
                "over_conv": _paired(samples, conv_pairs, name, "conv"),
                "over_gsa": _paired(samples, conv_pairs, name, "gsa"),
                "device": str(dev),
            })
        del models
    return pd.DataFrame(rows)


def _paired(samples: dict[str, list[tuple[float, float]]], conv_pairs: dict[str, list[float]], name: str,
            reference: str) -> float:
    """Median over rounds of this block's forward+backward time over the reference's in the same
    round (for the conv: the one timed right after the block), so slow phases of a shared machine
    cancel out."""
    if reference not in samples:
        return float("nan")
    if reference == "conv" and conv_pairs.get(name):
        return float(pd.Series(conv_pairs[name]).median())
    pairs = zip(samples[name], samples[reference])
    return float(pd.Series([a[1] / b[1] for a, b in pairs]).median())


def _peak_mb(model: nn.Module, x: torch.Tensor, input_grad: bool, autocast_dtype: torch.dtype | None) -> float:
    torch.cuda.reset_peak_memory_stats(x.device)
    time_block(model, x, repeats=1, input_grad=input_grad, autocast_dtype=autocast_dtype)
    return torch.cuda.max_memory_allocated(x.device) / 2**20


def bench_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Per size: every block's forward+backward time over the conv's, and gsa-pytorch's over ours.

    Uses the per-round paired ratios (``over_conv``, ``over_gsa``) when the table has them, else the
    ratio of the medians.
    """
    times = table.pivot(index="size", columns="block", values="fwd_bwd_ms")
    over_conv = table.pivot(index="size", columns="block", values="over_conv") if "over_conv" in table else None
    over_gsa = table.pivot(index="size", columns="block", values="over_gsa") if "over_gsa" in table else None
    out = pd.DataFrame(index=times.index)
    for name in times.columns:
        if name != "conv":
            out[f"{name}/conv"] = over_conv[name] if over_conv is not None else times[name] / times["conv"]
    if "gsa_pytorch" in times.columns:
        out["gsa_pytorch/gsa"] = over_gsa["gsa_pytorch"] if over_gsa is not None else times["gsa_pytorch"] / times["gsa"]
        memory = table.pivot(index="size", columns="block", values="activation_mb")
        out["gsa_pytorch/gsa activation memory"] = memory["gsa_pytorch"] / memory["gsa"]
    return out


def plot_bench(table: pd.DataFrame, path: str | Path) -> Path:
    """Time and memory vs resolution, one line per block (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory_col = "peak_memory_mb" if table["peak_memory_mb"].notna().all() else "activation_mb"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, group in table.groupby("block"):
        axes[0].plot(group["size"], group["fwd_bwd_ms"], marker="o", label=name)
        axes[1].plot(group["size"], group[memory_col], marker="o", label=name)
    device = table["device"].iloc[0]
    axes[0].set(xlabel="feature map side", ylabel="forward+backward (ms, median)", yscale="log",
                title=f"time, batch {table['batch'].iloc[0]}, {device}")
    label = "peak CUDA memory (MB)" if memory_col == "peak_memory_mb" else "activations saved for backward (MB)"
    axes[1].set(xlabel="feature map side", ylabel=label, yscale="log", title="memory")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
