"""``watch``: per-layer forward and backward statistics of any ``nn.Module`` while it trains.

How it works (see docs/monitor.md for the user's view):

- Forward hooks on the root module count *steps* (train-mode forward calls of the root, or
  ``optimizer.step()`` calls when an optimizer is given) and decide which are recorded
  (step % every == 0). On other steps every hook returns at once: no tensor is touched and
  nothing is read on the host.
- On a recorded step, forward hooks on each *layer* (module with a ``weight`` of rank ≥ 2) and on
  each activation module queue on-device statistics of the pre-activation and the activation, and
  a tensor hook on the layer's affine output z catches ∂L/∂z during the backward pass (a tensor
  hook, not ``register_full_backward_hook``, which breaks in-place operations).
- When the backward pass ends (an autograd engine callback), or at ``optimizer.step()`` when an
  optimizer is given, the weights and their gradients are added, and everything queued is read
  with a single ``.tolist()``.
- The update ratio ‖ΔW‖/‖W‖ compares the weights with a device copy taken one step earlier (at
  the previous forward, or around ``optimizer.step()``).

The activation that *follows* a layer is, in this order: an activation module called after the
layer and before the next layer (``nn.ReLU``, ours, or the ``.activation`` a ``Dense`` calls inside
its own forward); else the activation *function* applied to z, found in the autograd graph
between z and the next layer's input (``F.relu``, ``torch.tanh``, …); else none.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import activations, native
from steadygrad.monitor import _output, _stats, _trace
from steadygrad.monitor._plans import (
    NO_SUMS,
    HookPlan,
    KeptLayer,
    KeptPlan,
    RunPlan,
    activation_key,
    kept_layers,
    layer_fields,
    recommended_std,
    update_ratio,
)
from steadygrad.monitor._records import (
    Histograms,
    LayerInfo,
    LayerStats,
    StepRecord,
    header_dict,
    layer_stats,
)

_LOSS_TYPES: Final = (torch.Tensor, int, float)

SATURATION_FRACTION: Final = 0.1
"""A unit is saturated where f'(z) < 0.1 · max f' (``Activation.saturation_region(0.1)``)."""

HISTOGRAM_BINS: Final = 50
"""Bins of each recorded histogram (equal width over [−max |x|, max |x|])."""

_ARM_EVERY: Final = 4
"""Below this cadence the submodules' hooks stay registered between recorded steps."""

_RAISE_INTERNAL_ERRORS = False  # tests set this to see the monitor's own bugs as exceptions
_NATIVE_CAPTURE = True  # tests turn it off to check the Python gradient hooks

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def _guarded(method: _Hook) -> _Hook:
    """A hook that never breaks training: an unexpected error stops monitoring with a note."""

    @functools.wraps(method)
    def wrapper(self: Monitor, *args: Any, **kwargs: Any) -> Any:
        if self._broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            self._internal_error(method.__name__, error)
            return None

    return wrapper  # type: ignore[return-value]


def _recording(method: _Hook) -> _Hook:
    """A forward hook of a recorded step: returns at once on other steps, else runs guarded.

    (Statistics stay out of the autograd graph because :mod:`._stats` works on detached tensors.)
    """

    @functools.wraps(method)
    def wrapper(self: Monitor, *args: Any) -> Any:
        if not self._active or self._broken:
            return None
        try:
            return method(self, *args)
        except Exception as error:
            self._internal_error(method.__name__, error)
            return None

    return wrapper  # type: ignore[return-value]


def _queue_after_backward(callback: Callable[[], None]) -> bool:
    """Run ``callback`` when the current backward pass ends (the engine hook DDP also uses)."""
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    queue = getattr(engine, "queue_callback", None)
    if queue is None:
        return False
    queue(callback)
    return True


def _compiled_autograd() -> bool:
    """Whether torch's compiled autograd is on (it traces the backward pass, and a C++ hook
    fails there, a Python one asks for a full graph). Without importing torch._dynamo, which
    takes a second or two: where it is not imported, compiled autograd cannot be on."""
    module = sys.modules.get("torch._dynamo.compiled_autograd")
    return bool(getattr(module, "compiled_autograd_enabled", False))


def _first_tensor(args: tuple[Any, ...]) -> torch.Tensor | None:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg if arg.is_floating_point() else None
    return None


def _weight(module: nn.Module) -> torch.Tensor | None:
    """``module.weight`` when it is a tensor of rank >= 2 (a Parameter, or computed, e.g. by
    ``torch.nn.utils.parametrize``), else None."""
    weight = module._parameters.get("weight")  # the common case, without nn.Module.__getattr__
    if weight is None:
        weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


class _Slot:
    """A monitored layer (static across steps)."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module
        self.name = name
        self.kind = type(module).__name__
        self.depth: int | None = None
        self.unit_dim: int | None = None
        self.activation: str | None = None
        self.module_activation_seen = False
        self.skipped = False

    def weight(self) -> torch.Tensor | None:
        return _weight(self.module)


class _Entry:
    """What one layer queued on one recorded step."""

    __slots__ = (
        "act", "act_hist", "act_src", "activation", "calls", "claimed", "claiming", "dead",
        "dead_fixed", "dead_units", "grad", "grad_hist", "grad_ref", "in_forward", "internal",
        "pre", "pre_src", "resolved", "sat", "sat_fixed", "sat_n", "slot", "status", "update",
        "weight", "weight_grad", "z", "z_moments", "z_node", "z_version",
    )  # fmt: skip

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.calls = 0
        self.in_forward = 0
        self.resolved = False
        self.claimed = False
        self.claiming: nn.Module | None = None
        self.internal = False
        self.status: str | None = None  # "module" | "activation" | "none" | "unknown" | ...
        self.activation: activations.Activation | None = None
        self.z: torch.Tensor | None = None
        self.z_node: Any = None  # z.grad_fn when z was made (in-place ops replace z.grad_fn)
        self.z_version = 0
        self.z_moments: _stats.Moments | None = None
        self.pre: _stats.Moments | None = None
        self.act: _stats.Moments | None = None
        # the tensors pre and act are (to be) measured on, known when their hooks ran: a planned
        # step (Monitor._finalize_planned) reads them without the queued measurements
        self.pre_src: torch.Tensor | None = None
        self.act_src: torch.Tensor | None = None
        self.sat: int | None = None
        self.sat_n = 0
        self.sat_fixed: float | None = None
        self.dead: int | None = None
        self.dead_units = 0
        self.dead_fixed: float | None = None
        self.grad: _stats.Moments | None = None
        self.grad_ref: torch.Tensor | None = None
        self.act_hist: _stats.HistogramSlot | None = None
        self.grad_hist: _stats.HistogramSlot | None = None
        self.weight: _stats.Moments | None = None
        self.weight_grad: _stats.Moments | None = None
        self.update: int | None = None

    def release(self) -> None:
        """Drop every tensor reference (Python hooks on the autograd nodes keep the entry alive,
        and the tensors keep the nodes alive: a cycle through C++ that Python's collector cannot
        see; the C++ hooks hold no Python object once their catch is closed)."""
        self.z = None
        self.z_node = None
        self.grad_ref = None
        self.pre_src = None
        self.act_src = None
        for m in (self.z_moments, self.pre, self.act, self.grad, self.weight, self.weight_grad):
            if m is not None:
                m.ref = None


class _WeightPass(NamedTuple):
    """One native pass over the monitored weights and their copies
    (:meth:`Monitor._measure_updates`): per slot of ``slots``, its weight then and its row
    (‖W − W_before‖², ΣW, ΣW²) of ``rows``, read once."""

    slots: tuple[_Slot, ...]
    weights: tuple[torch.Tensor, ...]
    rows: list[list[float]]


class _State:
    """One recorded step in progress."""

    def __init__(self, step: int, updates: dict[_Slot, torch.Tensor | float]) -> None:
        self.step = step
        self.batch = _stats.Batch()
        self.entries: dict[_Slot, _Entry] = {}
        self.last: _Entry | None = None
        self.finalized = False
        self.expects_backward = False
        self.callback_queued = False
        self.loss: torch.Tensor | float | None = None
        self.updates = updates
        # the pass that measured the update, with ΣW and ΣW² (Monitor._measure_updates)
        self.weight_pass: _WeightPass | None = None
        # how many notes the monitor had when the step began (a plan is learnt from a step
        # that added none)
        self.notes = 0
        # forward signals to measure when the step ends: (tensor, its version, what to queue)
        self.deferred: list[tuple[torch.Tensor, int, Callable[[], None]]] = []
        # forward signals measured at once, with their version then (see Monitor._measure)
        self.seen: list[tuple[torch.Tensor, int]] = []
        # z (by id) → its entry, on a step replayed from a fast step
        self.fast_grads: dict[int, _Entry] = {}
        # ∂L/∂z caught by native hooks (Monitor._watch_gradient): the catch, and its slots' entries
        self.capture: Any = None
        self.captured: list[_Entry] = []
        # whether Python gradient hooks hold this step (see release)
        self.python_hooks = False

    def release(self) -> None:
        """Let go of every tensor. Where Python hooks on the graph's nodes hold the step, each
        entry lets go of its own (see :meth:`_Entry.release`); otherwise nothing outside the
        step holds an entry, and dropping them is enough."""
        if self.python_hooks:
            for entry in self.entries.values():
                entry.release()
        self.entries = {}
        self.last = None
        self.batch = _stats.Batch()
        self.updates = {}
        self.weight_pass = None
        self.deferred = []
        self.seen = []
        self.fast_grads = {}
        if self.capture is not None:
            self.capture.close()  # the hooks stay on the graph's nodes, as no-ops
            self.capture = None
        self.captured = []
        if isinstance(self.loss, torch.Tensor):
            self.loss = None


@dataclass(frozen=True)
class _Unsealed:
    record: StepRecord
    histograms: dict[str, dict[str, dict[str, Any]]]


class _FastObserver:
    """Replays a fast step's module calls and gradients through a :class:`Monitor`'s hooks."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._root = monitor._model

    def enter(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        mon = self._monitor
        if module is self._root:
            mon._emulating = True
            mon._root_begin(module, args)
        if module in mon._slots:
            mon._layer_pre(module, args)
        elif module in mon._activation_modules:
            mon._act_pre(module, args)

    def exit(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        mon = self._monitor
        if module in mon._slots:
            mon._layer_post(module, args, output)
        elif module in mon._activation_modules:
            mon._act_post(module, args, output)
        if module is self._root:
            mon._root_post(module, args, output)

    def gradient(self, output: torch.Tensor, grad: torch.Tensor) -> None:
        mon = self._monitor
        state = mon._state
        entry = state.fast_grads.get(id(output)) if state is not None else None
        if state is not None and entry is not None and not mon._broken:
            mon._gradient_hook(state, entry, grad)

    def kept(self, key: object, tensors: list[torch.Tensor]) -> bool:
        return self._monitor._record_kept(key, tensors)

    def updated(self, params: list[torch.Tensor], stats: torch.Tensor | None) -> None:
        self._monitor._updated(params, stats)

    def run_plan(
        self,
        key: object,
        count: int,
        params: list[torch.Tensor],
        make: Callable[..., object | None],
    ) -> object | None:
        """The native plan (``steadygrad.fast.RunRecords.plan``) with which the recorded steps of
        a native run of the program ``key`` (``count`` kept tensors, update sums in the order of
        ``params``) are recorded where they run, without a replay and without returning to
        Python; None where they cannot be (no plan learnt for that program, a weight copy or a
        step waiting, paused, eval mode, closed). ``make``: ``FastStep.record_plan``."""
        run = self._monitor._run_plan(key, count, params, make)
        return None if run is None else run.native

    def ran(self, steps: int, at: list[int], records: torch.Tensor | None) -> int:
        """Count a native run's ``steps`` steps after :meth:`run_plan`, those at positions
        ``at`` recorded from their rows of ``records`` (``StepsTaken.records``). Returns how
        many it counted: all, or all but a last recorded step whose numbers did not suffice,
        which the caller then shows as a kept step (:meth:`kept`, :meth:`updated`, the loss)."""
        counted = self._monitor._ran(steps, at, records)
        return steps if counted is None else counted  # None: the monitor stopped (a note)

    def wants_norms(self) -> bool:
        """Whether the step about to run is the last before a recorded one: its update's norm
        goes into that record's update ratio."""
        mon = self._monitor
        return not mon._closed and not mon._broken and (mon._next_step + 1) % mon.every == 0

    def pass_step(self) -> None:
        """:meth:`Monitor.pass_step` for a step whose update gives the update's norms
        (``updated``): no copy of the weights is needed for the next record's update ratio."""
        mon = self._monitor
        mon._norms_given = True
        try:
            mon.pass_step()
        finally:
            mon._norms_given = False

    def backward_done(self) -> None:
        mon = self._monitor
        try:
            state = mon._state
            if state is not None and not state.finalized and not mon._broken:
                mon._after_backward(state)
        finally:
            mon._emulating = False


class Monitor:
    """Per-layer statistics of a model while it trains; made by :func:`watch`.

    Attributes: ``records`` (list of :class:`StepRecord`: all of them, or the latest ``keep``),
    ``layers`` (list of :class:`LayerInfo`, by depth), ``notes`` (modules it could not
    interpret, and other remarks), ``path`` (the ``monitor.jsonl`` written, or None), ``step``
    (index of the latest step, −1 before the first).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 10,
        *,
        out: str | Path | None = None,
        tensorboard: bool = False,
        histograms: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
        first_step: int = 0,
        keep: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every must be a positive int (record every N-th step); got {every!r}")
        if every < 1:
            raise ValueError(
                f"every must be a positive int (record every N-th step); got {every!r}"
            )
        if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
            raise ValueError(f"first_step must be an int >= 0; got {first_step!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(
                f"keep must be a positive int (the latest records kept in memory) or None "
                f"(all); got {keep!r}"
            )
        for flag, value in (("tensorboard", tensorboard), ("histograms", histograms)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False; got {value!r}")
        if out is not None and not isinstance(out, str | Path):
            raise TypeError(
                f"out must be a folder path (str or Path) or None; got {type(out).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}"
            )
        if tensorboard and out is None:
            raise ValueError("tensorboard=True needs out=, the folder to write tensorboard/ into")

        self.records: list[StepRecord] = []
        self.keep = keep
        self.every = every
        self.first_step = first_step
        self._notes: dict[str, str] = {}
        self._model: nn.Module | None = model
        self._optimizer = optimizer
        self._step_unit = "forward" if optimizer is None else "optimizer_step"
        self._histograms = histograms
        self._closed = False
        self._broken = False
        self._active = False
        self._state: _State | None = None
        self._step = first_step - 1
        self._next_step = first_step
        self._forward_seen = False
        self._snapshot: list[tuple[_Slot, torch.Tensor, torch.Tensor]] | None = None
        self._snapshot_plan: list[tuple[_Slot, torch.Tensor, torch.Tensor]] | None = None
        # ‖ΔW‖² of the last update per layer: a device scalar, or a float (the update's sums, or
        # the native weight pass)
        self._pending_updates: dict[_Slot, torch.Tensor | float] = {}
        # the weight pass that measured the update, with ΣW, ΣW², for the next record
        self._pending_pass: _WeightPass | None = None
        self._unsealed: _Unsealed | None = None
        self._order: list[_Slot] = []
        self._handles: list[Any] = []
        # Forward statistics are queued when a recorded step ends (after the backward pass) once
        # a recorded step showed that no forward signal is overwritten in place after its hook
        # ran; see _measure.
        self._defer = False
        self._defer_allowed = True
        self._paused = 0
        # True while a step is replayed from what a fast step shows (see fast_observer)
        self._emulating = False
        # ∂L/∂z caught by C++ hooks (GradCapture) while the native kernels load; see
        # _watch_gradient
        self._native_capture = _NATIVE_CAPTURE
        # Native fast steps are recorded from their kept tensors, without a replay, once one
        # replayed step showed where each statistic comes from (see _record_kept).
        self._kept_plan: KeptPlan | None = None
        # while such a step is replayed: (layout key, tensor id → index, step, notes before)
        self._learning: tuple[object, dict[int, int], int, int] | None = None
        # a step recorded from kept tensors, waiting for the update's sums (see _updated)
        self._kept_waiting: tuple[_State, KeptPlan, list[torch.Tensor]] | None = None
        # the step about to begin gives its update's norms itself (no weight snapshot)
        self._norms_given = False
        # the learnt plan bound to the trainer's parameters, for its native runs (_run_plan)
        self._run: RunPlan | None = None
        # how a recorded step of the hooks is read in one native call, learnt from one read the
        # general way (see _finalize_planned)
        self._hook_plan: HookPlan | None = None

        self._tensorboard: Any = None
        self._writer: _output.LogWriter | None = None
        self.path: Path | None = None
        if out is not None:
            folder = Path(out)
            if tensorboard:  # fail before anything is written if TensorBoard is missing
                self._tensorboard = _output.summary_writer(folder / _output.TENSORBOARD_FOLDER)
            self._writer = _output.LogWriter(folder, first_step)
            self.path = self._writer.path
            for note in self._writer.notes:
                self._note(note, note)

        self._slots: dict[nn.Module, _Slot] = {}
        self._activation_modules: dict[nn.Module, activations.Activation] = {}
        self._discover(model)
        self._armed: list[Any] = []
        self._hooked = [m for m in (*self._slots, *self._activation_modules) if m is not model]
        # Hooks on the submodules either stay for the whole watch or are added for each recorded
        # forward only: adding and removing them costs about as much as 4 forwards through
        # hooked modules, so frequent recording keeps them.
        self._permanent = every < _ARM_EVERY
        self._register(model)

    # ------------------------------------------------------------------ public

    @property
    def notes(self) -> list[str]:
        """Remarks: modules that could not be interpreted, layers called twice, stopped writing."""
        return list(self._notes.values())

    @property
    def layers(self) -> list[LayerInfo]:
        """The layers seen so far, by depth."""
        out = []
        for slot in self._order:
            weight = slot.weight()
            shape = tuple(weight.shape) if weight is not None else ()
            assert slot.depth is not None
            out.append(LayerInfo(slot.name, slot.kind, slot.depth, slot.activation, shape))
        return out

    @property
    def step(self) -> int:
        """Index of the latest step (``first_step − 1`` before the first)."""
        return self._step

    @property
    def step_unit(self) -> str:
        """What a step is: ``"forward"`` (a train-mode forward of the model) or
        ``"optimizer_step"`` (made with ``optimizer=``)."""
        return self._step_unit

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (hooks removed)."""
        return self._closed

    def log_loss(self, loss: torch.Tensor | float) -> None:
        """Attach the loss of the latest step to its record (ignored on unrecorded steps).

        Call it after the backward pass (e.g. from ``fit``'s ``on_step_end``): on a recorded step
        it reads the loss (a host synchronisation, on that step only) and writes the record.
        Called before the backward pass, the loss is read together with the statistics.
        """
        if loss.__class__ is torch.Tensor:  # the common case first: called on every step
            if loss.numel() != 1:
                raise ValueError(f"loss must be a scalar tensor; got shape {tuple(loss.shape)}")
        elif isinstance(loss, bool) or not isinstance(loss, _LOSS_TYPES):
            raise TypeError(f"loss must be a scalar tensor or a number; got {type(loss).__name__}")
        elif isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ValueError(f"loss must be a scalar tensor; got shape {tuple(loss.shape)}")
        if self._closed or self._broken:
            return
        state = self._state
        if state is not None and state.step == self._step and not state.finalized:
            state.loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
            return
        unsealed = self._unsealed
        if unsealed is not None and unsealed.record.step == self._step:
            unsealed.record.loss = float(loss.item() if isinstance(loss, torch.Tensor) else loss)
            self._seal()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside this context the model's forward passes are not steps: not counted, not
        recorded (e.g. a replay of steps already taken, or train-mode evaluation).

        ``steadygrad.fit`` pauses its monitor while it replays a diverged epoch to find the
        first bad step, so the records keep their step numbers.
        """
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def records_next_step(self) -> bool:
        """Whether the next step will be recorded (always False once closed or stopped).

        With :meth:`pass_step`, this lets a trainer take the steps the monitor does not record
        by a path that never calls the model's ``forward`` (``steadygrad.fit``'s fast step).
        """
        if self._closed or self._broken:
            return False
        return self._next_step % self.every == 0

    def fast_observer(self) -> _FastObserver:
        """A :class:`steadygrad.fast.StepObserver` through which a fast step (which calls no
        module and builds no autograd graph) is recorded: it replays the step through this
        monitor's own hook methods with the tensors the hooks would have seen, so the record is
        the one a step through ``forward`` and autograd would give. ``fit(..., monitor=mon)``
        records its steps this way when the fast step applies."""
        return _FastObserver(self)

    def pass_step(self, steps: int = 1) -> None:
        """Count ``steps`` training steps that ran without calling the model's ``forward``.

        For a trainer that takes unrecorded steps another way (``steadygrad.fit``'s fast step):
        the step counter advances, a record still waiting is written, and the weights are copied
        when the next step's update ratio needs them, exactly as the root module's hook does for
        a step through ``forward``. Only for monitors that count forward passes (made without
        ``optimizer=``), and only for steps :meth:`records_next_step` says are not recorded;
        several at once (``steps > 1``, after a trainer ran them in one call) only where
        :meth:`steps_to_pass` allowed as many.
        """
        if self._optimizer is not None:
            raise RuntimeError(
                "pass_step() is for monitors that count forward passes; this one counts "
                "optimizer steps (watch(..., optimizer=...)), which need no call"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int; got {steps!r}")
        if self._closed or self._broken or self._paused:
            return
        if self.records_next_step():
            raise RuntimeError(
                f"step {self._next_step} is recorded: run it through the model's forward "
                "(check records_next_step() first)"
            )
        if steps > 1 and steps > self.steps_to_pass():
            raise RuntimeError(
                f"{steps} steps from step {self._next_step} include a recorded step or the one "
                f"before it; pass at most steps_to_pass() = {self.steps_to_pass()} at once"
            )
        self._begin_forward_step()
        if steps > 1:
            # none of the others is recorded or before a recorded one (steps_to_pass): each
            # would only advance the counters (no record waits, _start clears the state)
            self._next_step += steps - 1
            self._start(self._next_step - 1)

    def steps_to_pass(self) -> int:
        """How many of the next steps a trainer may take without showing them to the monitor and
        then count with one :meth:`pass_step` call: those before the last step ahead of the next
        recorded one (that step's update gives the record's update ratio). ``every - 2`` right
        after a recorded step; 0 where ``every`` ≤ 2. Unbounded (``sys.maxsize``) once closed."""
        if self._closed or self._broken:
            return sys.maxsize
        r = self._next_step % self.every
        return self.every - 1 - r if r else 0

    def close(self) -> None:
        """Finish the step in progress, write what is pending, remove every hook. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            state = self._state
            if state is not None and not state.finalized and state.entries and not self._broken:
                self._kept_waiting = None
                self._finalize(state)
            self._seal()
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._deactivate()
            if self._state is not None:
                self._state.release()
            self._state = None
            self._snapshot = None
            self._snapshot_plan = None
            self._kept_plan = None
            self._run = None
            self._learning = None
            self._kept_waiting = None
            self._pending_updates = {}
            self._pending_pass = None
            self._hook_plan = None
            self._model = None
            self._optimizer = None
            if self._writer is not None:
                try:
                    self._writer.close(self._header())
                except OSError as error:
                    self._note("write", f"stopped writing {self.path}: {error}")
            if self._tensorboard is not None:
                self._tensorboard.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "watching"
        return (
            f"Monitor({state}, every={self.every}, layers={len(self._slots)}, "
            f"records={len(self.records)})"
        )

    # ------------------------------------------------------------------ setup

    def _internal_error(self, where: str, error: Exception) -> None:
        if _RAISE_INTERNAL_ERRORS:
            raise error
        self._broken = True
        if self._state is not None:
            self._state.release()
        self._state = None
        self._deactivate()
        self._note(
            "internal",
            f"monitoring stopped after an internal error in {where}: "
            f"{type(error).__name__}: {error}",
        )

    def _note(self, key: str, text: str) -> None:
        if key not in self._notes:
            self._notes[key] = text

    def _discover(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            label = name or "(root)"
            if _weight(module) is not None:
                self._slots[module] = _Slot(module, label)
                continue
            converted = activations.from_module(module)
            if converted is not None and type(module) is not nn.Identity:
                self._activation_modules[module] = converted
                continue
            big = [p for p, value in module.named_parameters(recurse=False) if value.ndim >= 2]
            if big:
                self._note(
                    f"no-weight:{label}",
                    f"{label} ({type(module).__name__}) has parameters of rank >= 2 "
                    f"({', '.join(big)}) but no `weight`; it is not monitored",
                )
        if not self._slots:
            self._note(
                "no-layers",
                "the model has no module with a `weight` of rank >= 2; there is nothing to monitor",
            )

    def _register(self, model: nn.Module) -> None:
        """Hooks on the root (and the optimizer) for the whole watch; see :meth:`_arm`."""
        handles = self._handles
        handles.append(model.register_forward_pre_hook(self._root_pre, prepend=True))
        self._hook_module(model, handles)  # when the root is itself a layer or an activation
        handles.append(model.register_forward_hook(self._root_post, always_call=True))
        if self._permanent:
            for module in self._hooked:
                self._hook_module(module, handles)
        if self._optimizer is not None:
            handles.append(self._optimizer.register_step_pre_hook(self._optimizer_pre))
            handles.append(self._optimizer.register_step_post_hook(self._optimizer_post))

    def _hook_module(self, module: nn.Module, handles: list[Any]) -> None:
        if module in self._slots:
            handles.append(module.register_forward_pre_hook(self._layer_pre))
            handles.append(module.register_forward_hook(self._layer_post))
        elif module in self._activation_modules:
            handles.append(module.register_forward_pre_hook(self._act_pre))
            handles.append(module.register_forward_hook(self._act_post))

    def _arm(self) -> None:
        """Hook every layer and activation module for the recorded forward about to run.

        Hooks exist only during recorded forwards: on other steps the submodules run PyTorch's
        hook-free fast path and only the root's two hooks are called. A step replayed from a
        fast step (``_emulating``) calls the hook methods itself and needs none.
        """
        if self._permanent or self._emulating:
            return
        for module in self._hooked:
            self._hook_module(module, self._armed)

    def _disarm(self) -> None:
        for handle in self._armed:
            handle.remove()
        self._armed.clear()

    def _deactivate(self) -> None:
        self._active = False
        self._disarm()

    # ------------------------------------------------------------------ step boundaries

    def _take_snapshot(self) -> None:
        """Copy the weights into device buffers, to measure the next optimizer step's update.

        The (slot, weight, buffer) triples are kept between steps and rebuilt only when a
        weight was replaced or changed shape, dtype or device.
        """
        plan = self._snapshot_plan
        if plan is None or any(
            slot.weight() is not w or w.shape != b.shape or w.dtype != b.dtype
            for slot, w, b in plan
        ):
            plan = self._snapshot_plan = self._plan_snapshot()
        if plan:
            with torch.no_grad():
                torch._foreach_copy_([b for _, _, b in plan], [w for _, w, _ in plan])
        self._snapshot = plan

    def _plan_snapshot(self) -> list[tuple[_Slot, torch.Tensor, torch.Tensor]]:
        """(slot, weight, buffer) per layer, keeping the previous plan's buffers that still fit."""
        old = {slot: b for slot, _, b in self._snapshot_plan or ()}
        plan = []
        for slot in self._slots.values():
            weight = slot.weight()
            if weight is None:
                continue
            buffer = old.get(slot)
            if (
                buffer is None
                or buffer.shape != weight.shape
                or buffer.dtype != weight.dtype
                or buffer.device != weight.device
            ):
                buffer = torch.empty_like(weight, requires_grad=False)
            plan.append((slot, weight, buffer))
        return plan

    def _measure_updates(self, copy: bool = False) -> bool:
        """Queue ‖W − W_before‖² (device scalars) for the next record.

        Contiguous float32 CPU weights, all of them: one native pass over each W and its copy
        (``_stats.distances_and_moments``) that also gives ΣW and ΣW² — the record's weight
        moments, W being unchanged until the optimizer's step — and, with ``copy``, leaves the
        copy holding W for the record after this one (every=1): returns True when it did. Others
        (``_stats.squared_distances``) overwrite their snapshot buffers with the differences (no
        temporary as large as W).
        """
        snapshot, self._snapshot = self._snapshot, None
        if not snapshot:
            return False
        current = [slot.weight() for slot in self._slots.values()]  # one lookup per layer
        now = dict(zip(self._slots.values(), current, strict=True))
        kept = [
            (slot, weight, before)
            for slot, weight, before in snapshot
            # replaced since the snapshot: no update to measure
            if now[slot] is weight and weight.shape == before.shape
        ]
        after, before = [w for _, w, _ in kept], [b for _, _, b in kept]
        rows = _stats.distances_and_moments(after, before, copy=copy)  # native: no autograd
        if rows is None:
            with torch.no_grad():
                norms = _stats.squared_distances(after, before)
            for (slot, _, _), norm in zip(kept, norms, strict=True):
                self._pending_updates[slot] = norm
            return False
        values = rows.tolist()  # CPU tensors only: no device to wait for
        slots = tuple(slot for slot, _, _ in kept)
        for slot, row in zip(slots, values, strict=True):
            self._pending_updates[slot] = row[0]
        self._pending_pass = _WeightPass(slots, tuple(after), values)
        weighted = sum(w is not None for w in current)
        if copy and len(kept) == len(snapshot) == weighted and snapshot is self._snapshot_plan:
            self._snapshot = snapshot  # the copies hold W now: the next update's "before"
            return True
        return False

    def _start(self, step: int) -> None:
        self._step = step
        weight_pass, self._pending_pass = self._pending_pass, None
        if step % self.every == 0:
            updates, self._pending_updates = self._pending_updates, {}
            self._state = _State(step, updates)
            self._state.weight_pass = weight_pass
            self._state.notes = len(self._notes)
            self._active = True
            self._arm()
        else:
            self._state = None
            if self._pending_updates:
                self._pending_updates = {}

    def _root_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._emulating = False  # a real forward: nothing is being replayed
        self._root_begin(module, args)

    @_guarded
    def _root_begin(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training or self._paused:
            return
        if self._optimizer is not None:  # a step is an optimizer step: record its first forward
            if self._forward_seen:
                return
            self._forward_seen = True
            if self._unsealed is not None:
                self._seal()
            self._start(self._next_step)
            return
        self._begin_forward_step()

    @_guarded
    def _begin_forward_step(self) -> None:
        """Start the next step of a monitor that counts forward passes."""
        state = self._state
        if state is not None and not state.finalized:
            self._finalize(state)  # the previous recorded step had no backward pass
        if self._unsealed is not None:
            self._seal()
        step = self._next_step
        self._next_step += 1
        snapshot = (step + 1) % self.every == 0 and not self._norms_given
        copied = False
        if step % self.every == 0:
            # every=1: the copy for the next record is taken in the same pass, where it can be
            copied = self._measure_updates(copy=snapshot and self._snapshot_plan is not None)
        if snapshot and not copied:
            self._take_snapshot()
        self._start(step)

    @_recording
    def _root_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._deactivate()
        state = self._state
        if state is None:
            return
        last = state.last
        if last is not None and not last.resolved and last.in_forward == 0:
            self._resolve(last, output if isinstance(output, torch.Tensor) else None)
        if not state.expects_backward and self._optimizer is None:
            self._finalize(state)  # no gradient will flow (no_grad, or nothing requires grad)

    @_guarded
    def _optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        state = self._state
        if state is not None and not state.finalized:
            self._finalize(state)
        if (self._next_step + 1) % self.every == 0:
            self._take_snapshot()

    @_guarded
    def _optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._measure_updates()
        self._next_step += 1
        self._forward_seen = False

    # ------------------------------------------------------------------ layers

    @_recording
    def _layer_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._active:
            return
        state = self._state
        slot = self._slots[module]
        if state is None or slot.skipped:
            return
        entry = state.entries.get(slot)
        if entry is None:
            entry = state.entries[slot] = _Entry(slot)
            if slot.depth is None:
                self._order.append(slot)
                slot.depth = len(self._order)
        entry.calls += 1
        previous = state.last
        if previous is not None and not previous.resolved and previous.in_forward == 0:
            self._resolve(previous, _first_tensor(args))  # its activation: this layer's input
        state.last = entry
        entry.in_forward += 1

    @_recording
    def _layer_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._active:
            return
        state = self._state
        slot = self._slots[module]
        if state is None or slot.skipped:
            return
        entry = state.entries.get(slot)
        if entry is None:
            return
        entry.in_forward -= 1
        if entry.calls > 1:
            return
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            self._skip(slot, state, f"its output is {type(output).__name__}, not a float tensor")
            return
        if slot.unit_dim is None:
            slot.unit_dim = self._unit_dim(slot, output)
            if slot.unit_dim is None:
                return
        if entry.claimed and entry.internal:
            return  # z, pre and ∂L/∂z were taken at the activation's input inside this forward
        entry.z = output
        entry.z_node = output.grad_fn
        entry.z_version = output._version
        entry.pre_src = output
        if not slot.module_activation_seen:

            def z_moments() -> None:
                entry.z_moments = _stats.moments(output, state.batch)

            self._measure(state, output, z_moments)
        self._watch_gradient(state, entry, output)

    def _unit_dim(self, slot: _Slot, output: torch.Tensor) -> int | None:
        """Dimension of ``output`` that indexes units (features or channels)."""
        module = slot.module
        weight = slot.weight()
        assert weight is not None
        if isinstance(module, nn.Linear | nn.Bilinear | nn.Embedding | nn.EmbeddingBag):
            return -1
        if isinstance(module, nn.modules.conv._ConvNd):
            return 1 if output.ndim == weight.ndim else 0  # (N, C, *) or unbatched (C, *)
        units = weight.shape[0]
        if output.ndim >= 1 and output.shape[-1] == units:
            return -1
        if output.ndim >= 2 and output.shape[1] == units:
            return 1
        self._skip(
            slot,
            self._state,
            f"no dimension of its output {tuple(output.shape)} has weight.shape[0] = {units} units",
        )
        return None

    def _skip(self, slot: _Slot, state: _State | None, why: str) -> None:
        slot.skipped = True
        if state is not None:
            state.entries.pop(slot, None)
            if state.last is not None and state.last.slot is slot:
                state.last = None
        if slot in self._order:
            self._order.remove(slot)
            for depth, other in enumerate(self._order, start=1):
                other.depth = depth
        slot.depth = None
        self._note(f"skip:{slot.name}", f"{slot.name} ({slot.kind}) is not monitored: {why}")

    def _watch_gradient(self, state: _State, entry: _Entry, z: torch.Tensor) -> None:
        """Catch ∂L/∂z in the backward pass (the hook goes away with the graph).

        The hook sits on the autograd node that produced z (a pre-hook receives the gradients of
        its outputs), so that, like ``Tensor.register_hook``, it still sees the gradient of z's
        own value when z is later overwritten in place. A C++ hook where the native kernels are
        built (``GradCapture``, csrc/capture.cpp: ~1 µs a layer; its catch is collected by
        :meth:`_collect_gradients`), else a Python one (~25 µs a layer inside a training step).
        """
        if self._emulating:  # the fast step hands ∂L/∂z over itself (see _FastObserver)
            state.fast_grads[id(z)] = entry
            state.expects_backward = True
            state.callback_queued = True  # no autograd engine to call back: backward_done does
            return
        if not z.requires_grad:
            return
        if _compiled_autograd():
            self._note(
                "compiled-autograd",
                "compiled autograd is on: its backward pass cannot run the monitor's gradient "
                "hooks, so back-propagated gradients are not recorded while it is",
            )
            return
        node = z.grad_fn
        if node is not None:
            capture = state.capture
            if capture is None and self._native_capture:
                kernels = native.load()
                if kernels is None:
                    self._native_capture = False
                else:
                    callback = (
                        None
                        if self._optimizer is not None  # the optimizer's step reads the record
                        else functools.partial(self._after_backward, state)
                    )
                    capture = state.capture = kernels.GradCapture(callback)
            if capture is not None and capture.add(z) >= 0:
                state.captured.append(entry)  # the slot add() gave: one per call, in order
            else:
                node.register_prehook(functools.partial(self._node_hook, state, entry, z.output_nr))
                state.python_hooks = True
        else:  # a leaf that requires grad
            z.register_hook(functools.partial(self._gradient_hook, state, entry))  # type: ignore[no-untyped-call]
            state.python_hooks = True
        state.expects_backward = True

    def _collect_gradients(self, state: _State) -> None:
        """Hand the gradients the native hooks caught (see :meth:`_watch_gradient`) to their
        entries (:meth:`_keep_gradient`, as for the Python hooks')."""
        capture = state.capture
        if capture is None or not state.captured:
            return
        for entry, grad in zip(state.captured, capture.grads(), strict=True):
            if grad is not None:
                self._keep_gradient(state, entry, grad)

    @_guarded
    def _node_hook(
        self, state: _State, entry: _Entry, index: int, grad_outputs: tuple[Any, ...]
    ) -> None:
        grad = grad_outputs[index] if index < len(grad_outputs) else None
        if isinstance(grad, torch.Tensor):
            self._take_gradient(state, entry, grad)

    @_guarded
    def _gradient_hook(self, state: _State, entry: _Entry, grad: torch.Tensor) -> None:
        self._take_gradient(state, entry, grad)

    def _take_gradient(self, state: _State, entry: _Entry, grad: torch.Tensor) -> None:
        """A Python hook's ∂L/∂z: kept, and the step's read queued for the backward's end."""
        if not self._keep_gradient(state, entry, grad):
            return
        if self._optimizer is None and not state.callback_queued:
            state.callback_queued = _queue_after_backward(
                functools.partial(self._after_backward, state)
            )

    def _keep_gradient(self, state: _State, entry: _Entry, grad: torch.Tensor) -> bool:
        """Keep ∂L/∂z (the first one wins), with its histogram where one is wanted; False where
        it is not kept (the step was read already, or a gradient came before)."""
        if state.finalized or entry.grad_ref is not None:
            return False
        entry.grad_ref = grad  # its moments are taken with the weights', when backward ends
        if self._histograms or self._tensorboard is not None:
            with torch.no_grad():
                entry.grad_hist = _stats.histogram(grad, HISTOGRAM_BINS, state.batch)
        return True

    @_guarded
    def _after_backward(self, state: _State) -> None:
        if not state.finalized:
            self._finalize(state)

    # ------------------------------------------------------------------ activations

    @_recording
    def _act_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._active:
            return
        state = self._state
        if state is None:
            return
        entry = state.last
        if entry is None or entry.resolved or entry.claimed or entry.calls > 1:
            return
        x = _first_tensor(args)
        if x is None:
            return
        slot = entry.slot
        if entry.in_forward > 0 and slot.unit_dim is None:  # Dense: first call, z not seen yet
            slot.unit_dim = self._unit_dim(slot, x)
            if slot.unit_dim is None:
                return
        activation = self._activation_modules[module]
        entry.claimed = True
        entry.claiming = module
        entry.internal = entry.in_forward > 0
        entry.status = "module"
        entry.activation = activation
        entry.slot.module_activation_seen = True
        entry.pre_src = x
        if entry.internal:  # Dense: the activation's input is the layer's affine output z
            entry.z = x
            entry.z_node = x.grad_fn
            entry.z_version = x._version
            self._watch_gradient(state, entry, x)
        reuse = entry.z_moments is not None and x is entry.z and x._version == entry.z_version
        if reuse:
            entry.pre = entry.z_moments

        def pre() -> None:
            if not reuse:
                entry.pre = _stats.moments(x, state.batch)
            self._measure_pre(state, entry, x, activation)

        self._measure(state, x, pre)

    @_recording
    def _act_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._active:
            return
        state = self._state
        if state is None:
            return
        entry = state.last
        if entry is None or entry.claiming is not module:
            return
        entry.claiming = None
        entry.resolved = True
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            entry.act_src = output
            self._measure(state, output, lambda: self._measure_act(state, entry, output))

    def _measure(self, state: _State, tensor: torch.Tensor, queue: Callable[[], None]) -> None:
        """Queue the statistics of forward signal ``tensor`` (``queue()``), now or later.

        Measured inside the forward pass, each small reduction runs between the layers' kernels,
        with colder caches; measured after the backward pass, with the others, it costs a little
        less (reference network, hand-written loop, interleaved runs: monitored ÷ unmonitored
        1.109 → 1.076 at every=10, 1.887 → 1.837 at every=1). But a later in-place operation
        may overwrite a signal (``nn.ReLU(inplace=True)`` on its input), so the first recorded
        step measures at once and checks, when it ends, that no measured tensor changed
        (``Tensor._version``); only then are later steps deferred to the step's end, where each
        tensor's version is checked again before it is read. A tensor found changed there loses
        its statistics for that step (noted), and measuring goes back to "at once" for the rest
        of the watch.
        """
        if self._defer:
            state.deferred.append((tensor, tensor._version, queue))
        else:
            queue()
            state.seen.append((tensor, tensor._version))

    def _measure_deferred(self, state: _State) -> None:
        """Queue the deferred forward statistics; decide whether later steps may defer."""
        if state.deferred:
            changed = False
            for tensor, version, fill in state.deferred:
                if tensor._version == version:
                    fill()
                else:
                    changed = True
            if changed:
                self._defer = self._defer_allowed = False
                self._note(
                    "deferred-inplace",
                    f"a forward signal was overwritten in place after its layer ran (step "
                    f"{state.step}); its statistics are missing on that step, and later steps "
                    "measure forward signals as soon as they are made",
                )
        elif not self._defer and self._defer_allowed and state.seen:
            if all(tensor._version == version for tensor, version in state.seen):
                self._defer = True
            else:
                self._defer_allowed = False
        state.deferred = []
        state.seen = []

    def _measure_act(self, state: _State, entry: _Entry, act: torch.Tensor) -> None:
        entry.act = _stats.moments(act, state.batch)
        if self._histograms or self._tensorboard is not None:
            entry.act_hist = _stats.histogram(act, HISTOGRAM_BINS, state.batch)

    def _measure_pre(
        self, state: _State, entry: _Entry, x: torch.Tensor, activation: activations.Activation
    ) -> None:
        """Queue the saturated-entry and dead-unit counts of pre-activation ``x``."""
        lo, hi = _saturation_region(activation)
        entry.sat = _stats.count_saturated(x, lo, hi, state.batch)
        entry.sat_n = x.numel()
        entry.sat_fixed = 0.0 if entry.sat is None else None
        dead_below = activation.dead_below
        if dead_below is None:
            entry.dead_fixed = 0.0  # f' is never exactly 0: no unit can be dead
        elif x.ndim >= 1 and x.numel() > 0:
            unit_dim = entry.slot.unit_dim if entry.slot.unit_dim is not None else -1
            if -x.ndim <= unit_dim < x.ndim:
                entry.dead, entry.dead_units = _stats.count_dead(
                    x, unit_dim, dead_below, state.batch
                )

    def _resolve(self, entry: _Entry, later: torch.Tensor | None) -> None:
        """Settle the activation of a layer that no activation module claimed.

        ``later`` is the tensor that carries the layer's signal on (the next layer's input or
        the model's output): its statistics are the layer's activation statistics, and the graph
        between z and it names the activation function, if any.
        """
        entry.resolved = True
        state = self._state
        z = entry.z
        if entry.claimed or state is None or z is None:
            return
        unchanged = z._version == entry.z_version
        entry.pre_src = z
        if later is not None and later.is_floating_point():
            entry.act_src = later
            self._measure(state, later, lambda: self._measure_act(state, entry, later))
            same = later is z and unchanged  # z itself goes on: no activation
            # On a replayed fast step there is no graph; the step's program has no activation
            # functions, only modules (which claim their layer): nothing else can bend z.
            none = same or (self._emulating and entry.z_node is None)
            trace = _trace.NONE if none else _trace.between(entry.z_node, later)
        else:
            trace = _trace.Trace("unreachable")
        entry.status = trace.status
        entry.activation = trace.activation
        if trace.status == "unknown":
            self._note(
                f"unknown-function:{entry.slot.name}",
                f"the activation after {entry.slot.name} ({trace.node}) is not one steadygrad "
                "knows: no saturation or dead-unit statistics for it",
            )
        if not unchanged and entry.z_moments is None:
            self._note(
                f"inplace:{entry.slot.name}",
                f"the output of {entry.slot.name} was overwritten in place before it could be "
                "measured; its pre-activation statistics are missing on some steps",
            )
        activation = trace.activation
        # F.relu(z, inplace=True): relu(z) <= 0 exactly where z <= 0, so deadness survives.
        counts = activation is not None and (unchanged or isinstance(activation, activations.ReLU))

        def pre() -> None:
            if entry.z_moments is not None:  # measured at the layer's output (maybe deferred too)
                entry.pre = entry.z_moments
            elif unchanged:
                entry.pre = _stats.moments(z, state.batch)
            if counts:
                assert activation is not None
                self._measure_pre(state, entry, z, activation)

        self._measure(state, z, pre)

    # ------------------------------------------------------------------ reading a step

    def _finalize(
        self, state: _State, given: dict[int, tuple[torch.Tensor, int]] | None = None
    ) -> None:
        """Queue the weights and gradients, read everything once, append the record.

        ``given``: id(parameter) → (the update's sums, row) (see :meth:`_updated`): that
        parameter's and its gradient's moments are read from there instead of computed.
        Without it, a step that matches the plan learnt from an earlier one is read in one
        native call instead (:meth:`_finalize_planned`)."""
        self._collect_gradients(state)
        if given is None and self._hook_plan is not None and self._finalize_planned(state):
            return
        plain = given is None and bool(state.deferred) and not state.seen
        state.finalized = True
        if self._state is state:
            self._deactivate()
        batch = state.batch
        # From here on nothing changes the step's tensors before batch.read(): its CPU
        # reductions may wait for it and run in one native call (see _stats.Batch).
        batch.lazy = True
        entries = [e for e in state.entries.values() if not e.slot.skipped]
        if not entries and any(not slot.skipped for slot in self._slots.values()):
            self._note_silent_layers(state)
        with torch.no_grad():
            for entry in entries:
                if not entry.resolved:
                    self._resolve(entry, None)
            self._measure_deferred(state)
            # ∂L/∂z, W and ∂L/∂W of every layer: their sums and sums of squares
            tensors: list[torch.Tensor] = []
            targets: list[tuple[_Entry, str]] = []
            weight_pass = state.weight_pass
            measured = (
                {}
                if weight_pass is None
                else {slot: (weight, row) for slot, weight, row in zip(*weight_pass, strict=True)}
            )
            for entry in entries:
                if entry.grad_ref is not None:
                    tensors.append(entry.grad_ref)
                    targets.append((entry, "grad"))
                weight = entry.slot.weight()
                if weight is None:
                    continue
                row = given.get(id(weight)) if given is not None else None
                if row is not None:  # Σθ, Σθ², Σg, Σg² from the update's own pass
                    sums, k = row
                    n = weight.numel()
                    # No tensor to recompute θ's moments from where the sums do not suffice:
                    # the update has changed W since (its gradient it leaves as it was).
                    entry.weight = _stats.Moments(
                        n, batch.add(sums[k, 0]), batch.add(sums[k, 1]), None
                    )
                    entry.weight_grad = _stats.Moments(
                        n, batch.add(sums[k, 2]), batch.add(sums[k, 3]), weight.grad
                    )
                    entry.update = self._queue_update(state, entry.slot)
                    continue
                found = measured.get(entry.slot)
                if found is not None and found[0] is weight:  # ΣW, ΣW²: the update's pass
                    entry.weight = _stats.Moments(
                        weight.numel(),
                        batch.add(torch.tensor(found[1][1], dtype=torch.float64)),
                        batch.add(torch.tensor(found[1][2], dtype=torch.float64)),
                        weight,
                    )
                else:
                    tensors.append(weight)
                    targets.append((entry, "weight"))
                if weight.grad is not None:
                    tensors.append(weight.grad)
                    targets.append((entry, "weight_grad"))
                entry.update = self._queue_update(state, entry.slot)
            for (entry, field), m in zip(targets, _stats.moments_many(tensors, batch), strict=True):
                setattr(entry, field, m)
            loss_at = None
            if isinstance(state.loss, torch.Tensor):
                loss_at = batch.add(state.loss.detach().float().reshape(()))
            values = batch.read()  # the one host synchronisation of the step
            # Second pass, only for the tensors whose Σx, Σx² were not finite or cancelled out.
            second = _stats.Batch()
            precise: dict[int, _stats.PreciseMoments] = {}
            for entry in entries:
                for m in (entry.pre, entry.act, entry.grad, entry.weight, entry.weight_grad):
                    if m is None or m.ref is None or id(m) in precise:
                        continue
                    if not m.sufficient(values):
                        precise[id(m)] = _stats.precise_moments(m.ref, second)
            values2 = second.read() if precise else []
        layers: list[LayerStats] = []
        histograms: Histograms = {}
        for entry in sorted(entries, key=lambda e: e.slot.depth or 0):
            stats, hists = self._layer_stats(entry, values, precise, values2)
            layers.append(stats)
            if hists:
                histograms[entry.slot.name] = hists
            if entry.calls > 1:
                self._note(
                    f"calls:{entry.slot.name}",
                    f"{entry.slot.name} ran {entry.calls} times in one forward pass; its "
                    "statistics are those of the first call (its weight gradient sums over "
                    "all calls)",
                )
        loss: float | None = None
        if loss_at is not None:
            loss = values[loss_at]
        elif isinstance(state.loss, float):
            loss = state.loss
        if self._learning is not None:
            self._kept_plan = self._learn(state, entries)
        elif plain and not precise:
            self._hook_plan = self._learn_hooks(state, entries)
        self._emit(state, loss, layers, histograms)

    def _note_silent_layers(self, state: _State) -> None:
        """A recorded step in which no layer's hooks ran: say why, once."""
        model = self._model
        if model is not None and type(model).__name__ == "OptimizedModule":  # torch.compile
            why = (
                "the model is compiled (torch.compile), and its compiled code does not call "
                "the layers' hooks; watch a model that runs uncompiled for per-layer statistics"
            )
        else:
            why = (
                "the model's forward did not call its layers as modules (through __call__), "
                "so their hooks never ran"
            )
        self._note(
            "silent-layers",
            f"no layer reported on recorded step {state.step}, and its record has no layers: {why}",
        )

    def _learn_hooks(self, state: _State, entries: list[_Entry]) -> HookPlan | None:
        """The plan a step read by :meth:`_finalize` shows (see :meth:`_finalize_planned`), or
        None where it was not plain: a note added (a skipped module, an unknown activation, a
        layer called twice, a signal overwritten in place), a statistic from elsewhere than the
        tensors its hooks saw, a tensor the native reduction cannot read, a weight without its
        gradient or outside the weight pass, histograms or TensorBoard wanted, a replayed step.
        """
        weight_pass = state.weight_pass
        if (
            len(self._notes) != state.notes
            or state.fast_grads
            or weight_pass is None
            or self._histograms
            or self._tensorboard is not None
            or not entries
            or native.load() is None
        ):
            return None
        pass_rows = {slot: k for k, slot in enumerate(weight_pass.slots)}
        layers: list[KeptLayer] = []
        keys: list[tuple[str | None, object]] = []
        weights: list[torch.Tensor] = []
        rows: list[int] = []
        for j, entry in enumerate(sorted(entries, key=lambda e: e.slot.depth or 0)):
            slot = entry.slot
            weight = slot.weight()
            if (
                slot.depth is None
                or weight is None
                or weight.grad is None
                or not _stats.native_reads(weight.grad)
                or slot not in pass_rows
                or weight_pass.weights[pass_rows[slot]] is not weight
                or entry.weight is None
                or entry.weight_grad is None
            ):
                return None
            sources = []
            for measured, source in ((entry.pre, entry.pre_src), (entry.act, entry.act_src)):
                if (measured is None) != (source is None):
                    return None
                if measured is not None and measured.ref is not source:
                    return None
                sources.append(source)
            if (entry.grad is None) != (entry.grad_ref is None):
                return None
            sources.append(entry.grad_ref)
            if not all(t is None or _stats.native_reads(t) for t in sources):
                return None
            pre, act, grad = (None if t is None else 3 * j + k for k, t in enumerate(sources))
            layer = _kept_layer(entry, pre, act, grad)
            if layer is None or (
                layer.dead_below is not None
                and (entry.dead is None or entry.pre_src is None or entry.pre_src.ndim != 2)
            ):
                return None  # the kernel counts the units of (batch, units) tensors
            layers.append(layer)
            keys.append((entry.status, activation_key(entry.activation)))
            weights.append(weight)
            rows.append(pass_rows[slot])
        model = self._model
        assert model is not None
        plan = KeptPlan(key=weakref.ref(model), size=3 * len(layers), layers=tuple(layers))
        req = plan.requests
        count = len(layers)
        # record_stats's numbers: the requests', then 3 per weight gradient, then its flag; W's
        # three per layer are appended after it (_finalize_planned)
        apart = (req.weights + 3 * count + 1, req.weights)
        return HookPlan(
            plan=plan,
            keys=tuple(keys),
            slots=tuple(item.slot for item in layers),
            weights=tuple(weights),
            numels=tuple(w.numel() for w in weights),
            kinds=[*req.kinds, *[_stats.KIND_MOMENTS] * count],
            bounds=[*req.bounds, *[0.0] * (2 * count)],
            fields=layer_fields(plan, weights, apart),
            pass_slots=weight_pass.slots,
            pass_rows=tuple(rows),
        )

    def _finalize_planned(self, state: _State) -> bool:
        """Read a recorded step as :meth:`_finalize` would, in one native call.

        :meth:`_finalize` decides on every step which tensor feeds which statistic, queues each
        reduction, reads them, checks each sum and builds each layer's record: ~0.4 ms of
        Python a record on the reference network, more than the arithmetic. Those decisions
        are the same on every step that shows the same layers: the plan learnt from a step read
        that way (:meth:`_learn_hooks`) gives the tensors' order, and ``record_stats``
        (csrc/stats.cpp) gives every number and the check that the sums suffice; W's moments
        come from the weight pass (:meth:`_measure_updates`). The record is the same, number
        for number. Returns False, having changed nothing, where the step differs from the plan
        in anything the record depends on, or a sum is not finite or cancels: :meth:`_finalize`
        then reads it the general way (and its precise second pass).
        """
        plan = self._hook_plan
        kernels = native.load()
        weight_pass = state.weight_pass
        entries = state.entries
        if (
            plan is None
            or kernels is None
            or state.fast_grads
            or state.seen
            or not state.deferred
            or self._learning is not None
            or weight_pass is None
            or weight_pass.slots != plan.pass_slots
            or len(entries) != len(plan.slots)
        ):
            return False
        for tensor, version, _ in state.deferred:
            if tensor._version != version:
                return False  # overwritten in place: _finalize notes it
        tensors: list[torch.Tensor | None] = []
        for item, key in zip(plan.plan.layers, plan.keys, strict=True):
            entry = entries.get(item.slot)
            if (
                entry is None
                or entry.calls != 1
                or not entry.resolved
                or entry.status != key[0]
                or (
                    entry.activation is not item.activation
                    and activation_key(entry.activation) != key[1]
                )
                or (entry.pre_src is None) != (item.pre is None)
                or (entry.act_src is None) != (item.act is None)
                or (entry.grad_ref is None) != (item.grad is None)
            ):
                return False
            tensors += (entry.pre_src, entry.act_src, entry.grad_ref)
        grads: list[torch.Tensor] = []
        for slot, weight, n in zip(plan.slots, plan.weights, plan.numels, strict=True):
            if slot.weight() is not weight or weight.numel() != n or weight.grad is None:
                return False
            grads.append(weight.grad)
        inputs = [tensors[i] for i in plan.plan.requests.indices]
        try:  # the kernel checks each tensor (contiguous float32 on the CPU, 2-d for dead units)
            values: list[float] = kernels.record_stats(
                [*inputs, *grads], plan.kinds, plan.bounds, NO_SUMS, [], [], _stats.CANCELLATION
            ).tolist()
        except (RuntimeError, TypeError):
            return False  # a tensor it cannot read: the general way reads any tensor
        if not values[-1]:
            return False
        rows = weight_pass.rows
        for row, n in zip(plan.pass_rows, plan.numels, strict=True):
            _, total, squares = rows[row]
            if not _stats.sufficient(total, squares, n):
                return False
            values += _stats.from_sums(total, squares, n)
        changes = [state.updates.get(slot) for slot in plan.slots]
        self._finish_read(state, kept_layers(plan.fields, values, changes))
        return True

    def _finish_read(self, state: _State, layers: list[LayerStats]) -> None:
        """End a step read in one native call (:meth:`_finalize_planned`,
        :meth:`_finalize_kept`): its record, with the loss if it is known."""
        state.finalized = True
        if self._state is state:
            self._deactivate()
        loss = state.loss
        self._emit(
            state,
            float(loss.detach().float()) if isinstance(loss, torch.Tensor) else loss,
            layers,
            {},
        )

    @staticmethod
    def _queue_update(state: _State, slot: _Slot) -> int | None:
        """Queue the squared norm of ``slot``'s last update (a device scalar from the weight
        copy, or a float from the update's own sums); its index, None if there is none."""
        update = state.updates.get(slot)
        if update is None:
            return None
        if isinstance(update, float):
            update = torch.tensor(update, dtype=torch.float64)
        return state.batch.add(update)

    def _emit(
        self,
        state: _State,
        loss: float | None,
        layers: list[LayerStats],
        histograms: Histograms,
    ) -> None:
        """Append the step's record; write it now if its loss is known, else when it comes
        (:meth:`log_loss`) or when the next record is made."""
        record = StepRecord(
            step=state.step,
            loss=loss,
            layers=layers,
            histograms=histograms if self._histograms else {},
        )
        self._append(record)
        loss_given = state.loss is not None
        state.release()
        if self._unsealed is not None:
            self._seal()
        self._unsealed = _Unsealed(record, histograms)
        if loss_given:
            self._seal()

    def _append(self, record: StepRecord) -> None:
        """Add ``record`` to :attr:`records`, dropping the oldest beyond ``keep``."""
        records = self.records
        records.append(record)
        if self.keep is not None and len(records) > self.keep:
            del records[0]  # one at a time: `records` stays exactly the latest `keep`

    # ------------------------------------------------------------------ native steps, direct

    def _watching_training(self) -> bool:
        """Open, working, not paused, and the model in train mode."""
        model = self._model
        return not (self._closed or self._broken or self._paused) and (
            model is not None and model.training
        )

    def _plan_fits(self, key: object, count: int) -> bool:
        """Whether the learnt plan is for the program ``key`` with ``count`` kept tensors."""
        plan = self._kept_plan
        return plan is not None and plan.key() is key and plan.size == count

    def _record_kept(self, key: object, tensors: list[torch.Tensor]) -> bool:
        """Record a native fast step from its kept tensors (:meth:`_FastObserver.kept`).

        Replaying a step through the hook methods costs more than the step's arithmetic (about
        0.6 ms of Python per step on the reference network). The record depends only on which
        kept tensor feeds which statistic, and that is the same on every step of one layout:
        the first recorded step is replayed and, if it was plain (no note, no histogram, every
        layer called once, every statistic from a kept tensor), teaches this plan; later steps
        wait for the update's sums (:meth:`_updated`) and are recorded by
        :meth:`_finalize_kept` from the same positions. Returns False when the step must be
        replayed.
        """
        model = self._model
        if model is None or not self._watching_training():
            return False
        if not self._plan_fits(key, len(tensors)):
            self._kept_plan = None
            ids = {id(t): i for i, t in enumerate(tensors)}
            self._learning = (key, ids, self._next_step, len(self._notes))
            return False
        self._emulating = True  # no hooks to arm: nothing runs through the modules
        self._norms_given = True  # the update gives its norms (see _updated)
        try:
            self._root_begin(model, (tensors[0],))
        finally:
            self._emulating = False
            self._norms_given = False
        state = self._state
        if state is None or state.finalized or state.step != self._step or self._broken:
            return True  # counted by _root_begin, nothing (more) to record
        plan = self._kept_plan
        assert plan is not None  # _plan_fits above
        self._queue_kept(state, plan, tensors)
        return True

    def _run_plan(
        self,
        key: object,
        count: int,
        params: list[torch.Tensor],
        make: Callable[..., object | None],
    ) -> RunPlan | None:
        """:meth:`_FastObserver.run_plan`: the learnt plan bound to ``params``, kept for the
        following :meth:`_ran` (and bound again only where the plan, the parameter list or a
        weight changed)."""
        state = self._state
        if (
            not self._watching_training()
            or not self._plan_fits(key, count)
            or self._snapshot is not None
            or self._optimizer is not None
            or self._kept_waiting is not None
            or self._learning is not None
            or (state is not None and not state.finalized)
        ):
            return None
        plan = self._kept_plan
        assert plan is not None  # _plan_fits above
        run = self._run
        if run is None or run.plan is not plan or run.params is not params or not run.holds():
            run = self._run = self._bind_run(plan, params, make)
        return run

    @staticmethod
    def _bind_run(
        plan: KeptPlan, params: list[torch.Tensor], make: Callable[..., object | None]
    ) -> RunPlan | None:
        """``plan`` for the update sums of ``params`` (:meth:`_run_plan`); None where a layer's
        weight is not among them or the trainer has no native plan."""
        rows = {id(p): k for k, p in enumerate(params)}
        at: list[int] = []
        weights: list[torch.Tensor] = []
        for item in plan.layers:
            weight = item.slot.weight()
            row = rows.get(id(weight)) if weight is not None else None
            if weight is None or row is None or item.slot.depth is None:
                return None
            at.append(row)
            weights.append(weight)
        numels = tuple(w.numel() for w in weights)
        req = plan.requests
        native_plan = make(req.indices, req.kinds, req.bounds, at, numels, _stats.CANCELLATION)
        if native_plan is None:
            return None
        size = req.weights + 6 * len(plan.layers) + 1  # record_stats's numbers, the flag last
        return RunPlan(
            plan=plan,
            params=params,
            native=native_plan,
            slots=tuple(item.slot for item in plan.layers),
            weights=tuple(weights),
            numels=numels,
            fields=layer_fields(plan, weights),
            ok=size - 1,
            loss=size,
            changes=size + 1,
        )

    @_guarded
    def _ran(self, steps: int, at: list[int], records: torch.Tensor | None) -> int:
        """:meth:`_FastObserver.ran`. The steps between recorded ones are counted as
        :meth:`pass_step` counts them, without a copy of the weights: each update before a
        recorded step gave its Σ(Δθ)² (in the recorded step's row, or, for a run's first step,
        by :meth:`_updated` after the previous run)."""
        run = self._run
        rows = [] if records is None else records.tolist()
        if run is None or run.plan is not self._kept_plan or len(rows) > len(at):
            raise RuntimeError("a native run's records without the plan they were taken with")
        position = 0
        self._norms_given = True
        try:
            for pos, row in zip(at, rows, strict=False):  # rows: those taken
                if pos > position:
                    self._count_plain(pos - position)
                changes: list[Any] = (
                    [self._pending_updates.get(slot) for slot in run.slots]
                    if pos == 0
                    else row[run.changes : run.changes + len(run.slots)]
                )
                if not row[run.ok]:  # the caller shows this step from its kept tensors
                    self._pending_updates = dict(zip(run.slots, changes, strict=True))
                    return pos
                self._record_row(run, row, changes)
                position = pos + 1
            if steps > position:
                self._count_plain(steps - position)
        finally:
            self._norms_given = False
        return steps

    def _count_plain(self, steps: int) -> None:
        """Count ``steps`` unrecorded steps (:meth:`pass_step`'s counting)."""
        self._begin_forward_step()
        if steps > 1:
            self._next_step += steps - 1
            self._start(self._next_step - 1)

    def _record_row(self, run: RunPlan, row: list[float], changes: list[Any]) -> None:
        """Record the next step from its row of a native run's records (see :meth:`_ran`):
        the record :meth:`_finalize_kept` makes of the same numbers."""
        if self._unsealed is not None:
            self._seal()
        step = self._next_step
        self._next_step = step + 1
        self._step = step
        self._pending_updates = {}
        self._state = None
        layers = kept_layers(run.fields, row, changes)
        record = StepRecord(step=step, loss=row[run.loss], layers=layers, histograms={})
        self._append(record)
        self._write(record, {})

    @_guarded
    def _queue_kept(self, state: _State, plan: KeptPlan, tensors: list[torch.Tensor]) -> None:
        """Wait for the update's sums (:meth:`_updated`), which finish the step."""
        state.expects_backward = True
        self._kept_waiting = (state, plan, tensors)

    @_guarded
    def _updated(self, params: list[torch.Tensor], stats: torch.Tensor | None) -> None:
        """A fast step's update ended with its sums (:meth:`_FastObserver.updated`): finish
        the step waiting for them, and keep the update's norms for the next record."""
        given: dict[int, tuple[torch.Tensor, int]] | None = None
        rows: list[list[float]] = []
        if stats is not None:
            given = {id(p): (stats, k) for k, p in enumerate(params)}
            rows = stats.tolist()
        waiting, self._kept_waiting = self._kept_waiting, None
        if waiting is not None:
            state, plan, tensors = waiting
            if (
                not state.finalized
                and self._state is state
                and (given is None or not self._finalize_kept(state, plan, tensors, given, rows))
            ):
                self._finalize_kept_slowly(state, plan, tensors, given)
        if given is not None and self.records_next_step():
            self._snapshot = None  # the sums replace the copy (if one was taken)
            for slot in self._slots.values():
                found = given.get(id(slot.weight()))
                if found is not None:
                    self._pending_updates[slot] = rows[found[1]][4]

    def _finalize_kept(
        self,
        state: _State,
        plan: KeptPlan,
        tensors: list[torch.Tensor],
        given: dict[int, tuple[torch.Tensor, int]],
        rows: list[list[float]],
    ) -> bool:
        """The record of a step recorded from its kept tensors, in one native call.

        The statistics and the record are :meth:`_finalize`'s, with what it decides on each
        step (which tensor, which statistic) decided once by the plan (``plan.requests``), and
        the moments (:func:`_stats.from_sums`), fractions and the check that the sums suffice
        (:func:`_stats.sufficient`) done by ``record_stats`` (csrc/stats.cpp): in Python they
        cost ~80 µs a step here, run right after the step's arithmetic. ``rows``: the update's
        sums per parameter, at the row ``given`` names. Returns False, having recorded nothing,
        where :meth:`_finalize`'s precise second pass is needed (a sum that is not finite or
        that cancels) or a weight's sums are missing.
        """
        kernels = native.load()
        first = tensors[0]  # the kernel's tensors: all (batch, units) float32, on the CPU
        if (
            kernels is None
            or first.dtype != torch.float32
            or not first.is_cpu
            or first.ndim != 2
            or not first.is_contiguous()
        ):
            return False
        weights: list[torch.Tensor] = []
        at: list[int] = []
        sums: torch.Tensor | None = None
        for item in plan.layers:
            weight = item.slot.weight()
            found = given.get(id(weight)) if weight is not None else None
            if weight is None or found is None or item.slot.depth is None:
                return False
            sums = found[0]
            weights.append(weight)
            at.append(found[1])
        if sums is None:
            return False
        req = plan.requests
        values = kernels.record_stats(
            [tensors[i] for i in req.indices],
            req.kinds,
            req.bounds,
            sums,
            at,
            [w.numel() for w in weights],
            _stats.CANCELLATION,
        ).tolist()
        if not values[-1]:
            return False
        updates = state.updates
        changes = [updates.get(item.slot) for item in plan.layers]
        self._finish_read(state, kept_layers(layer_fields(plan, weights), values, changes))
        return True

    def _finalize_kept_slowly(
        self,
        state: _State,
        plan: KeptPlan,
        tensors: list[torch.Tensor],
        given: dict[int, tuple[torch.Tensor, int]] | None,
    ) -> None:
        """:meth:`_finalize` of a kept step's entries (what :meth:`_finalize_kept` declines)."""
        for item in plan.layers:
            entry = _Entry(item.slot)
            entry.calls = 1
            entry.resolved = True
            entry.status = item.status
            entry.activation = item.activation
            if item.grad is not None:
                entry.grad_ref = tensors[item.grad]
            state.entries[item.slot] = entry
            first = tensors[0]
            fill = functools.partial(self._fill_kept, state, entry, item, tensors)
            state.deferred.append((first, first._version, fill))
        self._finalize(state, given)

    def _fill_kept(
        self, state: _State, entry: _Entry, item: KeptLayer, tensors: list[torch.Tensor]
    ) -> None:
        batch = state.batch
        if item.pre is not None:
            entry.pre = _stats.moments(tensors[item.pre], batch)
        if item.act is not None:
            entry.act = _stats.moments(tensors[item.act], batch)
        if item.counts and item.pre is not None and item.activation is not None:
            self._measure_pre(state, entry, tensors[item.pre], item.activation)

    def _learn(self, state: _State, entries: list[_Entry]) -> KeptPlan | None:
        """The plan a replayed native step shows (see :meth:`_record_kept`), or None if the
        step was not plain enough to be recorded from its kept tensors alone."""
        learning, self._learning = self._learning, None
        if learning is None:
            return None
        key, ids, step, notes = learning
        if step != state.step or len(self._notes) != notes:
            return None
        if self._histograms or self._tensorboard is not None or not entries:
            return None

        missing = -1

        def index(t: torch.Tensor | None) -> int:
            return missing if t is None else ids.get(id(t), missing)

        layers = []
        for entry in sorted(entries, key=lambda e: e.slot.depth or 0):
            pre = None if entry.pre is None else index(entry.pre.ref)
            act = None if entry.act is None else index(entry.act.ref)
            grad = None if entry.grad_ref is None else index(entry.grad_ref)
            layer = None if missing in (pre, act, grad) else _kept_layer(entry, pre, act, grad)
            if layer is None:
                return None
            layers.append(layer)
        return KeptPlan(key=weakref.ref(key), size=len(ids), layers=tuple(layers))

    def _layer_stats(
        self,
        entry: _Entry,
        values: list[float],
        precise: dict[int, _stats.PreciseMoments],
        values2: list[float],
    ) -> tuple[LayerStats, dict[str, dict[str, Any]]]:
        nan = inf = 0

        def read(
            m: _stats.Moments | None, count: bool = True
        ) -> tuple[float | None, float | None, float | None]:
            nonlocal nan, inf
            if m is None:
                return None, None, None
            if id(m) in precise:
                n_nan, n_inf, mean, std, norm = precise[id(m)].host(values2)
                if count:
                    nan += n_nan
                    inf += n_inf
                return mean, std, norm
            return m.host(values)

        pre_mean, pre_std, _ = read(entry.pre)
        act_mean, act_std, _ = read(entry.act)
        _, grad_std, grad_norm = read(entry.grad)
        _, weight_std, weight_norm = read(entry.weight, count=False)
        _, wgrad_std, wgrad_norm = read(entry.weight_grad)
        saturated = entry.sat_fixed
        if entry.sat is not None and entry.sat_n:
            saturated = values[entry.sat] / entry.sat_n
        dead = entry.dead_fixed
        if entry.dead is not None and entry.dead_units:
            dead = values[entry.dead] / entry.dead_units
        ratio = None
        if entry.update is not None and weight_norm is not None:
            ratio = update_ratio(values[entry.update], weight_norm)
        slot = entry.slot
        weight = slot.weight()
        recommended = None
        if weight is not None and entry.status in ("module", "activation", "none"):
            recommended = recommended_std(entry.activation, tuple(weight.shape))
        stats = _layer_record(
            slot,
            entry.activation,
            pre=(pre_mean, pre_std),
            act=(act_mean, act_std),
            grad=(grad_std, grad_norm),
            weight_std=weight_std,
            weight_grad=(wgrad_std, wgrad_norm),
            saturated=saturated,
            dead=dead,
            update_ratio=ratio,
            recommended=recommended,
            nan=nan,
            inf=inf,
        )
        hists: dict[str, dict[str, Any]] = {}
        if entry.act_hist is not None:
            hists["act"] = entry.act_hist.host(values)
        if entry.grad_hist is not None:
            hists["grad"] = entry.grad_hist.host(values)
        return stats, hists

    def _header(self) -> dict[str, Any]:
        return header_dict(
            self.layers,
            self.notes,
            every=self.every,
            step_unit=self._step_unit,
            first_step=self.first_step,
        )

    def _seal(self) -> None:
        """Write the finished record (JSON line, TensorBoard); host work only, no device read."""
        unsealed, self._unsealed = self._unsealed, None
        if unsealed is not None:
            self._write(unsealed.record, unsealed.histograms)

    def _write(self, record: StepRecord, histograms: Histograms) -> None:
        if self._writer is not None:
            try:
                self._writer.write(self._header, record)
            except OSError as error:
                self._writer = None
                self._note("write", f"stopped writing {self.path}: {error}")
        if self._tensorboard is not None:
            _output.write_tensorboard(self._tensorboard, record, histograms)


def _layer_record(
    slot: _Slot,
    activation: activations.Activation | None,
    *,
    pre: tuple[float | None, float | None],
    act: tuple[float | None, float | None],
    grad: tuple[float | None, float | None],
    weight_std: float | None,
    weight_grad: tuple[float | None, float | None],
    saturated: float | None,
    dead: float | None,
    update_ratio: float | None,
    recommended: float | None,
    nan: int,
    inf: int,
) -> LayerStats:
    """The record of one layer on one step (``pre``/``act``: mean and std; ``grad``/
    ``weight_grad``: std and norm), by both record paths; the slot learns its activation's
    name here."""
    name = activation.name if activation is not None else None
    slot.activation = name
    assert slot.depth is not None
    return layer_stats(  # LayerStats's fields, in order
        slot.name, slot.kind, slot.depth, name, pre[0], pre[1], act[0], act[1], saturated, dead,
        grad[0], grad[1], weight_std, weight_grad[0], weight_grad[1], update_ratio, recommended,
        nan, inf,
    )  # fmt: skip


_REGIONS: dict[tuple[type, str], tuple[float, float]] = {}


def _saturation_region(activation: activations.Activation) -> tuple[float, float]:
    """``activation.saturation_region(SATURATION_FRACTION)``, cached by class and parameters."""
    key = (type(activation), activation.extra_repr())
    region = _REGIONS.get(key)
    if region is None:
        region = _REGIONS[key] = activation.saturation_region(SATURATION_FRACTION)
    return region


def _kept_layer(
    entry: _Entry, pre: int | None, act: int | None, grad: int | None
) -> KeptLayer | None:
    """Where ``entry``'s statistics come from in a plan (``pre``, ``act``, ``grad``: indices into
    a step's tensors, None where there is none), with its saturating region and dead threshold;
    None where a plan cannot read it: a layer called twice or not settled, counts without a
    pre-activation or an activation, units along a dimension other than 1 of (batch, units)."""
    counts = any(v is not None for v in (entry.sat, entry.sat_fixed, entry.dead, entry.dead_fixed))
    if entry.calls != 1 or not entry.resolved:
        return None
    region: tuple[float, float] | None = None
    dead_below: float | None = None
    if counts:
        if pre is None or entry.activation is None or entry.slot.unit_dim not in (None, -1, 1):
            return None
        lo, hi = _saturation_region(entry.activation)
        region = None if math.isinf(lo) and math.isinf(hi) else (lo, hi)
        dead_below = entry.activation.dead_below
    return KeptLayer(
        slot=entry.slot,
        status=entry.status,
        activation=entry.activation,
        pre=pre,
        act=act,
        grad=grad,
        counts=counts,
        region=region,
        dead_below=dead_below,
    )


def watch(
    model: nn.Module,
    every: int = 10,
    *,
    out: str | Path | None = None,
    tensorboard: bool = False,
    histograms: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    first_step: int = 0,
    keep: int | None = None,
) -> Monitor:
    """Record per-layer forward and backward statistics of ``model`` every ``every`` steps.

    Use it as a context manager around any training loop (hooks are removed on exit)::

        with monitor.watch(model, every=10, out="runs/a") as mon:
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
                mon.log_loss(loss)          # optional: puts the loss in the records

    A *step* is one train-mode forward call of ``model`` (or one ``optimizer.step()`` when
    ``optimizer`` is given: then the step's first forward is recorded and the weight gradients
    are read at ``optimizer.step()``, after any gradient accumulation). Steps are numbered from
    ``first_step`` (pass the global step when resuming a run); steps with
    ``step % every == 0`` are recorded, others cost only a few Python calls and never
    synchronise with the device.

    ``out``: folder for ``monitor.jsonl`` (see :mod:`steadygrad.monitor`); ``tensorboard``:
    also write ``<out>/tensorboard`` (needs ``pip install 'steadygrad[tensorboard]'``);
    ``histograms``: add 50-bin histograms of each layer's activation and back-propagated
    gradient to the records. ``keep``: how many of the latest records :attr:`Monitor.records`
    holds in memory (None: all of them; each costs ~0.7 KB per layer, so a long run recording
    often should set it); ``monitor.jsonl`` has every record either way.

    Raises:
        TypeError, ValueError: bad arguments. ImportError: tensorboard=True without TensorBoard.
        DataError: ``out`` cannot be created or written.
    """
    return Monitor(
        model,
        every,
        out=out,
        tensorboard=tensorboard,
        histograms=histograms,
        optimizer=optimizer,
        first_step=first_step,
        keep=keep,
    )


def _split_batch(batch: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, tuple | list) and len(batch) in (1, 2):
        x = batch[0]
        if isinstance(x, torch.Tensor):
            return x, (batch[1] if len(batch) == 2 else None)
    raise TypeError(
        "batch must be an input tensor x or a pair (x, y); got "
        + (
            f"a {type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, tuple | list)
            else type(batch).__name__
        )
    )


def default_loss(output: torch.Tensor, target: Any = None) -> torch.Tensor:
    """The loss :func:`probe` uses without ``loss_fn``.

    With targets: mean cross-entropy −(1/B) Σᵢ log softmax(f(xᵢ))_{yᵢ} (``F.cross_entropy``).
    Without: L = (1/(2B)) Σᵢ ‖f(xᵢ)‖², whose gradient ∂L/∂f(xᵢ) = f(xᵢ)/B back-propagates the
    output signal itself, scaled by 1/B like the cross-entropy's (softmax − onehot)/B.
    """
    if target is not None:
        return F.cross_entropy(output, target)
    batch = output.shape[0] if output.ndim >= 1 else 1
    return output.float().pow(2).sum() / (2 * batch)


def probe(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> list[LayerStats]:
    """Every statistic of every layer on one forward and backward pass of ``batch``.

    ``batch`` is ``x`` or ``(x, y)``; the loss is ``loss_fn(output, y)`` (``loss_fn(output)``
    without targets) or :func:`default_loss`. The pass runs in train mode; the model is left as
    it was: training flag, buffers (BatchNorm running statistics) and ``.grad`` of every
    parameter are restored. ``update_ratio`` is None (there is no optimizer step).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None; got {type(loss_fn).__name__}")
    x, y = _split_batch(batch)
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        model.train()
        with watch(model, every=1) as monitor, torch.enable_grad():
            output = model(x)
            if loss_fn is not None:
                loss = loss_fn(output, y) if y is not None else loss_fn(output)
            elif isinstance(output, torch.Tensor):
                loss = default_loss(output, y)
            else:
                raise TypeError(
                    f"the model returned {type(output).__name__}; the default loss needs a tensor, "
                    "pass loss_fn"
                )
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"the loss must be a scalar tensor; got {type(loss).__name__}")
            monitor.log_loss(loss)
            if loss.requires_grad:
                loss.backward()  # type: ignore[no-untyped-call]
        return monitor.records[0].layers if monitor.records else []
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        model.train(was_training)
