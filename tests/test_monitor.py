"""Tests for steadygrad.monitor: every quantity against a slow direct computation.

The references are computed here, independently of the monitor: layer outputs retained by the
test models themselves and differentiated with ``torch.autograd.grad`` (back-propagated signals),
``param.grad`` (weight gradients), masks written out from the activations' formulas (saturation,
dead units), weights copied before and after each optimizer step (update ratios),
``torch.isnan``/``isinf`` counts (non-finite values) and ``numpy.histogram`` (histograms).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import init, monitor, native
from steadygrad.errors import DataError
from steadygrad.monitor import _watch
from steadygrad.nn import Dense

TANH_HI = math.atanh(math.sqrt(0.9))  # |z| beyond which tanh' < 0.1 · max tanh' = 0.1
SIGMOID_HI = 2.0 * math.atanh(math.sqrt(0.9))  # σ'(z) < 0.1 · 1/4 beyond this


@pytest.fixture(autouse=True)
def _surface_monitor_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """In tests an internal error of the monitor raises instead of becoming a note."""
    monkeypatch.setattr(_watch, "_RAISE_INTERNAL_ERRORS", True)


@pytest.fixture(params=["native", "python"])
def gradient_hooks(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Both ways of catching ∂L/∂z: C++ hooks (GradCapture, csrc/capture.cpp) and Python ones.
    Returns the way, and asserts after the test that it was the way taken."""
    taken: list[str] = []
    python_hook = _watch.Monitor._take_gradient
    collect = _watch.Monitor._collect_gradients

    def by_python(self: _watch.Monitor, *args: Any) -> None:
        taken.append("python")
        python_hook(self, *args)

    def by_native(self: _watch.Monitor, state: Any) -> None:
        if state.captured:
            taken.append("native")
        collect(self, state)

    monkeypatch.setattr(_watch.Monitor, "_take_gradient", by_python)
    monkeypatch.setattr(_watch.Monitor, "_collect_gradients", by_native)
    if request.param == "python":
        monkeypatch.setattr(_watch, "_NATIVE_CAPTURE", False)
    elif native.load() is None:
        pytest.skip("the native kernels are not built here")
    yield request.param
    assert taken and set(taken) == {request.param}, taken


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (x10 on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- reference models
#
# Each model keeps, for each layer name, the tensors the monitor's contract talks about:
# z (the layer's affine output), pre (the activation's input), act (its output, or the next
# layer's input), and the activation's name. The monitor never sees these dicts.


class Kept(nn.Module):
    kept: dict[str, dict[str, Any]]

    def keep(self, name: str, z: torch.Tensor, pre: torch.Tensor, act: torch.Tensor,
             activation: str | None, unit_dim: int = -1) -> None:  # fmt: skip
        self.kept[name] = {
            "z": z, "pre": pre, "act": act, "activation": activation, "unit_dim": unit_dim
        }  # fmt: skip


class ModuleMLP(Kept):
    """Linear → Tanh → Linear → ReLU → Linear, with saturated tanh units and dead ReLU units."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.fc1 = nn.Linear(6, 16)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(16, 12)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(12, 4)
        with torch.no_grad():
            self.fc1.weight.normal_(0.0, 1.0, generator=g)  # |z| > 1.82 often: saturated tanh
            self.fc2.bias[:3] = -50.0  # three ReLU units never fire: dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = {}
        z1 = self.fc1(x)
        a1 = self.act1(z1)
        z2 = self.fc2(a1)
        a2 = self.act2(z2)
        z3 = self.fc3(a2)
        self.keep("fc1", z1, z1, a1, "tanh")
        self.keep("fc2", z2, z2, a2, "relu")
        self.keep("fc3", z3, z3, z3, None)
        return z3


class FunctionalMLP(Kept):
    """Activations as functions: F.relu, torch.sigmoid, torch.tanh in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 8)
        self.fc4 = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.bias[:4] = -50.0
            self.fc2.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = {}
        z1 = self.fc1(x)
        a1 = F.relu(z1)
        z2 = self.fc2(a1)
        a2 = torch.sigmoid(z2)
        z3 = self.fc3(a2)
        a3 = torch.tanh(z3)
        z4 = self.fc4(a3)
        self.keep("fc1", z1, z1, a1, "relu")
        self.keep("fc2", z2, z2, a2, "sigmoid")
        self.keep("fc3", z3, z3, a3, "tanh")
        self.keep("fc4", z4, z4, z4, None)
        return z4


class SmallCNN(Kept):
    """Conv2d → ReLU → MaxPool → Conv2d → ReLU → Flatten → Linear; dead channels in conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6 * 3 * 3, 5)
        with torch.no_grad():
            self.conv2.bias[:2] = -50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = {}
        z1 = self.conv1(x)
        a1 = self.relu1(z1)
        z2 = self.conv2(self.pool(a1))
        a2 = self.relu2(z2)
        z3 = self.fc(a2.flatten(1))
        self.keep("conv1", z1, z1, a1, "relu", unit_dim=1)
        self.keep("conv2", z2, z2, a2, "relu", unit_dim=1)
        self.keep("fc", z3, z3, z3, None)
        return z3


class ResidualMLP(Kept):
    """x → relu(fc_in) → [h = relu(fc1(x)); relu(x + fc2(h))] → fc_out, one ReLU module reused."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(6, 10)
        self.fc1 = nn.Linear(10, 10)
        self.fc2 = nn.Linear(10, 10)
        self.fc_out = nn.Linear(10, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = {}
        z0 = self.fc_in(x)
        h0 = self.act(z0)
        z1 = self.fc1(h0)
        h1 = self.act(z1)
        z2 = self.fc2(h1)
        s = h0 + z2
        out = self.act(s)
        z3 = self.fc_out(out)
        self.keep("fc_in", z0, z0, h0, "relu")
        self.keep("fc1", z1, z1, h1, "relu")
        self.keep("fc2", z2, s, out, "relu")  # the activation that follows sees x + fc2(h)
        self.keep("fc_out", z3, z3, z3, None)
        return z3


class LinearTwinOfDense(Kept):
    """The Linear + activation-module twin of DENSE_MODEL, sharing its parameters."""

    def __init__(self, dense: nn.Sequential) -> None:
        super().__init__()
        self.d = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = {}
        h = x
        for index, layer in enumerate(self.d):
            z = F.linear(h, layer.weight, layer.bias)
            a = layer.activation(z) if layer.activation is not None else z
            name = str(index)
            activation = layer.activation.name if layer.activation is not None else None
            self.keep(name, z, z, a, activation)
            h = a
        return h


def dense_model() -> nn.Sequential:
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        Dense(6, 16, activation="tanh", kernel_initializer={"name": "normal", "std": 1.0},
              generator=g),
        Dense(16, 12, activation="relu", generator=g),
        Dense(12, 4, generator=g),
    )  # fmt: skip
    with torch.no_grad():
        model[1].bias[:3] = -50.0  # dead units
    return model


def batch(shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)


# --------------------------------------------------------------------------- reference values


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, mon: monitor.Monitor) -> None:  # fmt: skip
    """One step of a hand-written loop, its loss shown to ``mon``."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    mon.log_loss(loss)


def mean_std_norm(t: torch.Tensor) -> tuple[float, float, float]:
    d = t.detach().double()
    return d.mean().item(), d.std(correction=0).item(), d.norm().item()


def expected_saturated(pre: torch.Tensor, activation: str | None) -> float | None:
    """Fraction of entries where f'(z) < 0.1 · max f', from the formulas (masks by hand)."""
    p = pre.detach()
    if activation == "tanh":
        return (p.abs() > TANH_HI).double().mean().item()
    if activation == "sigmoid":
        return (p.abs() > SIGMOID_HI).double().mean().item()
    if activation == "relu":
        return 0.0  # piecewise linear: no saturating region (its zero side is "dead")
    return None


def expected_dead(pre: torch.Tensor, activation: str | None, unit_dim: int) -> float | None:
    """Fraction of units (features/channels) with f' = 0 for every sample and position."""
    p = pre.detach()
    if activation == "relu":
        units = p.movedim(unit_dim, 0).reshape(p.shape[unit_dim], -1)  # (units, samples·pos)
        zero_derivative = units <= 0.0  # torch's relu'(0) = 0
        return zero_derivative.all(dim=1).double().mean().item()
    if activation in ("tanh", "sigmoid"):
        return 0.0
    return None


def assert_close(got: float | None, want: float | None, rel: float = 1e-5, abs_: float = 1e-7,
                 what: str = "") -> None:  # fmt: skip
    if want is None:
        assert got is None, f"{what}: expected None, got {got}"
        return
    assert got is not None, f"{what}: expected {want}, got None"
    assert got == pytest.approx(want, rel=rel, abs=abs_), f"{what}: {got} != {want}"


def check_record(record: monitor.StepRecord, model: Kept, loss_fn: Callable[..., torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor) -> None:  # fmt: skip
    """Every field of ``record`` against a fresh, unmonitored forward/backward on the same batch
    (the weights have not changed: the record is taken before any optimizer step)."""
    out = model(x)
    loss = loss_fn(out, y)
    kept = model.kept
    names = [stats.name.split(".")[-1] for stats in record.layers]
    assert names == list(kept), (names, list(kept))
    zs = [kept[name]["z"] for name in names]
    back = torch.autograd.grad(loss, zs, retain_graph=True)
    layers = [
        getattr(model, n) if hasattr(model, n) else model.d[int(n)]  # type: ignore[index]
        for n in names
    ]
    weight_grads = torch.autograd.grad(loss, [layer.weight for layer in layers])
    for depth, (stats, name, g_z, g_w, layer) in enumerate(
        zip(record.layers, names, back, weight_grads, layers, strict=True), start=1
    ):
        k = kept[name]
        what = f"{type(model).__name__}.{name}"
        assert stats.depth == depth
        assert stats.kind == type(layer).__name__
        assert stats.activation == k["activation"], what
        pre_mean, pre_std, _ = mean_std_norm(k["pre"])
        act_mean, act_std, _ = mean_std_norm(k["act"])
        assert_close(stats.pre_mean, pre_mean, what=what + " pre_mean", abs_=1e-6)
        assert_close(stats.pre_std, pre_std, what=what + " pre_std")
        assert_close(stats.act_mean, act_mean, what=what + " act_mean", abs_=1e-6)
        assert_close(stats.act_std, act_std, what=what + " act_std")
        _, g_std, g_norm = mean_std_norm(g_z)
        assert_close(stats.grad_out_std, g_std, what=what + " grad_out_std", rel=1e-4)
        assert_close(stats.grad_out_norm, g_norm, what=what + " grad_out_norm", rel=1e-5)
        _, w_std, _ = mean_std_norm(layer.weight)
        assert_close(stats.weight_std, w_std, what=what + " weight_std")
        _, gw_std, gw_norm = mean_std_norm(g_w)
        assert_close(stats.weight_grad_std, gw_std, what=what + " weight_grad_std", rel=1e-4)
        assert_close(stats.weight_grad_norm, gw_norm, what=what + " weight_grad_norm")
        assert_close(stats.saturated, expected_saturated(k["pre"], k["activation"]), what=what)
        assert_close(stats.dead, expected_dead(k["pre"], k["activation"], k["unit_dim"]), what=what)
        want_std = init.recommended(k["activation"]).std(tuple(layer.weight.shape))
        assert_close(stats.recommended_std, want_std, what=what + " recommended_std")
        assert stats.update_ratio is None  # no optimizer step before the first record
        assert (stats.nan, stats.inf) == (0, 0)


MODELS: dict[str, Callable[[], tuple[Kept, tuple[torch.Tensor, torch.Tensor]]]] = {
    "module activations": lambda: (ModuleMLP(), batch((32, 6), 4)),
    "functional activations": lambda: (FunctionalMLP(), batch((32, 6), 3)),
    "small CNN": lambda: (SmallCNN(), batch((8, 1, 12, 12), 5)),
    "residual MLP": lambda: (ResidualMLP(), batch((32, 6), 3)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_quantity_matches_direct_computation(name: str, gradient_hooks: str) -> None:
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    with monitor.watch(model, every=1) as mon:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    (record,) = mon.records
    assert mon.notes == []
    # weight-gradient norms against param.grad, as the optimizer will see them
    for stats in record.layers:
        weight = model.get_submodule(stats.name).weight
        assert weight.grad is not None
        assert_close(stats.weight_grad_norm, weight.grad.double().norm().item(), what=stats.name)
    check_record(record, model, F.cross_entropy, x, y)
    if name == "module activations":  # the test models do exercise the interesting cases
        assert 0.05 < record.layer("fc1").saturated < 0.95  # type: ignore[operator]
        assert record.layer("fc2").dead == pytest.approx(3 / 12)
    if name == "small CNN":
        assert record.layer("conv2").dead == pytest.approx(2 / 6)


def test_dense_with_its_own_activation_is_measured_at_its_affine_output() -> None:
    model = dense_model()
    x, y = batch((32, 6), 4)
    with monitor.watch(model, every=1) as mon:
        F.cross_entropy(model(x), y).backward()
    (record,) = mon.records
    assert [s.activation for s in record.layers] == ["tanh", "relu", None]
    assert [s.kind for s in record.layers] == ["Dense", "Dense", "Dense"]
    twin = LinearTwinOfDense(model)
    for layer in model:
        layer.weight.grad = None
    check_record(record, twin, F.cross_entropy, x, y)
    assert record.layers[0].saturated > 0.05  # type: ignore[operator]  # N(0, 1) weights


@pytest.mark.parametrize("every", [1, 3])
def test_update_ratio_against_weights_before_and_after_each_step(every: int) -> None:
    """The update ratio and the weight's std of each record against the weights each step's
    forward used. At every=1 (each step both recorded and the one before a record) one native
    pass measures the update, gives W's moments and refreshes the copy (``_measure_updates``
    with ``copy``): the copy is then taken only once, before the first update."""
    torch.manual_seed(0)
    model, (x, y) = ModuleMLP(), batch((32, 6), 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    layers = [model.fc1, model.fc2, model.fc3]
    weights: list[list[torch.Tensor]] = []  # weights used by the forward of each step
    copies: list[int] = []
    original = _watch.Monitor._take_snapshot

    def counting(self: Any) -> None:
        copies.append(1)
        original(self)

    with pytest.MonkeyPatch.context() as mp, monitor.watch(model, every=every) as mon:
        mp.setattr(_watch.Monitor, "_take_snapshot", counting)
        for _ in range(8):
            weights.append([layer.weight.detach().clone() for layer in layers])
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert [r.step for r in mon.records] == list(range(0, 8, every))
    assert all(s.update_ratio is None for s in mon.records[0].layers)
    for record in mon.records[1:]:
        for stats, before, now in zip(
            record.layers, weights[record.step - 1], weights[record.step], strict=True
        ):
            want = ((now - before).double().norm() / now.double().norm()).item()
            assert want > 0
            assert_close(stats.update_ratio, want, rel=1e-4, what=stats.name)
            assert_close(stats.weight_std, mean_std_norm(now)[1], what=stats.name)
    # a copy before each step before a record (every step at every=1), or, fused, just once
    if every == 1 and native.load() is not None:
        assert len(copies) == 1
    else:
        assert len(copies) == (8 if every == 1 else len(mon.records) - 1)


def _count_planned(mp: pytest.MonkeyPatch, planned: list[int]) -> None:
    """Append to ``planned`` the step of each recorded step the plan reads
    (``Monitor._finalize_planned`` returning True)."""
    original = _watch.Monitor._finalize_planned

    def counting(self: _watch.Monitor, state: Any) -> bool:
        read = original(self, state)
        if read:
            planned.append(state.step)
        return read

    mp.setattr(_watch.Monitor, "_finalize_planned", counting)


def test_optimizer_steps_are_the_steps_and_accumulated_gradients_are_read(
    monkeypatch: pytest.MonkeyPatch, gradient_hooks: str
) -> None:
    """Also the direct check of a step read by the plan (step 4: step 0 is measured at once,
    step 2 teaches the plan)."""
    planned: list[int] = []
    _count_planned(monkeypatch, planned)
    torch.manual_seed(0)
    model, (x, y) = ModuleMLP(), batch((32, 6), 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    grads, before_after = [], []
    with monitor.watch(model, every=2, optimizer=optimizer) as mon:
        for _ in range(5):
            optimizer.zero_grad()
            for xs, ys in ((x[:16], y[:16]), (x[16:], y[16:])):  # two micro-batches per step
                (F.cross_entropy(model(xs), ys) / 2).backward()
            grads.append(model.fc1.weight.grad.detach().clone())  # type: ignore[union-attr]
            before = model.fc1.weight.detach().clone()
            optimizer.step()
            before_after.append((before, model.fc1.weight.detach().clone()))
    assert [r.step for r in mon.records] == [0, 2, 4]
    assert mon._header()["step_unit"] == "optimizer_step"
    assert planned == [4] or native.load() is None
    for record in mon.records:
        fc1 = record.layer("fc1")
        assert_close(fc1.weight_grad_norm, grads[record.step].double().norm().item())
        if record.step:
            before, after = before_after[record.step - 1]
            want = ((after - before).double().norm() / after.double().norm()).item()
            assert_close(fc1.update_ratio, want, rel=1e-4)


def test_saturation_and_dead_counts_on_known_inputs() -> None:
    """A single layer with hand-set pre-activations: the counts are known exactly."""
    layer = nn.Linear(4, 4, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
        layer.bias.zero_()
    x = torch.tensor(
        [[3.0, 0.5, -1.0, 0.0], [-2.5, 0.1, -3.0, 0.0], [1.9, -0.2, -0.5, 0.0]],
        requires_grad=True,
    )
    for activation, saturated, dead in [
        (nn.Tanh(), 4 / 12, 0.0),  # |z| > 1.818: 3.0, -2.5, 1.9, -3.0
        (nn.Sigmoid(), 0 / 12, 0.0),  # |z| > 3.636: none
        (nn.ReLU(), 0.0, 2 / 4),  # units 2 (always < 0) and 3 (always 0) never fire
        (nn.ELU(), 0 / 12, 0.0),  # saturated below ln(0.1) = -2.303: -2.5, -3.0 → 2
    ]:
        model = nn.Sequential(layer, activation)
        stats = monitor.probe(model, x)
        if isinstance(activation, nn.ELU):
            saturated = 2 / 12
        assert stats[0].saturated == pytest.approx(saturated), activation
        assert stats[0].dead == pytest.approx(dead), activation


def test_nan_and_inf_are_counted_and_training_continues() -> None:
    torch.manual_seed(0)
    model = ModuleMLP()
    with torch.no_grad():
        model.fc1.weight[0, 0] = math.inf  # unit 0 of fc1: ±inf, then tanh(±inf) = ±1
        model.fc2.weight[1, 1] = math.nan  # unit 1 of fc2: NaN onwards
    x, y = batch((16, 6), 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with monitor.watch(model, every=2) as mon:
        for _ in range(4):  # the NaN spreads to every weight through the update: no exception
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.log_loss(loss)
    assert [r.step for r in mon.records] == [0, 2]
    first = mon.records[0]
    assert first.loss is not None and math.isnan(first.loss)
    assert first.layer("fc2").nan > 0
    # exact counts: a monitored step and, on the same weights, the reference pass
    model = ModuleMLP()
    with torch.no_grad():
        model.fc1.weight[0, 0] = math.inf
        model.fc2.weight[1, 1] = math.nan
    with monitor.watch(model, every=1) as mon2:
        F.cross_entropy(model(x), y).backward()
    names = ["fc1", "fc2", "fc3"]
    ref_out = model(x)
    ref_loss = F.cross_entropy(ref_out, y)
    zs = [model.kept[n]["z"] for n in names]
    grads = torch.autograd.grad(ref_loss, zs, retain_graph=True)
    wgrads = torch.autograd.grad(ref_loss, [getattr(model, n).weight for n in names])
    (record,) = mon2.records
    total_nan = total_inf = 0
    for stats, name, g, gw in zip(record.layers, names, grads, wgrads, strict=True):
        k = model.kept[name]
        tensors = [k["pre"], k["act"], g, gw]
        nan = sum(int(torch.isnan(t).sum()) for t in tensors)
        inf = sum(int(torch.isinf(t).sum()) for t in tensors)
        assert (stats.nan, stats.inf) == (nan, inf), name
        total_nan += nan
        total_inf += inf
        # mean and std are over the finite entries
        pre = k["pre"].detach().double()
        finite = pre[torch.isfinite(pre)]
        if finite.numel():
            assert_close(stats.pre_mean, finite.mean().item(), abs_=1e-6, what=name)
            assert_close(stats.pre_std, finite.std(correction=0).item(), what=name)
    assert total_nan > 0 and total_inf > 0
    line = json.dumps(record.to_dict(), allow_nan=False)  # strict JSON despite the NaNs
    assert "NaN" not in line


def test_monitoring_changes_neither_outputs_nor_gradients() -> None:
    def train(watched: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(3 * 5 * 5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2),
            nn.Linear(8, 4),
        )  # fmt: skip
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = batch((6, 1, 12, 12), 4, seed=5)
        outputs = []
        mon = monitor.watch(model, every=2, histograms=True) if watched else None
        for _ in range(5):
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            outputs.append(out.detach().clone())
        if mon is not None:
            mon.close()
            assert len(mon.records) == 3
        return outputs, [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]

    out_a, grads_a = train(False)
    out_b, grads_b = train(True)
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_no_host_synchronisation_on_unrecorded_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unrecorded steps read nothing; a recorded step reads its values in one ``Batch.read``,
    or, read by a plan, in one native call's ``tolist()``.

    (On CPU ``Batch.read`` uses ``item()`` per value, which is cheaper there than a stack; on a
    GPU it is one ``tolist()``. Either way no device value is read outside it: the weight
    pass and the plan's call are native kernels over CPU tensors.)
    """
    from steadygrad.monitor import _stats

    torch.manual_seed(0)
    model = ModuleMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch((16, 6), 4)
    reads: list[str] = []  # host reads made outside Batch.read
    batch_reads: list[int] = []
    inside = [False]

    def counting(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                reads.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    original_read = _stats.Batch.read

    def counted_read(self: _stats.Batch) -> list[float]:
        batch_reads.append(len(self))
        inside[0] = True
        try:
            return original_read(self)
        finally:
            inside[0] = False

    def step(mon: monitor.Monitor) -> None:
        train_step(model, optimizer, x, y, mon)

    with monitor.watch(model, every=5) as mon:
        step(mon)  # step 0, recorded
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy"):
            counting(name)
        monkeypatch.setattr(_stats.Batch, "read", counted_read)
        for _ in range(4):  # steps 1-4, snapshot for the update ratio included (step 4)
            step(mon)
        assert reads == [] and batch_reads == []
        step(mon)  # step 5, recorded: the statistics in one read, then the loss
        assert len(batch_reads) == 1 and batch_reads[0] > 10
        # the weight pass's rows (a native kernel's CPU result, read once), log_loss's loss
        assert reads == ["tolist", "item"]
        reads.clear()
        for _ in range(4):
            step(mon)
        assert reads == []
        step(mon)  # step 10, read by the plan step 5 taught: one native call, one read
        assert len(batch_reads) == 1
        assert reads == ["tolist", "tolist", "item"]
        monkeypatch.undo()
    assert [r.step for r in mon.records] == [0, 5, 10]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc sees deprecated torch objects
def test_hooks_are_removed_and_nothing_leaks_over_many_watches(gradient_hooks: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Dense(5, 8, activation="relu"), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 2))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch((4, 5), 2)

    def cycle(k: int) -> None:
        with monitor.watch(model, every=1 + k % 3, optimizer=optimizer if k % 2 else None) as m:
            if k % 4 == 0:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                m.log_loss(loss)
        optimizer.zero_grad(set_to_none=True)

    def tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for k in range(8):
        cycle(k)
    before = tensors()
    for k in range(200):
        cycle(k)
    assert tensors() == before
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
    assert not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


def test_jsonl_round_trip_with_histograms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ModuleMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch((16, 6), 4)
    with monitor.watch(model, every=2, out=tmp_path, histograms=True) as mon:
        for _ in range(5):
            train_step(model, optimizer, x, y, mon)
    log = monitor.read(tmp_path)  # the folder or the file
    assert log.path == tmp_path / "monitor.jsonl"
    assert log.records == mon.records
    assert log.layers == mon.layers
    assert [layer.weight_shape for layer in log.layers] == [(16, 6), (12, 16), (4, 12)]
    assert log.header["format"] == "steadygrad.monitor/1"
    assert log.header["every"] == 2 and log.header["step_unit"] == "forward"
    assert log.steps == [0, 2, 4]
    assert all(r.loss is not None for r in log.records)
    series = log.series("act_std")
    assert list(series) == ["fc1", "fc2", "fc3"]
    assert series["fc2"] == [r.layer("fc2").act_std for r in log.records]
    lines = (tmp_path / "monitor.jsonl").read_text().splitlines()
    assert len(lines) == 4
    header = json.loads(lines[0])
    assert set(header) >= {"format", "layers", "notes"}
    assert set(header["layers"][0]) == {"name", "kind", "depth", "activation", "weight_shape"}
    first = json.loads(lines[1])
    assert set(first) == {"step", "loss", "layers", "histograms"}
    assert list(first["layers"][0]) == list(monitor.LAYER_STATS_KEYS)
    assert set(first["histograms"]["fc1"]) == {"act", "grad"}


def test_histograms_match_numpy(tmp_path: Path) -> None:
    model = ModuleMLP()
    x, y = batch((32, 6), 4)
    with monitor.watch(model, every=1, histograms=True) as mon:
        F.cross_entropy(model(x), y).backward()
    (record,) = mon.records
    out = model(x)
    g = torch.autograd.grad(F.cross_entropy(out, y), model.kept["fc2"]["z"])[0]
    for which, tensor in (("act", model.kept["fc1"]["act"]), ("grad", g)):
        hist = record.histograms["fc1" if which == "act" else "fc2"][which]
        values = tensor.detach().double().numpy().ravel()
        m = np.abs(values).max()
        edges = np.asarray(hist["edges"])
        assert len(edges) == monitor.HISTOGRAM_BINS + 1
        np.testing.assert_allclose(edges, np.linspace(-m, m, monitor.HISTOGRAM_BINS + 1),
                                   rtol=1e-6)  # fmt: skip
        counts, _ = np.histogram(values, bins=edges)
        assert sum(hist["counts"]) == values.size
        assert np.abs(np.asarray(hist["counts"]) - counts).sum() <= 2  # float32 edge rounding


def test_tensorboard_event_files(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    model = ModuleMLP()
    x, y = batch((16, 6), 4)
    with monitor.watch(model, every=1, out=tmp_path, tensorboard=True) as mon:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        mon.log_loss(loss)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "fc2/grad_out_norm" in scalars and "loss" in scalars
    value = acc.Scalars("fc2/grad_out_norm")[0].value
    assert value == pytest.approx(mon.records[0].layer("fc2").grad_out_norm, rel=1e-6)
    assert {"fc1/act", "fc1/grad"} <= set(acc.Tags()["histograms"])


def test_tensorboard_missing_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'steadygrad\[tensorboard\]'"):
        monitor.watch(nn.Linear(2, 2), out=tmp_path, tensorboard=True)
    assert not (tmp_path / "monitor.jsonl").exists()


# --------------------------------------------------------------------------- steps and modes


def test_eval_forwards_are_not_steps_and_first_step_offsets_the_count() -> None:
    model = ModuleMLP()
    x, y = batch((8, 6), 4)
    with monitor.watch(model, every=2, first_step=7) as mon:
        for _ in range(4):
            model.train()
            F.cross_entropy(model(x), y).backward()
            model.eval()
            with torch.no_grad():
                model(x)
    assert [r.step for r in mon.records] == [8, 10]
    assert mon.step == 10


def test_resumed_log_keeps_earlier_records(tmp_path: Path) -> None:
    model = ModuleMLP()
    x, y = batch((8, 6), 4)

    def run(first: int, steps: int) -> None:
        with monitor.watch(model, every=2, out=tmp_path, first_step=first):
            for _ in range(steps):
                F.cross_entropy(model(x), y).backward()

    run(0, 7)  # records 0, 2, 4, 6; "interrupted" after step 6
    run(4, 4)  # resumed at step 4: records 4, 6 again
    assert monitor.read(tmp_path).steps == [0, 2, 4, 6]
    run(0, 1)
    assert monitor.read(tmp_path).steps == [0]


def test_probe_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.eval()
    x, y = batch((16, 6), 3)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = copy.deepcopy(model.state_dict())
    layers = monitor.probe(model, (x, y))
    assert [s.name for s in layers] == ["0", "3"]
    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[3].weight.grad is None
    # the same numbers as a monitored train-mode step with cross-entropy
    model.train()
    model[0].weight.grad = None
    with monitor.watch(model, every=1) as mon:
        F.cross_entropy(model(x), y).backward()
    assert mon.records[0].layers == layers


def test_probe_default_loss_without_targets() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(10, 5)
    layers = monitor.probe(model, x)
    out = model(x)
    assert_close(monitor.default_loss(out).item(), (out.pow(2).sum() / 20).item())
    g = torch.autograd.grad(monitor.default_loss(out), out)[0]
    assert torch.allclose(g, out.detach() / 10)  # ∂L/∂f = f/B
    assert_close(layers[1].grad_out_norm, g.double().norm().item())
    custom = monitor.probe(model, (x, None), loss_fn=lambda o: o.sum())
    assert_close(custom[1].grad_out_norm, math.sqrt(30))  # ∂(Σf)/∂f = 1


# --------------------------------------------------------------------------- odd modules


class TwiceAndOpaque(nn.Module):
    """A layer called twice per forward, a module with a weight whose output the monitor
    cannot read, an unknown activation function and a rank-2 parameter not called weight."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.odd = Odd()
        self.proj = nn.Linear(6, 6)
        self.last = nn.Linear(6, 2)
        self.mixer = Mixer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(x))))
        h = self.odd(h)
        h = F.hardtanh(self.proj(h))
        return self.last(self.mixer(h))


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.sum()  # output (B, 6): no dimension of size 3


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.eye(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.kernel


def test_odd_modules_are_skipped_or_noted_without_breaking_training() -> None:
    model = TwiceAndOpaque()
    initial = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch((8, 6), 2)
    with monitor.watch(model, every=1) as mon:
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert [s.name for s in mon.records[-1].layers] == ["shared", "proj", "last"]
    notes = "\n".join(mon.notes)
    assert "odd (Odd) is not monitored: no dimension of its output (8, 6) has" in notes
    assert "shared ran 2 times in one forward pass" in notes
    assert "the activation after proj (HardtanhBackward0) is not one steadygrad knows" in notes
    assert "mixer (Mixer) has parameters of rank >= 2 (kernel) but no `weight`" in notes
    shared = mon.records[0].layer("shared")
    assert shared.activation == "tanh"
    # the first call's statistics: its pre-activation is shared(x) with the step-0 weights
    torch.manual_seed(0)
    fresh = TwiceAndOpaque()
    fresh.load_state_dict(initial)
    assert_close(shared.pre_std, mean_std_norm(fresh.shared(x))[1])
    proj = mon.records[0].layer("proj")
    assert proj.activation is None and proj.saturated is None and proj.recommended_std is None
    assert mon.layers[0].name == "shared" and mon.records[0].layer("last").activation is None


def test_inplace_activations(gradient_hooks: str) -> None:
    """ReLU(inplace=True) as a module and F.relu(inplace=True): pre measured before overwrite."""

    class Inplace(Kept):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 10)
            self.act = nn.ReLU(inplace=True)
            self.fc2 = nn.Linear(10, 10)
            self.fc3 = nn.Linear(10, 3)
            with torch.no_grad():
                self.fc2.bias[:4] = -50.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z1 = self.fc1(x)
            z2 = self.fc2(self.act(z1))
            return self.fc3(F.relu(z2, inplace=True))

    model = Inplace()
    x, y = batch((16, 6), 3)
    with monitor.watch(model, every=1) as mon:
        F.cross_entropy(model(x), y).backward()
    (record,) = mon.records
    z1 = model.fc1(x)
    z2 = model.fc2(torch.relu(z1))
    loss = F.cross_entropy(model.fc3(torch.relu(z2)), y)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    fc1, fc2 = record.layer("fc1"), record.layer("fc2")
    assert_close(fc1.pre_std, mean_std_norm(z1)[1])
    assert_close(fc1.grad_out_norm, g1.double().norm().item())
    assert_close(fc2.grad_out_norm, g2.double().norm().item())
    assert fc2.activation == "relu"
    assert fc2.dead == pytest.approx(expected_dead(z2, "relu", -1))
    assert fc2.dead >= 4 / 10  # type: ignore[operator]


def test_gradients_through_custom_functions_and_nodes_with_several_outputs(
    gradient_hooks: str,
) -> None:
    """∂L/∂z where z is the second output of its autograd node (``torch.split``) or the output
    of a custom ``autograd.Function`` (a Python node), against ``torch.autograd.grad``."""

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            return g * 2

    class SecondHalf(nn.Module):  # z: output 1 of SplitBackward0
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 6) * 0.3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.split(x @ self.weight.t(), 5, dim=0)[1]

    class Doubled(nn.Module):  # z: made by a custom Function
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8) * 0.3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Double.apply(x @ self.weight.t())  # type: ignore[no-any-return]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = SecondHalf(), Doubled(), nn.Linear(8, 3)
            self.zs: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            za = self.a(x)
            zb = self.b(torch.tanh(za))
            self.zs = [za, zb]
            return self.c(torch.relu(zb))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (5,))
    with monitor.watch(net, every=1) as mon:
        F.cross_entropy(net(x), y).backward()
    (record,) = mon.records
    assert mon.notes == []
    loss = F.cross_entropy(net(x), y)
    for name, grad in zip("ab", torch.autograd.grad(loss, net.zs), strict=True):
        assert_close(record.layer(name).grad_out_norm, grad.double().norm().item(), what=name)


@pytest.mark.parametrize("raising", [True, False])
def test_an_error_at_the_end_of_backward_reaches_the_caller_or_becomes_a_note(
    monkeypatch: pytest.MonkeyPatch, gradient_hooks: str, raising: bool
) -> None:
    """The step is read by a callback the gradient hooks queue (from C++ with native hooks):
    a monitor bug there raises its own exception out of ``backward()`` in tests, and for users
    stops the monitor with a note while training goes on."""
    monkeypatch.setattr(_watch, "_RAISE_INTERNAL_ERRORS", raising)

    finalize = _watch.Monitor._finalize

    def broken(self: _watch.Monitor, state: Any, given: Any = None) -> None:
        self._collect_gradients(state)
        monkeypatch.setattr(_watch.Monitor, "_finalize", finalize)  # once
        raise ZeroDivisionError("a monitor bug")

    model, (x, y) = ModuleMLP(), batch((8, 6), 4)
    with monitor.watch(model, every=1) as mon:
        loss = F.cross_entropy(model(x), y)
        monkeypatch.setattr(_watch.Monitor, "_finalize", broken)
        if raising:
            with pytest.raises(ZeroDivisionError, match="a monitor bug"):
                loss.backward()
        else:
            loss.backward()
            assert model.fc1.weight.grad is not None  # the backward pass itself completed
            assert any("a monitor bug" in note for note in mon.notes), mon.notes
            F.cross_entropy(model(x), y).backward()  # training goes on, unmonitored
    assert len(mon.records) == (1 if raising else 0)  # raised: read again when watching ends


@pytest.mark.parametrize("planned", [True, False])
def test_keep_holds_the_latest_records_and_the_log_has_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planned: bool
) -> None:
    if not planned:
        monkeypatch.setattr(_watch.Monitor, "_finalize_planned", lambda self, state: False)
    torch.manual_seed(0)
    model, (x, y) = ModuleMLP(), batch((16, 6), 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with monitor.watch(model, every=2, out=tmp_path, keep=3) as mon:
        for k in range(20):
            train_step(model, optimizer, x, y, mon)
            assert len(mon.records) == min(k // 2 + 1, 3)
    assert [r.step for r in mon.records] == [14, 16, 18]
    assert monitor.read(tmp_path / "monitor.jsonl").steps == list(range(0, 20, 2))


def test_compiled_autograd_is_noted_and_training_goes_on() -> None:
    """Compiled autograd traces the backward pass, where neither gradient hook can run (a C++
    one fails, a Python one's callback needs fullgraph): the monitor leaves ∂L/∂z out, with a
    note, and records as usual once it is off again."""
    from torch._dynamo import compiled_autograd

    torch.manual_seed(0)
    model, (x, y) = ModuleMLP(), batch((8, 6), 4)
    with monitor.watch(model, every=1) as mon:
        with compiled_autograd._enable(torch.compile(backend="eager")):
            F.cross_entropy(model(x), y).backward()
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    assert mon.notes == [
        "compiled autograd is on: its backward pass cannot run the monitor's gradient hooks, "
        "so back-propagated gradients are not recorded while it is"
    ]
    first, second = mon.records
    assert first.layer("fc1").grad_out_norm is None
    assert second.layer("fc1").grad_out_norm is not None
    assert model.fc1.weight.grad is not None


def test_a_step_in_which_no_layer_reports_is_noted() -> None:
    """Layers used without calling them (their weights through ``F.linear``), as a compiled
    model's code does: the record has no layers, and a note says why, once."""

    class Bypass(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.fc.weight, self.fc.bias)

    model, (x, y) = Bypass(), batch((8, 6), 4)
    with monitor.watch(model, every=1) as mon:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
    assert [r.layers for r in mon.records] == [[], [], []]
    assert mon.notes == [
        "no layer reported on recorded step 0, and its record has no layers: the model's "
        "forward did not call its layers as modules (through __call__), so their hooks never ran"
    ]


def test_no_layers_and_no_backward() -> None:
    with monitor.watch(nn.Sequential(nn.ReLU(), nn.Tanh()), every=1) as mon:
        mon.log_loss(1.0)
    assert "nothing to monitor" in mon.notes[0]
    model = ModuleMLP()
    with monitor.watch(model, every=1) as mon2, torch.no_grad():
        model(torch.randn(4, 6))  # forward only: recorded without gradients
    (record,) = mon2.records
    assert record.layer("fc1").grad_out_norm is None
    assert record.layer("fc1").weight_grad_norm is None
    assert record.layer("fc1").pre_std is not None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "net"}, TypeError, "model must be a torch.nn.Module; got str"),
        (
            {"every": 0},
            ValueError,
            r"every must be a positive int \(record every N-th step\); got 0",
        ),
        ({"every": 2.5}, TypeError, "every must be a positive int .*got 2.5"),
        ({"every": True}, TypeError, "every must be a positive int .*got True"),
        ({"first_step": -1}, ValueError, "first_step must be an int >= 0; got -1"),
        (
            {"keep": 0},
            ValueError,
            r"keep must be a positive int \(the latest records kept in memory\) or None \(all\); "
            "got 0",
        ),
        ({"keep": True}, ValueError, "keep must be a positive int .*got True"),
        ({"histograms": "yes"}, TypeError, "histograms must be True or False; got 'yes'"),
        ({"tensorboard": 1}, TypeError, "tensorboard must be True or False; got 1"),
        ({"out": 3}, TypeError, r"out must be a folder path \(str or Path\) or None; got int"),
        ({"optimizer": "sgd"}, TypeError, "optimizer must be a torch.optim.Optimizer or None"),
        ({"tensorboard": True}, ValueError, "tensorboard=True needs out="),
    ],
)
def test_watch_argument_errors(kwargs: dict[str, Any], error: type, message: str) -> None:
    arguments: dict[str, Any] = {"model": nn.Linear(2, 2), **kwargs}
    model = arguments.pop("model")
    with pytest.raises(error, match=message):
        monitor.watch(model, **arguments)


def test_out_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match=f"cannot create monitor folder {blocker}/sub"):
        monitor.watch(nn.Linear(2, 2), out=blocker / "sub")


def test_log_loss_and_probe_errors() -> None:
    with monitor.watch(nn.Linear(2, 2)) as mon:
        with pytest.raises(TypeError, match="loss must be a scalar tensor or a number; got str"):
            mon.log_loss("0.5")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"loss must be a scalar tensor; got shape \(2,\)"):
            mon.log_loss(torch.ones(2))
        with pytest.raises(TypeError, match="loss must be a scalar tensor or a number; got bool"):
            mon.log_loss(True)
        # a tensor subclass takes the general checks
        with pytest.raises(ValueError, match=r"loss must be a scalar tensor; got shape \(3,\)"):
            mon.log_loss(nn.Parameter(torch.ones(3)))
        mon.log_loss(nn.Parameter(torch.ones(())))
        mon.log_loss(torch.ones(1, 1))
        mon.log_loss(2)
    with pytest.raises(TypeError, match="batch must be an input tensor x or a pair"):
        monitor.probe(nn.Linear(2, 2), [torch.ones(1, 2)] * 3)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module; got int"):
        monitor.probe(3, torch.ones(1, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn must be callable or None; got str"):
        monitor.probe(nn.Linear(2, 2), torch.ones(1, 2), loss_fn="mse")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "monitor log {path} does not exist"),
        ("", "monitor log {path} is empty; expected a 'steadygrad.monitor/1' header line"),
        ('{"format": "other/2"}\n', "line 1 must be a header with format '.*/1'; got 'other/2'"),
        ("[1, 2]\n", "line 1 must be a header .*got 'list'"),
        ('{"format": "steadygrad.monitor/1"}\n', r"1: malformed header \(missing key 'layers'\)"),
        ("HEADER\n{oops\n{}\n", r"line 2 is not valid JSON \(Expecting property name"),
        ('HEADER\n{"step": 1, "loss": null}\n', r"2: malformed record \(missing key 'layers'\)"),
        ("HEADER\n[]\n", "line 2 must be a JSON object; got list"),
        ("{not json\n", "line 1 is not valid JSON"),
    ],
)  # fmt: skip
def test_read_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "monitor.jsonl"
    header = json.dumps({"format": "steadygrad.monitor/1", "layers": [], "notes": []})
    if content is not None:
        path.write_text(content.replace("HEADER", header))
    with pytest.raises(DataError, match=message.replace("{path}", re.escape(str(path)))):
        monitor.read(path)


def test_read_drops_a_last_line_cut_short(tmp_path: Path) -> None:
    model = ModuleMLP()
    x, y = batch((8, 6), 4)
    with monitor.watch(model, every=1, out=tmp_path):
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
    path = tmp_path / "monitor.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the writer was killed mid-line
    assert monitor.read(path).steps == [0]


def test_series_rejects_unknown_keys() -> None:
    log = monitor.MonitorLog(path=None, header={}, layers=[], notes=[], records=[])
    with pytest.raises(ValueError, match=r"key must be one of .*got 'grad_std' \(did you mean"):
        log.series("grad_std")


def test_wrapping_fit_records_training_steps_with_their_losses(
    tiny_data: Any, tmp_path: Path
) -> None:
    """The wiring of ``steadygrad train --monitor``: watch around fit, losses via on_step_end."""
    from steadygrad import models, train

    torch.manual_seed(0)
    model = models.mlp(784, [32, 16], 10, activation="elu", batch_norm="before")
    losses: dict[int, float] = {}

    def on_step_end(step: int, loss: torch.Tensor) -> None:
        losses[step - 1] = float(loss)  # fit passes the 1-based count of completed steps
        mon.log_loss(loss)

    config = train.TrainConfig(epochs=1, batch_size=100, optimizer="sgd", lr=0.05, device="cpu",
                               progress=False)  # fmt: skip
    with monitor.watch(model, every=2, out=tmp_path) as mon:
        train.fit(model, tiny_data, config, on_step_end=on_step_end)
    steps = len(losses)  # 500 training samples / 100: evaluation forwards are not steps
    assert steps == 5
    log = monitor.read(tmp_path)
    assert log.steps == [0, 2, 4]
    assert [r.loss for r in log.records] == pytest.approx([losses[s] for s in log.steps])
    assert [layer.activation for layer in log.layers] == ["elu", "elu", None]
    assert all(s.update_ratio is not None for s in log.records[1].layers)


# --------------------------------------------------------------------- deferred forward statistics


def _train_monitored(
    model: nn.Module, steps: int, every: int, *, defer: bool
) -> tuple[monitor.Monitor, list[float]]:
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses = []
    with monitor.watch(model, every=every) as mon:
        if not defer:
            mon._defer_allowed = False  # measure every forward signal inside the forward pass
        for _ in range(steps):
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.log_loss(loss)
            losses.append(float(loss.detach()))
    return mon, losses


def _assert_same_records(
    a: monitor.Monitor, b: monitor.Monitor, rel: float = 1e-5, abs_: float = 1e-9
) -> None:
    """Same fields, same counts; floats to ``rel`` (by default 1e-5: statistics taken at the
    step's end may run in the native kernel, which sums in float64 where torch's reductions sum
    in float32)."""
    assert [r.step for r in a.records] == [r.step for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):
        for la, lb in zip(ra.layers, rb.layers, strict=True):
            da, db = la.to_dict(), lb.to_dict()
            assert da.keys() == db.keys()
            for key, va in da.items():
                vb = db[key]
                if isinstance(va, float) and isinstance(vb, float):
                    assert va == pytest.approx(vb, rel=rel, abs=abs_), (ra.step, la.name, key)
                else:
                    assert va == vb, (ra.step, la.name, key)


def _elu_dense_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        Dense(6, 12, activation="elu"), nn.Linear(12, 12), nn.Tanh(),
        nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4),
    )  # fmt: skip


def test_deferred_statistics_equal_those_measured_inside_the_forward_pass() -> None:
    """After the first recorded step, forward statistics are queued when the step ends: the
    same tensors, the same reductions, so the records are bitwise those of eager measuring."""

    deferred, losses_d = _train_monitored(_elu_dense_model(), 9, 2, defer=True)
    eager, losses_e = _train_monitored(_elu_dense_model(), 9, 2, defer=False)
    assert deferred._defer and not eager._defer  # later steps were deferred in the first run
    assert losses_d == losses_e
    _assert_same_records(deferred, eager)
    # and the deferred numbers are right: step 8's pre-activation of the tanh layer, directly
    assert deferred.records[-1].layers[1].pre_std is not None


def test_a_model_that_overwrites_its_signals_in_place_is_measured_inside_the_forward() -> None:
    def model() -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 12), nn.ReLU(inplace=True), nn.Linear(12, 4))

    mon, _ = _train_monitored(model(), 6, 2, defer=True)
    assert not mon._defer and not mon._defer_allowed  # step 0 saw the in-place ReLU
    eager, _ = _train_monitored(model(), 6, 2, defer=False)
    _assert_same_records(mon, eager)
    assert all(r.layers[0].pre_std is not None for r in mon.records)


def test_a_signal_overwritten_after_deferring_began_is_noted_and_measuring_goes_back() -> None:
    """From the 3rd forward on, the model adds 1 in place to layer a's output after layer b took
    a copy of it: the first recorded step (eager) saw nothing change, so step 2 is deferred and
    finds z changed; its pre-activation statistics are missing, and later steps are eager."""
    torch.manual_seed(3)
    a, b = nn.Linear(6, 12), nn.Linear(12, 4)
    calls = [0]

    class Late(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            z = self.a(x)
            out = self.b(z.clone())
            if calls[0] >= 3:
                z.add_(1.0)  # nothing in autograd needs z itself
            return out

    mon, _ = _train_monitored(Late(), 8, 2, defer=True)
    assert [r.step for r in mon.records] == [0, 2, 4, 6]
    by_step = {r.step: r.layers[0] for r in mon.records}
    assert by_step[0].pre_std is not None  # eager, intact
    assert by_step[2].pre_std is None  # deferred, and z changed before the step ended
    assert any("overwritten in place after its layer ran (step 2)" in n for n in mon.notes)
    assert not mon._defer and not mon._defer_allowed
    assert by_step[4].pre_std is not None and by_step[6].pre_std is not None  # eager again


def test_record_json_equals_the_dict_route_with_non_finite_values() -> None:
    from steadygrad.monitor._records import LayerStats, StepRecord, dumps

    values = dict.fromkeys(
        (
            "pre_mean", "pre_std", "act_mean", "act_std", "saturated", "dead", "grad_out_std",
            "grad_out_norm", "weight_std", "weight_grad_std", "weight_grad_norm", "update_ratio",
            "recommended_std",
        ),
        0.25,
    )  # fmt: skip
    values.update(pre_mean=math.nan, act_std=math.inf, dead=-math.inf, update_ratio=None)
    layer = LayerStats(name="a", kind="Linear", depth=1, activation=None, nan=3, inf=1, **values)
    for loss in (0.5, None, math.nan):
        record = StepRecord(step=7, loss=loss, layers=[layer, layer])
        assert record.to_json() == dumps(record.to_dict())
        assert json.loads(record.to_json())["layers"][0]["pre_mean"] is None


def test_the_log_is_flushed_at_the_first_record_and_within_flush_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steadygrad.monitor import _output

    model = ModuleMLP()
    x, y = batch((16, 6), 4)
    path = tmp_path / "monitor.jsonl"
    clock = [0.0]
    monkeypatch.setattr(_output.time, "monotonic", lambda: clock[0])
    with monitor.watch(model, every=1, out=tmp_path) as mon:
        for step in range(3):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            mon.log_loss(loss)
            lines = path.read_text().splitlines()
            if step == 0:
                assert len(lines) == 2  # header and the first record, on disk at once
            elif step == 1:
                assert len(lines) == 2  # buffered: less than FLUSH_SECONDS since the last flush
                clock[0] += _output.FLUSH_SECONDS
        assert len(path.read_text().splitlines()) == 4  # flushed once the interval had passed
    assert len(path.read_text().splitlines()) == 4


def test_records_are_serialised_in_batches_in_order_and_all_written_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steadygrad.monitor import _output

    model = ModuleMLP()
    x, y = batch((16, 6), 4)
    clock = [0.0]
    monkeypatch.setattr(_output.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_output, "PENDING_RECORDS", 3)
    with monitor.watch(model, every=1, out=tmp_path) as mon:
        for _ in range(7):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            mon.log_loss(loss)
            assert mon._writer is not None
            assert len(mon._writer._pending) < 3  # written once 3 wait
        records = list(mon.records)
    assert len(records) == 7
    lines = (tmp_path / "monitor.jsonl").read_text().splitlines()
    assert lines[1:] == [r.to_json() for r in records]
    assert [json.loads(line)["step"] for line in lines[1:]] == [r.step for r in records]


def test_layer_stats_is_the_constructor_without_its_cost() -> None:
    from steadygrad.monitor._records import LAYER_STATS_KEYS, LayerStats, layer_stats

    values = ("a", "Linear", 2, "elu", *[0.5 + k for k in range(13)], 1, 2)
    made = layer_stats(*values)
    assert made == LayerStats(*values) and hash(made) == hash(LayerStats(*values))
    assert made.to_dict() == dict(zip(LAYER_STATS_KEYS, values, strict=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.dead = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="layer_stats takes 19 values; got 2"):
        layer_stats("a", "Linear")


# --------------------------------------------------------------------- planned reads


class Switching(nn.Module):
    """Linear → ReLU → Linear → (sigmoid, then tanh from the ``switch_at``-th forward on) →
    Linear, a NaN in the input on the ``nan_at``-th forward, the sigmoid's output a
    non-contiguous view from the ``view_at``-th: steps that differ from the plan."""

    def __init__(self, switch_at: int = 10**9, nan_at: int = 10**9, view_at: int = 10**9) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 4)
        self.act = nn.ReLU()
        self.switch_at, self.nan_at, self.view_at = switch_at, nan_at, view_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls == self.nan_at:
            x = x.clone()
            x[0, 0] = math.nan
        squash = torch.tanh if self.calls >= self.switch_at else torch.sigmoid
        h = squash(self.fc2(self.act(self.fc1(x))))
        if self.calls >= self.view_at:
            h = torch.cat([h, h], dim=1)[:, :12]  # the same values, every other row skipped
        self.calls += 1
        return self.fc3(h)


def _planned_and_general(
    make: Callable[[], nn.Module], steps: int, every: int
) -> tuple[monitor.Monitor, monitor.Monitor, list[int]]:
    """The same training watched twice: read by the plan where it applies, and always the
    general way (``_finalize_planned`` declining); the steps the plan read."""
    planned_steps: list[int] = []
    runs = []
    for planned in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if planned:
                _count_planned(mp, planned_steps)
            else:
                mp.setattr(_watch.Monitor, "_finalize_planned", lambda self, state: False)
            torch.manual_seed(0)
            mon, _ = _train_monitored(make(), steps, every, defer=True)
        runs.append(mon)
    return runs[0], runs[1], planned_steps


def _assert_equal_records(a: monitor.Monitor, b: monitor.Monitor) -> None:
    """Field for field; floats to 1e-12 (the native kernel's std rounds once where Python's
    formula rounds twice), None, NaN and counts exactly."""
    assert [repr(r.loss) for r in a.records] == [repr(r.loss) for r in b.records]  # NaN too
    assert a.notes == b.notes
    _assert_same_records(a, b, rel=1e-12, abs_=1e-300)


@pytest.mark.skipif(native.load() is None, reason="native kernels not built")
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("module activations", ModuleMLP),
        ("functional activations", lambda: nn.Sequential(FunctionalMLP(), nn.Linear(3, 4))),
        ("residual, one ReLU module reused", lambda: nn.Sequential(ResidualMLP(), nn.Linear(3, 4))),
        ("Dense with its own ELU, Tanh and ReLU modules", _elu_dense_model),
    ],
)
def test_planned_reads_equal_the_general_reads(
    name: str, make: Callable[[], nn.Module], every: int
) -> None:
    """After the first deferred step read the general way, recorded steps are read by the
    plan it taught, in one native call, and give the same records."""
    steps = 12
    planned, general, read = _planned_and_general(make, steps, every)
    _assert_equal_records(planned, general)
    recorded = [r.step for r in planned.records]
    assert read == recorded[2:], name  # step 0 eager, the next one teaches the plan


@pytest.mark.skipif(native.load() is None, reason="native kernels not built")
def test_steps_that_differ_from_the_plan_are_read_the_general_way() -> None:
    """A NaN on the last step (its counts need the precise pass), a different activation (the
    plan is learnt again from that step), a signal the kernel cannot read (a non-contiguous
    view) and a CNN (its dead channels are not (batch, units)): the plan declines those steps,
    and every record equals the general path's."""
    planned, general, read = _planned_and_general(lambda: Switching(nan_at=8), 9, 1)
    _assert_equal_records(planned, general)
    assert planned.records[8].layer("fc1").nan > 0
    assert read == [2, 3, 4, 5, 6, 7]

    planned, general, read = _planned_and_general(lambda: Switching(switch_at=5), 9, 1)
    _assert_equal_records(planned, general)
    assert planned.records[4].layer("fc2").activation == "sigmoid"
    assert planned.records[5].layer("fc2").activation == "tanh"
    assert read == [2, 3, 4, 6, 7, 8]

    planned, general, read = _planned_and_general(lambda: Switching(view_at=5), 9, 1)
    _assert_equal_records(planned, general)
    assert read == [2, 3, 4]  # the kernel reads contiguous tensors only

    torch.manual_seed(0)
    model, (x, y) = MODELS["small CNN"]()
    cnn_planned: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        _count_planned(mp, cnn_planned)
        with monitor.watch(model, every=1) as mon:
            for _ in range(4):
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
    assert mon._hook_plan is None and cnn_planned == []
    assert all(r.layer("conv2").dead is not None for r in mon.records)
