"""Study files (``--config FILE``): keys, types, errors naming file and key, flags overriding the
file, the resolved config written beside the results, and the shipped demo files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from runners import cli
from runners.settings import UserError
from runners.study_file import load_config, option_keys, resolved_config, write_config


def _sub(command: str):
    return cli._subparser(cli.build_parser(), command)


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_long_option_of_search_is_a_key():
    keys = option_keys(_sub("search"))
    for key in ("space", "objectives", "trials", "sampler", "pruner", "storage", "workers", "threads", "max_flops",
                "dataset", "dataset_options", "epochs", "lr", "seed", "study", "reports_dir", "backend", "address"):
        assert key in keys
    for output_switch in ("json", "quiet", "debug", "config", "help"):
        assert output_switch not in keys


def test_file_values_become_defaults_and_flags_override_them(tmp_path):
    path = _write(tmp_path, """
command = "search"
space = "gsa_block_v1"
objectives = ["accuracy", "flops"]
trials = 7
max-flops = "30M"
lr = 0.002
dataset_options = { val_fraction = 0.2, seed = 3 }
""")
    args = cli.parse_args(["search", "--config", str(path)])
    assert args.objectives == "accuracy,flops" and args.trials == 7 and args.max_flops == 30e6 and args.lr == 0.002
    settings = cli._search_settings(args)
    assert settings.objectives == ("accuracy", "flops")
    assert settings.dataset_options == {"val_fraction": 0.2, "seed": 3}
    assert settings.recipe == {"lr": 0.002}

    args = cli.parse_args(["search", "--config", str(path), "--trials", "3", "--objectives", "accuracy",
                           "--dataset-option", "seed=5"])
    settings = cli._search_settings(args)
    assert settings.n_trials == 3 and settings.objectives == ("accuracy",)
    assert settings.dataset_options == {"val_fraction": 0.2, "seed": 5}  # the flag's value wins


def test_yaml_files_work_like_toml(tmp_path):
    path = _write(tmp_path, "command: ablate\nspec: gsa_block_type_v1\nseeds: [0, 2]\nepochs: 2\n", "study.yaml")
    args = cli.parse_args(["ablate", "--config", str(path)])
    assert args.spec == "gsa_block_type_v1" and args.seeds == "0,2" and args.epochs == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("trails = 3", ["unknown key 'trails'", "did you mean 'trials'", "allowed:"]),
        ("trials = -3", ["trials", "positive integer", "-3"]),
        ("trials = 2.5", ["trials", "positive integer"]),
        ("trials = true", ["trials", "expected a positive integer", "got true"]),
        ("lr = \"fast\"", ["lr", "expected a number", "'fast'"]),
        ("optimizer = \"adam\"", ["optimizer", "'adam' is not allowed", "did you mean 'adamw'", "sgd, adamw"]),
        ("objectives = [\"acuracy\"]", ["objectives", "unknown objective 'acuracy'", "did you mean 'accuracy'"]),
        ("objectives = []", ["objectives", "non-empty list"]),
        ("sampler = \"tpee\"", ["sampler", "unknown sampler 'tpee'", "did you mean 'tpe'", "nsga2"]),
        ("dataset = \"digitz\"", ["dataset", "unknown dataset 'digitz'", "did you mean 'digits'"]),
        ("space = \"gsa_blok_v1\"", ["space", "unknown space 'gsa_blok_v1'", "gsa_block_v1"]),
        ("dataset_options = 3", ["dataset_options", "expected a table"]),
        ("dataset_options = { x = [1] }", ["dataset_options.x", "expected a number"]),
        ("space = 3", ["space", "expected a string"]),
        ("command = \"ablate\"", ["this file is for `gsa-search ablate`"]),
        ("command = \"train\"", ["command = 'train' is not allowed", "search, ablate"]),
        ("x = [", ["not valid TOML"]),
        ("[recipe]\nepochs = 3", ["unknown key 'recipe'"]),
        ("channels_last = \"yes\"", ["channels_last", 'expected true, false or "auto"', "'yes'"]),
    ],
)
def test_bad_files_name_the_file_the_key_and_what_is_allowed(tmp_path, text, expected):
    path = _write(tmp_path, text + "\n")
    with pytest.raises(UserError) as error:
        load_config(path, "search", _sub("search"))
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)


def test_ablate_file_errors(tmp_path):
    for text, part in (("spec = \"gsa_block_typ_v1\"", "did you mean 'gsa_block_type_v1'"),
                       ("seeds = [0, \"one\"]", "list of integer seeds"),
                       ("seeds = 1.5", "seeds"), ("space = \"gsa_block_v1\"", "unknown key 'space'")):
        path = _write(tmp_path, text + "\n")
        with pytest.raises(UserError, match="study.toml") as error:
            load_config(path, "ablate", _sub("ablate"))
        assert part in str(error.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "absent.toml", "search", _sub("search"))
    with pytest.raises(UserError, match=r"\.toml, \.yaml or \.yml"):
        load_config(_write(tmp_path, "{}", "study.json"), "search", _sub("search"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1\n", "study.yaml"), "search", _sub("search"))
    with pytest.raises(UserError, match="top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n", "study.yaml"), "search", _sub("search"))


def test_cli_error_is_one_line_and_creates_nothing(tmp_path, capsys):
    path = _write(tmp_path, "trials = \"ten\"\n")
    reports = tmp_path / "reports"
    code = cli.main(["search", "--config", str(path), "--reports-dir", str(reports)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gsa-search: error:") and "Traceback" not in err
    assert "trials" in err and str(path) in err
    assert not reports.exists()


def test_resolved_config_round_trips(tmp_path):
    path = _write(tmp_path, """
space = "gsa_block_v1"
objectives = ["accuracy", "flops"]
trials = 4
max_params = 400000
epochs = 2
dataset_options = { val_fraction = 0.25 }
""")
    args = cli.parse_args(["search", "--config", str(path), "--sampler", "random"])
    settings = cli._search_settings(args)
    config = resolved_config(args, _sub("search"), "search", study=settings.study_name, seed=settings.seed)
    saved = write_config(tmp_path / "out" / "config.toml", config, header="a header\nline two")
    text = saved.read_text()
    assert text.startswith("# a header\n# line two\n")
    data = tomllib.loads(text)
    assert data["command"] == "search" and data["objectives"] == ["accuracy", "flops"]
    assert data["dataset_options"] == {"val_fraction": 0.25} and data["sampler"] == "random"
    assert "json" not in data and "quiet" not in data
    again = cli._search_settings(cli.parse_args(["search", "--config", str(saved)]))
    assert again.study_name == settings.study_name  # written out explicitly
    assert again.identity() == settings.identity()  # the same study: same space, data, recipe, budgets
    differing = {k for k, v in again.to_dict().items() if v != settings.to_dict()[k]}
    assert differing <= {"study", "recipe"}  # the default name and seed 0, now explicit


@pytest.mark.parametrize("flag,expected", [([], None), (["--channels-last"], True), (["--no-channels-last"], False)])
def test_the_layout_switch_round_trips(tmp_path, flag, expected):
    """``--channels-last`` / ``--no-channels-last`` are written as true/false (unset: the recipe's
    "auto", left out) and read back; a file may also say "auto"."""
    args = cli.parse_args(["search", "--epochs", "1", *flag])
    config = resolved_config(args, _sub("search"), "search", study="s", seed=0)
    assert config.get("channels_last") == expected
    saved = write_config(tmp_path / "config.toml", config)
    again = cli.parse_args(["search", "--config", str(saved)])
    assert again.channels_last == expected
    assert cli._search_settings(again).base_recipe().channels_last == ("auto" if expected is None else expected)
    auto = cli.parse_args(["search", "--config", str(_write(tmp_path, 'channels_last = "auto"\n'))])
    assert auto.channels_last is None


def test_ablate_resolved_config_keeps_the_seed_list(tmp_path):
    args = cli.parse_args(["ablate", "gsa_block_type_v1", "--seeds", "2", "--epochs", "1"])
    config = resolved_config(args, _sub("ablate"), "ablate", study="gsa_block_type_v1", seeds=[0, 1])
    assert config["seeds"] == [0, 1] and config["spec"] == "gsa_block_type_v1" and config["epochs"] == 1
    saved = write_config(tmp_path / "config.toml", config)
    again = cli.parse_args(["ablate", "--config", str(saved)])
    assert again.seeds == "0,1" and again.spec == "gsa_block_type_v1" and again.study_name == "gsa_block_type_v1"


def test_shipped_demo_files_are_valid_studies():
    from search_spaces.ablation import load_study

    files = cli.demo_files()
    assert [p.name for p in files] == list(cli.DEMO_FILES)
    commands = []
    for path in files:
        data = tomllib.loads(path.read_text())
        commands.append(data["command"])
        args = cli.parse_args([data["command"], "--config", str(path)])
        if data["command"] == "search":
            settings = cli._search_settings(args).validate()
            assert settings.multi_objective and settings.resolved_pruner() == "pareto"
            assert settings.dataset == "digits-pairs"
        else:
            study = load_study(args.spec)
            assert study.baseline.dataset == "digits-pairs"
            assert args.seeds == "3"
    assert commands == ["search", "ablate", "ablate"]


def test_search_saves_its_config_and_rerunning_it_resumes(tmp_path, capsys):
    path = _write(tmp_path, """
command = "search"
space = "gsa_block_v1"
trials = 1
epochs = 1
dataset_options = { val_fraction = 0.2 }
study = "tiny"
""")
    reports = tmp_path / "reports"
    assert cli.main(["search", "--config", str(path), "--reports-dir", str(reports), "--quiet"]) == 0
    saved = reports / "tiny" / "config.toml"
    data = tomllib.loads(saved.read_text())
    assert data["study"] == "tiny" and data["trials"] == 1 and data["seed"] == 0
    assert data["reports_dir"] == str(reports)
    capsys.readouterr()
    assert cli.main(["search", "--config", str(saved), "--json", "--quiet"]) == 0
    import json

    document = json.loads(capsys.readouterr().out)
    assert document["counts"]["complete"] == 1  # resumed: the finished trial is reused, none added


def test_a_recipe_field_added_at_its_default_is_not_a_different_study():
    from runners.settings import SearchSettings

    settings = SearchSettings(space="gsa_block_v1", dataset="synthetic", recipe={"epochs": 2})
    stored = json.loads(json.dumps(settings.identity(), default=str))
    assert settings.identity_changes(stored) == []
    older = {**stored, "recipe": {k: v for k, v in stored["recipe"].items() if k != "augment_pad"}}
    assert settings.identity_changes(older) == []  # stored before the field existed: same study
    assert settings.identity_changes({**stored, "recipe": {**stored["recipe"], "epochs": 3}}) == ["recipe"]
    assert settings.identity_changes({**older, "recipe": {**older["recipe"], "augment_pad": 1}}) == ["recipe"]
    assert settings.identity_changes({**stored, "dataset": "digits-pairs"}) == ["dataset"]
    assert settings.identity_changes(None) == sorted(k for k, v in stored.items() if v is not None)
    # on digits the base recipe's shift changed to 2 pixels: a study stored before (4 pixels implied) differs
    digits = SearchSettings(space="gsa_block_v1", dataset="digits")
    now = json.loads(json.dumps(digits.identity(), default=str))
    before = {**now, "recipe": {k: v for k, v in now["recipe"].items() if k != "augment_pad"}}
    assert digits.identity_changes(before) == ["recipe"]
