"""Report figures: accuracy/cost Pareto scatters and the hypervolume history (rendering only).

Status: stable. Matplotlib through its object API (``matplotlib.figure.Figure``, drawn by the Agg
and SVG canvases; pyplot and the global backend are never touched), so it runs headless and in
threads. What is drawn comes from the pure modules: fronts from :func:`gsa_search.pareto.pareto_mask`,
hypervolumes from :mod:`gsa_search.report.hypervolume`.

Every figure is written as ``<name>.svg`` and ``<name>.png``. In the SVG every plotted trial is its
own artist with a ``gid``; the SVG is then post-processed (:mod:`xml.etree`) to put a ``<title>``
(the browser's hover tooltip: trial number, state, metrics, sampled parameters) first in that
trial's ``<g>``, and to prefix every ``id`` with the figure's name so that several SVGs can be
inlined in one HTML page without clashing ids (matplotlib's clip paths and glyphs reuse ids).

Scatter encoding: the front of the plotted pair (accuracy up, cost down) is drawn large with a dark
edge and joined by a staircase; dominated completed trials are faded; pruned trials are down
triangles at the accuracy of their last epoch; infeasible configurations (over a budget, never
trained) are crosses at accuracy 0. Colour = the first of ``param_mixer``, ``param_positional`` that
takes more than one value (else one colour).
"""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.pareto import pareto_mask

__all__ = ["FigureFile", "AXIS_LABELS", "plotted_points", "pareto_scatter", "hypervolume_figure", "colour_column",
           "short_number", "postprocess_svg", "svg_titles"]

AXIS_LABELS = {
    M.ACCURACY: "validation accuracy (top-1)",
    M.FLOPS: "FLOPs (multiply-accumulates per image)",
    M.PARAMS: "parameters",
    M.LATENCY_MS: "latency (ms per image, forward)",
}
COLOUR_COLUMNS = ("param_mixer", "param_positional")
POINT_PREFIX = "pt-"
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")
_SINGLE = "#1f77b4"
_INFEASIBLE = "#555555"


@dataclasses.dataclass(frozen=True)
class FigureFile:
    """One written figure: its files, the SVG text to inline in HTML, a caption, and how many trials
    it plots (one ``<title>`` each)."""

    name: str
    svg: Path
    png: Path
    svg_inline: str
    caption: str
    points: int = 0


def short_number(value: float) -> str:
    """``1699840 -> '1.70M'``, ``358042 -> '358k'``, ``0.5 -> '0.5'`` (4 significant digits at most)."""
    if value is None or not np.isfinite(value):
        return "-"
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.4g}"


def colour_column(table: pd.DataFrame) -> str | None:
    """The parameter column the points are coloured by (see the module docstring), or ``None``."""
    for column in COLOUR_COLUMNS:
        if column in table and table[column].dropna().astype(str).nunique() > 1:
            return column
    for column in COLOUR_COLUMNS:
        if column in table and table[column].dropna().size:
            return column
    return None


def _last_accuracy(curve: Any) -> float:
    try:
        values = json.loads(curve) if isinstance(curve, str) else list(curve or [])
    except (TypeError, ValueError):
        return float("nan")
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return finite[-1] if finite else float("nan")


def plotted_points(table: pd.DataFrame, x: str, y: str = M.ACCURACY) -> pd.DataFrame:
    """The trials a scatter of ``y`` against ``x`` draws: completed trials, pruned ones (at the
    accuracy of their last epoch) and infeasible ones, each with finite ``x`` and ``y``. Columns
    ``trial``, ``kind`` (``front`` | ``dominated`` | ``pruned`` | ``infeasible``), ``x``, ``y``
    and the row's index in ``table`` as ``row``. ``front`` = the non-dominated completed trials of
    the pair (``y`` maximised, ``x`` minimised)."""
    columns = ["trial", "kind", "x", "y", "row"]
    if table.empty or x not in table or y not in table:
        return pd.DataFrame(columns=columns)
    xs = pd.to_numeric(table[x], errors="coerce")
    ys = pd.to_numeric(table[y], errors="coerce").copy()
    pruned = table["state"] == "pruned"
    if pruned.any():
        ys[pruned] = table.loc[pruned, "curve"].map(_last_accuracy)
    keep = table["state"].isin(["complete", "pruned", "infeasible"]) & np.isfinite(xs) & np.isfinite(ys)
    points = pd.DataFrame({"trial": table["trial"], "kind": table["state"], "x": xs, "y": ys,
                           "row": table.index})[keep].copy()
    done = points["kind"] == "complete"
    if done.any():
        directions = [M.DIRECTIONS.get(y, "maximize"), M.DIRECTIONS.get(x, "minimize")]
        mask = pareto_mask(points.loc[done, ["y", "x"]].to_numpy(dtype=float), directions)
        points.loc[done, "kind"] = np.where(mask, "front", "dominated")
    return points.reset_index(drop=True)[columns]


def _tooltip(row: pd.Series, kind: str, x: str, y: str) -> str:
    state = {"front": f"complete, on the {y}/{x} front", "dominated": "complete, dominated",
             "pruned": "pruned", "infeasible": "infeasible (not trained)"}[kind]
    lines = [f"trial {int(row['trial'])} ({state})"]
    values = []
    for metric in (M.ACCURACY, M.FLOPS, M.PARAMS, M.LATENCY_MS):
        value = row.get(metric)
        if isinstance(value, (int, float)) and np.isfinite(value):
            label = {M.FLOPS: "FLOPs (MACs)", M.LATENCY_MS: "latency ms"}.get(metric, metric)
            values.append(f"{label} {value:.4g}" if metric in (M.ACCURACY, M.LATENCY_MS) else f"{label} {short_number(value)}")
    if kind == "pruned":
        values.insert(0, f"accuracy when stopped {_last_accuracy(row.get('curve')):.4g}")
    if values:
        lines.append(", ".join(values))
    params = [f"{c.removeprefix('param_')}={row[c]}" for c in row.index
              if c.startswith("param_") and row[c] is not None and not (isinstance(row[c], float) and math.isnan(row[c]))]
    if params:
        lines.append(", ".join(params))
    reason = str(row.get("reason") or "")
    if kind in ("pruned", "infeasible") and reason:
        lines.append(reason if len(reason) <= 200 else reason[:197] + "...")
    return "\n".join(lines)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _use_log(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return len(positive) > 1 and positive.max() / positive.min() > 20


def _format_cost_axis(ax: Any, x: str, values: np.ndarray) -> None:
    """Log scale when the costs span more than 20x (ticks at 1, 2, 5 x 10^k); SI suffixes for counts."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    if _use_log(values):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if x not in (M.FLOPS, M.PARAMS):
            from matplotlib.ticker import ScalarFormatter

            ax.xaxis.set_major_formatter(ScalarFormatter())
    if x in (M.FLOPS, M.PARAMS):
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def pareto_scatter(table: pd.DataFrame, *, x: str, out_dir: Path, name: str, y: str = M.ACCURACY,
                   title: str | None = None) -> FigureFile | None:
    """Scatter of ``y`` (accuracy) against the cost ``x`` with the pair's front as a staircase;
    ``None`` when no trial has both values."""
    from matplotlib.lines import Line2D

    points = plotted_points(table, x, y)
    if points.empty:
        return None
    colour_by = colour_column(table)
    groups: list[str] = []
    if colour_by is not None:
        groups = sorted(table[colour_by].dropna().astype(str).unique())
    colours = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}

    def colour_of(row: pd.Series) -> str:
        if colour_by is None:
            return _SINGLE
        value = row.get(colour_by)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "#999999"
        return colours.get(str(value), _SINGLE)

    fig = _new_figure(8.0, 4.8)
    ax = fig.add_subplot()
    tooltips: dict[str, str] = {}
    style = {
        "front": dict(marker="o", markersize=9, alpha=1.0, markeredgecolor="black", markeredgewidth=1.2, zorder=4),
        "dominated": dict(marker="o", markersize=6, alpha=0.35, markeredgecolor="none", zorder=2),
        "pruned": dict(marker="v", markersize=7, alpha=0.6, markerfacecolor="none", markeredgewidth=1.4, zorder=3),
        "infeasible": dict(marker="x", markersize=7, alpha=0.8, markeredgewidth=1.4, zorder=3),
    }
    for point in points.itertuples(index=False):
        row = table.loc[point.row]
        colour = _INFEASIBLE if point.kind == "infeasible" else colour_of(row)
        kwargs = dict(style[point.kind])
        if point.kind == "pruned" or point.kind == "infeasible":
            kwargs["markeredgecolor"] = colour
        line = ax.plot([point.x], [point.y], linestyle="none", color=colour, **kwargs)[0]
        gid = f"{POINT_PREFIX}{int(point.trial)}"
        line.set_gid(gid)
        tooltips[gid] = _tooltip(row, point.kind, x, y)
    front = points[points["kind"] == "front"].sort_values(["x", "y"])
    if len(front):
        xs, ys = front["x"].to_numpy(), front["y"].to_numpy()
        right = points["x"].max()
        ax.step(np.append(xs, right), np.append(ys, ys[-1]), where="post", color="black", linewidth=1.0,
                alpha=0.7, zorder=3)
    _format_cost_axis(ax, x, points["x"].to_numpy(dtype=float))
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{y} vs {AXIS_LABELS.get(x, x).split(' (')[0]}", fontsize=11)
    handles = []
    kinds = set(points["kind"])
    legend_kinds = (("front", "front (staircase)"), ("dominated", "dominated (faded)"),
                    ("pruned", "pruned (accuracy when stopped)"), ("infeasible", "infeasible (not trained)"))
    for kind, label in legend_kinds:
        if kind in kinds:
            kwargs = dict(style[kind])
            kwargs.pop("zorder")
            colour = _INFEASIBLE if kind == "infeasible" else "#777777"
            if kind in ("pruned", "infeasible"):
                kwargs["markeredgecolor"] = colour
            if kind == "dominated":
                kwargs["alpha"] = 0.5
            handles.append(Line2D([], [], linestyle="none", color=colour, label=label, **kwargs))
    if colour_by is not None:
        for group in groups:
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=7, color=colours[group],
                                  label=f"{colour_by.removeprefix('param_')}={group}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    n_front = int((points["kind"] == "front").sum())
    caption = (f"{AXIS_LABELS.get(y, y)} against {AXIS_LABELS.get(x, x)}: {len(points)} trials, {n_front} on the "
               f"front of this pair (joined by the staircase). Hover a point for its trial and parameters.")
    return _write(fig, out_dir, name, tooltips, caption, len(points))


def hypervolume_figure(history: pd.DataFrame, *, out_dir: Path, name: str, reference_text: str) -> FigureFile | None:
    """Two panels: hypervolume after each trial number, and against the cumulative epochs trained."""
    if history.empty:
        return None
    fig = _new_figure(9.0, 3.6)
    left, right = fig.subplots(1, 2, sharey=True)
    hv = history["hypervolume"].to_numpy(dtype=float)
    done = (history["state"] == "complete").to_numpy()
    for ax, column, label in ((left, "trial", "trial number"), (right, "cumulative_epochs", "epochs trained (cumulative)")):
        xs = history[column].to_numpy(dtype=float)
        ax.step(xs, hv, where="post", color=_SINGLE, linewidth=1.5)
        ax.plot(xs[done], hv[done], linestyle="none", marker="o", markersize=4, color=_SINGLE)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    left.set_ylabel("hypervolume")
    fig.suptitle(f"hypervolume of the completed trials (reference {reference_text})", fontsize=10)
    caption = (f"Hypervolume after each trial (dots: completed trials) against the trial number and against the "
               f"compute spent (epochs trained by all trials, pruned and failed ones included). Reference point: "
               f"{reference_text}.")
    return _write(fig, out_dir, name, {}, caption, 0)


# --- writing and SVG post-processing -------------------------------------------------------------------


def _write(fig: Any, out_dir: Path, name: str, tooltips: Mapping[str, str], caption: str, points: int) -> FigureFile:
    import io

    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    with matplotlib.rc_context({"svg.hashsalt": f"gsa-search-{name}", "svg.fonttype": "path"}):
        fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = postprocess_svg(buffer.getvalue(), prefix=name, tooltips=tooltips, label=caption)
    svg.write_text('<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + text, encoding="utf-8")
    return FigureFile(name=name, svg=svg, png=png, svg_inline=text, caption=caption, points=points)


def postprocess_svg(text: str, *, prefix: str, tooltips: Mapping[str, str], label: str = "") -> str:
    """Prefix every id (and every reference to one) with ``prefix``, and insert ``<title>`` first in
    each ``<g id=gid>`` named in ``tooltips``; returns the ``<svg>`` element as text."""
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(text)
    renamed: dict[str, str] = {}
    for element in root.iter():
        old = element.get("id")
        if old is not None:
            renamed[old] = f"{prefix}--{old}"
            element.set("id", renamed[old])
    href_keys = ("href", f"{{{XLINK_NS}}}href")
    for element in root.iter():
        for key, value in list(element.attrib.items()):
            if key in href_keys and value.startswith("#") and value[1:] in renamed:
                element.set(key, "#" + renamed[value[1:]])
            elif "url(#" in value:
                element.set(key, _rewrite_urls(value, renamed))
    for element in root.iter(f"{{{SVG_NS}}}g"):
        old = element.get("id", "").removeprefix(f"{prefix}--")
        if old in tooltips:
            title = ET.Element(f"{{{SVG_NS}}}title")
            title.text = tooltips[old]
            element.insert(0, title)
            element.set("class", "trial-point")
    root.set("role", "img")
    if label:
        root.set("aria-label", label)
    return ET.tostring(root, encoding="unicode")


def _rewrite_urls(value: str, renamed: Mapping[str, str]) -> str:
    import re

    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{renamed.get(m.group(1), m.group(1))})", value)


def svg_titles(text: str) -> list[str]:
    """The ``<title>`` texts of an SVG document (used by tests and by the report's checks)."""
    root = ET.fromstring(text.split("?>", 1)[1] if text.startswith("<?xml") else text)
    return [t.text or "" for t in root.iter(f"{{{SVG_NS}}}title")]
