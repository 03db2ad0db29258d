"""Comparing studies: their Pareto fronts on one plot, dominance between fronts, hypervolumes with one reference point.

Status: new. :func:`build_comparison` reads two or more study folders (each ``reports/<study>/``
with its results table and ``search.json``; ablation folders also ``cells.csv`` and
``ablation.json``) and writes, into one output folder (``reports/compare-<a>-<b>...`` by the
command): ``report.html`` (self-contained: CSS and SVG inline, no scripts, nothing fetched),
``report.md`` (figures linked as PNG), ``fronts.csv``, ``dominance.csv``, ``hypervolume.csv``,
``cells.csv`` (ablations sharing cells) and ``figures/``. Nothing is rerun.

What is compared:

- **objectives**: those every study optimised (``search.json``; a folder without it counts as
  accuracy + FLOPs), in the first study's order; each study's *front* = its completed trials that
  no other completed trial of the same study dominates on them (:func:`gsa_search.pareto.pareto_mask`);
- **one reference point for all** (:func:`common_reference`): 0 for a maximised objective, 1.1 x the
  largest value among the completed trials of *all* studies for a minimised one — the rule of
  :mod:`gsa_search.report.hypervolume` applied to the union, so every hypervolume below is bounded
  by the same box and the numbers can be compared;
- **hypervolume** of each front and of the union of all fronts (:func:`gsa_search.pareto.union_hypervolume`),
  and each study's exclusive contribution (union minus the union without that study);
- **dominance** (:func:`gsa_search.pareto.dominance_counts`): for each ordered pair (A, B), how many of
  A's front points dominate at least one of B's front points, and how many B's front dominates;
- **the figure**: every study's completed trials on accuracy against FLOPs (multiply-accumulates per
  image), each study its own colour and marker, its front *of that pair* joined by a staircase
  (with other common objectives the tables' fronts can differ from the plotted pair's);
- **cells side by side** for ablations that share cell names (mean ± std and n of the first common
  objective), flagging whether the same name means the same configuration (``ablation.json``'s
  cell keys and the dataset), and the cells that are one configuration under different names.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gsa_search import metrics as M
from gsa_search.pareto import dominance_counts, pareto_mask, union_hypervolume

from . import figures as F
from .hypervolume import reference_point

__all__ = [
    "REFERENCE_RULE",
    "ComparisonPaths",
    "StudyData",
    "build_comparison",
    "cells_frame",
    "common_objectives",
    "common_reference",
    "dominance_frame",
    "fronts_figure",
    "hypervolume_frame",
    "read_study",
    "study_front",
]

REFERENCE_RULE = ("0 for a maximised objective; 1.1 x the largest value among the completed trials of all the "
                  "compared studies for a minimised one (one point for every study and for the union)")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclasses.dataclass(frozen=True)
class StudyData:
    """One study folder as the comparison reads it."""

    name: str
    study_dir: Path
    table: pd.DataFrame
    settings: dict[str, Any]
    objectives: list[str]
    cells: pd.DataFrame | None  # cells.csv of an ablation
    cell_configs: dict[str, str]  # cell -> configuration identity (ablation.json's cell key + dataset)

    @property
    def is_ablation(self) -> bool:
        return self.cells is not None


@dataclasses.dataclass(frozen=True)
class ComparisonPaths:
    """What :func:`build_comparison` wrote, and its numbers (``summary``: JSON-able)."""

    out_dir: Path
    html: Path
    markdown: Path
    tables: tuple[Path, ...]
    figures: tuple[Path, ...]
    summary: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.html, self.markdown, *self.tables, *self.figures]


# --- reading ------------------------------------------------------------------------------------------------


def _cell_configs(study_dir: Path) -> dict[str, str]:
    path = study_dir / "ablation.json"
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    baseline = (record.get("study") or {}).get("baseline") or {}
    data = {k: baseline.get(k) for k in ("dataset", "dataset_options", "image_size")}
    return {cell: json.dumps([key, data], sort_keys=True) for cell, key in (record.get("cell_keys") or {}).items()}


def read_study(study_dir: str | os.PathLike[str]) -> StudyData:
    """The results table, settings, objectives and (ablations) cells of one study folder. Raises
    ``FileNotFoundError`` without a results table, ``ValueError`` for unknown objectives."""
    from .render import _objectives, _read_settings, load_table

    study_dir = Path(study_dir)
    table = load_table(study_dir)
    settings, _ = _read_settings(study_dir)
    cells = pd.read_csv(study_dir / "cells.csv") if (study_dir / "cells.csv").exists() else None
    return StudyData(name=study_dir.name, study_dir=study_dir, table=table, settings=settings,
                     objectives=_objectives(settings), cells=cells, cell_configs=_cell_configs(study_dir))


# --- pure computation ---------------------------------------------------------------------------------------


def common_objectives(objective_lists: Sequence[Sequence[str]]) -> list[str]:
    """The objectives in every list, in the first list's order; ``ValueError`` when there is none.

    Example:
        >>> common_objectives([["accuracy", "flops"], ["flops", "params", "accuracy"]])
        ['accuracy', 'flops']
    """
    if not objective_lists:
        raise ValueError("no studies to compare")
    common = [o for o in objective_lists[0] if all(o in other for other in objective_lists[1:])]
    if not common:
        listed = "; ".join(", ".join(objectives) or "(none)" for objectives in objective_lists)
        raise ValueError(f"the studies share no objective (their objectives: {listed}); compare studies that "
                         "optimised at least one common metric")
    return common


def common_reference(tables: Sequence[pd.DataFrame], objectives: Sequence[str]) -> list[float] | None:
    """One reference point for all ``tables`` (see :data:`REFERENCE_RULE`): the rule of
    :func:`gsa_search.report.hypervolume.reference_point` applied to their completed trials together;
    ``None`` when a minimised objective has no finite value in any of them."""
    columns = ["state", *objectives]
    frames = [t.reindex(columns=columns) for t in tables]
    union = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return reference_point(union, objectives)


def study_front(table: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The completed trials of ``table`` that no other completed trial dominates on ``objectives``
    (rows with a missing objective are never on it)."""
    done = table[table["state"] == "complete"]
    if done.empty or any(o not in done for o in objectives):
        return done.iloc[0:0]
    mask = pareto_mask(done[list(objectives)].to_numpy(dtype=float), [M.DIRECTIONS[o] for o in objectives])
    return done[mask]


def dominance_frame(fronts: Mapping[str, np.ndarray], directions: Sequence[str]) -> pd.DataFrame:
    """One row per ordered pair ``(study, other)`` of distinct studies: the front sizes, how many of
    ``study``'s front points dominate at least one of ``other``'s (``dominating``) and how many are
    dominated by ``other``'s front (``dominated``)."""
    rows = []
    for a, points_a in fronts.items():
        for b, points_b in fronts.items():
            if a == b:
                continue
            dominating, dominated = dominance_counts(points_a, points_b, directions)
            rows.append({"study": a, "other": b, "front": len(points_a), "other_front": len(points_b),
                         "dominating": dominating, "dominated": dominated})
    return pd.DataFrame(rows, columns=["study", "other", "front", "other_front", "dominating", "dominated"])


def hypervolume_frame(fronts: Mapping[str, np.ndarray], directions: Sequence[str],
                      reference: Sequence[float]) -> pd.DataFrame:
    """The hypervolume of each front and of the union of all (last row, ``study = "union"``), with
    one ``reference``; ``share`` = hypervolume / union's, ``exclusive`` = union minus the union of
    the other fronts (what only this study covers)."""
    names = list(fronts)
    each, union = union_hypervolume([fronts[n] for n in names], directions, reference)
    rows = []
    for index, name in enumerate(names):
        others = [fronts[n] for j, n in enumerate(names) if j != index]
        _, without = union_hypervolume(others, directions, reference)
        rows.append({"study": name, "front": len(fronts[name]), "hypervolume": each[index],
                     "share": each[index] / union if union > 0 else math.nan, "exclusive": union - without})
    rows.append({"study": "union", "front": int(sum(len(f) for f in fronts.values())), "hypervolume": union,
                 "share": 1.0 if union > 0 else math.nan, "exclusive": math.nan})
    return pd.DataFrame(rows, columns=["study", "front", "hypervolume", "share", "exclusive"])


def cells_frame(studies: Sequence[StudyData], metric: str) -> pd.DataFrame:
    """The ablation cells that appear in at least two studies, by name or by configuration, in long
    form: ``study``, ``cell``, ``group`` (the row they are shown in), ``match`` (``name`` or
    ``configuration``), ``same_config`` (for name matches: ``yes`` / ``no`` / ``unknown``), ``n``,
    ``mean``, ``std``, ``ci_low``, ``ci_high`` of ``metric``."""
    columns = ["study", "cell", "group", "match", "same_config", "n", "mean", "std", "ci_low", "ci_high"]
    ablations = [s for s in studies if s.cells is not None]
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for study in ablations:
        rows = study.cells[study.cells["metric"] == metric]
        for r in rows.to_dict("records"):
            values[(study.name, str(r["cell"]))] = r
    names: dict[str, list[str]] = {}
    for study in ablations:
        for cell in dict.fromkeys(str(c) for c in study.cells["cell"]):
            names.setdefault(cell, []).append(study.name)
    out = []
    by_name = {cell: owners for cell, owners in names.items() if len(owners) > 1}
    config_of = {(s.name, c): s.cell_configs.get(c) for s in ablations for c in names if s.name in names[c]}
    for cell, owners in by_name.items():
        keys = [config_of.get((o, cell)) for o in owners]
        same = "unknown" if any(k is None for k in keys) else ("yes" if len(set(keys)) == 1 else "no")
        for owner in owners:
            out.append({"study": owner, "cell": cell, "group": cell, "match": "name", "same_config": same,
                        **_stats(values.get((owner, cell)))})
    groups: dict[str, list[tuple[str, str]]] = {}
    for (study, cell), key in config_of.items():
        if key is not None:
            groups.setdefault(key, []).append((study, cell))
    for members in groups.values():
        studies_in = {s for s, _ in members}
        cells_in = {c for _, c in members}
        if len(studies_in) < 2 or len(cells_in) < 2:  # same name everywhere: already a name row
            continue
        label = " = ".join(f"{s}: {c}" for s, c in members)
        for study, cell in members:
            out.append({"study": study, "cell": cell, "group": label, "match": "configuration", "same_config": "yes",
                        **_stats(values.get((study, cell)))})
    return pd.DataFrame(out, columns=columns)


def _stats(row: Mapping[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    return {"n": int(row.get("n", 0) or 0), **{k: float(row.get(k, math.nan)) for k in ("mean", "std", "ci_low", "ci_high")}}


# --- the figure ---------------------------------------------------------------------------------------------


def fronts_figure(studies: Sequence[StudyData], *, out_dir: Path, name: str, x: str = M.FLOPS,
                  y: str = M.ACCURACY) -> F.FigureFile | None:
    """Every study's completed trials (``y`` against ``x``), its front of that pair as a staircase,
    one colour and marker per study; one ``<title>`` per point. ``None`` when nothing has both."""
    from matplotlib.lines import Line2D

    per_study = []
    for study in studies:
        points = F.plotted_points(study.table, x, y)
        per_study.append(points[points["kind"].isin(["front", "dominated"])])
    if all(p.empty for p in per_study):
        return None
    fig = F._new_figure(8.5, 5.0)
    ax = fig.add_subplot()
    tooltips: dict[str, str] = {}
    right = max(float(p["x"].max()) for p in per_study if len(p))
    handles = []
    count = 0
    for index, (study, points) in enumerate(zip(studies, per_study)):
        colour, marker = F._PALETTE[index % len(F._PALETTE)], _MARKERS[index % len(_MARKERS)]
        for point in points.itertuples(index=False):
            row = study.table.loc[point.row]
            on_front = point.kind == "front"
            line = ax.plot([point.x], [point.y], linestyle="none", marker=marker, color=colour,
                           markersize=max(6.0, 10.5 - 1.5 * index) if on_front else 6,  # ties stay visible alpha=1.0 if on_front else 0.3,
                           markeredgecolor="black" if on_front else "none", markeredgewidth=1.0,
                           zorder=4 if on_front else 2)[0]
            gid = f"{F.POINT_PREFIX}{index}-{int(point.trial)}"
            line.set_gid(gid)
            tooltips[gid] = f"study {study.name}: " + F._tooltip(row, point.kind, x, y)
            count += 1
        front = points[points["kind"] == "front"].sort_values(["x", "y"])
        if len(front):
            xs, ys = front["x"].to_numpy(dtype=float), front["y"].to_numpy(dtype=float)
            ax.step(np.append(xs, right), np.append(ys, ys[-1]), where="post", color=colour, linewidth=1.4,
                    alpha=0.9, zorder=3)
        handles.append(Line2D([], [], color=colour, marker=marker, markersize=8, markeredgecolor="black",
                              label=f"{study.name} ({len(front)} on the front, {len(points)} trials)"))
    all_x = np.concatenate([p["x"].to_numpy(dtype=float) for p in per_study])
    F._format_cost_axis(ax, x, all_x)
    ax.set_xlabel(F.AXIS_LABELS.get(x, x))
    ax.set_ylabel(F.AXIS_LABELS.get(y, y))
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Pareto fronts: {y} vs {F.AXIS_LABELS.get(x, x).split(' (')[0]}", fontsize=11)
    handles.append(Line2D([], [], linestyle="none", marker="o", color="#777777", alpha=0.3, markersize=6,
                          label="dominated (faded)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False,
              ncol=1)
    caption = (f"{F.AXIS_LABELS.get(y, y)} against {F.AXIS_LABELS.get(x, x)}: the completed trials of "
               f"{len(studies)} studies ({count} points), each study its own colour and marker, its front of this "
               f"pair large and joined by a staircase in its colour. Hover a point for its study, trial and parameters.")
    return F._write(fig, out_dir, name, tooltips, caption, count)


# --- assembly -----------------------------------------------------------------------------------------------


def _kind(study: StudyData) -> str:
    return "ablation" if study.is_ablation else "search"


def _reference_text(objectives: Sequence[str], reference: Sequence[float], studies: Sequence[StudyData]) -> str:
    from .render import _fmt_value

    parts = []
    for objective, value in zip(objectives, reference):
        if M.DIRECTIONS[objective] == "maximize":
            parts.append(f"{objective} = {_fmt_value(objective, value)} (maximised: 0)")
        else:
            largest = max(float(pd.to_numeric(s.table.loc[s.table['state'] == 'complete', objective],
                                              errors="coerce").max()) for s in studies if objective in s.table)
            parts.append(f"{objective} = {_fmt_value(objective, value)} (minimised: 1.1 x the largest completed "
                         f"value of all studies, {_fmt_value(objective, largest)})")
    return "; ".join(parts)


def _cell_text(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "-"
    spread = f" ± {std:.4f}" if np.isfinite(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def _cells_tables(frame: pd.DataFrame, studies: Sequence[StudyData]) -> tuple[Any, Any]:
    from .render import Table

    names = [s.name for s in studies if s.is_ablation]
    out = []
    for match, table_id in (("name", "shared-cells"), ("configuration", "same-config-cells")):
        part = frame[frame["match"] == match]
        if part.empty:
            out.append(None)
            continue
        rows = []
        for group, members in part.groupby("group", sort=False):
            row = [str(group)]
            for name in names:
                hit = members[members["study"] == name]
                if hit.empty:
                    row.append("-")
                else:
                    r = hit.iloc[0]
                    text = _cell_text(r["mean"], r["std"], int(r["n"]))
                    row.append(text if match == "name" else f"{r['cell']}: {text}")
            if match == "name":
                row.append(str(members["same_config"].iloc[0]))
            rows.append(row)
        columns = ["cell" if match == "name" else "configuration", *names] + (["same configuration"] if match == "name" else [])
        out.append(Table(columns=columns, rows=rows, id=table_id,
                         numeric=[False, *[True] * len(names)] + ([False] if match == "name" else [])))
    return out[0], out[1]


def _fronts_table(fronts: Mapping[str, pd.DataFrame], objectives: Sequence[str]) -> tuple[pd.DataFrame, Any]:
    from .render import Table

    parts = []
    for name, front in fronts.items():
        sort = next((o for o in objectives if M.DIRECTIONS[o] == "minimize"), objectives[0])
        front = front.sort_values([sort, "trial"], ascending=[M.DIRECTIONS[sort] == "minimize", True], kind="stable")
        parts.append(front.assign(study=name))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    metrics = list(objectives) + [m for m in (M.ACCURACY, M.FLOPS, M.PARAMS) if m not in objectives]
    extra = [c for c in ("cell", "seed") if c in frame and frame[c].notna().any()]
    params = [c for c in frame.columns if c.startswith("param_") and c not in ("param_cell", "param_seed")
              and frame[c].notna().any()]
    columns = ["study", "trial", *[m for m in metrics if m in frame], *extra, *params]
    frame = frame.reindex(columns=columns + [c for c in frame.columns if c not in columns])
    shown = frame[columns].copy()
    if "seed" in shown:
        shown["seed"] = pd.to_numeric(shown["seed"], errors="coerce").astype("Int64")
    return frame, Table.from_frame(shown, id="fronts")


def comparison_context(study_dirs: Sequence[str | os.PathLike[str]], *, figures_dir: Path | None) -> dict[str, Any]:
    """Everything the comparison templates print (the figure written to ``figures_dir`` when given).
    Raises ``ValueError`` with fewer than 2 studies or no common objective."""
    from .render import COLUMN_LABELS, Table

    if len(study_dirs) < 2:
        raise ValueError(f"a comparison needs at least 2 studies, got {len(study_dirs)}")
    names = [Path(d).name for d in study_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"a study name appears twice ({', '.join(names)}): compare distinct studies")
    studies = [read_study(d) for d in study_dirs]
    objectives = common_objectives([s.objectives for s in studies])
    directions = [M.DIRECTIONS[o] for o in objectives]
    notes = []
    for study in studies:
        if not (study.study_dir / "search.json").exists():
            notes.append(f"{study.name} has no search.json: its objectives were taken to be accuracy and flops.")
        dropped = [o for o in study.objectives if o not in objectives]
        if dropped:
            notes.append(f"{study.name} also optimised {', '.join(dropped)}, which not every study did: left out.")
    if len(objectives) == 1:
        notes.append(f"The studies share one objective ({objectives[0]}): each front is the study's best trial(s) and "
                     f"the hypervolume is the distance of the best {objectives[0]} from the reference. The figure still "
                     "shows each study's accuracy/FLOPs front.")
    front_frames = {s.name: study_front(s.table, objectives) for s in studies}
    fronts = {n: f[objectives].to_numpy(dtype=float) for n, f in front_frames.items()}
    reference = common_reference([s.table for s in studies], objectives)
    dominance = dominance_frame(fronts, directions)
    hv = hypervolume_frame(fronts, directions, reference) if reference is not None else None
    if reference is None:
        notes.append("No reference point: a minimised objective has no completed value in any study; no hypervolume.")
    primary = objectives[0] if any(s.is_ablation for s in studies) else M.ACCURACY
    cells = cells_frame(studies, primary)
    shared_cells, same_config = _cells_tables(cells, studies)
    figure = fronts_figure(studies, out_dir=figures_dir, name="fronts-accuracy-vs-flops") if figures_dir else None
    fronts_csv, fronts_table = _fronts_table(front_frames, objectives)

    counts = []
    for s in studies:
        done = int((s.table["state"] == "complete").sum())
        counts.append([s.name, _kind(s), str(s.settings.get("backend") or "-"), str(s.settings.get("dataset") or "-"),
                       ", ".join(s.objectives), f"{done} of {len(s.table)}", str(len(front_frames[s.name])),
                       str(s.study_dir)])
    studies_table = Table(columns=["study", "kind", "backend", "dataset", "its objectives", "completed trials",
                                   "front (common objectives)", "folder"], rows=counts, id="studies",
                          numeric=[False, False, False, False, False, True, True, False])
    dominance_table = Table(
        columns=["study A", "study B", "A's front", "B's front", "A's front points dominating >= 1 of B's",
                 "A's front points dominated by B's front"],
        rows=[[r.study, r.other, str(r.front), str(r.other_front), str(r.dominating), str(r.dominated)]
              for r in dominance.itertuples(index=False)],
        id="dominance", numeric=[False, False, True, True, True, True])
    hv_table = None
    if hv is not None:
        hv_table = Table(columns=["study", "front", "hypervolume", "share of the union", "exclusive (union - others)"],
                         rows=[[r.study, str(r.front), f"{r.hypervolume:.6g}", "-" if not np.isfinite(r.share) else f"{r.share:.4f}",
                                "-" if not np.isfinite(r.exclusive) else f"{r.exclusive:.6g}"]
                               for r in hv.itertuples(index=False)], id="hypervolume-table",
                         numeric=[False, True, True, True, True])
    summary = {
        "studies": names,
        "objectives": objectives,
        "directions": directions,
        "reference": None if reference is None else dict(zip(objectives, reference)),
        "front_sizes": {n: len(f) for n, f in fronts.items()},
        "hypervolume": None if hv is None else {r.study: float(r.hypervolume) for r in hv.itertuples(index=False)},
        "dominance": json.loads(dominance.to_json(orient="records")),
        "shared_cells": sorted(set(cells.loc[cells["match"] == "name", "cell"])),
    }
    return {
        "title": "gsa-search comparison: " + " vs ".join(names),
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "notes": notes,
        "studies_table": studies_table,
        "objectives": objectives,
        "directions": directions,
        "objectives_text": ", ".join(f"{o} ({d})" for o, d in zip(objectives, directions)),
        "reference_text": "-" if reference is None else _reference_text(objectives, reference, studies),
        "reference_rule": REFERENCE_RULE,
        "hypervolume_units": " x ".join(COLUMN_LABELS.get(o, o) for o in objectives),
        "flops_convention": M.FLOPS_CONVENTION,
        "fronts_figure": figure,
        "hypervolume_table": hv_table,
        "dominance_table": dominance_table,
        "fronts_table": fronts_table,
        "cells_metric": primary,
        "shared_cells": shared_cells,
        "same_config_cells": same_config,
        "summary": summary,
        "_frames": {"fronts.csv": fronts_csv, "dominance.csv": dominance,
                    **({"hypervolume.csv": hv.assign(reference=json.dumps(dict(zip(objectives, reference))))}
                       if hv is not None else {}),
                    **({"cells.csv": cells} if len(cells) else {})},
        "_figures": [figure] if figure else [],
    }


def build_comparison(study_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> ComparisonPaths:
    """Write the comparison of ``study_dirs`` into ``out_dir`` (created): report.html, report.md,
    the CSV tables and figures/. Raises ``FileNotFoundError`` (a folder without a results table) or
    ``ValueError`` (fewer than 2 studies, the same one twice, no common objective)."""
    from .render import _atomic_write_text, _environment_jinja

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = comparison_context(study_dirs, figures_dir=out_dir / "figures")
    env = _environment_jinja()
    html = env.get_template("compare.html.j2").render(**context)
    markdown = env.get_template("compare.md.j2").render(**context)
    paths = []
    for name, frame in context["_frames"].items():
        path = out_dir / name
        _atomic_write_text(path, frame.to_csv(index=False))
        paths.append(path)
    result = ComparisonPaths(out_dir=out_dir, html=out_dir / "report.html", markdown=out_dir / "report.md",
                             tables=tuple(paths), figures=tuple(p for f in context["_figures"] for p in (f.svg, f.png)),
                             summary=context["summary"])
    _atomic_write_text(result.html, html)
    _atomic_write_text(result.markdown, markdown)
    return result
