"""Block benchmark: time and memory of every spatial mixer vs resolution, measured side by side.

Status: stable. A benchmark, not a test: this machine class is shared and noisy (single runs vary by
up to 2x), so every candidate is timed in interleaved rounds (round 1: all blocks, round 2: all
blocks, ...) and the median over rounds is reported; a ratio is the median over rounds of the
ratio within each round (``over_conv``, ``over_gsa``), never two separate runs.

Setup (defaults follow the GSA speed target): batch 8, 64 channels, 4 heads, ``dim_key`` 16,
forward + backward, float32 on CPU; on CUDA bf16 autocast and batch 64. Candidates: the 3x3 conv,
GSA (content + global axial), its content-only, positional-only and local 2D (r=3) variants,
explicit attention, full softmax attention (up to ``--mhsa-max-size``, it is quadratic) and, when
the optional ``gsa-pytorch`` package is installed (``pip install gsa-search[bench]``), its ``GSA``
module configured the same way (global relative span, content + positional).

``gsa-search bench blocks --sizes 16 32 64 --out reports/bench`` writes ``blocks.csv`` and
``blocks.png`` (time and memory vs resolution) and prints the ratios.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from .blocks import block_config, create_block
from .device import resolve_device
from .measure import count_flops, count_params, measure_latency

__all__ = ["candidates", "bench_blocks", "bench_ratios", "plot_bench"]


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
) -> pd.DataFrame:
    """One row per (block, size): medians over interleaved rounds of forward and forward+backward."""
    dev = resolve_device(device, owner="bench")
    cuda = dev.type == "cuda"
    batch = batch or (64 if cuda else 8)
    autocast_dtype = torch.bfloat16 if cuda else None
    rows = []
    for size in sizes:
        builders = candidates(size, channels=channels, heads=heads, dim_key=dim_key)
        names = [n for n in builders if (include is None or n in include) and not (n == "mhsa" and size > mhsa_max_size)]
        torch.manual_seed(0)
        models = {name: builders[name]() for name in names}
        shape = (batch, channels, size, size)
        samples: dict[str, list] = {name: [] for name in names}
        for round_ in range(rounds):
            # each round starts with a different block, so that no block always follows the same one
            # (a large allocation or a slow neighbour would otherwise bias the same pair every round)
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                samples[name].append(
                    measure_latency(models[name], shape, device=str(dev), warmup=1, repeats=repeats,
                                    autocast_dtype=autocast_dtype)
                )
        def paired(name: str, reference: str) -> float:
            """Median over rounds of this block's time over the reference's in the same round: the
            two were measured seconds apart, so slow phases of a shared machine cancel out."""
            if reference not in samples:
                return float("nan")
            pairs = zip(samples[name], samples[reference])
            return float(pd.Series([a.latency_fwd_bwd_ms / b.latency_fwd_bwd_ms for a, b in pairs]).median())

        for name in names:
            results = samples[name]
            rows.append({
                "block": name,
                "size": size,
                "batch": batch,
                "fwd_ms": float(pd.Series([r.latency_ms for r in results]).median()),
                "fwd_bwd_ms": float(pd.Series([r.latency_fwd_bwd_ms for r in results]).median()),
                "activation_mb": results[-1].activation_mb,
                "peak_memory_mb": results[-1].peak_memory_mb,
                "flops": count_flops(models[name], (1, channels, size, size)).total,
                "params": count_params(models[name]),
                "over_conv": paired(name, "conv"),
                "over_gsa": paired(name, "gsa"),
                "device": str(dev),
            })
        del models
    return pd.DataFrame(rows)


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
