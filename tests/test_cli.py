"""The ``gsa-search`` command line, run as a user runs it: a real subprocess of the console script.

User errors give one line on stderr, a non-zero exit, no traceback, and leave no files behind;
``--json`` prints exactly one JSON document with a fixed set of keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


CLI = [sys.executable, "-m", "runners.cli"]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=timeout)


USER_ERRORS = {
    "model typo": (["inspect", "proxy_gsa_resnt"], "did you mean 'proxy_gsa_resnet'"),
    "dataset typo": (["train", "proxy_resnet", "--dataset", "digts"], "did you mean 'digits'"),
    "missing data dir": (["train", "proxy_resnet", "--dataset", "cifar10", "--data-dir", "no/such/dir"], "does not exist"),
    "negative epochs": (["search", "--epochs", "-3"], "--epochs: expected a positive integer"),
    "unknown objective": (["search", "--objectives", "accuracy,flop"], "did you mean 'flops'"),
    "unknown space": (["search", "--space", "gsa_blok_v1"], "did you mean 'gsa_block_v1'"),
    "malformed storage": (["search", "--storage", "postgres//nope"], "is not a database URL"),
    "unreachable database": (["search", "--storage", "postgresql+psycopg://u:p@127.0.0.1:1/db", "--study", "x"],
                             "cannot open the database"),
    "sqlite with workers": (["search", "--storage", "sqlite:///s.db", "--workers", "2"], "SQLite cannot serve"),
    "pruner with two objectives": (["search", "--objectives", "accuracy,flops", "--pruner", "median"], "prunes on one objective"),
    "bad budget": (["search", "--max-flops", "lots"], "expected a number such as"),
    "unknown command": (["serach"], "invalid choice"),
    "value for a switch": (["train", "proxy_resnet", "--channels-last=maybe"], "ignored explicit argument 'maybe'"),
    "report of a missing study": (["report", "no-such-study"], "no study at reports/no-such-study"),
}


def test_user_errors_are_one_line_without_traceback_and_leave_nothing(tmp_path):
    # launched together: each is mostly interpreter start-up
    procs = {}
    for name, (args, _) in USER_ERRORS.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        procs[name] = (folder, subprocess.Popen([*CLI, *args], cwd=folder, env={**ENV, "PYTHONPATH": str(ROOT)},
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (folder, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        expected = USER_ERRORS[name][1]
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("gsa-search: error: ") and expected in lines[0], (name, lines[0])
        assert "Traceback" not in err and out == ""
        assert list(folder.iterdir()) == [], (name, list(folder.iterdir()))


def test_debug_shows_the_traceback(tmp_path):
    proc = _run("inspect", "proxy_gsa_resnt", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_of_every_subcommand_has_an_example(tmp_path):
    for command in ("list", "inspect", "train", "bench", "search", "ablate", "report", "compare", "demo"):
        proc = _run(command, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and "Example" in proc.stdout, command


def test_list_and_inspect_json(tmp_path):
    listed = json.loads(_run("list", "spaces", "--json", cwd=tmp_path).stdout)
    assert set(listed) == {"spaces"} and "gsa_block_v1" in listed["spaces"]
    models = json.loads(_run("list", "models", "proxy_*", "--json", cwd=tmp_path).stdout)
    assert "proxy_gsa_resnet" in models["models"] and "resnet50" not in models["models"]
    doc = json.loads(_run("inspect", "proxy_gsa_resnet", "--image-size", "16", "--json", cwd=tmp_path).stdout)
    assert {"model", "image_size", "num_classes", "params", "flops_convention", "stages", "config"} <= set(doc)
    assert doc["params"] > 0 and "multiply-accumulates" in doc["flops_convention"]
    assert sum(stage["flops"] for stage in doc["stages"] if "flops" in stage) > 0


def test_train_json(tmp_path):
    proc = _run("train", "proxy_resnet", "--dataset", "synthetic", "--image-size", "8", "--dataset-option",
                "num_samples=64", "--epochs", "2", "--json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"model", "dataset", "recipe", "accuracy", "flops", "params", "history"} <= set(doc)
    assert doc["recipe"]["epochs"] == 2 and len(doc["history"]) == 2
    assert doc["recipe"]["channels_last"] == "auto"  # the default: channels last on CPU
    proc = _run("train", "proxy_resnet", "--dataset", "synthetic", "--image-size", "8", "--dataset-option",
                "num_samples=64", "--epochs", "1", "--no-channels-last", "--json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recipe"]["channels_last"] is False


def test_search_json_and_resume(tmp_path):
    args = ["search", "--space", "gsa_block_v1", "--objectives", "accuracy,params", "--trials", "2",
            "--dataset", "synthetic", "--image-size", "8", "--dataset-option", "num_samples=64", "--epochs", "1",
            "--sampler", "random", "--study", "cli", "--json"]
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"study", "study_dir", "storage", "backend", "objectives", "directions", "counts", "trials",
            "pareto_front", "results", "wall_s", "interrupted"} == set(doc)
    assert doc["trials"] == 2 and doc["directions"] == ["maximize", "minimize"] and doc["pareto_front"]
    folder = tmp_path / "reports" / "cli"
    assert {"study.db", "trials.csv", "trials.parquet", "log.txt", "search.json"} <= {p.name for p in folder.iterdir()}
    assert "trial 1 complete" in (folder / "log.txt").read_text()
    again = json.loads(_run(*args[:-1], "--trials", "3", "--json", cwd=tmp_path).stdout)
    assert again["trials"] == 3
    report = json.loads(_run("report", "cli", "--json", cwd=tmp_path).stdout)
    assert {"study", "files", "counts", "front_size", "hypervolume", "reference"} <= set(report)
    assert (folder / "report.html").exists() and (folder / "report.md").exists()


def test_ablate_a_study_file_through_the_cli(tmp_path):
    (tmp_path / "tiny.toml").write_text(
        'name = "tiny"\nseeds = 2\n\n[baseline]\nmodel = "proxy_resnet"\ndataset = "synthetic"\nimage_size = 8\n'
        'dataset_options = { num_samples = 64 }\n\n[baseline.recipe]\nepochs = 1\n\n'
        '[factors.width]\nnarrow = { width_multiplier = 0.25 }\n'
    )
    proc = _run("ablate", "tiny.toml", "--json", "--quiet", "--threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    folder = tmp_path / "reports" / "tiny"
    assert {"trials.csv", "cells.csv", "ablation.csv"} <= {p.name for p in folder.iterdir()}
    table = __import__("pandas").read_csv(folder / "trials.csv")
    assert sorted(zip(table["cell"], table["seed"])) == [("baseline", 0), ("baseline", 1), ("width=narrow", 0),
                                                          ("width=narrow", 1)]
    assert isinstance(doc, dict)
    again = _run("ablate", "tiny.toml", "--json", "--quiet", "--threads", "1", cwd=tmp_path)
    assert again.returncode == 0 and len(__import__("pandas").read_csv(folder / "trials.csv")) == 4  # nothing rerun
    assert _run("report", "tiny", "--quiet", cwd=tmp_path).returncode == 0
    page = (folder / "report.html").read_text()
    assert 'id="ablation-section"' in page and "width=narrow" in page


# The demo (in-process, on tiny study files) is in test_cli_consistency.py.
