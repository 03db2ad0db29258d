"""Pareto fronts of trial results: which points no other point dominates.

Status: stable (pure; no plotting). ``directions`` says per objective whether larger (``maximize``)
or smaller (``minimize``) is better. A point *dominates* another if it is at least as good in every
objective and strictly better in one; equal points do not dominate each other, so duplicates on
the front are all kept.

Example:
    >>> pareto_mask([[0.9, 10], [0.8, 5], [0.7, 20]], ["maximize", "minimize"]).tolist()
    [True, True, False]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pareto_mask", "dominates", "to_minimization"]


def to_minimization(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """``(n, k)`` float array where smaller is better in every column (maximised columns negated)."""
    points = np.asarray(values, dtype=float)
    if points.ndim != 2:
        points = points.reshape(len(points), -1)
    if points.shape[1] != len(directions):
        raise ValueError(f"{points.shape[1]} objectives in the values but {len(directions)} directions")
    signs = []
    for direction in directions:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        signs.append(-1.0 if direction == "maximize" else 1.0)
    return points * np.asarray(signs)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` dominates ``b`` (both already in minimisation form)."""
    return bool(np.all(a <= b) and np.any(a < b))


def pareto_mask(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (rows with NaN are never on the front)."""
    points = to_minimization(values, directions)
    n = len(points)
    finite = np.all(np.isfinite(points), axis=1)
    mask = finite.copy()
    order = np.lexsort(points.T[::-1]) if n else np.array([], dtype=int)
    front: list[int] = []
    for i in order:  # lexicographic order: a dominator always comes before what it dominates
        if not finite[i]:
            continue
        p = points[i]
        if any(np.all(points[j] <= p) and np.any(points[j] < p) for j in front):
            mask[i] = False
        else:
            front.append(i)
    return mask
