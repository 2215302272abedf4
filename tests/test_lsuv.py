"""Tests for ``steadygrad.init.lsuv_`` (Mishkin & Matas 2016, Algorithm 1).

References: an independent slow re-implementation of Algorithm 1 for a plain ``nn.Sequential``
(same orthonormal draws from the same generator), the layer outputs recomputed by hand as
``x @ W.T + b``, and ``W W^T`` against a multiple of the identity for the orthonormal start.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import init, models

D = 100  # input features (pixels in [0, 1]); small keeps the tests fast


def _batch(n: int = 128, seed: int = 0, features: int = D) -> torch.Tensor:
    return torch.rand(n, features, generator=torch.Generator().manual_seed(seed))


def _sequential(widths: list[int], seed: int = 1, std: float = 0.01) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(a, b)
        with torch.no_grad():
            linear.weight.normal_(0.0, std, generator=g)
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _linear_outputs_by_hand(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """z = x W^T + b of every Linear of a Sequential, the activations applied by hand."""
    outputs = []
    h = x
    for module in model:
        if isinstance(module, nn.Linear):
            h = h @ module.weight.detach().T + module.bias.detach()
            outputs.append(h)
        else:
            h = torch.relu(h)
    return outputs


def _slow_lsuv(model: nn.Sequential, x: torch.Tensor, tol: float, max_iter: int, seed: int) -> None:
    """Algorithm 1 of Mishkin & Matas (2016), written out for a Sequential of Linear and ReLU."""
    g = torch.Generator().manual_seed(seed)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear in linears:  # orthonormal pre-initialization, Sequential order = forward order
            init.orthogonal_(linear.weight, generator=g)
        for index, linear in enumerate(linears):
            for _ in range(max_iter):
                variance = _linear_outputs_by_hand(model, x)[index].double().var(correction=0)
                if abs(float(variance) - 1.0) < tol:
                    break
                linear.weight.div_(math.sqrt(float(variance)))


def test_lsuv_gives_unit_variance_layer_outputs_in_a_deep_relu_net() -> None:
    model = _sequential([D] + [128] * 8 + [10])
    x = _batch()
    before = [z.std().item() for z in _linear_outputs_by_hand(model, x)]
    assert before[-1] < 1e-6  # N(0, 0.01²) weights: the signal vanishes before LSUV
    assert init.lsuv_(model, x, tol=0.1, max_iter=10) is model
    for z in _linear_outputs_by_hand(model, x):
        assert abs(z.double().std(correction=0).item() - 1.0) < 0.1
        assert abs(z.double().var(correction=0).item() - 1.0) < 0.1


def test_lsuv_matches_a_slow_implementation_of_algorithm_1() -> None:
    x = _batch(64, seed=3)
    model = _sequential([D, 100, 50, 10], seed=4)
    reference = _sequential([D, 100, 50, 10], seed=4)
    with torch.no_grad():
        for m in (model, reference):
            m[0].bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(5))
    init.lsuv_(model, x, tol=0.01, max_iter=10, generator=torch.Generator().manual_seed(6))
    _slow_lsuv(reference, x, tol=0.01, max_iter=10, seed=6)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_lsuv_starts_from_an_orthonormal_matrix() -> None:
    # Zero bias: one rescale by 1/sqrt(Var) reaches variance 1 exactly, and W stays a multiple of
    # an orthonormal matrix: W W^T = c² I for the wide layers (rows ≤ columns).
    model = _sequential([D, 64, 32, 10], seed=7)
    x = _batch(256, seed=8)
    init.lsuv_(model, x, tol=1e-3)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for z, linear in zip(_linear_outputs_by_hand(model, x), linears, strict=True):
        w = linear.weight.detach().double()
        gram = w @ w.T
        c2 = gram.diagonal().mean()
        torch.testing.assert_close(
            gram / c2, torch.eye(w.shape[0], dtype=torch.float64), atol=1e-5, rtol=0
        )
        assert z.double().var(correction=0).item() == pytest.approx(1.0, abs=1e-3)


def test_lsuv_uses_forward_order_not_registration_order() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.second = nn.Linear(64, 32)  # registered first, called second
            self.first = nn.Linear(D, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(torch.tanh(self.first(x)))

    model = Reversed()
    x = _batch(128, seed=9)
    init.lsuv_(model, x, tol=0.05)
    with torch.no_grad():
        z1 = model.first(x)
        z2 = model.second(torch.tanh(z1))
    assert abs(z1.var(correction=0).item() - 1.0) < 0.05
    assert abs(z2.var(correction=0).item() - 1.0) < 0.05


def test_lsuv_scales_dense_pre_activations_not_their_outputs() -> None:
    # A steadygrad Dense applies its activation inside forward; LSUV must target z = W x + b.
    model = models.mlp(D, [64, 64], 10, "relu", initializer={"name": "normal", "std": 0.01})
    x = _batch(128, seed=10)
    init.lsuv_(model, x, tol=0.05)
    h = x
    with torch.no_grad():
        for block in model.blocks():
            z = F.linear(h, block.dense.weight, block.dense.bias)
            assert abs(z.var(correction=0).item() - 1.0) < 0.05
            h = torch.relu(z)


def test_lsuv_on_a_cnn_with_pooling() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 10),
    )
    x = _batch(64, seed=11, features=784).view(64, 1, 28, 28)
    init.lsuv_(model, x, tol=0.05, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        z1 = model[0](x)
        z2 = model[3](model[2](model[1](z1)))
        z3 = model[6](model[5](model[4](z2)))
    for z in (z1, z2, z3):
        assert abs(z.var(correction=0).item() - 1.0) < 0.05


def test_lsuv_with_biases_iterates_to_tolerance() -> None:
    model = _sequential([D, 64, 64, 10], seed=13)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(14))
    x = _batch(128, seed=15)
    init.lsuv_(model, x, tol=0.01, max_iter=20)
    for z in _linear_outputs_by_hand(model, x):
        assert abs(z.double().var(correction=0).item() - 1.0) < 0.01


def test_lsuv_restores_modes_and_leaves_batchnorm_statistics_alone() -> None:
    model = models.preset("reference", input_dim=D, generator=torch.Generator().manual_seed(16))
    model.train()
    model.hidden1_bn.eval()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    init.lsuv_(model, (_batch(64, seed=17), torch.zeros(64, dtype=torch.long)))
    assert model.training and model.hidden1.training and not model.hidden1_bn.training
    for key, value in running.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_lsuv_is_reproducible_with_a_generator() -> None:
    x = _batch(64, seed=18)
    a = init.lsuv_(_sequential([D, 32, 10]), x, generator=torch.Generator().manual_seed(19))
    b = init.lsuv_(_sequential([D, 32, 10]), x, generator=torch.Generator().manual_seed(19))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_lsuv_warns_when_max_iter_is_not_enough() -> None:
    model = _sequential([D, 64, 10], seed=20)
    with torch.no_grad():
        model[0].bias.fill_(3.0)  # a large common offset: Var(z) is far from linear in the scale
        model[0].bias[:32] = -3.0
    with pytest.warns(
        RuntimeWarning,
        match=r"lsuv_: layer '0' output variance is .* after "
        r"max_iter=1 rescalings, not within tol=0.001 of 1",
    ):
        init.lsuv_(model, _batch(64, seed=21), tol=0.001, max_iter=1)


# --------------------------------------------------------------------------- errors


def test_lsuv_rejects_a_layer_with_constant_output() -> None:
    model = _sequential([D, 16, 10], seed=22)
    with torch.no_grad():
        model[0].bias.fill_(-1e3)  # every ReLU of the first layer is dead: layer 2 sees zeros
    with pytest.raises(
        ValueError,
        match=r"lsuv_: layer '2' output has variance 0 on the "
        r"batch, which no rescaling",
    ):
        init.lsuv_(model, _batch(64, seed=23))


def test_lsuv_rejects_bad_arguments() -> None:
    model = _sequential([D, 8, 10])
    x = _batch(16)
    with pytest.raises(ValueError, match=r"tol must be a positive finite number; got 0"):
        init.lsuv_(model, x, tol=0)
    with pytest.raises(TypeError, match=r"tol must be a positive finite number; got '0.1'"):
        init.lsuv_(model, x, tol="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_iter must be a positive int; got 0"):
        init.lsuv_(model, x, max_iter=0)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module; got list"):
        init.lsuv_([model], x)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"batch must be a tensor x or a tuple \(x, y\) whose "
        r"first item is a tensor; got list",
    ):
        init.lsuv_(model, [[0.0] * D])  # type: ignore[arg-type]


def test_lsuv_rejects_a_model_without_linear_or_conv_layers() -> None:
    with pytest.raises(
        ValueError,
        match=r"lsuv_: model has no Linear or Conv1d/2d/3d layer to "
        r"initialize; got Sequential",
    ):
        init.lsuv_(nn.Sequential(nn.ReLU()), _batch(4))


def test_lsuv_rejects_a_model_whose_forward_skips_its_layers() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(D, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(
        ValueError,
        match=r"lsuv_: the forward pass reached none of the model's "
        r"Linear/Conv layers \(head\)",
    ):
        init.lsuv_(Unused(), _batch(4))
