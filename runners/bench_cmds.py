"""The ``gsa-search bench`` subcommands: block timing, trainer overhead, search-runner overhead.

Status: stable. Benchmarks, not tests: they print measured numbers and ratios, taken side by side in
one run (this machine class is shared and noisy). The library functions they call live in
``gsa_search.bench`` and ``gsa_search.bench_train``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["blocks", "train", "search", "search_overhead"]


def blocks(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    import json

    import torch

    from gsa_search.bench import bench_blocks, bench_ratios, plot_bench

    table = bench_blocks(
        tuple(args.sizes), batch=args.batch, channels=args.channels, heads=args.heads, dim_key=args.dim_key,
        device=args.device, rounds=args.rounds or 9, repeats=args.repeats, mhsa_max_size=args.mhsa_max_size,
        channels_last=args.channels_last is True,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "blocks.csv", index=False)
    plot_bench(table, out / "blocks.png")
    ratios = bench_ratios(table)
    ratios.to_csv(out / "ratios.csv")
    header = (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, device {table['device'].iloc[0]}, "
              f"{'channels-last' if args.channels_last is True else 'NCHW'} maps")
    text = "\n".join([
        header,
        table.drop(columns=["device"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"),
        ("\nratios (forward+backward time with the input requiring grad, i.e. each block timed as a middle "
         "layer; median over interleaved rounds of the ratio to a conv timed right after the block):"),
        ratios.to_string(float_format=lambda v: f"{v:.2f}"),
        f"\nwrote {out / 'blocks.csv'}, {out / 'ratios.csv'}, {out / 'blocks.png'}",
    ])
    document = {"environment": header, "blocks": json.loads(table.to_json(orient="records")),
                "ratios": json.loads(ratios.reset_index().to_json(orient="records")),
                "files": [str(out / n) for n in ("blocks.csv", "ratios.csv", "blocks.png")]}
    return document, text


def _recipe_layout(args: argparse.Namespace) -> bool | str:
    """The recipe's ``channels_last`` that ``--channels-last`` / ``--no-channels-last`` ask for
    (neither: ``'auto'``)."""
    return "auto" if args.channels_last is None else args.channels_last


def train(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    import torch

    from gsa_search.bench_train import digits_time_to_accuracy, trainer_overhead
    from gsa_search.device import resolve_device
    from gsa_search.trainer import DIGITS_IMAGE_SIZE

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {resolve_device(args.device)}"]
    layout = _recipe_layout(args)
    overhead = trainer_overhead(args.model, rounds=args.rounds or 5, device=args.device, channels_last=layout)
    lines.append(f"{args.model} on digits {DIGITS_IMAGE_SIZE}x{DIGITS_IMAGE_SIZE}: train() {overhead['train_epoch_s']:.2f} s/epoch, "
                 f"bare loop {overhead['bare_epoch_s']:.2f} s/epoch, overhead {overhead['overhead'] * 100:+.1f}%")
    document: dict[str, Any] = {"overhead": overhead}
    if not args.skip_accuracy:
        acc = digits_time_to_accuracy(args.model, device=args.device, channels_last=layout)
        document["time_to_accuracy"] = acc
        lines.append(f"{args.model} on digits: accuracy {acc['accuracy']:.4f} after {acc['train_time_s']:.1f} s of training "
                     f"(first >= 95% at {acc['seconds_to_95']:.1f} s, >= 98% at {acc['seconds_to_98']:.1f} s), "
                     f"{acc['images_per_s']:.0f} images/s")
    return document, "\n".join(lines)


def throughput(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Training images/s of several models side by side (``gsa-search bench throughput``)."""
    import pandas as pd
    import torch

    from gsa_search.bench_train import training_throughput
    from gsa_search.device import resolve_device
    from gsa_search.trainer import DIGITS_RECIPE

    models = args.models or ["proxy_resnet", "proxy_gsa_resnet", "proxy_gsa_positional", "proxy_gsa_2d"]
    sizes = args.sizes if args.sizes != [16, 32, 64] else [16, 32]
    batch, rounds = args.batch or 64, args.rounds or 5
    channels_last = _recipe_layout(args)
    rows = training_throughput(models, sizes, rounds=rounds, batch_size=batch, device=args.device,
                               channels_last=channels_last)
    fmt = DIGITS_RECIPE.replace(channels_last=channels_last).memory_format(resolve_device(args.device))
    layout = ", channels last" if fmt == torch.channels_last else ", NCHW"
    header = (f"training images/s on digits (forward + backward + AdamW, batch {batch}{layout}, one epoch per model per round, "
              f"{rounds} interleaved rounds, medians); torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"device {resolve_device(args.device)}; time_vs_first = epoch time / {models[0]}'s in the same round")
    text = header + "\n" + pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}")
    return {"rows": rows, "models": models, "sizes": sizes, "batch": batch, "rounds": rounds,
            "channels_last": fmt == torch.channels_last}, text


def search_overhead(*, trials: int, workers: int = 1, recipe: dict[str, Any] | None = None, reports_dir: str | Path,
                    study: str = "bench-search", seed: int = 0) -> dict[str, float]:
    """Run a ``gsa_block_v1`` search on digits and split its wall time into time inside ``train()``
    and everything else (sampling, FLOPs counting, storage writes, results table) per trial.

    With ``workers > 1`` the time inside ``train()`` is summed over processes and only trials per
    hour are meaningful.
    """
    import gsa_search.trial as trial_module

    from .optuna_runner import run_search
    from .settings import SearchSettings

    inside: list[float] = []
    original = trial_module.train

    def timed(*a: Any, **k: Any) -> Any:
        tic = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            inside.append(time.perf_counter() - tic)

    settings = SearchSettings(space="gsa_block_v1", objectives=("accuracy", "flops"), n_trials=trials, study=study,
                              sampler="random", seed=seed, workers=workers, dataset="digits", recipe=recipe or {},
                              reports_dir=str(reports_dir))
    trial_module.train = timed
    try:
        tic = time.perf_counter()
        result = run_search(settings, progress=False)
        wall = time.perf_counter() - tic
    finally:
        trial_module.train = original
    finished = int(sum(result.counts[s] for s in ("complete", "pruned", "failed", "infeasible")))
    out = {"trials": finished, "wall_s": wall, "trials_per_hour": finished / wall * 3600, "workers": workers}
    if workers == 1 and inside:
        overhead = (wall - sum(inside)) / finished
        mean_trial = sum(inside) / len(inside)
        out.update({"train_s_per_trial": mean_trial, "overhead_s_per_trial": overhead,
                    "overhead_share_of_30s_trial": overhead / 30.0, "overhead_share_here": overhead / (overhead + mean_trial)})
    return out


def search(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    import shutil
    import tempfile

    import torch

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads; gsa_block_v1 on digits, default recipe, "
             f"random sampler, {args.trials} trials"]
    folder = Path(tempfile.mkdtemp(prefix="gsa-bench-search-"))
    try:
        recipe = {} if args.channels_last is None else {"channels_last": args.channels_last}
        one = search_overhead(trials=args.trials, recipe=recipe, reports_dir=folder, study="w1")
        lines.append(f"1 worker: {one['trials_per_hour']:.0f} trials/hour; per trial {one['train_s_per_trial']:.1f} s in train(), "
                     f"{one['overhead_s_per_trial']:.3f} s runner overhead = {one['overhead_share_of_30s_trial'] * 100:.2f}% "
                     f"of a 30 s trial")
        two = search_overhead(trials=args.trials, workers=2, recipe=recipe, reports_dir=folder, study="w2")
        lines.append(f"2 workers (1 thread each): {two['trials_per_hour']:.0f} trials/hour "
                     f"({two['trials_per_hour'] / one['trials_per_hour']:.2f}x one worker)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"one_worker": one, "two_workers": two}, "\n".join(lines)
