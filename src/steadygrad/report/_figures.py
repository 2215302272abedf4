"""Figures from recorded monitor data (never from a live model).

Each function takes a monitor log (what :func:`steadygrad.monitor.read` returns, the path of a
``monitor.jsonl``, or a :class:`~steadygrad.report.RecordedRun`) and returns a
``matplotlib.figure.Figure`` drawn on the Agg canvas, so nothing needs a display and no global
pyplot state is touched. Values the monitor could not observe (``null``) are left out; values
recorded as NaN/Inf, and zeros on a log axis, are left out too and named in a note on the figure.

matplotlib is an optional extra (``pip install 'steadygrad[plots]'``): it is imported on first use.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from steadygrad.errors import SteadygradError
from steadygrad.report._log import (
    FloatArray,
    Histogram,
    RecordedRun,
    describe_layers,
    finite_positive,
    recorded,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MissingExtraError",
    "dead_over_time",
    "depth_profile",
    "figure_to_data_uri",
    "figure_to_png_bytes",
    "grad_heatmap",
    "histograms",
    "saturation_over_time",
    "training_curves",
]

PLOTS_HINT = "plots need matplotlib: pip install 'steadygrad[plots]'"

#: Above this many layers the layer key is a depth colour bar instead of a legend.
LEGEND_MAX_LAYERS = 12

_ACT_COLOR = "tab:blue"
_GRAD_COLOR = "tab:red"


class MissingExtraError(SteadygradError, ImportError):
    """An optional dependency (an extra of the steadygrad package) is not installed."""


def _mpl() -> ModuleType:
    """Import matplotlib (Agg canvas only) or raise the one-line install hint."""
    try:
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.cm
        import matplotlib.colors
        import matplotlib.figure
    except ImportError:
        raise MissingExtraError(PLOTS_HINT) from None
    return matplotlib


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    mpl = _mpl()
    fig = mpl.figure.Figure(figsize=(width, height), layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _note(ax: Axes, lines: Sequence[str], limit: int = 5) -> None:
    """Write what was left out in a small box in the lower left of ``ax``."""
    if not lines:
        return
    shown = list(lines[:limit])
    if len(lines) > limit:
        shown.append(f"… and {len(lines) - limit} more")
    ax.text(
        0.01,
        0.01,
        "\n".join(shown),
        transform=ax.transAxes,
        fontsize=7,
        va="bottom",
        ha="left",
        color="0.25",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        zorder=10,
    )


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def _layer_colors(n: int) -> list[Any]:
    cmap = _mpl().colormaps["viridis"]
    return [cmap(k / max(n - 1, 1) * 0.9) for k in range(n)]


def _layer_key(fig: Figure, axes: Sequence[Axes], run: RecordedRun, drawn: bool) -> None:
    """A legend by layer for a few layers, else a colour bar of depth."""
    if not drawn:
        return
    mpl = _mpl()
    if len(run.layers) <= LEGEND_MAX_LAYERS:
        labelled = [ax for ax in axes if ax.get_lines()]
        if labelled:
            labelled[0].legend(fontsize=7, loc="upper right", title="layer", title_fontsize=7)
        return
    depths = [info.depth for info in run.layers]
    norm = mpl.colors.Normalize(vmin=min(depths), vmax=max(depths))
    cmap = mpl.colors.LinearSegmentedColormap.from_list(
        "depth", _layer_colors(len(run.layers)), N=256
    )
    mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=list(axes), label="layer depth (1 = next to the input)")


def _leftovers(run: RecordedRun, quantity: str, rows: Sequence[int], log_axis: bool) -> list[str]:
    """Notes naming where ``quantity`` was null, non-finite or (on a log axis) not positive."""
    notes = []
    for i in rows:
        seen = run.observed[quantity][i]
        vals = run.values[quantity][i]
        step = int(run.steps[i])
        missing = np.flatnonzero(~seen)
        if missing.size:
            notes.append(
                f"{quantity} not observable at step {step}: "
                f"{describe_layers(missing.tolist(), run.layers)}"
            )
        bad = np.flatnonzero(seen & ~np.isfinite(vals))
        if bad.size:
            notes.append(
                f"{quantity} NaN/Inf at step {step}: {describe_layers(bad.tolist(), run.layers)}"
            )
        if log_axis:
            with np.errstate(invalid="ignore"):
                nonpos = np.flatnonzero(seen & np.isfinite(vals) & (vals <= 0))
            if nonpos.size:
                notes.append(
                    f"{quantity} ≤ 0 at step {step} (not drawn on a log axis): "
                    f"{describe_layers(nonpos.tolist(), run.layers)}"
                )
    return notes


def _counted_nonfinite(run: RecordedRun, rows: Sequence[int]) -> list[str]:
    """A note naming the layers whose NaN/Inf counters are non-zero on the first such row.

    The monitor computes its statistics over the finite entries and counts the others, so a
    NaN shows in its ``nan``/``inf`` counters rather than in the plotted values.
    """
    counts = np.nan_to_num(run.values["nan"]) + np.nan_to_num(run.values["inf"])
    hit = [i for i in rows if (counts[i] > 0).any()]
    if not hit:
        return []
    layers = np.flatnonzero(counts[hit[0]] > 0).tolist()
    later = f" (and {len(hit) - 1} later step(s))" if len(hit) > 1 else ""
    return [
        f"NaN/Inf entries counted at step {int(run.steps[hit[0]])}{later}: "
        f"{describe_layers(layers, run.layers)}"
    ]


def _select_rows(run: RecordedRun, step: int | Sequence[int] | None) -> list[int]:
    if run.steps.size == 0:
        raise ValueError("log has no recorded steps: nothing to plot")
    if step is None:
        return sorted({0, run.steps.size - 1})
    if isinstance(step, Sequence) and not isinstance(step, str):
        return [run.index_of(s) for s in step]
    return [run.index_of(step)]


def _ratio_text(run: RecordedRun, quantity: str, row: int) -> str | None:
    """'first/last = 1.2e-06' for the layers nearest the input and output that have a value."""
    vals = run.values[quantity][row]
    good = np.flatnonzero(finite_positive(vals))
    if good.size < 2:
        return None
    first, last = good[0], good[-1]
    ratio = vals[first] / vals[last]
    return (
        f"layer {run.layers[first].depth} / layer {run.layers[last].depth} = {ratio:.2g} "
        f"(step {int(run.steps[row])})"
    )


def depth_profile(log: Any, step: int | Sequence[int] | None = None) -> Figure:
    """Activation std and back-propagated gradient std by depth, on a log axis.

    For each chosen recorded step (default: the first and the last) two lines are drawn over the
    layers' depth ``l = 1 … L``: ``std(a_l)``, the std of layer ``l``'s activation, and
    ``std(∂L/∂y_l)``, the std of the loss gradient with respect to the layer's output (the
    back-propagated signal). Glorot & Bengio (2010, Figs. 6–7) and He et al. (2015, §2.2) show
    these profiles: with a variance-preserving initializer both are flat; with vanishing gradients
    the gradient line falls toward layer 1 (the title gives the ratio first/last layer), with a
    shrinking forward signal the activation line falls toward the output.

    Raises:
        ValueError: ``step`` was not recorded (the message names the closest recorded step), or the
            log has no recorded step.
    """
    run = recorded(log)
    rows = _select_rows(run, step)
    fig, axes = _new_figure(7.5, 4.5)
    ax = axes[0, 0]
    depths = np.array([info.depth for info in run.layers], dtype=float)
    styles = ["-", "--", ":", "-."]
    drawn = False
    notes: list[str] = []
    for k, row in enumerate(reversed(rows)):
        style = styles[min(k, len(styles) - 1)]
        step_value = int(run.steps[row])
        for quantity, label, color in (
            ("act_std", "activation std", _ACT_COLOR),
            ("grad_out_std", "back-propagated gradient std", _GRAD_COLOR),
        ):
            vals = run.values[quantity][row]
            good = finite_positive(vals)
            if good.any():
                y = np.where(good, vals, np.nan)  # gaps where a value is missing
                ax.plot(
                    depths, y, style, marker="o", markersize=3, color=color,
                    alpha=1.0 if k == 0 else 0.6, label=f"{label}, step {step_value}",
                )  # fmt: skip
                drawn = True
    for quantity in ("act_std", "grad_out_std"):
        notes += _leftovers(run, quantity, rows, log_axis=True)
    notes += _counted_nonfinite(run, rows)
    if not drawn:
        _empty(ax, "no finite, positive activation or gradient std was recorded")
    else:
        ax.set_yscale("log")
        ax.set_xlabel("layer depth (1 = next to the input)")
        ax.set_ylabel("standard deviation (log scale)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best", handlelength=3.5)
    title = "Activation and back-propagated gradient std by depth"
    ratio = _ratio_text(run, "grad_out_std", rows[-1])
    if ratio:
        title += f"\ngradient std {ratio}"
    ax.set_title(title, fontsize=10)
    _note(ax, notes)
    return fig


def _fractions(histogram: Histogram) -> tuple[FloatArray, FloatArray] | None:
    """Bin centres and the fraction of entries in each bin, or None if unusable."""
    edges, counts = histogram.edges, histogram.counts
    if edges.size != counts.size + 1 or counts.size == 0:
        return None
    if not (np.isfinite(edges).all() and np.isfinite(counts).all()):
        return None
    total = counts.sum()
    if total <= 0:
        return None
    centres: FloatArray = (edges[:-1] + edges[1:]) / 2
    return centres, counts / total


def histograms(log: Any, step: int | None = None) -> Figure:
    """Per-layer histograms of activations (top) and back-propagated gradients (bottom).

    One curve per layer, overlaid, as in Glorot & Bengio (2010, Figs. 6–7): the height at each bin
    centre is the fraction of the layer's entries in that bin, ``counts_b / Σ counts``, so layers
    with different value ranges stay comparable. Vanishing gradients show as lower layers' gradient
    curves collapsing to a spike at 0 while the top layer's stays wide; saturated sigmoid/tanh units
    show as activation mass piled at the ends of the range. Drawn from the bins the monitor recorded
    (``watch(..., histograms=True)``) at ``step`` (default: the last step with histograms).

    Raises:
        ValueError: the log has no histograms, or ``step`` was not recorded or has none.
    """
    run = recorded(log)
    with_hist = [i for i, h in enumerate(run.histograms) if h]
    if not with_hist:
        raise ValueError(
            "log has no histograms; record them with watch(model, histograms=True) "
            "(steadygrad train --monitor records them)"
        )
    if step is None:
        row = with_hist[-1]
    else:
        row = run.index_of(step)
        if not run.histograms[row]:
            shown = ", ".join(str(int(run.steps[i])) for i in with_hist[:8])
            raise ValueError(f"step {step} has no histograms; steps with histograms: {shown}")
    fig, axes = _new_figure(8.0, 6.5, rows=2)
    colors = _layer_colors(len(run.layers))
    step_value = int(run.steps[row])
    drawn = False
    for ax, which, label in (
        (axes[0, 0], "act", "activation value"),
        (axes[1, 0], "grad", "back-propagated gradient value (∂L/∂output)"),
    ):
        skipped: list[int] = []
        missing: list[int] = []
        any_curve = False
        for j, info in enumerate(run.layers):
            histogram = run.histograms[row].get(info.name, {}).get(which)
            if histogram is None:
                missing.append(j)
                continue
            curve = _fractions(histogram)
            if curve is None:
                skipped.append(j)
                continue
            ax.plot(*curve, color=colors[j], linewidth=1.2, label=f"layer {info.depth}")
            any_curve = True
        notes = []
        if missing:
            notes.append(f"no {which} histogram: {describe_layers(missing, run.layers)}")
        if skipped:
            notes.append(
                f"{which} histogram empty or NaN/Inf: {describe_layers(skipped, run.layers)}"
            )
        if which == "act":
            notes += _counted_nonfinite(run, [row])
        title = f"{'activations' if which == 'act' else 'back-propagated gradients'}, step "
        ax.set_title(title + str(step_value), fontsize=10)
        if any_curve:
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of entries")
            ax.grid(True, alpha=0.3)
            drawn = True
        else:
            _empty(ax, f"no usable {which} histogram at this step")
        _note(ax, notes)
    _layer_key(fig, [axes[0, 0], axes[1, 0]], run, drawn)
    return fig


def _over_time(run: RecordedRun, quantity: str, title: str, ylabel: str) -> Figure:
    if run.steps.size == 0:
        raise ValueError("log has no recorded steps: nothing to plot")
    fig, axes = _new_figure(7.5, 4.2)
    ax = axes[0, 0]
    colors = _layer_colors(len(run.layers))
    steps = run.steps.astype(float)
    never: list[int] = []
    bad: list[str] = []
    drawn = False
    for j, info in enumerate(run.layers):
        seen = run.observed[quantity][:, j]
        vals = run.values[quantity][:, j]
        if not seen.any():
            never.append(j)
            continue
        nonfinite = seen & ~np.isfinite(vals)
        if nonfinite.any():
            at = ", ".join(str(int(s)) for s in run.steps[nonfinite][:4])
            bad.append(f"layer {info.depth}: NaN/Inf at step {at}")
        y = np.where(seen & np.isfinite(vals), vals, np.nan)
        if np.isfinite(y).any():
            ax.plot(
                steps, y, color=colors[j], marker="o" if steps.size < 30 else None,
                markersize=3, linewidth=1.2, label=f"layer {info.depth}",
            )  # fmt: skip
            drawn = True
    notes = bad + _counted_nonfinite(run, range(run.steps.size))
    if never:
        notes.insert(0, f"not observable: {describe_layers(never, run.layers)}")
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    else:
        _empty(ax, f"{quantity} was not observable for any layer")
    ax.set_title(title, fontsize=10)
    _note(ax, notes)
    _layer_key(fig, [ax], run, drawn)
    return fig


def saturation_over_time(log: Any) -> Figure:
    """Fraction of each layer's entries in the saturating region of its activation, per step.

    An entry (one unit on one sample) is saturated when its pre-activation lies where
    ``f'(z) < 0.1 · max f'`` (the region each activation declares). Glorot & Bengio (2010,
    Fig. 2) watch sigmoid's top hidden layer driven to saturation early in training; that shows
    here as one layer's line climbing toward 1.
    """
    run = recorded(log)
    return _over_time(
        run, "saturated", "Saturated units per layer over training", "fraction of entries saturated"
    )


def dead_over_time(log: Any) -> Figure:
    """Fraction of each layer's units that are dead, per recorded step.

    A unit is dead on a batch when ``f'(z) = 0`` for every sample (ReLU with ``z < 0`` throughout);
    a dead unit passes no gradient and cannot recover (the seed's "dying ReLUs"; leaky ReLU and ELU
    avoid it). Rising lines mean units are dying as training goes on.
    """
    run = recorded(log)
    return _over_time(run, "dead", "Dead units per layer over training", "fraction dead")


def _edges(centres: FloatArray) -> FloatArray:
    """Cell edges around sorted centres (half a gap either side; ±0.5 for a single centre)."""
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mids: FloatArray = (centres[:-1] + centres[1:]) / 2
    first = centres[0] - (mids[0] - centres[0])
    last = centres[-1] + (centres[-1] - mids[-1])
    out: FloatArray = np.concatenate([[first], mids, [last]])
    return out


def grad_heatmap(log: Any) -> Figure:
    """Layer × step heatmap of the back-propagated gradient norm ``‖∂L/∂y_l‖``, log colour scale.

    Each cell is the norm of the loss gradient with respect to layer ``l``'s output at one recorded
    step. Vanishing gradients show as a colour gradient along the depth axis (dark at layer 1,
    bright at the top) that persists over training; exploding ones as the reverse; a blow-up as a
    sudden bright column. Grey cells were not observable, non-finite or zero (counted in the note).
    """
    run = recorded(log)
    if run.steps.size == 0:
        raise ValueError("log has no recorded steps: nothing to plot")
    mpl = _mpl()
    fig, axes = _new_figure(8.0, 4.8)
    ax = axes[0, 0]
    matrix = run.values["grad_out_norm"].T  # (layers, steps)
    good = finite_positive(matrix)
    if not good.any() or not run.layers:
        _empty(ax, "no finite, positive back-propagated gradient norm was recorded")
        ax.set_title("Back-propagated gradient norm by layer and step", fontsize=10)
        return fig
    low, high = float(matrix[good].min()), float(matrix[good].max())
    if low == high:
        low, high = low / 10, high * 10
    cmap = mpl.colormaps["magma"].with_extremes(bad="0.8")
    masked = np.ma.masked_array(matrix, mask=~good)
    order = np.argsort(run.steps, kind="stable")
    x_edges = _edges(run.steps[order].astype(float))
    if np.any(np.diff(x_edges) <= 0):  # repeated steps (a resumed run): use record order
        x_edges = np.arange(run.steps.size + 1, dtype=np.float64) - 0.5
        order = np.arange(run.steps.size)
    depths = np.array([info.depth for info in run.layers], dtype=float)
    y_edges = np.arange(len(run.layers) + 1) + 0.5
    mesh = ax.pcolormesh(
        x_edges, y_edges, masked[:, order], cmap=cmap,
        norm=mpl.colors.LogNorm(vmin=low, vmax=high), shading="flat",
    )  # fmt: skip
    fig.colorbar(mesh, ax=ax, label="‖∂L/∂output‖ (log scale)")
    ax.set_xlabel("training step")
    ax.set_ylabel("layer depth (1 = next to the input)")
    ticks = np.arange(1, len(run.layers) + 1)
    stride = max(1, math.ceil(len(ticks) / 15))
    ax.set_yticks(ticks[::stride], [str(int(d)) for d in depths[::stride]])
    ax.set_title("Back-propagated gradient norm by layer and step", fontsize=10)
    notes = _counted_nonfinite(run, range(run.steps.size))
    grey = int((~good).sum())
    if grey:
        nonfinite = int((run.observed["grad_out_norm"].T & ~np.isfinite(matrix)).sum())
        missing = int((~run.observed["grad_out_norm"]).sum())
        notes.insert(
            0,
            f"grey: {grey} cell(s) not drawn ({missing} not observable, {nonfinite} NaN/Inf, "
            f"{grey - missing - nonfinite} zero)",
        )
    _note(ax, notes)
    return fig


def training_curves(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss (left) and accuracy (right) per epoch from the trainer's ``metrics.jsonl`` records.

    Draws ``train_loss``/``val_loss``/``test_loss`` and ``train_accuracy``/``val_accuracy``/
    ``test_accuracy`` against ``epoch`` for the keys present; null or NaN/Inf values are left out
    and named in a note.

    Raises:
        ValueError: ``metrics`` is empty.
    """
    if not metrics:
        raise ValueError("metrics must hold at least one epoch record; got none")
    fig, axes = _new_figure(9.0, 3.8, cols=2)
    epochs = np.array([float(r.get("epoch", k + 1)) for k, r in enumerate(metrics)], dtype=float)
    for ax, kind, ylabel in ((axes[0, 0], "loss", "cross-entropy"), (axes[0, 1], "accuracy", "")):
        notes: list[str] = []
        drawn = False
        for split, color in (("train", "tab:blue"), ("val", "tab:orange"), ("test", "tab:green")):
            key = f"{split}_{kind}"
            raw = [r.get(key) for r in metrics]
            if all(v is None for v in raw):
                continue
            y = np.array([np.nan if v is None else float(v) for v in raw], dtype=float)
            nonfinite = [
                int(e) for e, v in zip(epochs, raw, strict=True)
                if v is not None and not math.isfinite(float(v))
            ]  # fmt: skip
            if nonfinite:
                notes.append(f"{key} NaN/Inf at epoch {', '.join(map(str, nonfinite[:5]))}")
            y[~np.isfinite(y)] = np.nan
            if np.isfinite(y).any():
                ax.plot(epochs, y, marker="o", markersize=3, color=color, label=split)
                drawn = True
        if drawn:
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel or kind)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        else:
            _empty(ax, f"no {kind} recorded")
        ax.set_title(f"Training {kind}", fontsize=10)
        _note(ax, notes)
    return fig


def figure_to_png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """The PNG encoding of ``fig`` at ``dpi`` dots per inch."""
    _mpl()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def figure_to_data_uri(fig: Figure | bytes, *, dpi: int = 100) -> str:
    """``data:image/png;base64,…`` for ``fig`` (a Figure, or PNG bytes already encoded)."""
    png = fig if isinstance(fig, bytes) else figure_to_png_bytes(fig, dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
