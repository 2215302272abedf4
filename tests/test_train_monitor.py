"""``fit(..., monitor=...)``: every step takes the fast path, recorded ones shown to the monitor.

A monitor's hooks used to send every step of ``fit`` down the plain (autograd) path. Now the
monitor is told of the steps it does not record (``Monitor.pass_step``), and the steps it records
are replayed to it by the fast step (``Monitor.fast_observer``: what its hooks would have seen);
the records must be those of an all-plain run, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.test_train import cfg, toy_data, toy_model
from torch import nn

from steadygrad import activations, fast, models, monitor, native
from steadygrad.monitor import LAYER_STATS_KEYS
from steadygrad.nn import BatchNorm, Dense
from steadygrad.train import fit

STEPS_PER_EPOCH = 13  # 400 samples in batches of 32


def _architectures() -> dict[str, Callable[[], nn.Module]]:
    """Models the fast step takes, built in different ways (all 20 → 3)."""

    def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            torch.manual_seed(1)
            return build()

        return make

    return {
        "linear-bn-elu": toy_model,
        "dense-own-activation": seeded(
            lambda: nn.Sequential(
                Dense(20, 16, activation="tanh"), Dense(16, 12, activation="relu"), nn.Linear(12, 3)
            )
        ),
        "identity-flatten-bn-after-act": seeded(
            lambda: nn.Sequential(
                nn.Flatten(),
                nn.Linear(20, 16),
                nn.Identity(),
                activations.Identity(),
                nn.LeakyReLU(0.1),
                nn.BatchNorm1d(16),
                nn.Linear(16, 3),
            )
        ),
        "no-activation-between": seeded(
            lambda: nn.Sequential(
                nn.Linear(20, 16), BatchNorm(16), nn.Linear(16, 16), nn.SELU(), nn.Linear(16, 3)
            )
        ),
        "reference-like": seeded(lambda: models.mlp(20, [16, 8], 3, batch_norm="before")),
    }


def _monitored_fit(
    every: int, use_fast: bool, tmp_path: Path, build: Callable[[], nn.Module] = toy_model
) -> tuple[monitor.Monitor, list[int]]:
    model = build()
    calls: list[int] = []  # per step: 1 fast (2: in a native run of steps), 0 not fast
    original = fast.FastStep.try_fast
    original_run = fast.FastStep.train_steps

    def counting(self: fast.FastStep, *args: object, **kwargs: object) -> object:
        out = original(self, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(0 if out is None else 1)
        return out

    def counting_run(self: fast.FastStep, *args: object, **kwargs: object) -> fast.StepsTaken:
        taken = original_run(self, *args, **kwargs)  # type: ignore[arg-type]
        calls.extend([2] * taken.steps)
        return taken

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast.FastStep, "try_fast", counting)
        mp.setattr(fast.FastStep, "train_steps", counting_run)
        with monitor.watch(model, every=every, out=tmp_path) as mon:
            fit(model, toy_data(), cfg(epochs=2, fast=use_fast), monitor=mon)
    return mon, calls


@pytest.mark.parametrize(
    ("every", "arch"),
    [(1, "linear-bn-elu"), (3, "linear-bn-elu"), (5, "linear-bn-elu")]
    + [(2, name) for name in list(_architectures())[1:]],
)
def test_records_match_an_all_plain_run_step_for_step(
    every: int, arch: str, tmp_path: Path
) -> None:
    """Steps recorded through the fast step's observer (no hooks fired, no autograd graph) give
    the records of an all-plain run through forward and autograd, field by field."""
    build = _architectures()[arch]
    fast_mon, calls = _monitored_fit(every, True, tmp_path / "fast", build)
    plain_mon, plain_calls = _monitored_fit(every, False, tmp_path / "plain", build)
    assert [(i.name, i.activation, i.depth) for i in fast_mon.layers] == [
        (i.name, i.activation, i.depth) for i in plain_mon.layers
    ]
    assert fast_mon.notes == plain_mon.notes
    total = 2 * STEPS_PER_EPOCH
    recorded = list(range(0, total, every))
    assert plain_calls == []  # fast=False: no fast step at all
    assert [r.step for r in plain_mon.records] == recorded
    assert [r.step for r in fast_mon.records] == recorded
    # every step was fast: one by one (1), the recorded ones shown to the monitor by the fast
    # step itself, or in native runs (2), the recorded ones shown to it from their kept tensors
    # after the run; the first recorded step is replayed (the monitor learns its plan from it)
    assert len(calls) == total
    assert calls[0] == 1 and set(calls) <= {1, 2}, calls
    if arch == "linear-bn-elu" and native.load() is not None:
        assert calls[1:] == [2] * (total - 1), calls
    for a, b in zip(fast_mon.records, plain_mon.records, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6)
        assert len(a.layers) == len(b.layers) >= 2
        for la, lb in zip(a.layers, b.layers, strict=True):
            for key in LAYER_STATS_KEYS:
                va, vb = getattr(la, key), getattr(lb, key)
                if isinstance(va, float) and isinstance(vb, float):
                    assert math.isclose(va, vb, rel_tol=2e-3, abs_tol=1e-6), (a.step, key)
                else:
                    assert va == vb, (a.step, key)
    # the update ratio of a recorded step after fast steps is measured (snapshot by pass_step)
    assert all(layer.update_ratio is not None for r in fast_mon.records[1:] for layer in r.layers)
    log = monitor.read(tmp_path / "fast")
    assert [r.step for r in log.records] == recorded
    assert all(r.loss is not None for r in log.records)


def test_someone_elses_hook_still_turns_the_fast_path_off(tmp_path: Path) -> None:
    model = toy_model()
    seen: list[int] = []
    model[0].register_forward_hook(lambda m, a, o: seen.append(1))
    with monitor.watch(model, every=4, out=tmp_path) as mon:
        fit(model, toy_data(), cfg(epochs=1), monitor=mon)
    assert len(seen) == STEPS_PER_EPOCH + 3  # every step ran forward (+3 evaluations)
    assert [r.step for r in mon.records] == [0, 4, 8, 12]


def test_pass_step_refuses_a_recorded_step_and_optimizer_monitors() -> None:
    model = toy_model()
    with monitor.watch(model, every=2) as mon:
        assert mon.records_next_step()
        with pytest.raises(RuntimeError, match="step 0 is recorded: run it through the model"):
            mon.pass_step()
        model(torch.randn(4, 20)).sum().backward()
        assert not mon.records_next_step()
        mon.pass_step()  # step 1
        assert mon.records_next_step() and mon.step == 1
    assert not mon.records_next_step()  # closed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor.watch(model, optimizer=optimizer) as mon:
        assert mon.step_unit == "optimizer_step"
        with pytest.raises(RuntimeError, match="counts optimizer steps"):
            mon.pass_step()
        with pytest.raises(ValueError, match="give fit a monitor made without optimizer="):
            fit(model, toy_data(), cfg(epochs=1), monitor=mon)


def test_fast_step_declines_only_for_hooks_not_owned_by_the_exempt_object() -> None:
    model = toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = fast.FastStep(model, optimizer)
    x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    with monitor.watch(model, every=100) as mon:
        assert step.try_fast(x, y) is None  # the monitor's root hooks: not exempt
        assert step.last_fallback == "a module has forward/backward hooks"
        before: list[int] = []
        out = step.try_fast(x, y, ignore_hooks_of=mon, before=lambda: before.append(1))
        assert out is not None and before == [1]
        assert step.try_fast(x, y, ignore_hooks_of=object()) is None


@pytest.mark.parametrize("kind", ["adam", "sgd-momentum"])
def test_autograd_step_equals_the_plain_step(kind: str) -> None:
    """Forward and backward by autograd (hooks see them), update by the fused kernels."""
    import torch.nn.functional as F

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = toy_model()
        if kind == "adam":
            return model, torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    (a, opt_a), (b, opt_b) = make(), make()
    step = fast.FastStep(b, opt_b)
    seen: list[int] = []
    b[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss_a = F.cross_entropy(a(x), y)
        opt_a.zero_grad(set_to_none=True)
        loss_a.backward()  # type: ignore[no-untyped-call]
        opt_a.step()
        loss_b, _ = step.autograd_step(x, y)
        assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)
    assert seen == [16] * 6  # the hook saw every forward
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if name == "0.bias" and kind == "adam":
            continue  # in front of BatchNorm: a zero gradient's rounding noise, see test_train
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    if kind == "adam":
        assert all(float(state_b[k]["step"]) == 6 for k in state_b)


def test_the_divergence_replay_is_not_recorded_again(tmp_path: Path) -> None:
    from steadygrad.errors import TrainingDiverged

    model = toy_model(bn=False)
    with monitor.watch(model, every=2, out=tmp_path) as mon:
        with pytest.raises(TrainingDiverged, match="training diverged at epoch 1"):
            fit(model, toy_data(), cfg(optimizer="sgd", lr=1e18, epochs=1), monitor=mon)
        assert mon.step == STEPS_PER_EPOCH - 1  # the replay's forwards were not steps
    steps = [r.step for r in mon.records]
    assert steps == list(range(0, STEPS_PER_EPOCH, 2))  # each step once, none from the replay
    assert any(layer.nan + layer.inf > 0 for r in mon.records for layer in r.layers)


def test_paused_forwards_are_not_steps() -> None:
    model = toy_model()
    x = torch.randn(8, 20)
    with monitor.watch(model, every=1) as mon:
        model(x).sum().backward()  # type: ignore[no-untyped-call]
        with mon.paused():
            for _ in range(3):
                model(x).sum().backward()  # type: ignore[no-untyped-call]
            mon.pass_step()  # ignored as well
        model(x).sum().backward()  # type: ignore[no-untyped-call]
    assert [r.step for r in mon.records] == [0, 1]


def test_histograms_of_replayed_steps_match_the_plain_run(tmp_path: Path) -> None:
    records = []
    observed: list[int] = []
    original = fast.FastStep.try_fast

    def counting(self: fast.FastStep, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if kwargs.get("observer") is not None and out is not None:
            observed.append(1)
        return out

    for use_fast in (True, False):
        model = toy_model()
        with (
            pytest.MonkeyPatch.context() as mp,
            monitor.watch(model, every=4, histograms=True, out=tmp_path / str(use_fast)) as mon,
        ):
            mp.setattr(fast.FastStep, "try_fast", counting)
            fit(model, toy_data(), cfg(epochs=1, fast=use_fast), monitor=mon)
        records.append(mon.records)
    assert len(observed) == 4  # the 4 recorded steps of the fast run were replayed
    fast_records, plain_records = records
    assert [r.step for r in fast_records] == [0, 4, 8, 12]
    for a, b in zip(fast_records, plain_records, strict=True):
        assert a.histograms.keys() == b.histograms.keys() == {"0", "3"}
        for name, hists in a.histograms.items():
            for which in ("act", "grad"):
                ha, hb = hists[which], b.histograms[name][which]
                assert sum(ha["counts"]) == sum(hb["counts"]) > 0
                np_a, np_b = torch.tensor(ha["edges"]), torch.tensor(hb["edges"])
                torch.testing.assert_close(np_a, np_b, rtol=2e-3, atol=1e-6)
                # a value on a bin edge may fall on either side: counts agree to ±2 per bin
                diff = torch.tensor(ha["counts"]) - torch.tensor(hb["counts"])
                assert int(diff.abs().max()) <= 2, (a.step, name, which)


def _records_by_path(
    every: int, optimizer: str, batched: bool, tmp_path: Path, cancelling: bool = False
) -> tuple[list[dict[str, Any]], int, int]:
    """fit's records with the recorded steps recorded inside native runs (``batched``) or each
    taken alone by the per-step native path and read from its kept tensors
    (``_FastObserver.run_plan`` says no); the number of native calls (runs and single steps),
    and of records the monitor had to finish by its precise path."""
    from steadygrad.monitor import _watch

    torch.manual_seed(1)
    model = models.mlp(20, [16, 8], 3, batch_norm="before")
    if cancelling:  # W ≈ 1 + 0.1 % noise: var < CANCELLATION · mean², the sums do not suffice
        with torch.no_grad():
            model[-1].weight.copy_(1.0 + 1e-3 * torch.randn_like(model[-1].weight))
    runs: list[int] = []
    slow: list[int] = []
    original_run = fast.FastStep.train_steps
    original_step = fast.FastStep.try_fast
    original_slow = _watch.Monitor._finalize_kept_slowly

    def counting_run(self: fast.FastStep, *args: Any, **kwargs: Any) -> fast.StepsTaken:
        taken = original_run(self, *args, **kwargs)
        runs.append(taken.steps)
        return taken

    def counting_step(self: fast.FastStep, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return original_step(self, *args, **kwargs)

    def counting_slow(self: Any, *args: Any, **kwargs: Any) -> None:
        slow.append(1)
        original_slow(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast.FastStep, "train_steps", counting_run)
        mp.setattr(fast.FastStep, "try_fast", counting_step)
        mp.setattr(_watch.Monitor, "_finalize_kept_slowly", counting_slow)
        if not batched:
            mp.setattr(_watch._FastObserver, "run_plan", lambda self, *a: None)
        with monitor.watch(model, every=every, out=tmp_path) as mon:
            lr = 1e-4 if cancelling else 0.01  # slow enough to keep W's entries together
            fit(model, toy_data(), cfg(epochs=2, optimizer=optimizer, lr=lr), monitor=mon)
    assert [r.step for r in monitor.read(tmp_path).records] == [r.step for r in mon.records]
    return [r.to_dict() for r in mon.records], len(runs), len(slow)


@pytest.mark.skipif(native.load() is None, reason="native kernels not built")
@pytest.mark.parametrize(("every", "optimizer"), [(1, "adam"), (3, "momentum"), (5, "adam")])
def test_records_inside_native_runs_equal_those_of_steps_taken_alone(
    every: int, optimizer: str, tmp_path: Path
) -> None:
    """Recording inside a native run (loop.cpp with a RecordPlan) runs the same kernels in the
    same order as the per-step native path whose kept tensors the monitor reads after each
    recorded step: the same records, number for number, in far fewer native calls."""
    inside, calls_inside, slow = _records_by_path(every, optimizer, True, tmp_path / "in")
    apart, calls_apart, _ = _records_by_path(every, optimizer, False, tmp_path / "apart")
    assert [r["step"] for r in inside] == list(range(0, 2 * STEPS_PER_EPOCH, every))
    assert inside == apart
    assert all(layer["update_ratio"] is not None for r in inside[1:] for layer in r["layers"])
    assert slow == 0
    # the first step alone (recorded and replayed: the monitor learns its plan), then one run
    # per epoch; apart, every recorded step is a native call of its own
    assert calls_inside == 3
    assert calls_apart >= len(inside)


@pytest.mark.skipif(native.load() is None, reason="native kernels not built")
@pytest.mark.parametrize("every", [1, 4])
def test_a_recorded_step_whose_sums_do_not_suffice_ends_the_run_and_is_recorded_precisely(
    every: int, tmp_path: Path
) -> None:
    inside, calls, slow = _records_by_path(every, "adam", True, tmp_path / "in", True)
    apart, _, slow_apart = _records_by_path(every, "adam", False, tmp_path / "apart", True)
    assert slow == slow_apart == len(inside) - 1  # all but the first (replayed) one
    assert calls >= slow + 1  # each such step ended its run
    assert inside == apart
