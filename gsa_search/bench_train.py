"""Trainer benchmark: overhead of :func:`gsa_search.trainer.train` over a bare hand-written loop, and
time-to-accuracy of a proxy GSA model on the bundled digits data.

Status: stable. Both loops train the same model config on the same resident tensors with the same
optimiser and batch size, for one epoch each, interleaved over several rounds (this machine class is
noisy: only ratios measured side by side count). The trainer runs without augmentation so that the
two do the same work; its per-epoch time excludes evaluation, as the bare loop has none.

``gsa-search bench train [--rounds 5] [--model proxy_gsa_resnet]``;
``gsa-search bench throughput --models proxy_resnet proxy_gsa_resnet --sizes 16 32`` compares training
speed of several models side by side.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn import functional as F

from .data import load_dataset
from .device import resolve_device
from .host_memory import retain_freed_memory
from .models import build_model, model_config
from .trainer import DIGITS_IMAGE_SIZE, DIGITS_RECIPE, Recipe, build_optimizer, train

__all__ = ["bare_epoch", "trainer_overhead", "digits_time_to_accuracy", "training_throughput"]



def bare_epoch(model_name: str, data, recipe: Recipe) -> float:
    """Seconds for one epoch of the simplest possible loop over the same model, data and optimiser."""
    device = resolve_device(recipe.device)
    retain_freed_memory()  # as train() does
    torch.manual_seed(recipe.seed)
    cfg = model_config(model_name).fit_to_data(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    memory_format = recipe.memory_format(device)  # as train()
    model = build_model(cfg).to(device).train().to(memory_format=memory_format)
    optimizer = build_optimizer(model, recipe)
    x, y = data.train_x, data.train_y
    steps = len(x) // recipe.batch_size
    tic = time.perf_counter()
    order = torch.randperm(len(x), device=device)
    for step in range(steps):
        idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        loss = F.cross_entropy(model(x[idx].contiguous(memory_format=memory_format)), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def trainer_overhead(model_name: str = "proxy_gsa_resnet", *, rounds: int = 5, device: str = "auto",
                     channels_last: bool | str = "auto") -> dict[str, float]:
    """Median seconds per epoch of ``train()`` and of the bare loop, interleaved, and their ratio
    (``channels_last``: the recipe field)."""
    data = load_dataset("digits", image_size=DIGITS_IMAGE_SIZE).to(resolve_device(device))
    recipe = DIGITS_RECIPE.replace(epochs=1, augment=False, device=device, channels_last=channels_last)
    ours, bare = [], []
    bare_epoch(model_name, data, recipe)  # warm-up: first-call costs belong to neither side
    for _ in range(rounds):
        ours.append(train(model_config(model_name), recipe, data)["train_time_s"])
        bare.append(bare_epoch(model_name, data, recipe))
    ours_s, bare_s = statistics.median(ours), statistics.median(bare)
    return {"train_epoch_s": ours_s, "bare_epoch_s": bare_s, "overhead": ours_s / bare_s - 1}


def digits_time_to_accuracy(model_name: str = "proxy_gsa_resnet", *, device: str = "auto",
                            channels_last: bool | str = "auto") -> dict[str, float]:
    """Train ``model_name`` on digits with :data:`DIGITS_RECIPE` (``channels_last``: the recipe
    field); accuracy and training seconds."""
    data = load_dataset("digits", image_size=DIGITS_IMAGE_SIZE)
    result = train(model_config(model_name), DIGITS_RECIPE.replace(device=device, channels_last=channels_last), data)
    def first(level: float) -> float:
        return next((h["train_time_s"] for h in result["history"] if h["accuracy"] >= level), float("nan"))

    return {
        "accuracy": result["accuracy"],
        "train_time_s": result["train_time_s"],
        "seconds_to_95": first(0.95),
        "seconds_to_98": first(0.98),
        "images_per_s": result["images_per_s"],
    }


def training_throughput(models: list[str], sizes: list[int], *, rounds: int = 5, batch_size: int = 64,
                        device: str = "auto", channels_last: bool | str = "auto") -> list[dict[str, float | int | str]]:
    """Training images/s (forward, backward and AdamW step) of each model on digits at each size,
    one epoch per model per round, the models interleaved within each round; ``time_vs_first`` is
    the median over rounds of (this model's epoch time / the first model's in the same round).
    ``channels_last`` is the recipe option of the same name (``'auto'``: channels last on CPU)."""
    dev = resolve_device(device)
    recipe = DIGITS_RECIPE.replace(batch_size=batch_size, device=device, channels_last=channels_last)
    rows: list[dict[str, float | int | str]] = []
    for size in sizes:
        data = load_dataset("digits", image_size=size).to(dev)
        images = (len(data.train_x) // batch_size) * batch_size
        for name in models:  # warm-up: first-call costs (allocator, kernel builds) belong to no round
            bare_epoch(name, data, recipe)
        times: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(rounds):
            order = models[round_index % len(models):] + models[: round_index % len(models)]  # rotate
            for name in order:
                times[name].append(bare_epoch(name, data, recipe))
        for name in models:
            ratios = [t / f for t, f in zip(times[name], times[models[0]])]
            rows.append({"size": size, "model": name, "epoch_s": statistics.median(times[name]),
                         "images_per_s": images / statistics.median(times[name]),
                         "time_vs_first": statistics.median(ratios)})
    return rows
