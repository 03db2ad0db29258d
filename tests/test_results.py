"""The results table: fixed columns whichever backend wrote the rows, atomic saves, CSV/Parquet round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from runners.results import BASE_COLUMNS, load_results, pareto_front, results_table, save_results


def _rows():
    return [
        {"trial": 1, "state": "complete", "accuracy": 0.8, "flops": 5e6, "curve": [0.5, 0.8], "param_mixer": "gsa",
         "param_rel_span_axial": "global", "config": {"model": {"backbone": "resnet"}}},
        {"trial": 0, "state": "complete", "accuracy": 0.9, "flops": 9e6, "curve": [0.6, 0.9], "param_mixer": "conv"},
        {"trial": 2, "state": "failed", "reason": "DivergenceError: loss nan", "flops": 1e6, "param_mixer": "mhsa"},
        {"trial": 3, "state": "infeasible", "reason": "over budget", "accuracy": 0.0, "flops": 1e9},
    ]


def test_columns_are_fixed_and_rows_sorted():
    table = results_table(_rows())
    assert list(table.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert [c for c in table.columns if c.startswith("param_")] == ["param_mixer", "param_rel_span_axial"]
    assert list(table["trial"]) == [0, 1, 2, 3]
    assert json.loads(table.loc[0, "curve"]) == [0.6, 0.9]
    assert np.isnan(table.loc[2, "accuracy"]) and table.loc[2, "reason"].startswith("DivergenceError")
    empty = results_table([])
    assert list(empty.columns) == list(BASE_COLUMNS) and empty.empty


def test_front_uses_completed_trials_only():
    front = pareto_front(results_table(_rows()), ["accuracy", "flops"])
    assert sorted(front["trial"]) == [0, 1]  # the infeasible trial's low accuracy/high cost never counts
    assert list(pareto_front(results_table(_rows()), ["flops"])["trial"]) == [1]


def test_save_is_atomic_and_round_trips(tmp_path):
    table = results_table(_rows())
    paths = save_results(table, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv", "trials.parquet"]  # no temporary left
    for path in paths:
        back = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        assert list(back["trial"]) == [0, 1, 2, 3]
        assert back["accuracy"].iloc[:2].tolist() == [0.9, 0.8]
    pd.testing.assert_frame_equal(load_results(tmp_path), table, check_dtype=False)
