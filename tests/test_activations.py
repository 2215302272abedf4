"""Tests for steadygrad.activations: values and derivatives against torch, saturation regions
against a dense autograd scan, registry and conversions, and every error message."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from scipy import optimize
from torch import nn

from steadygrad import activations as A
from steadygrad import init

# (registry name, kwargs, torch base class, reference function written with torch's functional API)
CASES: dict[str, tuple[str, dict[str, Any], type[nn.Module], Callable[[torch.Tensor], Any]]] = {
    "relu": ("relu", {}, nn.ReLU, F.relu),
    "leaky_relu": ("leaky_relu", {}, nn.LeakyReLU, lambda z: torch.maximum(0.01 * z, z)),
    "leaky_relu_0.2": (
        "leaky_relu",
        {"alpha": 0.2},
        nn.LeakyReLU,
        lambda z: F.leaky_relu(z, 0.2),
    ),
    "elu": ("elu", {}, nn.ELU, F.elu),
    "elu_2": ("elu", {"alpha": 2.0}, nn.ELU, lambda z: F.elu(z, 2.0)),
    "selu": ("selu", {}, nn.SELU, F.selu),
    "prelu": ("prelu", {}, nn.PReLU, lambda z: F.prelu(z, torch.tensor([0.25], dtype=z.dtype))),
    "rrelu": ("rrelu", {}, nn.RReLU, lambda z: F.leaky_relu(z, (1 / 8 + 1 / 3) / 2)),
    "gelu": ("gelu", {}, nn.GELU, F.gelu),
    "gelu_tanh": (
        "gelu",
        {"approximate": "tanh"},
        nn.GELU,
        lambda z: F.gelu(z, approximate="tanh"),
    ),
    "silu": ("silu", {}, nn.SiLU, F.silu),
    "swish": ("swish", {}, nn.SiLU, lambda z: z * torch.sigmoid(z)),
    "sigmoid": ("sigmoid", {}, nn.Sigmoid, torch.sigmoid),
    "logistic": ("logistic", {}, nn.Sigmoid, lambda z: 1 / (1 + torch.exp(-z))),
    "tanh": ("tanh", {}, nn.Tanh, torch.tanh),
    "softplus": ("softplus", {}, nn.Softplus, F.softplus),
    "softplus_2": (
        "softplus",
        {"beta": 2.0, "threshold": 10.0},
        nn.Softplus,
        lambda z: F.softplus(z, 2.0, 10.0),
    ),
    "identity": ("identity", {}, nn.Identity, lambda z: z),
    "linear": ("linear", {}, nn.Identity, lambda z: z),
}

SPECIAL = [-math.inf, -1e30, -1e4, -100.0, -30.0, -5.0, -1e-7, -0.0, 0.0, 1e-7, 5.0, 30.0, 100.0]
SPECIAL += [1e4, 1e30, math.inf, math.nan]


def grid(dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(
        [torch.tensor(SPECIAL, dtype=dtype), torch.linspace(-10, 10, 201, dtype=dtype)]
    )


def build(case: str) -> A.Activation:
    name, kwargs, _, _ = CASES[case]
    module = A.get(name, **kwargs)
    return module.eval()


def autograd_derivative(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(z).sum(), z)
    return grad


# --------------------------------------------------------------------------- registry


def test_names() -> None:
    assert A.names() == [
        "elu", "gelu", "identity", "leaky_relu", "linear", "logistic", "prelu", "relu", "rrelu",
        "selu", "sigmoid", "silu", "softplus", "swish", "tanh",
    ]  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_subclasses_torch_module_and_mixin(case: str) -> None:
    module = build(case)
    base = CASES[case][2]
    assert isinstance(module, base) and isinstance(module, A.Activation)
    assert A.get(module.name).__class__ is module.__class__


def test_module_all_is_complete() -> None:
    classes = {n for n, v in vars(A).items() if isinstance(v, type) and v.__module__ == A.__name__}
    functions = {"get", "from_module", "names"}
    assert set(A.__all__) == classes | functions


# --------------------------------------------------------------------------- values, derivatives


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_equal_torch_functions(case: str, dtype: torch.dtype) -> None:
    z = grid(dtype)
    torch.testing.assert_close(build(case).to(dtype)(z), CASES[case][3](z), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_derivative_equals_autograd(case: str, dtype: torch.dtype) -> None:
    module = build(case).to(dtype)
    z = grid(dtype)
    expected = autograd_derivative(module, z)
    # torch's GELU/SiLU backward computes inf · 0 = NaN at ±inf (and GELU-tanh at ±1e30):
    # the derivative reports the limits there, 0 at -inf and 1 at +inf.
    limits = torch.isnan(expected) & ~torch.isnan(z)
    assert not limits.any() or case in {"gelu", "gelu_tanh", "silu", "swish"}
    expected = torch.where(limits, (z > 0).to(dtype), expected)
    expected = torch.where(torch.isnan(z), z, expected)  # NaN in, NaN out
    torch.testing.assert_close(module.derivative(z), expected, equal_nan=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_derivative_equals_finite_differences(case: str) -> None:
    module = build(case).double()
    z = torch.linspace(-8, 8, 321, dtype=torch.float64)
    threshold = getattr(module, "threshold", math.inf) / getattr(module, "beta", 1.0)
    z = z[(z.abs() > 1e-3) & ((z - threshold).abs() > 1e-3)]  # away from kinks
    h = 1e-6
    with torch.no_grad():
        numeric = (module(z + h) - module(z - h)) / (2 * h)
    torch.testing.assert_close(module.derivative(z), numeric, atol=1e-7, rtol=1e-6)


def test_prelu_per_channel_derivative() -> None:
    module = A.PReLU(num_parameters=3)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
    for shape in [(4, 3), (4, 3, 5), (2, 3, 4, 5)]:
        z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(module.derivative(z), autograd_derivative(module, z))
    with pytest.raises(ValueError, match=r"num_parameters=3 needs z with that many channels in "
                       r"dim 1; got shape \(4, 2\)"):  # fmt: skip
        module.derivative(torch.zeros(4, 2))


def test_rrelu_derivative_is_the_mean_slope_also_in_training() -> None:
    module = A.RReLU(0.1, 0.3).train()
    z = -torch.ones(10_000)
    slopes = -module(z)
    assert float(slopes.min()) >= 0.1 and float(slopes.max()) <= 0.3
    assert torch.equal(module.derivative(z), torch.full_like(z, 0.2))


# --------------------------------------------------------------------------- saturation


@pytest.mark.parametrize("case", ["relu", "leaky_relu", "prelu", "rrelu", "identity"])
def test_piecewise_linear_units_do_not_saturate(case: str) -> None:
    assert build(case).saturation_region(0.1) == (-math.inf, math.inf)
    assert build(case).saturation_region(0.9) == (-math.inf, math.inf)


def test_sigmoid_and_tanh_regions_solve_the_threshold_equation() -> None:
    # Independent: brentq on the derivative written out, σ(1 − σ) = 0.1 · 1/4.
    def sigmoid_prime(z: float) -> float:
        s = 1 / (1 + math.exp(-z))
        return s * (1 - s)

    hi = optimize.brentq(lambda z: sigmoid_prime(z) - 0.025, 0, 20, xtol=1e-14)
    lo_s, hi_s = A.get("sigmoid").saturation_region(0.1)
    assert hi_s == pytest.approx(hi, rel=1e-10) and lo_s == -hi_s
    assert hi_s == pytest.approx(3.6369, abs=1e-4)
    hi_t = optimize.brentq(lambda z: 1 - math.tanh(z) ** 2 - 0.1, 0, 20, xtol=1e-14)
    assert A.get("tanh").saturation_region(0.1) == pytest.approx((-hi_t, hi_t), rel=1e-10)


@pytest.mark.parametrize(
    "case",
    ["elu", "elu_2", "selu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "softplus_2"],
)
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.6, 0.95])
def test_saturation_region_matches_dense_autograd_scan(case: str, fraction: float) -> None:
    module = build(case).double()
    z = torch.arange(-30_000, 30_001, dtype=torch.float64) / 1000  # step 1e-3, 0 included
    prime = autograd_derivative(module, z)
    saturated = prime < fraction * prime.max()
    lo, hi = module.saturation_region(fraction)
    predicted = (z < lo) | (z > hi)
    away = ((z - lo).abs() > 2e-3) & ((z - hi).abs() > 2e-3)
    assert torch.equal(saturated[away], predicted[away])
    if math.isfinite(lo) and lo != 0.0:
        assert float(module.derivative(torch.tensor(lo, dtype=torch.float64))) == pytest.approx(
            fraction * float(prime.max()), rel=1e-6
        )


def test_negative_side_only_for_exponential_and_smooth_units() -> None:
    for name in ("elu", "selu", "gelu", "silu", "softplus"):
        lo, hi = A.get(name).saturation_region()
        assert math.isfinite(lo) and lo < 0 and hi == math.inf
    assert A.get("elu").saturation_region(0.1)[0] == pytest.approx(math.log(0.1))
    assert A.get("selu").saturation_region(0.1)[0] == pytest.approx(math.log(0.1))
    assert A.get("softplus").saturation_region(0.1)[0] == pytest.approx(math.log(0.1 / 0.9))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_saturation_fraction_must_be_in_open_unit_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match=rf"fraction must be in \(0, 1\); got {fraction}"):
        A.get("tanh").saturation_region(fraction)


def test_saturation_fraction_type() -> None:
    with pytest.raises(TypeError, match=r"fraction must be a number in \(0, 1\); got '0.1'"):
        A.get("tanh").saturation_region("0.1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- dead units


def test_dead_below() -> None:
    relu = A.get("relu")
    assert relu.dead_below == 0.0
    below = torch.tensor([-1e30, -1.0, -1e-30, 0.0])
    assert torch.equal(relu.derivative(below), torch.zeros(4))
    assert float(relu.derivative(torch.tensor(1e-30))) == 1.0
    assert A.get("leaky_relu", alpha=0.0).dead_below == 0.0
    for name in A.names():
        if name != "relu":
            assert A.get(name).dead_below is None, name


# --------------------------------------------------------------------------- recommended init


def test_recommended_init_property() -> None:
    assert A.get("relu").recommended_init.name == "he_normal"
    assert A.get("selu").recommended_init.name == "lecun_normal"
    assert A.get("tanh").recommended_init.name == "glorot_normal"
    assert A.get("leaky_relu", alpha=0.2).recommended_init.scale == pytest.approx(2 / 1.04)
    assert A.get("rrelu", lower=0.1, upper=0.3).recommended_init == init.VarianceScaling(
        2 / (1 + 0.2**2), "fan_in", "truncated_normal"
    )


# --------------------------------------------------------------------------- get / from_module


def test_get_names_and_kwargs() -> None:
    leaky = A.get("LeakyReLU", alpha=0.2)
    assert isinstance(leaky, A.LeakyReLU)
    assert leaky.alpha == 0.2 and leaky.negative_slope == 0.2
    assert repr(leaky) == "LeakyReLU(alpha=0.2)"
    assert isinstance(A.get("leaky-relu"), A.LeakyReLU)
    assert A.get("leaky_relu").alpha == 0.01  # the seed's max(0.01 z, z)
    assert A.get("elu", alpha=0.5).alpha == 0.5
    assert isinstance(A.get("Swish"), A.SiLU)
    assert isinstance(A.get("logistic"), A.Sigmoid)
    assert isinstance(A.get("linear"), A.Identity)
    assert isinstance(A.get(None), A.Identity)
    assert A.get("gelu", approximate="tanh").approximate == "tanh"
    assert A.get("prelu", num_parameters=4, init=0.1).weight.shape == (4,)


def test_get_instances_classes_and_functions() -> None:
    ours = A.ReLU()
    assert A.get(ours) is ours
    assert A.get(A.ELU, alpha=0.3).alpha == 0.3
    elu = A.get(nn.ELU, alpha=0.5)
    assert isinstance(elu, A.ELU) and elu.alpha == 0.5
    assert A.get(nn.LeakyReLU(0.2)).alpha == 0.2
    assert isinstance(A.get(torch.relu), A.ReLU)
    assert isinstance(A.get(F.relu), A.ReLU)
    assert A.get(F.elu, alpha=0.3).alpha == 0.3
    assert isinstance(A.get(F.leaky_relu), A.LeakyReLU)
    assert isinstance(A.get(torch.tanh), A.Tanh)
    assert isinstance(A.get(F.tanh), A.Tanh)
    assert isinstance(A.get(torch.sigmoid), A.Sigmoid)
    assert isinstance(A.get(F.sigmoid), A.Sigmoid)
    assert isinstance(A.get(F.gelu), A.GELU)
    assert isinstance(A.get(F.silu), A.SiLU)
    assert isinstance(A.get(F.softplus), A.Softplus)
    assert isinstance(A.get(torch.selu), A.SELU)


@pytest.mark.parametrize(
    ("module", "cls", "attributes"),
    [
        (nn.ReLU(inplace=True), A.ReLU, {"inplace": True}),
        (nn.LeakyReLU(0.3), A.LeakyReLU, {"alpha": 0.3}),
        (nn.ELU(0.7), A.ELU, {"alpha": 0.7}),
        (nn.SELU(), A.SELU, {}),
        (nn.RReLU(0.05, 0.15), A.RReLU, {"lower": 0.05, "upper": 0.15}),
        (nn.GELU("tanh"), A.GELU, {"approximate": "tanh"}),
        (nn.SiLU(), A.SiLU, {}),
        (nn.Sigmoid(), A.Sigmoid, {}),
        (nn.Tanh(), A.Tanh, {}),
        (nn.Softplus(2.0, 5.0), A.Softplus, {"beta": 2.0, "threshold": 5.0}),
        (nn.Identity(), A.Identity, {}),
    ],
)
def test_from_module_converts_torch_modules(
    module: nn.Module, cls: type[A.Activation], attributes: dict[str, Any]
) -> None:
    module.eval()
    converted = A.from_module(module)
    assert type(converted) is cls
    assert converted is not None and not converted.training
    for key, value in attributes.items():
        assert getattr(converted, key) == value
    z = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(converted(z.clone()), module(z.clone()))


def test_from_module_shares_prelu_weight_and_keeps_ours() -> None:
    torch_prelu = nn.PReLU(3, init=0.1)
    converted = A.from_module(torch_prelu)
    assert isinstance(converted, A.PReLU)
    assert converted.weight is torch_prelu.weight
    ours = A.Tanh()
    assert A.from_module(ours) is ours
    assert A.from_module(nn.Linear(2, 2)) is None
    assert A.from_module(nn.Hardswish()) is None


def test_state_dict_is_torch_compatible() -> None:
    ours = A.PReLU(3, init=0.1)
    theirs = nn.PReLU(3)
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs.weight, ours.weight)


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_names_and_closest_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"activation must be one of 'elu', .*'tanh'; got 'leaky_rellu' "
        r"\(did you mean 'leaky_relu'\?\)",
    ):
        A.get("leaky_rellu")
    with pytest.raises(ValueError, match=r"activation must be one of .*; got 'maxout'$"):
        A.get("maxout")


def test_unknown_kwargs_name_activation_and_accepted_params() -> None:
    with pytest.raises(
        TypeError,
        match=r"activation 'leaky_relu' got unexpected argument\(s\) negative_slope; "
        r"accepted: alpha, inplace",
    ):
        A.get("leaky_relu", negative_slope=0.2)
    with pytest.raises(
        TypeError, match=r"activation 'tanh' got unexpected argument\(s\) alpha; accepted: none"
    ):
        A.get("tanh", alpha=1.0)
    with pytest.raises(TypeError, match=r"activation 'identity' got unexpected argument\(s\) x"):
        A.get(None, x=1)
    with pytest.raises(TypeError, match=r"activation ReLU is already built; got keyword"):
        A.get(nn.ReLU(), inplace=True)


def test_unknown_modules_functions_and_types() -> None:
    with pytest.raises(
        ValueError, match=r"activation module must be one of 'ReLU', .*; got 'Hardswish'"
    ):
        A.get(nn.Hardswish())
    with pytest.raises(
        ValueError,
        match=r"activation function must be one of 'torch.relu', .*; got 'test_unknown_modules",
    ):
        A.get(lambda z: z)
    with pytest.raises(TypeError, match=r"activation must be a name, .*; got int"):
        A.get(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build_it", "message"),
    [
        (lambda: A.ELU(alpha=0.0), r"elu alpha must be a positive finite number; got 0.0"),
        (lambda: A.ELU(alpha=-1.0), r"elu alpha must be a positive finite number; got -1.0"),
        (lambda: A.LeakyReLU(math.nan), r"leaky_relu alpha must be a finite number; got nan"),
        (lambda: A.Softplus(beta=0.0), r"softplus beta must be a positive finite number"),
        (lambda: A.Softplus(threshold=math.inf), r"softplus threshold must be a finite number"),
        (lambda: A.RReLU(0.3, 0.1), r"rrelu lower must be <= upper; got lower=0.3, upper=0.1"),
        (lambda: A.PReLU(0), r"prelu num_parameters must be a positive int; got 0"),
        (lambda: A.PReLU(init=math.inf), r"prelu init must be a finite number; got inf"),
        (
            lambda: A.GELU("tan"),
            r"gelu approximate must be one of 'none', 'tanh'; got 'tan' \(did you mean 'tanh'\?\)",
        ),
    ],
)
def test_argument_value_errors(build_it: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_it()


def test_argument_type_errors() -> None:
    with pytest.raises(TypeError, match=r"elu alpha must be a positive finite number; got '1'"):
        A.ELU(alpha="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"prelu num_parameters must be a positive int; got 1.5"):
        A.PReLU(1.5)  # type: ignore[arg-type]
