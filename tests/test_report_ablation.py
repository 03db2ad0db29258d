"""The ablation sections of the report (gsa_search.report.ablation): cells, differences from the baseline,
the forest plot and the learning curves, from a hand-made ablation folder written the way
``gsa-search ablate`` writes one, and from the committed reference ablations."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report import html_tables, md_table_after, row, settings_for

from gsa_search import stats
from gsa_search.report import build_report
from runners.report_cmd import report_main
from runners.results import results_table, save_results

ROOT = Path(__file__).resolve().parents[1]
SVG_NS = "{http://www.w3.org/2000/svg}"
REFERENCES = ("gsa_block_type_v1", "gsa_content_positional_v1")


def titles(svg: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(svg).getroot().iter(f"{SVG_NS}title")]


def ablation_folder(folder: Path, *, failed: bool = False) -> Path:
    """Three cells x three seeds with per-epoch curves; ``b`` clearly better, ``c`` within noise, and
    (``failed``) one run of ``c`` failed."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    offsets = {"baseline": 0.0, "b": 0.2, "c": 0.003}
    flops = {"baseline": 4e6, "b": 5e6, "c": 3e6}
    trial = 0
    for cell, offset in offsets.items():
        for seed in range(3):
            final = 0.6 + offset + 0.01 * seed + 0.02 * rng.random()
            curve = [final - 0.2, final - 0.1, final]
            state = "failed" if failed and cell == "c" and seed == 2 else "complete"
            r = row(trial, state, accuracy=final if state == "complete" else np.nan, flops=flops[cell],
                    params=flops[cell] / 10, curve=curve if state == "complete" else curve[:1],
                    reason="RuntimeError: boom" if state == "failed" else "")
            r.update(cell=cell, seed=seed, param_cell=cell, param_seed=seed)
            rows.append(r)
            trial += 1
    table = results_table(rows)
    save_results(table, folder)
    (folder / "search.json").write_text(json.dumps(settings_for(["accuracy"])))
    runs = table.copy()
    metrics = ["accuracy", "flops", "params"]
    stats.cell_summary(runs, metrics).to_csv(folder / "cells.csv", index=False)
    stats.compare_all(runs, "baseline", metrics).to_csv(folder / "ablation.csv", index=False)
    runs.to_csv(folder / "runs.csv", index=False)
    return folder


def test_curve_summary_means_and_bands() -> None:
    runs = pd.DataFrame({"cell": ["a", "a", "b", "b"], "state": ["complete", "complete", "complete", "pruned"],
                         "curve": ["[0.1, 0.5]", json.dumps([0.3, 0.7, 0.9]), [0.2], "[0.9]"]})
    frame = stats.curve_summary(runs)
    assert frame[["cell", "epoch", "n"]].values.tolist() == [["a", 1, 2], ["a", 2, 2], ["a", 3, 1], ["b", 1, 1]]
    first = frame.iloc[0]
    assert (first["mean"], first["min"], first["max"]) == pytest.approx((0.2, 0.1, 0.3))
    assert first["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert np.isnan(frame.iloc[2]["std"]) and frame.iloc[3]["mean"] == pytest.approx(0.2)  # the pruned run left out
    with pytest.raises(ValueError, match="lacks column"):
        stats.curve_summary(runs.drop(columns="curve"))


@pytest.mark.parametrize("failed", [False, True])
def test_ablation_sections_tables_and_figures(tmp_path: Path, failed: bool) -> None:
    folder = ablation_folder(tmp_path / "abl", failed=failed)
    document, text = report_main(folder)
    page = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    tables = html_tables(page)

    cells = tables["ablation-cells"]
    assert [r[0] for r in cells] == ["baseline", "b", "c"]
    summary = pd.read_csv(folder / "cells.csv").set_index(["cell", "metric"])
    for r in cells:
        s = summary.loc[(r[0], "accuracy")]
        assert r[1] == f"{s['mean']:.4f} ± {s['std']:.4f}" and r[3] == str(int(s["n"]))
        assert r[2] == f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
    assert cells[2][4] == ("1" if failed else "0")
    assert md_table_after(markdown, "### Cells") == cells

    comparisons = pd.read_csv(folder / "ablation.csv")
    rows = tables["ablation"]
    assert len(rows) == len(comparisons) == 6
    accuracy = {r[0]: r for r in rows if r[1] == "accuracy"}
    assert accuracy["b"][8] == "better" and accuracy["c"][8] == "within noise"
    expected = comparisons.set_index(["metric", "cell"]).loc[("accuracy", "b")]
    assert accuracy["b"][2] == f"{expected['difference']:+.4f}"
    assert accuracy["b"][3] == f"[{expected['ci_low']:+.4f}, {expected['ci_high']:+.4f}]"
    assert accuracy["b"][4] == expected["method"] == "paired t"
    flops = {r[0]: r for r in rows if r[1] == "flops"}
    assert flops["b"][2] == "+1M (1.25x)" and flops["b"][3] == "exact" and flops["c"][8] == "better"
    assert md_table_after(markdown, "### Differences from the baseline") == rows

    forest, curves = folder / "figures" / "ablation-forest.svg", folder / "figures" / "ablation-curves.svg"
    for path in (forest, curves, forest.with_suffix(".png"), curves.with_suffix(".png")):
        assert path.is_file() and path.stat().st_size > 1000, path
    tested = comparisons[comparisons["method"] != "exact"]
    forest_titles = titles(forest)
    assert len(forest_titles) == len(tested) == 2
    assert forest_titles[0].startswith("b - baseline: accuracy +") and "better" in forest_titles[0]
    curve_titles = titles(curves)
    assert len(curve_titles) == 3 and curve_titles[0].startswith("baseline: validation accuracy per epoch")
    assert ("mean of 2 finished run(s)" in curve_titles[2]) == failed
    assert "](figures/ablation-forest.png)" in markdown and "](figures/ablation-curves.png)" in markdown
    assert 'id="figure-ablation-forest"' in page and 'id="figure-ablation-curves"' in page
    assert "min-max" in page
    assert str(forest) in document["files"] and str(curves) in document["files"]
    primary = [r for r in document["ablation"]["comparisons"] if r["metric"] == "accuracy"]
    assert [r["verdict"] for r in primary] == ["better", "within noise"]
    assert "b - baseline: accuracy +" in text and "(better)" in text
    json.dumps(document)


def test_missing_cells_csv_is_recomputed_and_missing_runs_come_from_the_table(tmp_path: Path) -> None:
    folder = ablation_folder(tmp_path / "abl")
    (folder / "cells.csv").unlink()
    (folder / "runs.csv").unlink()
    page = build_report(folder).html.read_text()
    assert [r[0] for r in html_tables(page)["ablation-cells"]] == ["baseline", "b", "c"]
    assert len(titles(folder / "figures" / "ablation-curves.svg")) == 3


@pytest.mark.parametrize("study", REFERENCES)
def test_the_reference_ablations(study: str, tmp_path: Path) -> None:
    source = ROOT / "reports" / "reference" / study
    if not (source / "ablation.csv").exists():
        pytest.skip(f"no reference ablation {study}")
    folder = tmp_path / study
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("report.*", "figures", "pareto.csv"))
    paths = build_report(folder)
    comparisons = pd.read_csv(folder / "ablation.csv")
    cells = pd.read_csv(folder / "cells.csv")
    assert len(titles(folder / "figures" / "ablation-forest.svg")) == int((comparisons["method"] != "exact").sum())
    assert len(titles(folder / "figures" / "ablation-curves.svg")) == cells["cell"].nunique()
    tables = html_tables(paths.html.read_text())
    assert len(tables["ablation-cells"]) == cells["cell"].nunique()
    assert len(tables["ablation"]) == len(comparisons)
