"""gsa_search.report.hypervolume: exact hypervolume against brute force, and its history over a study."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from gsa_search.report.hypervolume import hypervolume, hypervolume_history, reference_point

DIRECTION_SETS = [
    ("maximize", "minimize"),
    ("minimize", "minimize"),
    ("maximize", "maximize"),
    ("minimize", "maximize"),
    ("maximize", "minimize", "minimize"),
    ("minimize", "minimize", "minimize"),
    ("maximize", "maximize", "minimize"),
    ("minimize", "maximize", "maximize"),
]


def brute_force(values: np.ndarray, directions: tuple[str, ...], reference: np.ndarray) -> float:
    """Volume of the union of the boxes between each point and the reference, by inclusion-exclusion,
    worked out in the objectives' own directions (no conversion to minimisation)."""
    maximize = np.array([d == "maximize" for d in directions])
    better = np.where(maximize, values > reference, values < reference)
    points = [p for p, ok in zip(values, better) if np.all(np.isfinite(p)) and ok.all()]
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            stack = np.array(subset)
            corner = np.where(maximize, stack.min(axis=0), stack.max(axis=0))  # the intersection's far corner
            total += (-1) ** (size + 1) * float(np.prod(np.abs(corner - reference)))
    return total


def grid_count(values: np.ndarray, directions: tuple[str, ...], reference: np.ndarray) -> float:
    """For integer coordinates: the number of unit cells some point dominates (cell centres tested)."""
    maximize = np.array([d == "maximize" for d in directions])
    lows = np.minimum(values.min(axis=0), reference).astype(int)
    highs = np.maximum(values.max(axis=0), reference).astype(int)
    axes = [np.arange(lo, hi) + 0.5 for lo, hi in zip(lows, highs)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(directions))
    inside_ref = np.where(maximize, centres > reference, centres < reference).all(axis=1)
    covered = np.zeros(len(centres), dtype=bool)
    for p in values:
        covered |= np.where(maximize, centres < p, centres > p).all(axis=1)
    return float((covered & inside_ref).sum())


def random_points(rng: np.random.Generator, n: int, k: int, *, integer: bool = False) -> np.ndarray:
    if integer:  # few distinct values: many ties and duplicates
        return rng.integers(0, 6, size=(n, k)).astype(float)
    return rng.random((n, k))


def reference_for(directions: tuple[str, ...], *, integer: bool = False) -> np.ndarray:
    # a reference that some points do not dominate: they must be ignored
    low, high = (1.0, 5.0) if integer else (0.15, 0.85)
    return np.array([low if d == "maximize" else high for d in directions])


@pytest.mark.parametrize("directions", DIRECTION_SETS, ids=lambda d: "-".join(x[:3] for x in d))
@pytest.mark.parametrize("seed", range(6))
def test_matches_inclusion_exclusion_on_random_points(directions: tuple[str, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    values = random_points(rng, n, len(directions))
    reference = reference_for(directions)
    assert hypervolume(values, directions, reference) == pytest.approx(brute_force(values, directions, reference),
                                                                       rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("directions", DIRECTION_SETS, ids=lambda d: "-".join(x[:3] for x in d))
@pytest.mark.parametrize("seed", range(4))
def test_ties_and_duplicates_match_a_cell_count(directions: tuple[str, ...], seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    values = random_points(rng, 12, len(directions), integer=True)
    values = np.vstack([values, values[:3]])  # exact duplicates
    reference = reference_for(directions, integer=True)
    expected = grid_count(values, directions, reference)
    assert hypervolume(values, directions, reference) == pytest.approx(expected, abs=1e-9)
    few = np.vstack([values[:5], values[:2]])  # inclusion-exclusion too, on a small set with duplicates
    assert hypervolume(few, directions, reference) == pytest.approx(brute_force(few, directions, reference), abs=1e-9)


def test_points_that_do_not_dominate_the_reference_add_nothing() -> None:
    directions = ("maximize", "minimize")
    reference = [0.0, 10.0]
    inside = [[0.5, 4.0]]
    outside = [[0.9, 11.0], [-0.1, 1.0], [0.0, 2.0], [0.7, 10.0], [np.nan, 1.0], [0.9, np.inf]]
    assert hypervolume(inside + outside, directions, reference) == pytest.approx(0.5 * 6.0)
    assert hypervolume(outside, directions, reference) == 0.0
    assert hypervolume(np.zeros((0, 2)), directions, reference) == 0.0


def test_a_mix_of_directions_is_the_mirror_of_minimisation() -> None:
    rng = np.random.default_rng(7)
    values = rng.random((20, 3))
    reference = np.array([1.0, 1.0, 1.0])
    base = hypervolume(values, ["minimize"] * 3, reference)
    mirrored = values.copy()
    mirrored[:, 0] = -mirrored[:, 0]
    assert hypervolume(mirrored, ["maximize", "minimize", "minimize"], [-1.0, 1.0, 1.0]) == pytest.approx(base)


def test_single_box_and_single_objective() -> None:
    assert hypervolume([[0.5, 1.0, 1.0]], ["maximize", "minimize", "minimize"], [0.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert hypervolume([[0.25], [0.75]], ["maximize"], [0.0]) == pytest.approx(0.75)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_agrees_with_optunas_private_wfg_on_larger_sets(k: int) -> None:
    """Cross-check only: ``optuna._hypervolume`` is private, so it is never used by the library."""
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # pragma: no cover - private API moved
        pytest.skip("optuna._hypervolume.compute_hypervolume is not importable in this Optuna")
    rng = np.random.default_rng(k)
    for _ in range(5):
        values = rng.random((60, k))
        reference = np.full(k, 1.0)
        assert hypervolume(values, ["minimize"] * k, reference) == pytest.approx(
            compute_hypervolume(values, reference), rel=1e-10)


def test_docstring_examples_run() -> None:
    import doctest

    import gsa_search.pareto as pareto_module
    import gsa_search.report.hypervolume as module

    attempted = 0
    for mod in (module, pareto_module):
        result = doctest.testmod(mod)
        assert result.failed == 0
        attempted += result.attempted
    assert attempted >= 3


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="reference must be 2 finite numbers"):
        hypervolume([[1.0, 2.0]], ["maximize", "minimize"], [0.0])
    with pytest.raises(ValueError, match="direction must be"):
        hypervolume([[1.0, 2.0]], ["up", "minimize"], [0.0, 3.0])
    with pytest.raises(ValueError, match="objectives in the values"):
        hypervolume([[1.0, 2.0, 3.0]], ["maximize", "minimize"], [0.0, 3.0])
    with pytest.raises(ValueError, match="at least one objective"):
        hypervolume([[1.0]], [], [])


# --- history over a results table --------------------------------------------------------------------------


def _table() -> pd.DataFrame:
    rows = [
        (0, "complete", 0.50, 4e6, 3),
        (1, "pruned", np.nan, 1e6, 1),
        (2, "complete", 0.70, 8e6, 3),
        (3, "complete", 0.40, 6e6, 3),  # dominated by trial 0: no change
        (4, "infeasible", 0.0, 2e7, 0),
        (5, "failed", np.nan, np.nan, 2),
        (6, "complete", 0.60, 2e6, 3),
        (7, "running", np.nan, 3e6, 1),
    ]
    return pd.DataFrame(rows, columns=["trial", "state", "accuracy", "flops", "epochs_run"])


def test_reference_point_is_zero_accuracy_and_1_1_times_the_largest_cost() -> None:
    table = _table()
    assert reference_point(table, ["accuracy", "flops"]) == pytest.approx([0.0, 1.1 * 8e6])  # infeasible 2e7 ignored
    assert reference_point(table.iloc[0:0], ["accuracy", "flops"]) is None
    assert reference_point(table, ["accuracy"]) == [0.0]


def test_history_grows_with_completed_trials_only_and_counts_all_compute() -> None:
    table = _table()
    objectives = ["accuracy", "flops"]
    reference = reference_point(table, objectives)
    history = hypervolume_history(table, objectives, reference)
    assert history["trial"].tolist() == list(range(8))
    assert history["cumulative_epochs"].tolist() == np.cumsum(table["epochs_run"]).tolist()
    hv = history["hypervolume"].to_numpy()
    assert np.all(np.diff(hv) >= 0)
    for i, row in history.iterrows():
        done = table[(table["trial"] <= row["trial"]) & (table["state"] == "complete")]
        expected = hypervolume(done[objectives].to_numpy(), ["maximize", "minimize"], reference)
        assert row["hypervolume"] == pytest.approx(expected), i
    assert hv[3] == hv[2] and hv[4] == hv[3] and hv[5] == hv[4] and hv[7] == hv[6]
    assert hv[-1] == pytest.approx(hypervolume(table[table["state"] == "complete"][objectives].to_numpy(),
                                               ["maximize", "minimize"], reference))


def test_history_without_completed_trials_is_empty() -> None:
    table = _table()
    table["state"] = "failed"
    assert hypervolume_history(table, ["accuracy", "flops"]).empty
