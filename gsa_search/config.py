"""Shared helpers for frozen, validated configuration dataclasses.

Status: stable. Every config in the library (block configs, model configs, and later training
recipes) is a frozen dataclass that validates itself in ``__post_init__`` and round-trips through a
plain dict of JSON-compatible values (what sweeps store and reports show).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any, Iterable, TypeVar

__all__ = [
    "ConfigMixin",
    "as_int",
    "as_number",
    "check_bool",
    "check_choice",
    "check_positive_int",
    "check_positive",
    "check_range",
    "normalize_numbers",
]

C = TypeVar("C", bound="ConfigMixin")


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class ConfigMixin:
    """``to_dict`` / ``from_dict`` / ``replace`` for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        known = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _is_bool(value: Any) -> bool:
    """``bool`` or a numpy boolean (``numpy.bool_``, named ``numpy.bool`` since numpy 2)."""
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


def as_int(value: Any) -> int | None:
    """``value`` as a plain ``int`` if it is integral (``int``, ``numpy.int64``, anything with
    ``__index__``), else ``None``. Booleans are not integers here.

    Configs rebuilt from a results table come back with numpy scalars; configs store plain ints so
    that ``to_dict`` stays JSON-serialisable.
    """
    if _is_bool(value):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_number(value: Any) -> float | int | None:
    """``value`` as a plain ``int``/``float`` if it is a real number (numpy scalars included), else ``None``."""
    integral = as_int(value)
    if integral is not None:
        return integral
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_positive_int(owner: str, field: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    integral = as_int(value)
    if integral is None or integral < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{owner}.{field} must be a positive integer{extra}, got {value!r}")


def check_positive(owner: str, field: str, value: Any) -> None:
    number = as_number(value)
    if number is None or not 0 < number < math.inf:
        raise ValueError(f"{owner}.{field} must be a positive finite number, got {value!r}")


def check_range(owner: str, field: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> None:
    """``low <= value < high`` (``<= high`` with ``high_inclusive``), a finite real number."""
    value = as_number(value)
    ok = value is not None and math.isfinite(value)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{owner}.{field} must be a number in [{low}, {high}{bracket}, got {value!r}")


def check_choice(owner: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(
            f"{owner}.{field} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}"
        )


def check_bool(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{field} must be True or False, got {value!r}")


def normalize_numbers(config: Any) -> None:
    """Replace numpy integer/float/boolean scalars in a frozen dataclass's fields by plain
    ``int``/``float``/``bool`` (other values, strings and ``None`` included, are left as they are).

    Call at the start of ``__post_init__`` so that checks see, and ``to_dict`` returns, plain
    Python numbers whatever the caller passed (a results table hands back ``numpy.int64``).
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or type(value) in (bool, int, float, str):
            continue
        if _is_bool(value):
            object.__setattr__(config, field.name, bool(value))
            continue
        number = as_number(value)
        if number is not None:
            object.__setattr__(config, field.name, number)
