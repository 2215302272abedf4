"""Statistics computed on the device, queued into a :class:`Batch` and read with one ``tolist()``.

Nothing here reads a value on the host: every function queues a few reductions and returns the
positions of their results in the batch. :meth:`Batch.read` stacks everything queued and transfers
it with a single ``.tolist()`` (one host synchronisation per recorded step).

Moments of n entries x₁…xₙ take two reductions, s = Σ x and q = Σ x² (or r = ‖x‖₂), in the
tensor's precision (float32 at least):

    mean = s / n,   ‖x‖₂ = √q,   std = sqrt(q/n − mean²)   (population std, as ``correction=0``).

On CPU the cost of a recorded step is mostly the number of PyTorch calls (a few µs each), not the
arithmetic: hence one-pass moments and one read. q is a BLAS dot product ``x·x`` (half the time of
``torch.linalg.vector_norm`` on CPU: 28 µs against 50 µs for a 300×784 weight); on CUDA the norms
of many tensors are one ``torch._foreach_norm`` kernel, so there r is queued instead of q. Reading
0-d CPU tensors one ``item()`` at a time is cheaper than stacking them (18 µs against 26 µs for
40 values); on a GPU everything is stacked into one transfer.

Two cases need more, and both are recognised from s and r alone, so the extra pass runs only for
the tensors that need it, on the steps that need it (:func:`precise_moments`, float64, two-pass):

- a NaN or ±inf anywhere makes s or r non-finite: finite s and r prove there is none, so the
  slow element-wise ``isnan``/``isinf`` counts are skipped for healthy tensors;
- r²/n − mean² loses digits when |mean| ≫ std (catastrophic cancellation: a float32 sum of
  squares carries ~1e-7 relative error, so var < ``CANCELLATION`` · mean² is recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch

from steadygrad import native

_HALF = (torch.float16, torch.bfloat16)

CANCELLATION: Final = 1e-3
"""Recompute the variance in float64 when var < CANCELLATION · mean² (std < 3 % of |mean|)."""


def _values(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float32 at least (sums of float16 overflow at 65504)."""
    x = t.detach()
    return x.float() if x.dtype in _HALF else x


class Batch:
    """Device tensors queued for one read.

    :meth:`add` queues a 0-d tensor and returns its index in :meth:`read`'s list; :meth:`add_vector`
    queues a 1-d tensor and returns the index of its first entry.

    With ``lazy = True`` (the monitor sets it once a step's signals can no longer change) and
    steadygrad's native kernels built, the moments and counts of contiguous float32 CPU tensors
    are not computed when queued: :meth:`read` computes all of them in one call
    (``csrc/stats.cpp``), one pass per tensor, Σx and Σx² in float32 within blocks of 512 entries
    and in float64 across blocks.
    """

    def __init__(self) -> None:
        self._items: list[torch.Tensor] = []
        self._size = 0
        self._vectors = False
        self.lazy = False
        # (tensor, kind, p0, p1) requests for the native kernel; _layout: runs of positions,
        # (True, n) for n lazy values, (False, n) for n values of _items, in order.
        self._requests: list[tuple[torch.Tensor, int, float, float]] = []
        self._layout: list[tuple[bool, int]] = []

    def _extend(self, lazy: bool, n: int) -> int:
        index = self._size
        self._size += n
        if self._layout and self._layout[-1][0] == lazy:
            self._layout[-1] = (lazy, self._layout[-1][1] + n)
        else:
            self._layout.append((lazy, n))
        return index

    def add(self, value: torch.Tensor) -> int:
        """Queue a 0-d tensor; its value will be ``read()[index]``."""
        self._items.append(value)
        return self._extend(False, 1)

    def add_vector(self, value: torch.Tensor) -> int:
        """Queue a 1-d tensor; its values will be ``read()[index : index + len(value)]``."""
        self._items.append(value)
        self._vectors = True
        return self._extend(False, value.numel())

    def defers(self, t: torch.Tensor) -> bool:
        """Whether a statistic of ``t`` would be computed at :meth:`read` (see the class)."""
        return self.lazy and native_reads(t)

    def add_request(self, t: torch.Tensor, kind: int, p0: float = 0.0, p1: float = 0.0) -> int:
        """Queue a native reduction of ``t`` (:meth:`defers` must hold): ``KIND_MOMENTS`` gives
        two values (Σx, Σx²), ``KIND_SATURATED`` (lo, hi) and ``KIND_DEAD`` (below) one each."""
        self._requests.append((t, kind, p0, p1))
        return self._extend(True, 2 if kind == KIND_MOMENTS else 1)

    def __len__(self) -> int:
        return self._size

    def read(self) -> list[float]:
        """All queued values as Python floats, in order: one ``tolist()`` per device (and one
        native call for the lazy requests)."""
        if not self._requests:
            return self._read_items()
        kernels = native.load()
        assert kernels is not None
        tensors, kinds, params = [], [], []
        for t, kind, p0, p1 in self._requests:
            tensors.append(t)
            kinds.append(kind)
            params += [p0, p1]
        lazy = kernels.reduce(tensors, kinds, params).tolist()
        items = self._read_items()
        out: list[float] = []
        i = j = 0
        for is_lazy, n in self._layout:
            if is_lazy:
                out += lazy[i : i + n]
                i += n
            else:
                out += items[j : j + n]
                j += n
        return out

    def _read_items(self) -> list[float]:
        """The values of :meth:`add` and :meth:`add_vector`, in order.

        0-d tensors are stacked per (device, dtype) (one kernel per group instead of one copy
        per value), groups and vectors are cast to float64 and concatenated.
        """
        items = self._items
        if not items:
            return []
        if not self._vectors:  # the common case: 0-d tensors (stack promotes their dtypes)
            device = items[0].device
            if all(t.device == device for t in items):
                if device.type == "cpu":  # no transfer to save: item() is cheaper than stack
                    return [float(t.item()) for t in items]
                return torch.stack(items).tolist()
        size = sum(t.numel() for t in items)
        out: list[float] = [math.nan] * size
        # (device) -> list of (positions, tensor); 0-d values grouped by dtype first.
        per_device: dict[torch.device, list[tuple[list[int], torch.Tensor]]] = {}
        scalars: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
        position = 0
        for item in items:
            if item.ndim == 0:
                positions, tensors = scalars.setdefault((item.device, item.dtype), ([], []))
                positions.append(position)
                tensors.append(item)
                position += 1
            else:
                n = item.numel()
                per_device.setdefault(item.device, []).append(
                    (list(range(position, position + n)), item.reshape(-1))
                )
                position += n
        for (device, _), (positions, tensors) in scalars.items():
            per_device.setdefault(device, []).append((positions, torch.stack(tensors)))
        for parts in per_device.values():
            flat = torch.cat([t.double() for _, t in parts]).tolist()
            k = 0
            for positions, _ in parts:
                for p in positions:
                    out[p] = flat[k]
                    k += 1
        return out


KIND_MOMENTS, KIND_SATURATED, KIND_DEAD = 0, 1, 2  # csrc/stats.cpp's request kinds


def native_reads(t: torch.Tensor) -> bool:
    """Whether ``csrc/stats.cpp`` can read ``t`` (contiguous float32 on the CPU) and is built."""
    return (
        t.dtype == torch.float32
        and t.is_cpu  # a quarter of t.device.type's cost
        and t.is_contiguous()
        and native.load() is not None
    )


def squared_distances(after: list[torch.Tensor], before: list[torch.Tensor]) -> list[torch.Tensor]:
    """Σ (a − b)² of each pair, as 0-d device tensors (nothing read on the host).

    Contiguous float32 CPU pairs go to the native kernel in one call
    (:func:`distances_and_moments`); others are ``before`` − ``after`` in place (the snapshot
    buffer is overwritten) and a dot product each.
    """
    readable = [
        i
        for i, (a, b) in enumerate(zip(after, before, strict=True))
        if native_reads(a) and native_reads(b)
    ]
    out: list[torch.Tensor | None] = [None] * len(after)
    values = distances_and_moments(
        [after[i] for i in readable], [before[i] for i in readable], copy=False
    )
    if values is not None:
        for k, i in enumerate(readable):
            out[i] = values[k, 0]
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        if out[i] is None:
            out[i] = sum_of_squares(b.sub_(a))
    return [t for t in out if t is not None]


def distances_and_moments(
    after: list[torch.Tensor], before: list[torch.Tensor], *, copy: bool
) -> torch.Tensor | None:
    """Σ (a − b)², Σa and Σa² of each pair, a float64 ``(n, 3)`` tensor, in one native pass per
    pair (``csrc/stats.cpp``); with ``copy``, ``before`` ← ``after`` in the same pass. None (and
    nothing done) unless every tensor is contiguous float32 on the CPU and the kernels are built."""
    pairs = list(zip(after, before, strict=True))
    if not pairs or not all(native_reads(a) and native_reads(b) for a, b in pairs):
        return None
    kernels = native.load()
    assert kernels is not None  # native_reads
    out: torch.Tensor = kernels.distances_and_moments(after, before, copy)
    return out


@dataclass
class Moments:
    """Queued s = Σx and q = Σx² (``squared``) or r = ‖x‖₂ of a tensor of ``n`` entries.

    ``ref`` keeps the tensor for :func:`precise_moments`, in case s and q do not suffice.
    """

    n: int
    at_sum: int
    at_norm: int
    ref: torch.Tensor | None
    squared: bool = True

    def _sq(self, values: list[float]) -> float:
        v = values[self.at_norm]
        return v if self.squared else v * v

    def sufficient(self, values: list[float]) -> bool:
        """Whether s and q give the moments: finite, and no catastrophic cancellation."""
        return sufficient(values[self.at_sum], self._sq(values), self.n)

    def host(self, values: list[float]) -> tuple[float, float, float]:
        """(mean, std, norm) from s and q."""
        return from_sums(values[self.at_sum], self._sq(values), self.n)


def sufficient(s: float, q: float, n: int) -> bool:
    """Whether s = Σx and q = Σx² of n entries give the moments: both finite, and no
    catastrophic cancellation (var ≥ ``CANCELLATION`` · mean²)."""
    if not (math.isfinite(s) and math.isfinite(q)):
        return False
    mean = s / n
    return q / n - mean * mean >= CANCELLATION * mean * mean


def from_sums(s: float, q: float, n: int) -> tuple[float, float, float]:
    """(mean, std, norm) of n entries from s = Σx and q = Σx²: s/n, sqrt(q/n − mean²), √q."""
    mean = s / n
    return mean, math.sqrt(max(q / n - mean * mean, 0.0)), math.sqrt(max(q, 0.0))


def moments(t: torch.Tensor, batch: Batch, *, keep: bool = True) -> Moments | None:
    """Queue s = Σx and q = Σx² of ``t`` now (a sum and a dot product); None if empty.

    For forward signals, which a later in-place operation may overwrite.
    """
    if t.numel() == 0:
        return None
    return _queue_moments(_values(t), t if keep else None, batch)


def _queue_moments(
    x: torch.Tensor, ref: torch.Tensor | None, batch: Batch, norm: torch.Tensor | None = None
) -> Moments:
    """Queue s = Σx and q = Σx² of non-empty ``x`` (native at read time where the batch defers
    it), or s and the given ``norm`` r = ‖x‖₂."""
    n = x.numel()
    if batch.defers(x):
        at_sum = batch.add_request(x.detach(), KIND_MOMENTS)
        return Moments(n=n, at_sum=at_sum, at_norm=at_sum + 1, ref=ref)
    at_sum = batch.add(x.sum())
    if norm is not None:
        return Moments(n=n, at_sum=at_sum, at_norm=batch.add(norm), ref=ref, squared=False)
    return Moments(n=n, at_sum=at_sum, at_norm=batch.add(sum_of_squares(x)), ref=ref)


def moments_many(tensors: list[torch.Tensor], batch: Batch) -> list[Moments | None]:
    """:func:`moments` of many tensors; on CUDA the norms in one ``torch._foreach_norm`` call.

    Call under ``torch.no_grad()``.
    """
    values = [t.float() if t.dtype in _HALF else t for t in tensors]
    out: list[Moments | None] = [None] * len(tensors)
    nonempty = [i for i, t in enumerate(values) if t.numel() > 0]
    if not nonempty:
        return out
    on_gpu = any(values[i].device.type == "cuda" for i in nonempty)
    norms = torch._foreach_norm([values[i] for i in nonempty]) if on_gpu else None
    for k, i in enumerate(nonempty):
        out[i] = _queue_moments(values[i], tensors[i], batch, None if norms is None else norms[k])
    return out


def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """Σ x² as a BLAS dot product."""
    flat = x.reshape(-1)
    return torch.dot(flat, flat)


@dataclass
class PreciseMoments:
    """Queued [#NaN, #inf, #finite, Σ finite, Σ (finite − mean)²] of a tensor, in float64."""

    at: int

    def host(
        self, values: list[float]
    ) -> tuple[int, int, float | None, float | None, float | None]:
        """(nan, inf, mean, std, norm) over the finite entries (None when there are none)."""
        nan, inf, k, total, c2 = values[self.at : self.at + 5]
        if k == 0:
            return round(nan), round(inf), None, None, None
        mean = total / k
        return (
            round(nan),
            round(inf),
            mean,
            math.sqrt(c2 / k),
            math.sqrt(c2 + k * mean * mean),
        )


def precise_moments(t: torch.Tensor, batch: Batch) -> PreciseMoments:
    """Queue NaN and Inf counts and two-pass float64 moments of the finite entries of ``t``."""
    x = t.detach().double()
    finite = torch.isfinite(x)
    k = finite.sum()
    total = torch.where(finite, x, 0.0).sum()
    centred = torch.where(finite, x - total / k.clamp(min=1), 0.0)
    values = torch.stack(
        [
            torch.isnan(x).sum().double(),
            torch.isinf(x).sum().double(),
            k.double(),
            total,
            sum_of_squares(centred),
        ]
    )
    return PreciseMoments(at=batch.add_vector(values))


def count_saturated(x: torch.Tensor, lo: float, hi: float, batch: Batch) -> int | None:
    """Queue #{entries with x < lo or x > hi}; None when the region is empty (lo, hi = ∓inf)."""
    v = x.detach()
    if math.isinf(lo) and math.isinf(hi):
        return None
    if batch.defers(v):  # ±inf bounds compare as torch's do
        return batch.add_request(v, KIND_SATURATED, lo, hi)
    if math.isinf(hi):
        mask = v < lo
    elif math.isinf(lo):
        mask = v > hi
    elif lo == -hi:  # sigmoid, tanh: one comparison fewer
        mask = v.abs() > hi
    else:
        mask = (v < lo).logical_or_(v > hi)
    return batch.add(torch.count_nonzero(mask))  # 25 µs where mask.sum() takes 43 µs


def count_dead(x: torch.Tensor, unit_dim: int, dead_below: float, batch: Batch) -> tuple[int, int]:
    """Queue #{units u : x[..., u, ...] ≤ dead_below for every sample and position}.

    A unit is the index along ``unit_dim``; its maximum over all other dimensions (the batch and
    spatial positions) is compared with ``dead_below`` (a NaN maximum is not dead). Returns
    (index, number of units).
    """
    v = x.detach()
    dim = unit_dim % v.ndim
    if v.ndim == 2 and dim == 1 and batch.defers(v):
        return batch.add_request(v, KIND_DEAD, dead_below), int(v.shape[1])
    others = [d for d in range(v.ndim) if d != dim]
    peak = v.amax(dim=others) if others else v  # (units,)
    return batch.add(torch.count_nonzero(peak <= dead_below)), int(v.shape[dim])


@dataclass
class HistogramSlot:
    """Queued histogram: index of [m, counts…] for ``bins`` bins over [−m, m]."""

    at: int
    bins: int

    def host(self, values: list[float]) -> dict[str, list[float] | list[int]]:
        """``{"edges": [b + 1 floats], "counts": [b ints]}``."""
        m = values[self.at]
        counts = [round(c) for c in values[self.at + 1 : self.at + 1 + self.bins]]
        width = 2.0 * m / self.bins
        edges = [-m + i * width for i in range(self.bins)] + [m]
        return {"edges": edges, "counts": counts}


def histogram(t: torch.Tensor, bins: int, batch: Batch) -> HistogramSlot:
    """Queue a histogram of the finite entries of ``t``: ``bins`` equal bins over [−m, m].

    m = max |x| over the finite entries (1 when there are none or all are 0). Bin i holds
    −m + i·w ≤ x < −m + (i+1)·w, w = 2m/bins, the last bin closed (as ``numpy.histogram``).
    Computed with a scatter-add, so no host read is needed to know the range.
    """
    x = _values(t).reshape(-1)
    finite = torch.isfinite(x)
    clean = torch.where(finite, x, 0.0)
    m = clean.abs().amax() if x.numel() else torch.zeros((), device=x.device, dtype=x.dtype)
    m = torch.where(m > 0, m, torch.ones_like(m))
    index = ((clean + m) * (bins / (2.0 * m))).floor_().clamp_(0, bins - 1).long()
    index = torch.where(finite, index, bins)  # non-finite entries go to a dropped extra bin
    counts = torch.zeros(bins + 1, device=x.device, dtype=x.dtype)
    counts.scatter_add_(0, index, torch.ones_like(clean))
    return HistogramSlot(at=batch.add_vector(torch.cat([m.reshape(1), counts[:bins]])), bins=bins)
