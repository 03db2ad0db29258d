"""Pareto fronts of trial results: which points no other point dominates, and the hypervolume they cover.

Status: stable (pure; no plotting). ``directions`` says per objective whether larger (``maximize``)
or smaller (``minimize``) is better. A point *dominates* another if it is at least as good in every
objective and strictly better in one; equal points do not dominate each other, so duplicates on
the front are all kept.

Comparing studies: :func:`dominance_counts` says how many points of one set dominate at least one
point of another set, and how many are dominated by one of them (the two numbers of a dominance
table); :func:`union_hypervolume` is the hypervolume of each set and of their union, all bounded by
the same reference point (only then are the numbers comparable).

Example:
    >>> pareto_mask([[0.9, 10], [0.8, 5], [0.7, 20]], ["maximize", "minimize"]).tolist()
    [True, True, False]
    >>> dominance_counts([[0.9, 10], [0.6, 30]], [[0.8, 10]], ["maximize", "minimize"])
    (1, 1)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pareto_mask", "dominates", "to_minimization", "hypervolume", "dominance_counts",
           "union_hypervolume"]


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


def _hv_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of ``points`` (minimisation form, every point strictly below ``ref``)."""
    n, k = points.shape
    if n == 0:
        return 0.0
    if k == 1:
        return float(ref[0] - points[:, 0].min())
    if k == 2:
        order = np.lexsort((points[:, 1], points[:, 0]))  # by x, then y
        x, y = points[order, 0], points[order, 1]
        best_y = np.minimum.accumulate(y)  # covered y-range over [x_i, x_{i+1}) is [best_y_i, ref_y]
        widths = np.diff(np.append(x, ref[0]))
        return float(np.sum(widths * (ref[1] - best_y)))
    # slice along the last objective: between z_i and z_{i+1}, the points with z <= z_i count
    order = np.argsort(points[:, -1], kind="stable")
    pts = points[order]
    z = np.append(pts[:, -1], ref[-1])
    volume = 0.0
    for i in range(n):
        depth = z[i + 1] - z[i]
        if depth > 0:
            head = pts[: i + 1, :-1]
            head = head[pareto_mask(head, ["minimize"] * (k - 1))]  # the rest adds nothing
            volume += _hv_min(head, ref[:-1]) * depth
    return float(volume)


def hypervolume(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str],
                reference: Sequence[float]) -> float:
    """Exact hypervolume of ``values`` (``(n, k)``, one row per trial) bounded by ``reference``.

    Two objectives: sort and sweep, ``O(n log n)``; more: slices along the last objective, each
    slice's front measured recursively (exact; fine for the 2-3 objectives of a search). Checked in
    the tests against inclusion-exclusion, a cell count and Optuna's private WFG implementation
    (Optuna has no public hypervolume function).

    Rows with NaN, and rows that are not strictly better than ``reference`` in every objective, add
    nothing (they dominate no part of the box). Duplicates and dominated rows are allowed.

    Example:
        >>> hypervolume([[0.5, 1.0, 1.0]], ["maximize", "minimize", "minimize"], [0.0, 2.0, 3.0])
        1.0
    """
    directions = list(directions)
    if not directions:
        raise ValueError("hypervolume needs at least one objective (directions is empty)")
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (len(directions),) or not np.all(np.isfinite(ref)):
        raise ValueError(f"reference must be {len(directions)} finite numbers (one per direction), got {reference!r}")
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        to_minimization(np.zeros((0, len(directions))), directions)  # validates the directions
        return 0.0
    points = to_minimization(array.reshape(len(array), -1), directions)
    ref_min = to_minimization(ref.reshape(1, -1), directions)[0]
    keep = np.all(np.isfinite(points), axis=1) & np.all(points < ref_min, axis=1)
    points = points[keep]
    if len(points) > 1:
        points = points[pareto_mask(points, ["minimize"] * len(directions))]
    return _hv_min(points, ref_min)


def _dominance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))``: ``a[i]`` dominates ``b[j]`` (minimisation form; NaN rows never do)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=bool)
    left, right = a[:, None, :], b[None, :, :]  # (n_a, 1, k) against (1, n_b, k)
    return np.all(left <= right, axis=2) & np.any(left < right, axis=2)


def dominance_counts(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray,
                     directions: Sequence[str]) -> tuple[int, int]:
    """``(dominating, dominated)``: how many rows of ``a`` dominate at least one row of ``b``, and how
    many rows of ``a`` at least one row of ``b`` dominates. Equal rows do not dominate each other;
    duplicated rows of ``a`` count once each; rows with NaN neither dominate nor are dominated.

    Example:
        >>> dominance_counts([[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [2.0, 0.5]], ["minimize", "minimize"])
        (0, 0)
    """
    k = len(directions)
    left = to_minimization(np.asarray(a, dtype=float).reshape(-1, k), directions)
    right = to_minimization(np.asarray(b, dtype=float).reshape(-1, k), directions)
    dominating = int(_dominance_matrix(left, right).any(axis=1).sum())
    dominated = int(_dominance_matrix(right, left).any(axis=0).sum())
    return dominating, dominated


def union_hypervolume(point_sets: Sequence[Sequence[Sequence[float]] | np.ndarray], directions: Sequence[str],
                      reference: Sequence[float]) -> tuple[list[float], float]:
    """The hypervolume of each point set and of their union, all bounded by one ``reference``.

    Example:
        >>> union_hypervolume([[[1.0, 2.0]], [[2.0, 1.0]]], ["minimize", "minimize"], [3.0, 3.0])
        ([2.0, 2.0], 3.0)
    """
    k = len(directions)
    arrays = [np.asarray(points, dtype=float).reshape(-1, k) for points in point_sets]
    each = [hypervolume(points, directions, reference) for points in arrays]
    union = hypervolume(np.vstack(arrays) if arrays else np.zeros((0, k)), directions, reference)
    return each, union
