"""The studies' HTML report, built on :class:`steadygrad.report.HtmlReport` (escaped by default).

One self-contained page: a summary table of every verdict, then per study its claim, literature,
setup, computed verdicts (status, evidence, rule), tables, figures (each followed by the command
that reproduces it) and the grid of configurations; the footer names the software versions and
the machine. Figures are redrawn from the recorded results, never from a live model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steadygrad.studies._study import StudyResult

__all__ = ["REPORT_NAME", "build_report", "render_report"]

REPORT_NAME = "report.html"


def _label_rows(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """One row per run: its label values, seconds and whether it came from the cache."""
    columns: list[str] = []
    for record in result.runs:
        for key in record.spec.get("label", {}):
            if key not in columns:
                columns.append(key)
    rows = []
    for record in result.runs:
        label = record.spec.get("label", {})
        rows.append(
            [*(label.get(c) for c in columns), record.seconds, "cache" if record.cached else "run"]
        )
    return [*columns, "seconds", "source"], rows


def build_report(results: Sequence[StudyResult], title: str | None = None) -> Any:
    """The :class:`steadygrad.report.HtmlReport` of ``results`` (not yet written)."""
    from steadygrad.report import HtmlReport

    if title is None:
        title = (
            f"steadygrad study: {results[0].name}" if len(results) == 1 else "steadygrad studies"
        )
    page = HtmlReport(title)
    page.paragraph(
        "Each study runs a grid of configurations on Fashion-MNIST, measures what its claim is "
        "about and applies a fixed rule to the numbers; the verdicts below are computed, not "
        "written by hand. A refuted claim is reported as refuted."
    )
    if any(r.options.quick for r in results):
        page.paragraph(
            "Quick mode: these are miniatures (tiny networks, subsets and step counts, one seed) "
            "that check the studies run end to end; their verdicts say nothing about the claims."
        )
    page.heading("Summary")
    summary = []
    for result in results:
        for verdict in result.verdicts:
            summary.append([result.name, verdict.claim, verdict.status, verdict.evidence])
    page.table(summary, ["study", "claim", "status", "evidence"])
    page.paragraph("Commands that produced this page:")
    page.code("\n".join(r.command for r in results))
    for result in results:
        _study_section(page, result)
    return page


def _study_section(page: Any, result: StudyResult) -> None:
    from steadygrad.studies._api import get

    page.heading(f"{result.name}: {result.title}")
    page.paragraph(f"Claim: {result.claim}.")
    page.paragraph(f"Literature: {result.literature}.")
    page.paragraph(f"Setup: {result.setup}")
    page.paragraph(
        f"{len(result.runs)} runs ({result.cached_runs} read from the cache), "
        f"{result.options.seeds} seed(s) per configuration, {result.seconds:.1f} s; measured: "
        f"{', '.join(result.measure)}. Data: {result.name}.json; code version "
        f"{result.code_version}."
    )
    page.heading("Verdicts", level=3)
    for verdict in result.verdicts:
        page.verdict(
            verdict.claim,
            verdict.status,
            [verdict.evidence, f"Rule: {verdict.rule}", f"Literature: {verdict.literature}"],
        )
    for table in result.tables:
        page.table(table.rows, table.columns, caption=table.caption)
    study = get(result.name)
    results = result.results
    page.heading("Figures", level=3)
    for spec in study.figures:
        page.figure(spec.draw(results), spec.caption)
        page.code(result.command)
    columns, rows = _label_rows(result)
    page.heading("Configurations", level=3)
    page.table(rows, columns, caption=f"the grid of {result.name}: one row per run")


def render_report(
    results: Sequence[StudyResult], out: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write ``<out>/report.html`` (atomically) for ``results``; return its path.

    Raises:
        ValueError: ``results`` is empty.
        steadygrad.report.MissingExtraError: matplotlib is not installed.
    """
    if not results:
        raise ValueError("results must hold at least one StudyResult; got none")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path: Path = build_report(results, title).write(folder / REPORT_NAME)
    return path
