"""``gsa-search ablate``: run an ablation study and print its cells and comparisons.

Status: new. :func:`ablate_main` is the command's logic, called by ``runners.cli`` with the parsed
options; it returns ``(document, text)``: the JSON document (``AblationResult.to_json()``) and what
to print -- the JSON document itself with ``json_out``, else two terminal tables:

- **cells**: per cell, the primary metric's mean ± std over finished seeds, the 95% interval of
  the mean, ``n`` (finished seeds), failed runs, FLOPs (multiply-accumulates per image) and
  parameters (identical over seeds);
- **comparisons with the baseline**: difference (cell - baseline), its 95% interval, the test
  (paired t by seed when the same seeds finished, else Welch t), Holm-adjusted p over the study,
  verdict (``better`` / ``worse`` / ``within noise`` / ``insufficient data``) and effect size, then
  the exact cost differences; full designs add the main effects.

Failed runs are listed with their reason. ``reports/<study>/`` holds trials.csv, cells.csv,
ablation.csv (and main_effects.csv).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from gsa_search import metrics as M
from search_spaces.ablation import BASELINE_CELL

from .ablation_runner import AblationResult, run_ablation
from .settings import UserError

__all__ = ["ablate_main", "render_text", "parse_seeds"]


def parse_seeds(seeds: int | str | Sequence[int] | None) -> int | list[int] | None:
    """``3`` / ``"3"`` (a count) or ``"0,1,2"`` / ``[0, 1, 2]`` (a list) for ``--seeds``."""
    if seeds is None or isinstance(seeds, (int, list, tuple)):
        return list(seeds) if isinstance(seeds, tuple) else seeds  # type: ignore[return-value]
    text = str(seeds).strip()
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise UserError(f"--seeds expects a count (3) or a list of seeds (0,1,2), got {seeds!r}") from None


def ablate_main(
    spec: str,
    *,
    seeds: int | str | Sequence[int] | None = None,
    backend: str = "optuna",
    study_name: str | None = None,
    reports_dir: str = "reports",
    retry_failed: bool = False,
    workers: int = 1,
    storage: str | None = None,
    quiet: bool = False,
    json_out: bool = False,
    recipe_overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    address: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Run the study ``spec`` (a registered name, ``FILE.py:NAME`` or ``FILE.toml``); returns
    ``(document, text)``. ``recipe_overrides`` (``--epochs`` etc.) change the baseline recipe; a
    ``seed`` among them is refused (use ``seeds``). Raises :class:`~runners.settings.UserError`."""
    overrides = dict(recipe_overrides or {})
    if "seed" in overrides:
        raise UserError("--seed does not apply to ablations: use --seeds (a count or a list; every cell runs every seed)")
    if "device" in overrides:
        device = device or overrides.pop("device")
    result = run_ablation(
        spec, seeds=parse_seeds(seeds), backend=backend, study_name=study_name, reports_dir=reports_dir,
        retry_failed=retry_failed, workers=workers, storage=storage, progress=not quiet, device=device,
        recipe_overrides=overrides, data_dir=data_dir, threads=threads,
        address=address,
    )  # fmt: skip
    document = result.to_json()
    text = json.dumps(document, indent=2) if json_out else render_text(result)
    return document, text


# --- text -------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _count(value: Any) -> str:
    """``12.3M``, ``389k``: FLOPs and parameter counts."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    value = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _signed_count(value: Any) -> str:
    text = _count(value)
    return text if text == "-" or text.startswith("-") else f"+{text}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return "<0.001" if value < 1e-3 else f"{value:.3f}"


def _interval(low: Any, high: Any) -> str:
    if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in (low, high)):
        return "-"
    return f"[{low:+.4f}, {high:+.4f}]"


def _cell_costs(result: AblationResult) -> dict[str, dict[str, float]]:
    """FLOPs and parameters of each cell from any run that measured them (they are measured before
    training, so a cell whose runs all failed still has its cost)."""
    out: dict[str, dict[str, float]] = {}
    for metric in (M.FLOPS, M.PARAMS):
        if metric not in result.runs:
            continue
        values = pd.to_numeric(result.runs[metric], errors="coerce")
        for cell, value in zip(result.runs["cell"], values):
            if math.isfinite(value):
                out.setdefault(cell, {}).setdefault(metric, float(value))
    return out


def render_text(result: AblationResult) -> str:
    """The terminal report of an ablation: cells, comparisons, main effects, failed runs."""
    study = result.study
    primary = result.metrics[0]
    n_cells = len(study.cells())
    out = [
        f"ablation {result.study_name} ({study.design}, {n_cells} cells x {len(result.seeds)} seeds "
        f"{result.seeds} = {n_cells * len(result.seeds)} runs; {result.scheduled} scheduled now, "
        f"{result.reused} reused)",
        f"folder: {result.study_dir}   storage: {result.storage}   backend: {result.backend}",
    ]
    if study.description:
        out.insert(1, study.description)
    summary = result.summary.set_index(["cell", "metric"])
    costs = _cell_costs(result)
    rows = []
    for cell in study.cells():
        acc = summary.loc[(cell, primary)]
        cost = costs.get(cell, {})
        rows.append([
            cell, f"{_num(acc['mean'])} ± {_num(acc['std'])}", _interval(acc["ci_low"], acc["ci_high"]).replace("+", ""),
            str(int(acc["n"])), str(int(acc["n_failed"] + acc["n_other"] + acc["n_pruned"])),
            _count(cost.get(M.FLOPS)), _count(cost.get(M.PARAMS)),
        ])  # fmt: skip
    out += ["", f"cells ({primary}: mean ± std over finished seeds, 95% CI of the mean; FLOPs = "
                "multiply-accumulates per image)"]
    out += _table(["cell", primary, "95% CI", "n", "failed", "FLOPs", "params"], rows,
                  [False, True, True, True, True, True, True])
    comparisons = result.comparisons
    tested = comparisons[comparisons["metric"] == primary]
    family = int(tested["family_size"].max()) if len(tested) else 0
    rows = []
    for row in tested.itertuples(index=False):
        effect = "-" if not isinstance(row.effect_size, float) or not math.isfinite(row.effect_size) else \
            f"{row.effect_size_kind.split(' ')[0]}={row.effect_size:+.2f}"
        rows.append([row.cell, f"{row.difference:+.4f}" if math.isfinite(row.difference) else "-",
                     _interval(row.ci_low, row.ci_high), row.method, _p(row.p_holm), row.verdict, effect])
    out += ["", f"comparisons with the baseline ({primary}, cell - baseline; Holm-adjusted over the study's "
                f"{family} test(s), alpha 0.05)"]
    out += _table(["cell", "difference", "95% CI", "method", "p (Holm)", "verdict", "effect size"], rows,
                  [False, True, True, False, True, False, True])
    costs = _cell_costs(result)
    base_cost = costs.get(BASELINE_CELL, {})
    cost_rows = []
    for cell in list(study.cells())[1:]:
        row = [cell]
        for metric in (M.FLOPS, M.PARAMS):
            value, base = costs.get(cell, {}).get(metric), base_cost.get(metric)
            if value is None or base is None:
                row.append("-")
            else:
                row.append(_signed_count(value - base) + (f" ({value / base:.2f}x)" if base > 0 else ""))
        cost_rows.append(row)
    if cost_rows:
        out += ["", "cost against the baseline (exact: measured before training, identical over seeds)"]
        out += _table(["cell", "FLOPs", "params"], cost_rows, [False, True, True])
    for metric in [m for m in result.metrics[1:] if m not in (M.FLOPS, M.PARAMS)]:
        extra = comparisons[comparisons["metric"] == metric]
        out += ["", f"{metric}: " + ", ".join(f"{r.cell} {r.difference:+.4g} ({r.verdict})" for r in extra.itertuples())]
    if result.main_effects is not None and len(result.main_effects):
        rows = [[r.factor, f"{r.level} vs {r.baseline_level}", f"{r.difference:+.4f}" if math.isfinite(r.difference)
                 else "-", _interval(r.ci_low, r.ci_high), r.method, _p(r.p_holm), r.verdict]
                for r in result.main_effects.itertuples(index=False)]
        out += ["", f"main effects ({primary}; each level against the factor's baseline level, averaged over the "
                    "other factors; Holm over these rows)"]
        out += _table(["factor", "level", "difference", "95% CI", "method", "p (Holm)", "verdict"], rows,
                      [False, False, True, True, False, True, False])
    failed = result.runs[~result.runs["state"].isin(["complete"])]
    if len(failed):
        out += ["", "runs without a result (excluded from the statistics):"]
        for row in failed.itertuples(index=False):
            reason = str(row.reason) if isinstance(row.reason, str) and row.reason else "(no reason recorded)"
            out.append(f"  {row.cell} seed {int(row.seed)}: {row.state}: {reason[:200]}")
        if (failed["state"] == "failed").any() and result.backend == "optuna":
            out.append("  (re-run with --retry-failed to run the failed pairs again)")
    for problem in result.problems:
        out.append(f"warning: {problem}")
    if result.interrupted:
        out += ["", "interrupted: re-run the same command to finish (finished runs are kept)"]
    files = ", ".join(p.name for p in result.files if p.suffix == ".csv")
    out += ["", f"written to {result.study_dir}: {files}"]
    return "\n".join(out)
