"""Tests for ``steadygrad.doctor``: findings on the classic broken networks, no false alarm on
healthy ones, the thresholds at their boundaries, the remedies, ``treat``'s before/after
comparison, and every error a user can hit.

References: the finding's numbers are compared with a slow direct computation of the same
quantity (back-propagated gradients with ``torch.autograd.grad`` on retained pre-activations,
saturation and dead-unit masks computed by hand). Deep networks run on a batch of 128 learnable
synthetic images (a random binary prototype per class plus noise, pixels in [0, 1]); the
``treat`` tests narrow the broken presets' layers (same depth, same per-layer factor or a more
extreme one) to fit the time budget — the full-size presets are checked for their top finding,
and their ``treat`` output is in docs/doctor.md.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import activations, doctor, models
from steadygrad.doctor import _findings, _thresholds
from steadygrad.doctor._findings import Evidence
from steadygrad.monitor import LayerStats

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _learnable_batch(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a class signal: a random binary prototype per class plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(10, 784, generator=g) > 0.7).float()
    y = torch.arange(n) % 10
    x = prototypes[y] * 0.67 + 0.16 + 0.16 * torch.randn(n, 784, generator=g)
    return x.clamp(0.0, 1.0), y


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _learnable_batch()


def _preset(name: str, seed: int = 1, **overrides: Any) -> models.MLP:
    return models.preset(name, generator=torch.Generator().manual_seed(seed), **overrides)


def _autograd_profile(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Slow reference: every Linear's output z and ∂L/∂z by torch.autograd.grad."""
    zs: list[torch.Tensor] = []

    originals = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            originals[module] = module.forward

            def forward(inp: torch.Tensor, m: nn.Linear = module) -> torch.Tensor:
                z = F.linear(inp, m.weight, m.bias)
                zs.append(z)
                act = getattr(m, "activation", None)
                return act(z) if act is not None else z

            module.forward = forward  # type: ignore[method-assign]
    try:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, zs)
    finally:
        for module, forward in originals.items():
            module.forward = forward  # type: ignore[method-assign]
    return [z.detach() for z in zs], [g.detach() for g in grads]


def _std(t: torch.Tensor) -> float:
    return float(t.double().std(correction=0))


# --------------------------------------------------------------------------- acceptance


def test_tiny_init_top_finding_is_vanishing_forward_and_backward(batch: Any) -> None:
    diagnosis = doctor.diagnose(_preset("deep-relu-tiny-init"), batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "vanishing_gradients" and top.severity == "critical"
    assert "back-propagated gradient std" in top.evidence
    assert "the forward signal vanishes too" in top.evidence
    assert top.numbers["grad_ratio"] < 1e-20  # ×0.11 per layer over 30 layers
    assert {"forward_shrinking", "init_mismatch"} <= {f.kind for f in diagnosis.findings}
    assert top.remedy is not None and top.remedy["action"] == "reinit"
    assert "he_normal" in top.fix and not diagnosis.healthy


def test_tanh_large_init_top_finding_is_saturation(batch: Any) -> None:
    model = _preset("deep-tanh-large-init")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "saturation" and top.severity == "critical"
    # Reference: the fraction of |z| > artanh(sqrt(0.9)) in hidden1, by hand.
    x, _ = batch
    z = F.linear(x, model.hidden1.weight, model.hidden1.bias).detach()
    hi = math.atanh(math.sqrt(0.9))
    by_hand = float((z.abs() > hi).double().mean())
    assert top.numbers["saturated"]["hidden1"] == pytest.approx(by_hand, abs=1e-6)
    assert by_hand > 0.85
    worst = top.numbers["max"]
    assert worst == max(top.numbers["saturated"].values()) > 0.85
    assert f"{worst:.0%} of the tanh pre-activations" in top.evidence
    assert top.remedy == {
        "action": "reinit",
        "initializer": "glorot_normal",
        "layers": [f"hidden{i}" for i in range(1, 11)] + ["outputs"],
    }


def test_deep_sigmoid_top_finding_is_vanishing_with_the_autograd_ratio(batch: Any) -> None:
    model = _preset("deep-sigmoid")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "vanishing_gradients" and top.severity == "critical"
    _, grads = _autograd_profile(copy.deepcopy(model), *batch)
    reference = _std(grads[0]) / _std(grads[-1])
    assert top.numbers["grad_ratio"] == pytest.approx(reference, rel=1e-3)
    assert reference < 1e-3
    assert top.remedy == {"action": "replace_activation", "from": "sigmoid", "to": "elu"}


def test_dead_relu_top_finding_is_dead_units(batch: Any) -> None:
    model = _preset("dead-relu")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "dead_units" and top.severity == "critical"
    x, _ = batch
    z = F.linear(x, model.hidden1.weight, model.hidden1.bias)
    assert top.numbers["dead"]["hidden1"] == float((z < 0).all(dim=0).double().mean()) == 1.0
    assert "mean bias -5" in top.evidence
    assert top.remedy == {"action": "reset_bias", "layers": ["hidden1", "hidden2", "outputs"]}


def test_relu_unit_normal_top_finding_is_exploding_with_the_autograd_ratio(batch: Any) -> None:
    model = _preset("deep-relu-normal")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "exploding_gradients" and top.severity == "critical"
    _, grads = _autograd_profile(copy.deepcopy(model), *batch)
    reference = _std(grads[0]) / _std(grads[-1])
    assert top.numbers["grad_ratio"] == pytest.approx(reference, rel=1e-3)
    assert reference > 1e15  # ×sqrt(256 / 2) ≈ 11 per layer
    assert "forward signal explodes too" in top.evidence


def test_relu_xavier_is_vanishing_and_blamed_on_the_initializer(batch: Any) -> None:
    diagnosis = doctor.diagnose(_preset("deep-relu-xavier"), batch, steps=0)
    top = diagnosis.findings[0]
    assert top.kind == "vanishing_gradients" and top.severity == "critical"
    assert 1e-7 < top.numbers["grad_ratio"] < 1e-3
    assert 0.6 < top.numbers["per_layer"] < 0.8  # Glorot is ×0.71 of He on square layers
    mismatch = next(f for f in diagnosis.findings if f.kind == "init_mismatch")
    assert mismatch.severity == "warning" and mismatch.numbers["compounded"] < 1e-4
    assert top.remedy is not None and top.remedy["action"] == "reinit"


@pytest.mark.parametrize("name", ["reference", "deep-relu-he"])
def test_healthy_networks_get_no_warning(name: str, batch: Any) -> None:
    diagnosis = doctor.diagnose(_preset(name), batch, steps=2)
    assert diagnosis.healthy
    assert [f for f in diagnosis.findings if f.severity != "info"] == []
    assert diagnosis.verdict.startswith("healthy: gradient std ratio layer 1 / layer ")
    k = diagnosis.key_numbers
    assert 0.1 < k["grad_ratio"] < 10 and k["update_ratio_max"] < 0.1
    assert k["dead_max"] < _thresholds.DEAD_WARNING


def test_he_network_ratio_matches_autograd(batch: Any) -> None:
    model = _preset("deep-relu-he")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    zs, grads = _autograd_profile(copy.deepcopy(model), *batch)
    assert diagnosis.key_numbers["grad_ratio"] == pytest.approx(
        _std(grads[0]) / _std(grads[-1]), rel=1e-3
    )
    assert diagnosis.key_numbers["forward_ratio"] == pytest.approx(
        _std(zs[-1]) / _std(zs[0]), rel=1e-3
    )
    dead = [float((z <= 0).all(dim=0).double().mean()) for z in zs[:-1]]
    assert diagnosis.key_numbers["dead_max"] == pytest.approx(max(dead), abs=1e-9)


# --------------------------------------------------------------------------- treat


# Narrowed to 64 units (same depth; per-layer factor as extreme or more) to fit the time budget.
TREATABLE = [
    ("deep-relu-tiny-init", {"hidden": [64] * 30}, "reinit"),
    ("deep-relu-xavier", {"hidden": [64] * 30}, "reinit"),
    ("deep-relu-normal", {"hidden": [64] * 20}, "reinit"),
    ("deep-tanh-large-init", {"hidden": [64] * 10}, "reinit"),
    ("deep-sigmoid", {"hidden": [128] * 5}, "replace_activation"),
    ("dead-relu", {}, "reset_bias"),
]


@pytest.mark.parametrize(("name", "overrides", "action"), TREATABLE)
def test_treat_makes_each_broken_preset_healthy_and_train_better(
    name: str, overrides: dict[str, Any], action: str, batch: Any
) -> None:
    model = _preset(name, **overrides)
    before_state = copy.deepcopy(model.state_dict())
    diagnosis = doctor.diagnose(model, batch, steps=2)
    assert not diagnosis.healthy
    treatment = doctor.treat(model, diagnosis, batch, steps=50)
    assert treatment.after.healthy, treatment.after.verdict
    assert treatment.remedies[0]["action"] == action
    c = treatment.comparison
    assert c["steps"] == 50 and c["batch_size"] == 128
    treated_loss, original_loss = c["loss_end"]["treated"], c["loss_end"]["original"]
    assert math.isfinite(treated_loss)
    assert treated_loss < original_loss or not math.isfinite(original_loss)
    assert treatment.improved and c["healthy"] == {"before": False, "after": True}
    # the original is untouched, and the treated MLP's config describes it
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before_state[key], rtol=0, atol=0)
    assert isinstance(treatment.model, models.MLP)
    rebuilt = models.from_config(treatment.model.config)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in treatment.model.state_dict().items()
    ]
    text = str(treatment)
    assert "loss after 50 SGD steps" in text and "verdict: improved" in text
    json.dumps(treatment.to_dict(), allow_nan=False)


def test_treat_replaces_sigmoid_modules_of_a_plain_sequential(batch: Any) -> None:
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    width = 784
    for _ in range(6):
        layers += [nn.Linear(width, 128), nn.Sigmoid()]
        width = 128
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    diagnosis = doctor.diagnose(model, batch, steps=1)
    assert diagnosis.findings[0].kind == "vanishing_gradients"
    treatment = doctor.treat(model, diagnosis, batch, steps=30)
    assert not any(isinstance(m, nn.Sigmoid) for m in treatment.model.modules())
    assert sum(isinstance(m, activations.ELU) for m in treatment.model.modules()) == 6
    assert treatment.after.healthy and treatment.improved
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 6  # original untouched
    # the layers feeding the ELUs were re-initialized with He normal (std sqrt(2 / n_in))
    w = treatment.model[2].weight.detach()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 128), rel=0.05)


def test_treat_lowers_the_learning_rate_when_the_steps_are_too_large(batch: Any) -> None:
    model = models.mlp(784, [64, 64], 10, "elu", generator=torch.Generator().manual_seed(4))
    diagnosis = doctor.diagnose(model, batch, steps=3, lr=3.0)
    kinds = {f.kind for f in diagnosis.findings if f.severity != "info"}
    assert "update_ratio" in kinds or "non_finite" in kinds
    finding = next(f for f in diagnosis.findings if f.kind in ("update_ratio", "non_finite"))
    assert finding.remedy is not None and finding.remedy["action"] == "lower_lr"
    treatment = doctor.treat(model, diagnosis, batch, steps=20)
    factor = 1.0
    for remedy in treatment.remedies:
        if remedy["action"] == "lower_lr":
            factor *= remedy["factor"]
    assert treatment.comparison["lr"] == {"original": 3.0, "treated": 3.0 / factor}
    assert factor >= 10 and treatment.after.healthy


def test_treat_of_a_healthy_model_applies_nothing(batch: Any) -> None:
    model = models.mlp(784, [32], 10, "relu", generator=torch.Generator().manual_seed(5))
    diagnosis = doctor.diagnose(model, batch, steps=1)
    assert diagnosis.healthy
    treatment = doctor.treat(model, diagnosis, batch, steps=5)
    assert treatment.remedies == [] and not treatment.improved
    assert "nothing to treat" in str(treatment)
    assert (
        treatment.comparison["loss_end"]["original"] == treatment.comparison["loss_end"]["treated"]
    )


# --------------------------------------------------------------------------- remedies


def _sequential(widths: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _activation_map(model: nn.Sequential) -> dict[str, str | None]:
    names = [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    return {n: ("relu" if n != names[-1] else None) for n in names}


def test_insert_batchnorm_on_a_sequential_and_on_an_mlp(batch: Any) -> None:
    torch.manual_seed(6)
    model = _sequential([784, 32, 32, 10])
    treated, factor, notes = doctor.apply_remedies(
        model, [{"action": "insert_batchnorm"}], batch, layers=_activation_map(model)
    )
    assert factor == 1.0 and notes == []
    norms = [m for m in treated.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [n.num_features for n in norms] == [32, 32]
    assert isinstance(treated[0], nn.Sequential) and isinstance(treated[0][1], nn.BatchNorm1d)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    mlp = models.mlp(784, [32, 32], 10, "relu")
    treated_mlp, _, _ = doctor.apply_remedies(
        mlp, [{"action": "insert_batchnorm"}], batch, layers={}
    )
    assert isinstance(treated_mlp, models.MLP) and treated_mlp.config["batch_norm"] == "before"


def test_lsuv_remedy_gives_unit_variance_layer_outputs(batch: Any) -> None:
    torch.manual_seed(7)
    model = _sequential([784, 64, 64, 10])
    treated, _, _ = doctor.apply_remedies(
        model, [{"action": "lsuv"}], batch, layers=_activation_map(model)
    )
    h = batch[0]
    with torch.no_grad():
        for module in treated:
            h = module(h)
            if isinstance(module, nn.Linear):
                assert abs(float(h.var(correction=0)) - 1.0) < 0.1


def test_reinit_with_a_named_initializer_and_reset_bias(batch: Any) -> None:
    torch.manual_seed(8)
    model = _sequential([784, 256, 10])
    remedies = [
        {"action": "reinit", "initializer": "he_normal", "layers": ["0"]},
        {"action": "reset_bias", "layers": ["0", "2"]},
    ]
    treated, _, _ = doctor.apply_remedies(model, remedies, batch, layers=_activation_map(model))
    assert float(treated[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 784), rel=0.03)
    assert float(treated[0].bias.detach().abs().max()) == 0.0
    assert float(treated[2].bias.detach().abs().max()) == 0.0
    torch.testing.assert_close(treated[2].weight, model[2].weight)


def test_replace_activation_of_a_functional_activation_is_a_note(batch: Any) -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, 16)
            self.fc2 = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.sigmoid(self.fc1(x)))

    _, _, notes = doctor.apply_remedies(
        Functional(),
        [{"action": "replace_activation", "from": "sigmoid", "to": "elu"}],
        batch,
        layers={"fc1": "sigmoid", "fc2": None},
    )
    assert notes == [
        "replace_activation: sigmoid is applied as a function in Functional.forward, not as a "
        "module; replace it by elu in the code"
    ]


def test_apply_remedies_rejects_bad_remedies(batch: Any) -> None:
    model = _sequential([784, 8, 10])
    layers = _activation_map(model)
    with pytest.raises(
        ValueError,
        match=r"remedy action must be one of 'replace_activation', .* "
        r"got 'reinitialise' \(did you mean 'reinit'\?\)",
    ):
        doctor.apply_remedies(model, [{"action": "reinitialise"}], batch, layers=layers)
    with pytest.raises(TypeError, match=r"remedy must be a dict with an 'action' string; got "):
        doctor.apply_remedies(model, ["reinit"], batch, layers=layers)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"lower_lr factor must be a number > 1; got 0.5"):
        doctor.apply_remedies(model, [{"action": "lower_lr", "factor": 0.5}], batch, layers=layers)


# --------------------------------------------------------------------------- thresholds


def _layer(depth: int, **values: Any) -> LayerStats:
    fields: dict[str, Any] = {
        "name": f"layer{depth}",
        "kind": "Linear",
        "depth": depth,
        "activation": "relu",
        "pre_mean": 0.0,
        "pre_std": 1.0,
        "act_mean": 0.4,
        "act_std": 0.6,
        "saturated": 0.0,
        "dead": 0.0,
        "grad_out_std": 1e-3,
        "grad_out_norm": 0.1,
        "weight_std": 0.1,
        "weight_grad_std": 1e-4,
        "weight_grad_norm": 1e-2,
        "update_ratio": None,
        "recommended_std": 0.1,
        "nan": 0,
        "inf": 0,
    }
    fields.update(values)
    return LayerStats(**fields)


def _evidence(layers: list[LayerStats], **values: Any) -> Evidence:
    fields: dict[str, Any] = {
        "layers": layers,
        "trained": None,
        "update_ratios": {},
        "losses": [2.3, 2.2],
        "diverged_at": None,
        "steps": 2,
        "lr": 0.01,
        "units": {s.name: 256 for s in layers},
        "bias_mean": {},
        "normalized": False,
    }
    fields.update(values)
    return Evidence(**fields)


def _kinds(found: list[doctor.Finding]) -> dict[str, str]:
    return {f.kind: f.severity for f in found}


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (0.011, None),
        (0.0099, "warning"),
        (0.00099, "critical"),
        (99.0, None),
        (101.0, "warning"),
        (1001.0, "critical"),
    ],
)
def test_gradient_ratio_thresholds(ratio: float, expected: str | None) -> None:
    layers = [_layer(1, grad_out_std=1e-3 * ratio), _layer(2), _layer(3, grad_out_std=1e-3)]
    kinds = _kinds(_findings.findings(_evidence(layers)))
    kind = "vanishing_gradients" if ratio < 1 else "exploding_gradients"
    assert kinds.get(kind) == expected
    assert set(kinds) <= {kind}


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(0.011, None), (0.0099, "warning"), (0.00099, "critical"), (101.0, "warning")],
)
def test_forward_ratio_thresholds(ratio: float, expected: str | None) -> None:
    layers = [_layer(1), _layer(2), _layer(3, pre_std=ratio)]
    kinds = _kinds(_findings.findings(_evidence(layers)))
    kind = "forward_shrinking" if ratio < 1 else "forward_growing"
    assert kinds.get(kind) == expected


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.29, None), (0.31, "warning"), (0.61, "critical")]
)
def test_saturation_thresholds(fraction: float, expected: str | None) -> None:
    layers = [_layer(1, activation="tanh", saturated=fraction), _layer(2, activation=None)]
    found = _findings.findings(_evidence(layers))
    assert _kinds(found).get("saturation") == expected
    if expected:
        assert f"{fraction:.0%} of the tanh pre-activations" in found[0].evidence
        assert "|z| > 1.82" in found[0].evidence


def test_saturation_that_appears_in_training_is_reported_with_both_numbers() -> None:
    layers = [_layer(1, activation="sigmoid", saturated=0.0), _layer(2, activation=None)]
    trained = [_layer(1, activation="sigmoid", saturated=0.5), _layer(2, activation=None)]
    found = _findings.findings(_evidence(layers, trained=trained))
    assert found[0].kind == "saturation" and found[0].severity == "warning"
    assert "after 2 SGD steps at lr 0.01 (0% before)" in found[0].evidence
    assert found[0].remedy == {"action": "replace_activation", "from": "sigmoid", "to": "elu"}


@pytest.mark.parametrize(
    ("fraction", "units", "expected"),
    [
        (0.59, 256, None),
        (0.61, 256, "warning"),
        (0.91, 256, "critical"),
        (0.8, 16, None),
        (0.88, 16, "warning"),
    ],
)
def test_dead_unit_thresholds(fraction: float, units: int, expected: str | None) -> None:
    layers = [_layer(1, dead=fraction), _layer(2, activation=None)]
    found = _findings.findings(_evidence(layers, units={"layer1": units, "layer2": 10}))
    assert _kinds(found).get("dead_units") == expected


def test_dead_units_blame_negative_biases_then_the_learning_rate() -> None:
    layers = [_layer(1, dead=0.95, pre_std=0.8), _layer(2, activation=None)]
    found = _findings.findings(_evidence(layers, bias_mean={"layer1": -5.0, "layer2": 0.0}))
    assert found[0].remedy == {"action": "reset_bias", "layers": ["layer1", "layer2"]}
    trained = [_layer(1, dead=0.7), _layer(2, activation=None)]
    found = _findings.findings(_evidence([_layer(1, dead=0.1), layers[1]], trained=trained))
    assert found[0].remedy == {"action": "lower_lr", "factor": 10}
    assert "after 2 SGD steps at lr 0.01 (10% before)" in found[0].evidence


@pytest.mark.parametrize(
    ("ratio", "expected", "factor"),
    [(0.09, None, None), (0.11, "warning", 10), (5.0, "critical", 100)],
)
def test_update_ratio_thresholds(ratio: float, expected: str | None, factor: int | None) -> None:
    layers = [_layer(1), _layer(2, activation=None)]
    ev = _evidence(layers, update_ratios={"layer1": [1e-3, ratio], "layer2": [1e-3, 1e-3]})
    found = [f for f in _findings.findings(ev) if f.kind == "update_ratio"]
    assert (found[0].severity if found else None) == expected
    if found:
        assert found[0].remedy == {"action": "lower_lr", "factor": factor}
        assert f"‖ΔW‖/‖W‖ = {ratio:g} (step 1)" in found[0].evidence


def test_init_mismatch_is_info_without_drift_and_warning_with_it() -> None:
    quiet = [_layer(1, weight_std=0.04), _layer(2, weight_std=0.04, activation=None)]
    (info,) = _findings.findings(_evidence(quiet))
    assert info.kind == "init_mismatch" and info.severity == "info" and info.remedy is None
    assert "harmless here: no layer drifts" in info.evidence
    drifting = [_layer(d, weight_std=0.04) for d in range(1, 4)]
    drifting[0] = _layer(1, weight_std=0.04, grad_out_std=1e-8)
    kinds = _kinds(_findings.findings(_evidence(drifting)))
    assert kinds == {"vanishing_gradients": "critical", "init_mismatch": "warning"}


def test_ordering_puts_causes_first_and_non_finite_at_init_on_top() -> None:
    layers = [
        _layer(1, activation="tanh", saturated=0.9, grad_out_std=10.0, weight_std=2.0),
        _layer(2, activation="tanh", saturated=0.9, weight_std=2.0, nan=3),
        _layer(3, activation=None),
    ]
    found = _findings.findings(_evidence(layers))
    assert [f.kind for f in found][:3] == ["non_finite", "saturation", "exploding_gradients"]
    assert found[0].layers == ["layer2"] and "3 NaN and 0 Inf" in found[0].evidence


# --------------------------------------------------------------------------- any model


def test_update_ratio_and_losses_match_a_direct_sgd_step(batch: Any) -> None:
    model = models.mlp(784, [32, 16], 10, "tanh", generator=torch.Generator().manual_seed(10))
    diagnosis = doctor.diagnose(model, batch, steps=2, lr=0.5)
    # Reference: torch.optim.SGD on a copy, ‖ΔW‖/‖W‖ of each step and the loss before each.
    reference = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    x, y = batch
    # ‖ΔW‖/‖W‖ with W the weights after the step (the monitor's update_ratio).
    names = ("hidden1", "hidden2", "outputs")
    ratios: dict[str, list[float]] = {n: [] for n in names}
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(reference(x), y)
        losses.append(float(loss.detach()))
        loss.backward()
        before = {n: getattr(reference, n).weight.detach().clone() for n in names}
        optimizer.step()
        for n in names:
            w = getattr(reference, n).weight.detach()
            ratios[n].append(float((w - before[n]).norm() / w.norm()))
    with torch.no_grad():
        losses.append(float(F.cross_entropy(reference(x), y)))
    assert diagnosis.losses == pytest.approx(losses, rel=1e-5)
    for n in names:
        assert diagnosis.update_ratios[n] == pytest.approx(ratios[n], rel=1e-4)


def test_treat_comparison_losses_match_torch_sgd(batch: Any) -> None:
    model = _preset("dead-relu")
    diagnosis = doctor.diagnose(model, batch, steps=0)
    treatment = doctor.treat(model, diagnosis, batch, steps=4, batch_size=50)
    x, y = batch
    for which, net in (("original", model), ("treated", treatment.model)):
        reference = copy.deepcopy(net).train()
        optimizer = torch.optim.SGD(reference.parameters(), lr=diagnosis.lr)
        order = torch.Generator().manual_seed(0)
        queue: list[torch.Tensor] = []
        for _ in range(4):  # mini-batches of 50 from one seeded permutation per epoch
            if not queue:
                permutation = torch.randperm(128, generator=order)
                queue = [permutation[i : i + 50] for i in range(0, 128, 50)]
            index = queue.pop(0)
            optimizer.zero_grad()
            F.cross_entropy(reference(x[index]), y[index]).backward()
            optimizer.step()
        with torch.no_grad():
            expected = float(F.cross_entropy(reference(x), y))
        assert treatment.comparison["loss_final"][which] == pytest.approx(expected, rel=1e-5)
        curve = treatment.comparison["loss_curve"][which]
        assert len(curve) == 5 and curve[-1] == treatment.comparison["loss_final"][which]
        assert treatment.comparison["loss_end"][which] == pytest.approx(sum(curve) / 5)


def test_diagnose_leaves_the_model_and_the_rng_alone(batch: Any) -> None:
    model = models.mlp(784, [32, 32], 10, "relu", batch_norm="before")
    model.eval()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    first = doctor.diagnose(model, batch, steps=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    again = doctor.diagnose(model, batch, steps=3)
    assert first.to_dict()["layers"] == again.to_dict()["layers"]
    assert first.losses == again.losses


def test_a_forward_that_produces_nan_is_reported_not_raised(batch: Any) -> None:
    class LogNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.log(self.fc1(x)))  # log of negative numbers: NaN

    diagnosis = doctor.diagnose(LogNet(), batch, steps=2)
    top = diagnosis.findings[0]
    assert top.kind == "non_finite" and top.severity == "critical" and top.remedy is None
    assert not diagnosis.healthy and "NaN" in top.evidence
    json.dumps(diagnosis.to_dict(), allow_nan=False)


def test_cnn_residual_and_functional_models_are_diagnosed(batch: Any) -> None:
    torch.manual_seed(9)
    cnn = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 10),
    )
    diagnosis = doctor.diagnose(cnn, batch, steps=2)
    assert [s.kind for s in diagnosis.layers] == ["Conv2d", "Conv2d", "Linear"]
    assert [s.activation for s in diagnosis.layers] == ["relu", "relu", None]

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(784, 64)
            self.blocks = nn.ModuleList(nn.Linear(64, 64) for _ in range(8))
            self.out = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            for block in self.blocks:
                h = h + F.relu(block(h))
            return self.out(h)

    diagnosis = doctor.diagnose(Residual(), batch, steps=2)
    assert len(diagnosis.layers) == 10

    class FunctionalTanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.ModuleList([nn.Linear(784, 64)] + [nn.Linear(64, 64) for _ in range(3)])
            self.out = nn.Linear(64, 10)
            for layer in self.fc:
                nn.init.normal_(layer.weight, 0.0, 1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.fc:
                x = torch.tanh(layer(x))
            return self.out(x)

    diagnosis = doctor.diagnose(FunctionalTanh(), batch, steps=0)
    assert diagnosis.findings[0].kind == "saturation"
    assert diagnosis.layers[0].activation == "tanh"


def test_str_shows_the_table_and_the_findings_and_to_dict_is_json(batch: Any) -> None:
    diagnosis = doctor.diagnose(_preset("dead-relu"), batch, steps=1)
    text = str(diagnosis)
    assert text.startswith("steadygrad doctor: unhealthy (")
    assert "depth  layer    activation  pre std  act std  sat  dead  grad std" in text
    for name in ("hidden1", "hidden2", "outputs"):
        assert f"  {name}  " in text
    assert "1. [critical] dead_units: hidden1, hidden2" in text
    assert 'remedy: {"action": "reset_bias", "layers": "hidden1, hidden2, outputs"}' in text
    data = json.loads(json.dumps(diagnosis.to_dict(), allow_nan=False))
    assert data["healthy"] is False and data["findings"][0]["kind"] == "dead_units"
    assert data["key_numbers"]["dead_max"] == 1.0 and len(data["layers"]) == 3


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_reference_is_healthy_on_real_fashion_mnist() -> None:
    x, y = doctor.data_batch("fashion-mnist", 256, seed=0)
    assert x.shape == (256, 784) and y.dtype == torch.int64 and float(x.min()) >= 0
    diagnosis = doctor.diagnose(_preset("reference"), (x, y), steps=5)
    assert diagnosis.healthy, diagnosis.verdict
    tiny = doctor.diagnose(_preset("deep-relu-tiny-init"), (x, y), steps=0)
    assert tiny.findings[0].kind == "vanishing_gradients"


# --------------------------------------------------------------------------- errors


def test_diagnose_rejects_bad_arguments(batch: Any) -> None:
    model = _sequential([784, 8, 10])
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module; got str"):
        doctor.diagnose("mlp", batch)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"batch must be a tensor x or a tuple \(x, y\) of "
        r"tensors; got tuple of 3 item\(s\)",
    ):
        doctor.diagnose(model, (batch[0], batch[1], batch[1]))  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"batch must be a tensor x or a tuple \(x, y\) of "
        r"tensors; got ndarray",
    ):
        doctor.diagnose(model, batch[0].numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps must be a non-negative int; got -1"):
        doctor.diagnose(model, batch, steps=-1)
    with pytest.raises(ValueError, match=r"lr must be a positive number or None; got 0"):
        doctor.diagnose(model, batch, lr=0)
    with pytest.raises(TypeError, match=r"lr must be a positive number or None; got '0.1'"):
        doctor.diagnose(model, batch, lr="0.1")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"loss_fn must be a callable loss_fn\(output, y\) or "
        r"None; got str",
    ):
        doctor.diagnose(model, batch, "mse")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"diagnose: the monitor found no layer with a weight "
        r"\(Linear, Conv, or a module with a weight of rank >= 2\) in ReLU",
    ):
        doctor.diagnose(nn.ReLU(), batch)


def test_treat_rejects_bad_arguments(batch: Any) -> None:
    model = _sequential([784, 8, 10])
    diagnosis = doctor.diagnose(model, batch, steps=0)
    with pytest.raises(
        TypeError,
        match=r"diagnosis must be a Diagnosis from diagnose\(\); "
        r"got dict",
    ):
        doctor.treat(model, {}, batch)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"diagnosis does not describe this model: it has no "
        r"layer '0' \(diagnose this model first\)",
    ):
        doctor.treat(models.mlp(784, [8], 10), diagnosis, batch)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int or None; got 0"):
        doctor.treat(model, diagnosis, batch, batch_size=0)
    with pytest.raises(ValueError, match=r"steps must be a non-negative int; got 2.5"):
        doctor.treat(model, diagnosis, batch, steps=2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- model factories


def test_load_model_factory_imports_the_file_and_calls_the_factory(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())\n"
        "instance = torch.nn.Linear(2, 2)\n"
        "not_a_factory = 3\n"
        "def wrong():\n"
        "    return 'model'\n"
        "def broken():\n"
        "    raise RuntimeError('no GPU here')\n"
    )
    model = doctor.load_model_factory(f"{path}:build")
    assert isinstance(model, nn.Sequential) and model[0].in_features == 4
    assert isinstance(doctor.load_model_factory(f"{path}:instance"), nn.Linear)
    with pytest.raises(
        ValueError,
        match=r"model file '.*net.py' has no attribute 'biuld' "
        r"\(did you mean 'build'\?\)",
    ):
        doctor.load_model_factory(f"{path}:biuld")
    with pytest.raises(
        TypeError,
        match=r"'not_a_factory' in '.*net.py' must be a function "
        r"returning a torch.nn.Module; got int",
    ):
        doctor.load_model_factory(f"{path}:not_a_factory")
    with pytest.raises(
        TypeError,
        match=r"model factory '.*net.py:wrong' must return a "
        r"torch.nn.Module; got str",
    ):
        doctor.load_model_factory(f"{path}:wrong")
    with pytest.raises(
        ValueError,
        match=r"model factory '.*net.py:broken' raised "
        r"RuntimeError: no GPU here",
    ):
        doctor.load_model_factory(f"{path}:broken")


def test_load_model_factory_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model must be 'path/to/file.py:factory'; got 'net.py'"):
        doctor.load_model_factory("net.py")
    with pytest.raises(
        ValueError,
        match=r"model file '.*missing.py' does not exist \(from "
        r"--model '.*missing.py:build'\)",
    ):
        doctor.load_model_factory(f"{tmp_path / 'missing.py'}:build")
    text = tmp_path / "model.txt"
    text.write_text("def build(): pass\n")
    with pytest.raises(ValueError, match=r"model file '.*model.txt' is not an importable Python "):
        doctor.load_model_factory(f"{text}:build")
    bad = tmp_path / "bad.py"
    bad.write_text("import does_not_exist_anywhere\n")
    with pytest.raises(
        ValueError,
        match=r"could not import model file '.*bad.py': "
        r"ModuleNotFoundError: No module named 'does_not_exist_anywhere'",
    ):
        doctor.load_model_factory(f"{bad}:build")
    with pytest.raises(
        TypeError,
        match=r"model must be a string 'path/to/file.py:factory'; "
        r"got int",
    ):
        doctor.load_model_factory(3)  # type: ignore[arg-type]


def test_data_batch_rejects_a_bad_size() -> None:
    with pytest.raises(ValueError, match=r"size must be a positive int; got 0"):
        doctor.data_batch("fashion-mnist", 0)


def test_public_names_are_exported() -> None:
    public = {n for n in dir(doctor) if not n.startswith("_")}
    assert set(doctor.__all__) <= public
    assert {"diagnose", "treat", "Diagnosis", "Finding", "Treatment"} <= set(doctor.__all__)
    assert doctor.KINDS == (
        "non_finite",
        "saturation",
        "dead_units",
        "exploding_gradients",
        "vanishing_gradients",
        "forward_growing",
        "forward_shrinking",
        "update_ratio",
        "init_mismatch",
    )
