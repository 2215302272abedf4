"""Recorded monitor data as arrays: the one place the report looks inside a monitor log.

The figures accept what :func:`steadygrad.monitor.read` returns (a ``MonitorLog``: header plus
``records``), the path of a ``monitor.jsonl``, or a :class:`RecordedRun` built here. Whatever the
source, it is turned into a :class:`RecordedRun`: one ``(steps, layers)`` float array per
quantity, with NaN where the monitor wrote ``null`` (not observable) and a separate mask that tells
"not observable" apart from "recorded as NaN/Inf".

File format (docs/architecture.md, ``steadygrad.monitor``): the first line is a header
``{"format": "steadygrad.monitor/1", "layers": [{name, kind, depth, activation, weight_shape}],
"notes": [...]}``; each further line is a recorded step ``{"step", "loss", "layers":
[LayerStats], "histograms": {name: {"act": {"edges", "counts"}, "grad": {...}}}}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from steadygrad.errors import DataError

__all__ = ["QUANTITIES", "Histogram", "LayerInfo", "RecordedRun", "recorded"]

#: The numeric ``LayerStats`` fields (docs/architecture.md), in the monitor's order.
QUANTITIES = (
    "pre_mean",
    "pre_std",
    "act_mean",
    "act_std",
    "saturated",
    "dead",
    "grad_out_std",
    "grad_out_norm",
    "weight_std",
    "weight_grad_std",
    "weight_grad_norm",
    "update_ratio",
    "recommended_std",
    "nan",
    "inf",
)

FORMAT = "steadygrad.monitor/1"

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LayerInfo:
    """A monitored layer: module path, kind, 1-based depth, activation registry name."""

    name: str
    kind: str | None
    depth: int
    activation: str | None


@dataclass(frozen=True)
class Histogram:
    """Counts of values in the bins ``[edges[i], edges[i+1])``.

    ``len(edges) == len(counts) + 1``.
    """

    edges: FloatArray
    counts: FloatArray


@dataclass
class RecordedRun:
    """A monitor log as arrays.

    ``values[q][i, j]`` is quantity ``q`` of layer ``layers[j]`` at recorded step ``steps[i]`` (NaN
    where null); ``observed[q][i, j]`` is False where the monitor wrote null (or the layer was not
    in that record). ``histograms[i]`` maps a layer name to ``{"act": Histogram, "grad":
    Histogram}`` (empty when none were recorded).
    """

    layers: list[LayerInfo]
    steps: npt.NDArray[np.int64]
    loss: FloatArray
    values: dict[str, FloatArray]
    observed: dict[str, BoolArray]
    histograms: list[dict[str, dict[str, Histogram]]]
    notes: list[str] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)  # e.g. "every", "step_unit"

    @property
    def has_histograms(self) -> bool:
        return any(self.histograms)

    def index_of(self, step: int) -> int:
        """Row of recorded step ``step`` (the last one if it was recorded twice).

        Raises:
            ValueError: ``step`` was not recorded; names the recorded steps and the closest.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an integer recorded step; got {step!r}")
        hits = np.flatnonzero(self.steps == int(step))
        if hits.size:
            return int(hits[-1])
        if self.steps.size == 0:
            raise ValueError(f"step must be a recorded step; got {step}, but nothing was recorded")
        closest = int(self.steps[np.argmin(np.abs(self.steps - int(step)))])
        shown = ", ".join(str(s) for s in self.steps[:8]) + (", …" if self.steps.size > 8 else "")
        raise ValueError(
            f"step must be one of the recorded steps ({shown}); got {step}; closest: {closest}"
        )


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` for mappings, ``obj.key`` otherwise (monitor dataclasses or JSON dicts)."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _number(value: Any) -> float | None:
    """A recorded number as float; None for null (and for anything that is not a number)."""
    if value is None:
        return None
    try:  # ints, floats, numpy and torch scalars
        return float(value)
    except (TypeError, ValueError):
        return None


def _histogram(raw: Any) -> Histogram | None:
    if raw is None:
        return None
    edges, counts = _get(raw, "edges"), _get(raw, "counts")
    if edges is None or counts is None:
        return None
    try:
        e = np.asarray(edges, dtype=np.float64).reshape(-1)
        c = np.asarray(counts, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return Histogram(edges=e, counts=c)


def recorded(log: Any) -> RecordedRun:
    """Turn a monitor log (``MonitorLog``, ``RecordedRun``, or a path to ``monitor.jsonl``) into
    arrays.

    Raises:
        DataError: the path cannot be read or is not a steadygrad monitor log.
        TypeError: ``log`` is none of the accepted kinds.
    """
    if isinstance(log, RecordedRun):
        return log
    if isinstance(log, (str, os.PathLike)):
        log = read_log(log)
    records = _get(log, "records")
    if records is None:
        raise TypeError(
            "log must be a MonitorLog (steadygrad.monitor.read), a RecordedRun or the path of a "
            f"monitor.jsonl; got {type(log).__name__}"
        )
    header = _get(log, "header")
    header_layers = _get(log, "layers")
    if header_layers is None and header is not None:
        header_layers = _get(header, "layers")
    notes = _get(log, "notes")
    if notes is None and header is not None:
        notes = _get(header, "notes")

    layers: list[LayerInfo] = []
    column: dict[str, int] = {}

    def add_layer(raw: Any) -> None:
        name = str(_get(raw, "name", f"layer{len(layers) + 1}"))
        if name in column:
            return
        depth = _get(raw, "depth")
        kind, activation = _get(raw, "kind"), _get(raw, "activation")
        column[name] = len(layers)
        layers.append(
            LayerInfo(
                name=name,
                kind=None if kind is None else str(kind),
                depth=int(depth) if isinstance(depth, (int, np.integer)) else len(layers) + 1,
                activation=None if activation is None else str(activation),
            )
        )

    for raw in header_layers or ():
        add_layer(raw)
    for record in records:
        for raw in _get(record, "layers") or ():
            add_layer(raw)
    order = sorted(range(len(layers)), key=lambda j: (layers[j].depth, j))
    layers = [layers[j] for j in order]
    column = {info.name: j for j, info in enumerate(layers)}

    n_steps, n_layers = len(records), len(layers)
    values = {q: np.full((n_steps, n_layers), np.nan) for q in QUANTITIES}
    observed = {q: np.zeros((n_steps, n_layers), dtype=bool) for q in QUANTITIES}
    steps = np.zeros(n_steps, dtype=np.int64)
    loss = np.full(n_steps, np.nan)
    histograms: list[dict[str, dict[str, Histogram]]] = []
    for i, record in enumerate(records):
        step = _get(record, "step")
        steps[i] = int(step) if step is not None else i
        value = _number(_get(record, "loss"))
        if value is not None:
            loss[i] = value
        for raw in _get(record, "layers") or ():
            j = column[str(_get(raw, "name"))]
            for q in QUANTITIES:
                number = _number(_get(raw, q))
                if number is not None:
                    values[q][i, j] = number
                    observed[q][i, j] = True
        per_layer: dict[str, dict[str, Histogram]] = {}
        for name, pair in dict(_get(record, "histograms") or {}).items():
            kept = {}
            for which in ("act", "grad"):
                histogram = _histogram(_get(pair, which))
                if histogram is not None:
                    kept[which] = histogram
            if kept:
                per_layer[str(name)] = kept
        histograms.append(per_layer)
    return RecordedRun(
        layers=layers,
        steps=steps,
        loss=loss,
        values=values,
        observed=observed,
        histograms=histograms,
        notes=[str(n) for n in notes or ()],
        header=dict(header) if isinstance(header, Mapping) else {},
    )


def read_log(path: str | os.PathLike[str]) -> Any:
    """Read a ``monitor.jsonl`` with :func:`steadygrad.monitor.read` (the one reader of the format).

    Raises:
        DataError: the file is missing, unreadable, or not a steadygrad monitor log.
    """
    from steadygrad.monitor import read

    try:
        return read(Path(path))
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"could not read monitor log {path}: {exc}") from None


def finite_positive(values: FloatArray) -> BoolArray:
    """Entries that can be drawn on a log axis."""
    with np.errstate(invalid="ignore"):
        mask: BoolArray = np.isfinite(values) & (values > 0)
    return mask


def describe_layers(indices: Sequence[int], layers: Sequence[LayerInfo], limit: int = 6) -> str:
    """'layers 3, 4, 5 (+2 more)' by depth."""
    depths = [str(layers[j].depth) for j in indices]
    shown = ", ".join(depths[:limit])
    more = f" (+{len(depths) - limit} more)" if len(depths) > limit else ""
    return f"layer{'s' if len(depths) != 1 else ''} {shown}{more}"
