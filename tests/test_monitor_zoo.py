"""The monitor on models we did not write: it never changes outputs or gradients, bitwise.

Each zoo model trains 3 SGD steps from the same seed with ``monitor.watch(model, every=1)`` and
without; outputs and every parameter gradient must be ``torch.equal``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import monitor
from steadygrad.nn import Dense


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(F.relu(self.a(x))))


class Twice(nn.Module):
    """The same Linear called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


class Tied(nn.Module):
    """Encoder/decoder sharing one weight (decoder uses its transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 4)
        self.dec = nn.Linear(4, 8)
        self.dec.weight = nn.Parameter(self.enc.weight.detach().t().clone())
        self.head = nn.Linear(8, 3)
        self.head2 = nn.Linear(8, 3)
        self.head2.weight = self.head.weight  # tied weights: one Parameter, two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dec(F.relu(self.enc(x)))
        return self.head(h) + self.head2(h.flip(1))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 6), nn.ELU())
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.a(h), self.b(h)


class DictOut(TupleOut):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        a, b = super().forward(x)
        return {"a": a, "b": b}


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(8, 6)
        self.l2 = nn.Linear(6, 5)
        self.l3 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.tanh(self.l2(F.relu(self.l1(x)))))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(4, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 2, 4))
        return self.head(out[:, -1])


def frozen() -> nn.Module:
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m


def dropout_eval() -> nn.Module:
    m = nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 3))
    m[1].eval()
    return m


# name → (builder, input shape)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn1d": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(12, 3)
        ),
        (4, 2, 8),
    ),
    "cnn2d": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(12, 3),
        ),
        (4, 1, 4, 4),
    ),
    "cnn3d": (
        lambda: nn.Sequential(
            nn.Conv3d(1, 2, 2), nn.Tanh(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 3)
        ),
        (3, 1, 3, 3, 3),
    ),
    "residual": (
        lambda: nn.Sequential(nn.Linear(8, 6), Residual(6), Residual(6), nn.Linear(6, 3)),
        (4, 8),
    ),
    "inplace_relu": (
        lambda: nn.Sequential(nn.Linear(8, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)),
        (4, 8),
    ),
    "called_twice": (Twice, (4, 8)),
    "tied_weights": (Tied, (4, 8)),
    "tuple_outputs": (TupleOut, (4, 8)),
    "dict_outputs": (DictOut, (4, 8)),
    "frozen_layer": (frozen, (4, 8)),
    "parameter_free": (
        lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Identity(), nn.Softmax(-1), nn.Flatten()
        ),
        (4, 2, 4),
    ),
    "functional": (Functional, (4, 8)),
    "batchnorm1d": (
        lambda: nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.SELU(), nn.Linear(6, 3)),
        (4, 8),
    ),
    "dense_activation": (
        lambda: nn.Sequential(Dense(8, 6, activation="elu"), Dense(6, 3)),
        (4, 8),
    ),
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3)),
        (4, 8),
    ),
    "gru": (lambda: Recurrent(nn.GRU), (4, 8)),
    "lstm": (lambda: Recurrent(nn.LSTM), (4, 8)),
    "dropout_eval": (dropout_eval, (4, 8)),
    "nested_sequential": (
        lambda: nn.Sequential(
            nn.Sequential(nn.Sequential(nn.Linear(8, 6), nn.Sigmoid()), nn.Identity()),
            nn.Sequential(nn.Linear(6, 3)),
        ),
        (4, 8),
    ),
    "leaky_prelu": (
        lambda: nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.PReLU(), nn.Linear(8, 3)),
        (4, 8),
    ),
}


def loss_of(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return sum((v.float().mean() for v in out.values()), torch.zeros(()))
    if isinstance(out, tuple):
        return sum((v.float().mean() for v in out), torch.zeros(()))
    return out.float().mean()


def flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [out[k].detach().clone() for k in sorted(out)]
    if isinstance(out, tuple):
        return [v.detach().clone() for v in out]
    return [out.detach().clone()]


def train3(name: str, watched: bool) -> tuple[list[Any], list[list[torch.Tensor]], Any]:
    builder, shape = ZOO[name]
    torch.manual_seed(0)
    model = builder()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable or [nn.Parameter(torch.zeros(1))], lr=0.05)
    outputs: list[Any] = []
    grads: list[list[torch.Tensor]] = []
    mon = monitor.watch(model, every=1) if watched else None
    try:
        for step in range(3):
            model.train()
            if name == "dropout_eval":
                model[1].eval()  # type: ignore[index]
            opt.zero_grad()
            out = model(x[step])
            loss = loss_of(out)
            loss.backward()
            if mon is not None:
                mon.log_loss(loss)
            outputs.append(flat(out))
            grads.append(
                [
                    p.grad.clone() if p.grad is not None else torch.zeros(0)
                    for p in model.parameters()
                ]
            )
            opt.step()
    finally:
        if mon is not None:
            mon.close()
    return outputs, grads, mon


@pytest.mark.parametrize("name", sorted(ZOO))
def test_monitor_never_changes_outputs_or_gradients(name: str) -> None:
    plain_out, plain_grads, _ = train3(name, watched=False)
    watched_out, watched_grads, mon = train3(name, watched=True)
    for a, b in zip(plain_out, watched_out, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for a, b in zip(plain_grads, watched_grads, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert mon.layers or mon.notes, f"{name}: no layer recorded and nothing said why"
    if name != "parameter_free":
        assert mon.records, f"{name}: no step recorded"


def test_zoo_has_at_least_15_architectures() -> None:
    assert len(ZOO) >= 15


@pytest.mark.slow  # compiling takes ~20 s on 2 cores
def test_torch_compile_model_is_watched_without_changing_it() -> None:
    import time

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    started = time.perf_counter()
    try:
        compiled = torch.compile(build())
        reference = compiled(x)
    except Exception as exc:  # no compiler toolchain here
        pytest.skip(f"torch.compile does not work here: {type(exc).__name__}: {exc}")
    if time.perf_counter() - started > 20:
        pytest.skip("torch.compile takes over 20 s here")
    with monitor.watch(compiled, every=1) as mon:
        out = compiled(x)
        out.mean().backward()
    assert torch.equal(out.detach(), reference.detach())
    # the compiled code calls no layer's hooks: a record without layers, and a note saying why
    assert (mon.records and mon.records[0].layers) or any(
        "compiled (torch.compile)" in note for note in mon.notes
    ), mon.notes


def _hooks(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        count += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        count += len(getattr(m, "_backward_pre_hooks", {}))
    for p in model.parameters():
        count += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
        count += len(p._backward_hooks or {})
    return count


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_200_watch_unwatch_cycles_leave_no_hooks_and_no_growth() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(4, 8)

    def cycle() -> None:
        with monitor.watch(model, every=1) as mon:
            loss = model(x).mean()
            loss.backward()
            mon.log_loss(loss)
        model.zero_grad(set_to_none=True)

    for _ in range(20):  # warm-up: allocator pools, lazy imports
        cycle()
    gc.collect()
    before = _rss_kib()
    for _ in range(200):
        cycle()
    gc.collect()
    after = _rss_kib()
    assert _hooks(model) == 0
    assert after < before * 1.05, f"RSS grew from {before} KiB to {after} KiB"
