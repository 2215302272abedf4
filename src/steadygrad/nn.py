"""Layers: ``Dense`` (the seed's ``tf.layers.dense``), ``BatchNorm`` and ``fold_batchnorm``.

``Dense`` is a :class:`torch.nn.Linear` whose weights are drawn by a named initializer (Glorot
uniform by default, as in TensorFlow/Keras) and which applies an optional activation after the
affine map.
``BatchNorm`` is batch normalization (Ioffe & Szegedy, 2015) with the seed's/Keras' ``momentum``
convention and state-dict compatibility with :class:`torch.nn.BatchNorm1d`.
``fold_batchnorm`` merges each inference-mode BatchNorm into the layer before it.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from steadygrad import activations, init

__all__ = ["BatchNorm", "Dense", "fold_batchnorm"]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _check_momentum(momentum: object) -> float:
    """BatchNorm momentum (Keras convention) in [0, 1)."""
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0.0 <= momentum < 1.0
    ):
        raise ValueError(
            "momentum must be a float in [0, 1) (the fraction of the moving average kept "
            f"per step, e.g. 0.9 or 0.99); got {momentum!r}"
        )
    return float(momentum)


def _check_epsilon(epsilon: object) -> float:
    """BatchNorm epsilon: finite and > 0."""
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float))
        or not (epsilon > 0.0 and math.isfinite(epsilon))
    ):
        raise ValueError(f"epsilon must be a finite float > 0 (e.g. 1e-3); got {epsilon!r}")
    return float(epsilon)


class BatchNorm(torch.nn.Module):
    r"""Batch normalization (Ioffe & Szegedy, 2015), the seed's ``tf.layers.batch_normalization``.

    For input ``x`` of shape ``(batch, features)`` the statistics are taken over the batch; for
    ``(batch, channels, *spatial)`` (convolutional models) they are taken per channel over the batch
    and all spatial positions. With ``m`` such values per feature, in train mode:

    1. :math:`\mu_B = \frac{1}{m}\sum_{i=1}^{m} x_i` (mini-batch mean)
    2. :math:`\sigma_B^2 = \frac{1}{m}\sum_{i=1}^{m} (x_i - \mu_B)^2` (biased mini-batch variance)
    3. :math:`\hat{x}_i = (x_i - \mu_B) / \sqrt{\sigma_B^2 + \epsilon}`
    4. :math:`z_i = \gamma \hat{x}_i + \beta`

    with :math:`\gamma = 1` (``weight``) and :math:`\beta = 0` (``bias``) at the start;
    ``scale=False`` drops :math:`\gamma` and ``center=False`` drops :math:`\beta` (the parameter is
    then ``None``).

    **Moving statistics.** ``momentum`` follows the seed's and Keras' convention: it is the fraction
    of the moving average that is *kept* at each training step,

    .. math::

        \text{moving\_mean} \leftarrow m \cdot \text{moving\_mean} + (1 - m)\,\mu_B, \qquad
        \text{moving\_var} \leftarrow m \cdot \text{moving\_var} + (1 - m)\,\frac{m_B}{m_B - 1}\,
        \sigma_B^2 .

    (PyTorch's own ``BatchNorm1d(momentum=p)`` counts the other way: ``p = 1 - m``.) The moving
    variance averages the *unbiased* (Bessel-corrected) batch variance, while step 3 normalises with
    the biased :math:`\sigma_B^2`. This is Algorithm 2 of Ioffe & Szegedy (2015), whose inference
    variance is :math:`\mathrm{Var}[x] = \frac{m}{m-1} E_B[\sigma_B^2]`: the biased batch variance
    underestimates the population variance by the factor :math:`(m-1)/m`, and the moving average is
    an estimate of the population. It is also what ``torch.nn.BatchNorm1d`` does, so the two layers
    share state dicts *and* numbers. Train mode normalises with the batch statistics; eval mode
    (``model.eval()``) with the moving averages, which it leaves unchanged.

    **No UPDATE_OPS.** The seed (TensorFlow 1) builds the moving-average updates as separate graph
    ops collected in ``tf.GraphKeys.UPDATE_OPS`` and must fetch them at every training step. PyTorch
    runs eagerly: there is no graph of side-effect ops to fetch; the update happens inside
    :meth:`forward` whenever the module is in train mode, so nothing extra has to be run.

    Parameters ``weight``/``bias`` and buffers ``running_mean``/``running_var``/
    ``num_batches_tracked`` carry the same names, shapes and meaning as in
    :class:`torch.nn.BatchNorm1d`; state dicts load into each other.

    Args:
        num_features: features (dim 1) of the input.
        momentum: fraction of the moving averages kept per step, in ``[0, 1)`` (seed: 0.9).
        epsilon: :math:`\epsilon > 0` added to the variance (Keras default ``1e-3``).
        center: learn the offset :math:`\beta`.
        scale: learn the scale :math:`\gamma`.

    Raises:
        ValueError: on a bad argument; in :meth:`forward`, on a wrong feature count or, in train
            mode, on an input with a single value per feature (its variance is undefined).
    """

    weight: torch.nn.Parameter | None
    bias: torch.nn.Parameter | None
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        self.num_features = num_features
        self.momentum = _check_momentum(momentum)
        self.eps = _check_epsilon(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.scale:
            self.weight = torch.nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
        if self.center:
            self.bias = torch.nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )
        self.reset_parameters()

    @property
    def epsilon(self) -> float:
        """The Keras name of :attr:`eps`."""
        return self.eps

    def reset_running_stats(self) -> None:
        """Moving mean 0, moving variance 1, no batches seen."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the moving statistics and set :math:`\\gamma = 1`, :math:`\\beta = 0`."""
        self.reset_running_stats()
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape ``(batch, features)`` or ``(batch, channels, *spatial)``."""
        shape = tuple(x.shape)
        if x.dim() < 2:
            raise ValueError(
                "BatchNorm input must have shape (batch, features) or (batch, channels, ...); "
                f"got input shape {shape}"
            )
        if shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm expected {self.num_features} features (dim 1 of the input); "
                f"got {shape[1]} in input shape {shape}"
            )
        if self.training:
            # m values per feature: batch × spatial positions; the variance of one value is 0/0.
            if x.numel() // shape[1] <= 1:
                raise ValueError(
                    "BatchNorm in train mode needs more than one value per feature; got input "
                    f"shape {shape}. Use a batch of 2 or more, or call model.eval() for inference"
                )
            self.num_batches_tracked.add_(1)
        # F.batch_norm computes steps 1-4 and, in train mode, updates the buffers in place with
        # torch's momentum p = 1 - momentum and the unbiased variance: exactly the semantics above.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            1.0 - self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", f"momentum={self.momentum}", f"epsilon={self.eps}"]
        if not self.center:
            parts.append("center=False")
        if not self.scale:
            parts.append("scale=False")
        return ", ".join(parts)


def _initializer_identifier(
    identifier: object, resolved: Callable[..., Any]
) -> str | dict[str, Any]:
    """A JSON-able name for an initializer: the name or config given, else the callable's name."""
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, Mapping):
        return dict(identifier)
    if isinstance(resolved, init.VarianceScaling):
        preset = resolved.name
        return preset if preset in init.names() else resolved.to_config()
    name = getattr(resolved, "__name__", None)
    return name if isinstance(name, str) else repr(resolved)


def _resolve_activation(
    activation: str | Mapping[str, Any] | torch.nn.Module | Callable[..., Any] | None,
) -> torch.nn.Module | None:
    """None → None; a name, config ``{"name": ..., **kwargs}``, class or torch function → our
    activation module (:func:`steadygrad.activations.get`); a module → ours when torch's has a
    counterpart, else the module itself (a custom activation)."""
    if activation is None:
        return None
    if isinstance(activation, Mapping):
        kwargs = dict(activation)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(
                "activation config must have a 'name' string, e.g. "
                f"{{'name': 'leaky_relu', 'alpha': 0.2}}; got {dict(activation)!r}"
            )
        return activations.get(name, **kwargs)
    if isinstance(activation, torch.nn.Module):
        converted = activations.from_module(activation)
        return activation if converted is None else converted
    return activations.get(activation)


class Dense(torch.nn.Linear):
    r"""Fully connected layer :math:`a = f(x W^\top + b)`, the seed's ``tf.layers.dense``.

    A :class:`torch.nn.Linear` (so tools that recognise ``Linear`` keep working; ``weight`` has
    shape ``(out_features, in_features)``) whose weights are drawn by ``kernel_initializer`` and
    whose bias by ``bias_initializer``, followed by an optional activation ``f``.

    The default kernel initializer is Glorot uniform (Glorot & Bengio, 2010),
    :math:`W \sim U[-r, r]`, :math:`r = \sqrt{6 / (n_\text{in} + n_\text{out})}`, as in TF1's
    ``tf.layers.dense`` and Keras' ``Dense`` (torch's ``Linear`` uses
    :math:`U[\pm 1/\sqrt{n_\text{in}}]` instead). For ReLU/ELU pass ``"he_normal"``
    (He et al., 2015): :math:`\sigma = \sqrt{2 / n_\text{in}}`.

    Args:
        in_features: size of each input sample (last dim).
        out_features: size of each output sample.
        activation: ``None`` (linear), a name or config for :func:`steadygrad.activations.get`
            (``"elu"``, ``"leaky_relu"``), an ``nn.Module``, or a function such as ``torch.tanh``;
            kept as the submodule ``.activation`` (or ``None``) so that it shows in ``print``.
        kernel_initializer: anything :func:`steadygrad.init.get` accepts: a name
            (``"he_normal"``), a config dict (``{"name": "normal", "std": 0.01}``) or a callable
            ``f(tensor, *, generator=None)``.
        bias_initializer: as ``kernel_initializer``; default zeros.
        use_bias: add the bias :math:`b`.
        generator: :class:`torch.Generator` for the initial draw (reproducible weights).

    Attributes ``kernel_initializer`` and ``bias_initializer`` hold the identifiers (names or
    config dicts) for configs; :meth:`reset_parameters` redraws the weights with them.
    """

    activation: torch.nn.Module | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | Mapping[str, Any] | torch.nn.Module | Callable[..., Any] | None = None,
        kernel_initializer: str | Mapping[str, Any] | init.Initializer = "glorot_uniform",
        bias_initializer: str | Mapping[str, Any] | init.Initializer = "zeros",
        use_bias: bool = True,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_positive_int("in_features", in_features)
        _check_positive_int("out_features", out_features)
        # Resolve everything before allocating, so a bad name fails fast with its own message.
        kernel_init = init.get(kernel_initializer)
        if kernel_init is None:
            raise ValueError(
                "kernel_initializer must be a name, a config dict or a callable; got None"
            )
        bias_init = init.get(bias_initializer)
        if bias_init is None:
            raise ValueError(
                "bias_initializer must be a name, a config dict or a callable (e.g. 'zeros'); "
                "got None (use use_bias=False for no bias)"
            )
        act = _resolve_activation(activation)
        # nn.Linear.__init__ calls self.reset_parameters() before the attributes below exist; our
        # override returns early then, and the weights are drawn once at the end of __init__.
        super().__init__(in_features, out_features, bias=use_bias, device=device, dtype=dtype)
        self.kernel_initializer = _initializer_identifier(kernel_initializer, kernel_init)
        self.bias_initializer = _initializer_identifier(bias_initializer, bias_init)
        self._kernel_init = kernel_init
        self._bias_init = bias_init
        self.activation = act
        self.reset_parameters(generator=generator)

    @property
    def use_bias(self) -> bool:
        """Whether the layer has a bias (``fold_batchnorm`` may add one)."""
        return self.bias is not None

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw ``weight`` with the kernel initializer and ``bias`` with the bias initializer."""
        if "_kernel_init" not in self.__dict__:
            return  # called from nn.Linear.__init__, before Dense's initializers are set
        with torch.no_grad():  # a user's callable may fill the Parameter without its own no_grad
            self._kernel_init(self.weight, generator=generator)
            if self.bias is not None:
                self._bias_init(self.bias, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """``activation(F.linear(x, weight, bias))`` for ``x`` of shape ``(*, in_features)``."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Dense expected {self.in_features} input features (last dim); "
                f"got input shape {tuple(x.shape)}"
            )
        z = F.linear(x, self.weight, self.bias)  # (*, out_features)
        return z if self.activation is None else self.activation(z)

    def extra_repr(self) -> str:
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"kernel_initializer={self.kernel_initializer!r}",
        ]
        if self.bias is not None:
            parts.append(f"bias_initializer={self.bias_initializer!r}")
        if self.activation is None:
            parts.append("activation=None")  # otherwise printed as the (activation) child
        return ", ".join(parts)


_FOLDABLE_NORMS: tuple[type[torch.nn.Module], ...] = (
    BatchNorm,
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
)
# Exact types: a subclass may override forward with something folding would break.
_FOLDABLE_LAYER_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
)


def _out_channels(layer: torch.nn.Module) -> int:
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return int(weight.shape[0])


def _num_features(norm: torch.nn.Module) -> int:
    num_features = norm.num_features
    assert isinstance(num_features, int)
    return num_features


def _is_foldable_layer(layer: torch.nn.Module) -> bool:
    if isinstance(layer, Dense):
        # Dense applies its activation inside forward: a BatchNorm after it acts on the
        # activation's output, which is not affine in the weights.
        return layer.activation is None or isinstance(layer.activation, torch.nn.Identity)
    return type(layer) in _FOLDABLE_LAYER_TYPES


def _is_foldable_norm(norm: torch.nn.Module) -> bool:
    if not isinstance(norm, _FOLDABLE_NORMS):
        return False
    # torch BN with track_running_stats=False uses batch statistics even in eval mode.
    mean, var = norm.running_mean, norm.running_var
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return False
    return not isinstance(mean, torch.nn.parameter.UninitializedBuffer)


def _fold_pair(layer: torch.nn.Module, norm: torch.nn.Module) -> None:
    """Fold ``norm`` (eval mode) into ``layer`` in place; see :func:`fold_batchnorm`."""
    weight = layer.weight
    assert isinstance(weight, torch.nn.Parameter)
    mean = norm.running_mean
    var = norm.running_var
    assert isinstance(mean, Tensor) and isinstance(var, Tensor)
    eps = norm.eps
    assert isinstance(eps, float)
    with torch.no_grad():
        # float64 so the fold adds no rounding of its own beyond the final cast.
        gamma_p, beta_p, bias_p = norm.weight, norm.bias, layer.bias
        mean64, var64 = mean.double(), var.double()
        gamma = gamma_p.double() if isinstance(gamma_p, Tensor) else torch.ones_like(mean64)
        beta = beta_p.double() if isinstance(beta_p, Tensor) else torch.zeros_like(mean64)
        bias = bias_p.double() if isinstance(bias_p, Tensor) else torch.zeros_like(mean64)
        scale = gamma / torch.sqrt(var64 + eps)  # (out,)
        # W' = W · γ/sqrt(var + ε) per output channel (dim 0 of Linear and Conv weights).
        new_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
        # b' = (b − μ) · γ/sqrt(var + ε) + β
        new_bias = (bias - mean64) * scale + beta
        weight.copy_(new_weight.to(weight.dtype))
        if isinstance(bias_p, torch.nn.Parameter):
            bias_p.copy_(new_bias.to(bias_p.dtype))
        else:
            layer.bias = torch.nn.Parameter(new_bias.to(dtype=weight.dtype, device=weight.device))


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    r"""Return an eval-mode copy of ``model`` with each BatchNorm folded into the layer before it.

    In eval mode a BatchNorm is the per-channel affine map
    :math:`z = \gamma (y - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` of its input, with the moving
    statistics :math:`\mu, \sigma^2`. When ``y = W x + b`` comes straight from a Dense/Linear/Conv
    layer, the two compose into one layer (Jacob et al., 2018, "Quantization and Training of Neural
    Networks for Efficient Integer-Arithmetic-Only Inference", §3.2):

    .. math::

        W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} \ \text{(per output channel)},\qquad
        b' = (b - \mu)\,\frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta .

    Folded pairs: a :class:`BatchNorm` or ``torch.nn.BatchNorm1d/2d/3d`` (with running statistics)
    immediately after a ``torch.nn.Linear``, ``Conv1d/2d/3d`` or a :class:`Dense` *without* an
    activation, as consecutive children of the same ``torch.nn.Sequential`` (at any depth). The
    BatchNorm is replaced by ``torch.nn.Identity`` and a layer without a bias gains one. A
    :class:`Dense` with an activation applies it inside ``forward``, so the BatchNorm after it
    normalises the activation's output and cannot be folded; such BatchNorms, and any not
    preceded by a foldable layer, are kept. The copy is in eval mode and its outputs equal
    ``model.eval()``'s up to float rounding; ``model`` itself is not modified. (An ``MLP``'s
    ``.config`` still describes the unfolded architecture: fold for inference, not for saving.)
    """
    folded = copy.deepcopy(model).eval()
    sequentials = [m for m in folded.modules() if isinstance(m, torch.nn.Sequential)]
    for seq in sequentials:
        children = list(seq.named_children())
        for (_, layer), (name, norm) in itertools.pairwise(children):
            if (
                _is_foldable_layer(layer)
                and _is_foldable_norm(norm)
                and _out_channels(layer) == _num_features(norm)
            ):
                _fold_pair(layer, norm)
                setattr(seq, name, torch.nn.Identity())
    return folded
