"""The search report (gsa_search.report, runners.report_cmd): built from a real tiny search and from
hand-made results tables (nothing completed, all failed, still running, Ray rows, three objectives),
checked as files and, with the `service` marker, in a real headless Chromium through the DevTools
protocol (console errors, rendered sizes, table rows, network requests, a screenshot and a PDF)."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytest

from gsa_search import metrics as M
from gsa_search.pareto import pareto_mask
from gsa_search.report import build_report, load_table
from gsa_search.report.hypervolume import hypervolume
from runners.report_cmd import importance_study, param_importances, report_main
from runners.results import results_table, save_results
from runners.settings import SearchSettings, UserError

ROOT = Path(__file__).resolve().parents[1]
SVG_NS = "{http://www.w3.org/2000/svg}"
CHROMIUM_ENV = "GSA_SEARCH_CHROMIUM"
ARTIFACTS_ENV = "GSA_SEARCH_ARTIFACTS"


# --- building studies ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-trial accuracy/FLOPs search on synthetic 8x8 data (2 epochs, CPU), run once per module."""
    from runners.optuna_runner import run_search

    reports = tmp_path_factory.mktemp("reports")
    settings = SearchSettings(space="gsa_block_v1", objectives=("accuracy", "flops"), n_trials=4, dataset="synthetic",
                              image_size=8, dataset_options={"num_samples": 64}, recipe={"epochs": 2, "device": "cpu"},
                              sampler="random", study="r", reports_dir=str(reports))  # fmt: skip
    result = run_search(settings, progress=False)
    assert len(result.table) == 4
    return result.study_dir


def row(trial: int, state: str, *, accuracy: float = math.nan, flops: float = math.nan, params: float = math.nan,
        latency_ms: float = math.nan, curve: Sequence[float] = (), reason: str = "", backend: str = "optuna",
        mixer: str | None = "gsa", positional: str | None = "axial", heads: int | None = 4,
        started: bool = True, seconds: float | None = 5.0) -> dict[str, Any]:
    begin = pd.Timestamp("2026-11-30T10:00:00") + pd.Timedelta(seconds=10 * trial)
    return {
        "trial": trial, "state": state, "reason": reason, "accuracy": accuracy, "flops": flops, "params": params,
        "latency_ms": latency_ms, "curve": list(curve), "epochs_run": len(curve),
        "duration_s": seconds, "datetime_start": begin.isoformat() if started else None,
        "datetime_complete": None if seconds is None else (begin + pd.Timedelta(seconds=seconds)).isoformat(),
        "worker": 0, "host": "testhost", "pid": 1234, "backend": backend,
        "config": json.dumps({"recipe": {"epochs": 3, "device": "cpu"}}),
        "param_mixer": mixer, "param_positional": positional, "param_heads": heads,
    }  # fmt: skip


def write_study(folder: Path, rows: list[dict[str, Any]], settings: dict[str, Any] | None) -> Path:
    save_results(results_table(rows), folder)
    if settings is not None:
        (folder / "search.json").write_text(json.dumps(settings, indent=2))
    return folder


def settings_for(objectives: Sequence[str], **extra: Any) -> dict[str, Any]:
    base = SearchSettings(space="gsa_block_v1", objectives=tuple(objectives), n_trials=10, dataset="synthetic",
                          image_size=8, recipe={"epochs": 3}, sampler="random").to_dict()
    base.update(extra)
    return base


def rich_rows(backend: str = "optuna") -> list[dict[str, Any]]:
    """Every state, several mixers, a measured latency, ties on the front, a budget violation."""
    c = [0.2, 0.4, 0.5]
    return [
        row(0, "complete", accuracy=0.62, flops=4.0e6, params=3.0e5, latency_ms=1.2, curve=c, backend=backend),
        row(1, "complete", accuracy=0.71, flops=9.0e6, params=6.0e5, latency_ms=2.5, curve=c, mixer="conv",
            positional=None, heads=None, backend=backend),
        row(2, "pruned", flops=7.0e6, params=5.0e5, curve=[0.1, 0.15], backend=backend,
            reason="pruned at epoch 2 by the pareto pruner: 2 cheaper trials were better"),
        row(3, "complete", accuracy=0.55, flops=2.0e6, params=1.5e5, latency_ms=0.9, curve=c, mixer="explicit",
            positional=None, heads=None, backend=backend),
        row(4, "infeasible", accuracy=0.0, flops=5.0e7, params=2.0e6, backend=backend,
            reason="FLOPs 50M > budget 20M (multiply-accumulates per image)"),
        row(5, "failed", curve=[0.1], backend=backend, reason="DivergenceError: loss is NaN at epoch 1"),
        row(6, "complete", accuracy=0.50, flops=6.0e6, params=4.0e5, latency_ms=1.6, curve=c, backend=backend),  # dominated
        row(7, "complete", accuracy=0.71, flops=9.0e6, params=6.5e5, latency_ms=2.4, curve=c, positional="2d",
            backend=backend),  # ties trial 1 on accuracy/FLOPs
        row(8, "interrupted", curve=[0.3], backend=backend, reason="interrupted by the user (Ctrl-C) while training"),
        row(9, "complete", accuracy=0.80, flops=1.5e7, params=9.0e5, latency_ms=3.1, curve=c, mixer="conv",
            positional=None, heads=None, backend=backend),
    ]  # fmt: skip


CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {
    "rich": (rich_rows(), settings_for(["accuracy", "flops"], max_flops=2e7)),
    "ray-three-objectives": (rich_rows("ray"), settings_for(["accuracy", "flops", "params"], backend="ray")),
    "latency": (rich_rows(), settings_for(["accuracy", "latency_ms"])),
    "single-objective": (rich_rows(), settings_for(["accuracy"])),
    "zero-completed": ([row(0, "pruned", flops=3e6, curve=[0.1], reason="pruned at epoch 1"),
                        row(1, "infeasible", accuracy=0.0, flops=9e7, reason="over budget"),
                        row(2, "failed", reason="RuntimeError: out of memory"),
                        row(3, "running", flops=4e6, curve=[0.2], seconds=None)],
                       settings_for(["accuracy", "flops"])),
    "all-failed": ([row(i, "failed", reason=f"ValueError: bad config {i}") for i in range(3)],
                   settings_for(["accuracy", "flops"])),
    "still-running": ([row(0, "complete", accuracy=0.5, flops=3e6, params=1e5, curve=[0.3, 0.5]),
                       row(1, "complete", accuracy=0.6, flops=5e6, params=2e5, curve=[0.4, 0.6]),
                       row(2, "running", flops=4e6, curve=[0.2], seconds=None),
                       row(3, "waiting", started=False, seconds=None)],
                      settings_for(["accuracy", "flops"])),
    "empty-table": ([], settings_for(["accuracy", "flops"])),
    "no-search-json": (rich_rows(), None),
    "csv-only": (rich_rows(), settings_for(["accuracy", "flops"])),
    "objective-never-measured": (rich_rows(), settings_for(["accuracy", "latency_ms"])),
}


# --- reading what was written -----------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The cell texts of every ``<table id=...>`` in a page (body rows only)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._table and self._body:
            self.tables[self._table].append([])
        elif tag == "td" and self._table and self._body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def md_table_after(markdown: str, heading_prefix: str) -> list[list[str]]:
    """Body rows of the first pipe table after the heading starting with ``heading_prefix``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_prefix))
    rows, seen_rule = [], False
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if seen_rule:
                break
            continue
        if re.fullmatch(r"\|( -+:? \|)+", line):
            seen_rule = True
            continue
        if seen_rule:
            cells = re.split(r"(?<!\\) \| ", line[2:-2])
            rows.append([c.replace("\\|", "|").replace("\\\\", "\\") for c in cells])
    return rows


def inline_svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def expected_points(table: pd.DataFrame, x: str) -> int:
    """Trials a scatter against ``x`` must draw, counted independently of the figure code."""
    count = 0
    for _, r in table.iterrows():
        if r["state"] not in ("complete", "pruned", "infeasible") or not np.isfinite(r.get(x, np.nan)):
            continue
        y = r["accuracy"]
        if r["state"] == "pruned":
            curve = json.loads(r["curve"]) if isinstance(r["curve"], str) else []
            y = curve[-1] if curve else np.nan
        count += bool(np.isfinite(y))
    return count


def expected_front(table: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    done = table[table["state"] == "complete"]
    if done.empty:
        return done
    return done[pareto_mask(done[list(objectives)].to_numpy(dtype=float), [M.DIRECTIONS[o] for o in objectives])]


def expected_hypervolume(table: pd.DataFrame, objectives: Sequence[str]) -> float | None:
    done = table[table["state"] == "complete"]
    if done.empty:
        return None
    reference = [0.0 if M.DIRECTIONS[o] == "maximize" else 1.1 * float(done[o].max()) for o in objectives]
    if not np.all(np.isfinite(reference)):  # a minimised objective never measured: no reference, no hypervolume
        return None
    return hypervolume(done[list(objectives)].to_numpy(dtype=float), [M.DIRECTIONS[o] for o in objectives], reference)


def check_report(study_dir: Path, objectives: Sequence[str], files: Sequence[Path]) -> dict[str, Any]:
    """The checks every report must pass; returns what the browser test compares against."""
    table = load_table(study_dir)
    page = (study_dir / "report.html").read_text()
    markdown = (study_dir / "report.md").read_text()
    for name in ("report.html", "report.md", "pareto.csv", "trials.csv"):
        assert (study_dir / name).is_file(), name
    for path in files:
        assert Path(path).is_file() and Path(path).stat().st_size > 0, path

    # self-contained: nothing fetched, no scripts
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.I), "external fetch in the page"
    assert "<script" not in page.lower() and "@import" not in page and "url(http" not in page
    assert "<style>" in page and "@media print" in page

    # figures: one <title> per plotted trial, in the files and inline
    expected_titles = 0
    for cost in (M.FLOPS, M.PARAMS, M.LATENCY_MS):
        svg = study_dir / "figures" / f"accuracy-vs-{cost}.svg"
        n = expected_points(table, cost)
        if n == 0:
            assert not svg.exists(), svg
            continue
        assert svg.exists() and (study_dir / "figures" / f"accuracy-vs-{cost}.png").exists()
        titles = list(ET.parse(svg).getroot().iter(f"{SVG_NS}title"))
        assert len(titles) == n, (svg.name, len(titles), n)
        trials = sorted(int(re.match(r"trial (\d+)", t.text).group(1)) for t in titles)
        assert len(set(trials)) == n
        expected_titles += n
        assert f"](figures/accuracy-vs-{cost}.png)" in markdown
    svgs = inline_svgs(page)
    assert sum(len(list(s.iter(f"{SVG_NS}title"))) for s in svgs) == expected_titles
    ids = [e.get("id") for s in svgs for e in s.iter() if e.get("id")]
    assert len(ids) == len(set(ids)), "inline SVGs share ids"

    # the front table: the pareto_mask rows, the same in HTML, Markdown and pareto.csv
    front = expected_front(table, objectives)
    tables = html_tables(page)
    pareto_csv = pd.read_csv(study_dir / "pareto.csv")
    assert sorted(pareto_csv["trial"].tolist()) == sorted(front["trial"].tolist())
    if len(front):
        html_rows = tables["pareto-front"]
        assert len(html_rows) == len(front)
        assert sorted(int(r[0]) for r in html_rows) == sorted(front["trial"].tolist())
        heading = "### Front" if len(objectives) > 1 else "### Best"
        assert md_table_after(markdown, heading) == html_rows
    else:
        assert "pareto-front" not in tables

    # the hypervolume shown is hypervolume(...) with the stated reference
    hv = expected_hypervolume(table, objectives)
    match = re.search(r'id="hypervolume" data-value="([^"]+)"', page)
    if hv is None:
        assert match is None and "no hypervolume yet" in page
    else:
        assert float(match.group(1)) == pytest.approx(hv, rel=1e-12, abs=0)
        assert f"exact value {match.group(1)}" in markdown

    # failures, prunings, infeasible configs with their reasons
    problems = table[table["state"].isin(["failed", "pruned", "infeasible", "interrupted", "died"])]
    if len(problems):
        assert len(tables["problems"]) == len(problems)
        for reason in problems["reason"]:
            assert html.escape(reason, quote=False) in page and reason.replace("|", "\\|") in markdown
    return {"front": len(front), "problems": len(problems), "titles": expected_titles,
            "svgs": len(svgs), "in_progress": int(table["state"].isin(["running", "waiting"]).sum())}


# --- tests: the real search ----------------------------------------------------------------------------------------


def test_report_of_a_real_search(real_study: Path) -> None:
    document, text = report_main(real_study, json_out=True)
    checks = check_report(real_study, ["accuracy", "flops"], [Path(f) for f in document["files"]])
    table = load_table(real_study)
    assert document["study"] == "r" and document["counts"]["complete"] == 4 and document["trials"] == 4
    assert document["front_size"] == checks["front"] == len(document["pareto_front"])
    assert document["hypervolume"] == pytest.approx(expected_hypervolume(table, ["accuracy", "flops"]))
    assert document["reference"] == {"accuracy": 0.0, "flops": pytest.approx(1.1 * table["flops"].max())}
    json.dumps(document)
    assert "report for study r" in text and "report.html" in text
    page = (real_study / "report.html").read_text()
    for expected in ("FLOPs (multiply-accumulates per image)", "FLOPs (MACs per image)", "synthetic", "random",
                     "auto (pareto)", "accuracy (maximize), flops (minimize)", "8 epochs trained in total",
                     "Optuna SQLite storage study.db", "torch", "gsa-search commit", "recorded by the search",
                     "synthetic N(0, 1) images",
                     "PedAnovaImportanceEvaluator", "For reaching the Pareto front", "Reference point"):
        assert expected in page, expected
    assert (real_study / "figures" / "hypervolume-history.svg").exists()


def test_report_reads_only_the_saved_files(real_study: Path, tmp_path: Path) -> None:
    """Without the storage and the log the report is the same study (the table is the record)."""
    copy = tmp_path / "r"
    copy.mkdir()
    for name in ("trials.parquet", "search.json"):
        shutil.copy(real_study / name, copy / name)
    paths = build_report(copy)  # no importance provider: the domain library does not import Optuna
    page = paths.html.read_text()
    assert "no storage file in the study folder" in page
    assert "Not computed: parameter importance uses Optuna" in page
    assert paths.summary["front_size"] == report_main(real_study)[0]["front_size"]


# --- tests: hand-made tables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_report_of_hand_made_tables(case: str, tmp_path: Path) -> None:
    rows, settings = CASES[case]
    if case == "objective-never-measured":
        rows = [{**r, "latency_ms": math.nan} for r in rows]
    study_dir = write_study(tmp_path / case, rows, settings)
    if case == "csv-only":  # an older or hand-written table: CSV types are guessed on reading
        (study_dir / "trials.parquet").unlink()
    document, text = report_main(study_dir)
    objectives = list((settings or {}).get("objectives") or ["accuracy", "flops"])
    checks = check_report(study_dir, objectives, [Path(f) for f in document["files"]])
    table = load_table(study_dir)
    page = (study_dir / "report.html").read_text()
    assert document["counts"] == {s: int((table["state"] == s).sum()) for s in document["counts"]}
    assert document["front_size"] == checks["front"]
    hv = expected_hypervolume(table, objectives)
    assert document["hypervolume"] == (None if hv is None else pytest.approx(hv))
    if table.empty or (table["state"] != "complete").all():
        assert "No trial has completed yet" in page and "no completed trial yet" in text
        assert document["reference"] is None
    if checks["in_progress"]:
        assert "still running" in page and "Still in progress" in page
        assert len(html_tables(page)["in-progress"]) == checks["in_progress"]
    completed = int((table["state"] == "complete").sum())
    if 0 < completed < 4:
        assert "Skipped: " in page and "needs at least 4" in page
    if case == "ray-three-objectives":
        assert "backend</dt><dd>ray" in page and "params (minimize)" in page
        assert "no storage file in the study folder" in page
    if case == "latency":
        assert (study_dir / "figures" / "accuracy-vs-latency_ms.svg").exists()
    if case == "no-search-json":
        assert "search.json is missing" in page
    if case == "objective-never-measured":
        assert "no completed trial has a value for every objective" in page.lower() and document["hypervolume"] is None
    if case == "single-objective":
        assert "<h2>Best trial</h2>" in page
    if case == "rich":
        assert "FLOPs &lt;= 20M (multiply-accumulates per image)" in page
        titles = [t.text for s in inline_svgs(page) for t in s.iter(f"{SVG_NS}title")]
        assert any(t.startswith("trial 2 (pruned)") and "accuracy when stopped 0.15" in t for t in titles)
        assert any(t.startswith("trial 4 (infeasible") for t in titles)
        assert any("mixer=conv" in t for t in titles)


def test_an_ablation_section_renders_a_comparisons_frame(tmp_path: Path) -> None:
    """The hook for ablation statistics: any DataFrame of comparisons becomes one more table (the full
    ablation sections, from ablation.csv/cells.csv/runs.csv, are in test_report_ablation.py)."""
    rows, settings = CASES["rich"]
    study_dir = write_study(tmp_path / "ablation", rows, settings)
    comparisons = pd.DataFrame({"cell": ["axial", "2d | local"], "metric": ["accuracy", "accuracy"],
                                "difference": [0.0123, -0.0456], "p_adjusted": [0.01, math.nan],
                                "paired": [True, False], "verdict": ["better", "within noise"]})
    paths = build_report(study_dir, comparisons=comparisons)
    page, markdown = paths.html.read_text(), paths.markdown.read_text()
    assert html_tables(page)["ablation"] == [["axial", "accuracy", "0.0123", "0.01", "True", "better"],
                                             ["2d | local", "accuracy", "-0.0456", "-", "False", "within noise"]]
    assert md_table_after(markdown, "### Differences from the baseline") == html_tables(page)["ablation"]
    assert 'id="ablation-section"' not in build_report(study_dir).html.read_text()


def test_importance_ranks_the_parameter_that_decides_accuracy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        mixer = ["gsa", "conv", "explicit", "mhsa"][i % 4]
        accuracy = 0.9 + 0.01 * rng.random() if mixer == "gsa" else 0.3 + 0.2 * rng.random()
        rows.append(row(i, "complete", accuracy=accuracy, flops=1e6 * (1 + rng.random()), curve=[accuracy],
                        mixer=mixer, positional=str(rng.choice(["axial", "2d", "none"])), heads=int(rng.choice([2, 4]))))
    table = results_table(rows)
    study = importance_study(table, ["accuracy", "flops"])
    assert len(study.trials) == 40
    assert study.trials[0].distributions["mixer"].choices == ("conv", "explicit", "gsa", "mhsa")
    result = param_importances(table, ["accuracy", "flops"])
    assert "PedAnovaImportanceEvaluator" in result.evaluator
    (title, ranking), (front_title, _) = result.rankings
    assert title.startswith("For accuracy") and front_title.startswith("For reaching the Pareto front")
    assert next(iter(ranking)) == "mixer" and sum(ranking.values()) == pytest.approx(1.0)


def test_missing_study_is_a_user_error_with_a_suggestion(real_study: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no study at .*/rr: run `gsa-search search --study rr --reports-dir .*` "
                                        r"first; did you mean 'r'\?"):
        report_main(real_study.parent / "rr")
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match=r"has no results table \(trials.parquet or trials.csv\)"):
        report_main(tmp_path / "half")


def test_the_templates_ship_as_package_data() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "report/templates/*.j2" in config["tool"]["setuptools"]["package-data"]["gsa_search"]
    templates = ROOT / "gsa_search" / "report" / "templates"
    assert (templates / "report.html.j2").is_file() and (templates / "report.md.j2").is_file()


# --- a real headless browser (Chrome DevTools protocol over --remote-debugging-pipe) ---------------------------------


def chromium_binary() -> str | None:
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies
    out, NUL-separated JSON): the DevTools protocol with the standard library only."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = map(self._above_4, os.pipe())
        self._from_chrome, from_chrome_w = map(self._above_4, os.pipe())
        self.argv = [binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"]
        # bash puts our pipe ends on fds 3 and 4 and execs Chromium (no preexec_fn: safe with threads)
        wiring = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([shutil.which("bash") or "/bin/bash", "-c", wiring, *self.argv],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            pass_fds=(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    @staticmethod
    def _above_4(fd: int) -> int:
        """``fd`` moved to a number above 4, so that placing the pipes on 3 and 4 cannot clobber one."""
        import fcntl

        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return moved

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == self._next, timeout=timeout, what=method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, predicate: Any, *, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if predicate(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium: no answer to {what} within {timeout:.0f} s\n{self.log_tail()}")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe while waiting for {what}\n{self.log_tail()}")
                self._buffer += chunk

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]) if self.log.exists() else ""

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (RuntimeError, TimeoutError, OSError):
                    pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child only
                self.process.wait(timeout=10)
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass


PAGE_PROBE = """JSON.stringify({
  svgs: [...document.querySelectorAll('svg')].map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; }),
  imgs: [...document.querySelectorAll('img')].map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height, e.complete, e.naturalWidth]; }),
  rows: Object.fromEntries([...document.querySelectorAll('table[id]')].map(t => [t.id, t.tBodies[0].rows.length])),
  titles: document.querySelectorAll('svg title').length,
  pointsWithTitleFirst: [...document.querySelectorAll('svg g.trial-point')].filter(g => g.firstElementChild && g.firstElementChild.tagName === 'title').length,
  hypervolume: (document.getElementById('hypervolume') || {dataset: {}}).dataset.value || null,
  scripts: document.scripts.length,
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
})"""


def _artifact(path: Path) -> None:
    if os.environ.get(ARTIFACTS_ENV):
        folder = ROOT / "reports" / ".artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)


def open_in_browser(page: Path, out: Path, name: str) -> dict[str, Any]:
    """Load ``page`` in headless Chromium at 1280x2000; returns the probe, errors, requests; writes
    ``<name>.png`` (full page) and ``<name>.pdf`` (print stylesheet) into ``out``."""
    binary = chromium_binary()
    if binary is None:
        from services import unavailable

        unavailable(f"no Chromium found (set {CHROMIUM_ENV}, or install Debian's `chromium` package: "
                    "apt-get install -y chromium)")
    profile = Path(tempfile.mkdtemp(prefix="gsa-chromium-", dir=out))
    browser = Browser(binary, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            browser.send(domain, session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired", timeout=60, what="the page's load event")
        probe = json.loads(browser.send("Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True},
                                        session=session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        (out / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
        browser.send("Emulation.setEmulatedMedia", {"media": "print"}, session=session)
        printed = json.loads(browser.send("Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True},
                                          session=session)["result"]["value"])
        pdf = browser.send("Page.printToPDF", {"printBackground": False}, session=session, timeout=120)
        (out / f"{name}.pdf").write_bytes(base64.b64decode(pdf["data"]))
    finally:
        browser.close()
    events = browser.events
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e["params"] for e in events
               if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")]
    errors += [e["params"]["entry"] for e in events
               if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    for suffix in (".png", ".pdf"):
        _artifact(out / f"{name}{suffix}")
    return {"probe": probe, "printed": printed, "errors": errors, "requests": requests}


@pytest.mark.service
@pytest.mark.parametrize("which", ["real-search", "rich"])
def test_the_page_renders_in_a_headless_browser(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if which == "real-search":
        study_dir = request.getfixturevalue("real_study")
        objectives = ["accuracy", "flops"]
    else:
        rows, settings = CASES["rich"]
        study_dir = write_study(tmp_path / "rich", rows, settings)
        objectives = settings["objectives"]
    document, _ = report_main(study_dir)
    checks = check_report(study_dir, objectives, [Path(f) for f in document["files"]])
    seen = open_in_browser(study_dir / "report.html", tmp_path, f"report-{which}")

    assert not seen["errors"], f"console errors: {seen['errors']}"
    page_url = (study_dir / "report.html").resolve().as_uri()
    assert seen["requests"] == [page_url], f"the page fetched more than itself: {seen['requests']}"
    probe = seen["probe"]
    assert probe["scripts"] == 0
    assert len(probe["svgs"]) == checks["svgs"] > 0
    for sizes in (probe["svgs"], seen["printed"]["svgs"], [i[:2] for i in probe["imgs"]]):
        assert all(w > 0 and h > 0 for w, h in sizes), sizes
    assert probe["titles"] == probe["pointsWithTitleFirst"] == checks["titles"]
    assert probe["rows"]["pareto-front"] == checks["front"]
    if checks["problems"]:
        assert probe["rows"]["problems"] == checks["problems"]
    assert float(probe["hypervolume"]) == pytest.approx(document["hypervolume"], rel=1e-12)
    assert probe["width"] <= 1280, "the page scrolls sideways at 1280 px"
    screenshot = tmp_path / f"report-{which}.png"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    assert (tmp_path / f"report-{which}.pdf").read_bytes()[:5] == b"%PDF-"
