"""Tests for gsa_search.trainer: the recipe, the schedule, evaluation and ``train()`` end to end.

Everything runs on CPU with tiny models (two one-block stages, 8 channels) on tiny data (64 train /
16 val synthetic 8x8 images, or a handful of PNGs), so the whole file takes a few seconds.
Failures are provoked deterministically: non-finite losses and CUDA out-of-memory errors are
injected with ``monkeypatch``; the trained model is captured by wrapping the train module's
``build_model``, so its predictions can be checked against the metrics. A tiny non-ResNet backbone
registered here checks that ``train()`` trains any registered backbone. Tests that need CUDA are
skipped without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import gsa_search.data as data_mod
import gsa_search.device as device_mod
import gsa_search.trainer as train_mod
from gsa_search.blocks import block_config
from gsa_search import metrics as M
from gsa_search.data import DatasetBundle, load_dataset
from gsa_search.device import resolve_device
from gsa_search.measure import count_params
from gsa_search.models import (
    BackboneConfig,
    GSAResNet,
    ModelConfig,
    model_config,
    model_config_from_dict,
    register_backbone,
)
from gsa_search.trainer import (
    DivergenceError,
    OutOfMemoryError,
    Pruned,
    Recipe,
    TrainError,
    _lr_factor,
    build_optimizer,
    evaluate,
    train,
)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------


def tiny_cfg(mixers: Any = "conv", **changes: Any) -> ModelConfig:
    """Two one-block stages, 8 bottleneck channels; num_classes/in_channels/image_size are refitted."""
    return ModelConfig(stage_blocks=(1, 1), mixers=mixers, stem="cifar", base_width=8, image_size=8, **changes)


def tiny_recipe(**changes: Any) -> Recipe:
    fields = dict(epochs=2, batch_size=16, lr=0.05, device="cpu", seed=0, eval_batch_size=1024)
    fields.update(changes)
    return Recipe(**fields)


@pytest.fixture(scope="module")
def synth() -> DatasetBundle:
    """64 train / 16 val grey 8x8 images, 3 classes (flip=False; augmentation still pads by 4)."""
    bundle = load_dataset("synthetic", num_samples=80, num_classes=3, image_size=8, in_channels=1)
    assert (bundle.num_train, bundle.num_val, bundle.num_classes) == (64, 16, 3)
    return bundle


@pytest.fixture(scope="module")
def synth12() -> DatasetBundle:
    bundle = load_dataset("synthetic", num_samples=80, num_classes=12, image_size=8, in_channels=1, seed=1)
    assert bundle.num_classes == 12
    return bundle


@pytest.fixture
def built_models(monkeypatch: pytest.MonkeyPatch) -> list[GSAResNet]:
    """Every model ``train()`` builds, in order (the very object that is trained)."""
    models: list[GSAResNet] = []
    real = train_mod.build_model

    def recording(cfg: Any) -> torch.nn.Module:
        model = real(cfg)
        models.append(model)
        return model

    monkeypatch.setattr(train_mod, "build_model", recording)
    return models


def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in entry.items() if k != M.TRAIN_TIME_S} for entry in history]


@torch.no_grad()
def val_logits(model: torch.nn.Module, bundle: DatasetBundle) -> torch.Tensor:
    model.eval()
    return model(bundle.val_x)


def _write_pngs(folder: Path, classes: dict[str, int], *, size: int = 12, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, count in classes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


class Stop(Exception):
    """A hook's own exception (not Pruned, not a TrainError)."""


@dataclasses.dataclass(frozen=True)
class TinyMLPConfig(BackboneConfig):
    """A two-layer perceptron on flattened pixels: a backbone that is not a ResNet and fits itself to
    the data its own way (``in_features`` instead of ``in_channels``/``image_size``)."""

    hidden: int = 8
    in_features: int = 3 * 32 * 32
    num_classes: int = 10

    def fit_to_data(self, *, num_classes: int, in_channels: int, image_size: int) -> "TinyMLPConfig":
        return self.replace(num_classes=num_classes, in_features=in_channels * image_size * image_size)


@register_backbone("test_tiny_mlp", config=TinyMLPConfig)
class TinyMLP(torch.nn.Module):
    def __init__(self, cfg: TinyMLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden = torch.nn.Linear(cfg.in_features, cfg.hidden)
        self.out = torch.nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x.flatten(1))))


# --------------------------------------------------------------------------------------------------
# 1. Recipe validation and round trip
# --------------------------------------------------------------------------------------------------

INVALID = [
    ("epochs", 0, r"positive integer"),
    ("epochs", 2.0, r"positive integer"),
    ("batch_size", -1, r"positive integer"),
    ("eval_batch_size", 0, r"positive integer"),
    ("optimizer", "rmsprop", r"'sgd', 'adamw'"),
    ("schedule", "step", r"'cosine', 'onecycle', 'constant'"),
    ("precision", "fp16", r"'auto', 'fp32', 'bf16'"),
    ("lr", 0, r"positive finite number"),
    ("lr", -0.1, r"positive finite number"),
    ("momentum", 1.0, r"in \[0, 1\)"),
    ("momentum", -0.5, r"in \[0, 1\)"),
    ("weight_decay", -1e-4, r"in \[0, inf\)"),
    ("warmup_epochs", -1, r"in \[0, 10\)"),
    ("warmup_epochs", 11, r"in \[0, 10\)"),
    ("warmup_epochs", 10, r"in \[0, 10\) \(shorter than epochs=10, or the learning rate rises for the whole run\)"),
    ("num_workers", -1, r"None or an integer >= 0"),
    ("num_workers", 1.5, r"None or an integer >= 0"),
    ("label_smoothing", 1.0, r"\[0, 1\)"),
    ("label_smoothing", -0.1, r"\[0, 1\)"),
    ("device", "tpu", r"'auto', 'cpu', 'cuda'"),
    ("seed", -1, r">= 0"),
    ("seed", 1.5, r"integer"),
    ("augment", "yes", r"True or False"),
    ("channels_last", 1, r"True, False or 'auto'"),
    ("channels_last", "yes", r"True, False or 'auto'"),
    ("compile", None, r"True or False"),
]


@pytest.mark.parametrize("field,value,allowed", INVALID, ids=[f"{f}={v!r}" for f, v, _ in INVALID])
def test_recipe_rejects_invalid_field(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(ValueError, match=allowed) as info:
        Recipe(**{field: value})
    message = str(info.value)
    assert f"recipe.{field}" in message  # names the field...
    assert repr(value) in message or str(value) in message  # ...and the offending value


NON_FINITE_OR_MISTYPED = [
    ("lr", math.inf),
    ("lr", math.nan),
    ("momentum", math.nan),
    ("weight_decay", math.nan),
    ("weight_decay", math.inf),
    ("warmup_epochs", math.nan),
    ("warmup_epochs", math.inf),
    ("label_smoothing", math.nan),
    ("label_smoothing", "0.1"),
    ("label_smoothing", None),
]


@pytest.mark.parametrize(
    "field,value", NON_FINITE_OR_MISTYPED, ids=[f"{f}={v!r}" for f, v in NON_FINITE_OR_MISTYPED]
)
def test_recipe_rejects_non_finite_and_mistyped_numbers(field: str, value: Any) -> None:
    """A NaN/inf hyper-parameter or a string where a number belongs is a ValueError naming the field
    (not accepted silently, and not a TypeError from a comparison)."""
    with pytest.raises(ValueError, match=rf"recipe\.{field}"):
        Recipe(**{field: value})


def test_recipe_accepts_valid_values() -> None:
    Recipe(momentum=0.0, weight_decay=0, warmup_epochs=0, label_smoothing=0.0, device="cuda:1", seed=0)
    Recipe(optimizer="adamw", schedule="onecycle", precision="bf16", augment=False, device="cpu")


def test_channels_last_auto_means_channels_last_on_cpu_only() -> None:
    assert Recipe().channels_last == "auto"
    assert Recipe().memory_format(torch.device("cpu")) == torch.channels_last
    assert Recipe().memory_format(torch.device("cuda", 0)) == torch.contiguous_format
    for device in ("cpu", "cuda"):
        assert Recipe(channels_last=True).memory_format(torch.device(device)) == torch.channels_last
        assert Recipe(channels_last=False).memory_format(torch.device(device)) == torch.contiguous_format


def test_recipe_identity_leaves_out_the_memory_format_only() -> None:
    recipe = Recipe()
    assert set(recipe.to_dict()) - set(recipe.identity()) == {"channels_last"}
    assert recipe.replace(channels_last=False).identity() == recipe.identity()
    assert recipe.replace(lr=0.2).identity() != recipe.identity()


def test_recipe_round_trip_and_unknown_field() -> None:
    default = Recipe()
    custom = Recipe(epochs=3, batch_size=32, optimizer="adamw", lr=3e-3, momentum=0.8, weight_decay=0.05,
                    schedule="onecycle", warmup_epochs=0.5, label_smoothing=0.1, augment=False, seed=7,
                    device="cpu", precision="fp32", channels_last=True, eval_batch_size=64)
    for recipe in (default, custom):
        assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert custom.to_dict()["optimizer"] == "adamw" and custom.to_dict()["warmup_epochs"] == 0.5
    assert custom.replace(lr=0.2).lr == 0.2
    with pytest.raises(ValueError, match=r"unknown field\(s\) learning_rate.*allowed: .*\blr\b"):
        Recipe.from_dict({**default.to_dict(), "learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"recipe\.optimizer"):  # from_dict validates too
        Recipe.from_dict({**default.to_dict(), "optimizer": "rmsprop"})


# --------------------------------------------------------------------------------------------------
# 2. Learning-rate schedule
# --------------------------------------------------------------------------------------------------


def test_lr_warmup_ramps_linearly_to_one() -> None:
    for schedule in ("cosine", "onecycle", "constant"):
        recipe = Recipe(schedule=schedule, warmup_epochs=1.0, epochs=10)
        factors = [_lr_factor(recipe, s, 100, 10) for s in range(10)]
        assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
        assert factors[-1] == 1.0  # the peak is reached at the last warm-up step
        assert _lr_factor(recipe, 10, 100, 10) == pytest.approx(1.0)  # and is where the decay starts
    half = Recipe(warmup_epochs=0.5)
    assert [_lr_factor(half, s, 40, 4) for s in range(2)] == pytest.approx([0.5, 1.0])


def test_lr_cosine_decays_to_zero() -> None:
    recipe = Recipe(schedule="cosine", warmup_epochs=1.0, epochs=10)
    total, spe = 100, 10
    factors = [_lr_factor(recipe, s, total, spe) for s in range(spe, total + 1)]
    assert all(a > b for a, b in zip(factors, factors[1:]))  # strictly decreasing after warm-up
    assert _lr_factor(recipe, 55, total, spe) == pytest.approx(0.5)  # half-way through the decay
    assert _lr_factor(recipe, 10 + 30, total, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert _lr_factor(recipe, total - 1, total, spe) < 1e-3  # ~0 at the last step
    assert _lr_factor(recipe, total, total, spe) == pytest.approx(0.0, abs=1e-12)
    no_warmup = Recipe(schedule="cosine", warmup_epochs=0)
    assert _lr_factor(no_warmup, 0, 50, 5) == pytest.approx(1.0)


def test_lr_onecycle_decays_linearly_to_zero() -> None:
    recipe = Recipe(schedule="onecycle", warmup_epochs=2.0, epochs=10)
    total, spe, warmup = 50, 5, 10
    for s in range(warmup, total + 1):
        assert _lr_factor(recipe, s, total, spe) == pytest.approx(1 - (s - warmup) / (total - warmup))
    assert _lr_factor(recipe, total, total, spe) == 0.0
    assert _lr_factor(recipe, total + 3, total, spe) == 0.0  # never negative


def test_lr_constant_stays_one_after_warmup() -> None:
    recipe = Recipe(schedule="constant", warmup_epochs=1.0)
    assert [_lr_factor(recipe, s, 40, 4) for s in range(4, 41)] == [1.0] * 37
    assert _lr_factor(Recipe(schedule="constant", warmup_epochs=0), 0, 40, 4) == 1.0


@pytest.mark.parametrize("schedule,optimizer", [("cosine", "sgd"), ("onecycle", "adamw"), ("constant", "sgd")])
def test_train_applies_the_schedule_each_step(
    monkeypatch: pytest.MonkeyPatch, synth: DatasetBundle, schedule: str, optimizer: str
) -> None:
    """The lr in force at optimiser step k is recipe.lr * _lr_factor(k); weight decay skips 1-d params."""
    seen: list[list[float]] = []
    optimizers = []
    original = build_optimizer

    def recording_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
        opt = original(model, recipe)
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append([g["lr"] for g in o.param_groups]))
        optimizers.append(opt)
        return opt

    monkeypatch.setattr(train_mod, "build_optimizer", recording_optimizer)
    recipe = tiny_recipe(epochs=3, schedule=schedule, optimizer=optimizer, warmup_epochs=1.0, lr=0.02,
                         weight_decay=1e-3)
    train(tiny_cfg(), recipe, synth)
    spe = 64 // 16
    total = spe * recipe.epochs
    assert len(seen) == total
    for step, lrs in enumerate(seen):
        expected = recipe.lr * _lr_factor(recipe, step, total, spe)
        assert lrs == pytest.approx([expected, expected], rel=1e-9, abs=1e-15), step
    decay, no_decay = optimizers[0].param_groups
    assert decay["weight_decay"] == 1e-3 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])


# --------------------------------------------------------------------------------------------------
# 3. train() end to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixers", ["conv", block_config("gsa", heads=4)], ids=["conv", "gsa"])
def test_train_returns_metrics(synth: DatasetBundle, built_models: list[GSAResNet], mixers: Any) -> None:
    cfg = model_config("proxy_resnet", width_multiplier=0.25, stage_blocks=(1, 1), mixers=mixers)
    assert (cfg.num_classes, cfg.in_channels, cfg.image_size) == (10, 3, 32)  # refitted below
    recipe = tiny_recipe(epochs=3)
    result = train(cfg, recipe, synth)

    fitted = cfg.replace(num_classes=3, in_channels=1, image_size=8)
    assert result["model_config"] == fitted.to_dict()
    assert ModelConfig.from_dict(result["model_config"]) == fitted
    (model,) = built_models
    assert model.cfg == fitted
    expected_params = sum(p.numel() for p in GSAResNet(fitted).parameters())
    assert result[M.PARAMS] == expected_params == sum(p.numel() for p in model.parameters()) == count_params(model)

    for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.PARAMS, M.FLOPS, M.IMAGES_PER_S, M.TRAIN_TIME_S):
        assert name in result, name
    assert M.EPOCH not in result and M.TOP5 not in result  # 3 classes: no top-5
    assert 0.0 <= result[M.ACCURACY] <= 1.0
    assert result[M.ACCURACY] * 16 == pytest.approx(round(result[M.ACCURACY] * 16))  # k of 16 images
    assert math.isfinite(result[M.VAL_LOSS]) and result[M.VAL_LOSS] > 0
    assert math.isfinite(result[M.TRAIN_LOSS]) and result[M.TRAIN_LOSS] > 0
    assert result[M.FLOPS] is None or (isinstance(result[M.FLOPS], int) and result[M.FLOPS] > 0)
    assert result[M.TRAIN_TIME_S] > 0 and result[M.IMAGES_PER_S] > 0
    assert result["epochs"] == 3 and result["device"] == "cpu"

    history = result["history"]
    assert len(history) == recipe.epochs
    assert [h[M.EPOCH] for h in history] == [0, 1, 2]
    times = [h[M.TRAIN_TIME_S] for h in history]
    assert all(0 < a <= b for a, b in zip(times, times[1:]))  # cumulative training time
    for entry in history:
        assert {M.EPOCH, M.TRAIN_LOSS, M.ACCURACY, M.VAL_LOSS, M.TRAIN_TIME_S} <= set(entry)
    last = {k: v for k, v in history[-1].items() if k != M.EPOCH}
    assert {k: result[k] for k in last} == last  # the final metrics are the last epoch's

    # The metrics describe the trained model's predictions on the validation split.
    logits = val_logits(model, synth)
    assert result[M.ACCURACY] == pytest.approx((logits.argmax(1) == synth.val_y).float().mean().item())
    assert result[M.VAL_LOSS] == pytest.approx(F.cross_entropy(logits, synth.val_y).item(), rel=1e-5)


def test_train_top5_only_with_more_than_ten_classes(synth12: DatasetBundle, synth: DatasetBundle,
                                                    built_models: list[GSAResNet]) -> None:
    result = train(tiny_cfg(), tiny_recipe(), synth12)
    assert result["model_config"]["num_classes"] == 12
    assert M.TOP5 in result and all(M.TOP5 in h for h in result["history"])
    assert result[M.ACCURACY] <= result[M.TOP5] <= 1.0
    logits = val_logits(built_models[0], synth12)
    top5 = (logits.topk(5, dim=1).indices == synth12.val_y[:, None]).any(1).float().mean().item()
    assert result[M.TOP5] == pytest.approx(top5)

    small = train(tiny_cfg(), tiny_recipe(), synth)
    assert M.TOP5 not in small and all(M.TOP5 not in h for h in small["history"])


def test_train_accepts_model_dict_and_dataset_name() -> None:
    cfg = tiny_cfg()
    result = train(cfg.to_dict(), tiny_recipe(epochs=1, batch_size=128), "synthetic")
    # "synthetic" with its defaults: 10 classes of 3x32x32 images
    assert result["model_config"] == cfg.replace(num_classes=10, in_channels=3, image_size=32).to_dict()
    assert 0.0 <= result[M.ACCURACY] <= 1.0
    with pytest.raises(ValueError, match=r"ModelConfig"):
        train("proxy_resnet", tiny_recipe(epochs=1), "synthetic")  # type: ignore[arg-type]


@pytest.mark.parametrize("num_samples,batch_size,images_per_epoch", [(80, 24, 48), (20, 32, 16)])
def test_images_per_s_counts_images_trained_on(num_samples: int, batch_size: int, images_per_epoch: int) -> None:
    """Throughput = images actually trained on / training time: full batches only (drop_last) when the
    training split is at least one batch, and the whole split when it is smaller than one batch."""
    bundle = load_dataset("synthetic", num_samples=num_samples, num_classes=3, image_size=8, in_channels=1)
    result = train(tiny_cfg(), tiny_recipe(epochs=2, batch_size=batch_size), bundle)
    assert result[M.IMAGES_PER_S] * result[M.TRAIN_TIME_S] == pytest.approx(images_per_epoch * 2, rel=1e-9)


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocasts(synth: DatasetBundle) -> None:
    fp32 = train(tiny_cfg(), tiny_recipe(precision="fp32"), synth)
    auto = train(tiny_cfg(), tiny_recipe(precision="auto"), synth)
    bf16 = train(tiny_cfg(), tiny_recipe(precision="bf16"), synth)
    assert without_time(auto["history"]) == without_time(fp32["history"])
    assert math.isfinite(bf16[M.TRAIN_LOSS]) and bf16[M.TRAIN_LOSS] != fp32[M.TRAIN_LOSS]


# --------------------------------------------------------------------------------------------------
# 4. The report hook
# --------------------------------------------------------------------------------------------------


def test_report_called_once_per_epoch_with_the_metrics(synth: DatasetBundle) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    result = train(tiny_cfg(), tiny_recipe(epochs=3), synth, report=lambda e, m: calls.append((e, m)))
    assert [epoch for epoch, _ in calls] == [0, 1, 2]
    for (epoch, metrics), entry in zip(calls, result["history"]):
        assert metrics == entry
        assert metrics[M.EPOCH] == epoch
        for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.TRAIN_TIME_S):
            assert isinstance(metrics[name], float)


@pytest.mark.parametrize("exc_type", [Pruned, Stop])
def test_exception_from_report_propagates_unchanged(synth: DatasetBundle, exc_type: type[Exception]) -> None:
    raised = exc_type("stop at epoch 1")
    calls: list[int] = []

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        calls.append(epoch)
        if epoch == 1:
            raise raised

    with pytest.raises(exc_type) as info:
        train(tiny_cfg(), tiny_recipe(epochs=4), synth, report=hook)
    assert info.value is raised  # the same object, not wrapped
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert calls == [0, 1]  # never called again after raising
    assert not isinstance(raised, TrainError)


# --------------------------------------------------------------------------------------------------
# 5. Divergence
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_huge_lr_diverges(synth: DatasetBundle, optimizer: str) -> None:
    with pytest.raises(DivergenceError) as info:
        train(tiny_cfg(), tiny_recipe(epochs=3, lr=1e10, optimizer=optimizer), synth)
    error = info.value
    assert isinstance(error, TrainError)
    assert 0 <= error.epoch < 3 and 0 <= error.step < 64 // 16
    assert not math.isfinite(error.loss)
    assert f"epoch {error.epoch}" in str(error) and f"step {error.step}" in str(error)


def _poison_training_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, bad: float) -> list[int]:
    """Make the ``at_call``-th (0-based) training loss non-finite; returns the running call count."""
    calls = [0]
    real = F.cross_entropy

    def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # evaluation
            return out
        index = calls[0]
        calls[0] += 1
        if index == at_call:
            return out * bad if math.isnan(bad) else out + bad
        return out

    monkeypatch.setattr(train_mod.F, "cross_entropy", cross_entropy)
    return calls


@pytest.mark.parametrize("at_call,bad", [(5, math.nan), (0, math.nan), (11, math.inf), (6, -math.inf)])
def test_divergence_reports_epoch_and_step(
    monkeypatch: pytest.MonkeyPatch, synth: DatasetBundle, at_call: int, bad: float
) -> None:
    steps_per_epoch = 64 // 16
    epoch, step = divmod(at_call, steps_per_epoch)
    reported: list[int] = []
    _poison_training_loss(monkeypatch, at_call, bad)
    with pytest.raises(DivergenceError) as info:
        train(tiny_cfg(), tiny_recipe(epochs=3), synth, report=lambda e, m: reported.append(e))
    error = info.value
    assert (error.epoch, error.step) == (epoch, step)
    assert str(error.loss) == str(bad)
    assert f"epoch {epoch}" in str(error) and f"step {step}" in str(error) and str(bad) in str(error)
    assert reported == list(range(epoch))  # the diverged epoch is never reported


# --------------------------------------------------------------------------------------------------
# 6. Determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_same_seed_same_metrics(synth: DatasetBundle, built_models: list[GSAResNet], optimizer: str) -> None:
    recipe = tiny_recipe(epochs=2, optimizer=optimizer, lr=0.01 if optimizer == "adamw" else 0.05)
    torch.manual_seed(123)  # the global RNG state before the call must not matter
    first = train(tiny_cfg(), recipe, synth)
    torch.manual_seed(456)
    second = train(tiny_cfg(), recipe, synth)
    for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.PARAMS):
        assert first[name] == second[name], name
    assert without_time(first["history"]) == without_time(second["history"])
    assert torch.equal(val_logits(built_models[0], synth), val_logits(built_models[1], synth))

    other = train(tiny_cfg(), recipe.replace(seed=1), synth)
    assert other[M.TRAIN_LOSS] != first[M.TRAIN_LOSS]
    assert not torch.equal(val_logits(built_models[2], synth), val_logits(built_models[0], synth))


# --------------------------------------------------------------------------------------------------
# 7. Checkpoint and resume
# --------------------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only


@pytest.mark.parametrize(
    "recipe_changes",
    [{}, {"optimizer": "adamw", "lr": 0.01, "schedule": "onecycle", "label_smoothing": 0.1}],
    ids=["sgd-cosine", "adamw-onecycle"],
)
def test_resume_matches_uninterrupted_run(
    tmp_path: Path, synth: DatasetBundle, built_models: list[GSAResNet], recipe_changes: dict[str, Any]
) -> None:
    cfg, recipe = tiny_cfg(), tiny_recipe(epochs=3, **recipe_changes)
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"

    seen_a: list[int] = []

    def hook_a(epoch: int, metrics: dict[str, float]) -> None:
        state = _load(dir_a / "last.pt")  # written before the report of its epoch
        assert state["epoch"] == epoch and len(state["history"]) == epoch + 1
        assert state["history"][-1] == metrics
        seen_a.append(epoch)

    run_a = train(cfg, recipe, synth, checkpoint_dir=dir_a, report=hook_a)
    assert seen_a == [0, 1, 2]
    plain = train(cfg, recipe, synth)  # checkpointing does not change the run
    assert without_time(plain["history"]) == without_time(run_a["history"])

    def hook_b(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Stop("interrupted")

    with pytest.raises(Stop):
        train(cfg, recipe, synth, checkpoint_dir=dir_b, report=hook_b)
    state = _load(dir_b / "last.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 2

    seen_b: list[int] = []
    run_b = train(cfg, recipe, synth, checkpoint_dir=dir_b, report=lambda e, m: seen_b.append(e))
    assert seen_b == [2]  # only the remaining epoch is trained and reported
    for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.PARAMS, "epochs", "model_config"):
        assert run_b[name] == run_a[name], name
    assert without_time(run_b["history"]) == without_time(run_a["history"])
    assert run_b[M.TRAIN_TIME_S] >= state["train_time_s"]  # time of the first call is kept
    model_a, model_b = built_models[0], built_models[-1]
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert _load(dir_b / "last.pt")["epoch"] == 2


def test_finished_checkpoint_returns_its_metrics_without_training(tmp_path: Path, synth: DatasetBundle) -> None:
    recipe = tiny_recipe(epochs=2)
    first = train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path)
    calls: list[int] = []
    again = train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path, report=lambda e, m: calls.append(e))
    assert calls == []
    assert again["history"] == first["history"]  # includes identical train_time_s: nothing was retrained
    for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.TRAIN_TIME_S):
        assert again[name] == first[name]


@pytest.mark.parametrize(
    "other",
    [
        lambda cfg, recipe: (cfg, recipe.replace(lr=0.01)),
        lambda cfg, recipe: (cfg, recipe.replace(epochs=3)),
        lambda cfg, recipe: (cfg.replace(base_width=4), recipe),
    ],
    ids=["lr", "epochs", "model"],
)
def test_checkpoint_of_another_run_is_rejected(tmp_path: Path, synth: DatasetBundle, other: Any) -> None:
    cfg, recipe = tiny_cfg(), tiny_recipe(epochs=1)
    train(cfg, recipe, synth, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    before = path.read_bytes()
    other_cfg, other_recipe = other(cfg, recipe)
    with pytest.raises(ValueError, match="different") as info:
        train(other_cfg, other_recipe, synth, checkpoint_dir=tmp_path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before  # left untouched


def test_checkpoint_resumes_in_the_other_memory_format(tmp_path: Path, synth: DatasetBundle) -> None:
    """A run interrupted in NCHW (e.g. by a version whose default that was) resumes channels last:
    the layout is not part of what the run computes."""
    cfg, recipe = tiny_cfg(), tiny_recipe(epochs=2)
    with pytest.raises(Stop):
        train(cfg, recipe.replace(channels_last=False), synth, checkpoint_dir=tmp_path, report=_stop_at(0))
    seen: list[int] = []
    resumed = train(cfg, recipe.replace(channels_last=True), synth, checkpoint_dir=tmp_path,
                    report=lambda e, m: seen.append(e))
    assert seen == [1] and resumed["epochs"] == 2  # only the remaining epoch
    assert math.isfinite(resumed[M.ACCURACY])


def test_checkpoint_dir_is_created(tmp_path: Path, synth: DatasetBundle) -> None:
    target = tmp_path / "deep" / "er"
    seen: list[bool] = []
    train(tiny_cfg(), tiny_recipe(epochs=2), synth, checkpoint_dir=str(target),
          report=lambda e, m: seen.append((target / "last.pt").is_file()))
    assert seen == [True, True]
    assert sorted(p.name for p in target.iterdir()) == ["last.pt"]  # no temporary file left behind


# --------------------------------------------------------------------------------------------------
# 8. Augmentation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_changes_training(monkeypatch: pytest.MonkeyPatch, synth: DatasetBundle, flip: bool) -> None:
    bundle = dataclasses.replace(synth, flip=flip, mean=(0.5,), std=(0.25,))  # as if normalised from [0, 1] pixels
    assert bundle.black == (-2.0,)
    calls: list[tuple[bool, Any, tuple[int, ...]]] = []
    real = data_mod.augment

    def spy(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append((kwargs.get("flip", True), kwargs.get("fill", 0.0), kwargs.get("pad", 4), tuple(x.shape)))
        return real(x, **kwargs)

    monkeypatch.setattr(data_mod, "augment", spy)
    plain = train(tiny_cfg(), tiny_recipe(augment=False), bundle)
    assert calls == []
    augmented = train(tiny_cfg(), tiny_recipe(augment=True), bundle)
    # every training batch, with the data's flip, the padding filled with the data's black (not 0: the
    # images are normalised, so 0 is the mean colour)
    assert calls == [(flip, bundle.black, 4, (16, 1, 8, 8))] * (2 * 64 // 16)
    assert augmented[M.TRAIN_LOSS] != plain[M.TRAIN_LOSS]
    calls.clear()
    smaller = train(tiny_cfg(), tiny_recipe(augment=True, augment_pad=1), bundle)
    assert calls == [(flip, bundle.black, 1, (16, 1, 8, 8))] * (2 * 64 // 16)  # the recipe's largest shift
    assert smaller[M.TRAIN_LOSS] != augmented[M.TRAIN_LOSS]


@pytest.mark.parametrize("pad", [-1, 1.5, "2", True])
def test_recipe_rejects_a_bad_augment_pad(pad: Any) -> None:
    with pytest.raises(ValueError, match="augment_pad must be an integer >= 0"):
        Recipe(augment_pad=pad)


# --------------------------------------------------------------------------------------------------
# 9. evaluate()
# --------------------------------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    """Returns row ``int(x[i, 0])`` of a preset logit table for sample ``i``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.table[x[:, 0].long()] + self.weight


def _logit_table(num_classes: int) -> torch.Tensor:
    # row i: class c gets logit (c * 7 + i) % num_classes (a permutation), scaled
    rows = [[((c * 7 + i) % num_classes) * 0.5 for c in range(num_classes)] for i in range(6)]
    return torch.tensor(rows, dtype=torch.float32)


def _rank(row: torch.Tensor, label: int) -> int:
    return int((row > row[label]).sum())  # 0 = the arg-max


def test_evaluate_accuracy_top5_and_loss_exactly() -> None:
    table = _logit_table(12)
    order = [row.argsort(descending=True) for row in table]
    # labels at ranks 0, 2, 4, 5, 0, 11: top-1 right for 2, top-5 right for 4 of 6
    wanted_ranks = [0, 2, 4, 5, 0, 11]
    labels = torch.tensor([int(order[i][r]) for i, r in enumerate(wanted_ranks)])
    assert [_rank(table[i], int(labels[i])) for i in range(6)] == wanted_ranks
    x = torch.arange(6, dtype=torch.float32)[:, None]
    batches = [(x[:4], labels[:4]), (x[4:], labels[4:])]  # accumulated over two batches
    model = FixedLogits(table)
    model.train()
    out = evaluate(model, batches, num_classes=12)
    assert set(out) == {M.ACCURACY, M.VAL_LOSS, M.TOP5}
    assert out[M.ACCURACY] == 2 / 6
    assert out[M.TOP5] == 4 / 6
    expected_loss = sum(
        -math.log(math.exp(table[i, labels[i]].item()) / sum(math.exp(v) for v in table[i].tolist()))
        for i in range(6)
    ) / 6
    assert out[M.VAL_LOSS] == pytest.approx(expected_loss, rel=1e-6)
    assert model.modes == [False, False]  # evaluated in eval mode...
    assert model.training  # ...and the previous mode is restored
    model.eval()
    evaluate(model, batches, num_classes=12)
    assert not model.training


def test_evaluate_without_top5_up_to_ten_classes() -> None:
    table = _logit_table(10)
    labels = table.argmax(1).clone()
    labels[1] = (labels[1] + 1) % 10  # one of six wrong
    x = torch.arange(6, dtype=torch.float32)[:, None]
    out = evaluate(FixedLogits(table), [(x, labels)], num_classes=10)
    assert set(out) == {M.ACCURACY, M.VAL_LOSS}
    assert out[M.ACCURACY] == 5 / 6
    assert out[M.VAL_LOSS] == pytest.approx(F.cross_entropy(table, labels).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# 10. Out of memory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("at_call", [0, 5])
def test_cuda_oom_becomes_out_of_memory_error(
    monkeypatch: pytest.MonkeyPatch, synth: DatasetBundle, at_call: int
) -> None:
    calls = [0]
    real_forward = GSAResNet.forward

    def forward(self: GSAResNet, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] - 1 == at_call:
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total capacity)\n"
                    "See documentation for Memory Management"
                )
        return real_forward(self, x)

    monkeypatch.setattr(GSAResNet, "forward", forward)
    with pytest.raises(OutOfMemoryError) as info:
        train(tiny_cfg(), tiny_recipe(epochs=3, batch_size=16), synth)
    error = info.value
    assert isinstance(error, TrainError)
    assert error.batch_size == 16 and error.device == "cpu"
    message = str(error)
    assert "batch_size=16" in message
    assert "Tried to allocate 20.00 MiB" in message  # the first line of the CUDA message
    assert "Memory Management" not in message  # only its first line
    assert error.__cause__ is None and error.__suppress_context__


# --------------------------------------------------------------------------------------------------
# 11. Data served by DataLoaders (non-resident image folders)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> DatasetBundle:
    root = tmp_path_factory.mktemp("folder")
    _write_pngs(root / "train", {"a": 6, "b": 6})
    _write_pngs(root / "val", {"a": 2, "b": 2}, seed=1)
    bundle = load_dataset("imagefolder", data_dir=root, image_size=8, max_resident=0)
    assert not bundle.is_resident and (bundle.num_train, bundle.num_val) == (12, 4) and bundle.flip
    return bundle


def test_train_on_non_resident_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, streamed: DatasetBundle
) -> None:
    loaders: list[int] = []
    real_loader = DatasetBundle.train_loader

    def train_loader(self: DatasetBundle, batch_size: int, **kwargs: Any) -> Any:
        loaders.append(batch_size)
        return real_loader(self, batch_size, **kwargs)

    monkeypatch.setattr(DatasetBundle, "train_loader", train_loader)
    recipe = tiny_recipe(epochs=3, batch_size=4)
    result = train(tiny_cfg(), recipe, streamed)
    assert loaders == [4, 4, 4]  # one DataLoader pass per epoch
    assert result["model_config"]["in_channels"] == 3 and result["model_config"]["num_classes"] == 2
    assert len(result["history"]) == 3
    assert result[M.ACCURACY] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert math.isfinite(result[M.VAL_LOSS]) and math.isfinite(result[M.TRAIN_LOSS])
    assert result[M.IMAGES_PER_S] > 0

    again = train(tiny_cfg(), recipe, streamed)  # deterministic on this path too
    assert without_time(again["history"]) == without_time(result["history"])

    with pytest.raises(Stop):
        train(tiny_cfg(), recipe, streamed, checkpoint_dir=tmp_path, report=_stop_at(1))
    resumed = train(tiny_cfg(), recipe, streamed, checkpoint_dir=tmp_path)
    assert without_time(resumed["history"]) == without_time(result["history"])


def test_non_resident_epoch_sees_every_training_image_once(
    monkeypatch: pytest.MonkeyPatch, streamed: DatasetBundle
) -> None:
    """Without augmentation, one epoch through the DataLoader path feeds the model exactly the
    dataset's training images (shuffled, each once: 12 images = 3 full batches of 4)."""
    seen: list[torch.Tensor] = []
    real_forward = GSAResNet.forward

    def forward(self: GSAResNet, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            seen.append(x.detach().clone())
        return real_forward(self, x)

    monkeypatch.setattr(GSAResNet, "forward", forward)
    train(tiny_cfg(), tiny_recipe(epochs=1, batch_size=4, augment=False), streamed)
    assert [tuple(x.shape) for x in seen] == [(4, 3, 8, 8)] * 3
    fed = torch.cat(seen)
    images = torch.stack([streamed.train_dataset[i][0] for i in range(streamed.num_train)])
    match = [[bool(torch.equal(f, img)) for img in images] for f in fed]
    assert all(sum(row) == 1 for row in match)  # each fed image is one dataset image...
    assert sorted(row.index(True) for row in match) == list(range(12))  # ...and each is fed once
    assert [row.index(True) for row in match] != list(range(12))  # shuffled


def _stop_at(stop_epoch: int) -> Any:
    def hook(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == stop_epoch:
            raise Stop(f"stop at {epoch}")

    return hook


# --------------------------------------------------------------------------------------------------
# 12. Devices
# --------------------------------------------------------------------------------------------------


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@needs_no_cuda
def test_resolve_device_without_cuda(synth: DatasetBundle) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"CUDA is not available") as info:
            resolve_device(device)
        assert repr(device) in str(info.value)
    with pytest.raises(ValueError, match=r"CUDA"):
        train(tiny_cfg(), tiny_recipe(device="cuda"), synth)
    assert train(tiny_cfg(), tiny_recipe(device="auto", epochs=1), synth)["device"] == "cpu"


def test_train_uses_the_device_modules_resolver() -> None:
    assert train_mod.resolve_device is device_mod.resolve_device  # one resolver, not a copy...
    assert "resolve_device" not in train_mod.__all__  # ...and not re-exported from here
    assert "build_optimizer" in train_mod.__all__


# --------------------------------------------------------------------------------------------------
# 13. Any registered backbone
# --------------------------------------------------------------------------------------------------


def test_train_trains_any_registered_backbone(
    tmp_path: Path, synth: DatasetBundle, built_models: list[torch.nn.Module]
) -> None:
    """A backbone registered outside the library trains, checkpoints and resumes without any change
    to train.py: it is built and fitted through the registry interface only."""
    assert not hasattr(train_mod, "GSAResNet") and not hasattr(train_mod, "ModelConfig")
    cfg, recipe = TinyMLPConfig(hidden=8), tiny_recipe(epochs=3)
    result = train(cfg, recipe, synth)

    fitted = TinyMLPConfig(hidden=8, in_features=1 * 8 * 8, num_classes=3)  # its own fit_to_data
    assert result["model_config"] == fitted.to_dict() == {"backbone": "test_tiny_mlp", "hidden": 8,
                                                         "in_features": 64, "num_classes": 3}
    assert model_config_from_dict(result["model_config"]) == fitted
    (model,) = built_models
    assert isinstance(model, TinyMLP) and model.cfg == fitted
    assert result[M.PARAMS] == 64 * 8 + 8 + 8 * 3 + 3
    assert result[M.FLOPS] == 64 * 8 + 8 * 3  # multiply-accumulates of the two linear layers
    assert len(result["history"]) == 3 and math.isfinite(result[M.TRAIN_LOSS])
    logits = val_logits(model, synth)
    assert result[M.ACCURACY] == pytest.approx((logits.argmax(1) == synth.val_y).float().mean().item())
    assert result[M.VAL_LOSS] == pytest.approx(F.cross_entropy(logits, synth.val_y).item(), rel=1e-5)

    from_dict = train(cfg.to_dict(), recipe, synth)
    assert without_time(from_dict["history"]) == without_time(result["history"])
    with pytest.raises(Stop):
        train(cfg, recipe, synth, checkpoint_dir=tmp_path, report=_stop_at(1))
    resumed = train(cfg, recipe, synth, checkpoint_dir=tmp_path)
    assert without_time(resumed["history"]) == without_time(result["history"])
    with pytest.raises(ValueError, match="different"):  # a ResNet checkpoint directory is not reused
        train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# 14. Arguments as dicts, names or objects; wrong types
# --------------------------------------------------------------------------------------------------

SYNTH_OPTIONS = {"name": "synthetic", "num_samples": 80, "num_classes": 3, "image_size": 8, "in_channels": 1}


def test_train_accepts_recipe_and_data_dicts(synth: DatasetBundle) -> None:
    recipe = tiny_recipe(epochs=2)
    plain = train(tiny_cfg(), recipe, synth)
    from_dicts = train(tiny_cfg().to_dict(), recipe.to_dict(), dict(SYNTH_OPTIONS))
    assert from_dicts["model_config"] == plain["model_config"]
    assert without_time(from_dicts["history"]) == without_time(plain["history"])

    # the data dict's seed defaults to the recipe's, as for a dataset name; an explicit one wins
    seeded = recipe.replace(seed=1)
    options = {k: v for k, v in SYNTH_OPTIONS.items() if k != "name"}
    by_dict = train(tiny_cfg(), seeded, dict(SYNTH_OPTIONS))
    by_bundle = train(tiny_cfg(), seeded, load_dataset("synthetic", seed=1, **options))
    assert without_time(by_dict["history"]) == without_time(by_bundle["history"])
    explicit = train(tiny_cfg(), seeded, {**SYNTH_OPTIONS, "seed": 0})
    assert without_time(explicit["history"]) == without_time(train(tiny_cfg(), seeded, synth)["history"])


WRONG_ARGUMENTS = [
    ({"model_cfg": "proxy_resnet"}, r"train: model_cfg must be a backbone config \(e\.g\. ModelConfig\) or its dict, "
                                    r"got str \(a preset name\? pass model_config\(name\)\)"),
    ({"model_cfg": 3}, r"train: model_cfg must be .* got int"),
    ({"model_cfg": {"backbone": "vit"}}, r"unknown backbone 'vit'; known: .*resnet"),
    ({"recipe": "fast"}, r"train: recipe must be a Recipe, its dict or None, got str"),
    ({"recipe": 3}, r"train: recipe must be a Recipe, its dict or None, got int"),
    ({"recipe": {"learning_rate": 0.1}}, r"Recipe: unknown field\(s\) learning_rate"),
    ({"recipe": {"epochs": 0}}, r"recipe\.epochs must be a positive integer"),
    ({"data": 3.5}, r"train: data must be a dataset name, a dict \{'name': \.\.\., \*\*load_dataset options\} "
                    r"or a DatasetBundle, got float"),
    ({"data": ["synthetic"]}, r"train: data must be .* got list"),
    ({"data": {"num_samples": 10}}, r"train: a data dict needs a 'name' key .*num_samples"),
    ({"data": {"name": "synthetic", "colour": True}}, r"synthetic: unknown option\(s\) colour"),
]


@pytest.mark.parametrize("arguments,match", WRONG_ARGUMENTS, ids=[str(a) for a, _ in WRONG_ARGUMENTS])
def test_train_rejects_wrong_arguments_clearly(synth: DatasetBundle, arguments: dict[str, Any], match: str) -> None:
    call = {"model_cfg": tiny_cfg(), "recipe": tiny_recipe(epochs=1), "data": synth, **arguments}
    with pytest.raises(ValueError, match=match):
        train(call["model_cfg"], call["recipe"], call["data"])


# --------------------------------------------------------------------------------------------------
# 15. Recipe: warm-up shorter than the run, numpy scalars; the caller's RNG is left alone
# --------------------------------------------------------------------------------------------------


def test_warmup_must_end_before_the_run_does() -> None:
    for epochs, warmup in ((3, 3), (1, 1.0), (2, 2.5)):
        with pytest.raises(ValueError, match=rf"recipe\.warmup_epochs must be None or a number in \[0, {epochs}\) "
                                             rf"\(shorter than epochs={epochs}, or the learning rate rises"):
            Recipe(epochs=epochs, warmup_epochs=warmup)
    assert Recipe(epochs=3, warmup_epochs=2.5).effective_warmup_epochs == 2.5
    # the default: one epoch, or a tenth of a shorter run (so Recipe(epochs=1) still decays)
    assert Recipe().warmup_epochs is None
    assert [Recipe(epochs=e).effective_warmup_epochs for e in (1, 5, 10, 12)] == [0.1, 0.5, 1.0, 1.0]
    short = Recipe(epochs=1)
    factors = [_lr_factor(short, s, 10, 10) for s in range(10)]
    assert factors[0] == 1.0 and factors[-1] < 0.05  # the peak comes early and the rate decays after it
    with pytest.raises(ValueError, match=r"recipe\.warmup_epochs"):
        Recipe(epochs=1).replace(warmup_epochs=1)


def test_recipe_accepts_numpy_scalars_and_stores_plain_numbers() -> None:
    recipe = Recipe(epochs=np.int64(3), batch_size=np.int32(16), lr=np.float32(0.5), momentum=np.float64(0.8),
                    weight_decay=np.float64(0.0), warmup_epochs=np.float64(0.5), label_smoothing=np.float64(0.25),
                    seed=np.int64(2), eval_batch_size=np.int64(64), num_workers=np.int64(1), augment=np.bool_(False))
    plain = Recipe(epochs=3, batch_size=16, lr=0.5, momentum=0.8, weight_decay=0.0, warmup_epochs=0.5,
                   label_smoothing=0.25, seed=2, eval_batch_size=64, num_workers=1, augment=False)
    assert recipe == plain
    for field in dataclasses.fields(Recipe):
        assert type(getattr(recipe, field.name)) is type(getattr(plain, field.name)), field.name
    assert json.loads(json.dumps(recipe.to_dict())) == plain.to_dict()


def test_train_leaves_the_callers_rng_stream_alone(tmp_path: Path, synth: DatasetBundle,
                                                    streamed: DatasetBundle) -> None:
    """train() seeds its own run, but the caller's global RNG continues as if train() never ran:
    after a normal run, a streamed run, an interrupted run, a resumed run and a diverged run."""
    runs = [
        lambda: train(tiny_cfg(), tiny_recipe(epochs=2), synth),
        lambda: train(tiny_cfg(), tiny_recipe(epochs=2, batch_size=4, num_workers=0), streamed),
        lambda: train(tiny_cfg(), tiny_recipe(epochs=2), synth, checkpoint_dir=tmp_path, report=_stop_at(0)),
        lambda: train(tiny_cfg(), tiny_recipe(epochs=2), synth, checkpoint_dir=tmp_path),  # sets the RNG state
        lambda: train(tiny_cfg(), tiny_recipe(epochs=2, lr=1e10), synth),
    ]
    for i, run in enumerate(runs):
        torch.manual_seed(1000 + i)
        torch.rand(3)
        state = torch.get_rng_state()
        expected = torch.rand(8)
        torch.set_rng_state(state)
        with contextlib.suppress(Stop, DivergenceError):
            run()
        assert torch.equal(torch.rand(8), expected), i


# --------------------------------------------------------------------------------------------------
# 16. Checkpoints: plain data, loaded to the CPU; resume on CUDA
# --------------------------------------------------------------------------------------------------


def test_checkpoint_is_plain_data_loaded_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, synth: DatasetBundle
) -> None:
    """The checkpoint loads with ``weights_only=True`` (no pickled objects), its RNG states are CPU
    byte tensors, and train() loads it to the CPU: ``torch.set_rng_state`` takes only a CPU tensor,
    so ``map_location=<cuda device>`` made every resume on a GPU fail."""
    recipe = tiny_recipe(epochs=2)
    with pytest.raises(Stop):
        train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path, report=_stop_at(0))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state) == {"model_config", "recipe", "epoch", "model", "optimizer", "scheduler", "feed",
                          "torch_rng", "cuda_rng", "train_time_s", "history"}
    for key in ("torch_rng", "feed"):
        assert state[key].dtype == torch.uint8 and state[key].device.type == "cpu", key
    assert state["cuda_rng"] is None  # a CPU run has no CUDA stream to save
    assert model_config_from_dict(state["model_config"]) == tiny_cfg().fit_to_data(num_classes=3, in_channels=1,
                                                                                   image_size=8)
    assert Recipe.from_dict(state["recipe"]) == recipe

    loads: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path)
    assert [(k.get("map_location"), k.get("weights_only")) for k in loads] == [("cpu", True)]


def test_checkpoint_written_before_backbones_had_names_still_resumes(tmp_path: Path, synth: DatasetBundle) -> None:
    recipe = tiny_recipe(epochs=2)
    full = train(tiny_cfg(), recipe, synth)
    with pytest.raises(Stop):
        train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path, report=_stop_at(0))
    path = tmp_path / "last.pt"
    state = _load(path)
    del state["model_config"]["backbone"]  # as the old trainer wrote it
    torch.save(state, path)
    resumed = train(tiny_cfg(), recipe, synth, checkpoint_dir=tmp_path)
    assert without_time(resumed["history"]) == without_time(full["history"])


@needs_cuda
@pytest.mark.parametrize("dataset", ["synth", "streamed"])
def test_resume_on_cuda_matches_uninterrupted_run(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path, dataset: str
) -> None:
    """On CUDA an interrupted run resumes (the old trainer failed here) and ends with the metrics of an
    uninterrupted one. The streamed path augments with the CUDA device's global RNG, so this also
    checks that its state is saved and restored. The caller's CPU and CUDA RNG streams are untouched."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    bundle = request.getfixturevalue(dataset)
    batch_size = 16 if dataset == "synth" else 4
    cfg, recipe = tiny_cfg(), tiny_recipe(epochs=3, batch_size=batch_size, device="cuda", precision="fp32")

    torch.manual_seed(7)
    cpu_expected, cuda_expected = torch.rand(4), torch.rand(4, device="cuda")
    torch.manual_seed(7)
    full = train(cfg, recipe, bundle)
    assert torch.equal(torch.rand(4), cpu_expected) and torch.equal(torch.rand(4, device="cuda"), cuda_expected)
    assert full["device"].startswith("cuda")

    with pytest.raises(Stop):
        train(cfg, recipe, bundle, checkpoint_dir=tmp_path, report=_stop_at(1))
    state = _load(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert state["cuda_rng"].dtype == torch.uint8 and state["cuda_rng"].device.type == "cpu"
    resumed = train(cfg, recipe, bundle, checkpoint_dir=tmp_path)
    for name in (M.ACCURACY, M.VAL_LOSS, M.TRAIN_LOSS, M.PARAMS, "model_config"):
        assert resumed[name] == full[name], name
    assert without_time(resumed["history"]) == without_time(full["history"])


# --------------------------------------------------------------------------------------------------
# 17. DataLoader workers for streamed data
# --------------------------------------------------------------------------------------------------


def test_num_workers_default_is_a_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, workers in ((None, 0), (1, 0), (2, 1), (6, 3), (16, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert Recipe().effective_num_workers == workers, cores
        assert Recipe(num_workers=2).effective_num_workers == 2
    assert Recipe(num_workers=0).to_dict()["num_workers"] == 0 and Recipe().to_dict()["num_workers"] is None


def test_streamed_loaders_get_the_recipes_workers(
    monkeypatch: pytest.MonkeyPatch, synth: DatasetBundle, streamed: DatasetBundle
) -> None:
    seen: list[tuple[str, int]] = []
    for name in ("train_loader", "val_loader"):
        real = getattr(DatasetBundle, name)

        def spy(self: DatasetBundle, batch_size: int, *, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen.append((_name, kwargs["num_workers"]))
            return _real(self, batch_size, **{**kwargs, "num_workers": 0})  # no processes needed to check this

        monkeypatch.setattr(DatasetBundle, name, spy)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    train(tiny_cfg(), tiny_recipe(epochs=1, batch_size=4), streamed)
    assert seen == [("train_loader", 3), ("val_loader", 3)]  # None: half the cores
    seen.clear()
    train(tiny_cfg(), tiny_recipe(epochs=1, batch_size=4, num_workers=2), streamed)
    assert seen == [("train_loader", 2), ("val_loader", 2)]
    seen.clear()
    train(tiny_cfg(), tiny_recipe(epochs=1, num_workers=2), synth)
    assert seen == []  # resident data never goes through a DataLoader


def test_worker_processes_do_not_change_the_run(streamed: DatasetBundle) -> None:
    recipe = tiny_recipe(epochs=2, batch_size=4)
    in_process = train(tiny_cfg(), recipe.replace(num_workers=0), streamed)
    with_worker = train(tiny_cfg(), recipe.replace(num_workers=1), streamed)
    assert without_time(with_worker["history"]) == without_time(in_process["history"])


# --------------------------------------------------------------------------------------------------
# 18. The test split: the final model, once, outside the history
# --------------------------------------------------------------------------------------------------


def test_final_model_is_evaluated_on_the_test_split(
    tmp_path: Path, synth: DatasetBundle, built_models: list[GSAResNet]
) -> None:
    other = load_dataset("synthetic", num_samples=40, num_classes=3, image_size=8, in_channels=1, seed=5)
    bundle = dataclasses.replace(synth, test_x=other.train_x, test_y=other.train_y)
    assert bundle.has_test and not synth.has_test
    reported: list[dict[str, float]] = []
    recipe = tiny_recipe(epochs=2, eval_batch_size=10)  # several test batches
    result = train(tiny_cfg(), recipe, bundle, report=lambda e, m: reported.append(m))

    logits = val_logits(built_models[0], synth)  # val_logits puts the model in eval mode
    with torch.no_grad():
        test_logits = built_models[0](other.train_x)
    assert result[M.TEST_ACCURACY] == pytest.approx((test_logits.argmax(1) == other.train_y).float().mean().item())
    assert result[M.TEST_LOSS] == pytest.approx(F.cross_entropy(test_logits, other.train_y).item(), rel=1e-5)
    assert result[M.ACCURACY] == pytest.approx((logits.argmax(1) == synth.val_y).float().mean().item())
    for entry in result["history"] + reported:  # never in what search and pruning read
        assert M.TEST_ACCURACY not in entry and M.TEST_LOSS not in entry

    without_test = train(tiny_cfg(), recipe, synth)
    assert M.TEST_ACCURACY not in without_test and M.TEST_LOSS not in without_test
    assert without_time(without_test["history"]) == without_time(result["history"])  # it changes nothing else

    first = train(tiny_cfg(), recipe, bundle, checkpoint_dir=tmp_path)
    again = train(tiny_cfg(), recipe, bundle, checkpoint_dir=tmp_path)  # finished: the loaded model is tested
    assert again[M.TEST_ACCURACY] == first[M.TEST_ACCURACY] == result[M.TEST_ACCURACY]
    assert again[M.TEST_LOSS] == first[M.TEST_LOSS] == result[M.TEST_LOSS]


def test_streamed_test_split_goes_through_its_loader(
    monkeypatch: pytest.MonkeyPatch, streamed: DatasetBundle
) -> None:
    loaders: list[int] = []
    real_loader = DatasetBundle.test_loader

    def test_loader(self: DatasetBundle, batch_size: int, **kwargs: Any) -> Any:
        loaders.append(kwargs["num_workers"])
        return real_loader(self, batch_size, **kwargs)

    monkeypatch.setattr(DatasetBundle, "test_loader", test_loader)
    bundle = dataclasses.replace(streamed, test_dataset=streamed.val_dataset)  # the val images as a test split
    assert bundle.has_test and bundle.num_test == streamed.num_val
    result = train(tiny_cfg(), tiny_recipe(epochs=2, batch_size=4, num_workers=0), bundle)
    assert loaders == [0]  # once, after the last epoch, with the recipe's workers
    assert result[M.TEST_ACCURACY] == result[M.ACCURACY]  # same images, same final model
    assert result[M.TEST_LOSS] == pytest.approx(result[M.VAL_LOSS], rel=1e-6)
