"""Tests of gsa_search.stats: hand-computed t-tests and Holm, error rates and power on simulated studies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from gsa_search import stats

BASELINE = [0.80, 0.82, 0.78, 0.81]  # seeds 0..3
BETTER = [0.83, 0.84, 0.80, 0.85]


def make_runs(cells: dict[str, list], metric: str = "accuracy", **extra: dict[str, list]) -> pd.DataFrame:
    """One row per (cell, seed = position); a value ``None`` is a failed run, a string is that state."""
    rows = []
    for cell, values in cells.items():
        for seed, value in enumerate(values):
            state = "failed" if value is None else value if isinstance(value, str) else "complete"
            row = {"cell": cell, "seed": seed, "state": state,
                   metric: value if state == "complete" else np.nan}
            for column, per_cell in extra.items():
                row[column] = per_cell[cell][seed]
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Hand-computed examples


def test_paired_t_matches_hand_computation():
    # differences cell - baseline per seed: 0.03, 0.02, 0.02, 0.04
    mean = (0.03 + 0.02 + 0.02 + 0.04) / 4  # 0.0275
    sum_squares = (0.0025**2 + 0.0075**2 + 0.0075**2 + 0.0125**2)  # deviations from 0.0275: 275e-6
    sd = np.sqrt(sum_squares / 3)  # 0.00957427...
    se = sd / np.sqrt(4)
    t = mean / se  # 5.7446...
    quantile = st.t.ppf(0.975, 3)  # 3.18244630528...
    p = 2 * st.t.sf(t, 3)
    assert mean == pytest.approx(0.0275, abs=1e-15) and sum_squares == pytest.approx(275e-6, abs=1e-15)

    result = stats.paired_t(BETTER, BASELINE)
    assert result.method == "paired t"
    for got, want in [(result.difference, mean), (result.statistic, t), (result.df, 3),
                      (result.ci_low, mean - quantile * se), (result.ci_high, mean + quantile * se),
                      (result.p_value, p), (result.effect_size, mean / sd)]:
        assert got == pytest.approx(want, abs=1e-9, rel=0)

    table = stats.compare_to_baseline(make_runs({"base": BASELINE, "pos": BETTER}), "base", "accuracy",
                                      direction="maximize")
    row = table.iloc[0]
    assert (row.method, row.n_pairs, row.n_cell, row.n_baseline) == ("paired t", 4, 4, 4)
    assert row.effect_size_kind.startswith("d_z")
    for column, want in [("difference", mean), ("t", t), ("df", 3), ("ci_low", mean - quantile * se),
                         ("ci_high", mean + quantile * se), ("p_value", p), ("p_holm", p)]:
        assert row[column] == pytest.approx(want, abs=1e-9, rel=0), column
    assert row.verdict == "better"  # p = 0.0105 < 0.05, higher accuracy


def test_welch_t_matches_hand_computation():
    cell = BETTER[:3]  # seed 3 failed in the cell, so the samples cannot be paired: Welch
    mean_c = (0.83 + 0.84 + 0.80) / 3  # 0.823333...
    mean_b = (0.80 + 0.82 + 0.78 + 0.81) / 4  # 0.8025
    var_c = ((0.83 - mean_c) ** 2 + (0.84 - mean_c) ** 2 + (0.80 - mean_c) ** 2) / 2  # 13/30000
    var_b = ((0.80 - mean_b) ** 2 + (0.82 - mean_b) ** 2 + (0.78 - mean_b) ** 2 + (0.81 - mean_b) ** 2) / 3  # 8.75e-4/3
    assert var_c == pytest.approx(13 / 30000, abs=1e-15) and var_b == pytest.approx(8.75e-4 / 3, abs=1e-15)
    se2 = var_c / 3 + var_b / 4
    df = se2**2 / ((var_c / 3) ** 2 / 2 + (var_b / 4) ** 2 / 3)  # Welch-Satterthwaite
    diff = mean_c - mean_b  # 0.0208333...
    t = diff / np.sqrt(se2)
    quantile = st.t.ppf(0.975, df)
    p = 2 * st.t.sf(abs(t), df)
    pooled = np.sqrt((2 * var_c + 3 * var_b) / 5)

    result = stats.welch_t(cell, BASELINE)
    for got, want in [(result.difference, diff), (result.statistic, t), (result.df, df), (result.p_value, p),
                      (result.ci_low, diff - quantile * np.sqrt(se2)), (result.ci_high, diff + quantile * np.sqrt(se2)),
                      (result.effect_size, diff / pooled)]:
        assert got == pytest.approx(want, abs=1e-9, rel=0)

    runs = make_runs({"base": BASELINE, "pos": cell + [None]})
    row = stats.compare_to_baseline(runs, "base", "accuracy", direction="maximize").iloc[0]
    assert (row.method, row.n_cell, row.n_baseline, row.n_pairs, row.n_unfinished_cell) == ("Welch t", 3, 4, 0, 1)
    assert "failed 1" in row.note
    for column, want in [("difference", diff), ("t", t), ("df", df), ("p_value", p),
                         ("ci_low", diff - quantile * np.sqrt(se2)), ("ci_high", diff + quantile * np.sqrt(se2)),
                         ("mean_cell", mean_c), ("mean_baseline", mean_b)]:
        assert row[column] == pytest.approx(want, abs=1e-9, rel=0), column
    assert row.verdict == "within noise"  # p ~ 0.19


def test_holm_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    # NaN not counted in the family (m = 3): 0.02*3 = 0.06, 0.6*2 = 1.2 -> capped at 1, 0.7*1 -> raised to 1
    np.testing.assert_allclose(stats.holm([0.6, np.nan, 0.02, 0.7]), [1.0, np.nan, 0.06, 1.0], atol=1e-15)
    batch = stats.holm(np.array([[0.01, 0.04, 0.03, 0.005], [0.5, 0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(batch, [[0.03, 0.06, 0.06, 0.02], [1.0, 1.0, 1.0, 1.0]], atol=1e-15)
    p = np.random.default_rng(0).uniform(size=(50, 7))
    adjusted = stats.holm(p)
    order = np.argsort(p, axis=1)
    assert np.all(np.diff(np.take_along_axis(adjusted, order, axis=1), axis=1) >= 0)  # monotone in p
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)


def test_cell_summary_interval_counts_and_deterministic_metrics():
    runs = make_runs({"base": BASELINE + ["pruned"], "one": [0.9, None, "infeasible"]},
                     flops={"base": [7e6] * 5, "one": [9e6] * 3})
    table = stats.cell_summary(runs, ["accuracy", "flops"]).set_index(["cell", "metric"])
    base = table.loc[("base", "accuracy")]
    mean, sd = np.mean(BASELINE), np.std(BASELINE, ddof=1)
    half = st.t.ppf(0.975, 3) * sd / 2
    assert (base.n, base.n_runs, base.n_pruned, base.n_failed) == (4, 5, 1, 0)
    assert base["mean"] == pytest.approx(0.8025, abs=1e-12) and base["std"] == pytest.approx(sd, abs=1e-12)
    assert (base.ci_low, base.ci_high) == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert "pruned 1" in base.note and not base.deterministic

    one = table.loc[("one", "accuracy")]
    assert (one.n, one.n_failed, one.n_other) == (1, 1, 1)
    assert np.isnan(one.ci_low) and np.isnan(one.ci_high) and "< 2" in one.note

    flops = table.loc[("base", "flops")]
    assert flops.deterministic and flops["std"] == 0 and np.isnan(flops.ci_low) and "deterministic" in flops.note
    assert flops.n == 4  # the pruned run's FLOPs are not counted: only finished runs


# ------------------------------------------------------------------------------------------------
# Verdicts and edge cases


def test_verdicts_direction_insufficient_data_and_failed_seeds():
    rng = np.random.default_rng(3)
    base = 0.80 + rng.normal(0, 0.005, 5)
    runs = make_runs({
        "base": list(base),
        "broken": list(0.40 + rng.normal(0, 0.005, 5)),
        "improved": list(base + 0.05 + rng.normal(0, 0.002, 5)),
        "same": list(base + np.array([0.001, -0.001, 0.002, -0.002, 0.0])),
        "lonely": [0.9, None, None, None, "pruned"],
        "flaky": list(base[:3] - 0.2) + [None, None],
    })
    table = stats.compare_to_baseline(runs, "base", "accuracy", direction="maximize").set_index("cell")
    assert list(table.index) == ["broken", "improved", "same", "lonely", "flaky"]
    assert table.loc["broken", "verdict"] == "worse"
    assert table.loc["improved", "verdict"] == "better"
    assert table.loc["same", "verdict"] == "within noise" and table.loc["same", "p_value"] == pytest.approx(1.0)
    lonely = table.loc["lonely"]
    assert lonely.verdict == "insufficient data" and "1 finished seed" in lonely.note
    assert lonely.n_unfinished_cell == 4 and np.isnan(lonely.p_value) and np.isnan(lonely.ci_low)
    flaky = table.loc["flaky"]
    assert (flaky.n_cell, flaky.n_unfinished_cell, flaky.method) == (3, 2, "Welch t")
    assert flaky.mean_cell == pytest.approx(np.mean(base[:3] - 0.2)) and "failed 2" in flaky.note
    assert table.loc[["broken", "improved", "same", "flaky"], "family_size"].eq(4).all()
    assert (lonely.family, lonely.family_size) == ("", 0)  # untested: not in the Holm family

    flipped = stats.compare_to_baseline(runs, "base", "accuracy", direction="minimize").set_index("cell")
    assert (flipped.loc["broken", "verdict"], flipped.loc["improved", "verdict"]) == ("better", "worse")
    default = stats.compare_to_baseline(runs, "base", "accuracy")  # direction from metrics.DIRECTIONS
    assert default.set_index("cell").loc["broken", "direction"] == "maximize"


def test_deterministic_metrics_are_compared_exactly_outside_the_holm_family():
    runs = make_runs({"base": BASELINE, "small": [0.70, 0.71, 0.69, 0.72], "big": [0.81, 0.80, 0.79, 0.80]},
                     flops={"base": [8e6] * 4, "small": [5e6] * 4, "big": [8e6] * 4})
    table = stats.compare_all(runs, "base", ["accuracy", "flops"])
    flops = table[table.metric == "flops"].set_index("cell")
    assert (flops.method == "exact").all() and flops.p_value.isna().all() and flops.p_holm.isna().all()
    assert flops.loc["small", "difference"] == -3e6 and flops.loc["small", "ci_low"] == -3e6
    assert (flops.family == "").all() and (flops.family_size == 0).all()
    assert (flops.loc["small", "verdict"], flops.loc["big", "verdict"]) == ("better", "within noise")
    # constant cells whose means differ only by rounding (0.1 * 3 / 3 != 0.1) are equal, not better
    tiny = make_runs({"base": [0.1] * 4, "same": [0.1] * 3 + [None]}, params={"base": [0.1] * 4, "same": [0.1] * 4})
    assert stats.compare_to_baseline(tiny, "base", "accuracy").verdict.tolist() == ["within noise"]
    accuracy = table[table.metric == "accuracy"]
    assert (accuracy.family_size == 2).all()  # only the two tested accuracy comparisons form the family
    np.testing.assert_allclose(accuracy.p_holm, stats.holm(accuracy.p_value.to_numpy()))


def test_compare_all_family_spans_cells_and_metrics():
    rng = np.random.default_rng(5)
    cells = {name: list(0.8 + shift + rng.normal(0, 0.01, 6)) for name, shift in
             [("base", 0), ("a", 0.01), ("b", -0.02), ("c", 0.0)]}
    loss = {name: list(1.0 - np.array(values)) for name, values in cells.items()}
    runs = make_runs(cells, val_loss=loss)
    study = stats.compare_all(runs, "base", ["accuracy", "val_loss"])
    assert len(study) == 6 and (study.family == "study").all() and (study.family_size == 6).all()
    np.testing.assert_allclose(study.p_holm, stats.holm(study.p_value.to_numpy()))
    per_metric = stats.compare_all(runs, "base", ["accuracy", "val_loss"], family="metric")
    single = stats.compare_to_baseline(runs, "base", "accuracy")
    np.testing.assert_allclose(per_metric[per_metric.metric == "accuracy"].p_holm, single.p_holm)
    assert (study.p_holm.to_numpy() >= per_metric.p_holm.to_numpy() - 1e-15).all()
    # directions read from metrics.DIRECTIONS: lower loss is better, so the verdicts agree across metrics
    assert list(study[study.metric == "val_loss"].verdict) == list(study[study.metric == "accuracy"].verdict)


def test_forced_methods_and_input_errors():
    runs = make_runs({"base": BASELINE, "pos": BETTER[:3] + [None]})
    paired = stats.compare_to_baseline(runs, "base", "accuracy", method="paired").iloc[0]
    want = stats.paired_t(BETTER[:3], BASELINE[:3])
    assert (paired.method, paired.n_pairs) == ("paired t", 3) and "unpaired" in paired.note
    assert paired.p_value == pytest.approx(want.p_value, abs=1e-12)
    welch = stats.compare_to_baseline(make_runs({"base": BASELINE, "pos": BETTER}), "base", "accuracy",
                                      method="welch").iloc[0]
    assert welch.method == "Welch t" and welch.p_value == pytest.approx(st.ttest_ind(BETTER, BASELINE,
                                                                                     equal_var=False).pvalue)
    with pytest.raises(ValueError, match="baseline cell"):
        stats.compare_to_baseline(runs, "nope", "accuracy")
    with pytest.raises(ValueError, match="direction"):
        stats.compare_to_baseline(runs, "base", "accuracy", direction="up")
    with pytest.raises(ValueError, match="method"):
        stats.compare_to_baseline(runs, "base", "accuracy", method="magic")
    with pytest.raises(ValueError, match="lacks column"):
        stats.cell_summary(runs, ["latency_ms"])
    with pytest.raises(ValueError, match="more than one complete run"):
        stats.cell_summary(pd.concat([runs, runs.iloc[:1]]), "accuracy")


# ------------------------------------------------------------------------------------------------
# Error rates and power on simulated studies (vectorised over studies through the public t-tests)


def _check_same_as_table(cells: np.ndarray, baseline: np.ndarray, method: str, p: np.ndarray, p_holm: np.ndarray):
    """The vectorised path gives the public function's numbers on a few studies."""
    for study in range(3):
        frame = make_runs({"base": list(baseline[study, 0]),
                           **{f"c{k}": list(cells[study, k]) for k in range(cells.shape[1])}})
        table = stats.compare_to_baseline(frame, "base", "accuracy", direction="maximize", method=method)
        np.testing.assert_allclose(table.p_value, p[study], rtol=1e-12)
        np.testing.assert_allclose(table.p_holm, p_holm[study], rtol=1e-12)


@pytest.mark.parametrize("test, method, seed_sd", [(stats.paired_t, "paired", 1.0), (stats.welch_t, "welch", 0.0)])
def test_null_studies_false_positive_and_familywise_rates(test, method, seed_sd):
    studies, cells, seeds, alpha = 2000, 4, 5, 0.05
    rng = np.random.default_rng(11)
    # paired: a seed effect shared by every cell of a study (what pairing removes); Welch assumes
    # independent cells (with a shared seed effect it would be conservative, not exact)
    seed_effect = rng.normal(0, seed_sd, (studies, 1, seeds))
    baseline = seed_effect + rng.normal(0, 1, (studies, 1, seeds))
    others = seed_effect + rng.normal(0, 1, (studies, cells, seeds))  # identical levels: all nulls true
    p = test(others, baseline).p_value  # (studies, cells)
    p_holm = stats.holm(p, axis=-1)
    _check_same_as_table(others, baseline, method, p, p_holm)

    per_comparison = np.mean(p < alpha)  # 8000 comparisons: Monte Carlo sd 0.0024
    assert abs(per_comparison - alpha) <= 0.015
    familywise = np.mean((p_holm < alpha).any(axis=1))  # 2000 studies: MC sd sqrt(.05 * .95 / 2000) = 0.0049
    assert familywise <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / studies)  # tolerance 0.0146
    assert np.mean((p < alpha).any(axis=1)) > 0.12  # uncorrected, 4 tests per study inflate the rate


@pytest.mark.parametrize("test, df", [(stats.paired_t, 9), (stats.welch_t, 18)])
def test_power_matches_noncentral_t(test, df):
    comparisons, seeds, shift, alpha = 2000, 10, 1.0, 0.05
    rng = np.random.default_rng(12)
    baseline = rng.normal(0, 1, (comparisons, seeds))
    cell = shift + rng.normal(0, 1, (comparisons, seeds))  # independent noise, shift of 1 sd
    power = np.mean(test(cell, baseline).p_value < alpha)
    # both tests: noncentrality = shift / sqrt(2 / n) = sqrt(5); paired df = n - 1, Welch df ~ 2n - 2 here
    noncentrality = shift / np.sqrt(2 / seeds)
    critical = st.t.ppf(1 - alpha / 2, df)
    theory = st.nct.sf(critical, df, noncentrality) + st.nct.cdf(-critical, df, noncentrality)
    assert 0.4 < theory < 0.7
    assert abs(power - theory) <= 0.05


def test_bootstrap_interval_coverage_and_reproducibility():
    rng = np.random.default_rng(13)
    truth, seeds, covered = 0.5, 20, 0
    for study in range(200):
        paired = study % 2 == 0  # half paired (shared seed effect), half stratified (independent cells)
        seed_effect = rng.normal(0, 1, seeds) if paired else 0.0
        baseline = seed_effect + rng.normal(0, 1, seeds)
        cell = truth + seed_effect + rng.normal(0, 1, seeds)
        low, high = stats.bootstrap_difference(cell, baseline, paired=paired, n_boot=1000, seed=study)
        covered += low <= truth <= high
    assert 0.88 <= covered / 200 <= 0.99

    # paired resampling keeps the seed effect out of the interval: much narrower than stratified
    seed_effect = rng.normal(0, 1, 10)
    baseline, cell = seed_effect + rng.normal(0, 0.05, 10), 0.1 + seed_effect + rng.normal(0, 0.05, 10)
    paired = stats.bootstrap_difference(cell, baseline, paired=True, n_boot=2000)
    stratified = stats.bootstrap_difference(cell, baseline, paired=False, n_boot=2000)
    t_interval = stats.paired_t(cell, baseline)
    assert (paired[1] - paired[0]) < 0.2 * (stratified[1] - stratified[0])
    assert (paired[1] - paired[0]) == pytest.approx(t_interval.ci_high - t_interval.ci_low, rel=0.3)

    runs = make_runs({"base": BASELINE, "pos": BETTER, "gap": BETTER[:3] + [None]})
    first = stats.compare_to_baseline(runs, "base", "accuracy", method="bootstrap", n_boot=2000, seed=7)
    again = stats.compare_to_baseline(runs, "base", "accuracy", method="bootstrap", n_boot=2000, seed=7)
    other = stats.compare_to_baseline(runs, "base", "accuracy", method="bootstrap", n_boot=2000, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first.ci_low, other.ci_low)
    assert list(first.method) == ["bootstrap (paired)", "bootstrap (stratified)"]
    assert list(first.p_value_from) == ["paired t", "Welch t"]
    auto = stats.compare_to_baseline(runs, "base", "accuracy")
    np.testing.assert_allclose(first.p_value, auto.p_value)  # the p-value is the t-test's
    assert (first.ci_low < first.difference).all() and (first.difference < first.ci_high).all()


# ------------------------------------------------------------------------------------------------
# Main effects


FACTORS = {
    "base": {"pos": "none", "heads": 4},
    "rel": {"pos": "relative", "heads": 4},
    "h8": {"pos": "none", "heads": 8},
    "rel_h8": {"pos": "relative", "heads": 8},
}


def test_main_effects_paired_2x2_matches_hand_computation():
    cells = {"base": [0.80, 0.82, 0.78], "rel": [0.84, 0.85, 0.83],
             "h8": [0.81, 0.82, 0.80], "rel_h8": [0.86, 0.88, 0.84]}
    runs = make_runs(cells)
    table = stats.main_effects(runs, FACTORS, {"pos": "none", "heads": 4}, "accuracy").set_index("factor")
    assert list(table.index) == ["heads", "pos"] and (table.family_size == 2).all()
    # pos effect per seed: mean over heads of (relative - none) = ((0.04+0.05), (0.03+0.06), (0.05+0.04)) / 2
    effects = np.array([(0.84 - 0.80 + 0.86 - 0.81) / 2, (0.85 - 0.82 + 0.88 - 0.82) / 2,
                        (0.83 - 0.78 + 0.84 - 0.80) / 2])  # 0.045, 0.045, 0.045 + tiny float noise
    pos = table.loc["pos"]
    assert pos.method == "paired t" and pos.n_pairs == 3 and pos.n_combos == 2
    assert pos.difference == pytest.approx(effects.mean(), abs=1e-12)
    assert pos.mean_level - pos.mean_baseline_level == pytest.approx(effects.mean(), abs=1e-12)
    heads_effects = np.array([(0.81 - 0.80 + 0.86 - 0.84) / 2, (0.82 - 0.82 + 0.88 - 0.85) / 2,
                              (0.80 - 0.78 + 0.84 - 0.83) / 2])  # 0.015, 0.015, 0.015
    heads = table.loc["heads"]  # every per-seed effect is 0.015: zero variance, t = inf, p = 0
    assert heads.difference == pytest.approx(heads_effects.mean(), abs=1e-12)
    assert (heads.p_value, heads.verdict, heads.ci_low) == (0.0, "better", heads.difference)
    assert "zero variance" in heads.note and np.isnan(heads.effect_size)

    jitter = np.array([0.003, -0.004, 0.001])
    noisy = {k: list(np.array(v) + jitter * (i + 1)) for i, (k, v) in enumerate(cells.items())}
    table = stats.main_effects(make_runs(noisy), FACTORS, {"pos": "none", "heads": 4}, "accuracy").set_index("factor")
    level = (np.array(noisy["rel"]) + np.array(noisy["rel_h8"])) / 2
    base = (np.array(noisy["base"]) + np.array(noisy["h8"])) / 2
    want = st.ttest_rel(level, base)
    row = table.loc["pos"]
    assert row.p_value == pytest.approx(want.pvalue, abs=1e-9) and row.t == pytest.approx(want.statistic, abs=1e-9)
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(want.confidence_interval(0.95)), abs=1e-9)
    assert np.allclose(table.p_holm, stats.holm(table.p_value.to_numpy()))


def test_main_effects_welch_contrast():
    rng = np.random.default_rng(21)
    cells = {name: list(0.8 + rng.normal(0, 0.01, 4)) for name in FACTORS}
    cells["rel"][3] = None  # a failed seed: no pairing, Welch contrast over the four cells
    runs = make_runs(cells)
    table = stats.main_effects(runs, FACTORS, {"pos": "none", "heads": 4}, "accuracy").set_index("factor")
    row = table.loc["pos"]
    level = [np.array(cells["rel"][:3]), np.array(cells["rel_h8"])]
    base = [np.array(cells["base"]), np.array(cells["h8"])]
    terms = np.array([x.var(ddof=1) / (4 * len(x)) for x in level + base])  # v_i / (K^2 n_i), K = 2
    df = terms.sum() ** 2 / np.sum(terms**2 / np.array([2, 3, 3, 3]))
    diff = np.mean([x.mean() for x in level]) - np.mean([x.mean() for x in base])
    t = diff / np.sqrt(terms.sum())
    assert row.method == "Welch t" and "1 unfinished" in row.note
    assert (row.difference, row.t, row.df) == pytest.approx((diff, t, df), abs=1e-9)
    assert row.p_value == pytest.approx(2 * st.t.sf(abs(t), df), abs=1e-9)

    # one factor with two levels (K = 1): the contrast is exactly Welch's t-test of the two cells
    one = {"base": {"pos": "none"}, "rel": {"pos": "relative"}}
    single = stats.main_effects(runs[runs.cell.isin(one)], one, {"pos": "none"}, "accuracy").iloc[0]
    direct = stats.compare_to_baseline(runs[runs.cell.isin(one)], "base", "accuracy").iloc[0]
    for column in ("difference", "ci_low", "ci_high", "t", "df", "p_value", "effect_size"):
        assert single[column] == pytest.approx(direct[column], abs=1e-12), column


def test_main_effects_rejects_incomplete_designs_and_flags_small_cells():
    runs = make_runs({name: [0.8, 0.81, 0.79] for name in FACTORS})
    for missing in ("h8", "rel_h8"):  # a missing baseline-level cell, a missing other-level cell
        partial = {k: v for k, v in FACTORS.items() if k != missing}
        with pytest.raises(ValueError, match="not a full factorial"):
            stats.main_effects(runs, partial, {"pos": "none", "heads": 4}, "accuracy")
    with pytest.raises(ValueError, match="factors"):
        stats.main_effects(runs, {**FACTORS, "x": {"pos": "none"}}, {"pos": "none", "heads": 4}, "accuracy")
    runs.loc[(runs.cell == "rel") & (runs.seed > 0), "state"] = "pruned"
    table = stats.main_effects(runs, FACTORS, {"pos": "none", "heads": 4}, "accuracy").set_index("factor")
    # "rel" (1 finished seed) enters both effects: pos (rel vs base) and heads (rel_h8 vs rel)
    assert (table.verdict == "insufficient data").all()
    assert table.note.str.contains("< 2 finished seeds: ['rel']", regex=False).all()
    assert table.note.str.contains("2 unfinished run(s) excluded", regex=False).all()
    runs.loc[(runs.cell == "rel"), "state"] = "complete"
    table = stats.main_effects(runs, FACTORS, {"pos": "none", "heads": 4}, "accuracy")
    assert (table.verdict == "within noise").all() and (table.method == "paired t").all()


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(stats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0
