"""The Optuna runner in-process: failures are recorded and the search goes on, budgets are checked
before training, re-running resumes, a fixed seed reproduces the sequence, pruning is fed by the
trainer's hook, Ctrl-C records the running trial."""

from __future__ import annotations

import json
import textwrap

import optuna
import pytest

from runners.optuna_runner import create_storage, run_search
from runners.results import load_results
from runners.settings import SearchSettings, UserError

TINY = dict(dataset="synthetic", image_size=8, dataset_options={"num_samples": 64}, recipe={"epochs": 1, "device": "cpu"})


def _settings(tmp_path, **changes):
    base = dict(space="gsa_block_v1", objectives=("accuracy", "flops"), n_trials=3, study="s", sampler="random",
                reports_dir=str(tmp_path), **TINY)
    base.update(changes)
    return SearchSettings(**base)


def _space_file(tmp_path, body: str) -> str:
    path = tmp_path / "space.py"
    path.write_text(textwrap.dedent(body))
    return f"{path}:space"


def _study(settings):
    return optuna.load_study(study_name=settings.study_name, storage=create_storage(settings))


def test_failures_are_recorded_and_the_search_goes_on(tmp_path):
    space = _space_file(tmp_path, """
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            kind = ["ok", "invalid", "diverges", "crash"][trial.number % 4]
            if kind == "invalid":   # heads=3 does not divide the stage widths: the block builder says so
                return TrialConfig(model=model_config("proxy_gsa_resnet", heads=3))
            if kind == "diverges":
                return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25), recipe={"lr": 1e12, "optimizer": "sgd", "epochs": 3, "batch_size": 16})
            if kind == "crash":
                raise RuntimeError("boom in the user's space")
            return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25))
    """)
    settings = _settings(tmp_path, space=space, n_trials=4, study="fails", objectives=("accuracy",), pruner="none")
    result = run_search(settings, progress=False)
    table = result.table.set_index("trial")
    assert list(table["state"]) == ["complete", "failed", "failed", "failed"]
    assert "invalid config" in table.loc[1, "reason"] and "heads=3 must divide" in table.loc[1, "reason"]
    assert table.loc[1, "epochs_run"] == 0
    assert "DivergenceError" in table.loc[2, "reason"] and "diverged" in table.loc[2, "reason"]
    assert "boom in the user's space" in table.loc[3, "reason"]
    assert table.loc[2, "flops"] > 0  # the cost was measured before training
    saved = load_results(tmp_path / "fails")
    assert list(saved["state"]) == list(result.table["state"])  # the saved table is the same


def test_budgets_are_checked_before_training_and_the_sampler_is_told(tmp_path):
    settings = _settings(tmp_path, n_trials=3, study="budget", max_flops=1.0)
    result = run_search(settings, progress=False)
    assert set(result.table["state"]) == {"infeasible"}
    assert (result.table["epochs_run"] == 0).all() and (result.table["flops"] > 1).all()
    assert result.table["reason"].str.contains("over budget: flops").all()
    assert result.front.empty  # the front holds completed feasible trials only
    for trial in _study(settings).trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.system_attrs["constraints:flops"] > 0  # what Optuna's samplers read


def test_rerunning_resumes_and_runs_only_what_is_missing(tmp_path):
    first = run_search(_settings(tmp_path, n_trials=2, study="resume"), progress=False)
    before = first.table[["trial", "accuracy", "flops"]].to_dict("records")
    second = run_search(_settings(tmp_path, n_trials=4, study="resume"), progress=False)
    assert len(second.table) == 4
    assert second.table[["trial", "accuracy", "flops"]].head(2).to_dict("records") == before
    third = run_search(_settings(tmp_path, n_trials=4, study="resume"), progress=False)
    assert len(third.table) == 4  # nothing left to do
    # the memory format changes speed and rounding only: a study resumes in the other layout
    layout = {**TINY["recipe"], "channels_last": False}
    assert len(run_search(_settings(tmp_path, n_trials=4, study="resume", recipe=layout), progress=False).table) == 4
    with pytest.raises(UserError, match="different settings.*recipe"):
        run_search(_settings(tmp_path, n_trials=4, study="resume", recipe={"epochs": 2, "device": "cpu"}), progress=False)


def test_data_that_cannot_be_loaded_is_one_error_and_creates_nothing(tmp_path):
    """A library call, as the command line does: one UserError before the study exists, not a study
    of failed trials."""
    settings = _settings(tmp_path, study="nodata", dataset="cifar10", image_size=None, dataset_options={})
    with pytest.raises(UserError, match="cifar10: data_dir is required"):
        run_search(settings, progress=False)
    assert not settings.study_dir.exists()


def test_a_fixed_seed_reproduces_the_sequence(tmp_path):
    def params(name, seed):
        result = run_search(_settings(tmp_path, n_trials=3, study=name, seed=seed, sampler="tpe"), progress=False)
        return result.table.filter(like="param_").to_json()

    assert params("a", 7) == params("b", 7)
    assert params("a", 7) != params("c", 8)


@pytest.mark.slow
def test_single_objective_pruning_is_fed_by_the_training_hook(tmp_path):
    space = _space_file(tmp_path, """
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            good = trial.number < 3
            lr = 3e-3 if good else 1e-9   # the last trial cannot learn: median pruning stops it
            return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.5), recipe={"lr": lr})
    """)
    settings = _settings(tmp_path, space=space, n_trials=4, study="prune", objectives=("accuracy",), pruner="median",
                         dataset="digits", image_size=16, dataset_options={}, recipe={"epochs": 4, "device": "cpu"})
    result = run_search(settings, progress=False)
    table = result.table.set_index("trial")
    assert list(table["state"]) == ["complete", "complete", "complete", "pruned"]
    assert "median pruner" in table.loc[3, "reason"]
    assert table.loc[3, "epochs_run"] == 3  # pruned at the first step after the 2-epoch warm-up
    assert len(json.loads(table.loc[3, "curve"])) == table.loc[3, "epochs_run"]
    trial = _study(settings).trials[0]
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]


def test_ctrl_c_records_the_running_trial_and_resume_finishes(tmp_path):
    space = _space_file(tmp_path, """
        import os
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            trial.suggest_categorical("x", [1])
            if trial.number == 1 and not os.environ.get("GSA_TEST_NO_INTERRUPT"):
                raise KeyboardInterrupt
            return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25))
    """)
    settings = _settings(tmp_path, space=space, n_trials=3, study="ctrlc", objectives=("accuracy",), pruner="none")
    result = run_search(settings, progress=False)
    assert result.interrupted
    assert list(result.table["state"]) == ["complete", "interrupted"]
    assert "Ctrl-C" in result.table.loc[1, "reason"]
    import os

    os.environ["GSA_TEST_NO_INTERRUPT"] = "1"
    try:
        resumed = run_search(settings, progress=False)
    finally:
        del os.environ["GSA_TEST_NO_INTERRUPT"]
    assert not resumed.interrupted
    assert list(resumed.table["state"]) == ["complete", "interrupted", "complete", "complete"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objectives": ("accuracy", "flop")}, "unknown objective 'flop'; did you mean 'flops'"),
        ({"objectives": ()}, "--objectives is empty"),
        ({"sampler": "tpee"}, "unknown sampler 'tpee'; did you mean 'tpe'"),
        ({"pruner": "median"}, "prunes on one objective"),
        ({"space": "gsa_blok_v1"}, "did you mean 'gsa_block_v1'"),
        ({"dataset": "digts"}, "did you mean 'digits'"),
        ({"storage": "sqlite:///x.db", "workers": 2}, "SQLite cannot serve several workers"),
        ({"storage": "not a url"}, "is not a database URL"),
        ({"recipe": {"epochs": 0}}, "recipe.epochs must be a positive integer"),
        ({"study": "../escape"}, "not a valid name"),
        ({"max_flops": -1.0}, "--max-flops must be a positive number"),
    ],
)
def test_bad_settings_are_rejected_before_anything_is_created(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        run_search(_settings(tmp_path, **changes), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_database_leaves_no_folder(tmp_path):
    settings = _settings(tmp_path, storage="postgresql+psycopg://u:p@127.0.0.1:1/nothing")
    with pytest.raises(UserError, match="cannot open the database .*u:\\*\\*\\*@127.0.0.1:1"):
        run_search(settings, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_trial_started_after_the_budget_steps_back(tmp_path):
    """Two workers that both counted n-1 start one trial each: the later-numbered one does not train."""
    from runners.optuna_runner import _Objective, open_study, results

    settings = _settings(tmp_path, n_trials=1, study="surplus")
    run_search(settings, progress=False)
    study = open_study(settings, create_storage(settings))
    study.optimize(_Objective(settings, worker=1), n_trials=1, catch=(Exception,))  # what the racing worker does
    late = study.trials[-1]
    assert late.state == optuna.trial.TrialState.FAIL and late.user_attrs["status"] == "surplus"
    assert "cost" not in late.user_attrs  # stepped back before measuring or training
    assert len(results(study)) == 1  # not shown, not counted


@pytest.mark.slow
def test_multi_objective_search_prunes_with_the_pareto_rule(tmp_path):
    """Optuna cannot prune multi-objective trials; the Pareto-aware rule stops a trial that cheaper-or-
    equal trials beat at the same epoch, and the pruned trial keeps its partial curve and cost."""
    space = _space_file(tmp_path, """
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            lr = 3e-3 if trial.number < 3 else 1e-9   # same model (same FLOPs); the last cannot learn
            return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.5), recipe={"lr": lr})
    """)
    settings = _settings(tmp_path, space=space, n_trials=4, study="pareto", objectives=("accuracy", "flops"),
                         dataset="digits", image_size=16, dataset_options={}, recipe={"epochs": 3, "device": "cpu"})
    assert settings.resolved_pruner() == "pareto"  # the default for multi-objective searches
    result = run_search(settings, progress=False)
    table = result.table.set_index("trial")
    assert list(table["state"]) == ["complete", "complete", "complete", "pruned"]
    assert table.loc[3, "epochs_run"] == 2  # the first rung, after the 2-epoch grace period
    assert "pareto pruner" in table.loc[3, "reason"] and "equal or lower flops" in table.loc[3, "reason"]
    assert table.loc[3, "flops"] == table.loc[0, "flops"] and len(json.loads(table.loc[3, "curve"])) == 2
    assert sorted(result.front["trial"]) == sorted(result.front["trial"].unique())
    assert 3 not in set(result.front["trial"])  # the front is computed from completed trials only
