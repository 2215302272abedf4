"""What the monitor records, and the ``monitor.jsonl`` format it is stored in.

The file is JSON lines (one JSON object per line, UTF-8, strict JSON: non-finite numbers are
written as ``null``):

- line 1, the header: ``{"format": "steadygrad.monitor/1", "layers": [{"name", "kind", "depth",
  "activation", "weight_shape"}, ...], "notes": [...], "every": int, "step_unit": "forward" |
  "optimizer_step", "first_step": int}``;
- then one line per recorded step: ``{"step", "loss", "layers": [LayerStats, ...], "histograms":
  {layer name: {"act": {"edges", "counts"}, "grad": {"edges", "counts"}}}}`` (``histograms`` is
  ``{}`` unless the monitor was started with ``histograms=True``).

:func:`read` loads a file back without a model (the report plots from it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from steadygrad.errors import DataError

FORMAT: Final = "steadygrad.monitor/1"
"""Value of the header's ``format`` key."""

FILE_NAME: Final = "monitor.jsonl"
"""Name of the log inside the ``out`` folder."""


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer on one recorded step (``None``: not observable on that step).

    Tensor statistics are over the finite entries (``nan``/``inf`` count the others); ``std`` is
    the population standard deviation sqrt(Σ (x − mean)² / n); ``norm`` the Frobenius norm
    ‖x‖₂ = sqrt(Σ x²).

    Fields: ``name`` (module path), ``kind`` (module class), ``depth`` (1-based, order of the
    first forward call), ``activation`` (registry name of the activation that follows, or None),
    ``pre_mean``/``pre_std`` (the activation's input), ``act_mean``/``act_std`` (its output, or the
    next layer's input), ``saturated`` (fraction of pre-activation entries in the activation's
    saturating region, ``saturation_region(0.1)``), ``dead`` (fraction of units whose
    pre-activation is ≤ ``dead_below`` for every sample and position of the batch),
    ``grad_out_std``/``grad_out_norm`` (∂L/∂z, z the layer's affine output: the back-propagated
    signal), ``weight_std``, ``weight_grad_std``/``weight_grad_norm`` (``weight.grad`` after the
    step's backward), ``update_ratio`` (‖W_after − W_before‖ / ‖W_before‖ for the optimizer step
    just before this step), ``recommended_std``
    (``init.recommended(activation).std(weight.shape)``), ``nan``/``inf`` (counts over the
    pre-activation, activation, back-propagated gradient and weight gradient).
    """

    name: str
    kind: str
    depth: int
    activation: str | None
    pre_mean: float | None
    pre_std: float | None
    act_mean: float | None
    act_std: float | None
    saturated: float | None
    dead: float | None
    grad_out_std: float | None
    grad_out_norm: float | None
    weight_std: float | None
    weight_grad_std: float | None
    weight_grad_norm: float | None
    update_ratio: float | None
    recommended_std: float | None
    nan: int
    inf: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this layer (non-finite floats become ``None``)."""
        out = dict(self.__dict__)  # the fields, in order (a plain dataclass keeps them there)
        for key, value in out.items():
            if value.__class__ is float and not math.isfinite(value):
                out[key] = None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerStats:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, a missing key raises KeyError."""
        return cls(**{name: data[name] for name in LAYER_STATS_KEYS})


LAYER_STATS_KEYS: Final[tuple[str, ...]] = tuple(f.name for f in dataclasses.fields(LayerStats))
"""The JSON keys of a :class:`LayerStats`, in order."""


def layer_stats(*values: Any) -> LayerStats:
    """``LayerStats(*values)``, made as unpickling makes a dataclass: the fields set in the
    instance's ``__dict__`` at once. The frozen ``__init__`` sets its 19 fields one
    ``object.__setattr__`` at a time (5 µs against 1.5 µs here), and the monitor makes one per
    layer on every recorded step. The values are taken as given (the monitor's own numbers)."""
    if len(values) != len(LAYER_STATS_KEYS):
        raise TypeError(f"layer_stats takes {len(LAYER_STATS_KEYS)} values; got {len(values)}")
    stats = object.__new__(LayerStats)
    stats.__dict__.update(zip(LAYER_STATS_KEYS, values, strict=True))
    return stats


@dataclass(frozen=True)
class LayerInfo:
    """A monitored layer as listed in the header: module path, class, depth, activation, shape."""

    name: str
    kind: str
    depth: int
    activation: str | None
    weight_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """The header's JSON object for this layer."""
        return {
            "name": self.name,
            "kind": self.kind,
            "depth": self.depth,
            "activation": self.activation,
            "weight_shape": list(self.weight_shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            kind=data["kind"],
            depth=data["depth"],
            activation=data["activation"],
            weight_shape=tuple(data["weight_shape"]),
        )


Histograms = dict[str, dict[str, dict[str, list[float] | list[int]]]]
"""``{layer name: {"act" | "grad": {"edges": [b + 1 floats], "counts": [b ints]}}}``."""


@dataclass
class StepRecord:
    """One recorded step: its index, the loss (None unless given), its layers, its histograms."""

    step: int
    loss: float | None
    layers: list[LayerStats]
    histograms: Histograms = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this step."""
        return {
            "step": self.step,
            "loss": _json_number(self.loss),
            "layers": [layer.to_dict() for layer in self.layers],
            "histograms": {
                name: {
                    which: {
                        "edges": [_json_number(e) for e in h["edges"]],
                        "counts": list(h["counts"]),
                    }
                    for which, h in hists.items()
                }
                for name, hists in self.histograms.items()
            },
        }

    def to_json(self) -> str:
        """``dumps(self.to_dict())``, 10× faster: orjson serialises the layers' dataclasses
        itself (fields in order) and writes non-finite floats as ``null``, as ``to_dict`` does."""
        if self.histograms:
            return dumps(self.to_dict())
        return orjson.dumps(
            {"step": self.step, "loss": self.loss, "layers": self.layers, "histograms": {}}
        ).decode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            step=data["step"],
            loss=data["loss"],
            layers=[LayerStats.from_dict(layer) for layer in data["layers"]],
            histograms=data.get("histograms") or {},
        )

    def layer(self, name: str) -> LayerStats:
        """The statistics of the layer called ``name`` (KeyError listing the names if absent)."""
        for stats in self.layers:
            if stats.name == name:
                return stats
        raise KeyError(
            f"no layer {name!r} in step {self.step}; layers: "
            + ", ".join(s.name for s in self.layers)
        )


@dataclass
class MonitorLog:
    """A ``monitor.jsonl`` file read back: its header and its records, in file order."""

    path: Path | None
    header: dict[str, Any]
    layers: list[LayerInfo]
    notes: list[str]
    records: list[StepRecord]

    @property
    def steps(self) -> list[int]:
        """The recorded step indices."""
        return [record.step for record in self.records]

    def series(self, key: str) -> dict[str, list[float | int | None]]:
        """``{layer name: [value of key at each record]}``, aligned with :attr:`steps`.

        A layer absent from a record gets ``None`` there. ``key`` is a :class:`LayerStats`
        field other than ``name``/``kind``/``activation``.
        """
        if key not in LAYER_STATS_KEYS or key in ("name", "kind", "activation"):
            numeric = [k for k in LAYER_STATS_KEYS if k not in ("name", "kind", "activation")]
            raise ValueError(
                f"key must be one of {', '.join(repr(k) for k in numeric)}; got {key!r}"
                + _closest(key, numeric)
            )
        names = [layer.name for layer in self.layers]
        for record in self.records:
            for stats in record.layers:
                if stats.name not in names:
                    names.append(stats.name)
        out: dict[str, list[float | int | None]] = {name: [] for name in names}
        for record in self.records:
            by_name = {stats.name: stats for stats in record.layers}
            for name in names:
                found = by_name.get(name)
                out[name].append(None if found is None else getattr(found, key))
        return out


def _closest(got: object, options: Sequence[str]) -> str:
    import difflib

    if not isinstance(got, str):
        return ""
    close = difflib.get_close_matches(got, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _json_number(value: Any) -> Any:
    """``None`` for NaN/±inf floats (strict JSON), the value otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def header_dict(
    layers: Iterable[LayerInfo],
    notes: Iterable[str],
    *,
    every: int,
    step_unit: str,
    first_step: int,
) -> dict[str, Any]:
    """The header object written as the first line of ``monitor.jsonl``."""
    return {
        "format": FORMAT,
        "layers": [layer.to_dict() for layer in layers],
        "notes": list(notes),
        "every": every,
        "step_unit": step_unit,
        "first_step": first_step,
    }


def dumps(obj: Mapping[str, Any]) -> str:
    """One JSON line (strict JSON, no trailing newline).

    orjson, not the standard library's encoder: 4 µs against 53 µs for a 3-layer record, which
    is paid on every recorded step. (Non-finite floats are turned into ``null`` before this.)
    """
    return orjson.dumps(obj).decode()


def read(path: str | Path) -> MonitorLog:
    """Load a ``monitor.jsonl`` written by :func:`steadygrad.monitor.watch` (no model needed).

    ``path`` is the file or the folder holding it (a run folder). A last line without its
    newline that does not parse is a write cut short by a killed process and is dropped; any
    other problem raises :class:`~steadygrad.errors.DataError` naming the file and the line.
    """
    file = Path(path)
    if file.is_dir():
        file = file / FILE_NAME
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"monitor log {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read monitor log {file}: {error}") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    if not lines or not lines[0].strip():
        raise DataError(f"monitor log {file} is empty; expected a {FORMAT!r} header line")

    def parse(number: int, line: str) -> Any:
        try:
            return json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"monitor log {file} line {number} is not valid JSON ({error.msg} at column "
                f"{error.colno})"
            ) from None

    header = parse(1, lines[0])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise DataError(
            f"monitor log {file} line 1 must be a header with format {FORMAT!r}; got {got!r}"
        )
    try:
        layers = [LayerInfo.from_dict(layer) for layer in header["layers"]]
        notes = [str(note) for note in header["notes"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"monitor log {file} line 1: malformed header ({_describe(error)})"
        ) from None
    records: list[StepRecord] = []
    for index, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        last = index == len(lines)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            if last and not complete:
                break  # a write cut short by a killed process
            raise DataError(
                f"monitor log {file} line {index} is not valid JSON ({error.msg} at column "
                f"{error.colno})"
            ) from None
        if not isinstance(data, dict):
            raise DataError(
                f"monitor log {file} line {index} must be a JSON object; got {type(data).__name__}"
            )
        try:
            records.append(StepRecord.from_dict(data))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"monitor log {file} line {index}: malformed record ({_describe(error)})"
            ) from None
    return MonitorLog(path=file, header=header, layers=layers, notes=notes, records=records)


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
