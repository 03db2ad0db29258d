"""Shared helpers for frozen, validated configuration dataclasses.

Status: stable. Every config in the library (block configs, model configs, and later training
recipes) is a frozen dataclass that validates itself in ``__post_init__`` and round-trips through a
plain dict of JSON-compatible values (what sweeps store and reports show).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, TypeVar

__all__ = ["ConfigMixin", "check_bool", "check_choice", "check_positive_int", "check_positive", "check_range"]

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


def check_positive_int(owner: str, field: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{owner}.{field} must be a positive integer{extra}, got {value!r}")


def check_positive(owner: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{owner}.{field} must be a positive finite number, got {value!r}")


def check_range(owner: str, field: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> None:
    """``low <= value < high`` (``<= high`` with ``high_inclusive``), a finite real number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
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
