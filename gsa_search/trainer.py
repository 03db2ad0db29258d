"""Proxy training: one readable function, ``train(model_cfg, recipe, data, report=...)``.

Status: stable. The whole run fits on one screen, in the spirit of nanoGPT/airbench: small datasets
live on the training device as one tensor and are augmented there in batches (padding filled with
the data's black); larger ones stream through DataLoaders with ``recipe.num_workers`` workers. The
model is evaluated every epoch and ``report(epoch, metrics)`` is called (the only hook: runners
turn it into Optuna/Ray reports and may raise from it to prune; the exception propagates unchanged).
When the dataset has a test split, the final model is evaluated on it once, after the last epoch:
``test_accuracy`` and ``test_loss`` are in the returned metrics, never in the per-epoch history
that search and pruning read.

Any registered backbone trains through the same code: the model is built from its config with
:func:`gsa_search.models.build_model` after :meth:`~gsa_search.models.BackboneConfig.fit_to_data`
(``num_classes``, ``in_channels`` and ``image_size`` come from the dataset). Arguments may be plain
dicts (a model config dict, a recipe dict, ``{"name": ..., **load_dataset options}``).

Failures runners must record are dedicated exceptions: :class:`DivergenceError` (non-finite loss,
with epoch and step) and :class:`OutOfMemoryError` (CUDA out of memory, with the batch size).
With ``checkpoint_dir`` the full state (model, optimiser, schedule, RNG streams of CPU and the CUDA
device, history) is saved after every epoch as plain tensors and containers (loadable with
``torch.load(..., weights_only=True)``) and a later call resumes from it; a resumed run ends with
exactly the metrics of an uninterrupted one (on CUDA too, given deterministic kernels). The same
config and seed on CPU give identical metrics, and ``train()`` leaves the caller's global RNG
state as it found it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn
from torch.nn import functional as F

from . import metrics as M
from .config import (
    ConfigMixin,
    as_int,
    as_number,
    check_bool,
    check_choice,
    check_positive,
    check_positive_int,
    check_range,
    normalize_numbers,
)
from .device import resolve_device
from .host_memory import retain_freed_memory
from .measure import count_params, model_macs
from .models import BackboneConfig, build_model, model_config_from_dict

__all__ = [
    "DIGITS_IMAGE_SIZE",
    "DIGITS_RECIPE",
    "DIGITS_PAIRS_RECIPE",
    "Recipe",
    "TrainError",
    "DivergenceError",
    "OutOfMemoryError",
    "Pruned",
    "train",
    "build_optimizer",
    "evaluate",
]

ReportFn = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass(frozen=True)
class Recipe(ConfigMixin):
    """How to train a proxy model.

    ``lr`` is the peak learning rate (reached after ``warmup_epochs``, which must be shorter than
    the run; ``None`` means one epoch, or a tenth of the run when that is shorter: see
    :attr:`effective_warmup_epochs`); ``schedule`` is ``cosine`` (warm-up then cosine decay to zero),
    ``onecycle`` (linear warm-up then linear decay to zero, the airbench triangle) or ``constant``
    (warm-up then flat). ``precision='auto'`` means bf16 autocast on CUDA and float32 on CPU.
    ``channels_last='auto'`` trains channels last on CPU (every proxy model measured 1.2-1.33x faster
    there: oneDNN's convolutions, batch norms and activations run faster on NHWC maps, and the
    attention blocks keep that layout) and NCHW on CUDA; ``True``/``False`` force one.
    ``compile`` wraps the model in ``torch.compile`` after its FLOPs are counted. ``num_workers``
    is the DataLoader worker count for streamed (non-resident) data; ``None`` means a share of this
    machine's cores (:attr:`effective_num_workers`). Resident data never uses workers.
    Numbers may be numpy scalars (what a results table hands back); they are stored as plain ones.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: Union[float, None] = None
    label_smoothing: float = 0.0
    augment: bool = True
    augment_pad: int = 4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: Union[bool, str] = "auto"
    compile: bool = False
    eval_batch_size: int = 1024
    num_workers: Union[int, None] = None

    def __post_init__(self) -> None:
        normalize_numbers(self)
        check_positive_int("recipe", "epochs", self.epochs)
        check_positive_int("recipe", "batch_size", self.batch_size)
        check_positive_int("recipe", "eval_batch_size", self.eval_batch_size)
        check_choice("recipe", "optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("recipe", "schedule", self.schedule, ("cosine", "onecycle", "constant"))
        check_choice("recipe", "precision", self.precision, ("auto", "fp32", "bf16"))
        check_positive("recipe", "lr", self.lr)
        check_range("recipe", "momentum", self.momentum, 0, 1)
        check_range("recipe", "label_smoothing", self.label_smoothing, 0, 1)
        check_range("recipe", "weight_decay", self.weight_decay, 0, math.inf)
        warmup = as_number(self.warmup_epochs)
        if self.warmup_epochs is not None and (warmup is None or not 0 <= warmup < self.epochs):
            raise ValueError(
                f"recipe.warmup_epochs must be None or a number in [0, {self.epochs}) (shorter than "
                f"epochs={self.epochs}, or the learning rate rises for the whole run), got {self.warmup_epochs!r}"
            )
        if as_int(self.augment_pad) is None or self.augment_pad < 0:
            raise ValueError(f"recipe.augment_pad must be an integer >= 0 (the largest shift in pixels), "
                             f"got {self.augment_pad!r}")
        for field in ("augment", "compile"):
            check_bool("recipe", field, getattr(self, field))
        if not (isinstance(self.channels_last, bool) or self.channels_last == "auto"):
            raise ValueError(f"recipe.channels_last must be True, False or 'auto', got {self.channels_last!r}")
        if as_int(self.seed) is None or self.seed < 0:
            raise ValueError(f"recipe.seed must be an integer >= 0, got {self.seed!r}")
        if self.num_workers is not None and (as_int(self.num_workers) is None or self.num_workers < 0):
            raise ValueError(f"recipe.num_workers must be None or an integer >= 0, got {self.num_workers!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)
        ):
            raise ValueError(f"recipe.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def identity(self) -> dict[str, Any]:
        """The fields that decide what a run computes: all but the memory format
        (``channels_last`` changes speed and float rounding, not the run). Searches, ablations and
        checkpoints resume when these match."""
        return {k: v for k, v in self.to_dict().items() if k != "channels_last"}

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """The layout models and batches take on ``device``: ``channels_last`` resolved
        (``'auto'``: channels last on CPU, NCHW elsewhere)."""
        if self.channels_last == "auto":
            return torch.channels_last if device.type == "cpu" else torch.contiguous_format
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def effective_warmup_epochs(self) -> float:
        """``warmup_epochs``, or for ``None`` one epoch capped at a tenth of the run."""
        return float(self.warmup_epochs) if self.warmup_epochs is not None else min(1.0, self.epochs / 10)

    @property
    def effective_num_workers(self) -> int:
        """``num_workers``, or for ``None`` half of this machine's cores, at most 4."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, (os.cpu_count() or 1) // 2))


# The proxy recipe for the bundled digits data: AdamW, 10 epochs (one of warm-up), batch 32, shifts of
# up to 2 pixels (1/8 of the side, CIFAR's 4 at 32x32), 16x16 inputs (the scans are 8x8, so larger
# inputs only upsample them further). proxy_gsa_resnet: 98.2 +- 0.4% validation accuracy over seeds
# 0-2 in 24-30 s of training on 2 CPU threads (batch 64 and 4-pixel shifts gave 96.4% after 44 s).
DIGITS_RECIPE = Recipe(epochs=10, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05, label_smoothing=0.1,
                       augment_pad=2)
DIGITS_IMAGE_SIZE = 16
# The recipe of the long-range task ``digits-pairs`` (12x12 canvas): no augmentation (a 4-pixel shift
# moves a 5-pixel digit across the gap or off the canvas), no label smoothing, 5 epochs; measured in
# the dataset's docstring (study 7 with 3 seeds in about 10 minutes on 2 cores).
DIGITS_PAIRS_RECIPE = Recipe(epochs=5, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.05,
                             label_smoothing=0.0, augment=False)


class TrainError(RuntimeError):
    """Base class of training failures that a runner records as the trial's reason."""


class DivergenceError(TrainError):
    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


class OutOfMemoryError(TrainError):
    def __init__(self, batch_size: int, device: str, detail: str = "") -> None:
        super().__init__(
            f"out of memory on {device} with batch_size={batch_size}; lower the batch size or the model width"
            + (f" ({detail})" if detail else "")
        )
        self.batch_size, self.device = batch_size, device


class Pruned(Exception):
    """A report hook may raise this (or its own exception) to stop a run; train() lets it through."""


def _lr_factor(recipe: Recipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based)."""
    warmup = int(round(recipe.effective_warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1 - progress)  # onecycle: linear decay after the linear warm-up


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``: weight decay on weights, none on BN/bias/scalars."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)  # no weight decay on BN/bias/scalars
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999))


def _autocast(device: torch.device, recipe: Recipe) -> contextlib.AbstractContextManager:
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    autocast: contextlib.AbstractContextManager | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 10 classes) accuracy and mean loss over ``batches``."""
    was_training = model.training
    model.eval()
    correct = correct5 = count = 0
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct_t = torch.zeros((), dtype=torch.int64, device=device)
    correct5_t = torch.zeros((), dtype=torch.int64, device=device)
    for xb, yb in batches:
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(xb)
        logits = logits.float()
        loss += F.cross_entropy(logits, yb, reduction="sum")
        correct_t += (logits.argmax(1) == yb).sum()
        if num_classes > 10:
            correct5_t += (logits.topk(5, dim=1).indices == yb[:, None]).any(1).sum()
        count += len(yb)
    model.train(was_training)
    correct, correct5 = int(correct_t.item()), int(correct5_t.item())  # one sync per evaluation
    out = {M.ACCURACY: correct / count, M.VAL_LOSS: float(loss.item()) / count}
    if num_classes > 10:
        out[M.TOP5] = correct5 / count
    return out


def _as_model_config(model_cfg: Any) -> BackboneConfig:
    if isinstance(model_cfg, dict):
        return model_config_from_dict(model_cfg)
    if not isinstance(model_cfg, BackboneConfig):
        hint = " (a preset name? pass model_config(name))" if isinstance(model_cfg, str) else ""
        raise ValueError(
            f"train: model_cfg must be a backbone config (e.g. ModelConfig) or its dict, got {type(model_cfg).__name__}{hint}"
        )
    return model_cfg


def _as_recipe(recipe: Any) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if not isinstance(recipe, Recipe):
        raise ValueError(f"train: recipe must be a Recipe, its dict or None, got {type(recipe).__name__}")
    return recipe


def _as_dataset(data: Any, seed: int) -> Any:
    from .data import DatasetBundle, load_dataset

    if isinstance(data, str):
        return load_dataset(data, seed=seed)
    if isinstance(data, dict):
        options = dict(data)
        if "name" not in options:
            raise ValueError(f"train: a data dict needs a 'name' key (plus load_dataset options), got keys {sorted(options)}")
        options.setdefault("seed", seed)
        return load_dataset(options.pop("name"), **options)
    if not isinstance(data, DatasetBundle):
        raise ValueError(
            "train: data must be a dataset name, a dict {'name': ..., **load_dataset options} or a DatasetBundle, "
            f"got {type(data).__name__}"
        )
    return data


def _same_run(state: dict[str, Any], model_cfg: BackboneConfig, recipe: Recipe) -> bool:
    """Whether a checkpoint was written by a run of this model config and recipe (its
    :meth:`Recipe.identity`: the saved tensors load into either memory format)."""
    try:
        saved = Recipe.from_dict(state["recipe"]).identity()
        return model_config_from_dict(state["model_config"]) == model_cfg and saved == recipe.identity()
    except (KeyError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNGs of the CPU and of ``device`` (only those) for a run; restore the caller's after."""
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda_devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written checkpoint


def train(
    model_cfg: BackboneConfig | dict[str, Any],
    recipe: Recipe | dict[str, Any] | None = None,
    data: Union[str, dict[str, Any], Any] = "digits",
    *,
    report: ReportFn | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train ``model_cfg`` on ``data`` and return its metrics.

    ``model_cfg`` is any registered backbone's config or its dict; ``recipe`` a :class:`Recipe`, its
    dict or ``None`` (the defaults); ``data`` a dataset name, ``{"name": ..., **load_dataset
    options}`` or a loaded :class:`~gsa_search.data.DatasetBundle`. The model is fitted to the data
    (``num_classes``, ``in_channels`` and ``image_size`` come from the dataset). Returns the metrics
    named in :mod:`gsa_search.metrics` (the last epoch's), ``test_accuracy``/``test_loss`` when the
    dataset has a test split, plus ``epochs``, ``device``, ``history`` (one dict per epoch) and
    ``model_config`` (the config that was trained, as a dict).

    Example:
        >>> from gsa_search.models import model_config
        >>> result = train(model_config("proxy_resnet", width_multiplier=0.25), {"epochs": 1})
        >>> 0.0 <= result["accuracy"] <= 1.0
        True
    """
    recipe = _as_recipe(recipe)
    retain_freed_memory()  # no page faults on every step's fresh activations (host_memory)
    data = _as_dataset(data, recipe.seed)
    model_cfg = _as_model_config(model_cfg).fit_to_data(
        num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    device = resolve_device(recipe.device, owner="recipe")
    data = data.to(device) if data.is_resident else data
    cuda = device.type == "cuda"

    with _seeded(recipe.seed, device):  # the caller's global RNG states are restored on exit
        model = build_model(model_cfg).to(device)
        params = count_params(model)
        flops = model_macs(model_cfg, (1, data.in_channels, data.image_size, data.image_size))
        memory_format = recipe.memory_format(device)
        model = model.to(memory_format=memory_format)
        optimizer = build_optimizer(model, recipe)
        feed = _Feed(data, recipe, device)
        total_steps = feed.steps_per_epoch * recipe.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(recipe, step, total_steps, feed.steps_per_epoch)
        )
        history: list[dict[str, float]] = []
        start_epoch, train_time = 0, 0.0

        ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            if ckpt_path.exists():
                state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                if not _same_run(state, model_cfg, recipe):
                    raise ValueError(f"checkpoint {ckpt_path} belongs to a different model or recipe; use another directory")
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                for slots in optimizer.state.values():  # moments saved in the other layout take this run's
                    for key, value in slots.items():
                        if torch.is_tensor(value) and value.dim() == 4:
                            slots[key] = value.contiguous(memory_format=memory_format)
                scheduler.load_state_dict(state["scheduler"])
                feed.load_state(state["feed"])
                torch.set_rng_state(state["torch_rng"])
                if cuda and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], device)
                start_epoch, train_time, history = state["epoch"] + 1, state["train_time_s"], state["history"]

        step_model = torch.compile(model) if recipe.compile else model
        autocast = _autocast(device, recipe)
        for epoch in range(start_epoch, recipe.epochs):
            model.train()
            _sync(device)
            tic = time.perf_counter()
            losses = torch.zeros(feed.steps_per_epoch, device=device)  # one sync per epoch, not per step
            try:
                for step, (xb, yb) in enumerate(feed.train_batches()):
                    xb = xb.contiguous(memory_format=memory_format)
                    with autocast:
                        loss = F.cross_entropy(step_model(xb), yb, label_smoothing=recipe.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses[step] = loss.detach().float()
                _sync(device)
            except torch.cuda.OutOfMemoryError as exc:
                raise OutOfMemoryError(recipe.batch_size, str(device), str(exc).splitlines()[0]) from None
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0].item())
                raise DivergenceError(epoch, bad, float(losses[bad].item()))
            train_time += time.perf_counter() - tic
            metrics = {M.EPOCH: epoch, M.TRAIN_LOSS: float(losses.mean().item())}
            metrics.update(_evaluate(step_model, feed.val_batches(), data, recipe, autocast, device, "evaluation"))
            metrics[M.TRAIN_TIME_S] = train_time
            history.append(metrics)
            if ckpt_path is not None:
                _save(ckpt_path, {
                    "model_config": model_cfg.to_dict(), "recipe": recipe.to_dict(), "epoch": epoch,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "feed": feed.state(),
                    "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
                    "train_time_s": train_time, "history": history,
                })
            if report is not None:
                report(epoch, dict(metrics))

        final = dict(history[-1])
        final.pop(M.EPOCH)
        if data.has_test:  # the final model, once: not part of the history search reads
            test = _evaluate(step_model, feed.test_batches(), data, recipe, autocast, device, "test evaluation")
            final.update({M.TEST_ACCURACY: test[M.ACCURACY], M.TEST_LOSS: test[M.VAL_LOSS]})
    images = feed.images_per_epoch * recipe.epochs
    final.update({
        M.PARAMS: params,
        M.FLOPS: flops,
        M.IMAGES_PER_S: images / train_time if train_time > 0 else float("nan"),
        "epochs": recipe.epochs,
        "device": str(device),
        "history": history,
        "model_config": model_cfg.to_dict(),
    })
    return final


def _evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    data: Any,
    recipe: Recipe,
    autocast: contextlib.AbstractContextManager,
    device: torch.device,
    what: str,
) -> dict[str, float]:
    fmt = recipe.memory_format(device)  # the layout the model trains in
    batches = ((xb.contiguous(memory_format=fmt) if xb.dim() == 4 else xb, yb) for xb, yb in batches)
    try:
        return evaluate(model, batches, num_classes=data.num_classes, autocast=autocast, device=device)
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemoryError(recipe.eval_batch_size, str(device), f"{what}: " + str(exc).splitlines()[0]) from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Feed:
    """Where batches come from: resident tensors (shuffled and augmented on the device) or, for data
    too large to keep resident, DataLoaders (``recipe.num_workers`` workers) whose batches are moved
    to the device."""

    def __init__(self, data: Any, recipe: Recipe, device: torch.device) -> None:
        self.data, self.recipe, self.device = data, recipe, device
        self.resident = data.is_resident
        self.num_workers = 0 if self.resident else recipe.effective_num_workers
        self.pin_memory = device.type == "cuda"
        # shuffling and augmentation draw from this stream only, so a run is reproducible and resumable
        self.generator = torch.Generator(device=device if self.resident else "cpu").manual_seed(recipe.seed)
        size = len(data.train_x) if self.resident else len(data.train_dataset)
        self.drop_last = size >= recipe.batch_size
        self.steps_per_epoch = size // recipe.batch_size if self.drop_last else 1
        self.images_per_epoch = self.steps_per_epoch * recipe.batch_size if self.drop_last else size

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from .data import augment, batches

        data, recipe = self.data, self.recipe
        if self.resident:
            source = batches(data.train_x, data.train_y, batch_size=recipe.batch_size, shuffle=True,
                             generator=self.generator, drop_last=self.drop_last)
        else:
            loader = data.train_loader(recipe.batch_size, shuffle=True, drop_last=self.drop_last,
                                       generator=self.generator, num_workers=self.num_workers,
                                       pin_memory=self.pin_memory)
            source = ((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in loader)
        for xb, yb in source:
            if recipe.augment:
                aug_generator = self.generator if self.resident else None
                xb = augment(xb, pad=recipe.augment_pad, flip=data.flip, fill=data.black, generator=aug_generator)
            yield xb, yb

    def _eval_batches(self, x: torch.Tensor | None, y: torch.Tensor | None, loader: Callable[..., Any]) -> Iterable[Any]:
        size = self.recipe.eval_batch_size
        if x is not None:
            return ((x[i : i + size], y[i : i + size]) for i in range(0, len(x), size))  # type: ignore[index]
        return loader(size, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def val_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self._eval_batches(self.data.val_x, self.data.val_y, self.data.val_loader)

    def test_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self._eval_batches(self.data.test_x, self.data.test_y, self.data.test_loader)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())

