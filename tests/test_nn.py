"""steadygrad.nn: Dense, BatchNorm and fold_batchnorm against explicit formulas and torch."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.testing import assert_close

from steadygrad import activations, init
from steadygrad.nn import BatchNorm, Dense, fold_batchnorm

ATOL = 1e-5


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """All dims but the feature/channel dim 1."""
    return [d for d in range(x.dim()) if d != 1]


def _per_feature(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (features,) tensor to broadcast against x of shape (batch, features, *spatial)."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def four_steps(
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's four steps, written out; batch statistics unless mean/var are given (eval)."""
    dims = _reduce_dims(x)
    m = x.numel() // x.shape[1]
    if mean is None:
        mean = x.sum(dim=dims) / m  # step 1: μ_B
    if var is None:
        var = ((x - _per_feature(mean, x)) ** 2).sum(dim=dims) / m  # step 2: biased σ²_B
    x_hat = (x - _per_feature(mean, x)) / torch.sqrt(_per_feature(var, x) + eps)  # step 3
    z = x_hat  # step 4: z = γ x̂ + β
    if gamma is not None:
        z = _per_feature(gamma, x) * z
    if beta is not None:
        z = z + _per_feature(beta, x)
    return z


def _randomize_affine(bn: BatchNorm, generator: torch.Generator) -> None:
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))


# --------------------------------------------------------------------------- BatchNorm


def test_batchnorm_defaults_follow_keras() -> None:
    bn = BatchNorm(7)
    assert bn.momentum == 0.99
    assert bn.eps == 1e-3
    assert bn.epsilon == 1e-3
    assert_close(bn.weight, torch.ones(7))
    assert_close(bn.bias, torch.zeros(7))
    assert_close(bn.running_mean, torch.zeros(7))
    assert_close(bn.running_var, torch.ones(7))
    assert int(bn.num_batches_tracked) == 0
    assert bn.training


@pytest.mark.parametrize("shape", [(32, 6), (16, 6, 5, 4), (8, 6, 9)])
def test_batchnorm_train_mode_equals_four_steps_and_functional(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    bn = BatchNorm(6, momentum=0.9, epsilon=1e-3)
    _randomize_affine(bn, g)
    x = torch.randn(*shape, generator=g) * 3.0 + 2.0
    out = bn(x)
    expected = four_steps(x, bn.weight, bn.bias, 1e-3)
    assert (out - expected).abs().max().item() < ATOL
    reference = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=1e-3)
    assert (out - reference).abs().max().item() < ATOL
    # Normalised: per-feature mean ≈ β and biased std ≈ γ·σ/sqrt(σ²+ε).
    assert_close(out.mean(dim=_reduce_dims(x)), bn.bias.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.5])
def test_batchnorm_moving_statistics_follow_momentum_recurrence(momentum: float) -> None:
    g = torch.Generator().manual_seed(1)
    bn = BatchNorm(5, momentum=momentum)
    moving_mean = torch.zeros(5, dtype=torch.float64)
    moving_var = torch.ones(5, dtype=torch.float64)
    for _ in range(50):
        batch = int(torch.randint(2, 40, (1,), generator=g))
        x = torch.randn(batch, 5, generator=g) * torch.arange(1.0, 6.0) + 3.0
        bn(x)
        x64 = x.double()
        mu = x64.sum(0) / batch
        unbiased = ((x64 - mu) ** 2).sum(0) / (batch - 1)  # Bessel: m/(m-1) · σ²_B
        moving_mean = momentum * moving_mean + (1 - momentum) * mu
        moving_var = momentum * moving_var + (1 - momentum) * unbiased
    assert (bn.running_mean.double() - moving_mean).abs().max().item() < ATOL
    assert (bn.running_var.double() - moving_var).abs().max().item() < ATOL
    assert int(bn.num_batches_tracked) == 50


def test_batchnorm_moving_variance_is_unbiased_not_biased() -> None:
    # momentum=0 keeps nothing: the moving stats are the last batch's, and the variance must be
    # the Bessel-corrected one (a biased implementation gives (m-1)/m of it).
    x = torch.tensor([[0.0], [2.0], [4.0], [10.0]])
    bn = BatchNorm(1, momentum=0.0)
    bn(x)
    assert_close(bn.running_mean, torch.tensor([4.0]))
    assert_close(bn.running_var, torch.tensor([x.var(unbiased=True).item()]))
    assert_close(bn.running_var, torch.tensor([(16 + 4 + 0 + 36) / 3]))


def test_batchnorm_eval_mode_uses_moving_statistics_and_does_not_update_them() -> None:
    g = torch.Generator().manual_seed(2)
    bn = BatchNorm(4, momentum=0.9, epsilon=1e-2)
    _randomize_affine(bn, g)
    for _ in range(50):
        bn(torch.randn(16, 4, generator=g) * 2.0 - 1.0)
    bn.eval()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    tracked = int(bn.num_batches_tracked)
    for _ in range(5):
        x = torch.randn(9, 4, generator=g) * 5.0
        out = bn(x)
        expected = four_steps(x, bn.weight, bn.bias, 1e-2, mean=mean, var=var)
        assert (out - expected).abs().max().item() < ATOL
    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == tracked
    # A batch of one is fine at inference.
    single = torch.randn(1, 4, generator=g)
    assert_close(bn(single), four_steps(single, bn.weight, bn.bias, 1e-2, mean=mean, var=var))


def test_batchnorm_eval_mode_4d_uses_per_channel_moving_statistics() -> None:
    g = torch.Generator().manual_seed(3)
    bn = BatchNorm(3, momentum=0.8)
    _randomize_affine(bn, g)
    for _ in range(10):
        bn(torch.randn(4, 3, 5, 5, generator=g) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
    bn.eval()
    x = torch.randn(2, 3, 5, 5, generator=g)
    expected = four_steps(x, bn.weight, bn.bias, bn.eps, mean=bn.running_mean, var=bn.running_var)
    assert (bn(x) - expected).abs().max().item() < ATOL


@pytest.mark.parametrize("shape", [(12, 4), (6, 4, 3, 3)])
@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False)])
def test_batchnorm_gradients_equal_slow_autograd_of_four_steps(
    shape: tuple[int, ...], center: bool, scale: bool
) -> None:
    g = torch.Generator().manual_seed(4)
    bn = BatchNorm(4, momentum=0.9, epsilon=1e-3, center=center, scale=scale).double()
    _randomize_affine(bn, g)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    upstream = torch.randn(*shape, generator=g, dtype=torch.float64)
    (bn(x) * upstream).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    gamma = bn.weight.detach().clone().requires_grad_(True) if scale else None
    beta = bn.bias.detach().clone().requires_grad_(True) if center else None
    (four_steps(x_ref, gamma, beta, 1e-3) * upstream).sum().backward()

    assert x.grad is not None and x_ref.grad is not None
    assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-8)
    if scale:
        assert bn.weight is not None and gamma is not None
        assert_close(bn.weight.grad, gamma.grad, atol=1e-10, rtol=1e-8)
    if center:
        assert bn.bias is not None and beta is not None
        assert_close(bn.bias.grad, beta.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    ("torch_cls", "shape"),
    [
        (torch.nn.BatchNorm1d, (20, 6)),
        (torch.nn.BatchNorm1d, (20, 6, 7)),
        (torch.nn.BatchNorm2d, (8, 6, 4, 4)),
    ],
)
def test_batchnorm_matches_torch_batchnorm_with_complementary_momentum(
    torch_cls: type[torch.nn.Module], shape: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(5)
    ours = BatchNorm(6, momentum=0.9, epsilon=1e-3)
    _randomize_affine(ours, g)
    theirs = torch_cls(6, momentum=1 - 0.9, eps=1e-3)
    theirs.load_state_dict(ours.state_dict())
    for _ in range(20):
        x = torch.randn(*shape, generator=g) * 1.5 + 0.3
        assert (ours(x) - theirs(x)).abs().max().item() < ATOL
    for key, value in theirs.state_dict().items():
        assert (ours.state_dict()[key].double() - value.double()).abs().max().item() < ATOL, key
    ours.eval()
    theirs.eval()
    x = torch.randn(*shape, generator=g)
    assert (ours(x) - theirs(x)).abs().max().item() < ATOL


def test_batchnorm_state_dict_matches_torch_batchnorm1d() -> None:
    ours = BatchNorm(5)
    theirs = torch.nn.BatchNorm1d(5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape
        assert ours.state_dict()[key].dtype == value.dtype
    theirs.running_mean.fill_(3.0)
    ours.load_state_dict(theirs.state_dict())
    assert_close(ours.running_mean, torch.full((5,), 3.0))
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]


def test_batchnorm_center_false_has_no_beta_and_scale_false_no_gamma() -> None:
    no_beta = BatchNorm(3, center=False)
    no_gamma = BatchNorm(3, scale=False)
    assert no_beta.bias is None and no_beta.weight is not None
    assert no_gamma.weight is None and no_gamma.bias is not None
    assert [n for n, _ in no_beta.named_parameters()] == ["weight"]
    assert [n for n, _ in no_gamma.named_parameters()] == ["bias"]
    neither = BatchNorm(3, center=False, scale=False)
    assert list(neither.parameters()) == []
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(6)) * 4 + 1
    assert (neither(x) - four_steps(x, None, None, 1e-3)).abs().max().item() < ATOL
    assert "center=False" in repr(no_beta) and "scale=False" in repr(no_gamma)


def test_batchnorm_partial_like_the_seed() -> None:
    my_batch_norm_layer = partial(BatchNorm, momentum=0.9)
    bn = my_batch_norm_layer(300)
    assert isinstance(bn, BatchNorm)
    assert bn.num_features == 300 and bn.momentum == 0.9 and bn.eps == 1e-3
    assert repr(bn) == "BatchNorm(300, momentum=0.9, epsilon=0.001)"


def test_batchnorm_device_and_dtype_arguments() -> None:
    bn = BatchNorm(3, dtype=torch.float64)
    assert bn.weight is not None and bn.weight.dtype == torch.float64
    assert bn.running_var.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long


def test_batchnorm_batch_of_one_in_train_mode_raises() -> None:
    bn = BatchNorm(300)
    message = (
        "BatchNorm in train mode needs more than one value per feature; got input shape "
        "(1, 300). Use a batch of 2 or more, or call model.eval() for inference"
    )
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        bn(torch.zeros(1, 300))
    assert int(bn.num_batches_tracked) == 0  # the failed call updated nothing


def test_batchnorm_single_value_per_channel_4d_raises_but_spatial_batch_of_one_works() -> None:
    bn = BatchNorm(3)
    with pytest.raises(
        ValueError, match=r"more than one value per feature; got input shape \(1, 3, 1, 1\)"
    ):
        bn(torch.zeros(1, 3, 1, 1))
    # One image with 4 spatial positions has 4 values per channel: fine.
    out = bn(torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(7)))
    assert out.shape == (1, 3, 2, 2)


def test_batchnorm_wrong_feature_count_raises() -> None:
    bn = BatchNorm(300)
    with pytest.raises(
        ValueError,
        match=r"expected 300 features \(dim 1 of the input\); got 100 in input shape \(32, 100\)",
    ):
        bn(torch.zeros(32, 100))
    bn.eval()
    with pytest.raises(
        ValueError, match=r"expected 300 features .*got 3 in input shape \(2, 3, 8, 8\)"
    ):
        bn(torch.zeros(2, 3, 8, 8))


def test_batchnorm_1d_input_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"shape \(batch, features\) or \(batch, channels, \.\.\.\); got input shape \(300,\)",
    ):
        BatchNorm(300)(torch.zeros(300))


@pytest.mark.parametrize("momentum", [1.0, 1.5, -0.1, True, "0.9", float("nan")])
def test_batchnorm_momentum_out_of_range_raises(momentum: object) -> None:
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\) .*; got "):
        BatchNorm(3, momentum=momentum)  # type: ignore[arg-type]


@pytest.mark.parametrize("epsilon", [0.0, -1e-3, float("inf"), float("nan"), None])
def test_batchnorm_epsilon_not_positive_raises(epsilon: object) -> None:
    with pytest.raises(
        ValueError, match=r"epsilon must be a finite float > 0 \(e\.g\. 1e-3\); got "
    ):
        BatchNorm(3, epsilon=epsilon)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_features", [0, -3, 2.5, True])
def test_batchnorm_num_features_not_positive_int_raises(num_features: object) -> None:
    with pytest.raises(ValueError, match=r"num_features must be a positive int; got "):
        BatchNorm(num_features)  # type: ignore[arg-type]


def test_batchnorm_momentum_zero_is_allowed() -> None:
    assert BatchNorm(2, momentum=0).momentum == 0.0
    assert math.isclose(BatchNorm(2, momentum=0.999).momentum, 0.999)


# --------------------------------------------------------------------------- fold_batchnorm


def _train_briefly(model: torch.nn.Module, input_shape: tuple[int, ...], seed: int) -> None:
    """Give every BatchNorm non-trivial moving statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (BatchNorm, torch.nn.modules.batchnorm._BatchNorm)):
                if module.weight is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g))
        for _ in range(10):
            model(torch.randn(*input_shape, generator=g) * 2.0 + 0.5)
    model.eval()


def _small_cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, stride=2),
        BatchNorm(4, momentum=0.9),
        torch.nn.ELU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5),
        torch.nn.BatchNorm1d(5, affine=False),
    )


def test_fold_batchnorm_small_cnn_matches_eval_model() -> None:
    model = _small_cnn()
    _train_briefly(model, (6, 3, 8, 8), seed=8)
    folded = fold_batchnorm(model)
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < ATOL
    assert not folded.training
    kinds = [type(m) for m in folded]
    assert kinds.count(torch.nn.Identity) == 3
    assert not any(
        isinstance(m, (BatchNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in folded
    )
    first = folded[0]
    assert isinstance(first, torch.nn.Conv2d) and first.bias is not None  # gained a bias
    # The original is untouched.
    assert isinstance(model[1], torch.nn.BatchNorm2d) and model[0].bias is None


def test_fold_batchnorm_conv1d_and_conv3d() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 3, 3),
        torch.nn.BatchNorm1d(3),
        torch.nn.Tanh(),
    )
    _train_briefly(model, (4, 2, 10), seed=10)
    x = torch.randn(3, 2, 10)
    with torch.no_grad():
        assert (fold_batchnorm(model)(x) - model(x)).abs().max().item() < ATOL
    model3 = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 2, groups=1), BatchNorm(3, momentum=0.5))
    _train_briefly(model3, (2, 2, 4, 4, 4), seed=11)
    x3 = torch.randn(2, 2, 4, 4, 4)
    with torch.no_grad():
        assert (fold_batchnorm(model3)(x3) - model3(x3)).abs().max().item() < ATOL


def test_fold_batchnorm_nested_sequential_and_kept_norms() -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.BatchNorm1d(6),  # first: nothing before it, kept
        torch.nn.Sequential(torch.nn.Linear(6, 4), BatchNorm(4, momentum=0.9)),  # folded
        torch.nn.ReLU(),
        BatchNorm(4),  # after an activation: kept
        torch.nn.Linear(4, 3),
        torch.nn.BatchNorm1d(3, track_running_stats=False),  # batch stats in eval: kept
    )
    _train_briefly(model, (16, 6), seed=12)
    folded = fold_batchnorm(model)
    assert isinstance(folded[0], torch.nn.BatchNorm1d)
    assert isinstance(folded[1][1], torch.nn.Identity)
    assert isinstance(folded[3], BatchNorm)
    assert isinstance(folded[5], torch.nn.BatchNorm1d)
    x = torch.randn(9, 6)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < ATOL


def test_fold_batchnorm_skips_feature_mismatch_and_non_sequential() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)
            self.norm = BatchNorm(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.linear(x))

    block = Block()
    folded = fold_batchnorm(block)
    assert isinstance(folded.norm, BatchNorm)  # not in a Sequential: order unknown, kept
    assert not folded.training and block.training


# --------------------------------------------------------------------------- Dense


def test_dense_is_a_linear_and_equals_f_linear_plus_activation() -> None:
    g = torch.Generator().manual_seed(20)
    layer = Dense(6, 4, activation="elu", generator=g)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.weight.shape == (4, 6) and layer.bias is not None
    assert isinstance(layer.activation, activations.ELU)
    for shape in [(5, 6), (2, 3, 6)]:
        x = torch.randn(*shape, generator=g)
        assert_close(layer(x), F.elu(F.linear(x, layer.weight, layer.bias)))
    linear = Dense(6, 4, use_bias=False, generator=g)
    assert linear.bias is None and linear.activation is None and not linear.use_bias
    x = torch.randn(5, 6, generator=g)
    assert_close(linear(x), x @ linear.weight.T)


def test_dense_default_init_is_glorot_uniform() -> None:
    layer = Dense(784, 300, generator=torch.Generator().manual_seed(21))
    bound = math.sqrt(6.0 / (784 + 300))  # Glorot & Bengio 2010
    w = layer.weight.detach().double().flatten()
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.999 * bound  # fills the interval, unlike torch's ±1/sqrt(784)
    assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.01)
    ks = stats.kstest(w.numpy(), "uniform", args=(-bound, 2 * bound))
    assert ks.pvalue > 0.01
    assert layer.bias is not None and torch.equal(layer.bias, torch.zeros(300))
    assert layer.kernel_initializer == "glorot_uniform" and layer.bias_initializer == "zeros"


def test_dense_he_normal_partial_like_the_seed() -> None:
    he_dense = partial(Dense, kernel_initializer="he_normal")
    layer = he_dense(784, 300, activation=torch.relu, generator=torch.Generator().manual_seed(22))
    sigma = math.sqrt(2.0 / 784)  # He et al. 2015
    w = layer.weight.detach().double()
    assert w.std().item() == pytest.approx(sigma, rel=0.01)
    assert w.abs().max().item() <= 2 * sigma / init.TRUNCATED_NORMAL_STD + 1e-7
    assert isinstance(layer.activation, activations.ReLU)
    assert layer.kernel_initializer == "he_normal"


def test_dense_initializer_config_dict_and_variance_scaling_object() -> None:
    g = torch.Generator().manual_seed(23)
    tiny = Dense(500, 400, kernel_initializer={"name": "normal", "std": 0.01}, generator=g)
    assert tiny.weight.detach().std().item() == pytest.approx(0.01, rel=0.01)
    assert tiny.kernel_initializer == {"name": "normal", "std": 0.01}
    preset = Dense(3, 2, kernel_initializer=init.VarianceScaling(2.0, "fan_in", "truncated_normal"))
    assert preset.kernel_initializer == "he_normal"
    custom = init.VarianceScaling(3.0, "fan_out", "uniform")
    layer = Dense(3, 2, kernel_initializer=custom)
    assert layer.kernel_initializer == custom.to_config()
    assert init.get(layer.kernel_initializer) == custom


def test_dense_callable_initializers_run_once_under_no_grad() -> None:
    calls: list[tuple[int, ...]] = []

    def fill_half(
        tensor: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        calls.append(tuple(tensor.shape))
        return tensor.fill_(0.5)  # no no_grad here: Dense provides it

    layer = Dense(3, 2, kernel_initializer=fill_half, bias_initializer=fill_half)
    # nn.Linear.__init__ calls reset_parameters too early; Dense must draw exactly once.
    assert calls == [(2, 3), (2,)]
    assert torch.equal(layer.weight, torch.full((2, 3), 0.5))
    assert layer.kernel_initializer == "fill_half"


def test_dense_generator_reproduces_and_reset_parameters_redraws() -> None:
    a = Dense(10, 5, kernel_initializer="he_uniform", generator=torch.Generator().manual_seed(24))
    b = Dense(10, 5, kernel_initializer="he_uniform", generator=torch.Generator().manual_seed(24))
    c = Dense(10, 5, kernel_initializer="he_uniform", generator=torch.Generator().manual_seed(25))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    with torch.no_grad():
        a.weight.zero_()
    a.reset_parameters(generator=torch.Generator().manual_seed(24))
    assert torch.equal(a.weight, b.weight)


def test_dense_activation_identifiers() -> None:
    leaky = Dense(3, 2, activation={"name": "leaky_relu", "alpha": 0.2})
    assert isinstance(leaky.activation, activations.LeakyReLU)
    assert leaky.activation.negative_slope == 0.2
    converted = Dense(3, 2, activation=torch.nn.Tanh())
    assert isinstance(converted.activation, activations.Tanh)

    class Cube(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x**3

    custom = Dense(3, 2, activation=Cube())
    assert isinstance(custom.activation, Cube)
    x = torch.randn(4, 3)
    assert_close(custom(x), F.linear(x, custom.weight, custom.bias) ** 3)


def test_dense_repr_shows_initializers_and_activation() -> None:
    text = repr(Dense(784, 300, activation="elu", kernel_initializer="he_normal"))
    assert "in_features=784, out_features=300, bias=True" in text
    assert "kernel_initializer='he_normal'" in text and "bias_initializer='zeros'" in text
    assert "(activation): ELU(alpha=1.0)" in text
    assert "activation=None" in repr(Dense(3, 2))


def test_dense_unknown_initializer_name_raises_with_closest_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"initializer must be one of .*got 'he_normel' \(did you mean 'he_normal'\?\)",
    ):
        Dense(3, 2, kernel_initializer="he_normel")


def test_dense_unknown_activation_name_raises_with_closest_match() -> None:
    with pytest.raises(
        ValueError, match=r"activation must be one of .*got 'rleu' \(did you mean 'relu'\?\)"
    ):
        Dense(3, 2, activation="rleu")


def test_dense_activation_config_without_name_raises() -> None:
    with pytest.raises(
        ValueError, match=r"activation config must have a 'name' string.*got \{'alpha': 0.2\}"
    ):
        Dense(3, 2, activation={"alpha": 0.2})


def test_dense_none_initializers_raise() -> None:
    with pytest.raises(
        ValueError,
        match=r"kernel_initializer must be a name, a config dict or a callable; got None",
    ):
        Dense(3, 2, kernel_initializer=None)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"bias_initializer must be .*got None \(use use_bias=False for no bias\)"
    ):
        Dense(3, 2, bias_initializer=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argument", "value"), [("in_features", 0), ("out_features", -1), ("in_features", 2.0)]
)
def test_dense_sizes_must_be_positive_ints(argument: str, value: object) -> None:
    sizes: dict[str, object] = {"in_features": 3, "out_features": 2, argument: value}
    with pytest.raises(ValueError, match=rf"{argument} must be a positive int; got {value!r}"):
        Dense(**sizes)  # type: ignore[arg-type]


def test_dense_wrong_input_features_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"Dense expected 784 input features \(last dim\); got input shape \(32, 100\)",
    ):
        Dense(784, 10)(torch.zeros(32, 100))


# ------------------------------------------------------------------ fold_batchnorm with Dense


def test_fold_batchnorm_dense_without_activation_folds_with_activation_is_kept() -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        Dense(8, 6, use_bias=False),
        BatchNorm(6, momentum=0.9),
        torch.nn.ELU(),
        Dense(6, 5, activation="relu"),
        BatchNorm(5, momentum=0.9),  # after Dense's activation: kept
        Dense(5, 4, activation="linear"),  # identity activation: foldable
        BatchNorm(4, momentum=0.9),
    )
    _train_briefly(model, (32, 8), seed=13)
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == [
        "Dense", "Identity", "ELU", "Dense", "BatchNorm", "Dense", "Identity",
    ]  # fmt: skip
    first = folded[0]
    assert isinstance(first, Dense) and first.use_bias and isinstance(first, torch.nn.Linear)
    x = torch.randn(11, 8)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < ATOL
