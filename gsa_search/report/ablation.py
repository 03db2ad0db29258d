"""The ablation sections of a study report: cells, differences from the baseline, a forest plot and learning curves.

Status: new. Reads what ``gsa-search ablate`` saved beside the results table (``runners.ablation_runner``):
``ablation.csv`` (:func:`gsa_search.stats.compare_all`: one row per cell and metric, the difference
from the baseline with its 95% interval, the test, the Holm-adjusted p-value and the verdict),
``cells.csv`` (:func:`gsa_search.stats.cell_summary`: mean, std and the 95% interval of the mean per
cell and metric), ``runs.csv`` (the one run per cell and seed that the statistics used, with its
per-epoch ``curve``) and ``main_effects.csv`` (full designs). Nothing is recomputed when the files
are there; a missing ``cells.csv`` is recomputed from the runs, missing runs are taken from the
results table (its ``cell`` column).

Figures (drawn here, from those tables; every plotted element has a ``<title>`` tooltip):

- ``ablation-forest``: one row per cell, the difference ``cell - baseline`` of each tested metric
  (a panel per metric; exact cost differences are in the table instead) as a dot with its 95%
  interval and a dashed line at zero; colour = verdict (green better, red worse, grey within
  noise); the right axis repeats the numbers;
- ``ablation-curves``: per cell, the mean over its finished seeds of the validation accuracy after
  each epoch (the ``curve`` column), with a band from the lowest to the highest seed (min-max, not
  std: with 3 seeds a std band is mostly noise) — one line per cell, the baseline in black.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search import stats

from . import figures as F

__all__ = [
    "BAND",
    "VERDICT_COLOURS",
    "AblationData",
    "ablation_section",
    "forest_plot",
    "learning_curves_figure",
    "load_ablation",
]

BASELINE = "baseline"
VERDICT_COLOURS = {"better": "#2ca02c", "worse": "#d62728", "within noise": "#7f7f7f", "insufficient data": "#bbbbbb"}
BAND = "min-max over the cell's finished seeds"
_STANDARD = {"metric", "cell", "difference", "ci_low", "ci_high", "method", "verdict"}


@dataclasses.dataclass(frozen=True)
class AblationData:
    """An ablation's saved tables. ``comparisons`` is ablation.csv (or the frame a caller passed),
    ``cells`` cells.csv, ``runs`` runs.csv, ``main_effects`` main_effects.csv; ``primary`` the
    metric the study tests first (its first objective)."""

    comparisons: pd.DataFrame
    cells: pd.DataFrame | None
    runs: pd.DataFrame | None
    main_effects: pd.DataFrame | None
    primary: str

    @property
    def standard(self) -> bool:
        """Whether ``comparisons`` has the columns of :func:`gsa_search.stats.compare_all`."""
        return _STANDARD <= set(self.comparisons.columns)


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def load_ablation(study_dir: Path, table: pd.DataFrame, objectives: Sequence[str],
                  comparisons: pd.DataFrame | None = None) -> AblationData | None:
    """The ablation tables of ``study_dir``, or ``None`` when it is not an ablation (no
    ``ablation.csv`` and no ``comparisons`` given). ``comparisons`` replaces ablation.csv."""
    study_dir = Path(study_dir)
    if comparisons is None:
        comparisons = _read(study_dir / "ablation.csv")
    if comparisons is None:
        return None
    comparisons = comparisons.reset_index(drop=True)
    runs = _read(study_dir / "runs.csv")
    if runs is None and "cell" in table and table["cell"].notna().any():
        runs = table[table["cell"].notna()].copy()
    metrics = list(pd.unique(comparisons["metric"])) if "metric" in comparisons else []
    primary = next((o for o in objectives if o in metrics), metrics[0] if metrics else M.ACCURACY)
    cells = _read(study_dir / "cells.csv")
    if cells is None and runs is not None and {"cell", "seed", "state"} <= set(runs.columns):
        measured = [m for m in dict.fromkeys([primary, M.FLOPS, M.PARAMS]) if m in runs]
        data = runs[runs["state"].astype(str) != "missing"].drop_duplicates(["cell", "seed"])
        if measured:
            cells = stats.cell_summary(data[["cell", "seed", "state", *measured]], measured)
    return AblationData(comparisons=comparisons, cells=cells, runs=runs,
                        main_effects=_read(study_dir / "main_effects.csv"), primary=primary)


# --- formatting ---------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _value(metric: str, value: Any, signed: bool = False) -> str:
    if not _finite(value):
        return "-"
    value = float(value)
    if metric in (M.FLOPS, M.PARAMS):
        text = F.short_number(value)
        return ("+" + text if signed and value > 0 else text)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _p(value: Any) -> str:
    if not _finite(value):
        return "-"
    value = float(value)
    return "<0.0001" if value < 1e-4 else (f"{value:.2g}" if value < 0.01 else f"{value:.3f}")


def _interval(metric: str, low: Any, high: Any, signed: bool = True) -> str:
    if not (_finite(low) and _finite(high)):
        return "-"
    return f"[{_value(metric, low, signed)}, {_value(metric, high, signed)}]"


def _cells_table(data: AblationData) -> Any:
    from .render import Table

    cells = data.cells
    if cells is None or cells.empty:
        return None
    primary = data.primary
    rows, order = [], list(pd.unique(cells["cell"]))
    by = {(c, m): r for c, m, r in zip(cells["cell"], cells["metric"], cells.to_dict("records"))}
    for cell in order:
        main = by.get((cell, primary))
        if main is None:
            continue
        unfinished = sum(int(main.get(k, 0) or 0) for k in ("n_failed", "n_pruned", "n_other", "n_missing"))
        costs = [_value(m, by[(cell, m)]["mean"]) if (cell, m) in by else "-" for m in (M.FLOPS, M.PARAMS)]
        note = main.get("note")
        rows.append([str(cell), f"{_value(primary, main['mean'])} ± {_value(primary, main['std'])}",
                     _interval(primary, main["ci_low"], main["ci_high"], signed=False), str(int(main["n"])),
                     str(unfinished), *costs, note if isinstance(note, str) and note else "-"])
    return Table(columns=["cell", f"{primary} mean ± std", "95% CI of the mean", "n (finished seeds)",
                          "runs without a result", "FLOPs (MACs per image)", "parameters", "note"],
                 rows=rows, id="ablation-cells", numeric=[False, True, True, True, True, True, True, False])


def _comparisons_table(data: AblationData) -> Any:
    from .render import Table

    frame = data.comparisons
    if not data.standard:  # any frame of comparisons: printed as it is
        return Table.from_frame(frame, id="ablation")
    order = {m: i for i, m in enumerate(dict.fromkeys([data.primary, *frame["metric"]]))}
    frame = frame.assign(_order=frame["metric"].map(order)).sort_values("_order", kind="stable")
    rows = []
    for r in frame.to_dict("records"):
        metric = str(r["metric"])
        exact = r.get("method") == "exact"
        difference = _value(metric, r["difference"], signed=True)
        base = r.get("mean_baseline")
        if exact and metric in (M.FLOPS, M.PARAMS) and _finite(base) and float(base) > 0 and _finite(r.get("mean_cell")):
            difference += f" ({float(r['mean_cell']) / float(base):.2f}x)"
        n = "-"
        if _finite(r.get("n_pairs")) and str(r.get("method", "")).startswith("paired"):
            n = f"{int(r['n_pairs'])} pairs"
        elif _finite(r.get("n_cell")) and _finite(r.get("n_baseline")):
            n = f"{int(r['n_cell'])} vs {int(r['n_baseline'])}"
        effect = r.get("effect_size")
        kind = str(r.get("effect_size_kind") or "").split(" ")[0]
        note = r.get("note")
        if exact and isinstance(note, str) and note.startswith("deterministic"):
            note = ""  # the interval column says "exact"
        rows.append([str(r["cell"]), metric, difference, "exact" if exact else _interval(metric, r["ci_low"], r["ci_high"]),
                     str(r.get("method") or "-"), n, _p(r.get("p_value")), _p(r.get("p_holm")), str(r["verdict"]),
                     f"{kind}={float(effect):+.2f}" if _finite(effect) and kind else "-",
                     note if isinstance(note, str) and note else "-"])
    return Table(columns=["cell", "metric", "difference (cell - baseline)", "95% CI", "method", "n", "p",
                          "p (Holm)", "verdict", "effect size", "note"],
                 rows=rows, id="ablation", numeric=[False, False, True, True, False, True, True, True, False, True, False])


def _main_effects_table(data: AblationData) -> Any:
    from .render import Table

    effects = data.main_effects
    if effects is None or effects.empty:
        return None
    rows = []
    for r in effects.to_dict("records"):
        rows.append([str(r.get("factor")), f"{r.get('level')} vs {r.get('baseline_level')}",
                     _value(data.primary, r.get("difference"), signed=True),
                     _interval(data.primary, r.get("ci_low"), r.get("ci_high")), str(r.get("method") or "-"),
                     _p(r.get("p_holm")), str(r.get("verdict"))])
    return Table(columns=["factor", "level", "difference", "95% CI", "method", "p (Holm)", "verdict"], rows=rows,
                 id="ablation-main-effects", numeric=[False, False, True, True, False, True, False])


def _summary(data: AblationData) -> dict[str, Any]:
    if not data.standard:
        return {"primary": data.primary, "comparisons": []}

    def plain(value: Any) -> Any:
        if isinstance(value, (np.floating, float)):
            return float(value) if math.isfinite(float(value)) else None
        if isinstance(value, np.integer):
            return int(value)
        return value

    keep = ["cell", "metric", "difference", "ci_low", "ci_high", "method", "p_holm", "verdict"]
    rows = [{k: plain(r.get(k)) for k in keep} for r in data.comparisons.to_dict("records")]
    return {"primary": data.primary, "baseline": BASELINE, "comparisons": rows}


def ablation_section(data: AblationData, figures_dir: Path | None) -> dict[str, Any]:
    """What the templates print in the ablation sections (figures written to ``figures_dir``)."""
    forest = curves = None
    curve_frame = pd.DataFrame(columns=stats.CURVE_COLUMNS)
    if data.runs is not None and {"cell", "state", "curve"} <= set(data.runs.columns):
        curve_frame = stats.curve_summary(data.runs)
    if figures_dir is not None:
        if data.standard:
            forest = forest_plot(data.comparisons, out_dir=figures_dir, name="ablation-forest", primary=data.primary)
        curves = learning_curves_figure(curve_frame, out_dir=figures_dir, name="ablation-curves")
    tested = data.comparisons[data.comparisons.get("method", pd.Series(dtype=object)) != "exact"] \
        if data.standard else data.comparisons.iloc[0:0]
    family = int(pd.to_numeric(tested.get("family_size"), errors="coerce").max()) \
        if len(tested) and "family_size" in tested and tested["family_size"].notna().any() else 0
    return {
        "primary": data.primary,
        "cells": _cells_table(data),
        "comparisons": _comparisons_table(data),
        "standard": data.standard,
        "family_size": family,
        "main_effects": _main_effects_table(data),
        "forest": forest,
        "curves": curves,
        "band": BAND,
        "summary": _summary(data),
        "figures": [f for f in (forest, curves) if f is not None],
    }


# --- figures -----------------------------------------------------------------------------------------------


def _forest_tooltip(r: dict[str, Any]) -> str:
    metric = str(r["metric"])
    lines = [(f"{r['cell']} - {r.get('baseline', BASELINE)}: {metric} {_value(metric, r['difference'], signed=True)}"
              f", 95% CI {_interval(metric, r['ci_low'], r['ci_high'])}")]
    means = f"means {_value(metric, r.get('mean_cell'))} vs {_value(metric, r.get('mean_baseline'))}"
    if _finite(r.get("n_pairs")) and str(r.get("method", "")).startswith("paired"):
        means += f", {int(r['n_pairs'])} seed pairs"
    elif _finite(r.get("n_cell")):
        means += f", n {int(r['n_cell'])} vs {int(r.get('n_baseline') or 0)}"
    lines.append(means)
    lines.append(f"{r.get('method')}: p {_p(r.get('p_value'))}, Holm-adjusted p {_p(r.get('p_holm'))}: {r['verdict']}")
    return "\n".join(lines)


def forest_plot(comparisons: pd.DataFrame, *, out_dir: Path, name: str, primary: str = M.ACCURACY
                ) -> F.FigureFile | None:
    """Differences from the baseline with their 95% intervals (see the module docstring); ``None``
    when no comparison was tested (only exact or insufficient ones)."""
    from matplotlib.ticker import MaxNLocator

    tested = comparisons[(comparisons["method"] != "exact") & comparisons["difference"].map(_finite)]
    if tested.empty:
        return None
    metrics = list(dict.fromkeys([m for m in [primary, *tested["metric"]] if m in set(tested["metric"])]))
    cells = list(dict.fromkeys(tested["cell"].astype(str)))
    fig = F._new_figure(9.5, 1.0 + 0.55 * len(cells) * len(metrics) + 0.6 * len(metrics))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    tooltips: dict[str, str] = {}
    points = 0
    for ax, metric in zip(axes, metrics):
        rows = tested[tested["metric"] == metric].to_dict("records")
        ys = {cell: i for i, cell in enumerate(cells)}
        labels = ["-"] * len(cells)
        for r in rows:
            y = ys[str(r["cell"])]
            colour = VERDICT_COLOURS.get(str(r["verdict"]), "#333333")
            d, low, high = float(r["difference"]), r["ci_low"], r["ci_high"]
            if _finite(low) and _finite(high):
                line = ax.plot([float(low), d, float(high)], [y, y, y], color=colour, linewidth=2.2, marker="o",
                               markevery=[1], markersize=8, markeredgecolor="black", solid_capstyle="butt")[0]
            else:
                line = ax.plot([d], [y], color=colour, marker="o", markersize=8, markeredgecolor="black")[0]
            gid = f"{F.POINT_PREFIX}{points}"
            line.set_gid(gid)
            tooltips[gid] = _forest_tooltip(r)
            labels[y] = (f"{_value(metric, d, signed=True)} {_interval(metric, low, high)} {r['verdict']} "
                         f"(Holm p {_p(r.get('p_holm'))})")
            points += 1
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1.0, zorder=1)
        ax.set_yticks(range(len(cells)), cells)
        ax.set_ylim(len(cells) - 0.5, -0.5)
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        right.set_yticks(range(len(cells)), labels, fontsize=8)
        right.tick_params(length=0)
        ax.set_xlabel(f"{metric}: cell - baseline (95% CI)")
        ax.grid(True, axis="x", alpha=0.3)
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, -0.05 * (high - low)), max(high, 0.05 * (high - low)))  # zero always in view
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    axes[0].set_title("Difference from the baseline (dashed: no difference)", fontsize=11)
    caption = (f"Forest plot: per cell, the difference from the baseline in {', '.join(metrics)} (dot) and its 95% "
               f"interval (line), dashed line at 0; colour = verdict after Holm's correction (green better, red worse, "
               f"grey within noise). {points} comparisons; hover one for its test and p-values.")
    return F._write(fig, out_dir, name, tooltips, caption, points)


def _curve_tooltip(cell: str, frame: pd.DataFrame) -> str:
    n = int(frame["n"].max())
    lines = [f"{cell}: validation accuracy per epoch, mean of {n} finished run(s); band {BAND}"]
    shown = frame if len(frame) <= 12 else pd.concat([frame.head(3), frame.tail(3)])
    for r in shown.itertuples(index=False):
        lines.append(f"epoch {int(r.epoch)}: {r.mean:.4f} (min {r.min:.4f}, max {r.max:.4f}, n {int(r.n)})")
    return "\n".join(lines)


def learning_curves_figure(curves: pd.DataFrame, *, out_dir: Path, name: str) -> F.FigureFile | None:
    """Per-epoch validation accuracy, mean per cell with a min-max band (see the module docstring);
    ``None`` when no finished run recorded a curve."""
    from matplotlib.ticker import MaxNLocator

    if curves.empty:
        return None
    cells = list(dict.fromkeys(curves["cell"].astype(str)))
    fig = F._new_figure(8.0, 4.6)
    ax = fig.add_subplot()
    tooltips: dict[str, str] = {}
    others = [c for c in cells if c != BASELINE]
    colours = {c: F._PALETTE[i % len(F._PALETTE)] for i, c in enumerate(others)}
    colours[BASELINE] = "#000000"
    for index, cell in enumerate(cells):
        frame = curves[curves["cell"].astype(str) == cell].sort_values("epoch")
        epochs = frame["epoch"].to_numpy(dtype=float)
        colour = colours[cell]
        band = ax.fill_between(epochs, frame["min"].to_numpy(dtype=float), frame["max"].to_numpy(dtype=float),
                               color=colour, alpha=0.15, linewidth=0)
        band.set_gid(f"band-{index}")
        line = ax.plot(epochs, frame["mean"].to_numpy(dtype=float), color=colour, marker="o", markersize=4,
                       linewidth=2.0 if cell == BASELINE else 1.6, label=f"{cell} (n={int(frame['n'].max())})")[0]
        gid = f"{F.POINT_PREFIX}{index}"
        line.set_gid(gid)
        tooltips[gid] = _curve_tooltip(cell, frame)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(F.AXIS_LABELS[M.ACCURACY])
    ax.grid(True, alpha=0.3)
    ax.set_title("Learning curves: mean per cell, band = min-max over seeds", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    caption = (f"Validation accuracy after each epoch (the results table's curve), one line per cell: the mean over "
               f"the cell's finished seeds, the band from the lowest to the highest seed (min-max). {len(cells)} "
               f"cells; hover a line for its per-epoch values.")
    return F._write(fig, out_dir, name, tooltips, caption, len(cells))
