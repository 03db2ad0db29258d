"""``gsa-search compare STUDY_A STUDY_B ...``: one report comparing the Pareto fronts of several studies.

Status: new. :func:`compare_main` checks the study folders (each must exist and hold a results
table: a :class:`~runners.settings.UserError` naming the command to run first, with the closest
existing study suggested, otherwise; at least 2 distinct studies; at least one common objective),
then calls :func:`gsa_search.report.compare.build_comparison`, which writes
``<reports_dir>/compare-<a>-<b>.../``: report.html (self-contained), report.md, fronts.csv,
dominance.csv, hypervolume.csv, cells.csv (ablations sharing cells) and figures/. All hypervolumes
use one reference point (0 for accuracy, 1.1 x the largest completed value of all studies for a
minimised objective such as FLOPs, multiply-accumulates per image).

Example:
    >>> document, text = compare_main([Path("reports/a"), Path("reports/b")], reports_dir=Path("reports"))  # doctest: +SKIP
    >>> document["out_dir"]  # doctest: +SKIP
    'reports/compare-a-b'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsa_search.report.compare import build_comparison

from .report_cmd import _known_studies, _study_command
from .settings import UserError, suggest

__all__ = ["compare_main", "output_dir"]


def output_dir(study_dirs: Sequence[Path], reports_dir: Path) -> Path:
    """``<reports_dir>/compare-<name1>-<name2>...`` (the study folders' names, in the given order)."""
    return Path(reports_dir) / ("compare-" + "-".join(Path(d).name for d in study_dirs))


def _check(study_dirs: Sequence[Path]) -> None:
    if len(study_dirs) < 2:
        given = ", ".join(str(d) for d in study_dirs) or "none"
        raise UserError(f"compare needs at least 2 studies (given: {given}): gsa-search compare STUDY_A STUDY_B ...")
    resolved = [d.resolve() for d in study_dirs]
    names = [d.name for d in study_dirs]
    if len(set(resolved)) != len(resolved) or len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"a study is given twice ({', '.join(twice)}): compare distinct studies")
    for study_dir in study_dirs:
        if (study_dir / "trials.parquet").exists() or (study_dir / "trials.csv").exists():
            continue
        known = [k for k in _known_studies(study_dir.parent) if not k.startswith("compare-")]
        hint = suggest(study_dir.name, known)
        if not study_dir.is_dir():
            raise UserError(f"no study at {study_dir}: run `{_study_command(study_dir)}` first{hint}")
        raise UserError(f"{study_dir} has no results table (trials.parquet or trials.csv): run "
                        f"`{_study_command(study_dir)}` first{hint}")


def compare_main(study_dirs: list[Path], *, reports_dir: Path, json_out: bool = False) -> tuple[dict[str, Any], str]:
    """Compare ``study_dirs``; returns ``(document, text)`` for the CLI to print.

    ``document`` (JSON-able): studies, out_dir, files, objectives, directions, reference (objective
    -> value, common to all), front_sizes, hypervolume (study -> value, plus ``union``), dominance
    (one record per ordered pair: study, other, front, other_front, dominating, dominated),
    shared_cells. ``text`` is the JSON itself with ``json_out``, else a short summary. Raises
    :class:`UserError` for a missing study, fewer than 2 studies, or no common objective.
    """
    study_dirs = [Path(d) for d in study_dirs]
    _check(study_dirs)
    out_dir = output_dir(study_dirs, Path(reports_dir))
    try:
        paths = build_comparison(study_dirs, out_dir)
    except ValueError as error:
        raise UserError(f"cannot compare {', '.join(d.name for d in study_dirs)}: {error}") from None
    summary = paths.summary
    document: dict[str, Any] = {**summary, "out_dir": str(out_dir), "files": [str(p) for p in paths.files]}
    if json_out:
        return document, json.dumps(document, indent=2)
    lines = [f"compared {', '.join(summary['studies'])} on {', '.join(summary['objectives'])}"]
    if summary["reference"] is not None:
        reference = ", ".join(f"{k} {v:.4g}" for k, v in summary["reference"].items())
        lines.append(f"common reference point: {reference} (FLOPs = multiply-accumulates per image)")
    hv = summary["hypervolume"] or {}
    for study in summary["studies"]:
        value = f"; hypervolume {hv[study]:.6g}" if study in hv else ""
        lines.append(f"  {study}: front {summary['front_sizes'][study]}{value}")
    if "union" in hv:
        lines.append(f"  union of all fronts: hypervolume {hv['union']:.6g}")
    for row in summary["dominance"]:
        lines.append(f"  {row['study']} vs {row['other']}: {row['dominating']} of {row['front']} front points dominate "
                     f"some of {row['other']}'s; {row['dominated']} are dominated by it")
    if summary["shared_cells"]:
        lines.append(f"cells in several studies: {', '.join(summary['shared_cells'])}")
    lines.append(f"wrote {paths.html}, {paths.markdown}, {len(paths.tables)} table(s) and {len(paths.figures)} "
                 f"figure file(s) in {out_dir}")
    return document, "\n".join(lines)
