"""How the hypervolume grew over a study, and the reference point reports use.

Status: stable (pure: numpy and pandas; no Optuna, no plotting). The hypervolume itself is
:func:`gsa_search.pareto.hypervolume` (re-exported here). The *hypervolume* of a point set is
the size (area for 2 objectives, volume for 3) of the region that the points dominate and that is
bounded by a *reference point* (Zitzler & Thiele 1998): larger is better, and it only grows as a
study adds trials. ``directions`` says per objective whether larger (``maximize``) or smaller
(``minimize``) is better; the values are turned into minimisation form first (maximised columns
negated, as in :func:`gsa_search.pareto.to_minimization`).

Algorithm: exact slicing ("hypervolume by slicing objectives", HSO). Sort by the last objective;
between two consecutive values of it the dominated region's cross-section is the hypervolume of the
points seen so far in one objective fewer; the 2-D case is a sort and a running-minimum sweep.
``O(n log n)`` for 2 objectives, ``O(n^2 log n)`` for 3 (only the non-dominated points are sliced),
exact for any number of objectives (``O(n^(k-1) log n)``: intended for 2 and 3).

Why our own: Optuna 5.0 has no public hypervolume function. ``optuna._hypervolume.compute_hypervolume``
(WFG algorithm) is private (a leading underscore; it may change without notice) and the public
``optuna.visualization.plot_hypervolume_history`` only draws a plotly figure; besides, the domain
library must not import Optuna (``runners -> search_spaces -> gsa_search``). The tests cross-check
it against brute force and against Optuna's private WFG where it is importable.

Reference point (:func:`reference_point`): for a maximised objective 0 (accuracies are in [0, 1],
throughput is >= 0), for a minimised one 1.1 x the largest value among the completed trials (FLOPs,
params, latency): every completed trial then counts, the worst only by a thin slab.

Example:
    >>> hypervolume([[0.9, 2.0], [0.5, 1.0]], ["maximize", "minimize"], [0.0, 4.0])
    2.3
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.pareto import hypervolume, pareto_mask

__all__ = ["hypervolume", "reference_point", "hypervolume_history", "REFERENCE_RULE"]

REFERENCE_RULE = "0 for a maximised objective; 1.1 x the largest value among completed trials for a minimised one"
_MARGIN = 1.1


def reference_point(table: pd.DataFrame, objectives: Sequence[str]) -> list[float] | None:
    """The default reference point for ``objectives`` (see :data:`REFERENCE_RULE`), from the
    completed trials of ``table``; ``None`` when a minimised objective has no finite value yet."""
    done = table[table["state"] == "complete"] if "state" in table else table
    reference = []
    for objective in objectives:
        if M.DIRECTIONS[objective] == "maximize":
            reference.append(0.0)
            continue
        column = pd.to_numeric(done[objective], errors="coerce") if objective in done else pd.Series(dtype=float)
        column = column[np.isfinite(column)]
        if column.empty:
            return None
        largest = float(column.max())
        reference.append(largest * _MARGIN if largest > 0 else (largest * (2 - _MARGIN) if largest < 0 else 1.0))
    return reference


def hypervolume_history(table: pd.DataFrame, objectives: Sequence[str],
                        reference: Sequence[float] | None = None) -> pd.DataFrame:
    """The hypervolume after each trial, in trial-number order, and the compute spent until then.

    One row per trial of ``table`` (every state: pruned and failed trials cost compute too) with
    columns ``trial``, ``state``, ``epochs_run``, ``cumulative_epochs`` (epochs trained by this
    trial and all earlier ones) and ``hypervolume`` (of the *completed* trials up to and including
    this one, bounded by ``reference``; default :func:`reference_point`). Empty when there is no
    reference (no completed trial).
    """
    columns = ["trial", "state", "epochs_run", "cumulative_epochs", "hypervolume"]
    objectives = list(objectives)
    if reference is None:
        reference = reference_point(table, objectives)
    if reference is None or table.empty:
        return pd.DataFrame(columns=columns)
    directions = [M.DIRECTIONS[o] for o in objectives]
    ordered = table.sort_values("trial", kind="stable")
    epochs = pd.to_numeric(ordered.get("epochs_run", pd.Series(0, index=ordered.index)), errors="coerce").fillna(0)
    rows, front, current = [], np.zeros((0, len(objectives))), 0.0
    cumulative = 0
    for (_, row), spent in zip(ordered.iterrows(), epochs):
        cumulative += int(spent)
        if row["state"] == "complete":
            point = np.array([float(row[o]) for o in objectives], dtype=float)
            if np.all(np.isfinite(point)):
                candidate = np.vstack([front, point])
                mask = pareto_mask(candidate, directions)
                if mask[-1]:  # a dominated point cannot change the hypervolume
                    front = candidate[mask]
                    current = hypervolume(front, directions, reference)
        rows.append({"trial": int(row["trial"]), "state": row["state"], "epochs_run": int(spent),
                     "cumulative_epochs": cumulative, "hypervolume": current})
    history = pd.DataFrame(rows, columns=columns)
    history.attrs["reference"] = list(reference)
    return history
