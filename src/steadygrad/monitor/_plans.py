"""Reading a recorded step in one native call: which tensor feeds which number, and where
each number lands in ``record_stats``'s result (``csrc/stats.cpp``).

The monitor's general read (``Monitor._finalize``) decides on every recorded step which tensor
feeds which statistic, queues each reduction, reads them, checks each sum and builds each
layer's record: more Python than the step's arithmetic on a small network. Those decisions are
the same on every step of one layout, so a plan learnt from one step read that way fixes them
for the next ones: over the native trainer's kept tensors (:class:`KeptPlan`, bound to a
trainer's parameters as :class:`RunPlan` to record inside its native runs) or over the tensors a
hand-written loop's hooks saw (:class:`HookPlan`). :func:`layer_fields` and :func:`kept_layers`
turn the call's numbers into the layers' records; :func:`update_ratio` and
:func:`recommended_std` are shared with the general read.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import torch

from steadygrad import activations, init
from steadygrad.monitor import _stats
from steadygrad.monitor._records import LayerStats, layer_stats

if TYPE_CHECKING:
    from steadygrad.monitor._watch import _Slot


@dataclass(frozen=True)
class KeptLayer:
    """Where one layer's statistics come from: indices into one step's tensors (a native step's
    kept tensors, or those a hand-written loop's hooks saw: see :class:`HookPlan`)."""

    slot: _Slot
    status: str | None
    activation: activations.Activation | None
    pre: int | None
    act: int | None
    grad: int | None
    counts: bool  # saturated and dead counts of the pre-activation
    region: tuple[float, float] | None  # the saturating region, None when it is empty
    dead_below: float | None  # None: f' is never 0, no unit can be dead


@dataclass(frozen=True)
class KeptPlan:
    """How to make a record from a native step's kept tensors without replaying the step,
    learned from a replayed step (:meth:`Monitor._learn`); valid for one layout ``key``."""

    key: weakref.ref[object]
    size: int
    layers: tuple[KeptLayer, ...]

    @functools.cached_property
    def requests(self) -> KeptRequests:
        """The native reduction's requests and where each layer's numbers land in the result
        of ``record_stats`` (csrc/stats.cpp): the same on every step of the layout."""
        indices: list[int] = []
        kinds: list[int] = []
        bounds: list[float] = []
        places: list[tuple[int, int, int, int, int]] = []
        at = 0

        def request(index: int, kind: int, two: list[float]) -> int:
            nonlocal at
            indices.append(index)
            kinds.append(kind)
            bounds.extend(two)
            start, at = at, at + (3 if kind == _stats.KIND_MOMENTS else 1)
            return start

        for item in self.layers:
            pre, act, grad = (
                -1 if index is None else request(index, _stats.KIND_MOMENTS, [0.0, 0.0])
                for index in (item.pre, item.act, item.grad)
            )
            saturated = dead = -1
            if item.counts and item.pre is not None:
                if item.region is not None:
                    saturated = request(item.pre, _stats.KIND_SATURATED, list(item.region))
                if item.dead_below is not None:
                    dead = request(item.pre, _stats.KIND_DEAD, [item.dead_below, 0.0])
            places.append((pre, act, grad, saturated, dead))
        return KeptRequests(tuple(indices), kinds, bounds, tuple(places), at)


@dataclass(frozen=True)
class KeptRequests:
    """:attr:`KeptPlan.requests`: per request its kept tensor's index, kind and two bounds;
    per layer the offsets of its pre, act and grad (mean, std, norm) and of its saturated and
    dead fractions in ``record_stats``'s result (−1: none); ``weights``: where the weights'
    numbers start (6 per layer, in the plan's order)."""

    indices: tuple[int, ...]
    kinds: list[int]
    bounds: list[float]
    places: tuple[tuple[int, int, int, int, int], ...]
    weights: int


class LayerFields(NamedTuple):
    """One layer's part of a record made from ``record_stats``'s values (``layer_fields``)."""

    name: str
    kind: str
    depth: int
    activation: str | None
    pre: int
    act: int
    grad: int
    saturated: int
    dead: int
    weight: int  # W's mean, std, norm
    weight_grad: int  # ∂L/∂W's mean, std, norm
    counts: bool
    recommended: float | None


@dataclass(frozen=True)
class RunPlan:
    """A :class:`KeptPlan` bound to one trainer's parameters (``params``), to record the steps
    of a native run where they run (``steadygrad.fast.RunRecords``): the trainer's ``native``
    plan, per layer its weight (with its entry count, checked before each run) and what its
    record is made of (``fields``), and where a row of the run's records holds the flag "the
    numbers suffice", the loss and the first layer's Σ(Δθ)²."""

    plan: KeptPlan
    params: list[torch.Tensor]
    native: object
    slots: tuple[_Slot, ...]
    weights: tuple[torch.Tensor, ...]
    numels: tuple[int, ...]
    fields: tuple[LayerFields, ...]
    ok: int
    loss: int
    changes: int

    def holds(self) -> bool:
        """Whether every layer's weight is still the one planned, with as many entries."""
        return all(
            slot.weight() is weight and weight.numel() == n
            for slot, weight, n in zip(self.slots, self.weights, self.numels, strict=True)
        )


@dataclass(frozen=True)
class HookPlan:
    """How a recorded step seen through the hooks is read in one native call, learnt from a
    step read the general way (:meth:`Monitor._learn_hooks`); used while the next steps show
    the same layers, the same activations and the same weights (:meth:`Monitor._finalize_planned`).

    ``plan``'s indices: 3j, 3j + 1, 3j + 2 for layer j's pre-activation, activation and ∂L/∂z
    (by depth); ``keys``: each layer's (status, activation) as :func:`activation_key` gives it;
    ``kinds``/``bounds``: ``plan.requests``' and then one moments request per weight gradient;
    ``pass_slots``/``pass_rows``: the weight pass's slots (:meth:`Monitor._measure_updates`)
    and each layer's row in it."""

    plan: KeptPlan
    keys: tuple[tuple[str | None, object], ...]
    slots: tuple[_Slot, ...]
    weights: tuple[torch.Tensor, ...]
    numels: tuple[int, ...]
    kinds: list[int]
    bounds: list[float]
    fields: tuple[LayerFields, ...]
    pass_slots: tuple[_Slot, ...]
    pass_rows: tuple[int, ...]


NO_SUMS: Final = torch.empty(0, 5, dtype=torch.float64)  # record_stats without update sums


def activation_key(activation: activations.Activation | None) -> object:
    """What a record takes from an activation: its class and parameters (functional activations
    are new objects on every step)."""
    return None if activation is None else (type(activation), activation.extra_repr())


def layer_fields(
    plan: KeptPlan,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    apart: tuple[int, int] | None = None,
) -> tuple[LayerFields, ...]:
    """What :func:`kept_layers` needs of each layer of ``plan`` (whose weights are
    ``weights``), decided once: its names, depth, the offsets of its numbers in
    ``record_stats``'s values (see :attr:`KeptPlan.requests`; −1: none), whether it counts
    saturated and dead units, and the std ``init.recommended`` gives its weight (as
    :meth:`Monitor._layer_stats` does). The slots learn their activation's name here.

    W's and ∂L/∂W's numbers follow the requests' as record_stats gives them from an
    update's sums (6 per layer), or, with ``apart`` = (w, g), W's 3 per layer start at w and
    ∂L/∂W's at g (see :meth:`Monitor._finalize_planned`)."""
    req = plan.requests
    fields = []
    for j, item in enumerate(plan.layers):
        slot = item.slot
        assert slot.depth is not None
        name = item.activation.name if item.activation is not None else None
        slot.activation = name
        pre, act, grad, saturated, dead = req.places[j]
        counts = item.counts and item.pre is not None
        recommended = None
        if item.status in ("module", "activation", "none"):
            recommended = recommended_std(item.activation, tuple(weights[j].shape))
        if apart is None:
            weight, weight_grad = req.weights + 6 * j, req.weights + 6 * j + 3
        else:
            weight, weight_grad = apart[0] + 3 * j, apart[1] + 3 * j
        layer = LayerFields(
            slot.name, slot.kind, slot.depth, name, pre, act, grad, saturated, dead,
            weight, weight_grad, counts, recommended,
        )  # fmt: skip
        fields.append(layer)
    return tuple(fields)


def kept_layers(
    fields: tuple[LayerFields, ...], values: list[float], changes: list[Any]
) -> list[LayerStats]:
    """The layers' records from ``record_stats``'s ``values`` (csrc/stats.cpp) at the offsets
    :func:`layer_fields` gives, and each layer's Σ(Δθ)² of the update before the step
    (``changes``: a float, a 0-d tensor or None). On every recorded step: positional
    arguments, no keyword call (~10 µs a record less than :func:`_watch._layer_record`)."""
    layers: list[LayerStats] = []
    for f, change in zip(fields, changes, strict=True):
        pre, act, grad, w, wg = f.pre, f.act, f.grad, f.weight, f.weight_grad
        stats = layer_stats(  # LayerStats's fields, in order
            f.name, f.kind, f.depth, f.activation,
            None if pre < 0 else values[pre], None if pre < 0 else values[pre + 1],
            None if act < 0 else values[act], None if act < 0 else values[act + 1],
            ((values[f.saturated] if f.saturated >= 0 else 0.0) if f.counts else None),
            ((values[f.dead] if f.dead >= 0 else 0.0) if f.counts else None),
            None if grad < 0 else values[grad + 1], None if grad < 0 else values[grad + 2],
            values[w + 1], values[wg + 1], values[wg + 2],
            None if change is None else update_ratio(float(change), values[w + 2]),
            f.recommended, 0, 0,
        )  # fmt: skip
        layers.append(stats)
    return layers


def update_ratio(squared_change: float, weight_norm: float) -> float | None:
    """‖W − W_before‖₂ / ‖W‖₂ from ‖W − W_before‖₂² (None where it is not a finite number)."""
    change = math.sqrt(max(squared_change, 0.0))
    if weight_norm > 0 and math.isfinite(weight_norm) and math.isfinite(change):
        return change / weight_norm
    return None


_RECOMMENDED: dict[tuple[str, str, tuple[int, ...]], float | None] = {}


def recommended_std(
    activation: activations.Activation | None, shape: tuple[int, ...]
) -> float | None:
    """``init.recommended(activation).std(shape)`` (None when it does not apply to the shape)."""
    key = (
        "" if activation is None else activation.name,
        "" if activation is None else activation.extra_repr(),
        shape,
    )
    if key not in _RECOMMENDED:
        try:
            _RECOMMENDED[key] = init.recommended(activation).std(shape)
        except (TypeError, ValueError):
            _RECOMMENDED[key] = None
    return _RECOMMENDED[key]
