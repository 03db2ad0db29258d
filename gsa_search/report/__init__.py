"""Search reports: exact hypervolumes, Pareto figures and the HTML/Markdown report of a study folder.

Status: stable. Pure computation in :mod:`~gsa_search.report.hypervolume`, drawing in
:mod:`~gsa_search.report.figures`, assembly and templates in :mod:`~gsa_search.report.render`
(Jinja2 templates shipped as package data in ``templates/``). Everything reads the saved results
table of ``reports/<study>/`` and never a live backend; parameter importance (Optuna) is computed by
``runners.report_cmd`` and passed in, since this library does not import Optuna.

Example:
    >>> from gsa_search.report import build_report
    >>> paths = build_report("reports/demo-search")  # doctest: +SKIP
    >>> sorted(p.name for p in paths.files)[:3]  # doctest: +SKIP
    ['accuracy-vs-flops.png', 'accuracy-vs-flops.svg', 'accuracy-vs-params.png']
"""

from .hypervolume import hypervolume_history, reference_point
from .render import Importance, ReportPaths, Table, build_report, load_table, report_context

__all__ = [
    "Importance",
    "ReportPaths",
    "Table",
    "build_report",
    "hypervolume_history",
    "load_table",
    "reference_point",
    "report_context",
]
