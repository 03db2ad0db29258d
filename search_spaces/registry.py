"""Search-space registry: ``register_space``, ``get_space`` (a name or ``path/to/file.py:function``),
``list_spaces``.

Status: stable. A search space is one define-by-run function ``space(trial) -> TrialConfig`` that
only samples (no computation). It takes any object with Optuna's ``suggest_*`` methods, so the same
function serves the Optuna runner, Ray Tune's ``OptunaSearch(space=fn)``, and a replay on
``optuna.trial.FixedTrial(params)`` that rebuilds a config from Ray's flat parameter dict.
Names are versioned (``gsa_block_v1``): a published space never changes meaning; a new version
gets a new name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from gsa_search.registry import Registry
from gsa_search.trial import TrialConfig

__all__ = ["SpaceFn", "register_space", "get_space", "list_spaces", "space_name"]

SpaceFn = Callable[[Any], TrialConfig]

_SPACES: Registry[SpaceFn] = Registry("search space")


def register_space(name: str) -> Callable[[SpaceFn], SpaceFn]:
    """Register a define-by-run space under a versioned name (``..._v1``)."""

    def decorator(fn: SpaceFn) -> SpaceFn:
        _SPACES.add(name, fn)
        fn.space_name = name  # type: ignore[attr-defined]
        return fn

    return decorator


def list_spaces(pattern: str | None = None) -> list[str]:
    return _SPACES.names(pattern)


def space_name(space: SpaceFn) -> str:
    """The registered name of a space, or ``module:function`` for a user's own."""
    return getattr(space, "space_name", None) or f"{getattr(space, '__module__', '?')}:{getattr(space, '__name__', '?')}"


def get_space(spec: str | SpaceFn) -> SpaceFn:
    """A registered space by name, a user's space from ``path/to/file.py:function``, or a callable.

    Example:
        >>> get_space("gsa_block_v1").space_name
        'gsa_block_v1'
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a search space is a registered name or FILE.py:FUNCTION, got {spec!r}")
    if spec in _SPACES:
        return _SPACES.get(spec)
    path_text, sep, function = spec.rpartition(":")
    if not sep or not path_text.endswith(".py"):
        _SPACES.get(spec)  # raises: unknown name, listing the known ones
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"search space file {path} does not exist (expected FILE.py:FUNCTION)")
    module_name = f"_gsa_user_space_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # a user's file: report its error in one line
        del sys.modules[module_name]
        raise ValueError(f"importing {path} failed: {type(error).__name__}: {error}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{path} has no function {function!r}; callables there: {', '.join(found) or '(none)'}")
    fn.space_source = spec  # type: ignore[attr-defined]
    return fn
