"""Fast training step: gradients, weights, BatchNorm buffers and optimizer state against the plain
autograd + torch.optim step; fallbacks with reasons; checkpoint interchange; mixing with the plain
step.

The reference for every comparison is the plain step itself::

    logits = model(x); loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()

The fast step's gradients come from the kernels autograd calls, so they match bit for bit; its
update is torch's fused kernel, so against ``torch.optim.X(fused=True)`` whole runs match bit for
bit, and against the default (single-tensor) implementation to float rounding.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import activations, checkpoint, models
from steadygrad.fast import FastStep, make_step, supports
from steadygrad.nn import BatchNorm

IN, HIDDEN, OUT, BATCH = 12, [10, 8], 4, 16


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (two OpenMP threads on a shared 2-core machine spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(steps: int, batch: int = BATCH, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps * batch, IN, generator=g) * 2 + 0.5
    y = torch.randint(0, OUT, (steps * batch,), generator=g)
    return [(x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]) for k in range(steps)]


def model(
    activation: str | dict[str, Any] | None = "elu",
    batch_norm: str | None = "before",
    batch_norm_output: bool = True,
    seed: int = 1,
) -> models.MLP:
    return models.mlp(
        IN,
        HIDDEN,
        OUT,
        activation,
        batch_norm=batch_norm,
        batch_norm_output=batch_norm_output,
        momentum=0.9,
        generator=torch.Generator().manual_seed(seed),
    )


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, **kw: torch.optim.SGD(p, lr=0.05, **kw),
    "momentum": lambda p, **kw: torch.optim.SGD(p, lr=0.05, momentum=0.9, **kw),
    "nesterov-wd": lambda p, **kw: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, **kw
    ),
    "dampening": lambda p, **kw: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, **kw),
    "adam": lambda p, **kw: torch.optim.Adam(p, lr=1e-2, **kw),
    "adam-amsgrad-wd": lambda p, **kw: torch.optim.Adam(
        p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, amsgrad=True, weight_decay=1e-3, **kw
    ),
    "adamw": lambda p, **kw: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, **kw),
}


def plain_step(
    m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    logits = m(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss.detach()


def run_plain(
    m: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[float]:
    return [float(plain_step(m, opt, x, y)) for x, y in batches]


def run_fast(step: FastStep, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    losses = [float(step(x, y)[0]) for x, y in batches]
    assert step.plain_calls == 0, step.last_fallback
    return losses


def assert_same_state(
    a: nn.Module, b: nn.Module, atol: float = 0.0, rtol: float = 0.0, skip: tuple[str, ...] = ()
) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key not in skip:
            torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=rtol, msg=key)


def assert_same_optimizer_state(
    a: torch.optim.Optimizer, b: torch.optim.Optimizer, atol: float = 0.0
) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for group in (*sa["param_groups"], *sb["param_groups"]):
        group.pop("fused")  # the reference may use fused=True
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for key, value in sa["state"][i].items():
            torch.testing.assert_close(value, sb["state"][i][key], atol=atol, rtol=0, msg=key)


# --------------------------------------------------------------------------- gradients


ACTIVATIONS = [
    "elu",
    "relu",
    {"name": "leaky_relu", "alpha": 0.2},
    {"name": "elu", "alpha": 0.5},
    "selu",
    "sigmoid",
    "tanh",
    "gelu",
    {"name": "gelu", "approximate": "tanh"},
    "silu",
    {"name": "softplus", "beta": 2.0, "threshold": 1.0},
    None,
]


@pytest.mark.parametrize("batch_norm", ["before", "after", None])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_gradients_and_update_equal_autograd(
    activation: str | dict[str, Any] | None, batch_norm: str | None
) -> None:
    """One step: loss, logits, every p.grad, the weights and BN buffers equal the plain step's."""
    fast_model, plain_model = model(activation, batch_norm), model(activation, batch_norm)
    step = make_step(fast_model, torch.optim.SGD(fast_model.parameters(), lr=0.1))
    assert step is not None
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    ((x, y),) = data(1)
    loss, logits = step(x, y)
    expected_logits = plain_model(x)
    expected_loss = F.cross_entropy(expected_logits, y)
    plain_opt.zero_grad()
    expected_loss.backward()  # type: ignore[no-untyped-call]
    plain_opt.step()
    assert step.fast_calls == 1 and step.plain_calls == 0
    torch.testing.assert_close(loss, expected_loss.detach(), atol=0, rtol=0)
    torch.testing.assert_close(logits, expected_logits.detach(), atol=0, rtol=0)
    assert not loss.requires_grad and not logits.requires_grad
    for (name, p), q in zip(fast_model.named_parameters(), plain_model.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, atol=1e-7, rtol=1e-6, msg=name)
    assert_same_state(fast_model, plain_model, atol=1e-7, rtol=1e-6)


def test_gradient_of_the_loss_is_softmax_minus_onehot_over_batch() -> None:
    """Independent reference for the loss backward: a linear model, ∂L/∂W = ((p − Y)/m)ᵀ x."""
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT)
    step = make_step(nn.Sequential(linear), torch.optim.SGD(linear.parameters(), lr=0.0))
    assert step is not None
    ((x, y),) = data(1)
    w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    step(x, y)
    p = torch.softmax(x @ w.T + b, dim=1)
    delta = (p - F.one_hot(y, OUT).float()) / len(y)
    assert linear.weight.grad is not None and linear.bias.grad is not None
    torch.testing.assert_close(linear.weight.grad, delta.T @ x, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(linear.bias.grad, delta.sum(0), atol=1e-6, rtol=1e-5)


def test_batchnorm_backward_against_the_formula() -> None:
    """Independent reference for BN: ∂L/∂h = γ/(m σ) (m g − Σg − x̂ Σ g x̂) (Ioffe & Szegedy 2015)."""
    torch.manual_seed(0)
    bn = BatchNorm(OUT, momentum=0.9)
    linear = nn.Linear(IN, OUT)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    step = make_step(
        nn.Sequential(linear, bn), torch.optim.SGD([*linear.parameters(), *bn.parameters()], lr=0.0)
    )
    assert step is not None
    ((x, y),) = data(1)
    h = (x @ linear.weight.T + linear.bias).detach().double()
    gamma = bn.weight.detach().double()  # type: ignore[union-attr]
    step(x, y)
    m = h.shape[0]
    sigma = torch.sqrt(h.var(0, unbiased=False) + bn.eps)
    x_hat = (h - h.mean(0)) / sigma
    z = gamma * x_hat + bn.bias.detach().double()  # type: ignore[union-attr]
    g = (torch.softmax(z, 1) - F.one_hot(y, OUT).double()) / m
    dh = gamma / (m * sigma) * (m * g - g.sum(0) - x_hat * (g * x_hat).sum(0))
    assert bn.weight.grad is not None and bn.bias.grad is not None
    torch.testing.assert_close(bn.weight.grad.double(), (g * x_hat).sum(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bn.bias.grad.double(), g.sum(0), atol=1e-6, rtol=1e-5)
    assert linear.weight.grad is not None
    torch.testing.assert_close(linear.weight.grad.double(), dh.T @ x.double(), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("batch_norm", ["before", "after", None])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_twenty_steps_equal_the_plain_path(name: str, batch_norm: str | None) -> None:
    """Same update kernel (torch's fused one) on both sides: bitwise-equal weights, BN buffers,
    optimizer state and losses after 20 steps."""
    batches = data(20)
    fast_model, plain_model = model("elu", batch_norm), model("elu", batch_norm)
    fast_opt = OPTIMIZERS[name](fast_model.parameters())
    fused = {} if name == "sgd" else {"fused": True}  # plain SGD: its default kernel is the same
    plain_opt = OPTIMIZERS[name](plain_model.parameters(), **fused)
    step = make_step(fast_model, fast_opt)
    assert step is not None
    assert run_fast(step, batches) == run_plain(plain_model, plain_opt, batches)
    assert_same_state(fast_model, plain_model)
    assert_same_optimizer_state(fast_opt, plain_opt)


@pytest.mark.parametrize("name", ["momentum", "adam", "adamw"])
def test_twenty_steps_match_the_default_optimizer(name: str) -> None:
    """Against torch.optim's default single-tensor update (what `fit` builds), to float rounding.

    The exception is the one direction BatchNorm makes invisible: the bias of a Linear followed by
    BatchNorm (and that BatchNorm's moving mean, which includes it) has a zero gradient in exact
    arithmetic, so both paths feed Adam pure rounding noise, which it scales up to steps of ~lr;
    torch's own fused and single-tensor Adam differ there just as much. Those entries are checked
    against that bound, everything else to 1e-5.
    """
    batches = data(20)
    fast_model, plain_model = model("elu", "before"), model("elu", "before")
    fast_opt = OPTIMIZERS[name](fast_model.parameters())
    plain_opt = OPTIMIZERS[name](plain_model.parameters())
    step = make_step(fast_model, fast_opt)
    assert step is not None
    fast_losses = run_fast(step, batches)
    plain_losses = run_plain(plain_model, plain_opt, batches)
    torch.testing.assert_close(fast_losses, plain_losses, atol=1e-5, rtol=1e-5)
    gauge = tuple(
        key
        for prefix in ("hidden1", "hidden2", "outputs")
        for key in (f"{prefix}.bias", f"{prefix}_bn.running_mean")
    )
    assert_same_state(fast_model, plain_model, atol=1e-5, rtol=1e-5, skip=gauge)
    lr = fast_opt.param_groups[0]["lr"]
    fast_state, plain_state = fast_model.state_dict(), plain_model.state_dict()
    for key in gauge:
        assert (fast_state[key] - plain_state[key]).abs().max() <= 2 * lr * len(batches)


def test_torch_sequential_of_torch_modules() -> None:
    """The plain-PyTorch reference network (nn.Linear, nn.BatchNorm1d, nn.ELU) is supported too,
    behind the nn.Flatten a PyTorch MNIST model starts with."""

    def build() -> nn.Sequential:
        torch.manual_seed(5)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(IN, 10),
            nn.BatchNorm1d(10, momentum=0.1, eps=1e-3),
            nn.ELU(),
            nn.Linear(10, OUT),
            nn.BatchNorm1d(OUT, affine=False),
        )

    fast_model, plain_model = build(), build()
    step = make_step(fast_model, torch.optim.Adam(fast_model.parameters(), lr=1e-2))
    assert step is not None
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-2, fused=True)
    batches = data(10)
    assert run_fast(step, batches) == run_plain(plain_model, plain_opt, batches)
    assert_same_state(fast_model, plain_model)


def test_eval_mode_batchnorm_and_float64() -> None:
    """BN in eval mode normalises with (and keeps) the moving statistics; float64 parameters."""
    fast_model, plain_model = model().double(), model().double()
    for m in (fast_model, plain_model):
        m.train()
        m.hidden2_bn.eval()
    batches = [(x.double(), y) for x, y in data(5)]
    step = make_step(fast_model, torch.optim.Adam(fast_model.parameters(), lr=1e-2))
    assert step is not None
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-2, fused=True)
    assert run_fast(step, batches) == run_plain(plain_model, plain_opt, batches)
    assert_same_state(fast_model, plain_model)
    assert int(fast_model.hidden2_bn.num_batches_tracked) == 0
    assert int(fast_model.hidden1_bn.num_batches_tracked) == 5


def test_model_cast_after_make_step() -> None:
    """model.double() after make_step: the step follows the parameters' new dtype."""
    batches = data(6)
    m, ref = model(), model().double()
    step = make_step(m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))
    assert step is not None
    run_fast(step, [(x, y) for x, y in batches[:3]])
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, fused=True)
    ref.load_state_dict(m.state_dict())
    ref_opt.load_state_dict(step.optimizer_state())
    ref_opt.param_groups[0]["fused"] = True
    m.double()
    for state in step.optimizer.state.values():
        state["momentum_buffer"] = state["momentum_buffer"].double()
    later = [(x.double(), y) for x, y in batches[3:]]
    assert run_fast(step, later) == run_plain(ref, ref_opt, later)
    assert_same_state(m, ref)


def test_deterministic_and_returns_fresh_tensors() -> None:
    runs = []
    for _ in range(2):
        m = model()
        step = make_step(m, torch.optim.Adam(m.parameters(), lr=1e-2))
        assert step is not None
        batches = data(6)
        first_loss, first_logits = step(*batches[0])
        kept = first_logits.clone()
        run_fast(step, batches[1:])
        assert torch.equal(first_logits, kept), "a later step overwrote returned logits"
        runs.append((float(first_loss), m.state_dict()))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key


# --------------------------------------------------------------------------- state interchange


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_mixing_fast_and_plain_steps(name: str) -> None:
    """Alternating fast and plain steps (either one first) equals plain steps throughout: both
    work on the same parameters, .grad, BN buffers and optimizer state."""
    batches = data(12)
    ref_model = model()
    ref_opt = OPTIMIZERS[name](ref_model.parameters(), fused=True)
    expected = run_plain(ref_model, ref_opt, batches)
    for plain_first in (True, False):
        m = model()
        opt = OPTIMIZERS[name](m.parameters(), fused=True)
        step = make_step(m, opt)
        assert step is not None
        losses = []
        for k, (x, y) in enumerate(batches):
            if (k % 3 == 0) == plain_first:
                losses.append(float(plain_step(m, opt, x, y)))
            else:
                losses.append(float(step(x, y)[0]))
        assert losses == expected
        assert_same_state(m, ref_model)
        assert_same_optimizer_state(opt, ref_opt)


def test_loading_optimizer_state_between_steps() -> None:
    """optimizer.load_state_dict replaces the state tensors; the step picks up the new ones."""
    batches = data(10)
    m = model()
    opt = OPTIMIZERS["adam"](m.parameters())
    step = make_step(m, opt)
    assert step is not None
    run_fast(step, batches[:5])
    model_snapshot = copy.deepcopy(m.state_dict())
    opt_snapshot = copy.deepcopy(step.optimizer_state())
    first = run_fast(step, batches[5:])
    after_first = copy.deepcopy(m.state_dict())
    m.load_state_dict(model_snapshot)
    step.load_optimizer_state(opt_snapshot)
    assert run_fast(step, batches[5:]) == first
    assert_same_state(m, _with_state(model(), after_first))
    assert int(opt.state_dict()["state"][0]["step"]) == 10


def _with_state(m: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    m.load_state_dict(state)
    return m


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_checkpoint_written_fast_resumes_plain_and_vice_versa(name: str, tmp_path: Path) -> None:
    """Checkpoints (checkpoint.save_training_state: model + torch.optim state dict) written after
    fast steps resume on the plain path and vice versa, ending where 16 plain steps end.

    Every optimizer here is built with fused=True: a loaded state dict carries the writer's
    param_groups, "fused" included, so the resumed run keeps the writer's update kernel.
    """
    batches = data(16)
    ref_model = model()
    ref_opt = OPTIMIZERS[name](ref_model.parameters(), fused=True)
    expected = run_plain(ref_model, ref_opt, batches)

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        m = model(seed=99)
        return m, OPTIMIZERS[name](m.parameters(), fused=True)

    # fast → checkpoint → plain
    m, opt = fresh()
    m.load_state_dict(model().state_dict())
    step = make_step(m, opt)
    assert step is not None
    losses = run_fast(step, batches[:8])
    checkpoint.save_training_state(tmp_path / "fast.safetensors", m, opt)
    resumed, resumed_opt = fresh()
    checkpoint.load_training_state(tmp_path / "fast.safetensors", resumed, resumed_opt)
    losses += run_plain(resumed, resumed_opt, batches[8:])
    assert losses == expected
    assert_same_state(resumed, ref_model)
    assert_same_optimizer_state(resumed_opt, ref_opt)

    # plain → checkpoint → fast
    m, opt = fresh()
    m.load_state_dict(model().state_dict())
    losses = run_plain(m, opt, batches[:8])
    checkpoint.save_training_state(tmp_path / "plain.safetensors", m, opt)
    resumed, resumed_opt = fresh()
    step = make_step(resumed, resumed_opt)
    assert step is not None
    run_fast(step, batches[:2])  # state the load must replace
    checkpoint.load_training_state(tmp_path / "plain.safetensors", resumed, resumed_opt)
    losses += run_fast(step, batches[8:])
    assert losses == expected
    assert_same_state(resumed, ref_model)
    assert_same_optimizer_state(resumed_opt, ref_opt)


def test_optimizer_state_has_torch_format_before_and_after_steps() -> None:
    m, p = model(), model()
    step = make_step(m, torch.optim.Adam(m.parameters()))
    assert step is not None
    plain_opt = torch.optim.Adam(p.parameters())
    assert step.optimizer_state() == plain_opt.state_dict()  # nothing before the first step
    ((x, y),) = data(1)
    step(x, y)
    plain_step(p, plain_opt, x, y)
    fast_state, plain_state = step.optimizer_state(), plain_opt.state_dict()
    assert {k: v.keys() for k, v in fast_state["state"].items()} == {
        k: v.keys() for k, v in plain_state["state"].items()
    }
    for i, s in fast_state["state"].items():
        for key, value in s.items():
            ref = plain_state["state"][i][key]
            assert (value.dtype, value.shape, value.device) == (ref.dtype, ref.shape, ref.device)


def test_learning_rate_changes_apply_at_the_next_step() -> None:
    """param_groups[0]['lr'] is read at every step, so LR schedulers work (and do not warn)."""
    batches = data(8)
    fast_model, plain_model = model(), model()
    fast_opt = torch.optim.Adam(fast_model.parameters(), lr=1e-2)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-2, fused=True)
    schedules = [torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.3) for o in (fast_opt, plain_opt)]
    step = make_step(fast_model, fast_opt)
    assert step is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in batches:
            step(x, y)
            plain_step(plain_model, plain_opt, x, y)
            for s in schedules:
                s.step()
    assert fast_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.3**4)
    assert_same_state(fast_model, plain_model)


# --------------------------------------------------------------------------- fallbacks


def _unsupported_cases() -> list[tuple[str, Callable[[], tuple[nn.Module, Any]], str]]:
    def with_opt(
        m: nn.Module, opt: Callable[[Any], torch.optim.Optimizer] | None = None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return m, (opt or (lambda p: torch.optim.Adam(p)))(m.parameters())

    class Residual(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    def frozen() -> tuple[nn.Module, torch.optim.Optimizer]:
        m = model()
        m.hidden1.weight.requires_grad_(False)
        return m, torch.optim.Adam(m.parameters())

    def two_groups() -> tuple[nn.Module, torch.optim.Optimizer]:
        m = model()
        params = list(m.parameters())
        return m, torch.optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)

    def tied() -> tuple[nn.Module, torch.optim.Optimizer]:
        first, second = nn.Linear(IN, IN), nn.Linear(IN, IN)
        second.weight = first.weight
        return with_opt(nn.Sequential(first, nn.Tanh(), second))

    def prelu_inside_dense() -> tuple[nn.Module, torch.optim.Optimizer]:
        return with_opt(model("prelu", batch_norm=None))

    def hooked() -> tuple[nn.Module, torch.optim.Optimizer]:
        m = model()
        m.hidden2.register_forward_hook(lambda *args: None)
        return with_opt(m)

    return [
        ("prelu", lambda: with_opt(model("prelu")), "layer 'hidden1_act': PReLU has a learned"),
        ("rrelu", lambda: with_opt(model("rrelu")), "RReLU draws a random slope"),
        (
            "dropout",
            lambda: with_opt(nn.Sequential(nn.Linear(IN, 8), nn.Dropout(0.5), nn.Linear(8, OUT))),
            r"layer '1': Dropout is not supported; supported: Linear/Dense",
        ),
        ("not sequential", lambda: with_opt(nn.Linear(IN, OUT)), "must be an nn.Sequential"),
        (
            "flatten dims",
            lambda: with_opt(nn.Sequential(nn.Flatten(0), nn.Linear(IN, OUT))),
            "layer '0': Flatten is not supported",
        ),
        ("forward", lambda: with_opt(Residual(nn.Linear(IN, IN))), "Residual overrides Sequential"),
        (
            "cumulative bn",
            lambda: with_opt(nn.Sequential(nn.Linear(IN, 8), nn.BatchNorm1d(8, momentum=None))),
            r"BatchNorm1d with momentum=None",
        ),
        ("no params", lambda: (nn.Sequential(nn.ReLU()), None), "no trainable layer"),
        ("tied", tied, r"parameter '2.weight' is shared by two layers \(tied weights\)"),
        ("prelu in dense", prelu_inside_dense, r"layer 'hidden1' \(activation\): PReLU has"),
        ("frozen", frozen, "parameter 'hidden1.weight' does not require grad"),
        ("groups", two_groups, "2 parameter groups; one is supported"),
        (
            "rmsprop",
            lambda: with_opt(model(), lambda p: torch.optim.RMSprop(p)),
            "must be torch.optim.SGD, Adam or AdamW; got RMSprop",
        ),
        (
            "other params",
            lambda: (model(), torch.optim.SGD(model().parameters(), lr=0.1)),
            "not the model's parameters",
        ),
        (
            "differentiable",
            lambda: with_opt(model(), lambda p: torch.optim.Adam(p, differentiable=True)),
            "differentiable=True is not supported",
        ),
        ("hooks", hooked, "module 'hidden2' has forward/backward hooks"),
    ]


@pytest.mark.parametrize("case", _unsupported_cases(), ids=lambda c: c[0])
def test_unsupported_models_and_optimizers_fall_back_with_a_reason(
    case: tuple[str, Callable[[], tuple[nn.Module, Any]], str],
) -> None:
    _, build, reason = case
    m, opt = build()
    if opt is None:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ok, why = supports(m, opt)
    assert not ok
    assert why == why.strip() and "\n" not in why

    assert re.search(reason, why), why
    assert make_step(m, opt) is None
    with pytest.raises(ValueError, match="not supported by the fast step: .*" + reason):
        FastStep(m, opt)


def test_arguments_of_the_wrong_type() -> None:
    m = model()
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module; got str"):
        supports("mlp", torch.optim.SGD(m.parameters(), lr=0.1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer; got dict"):
        make_step(m, {"name": "adam"})  # type: ignore[arg-type]


def test_hooks_added_later_run_on_the_plain_path() -> None:
    """A hook registered after make_step (the gradient monitor's) makes the call take the plain
    step, so the hook fires; results are unchanged and the reason is recorded."""
    batches = data(6)
    m, ref = model(), model()
    # fused=True: the plain fallback then uses the same update kernel as the fast step
    step = make_step(m, torch.optim.Adam(m.parameters(), lr=1e-2, fused=True))
    assert step is not None
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    seen: list[int] = []
    expected = run_plain(ref, ref_opt, batches)
    losses = [float(step(*batches[0])[0])]
    handle = m.hidden1_bn.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    losses += [float(step(x, y)[0]) for x, y in batches[1:4]]
    assert step.last_fallback == "a module has forward/backward hooks"
    handle.remove()
    grad_handle = m.outputs.weight.register_hook(lambda g: g)
    losses.append(float(step(*batches[4])[0]))
    assert step.last_fallback == "a parameter has gradient hooks"
    grad_handle.remove()
    losses.append(float(step(*batches[5])[0]))
    assert seen == [BATCH] * 3
    assert (step.fast_calls, step.plain_calls) == (2, 4)
    assert losses == expected
    assert_same_state(m, ref)


def test_a_global_hook_registered_between_fast_steps_is_seen() -> None:
    """The fast step looks for hooks again only when some hook was registered since its last
    look found none (torch's RemovableHandle ids): a global module hook added after fast steps
    is seen on the next call, and once removed the step is fast again."""
    batches = data(4)
    m = model()
    step = make_step(m, torch.optim.SGD(m.parameters(), lr=0.1))
    assert step is not None
    step(*batches[0])
    step(*batches[1])
    assert (step.fast_calls, step.plain_calls) == (2, 0)
    seen: list[str] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(type(mod).__name__)
    )
    try:
        step(*batches[2])
    finally:
        handle.remove()
    assert step.last_fallback == "global module hooks are registered" and seen
    step(*batches[3])
    assert (step.fast_calls, step.plain_calls) == (3, 1)


def test_optimizer_hooks_run_the_optimizers_own_step() -> None:
    """With step hooks on the optimizer, the update is optimizer.step() on the fast gradients
    (the path CUDA takes): hooks fire, and the result is the default Adam's, bit for bit."""
    batches = data(8)
    m, ref = model(), model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    calls: list[int] = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(1))
    step = make_step(m, opt)
    assert step is not None
    assert run_fast(step, batches) == run_plain(ref, ref_opt, batches)
    assert len(calls) == len(batches)
    assert_same_state(m, ref)
    assert_same_optimizer_state(opt, ref_opt)


def test_bad_inputs_take_the_plain_path_and_its_errors() -> None:
    m = model()
    step = make_step(m, torch.optim.SGD(m.parameters(), lr=0.1))
    assert step is not None
    ((x, y),) = data(1)
    with pytest.raises(ValueError, match="Dense expected 12 input features"):
        step(x[:, :5], y)
    assert step.last_fallback == "inputs with 5 features"
    with pytest.raises(ValueError, match="BatchNorm in train mode needs more than one value"):
        step(x[:1], y[:1])
    assert step.last_fallback == "a batch of one in train mode"
    with pytest.raises(RuntimeError):
        step(x.double(), y)
    assert step.last_fallback is not None and "torch.float64" in step.last_fallback


def test_autocast_takes_the_plain_path() -> None:
    m, ref = model(), model()
    step = make_step(m, torch.optim.SGD(m.parameters(), lr=0.1))
    assert step is not None
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ((x, y),) = data(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = step(x, y)[0]
        expected = plain_step(ref, ref_opt, x, y)
    assert step.last_fallback == "autocast is enabled"
    assert float(loss) == float(expected)
    assert_same_state(m, ref)


def test_activation_modules_of_torch_and_ours_are_both_recognised() -> None:
    for module in (nn.ELU(alpha=0.7), activations.ELU(alpha=0.7)):
        seq = nn.Sequential(nn.Linear(IN, OUT), module)
        assert supports(seq, torch.optim.SGD(seq.parameters(), lr=0.1)) == (True, "")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_plain_path() -> None:
    """On CUDA the update is optimizer.step() on the fast step's gradients (BatchNorm may take
    cuDNN's kernel on the plain path: float tolerance)."""
    batches = [(x.cuda(), y.cuda()) for x, y in data(10)]
    fast_model, plain_model = model().cuda(), model().cuda()
    fast_opt = OPTIMIZERS["momentum"](fast_model.parameters())
    plain_opt = OPTIMIZERS["momentum"](plain_model.parameters())
    step = make_step(fast_model, fast_opt)
    assert step is not None
    fast_losses = run_fast(step, batches)
    torch.testing.assert_close(
        fast_losses, run_plain(plain_model, plain_opt, batches), atol=1e-5, rtol=1e-5
    )
    assert_same_state(fast_model, plain_model, atol=1e-4, rtol=1e-4)
