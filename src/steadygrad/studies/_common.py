"""Helpers shared by the study definitions: initializer names, ratios, formatting, figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from steadygrad.studies._study import Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Display name and :func:`steadygrad.init.get` identifier of each initializer the studies use.
INITS: dict[str, tuple[str, Any]] = {
    "normal_1": ("N(0,1)", {"name": "normal", "std": 1.0}),
    "normal_0.01": ("N(0,0.01²)", {"name": "normal", "std": 0.01}),
    "uniform_fan_in": ("U[±1/√n]", "uniform_fan_in"),
    "glorot": ("Glorot", "glorot_uniform"),
    "he": ("He", "he_normal"),
    "lecun": ("LeCun", "lecun_normal"),
    "orthogonal": ("orthogonal", "orthogonal"),
    "lsuv": ("LSUV", "orthogonal"),  # orthonormal start, then lsuv_ rescales (Mishkin & Matas)
}

#: |log10 ratio| ≤ 1: the std changes by at most 10× across the network ("steady").
STEADY_BAND = (0.1, 10.0)

CHANCE_LOSS = math.log(10.0)
"""Cross-entropy of the uniform prediction over 10 classes: ln 10 ≈ 2.303."""


def init_name(key: str) -> str:
    """Display name of an initializer key of :data:`INITS`."""
    return INITS[key][0]


def seeds(count: int) -> list[int]:
    """Seeds 0 … count − 1."""
    return list(range(count))


def finite(value: Any) -> bool:
    """True for a finite real number (None, NaN and ±inf are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ratio(top: Any, bottom: Any) -> float | None:
    """top / bottom, or None when either is missing or not finite; 0/0 is None, x/0 is inf."""
    if not (finite(top) and finite(bottom)):
        return None
    if bottom == 0:
        return None if top == 0 else math.inf
    return float(top) / float(bottom)


def steady(value: float | None) -> bool:
    """``value`` is a finite ratio inside :data:`STEADY_BAND`."""
    lo, hi = STEADY_BAND
    return value is not None and math.isfinite(value) and lo <= value <= hi


def fmt(value: Any, digits: int = 3) -> str:
    """A number for evidence text: 3 significant digits, ``n/a`` for None, ``NaN``/``inf``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_list(values: Sequence[Any], digits: int = 3) -> str:
    """``[a, b, c]`` with :func:`fmt`."""
    return "[" + ", ".join(fmt(v, digits) for v in values) + "]"


def median(values: Sequence[float | None]) -> float | None:
    """Median of the finite values (None when there are none)."""
    xs = [float(v) for v in values if v is not None and finite(v)]
    return statistics.median(xs) if xs else None


def all_or_none(flags: Sequence[bool]) -> Status:
    """confirmed if every flag holds, refuted if none does, inconclusive when they disagree."""
    if flags and all(flags):
        return "confirmed"
    if not any(flags):
        return "refuted"
    return "inconclusive"


def two_se_status(mean: float, se: float) -> Status:
    """confirmed if mean > 2·se, refuted if mean < −2·se; inconclusive otherwise or without se.

    With the standard error of a mean difference, ±2 se is about a 95 % interval.
    """
    if math.isnan(mean) or math.isnan(se):
        return "inconclusive"
    if mean > 2 * se:
        return "confirmed"
    if mean < -2 * se:
        return "refuted"
    return "inconclusive"


# --------------------------------------------------------------------------- figures


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    """A matplotlib Figure on the Agg canvas (no pyplot, no display) and its axes grid."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure
    except ImportError:
        from steadygrad.report import PLOTS_HINT, MissingExtraError

        raise MissingExtraError(PLOTS_HINT) from None
    fig = matplotlib.figure.Figure(figsize=(width, height), layout="constrained")
    matplotlib.backends.backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def colors(n: int) -> list[Any]:
    """``n`` distinguishable colours (tab10, then viridis)."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(k) for k in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(k / max(n - 1, 1)) for k in range(n)]


def plot_positive(ax: Axes, xs: Sequence[float], ys: Sequence[Any], **kwargs: Any) -> bool:
    """Plot the points with a finite positive y (log axes); return whether any was drawn."""
    points = [(x, float(y)) for x, y in zip(xs, ys, strict=True) if finite(y) and y > 0]
    if not points:
        return False
    ax.plot([p[0] for p in points], [p[1] for p in points], **kwargs)
    return True


def empty_panel(ax: Axes, message: str) -> None:
    """Write ``message`` in the middle of an empty panel."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.3")


def window_steps(result: Mapping[str, Any]) -> list[int]:
    """The step at the end of each loss window of a ``train`` result."""
    window = int(result["loss_window"])
    return [window * (k + 1) for k in range(len(result["losses"]))]
