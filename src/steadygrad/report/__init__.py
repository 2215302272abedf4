"""Figures and HTML reports from recorded data (monitor logs, metrics, study results).

Nothing here touches a live model: the figures read what :mod:`steadygrad.monitor` recorded
(``monitor.jsonl``, or the ``MonitorLog`` that :func:`steadygrad.monitor.read` returns).

* Figures (matplotlib, the ``plots`` extra): :func:`depth_profile`, :func:`histograms`,
  :func:`saturation_over_time`, :func:`dead_over_time`, :func:`grad_heatmap`,
  :func:`training_curves`; :func:`figure_to_png_bytes`, :func:`figure_to_data_uri`.
* HTML: :class:`HtmlReport` (self-contained, escaped by default), :func:`environment`.
* Runs: :func:`render_run` writes ``<run_dir>/report.html``.
* Browser check: :func:`open_in_browser` loads a page in headless Chromium and returns its console.

See docs/report.md for how to read each figure.
"""

from __future__ import annotations

from steadygrad.report._browser import (
    BrowserError,
    BrowserResult,
    ConsoleEntry,
    find_chromium,
    open_in_browser,
)
from steadygrad.report._figures import (
    PLOTS_HINT,
    MissingExtraError,
    dead_over_time,
    depth_profile,
    figure_to_data_uri,
    figure_to_png_bytes,
    grad_heatmap,
    histograms,
    saturation_over_time,
    training_curves,
)
from steadygrad.report._html import (
    VERDICT_STATUSES,
    HtmlReport,
    Markup,
    environment,
    escape,
    format_value,
)
from steadygrad.report._log import QUANTITIES, Histogram, LayerInfo, RecordedRun, recorded
from steadygrad.report._run import LAYER_COLUMNS, layer_table, render_run

__all__ = [
    "LAYER_COLUMNS",
    "PLOTS_HINT",
    "QUANTITIES",
    "VERDICT_STATUSES",
    "BrowserError",
    "BrowserResult",
    "ConsoleEntry",
    "Histogram",
    "HtmlReport",
    "LayerInfo",
    "Markup",
    "MissingExtraError",
    "RecordedRun",
    "dead_over_time",
    "depth_profile",
    "environment",
    "escape",
    "figure_to_data_uri",
    "figure_to_png_bytes",
    "find_chromium",
    "format_value",
    "grad_heatmap",
    "histograms",
    "layer_table",
    "open_in_browser",
    "recorded",
    "render_run",
    "saturation_over_time",
    "training_curves",
]
