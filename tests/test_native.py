"""Native (C++) forward/backward of the fast step (``steadygrad.native``, ``csrc/chain.cpp``)
against the Python fast step, whose kernels are autograd's own (tests/test_fast.py holds that
path to the plain step bit for bit).

The kernel sums in another order and computes eᶻ by its own polynomial, so values agree to float
rounding, not bit for bit. The one exception is the direction BatchNorm makes invisible: the
bias of a Linear followed by a train-mode BatchNorm has a zero gradient in exact arithmetic, so
each path computes rounding noise there (checked against the gradient's scale instead).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import fast, models, native
from steadygrad.fast import FastStep, make_step
from steadygrad.nn import BatchNorm
from steadygrad.train import TrainConfig, fit

IN, HIDDEN, OUT, BATCH = 12, [10, 8], 4, 16

pytestmark = pytest.mark.skipif(native.load() is None, reason="native kernels unavailable here")


def batches(
    steps: int, batch: int = BATCH, seed: int = 3
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps * batch, IN, generator=g) * 2 + 0.5
    y = torch.randint(0, OUT, (steps * batch,), generator=g)
    return [(x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]) for k in range(steps)]


def mlp(
    activation: Any = "elu", batch_norm: str | None = "before", output_bn: bool = True
) -> nn.Module:
    return models.mlp(
        IN,
        HIDDEN,
        OUT,
        activation,
        batch_norm=batch_norm,
        batch_norm_output=output_bn,
        momentum=0.9,
        generator=torch.Generator().manual_seed(1),
    )


def pair(build: Any, optimizer: Any = None) -> tuple[nn.Module, FastStep, nn.Module, FastStep]:
    """The same model twice: a native fast step and a Python fast step."""
    optimizer = optimizer or (lambda p: torch.optim.SGD(p, lr=0.1))
    a = build()
    b = copy.deepcopy(a)
    step_a = make_step(a, optimizer(a.parameters()), native=True)
    step_b = make_step(b, optimizer(b.parameters()))
    assert step_a is not None and step_b is not None
    assert step_a._native is not None  # the program is in the kernel
    return a, step_a, b, step_b


def gauge_params(model: nn.Module) -> set[str]:
    """Biases of Linear layers followed directly by a train-mode BatchNorm."""
    names = [name for name, _ in model.named_children()]
    children = dict(model.named_children())
    out = set()
    for here, after in itertools.pairwise(names):
        if isinstance(children[here], nn.Linear) and isinstance(
            children[after], nn.BatchNorm1d | BatchNorm
        ):
            out.add(f"{here}.bias")
    return out


ACTIVATIONS = [
    "elu",
    "relu",
    {"name": "leaky_relu", "alpha": 0.2},
    {"name": "elu", "alpha": 0.5},
    "selu",
    None,
]


@pytest.mark.parametrize("batch_norm", ["before", "after", None])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_one_step_equals_the_python_step(activation: Any, batch_norm: str | None) -> None:
    a, step_a, b, step_b = pair(lambda: mlp(activation, batch_norm))
    x, y = batches(1)[0]
    loss_a, logits_a = step_a(x, y)
    loss_b, logits_b = step_b(x, y)
    assert step_a.native_calls == 1 and step_b.native_calls == 0
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)
    # A gradient that is rounding noise on the Python step (a bias feeding a Linear + train-mode
    # BatchNorm: zero in exact arithmetic) must be noise on the native one too; the rest agree.
    scale = max(float(q.grad.abs().max()) for q in b.parameters() if q.grad is not None)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        if float(q.grad.abs().max()) < 1e-6 * scale:
            assert float(p.grad.abs().max()) < 1e-5 * scale, name
            continue
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6 * scale, rtol=1e-4, msg=name)
    # Moving statistics, including the means of BatchNorms after a Linear whose bias the
    # kernel hands to the BatchNorm instead of adding it to h (one step: no drift yet).
    for (name, buf), other in zip(a.named_buffers(), b.buffers(), strict=True):
        if buf.is_floating_point():
            torch.testing.assert_close(buf, other, atol=1e-6, rtol=1e-5, msg=name)
        else:
            assert torch.equal(buf, other), name  # num_batches_tracked
    # the loss pass counts right argmaxes as torch.argmax picks them
    assert step_a.last_correct is not None and step_b.last_correct is None
    assert int(step_a.last_correct) == int((logits_b.argmax(1) == y).sum())


def test_batchnorm_gradients_against_a_slow_float64_formula() -> None:
    """The fused BatchNorm + ELU backward against the textbook formula in float64
    (Ioffe & Szegedy 2015), independent of both fast steps."""
    model = nn.Sequential(nn.Linear(IN, 6), nn.BatchNorm1d(6), nn.ELU(0.7), nn.Linear(6, OUT))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0), native=True)
    assert step is not None
    x, y = batches(1)[0]
    reference = copy.deepcopy(model).double()
    step(x, y)
    assert step.native_calls == 1
    lin1, bn, _, lin2 = reference
    h = x.double() @ lin1.weight.T + lin1.bias
    mu, var = h.mean(0), h.var(0, unbiased=False)
    xhat = (h - mu) / torch.sqrt(var + bn.eps)
    z = bn.weight * xhat + bn.bias
    a = torch.where(z > 0, z, 0.7 * (torch.exp(z) - 1))
    logits = a @ lin2.weight.T + lin2.bias
    g = (torch.softmax(logits, 1) - F.one_hot(y, OUT).double()) / len(y)
    ga = g @ lin2.weight
    gz = ga * torch.where(z > 0, torch.ones_like(z), 0.7 * torch.exp(z))
    m = len(y)
    dgamma, dbeta = (gz * xhat).sum(0), gz.sum(0)
    dh = bn.weight / (m * torch.sqrt(var + bn.eps)) * (m * gz - dbeta - xhat * dgamma)
    torch.testing.assert_close(model[1].weight.grad.double(), dgamma, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model[1].bias.grad.double(), dbeta, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        model[0].weight.grad.double(), dh.T @ x.double(), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(model[3].weight.grad.double(), g.T @ a, atol=1e-6, rtol=1e-5)
    # moving statistics: torch's rule, momentum 0.1, unbiased variance
    torch.testing.assert_close(model[1].running_mean.double(), 0.1 * mu, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        model[1].running_var.double(), 0.9 + 0.1 * h.var(0, unbiased=True), atol=1e-6, rtol=1e-5
    )


def test_elu_of_very_negative_and_large_inputs() -> None:
    """The kernel's own eᶻ: saturated units (z ≪ 0, below float's range) give −α, not NaN."""
    model = nn.Sequential(
        nn.Linear(2, 3), nn.BatchNorm1d(3, affine=True), nn.ELU(), nn.Linear(3, 2)
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([200.0, 1.0, 1e-3]))
        model[1].bias.copy_(torch.tensor([-300.0, 0.0, 0.0]))
    plain = copy.deepcopy(model)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0), native=True)
    assert step is not None
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    _, logits = step(x, y)
    assert step.native_calls == 1, (step._native, step.last_fallback, native.unavailable_reason())
    expected = plain(x)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_fifty_steps_track_the_python_step(name: str) -> None:
    make_opt = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    }[name]
    a, step_a, b, step_b = pair(mlp, make_opt)
    data = batches(50)
    losses_a = [float(step_a(x, y)[0]) for x, y in data]
    losses_b = [float(step_b(x, y)[0]) for x, y in data]
    assert step_a.native_calls == 50
    torch.testing.assert_close(losses_a, losses_b, atol=1e-4, rtol=1e-4)
    gauge = gauge_params(a)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if n not in gauge:
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=n)


def test_replaced_buffers_and_relinked_gradients_reach_the_kernel() -> None:
    """The kernel's argument list is reused between steps (``_NativeChain._arguments_now``);
    a BatchNorm buffer assigned anew and gradients set to None mid-training must reach it:
    the native and the Python steps stay equal, and the old buffer is no longer written."""
    a, step_a, b, step_b = pair(mlp)
    data = batches(6)
    for x, y in data[:2]:
        step_a(x, y)
        step_b(x, y)
    bn_a = next(m for m in a.modules() if isinstance(m, models.BatchNorm))
    bn_b = next(m for m in b.modules() if isinstance(m, models.BatchNorm))
    old = bn_a.running_mean
    bn_a.running_mean = torch.zeros_like(old)
    bn_b.running_mean = torch.zeros_like(bn_b.running_mean)
    before = old.clone()
    for model in (a, b):
        for param in model.parameters():
            param.grad = None  # zero_grad(set_to_none=True): the step relinks new tensors
    for x, y in data[2:]:
        step_a(x, y)
        step_b(x, y)
    assert step_a.native_calls == 6
    assert torch.equal(old, before)  # the replaced buffer is not written any more
    assert bn_a.running_mean.abs().sum() > 0  # the new one is
    torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, atol=1e-5, rtol=1e-5)
    gauge = gauge_params(a)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.grad is not None
        if n not in gauge:
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=n)


def test_two_threads_equal_one() -> None:
    """Columns are split between threads; each column's sums keep their order."""
    a, step_a, _b, _step_b = pair(lambda: mlp("elu"))
    a2 = copy.deepcopy(a)
    step_2 = make_step(a2, torch.optim.SGD(a2.parameters(), lr=0.1), native=True)
    assert step_2 is not None
    x = torch.randn(512, IN, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, OUT, (512,), generator=torch.Generator().manual_seed(6))
    step_a(x, y)
    torch.set_num_threads(2)
    try:
        step_2(x, y)
    finally:
        torch.set_num_threads(1)
    for p, q in zip(a.parameters(), a2.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_where_the_kernel_does_not_apply_the_python_step_runs() -> None:
    # an activation the kernel does not have: no native program at all
    model = mlp("gelu")
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), native=True)
    assert step is not None and step._native is None
    x, y = batches(1)[0]
    step(x, y)
    assert step.fast_calls == 1 and step.native_calls == 0
    # eval-mode BatchNorm (moving statistics) and float64: the Python step, call by call
    model = mlp("elu")
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), native=True)
    assert step is not None
    model.eval()
    step(x, y)
    model.train()
    step(x, y)
    assert (step.fast_calls, step.native_calls) == (2, 1)
    model.double()
    step(x.double(), y)
    assert (step.fast_calls, step.native_calls) == (3, 1)


def test_bad_labels_raise_the_plain_paths_error() -> None:
    """The kernel checks the labels before anything else and, finding one out of range, declines
    the step having changed nothing (no BatchNorm statistics either); the Python step then raises
    torch's own error. (It used to raise from C++, after the forward: that crashed the process
    on a GPU machine's torch 2.11 build.)"""
    model = mlp("elu")
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), native=True)
    assert step is not None
    assert step._native is not None
    x, y = batches(1)[0]
    kernel = step._native.run(x, torch.full_like(y, 7))
    assert kernel is None and step.native_calls == 0
    before = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        step(x, torch.full_like(y, 7))
    assert step.native_calls == 0
    # nothing was updated
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=False))
    with pytest.raises(IndexError, match="Target -1 is out of bounds"):
        step(x, torch.full_like(y, -1))


def test_fit_uses_the_kernels_and_trains_like_the_python_step() -> None:
    from steadygrad.data import Dataset, Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, IN, generator=g)
    y = (x[:, :OUT].argmax(1)).long()
    split = lambda lo, hi: Split(x[lo:hi], y[lo:hi])  # noqa: E731
    data = Dataset(
        train=split(0, 400), validation=split(400, 500), test=split(500, 600), name="toy"
    )
    # device="cpu": the kernels are CPU-only, and fit would pick a GPU where there is one
    cfg = dict(epochs=3, batch_size=20, lr=1e-2, progress=False, out=None, device="cpu")
    steps: list[FastStep] = []
    original = fast.make_step

    def keeping(*args: Any, **kwargs: Any) -> Any:
        step = original(*args, **kwargs)
        steps.append(step)
        return step

    a, b = mlp(), mlp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast, "make_step", keeping)
        ha = fit(a, data, TrainConfig(**cfg, native=True))  # type: ignore[arg-type]
    hb = fit(b, data, TrainConfig(**cfg, native=False))  # type: ignore[arg-type]
    (step,) = steps
    assert step.native_calls == step.fast_calls == 60  # every step of the 3 epochs
    for ra, rb in zip(ha, hb, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        # evaluation uses the moving means, which include the gauge biases (see the module
        # docstring): close, not equal
        assert abs(ra["test_loss"] - rb["test_loss"]) < 0.02 * rb["test_loss"]


def test_unavailable_kernels_say_why_and_the_python_step_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.utils import cpp_extension

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_reason", None)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with caplog.at_level(logging.WARNING, logger="steadygrad.native"):
        assert native.load() is None
    reason = native.unavailable_reason()
    assert reason is not None
    assert "Ninja is required" in reason and "STEADYGRAD_NATIVE=0" in reason
    assert reason in caplog.text
    model = mlp()
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), native=True)
    assert step is not None and step._native is None
    x, y = batches(1)[0]
    step(x, y)
    assert step.fast_calls == 1

    with pytest.raises(RuntimeError, match=r"cannot build steadygrad's native kernels .*verbose"):
        native.build()


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_reason", None)
    monkeypatch.setenv("STEADYGRAD_NATIVE", "0")
    assert native.load() is None
    assert native.unavailable_reason() == "STEADYGRAD_NATIVE=0"


# --------------------------------------------------------------------------- monitor reductions


def _eager_and_lazy(fill: Any) -> tuple[list[float], list[float], int]:
    """``fill(batch)`` queued on a plain batch and on a lazy one; both read; lazy requests."""
    from steadygrad.monitor import _stats

    eager, lazy = _stats.Batch(), _stats.Batch()
    lazy.lazy = True
    fill(eager)
    fill(lazy)
    return eager.read(), lazy.read(), len(lazy._requests)


def test_lazy_reductions_equal_torchs() -> None:
    """Moments, saturated and dead counts of the native ``reduce`` against torch's reductions,
    mixed with ordinary queued values (positions must interleave correctly)."""
    from steadygrad.monitor import _stats

    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 784, generator=g) * 0.05
    z = torch.randn(50, 300, generator=g) - 1.0
    z[:, :7] = -3.0  # seven dead units
    tiny = torch.randn(3, generator=g)

    def fill(batch: Any) -> None:
        batch.add(torch.tensor(1.5))
        _stats.moments(w, batch)
        _stats.count_saturated(z, -2.5, math.inf, batch)
        batch.add(torch.tensor(-4.0))
        _stats.count_dead(z, 1, 0.0, batch)
        _stats.moments_many([tiny, z], batch)
        _stats.count_saturated(z, -1.0, 1.0, batch)

    eager, lazy, requests = _eager_and_lazy(fill)
    assert requests == 6
    assert len(eager) == len(lazy)
    assert lazy[0] == 1.5 and lazy[4] == -4.0
    assert lazy == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert lazy[5] == 7  # dead units
    # against exact float64 sums: float32 only within blocks of 512 terms
    assert lazy[1] == pytest.approx(float(w.double().sum()), rel=1e-6, abs=1e-6)
    assert lazy[2] == pytest.approx(float((w.double() ** 2).sum()), rel=1e-6)


def test_lazy_reductions_of_non_finite_values_and_fallbacks() -> None:
    """NaN and ±inf make the sums non-finite (the monitor's second, precise pass takes over);
    a NaN unit is not dead; tensors the kernel cannot read are reduced by torch at once."""
    from steadygrad.monitor import _stats

    x = torch.zeros(4, 3)
    x[1, 0] = math.nan
    x[2, 1] = math.inf
    x[:, 2] = -1.0

    def fill(batch: Any) -> None:
        _stats.moments(x, batch)
        _stats.count_dead(x, 1, 0.0, batch)
        _stats.count_saturated(x, -0.5, 0.5, batch)
        _stats.moments(x.t(), batch)  # not contiguous: torch, at once
        _stats.moments(x.double(), batch)  # float64: torch, at once
        _stats.count_dead(x.reshape(2, 2, 3), 1, 0.0, batch)  # 3-d: torch, at once

    eager, lazy, requests = _eager_and_lazy(fill)
    assert requests == 3
    assert math.isnan(lazy[0]) and math.isnan(eager[0])
    assert lazy[2] == eager[2] == 1  # column 2 is dead; the NaN column is not, the inf one neither
    assert lazy[3] == eager[3] == 4 + 1  # −1 × 4 and +inf (NaN is not saturated)
    assert all(
        (math.isnan(a) and math.isnan(b)) or a == b
        for a, b in zip(lazy[4:], eager[4:], strict=True)
    )


def test_update_norms_in_one_call_equal_torchs() -> None:
    """‖W_after − W_before‖² per weight: native for contiguous float32 CPU pairs, torch (in
    place on the snapshot) for the rest, in the caller's order."""
    from steadygrad.monitor import _stats

    g = torch.Generator().manual_seed(2)
    after = [torch.randn(300, 784, generator=g), torch.randn(7, generator=g).double()]
    after.append(torch.randn(10, 20, generator=g).t())  # not contiguous
    before = [a + 1e-3 * torch.randn(a.shape, generator=g, dtype=a.dtype) for a in after]
    expected = [
        float(((a.double() - b.double()) ** 2).sum()) for a, b in zip(after, before, strict=True)
    ]
    snapshots = [b.clone() for b in before]
    got = [float(t) for t in _stats.squared_distances(after, snapshots)]
    assert got == pytest.approx(expected, rel=1e-5)
    # the native pair was read, not overwritten; the others went through torch's in-place sub_
    assert torch.equal(snapshots[0], before[0])
    assert not torch.equal(snapshots[1], before[1]) and not torch.equal(snapshots[2], before[2])


def test_distances_and_moments_in_one_pass_equal_torchs() -> None:
    """Σ(a − b)², Σa, Σa² of each pair in one native pass, against float64 sums; ``copy`` leaves
    b equal to a, without it b is unchanged; anything not contiguous float32 on the CPU: None,
    nothing done."""
    from steadygrad.monitor import _stats

    if native.load() is None:
        pytest.skip("native kernels not built")
    g = torch.Generator().manual_seed(3)
    after = [torch.randn(300, 784, generator=g), torch.randn(13, generator=g)]
    before = [a + 1e-3 * torch.randn(a.shape, generator=g) for a in after]
    for copying in (False, True):
        snapshots = [b.clone() for b in before]
        rows = _stats.distances_and_moments(after, snapshots, copy=copying)
        assert rows is not None and rows.dtype == torch.float64 and rows.shape == (2, 3)
        for row, a, b, s in zip(rows.tolist(), after, before, snapshots, strict=True):
            a64, b64 = a.double(), b.double()
            want = [float(((a64 - b64) ** 2).sum()), float(a64.sum()), float((a64**2).sum())]
            assert row == pytest.approx(want, rel=1e-5, abs=1e-6)
            assert torch.equal(s, a if copying else b)
    assert (
        _stats.distances_and_moments([after[0].double()], [before[0].double()], copy=True) is None
    )
    assert _stats.distances_and_moments([], [], copy=False) is None


def test_recorded_steps_are_native_steps_replayed_to_the_monitor(tmp_path: Any) -> None:
    """fit(monitor=...): recorded steps too run in the kernel, which hands back its intermediate
    tensors; the monitor's records equal those of a run on the Python fast step."""
    from steadygrad import monitor
    from steadygrad.data import Dataset, Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, IN, generator=g)
    y = x[:, :OUT].argmax(1)
    data = Dataset(
        train=Split(x[:160], y[:160]),
        validation=Split(x[160:180], y[160:180]),
        test=Split(x[180:], y[180:]),
        name="toy",
    )
    runs = {}
    original = fast.make_step
    seen: list[FastStep] = []

    def keeping(*args: Any, **kwargs: Any) -> Any:
        step = original(*args, **kwargs)
        seen.append(step)
        return step

    for use_native in (True, False):
        model = mlp("elu", "before")
        seen.clear()

        with (
            pytest.MonkeyPatch.context() as mp,
            monitor.watch(model, every=2, out=tmp_path / str(use_native)) as mon,
        ):
            mp.setattr(fast, "make_step", keeping)
            fit(
                model,
                data,
                TrainConfig(
                    epochs=1,
                    batch_size=16,
                    progress=False,
                    out=None,
                    native=use_native,
                    optimizer="sgd",  # Adam would scale the gauge biases' rounding noise up
                    device="cpu",  # fit would pick a GPU where there is one
                ),
                monitor=mon,
            )
        assert seen[-1].native_calls == (10 if use_native else 0)
        assert seen[-1].fast_calls == 10
        runs[use_native] = mon.records
    native_records, python_records = runs[True], runs[False]
    assert (
        [r.step for r in native_records]
        == [r.step for r in python_records]
        == list(range(0, 10, 2))
    )
    for a, b in zip(native_records, python_records, strict=True):
        for la, lb in zip(a.layers, b.layers, strict=True):
            for key, va in la.to_dict().items():
                vb = lb.to_dict()[key]
                if isinstance(va, float) and isinstance(vb, float):
                    assert va == pytest.approx(vb, rel=2e-3, abs=1e-6), (a.step, la.name, key)
                else:
                    assert va == vb, (a.step, la.name, key)


def test_a_build_is_announced_and_a_cached_one_is_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first use compiles for about a minute: a warning says so, not a silent stall."""
    import types

    from torch.utils import cpp_extension

    built = types.ModuleType("fake_kernels")
    monkeypatch.setattr(cpp_extension, "load", lambda *args, **kwargs: built)
    for cached, expected in ((False, True), (True, False)):
        monkeypatch.setattr(native, "_tried", False)
        monkeypatch.setattr(native, "_module", None)
        monkeypatch.setattr(native, "is_built", lambda cached=cached: cached)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="steadygrad.native"):
            assert native.load() is built
        assert ("building steadygrad's native kernels" in caplog.text) is expected


def test_the_real_build_is_cached() -> None:
    """Loading again compiles nothing, also twice in one process: torch appends its libraries to
    the ldflags list it is given, and when that was the module's own list the second load looked
    like a new configuration to torch's versioner (a "_v1" build, then a full recompile in every
    process after it, ~50 s each)."""
    import os

    assert native.is_built()
    name = native._name()
    folder = os.path.join(native.build_root(), name)
    library = os.path.join(folder, f"{name}.so")
    stamp, files = os.stat(library).st_mtime_ns, set(os.listdir(folder))
    flags, ldflags = list(native.FLAGS), list(native.LDFLAGS)
    assert native.build() is not None  # from the cache: no compiler run
    assert native.build() is not None
    assert flags == native.FLAGS and ldflags == native.LDFLAGS  # not grown by torch
    assert os.stat(library).st_mtime_ns == stamp
    assert set(os.listdir(folder)) == files


def test_builds_compile_copies_that_nothing_rewrites(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """ninja recompiles when a source is newer than its object: the build compiles copies kept
    in its own folder (named by the content's hash), so rewriting the package's files with the
    same content (a git checkout, a reinstall) does not cost a minute's compile."""
    import os
    from importlib import resources

    from torch.utils import cpp_extension

    monkeypatch.setenv("STEADYGRAD_NATIVE_DIR", str(tmp_path))
    seen: dict[str, Any] = {}

    def fake_load(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return "module"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert native.build() == "module"
    sources = seen["sources"]
    assert [os.path.basename(p) for p in sources] == list(native.SOURCES)
    assert all(p.startswith(str(tmp_path / native._name())) for p in sources)
    package = resources.files("steadygrad").joinpath("csrc")
    for path in sources:
        with open(path, "rb") as f:
            assert f.read() == package.joinpath(os.path.basename(path)).read_bytes()
    stamps = [os.stat(p).st_mtime_ns for p in sources]
    native.build()  # again: the copies are not rewritten
    assert [os.stat(p).st_mtime_ns for p in sources] == stamps
    assert seen["build_directory"] == str(tmp_path / native._name())


@pytest.mark.slow
def test_sources_are_cpp17() -> None:
    """torch before 2.12 builds extensions with ``-std=c++17`` (2.13 with c++20), and the library
    accepts torch>=2.3: the sources must compile as C++17. A GPU machine's torch 2.11 failed on
    ``std::bit_cast`` (C++20) and fell back to the Python step. ~50 s of header parsing."""
    import shutil
    import subprocess
    import sysconfig
    from importlib import resources

    from torch.utils import cpp_extension

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    folder = resources.files("steadygrad").joinpath("csrc")
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    command = [compiler, "-std=c++17", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=check"]
    command += [flag for path in includes for flag in ("-isystem", path)]
    command += [str(folder.joinpath(name)) for name in native.SOURCES]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------- Adam with sums


@pytest.mark.parametrize(
    ("beta1", "weight_decay", "decoupled"),
    [(0.9, 0.0, False), (0.9, 0.01, False), (0.9, 0.01, True), (0.3, 0.0, False)],
)
def test_adam_step_is_torchs_fused_adam_and_sums_what_it_read(
    beta1: float, weight_decay: float, decoupled: bool
) -> None:
    """``csrc/update.cpp`` against ``torch._fused_adam_``/``_fused_adamw_`` over 30 steps (sizes
    off the 8-lane vectors and the 512-entry blocks), and its sums against float64 formulas:
    Σθ, Σθ², Σg, Σg² of the tensors before the update and Σ(θ_new − θ_old)²."""
    kernels = native.load()
    g = torch.Generator().manual_seed(5)
    shapes = [(300, 784), (513,), (7,), (1,), (10, 100)]
    params = [torch.randn(s, generator=g) for s in shapes]
    ref = [p.clone() for p in params]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    m_ref, v_ref = [t.clone() for t in m], [t.clone() for t in v]
    steps = torch.zeros(len(shapes))
    steps_ref = torch.zeros(len(shapes))
    fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
    hyper = dict(lr=1e-2, beta1=beta1, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
    for _ in range(30):
        grads = [torch.randn(s, generator=g) * 0.1 for s in shapes]
        before = [p.double() for p in params]
        steps.add_(1)
        steps_ref.add_(1)
        sums = kernels.adam_step(
            params, grads, m, v, steps, decoupled=decoupled, stats=True, **hyper
        )
        fused(
            ref, grads, m_ref, v_ref, [], list(steps_ref.unbind()),
            amsgrad=False, maximize=False, **hyper,
        )  # fmt: skip
        for k, (b, gr, p) in enumerate(zip(before, grads, params, strict=True)):
            terms = [b, b * b, gr.double(), gr.double() ** 2, (p.double() - b) ** 2]
            for j, t in enumerate(terms):
                # float32 within 512-entry blocks: the error scales with Σ|x|, not with |Σx|
                scale = t.abs().sum().item()
                assert sums[k, j].item() == pytest.approx(t.sum().item(), abs=1e-6 * scale), (k, j)
    for got, want in zip(params + m + v, ref + m_ref + v_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    [
        (0.0, 0.0, 0.0, False, False),
        (0.9, 0.0, 0.0, False, False),
        (0.9, 0.0, 0.01, True, False),
        (0.8, 0.1, 0.01, False, True),
        (0.0, 0.0, 0.01, False, True),
    ],
)
def test_sgd_step_is_torchs_sgd_and_sums_what_it_read(
    momentum: float, dampening: float, weight_decay: float, nesterov: bool, maximize: bool
) -> None:
    """``csrc/update.cpp``'s SGD against ``torch.optim.SGD`` (per-tensor, the reference
    implementation) over 30 steps, the first momentum step included, and its sums against
    float64 formulas."""
    kernels = native.load()
    g = torch.Generator().manual_seed(6)
    shapes = [(300, 784), (513,), (7,), (1,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.SGD(
        ref, lr=0.05, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
        nesterov=nesterov, maximize=maximize, foreach=False,
    )  # fmt: skip
    buffers = [torch.empty_like(p) for p in params] if momentum else []
    for step in range(30):
        grads = [torch.randn(s, generator=g) * 0.1 for s in shapes]
        before = [p.double() for p in params]
        sums = kernels.sgd_step(
            params, grads, buffers, lr=0.05, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, first=step == 0,
            stats=True,
        )  # fmt: skip
        for p, gr in zip(ref, grads, strict=True):
            p.grad = gr.clone()
        opt.step()
        for k, (b, gr, p) in enumerate(zip(before, grads, params, strict=True)):
            terms = [b, b * b, gr.double(), gr.double() ** 2, (p.double() - b) ** 2]
            for j, t in enumerate(terms):
                scale = t.abs().sum().item()
                assert sums[k, j].item() == pytest.approx(t.sum().item(), abs=1e-6 * scale), (k, j)
    for got, want in zip(params, ref, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    for got, p in zip(buffers, ref if momentum else [], strict=True):
        torch.testing.assert_close(got, opt.state[p]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_adam_step_change_only_sums_the_update_alone_and_updates_alike() -> None:
    """``change_only``: the same update, Σ(Δθ)² as with all sums, the other columns NaN (so a
    record can never take them for the weights' sums: ``record_stats`` flags them)."""
    kernels = native.load()
    shapes = [(300, 784), (513,), (7,)]
    runs = []
    for change_only in (False, True):
        params = [torch.randn(s, generator=torch.Generator().manual_seed(1)) for s in shapes]
        m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(2)) for s in shapes]
        sums = kernels.adam_step(
            params, grads, m, v, torch.ones(len(shapes)), lr=1e-2, beta1=0.9, beta2=0.999,
            eps=1e-8, weight_decay=0.0, decoupled=False, stats=True, change_only=change_only,
        )  # fmt: skip
        runs.append((params, sums))
    (full_params, full), (params, only) = runs
    for a, b in zip(full_params, params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(only[:, 4], full[:, 4], rtol=1e-12, atol=0)
    assert bool(only[:, :4].isnan().all()) and bool(full[:, :4].isfinite().all())
    flag = kernels.record_stats([], [], [], only, [0], [params[0].numel()], 1e-3)[-1].item()
    assert flag == 0.0


def test_adam_step_without_sums_returns_nothing_and_rejects_other_tensors() -> None:
    kernels = native.load()
    p, gr = torch.ones(10), torch.ones(10)
    out = kernels.adam_step(
        [p], [gr], [torch.zeros(10)], [torch.zeros(10)], torch.ones(1),
        lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, stats=False,
    )  # fmt: skip
    assert out.numel() == 0 and bool((p < 1).all())
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensors like the parameter"):
        kernels.adam_step(
            [p], [gr.double()], [torch.zeros(10)], [torch.zeros(10)], torch.ones(1),
            lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
            stats=False,
        )  # fmt: skip


def test_record_stats_finishes_the_sums_as_the_python_formulas_do() -> None:
    """``record_stats`` (csrc/stats.cpp) against ``_stats.from_sums``/``sufficient`` on
    ``reduce``'s sums, the fractions against masks, the weights' moments against float64
    formulas; its last entry says whether every moment could be trusted."""
    from steadygrad.monitor import _stats

    kernels = native.load()
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(50, 300, generator=g), torch.randn(50, 10, generator=g) * 3 - 1
    b[:, 2] = -5.0  # a dead unit
    tensors, kinds = [a, b, b, b], [0, 0, 1, 2]
    bounds = [0.0, 0.0, 0.0, 0.0, -1.5, 1.5, 0.0, 0.0]
    w, grad = torch.randn(30, 7, generator=g), torch.randn(30, 7, generator=g) * 1e-3
    sums = torch.zeros(3, 5, dtype=torch.float64)
    sums[2, :4] = torch.stack([w.double().sum(), (w.double() ** 2).sum(),
                               grad.double().sum(), (grad.double() ** 2).sum()])  # fmt: skip
    out = kernels.record_stats(tensors, kinds, bounds, sums, [2], [w.numel()], 1e-3).tolist()
    raw = kernels.reduce(tensors, kinds, bounds).tolist()
    assert len(out) == 3 + 3 + 1 + 1 + 6 + 1
    assert out[0:3] == pytest.approx(_stats.from_sums(raw[0], raw[1], a.numel()), rel=1e-12)
    assert out[3:6] == pytest.approx(_stats.from_sums(raw[2], raw[3], b.numel()), rel=1e-12)
    assert out[6] == ((b < -1.5) | (b > 1.5)).double().mean().item()
    assert out[7] == pytest.approx(1 / 10)
    for at, t in ((8, w.double()), (11, grad.double())):
        mean, std = t.mean().item(), t.std(unbiased=False).item()
        assert out[at : at + 3] == pytest.approx([mean, std, t.norm().item()], rel=1e-9)
    assert out[-1] == 1.0
    # a constant tensor cancels (var < 1e-3 mean²), a non-finite one cannot be summed
    for bad in (torch.full((4, 4), 3.0), torch.tensor([[1.0, math.inf]])):
        flag = kernels.record_stats([bad], [0], [0.0, 0.0], sums, [], [], 1e-3).tolist()[-1]
        assert flag == 0.0
    with pytest.raises(RuntimeError, match="row out of range"):
        kernels.record_stats([a], [0], [0.0, 0.0], sums, [3], [1], 1e-3)
    with pytest.raises(RuntimeError, match=r"contiguous \(n, 5\) float64"):
        kernels.record_stats([a], [0], [0.0, 0.0], sums.float(), [0], [1], 1e-3)


# --------------------------------------------------------------------------- kept records


def _toy_data() -> Any:
    from steadygrad.data import Dataset, Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, IN, generator=g) * 1.5
    y = x[:, :OUT].argmax(1)
    return Dataset(
        train=Split(x[:160], y[:160]),
        validation=Split(x[160:180], y[160:180]),
        test=Split(x[180:], y[180:]),
        name="toy",
    )


def _monitored_fit(
    build: Any,
    every: int,
    folder: Any,
    patches: dict[tuple[Any, str], Any] | None = None,
    optimizer: str = "adam",
) -> Any:
    """The monitor of fit(monitor=watch(every)) with ``optimizer``, ``patches`` ((owner, name)
    → value) applied."""
    from steadygrad import monitor

    model = build()
    with pytest.MonkeyPatch.context() as mp, monitor.watch(model, every=every, out=folder) as mon:
        for (owner, name), value in (patches or {}).items():
            mp.setattr(owner, name, value)
        fit(
            model,
            _toy_data(),
            TrainConfig(
                epochs=2,
                batch_size=16,
                progress=False,
                out=None,
                optimizer=optimizer,
                lr=1e-3 if optimizer == "adam" else 0.05,
                device="cpu",
            ),
            monitor=mon,
        )
    return mon


def _same_records(a: Any, b: Any) -> None:
    """test_monitor's comparison (every field, floats to 1e-5), and the losses and notes too."""
    from tests.test_monitor import _assert_same_records

    _assert_same_records(a, b)
    assert a.notes == b.notes
    for ra, rb in zip(a.records, b.records, strict=True):
        assert ra.loss == pytest.approx(rb.loss, rel=1e-6)


KEPT_MODELS = {
    "elu, BatchNorm before": lambda: mlp("elu", "before"),
    "relu, BatchNorm after": lambda: mlp("relu", "after", output_bn=False),
    "leaky_relu, no BatchNorm": lambda: mlp("leaky_relu", None, output_bn=False),
    "selu, BatchNorm before, plain logits": lambda: mlp("selu", "before", output_bn=False),
}


@pytest.mark.parametrize(
    ("name", "every", "optimizer"),
    [(name, every, "adam") for name in KEPT_MODELS for every in (1, 3)]
    + [("elu, BatchNorm before", 2, opt) for opt in ("sgd", "momentum", "nesterov")],
)
def test_kept_records_equal_replayed_records(
    name: str, every: int, optimizer: str, tmp_path: Any
) -> None:
    """After one replayed step, fit's recorded native steps are recorded from the kernel's kept
    tensors and the update's sums, without a replay (inside native runs, or one by one): the
    records equal those of replaying every step (the same statistics of the same tensors,
    reduced in the same kernel)."""
    from steadygrad.monitor import _watch

    build = KEPT_MODELS[name]
    calls = {"fast": 0, "slow": 0}
    fast_finalize = _watch.Monitor._finalize_kept
    in_run = _watch.Monitor._record_row

    def counting(self: Any, *args: Any) -> bool:
        done = fast_finalize(self, *args)
        calls["fast" if done else "slow"] += 1
        return done

    def counting_in_run(self: Any, *args: Any) -> None:
        calls["fast"] += 1
        in_run(self, *args)

    kept = _monitored_fit(
        build,
        every,
        tmp_path / "kept",
        {
            (_watch.Monitor, "_finalize_kept"): counting,
            (_watch.Monitor, "_record_row"): counting_in_run,
        },
        optimizer=optimizer,
    )
    replayed = _monitored_fit(
        build,
        every,
        tmp_path / "replayed",
        {(_watch._FastObserver, "kept"): lambda self, key, tensors: False},
        optimizer=optimizer,
    )
    recorded = len(kept.records)
    assert recorded == len(range(0, 20, every))
    assert calls == {"fast": recorded - 1, "slow": 0}  # the first recorded step is replayed
    _same_records(kept, replayed)
    assert all(la.update_ratio is not None for r in kept.records[1:] for la in r.layers)


def test_kept_records_take_the_slow_path_where_sums_do_not_suffice(tmp_path: Any) -> None:
    """Where a sum is not finite or cancels, the kept step goes through _finalize (its precise
    second pass) instead; here forced on every step: the records still equal the replayed."""
    from steadygrad.monitor import _stats, _watch

    build = KEPT_MODELS["elu, BatchNorm before"]
    slow = _monitored_fit(
        build,
        2,
        tmp_path / "slow",
        {
            (_watch.Monitor, "_finalize_kept"): lambda self, *args: False,
            (_watch._FastObserver, "run_plan"): lambda self, *args: None,  # no runs recording
        },
    )
    replayed = _monitored_fit(
        build,
        2,
        tmp_path / "replayed",
        {(_watch._FastObserver, "kept"): lambda self, key, tensors: False},
    )
    _same_records(slow, replayed)
    assert _stats.sufficient(float("nan"), 1.0, 4) is False
    assert _stats.sufficient(4.0, 4.0 + 1e-6, 4) is False  # var ≪ mean²: cancellation


def test_kept_records_whose_sums_record_stats_flags_take_the_slow_path(tmp_path: Any) -> None:
    """``record_stats`` flags sums that cancel; here every sum does (CANCELLATION raised so that
    var < CANCELLATION · mean² always holds), so each kept step is declined by the native call
    itself and recorded by _finalize's precise pass: the records still equal the replayed."""
    from steadygrad.monitor import _stats, _watch

    build = KEPT_MODELS["elu, BatchNorm before"]
    slow_calls = {"n": 0}
    slowly = _watch.Monitor._finalize_kept_slowly

    def counting(self: Any, *args: Any) -> None:
        slow_calls["n"] += 1
        slowly(self, *args)

    flagged = _monitored_fit(
        build,
        2,
        tmp_path / "flagged",
        {
            (_stats, "CANCELLATION"): 1e30,
            (_watch.Monitor, "_finalize_kept_slowly"): counting,
        },
    )
    replayed = _monitored_fit(
        build,
        2,
        tmp_path / "replayed",
        {
            (_stats, "CANCELLATION"): 1e30,
            (_watch._FastObserver, "kept"): lambda self, key, tensors: False,
        },
    )
    assert slow_calls["n"] == len(flagged.records) - 1  # all but the first (replayed) step
    _same_records(flagged, replayed)


def test_update_ratios_from_the_updates_sums_equal_the_snapshots(tmp_path: Any) -> None:
    """With the native Adam's sums the monitor takes no copy of the weights: the update ratios
    equal those measured from a copy (torch's fused Adam, replayed steps; the two Adams round
    differently, hence the tolerance)."""
    from steadygrad.monitor import _watch

    build = KEPT_MODELS["elu, BatchNorm before"]
    snapshots = {"n": 0}
    take = _watch.Monitor._take_snapshot

    def counting(self: Any) -> None:
        snapshots["n"] += 1
        take(self)

    summed = _monitored_fit(
        build, 5, tmp_path / "sums", {(_watch.Monitor, "_take_snapshot"): counting}
    )
    assert snapshots["n"] == 0
    copied = _monitored_fit(
        build,
        5,
        tmp_path / "copies",
        {
            (FastStep, "gives_stats"): lambda self: False,
            (_watch.Monitor, "_take_snapshot"): counting,
        },
    )
    assert snapshots["n"] == 4  # before the updates of steps 4, 9, 14 and 19 (records 5 … 20)
    for ra, rb in zip(summed.records[1:], copied.records[1:], strict=True):
        for la, lb in zip(ra.layers, rb.layers, strict=True):
            assert la.update_ratio == pytest.approx(lb.update_ratio, rel=1e-3), (ra.step, la.name)


# --------------------------------------------------------------------------- the GEMM


def _gemm_case(
    trans_a: bool, trans_b: bool, m: int, n: int, k: int, beta: float, pad: int, seed: int
) -> None:
    """csrc/gemm.h's C = op(A) op(B) + βC against a float64 product, with leading dimensions
    ``pad`` wider than the rows; β = 0 must not read C (filled with NaN), and the padding
    columns of C stay untouched."""
    g = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols + pad, generator=g)[:, :cols]

    a = matrix(k, m) if trans_a else matrix(m, k)
    b = matrix(n, k) if trans_b else matrix(k, n)
    base = torch.randn(m, n + pad, generator=g) if beta else torch.full((m, n + pad), math.nan)
    c = base[:, :n]
    before = base.clone()
    expected = (a.t() if trans_a else a).double() @ (b.t() if trans_b else b).double()
    if beta:
        expected += before[:, :n].double()
    assert native.load().sgemm(trans_a, trans_b, a, b, c, beta)
    # float32 accumulation over k terms of size ≤ max|a|·max|b|
    bound = 2e-6 * max(k, 1) * float(a.abs().max() * b.abs().max()) if m * n * k else 0.0
    bound += 1e-6 * float(before[:, :n].abs().max()) if beta and m * n else 0.0
    if m * n:
        assert float((c.double() - expected).abs().max()) <= bound + 1e-30
    torch.testing.assert_close(base[:, n:], before[:, n:], equal_nan=True, rtol=0, atol=0)


def test_gemm_reads_gathered_rows_in_place_as_it_reads_a_copy() -> None:
    """The batch's rows read where they lie (csrc/loop.cpp's batches without a gather): the
    forward product X[idx]·Wᵀ and the weight gradient δᵀ·X[idx] equal, bit for bit, the same
    products of the gathered copy, on one and on several threads (the same products of the same
    numbers in the same order)."""
    one = torch.ones(1, 1)
    kernels = native.load()
    if not kernels.sgemm(False, False, one, one, torch.empty(1, 1), 0.0):
        pytest.skip("csrc/gemm.h needs AVX2 and FMA")
    g = torch.Generator().manual_seed(5)
    images = torch.randn(1000, 784, generator=g)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (1, 7, 50, 256):
                idx = torch.randperm(1000, generator=g)[:batch]
                x = images.index_select(0, idx)
                w = torch.randn(300, 784, generator=g)
                delta = torch.randn(batch, 300, generator=g)
                for trans_a, trans_b, a, b, shape, a_index, b_index in (
                    (False, True, images, w, (batch, 300), idx, None),  # forward
                    (True, False, delta, images, (300, 784), None, idx),  # weight gradient
                ):
                    copied, in_place = torch.empty(shape), torch.full(shape, math.nan)
                    a_copy = x if a_index is not None else a
                    b_copy = x if b_index is not None else b
                    assert kernels.sgemm(trans_a, trans_b, a_copy, b_copy, copied, 0.0)
                    assert kernels.sgemm(
                        trans_a, trans_b, a, b, in_place, 0.0, a_index=a_index, b_index=b_index
                    )
                    assert torch.equal(in_place, copied), (threads, batch, trans_a)
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(RuntimeError, match="indexed rows of an untransposed operand only"):
        kernels.sgemm(True, False, images, images, torch.empty(784, 784), 0.0, a_index=idx)


def test_gemm_on_the_steps_shapes_and_edges() -> None:
    """The eight products of a step (batches 1, 50, 216, 256: forward X·Wᵀ, weight gradient
    δᵀ·X, input gradient δ·W) and edge sizes around the 6×16 micro-tile and the blocks."""
    one = torch.ones(1, 1)
    if not native.load().sgemm(False, False, one, one, torch.empty(1, 1), 0.0):
        pytest.skip("csrc/gemm.h needs AVX2 and FMA")
    seed = 0
    for batch in (1, 50, 216, 256):
        for d_in, d_out in ((784, 300), (300, 100), (100, 10)):
            for case in (
                (False, True, batch, d_out, d_in),  # forward
                (True, False, d_out, d_in, batch),  # weight gradient
                (False, False, batch, d_in, d_out),  # input gradient
            ):
                seed += 1
                _gemm_case(*case, beta=0.0, pad=0, seed=seed)
    sizes = [1, 5, 6, 7, 15, 16, 17, 97, 401]
    for trans_a, trans_b in itertools.product((False, True), repeat=2):
        for m, n, k in [(1, 1, 1), (7, 17, 5), (6, 16, 400), (97, 33, 401), (13, 130, 0)]:
            for beta, pad in ((0.0, 0), (1.0, 3)):
                seed += 1
                _gemm_case(trans_a, trans_b, m, n, k, beta, pad, seed)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m, n, k = (sizes[int(i)] for i in torch.randint(len(sizes), (3,), generator=g))
        seed += 1
        _gemm_case(bool(seed % 2), bool(seed % 3), m, n, k, float(seed % 2), seed % 4, seed)
    # on several threads the columns are split into runs of 16-wide panels, one per thread
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for trans_a, trans_b in itertools.product((False, True), repeat=2):
            for m, n, k in [(50, 300, 784), (97, 130, 401), (256, 33, 300), (300, 17, 256)]:
                seed += 1
                _gemm_case(trans_a, trans_b, m, n, k, float(seed % 2), seed % 3, seed)
    finally:
        torch.set_num_threads(previous)


def test_gemm_is_used_up_to_two_threads_where_it_is_compiled() -> None:
    """The rule csrc/chain.cpp applies: gemm.h (where compiled: AVX2 + FMA, no AVX-512) on 1 and
    2 threads, ATen's products on more."""
    kernels = native.load()
    one = torch.ones(1, 1)
    compiled = kernels.sgemm(False, False, one, one, torch.empty(1, 1), 0.0)
    previous = torch.get_num_threads()
    try:
        used = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            used[threads] = kernels.gemm_in_use()
    finally:
        torch.set_num_threads(previous)
    assert used == {1: compiled, 2: compiled, 3: False}


def test_one_thread_and_three_give_the_same_step() -> None:
    """With one torch thread the native step's products are csrc/gemm.h's (where compiled), with
    three ATen's (MKL): the same loss, logits and gradients to float rounding."""
    x, y = batches(1)[0]
    results = {}
    for threads in (1, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model, step, _, _ = pair(lambda: mlp("elu", "before"))
            loss, logits = step(x, y)
            results[threads] = (loss, logits, [p.grad.clone() for p in model.parameters()])
        finally:
            torch.set_num_threads(previous)
    (l1, z1, g1), (l2, z2, g2) = results[1], results[3]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1, z2, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_second_fit_relearns_the_plan_and_histograms_keep_the_replay(tmp_path: Any) -> None:
    """The plan belongs to one fast step's layout: a second fit with the same monitor (a new
    fast step, as a resumed run has) replays its first recorded step again and records the rest
    from kept tensors; a monitor that records histograms replays every step (the plan does not
    carry them). Records equal those of replaying every step in both cases."""
    from steadygrad import monitor
    from steadygrad.monitor import _watch

    learned: list[bool] = []
    learn = _watch.Monitor._learn

    def counting(self: Any, *args: Any) -> Any:
        plan = learn(self, *args)
        learned.append(plan is not None)
        return plan

    def two_fits(folder: Any, histograms: bool, replay: bool) -> Any:
        model = mlp("elu", "before")
        config = TrainConfig(
            epochs=1, batch_size=16, progress=False, out=None, optimizer="adam", device="cpu"
        )
        with (
            pytest.MonkeyPatch.context() as mp,
            monitor.watch(model, every=2, out=folder, histograms=histograms) as mon,
        ):
            mp.setattr(_watch.Monitor, "_learn", counting)
            if replay:
                mp.setattr(_watch._FastObserver, "kept", lambda self, key, tensors: False)
            fit(model, _toy_data(), config, monitor=mon)
            fit(model, _toy_data(), config, monitor=mon)
        return mon

    kept = two_fits(tmp_path / "kept", histograms=False, replay=False)
    assert learned == [True, True]  # one replayed step per fit, each teaching a plan
    replayed = two_fits(tmp_path / "replayed", histograms=False, replay=True)
    _same_records(kept, replayed)
    assert len(kept.records) == 10
    learned.clear()
    with_histograms = two_fits(tmp_path / "histograms", histograms=True, replay=False)
    assert learned == [False] * 10  # every recorded step replayed; none teaches a plan
    assert all(r.histograms for r in with_histograms.records)
