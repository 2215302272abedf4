"""The classic broken networks of ``steadygrad.models.PRESETS`` fail the way their papers say.

Each preset is checked against the variance-propagation formula that predicts its failure, measured
on a batch of pixels in [0, 1]:

* ReLU with zero-mean weights of variance σ² and fan-in n: E[z_{l+1}²] = n σ² E[z_l²] / 2
  (He et al. 2015, eq. 9), so the root-mean-square pre-activation changes by sqrt(n σ² / 2) per
  layer: ≈ 0.113 for N(0, 0.01²), 0.707 for Glorot (σ² = 2 / (n + n)), 1 for He, 11.3 for N(0, 1).
* The back-propagated gradient of a sigmoid layer: E[g_l²] = E[σ'(z_l)²] · n_{l+1} Var(W_{l+1})
  · E[g_{l+1}²] (Glorot & Bengio 2010, eq. 6 in its gradient form), with σ' ≤ 1/4.
* tanh with N(0, 1) weights: Var(z_{l+1}) = n E[a_l²] ≈ n, far inside the saturating region.
* dead-relu: biases near -5 against pre-activations of std < 1 leave no unit alive.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from steadygrad import activations, models

BROKEN = (
    "deep-sigmoid",
    "deep-relu-tiny-init",
    "deep-relu-xavier",
    "deep-relu-normal",
    "deep-tanh-large-init",
    "dead-relu",
    "deep-relu-he",
)


def _pixels(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def _pre_activations(model: models.MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """z_l = a_{l-1} W_l^T + b_l of every layer, the activations applied by hand."""
    zs = []
    h = x
    with torch.no_grad():
        for block in model.blocks():
            z = F.linear(h, block.dense.weight, block.dense.bias)
            zs.append(z)
            h = block.activation(z) if block.activation is not None else z
    return zs


@pytest.mark.parametrize("name", BROKEN)
def test_broken_preset_config_round_trips(name: str) -> None:
    model = models.preset(name, generator=torch.Generator().manual_seed(1))
    config = json.loads(json.dumps(model.config))
    rebuilt = models.from_config(config)
    assert isinstance(rebuilt, models.MLP)
    assert rebuilt.config == model.config == models.PRESETS[name].config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


def test_deep_relu_normal_is_20_layers_of_256_relu_with_unit_normal_weights() -> None:
    model = models.preset("deep-relu-normal", generator=torch.Generator().manual_seed(2))
    assert model.widths == [784, *[256] * 20, 10]
    assert all(isinstance(b.activation, activations.ReLU) for b in model.hidden_layers())
    w = torch.cat([b.dense.weight.detach().flatten() for b in model.blocks()])
    assert w.mean().item() == pytest.approx(0.0, abs=0.01)
    assert w.std().item() == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize(
    ("name", "sigma2"),
    [
        ("deep-relu-tiny-init", lambda n_in, n_out: 0.01**2),
        ("deep-relu-xavier", lambda n_in, n_out: 2.0 / (n_in + n_out)),
        ("deep-relu-he", lambda n_in, n_out: 2.0 / n_in),
        ("deep-relu-normal", lambda n_in, n_out: 1.0),
    ],
)
def test_relu_presets_scale_the_signal_by_sqrt_n_sigma2_over_2_per_layer(
    name: str, sigma2: object
) -> None:
    model = models.preset(name, generator=torch.Generator().manual_seed(3))
    zs = _pre_activations(model, _pixels(256, seed=4))
    hidden = model.hidden_layers()
    n = hidden[1].dense.in_features
    expected = math.sqrt(n * sigma2(n, n) / 2.0)  # type: ignore[operator]
    rms = [z.double().pow(2).mean().sqrt().item() for z in zs[: len(hidden)]]
    # geometric mean factor per layer over the hidden stack (layer 2 onwards: same shapes)
    measured = (rms[-1] / rms[1]) ** (1.0 / (len(rms) - 2))
    assert measured == pytest.approx(expected, rel=0.05)
    overall = rms[-1] / rms[0]
    if name == "deep-relu-tiny-init":
        assert overall < 1e-25  # the signal vanishes (×0.113 per layer over 29 layers)
    elif name == "deep-relu-normal":
        assert overall > 1e18  # the signal explodes (×11.3 per layer over 19 layers)
    elif name == "deep-relu-xavier":
        assert 1e-5 < overall < 1e-3  # 2^-14.5 ≈ 4e-5: shrinks, but slowly
    else:
        assert 0.3 < overall < 3.0


def test_deep_sigmoid_back_propagated_gradient_follows_glorot_bengio() -> None:
    model = models.preset("deep-sigmoid", generator=torch.Generator().manual_seed(5))
    x = _pixels(64, seed=6)
    y = torch.arange(64) % 10
    zs: list[torch.Tensor] = []
    h = x
    for block in model.blocks():
        z = F.linear(h, block.dense.weight, block.dense.bias)
        z.retain_grad()
        zs.append(z)
        h = torch.sigmoid(z) if block.activation is not None else z
    F.cross_entropy(h, y).backward()
    blocks = model.blocks()
    for k in range(len(blocks) - 2):  # hidden layer k receives the gradient of hidden layer k+1
        w_next = blocks[k + 1].dense.weight.detach().double()
        slope = activations.get("sigmoid").derivative(zs[k].detach().double())
        predicted = slope.pow(2).mean() * w_next.shape[0] * w_next.var(correction=0)
        measured = zs[k].grad.double().pow(2).mean() / zs[k + 1].grad.double().pow(2).mean()
        assert measured.item() == pytest.approx(predicted.item(), rel=0.1)
        assert math.sqrt(predicted.item()) < 0.16  # ≈ sqrt(0.06 / 3): ×0.14 per layer
    assert zs[0].grad.std() / zs[-2].grad.std() < 1e-3  # vanishes over the 5 hidden layers


def test_deep_tanh_large_init_saturates_every_hidden_layer() -> None:
    model = models.preset("deep-tanh-large-init", generator=torch.Generator().manual_seed(7))
    zs = _pre_activations(model, _pixels(128, seed=8))
    lo, hi = activations.get("tanh").saturation_region()  # tanh' < 0.1: |z| > 1.82
    for k, z in enumerate(zs[:-1]):
        saturated = ((z < lo) | (z > hi)).double().mean().item()
        assert saturated > 0.85
        if k > 0:  # Var(z_k) = n · E[tanh(z_{k-1})²] for N(0, 1) weights
            expected = 256 * torch.tanh(zs[k - 1]).double().pow(2).mean().item()
            assert z.double().pow(2).mean().item() == pytest.approx(expected, rel=0.1)


def test_dead_relu_has_no_living_unit_in_any_hidden_layer() -> None:
    model = models.preset("dead-relu", generator=torch.Generator().manual_seed(9))
    zs = _pre_activations(model, _pixels(256, seed=10))
    for z in zs[:-1]:
        dead = (z < 0).all(dim=0)  # a unit is dead when z < 0 for every sample
        assert dead.all()
