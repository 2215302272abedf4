"""Studies that reproduce the seed's claims on Fashion-MNIST, with computed verdicts.

A study is data (:class:`Study`): a claim, the literature it comes from, a grid of runs
(:data:`RunSpec`, JSON-able dicts), what the runs measure, the rules that turn results into
:class:`Verdict` objects (confirmed / refuted / inconclusive, with the numbers and the rule) and
figures drawn from the results. :func:`run_study` executes a grid on worker processes with a
content-addressed cache (a rerun computes only what is missing) and writes ``<out>/<name>.json``;
:func:`render_report` writes the self-contained ``<out>/report.html``.

See docs/studies.md for every study, its rules and its budget.
"""

from __future__ import annotations

from steadygrad.studies import (
    _batchnorm,
    _cost,
    _deep_relu,
    _elu_vs_relu,
    _leaky_vs_relu,
    _selu,
    _sigmoid_saturation,
    _variance_by_depth,
)
from steadygrad.studies._api import (
    DEFAULT_OUT,
    get,
    load_result,
    names,
    reproduce_command,
    run_all,
    run_study,
    write_result,
)
from steadygrad.studies._report import REPORT_NAME, build_report, render_report
from steadygrad.studies._runner import (
    RunRecord,
    RunSpec,
    StudyRunError,
    WorkerPool,
    canonical_json,
    code_version,
    run_grid,
    spec_key,
)
from steadygrad.studies._study import (
    STATUSES,
    Claim,
    FigureSpec,
    Options,
    Results,
    Status,
    Study,
    StudyResult,
    Table,
    Verdict,
)
from steadygrad.studies._tasks import TASKS

STUDIES: dict[str, Study] = {
    module.STUDY.name: module.STUDY
    for module in (
        _variance_by_depth,
        _sigmoid_saturation,
        _deep_relu,
        _leaky_vs_relu,
        _elu_vs_relu,
        _batchnorm,
        _cost,
        _selu,
    )
}
"""Every study by name, in report order."""

__all__ = [
    "DEFAULT_OUT",
    "REPORT_NAME",
    "STATUSES",
    "STUDIES",
    "TASKS",
    "Claim",
    "FigureSpec",
    "Options",
    "Results",
    "RunRecord",
    "RunSpec",
    "Status",
    "Study",
    "StudyResult",
    "StudyRunError",
    "Table",
    "Verdict",
    "WorkerPool",
    "build_report",
    "canonical_json",
    "code_version",
    "get",
    "load_result",
    "names",
    "render_report",
    "reproduce_command",
    "run_all",
    "run_grid",
    "run_study",
    "spec_key",
    "write_result",
]
