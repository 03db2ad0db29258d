"""Pareto-aware pruning rule, MOASHA re-implementation, exact 2-D hypervolume, and the benchmark replay."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from gsa_search.pareto import hypervolume
from gsa_search.pruning import (
    Decision,
    MOASHARule,
    ParetoPruningRule,
    TrialRecord,
    epsilon_net_ranks,
    moasha_decide,
    nondominated_order,
    pareto_efficient,
)

RULE = ParetoPruningRule(grace_epochs=2, rung_every=1, min_dominators=2, margin=0.02)


def rec(key, flops, curve, finished=False, **cost):
    return TrialRecord(key=key, cost={"flops": flops, **cost}, curve=curve, finished=finished)


# --- ours ------------------------------------------------------------------------------------------


def test_dominated_by_cheaper_trials_is_pruned():
    others = [rec(0, 1e6, [0.5, 0.80, 0.9]), rec(1, 2e6, [0.5, 0.75, 0.9]), rec(2, 9e6, [0.9, 0.99, 0.99])]
    decision = RULE.decide(rec(3, 5e6, [0.3, 0.41]), others)
    assert isinstance(decision, Decision)
    assert decision.prune
    assert decision.dominators == (0, 1)  # best first; #2 is more expensive and does not count
    assert decision.reason == ("accuracy 0.41 at epoch 2 is below 2 trials of equal or lower flops "
                               "(#0 0.80, #1 0.75) by more than the 0.02 margin")


def test_cheaper_than_all_others_is_kept():
    others = [rec(k, 5e6 + k, [0.9, 0.99]) for k in range(5)]
    decision = RULE.decide(rec(9, 1e6, [0.1, 0.2]), others)
    assert not decision.prune and decision.dominators == ()


def test_better_trials_that_cost_more_do_not_count():
    others = [rec(0, 3e6, [0.9, 0.95]), rec(1, 4e6, [0.9, 0.96]), rec(2, 1e6, [0.2, 0.3])]
    decision = RULE.decide(rec(3, 2e6, [0.4, 0.5]), others)
    assert not decision.prune
    assert "0 trials of equal or lower flops" in decision.reason


def test_equal_cost_counts_as_cheaper_or_equal():
    others = [rec(0, 2e6, [0.9, 0.9]), rec(1, 2e6, [0.9, 0.9])]
    assert RULE.decide(rec(2, 2e6, [0.4, 0.5]), others).prune


def test_within_the_noise_margin_is_kept():
    others = [rec(0, 1e6, [0.5, 0.52]), rec(1, 1e6, [0.5, 0.519])]
    decision = RULE.decide(rec(2, 2e6, [0.5, 0.5]), others)
    assert not decision.prune  # 0.52 - 0.5 is not *more* than the 0.02 margin
    assert RULE.decide(rec(2, 2e6, [0.5, 0.49]), others).prune  # 0.519 > 0.49 + 0.02


def test_before_the_grace_period_is_kept():
    others = [rec(k, 1e6, [0.9, 0.9, 0.9]) for k in range(5)]
    decision = RULE.decide(rec(9, 2e6, [0.1]), others)
    assert not decision.prune and "grace period" in decision.reason
    assert not RULE.is_rung(1) and RULE.is_rung(2)


def test_not_at_a_rung_is_kept():
    rule = ParetoPruningRule(grace_epochs=2, rung_every=3, min_dominators=1, margin=0.0)
    assert [e for e in range(1, 12) if rule.is_rung(e)] == [2, 5, 8, 11]
    others = [rec(0, 1e6, [0.9] * 5)]
    decision = rule.decide(rec(1, 2e6, [0.1, 0.1, 0.1]), others)
    assert not decision.prune and "not a rung" in decision.reason
    assert rule.decide(rec(1, 2e6, [0.1] * 5), others).prune


def test_fewer_than_min_dominators_is_kept():
    others = [rec(0, 1e6, [0.9, 0.9]), rec(1, 1e6, [0.3, 0.3])]
    decision = RULE.decide(rec(2, 2e6, [0.4, 0.4]), others)
    assert not decision.prune and decision.dominators == (0,)
    assert "1 trial of equal or lower flops better by more than 0.02 (#0 0.90), 2 needed" in decision.reason
    assert ParetoPruningRule(grace_epochs=2, rung_every=1, min_dominators=1, margin=0.02).decide(
        rec(2, 2e6, [0.4, 0.4]), others).prune


def test_nan_accuracies_never_count():
    others = [rec(0, 1e6, [0.9, float("nan")]), rec(1, 1e6, [float("nan"), float("nan")]), rec(2, 1e6, [0.9, 0.9])]
    decision = RULE.decide(rec(3, 2e6, [0.1, 0.1]), others)
    assert not decision.prune and decision.dominators == (2,)
    own_nan = RULE.decide(rec(3, 2e6, [0.1, float("nan")]), [rec(k, 1e6, [0.9, 0.9]) for k in range(4)])
    assert not own_nan.prune and "NaN" in own_nan.reason


def test_only_trials_that_reached_the_epoch_count():
    others = [rec(0, 1e6, [0.9]), rec(1, 1e6, [0.9]), rec(2, 1e6, [0.9, 0.9, 0.9])]
    assert RULE.decide(rec(3, 2e6, [0.1, 0.1]), others).dominators == (2,)


def test_the_trial_itself_and_finished_trials():
    me = rec(0, 2e6, [0.1, 0.1])
    assert not RULE.decide(me, [rec(0, 1e6, [0.9, 0.9]), rec(0, 1e6, [0.9, 0.9])]).prune  # same key: itself
    done = rec(0, 2e6, [0.1, 0.1], finished=True)
    assert not RULE.decide(done, [rec(k, 1e6, [0.9, 0.9]) for k in (1, 2)]).prune
    finished_others = [rec(k, 1e6, [0.9, 0.9, 0.9], finished=True) for k in (1, 2)]
    assert RULE.decide(me, finished_others).prune  # finished others count like running ones


def test_every_cost_key_must_be_lower_or_equal():
    rule = ParetoPruningRule(grace_epochs=1, rung_every=1, min_dominators=1, margin=0.0, cost_keys=("flops", "params"))
    me = rec(9, 2e6, [0.1], params=1e5)
    assert not rule.decide(me, [rec(0, 1e6, [0.9], params=2e5)]).prune  # cheaper FLOPs, more params
    assert rule.decide(me, [rec(0, 1e6, [0.9], params=1e5)]).prune
    assert not rule.decide(me, [TrialRecord(0, {"flops": 1e6}, [0.9])]).prune  # no params: cannot compare
    assert not rule.decide(me, [TrialRecord(0, {"flops": 1e6, "params": float("nan")}, [0.9])]).prune


def test_no_decision_at_the_last_epoch():
    rule = ParetoPruningRule(grace_epochs=1, rung_every=1, min_dominators=1, margin=0.0, max_epochs=3)
    assert [e for e in range(1, 6) if rule.is_rung(e)] == [1, 2]
    others = [rec(0, 1e6, [0.9, 0.9, 0.9])]
    assert rule.decide(rec(1, 2e6, [0.1, 0.1]), others).prune
    assert not rule.decide(rec(1, 2e6, [0.1, 0.1, 0.1]), others).prune


def test_decision_reason_is_one_line_and_lists_at_most_four():
    others = [rec(k, 1e6, [0.9, 0.9 - k / 100]) for k in range(6)]
    decision = RULE.decide(rec(9, 2e6, [0.1, 0.1]), others)
    assert decision.prune and "\n" not in decision.reason
    assert "(#0 0.90, #1 0.89, #2 0.88, #3 0.87, ...)" in decision.reason
    assert decision.dominators == (0, 1, 2, 3, 4, 5)


def test_rule_is_frozen_and_has_benchmark_defaults():
    rule = ParetoPruningRule()
    with pytest.raises(Exception):
        rule.margin = 0.5  # type: ignore[misc]
    # the setting runners/bench_pruning.py chose (see the class docstring for its numbers)
    assert (rule.grace_epochs, rule.rung_every, rule.min_dominators, rule.margin) == (2, 2, 1, 0.05)
    assert rule.cost_keys == ("flops",) and rule.max_epochs is None
    assert [e for e in range(1, 9) if rule.is_rung(e)] == [2, 4, 6, 8]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"grace_epochs": 0}, "grace_epochs"),
        ({"grace_epochs": 1.5}, "grace_epochs"),
        ({"rung_every": 0}, "rung_every"),
        ({"min_dominators": 0}, "min_dominators"),
        ({"min_dominators": True}, "min_dominators"),
        ({"margin": -0.1}, "margin"),
        ({"margin": float("nan")}, "margin"),
        ({"margin": 1.0}, "margin"),
        ({"cost_keys": "flops"}, "cost_keys"),
        ({"cost_keys": ()}, "cost_keys"),
        ({"cost_keys": ("flops", "flops")}, "cost_keys"),
        ({"cost_keys": ("flops", "")}, "cost_keys"),
        ({"max_epochs": 0}, "max_epochs"),
    ],
)
def test_rule_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ParetoPruningRule(**kwargs)


def test_trial_record_validation_and_missing_cost():
    with pytest.raises(ValueError, match="curve"):
        TrialRecord(0, {"flops": 1.0}, ["a"])
    with pytest.raises(ValueError, match="curve"):
        TrialRecord(0, {"flops": 1.0}, "0.5")
    with pytest.raises(ValueError, match="cost"):
        TrialRecord(0, [1.0], [0.5])  # type: ignore[arg-type]
    assert TrialRecord(0, {"flops": 1}, np.array([0.5, 0.6])).curve == (0.5, 0.6)
    with pytest.raises(ValueError, match="flops"):
        RULE.decide(TrialRecord(0, {"params": 1.0}, [0.1, 0.1]), [])
    with pytest.raises(ValueError, match="non-finite"):
        RULE.decide(TrialRecord(0, {"flops": float("inf")}, [0.1, 0.1]), [])


# --- MOASHA ---------------------------------------------------------------------------------------------

# (accuracy at epoch 1, FLOPs) of four trials that reached rung 1 before the new one.
RUNG = {"A": (0.9, 4e6), "B": (0.5, 1e6), "C": (0.7, 2e6), "D": (0.6, 3e6)}


def _rung(new):
    others = [rec(k, f, [a, a]) for k, (a, f) in RUNG.items()]
    return rec("T", new[1], [new[0]]), others


def test_moasha_hand_computed_ranking():
    # min-form rows A(-.9,4e6) B(-.5,1e6) C(-.7,2e6) D(-.6,3e6) T(-.4,2.5e6): front 1 = {A, B, C}
    # (C dominates D and T); its epsilon net starts at the most accurate (A), then the farthest
    # (B, 3e6 away; distances are in effect FLOPs), then C; front 2 = {D, T}: D (more accurate), T.
    points = np.array([[-0.9, 4e6], [-0.5, 1e6], [-0.7, 2e6], [-0.6, 3e6], [-0.4, 2.5e6]])
    assert pareto_efficient(points).tolist() == [True, True, True, False, False]
    assert epsilon_net_ranks(points[:3]).tolist() == [0, 1, 2]
    assert nondominated_order(points) == [0, 1, 2, 3, 4]
    rule = MOASHARule(grace_period=1, reduction_factor=3, max_t=4)
    assert rule.rung_levels() == (1, 3)
    trial, others = _rung((0.4, 2.5e6))
    decision = rule.decide(trial, others)
    assert decision.prune  # position 4 of 5: 4/5 > 1/3
    assert decision.dominators == ("A", "B", "C", "D")
    assert decision.reason.startswith("rank 5 of 5 at rung 1 (epoch 1)")


def test_moasha_top_fraction_continues():
    # T(0.95, 5e6) is the most accurate: front 1 = {A, B, C, T}, net seeded at T, then B (4e6
    # away); A and C are both 1e6 from their nearest, C by 0.2 in accuracy, A by 0.05: C first.
    trial, others = _rung((0.95, 5e6))
    rule = MOASHARule(grace_period=1, reduction_factor=3, max_t=4)
    assert nondominated_order(np.array([[-0.9, 4e6], [-0.5, 1e6], [-0.7, 2e6], [-0.6, 3e6], [-0.95, 5e6]])) == [4, 1, 2, 0, 3]
    decision = rule.decide(trial, others)
    assert not decision.prune and decision.dominators == ()


def test_moasha_eta_sets_the_fraction_kept():
    # T(0.8, 1.5e6) dominates C and D: front 1 = {A, B, T} in net order A, B, T -> position 2 of 5.
    trial, others = _rung((0.8, 1.5e6))
    assert MOASHARule(grace_period=1, reduction_factor=3, max_t=4).decide(trial, others).prune  # 2/5 > 1/3
    assert not MOASHARule(grace_period=1, reduction_factor=2, max_t=4).decide(trial, others).prune  # 2/5 <= 1/2
    assert moasha_decide(trial, others, grace_period=1, reduction_factor=2, max_t=4) == \
        MOASHARule(grace_period=1, reduction_factor=2, max_t=4).decide(trial, others)


def test_moasha_syne_tune_literal_stops_the_best_trial():
    # Syne Tune 0.16 tests order[-1] / n (the index of the row ranked last) instead of the new row's
    # position: here the most accurate trial (position 0) is stopped because D, row 3, is ranked last.
    trial, others = _rung((0.95, 5e6))
    points = np.array([[-0.9, 4e6], [-0.5, 1e6], [-0.7, 2e6], [-0.6, 3e6], [-0.95, 5e6]])
    assert nondominated_order(points, syne_tune_literal=True) == [4, 1, 2, 0, 3]  # front order is an involution here
    # front[ranks] vs front[order] differ once the net order is not its own inverse:
    rows = np.array([[0.0, 10.0], [1.0, 9.0], [10.0, 0.0], [5.0, 5.0]])  # one front
    assert epsilon_net_ranks(rows).tolist() == [0, 3, 1, 2]  # net order: 0, then 2 (farthest), 3, 1
    assert nondominated_order(rows) == [0, 2, 3, 1]
    assert nondominated_order(rows, syne_tune_literal=True) == [0, 3, 1, 2]
    literal = MOASHARule(grace_period=1, reduction_factor=3, max_t=4, syne_tune_literal=True).decide(trial, others)
    assert literal.prune and "tests 3/5" in literal.reason


def test_moasha_first_at_a_rung_and_rung_epochs():
    rule = MOASHARule(grace_period=1, reduction_factor=3, max_t=30)
    assert rule.rung_levels() == (1, 3, 9, 27)
    assert rule.rung_epochs() == {1: 1, 3: 3, 9: 9, 27: 27}
    assert not rule.decide(rec(0, 1e6, [0.0]), []).prune
    assert not rule.decide(rec(0, 1e6, [0.0, 0.0]), [rec(1, 1e5, [0.9, 0.9])]).prune  # epoch 2: no rung
    half = MOASHARule(grace_period=1, reduction_factor=1.5, max_t=5)
    assert sorted(half.rung_epochs()) == [1, 2, 3, 4]  # levels 1, 1.5, 2.25, 3.375 recorded at ceil
    assert not rule.decide(rec(0, 1e6, [0.0] * 30), [rec(1, 1e5, [0.9] * 30)]).prune  # at max_t: done


def test_moasha_nan_accuracy_counts_as_the_worst_accuracy():
    others = [rec(k, 5e6, [0.1]) for k in range(3)]
    rule = MOASHARule(grace_period=1, reduction_factor=2, max_t=4)
    assert rule.decide(rec("T", 9e6, [float("nan")]), others).prune  # worst accuracy and dearest: last
    assert not rule.decide(rec("T", 1e6, [float("nan")]), others).prune  # still the cheapest: first front


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"grace_period": 0}, "grace_period"),
        ({"reduction_factor": 1.0}, "reduction_factor"),
        ({"max_t": 0}, "max_t"),
        ({"max_t": 2, "grace_period": 3}, "max_t"),
        ({"cost_keys": []}, "cost_keys"),
        ({"dim": 2}, "dim"),
    ],
)
def test_moasha_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MOASHARule(**kwargs)


# --- hypervolume ------------------------------------------------------------------------------------------


def _inclusion_exclusion(points, ref):
    """Area of the union of boxes [x, rx] x [y, ry] (minimisation form) by inclusion-exclusion."""
    pts = [p for p in points if p[0] < ref[0] and p[1] < ref[1]]
    area = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, size):
            x, y = max(p[0] for p in subset), max(p[1] for p in subset)
            area += (-1) ** (size + 1) * (ref[0] - x) * (ref[1] - y)
    return area


def _grid(points, ref):
    """Exact union area by coordinate compression: a cell is covered if a point is at or below its corner."""
    pts = [p for p in points if p[0] < ref[0] and p[1] < ref[1]]
    xs = sorted({p[0] for p in pts} | {ref[0]})
    ys = sorted({p[1] for p in pts} | {ref[1]})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(p[0] <= x0 and p[1] <= y0 for p in pts):
                area += (x1 - x0) * (y1 - y0)
    return area


def hypervolume_2d(points, reference, directions=("maximize", "minimize")):
    """The 2-D sweep of :func:`gsa_search.pareto.hypervolume`, with (accuracy up, FLOPs down) as default."""
    return hypervolume(points, directions, reference)


@pytest.mark.parametrize("seed", range(25))
def test_hypervolume_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    points = rng.uniform(0, 1, size=(n, 2))
    if seed % 3 == 0:  # ties and duplicates
        points = np.round(points * 4) / 4
    ref = (1.0, 1.0)
    expected = _inclusion_exclusion(points.tolist(), ref)
    assert hypervolume_2d(points, ref, ("minimize", "minimize")) == pytest.approx(expected, abs=1e-12)
    assert _grid(points.tolist(), ref) == pytest.approx(expected, abs=1e-12)
    # the same front as (accuracy up, FLOPs down)
    flipped = np.column_stack([1 - points[:, 0], points[:, 1] * 1e6])
    assert hypervolume_2d(flipped, (0.0, 1e6)) == pytest.approx(expected * 1e6, rel=1e-9)


def test_hypervolume_monte_carlo_and_edge_cases():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, size=(40, 2))
    exact = hypervolume_2d(points, (1.0, 1.0), ("minimize", "minimize"))
    samples = rng.uniform(0, 1, size=(200_000, 2))
    covered = np.zeros(len(samples), dtype=bool)
    for p in points:
        covered |= (samples[:, 0] >= p[0]) & (samples[:, 1] >= p[1])
    assert covered.mean() == pytest.approx(exact, abs=0.01)
    assert hypervolume_2d([], (0.0, 1.0)) == 0.0
    assert hypervolume_2d([[0.0, 0.5], [float("nan"), 0.1], [0.5, 2.0]], (0.0, 1.0)) == 0.0  # none beats the reference
    assert hypervolume_2d([[0.9, 2.0], [0.5, 1.0]], reference=[0.0, 4.0]) == pytest.approx(2.3)
    with pytest.raises(ValueError, match="direction"):
        hypervolume_2d([[1, 1]], (0, 0), ("up", "minimize"))
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d([[1, 1]], (0, float("nan")))
    with pytest.raises(ValueError, match="3 objectives in the values but 2 directions"):
        hypervolume_2d([[1, 1, 1]], (0, 0))


# --- benchmark replay --------------------------------------------------------------------------------------


def test_replay_truncates_pruned_trials_for_later_ones():
    from runners.bench_pruning import Recorded, replay, score

    trials = [
        Recorded(0, 1e6, (0.5, 0.6, 0.7, 0.8), 1.0),
        Recorded(1, 2e6, (0.2, 0.3, 0.9, 0.95), 2.0),  # pruned at epoch 1 by trial 0 (k=1, margin 0)
        Recorded(2, 3e6, (0.1, 0.25, 0.35, 0.5), 1.0),  # at epoch 2: trial 1 stopped at 1, only trial 0 counts
    ]
    rule = ParetoPruningRule(grace_epochs=1, rung_every=1, min_dominators=2, margin=0.0, max_epochs=4)
    result = replay(trials, rule)
    assert result.pruned == (False, False, True)
    assert [len(c) for c in result.curves] == [4, 4, 1]
    strict = ParetoPruningRule(grace_epochs=1, rung_every=1, min_dominators=1, margin=0.0, max_epochs=4)
    result = replay(trials, strict)
    assert result.pruned == (False, True, True) and [len(c) for c in result.curves] == [4, 1, 1]
    s = score(trials, result, reference=(0.0, 4e6))
    assert s["epochs"] == 6 and s["seconds"] == 4 + 2 + 1 and s["pruned"] == 2
    assert s["hv"] == pytest.approx(0.8 * 3e6)
    none = replay(trials, None)
    assert none.pruned == (False, False, False) and none.curves == tuple(t.curve for t in trials)


def _synthetic_table(path, seed, n=12, epochs=5):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        flops = float(rng.uniform(1e5, 5e6))
        ceiling = min(0.99, 0.3 + 0.6 * flops / 5e6 + rng.normal(0, 0.05))
        curve = [round(ceiling * (1 - math.exp(-(e + 1) / 2)), 4) for e in range(epochs)]
        rows.append({"trial": k, "state": "complete", "flops": flops, "curve": json.dumps(curve), "duration_s": 2.0 * epochs})
    rows.append({"trial": n, "state": "failed", "flops": float("nan"), "curve": "[]", "duration_s": 0.1})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_bench_main_replays_saved_tables(tmp_path, capsys):
    from runners import bench_pruning

    paths = []
    for seed in range(3):
        path = tmp_path / f"trials-{seed}.csv"
        _synthetic_table(path, seed)
        paths.append(str(path))
    trials, meta = bench_pruning.load_recorded(paths[0])
    assert meta["used"] == 12 and meta["skipped"] == {"failed": 1} and meta["epochs"] == 5
    assert bench_pruning.main(["--replay-only", *paths, "--reports-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "method:" in out and "reference point (accuracy 0, FLOPs 1.1 x" in out and "leave one seed out" in out
    assert "best hv ratio each family reaches within a compute budget" in out
    summary = pd.read_csv(tmp_path / "out" / "bench_pruning.csv")
    none = summary[summary["rule"] == "none"].iloc[0]
    assert none["hv_mean"] == pytest.approx(1.0) and none["compute_mean"] == pytest.approx(1.0)
    assert {"ours", "moasha", "moasha-literal"} <= set(summary["family"])
    assert (summary["compute_mean"] <= 1.0 + 1e-12).all() and (summary["hv_mean"] <= 1.0 + 1e-12).all()


def test_choose_default_prefers_targets_then_worst_seed():
    from runners.bench_pruning import choose_default, closest_moasha

    summary = pd.DataFrame([
        {"rule": "none", "family": "none", "hv_mean": 1.0, "hv_min": 1.0, "compute_mean": 1.0},
        {"rule": "ours a", "family": "ours", "hv_mean": 0.99, "hv_min": 0.96, "compute_mean": 0.5},
        {"rule": "ours b", "family": "ours", "hv_mean": 0.98, "hv_min": 0.97, "compute_mean": 0.55},
        {"rule": "ours c", "family": "ours", "hv_mean": 1.0, "hv_min": 1.0, "compute_mean": 0.7},
        {"rule": "moasha x", "family": "moasha", "hv_mean": 0.9, "hv_min": 0.9, "compute_mean": 0.3},
        {"rule": "moasha y", "family": "moasha", "hv_mean": 0.95, "hv_min": 0.9, "compute_mean": 0.52},
    ])
    assert choose_default(summary) == ("ours b", True)
    assert closest_moasha(summary, 0.55) == "moasha y"
    missed = summary.assign(hv_mean=lambda d: d["hv_mean"] - 0.2)
    assert choose_default(missed) == ("ours a", False)  # best hv at compute <= 0.6, targets missed
