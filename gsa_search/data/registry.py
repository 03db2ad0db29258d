"""The dataset registry (``register_dataset`` / ``list_datasets`` / ``load_dataset``) and option checks.

Status: stable. A loader is a function ``fn(*, data_dir, image_size, seed, verify, <options>) ->
DatasetBundle`` registered under a name. :func:`load_dataset` checks the arguments every loader
shares (``image_size``, ``seed``, ``verify``) and rejects unknown options before calling it; the
``check_*`` helpers let a loader validate its own options up front with a :class:`DatasetError`
that names the option and the allowed range. Integer options accept numpy integer scalars
(anything with ``__index__``), as configs rebuilt from a results table carry them.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import os
from pathlib import Path
from typing import Any, Callable

from ..registry import Registry
from .bundle import DatasetBundle, DatasetError

__all__ = [
    "check_bool",
    "check_fraction",
    "check_int",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

# Arguments every loader receives from :func:`load_dataset`; anything else is a dataset option.
_COMMON_ARGS = ("data_dir", "image_size", "seed", "verify")

_DATASETS: Registry[Callable[..., DatasetBundle]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[..., DatasetBundle]], Callable[..., DatasetBundle]]:
    """Register a loader ``fn(*, data_dir, image_size, seed, verify, <options>) -> DatasetBundle``.

    The loader's other keyword-only parameters (with defaults) are the dataset's options; a
    ``**kwargs`` parameter accepts any option.
    """
    return _DATASETS.register(name)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, optionally filtered by a glob such as ``'cifar*'``."""
    return _DATASETS.names(pattern)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
    verify: bool = False,
    **options: Any,
) -> DatasetBundle:
    """Load a registered dataset as a :class:`DatasetBundle`.

    ``image_size`` (default: the dataset's own, 32 for all built-ins) resizes square images;
    ``seed`` (an integer >= 0) fixes splits and generated data; ``verify`` checks checksums where
    the format has official ones (CIFAR). Other keyword arguments are dataset options; unknown ones
    are an error that lists the allowed ones.

    Example:
        >>> load_dataset("synthetic", num_samples=10, image_size=8).train_x.shape
        torch.Size([8, 3, 8, 8])
    """
    loader = _DATASETS.get(name)
    allowed, accepts_any = _loader_options(loader)
    unknown = sorted(set(options) - set(allowed))
    if unknown and not accepts_any:
        raise DatasetError(
            f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    if image_size is not None:
        size = _as_int(image_size)
        if size is None or not 1 <= size <= 4096:
            raise DatasetError(f"{name}: image_size must be an integer in [1, 4096] or None, got {image_size!r}")
        image_size = size
    seed_value = _as_int(seed)
    if seed_value is None or seed_value < 0:
        raise DatasetError(f"{name}: seed must be an integer >= 0, got {seed!r}")
    verify = check_bool(name, "verify", verify)
    path = None if data_dir is None else Path(data_dir).expanduser()
    return loader(data_dir=path, image_size=image_size, seed=seed_value, verify=verify, **options)


def _loader_options(loader: Callable[..., DatasetBundle]) -> tuple[list[str], bool]:
    params = inspect.signature(loader).parameters.values()
    allowed = sorted(
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON_ARGS
    )
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return allowed, accepts_any


# --------------------------------------------------------------------------------------------------
# Option checks for loaders
# --------------------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    """``value`` as a plain ``int`` if it is integral (``int``, ``numpy.int64``, ...); bools are not."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(dataset: str, option: str, value: Any, *, minimum: int) -> int:
    """``value`` as a plain ``int >= minimum``, else a :class:`DatasetError` naming the option."""
    integral = _as_int(value)
    if integral is None or integral < minimum:
        raise DatasetError(f"{dataset}: option {option} must be an integer >= {minimum}, got {value!r}")
    return integral


def check_fraction(dataset: str, option: str, value: Any) -> float:
    """``value`` as a ``float`` strictly between 0 and 1, else a :class:`DatasetError`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"
    if not ok or not math.isfinite(float(value)) or not 0 < float(value) < 1:
        raise DatasetError(f"{dataset}: option {option} must be a number in (0, 1), got {value!r}")
    return float(value)


def check_bool(dataset: str, option: str, value: Any) -> bool:
    """``value`` as a plain ``bool`` (numpy booleans accepted), else a :class:`DatasetError`."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise DatasetError(f"{dataset}: option {option} must be True or False, got {value!r}")
    return bool(value)
