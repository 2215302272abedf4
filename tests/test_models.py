"""steadygrad.models: MLP structure, configs and presets against formulas and compositions."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from steadygrad import activations, init, models
from steadygrad.models import MLP, PRESETS, Preset, from_config, mlp, preset
from steadygrad.nn import BatchNorm, Dense, fold_batchnorm

# The seed's network, counted by hand: each Dense has in·out weights + out biases, each BatchNorm
# 2·width (γ, β); the Dense biases are kept although the BatchNorm's β makes them redundant.
REFERENCE_PARAMS = (
    784 * 300 + 300 + 2 * 300  # hidden1 + bn1
    + 300 * 100 + 100 + 2 * 100  # hidden2 + bn2
    + 100 * 10 + 10 + 2 * 10  # outputs + bn on the logits
)  # fmt: skip


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- reference preset


def test_reference_parameter_count_is_267430() -> None:
    assert REFERENCE_PARAMS == 267_430
    assert _trainable(preset("reference")) == REFERENCE_PARAMS


def test_reference_structure_prints_like_the_seed() -> None:
    model = preset("reference")
    text = str(model)
    assert "784-300-100-10, activation='elu', batch_norm='before', batch_norm_output=True" in text
    expected_lines = [
        "(hidden1): Dense(in_features=784, out_features=300, bias=True, "
        "kernel_initializer='he_normal'",
        "(hidden1_bn): BatchNorm(300, momentum=0.9, epsilon=0.001)",
        "(hidden1_act): ELU(alpha=1.0)",
        "(hidden2): Dense(in_features=300, out_features=100, bias=True",
        "(hidden2_bn): BatchNorm(100, momentum=0.9, epsilon=0.001)",
        "(hidden2_act): ELU(alpha=1.0)",
        "(outputs): Dense(in_features=100, out_features=10, bias=True",
        "(outputs_bn): BatchNorm(10, momentum=0.9, epsilon=0.001)",
    ]
    positions = [text.index(line) for line in expected_lines]
    assert positions == sorted(positions)
    assert [name for name, _ in model.named_children()] == [
        "hidden1", "hidden1_bn", "hidden1_act", "hidden2", "hidden2_bn", "hidden2_act",
        "outputs", "outputs_bn",
    ]  # fmt: skip
    assert model.widths == [784, 300, 100, 10]
    for module in model:
        if isinstance(module, Dense):
            assert module.activation is None  # BatchNorm comes before the activation
            assert module.kernel_initializer == "he_normal"


def test_reference_forward_equals_the_seeds_composition() -> None:
    g = torch.Generator().manual_seed(0)
    model = preset("reference", generator=g)
    x = torch.rand(50, 784, generator=g)

    def bn(z: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
        mean, var = z.mean(0), z.var(0, unbiased=False)
        return layer.weight * (z - mean) / torch.sqrt(var + 1e-3) + layer.bias

    h1, h2, out = model.hidden1, model.hidden2, model.outputs
    a1 = F.elu(bn(x @ h1.weight.T + h1.bias, model.hidden1_bn))
    a2 = F.elu(bn(a1 @ h2.weight.T + h2.bias, model.hidden2_bn))
    logits = bn(a2 @ out.weight.T + out.bias, model.outputs_bn)
    assert (model(x) - logits).abs().max().item() < 1e-5


def test_reference_he_normal_std_per_layer() -> None:
    model = preset("reference", generator=torch.Generator().manual_seed(1))
    for block in model.blocks():
        fan_in = block.dense.in_features
        std = block.dense.weight.detach().double().std().item()
        assert std == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05), block.name  # He 2015


def test_reference_summary_table() -> None:
    text = preset("reference").summary()
    assert text.splitlines()[0].startswith("MLP 784-300-100-10")
    assert "Trainable params: 267,430" in text
    assert "Non-trainable params: 820 (BatchNorm moving means and variances)" in text
    assert any(
        line.split() == ["hidden1", "Dense", "(batch,", "300)", "235,500"]
        for line in text.splitlines()
    )
    assert any(
        line.split() == ["outputs_bn", "BatchNorm", "(batch,", "10)", "20"]
        for line in text.splitlines()
    )


def test_fold_batchnorm_reference_network_matches_eval_model() -> None:
    g = torch.Generator().manual_seed(2)
    model = preset("reference", generator=g)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BatchNorm):
                assert module.weight is not None and module.bias is not None
                module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g))
        for _ in range(20):
            model(torch.rand(50, 784, generator=g))
    model.eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded, MLP)
    assert [type(m).__name__ for m in folded].count("Identity") == 3
    assert all(block.batch_norm is None for block in folded.blocks())
    x = torch.rand(64, 784, generator=g)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < 1e-5
    assert _trainable(folded) == REFERENCE_PARAMS - 2 * (300 + 100 + 10)


# --------------------------------------------------------------------------- mlp structure


def test_mlp_without_batch_norm_puts_the_activation_in_dense() -> None:
    g = torch.Generator().manual_seed(3)
    model = mlp(20, [16, 8], 3, "tanh", generator=g)
    assert [name for name, _ in model.named_children()] == ["hidden1", "hidden2", "outputs"]
    x = torch.randn(5, 20, generator=g)
    h1, h2, out = model.hidden1, model.hidden2, model.outputs
    expected = F.linear(
        torch.tanh(F.linear(torch.tanh(F.linear(x, h1.weight, h1.bias)), h2.weight, h2.bias)),
        out.weight,
        out.bias,
    )
    assert_close(model(x), expected)
    blocks = model.hidden_layers()
    assert [b.name for b in blocks] == ["hidden1", "hidden2"]
    assert all(isinstance(b.activation, activations.Tanh) and b.batch_norm is None for b in blocks)
    assert blocks[0].activation is h1.activation


def test_mlp_batch_norm_after_activation() -> None:
    g = torch.Generator().manual_seed(4)
    model = mlp(12, [10], 4, "relu", batch_norm="after", momentum=0.9, generator=g)
    assert [name for name, _ in model.named_children()] == ["hidden1", "hidden1_bn", "outputs"]
    x = torch.randn(30, 12, generator=g)
    h1 = model.hidden1
    a = torch.relu(F.linear(x, h1.weight, h1.bias))
    normalised = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + 1e-3)
    expected = F.linear(normalised, model.outputs.weight, model.outputs.bias)
    assert (model(x) - expected).abs().max().item() < 1e-5
    (block,) = model.hidden_layers()
    assert block.batch_norm is model.hidden1_bn and not block.batch_norm_before_activation
    assert block.activation is h1.activation


def test_mlp_blocks_with_batch_norm_before() -> None:
    model = mlp(6, [5, 4], 3, "elu", batch_norm="before", batch_norm_output=True)
    blocks = model.blocks()
    assert [b.name for b in blocks] == ["hidden1", "hidden2", "outputs"]
    assert blocks[0].dense is model.hidden1 and blocks[0].batch_norm is model.hidden1_bn
    assert blocks[0].activation is model.hidden1_act and blocks[0].batch_norm_before_activation
    assert blocks[-1].activation is None and blocks[-1].batch_norm is model.outputs_bn
    assert len(model.hidden_layers()) == 2


def test_mlp_linear_hidden_layers_and_no_hidden_layers() -> None:
    deep_linear = mlp(4, [3], 2, None, batch_norm="before")
    assert [name for name, _ in deep_linear.named_children()] == [
        "hidden1", "hidden1_bn", "outputs",
    ]  # fmt: skip
    logistic = mlp(4, [], 2)
    assert [name for name, _ in logistic.named_children()] == ["outputs"]
    assert logistic.hidden_layers() == []


def test_mlp_slice_is_a_plain_sequential() -> None:
    model = preset("reference")
    head = model[:3]
    assert type(head) is torch.nn.Sequential
    assert head(torch.rand(4, 784)).shape == (4, 300)
    assert isinstance(model[0], Dense)


def test_mlp_generator_reproduces_weights() -> None:
    a = mlp(10, [8], 2, generator=torch.Generator().manual_seed(5))
    b = mlp(10, [8], 2, generator=torch.Generator().manual_seed(5))
    c = mlp(10, [8], 2, generator=torch.Generator().manual_seed(6))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.equal(a.hidden1.weight, c.hidden1.weight)


# --------------------------------------------------------------------------- initializers


@pytest.mark.parametrize(
    ("activation", "hidden_init"),
    [("relu", "he_normal"), ("elu", "he_normal"), ("sigmoid", "glorot_normal"),
     ("tanh", "glorot_normal"), ("selu", "lecun_normal"), (None, "glorot_normal")],
)  # fmt: skip
def test_mlp_auto_initializer_uses_recommended_and_glorot_for_logits(
    activation: str | None, hidden_init: str
) -> None:
    model = mlp(30, [20, 20], 5, activation)
    assert model.hidden1.kernel_initializer == hidden_init
    assert model.hidden2.kernel_initializer == hidden_init
    assert model.outputs.kernel_initializer == "glorot_normal"
    assert model.config["initializer"] == "auto"


def test_mlp_auto_initializer_for_leaky_relu_config_reads_the_slope() -> None:
    model = mlp(
        800, [600], 10, {"name": "leaky_relu", "alpha": 0.2},
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    expected = init.VarianceScaling(2.0 / (1.0 + 0.2**2), "fan_in", "truncated_normal")
    assert model.hidden1.kernel_initializer == expected.to_config()
    std = model.hidden1.weight.detach().double().std().item()
    assert std == pytest.approx(math.sqrt(2.0 / (1.04 * 800)), rel=0.02)  # He et al. 2015, eq. 15
    assert isinstance(model.hidden1.activation, activations.LeakyReLU)
    assert model.hidden1.activation.negative_slope == 0.2


def test_mlp_explicit_initializer_applies_to_every_layer_and_output_override() -> None:
    model = mlp(30, [20], 5, "relu", initializer="he_uniform")
    assert model.hidden1.kernel_initializer == "he_uniform"
    assert model.outputs.kernel_initializer == "he_uniform"
    override = mlp(30, [20], 5, "relu", initializer="he_uniform", output_initializer="zeros")
    assert torch.equal(override.outputs.weight, torch.zeros(5, 20))
    auto_out = mlp(30, [20], 5, "relu", initializer="he_uniform", output_initializer="auto")
    assert auto_out.outputs.kernel_initializer == "glorot_normal"
    vs = mlp(30, [20], 5, initializer=init.VarianceScaling(2.0, "fan_in", "uniform"))
    assert vs.config["initializer"] == "he_uniform"


def test_mlp_bias_initializer_config_applies_to_every_dense() -> None:
    model = mlp(
        50, [400], 300, bias_initializer={"name": "normal", "mean": -2.0, "std": 0.5},
        generator=torch.Generator().manual_seed(8),
    )  # fmt: skip
    for layer in (model.hidden1, model.outputs):
        assert layer.bias is not None
        bias = layer.bias.detach().double()
        assert bias.mean().item() == pytest.approx(-2.0, abs=0.1)
        assert bias.std().item() == pytest.approx(0.5, rel=0.15)


# --------------------------------------------------------------------------- configs


def test_config_json_round_trip_rebuilds_same_architecture_and_weights() -> None:
    original = preset("reference", generator=torch.Generator().manual_seed(9))
    config = json.loads(json.dumps(original.config))
    assert config == original.config
    rebuilt = from_config(config, generator=torch.Generator().manual_seed(9))
    assert isinstance(rebuilt, MLP)
    assert rebuilt.config == original.config
    assert str(rebuilt) == str(original)
    original_state, rebuilt_state = original.state_dict(), rebuilt.state_dict()
    assert list(original_state) == list(rebuilt_state)
    for key, value in original_state.items():
        assert rebuilt_state[key].shape == value.shape
        assert torch.equal(rebuilt_state[key], value), key
    rebuilt.load_state_dict(original_state)  # strict: same names and shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_config_round_trips(name: str) -> None:
    model = preset(name)
    config = json.loads(json.dumps(model.config))
    assert config == PRESETS[name].config
    rebuilt = MLP.from_config(config)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


def test_config_is_a_copy() -> None:
    model = mlp(4, [3], 2)
    config = model.config
    config["hidden"].append(7)
    assert model.config["hidden"] == [3]


def test_config_with_dict_initializer_round_trips() -> None:
    model = mlp(
        8, [6], 2, {"name": "elu", "alpha": 0.5}, initializer={"name": "normal", "std": 0.1}
    )
    rebuilt = from_config(json.loads(json.dumps(model.config)))
    assert isinstance(rebuilt, MLP) and rebuilt.config == model.config
    assert isinstance(rebuilt.hidden1.activation, activations.ELU)
    assert rebuilt.hidden1.activation.alpha == 0.5


def test_from_config_unknown_key_raises_with_closest_match() -> None:
    config = {**mlp(4, [3], 2).config, "hiden": [3]}
    with pytest.raises(
        ValueError, match=r"config key must be one of .*got 'hiden' \(did you mean 'hidden'\?\)"
    ):
        from_config(config)


def test_from_config_missing_keys_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"MLP config is missing 'hidden', 'output_dim'; got keys \['input_dim', 'kind'\]",
    ):
        from_config({"kind": "mlp", "input_dim": 4})


def test_from_config_missing_kind_raises() -> None:
    with pytest.raises(
        ValueError, match=r"config must have a 'kind' key, one of 'mlp'; got keys \['hidden'"
    ):
        from_config({"hidden": [3], "input_dim": 4, "output_dim": 2})


def test_from_config_unknown_kind_raises_with_closest_match() -> None:
    with pytest.raises(
        ValueError, match=r"config kind must be one of 'mlp'; got 'mpl' \(did you mean 'mlp'\?\)"
    ):
        from_config({"kind": "mpl"})


def test_mlp_from_config_wrong_kind_raises() -> None:
    with pytest.raises(ValueError, match=r"MLP.from_config needs config kind 'mlp'; got 'cnn'"):
        MLP.from_config({"kind": "cnn", "input_dim": 4, "hidden": [], "output_dim": 2})


def test_from_config_not_a_dict_raises() -> None:
    with pytest.raises(TypeError, match=r"config must be a dict; got list"):
        from_config([("kind", "mlp")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"config must be a dict; got str"):
        MLP.from_config("mlp")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- presets


def test_preset_overrides_replace_arguments() -> None:
    model = preset("reference", hidden=[50], activation="selu")
    assert model.widths == [784, 50, 10]
    assert isinstance(model.hidden1_act, activations.SELU)
    assert model.config["batch_norm"] == "before" and model.config["momentum"] == 0.9


def test_preset_registry_is_extensible() -> None:
    PRESETS["tiny-test"] = Preset(
        "a test network", {"input_dim": 4, "hidden": [3], "output_dim": 2}
    )
    try:
        assert preset("tiny-test").widths == [4, 3, 2]
    finally:
        del PRESETS["tiny-test"]


def test_deep_presets_match_their_papers() -> None:
    sigmoid = preset("deep-sigmoid", generator=torch.Generator().manual_seed(10))
    assert sigmoid.widths == [784, *[1000] * 5, 10]
    for block in sigmoid.blocks():
        bound = 1.0 / math.sqrt(block.dense.in_features)  # U[±1/sqrt(n)], Glorot & Bengio 2010
        w = block.dense.weight.detach()
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    assert isinstance(sigmoid.hidden1.activation, activations.Sigmoid)
    tiny = preset("deep-relu-tiny-init", generator=torch.Generator().manual_seed(11))
    assert tiny.widths == [784, *[256] * 30, 10]
    assert tiny.hidden5.weight.detach().std().item() == pytest.approx(0.01, rel=0.03)
    assert tiny.outputs.weight.detach().std().item() == pytest.approx(0.01, rel=0.1)
    assert preset("deep-relu-he").hidden30.kernel_initializer == "he_normal"
    assert preset("deep-relu-xavier").hidden30.kernel_initializer == "glorot_normal"
    tanh = preset("deep-tanh-large-init", generator=torch.Generator().manual_seed(12))
    assert tanh.widths == [784, *[256] * 10, 10]
    assert tanh.hidden3.weight.detach().std().item() == pytest.approx(1.0, rel=0.03)


def test_dead_relu_preset_kills_every_unit_on_pixel_input() -> None:
    g = torch.Generator().manual_seed(13)
    model = preset("dead-relu", generator=g)
    x = torch.rand(200, 784, generator=g)  # pixels in [0, 1]
    z = F.linear(x, model.hidden1.weight, model.hidden1.bias)  # (batch, 300) pre-activations
    assert (z < 0).all()  # every unit of the first layer is dead on the whole batch


def test_unknown_preset_raises_with_list_and_closest_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"preset must be one of 'dead-relu', .*'reference'; got 'refrence' "
        r"\(did you mean 'reference'\?\)",
    ):
        preset("refrence")


def test_preset_unknown_override_raises_with_closest_match() -> None:
    with pytest.raises(
        TypeError,
        match=r"preset override must be one of .*got 'activaton' \(did you mean 'activation'\?\)",
    ):
        preset("reference", activaton="relu")


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("hidden", ["300,100", [300, 0], [2.5], 300, [True]])
def test_mlp_bad_hidden_raises(hidden: object) -> None:
    with pytest.raises(
        ValueError,
        match=r"hidden must be a list of positive layer widths such as \[300, 100\]; got ",
    ):
        mlp(784, hidden, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"), [("input_dim", 0), ("output_dim", -2), ("input_dim", "784")]
)
def test_mlp_bad_dims_raise(argument: str, value: object) -> None:
    kwargs: dict[str, object] = {"input_dim": 784, "hidden": [3], "output_dim": 10, argument: value}
    with pytest.raises(ValueError, match=rf"{argument} must be a positive int; got {value!r}"):
        mlp(**kwargs)  # type: ignore[arg-type]


def test_mlp_activation_module_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"activation must be a name such as 'elu', .*got ReLU"):
        mlp(4, [3], 2, torch.nn.ReLU())  # type: ignore[arg-type]


def test_mlp_unknown_activation_raises_with_closest_match() -> None:
    with pytest.raises(
        ValueError, match=r"activation must be one of .*got 'eleu' \(did you mean 'elu'\?\)"
    ):
        mlp(4, [3], 2, "eleu")


def test_mlp_activation_config_without_name_raises() -> None:
    with pytest.raises(
        ValueError, match=r"activation config must have a 'name' string.*got \{'alpha': 0.2\}"
    ):
        mlp(4, [3], 2, {"alpha": 0.2})


def test_mlp_callable_initializer_raises_type_error() -> None:
    with pytest.raises(
        TypeError, match=r"initializer must be 'auto', a name such as 'he_normal' .*got function"
    ):
        mlp(4, [3], 2, initializer=init.he_normal_)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"bias_initializer must be a name such as .*got function"):
        mlp(4, [3], 2, bias_initializer=init.zeros_)  # type: ignore[arg-type]


def test_mlp_unknown_initializer_raises_with_closest_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"initializer must be one of .*got 'he_nromal' \(did you mean 'he_normal'\?\)",
    ):
        mlp(4, [3], 2, initializer="he_nromal")
    with pytest.raises(
        ValueError, match=r"initializer must be one of .*got 'zeroes' \(did you mean 'zeros'\?\)"
    ):
        mlp(4, [3], 2, bias_initializer="zeroes")


def test_mlp_non_json_initializer_config_raises() -> None:
    with pytest.raises(
        TypeError, match=r"initializer must be JSON-able .*so that MLP.config can be saved; got"
    ):
        mlp(4, [3], 2, initializer={"name": "normal", "std": torch.tensor(0.1)})


def test_mlp_bad_batch_norm_placement_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"batch_norm must be one of None, 'before', 'after'; got 'befor' "
        r"\(did you mean 'before'\?\)",
    ):
        mlp(4, [3], 2, batch_norm="befor")
    with pytest.raises(
        ValueError, match=r"batch_norm must be one of None, 'before', 'after'; got True"
    ):
        mlp(4, [3], 2, batch_norm=True)  # type: ignore[arg-type]


def test_mlp_batch_norm_output_must_be_bool() -> None:
    with pytest.raises(TypeError, match=r"batch_norm_output must be True or False; got 'yes'"):
        mlp(4, [3], 2, batch_norm_output="yes")  # type: ignore[arg-type]


def test_mlp_bad_momentum_and_epsilon_raise() -> None:
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\) .*; got 1.0"):
        mlp(4, [3], 2, batch_norm="before", momentum=1.0)
    with pytest.raises(
        ValueError, match=r"epsilon must be a finite float > 0 \(e\.g\. 1e-3\); got 0"
    ):
        mlp(4, [3], 2, batch_norm="before", epsilon=0)


def test_models_all_is_complete() -> None:
    defined = {
        name
        for name, obj in vars(models).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "steadygrad.models"
    }
    assert defined | {"BATCH_NORM_PLACEMENTS", "KINDS", "PRESETS"} == set(models.__all__)
