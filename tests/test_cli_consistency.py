"""The command line as one product: every subcommand has ``--help`` with an example and uses the
same option names for the same things; ``--json`` prints exactly one standard JSON document on stdout
with a fixed schema per command; long work shows progress on stderr (plain, rate-limited lines when
stderr is not a terminal) that ``--quiet`` silences; a user's mistake is one ``gsa-search: error:``
line on stderr, exit 2, no traceback, and no study folder left behind.

Runs in-process through :func:`runners.cli.main` (capturing at the file-descriptor level, so stray
output from libraries would show), on tiny data: synthetic 8x8 images, 1 epoch, 1-2 trials."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners import cli
from runners.optuna_runner import Progress
from runners.results import results_table
from runners.settings import SearchSettings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("list", "inspect", "train", "bench", "search", "ablate", "report", "compare", "demo")
TINY_DATA = ["--dataset", "synthetic", "--image-size", "8", "--dataset-option", "num_samples=64"]
TINY_STUDY = ('name = "tiny"\nseeds = 1\n\n[baseline]\nmodel = "proxy_resnet"\ndataset = "synthetic"\n'
              'image_size = 8\ndataset_options = { num_samples = 64 }\nmodel_overrides = { width_multiplier = 0.25 }\n\n'
              '[baseline.recipe]\nepochs = 1\nbatch_size = 16\n\n[factors.width]\nnarrow = { width_multiplier = 0.125 }\n')


def _no_constant(name: str) -> None:
    raise ValueError(f"not standard JSON: {name}")


def run(capfd, *argv: str) -> tuple[int, str, str]:
    """``gsa-search ARGV`` in-process: (exit code, stdout, stderr)."""
    capfd.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def one_document(out: str) -> dict:
    """stdout holds exactly one standard JSON document (no NaN, nothing before or after it)."""
    document, end = json.JSONDecoder(parse_constant=_no_constant).raw_decode(out.strip())
    assert end == len(out.strip()), f"more than one JSON document on stdout: {out[end:end + 200]!r}"
    assert isinstance(document, dict)
    return document


def check_schema(document: dict, schema: dict[str, type | tuple[type, ...]], what: str) -> None:
    for key, kind in schema.items():
        assert key in document, f"{what}: --json lacks {key!r} (has {sorted(document)})"
        assert isinstance(document[key], kind), f"{what}: {key} is {type(document[key]).__name__}, expected {kind}"


NUMBER = (int, float)
SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "list": {"models": list},
    "inspect": {"model": str, "image_size": int, "num_classes": int, "params": int, "flops_convention": str,
                "stages": list, "config": dict},
    "bench": {"environment": str, "blocks": list, "ratios": list, "files": list},
    "train": {"model": str, "dataset": str, "recipe": dict, "accuracy": NUMBER, "flops": NUMBER, "params": int,
              "history": list},
    "search": {"study": str, "study_dir": str, "storage": str, "backend": str, "objectives": list,
               "directions": list, "counts": dict, "trials": int, "pareto_front": list, "results": list,
               "wall_s": NUMBER, "interrupted": bool},
    "ablate": {"study": str, "definition": str, "design": str, "study_dir": str, "storage": str, "backend": str,
               "cells": dict, "baseline": str, "seeds": list, "primary_metric": str, "metrics": list, "counts": dict,
               "trials": int, "scheduled": int, "reused": int, "summary": list, "comparisons": list, "files": list,
               "wall_s": NUMBER, "interrupted": bool, "problems": list, "flops_convention": str},
    "report": {"study": str, "study_dir": str, "files": list, "counts": dict, "trials": int, "front_size": int,
               "hypervolume": (float, int, type(None)), "reference": (dict, type(None)), "objectives": list,
               "directions": list, "pareto_front": list},
    "compare": {"studies": list, "out_dir": str, "files": list, "objectives": list, "directions": list,
                "reference": (dict, type(None)), "front_sizes": dict, "hypervolume": (dict, type(None)),
                "dominance": list, "shared_cells": list},
    "demo": {"steps": list, "wall_s": NUMBER, "interrupted": bool},
}
DEMO_STEP = {"file": str, "command": str, "study": str, "study_dir": str, "seconds": NUMBER, "interrupted": bool,
             "report": str, "result": dict}


# --- help and option names -----------------------------------------------------------------------------------


def _options(command: str) -> dict[str, str]:
    sub = cli._subparser(cli.build_parser(), command)
    return {o: (a.help or "") for a in sub._actions for o in a.option_strings if o.startswith("--")}


def test_every_subcommand_has_help_with_an_example_of_itself():
    parser = cli.build_parser()
    for command in COMMANDS:
        text = cli._subparser(parser, command).format_help()
        assert "Example" in text and f"gsa-search {command}" in text.split("Example", 1)[1], command


def test_the_same_option_has_the_same_name_everywhere():
    options = {command: _options(command) for command in COMMANDS}
    for command, names in options.items():
        assert {"--json", "--quiet", "--debug", "--help"} <= set(names), command
        assert not [n for n in names if "_" in n], command  # dashes, never underscores
        # names we do not use: the canonical one is on the right
        for alias, canonical in {"--report-dir": "--reports-dir", "--out-dir": "--reports-dir",
                                 "--study-name": "--study", "--num-workers": "--workers", "--jobs": "--workers",
                                 "--n-trials": "--trials", "--num-threads": "--threads", "--output-json": "--json",
                                 "--silent": "--quiet", "--config-file": "--config"}.items():
            assert alias not in names, f"{command} has {alias}; use {canonical}"
    for command in ("search", "ablate", "report", "compare", "demo"):
        assert "--reports-dir" in options[command], command
    for command in ("search", "ablate"):
        assert {"--study", "--workers", "--threads", "--device", "--storage", "--backend", "--address", "--config",
                "--data-dir", "--epochs"} <= set(options[command]), command
    for command in ("train", "bench", "demo"):
        assert {"--device", "--threads"} <= set(options[command]), command
    assert "--seed" in options["train"] and "--seed" in options["search"] and "--seeds" in options["ablate"]
    assert "--workers" in options["demo"]
    # one wording per shared option
    for flag in ("--reports-dir", "--json", "--quiet", "--storage", "--backend", "--address", "--study", "--workers"):
        helps = {options[c][flag].split(" (default")[0] for c in COMMANDS if flag in options[c]}
        assert len(helps) == 1, (flag, helps)


def test_an_unknown_option_names_the_closest_one_and_the_subcommands_help(capfd):
    code, out, err = run(capfd, "search", "--trails", "3")
    assert code == 2 and out == ""
    assert err == ("gsa-search: error: unrecognized arguments: --trails 3; did you mean '--trials'? "
                   "(see gsa-search search --help)\n")
    code, _, err = run(capfd, "demo", "--epochs", "1")
    assert code == 2 and "did you mean" not in err and "(see gsa-search demo --help)" in err


# --- --json: one document, fixed schema; progress on stderr; --quiet silences it ------------------------------


def test_list_inspect_and_bench_print_one_json_document(capfd, tmp_path):
    code, out, _ = run(capfd, "list", "models", "proxy_*", "--json")
    assert code == 0
    check_schema(one_document(out), SCHEMAS["list"], "list")
    code, out, _ = run(capfd, "inspect", "proxy_gsa_resnet", "--image-size", "16", "--json")
    assert code == 0
    check_schema(one_document(out), SCHEMAS["inspect"], "inspect")
    code, out, err = run(capfd, "bench", "blocks", "--sizes", "6", "--batch", "1", "--channels", "8", "--heads", "2",
                         "--dim-key", "4", "--rounds", "1", "--repeats", "1", "--mhsa-max-size", "6", "--threads", "1",
                         "--device", "cpu", "--out", tmp_path / "bench", "--json", "--quiet")
    assert code == 0, err
    check_schema(one_document(out), SCHEMAS["bench"], "bench")


def test_train_json_progress_and_quiet(capfd):
    argv = ["train", "proxy_resnet", *TINY_DATA, "--epochs", "2", "--device", "cpu", "--threads", "1"]
    code, out, err = run(capfd, *argv, "--json")
    assert code == 0, err
    document = one_document(out)
    check_schema(document, SCHEMAS["train"], "train")
    assert len(document["history"]) == 2
    progress = err.strip().splitlines()
    assert [line.split(":")[0] for line in progress] == ["epoch 1/2", "epoch 2/2"], err
    assert "ETA" in progress[0] and "accuracy" in progress[1]
    code, out, err = run(capfd, *argv, "--quiet")
    assert code == 0 and err == "" and "accuracy" in out


def _search(capfd, reports: Path, study: str, *extra: str) -> tuple[int, str, str]:
    return run(capfd, "search", "--space", "gsa_block_v1", "--objectives", "accuracy,params", "--trials", "1",
               *TINY_DATA, "--epochs", "1", "--sampler", "random", "--device", "cpu", "--threads", "1",
               "--study", study, "--reports-dir", reports, *extra)


def test_search_report_and_compare_json_progress_and_quiet(capfd, tmp_path):
    reports = tmp_path / "reports"
    code, out, err = _search(capfd, reports, "a", "--json")
    assert code == 0, err
    check_schema(one_document(out), SCHEMAS["search"], "search")
    # not a terminal: plain progress lines, a start and an end line for one trial
    lines = err.strip().splitlines()
    assert lines[0] == "a: 0/1 trials done, 1 to run" and lines[-1].startswith("a: 1/1 trials (ok "), err
    assert "elapsed" in lines[-1] and "\r" not in err and len(lines) == 2, err

    code, out, err = _search(capfd, reports, "b", "--json", "--quiet")
    assert code == 0 and err == "", err
    check_schema(one_document(out), SCHEMAS["search"], "search --quiet")

    code, out, err = run(capfd, "report", "a", "--reports-dir", reports, "--json", "--quiet")
    assert code == 0 and err == "", err
    check_schema(one_document(out), SCHEMAS["report"], "report")

    code, out, err = run(capfd, "compare", "a", "b", "--reports-dir", reports, "--json", "--quiet")
    assert code == 0 and err == "", err
    document = one_document(out)
    check_schema(document, SCHEMAS["compare"], "compare")
    assert document["studies"] == ["a", "b"] and Path(document["out_dir"]) == reports / "compare-a-b"
    code, out, _ = run(capfd, "compare", "a", "b", "--reports-dir", reports)
    assert code == 0 and out.startswith("compared a, b") and not out.lstrip().startswith("{")


def test_ablate_json_and_quiet(capfd, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_STUDY)
    argv = ["ablate", tmp_path / "tiny.toml", "--seeds", "1", "--device", "cpu", "--threads", "1",
            "--reports-dir", tmp_path / "reports", "--json"]
    code, out, err = run(capfd, *argv, "--quiet")
    assert code == 0 and err == "", err
    document = one_document(out)
    check_schema(document, SCHEMAS["ablate"], "ablate")
    assert document["trials"] == 2 and document["seeds"] == [0]
    code, out, err = run(capfd, *argv)  # resumed: nothing to run, still one document; progress on stderr
    assert code == 0 and one_document(out)["reused"] == 2
    assert err.strip().splitlines()[0] == "tiny: 2/2 trials done, 0 to run (resumed)", err


def test_demo_json_on_tiny_study_files(capfd, tmp_path, monkeypatch):
    (tmp_path / "tiny_study.toml").write_text(TINY_STUDY)
    search = tmp_path / "search.toml"
    search.write_text('command = "search"\nstudy = "demo-search"\nspace = "gsa_block_v1"\n'
                      'objectives = ["accuracy", "flops"]\ntrials = 1\nepochs = 1\ndataset = "synthetic"\n'
                      'image_size = 8\ndataset_options = { num_samples = 64 }\nsampler = "random"\n')
    ablate = tmp_path / "ablate.toml"
    ablate.write_text(f'command = "ablate"\nspec = "{tmp_path / "tiny_study.toml"}"\nseeds = 1\n')
    monkeypatch.setattr(cli, "demo_files", lambda: [search, ablate])
    reports = tmp_path / "reports"
    argv = ["demo", "--device", "cpu", "--workers", "1", "--threads", "1", "--reports-dir", reports, "--json"]
    code, out, err = run(capfd, *argv, "--quiet")
    assert code == 0 and err == "", err
    document = one_document(out)
    check_schema(document, SCHEMAS["demo"], "demo")
    assert [s["command"] for s in document["steps"]] == ["search", "ablate"]
    for step in document["steps"]:
        check_schema(step, DEMO_STEP, f"demo step {step['file']}")
        assert Path(step["report"]).exists()
    assert (reports / "demo-search" / "config.toml").exists() and (reports / "tiny" / "report.html").exists()
    code, out, err = run(capfd, *argv)  # re-run: everything reused; progress and the plan on stderr only
    assert code == 0 and one_document(out)["steps"][0]["result"]["trials"] == 1
    assert err.startswith("gsa-search demo: 2 studies (1 worker(s) x 1 thread(s), device cpu)"), err


# --- Progress: a terminal gets a bar; a log gets a few plain lines ---------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _table(done: int, total: int):
    rows = [{"trial": i, "state": "complete", "accuracy": 0.5 + i / 100, "flops": 1e6 - i} for i in range(done)]
    rows += [{"trial": i, "state": "running"} for i in range(done, total)]
    return results_table(rows)


def test_progress_in_a_log_is_a_few_plain_lines_with_an_eta():
    settings = SearchSettings(objectives=("accuracy", "flops"), n_trials=50, study="log")
    log = io.StringIO()
    progress = Progress(settings, True, 0, stream=log)
    for done in range(1, 50):  # a worker poll every second would have drawn the bar 49 times
        progress.update(_table(done, 50))
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "log: 0/50 trials done, 50 to run"
    assert lines[1].startswith("log: 1/50 trials (ok 1, pruned 0, failed 0, infeasible 0, front 1, accuracy 0.5, "
                               "flops 1e+06), ") and "ETA" in lines[1]
    assert lines[2].startswith("log: 49/50 trials") and len(lines) == 3  # the rest waited for LINE_INTERVAL_S
    progress.close()
    assert len(log.getvalue().splitlines()) == 3  # closing twice adds nothing


def test_progress_lines_follow_the_interval(monkeypatch):
    settings = SearchSettings(n_trials=4, study="slow")
    log = io.StringIO()
    monkeypatch.setattr(Progress, "LINE_INTERVAL_S", 0.0)
    progress = Progress(settings, True, 1, stream=log)
    for done in (1, 2, 2, 3, 4):
        progress.update(_table(done, 4))
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "slow: 1/4 trials done, 3 to run (resumed)"
    assert [line.split(" trials")[0] for line in lines[1:]] == ["slow: 2/4", "slow: 3/4", "slow: 4/4"]  # one per change
    assert "ETA" not in lines[-1]


def test_progress_on_a_terminal_is_a_tqdm_bar_and_disabled_prints_nothing():
    settings = SearchSettings(n_trials=3, study="tty")
    terminal = _Terminal()
    progress = Progress(settings, True, 0, stream=terminal)
    progress.update(_table(2, 3))
    progress.close()
    assert "\r" in terminal.getvalue() and "2/3" in terminal.getvalue()
    silent = io.StringIO()
    progress = Progress(settings, False, 0, stream=silent)
    progress.update(_table(2, 3))
    progress.close()
    assert silent.getvalue() == ""


# --- user errors: one line, exit 2, no traceback, nothing created ----------------------------------------------
# (more in test_cli.py, run as subprocesses; study-file errors in detail in test_study_file.py)


def _bad_study_file(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


USER_ERRORS = {
    "model typo in train": (["train", "proxy_gsa_resnt", "--epochs", "1"],
                            "unknown model 'proxy_gsa_resnt'; did you mean 'proxy_gsa_resnet'? "
                            "(see `gsa-search list models`)"),
    "dataset typo in search": (["search", "--dataset", "digts"], "unknown dataset 'digts'; did you mean 'digits'?"),
    "no --data-dir for cifar10 (search)": (["search", "--dataset", "cifar10", "--trials", "1"],
                                           "cifar10: --data-dir is required: the folder that contains "
                                           "cifar-10-batches-py/"),
    "no --data-dir for cifar10 (train)": (["train", "proxy_resnet", "--dataset", "cifar10"],
                                          "add --dataset-option download=true"),
    "negative epochs (train)": (["train", "proxy_resnet", "--epochs", "-1"],
                                "argument --epochs: expected a positive integer, got '-1' (see gsa-search train --help)"),
    "zero epochs (ablate)": (["ablate", "gsa_content_positional_v1", "--epochs", "0"],
                             "argument --epochs: expected a positive integer, got '0'"),
    "--seed for an ablation": (["ablate", "gsa_content_positional_v1", "--seed", "3"],
                               "--seed does not apply to ablations: use --seeds (a count or a list; every cell runs "
                               "every seed)"),
    "ablate with no study": (["ablate", "--seeds", "2"], "ablate needs a study: a registered name (see `gsa-search "
                                                         "list studies`), FILE.toml, FILE.py:NAME"),
    "ablate study typo": (["ablate", "gsa_content_positionl_v1"], "did you mean 'gsa_content_positional_v1'"),
    "malformed storage (ablate)": (["ablate", "gsa_content_positional_v1", "--storage", "postgres//x"],
                                   "is not a database URL"),
    "report with --reports-dir": (["report", "nope"], "no study at {reports}/nope: run `gsa-search search --study nope "
                                                      "--reports-dir {reports}` first"),
    "compare one study": (["compare", "a"], "compare needs at least 2 studies"),
    "compare a missing study": (["compare", "a", "b"], "no study at {reports}/a"),
    "study file: wrong key": (["search", "--config", "{tmp}/trials.toml"],
                              "{tmp}/trials.toml: unknown key 'trails'; did you mean 'trials'?"),
    "study file: wrong type": (["search", "--config", "{tmp}/type.toml"],
                               "{tmp}/type.toml: epochs: expected a positive integer, got 'four'"),
    "study file: bad value": (["search", "--config", "{tmp}/value.toml"],
                              "{tmp}/value.toml: objectives: unknown objective 'flop'; did you mean 'flops'?"),
    "ablate study file: wrong key": (["ablate", "--config", "{tmp}/ablate.toml"],
                                     "{tmp}/ablate.toml: unknown key 'sedes'; did you mean 'seeds'?"),
    "missing study file": (["search", "--config", "{tmp}/absent.toml"], "--config {tmp}/absent.toml: no such file"),
}


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_user_errors_are_one_line_and_create_nothing(name, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "configs"
    config.mkdir()
    _bad_study_file(config, "trails = 3\n", "trials.toml")
    _bad_study_file(config, 'epochs = "four"\n', "type.toml")
    _bad_study_file(config, 'objectives = ["accuracy", "flop"]\n', "value.toml")
    _bad_study_file(config, 'command = "ablate"\nspec = "gsa_content_positional_v1"\nsedes = 3\n', "ablate.toml")
    reports = tmp_path / "out"
    argv, expected = USER_ERRORS[name]
    argv = [a.format(tmp=config, reports=reports) for a in argv]
    if "--reports-dir" in _options(argv[0]):
        argv += ["--reports-dir", str(reports)]
    code, out, err = run(capfd, *argv, "--json")
    expected = expected.format(tmp=config, reports=reports)
    assert code == 2, err
    assert err.startswith("gsa-search: error: ") and err.count("\n") == 1 and expected in err, err
    assert "Traceback" not in err and out == ""
    assert not reports.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


@pytest.mark.parametrize("command", ["search", "ablate"])
def test_an_unreachable_database_fails_fast_in_one_line(command, capfd, tmp_path):
    study = ["--trials", "1"] if command == "search" else ["gsa_content_positional_v1"]
    started = time.perf_counter()
    code, out, err = run(capfd, command, *study, "--storage", "postgresql+psycopg://u:p@127.0.0.1:1/x",
                         "--study", "x", "--reports-dir", tmp_path / "r")
    assert time.perf_counter() - started < 30
    assert code == 2 and err.count("\n") == 1 and "cannot open the database" in err and "127.0.0.1" in err, err
    assert "Traceback" not in err and out == "" and not (tmp_path / "r").exists()


def test_ablate_with_an_unreachable_ray_address_is_one_line(tmp_path):
    """As a subprocess: Ray must not start inside the test process. (``search`` is in test_ray_runner.py.)"""
    (tmp_path / "tiny.toml").write_text(TINY_STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "runners.cli", "ablate", "tiny.toml", "--backend", "ray", "--address",
                           "127.0.0.1:1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("gsa-search: error: cannot reach the Ray cluster at 127.0.0.1:1"), lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())  # no study folder left
