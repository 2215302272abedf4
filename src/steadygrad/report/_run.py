"""``render_run``: the HTML report of one training run folder, from its recorded files only."""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from steadygrad.errors import DataError
from steadygrad.report._figures import (
    dead_over_time,
    depth_profile,
    grad_heatmap,
    histograms,
    saturation_over_time,
    training_curves,
)
from steadygrad.report._html import HtmlReport
from steadygrad.report._log import QUANTITIES, RecordedRun, finite_positive, recorded

__all__ = ["LAYER_COLUMNS", "MONITOR_NAME", "REPORT_NAME", "layer_table", "render_run"]

MONITOR_NAME = "monitor.jsonl"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
REPORT_NAME = "report.html"

#: Columns of the per-layer table: identity, then the LayerStats quantities.
LAYER_COLUMNS = ("depth", "name", "kind", "activation", *QUANTITIES)


def layer_table(run: RecordedRun, row: int = -1) -> list[dict[str, Any]]:
    """One dict per layer (keys :data:`LAYER_COLUMNS`) at recorded row ``row`` (default last);
    None where the monitor wrote null, counts as ints."""
    out = []
    for j, info in enumerate(run.layers):
        entry: dict[str, Any] = {
            "depth": info.depth,
            "name": info.name,
            "kind": info.kind,
            "activation": info.activation,
        }
        for q in QUANTITIES:
            if not run.observed[q][row, j]:
                entry[q] = None
                continue
            value = float(run.values[q][row, j])
            entry[q] = int(value) if q in ("nan", "inf") and math.isfinite(value) else value
        out.append(entry)
    return out


def _read_jsonl_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a JSON-lines file; a cut-short last line is dropped with a note."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"could not read {path}: {exc}") from None
    lines = [(n, s) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for k, (n, line) in enumerate(lines):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(lines) - 1 and not text.endswith("\n"):
                notes.append(f"the last line ({n}) of {path.name} was cut short and is ignored")
                break
            raise DataError(f"{path}, line {n}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(value).__name__}")
        records.append(value)
    return records, notes


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` → ``[("a.b", 1)]``; lists are shown as JSON."""
    if isinstance(config, Mapping):
        out: list[tuple[str, Any]] = []
        for key, value in config.items():
            out += _flatten(value, f"{prefix}{key}.")
        return out
    value = config
    if isinstance(value, (list, tuple)):
        value = json.dumps(value)
    return [(prefix[:-1], value)]


def _summary(run: RecordedRun) -> list[str]:
    lines = []
    if run.steps.size:
        lines.append(
            f"{len(run.layers)} monitored layers; {run.steps.size} recorded steps "
            f"(step {int(run.steps[0])} to {int(run.steps[-1])})"
            + ("; histograms recorded." if run.has_histograms else "; no histograms recorded.")
        )
        every, unit = run.header.get("every"), run.header.get("step_unit")
        if isinstance(every, int) and not isinstance(every, bool):
            what = "optimizer steps" if unit == "optimizer_step" else "forward calls"
            lines[-1] += f" Recorded every {every} {what}."
    for row, when in ((0, "first"), (-1, "last")):
        if run.steps.size == 0:
            break
        vals = run.values["grad_out_std"][row]
        good = np.flatnonzero(finite_positive(vals))
        if good.size >= 2:
            a, b = good[0], good[-1]
            lines.append(
                f"Back-propagated gradient std at the {when} recorded step "
                f"({int(run.steps[row])}): layer {run.layers[a].depth} / layer "
                f"{run.layers[b].depth} = {vals[a] / vals[b]:.2g} "
                "(≈ 1 is healthy; ≪ 1 is vanishing, ≫ 1 exploding)."
            )
    for name in ("nan", "inf"):
        total = np.nansum(np.where(run.observed[name], run.values[name], 0.0))
        if total > 0:
            lines.append(f"{int(total)} {'NaN' if name == 'nan' else 'Inf'} values were counted.")
    return lines


def render_run(
    run_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> Path:
    """Write the HTML report of a run folder and return its path (``<run_dir>/report.html``).

    Reads ``<run_dir>/monitor.jsonl`` (required; written by ``steadygrad train --monitor``), and
    ``config.json`` and ``metrics.jsonl`` when present. The page holds the run's configuration, the
    training curves, the depth profile of activation and gradient std (first and last recorded
    step), the per-layer histograms (when recorded), saturation and dead-unit fractions over
    training, the layer × step heatmap of the back-propagated gradient norm and a per-layer table of
    the last recorded step. It never needs the model. ``out`` writes the page elsewhere.

    Raises:
        DataError: ``run_dir`` is not a folder, it has no monitor.jsonl, or a file in it cannot be
            read.
        MissingExtraError: matplotlib is not installed.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise DataError(f"run_dir {str(run_dir)!r} is not a folder")
    monitor_path = folder / MONITOR_NAME
    if not monitor_path.is_file():
        raise DataError(
            f"{folder} has no {MONITOR_NAME}: train with --monitor to record one "
            f"(steadygrad train ... --monitor --out {shlex.quote(str(folder))})"
        )
    run = recorded(monitor_path)
    name = folder.resolve().name
    report = HtmlReport(f"steadygrad run report: {name}")
    for line in _summary(run):
        report.paragraph(line)
    report.paragraph("Reproduce this page with:")
    report.code(f"steadygrad report {shlex.quote(str(folder))}")
    if run.notes:
        report.heading("Monitor notes", 3)
        report.bullets(run.notes)

    config_path = folder / CONFIG_NAME
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"could not read {config_path}: {exc}") from None
        report.heading("Configuration")
        report.table(_flatten(config), ["setting", "value"])

    report.heading("Training curves")
    metrics_path = folder / METRICS_NAME
    metrics: list[dict[str, Any]] = []
    if metrics_path.is_file():
        metrics, metric_notes = _read_jsonl_records(metrics_path)
        if metric_notes:
            report.bullets(metric_notes)
    if metrics:
        report.figure(
            training_curves(metrics),
            "Loss and accuracy per epoch (train, validation, test) from metrics.jsonl.",
        )
    else:
        report.paragraph(f"No {METRICS_NAME} in this folder: no training curves.")

    if run.steps.size == 0:
        report.heading("Monitor")
        report.paragraph(f"{MONITOR_NAME} holds no recorded step yet: nothing to plot.")
        return report.write(Path(out) if out is not None else folder / REPORT_NAME)

    report.heading("Signal by depth")
    report.figure(
        depth_profile(run),
        "Activation std (blue) and back-propagated gradient std (red) by layer depth, log scale, "
        "at the first (dashed) and last (solid) recorded step. Flat lines are healthy; a gradient "
        "line falling toward layer 1 is vanishing, rising is exploding "
        "(Glorot & Bengio 2010, Figs. 6–7).",
    )
    report.heading("Histograms")
    if run.has_histograms:
        report.figure(
            histograms(run),
            "Per-layer histograms of activations and back-propagated gradients at the last step "
            "with histograms, one curve per layer (Glorot & Bengio 2010, Figs. 6–7).",
        )
    else:
        report.paragraph(
            "No histograms were recorded (watch(model, histograms=True) records them)."
        )
    report.heading("Saturation and dead units")
    report.figure(
        saturation_over_time(run),
        "Fraction of each layer's activation entries (units × samples) in the saturating region "
        "of its activation, per recorded step (Glorot & Bengio 2010, Fig. 2).",
    )
    report.figure(
        dead_over_time(run),
        "Fraction of each layer's units that are dead (zero derivative for every sample).",
    )
    report.heading("Gradient norm by layer and step")
    report.figure(
        grad_heatmap(run),
        "Norm of the back-propagated gradient (∂L/∂output) per layer and recorded step, log "
        "colour scale; grey cells were not observable, NaN/Inf or zero.",
    )
    report.heading(f"Layers at step {int(run.steps[-1])}")
    report.table(layer_table(run), LAYER_COLUMNS)
    return report.write(Path(out) if out is not None else folder / REPORT_NAME)
