"""Ablation studies: definitions are validated before anything runs (one error naming factor and
level), cells are built one-at-a-time or full-factorially, TOML files equal their Python twins,
every shipped study builds every cell, and the runner trains every (cell, seed) pair exactly once,
resumes without retraining, records and retries failures, and flags a broken level as worse."""

from __future__ import annotations

import doctest
import json
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

import search_spaces.ablation as ablation_module
from gsa_search.blocks import block_config
from runners.ablate_cmd import ablate_main, parse_seeds
from runners.ablation_runner import run_ablation
from runners.results import BASE_COLUMNS
from runners.settings import UserError
from search_spaces.ablation import (
    AblationStudy, Baseline, StudyError, cells_space, get_study, list_studies, load_study, study_from_dict,
)  # fmt: skip

STUDIES_DIR = Path(ablation_module.__file__).parent / "studies"
TINY_BASELINE = Baseline(model="proxy_resnet", dataset="synthetic", image_size=8, dataset_options={"num_samples": 64},
                         model_overrides={"width_multiplier": 0.25}, recipe={"epochs": 1, "batch_size": 16})
GSA = dict(model="proxy_gsa_resnet", dataset="synthetic", image_size=8)


def _study(**changes):
    base = dict(name="s", baseline=Baseline(**GSA), factors={"paths": {"content_only": {"positional": "none"}}})
    base.update(changes)
    return AblationStudy(**base)


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"factors": {}}, "the study is empty: it has no factors"),
    ({"factors": {"paths": {}}}, "factor 'paths' has no levels"),
    ({"factors": {"paths": {"bad": {"positionl": "none"}}}},
     r"factor 'paths' level 'bad': unknown override 'positionl'.*allowed: .*positional"),
    ({"factors": {"lr": {"low": {"recipe": {"learning_rate": 1e-3}}}}},
     r"factor 'lr' level 'low': unknown recipe field\(s\) learning_rate; allowed: .*lr"),
    ({"factors": {"seed": {"one": {"recipe": {"seed": 1}}}}}, r"factor 'seed' level 'one': recipe.seed cannot be set"),
    ({"factors": {"paths": {"bad": {"content": False, "positional": "none"}}}},
     r"factor 'paths' level 'bad': .*content=False with positional='none' leaves nothing"),
    ({"factors": {"heads": {"two": {"heads": 2}, "also_two": {"heads": 2}}}},
     r"factor 'heads' level 'also_two' \(cell 'heads=also_two'\) gives the same config as cell 'heads=two'"),
    ({"factors": {"heads": {"four": {"heads": 4}, "default": {}}}},
     r"factor 'heads': levels 'four' and 'default' both give the baseline config"),
    ({"factors": {"a": {"x": {"heads": 2}}, "b": {"y": {"heads": 2}}}},
     r"factor 'b' level 'y' \(cell 'b=y'\) gives the same config as cell 'a=x'"),
    ({"factors": {"heads": {"two": {"heads": 2}}}, "baseline_levels": {"heads": "two"}},
     r"baseline level 'two' changes the baseline config"),
    ({"factors": {"heads": {"two": {"heads": 2}}}, "design": "full"},
     r"a full design needs a baseline level in every factor.*heads"),
    ({"factors": {"a": {"base": {}, "x": {"rel_span": 1}}, "b": {"base": {}, "y": {"rel_span": 2}}}, "design": "full"},
     r"factors 'a' and 'b' both set rel_span"),
    ({"design": "fractional"}, r"unknown design 'fractional'; allowed: one-at-a-time, full"),
    ({"seeds": 0}, r"seeds must be >= 1"),
    ({"seeds": []}, r"seeds must be >= 1"),
    ({"seeds": [0, 0]}, r"seeds lists a seed twice"),
    ({"seeds": [-1]}, r"every seed must be an integer >= 0"),
    ({"objectives": ["acc"]}, r"unknown objective 'acc'"),
    ({"baseline": {"model": "proxy_gsa_resnet", "dataset": "digits_pairs"}}, r"did you mean 'digits-pairs'"),
    ({"baseline": {"model": "proxy_gsa_resnet", "datasets": "digits"}}, r"unknown key 'datasets' in \[baseline\]"),
    ({"factors": {"size": {"big": {"image_size": 64}}}}, r"factor 'size' level 'big': image_size cannot be overridden"),
])  # fmt: skip
def test_a_study_that_cannot_run_is_rejected_when_it_is_defined(changes, message):
    with pytest.raises(StudyError, match=message):
        _study(**changes)


def test_a_level_the_block_builder_rejects_fails_validation_naming_factor_and_level():
    study = _study(factors={"heads": {"two": {"heads": 2}, "three": {"heads": 3}}})  # defining it is fine
    with pytest.raises(StudyError, match=r"factor 'heads' level 'three' \(cell 'heads=three'\): the block builder "
                                         r"rejects it on synthetic \(3x8x8, 10 classes\): gsa.heads=3 must divide"):
        study.validate()
    _study(factors={"heads": {"two": {"heads": 2}}}).validate(shape=(2, 1, 8))  # the valid level alone passes


def test_toml_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nsedes = 3\n[baseline]\nmodel = "proxy_resnet"\n[factors.a]\nx = { width_multiplier = 0.5 }\n')
    with pytest.raises(StudyError, match=rf"{path}: unknown key 'sedes' at the top level; allowed: name, .*seeds"):
        load_study(str(path))
    path.write_text('name = "mine"\n[baseline]\nmodel = "proxy_resnet"\nepochs = 3\n[factors.a]\nx = {}\n')
    with pytest.raises(StudyError, match=rf"{path}: unknown key 'epochs' in \[baseline\]; allowed: model, "):
        load_study(str(path))
    path.write_text('name = "mine"\n[baseline]\nmodel = "proxy_resnet"\n[factors.a]\nx = { kernel = 5 }\n')
    with pytest.raises(StudyError, match=rf"{path}: study 'mine': factor 'a' level 'x': unknown override 'kernel'"):
        load_study(str(path))
    path.write_text('name = "mine"\n[baseline\n')
    with pytest.raises(StudyError, match=rf"{path}: not valid TOML"):
        load_study(str(path))


# --- cells ---------------------------------------------------------------------------------------------


def test_one_at_a_time_gives_the_baseline_and_one_cell_per_other_level():
    study = AblationStudy(
        name="oat", baseline=Baseline(**GSA, recipe={"epochs": 2}),
        factors={"paths": {"both": {}, "content_only": {"positional": "none"}, "positional_only": {"content": False}},
                 "heads": {"2": {"heads": 2}, "4": {"heads": 4}},
                 "lr": {"high": {"recipe": {"lr": 1e-2}}}},
    )  # fmt: skip
    cells = study.cells()
    assert list(cells) == ["baseline", "paths=content_only", "paths=positional_only", "heads=2", "lr=high"]
    assert {m.positional for m in cells["paths=content_only"].model.mixers} == {"none"}
    assert {m.content for m in cells["paths=positional_only"].model.mixers} == {False}
    assert {m.heads for m in cells["heads=2"].model.mixers} == {2}
    assert cells["lr=high"].recipe == {"epochs": 2, "lr": 1e-2} and cells["lr=high"].model == cells["baseline"].model
    assert study.resolved_baseline_levels() == {"paths": "both", "heads": "4", "lr": None}  # "4" leaves it unchanged
    assert study.cell_levels()["heads=2"] == {"paths": "both", "heads": "2", "lr": None}
    run = study.trial_config("heads=2", 7)
    assert run.recipe == {"epochs": 2, "seed": 7} and run.model == cells["heads=2"].model


def test_full_design_is_the_cartesian_product_with_the_baseline_combination_named_baseline():
    study = AblationStudy(
        name="full", baseline=Baseline(**GSA), design="full",
        factors={"positional": {"axial": {}, "2d": {"positional": "2d", "rel_span": 1}},
                 "mixer": {"gsa": {}, "conv_early": {"mixers": ("conv", "conv", block_config("gsa", heads=4),
                                                                  block_config("gsa", heads=4))}}},
    )  # fmt: skip
    cells = study.cells()
    assert list(cells) == ["baseline", "positional=axial,mixer=conv_early", "positional=2d,mixer=gsa",
                           "positional=2d,mixer=conv_early"]
    both = cells["positional=2d,mixer=conv_early"].model.mixers
    assert [m.block_type for m in both] == ["conv", "conv", "gsa", "gsa"]
    assert [(m.positional, m.rel_span) for m in both[2:]] == [("2d", 1), ("2d", 1)]  # the mixer field reaches the new mixers
    assert study.cell_levels()["baseline"] == {"positional": "axial", "mixer": "gsa"}
    study.validate()


def test_the_space_gives_each_pair_its_config_and_refuses_a_seed_outside_the_study():
    study = _study(seeds=[0, 2])
    space = study.space(device="cpu")
    config = space(optuna.trial.FixedTrial({"cell": "paths=content_only", "seed": 2}))
    assert config.recipe == {"seed": 2, "device": "cpu"}
    assert config.model == study.cells()["paths=content_only"].model
    from gsa_search.trial import InvalidConfig

    with pytest.raises(InvalidConfig, match="seed 1 is not one of the study's seeds"):
        space(optuna.trial.FixedTrial({"cell": "baseline", "seed": 1}))
    # the runner's generated file rebuilds the same space from plain dicts
    again = cells_space({k: v.to_dict() for k, v in study.cells().items()}, [0, 2], device="cpu")
    assert again(optuna.trial.FixedTrial({"cell": "paths=content_only", "seed": 2})) == config


# --- shipped studies, files, registry ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gsa_content_positional_v1", "gsa_block_type_v1"])
def test_shipped_toml_files_give_the_same_cells_as_the_registered_studies(name):
    from_toml = load_study(str(STUDIES_DIR / f"{name}.toml"))
    registered = get_study(name)
    assert {k: v.key() for k, v in from_toml.cells().items()} == {k: v.key() for k, v in registered.cells().items()}
    assert (from_toml.design, from_toml.seeds, from_toml.objectives) == (registered.design, registered.seeds,
                                                                          registered.objectives)
    assert from_toml.baseline.to_dict() == registered.baseline.to_dict()
    assert study_from_dict(registered.to_dict()).cells().keys() == registered.cells().keys()  # to_dict round trip


@pytest.mark.parametrize("name", list_studies())
def test_every_shipped_study_validates_and_builds_every_cell(name):
    study = get_study(name)
    assert name.endswith("_v1") and study.seed_list() == [0, 1, 2]
    if name != "gsa_train_lr_smoothing_v1":  # the one study about the recipe keeps the runner's recipe otherwise
        assert study.baseline.recipe == {}
    assert study.baseline.dataset == "digits-pairs" and study.baseline.dataset_options == {}
    study.validate()  # fits every cell to digits-pairs and builds it; nothing trains
    assert len(study.cells()) >= 2


def test_registry_and_loader(tmp_path):
    assert {"gsa_content_positional_v1", "gsa_axial_vs_2d_v1", "gsa_rel_span_v1", "gsa_heads_dim_key_v1",
            "gsa_query_norm_v1", "gsa_stages_v1", "gsa_block_type_v1", "gsa_train_lr_smoothing_v1"} <= set(list_studies())
    with pytest.raises(StudyError, match=r"unknown ablation study 'gsa_content_positional'.*did you mean"):
        get_study("gsa_content_positional")
    with pytest.raises(ValueError, match="already registered"):
        ablation_module.register_study(get_study("gsa_query_norm_v1"))
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""
        from search_spaces.ablation import AblationStudy, Baseline

        QUICK = AblationStudy(name="quick", baseline=Baseline(model="proxy_gsa_resnet"),
                              factors={"qn": {"on": {"query_norm": True}}})

        def wider():
            return QUICK.replace(name="wider", factors={"width": {"x2": {"width_multiplier": 2.0}}})
    """))
    assert load_study(f"{path}:QUICK").name == "quick"
    assert load_study(f"{path}:wider").name == "wider"
    assert load_study(str(path)).name == "quick"  # the file's only study
    with pytest.raises(StudyError, match=r"has no study 'NOPE'.*studies there: QUICK"):
        load_study(f"{path}:NOPE")


def test_module_docstring_examples_run():
    result = doctest.testmod(ablation_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 2


# --- running -------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The runs below train with one thread (``threads=1``: on a loaded 2-core machine two threads per
    trial can be many times slower); the runner sets it for the process, so it is restored here."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny(name="tiny", **changes):
    base = dict(name=name, baseline=TINY_BASELINE, seeds=2,
                factors={"width": {"half": {"width_multiplier": 0.125}}, "lr": {"low": {"recipe": {"lr": 1e-3}}}})
    base.update(changes)
    return AblationStudy(**base)


def _trials(study_dir: Path, name: str):
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}")
    return optuna.load_study(study_name=name, storage=storage).trials


def test_every_pair_runs_once_and_rerunning_trains_nothing(tmp_path):
    study = _tiny()
    first = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1)
    folder = tmp_path / "tiny"
    pairs = sorted(zip(first.table["cell"], first.table["seed"].astype(int)))
    assert pairs == sorted((c, s) for c in ["baseline", "width=half", "lr=low"] for s in [0, 1])  # each exactly once
    assert set(first.table["state"]) == {"complete"} and first.scheduled == 6 and first.reused == 0
    assert not first.problems
    for name in ("trials.csv", "trials.parquet", "cells.csv", "ablation.csv", "runs.csv", "ablation.json"):
        assert (folder / name).is_file()
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials.columns[:len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert trials["cell"].notna().all() and set(trials["seed"]) == {0, 1}
    cells = pd.read_csv(folder / "cells.csv")
    assert set(cells["cell"]) == {"baseline", "width=half", "lr=low"} and set(cells["metric"]) == {"accuracy", "flops", "params"}
    assert cells.set_index(["cell", "metric"]).loc[("width=half", "flops"), "deterministic"]
    comparisons = pd.read_csv(folder / "ablation.csv")
    assert set(comparisons["cell"]) == {"width=half", "lr=low"} and (comparisons["baseline"] == "baseline").all()
    flops = comparisons.set_index(["cell", "metric"]).loc[("width=half", "flops")]
    assert flops["method"] == "exact" and flops["difference"] < 0 and flops["verdict"] == "better"
    # a run of each pair per seed uses the same data: the recipe seed is the pair's seed
    configs = [json.loads(c) for c in trials["config"]]
    assert [c["recipe"]["seed"] for c in configs] == list(trials["seed"])

    n_trials = len(_trials(folder, "tiny"))
    second = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1)
    assert len(_trials(folder, "tiny")) == n_trials == 6  # nothing new trained
    assert second.scheduled == 0 and second.reused == 6
    pd.testing.assert_frame_equal(second.runs, first.runs)
    pd.testing.assert_frame_equal(second.comparisons, first.comparisons)
    # the memory format is how the runs execute, not what the cells compute: the same study resumes
    for layout in ({"channels_last": False}, {"channels_last": True}):
        again = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1,
                             recipe_overrides=layout)
        assert again.scheduled == 0 and again.reused == 6 and len(_trials(folder, "tiny")) == 6

    # more seeds later: only the new pairs run
    third = run_ablation(study, seeds=3, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1,
                         recipe_overrides={"channels_last": False})
    assert third.scheduled == 3 and third.reused == 6 and len(_trials(folder, "tiny")) == 9
    assert sorted(third.runs["seed"].unique()) == [0, 1, 2]
    layouts = {int(r.seed): json.loads(r.config)["recipe"].get("channels_last") for r in third.table.itertuples()}
    assert layouts[2] is False and layouts[0] == "auto"  # the new runs train in the layout asked for

    # a changed study is not resumed silently: the folder says so, and so does the storage (another machine's)
    with pytest.raises(UserError, match=r"was run with other cells \(cells with another config: baseline"):
        run_ablation(study, reports_dir=str(tmp_path), progress=False, recipe_overrides={"epochs": 2})
    (folder / "ablation.json").unlink()
    with pytest.raises(UserError, match=r"was run with other cells \(new cells: lr=high"):
        run_ablation(study.replace(factors={**study.factors, "lr": {"high": {"recipe": {"lr": 1e-2}}}}),
                     reports_dir=str(tmp_path), progress=False)
    assert len(_trials(folder, "tiny")) == 9


def test_a_failing_cell_is_recorded_and_only_it_is_retried(tmp_path):
    study = _tiny(name="fails", factors={"lr": {"huge": {"recipe": {"lr": 1e12, "optimizer": "sgd"}}}})
    first = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1)
    runs = first.runs.set_index(["cell", "seed"])
    assert list(runs.loc["lr=huge", "state"]) == ["failed", "failed"]
    assert runs.loc["lr=huge", "reason"].str.contains("DivergenceError: training diverged").all()
    assert list(runs.loc["baseline", "state"]) == ["complete", "complete"]
    row = first.comparisons.set_index(["cell", "metric"]).loc[("lr=huge", "accuracy")]
    assert row["verdict"] == "insufficient data" and row["n_unfinished_cell"] == 2
    assert first.summary.set_index(["cell", "metric"]).loc[("lr=huge", "accuracy"), "n_failed"] == 2

    again = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1)
    assert again.scheduled == 0 and len(_trials(tmp_path / "fails", "fails")) == 4  # failures are results too

    retry = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", retry_failed=True, threads=1)
    trials = _trials(tmp_path / "fails", "fails")
    assert retry.scheduled == 2 and len(trials) == 6
    assert sorted((t.params["cell"], t.params["seed"]) for t in trials[4:]) == [("lr=huge", 0), ("lr=huge", 1)]
    assert (retry.runs.set_index("cell").loc["lr=huge", "trial"] >= 4).all()  # the statistics use the latest runs


def test_ablate_main_prints_cells_and_comparisons(tmp_path):
    study_file = tmp_path / "study.py"
    study_file.write_text(textwrap.dedent("""
        from search_spaces.ablation import AblationStudy, Baseline

        STUDY = AblationStudy(
            name="cmd", seeds=2,
            baseline=Baseline(model="proxy_resnet", dataset="synthetic", image_size=8, dataset_options={"num_samples": 64},
                              model_overrides={"width_multiplier": 0.25}, recipe={"batch_size": 16}),
            factors={"lr": {"low": {"recipe": {"lr": 1e-3}}, "huge": {"recipe": {"lr": 1e12, "optimizer": "sgd"}}}},
        )
    """))
    document, text = ablate_main(f"{study_file}:STUDY", reports_dir=str(tmp_path), quiet=True, device="cpu",
                                 recipe_overrides={"epochs": 1}, threads=1)
    assert document["study"] == "cmd" and document["seeds"] == [0, 1] and document["scheduled"] == 6
    assert [c["cell"] for c in document["comparisons"] if c["metric"] == "accuracy"] == ["lr=low", "lr=huge"]
    assert document["cells"]["lr=low"]["levels"] == {"lr": "low"}
    for expected in ("cells (accuracy: mean ± std", "comparisons with the baseline", "p (Holm)", "verdict",
                     "effect size", "lr=huge seed 0: failed: DivergenceError", "--retry-failed", "cells.csv",
                     "ablation.csv"):
        assert expected in text
    assert "baseline" in text.split("comparisons")[0]
    document_again, as_json = ablate_main(f"{study_file}:STUDY", reports_dir=str(tmp_path), quiet=True, json_out=True,
                                          recipe_overrides={"epochs": 1}, threads=1)
    assert json.loads(as_json)["scheduled"] == 0 and document_again["reused"] == 6
    with pytest.raises(UserError, match="use --seeds"):
        ablate_main(f"{study_file}:STUDY", reports_dir=str(tmp_path), recipe_overrides={"seed": 3})
    with pytest.raises(UserError, match="unknown ablation study 'nope'"):
        ablate_main("nope", reports_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"--seeds must be >= 1"):
        ablate_main(f"{study_file}:STUDY", seeds=0, reports_dir=str(tmp_path))
    assert not (tmp_path / "nope").exists()
    assert parse_seeds("3") == 3 and parse_seeds("0,2") == [0, 2]


def test_a_study_the_builder_rejects_creates_nothing(tmp_path):
    study = _tiny(name="rejected", baseline=TINY_BASELINE.replace(model="proxy_gsa_resnet", model_overrides={}),
                  factors={"heads": {"three": {"heads": 3}}})
    with pytest.raises(UserError, match=r"factor 'heads' level 'three'.*heads=3 must divide"):
        run_ablation(study, reports_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "rejected").exists()


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_data_that_cannot_be_loaded_is_one_error_and_creates_nothing(tmp_path, backend):
    """Through the library as through the command line (the study's validation loads the data):
    no study of failed trials."""
    study = _tiny(name="nodata", baseline=TINY_BASELINE.replace(dataset="cifar10", dataset_options={}))
    with pytest.raises(UserError, match="cifar10: data_dir is required"):
        run_ablation(study, backend=backend, reports_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "nodata").exists()


def test_the_ray_backend_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(UserError, match="--retry-failed needs the optuna backend"):
        run_ablation(_tiny(), backend="ray", retry_failed=True, reports_dir=str(tmp_path), progress=False)
    with pytest.raises(UserError, match="consecutive seeds"):
        run_ablation(_tiny(seeds=[0, 5]), backend="ray", reports_dir=str(tmp_path), progress=False)
    with pytest.raises(UserError, match="unknown backend 'dask'"):
        run_ablation(_tiny(), backend="dask", reports_dir=str(tmp_path), progress=False)
    folder = tmp_path / "tiny"  # as a Ray run with seeds 0, 1 leaves it
    folder.mkdir()
    keys = {cell: cfg.key() for cell, cfg in _tiny().cells().items()}
    (folder / "ablation.json").write_text(json.dumps({"backend": "ray", "seeds": [0, 1], "cell_keys": keys}))
    with pytest.raises(UserError, match=r"ran on Ray with seeds \[0, 1\]; a Ray experiment keeps its runs"):
        run_ablation(_tiny(), seeds=3, backend="ray", reports_dir=str(tmp_path), progress=False)


@pytest.mark.slow
def test_a_broken_learning_rate_is_flagged_worse_on_digits(tmp_path):
    study = AblationStudy(
        name="broken_lr", seeds=3,
        # no augmentation: flips and shifts of 8x8 scans slow learning down too much for 2 epochs
        baseline=Baseline(model="proxy_resnet", dataset="digits", image_size=8, model_overrides={"width_multiplier": 0.25},
                          recipe={"epochs": 2, "batch_size": 16, "augment": False}),
        factors={"lr": {"tiny": {"recipe": {"lr": 1e-9}}}},
    )  # fmt: skip
    result = run_ablation(study, reports_dir=str(tmp_path), progress=False, device="cpu", threads=1)
    row = result.comparisons.set_index(["cell", "metric"]).loc[("lr=tiny", "accuracy")]
    assert row["method"] == "paired t" and row["n_pairs"] == 3
    assert row["verdict"] == "worse" and row["difference"] < -0.2, row.to_dict()
    base = result.summary.set_index(["cell", "metric"]).loc[("baseline", "accuracy")]
    assert base["mean"] > 0.5 and base["n"] == 3


@pytest.mark.service
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_ray_backend_runs_every_pair_once_and_resumes(ray_address, tmp_path):
    """The same space through Ray Tune (``BruteForceSampler``: each (cell, seed) combination once),
    on a real head; re-running restores the experiment and trains nothing."""
    pytest.importorskip("ray.tune")
    study = _tiny(name="on_ray", factors={"lr": {"huge": {"recipe": {"lr": 1e12, "optimizer": "sgd"}}}})
    first = run_ablation(study, backend="ray", address=ray_address, reports_dir=str(tmp_path), progress=False,
                         device="cpu", threads=1)
    assert sorted(zip(first.table["param_cell"], first.table["param_seed"])) == [
        ("baseline", 0), ("baseline", 1), ("lr=huge", 0), ("lr=huge", 1)]
    runs = first.runs.set_index(["cell", "seed"])
    assert list(runs.loc["lr=huge", "state"]) == ["failed", "failed"] and set(runs.loc["baseline", "state"]) == {"complete"}
    assert (first.study_dir / "ablation.csv").is_file() and not first.problems
    again = run_ablation(study, backend="ray", address=ray_address, reports_dir=str(tmp_path), progress=False,
                         device="cpu", threads=1)
    assert len(again.table) == 4
    pd.testing.assert_frame_equal(again.runs[["cell", "seed", "state", "accuracy"]],
                                  first.runs[["cell", "seed", "state", "accuracy"]])


@pytest.mark.slow
def test_an_ablation_killed_mid_run_resumes_without_retraining_finished_cells(tmp_path):
    """SIGKILL ``gsa-search ablate`` while a cell trains, re-run the same command: every (cell, seed)
    that had finished keeps its result (not retrained), the rest run once, and all pairs end complete."""
    import os
    import signal

    import optuna
    from optuna.trial import TrialState

    from tests.services import GsaSearch, wait_until

    (tmp_path / "k.toml").write_text(
        'name = "k"\nseeds = 2\n\n[baseline]\nmodel = "proxy_resnet"\ndataset = "synthetic"\nimage_size = 8\n'
        'dataset_options = { num_samples = 512 }\n\n[baseline.recipe]\nepochs = 3\n\n'
        '[factors.width]\nnarrow = { width_multiplier = 0.5 }\n'
    )
    gsa = GsaSearch(tmp_path, tmp_path / "logs")
    storage = f"sqlite:///{tmp_path / 'reports' / 'k' / 'study.db'}"
    args = ["ablate", "k.toml", "--quiet", "--threads", "1"]
    try:
        run = gsa.start(args)

        def finished_and_running():
            if not (tmp_path / "reports" / "k" / "ablation.json").exists():
                return None  # written once the study's tables exist: polling earlier races their creation
            try:
                trials = optuna.load_study(study_name="k", storage=storage).get_trials(deepcopy=False)
            except Exception:  # noqa: BLE001 - the study does not exist yet
                return None
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING and "cost" in t.user_attrs]
            return (done, running) if len(done) >= 1 and running else None

        wait_until(finished_and_running, timeout=120, alive=run, what="a finished and a training pair")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
        before = {(t.params["cell"], t.params["seed"]): (t.number, t.values)
                  for t in optuna.load_study(study_name="k", storage=storage).trials
                  if t.state == TrialState.COMPLETE}
        assert 1 <= len(before) < 4
        gsa.run(args, timeout=180)
    finally:
        gsa.kill_all()
    trials = optuna.load_study(study_name="k", storage=storage).trials
    complete = {(t.params["cell"], t.params["seed"]): (t.number, t.values)
                for t in trials if t.state == TrialState.COMPLETE}
    assert sorted(complete) == [("baseline", 0), ("baseline", 1), ("width=narrow", 0), ("width=narrow", 1)]
    for pair, result in before.items():
        assert complete[pair] == result, pair  # the same trial, not a retrained copy
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    cells = __import__("pandas").read_csv(tmp_path / "reports" / "k" / "cells.csv")
    assert set(cells["cell"]) == {"baseline", "width=narrow"}
