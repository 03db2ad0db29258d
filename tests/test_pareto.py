"""Pareto fronts against brute force, on random point sets with ties, duplicates and mixed directions."""

from __future__ import annotations

import numpy as np
import pytest

from gsa_search.pareto import dominates, pareto_mask, to_minimization


def _brute(values: np.ndarray, directions: list[str]) -> list[bool]:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    points = values * signs
    return [not any(np.all(q <= p) and np.any(q < p) for q in points) for p in points]


@pytest.mark.parametrize("objectives", [1, 2, 3])
def test_pareto_mask_matches_brute_force(objectives):
    rng = np.random.default_rng(objectives)
    for _ in range(300):
        n = int(rng.integers(0, 15))
        values = rng.integers(0, 4, size=(n, objectives)).astype(float)  # small range: many ties and duplicates
        directions = [str(rng.choice(["maximize", "minimize"])) for _ in range(objectives)]
        assert pareto_mask(values, directions).tolist() == _brute(values, directions)


def test_duplicates_on_the_front_are_all_kept_and_nan_rows_never_are():
    values = [[0.9, 10.0], [0.9, 10.0], [0.5, 20.0], [float("nan"), 1.0]]
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [True, True, False, False]


def test_helpers_and_errors():
    assert dominates(np.array([1.0, 1.0]), np.array([1.0, 2.0]))
    assert not dominates(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert to_minimization([[1.0, 2.0]], ["maximize", "minimize"]).tolist() == [[-1.0, 2.0]]
    with pytest.raises(ValueError, match="direction must be"):
        pareto_mask([[1.0]], ["max"])
    with pytest.raises(ValueError, match="2 objectives in the values but 1 directions"):
        pareto_mask([[1.0, 2.0]], ["maximize"])
