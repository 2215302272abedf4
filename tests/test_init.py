"""Tests for steadygrad.init: formulas, distributions (KS tests with fixed generators), errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from scipy import stats
from torch import nn

from steadygrad import activations, init

LINEAR_SHAPES = [(300, 784), (100, 300), (10, 100)]
SHAPES = [*LINEAR_SHAPES, (64, 32, 3, 3)]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Independent fan computation: receptive field = product of the kernel dims."""
    receptive = 1
    for k in shape[2:]:
        receptive *= k
    return shape[1] * receptive, shape[0] * receptive


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Preset → (formula for the realised std σ or uniform bound r, written out from the papers,
# distribution kind). n_in/n_out as in Glorot & Bengio 2010, He et al. 2015, LeCun et al. 1998.
PRESETS: dict[str, tuple[Callable[..., torch.Tensor], Callable[[int, int], float], str]] = {
    "glorot_normal": (init.glorot_normal_, lambda i, o: math.sqrt(2 / (i + o)), "truncated"),
    "glorot_uniform": (init.glorot_uniform_, lambda i, o: math.sqrt(6 / (i + o)), "uniform"),
    "he_normal": (init.he_normal_, lambda i, o: math.sqrt(2 / i), "truncated"),
    "he_uniform": (init.he_uniform_, lambda i, o: math.sqrt(6 / i), "uniform"),
    "lecun_normal": (init.lecun_normal_, lambda i, o: math.sqrt(1 / i), "truncated"),
    "lecun_uniform": (init.lecun_uniform_, lambda i, o: math.sqrt(3 / i), "uniform"),
    "uniform_fan_in": (init.uniform_fan_in_, lambda i, o: 1 / math.sqrt(i), "uniform"),
}


def reference(kind: str, value: float) -> Any:
    """The scipy distribution a preset should draw from, given its σ (normal) or r (uniform)."""
    if kind == "uniform":
        return stats.uniform(loc=-value, scale=2 * value)
    if kind == "truncated":
        # σ is the realised std: the pre-truncation std is σ / std(N(0,1) | [-2, 2]).
        return stats.truncnorm(-2, 2, scale=value / stats.truncnorm(-2, 2).std())
    return stats.norm(scale=value)


def std_tolerance(dist: Any, n: int) -> float:
    """5 standard errors of the sample std: sd(s) ≈ σ · sqrt((kurtosis + 2) / (4 n))."""
    sigma = float(dist.std())
    excess_kurtosis = float(dist.stats(moments="k"))
    return 5 * sigma * math.sqrt((excess_kurtosis + 2) / (4 * n))


def check_distribution(w: torch.Tensor, dist: Any) -> None:
    sample = w.detach().double().flatten().numpy()
    n = sample.size
    assert abs(sample.std() - dist.std()) < std_tolerance(dist, n)
    assert abs(sample.mean()) < 5 * dist.std() / math.sqrt(n)
    assert stats.kstest(sample, dist.cdf).pvalue > 1e-3


# --------------------------------------------------------------------------- fans


@pytest.mark.parametrize(
    "shape", [(300, 784), (10, 100), (16, 3, 5), (64, 32, 3, 3), (8, 4, 3, 3, 3), (7, 1, 1, 2)]
)
def test_compute_fans_matches_torch(shape: tuple[int, ...]) -> None:
    expected = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.compute_fans(shape) == expected == fans(shape)
    assert init.compute_fans(torch.Size(shape)) == expected


def test_compute_fans_conv_counts_receptive_field() -> None:
    assert init.compute_fans((64, 32, 3, 3)) == (32 * 9, 64 * 9)


@pytest.mark.parametrize("shape", [(), (5,)])
def test_compute_fans_rank_below_two_names_the_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"at least 2 dimensions .*got {re_escape(shape)}"):
        init.compute_fans(shape)


def test_compute_fans_rejects_negative_dims() -> None:
    with pytest.raises(ValueError, match=r"non-negative integers; got \(3, -1\)"):
        init.compute_fans((3, -1))


def re_escape(value: object) -> str:
    import re

    return re.escape(str(value))


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_matches_formula_and_distribution(preset: str, shape: tuple[int, ...]) -> None:
    fn, formula, kind = PRESETS[preset]
    n_in, n_out = fans(shape)
    value = formula(n_in, n_out)
    w = fn(torch.empty(shape), generator=seeded(sum(shape)))
    dist = reference(kind, value)
    check_distribution(w, dist)
    bound = value if kind == "uniform" else 2 * value / init.TRUNCATED_NORMAL_STD
    # Nothing beyond the bound, and the sample reaches close to it: P(max|w| < b (1 - 20/n))
    # ≈ e^-20 for the uniform; the truncated normal's density at its cut is 0.054/σ, so its
    # largest |w| is within 1% of b with overwhelming probability for n ≥ 1000.
    top = float(w.abs().max())
    assert top <= bound * (1 + 1e-6)
    slack = 20 / w.numel() if kind == "uniform" else 0.01
    assert top >= bound * (1 - slack)
    # The object get() returns for the name reports the same numbers.
    spec = init.get(preset)
    assert isinstance(spec, init.VarianceScaling)
    realised = value / math.sqrt(3) if kind == "uniform" else value
    assert spec.std(shape) == pytest.approx(realised, rel=1e-12)
    assert spec.bound(shape) == pytest.approx(bound, rel=1e-12)
    assert spec.name == preset


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_untruncated_normal_is_plain_gaussian(shape: tuple[int, int]) -> None:
    n_in, _ = fans(shape)
    for distribution in ("untruncated_normal", "normal", "Untruncated_Normal"):
        w = init.variance_scaling_(
            torch.empty(shape), 2.0, "fan_in", distribution, generator=seeded(1)
        )
        check_distribution(w, stats.norm(scale=math.sqrt(2 / n_in)))
    big = init.variance_scaling_(
        torch.empty(300, 784), 1.0, "fan_avg", "normal", generator=seeded(2)
    )
    # A Gaussian has tails past the truncated normal's cut 2σ/0.8796 ≈ 2.27σ (P ≈ 2.3%).
    assert float(big.abs().max()) > 3 * math.sqrt(2 / (300 + 784))


def test_truncation_constant_is_std_of_truncated_standard_normal() -> None:
    assert stats.truncnorm(-2, 2).std() == pytest.approx(init.TRUNCATED_NORMAL_STD, rel=1e-15)


def test_normal_presets_are_truncated_not_plain() -> None:
    w = init.he_normal_(torch.empty(300, 784), generator=seeded(3))
    plain = stats.norm(scale=math.sqrt(2 / 784))
    assert stats.kstest(w.double().flatten().numpy(), plain.cdf).pvalue < 1e-6


def test_he_with_fan_avg_uses_mean_of_fans() -> None:
    shape = (300, 784)
    n_avg = (784 + 300) / 2
    sigma = math.sqrt(2 / n_avg)
    a = init.variance_scaling_(torch.empty(shape), scale=2.0, mode="fan_avg", generator=seeded(4))
    b = init.he_normal_(torch.empty(shape), mode="fan_avg", generator=seeded(4))
    c = init.variance_scaling_(torch.empty(shape), 2.0, "FAN_AVG", generator=seeded(4))
    assert torch.equal(a, b) and torch.equal(a, c)
    dist = reference("truncated", sigma)
    check_distribution(a, dist)
    # And it is distinguishable from the fan_in version (σ = sqrt(2/784)).
    assert abs(float(a.std()) - math.sqrt(2 / 784)) > 10 * std_tolerance(dist, a.numel())
    spec = init.VarianceScaling(2.0, "FAN_AVG")
    assert spec.mode == "fan_avg" and spec.std(shape) == pytest.approx(sigma)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_variance_scaling_modes_on_conv(mode: str) -> None:
    shape = (64, 32, 3, 3)
    n = {"fan_in": 288, "fan_out": 576, "fan_avg": 432}[mode]
    w = init.variance_scaling_(torch.empty(shape), 0.5, mode, "uniform", generator=seeded(5))
    check_distribution(w, reference("uniform", math.sqrt(3 * 0.5 / n)))


def test_aliases_are_the_same_functions() -> None:
    assert init.xavier_normal_ is init.glorot_normal_
    assert init.xavier_uniform_ is init.glorot_uniform_
    assert init.kaiming_normal_ is init.he_normal_
    assert init.kaiming_uniform_ is init.he_uniform_


def test_uniform_fan_in_equals_torch_linear_default() -> None:
    ours = init.uniform_fan_in_(torch.empty(100, 300), generator=seeded(6))
    theirs = nn.init.kaiming_uniform_(torch.empty(100, 300), a=math.sqrt(5), generator=seeded(6))
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("std", "seed"), [(1.0, 7), (0.01, 8)])
def test_normal_baselines(std: float, seed: int) -> None:
    w = init.normal_(torch.empty(300, 784), std=std, generator=seeded(seed))
    check_distribution(w, stats.norm(scale=std))
    shifted = init.normal_(torch.empty(100, 300), 0.5, mean=2.0, generator=seeded(seed))
    check_distribution(shifted - 2.0, stats.norm(scale=0.5))


def test_uniform_baseline() -> None:
    w = init.uniform_(torch.empty(100, 300), 0.05, generator=seeded(9))
    check_distribution(w, reference("uniform", 0.05))


def test_zeros_and_ones() -> None:
    assert torch.equal(init.zeros_(torch.full((3, 4), 7.0)), torch.zeros(3, 4))
    assert torch.equal(init.ones_(torch.empty(5)), torch.ones(5))


def test_truncated_normal_in_float16_and_float64() -> None:
    for dtype in (torch.float16, torch.float64):
        w = init.he_normal_(torch.empty(300, 784, dtype=dtype), generator=seeded(10))
        assert w.dtype == dtype
        check_distribution(w, reference("truncated", math.sqrt(2 / 784)))


def test_empty_tensor_is_left_alone() -> None:
    w = torch.empty(0, 5)
    assert init.he_normal_(w) is w


# --------------------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("shape", [(3, 5), (100, 300), (64, 32, 3, 3), (5, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.0, math.sqrt(2)])
def test_orthogonal_rows_are_orthonormal_times_gain(shape: tuple[int, ...], gain: float) -> None:
    w = init.orthogonal_(torch.empty(shape), gain, generator=seeded(11))
    m = w.reshape(shape[0], -1).double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]).double(), atol=1e-5, rtol=0)


def test_orthogonal_equals_torch_for_same_generator_state() -> None:
    for shape in [(3, 5), (64, 32, 3, 3), (50, 20)]:
        ours = init.orthogonal_(torch.empty(shape), 1.5, generator=seeded(12))
        theirs = nn.init.orthogonal_(torch.empty(shape), 1.5, generator=seeded(12))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_orthogonal_rank_below_two() -> None:
    with pytest.raises(ValueError, match=r"orthogonal_: tensor must have at least 2 dimensions"):
        init.orthogonal_(torch.empty(4))


# --------------------------------------------------------------------------- common contract

ALL_RANDOM: dict[str, Callable[..., torch.Tensor]] = {
    **{name: fn for name, (fn, _, _) in PRESETS.items()},
    "variance_scaling": lambda t, generator=None: init.variance_scaling_(t, generator=generator),
    "vs_object": init.VarianceScaling(2.0, "fan_out", "uniform"),
    "vs_untruncated": init.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
    "orthogonal": init.orthogonal_,
    "normal": init.normal_,
    "uniform": lambda t, generator=None: init.uniform_(t, 0.1, generator=generator),
}


@pytest.mark.parametrize("name", sorted(ALL_RANDOM))
def test_generator_makes_draws_reproducible(name: str) -> None:
    fn = ALL_RANDOM[name]
    torch.manual_seed(98)  # the global RNG must not matter
    a = fn(torch.empty(20, 30), generator=seeded(13))
    torch.manual_seed(99)
    b = fn(torch.empty(20, 30), generator=seeded(13))
    c = fn(torch.empty(20, 30), generator=seeded(14))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", [*sorted(ALL_RANDOM), "zeros", "ones"])
def test_in_place_returns_tensor_and_records_no_grad(name: str) -> None:
    fn = {**ALL_RANDOM, "zeros": init.zeros_, "ones": init.ones_}[name]
    w = nn.Parameter(torch.full((20, 30), 123.0))
    storage = w.data_ptr()
    out = fn(w, generator=seeded(15))
    assert out is w
    assert w.data_ptr() == storage
    assert w.grad_fn is None and w.requires_grad and w.is_leaf
    assert not torch.equal(w.detach(), torch.full((20, 30), 123.0))


def test_variance_scaling_object() -> None:
    spec = init.VarianceScaling(2, "FAN_IN", "TRUNCATED_NORMAL")
    assert spec == init.VarianceScaling(2.0, "fan_in", "truncated_normal")
    assert spec.scale == 2.0 and isinstance(spec.scale, float)
    assert spec.name == "he_normal"
    assert spec.std((100, 300)) == pytest.approx(math.sqrt(2 / 300))
    with pytest.raises(AttributeError):
        spec.scale = 3.0  # type: ignore[misc]
    config = spec.to_config()
    assert config == {
        "name": "variance_scaling",
        "scale": 2.0,
        "mode": "fan_in",
        "distribution": "truncated_normal",
    }
    assert init.get(config) == spec
    assert init.VarianceScaling.from_config(config) == spec
    custom = init.VarianceScaling(1.5, "fan_out", "uniform")
    assert custom.name == "variance_scaling(scale=1.5, mode='fan_out', distribution='uniform')"
    assert init.get(custom.to_config()) == custom
    assert init.VarianceScaling(1.0, "fan_in", "normal").bound((3, 4)) == math.inf
    w = spec(torch.empty(100, 300), generator=seeded(16))
    check_distribution(w, reference("truncated", math.sqrt(2 / 300)))


# --------------------------------------------------------------------------- get


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        ("he_normal", init.VarianceScaling(2.0, "fan_in", "truncated_normal")),
        ("HeNormal", init.VarianceScaling(2.0, "fan_in", "truncated_normal")),
        ("he-normal", init.VarianceScaling(2.0, "fan_in", "truncated_normal")),
        ("kaiming_uniform", init.VarianceScaling(2.0, "fan_in", "uniform")),
        ("xavier_uniform", init.VarianceScaling(1.0, "fan_avg", "uniform")),
        ("GlorotNormal", init.VarianceScaling(1.0, "fan_avg", "truncated_normal")),
        ("glorot_uniform", init.VarianceScaling(1.0, "fan_avg", "uniform")),
        ("lecun_normal", init.VarianceScaling(1.0, "fan_in", "truncated_normal")),
        ("LecunUniform", init.VarianceScaling(1.0, "fan_in", "uniform")),
        ("uniform_fan_in", init.VarianceScaling(1 / 3, "fan_in", "uniform")),
        ("variance_scaling", init.VarianceScaling()),
        ("VarianceScaling", init.VarianceScaling()),
        ({"name": "he_normal", "mode": "fan_avg"}, init.VarianceScaling(2.0, "fan_avg")),
        (
            {"class_name": "VarianceScaling", "config": {"scale": 3.0, "mode": "fan_out"}},
            init.VarianceScaling(3.0, "fan_out"),
        ),
    ],
)
def test_get_variance_scaling_names(identifier: Any, expected: init.VarianceScaling) -> None:
    assert init.get(identifier) == expected


def test_get_functions_and_passthrough() -> None:
    assert init.get("orthogonal") is init.orthogonal_
    assert init.get("Zeros") is init.zeros_
    assert init.get("ones") is init.ones_
    assert init.get("normal") is init.normal_
    assert init.get(None) is None
    assert init.get(nn.init.kaiming_normal_) is nn.init.kaiming_normal_
    small = init.get({"name": "normal", "std": 0.01})
    assert small is not None
    w = small(torch.empty(300, 784), generator=seeded(17))
    check_distribution(w, stats.norm(scale=0.01))
    bounded = init.get({"name": "uniform", "limit": 0.2})
    assert bounded is not None
    assert float(bounded(torch.empty(50, 50), generator=seeded(18)).abs().max()) <= 0.2


def test_names_lists_every_registry_entry() -> None:
    assert init.names() == sorted(
        [
            "constant", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
            "kaiming_normal",
            "kaiming_uniform", "lecun_normal", "lecun_uniform", "normal", "ones", "orthogonal",
            "uniform", "uniform_fan_in", "variance_scaling", "xavier_normal", "xavier_uniform",
            "zeros",
        ]
    )  # fmt: skip
    for name in init.names():
        if name not in ("uniform", "constant"):  # these need an argument (limit, value)
            assert callable(init.get(name))


def test_module_all_is_complete() -> None:
    public = {n for n in vars(init) if not n.startswith("_") and n not in {"annotations"}}
    imported = {"Any", "Callable", "Final", "Iterable", "Mapping", "Sequence", "dataclass"}
    modules = {"dataclasses", "difflib", "functools", "inspect", "math", "torch", "nn"}
    assert set(init.__all__) == public - imported - modules


# --------------------------------------------------------------------------- recommended

EXPECTED_RECOMMENDED = {
    "linear": (1.0, "fan_avg"),
    "identity": (1.0, "fan_avg"),
    "sigmoid": (1.0, "fan_avg"),
    "logistic": (1.0, "fan_avg"),
    "tanh": (1.0, "fan_avg"),
    "softmax": (1.0, "fan_avg"),
    "relu": (2.0, "fan_in"),
    "elu": (2.0, "fan_in"),
    "gelu": (2.0, "fan_in"),
    "silu": (2.0, "fan_in"),
    "swish": (2.0, "fan_in"),
    "softplus": (2.0, "fan_in"),
    "leaky_relu": (2 / (1 + 0.01**2), "fan_in"),
    "prelu": (2 / (1 + 0.25**2), "fan_in"),
    "rrelu": (2 / (1 + ((1 / 8 + 1 / 3) / 2) ** 2), "fan_in"),
    "selu": (1.0, "fan_in"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_RECOMMENDED))
def test_recommended_table(name: str) -> None:
    scale, mode = EXPECTED_RECOMMENDED[name]
    spec = init.recommended(name)
    assert spec.scale == pytest.approx(scale, rel=1e-12)
    assert (spec.mode, spec.distribution) == (mode, "truncated_normal")


def test_recommended_covers_every_activation_name_and_module() -> None:
    assert set(activations.names()) <= set(EXPECTED_RECOMMENDED)
    for name in activations.names():
        module = activations.get(name)
        assert init.recommended(module) == init.recommended(name)
        assert module.recommended_init == init.recommended(name)


def test_recommended_names() -> None:
    assert init.recommended(None).name == "glorot_normal"
    assert init.recommended("tanh").name == "glorot_normal"
    assert init.recommended("ReLU").name == "he_normal"
    assert init.recommended("selu").name == "lecun_normal"


def test_recommended_leaky_slope_correction() -> None:
    expected = 2 / 1.04  # He et al. 2015 eq. 15 with α = 0.2
    assert init.recommended(activations.get("leaky_relu", alpha=0.2)).scale == pytest.approx(
        expected, rel=1e-12
    )
    assert init.recommended(nn.LeakyReLU(0.2)).scale == pytest.approx(expected, rel=1e-12)
    rrelu = nn.RReLU(0.1, 0.3)
    assert init.recommended(rrelu).scale == pytest.approx(2 / (1 + 0.2**2), rel=1e-12)
    prelu = nn.PReLU(3)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.0, 0.3, 0.4]))
    assert init.recommended(prelu).scale == pytest.approx(2 / (1 + 0.25 / 3), rel=1e-6)
    assert init.recommended(nn.LeakyReLU(0.0)).name == "he_normal"


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        (nn.ReLU(), "he_normal"),
        (nn.ReLU6(), "he_normal"),
        (nn.ELU(), "he_normal"),
        (nn.CELU(), "he_normal"),
        (nn.GELU(), "he_normal"),
        (nn.SiLU(), "he_normal"),
        (nn.Mish(), "he_normal"),
        (nn.Hardswish(), "he_normal"),
        (nn.Softplus(), "he_normal"),
        (nn.SELU(), "lecun_normal"),
        (nn.Sigmoid(), "glorot_normal"),
        (nn.Tanh(), "glorot_normal"),
        (nn.Softmax(dim=-1), "glorot_normal"),
        (nn.Hardtanh(), "glorot_normal"),
        (nn.Identity(), "glorot_normal"),
        (nn.ReLU, "he_normal"),
        (nn.Tanh, "glorot_normal"),
        (torch.relu, "he_normal"),
        (torch.nn.functional.elu, "he_normal"),
        (torch.tanh, "glorot_normal"),
    ],
)
def test_recommended_torch_modules_and_functions(activation: Any, expected: str) -> None:
    assert init.recommended(activation).name == expected


# --------------------------------------------------------------------------- errors


def test_unknown_initializer_name_lists_names_and_closest_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"initializer must be one of 'constant', 'glorot_normal', .*'zeros'; "
        r"got 'he_norml' \(did you mean 'he_normal'\?\)",
    ):
        init.get("he_norml")
    with pytest.raises(ValueError, match=r"got 'xavier' \(did you mean 'xavier_\w+'\?\)"):
        init.get("xavier")
    with pytest.raises(ValueError, match=r"initializer must be one of .*; got 'qqq'$"):
        init.get({"name": "qqq"})


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(
        ValueError,
        match=r"mode must be one of 'fan_in', 'fan_out', 'fan_avg'; got 'fan_sum'",
    ):
        init.variance_scaling_(torch.empty(3, 4), mode="fan_sum")
    with pytest.raises(ValueError, match=r"mode must be one of .*; got 'fanavg' \(did you mean"):
        init.he_normal_(torch.empty(3, 4), mode="fanavg")
    with pytest.raises(ValueError, match=r"mode must be one of .*; got 3"):
        init.VarianceScaling(1.0, 3)  # type: ignore[arg-type]


def test_unknown_distribution_lists_distributions() -> None:
    with pytest.raises(
        ValueError,
        match=r"distribution must be one of 'truncated_normal', 'untruncated_normal', "
        r"'uniform', 'normal'; got 'gaussian'",
    ):
        init.variance_scaling_(torch.empty(3, 4), distribution="gaussian")
    with pytest.raises(ValueError, match=r"got 'truncnormal' \(did you mean 'truncated_normal'"):
        init.VarianceScaling(distribution="truncnormal")


def test_unknown_activation_in_recommended() -> None:
    with pytest.raises(
        ValueError,
        match=r"activation must be one of .*'leaky_relu'.*; got 'leaky_rel' "
        r"\(did you mean 'leaky_relu'\?\)",
    ):
        init.recommended("leaky_rel")
    with pytest.raises(
        ValueError, match=r"activation module must be one of 'ReLU', .*; got 'Linear'"
    ):
        init.recommended(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"activation must be a name, .*; got int"):
        init.recommended(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_scale_must_be_positive_finite(scale: float) -> None:
    with pytest.raises(ValueError, match=rf"scale must be a positive finite number; got {scale}"):
        init.variance_scaling_(torch.empty(3, 4), scale)
    with pytest.raises(ValueError, match=r"scale must be a positive finite number"):
        init.VarianceScaling(scale)


def test_scale_type() -> None:
    with pytest.raises(TypeError, match=r"scale must be a positive finite number; got '2'"):
        init.VarianceScaling("2")  # type: ignore[arg-type]


def test_get_argument_errors() -> None:
    with pytest.raises(
        TypeError,
        match=r"initializer 'he_normal' got unexpected argument\(s\) scale; accepted: mode",
    ):
        init.get({"name": "he_normal", "scale": 3.0})
    with pytest.raises(
        TypeError,
        match=r"initializer 'orthogonal' got unexpected argument\(s\) std; accepted: gain",
    ):
        init.get({"name": "orthogonal", "std": 3.0})
    with pytest.raises(TypeError, match=r"initializer 'uniform' needs argument\(s\) limit"):
        init.get("uniform")
    with pytest.raises(ValueError, match=r"config must have a 'name' \(or 'class_name'\) string"):
        init.get({"scale": 2.0})
    with pytest.raises(TypeError, match=r"initializer must be a name, .*; got int"):
        init.get(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'config' must be a dict; got 3"):
        init.get({"name": "he_normal", "config": 3})


def test_tensor_argument_errors() -> None:
    with pytest.raises(
        ValueError, match=r"tensor must have a floating-point dtype; got torch.int64"
    ):
        init.he_normal_(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"tensor must be a torch.Tensor; got list"):
        init.he_normal_([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"at least 2 dimensions .*got \(5,\)"):
        init.he_normal_(torch.empty(5))


def test_baseline_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"std must be a positive finite number; got -1"):
        init.normal_(torch.empty(3), std=-1.0)
    with pytest.raises(ValueError, match=r"mean must be a finite number; got nan"):
        init.normal_(torch.empty(3), mean=math.nan)
    with pytest.raises(ValueError, match=r"limit must be a positive finite number; got 0"):
        init.uniform_(torch.empty(3), 0)
    with pytest.raises(ValueError, match=r"gain must be a finite number; got inf"):
        init.orthogonal_(torch.empty(3, 3), math.inf)


def test_from_config_rejects_non_variance_scaling() -> None:
    with pytest.raises(ValueError, match=r"does not describe a variance-scaling initializer"):
        init.VarianceScaling.from_config({"name": "zeros"})


def test_constant_fills_the_value_and_is_reachable_by_name_and_config() -> None:
    w = torch.empty(4, 3)
    assert init.constant_(w, -5.0) is w and torch.equal(w, torch.full((4, 3), -5.0))
    torch.nn.init.constant_(expected := torch.empty(7), 0.25)
    built = init.get({"name": "constant", "value": 0.25})
    assert built is not None
    assert torch.equal(built(torch.empty(7)), expected)  # torch.nn.init's own result
    assert "constant" in init.names()
    with pytest.raises(TypeError, match=r"initializer 'constant' needs argument\(s\) value"):
        init.get("constant")
    with pytest.raises(ValueError, match="value"):
        init.constant_(torch.empty(2), float("nan"))
    with pytest.raises(ValueError, match="constant_: tensor must have a floating-point dtype"):
        init.constant_(torch.zeros(2, dtype=torch.int64), 1.0)
