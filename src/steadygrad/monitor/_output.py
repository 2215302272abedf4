"""Where recorded steps go: the ``monitor.jsonl`` file and, optionally, TensorBoard."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steadygrad.errors import DataError
from steadygrad.monitor._records import FILE_NAME, StepRecord, dumps, read

TENSORBOARD_FOLDER = "tensorboard"


FLUSH_SECONDS = 1.0
"""Records are handed to the operating system at most this long after they were written (a
flush per record costs 30 µs here, as much as the rest of writing it), and when the watch ends."""

PENDING_RECORDS = 256
"""Records are serialised and written together, at the flush or when this many are waiting:
one JSON line made right after a training step's arithmetic costs ~40 µs on the reference
network (the step has pushed the serialiser out of the caches), ~8 µs when made in a batch."""


class LogWriter:
    """Writes ``<folder>/monitor.jsonl``: the header, then one line per record, flushed at least
    every :data:`FLUSH_SECONDS` and at the end (a killed process loses at most that much).

    With ``first_step > 0`` and a readable log already there (a resumed run), the records of
    steps before ``first_step`` are kept after the new header; later ones (from the interrupted
    part of the run, which will be recorded again) are dropped.
    """

    def __init__(self, folder: Path, first_step: int) -> None:
        self.path = folder / FILE_NAME
        self.notes: list[str] = []
        self._kept: list[str] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(
                f"cannot create monitor folder {folder}: {error.strerror or error}"
            ) from None
        if first_step > 0 and self.path.exists():
            try:
                previous = read(self.path)
            except DataError as error:
                self.notes.append(f"previous log not kept ({error})")
            else:
                self._kept = [dumps(r.to_dict()) for r in previous.records if r.step < first_step]
        try:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (kept open)
        except OSError as error:
            raise DataError(
                f"cannot write monitor log {self.path}: {error.strerror or error}"
            ) from None
        self._header: dict[str, Any] | None = None
        self._pending: list[StepRecord] = []  # written, not yet serialised
        self._flushed = -math.inf  # the first write is flushed at once

    def write(self, header: Callable[[], dict[str, Any]], record: StepRecord | None) -> None:
        """Append ``record`` (writing ``header()`` first if nothing was written yet); None:
        write and flush what is waiting.

        The record (final: nothing changes it after this call) is serialised with those
        waiting, at the next flush (:data:`FLUSH_SECONDS`) or when :data:`PENDING_RECORDS`
        wait; a killed process loses what was not flushed, as before the batching."""
        if self._header is None:
            self._header = header()
            self._file.write("".join(line + "\n" for line in [dumps(self._header), *self._kept]))
        if record is not None:
            self._pending.append(record)
        now = time.monotonic()
        if now - self._flushed >= FLUSH_SECONDS or record is None:
            self._write_pending()
            self._file.flush()
            self._flushed = now
        elif len(self._pending) >= PENDING_RECORDS:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            self._file.write("".join([record.to_json() + "\n" for record in self._pending]))
            self._pending.clear()

    def close(self, header: dict[str, Any]) -> None:
        """Close the file; rewrite the header line if layers or notes changed since written."""
        if self._file.closed:
            return
        self.write(lambda: header, None)  # the header if none yet, and the records waiting
        self._file.close()
        if header != self._header:
            lines = self.path.read_text(encoding="utf-8").split("\n")
            lines[0] = dumps(header)
            tmp = self.path.with_name(f".{FILE_NAME}.tmp-{os.getpid()}")
            tmp.write_text("\n".join(lines), encoding="utf-8")
            os.replace(tmp, self.path)


def summary_writer(folder: Path) -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` on ``folder``; ImportError naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "tensorboard=True needs the TensorBoard package, which is not installed; install it "
            f"with: pip install 'steadygrad[tensorboard]' ({error})"
        ) from None
    return SummaryWriter(log_dir=str(folder))


_SCALARS = (
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


def write_tensorboard(
    writer: Any, record: StepRecord, histograms: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Scalars ``<layer>/<field>`` and ``loss``; histograms ``<layer>/act``, ``<layer>/grad``."""
    step = record.step
    if record.loss is not None and math.isfinite(record.loss):
        writer.add_scalar("loss", record.loss, step)
    for stats in record.layers:
        for key in _SCALARS:
            value = getattr(stats, key)
            if value is not None and math.isfinite(value):
                writer.add_scalar(f"{stats.name}/{key}", value, step)
    for name, pair in histograms.items():
        for which, hist in pair.items():
            counts = hist["counts"]
            edges = hist["edges"]
            total = sum(counts)
            if total == 0:
                continue
            centres = [(a + b) / 2.0 for a, b in itertools.pairwise(edges)]
            s = sum(c * x for c, x in zip(counts, centres, strict=True))
            s2 = sum(c * x * x for c, x in zip(counts, centres, strict=True))
            writer.add_histogram_raw(
                f"{name}/{which}",
                min=edges[0],
                max=edges[-1],
                num=total,
                sum=s,
                sum_squares=s2,
                bucket_limits=edges[1:],
                bucket_counts=counts,
                global_step=step,
            )
