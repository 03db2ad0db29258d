"""Ablation studies: a baseline, factors with named levels, a design and seeds -> cells of trials.

Status: new. An :class:`AblationStudy` says *what* to compare; ``runners.ablation_runner`` runs
every (cell, seed) pair exactly once and ``gsa_search.stats`` compares the cells to the baseline.

- **Baseline** (:class:`Baseline`): a model (a preset name such as ``proxy_gsa_resnet``, a backbone
  config or its dict) with optional ``model_overrides``, a ``recipe`` (fields of
  :class:`~gsa_search.trainer.Recipe` on top of the runner's default recipe for the dataset), a
  dataset name with its options, and an optional ``image_size``.
- **Factors**: ``{factor: {level: overrides}}``. A level's overrides are applied to the baseline
  model the way :func:`~gsa_search.models.model_config` applies them: a name of a model field
  replaces it (``{"mixers": "conv"}``, ``{"width_multiplier": 0.5}``); any other name is a mixer
  field, set on every stage whose mixer has it (``{"positional": "none"}``, ``{"content": False}``,
  ``{"rel_span": 3}``, ``{"heads": 2}``). Recipe overrides go under a ``recipe`` key
  (``{"recipe": {"lr": 1e-3}}``). A level that leaves the baseline unchanged (``{}``, or e.g.
  ``{"heads": 4}`` when the baseline has 4 heads) is that factor's *baseline level*.
- **Design**: ``"one-at-a-time"`` (default): the cell ``baseline`` plus one cell
  ``factor=level`` per non-baseline level, every other factor at the baseline. ``"full"``: the
  cartesian product of all levels (every factor needs a baseline level), cells named
  ``factor=level,factor=level`` in the order the factors are declared; the all-baseline
  combination is the cell ``baseline``. Main effects of a full design are computed too.
- **Seeds**: a count ``n`` (seeds ``0..n-1``, default 3) or a list. Seed ``s`` is the recipe seed
  of the run (data split, initialisation, data order and augmentation), the same in every cell, so
  differences between cells pair by seed.
- **Objectives**: the metrics the runner's study optimises (default ``("accuracy",)``); the first
  is the primary metric of the comparisons, FLOPs and parameters are always compared too.

Everything is checked when the study is constructed (a :class:`StudyError`, a ``ValueError``, with
one line naming the factor and level): an empty study, a factor without levels, an unknown model,
mixer or recipe field (what ``model_config``/``Recipe`` would reject), a recipe ``seed`` as a level
(seeds are the replicates), two levels giving the same config (a duplicate cell), conflicting
factors of a full design, ``seeds < 1``. :meth:`AblationStudy.validate` then fits every cell to the
dataset's shape (classes, channels, image size) and builds it, so what only the block builder can
judge (``heads=3`` on a 16-channel stage, a span longer than a stage's map) fails before anything
trains.

Python studies
--------------
Example:
    >>> study = AblationStudy(
    ...     name="my_paths_v1",
    ...     baseline=Baseline(model="proxy_gsa_resnet", dataset="digits-pairs"),
    ...     factors={"paths": {"both": {}, "content_only": {"positional": "none"},
    ...                        "positional_only": {"content": False}}},
    ...     seeds=3,
    ... )
    >>> list(study.cells())
    ['baseline', 'paths=content_only', 'paths=positional_only']

A study file for ``gsa-search ablate FILE.py:NAME`` defines such an object (or a zero-argument
function returning one) under ``NAME``; it need not register it.

TOML studies
------------
``gsa-search ablate FILE.toml`` reads (stdlib ``tomllib``)::

    name = "my_paths_v1"            # required: the study's (versioned) name, also its folder name
    description = "..."             # optional
    design = "one-at-a-time"        # or "full"; default "one-at-a-time"
    seeds = 3                       # a count (seeds 0..n-1) or a list such as [0, 1, 2]
    objectives = ["accuracy"]       # optional, default ["accuracy"]

    [baseline]
    model = "proxy_gsa_resnet"      # a model preset (`gsa-search list models`), or a table: a config dict
    dataset = "digits-pairs"        # default "digits-pairs"
    image_size = 32                 # optional (default: the dataset's)
    [baseline.model_overrides]      # optional: model/mixer fields applied to the preset
    [baseline.recipe]               # optional: Recipe fields (not seed)
    [baseline.dataset_options]      # optional: dataset options

    [baseline_levels]               # optional: the level of each factor that is the baseline
    paths = "both"

    [factors.paths]                 # one table per factor; one key per level
    both = {}
    content_only = { positional = "none" }
    positional_only = { content = false }

    [factors.lr]                    # recipe overrides go under `recipe`
    low = { recipe = { lr = 1e-3 } }

Block configs inside overrides are tables with a ``type`` (``mixers = { type = "gsa", heads = 4 }``,
or one per stage: ``mixers = ["conv", "conv", "conv", { type = "gsa", heads = 4 }]``). TOML has no
``null``: a baseline level is ``{}``. A key that is not in this schema is an error naming the key,
the file and the allowed keys.

Registry: :func:`register_study`, :func:`list_studies`, :func:`get_study`; :func:`load_study` takes
a registered name, ``FILE.py:NAME`` or ``FILE.toml``. Shipped studies: :mod:`search_spaces.studies`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from gsa_search import metrics as M
from gsa_search.config import ConfigMixin
from gsa_search.models.presets import apply_overrides as _apply_model_overrides
from gsa_search.registry import Registry
from gsa_search.trainer import Recipe
from gsa_search.trial import InvalidConfig, TrialConfig

from ._files import import_user_file

__all__ = [
    "AblationStudy",
    "Baseline",
    "StudyError",
    "DESIGNS",
    "BASELINE_CELL",
    "register_study",
    "list_studies",
    "get_study",
    "load_study",
    "study_from_dict",
    "cells_space",
    "apply_overrides",
]

DESIGNS = ("one-at-a-time", "full")
BASELINE_CELL = "baseline"
DEFAULT_SEEDS = 3
RECIPE_KEY = "recipe"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # also a study folder name (runners.settings)
_DATA_FIELDS = ("num_classes", "in_channels", "image_size")  # set from the dataset when a trial runs
_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
_TOML_TOP = ("name", "description", "design", "seeds", "objectives", "baseline", "baseline_levels", "factors")
_TOML_BASELINE = ("model", "model_overrides", "recipe", "dataset", "dataset_options", "image_size")


class StudyError(ValueError):
    """A study that cannot run as written (the message names the study, factor and level)."""


# --- overrides -----------------------------------------------------------------------------------------


def apply_overrides(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """``cfg`` (a backbone config) with ``overrides`` applied by the rules of
    :func:`~gsa_search.models.model_config` (:func:`gsa_search.models.apply_overrides`), except the
    fields the dataset sets when a trial runs (classes, channels, image size), which a level may not
    change.

    Example:
        >>> from gsa_search.models import model_config
        >>> cfg = apply_overrides(model_config("proxy_gsa_resnet"), {"positional": "none"})
        >>> {m.positional for m in cfg.mixers}
        {'none'}
    """
    model_fields = {f.name for f in dataclasses.fields(cfg)}
    data_fields = sorted(set(overrides) & set(_DATA_FIELDS) & model_fields)
    if data_fields:
        raise ValueError(f"{', '.join(data_fields)} cannot be overridden: the dataset sets it when a trial runs "
                         "(set the baseline's image_size or dataset instead)")
    return _apply_model_overrides(cfg, overrides)


def _plain(value: Any) -> Any:
    """JSON/TOML-compatible form of an override value (configs become their dicts)."""
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _split_level(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model overrides, recipe overrides)`` of one level."""
    model = {k: v for k, v in overrides.items() if k != RECIPE_KEY}
    recipe = overrides.get(RECIPE_KEY, {})
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{RECIPE_KEY} must be a table of Recipe fields, got {recipe!r}")
    return model, dict(recipe)


def _check_recipe(recipe: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(recipe) - set(_RECIPE_FIELDS))
    if unknown:
        raise StudyError(f"{where}unknown recipe field(s) {', '.join(unknown)}; allowed: {', '.join(_RECIPE_FIELDS)}")
    if "seed" in recipe:
        raise StudyError(f"{where}recipe.seed cannot be set: seeds are the study's replicates (set the study's seeds)")


# --- the baseline ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Baseline:
    """What every cell starts from: a model, a recipe, a dataset (see the module docstring)."""

    model: Any = "proxy_gsa_resnet"
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "digits-pairs"
    dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    image_size: int | None = None

    def __post_init__(self) -> None:
        from gsa_search.data import list_datasets
        from gsa_search.models import list_models

        for field in ("model_overrides", "recipe", "dataset_options"):
            value = getattr(self, field)
            if not isinstance(value, Mapping):
                raise StudyError(f"baseline.{field} must be a table/dict, got {type(value).__name__}")
            object.__setattr__(self, field, dict(value))
        model = self.model
        if isinstance(model, str):
            if model not in list_models():
                raise StudyError(f"baseline.model: unknown model preset {model!r}{_close(model, list_models())} "
                                 f"(known: {', '.join(list_models())})")
        elif isinstance(model, Mapping):
            from gsa_search.models import model_config_from_dict

            object.__setattr__(self, "model", model_config_from_dict(dict(model)))
        elif not (hasattr(model, "fit_to_data") and hasattr(model, "to_dict")):
            raise StudyError(f"baseline.model must be a model preset name, a backbone config or its dict, got "
                             f"{type(model).__name__}")
        if not isinstance(self.dataset, str) or self.dataset not in list_datasets():
            raise StudyError(f"baseline.dataset: unknown dataset {self.dataset!r}"
                             f"{_close(str(self.dataset), list_datasets())} (known: {', '.join(list_datasets())})")
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise StudyError(f"baseline.image_size must be a positive integer or None, got {size!r}")
        _check_recipe(self.recipe, "baseline: ")
        self.model_config()  # unknown model overrides fail here

    def model_config(self) -> Any:
        """The baseline's backbone config (not yet fitted to the dataset)."""
        from gsa_search.models import model_config

        if isinstance(self.model, str):
            base = model_config(self.model)
        else:
            base = self.model
        try:
            return apply_overrides(base, self.model_overrides)
        except ValueError as error:
            raise StudyError(f"baseline.model_overrides: {error}") from None

    def replace(self, **changes: Any) -> "Baseline":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        model = self.model if isinstance(self.model, str) else self.model.to_dict()
        return {"model": model, "model_overrides": _plain(self.model_overrides), "recipe": dict(self.recipe),
                "dataset": self.dataset, "dataset_options": _plain(self.dataset_options),
                "image_size": self.image_size}


def _close(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the study -----------------------------------------------------------------------------------------------


def _cell_name(levels: Mapping[str, str]) -> str:
    return ",".join(f"{factor}={level}" for factor, level in levels.items())


@dataclasses.dataclass(frozen=True)
class AblationStudy:
    """A baseline, factors with named levels, a design and seeds (see the module docstring).

    ``cells()`` gives ``{cell name: TrialConfig}`` in a fixed order (the baseline first);
    ``trial_config(cell, seed)`` is what one run trains; ``validate()`` builds every cell for the
    dataset; ``space(seeds)`` is the define-by-run function the runners sample.
    """

    name: str
    baseline: Baseline | Mapping[str, Any]
    factors: Mapping[str, Mapping[str, Mapping[str, Any]]]
    design: str = "one-at-a-time"
    seeds: int | Sequence[int] = DEFAULT_SEEDS
    objectives: Sequence[str] = (M.ACCURACY,)
    baseline_levels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise StudyError(f"study name {self.name!r} is not valid: use letters, digits, '_', '.', '-' (up to 100 "
                             "characters, starting with a letter or digit), e.g. my_study_v1")
        where = f"study {self.name!r}: "
        baseline = self.baseline
        try:
            if isinstance(baseline, Mapping):
                baseline = Baseline(**_checked_keys(dict(baseline), _TOML_BASELINE, "baseline"))
            elif not isinstance(baseline, Baseline):
                raise ValueError(f"baseline must be a Baseline or a dict, got {type(baseline).__name__}")
        except (ValueError, TypeError) as error:
            raise StudyError(where + str(error)) from None
        object.__setattr__(self, "baseline", baseline)
        if self.design not in DESIGNS:
            raise StudyError(f"{where}unknown design {self.design!r}; allowed: {', '.join(DESIGNS)}")
        object.__setattr__(self, "seeds", _check_seeds(self.seeds, where))
        objectives = (self.objectives,) if isinstance(self.objectives, str) else tuple(self.objectives)
        for objective in objectives:
            if objective not in M.DIRECTIONS:
                raise StudyError(f"{where}unknown objective {objective!r}; allowed: {', '.join(M.DIRECTIONS)}")
        if not objectives or len(set(objectives)) != len(objectives):
            raise StudyError(f"{where}objectives must list each metric once, got {list(objectives)}")
        object.__setattr__(self, "objectives", objectives)
        if not isinstance(self.description, str):
            raise StudyError(f"{where}description must be text")
        object.__setattr__(self, "factors", _check_factors(self.factors, where))
        if not isinstance(self.baseline_levels, Mapping):
            raise StudyError(f"{where}baseline_levels must be a dict {{factor: level}}")
        for factor, level in self.baseline_levels.items():
            if factor not in self.factors:
                raise StudyError(f"{where}baseline_levels names factor {factor!r}, which the study does not have "
                                 f"(factors: {', '.join(self.factors)})")
            if level not in self.factors[factor]:
                raise StudyError(f"{where}baseline_levels: factor {factor!r} has no level {level!r} "
                                 f"(levels: {', '.join(self.factors[factor])})")
        object.__setattr__(self, "baseline_levels", dict(self.baseline_levels))
        cells, levels, base_levels = self._build()
        object.__setattr__(self, "_cells", cells)
        object.__setattr__(self, "_levels", levels)
        object.__setattr__(self, "_base_levels", base_levels)

    # --- building the cells --------------------------------------------------------------------------

    def _config(self, model: Mapping[str, Any], recipe: Mapping[str, Any], where: str) -> TrialConfig:
        try:
            cfg = apply_overrides(self.baseline.model_config(), model)
        except (ValueError, TypeError) as error:
            raise StudyError(f"{where}{error}") from None
        try:
            return TrialConfig(model=cfg, recipe={**self.baseline.recipe, **recipe})
        except InvalidConfig as error:
            raise StudyError(f"{where}{error}") from None

    def _build(self) -> tuple[dict[str, TrialConfig], dict[str, dict[str, str | None]], dict[str, str | None]]:
        study = f"study {self.name!r}: "
        base = self._config({}, {}, study + "baseline: ")
        base_key = base.key()
        # each level alone on the baseline: errors name factor and level; a no-op level is the baseline level
        alone: dict[str, dict[str, TrialConfig]] = {}
        base_levels: dict[str, str | None] = {}
        for factor, levels in self.factors.items():
            alone[factor] = {}
            noop = []
            for level, overrides in levels.items():
                where = f"{study}factor {factor!r} level {level!r}: "
                try:
                    model, recipe = _split_level(overrides)
                    _check_recipe(recipe, "")
                except ValueError as error:
                    raise StudyError(where + str(error)) from None
                cfg = self._config(model, recipe, where)
                alone[factor][level] = cfg
                if cfg.key() == base_key:
                    noop.append(level)
            declared = self.baseline_levels.get(factor)
            if declared is not None and declared not in noop:
                raise StudyError(f"{study}factor {factor!r}: baseline level {declared!r} changes the baseline config "
                                 f"(overrides {_plain(levels[declared])}); a baseline level must leave it unchanged")
            if len(noop) > 1:
                raise StudyError(f"{study}factor {factor!r}: levels {noop[0]!r} and {noop[1]!r} both give the baseline "
                                 "config (a duplicate cell); keep one")
            base_levels[factor] = noop[0] if noop else None
        cells: dict[str, TrialConfig] = {BASELINE_CELL: base}
        cell_levels: dict[str, dict[str, str | None]] = {BASELINE_CELL: dict(base_levels)}
        seen: dict[str, str] = {base_key: BASELINE_CELL}
        if self.design == "one-at-a-time":
            for factor, levels in alone.items():
                for level, cfg in levels.items():
                    if level == base_levels[factor]:
                        continue
                    name = _cell_name({factor: level})
                    _add(cells, seen, name, cfg, f"{study}factor {factor!r} level {level!r} (cell {name!r}) ")
                    cell_levels[name] = {**base_levels, factor: level}
        else:
            missing = [f for f, level in base_levels.items() if level is None]
            if missing:
                raise StudyError(f"{study}a full design needs a baseline level in every factor (a level that leaves the "
                                 f"baseline unchanged, e.g. {{}}); factor(s) without one: {', '.join(missing)}")
            touched = {f: {k for o in lv.values() for k in _keys(o)} for f, lv in self.factors.items()}
            for (fa, ka), (fb, kb) in itertools.combinations(touched.items(), 2):
                if ka & kb:
                    raise StudyError(f"{study}factors {fa!r} and {fb!r} both set {', '.join(sorted(ka & kb))}: a full "
                                     "design combines their levels, so each field may belong to one factor only")
            names = list(self.factors)
            for combo in itertools.product(*(list(self.factors[f]) for f in names)):
                chosen = dict(zip(names, combo))
                if all(chosen[f] == base_levels[f] for f in names):
                    continue  # the baseline cell
                model: dict[str, Any] = {}
                recipe: dict[str, Any] = {}
                for factor, level in chosen.items():
                    m, r = _split_level(self.factors[factor][level])
                    model.update(m)
                    recipe.update(r)
                name = _cell_name(chosen)
                cfg = self._config(model, recipe, f"{study}cell {name!r}: ")
                _add(cells, seen, name, cfg, f"{study}cell {name!r} ")
                cell_levels[name] = chosen
        return cells, cell_levels, base_levels

    # --- public surface ------------------------------------------------------------------------------

    def cells(self) -> dict[str, TrialConfig]:
        """``{cell name: TrialConfig}`` in the study's order, the baseline first (recipe without seed)."""
        return dict(self._cells)  # type: ignore[attr-defined]

    def cell_levels(self) -> dict[str, dict[str, str | None]]:
        """``{cell: {factor: level}}`` (``None``: a factor without a baseline level, at the baseline)."""
        return {cell: dict(levels) for cell, levels in self._levels.items()}  # type: ignore[attr-defined]

    def resolved_baseline_levels(self) -> dict[str, str | None]:
        """Each factor's baseline level (declared, or the level that leaves the baseline unchanged)."""
        return dict(self._base_levels)  # type: ignore[attr-defined]

    def seed_list(self) -> list[int]:
        return list(self.seeds)  # type: ignore[arg-type]

    def trial_config(self, cell: str, seed: int) -> TrialConfig:
        """What run ``(cell, seed)`` trains: the cell's config with recipe seed ``seed``."""
        cells = self._cells  # type: ignore[attr-defined]
        if cell not in cells:
            raise StudyError(f"study {self.name!r} has no cell {cell!r}; cells: {', '.join(cells)}")
        cfg = cells[cell]
        return TrialConfig(model=cfg.model, recipe={**cfg.recipe, "seed": int(seed)}, dataset_options=cfg.dataset_options)

    def space(self, seeds: Sequence[int] | int | None = None, *, device: str | None = None) -> Callable[[Any], TrialConfig]:
        """The define-by-run function of this study's (cell, seed) pairs (see :func:`cells_space`)."""
        seeds = self.seed_list() if seeds is None else _check_seeds(seeds, f"study {self.name!r}: ")
        return cells_space(self.cells(), seeds, device=device)

    def replace(self, **changes: Any) -> "AblationStudy":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, *, recipe: Mapping[str, Any] | None = None,
                       dataset_options: Mapping[str, Any] | None = None, image_size: int | None = None) -> "AblationStudy":
        """This study with the baseline's recipe, dataset options or image size changed (levels still
        apply on top): e.g. fewer epochs for a quick look."""
        baseline = self.baseline
        assert isinstance(baseline, Baseline)
        changes: dict[str, Any] = {}
        if recipe:
            changes["recipe"] = {**baseline.recipe, **recipe}
        if dataset_options:
            changes["dataset_options"] = {**baseline.dataset_options, **dataset_options}
        if image_size is not None:
            changes["image_size"] = image_size
        if not changes:
            return self
        try:
            new_baseline = baseline.replace(**changes)
        except ValueError as error:
            raise StudyError(f"study {self.name!r}: {error}") from None
        return self.replace(baseline=new_baseline)

    def validate(self, *, shape: tuple[int, int, int] | None = None, base_recipe: Recipe | None = None,
                 data_dir: str | None = None) -> "AblationStudy":
        """Fit every cell to the dataset and build it (nothing trains); returns ``self``.

        ``shape`` is ``(num_classes, in_channels, image_size)``; by default it is read from the
        dataset (loaded once, with seed 0). ``base_recipe`` is the runner's recipe the cells' recipe
        overrides apply to (default :class:`~gsa_search.trainer.Recipe`). Raises :class:`StudyError`
        naming the cell (and its factor and level) that the recipe or the block builder rejects, or
        two cells that are the same model once fitted.
        """
        import torch

        from gsa_search.models import build_model

        study = f"study {self.name!r}: "
        baseline = self.baseline
        assert isinstance(baseline, Baseline)
        if shape is None:
            from gsa_search.trial import load_data_cached

            try:
                data = load_data_cached(baseline.dataset, data_dir=data_dir, image_size=baseline.image_size, seed=0,
                                        **baseline.dataset_options)
            except (ValueError, TypeError, OSError) as error:
                raise StudyError(f"{study}dataset {baseline.dataset!r}: {error}") from None
            shape = (data.num_classes, data.in_channels, data.image_size)
        num_classes, in_channels, image_size = shape
        described = f"{baseline.dataset} ({in_channels}x{image_size}x{image_size}, {num_classes} classes)"
        base_recipe = base_recipe or Recipe()
        seen: dict[str, str] = {}
        for cell, cfg in self.cells().items():
            where = f"{study}{self._describe(cell)}: "
            try:
                base_recipe.replace(**cfg.recipe)
            except (ValueError, TypeError) as error:
                raise StudyError(f"{where}the recipe is rejected: {error}") from None
            try:
                fitted = cfg.model.fit_to_data(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
                with torch.random.fork_rng(devices=[]), _quiet_warnings():
                    build_model(fitted)
            except (ValueError, TypeError) as error:
                raise StudyError(f"{where}the block builder rejects it on {described}: {error}") from None
            key = json.dumps({"model": fitted.to_dict(), "recipe": cfg.recipe}, sort_keys=True, default=str)
            if key in seen:
                raise StudyError(f"{where}gives the same model as {self._describe(seen[key])} on {described} "
                                 "(a duplicate cell)")
            seen[key] = cell
        return self

    def _describe(self, cell: str) -> str:
        levels = self._levels.get(cell, {})  # type: ignore[attr-defined]
        if cell == BASELINE_CELL:
            return "cell 'baseline'"
        if self.design == "one-at-a-time":
            factor, level = next((f, lv) for f, lv in levels.items() if lv != self._base_levels[f])  # type: ignore[attr-defined]
            return f"factor {factor!r} level {level!r} (cell {cell!r})"
        return f"cell {cell!r}"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (the TOML schema's keys); :func:`study_from_dict` reads it back."""
        baseline = self.baseline
        assert isinstance(baseline, Baseline)
        return {
            "name": self.name, "description": self.description, "design": self.design, "seeds": list(self.seeds),  # type: ignore[arg-type]
            "objectives": list(self.objectives), "baseline": baseline.to_dict(),
            "baseline_levels": dict(self.baseline_levels), "factors": _plain(self.factors),
        }  # fmt: skip


def _add(cells: dict[str, TrialConfig], seen: dict[str, str], name: str, cfg: TrialConfig, where: str) -> None:
    key = cfg.key()
    if key in seen:
        raise StudyError(f"{where}gives the same config as cell {seen[key]!r} (a duplicate cell); remove one of them")
    seen[key] = name
    cells[name] = cfg


def _keys(overrides: Mapping[str, Any]) -> set[str]:
    model, recipe = _split_level(overrides)
    return set(model) | {f"{RECIPE_KEY}.{k}" for k in recipe}


def _check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise StudyError(f"{where}seeds must be a count >= 1 or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise StudyError(f"{where}seeds must be >= 1 (a study needs at least one run per cell), got {seeds}")
        return tuple(range(seeds))
    if isinstance(seeds, str) or not isinstance(seeds, Sequence):
        raise StudyError(f"{where}seeds must be a count >= 1 or a list of seeds, got {seeds!r}")
    values = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StudyError(f"{where}every seed must be an integer >= 0, got {seed!r}")
        values.append(int(seed))
    if not values:
        raise StudyError(f"{where}seeds must be >= 1 (a study needs at least one run per cell), got an empty list")
    if len(set(values)) != len(values):
        raise StudyError(f"{where}seeds lists a seed twice: {values}")
    return tuple(values)


def _check_factors(factors: Any, where: str) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(factors, Mapping) or not factors:
        raise StudyError(f"{where}the study is empty: it has no factors; add at least one factor with a level "
                         "that differs from the baseline")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for factor, levels in factors.items():
        if not isinstance(factor, str) or not factor or any(c in factor for c in "=,"):
            raise StudyError(f"{where}factor name {factor!r} must be non-empty text without '=' or ','")
        if not isinstance(levels, Mapping) or not levels:
            raise StudyError(f"{where}factor {factor!r} has no levels; give it at least one {{level: overrides}}")
        out[factor] = {}
        for level, overrides in levels.items():
            if not isinstance(level, str) or not level or any(c in level for c in "=,"):
                raise StudyError(f"{where}factor {factor!r}: level name {level!r} must be non-empty text without "
                                 "'=' or ','")
            if not isinstance(overrides, Mapping):
                raise StudyError(f"{where}factor {factor!r} level {level!r}: overrides must be a table/dict of "
                                 f"field = value, got {overrides!r}")
            out[factor][level] = dict(overrides)
    return out


class _quiet_warnings:
    """Building a global 2D window warns that it is quadratic: validation builds it on purpose."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# --- the define-by-run space of a study's pairs ---------------------------------------------------------


def cells_space(cells: Mapping[str, TrialConfig | Mapping[str, Any]], seeds: Sequence[int], *,
                device: str | None = None, channels_last: bool | str | None = None) -> Callable[[Any], TrialConfig]:
    """``space(trial) -> TrialConfig`` over the (cell, seed) pairs of a study.

    ``cell = trial.suggest_categorical("cell", cell names)``; ``seed = trial.suggest_int("seed",
    min(seeds), max(seeds))`` (an integer range rather than a categorical, so a resumed study may
    add seeds: Optuna refuses a categorical whose choices change); the result is the cell's config
    with recipe seed ``seed`` (and ``device`` and ``channels_last``, when given). The ablation
    runner enqueues every pair, so nothing is left to a sampler; a seed outside ``seeds`` is an
    :class:`InvalidConfig`.
    """
    configs = {name: cfg if isinstance(cfg, TrialConfig) else TrialConfig(**dict(cfg)) for name, cfg in cells.items()}
    names = list(configs)
    allowed = sorted({int(s) for s in seeds})
    if not names or not allowed:
        raise StudyError("cells_space needs at least one cell and one seed")

    def space(trial: Any) -> TrialConfig:
        cell = trial.suggest_categorical("cell", names)
        seed = trial.suggest_int("seed", allowed[0], allowed[-1])
        if seed not in allowed:
            raise InvalidConfig(f"seed {seed} is not one of the study's seeds {allowed}: ablation runs are enqueued, "
                                "never sampled")
        cfg = configs[cell]
        recipe = {**cfg.recipe, "seed": int(seed)}
        if device is not None:
            recipe["device"] = device
        if channels_last is not None:
            recipe["channels_last"] = channels_last
        return TrialConfig(model=cfg.model, recipe=recipe, dataset_options=cfg.dataset_options)

    space.cells = names  # type: ignore[attr-defined]
    space.seeds = allowed  # type: ignore[attr-defined]
    return space


# --- registry and loading -------------------------------------------------------------------------------

_STUDIES: Registry[AblationStudy] = Registry("ablation study")


def register_study(study: AblationStudy | Callable[[], AblationStudy]) -> Any:
    """Register a study under its name (a duplicate name is an error); returns its argument, so it
    also decorates a zero-argument function returning the study."""
    value = study() if callable(study) and not isinstance(study, AblationStudy) else study
    if not isinstance(value, AblationStudy):
        raise TypeError(f"register_study expects an AblationStudy, got {type(value).__name__}")
    _STUDIES.add(value.name, value)
    return study


def _shipped() -> None:
    from . import studies  # noqa: F401  (registration)


def list_studies(pattern: str | None = None) -> list[str]:
    """Registered study names, optionally filtered by a glob such as ``'gsa_*'``."""
    _shipped()
    return _STUDIES.names(pattern)


def get_study(name: str) -> AblationStudy:
    """A registered study (an unknown name lists the known ones)."""
    _shipped()
    if name not in _STUDIES:
        raise StudyError(f"unknown ablation study {name!r}{_close(name, _STUDIES.names())}; known: "
                         f"{', '.join(_STUDIES.names()) or '(none)'}; or pass FILE.py:NAME or FILE.toml")
    return _STUDIES.get(name)


def load_study(spec: str | AblationStudy) -> AblationStudy:
    """A study from a registered name, ``path/to/file.py:NAME`` (``NAME`` an :class:`AblationStudy`
    or a function returning one; without ``:NAME`` the file's only study) or ``path/to/file.toml``."""
    if isinstance(spec, AblationStudy):
        return spec
    if not isinstance(spec, str) or not spec:
        raise StudyError(f"an ablation study is a registered name, FILE.py:NAME or FILE.toml, got {spec!r}")
    path_text, sep, attr = spec.rpartition(":")
    if sep and path_text.endswith(".py"):
        return _load_python(Path(path_text).expanduser(), attr)
    if spec.endswith(".py"):
        return _load_python(Path(spec).expanduser(), None)
    if spec.endswith(".toml"):
        return load_toml(spec)
    return get_study(spec)


def _load_python(path: Path, attr: str | None) -> AblationStudy:
    try:
        module = import_user_file(path, kind="study", passthrough=StudyError)
    except StudyError:
        raise
    except ValueError as error:
        raise StudyError(str(error)) from None
    found = {n: v for n, v in vars(module).items() if isinstance(v, AblationStudy) and not n.startswith("_")}
    if attr is None:
        if len(found) != 1:
            raise StudyError(f"{path} defines {len(found)} studies ({', '.join(found) or 'none'}): name one as "
                             f"{path}:NAME")
        return next(iter(found.values()))
    value = getattr(module, attr, None)
    if callable(value) and not isinstance(value, AblationStudy):
        try:
            value = value()
        except StudyError as error:
            raise StudyError(f"{path}:{attr}: {error}") from None
    if not isinstance(value, AblationStudy):
        raise StudyError(f"{path} has no study {attr!r} (an AblationStudy or a function returning one); studies "
                         f"there: {', '.join(found) or '(none)'}")
    return value


def load_toml(path: str | Path) -> AblationStudy:
    """Read a study from a TOML file (schema in the module docstring)."""
    import tomllib

    path = Path(path).expanduser()
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StudyError(f"{path}: not valid TOML: {error}") from None
    return study_from_dict(data, source=str(path))


def _checked_keys(data: dict[str, Any], allowed: Sequence[str], table: str, source: str | None = None) -> dict[str, Any]:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        where = f"{source}: " if source else ""
        place = "at the top level" if not table else f"in [{table}]"
        raise StudyError(f"{where}unknown key {unknown[0]!r} {place}; allowed: {', '.join(allowed)}")
    return data


def study_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> AblationStudy:
    """An :class:`AblationStudy` from a plain dict (a parsed TOML file, or :meth:`AblationStudy.to_dict`);
    ``source`` (a file) is named in every error."""
    prefix = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise StudyError(f"{prefix}a study is a table of {', '.join(_TOML_TOP)}")
    data = _checked_keys(dict(data), _TOML_TOP, "", source)
    for key in ("name", "baseline", "factors"):
        if key not in data:
            raise StudyError(f"{prefix}missing key {key!r} (a study needs name, baseline and factors)")
    baseline = data["baseline"]
    if not isinstance(baseline, Mapping):
        raise StudyError(f"{prefix}[baseline] must be a table with keys {', '.join(_TOML_BASELINE)}")
    baseline = _checked_keys(dict(baseline), _TOML_BASELINE, "baseline", source)
    factors = data["factors"]
    if isinstance(factors, Mapping):
        for factor, levels in factors.items():
            if isinstance(levels, Mapping):
                for level, overrides in levels.items():
                    if isinstance(overrides, Mapping) and RECIPE_KEY in overrides and not isinstance(
                            overrides[RECIPE_KEY], Mapping):
                        raise StudyError(f"{prefix}factor {factor!r} level {level!r}: {RECIPE_KEY} must be a table")
    kwargs = {k: v for k, v in data.items() if k in ("name", "design", "seeds", "objectives", "baseline_levels",
                                                     "description")}
    try:
        return AblationStudy(baseline=baseline, factors=factors, **kwargs)
    except StudyError as error:
        raise StudyError(f"{prefix}{error}") from None
    except TypeError as error:
        raise StudyError(f"{prefix}{error}") from None
