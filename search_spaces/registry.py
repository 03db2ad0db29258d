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

from pathlib import Path
from typing import Any, Callable

from gsa_search.registry import Registry
from gsa_search.trial import TrialConfig

from ._files import import_user_file

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
    module = import_user_file(Path(path_text).expanduser(), kind="search space")
    path = Path(path_text).expanduser()
    fn = getattr(module, function, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{path} has no function {function!r}; callables there: {', '.join(found) or '(none)'}")
    fn.space_source = spec  # type: ignore[attr-defined]
    return fn
