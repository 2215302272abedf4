"""The native loop (``csrc/loop.cpp``, :meth:`FastStep.train_steps`): many steps in one call.

Reference: the same steps taken one by one by the native fast step, with ``fit``'s epoch sums
(``loss_sum += m · loss``, ``correct += right argmaxes``) added in Python. The loop runs the same
kernels in the same order, so the comparisons are exact (``torch.equal``), not approximate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from steadygrad import models, monitor, native
from steadygrad.fast import FastStep, StepsTaken, make_step

pytestmark = pytest.mark.skipif(native.load() is None, reason="native kernels unavailable here")

N, IN, OUT = 230, 12, 4
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "sgd-decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-2, dampening=0.1),
}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, IN, generator=g) * 2 + 0.5
    labels = torch.randint(0, OUT, (N,), generator=g)
    return images, labels, torch.randperm(N, generator=g)


def mlp() -> nn.Module:
    return models.mlp(
        IN, [10, 8], OUT, "elu", batch_norm="before", generator=torch.Generator().manual_seed(1)
    )


def bounds_of(n: int, batch: int) -> list[tuple[int, int]]:
    """fit's batches: the last one smaller where ``batch`` does not divide ``n``."""
    return [(lo, min(lo + batch, n)) for lo in range(0, n, batch)]


def sums() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)


def one_by_one(
    step: FastStep,
    images: torch.Tensor,
    labels: torch.Tensor,
    perm: torch.Tensor,
    bounds: list[tuple[int, int]],
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
) -> None:
    for lo, hi in bounds:
        idx = perm[lo:hi]
        loss, _ = step(images.index_select(0, idx), labels.index_select(0, idx))
        assert step.last_correct is not None
        loss_sum.add_(loss, alpha=hi - lo)
        correct.add_(step.last_correct)


def pair(optimizer: str) -> tuple[nn.Module, FastStep, nn.Module, FastStep]:
    a = mlp()
    b = copy.deepcopy(a)
    step_a = make_step(a, OPTIMIZERS[optimizer](a.parameters()), native=True)
    step_b = make_step(b, OPTIMIZERS[optimizer](b.parameters()), native=True)
    assert step_a is not None and step_b is not None
    return a, step_a, b, step_b


def assert_same(a: nn.Module, step_a: FastStep, b: nn.Module, step_b: FastStep) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)  # type: ignore[arg-type]
    oa, ob = step_a.optimizer.state_dict()["state"], step_b.optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for name, value in oa[i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob[i][name])), (i, name)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("batch", [16, 50])
def test_a_run_of_steps_equals_the_steps_one_by_one(optimizer: str, batch: int) -> None:
    images, labels, perm = data()
    bounds = bounds_of(N, batch)  # 230 = 14·16 + 6 = 4·50 + 30: a smaller last batch
    a, step_a, b, step_b = pair(optimizer)
    la, ca = sums()
    lb, cb = sums()
    # the first step one by one on both: torch's first momentum step fills the buffers
    one_by_one(step_a, images, labels, perm, bounds[:1], la, ca)
    one_by_one(step_b, images, labels, perm, bounds[:1], lb, cb)
    one_by_one(step_a, images, labels, perm, bounds[1:], la, ca)
    assert step_b.train_steps(images, labels, perm, bounds[1:], lb, cb).steps == len(bounds) - 1
    assert_same(a, step_a, b, step_b)
    assert torch.equal(la, lb) and torch.equal(ca, cb)
    assert step_b.native_calls == step_b.fast_calls == len(bounds)
    # the runs' own batches: perm's rows, not the first rows of the data
    assert 0 < ca.item() < N


def test_it_continues_where_the_last_run_or_step_left_off() -> None:
    images, labels, perm = data(1)
    bounds = bounds_of(N, 20)
    a, step_a, b, step_b = pair("adam")
    (la, ca), (lb, cb) = sums(), sums()
    one_by_one(step_a, images, labels, perm, bounds, la, ca)
    assert step_b.train_steps(images, labels, perm, bounds[:3], lb, cb).steps == 3
    one_by_one(step_b, images, labels, perm, bounds[3:5], lb, cb)
    assert step_b.train_steps(images, labels, perm, bounds[5:], lb, cb).steps == len(bounds) - 5
    assert_same(a, step_a, b, step_b)
    assert torch.equal(la, lb) and torch.equal(ca, cb)


def test_it_stops_before_a_step_it_cannot_take_and_changes_nothing_of_it() -> None:
    images, labels, perm = data(2)
    bounds = bounds_of(N, 20)
    a, step_a, b, step_b = pair("adam")
    (la, ca), (lb, cb) = sums(), sums()
    one_by_one(step_a, images, labels, perm, bounds[:4], la, ca)
    bad = perm.clone()
    bad[bounds[4][0] + 3] = N  # an index out of range in the fifth batch
    assert step_b.train_steps(images, labels, bad, bounds, lb, cb).steps == 4
    assert_same(a, step_a, b, step_b)
    assert torch.equal(la, lb) and torch.equal(ca, cb)
    wrong = labels.clone()
    wrong[perm[bounds[0][0]]] = OUT  # a label out of range in the first batch
    assert step_b.train_steps(images, wrong, perm, bounds, lb, cb).steps == 0
    assert_same(a, step_a, b, step_b)


def test_it_declines_what_the_per_step_path_must_take() -> None:
    images, labels, perm = data(3)
    _, _, b, step_b = pair("adam")
    lb, cb = sums()
    before = copy.deepcopy(b.state_dict())

    def unchanged() -> bool:
        return all(torch.equal(v, b.state_dict()[k]) for k, v in before.items())

    # a batch of one with BatchNorm in train mode (torch raises; the per-step path shows it)
    assert step_b.train_steps(images, labels, perm, [(0, 20), (20, 21)], lb, cb).steps == 0
    # no steps; float64 inputs; labels of another dtype
    assert step_b.train_steps(images, labels, perm, [], lb, cb).steps == 0
    assert step_b.train_steps(images.double(), labels, perm, [(0, 20)], lb, cb).steps == 0
    assert step_b.train_steps(images, labels.int(), perm, [(0, 20)], lb, cb).steps == 0
    # a forward hook: it must see every step
    handle = b[0].register_forward_hook(lambda *args: None)
    assert step_b.train_steps(images, labels, perm, [(0, 20)], lb, cb).steps == 0
    handle.remove()
    # an optimizer step hook: optimizer.step() must run
    handle = step_b.optimizer.register_step_post_hook(lambda *args: None)
    assert step_b.train_steps(images, labels, perm, [(0, 20)], lb, cb).steps == 0
    handle.remove()
    # sums of the wrong dtype
    assert step_b.train_steps(images, labels, perm, [(0, 20)], lb.float(), cb).steps == 0
    assert unchanged() and lb.item() == 0 and cb.item() == 0
    assert step_b.train_steps(images, labels, perm, [(0, 20)], lb, cb).steps == 1
    assert not unchanged() and lb.item() > 0


def test_eval_mode_batch_norm_and_a_python_only_activation_decline() -> None:
    images, labels, perm = data(4)
    _, _, b, step_b = pair("sgd")
    lb, cb = sums()
    b.eval()
    assert step_b.train_steps(images, labels, perm, [(0, 20)], lb, cb).steps == 0
    sigmoid = models.mlp(IN, [10], OUT, "sigmoid", generator=torch.Generator().manual_seed(1))
    step = make_step(sigmoid, torch.optim.SGD(sigmoid.parameters(), lr=0.1), native=True)
    assert step is not None and step._native is None
    assert step.train_steps(images, labels, perm, [(0, 20)], lb, cb).steps == 0


def test_monitor_counts_a_run_of_passed_steps() -> None:
    model = mlp()
    with monitor.watch(model, every=10) as mon:
        assert mon.steps_to_pass() == 0  # step 0 is recorded
        model(torch.randn(8, IN)).sum().backward()
        assert mon.steps_to_pass() == 8  # steps 1–8; step 9's update goes into record 10
        with pytest.raises(RuntimeError, match=r"pass at most steps_to_pass\(\) = 8 at once"):
            mon.pass_step(9)
        mon.pass_step(3)
        assert mon.steps_to_pass() == 5
        mon.pass_step(5)
        assert mon.steps_to_pass() == 0 and not mon.records_next_step()
        mon.pass_step()  # step 9, alone
        assert mon.records_next_step()
        for bad in (0, -1, True, 1.0):
            with pytest.raises(ValueError, match="steps must be a positive int"):
                mon.pass_step(bad)  # type: ignore[arg-type]
    for every, after_first in ((1, 0), (2, 0), (3, 1)):
        net = mlp()
        with monitor.watch(net, every=every) as mon:
            net(torch.randn(8, IN)).sum().backward()
            assert mon.steps_to_pass() == after_first, every
    assert mon.steps_to_pass() > 10**9  # closed: nothing to see


def test_fit_with_a_callback_takes_every_step_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from steadygrad.data import Dataset, Split
    from steadygrad.train import TrainConfig, fit

    images, labels, _ = data(5)
    split = Split(images, labels)
    dataset = Dataset(train=split, validation=split, test=split, name="toy")
    runs: list[int] = []
    original = FastStep.train_steps

    def counting(self: FastStep, *args: Any, **kwargs: Any) -> StepsTaken:
        taken = original(self, *args, **kwargs)
        runs.append(taken.steps)
        return taken

    monkeypatch.setattr(FastStep, "train_steps", counting)
    config = TrainConfig(epochs=1, batch_size=20, progress=False, device="cpu")
    fit(mlp(), dataset, config)
    assert sum(runs) == 12  # ⌈230 / 20⌉ steps, all in runs
    runs.clear()
    seen: list[int] = []
    fit(mlp(), dataset, config, on_step_end=lambda step, loss: seen.append(step))
    assert runs == [] and seen == list(range(1, 13))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "nesterov"])
@pytest.mark.parametrize("last_sums", ["change", "all"])
def test_the_last_step_gives_the_update_sums_and_kept_tensors(
    optimizer: str, last_sums: str
) -> None:
    """What a monitor gets from a run's last step: the update's sums and the kept tensors that
    the same step taken alone by try_fast (observer and update_stats) gives."""
    images, labels, perm = data(6)
    bounds = bounds_of(N, 20)[:5]
    a, step_a, b, step_b = pair(optimizer)
    la, ca = sums()
    lb, cb = sums()
    one_by_one(step_a, images, labels, perm, bounds[:1], la, ca)
    one_by_one(step_b, images, labels, perm, bounds[:1], lb, cb)
    one_by_one(step_a, images, labels, perm, bounds[1:4], la, ca)
    got: list[Any] = []

    class Keeper:
        def enter(self, *args: Any) -> None: ...
        def exit(self, *args: Any) -> None: ...
        def gradient(self, *args: Any) -> None: ...
        def backward_done(self) -> None: ...

        def kept(self, key: object, tensors: list[torch.Tensor]) -> bool:
            got.append([t.clone() for t in tensors])
            return True

        def updated(self, params: list[torch.Tensor], stats: torch.Tensor | None) -> None:
            got.append(stats)

    lo, hi = bounds[4]
    keeper = Keeper()
    loss, _ = step_a.try_fast(  # type: ignore[misc]
        images[perm[lo:hi]],
        labels[perm[lo:hi]],
        observer=keeper,  # type: ignore[arg-type]
        update_stats=keeper.updated,
        change_only=last_sums == "change",
    )
    taken = step_b.train_steps(
        images, labels, perm, bounds[1:], lb, cb, last_sums=last_sums, keep_last=True
    )
    assert taken.steps == 4 and taken.sums is not None and taken.kept is not None
    kept_a, sums_a = got
    torch.testing.assert_close(taken.sums, sums_a, rtol=0, atol=0, equal_nan=True)
    if last_sums == "change" and optimizer.startswith("adam"):  # SGD's update takes all five
        assert taken.sums[:, :4].isnan().all() and taken.sums[:, 4].isfinite().all()
    else:
        assert taken.sums.isfinite().all()
    assert len(taken.kept) == len(kept_a) == step_b.kept_layout()[1]  # type: ignore[index]
    for x, y in zip(taken.kept, kept_a, strict=True):
        assert torch.equal(x, y)
    assert taken.loss is not None and torch.equal(taken.loss, loss)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_run_that_stops_early_gives_no_last_step_extras() -> None:
    images, labels, perm = data(7)
    bounds = bounds_of(N, 20)[:4]
    _, _, _, step = pair("adam")
    ls, cs = sums()
    bad = perm.clone()
    bad[bounds[3][0]] = -1
    taken = step.train_steps(images, labels, bad, bounds, ls, cs, last_sums="all", keep_last=True)
    assert taken == (3, None, None, None, None)
    # sums the update cannot give (amsgrad): declined before anything is done
    _, _, _, ams = pair("amsgrad")
    assert ams.train_steps(images, labels, perm, bounds, ls, cs, last_sums="all").steps == 0


def test_fit_with_a_progress_bar_draws_it_where_runs_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs end at every ``progress_every``-th step, so the bar reads the running loss there, and
    the epoch's numbers equal those of a run without a bar (runs of up to 100 steps)."""
    from steadygrad import train
    from steadygrad.data import Dataset, Split
    from steadygrad.train import TrainConfig, fit

    images, labels, _ = data(8)
    split = Split(images, labels)
    dataset = Dataset(train=split, validation=split, test=split, name="toy")
    drawn: list[tuple[int, float]] = []
    monkeypatch.setattr(
        train._Bar, "update", lambda self, task, done, loss: drawn.append((done, loss))
    )
    config = dict(epochs=2, batch_size=10, device="cpu", progress_every=4)
    shown = fit(mlp(), dataset, TrainConfig(**config, progress=True))  # type: ignore[arg-type]
    hidden = fit(mlp(), dataset, TrainConfig(**config, progress=False))  # type: ignore[arg-type]
    assert [done for done, _ in drawn] == [4, 8, 12, 16, 20] * 2  # 23 steps an epoch
    assert all(math.isfinite(loss) for _, loss in drawn)
    for a, b in zip(shown, hidden, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]


def test_an_unknown_last_sums_is_a_one_line_error() -> None:
    images, labels, perm = data(9)
    _, _, _, step = pair("adam")
    ls, cs = sums()
    with pytest.raises(ValueError, match=r"^last_sums must be None, 'change' or 'all'; got 'al'$"):
        step.train_steps(images, labels, perm, [(0, 20)], ls, cs, last_sums="al")
