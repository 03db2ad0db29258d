"""Tests of gsa_search.config: the number helpers (numpy scalars in, plain Python numbers out),
the field checks (messages name ``owner.field``) and ``normalize_numbers`` on a frozen dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from typing import Any, Union

import numpy as np
import pytest

from gsa_search.config import (
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

NUMPY_INTS = [np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3), np.uint64(3)]
NUMPY_FLOATS = [np.float16(1.5), np.float32(1.5), np.float64(1.5)]
BOOLS = [True, False, np.True_, np.False_, np.bool_(True)]


@pytest.mark.parametrize("value", [3, *NUMPY_INTS], ids=lambda v: type(v).__name__)
def test_as_int_turns_integral_values_into_plain_ints(value):
    result = as_int(value)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize(
    "value", [*BOOLS, 3.0, np.float64(3.0), "3", None, [3], np.array([3]), Fraction(3, 1)], ids=repr
)
def test_as_int_rejects_booleans_floats_and_the_rest(value):
    assert as_int(value) is None


@pytest.mark.parametrize("value", [1.5, *NUMPY_FLOATS, Fraction(3, 2)], ids=repr)
def test_as_number_turns_reals_into_plain_floats(value):
    result = as_number(value)
    assert result == 1.5 and type(result) is float


@pytest.mark.parametrize("value", [3, *NUMPY_INTS], ids=lambda v: type(v).__name__)
def test_as_number_keeps_integers_integral(value):
    result = as_number(value)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("value", [*BOOLS, "1.5", None, 1 + 2j, np.complex64(1), [1.5]], ids=repr)
def test_as_number_rejects_booleans_and_non_reals(value):
    assert as_number(value) is None


@pytest.mark.parametrize("value", [1, 7, *NUMPY_INTS])
def test_check_positive_int_accepts_numpy_integers(value):
    check_positive_int("block", "heads", value)


@pytest.mark.parametrize("value", [0, -1, np.int64(0), np.int64(-2), 2.0, np.float64(2.0), True, np.True_, "2", None])
def test_check_positive_int_rejects_and_names_owner_and_field(value):
    with pytest.raises(ValueError, match=r"^block\.heads must be a positive integer, got "):
        check_positive_int("block", "heads", value)


def test_check_positive_int_allow_none():
    check_positive_int("block", "dim_key", None, allow_none=True)
    with pytest.raises(ValueError, match=r"block\.dim_key must be a positive integer or None, got 0"):
        check_positive_int("block", "dim_key", 0, allow_none=True)


@pytest.mark.parametrize("value", [1, 0.5, np.float32(0.5), np.int64(2), Fraction(1, 3)], ids=repr)
def test_check_positive_accepts_positive_reals(value):
    check_positive("explicit", "init_radius", value)


@pytest.mark.parametrize(
    "value", [0, -0.5, math.inf, math.nan, np.float64("nan"), np.float32("inf"), True, np.True_, "1", None], ids=repr
)
def test_check_positive_rejects_and_names_owner_and_field(value):
    with pytest.raises(ValueError, match=r"^explicit\.init_radius must be a positive finite number, got "):
        check_positive("explicit", "init_radius", value)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, np.float32(0.25), np.int64(0)], ids=repr)
def test_check_range_accepts_numpy_numbers_inside(value):
    check_range("recipe", "dropout", value, 0, 1)


@pytest.mark.parametrize(
    "value", [1, np.float64(1.0), -0.1, math.nan, np.float64("nan"), True, np.False_, "0.5"], ids=repr
)
def test_check_range_rejects_and_names_owner_and_field(value):
    with pytest.raises(ValueError, match=r"^recipe\.dropout must be a number in \[0, 1\), got "):
        check_range("recipe", "dropout", value, 0, 1)


def test_check_range_high_inclusive():
    check_range("recipe", "fraction", np.float64(1.0), 0, 1, high_inclusive=True)
    with pytest.raises(ValueError, match=r"recipe\.fraction must be a number in \[0, 1\], got 1\.5"):
        check_range("recipe", "fraction", 1.5, 0, 1, high_inclusive=True)


def test_check_choice_and_check_bool_name_owner_and_field():
    check_choice("gsa", "positional", "axial", ("axial", "2d"))
    with pytest.raises(ValueError, match=r"gsa\.positional must be one of 'axial', '2d'; got '3d'"):
        check_choice("gsa", "positional", "3d", ("axial", "2d"))
    check_bool("gsa", "content", False)
    for value in (1, "yes", None):
        with pytest.raises(ValueError, match=r"gsa\.content must be True or False"):
            check_bool("gsa", "content", value)


@dataclasses.dataclass(frozen=True)
class _Toy(ConfigMixin):
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    span: Union[int, str] = "global"
    name: str = "toy"
    optional: Union[int, None] = None
    sizes: tuple = (1, 2)

    def __post_init__(self) -> None:
        normalize_numbers(self)
        check_positive_int("toy", "count", self.count)
        check_positive("toy", "rate", self.rate)
        check_bool("toy", "flag", self.flag)


def _plain(data: dict[str, Any]) -> None:
    json.dumps(data)
    for key, value in data.items():
        if key != "sizes":
            assert type(value) in (bool, int, float, str, type(None)), f"{key} is a {type(value).__name__}"


def test_normalize_numbers_stores_plain_python_values():
    toy = _Toy(count=np.int64(3), rate=np.float32(0.25), flag=np.True_, span=np.int32(2), optional=np.uint8(4))
    assert toy == _Toy(count=3, rate=0.25, flag=True, span=2, optional=4)
    assert (type(toy.count), type(toy.rate), type(toy.flag), type(toy.span), type(toy.optional)) == (
        int, float, bool, int, int,
    )  # fmt: skip
    _plain(toy.to_dict())


def test_normalize_numbers_leaves_plain_values_strings_none_and_containers_alone():
    toy = _Toy(count=2, rate=1, span="global", name="x", sizes=(np.int64(1),))
    assert type(toy.rate) is int and toy.span == "global" and toy.optional is None
    assert type(toy.sizes[0]) is np.int64  # containers are the owner's business (tuples of ints, configs)


def test_normalize_numbers_does_not_hide_wrong_types():
    with pytest.raises(ValueError, match=r"toy\.count must be a positive integer, got 2\.0"):
        _Toy(count=np.float64(2.0))
    with pytest.raises(ValueError, match=r"toy\.flag must be True or False, got 1"):
        _Toy(flag=np.int64(1))
    with pytest.raises(ValueError, match=r"toy\.count must be a positive integer, got True"):
        _Toy(count=np.True_)  # a numpy bool becomes a bool, which is no integer
