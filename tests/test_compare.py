"""Comparing studies (gsa_search.report.compare, runners.compare_cmd): dominance counts and union hypervolumes
against brute force, the comparison of hand-made study folders (files, tables, the common reference point,
figure tooltips), the user errors, and (``service`` marker) the page in a real headless Chromium."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report import (
    html_tables,
    inline_svgs,
    md_table_after,
    open_in_browser,
    rich_rows,
    row,
    settings_for,
    write_study,
)

from gsa_search.pareto import (
    dominance_counts,
    pareto_mask,
    to_minimization,
    union_hypervolume,
)
from gsa_search.report.compare import common_objectives
from gsa_search.report.hypervolume import hypervolume
from runners.compare_cmd import compare_main, output_dir
from runners.settings import UserError

SVG_NS = "{http://www.w3.org/2000/svg}"
DIRECTIONS = ["maximize", "minimize"]


# --- pure functions against brute force ---------------------------------------------------------------------------


def _brute_dominance(a: np.ndarray, b: np.ndarray, directions: list[str]) -> tuple[int, int]:
    a, b = to_minimization(a, directions), to_minimization(b, directions)

    def dom(p: np.ndarray, q: np.ndarray) -> bool:
        return all(x <= y for x, y in zip(p, q)) and any(x < y for x, y in zip(p, q))

    return sum(any(dom(p, q) for q in b) for p in a), sum(any(dom(q, p) for q in b) for p in a)


def _brute_hypervolume(points: np.ndarray, directions: list[str], reference: list[float]) -> float:
    """Unit cells of the integer grid between the best values and the reference that some point dominates."""
    pts = to_minimization(points, directions) if len(points) else np.zeros((0, len(directions)))
    ref = to_minimization(np.array([reference], dtype=float), directions)[0]
    low = np.minimum(pts.min(axis=0), ref) if len(pts) else ref
    count = 0
    for corner in itertools.product(*[range(int(lo), int(r)) for lo, r in zip(low, ref)]):
        centre = np.array(corner) + 0.5
        count += bool(len(pts)) and bool(np.any(np.all(pts <= centre, axis=1)))
    return float(count)


@pytest.mark.parametrize("objectives", [1, 2, 3])
def test_dominance_counts_match_brute_force(objectives: int) -> None:
    rng = np.random.default_rng(objectives)
    for _ in range(300):
        a = rng.integers(0, 4, size=(int(rng.integers(0, 7)), objectives)).astype(float)  # ties and duplicates
        b = rng.integers(0, 4, size=(int(rng.integers(0, 7)), objectives)).astype(float)
        if len(a) and rng.random() < 0.3:
            b = np.vstack([b, a[:1]])  # a point shared by both sets
        directions = [str(rng.choice(["maximize", "minimize"])) for _ in range(objectives)]
        assert dominance_counts(a, b, directions) == _brute_dominance(a, b, directions)


def test_dominance_counts_edge_cases() -> None:
    same = [[0.9, 10.0], [0.9, 10.0]]
    assert dominance_counts(same, same, DIRECTIONS) == (0, 0)  # equal points do not dominate each other
    assert dominance_counts(same, [[0.8, 10.0]], DIRECTIONS) == (2, 0)  # duplicates count once each
    assert dominance_counts([[0.8, 12.0]], same, DIRECTIONS) == (0, 1)
    assert dominance_counts([], same, DIRECTIONS) == (0, 0)
    assert dominance_counts(same, [], DIRECTIONS) == (0, 0)
    assert dominance_counts([[math.nan, 1.0]], [[0.1, 50.0]], DIRECTIONS) == (0, 0)


@pytest.mark.parametrize("objectives", [2, 3])
def test_union_hypervolume_matches_brute_force(objectives: int) -> None:
    rng = np.random.default_rng(10 + objectives)
    for _ in range(60 if objectives == 2 else 25):
        directions = [str(rng.choice(["maximize", "minimize"])) for _ in range(objectives)]
        reference = [0.0 if d == "maximize" else 6.0 for d in directions]
        sets = []
        for _ in range(int(rng.integers(1, 4))):
            points = rng.integers(1, 6, size=(int(rng.integers(0, 5)), objectives)).astype(float)
            if len(points) and rng.random() < 0.4:
                points = np.vstack([points, points[:1]])  # a duplicate
            sets.append(points)
        each, union = union_hypervolume(sets, directions, reference)
        assert each == [pytest.approx(_brute_hypervolume(s, directions, reference)) for s in sets]
        stacked = np.vstack(sets)
        assert union == pytest.approx(_brute_hypervolume(stacked, directions, reference))
        assert union >= max(each) - 1e-9 and union <= sum(each) + 1e-9


def test_common_objectives() -> None:
    assert common_objectives([["accuracy", "flops"], ["flops", "accuracy", "params"]]) == ["accuracy", "flops"]
    with pytest.raises(ValueError, match="share no objective"):
        common_objectives([["accuracy"], ["flops"]])


# --- two hand-made studies -----------------------------------------------------------------------------------------


def study_b_rows() -> list[dict[str, Any]]:
    c = [0.3, 0.5]
    return [
        row(0, "complete", accuracy=0.66, flops=3.0e6, params=2e5, curve=c),  # dominates A's trial 0 and 6
        row(1, "complete", accuracy=0.71, flops=9.0e6, params=6e5, curve=c, mixer="conv"),  # ties A's trials 1 and 7
        row(2, "complete", accuracy=0.85, flops=3.0e7, params=2e6, curve=c),  # the largest FLOPs: sets the reference
        row(3, "complete", accuracy=0.40, flops=8.0e6, params=5e5, curve=c),  # dominated
        row(4, "failed", reason="RuntimeError: boom"),
    ]


def front_points(rows: list[dict[str, Any]]) -> np.ndarray:
    done = np.array([[r["accuracy"], r["flops"]] for r in rows if r["state"] == "complete"])
    return done[pareto_mask(done, DIRECTIONS)]


@pytest.fixture
def two_studies(tmp_path: Path) -> tuple[Path, Path, Path]:
    reports = tmp_path / "reports"
    a = write_study(reports / "alpha", rich_rows(), settings_for(["accuracy", "flops"]))
    b = write_study(reports / "beta", study_b_rows(), settings_for(["accuracy", "flops", "params"]))
    return reports, a, b


def test_compare_two_studies(two_studies: tuple[Path, Path, Path]) -> None:
    reports, a, b = two_studies
    document, text = compare_main([a, b], reports_dir=reports)
    out = reports / "compare-alpha-beta"
    assert document["out_dir"] == str(out) == str(output_dir([a, b], reports))
    for name in ("report.html", "report.md", "fronts.csv", "dominance.csv", "hypervolume.csv",
                 "figures/fronts-accuracy-vs-flops.svg", "figures/fronts-accuracy-vs-flops.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in document["files"]
    assert not (out / "cells.csv").exists()  # no ablation
    json.dumps(document)

    # objectives: the common ones (beta also had params); one reference point for all
    assert document["objectives"] == ["accuracy", "flops"]
    # alpha's infeasible 50M trial is not completed: the largest completed FLOPs is beta's 30M
    assert document["reference"] == {"accuracy": 0.0, "flops": pytest.approx(1.1 * 3.0e7)}
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    reference = [0.0, 1.1 * 3.0e7]
    assert document["reference"]["flops"] == pytest.approx(reference[1])
    assert "1.1 x the largest completed value of all studies" in page and "beta also optimised params" in page

    fa, fb = front_points(rich_rows()), front_points(study_b_rows())
    assert document["front_sizes"] == {"alpha": len(fa), "beta": len(fb)}
    hv = document["hypervolume"]
    assert hv["alpha"] == pytest.approx(hypervolume(fa, DIRECTIONS, reference))
    assert hv["beta"] == pytest.approx(hypervolume(fb, DIRECTIONS, reference))
    assert hv["union"] == pytest.approx(hypervolume(np.vstack([fa, fb]), DIRECTIONS, reference))
    written = pd.read_csv(out / "hypervolume.csv")
    assert written["study"].tolist() == ["alpha", "beta", "union"]
    assert json.loads(written["reference"][0]) == {"accuracy": 0.0, "flops": pytest.approx(reference[1])}

    dominance = {(r["study"], r["other"]): r for r in document["dominance"]}
    assert set(dominance) == {("alpha", "beta"), ("beta", "alpha")}
    for (x, y), fx, fy in ((("alpha", "beta"), fa, fb), (("beta", "alpha"), fb, fa)):
        r = dominance[(x, y)]
        assert (r["dominating"], r["dominated"]) == _brute_dominance(fx, fy, DIRECTIONS)
        assert (r["front"], r["other_front"]) == (len(fx), len(fy))
    tables = html_tables(page)
    assert len(tables["dominance"]) == 2 and len(tables["hypervolume-table"]) == 3
    assert tables["dominance"][0][:2] == ["alpha", "beta"]
    assert md_table_after(markdown, "## Dominance between fronts") == tables["dominance"]
    assert md_table_after(markdown, "## Hypervolume") == tables["hypervolume-table"]
    assert len(tables["fronts"]) == len(fa) + len(fb) == len(pd.read_csv(out / "fronts.csv"))

    # the figure: one <title> per completed trial with both values, inline and in the file
    svg = out / "figures" / "fronts-accuracy-vs-flops.svg"
    titles = [t.text for t in ET.parse(svg).getroot().iter(f"{SVG_NS}title")]
    completed = sum(r["state"] == "complete" for r in rich_rows() + study_b_rows())
    assert len(titles) == completed
    assert sum(t.startswith("study alpha: trial") for t in titles) == 6
    assert sum(len(list(s.iter(f"{SVG_NS}title"))) for s in inline_svgs(page)) == completed
    assert "](figures/fronts-accuracy-vs-flops.png)" in markdown
    assert "<script" not in page.lower() and "<style>" in page and "@media print" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.IGNORECASE), "external fetch"
    assert "compared alpha, beta on accuracy, flops" in text and "common reference point" in text

    document_json, text_json = compare_main([a, b], reports_dir=reports, json_out=True)
    assert json.loads(text_json)["hypervolume"]["union"] == pytest.approx(hv["union"])


def _ablation(folder: Path, cells: dict[str, float], keys: dict[str, str]) -> Path:
    rows, summary = [], []
    for trial, (cell, accuracy) in enumerate(cells.items()):
        r = row(trial, "complete", accuracy=accuracy, flops=1e6 * (trial + 1), curve=[accuracy])
        r.update(cell=cell, seed=0)
        rows.append(r)
        summary.append({"cell": cell, "metric": "accuracy", "n": 3, "mean": accuracy, "std": 0.01,
                        "ci_low": accuracy - 0.02, "ci_high": accuracy + 0.02})
    write_study(folder, rows, settings_for(["accuracy"]))
    pd.DataFrame(summary).to_csv(folder / "cells.csv", index=False)
    (folder / "ablation.json").write_text(json.dumps({"cell_keys": keys, "study": {"baseline": {"dataset": "d"}}}))
    return folder


def test_compare_ablations_side_by_side(tmp_path: Path) -> None:
    a = _ablation(tmp_path / "abl_a", {"baseline": 0.5, "gsa": 0.8, "x": 0.6}, {"baseline": "conv", "gsa": "G", "x": "X"})
    b = _ablation(tmp_path / "abl_b", {"baseline": 0.8, "x": 0.65, "content_only": 0.7},
                  {"baseline": "G", "x": "X", "content_only": "C"})
    document, text = compare_main([a, b], reports_dir=tmp_path)
    out = tmp_path / "compare-abl_a-abl_b"
    page = (out / "report.html").read_text()
    tables = html_tables(page)
    assert tables["shared-cells"] == [["baseline", "0.5000 ± 0.0100 (n=3)", "0.8000 ± 0.0100 (n=3)", "no"],
                                      ["x", "0.6000 ± 0.0100 (n=3)", "0.6500 ± 0.0100 (n=3)", "yes"]]
    assert tables["same-config-cells"] == [["abl_a: gsa = abl_b: baseline", "gsa: 0.8000 ± 0.0100 (n=3)",
                                            "baseline: 0.8000 ± 0.0100 (n=3)"]]
    assert md_table_after((out / "report.md").read_text(), "### Cells with the same name") == tables["shared-cells"]
    assert document["shared_cells"] == ["baseline", "x"] and document["objectives"] == ["accuracy"]
    assert "share one objective" in page
    assert len(pd.read_csv(out / "cells.csv")) == 6
    assert document["hypervolume"] == {"abl_a": pytest.approx(0.8), "abl_b": pytest.approx(0.8),
                                       "union": pytest.approx(0.8)}


def test_compare_errors(two_studies: tuple[Path, Path, Path]) -> None:
    reports, a, b = two_studies
    with pytest.raises(UserError, match=r"no study at .*/alpah: run `gsa-search search --study alpah .*` first; "
                                        r"did you mean 'alpha'\?"):
        compare_main([reports / "alpah", b], reports_dir=reports)
    (reports / "empty").mkdir()
    with pytest.raises(UserError, match=r"has no results table"):
        compare_main([a, reports / "empty"], reports_dir=reports)
    with pytest.raises(UserError, match=r"at least 2 studies"):
        compare_main([a], reports_dir=reports)
    with pytest.raises(UserError, match=r"at least 2 studies \(given: none\)"):
        compare_main([], reports_dir=reports)
    with pytest.raises(UserError, match=r"given twice \(alpha\)"):
        compare_main([a, a], reports_dir=reports)
    c = write_study(reports / "gamma", study_b_rows(), settings_for(["latency_ms"]))
    with pytest.raises(UserError, match=r"cannot compare alpha, gamma: the studies share no objective"):
        compare_main([a, c], reports_dir=reports)
    assert not (reports / "compare-alpha-gamma" / "report.html").exists()


def test_a_study_without_search_json_counts_as_accuracy_and_flops(tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", rich_rows(), None)
    b = write_study(tmp_path / "b", study_b_rows(), settings_for(["accuracy", "flops"]))
    document, _ = compare_main([a, b], reports_dir=tmp_path)
    assert document["objectives"] == ["accuracy", "flops"]
    assert "a has no search.json" in (tmp_path / "compare-a-b" / "report.html").read_text()


@pytest.mark.service
def test_the_comparison_renders_in_a_headless_browser(two_studies: tuple[Path, Path, Path], tmp_path: Path) -> None:
    reports, a, b = two_studies
    document, _ = compare_main([a, b], reports_dir=reports)
    page = Path(document["out_dir"]) / "report.html"
    seen = open_in_browser(page, tmp_path, "compare")
    assert not seen["errors"], f"console errors: {seen['errors']}"
    assert seen["requests"] == [page.resolve().as_uri()], f"the page fetched more than itself: {seen['requests']}"
    probe = seen["probe"]
    assert probe["scripts"] == 0 and len(probe["svgs"]) == 1
    for sizes in (probe["svgs"], seen["printed"]["svgs"]):
        assert all(w > 0 and h > 0 for w, h in sizes), sizes
    completed = sum(r["state"] == "complete" for r in rich_rows() + study_b_rows())
    assert probe["titles"] == probe["pointsWithTitleFirst"] == completed
    assert probe["rows"]["dominance"] == 2 and probe["rows"]["hypervolume-table"] == 3
    assert probe["width"] <= 1280, "the page scrolls sideways at 1280 px"
    assert (tmp_path / "compare.pdf").read_bytes()[:5] == b"%PDF-"
