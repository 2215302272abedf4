"""A fast training step for feed-forward networks: hand-written backward, fused optimizer update.

One training step of ``fit`` is ``logits = model(x)``, ``loss = cross_entropy(logits, y)``,
``optimizer.zero_grad()``, ``loss.backward()``, ``optimizer.step()``. For the reference network
(784-300-100-10, BatchNorm and ELU, batch 50) that is about 25 small kernels forward and backward,
each wrapped by a module call and recorded by autograd, followed by ``torch.optim.Adam``'s
single-tensor update: ~7 element-wise kernels × 14 parameters, every one a pass over memory and a
Python-level dispatch. On a CPU, the dispatches and the optimizer's passes cost as much as the
matrix products (see docs/performance.md).

:class:`FastStep` computes the same step without autograd:

* **Forward**, layer by layer, with the kernels the modules themselves call (``F.linear``,
  ``native_batch_norm``, ``F.elu``, …) so that values and BatchNorm moving statistics are the plain
  path's.
* **Backward** written out per layer, with the kernels autograd's own backward formulas call:

  - cross-entropy of the mean: ``∂L/∂logits = (softmax(logits) − onehot(y)) / m`` (the
    ``log_softmax``/``nll_loss`` backward kernels);
  - ``Linear`` ``h = a Wᵀ + b``: ``∂L/∂W = gᵀ a`` written straight into ``W.grad``,
    ``∂L/∂b = Σᵢ gᵢ``, ``∂L/∂a = g W`` (skipped for the first layer, whose input needs none);
  - BatchNorm in train mode (Ioffe & Szegedy 2015), with ``x̂ = (h − μ_B)/σ_B`` and
    ``σ_B = sqrt(var_B + ε)`` (biased batch variance):
    ``∂L/∂β = Σᵢ gᵢ``, ``∂L/∂γ = Σᵢ gᵢ x̂ᵢ``,
    ``∂L/∂hᵢ = (γ / (m σ_B)) (m gᵢ − Σⱼ gⱼ − x̂ᵢ Σⱼ gⱼ x̂ⱼ)``
    (in eval mode the moving statistics are constants: ``∂L/∂h = γ g / sqrt(moving_var + ε)``);
  - activations: ``∂L/∂z = f'(z) g`` with f' in closed form (ReLU: ``[z > 0]``; leaky ReLU:
    ``1`` or α; ELU: ``1`` or ``α eᶻ``; SELU: λ or ``λ α eᶻ``; sigmoid: ``σ(1 − σ)``; tanh:
    ``1 − tanh²``; GELU, SiLU, softplus: see :mod:`steadygrad.activations`), by the same
    backward kernels autograd uses.
* **Update** of all parameters in one fused kernel on the CPU (``torch._fused_adam_`` /
  ``_fused_adamw_`` / ``_fused_sgd_``, the kernels behind ``torch.optim``'s ``fused=True``), on
  the *optimizer's own state tensors*, with the formulas of ``torch.optim``:

  - SGD (Robbins & Monro 1951) with L2 weight decay λ, momentum μ, dampening d, Nesterov
    (Sutskever et al. 2013): ``g ← g + λθ``; ``b ← g`` on the first step, else
    ``b ← μ b + (1 − d) g``; ``g ← g + μ b`` (Nesterov) or ``g ← b``; ``θ ← θ − η g``;
  - Adam (Kingma & Ba 2015): ``g ← g + λθ``; ``m ← β₁ m + (1 − β₁) g``;
    ``v ← β₂ v + (1 − β₂) g²``; ``θ ← θ − η (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + ε)``
    (AMSGrad, Reddi et al. 2018, uses ``max`` of all ``v`` so far); AdamW (Loshchilov & Hutter
    2019) decays ``θ ← θ (1 − η λ)`` instead of adding ``λθ`` to the gradient.

  Elsewhere (CUDA, optimizer step hooks, options the fused kernels lack) the gradients are left in
  ``p.grad`` and ``optimizer.step()`` runs, exactly as on the plain path.

**One source of truth.** The step keeps no state of its own: parameters, their ``.grad``,
BatchNorm buffers and the optimizer's ``state`` (``step``, ``exp_avg``, ``exp_avg_sq``,
``momentum_buffer``) are the model's and the optimizer's tensors, updated in place. So
``model.state_dict()``, ``optimizer.state_dict()``, checkpoints, ``load_state_dict`` and learning
rate schedulers (``param_groups[0]["lr"]`` is read at every step) keep working, fast and plain steps
can be mixed freely, and a checkpoint written after fast steps resumes on the plain path and vice
versa. Whenever a step cannot be taken fast — a module or parameter has hooks, autocast is on,
the input does not fit — the call runs the plain step instead and says why in
:attr:`FastStep.last_fallback`. A gradient monitor's hooks need not stop it: ``fit(...,
monitor=mon)`` takes the steps ``mon`` does not record fast (``ignore_hooks_of=mon``, after
``mon.pass_step()``) and the recorded ones fast too, showing ``mon`` what its hooks would have
seen (``observer=mon.fast_observer()``, a :class:`StepObserver`).

Supported models: an ``nn.Sequential`` (e.g. :class:`steadygrad.models.MLP`) of ``Linear``/
:class:`~steadygrad.nn.Dense` (with its own activation or not), :class:`~steadygrad.nn.BatchNorm`/
``nn.BatchNorm1d`` and stateless activations (ReLU, leaky ReLU, ELU, SELU, sigmoid, tanh, GELU,
SiLU, softplus, identity; ours or torch's), trained on ``(batch, features)`` inputs with mean
cross-entropy. Optimizers: ``torch.optim.SGD`` (any momentum, dampening, Nesterov, weight decay)
and ``Adam``/``AdamW`` (any betas, eps, weight decay, AMSGrad) with one parameter group holding the
model's parameters. :func:`supports` gives the reason for anything else (PReLU's learned slope,
RReLU's random slope, dropout, other layers, several parameter groups, …).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks
from torch.optim import optimizer as _optimizer_hooks
from torch.utils.hooks import RemovableHandle

from steadygrad import activations
from steadygrad.nn import BatchNorm, Dense

__all__ = ["FastStep", "RunRecords", "StepObserver", "StepsTaken", "make_step", "supports"]

_aten: Any = torch.ops.aten
_nll_forward: Any = _aten.nll_loss_forward.default
_nll_backward: Any = _aten.nll_loss_backward.default
_bn_backward: Any = _aten.native_batch_norm_backward.default
_MEAN: Final = 1  # at::Reduction::Mean
_IGNORE_INDEX: Final = -100  # F.cross_entropy's default
_SELU_ALPHA: Final = 1.6732632423543772848170429916717  # ATen's constants (Klambauer et al. 2017)
_SELU_SCALE: Final = 1.0507009873554804934193349852946

# Module-wide hook registries (torch.nn.modules.module.register_module_forward_hook, …); they
# are mutated in place, never rebound, so holding them is enough to see later registrations.
_GLOBAL_MODULE_HOOKS: Final = tuple(
    getattr(_module_hooks, name)
    for name in (
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_backward_pre_hooks",
        "_global_backward_hooks",
    )
    if isinstance(getattr(_module_hooks, name, None), dict)
)
_GLOBAL_OPTIMIZER_HOOKS: Final = tuple(
    getattr(_optimizer_hooks, name)
    for name in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
    if isinstance(getattr(_optimizer_hooks, name, None), dict)
)
_FUSED_DTYPES: Final = (torch.float32, torch.float64)
# csrc/chain.cpp's op and activation codes
_NATIVE_LINEAR, _NATIVE_BATCHNORM, _NATIVE_ACTIVATION = 0, 1, 2
_NATIVE_NONE, _NATIVE_RELU, _NATIVE_LEAKY, _NATIVE_ELU = -1, 0, 1, 2
# csrc/loop.cpp's optimizer updates, and the sums its last step's update takes
_LOOP_ADAM, _LOOP_ADAMW, _LOOP_SGD_PLAIN, _LOOP_SGD_FUSED = 0, 1, 2, 3
_LAST_SUMS: Final = {"change": 1, "all": 2}
_NO_STATE: Final[tuple[()]] = ()  # plain SGD's state, the same object on every call


# --------------------------------------------------------------------------- layers


class _Layer:
    """One layer of the step's program: forward saves what its backward needs."""

    has_params: bool = False
    needs_input_grad: bool = True  # set by the builder: False before the first parametrised layer
    owner: nn.Module | None = None  # the module of the Sequential it was built from

    def forward(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def backward(self, g: Tensor) -> Tensor | None:
        """Write parameter gradients into ``p.grad``; return ∂L/∂input (None when not needed)."""
        raise NotImplementedError


class _Linear(_Layer):
    """``h = a Wᵀ + b``; ``∂L/∂W = gᵀ a``, ``∂L/∂b = Σᵢ gᵢ``, ``∂L/∂a = g W``."""

    has_params = True

    def __init__(self, module: nn.Linear) -> None:
        self.weight = module.weight
        self.bias = module.bias
        self.a: Tensor | None = None
        self.out: Tensor | None = None  # kept for an observer only (see FastStep.try_fast)

    def forward(self, a: Tensor) -> Tensor:
        self.a = a
        return F.linear(a, self.weight, self.bias)

    def backward(self, g: Tensor) -> Tensor | None:
        a = self.a
        assert a is not None and self.weight.grad is not None
        torch.mm(g.t(), a, out=self.weight.grad)  # (out, batch) @ (batch, in)
        if self.bias is not None:
            assert self.bias.grad is not None
            torch.sum(g, 0, out=self.bias.grad)
        self.a = None
        return torch.mm(g, self.weight) if self.needs_input_grad else None


class _BatchNorm(_Layer):
    """Batch normalization over dim 0 of ``(batch, features)``; see the module docstring."""

    def __init__(self, module: BatchNorm | nn.BatchNorm1d) -> None:
        self.module = module
        self.weight = module.weight
        self.bias = module.bias
        self.has_params = self.weight is not None or self.bias is not None
        self.eps = float(module.eps)
        if isinstance(module, BatchNorm):
            self.factor = 1.0 - module.momentum  # Keras convention → torch's averaging factor
            self.always_batch_stats = False
        else:
            assert module.momentum is not None
            self.factor = float(module.momentum)
            # torch: with track_running_stats=False the batch statistics are used in eval too
            self.always_batch_stats = module.running_mean is None
        self.mask = [True, self.weight is not None, self.bias is not None]
        self.saved: tuple[Tensor, Tensor, Tensor, bool] | None = None

    def forward(self, h: Tensor) -> Tensor:
        module = self.module
        training = module.training or self.always_batch_stats
        # Updates the moving statistics in place in train mode, exactly as F.batch_norm does:
        # moving ← (1 − f) moving + f batch (unbiased variance for the moving one). Buffers are
        # read from the module each time: module.to(...) replaces them.
        z, mean, invstd = torch.native_batch_norm(
            h,
            self.weight,
            self.bias,
            module.running_mean,
            module.running_var,
            training,
            self.factor,
            self.eps,
        )
        self.saved = (h, mean, invstd, training)
        return z

    def backward(self, g: Tensor) -> Tensor | None:
        assert self.saved is not None
        h, mean, invstd, training = self.saved
        self.mask[0] = self.needs_input_grad
        dh, dweight, dbias = _bn_backward(
            g,
            h,
            self.weight,
            self.module.running_mean,
            self.module.running_var,
            mean,
            invstd,
            training,
            self.eps,
            self.mask,
        )
        if self.weight is not None:
            assert self.weight.grad is not None
            self.weight.grad.copy_(dweight)
        if self.bias is not None:
            assert self.bias.grad is not None
            self.bias.grad.copy_(dbias)
        self.saved = None
        return dh if self.needs_input_grad else None


class _Activation(_Layer):
    """``a = f(z)``, ``∂L/∂z = f'(z) g`` (``backward(g, z, a)``), both from ATen's kernels."""

    def __init__(
        self,
        name: str,
        forward: Callable[[Tensor], Tensor],
        backward: Callable[[Tensor, Tensor, Tensor], Tensor],
        native: tuple[int, float, float] | None = None,
    ) -> None:
        self.name = name
        self._forward = forward
        self._backward = backward
        # (kind, a, b) for csrc/chain.cpp, whose backward reads f'(z) off the output a = f(z):
        # relu (0, 0, 1); leaky_relu (1, slope ≥ 0, 1); elu/selu (2, α ≥ 0, scale). None: not there.
        self.native = native
        self.saved: tuple[Tensor, Tensor] | None = None

    def forward(self, z: Tensor) -> Tensor:
        a = self._forward(z)
        self.saved = (z, a)
        return a

    def backward(self, g: Tensor) -> Tensor | None:
        assert self.saved is not None
        z, a = self.saved
        self.saved = None
        return self._backward(g, z, a) if self.needs_input_grad else None


def _activation_layer(module: nn.Module) -> _Activation | str | None:
    """The layer for a stateless activation module; None for identity; a reason if unsupported."""
    kind = type(module)
    if kind in (nn.Identity, activations.Identity):
        return None
    flat_2d = isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1)
    if kind is nn.Flatten and flat_2d:
        return None  # the identity on the (batch, features) inputs the step takes
    if kind in (nn.ReLU, activations.ReLU):
        return _Activation(
            "relu",
            torch.relu,
            lambda g, z, a: _aten.threshold_backward.default(g, a, 0),
            (_NATIVE_RELU, 0.0, 1.0),
        )
    if kind in (nn.LeakyReLU, activations.LeakyReLU):
        slope = float(module.negative_slope)  # type: ignore[arg-type]
        return _Activation(
            "leaky_relu",
            lambda z: F.leaky_relu(z, slope),
            lambda g, z, a: _aten.leaky_relu_backward.default(g, z, slope, False),
            (_NATIVE_LEAKY, slope, 1.0) if slope >= 0 else None,
        )
    if kind in (nn.ELU, activations.ELU):
        alpha = float(module.alpha)  # type: ignore[arg-type]
        return _Activation(
            "elu",
            lambda z: F.elu(z, alpha),
            lambda g, z, a: _aten.elu_backward.default(g, alpha, 1, 1, False, z),
            (_NATIVE_ELU, alpha, 1.0) if alpha >= 0 else None,
        )
    if kind in (nn.SELU, activations.SELU):
        return _Activation(
            "selu",
            torch.selu,
            lambda g, z, a: _aten.elu_backward.default(g, _SELU_ALPHA, _SELU_SCALE, 1, False, z),
            (_NATIVE_ELU, _SELU_ALPHA, _SELU_SCALE),
        )
    if kind in (nn.Sigmoid, activations.Sigmoid):
        return _Activation(
            "sigmoid", torch.sigmoid, lambda g, z, a: _aten.sigmoid_backward.default(g, a)
        )
    if kind in (nn.Tanh, activations.Tanh):
        return _Activation("tanh", torch.tanh, lambda g, z, a: _aten.tanh_backward.default(g, a))
    if kind in (nn.GELU, activations.GELU):
        approximate = str(module.approximate)
        return _Activation(
            "gelu",
            lambda z: F.gelu(z, approximate=approximate),
            lambda g, z, a: _aten.gelu_backward.default(g, z, approximate=approximate),
        )
    if kind in (nn.SiLU, activations.SiLU):
        return _Activation("silu", F.silu, lambda g, z, a: _aten.silu_backward.default(g, z))
    if kind in (nn.Softplus, activations.Softplus):
        beta, threshold = float(module.beta), float(module.threshold)  # type: ignore[arg-type]
        return _Activation(
            "softplus",
            lambda z: F.softplus(z, beta, threshold),
            lambda g, z, a: _aten.softplus_backward.default(g, z, beta, threshold),
        )
    if isinstance(module, nn.PReLU):
        return "PReLU has a learned slope"
    if isinstance(module, nn.RReLU):
        return "RReLU draws a random slope per element in training"
    return f"{kind.__name__} is not supported"


_SUPPORTED: Final = (
    "Linear/Dense, BatchNorm/BatchNorm1d, and activations relu, leaky_relu, elu, selu, sigmoid, "
    "tanh, gelu, silu, softplus, identity (and Flatten)"
)


def _build_layers(model: nn.Module) -> list[_Layer] | str:
    """The model's layers as a program, or the reason it cannot be one."""
    if not isinstance(model, nn.Sequential):
        return (
            f"the model must be an nn.Sequential (e.g. steadygrad.models.MLP); got {_name(model)}"
        )
    if type(model).forward is not nn.Sequential.forward:
        return f"{type(model).__name__} overrides Sequential.forward"
    layers: list[_Layer] = []
    for name, module in model.named_children():
        kind = type(module)
        first = len(layers)
        if kind in (nn.Linear, Dense):
            assert isinstance(module, nn.Linear)
            layers.append(_Linear(module))
            inner = getattr(module, "activation", None) if kind is Dense else None
            if inner is not None:
                built = _activation_layer(inner)
                if isinstance(built, str):
                    return f"layer {name!r} (activation): {built}; supported: {_SUPPORTED}"
                if built is not None:
                    layers.append(built)
        elif kind in (BatchNorm, nn.BatchNorm1d):
            assert isinstance(module, BatchNorm | nn.BatchNorm1d)
            if isinstance(module, nn.BatchNorm1d) and module.momentum is None:
                return f"layer {name!r}: BatchNorm1d with momentum=None (cumulative average)"
            layers.append(_BatchNorm(module))
        else:
            built = _activation_layer(module)
            if isinstance(built, str):
                return f"layer {name!r}: {built}; supported: {_SUPPORTED}"
            if built is not None:
                layers.append(built)
        for layer in layers[first:]:
            layer.owner = module
    if not any(layer.has_params for layer in layers):
        return "the model has no trainable layer"
    # Each layer writes (not adds) its gradients into p.grad: a parameter used by two layers
    # (tied weights) would keep only the last one's.
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            return f"parameter {name!r} is shared by two layers (tied weights)"
        seen.add(id(p))
    seen_params = False
    for layer in layers:
        layer.needs_input_grad = seen_params
        seen_params = seen_params or layer.has_params
    return layers


class _NativeChain:
    """The step's layers as ``csrc/chain.cpp``'s program: forward, loss and backward in one call.

    Each BatchNorm takes the activation after it into the same op (statistics, normalisation and
    activation in one pass; their backward in one more). It applies to float32 CPU models whose
    BatchNorms use batch statistics (train mode) and whose activations the kernel has
    (``_Activation.native``); :meth:`run` returns None for anything else, before changing
    anything, and the Python step runs instead. Values equal the Python step's to float rounding
    (the kernel sums in another order and has its own e^x): ``tests/test_native.py``.
    """

    def __init__(
        self,
        kernels: Any,
        ops: list[int],
        scalars: list[float],
        parts: list[_Layer],
        needs: list[bool],
        fused: list[_Activation | None],
    ) -> None:
        self.kernels = kernels
        self.fused = fused  # per op: the activation layer a BatchNorm op runs too, if any
        self.ops = ops
        self.scalars = scalars
        self.parts = parts
        self.needs = needs
        self.batch_norms = [p for p in parts if isinstance(p, _BatchNorm)]
        # every layer of the step, the activations the BatchNorm ops run included, in order
        self.layers: list[_Layer] = []
        for part, act in zip(parts, fused, strict=True):
            self.layers += [part] if act is None else [part, act]
        # the kernel's tensor arguments of the last call, and what they were read from (see
        # _arguments)
        self._arguments: list[Tensor | None] = []
        self._sources: list[tuple[Any, str, Tensor | None]] = []

    @classmethod
    def build(cls, kernels: Any, layers: list[_Layer]) -> _NativeChain | None:
        """The program for ``layers``, or None if a layer is not in the kernel."""
        ops: list[int] = []
        scalars: list[float] = []
        parts: list[_Layer] = []
        needs: list[bool] = []
        fused: list[_Activation | None] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            fused.append(None)
            if isinstance(layer, _Linear):
                ops.append(_NATIVE_LINEAR)
                scalars += [0.0] * 5
            elif isinstance(layer, _BatchNorm):
                following = layers[i + 1] if i + 1 < len(layers) else None
                act: tuple[int, float, float] = (_NATIVE_NONE, 0.0, 1.0)
                if isinstance(following, _Activation) and following.native is not None:
                    act = following.native
                    fused[-1] = following
                    i += 1
                ops.append(_NATIVE_BATCHNORM)
                scalars += [layer.factor, layer.eps, *act]
            elif isinstance(layer, _Activation) and layer.native is not None:
                ops.append(_NATIVE_ACTIVATION)
                scalars += [*layer.native, 0.0, 0.0]
            else:
                return None
            parts.append(layer)
            needs.append(layer.needs_input_grad)
            i += 1
        return cls(kernels, ops, scalars, parts, needs, fused)

    def run(
        self, x: Tensor, y: Tensor, keep: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, dict[_Layer, Tensor], dict[_Linear, Tensor]] | None:
        """``(loss, logits, correct, outputs, gradients)`` with the parameter gradients in
        ``p.grad``, or None where the kernel does not apply. ``correct``: how many rows' argmax
        is the label (0-d int64). With ``keep``: ``outputs`` maps each layer to its output,
        ``gradients`` each Linear to ∂L/∂(its output); otherwise both are empty. (The kernel
        itself declines inputs and tensors it cannot take — not float32, not on the CPU — and
        labels out of range, before changing anything: the Python step raises torch's error.)"""
        for bn in self.batch_norms:
            if not (bn.module.training or bn.always_batch_stats):
                return None
        out = self.kernels.forward_backward(
            x, y, self.ops, self.scalars, self._arguments_now(), self.needs, keep
        )
        if not out:
            return None
        outputs, gradients = self.unpack(out) if keep else ({}, {})
        return out[0], out[1], out[2], outputs, gradients

    def unpack(self, out: list[Tensor]) -> tuple[dict[_Layer, Tensor], dict[_Linear, Tensor]]:
        """A kept step's kernel result as :meth:`run`'s ``(outputs, gradients)``."""
        where = self.kept_positions
        outputs = {layer: out[i] for layer, i in zip(self.layers, where, strict=False)}
        linears = [layer for layer in self.layers if isinstance(layer, _Linear)]
        gradients = {
            layer: out[i] for layer, i in zip(linears, where[len(self.layers) :], strict=True)
        }
        return outputs, gradients

    @functools.cached_property
    def kept_positions(self) -> list[int]:
        """Where each of :meth:`kept`'s tensors is in the kernel's kept result: after loss,
        logits and correct, each op's output, pre-activation and ∂L/∂output (a BatchNorm op that
        runs its activation too: the BatchNorm's output is the pre-activation)."""
        outputs: dict[_Layer, int] = {}
        gradients: dict[_Linear, int] = {}
        for i, part in enumerate(self.parts):
            act = self.fused[i]
            if act is not None:  # BatchNorm and activation in one op
                outputs[part], outputs[act] = 4 + 3 * i, 3 + 3 * i
            else:
                outputs[part] = 3 + 3 * i
            if isinstance(part, _Linear):
                gradients[part] = 5 + 3 * i
        return [outputs[layer] for layer in self.layers] + [
            gradients[layer] for layer in self.layers if isinstance(layer, _Linear)
        ]

    @property
    def kept_count(self) -> int:
        """How many tensors :meth:`kept` gives: every layer's output and each Linear's ∂L/∂z."""
        return len(self.layers) + sum(isinstance(layer, _Linear) for layer in self.layers)

    def _arguments_now(self) -> list[Tensor | None]:
        """The kernel's tensor arguments, six per op: a Linear's W, b, ∂W, ∂b; a BatchNorm's γ, β,
        ∂γ, ∂β and moving mean and variance (None where absent).

        The list of the last call is reused while every tensor in it is still the one its
        owner holds (``p.grad`` for the gradients, the module's buffer for the moving
        statistics; the parameters are the layers' own): checking that is ~2 µs, building the
        list ~16 µs of a step of ~1.2 ms at batch 50. A gradient relinked or a buffer replaced
        (``module.running_mean = ...``, ``module.to(...)``) rebuilds it.
        """
        for owner, name, held in self._sources:
            current = owner.grad if name == "grad" else owner._buffers.get(name)
            if current is not held:
                break
        else:
            if self._sources:
                return self._arguments
        tensors: list[Tensor | None] = []
        sources: list[tuple[Any, str, Tensor | None]] = []

        def grad_of(param: Tensor | None) -> Tensor | None:
            if param is None:
                return None
            sources.append((param, "grad", param.grad))
            return param.grad

        def buffer(module: nn.Module, name: str) -> Tensor | None:
            held = module._buffers.get(name)
            sources.append((module, name, held))
            return held

        for part in self.parts:
            if isinstance(part, _Linear):
                tensors += [part.weight, part.bias, grad_of(part.weight), grad_of(part.bias)]
                tensors += [None, None]
            elif isinstance(part, _BatchNorm):
                gamma, beta, module = part.weight, part.bias, part.module
                tensors += [gamma, beta, grad_of(gamma), grad_of(beta)]
                tensors += [buffer(module, "running_mean"), buffer(module, "running_var")]
            else:
                tensors += [None] * 6
        self._arguments, self._sources = tensors, sources
        return tensors

    def kept(self, outputs: dict[_Layer, Tensor], gradients: dict[_Linear, Tensor]) -> list[Tensor]:
        """:meth:`run`'s kept tensors as one list (:meth:`StepObserver.kept`'s layout): every
        layer's output in the step's order, then ∂L/∂z of every Linear in that order."""
        layers = self.layers
        return [outputs[layer] for layer in layers] + [
            gradients[layer] for layer in layers if isinstance(layer, _Linear)
        ]


def _input_width(layers: list[_Layer]) -> int:
    """Features the first Linear/BatchNorm expects (activations keep the width)."""
    for layer in layers:
        if isinstance(layer, _Linear):
            return int(layer.weight.shape[1])
        if isinstance(layer, _BatchNorm):
            return int(layer.module.num_features)
    raise AssertionError("a program without a trainable layer")


def _name(value: object) -> str:
    return type(value).__name__


# --------------------------------------------------------------------------- support checks


def _hooked(
    modules: Sequence[tuple[str, nn.Module]],
    params: Sequence[tuple[str, Tensor]],
    owner: object | None = None,
) -> tuple[str, str] | None:
    """("module" | "parameter", name) of the first one with hooks the fast step would skip, or
    ("global", "") for module-wide hooks; None if there is none. Forward hooks that are methods
    of ``owner`` do not count."""
    if any(_GLOBAL_MODULE_HOOKS):
        return "global", ""
    for name, module in modules:
        forward = module._forward_hooks, module._forward_pre_hooks
        if (
            (any(forward) and not _owned_by(owner, *forward))
            or module._backward_hooks
            or module._backward_pre_hooks
        ):
            return "module", name
    for name, p in params:
        if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
            return "parameter", name
    return None


def _hooks(model: nn.Module, owner: object | None = None) -> str | None:
    """Name a module or parameter whose hooks the fast step would skip, or None."""
    found = _hooked(list(model.named_modules()), list(model.named_parameters()), owner)
    if found is None:
        return None
    kind, name = found
    if kind == "global":
        return "global module hooks are registered"
    if kind == "module":
        return f"module {name or type(model).__name__!r} has forward/backward hooks"
    return f"parameter {name!r} has gradient hooks"


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        return f"the optimizer must be torch.optim.SGD, Adam or AdamW; got {kind.__name__}"
    if len(optimizer.param_groups) != 1:
        return f"the optimizer has {len(optimizer.param_groups)} parameter groups; one is supported"
    group = optimizer.param_groups[0]
    params = list(model.parameters())
    if len(group["params"]) != len(params) or any(
        p is not q for p, q in zip(group["params"], params, strict=True)
    ):
        return "the optimizer's parameters are not the model's parameters, in model order"
    for option in ("differentiable", "capturable"):
        if group.get(option, False):
            return f"optimizer option {option}=True is not supported"
    return None


def supports(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, ignore_hooks_of: object | None = None
) -> tuple[bool, str]:
    """Whether :func:`make_step` can build a fast step for ``model`` and ``optimizer``, and why not.

    Forward hooks that are methods of ``ignore_hooks_of`` (a monitor that is told of the fast
    steps, see :meth:`FastStep.try_fast`) do not count against it.

    Returns ``(True, "")`` or ``(False, reason)`` with a one-line reason, e.g.
    ``"layer 'hidden1_act': PReLU has a learned slope; supported: …"``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not a
            ``torch.optim.Optimizer``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {_name(model)}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {_name(optimizer)}")
    built = _build_layers(model)
    if isinstance(built, str):
        return False, built
    params = dict(model.named_parameters())
    for name, p in params.items():
        if not p.requires_grad:
            return False, f"parameter {name!r} does not require grad (frozen layers)"
        if not p.is_floating_point() or p.is_complex() or p.layout != torch.strided:
            return False, f"parameter {name!r} is {p.dtype} {p.layout}; dense float is supported"
    first = next(iter(params.values()))
    for name, p in params.items():
        if p.dtype != first.dtype or p.device != first.device:
            return False, (
                f"parameters must share one dtype and device; {name!r} is {p.dtype} on "
                f"{p.device}, the first is {first.dtype} on {first.device}"
            )
    reason = _check_optimizer(model, optimizer) or _hooks(model, ignore_hooks_of)
    return (False, reason) if reason is not None else (True, "")


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    ignore_hooks_of: object | None = None,
    native: bool = False,
) -> FastStep | None:
    """A :class:`FastStep` for ``model`` and ``optimizer``, or None where :func:`supports` says no.

    ``optimizer`` is the ``torch.optim`` optimizer the plain path would use (built over
    ``model.parameters()``); the fast step updates its state, so checkpoints keep their format.
    ``native=True``: forward and backward by :mod:`steadygrad.native`'s C++ kernels where they
    apply (float32 on the CPU, train-mode BatchNorm, ReLU/leaky ReLU/ELU/SELU/identity), built on
    first use; equal to the Python step to float rounding, not bit for bit. Without a compiler it
    quietly runs the Python step.
    """
    ok, _ = supports(model, optimizer, ignore_hooks_of=ignore_hooks_of)
    if not ok:
        return None
    return FastStep(model, optimizer, ignore_hooks_of=ignore_hooks_of, native=native)


# --------------------------------------------------------------------------- the step


class StepObserver(Protocol):
    """Shown by :meth:`FastStep.try_fast` what module hooks and gradient hooks would see."""

    def enter(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        """``module`` is called on ``args`` (a forward pre-hook's view)."""

    def exit(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        """``module`` returned ``output`` (a forward hook's view)."""

    def gradient(self, output: Tensor, grad: Tensor) -> None:
        """∂L/∂``output`` of a linear layer, during the backward pass."""

    def backward_done(self) -> None:
        """The backward pass ended; the update has not run yet."""

    def kept(self, key: object, tensors: list[Tensor]) -> bool:
        """A native step's intermediate tensors, before any replay: each layer's output (in
        the step's layer order), then ∂L/∂z of each linear layer's output z (same order).
        ``key`` names the layout (the same key, the same layout). Return True if the observer
        records the step from these alone: then nothing is replayed, and :meth:`updated` follows
        the update. Called only where the update gives the parameters' sums."""

    def updated(self, params: list[Tensor], stats: Tensor | None) -> None:
        """After the update: ``stats`` (float64, one row per parameter of ``params``) holds
        Σθ, Σθ², Σg, Σg² before the update and Σ(Δθ)² of the update; None if the update could
        not give them."""


def _owned_by(owner: object | None, *registries: dict[int, Any]) -> bool:
    """Whether every hook in ``registries`` is a method bound to ``owner`` (never for None)."""
    return owner is not None and all(
        getattr(hook, "__self__", None) is owner
        for registry in registries
        for hook in registry.values()
    )


def _plain_sgd(group: dict[str, Any]) -> bool:
    """SGD without momentum, weight decay or maximize: ``θ ← θ − η g``, one foreach add."""
    return (
        float(group["momentum"]) == 0.0
        and float(group["weight_decay"]) == 0.0
        and not bool(group["maximize"])
    )


class StepsTaken(NamedTuple):
    """What :meth:`FastStep.train_steps` did: ``steps`` taken; for its last step, where it
    was taken and they were asked for, the update's ``sums`` (:meth:`StepObserver.updated`'s
    layout), its ``loss`` (0-d) and its ``kept`` tensors (:meth:`StepObserver.kept`'s list);
    ``records``: one float64 row per recorded step taken (:class:`RunRecords`), None if none
    was asked."""

    steps: int
    sums: Tensor | None
    loss: Tensor | None
    kept: list[Tensor] | None
    records: Tensor | None = None


class RunRecords(NamedTuple):
    """Steps of a :meth:`FastStep.train_steps` run that a monitor records where they run:
    ``at``, their positions in the run (ascending); ``plan``, what is recorded of each
    (:meth:`FastStep.record_plan`'s).

    Each recorded step keeps its tensors and takes its update with all the parameters' sums,
    the step before it with Σ(Δθ)²; its row of :attr:`StepsTaken.records` holds
    ``record_stats``'s numbers over them (``csrc/stats.cpp``; the last of them 1 where they
    suffice), the step's loss, then per plan row Σ(Δθ)² of the update before the step (NaN where
    that update was not in the run). A row whose numbers do not suffice ends the run with its
    step, returned as a kept last step (``sums``, ``loss``, ``kept``)."""

    at: list[int]
    plan: object


class FastStep:
    """``step(x, y) -> (loss, logits)``: one training step, fast where possible, plain otherwise.

    Equivalent to (and interchangeable with) the plain step::

        logits = model(x); loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()

    ``x`` is ``(batch, features)``, ``y`` the int64 class labels ``(batch,)``. Returns the mean
    loss (a 0-dim tensor) and the logits, both detached and left on the device (nothing reads them
    on the host). Afterwards the parameters, their ``.grad`` (this step's gradient), the BatchNorm
    buffers and ``optimizer.state`` hold what the plain step would leave there, to float rounding.

    Build it with :func:`make_step` (which checks :func:`supports`). Counters :attr:`fast_calls`
    and :attr:`plain_calls`; :attr:`last_fallback` is the reason of the latest plain call. Not
    thread-safe: one call at a time.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        ignore_hooks_of: object | None = None,
        native: bool = False,
    ) -> None:
        ok, reason = supports(model, optimizer, ignore_hooks_of=ignore_hooks_of)
        if not ok:
            raise ValueError(f"model and optimizer are not supported by the fast step: {reason}")
        built = _build_layers(model)
        assert not isinstance(built, str)
        self.model = model
        self.optimizer = optimizer
        self._layers = built
        self._backward_layers = [
            layer for layer in reversed(built) if layer.has_params or layer.needs_input_grad
        ]
        self._params: list[Tensor] = list(model.parameters())
        self._named_modules = list(model.named_modules())
        self._named_params = list(model.named_parameters())
        self._batch_norms = [layer for layer in built if isinstance(layer, _BatchNorm)]
        # What module hooks would see, per child of the Sequential: the child, its layers and
        # (a Dense's own activation) the module it calls inside its forward.
        self._children = [
            (
                child,
                [layer for layer in built if layer.owner is child],
                getattr(child, "activation", None) if type(child) is Dense else None,
            )
            for child in model.children()
        ]
        self._in_features = _input_width(built)
        self._native: _NativeChain | None = None
        self._kernels: Any = None  # steadygrad.native's module, where native=True and built
        if native:
            from steadygrad import native as native_kernels  # builds them on first use

            kernels = native_kernels.load()
            if kernels is not None:
                self._native = _NativeChain.build(kernels, built)
                self._kernels = kernels
        self.native_calls = 0
        # The number of correct predictions of the last step, where the native kernel counted
        # them along with the loss (0-d int64 on the device), else None: fit's epoch accuracy.
        self.last_correct: Tensor | None = None
        self._grads: list[Tensor] = []
        self._state: object = None  # the optimizer.state object the lists below were taken from
        self._state_lists: list[list[Tensor]] = []
        self._flat_steps = torch.zeros(0)
        self._first_momentum_step = False
        self._place()
        self.fast_calls = 0
        self.plain_calls = 0
        self.last_fallback: str | None = None
        self._hook_free: tuple[int, int] | None = None  # see _fallback_reason
        # train_steps' native program and what it was bound to
        self._loop: Any = None
        self._loop_bound: tuple[object, ...] = (None,) * 4
        self._loop_update = -1
        self._loop_counters: list[Tensor] = []

    # -- public

    def __call__(
        self, x: Tensor, y: Tensor, *, ignore_hooks_of: object | None = None
    ) -> tuple[Tensor, Tensor]:
        """Take one step. ``ignore_hooks_of``: an object whose bound-method hooks the step may
        skip (a :class:`steadygrad.monitor.Monitor` told of the step with ``pass_step()``);
        anyone else's hooks still send the call down the plain path."""
        out = self.try_fast(x, y, ignore_hooks_of=ignore_hooks_of)
        return self._plain_step(x, y) if out is None else out

    def try_fast(
        self,
        x: Tensor,
        y: Tensor,
        *,
        ignore_hooks_of: object | None = None,
        before: Callable[[], None] | None = None,
        observer: StepObserver | None = None,
        update_stats: Callable[[list[Tensor], Tensor | None], None] | None = None,
        change_only: bool = False,
    ) -> tuple[Tensor, Tensor] | None:
        """The fast step, or None (nothing done) when it cannot be taken; ``before()`` is called
        just before a fast step starts (``Monitor.pass_step``: the monitor counts the step only
        when it does not go through the model's ``forward``). A None counts in
        :attr:`plain_calls`: the caller takes the plain step.

        ``observer`` (a :class:`StepObserver`, e.g. ``Monitor.fast_observer()``) is shown what
        the model's forward hooks would see — each module entered with its input and left with
        its output, the root first and last — then ∂L/∂z of each linear layer's output z, then
        the end of the backward pass, before the update.

        ``update_stats(params, stats)`` (e.g. ``observer.updated``) is called after the update
        with the parameters' sums (:meth:`StepObserver.updated`) where :meth:`gives_stats`
        held, else with None; a step given both may skip the replay (:meth:`StepObserver.kept`).
        ``change_only``: only the sums' last column, Σ(Δθ)², is wanted (a monitor's update ratio,
        on the step before a recorded one); Adam's update then gives the others as NaN and
        costs one accumulator instead of five."""
        self.last_correct = None
        reason = self._fallback_reason(x, y, ignore_hooks_of)
        if reason is not None:
            self.last_fallback = reason
            self.plain_calls += 1
            return None
        if before is not None:
            before()
        self.fast_calls += 1
        with torch.no_grad():
            self._link_grads()
            # BatchNorm counts its training batches (all layers with one foreach call)
            counters = self._batch_counters()
            if counters:
                torch._foreach_add_(counters, 1)
            if self._native is not None:
                native = self._native.run(x, y, keep=observer is not None)
                if native is not None:
                    self.native_calls += 1
                    loss, logits, self.last_correct, outputs, gradients = native
                    if observer is not None and not (
                        update_stats is not None
                        and self.gives_stats()
                        and observer.kept(self._native, self._native.kept(outputs, gradients))
                    ):
                        self._replay(x, observer, outputs, gradients)
                    self._update(update_stats, change_only)
                    return loss, logits
            if observer is None:
                a = x
                for layer in self._layers:
                    a = layer.forward(a)
            else:
                a = self._observed_forward(x, observer)
            logits = a
            # F.cross_entropy = nll_loss(log_softmax(logits)); its backward, as autograd runs it:
            # ∂L/∂logits = softmax(logits) − onehot(y), divided by the batch size.
            log_p = torch.log_softmax(logits, 1)
            loss, total_weight = _nll_forward(log_p, y, None, _MEAN, _IGNORE_INDEX)
            g = _nll_backward(self._one, log_p, y, None, _MEAN, _IGNORE_INDEX, total_weight)
            g = torch._log_softmax_backward_data(g, log_p, 1, log_p.dtype)
            if observer is None:
                for layer in self._backward_layers:
                    g = layer.backward(g)
            else:
                for layer in self._backward_layers:
                    if isinstance(layer, _Linear) and layer.out is not None:
                        observer.gradient(layer.out, g)
                        layer.out = None
                    g = layer.backward(g)
                observer.backward_done()
            self._update(update_stats, change_only)
        return loss, logits

    def train_steps(
        self,
        images: Tensor,
        labels: Tensor,
        perm: Tensor,
        bounds: Sequence[tuple[int, int]],
        loss_sum: Tensor,
        correct: Tensor,
        *,
        ignore_hooks_of: object | None = None,
        last_sums: str | None = None,
        keep_last: bool = False,
        records: RunRecords | None = None,
    ) -> StepsTaken:
        """Take the steps whose batches are ``perm[lo:hi]`` of ``(images, labels)`` for each
        ``(lo, hi)`` of ``bounds``, in order, in one native call (``csrc/loop.cpp``). Returns a
        :class:`StepsTaken` whose ``steps`` is how many it took, 0 where it cannot (nothing
        done): the caller takes the rest one by one.

        Each step equals ``self(images[perm[lo:hi]], labels[perm[lo:hi]])`` taken by the native
        kernel, bit for bit (the same kernels in the same order), and adds ``m · loss`` to
        ``loss_sum`` (float64, 0-d) and the batch's right argmaxes to ``correct`` (int64, 0-d),
        as ``fit``'s epoch sums do. Where the per-step path would
        differ from the kernel's (an index or label out of range, a batch of one with BatchNorm
        in train mode) the call stops before that step. It applies where the native chain does,
        with Adam/AdamW or SGD on the fused kernels (:meth:`_fused_ok`), no hooks other than
        ``ignore_hooks_of``'s, and float32 inputs on the CPU. Between steps nothing returns to
        Python: no hook, scheduler or callback can run, so the caller uses it only for steps that
        need none.

        The last step may serve a monitor, as :meth:`try_fast`'s arguments do for one step:
        ``last_sums="change"`` or ``"all"`` takes its update with the parameters' sums
        (``update_stats``'s; ``"change"``: Σ(Δθ)² only), where :meth:`gives_stats` holds;
        ``keep_last`` keeps its intermediate tensors (:meth:`_NativeChain.kept`'s list). Both
        come back in the :class:`StepsTaken` where that step was taken. ``records``: steps
        recorded where they run (:class:`RunRecords`), also where :meth:`gives_stats` holds.
        """
        if last_sums is not None and last_sums not in _LAST_SUMS:
            raise ValueError(f"last_sums must be None, 'change' or 'all'; got {last_sums!r}")
        none = StepsTaken(0, None, None, None)
        native = self._native
        if native is None or not bounds or not hasattr(self._kernels, "TrainLoop"):
            return none
        if (last_sums is not None or records is not None) and not self.gives_stats():
            return none
        if any(hi - lo < 2 for lo, hi in bounds) and any(
            bn.module.training for bn in self._batch_norms
        ):
            return none
        if not all(bn.module.training or bn.always_batch_stats for bn in native.batch_norms):
            return none
        if self._fallback_reason(images, labels, ignore_hooks_of) is not None:
            return none
        opt = self.optimizer
        group = opt.param_groups[0]
        if not self._fused_ok(group) or self._first_momentum_step or self._dtype != torch.float32:
            return none
        lr = float(group["lr"])
        state: Sequence[list[Tensor]]
        if isinstance(opt, torch.optim.Adam):
            beta1, beta2 = group["betas"]
            update = _LOOP_ADAMW if group.get("decoupled_weight_decay", False) else _LOOP_ADAM
            hyper = [lr, float(beta1), float(beta2), float(group["eps"])]
            hyper += [float(group["weight_decay"]), float(group["amsgrad"])]
            hyper += [float(group["maximize"])]
            state = self._state_lists
        else:
            if _plain_sgd(group):
                update, hyper, state = _LOOP_SGD_PLAIN, [lr], _NO_STATE
            else:
                update, state = _LOOP_SGD_FUSED, self._state_lists
                hyper = [lr, float(group["momentum"]), float(group["dampening"])]
                hyper += [float(group["weight_decay"]), float(group["nesterov"])]
                hyper += [float(group["maximize"])]
        counters = self._batch_counters()
        flat: list[int] = [i for pair in bounds for i in pair]
        with torch.no_grad():
            self._link_grads()
            # The program's tensors, bound once (csrc/loop.h): rebuilt where any list was
            # (a relinked gradient, a replaced buffer, new optimizer state) or the update changed.
            bound = (native._arguments_now(), self._grads, state, self._flat_steps)
            held = self._loop_bound
            if (
                self._loop is None
                or update != self._loop_update
                or any(a is not b for a, b in zip(bound, held, strict=True))
                or len(counters) != len(self._loop_counters)
                or any(a is not b for a, b in zip(counters, self._loop_counters, strict=True))
            ):
                self._loop = self._kernels.TrainLoop(
                    native.ops,
                    native.scalars,
                    bound[0],
                    native.needs,
                    counters,
                    update,
                    self._params,
                    self._grads,
                    state,
                    self._flat_steps,
                )
                self._loop_bound, self._loop_counters = bound, counters
                self._loop_update = update
            done, sums, out, rows = self._loop.run(
                images,
                labels,
                perm,
                flat,
                hyper,
                loss_sum,
                correct,
                _LAST_SUMS.get(last_sums, 0) if last_sums is not None else 0,
                keep_last,
                [] if records is None else records.at,
                None if records is None else records.plan,
            )
        if done:
            self.fast_calls += done
            self.native_calls += done
            self.last_correct = None
            opt._opt_called = True  # type: ignore[attr-defined]
        if rows is not None and not rows.numel():
            rows = None
        if not out:
            return StepsTaken(done, sums if done == len(bounds) else None, None, None, rows)
        return StepsTaken(done, sums, out[0], [out[i] for i in native.kept_positions], rows)

    def record_plan(
        self,
        tensors: Sequence[int],
        kinds: Sequence[int],
        params: Sequence[float],
        rows: Sequence[int],
        numels: Sequence[int],
        cancellation: float,
    ) -> object | None:
        """The native plan of :class:`RunRecords`: ``record_stats``'s requests (``csrc/stats.cpp``)
        over the kept tensors at ``tensors`` (indices into :meth:`StepObserver.kept`'s list),
        with ``kinds`` and two ``params`` each, and the weights' ``rows`` of the update's sums
        (:attr:`params`' order) with their ``numels``; None without the native loop."""
        native = self._native
        if native is None or not hasattr(self._kernels, "RecordPlan"):
            return None
        where = native.kept_positions
        plan: object = self._kernels.RecordPlan(
            [where[i] for i in tensors],
            list(kinds),
            list(params),
            list(rows),
            list(numels),
            cancellation,
        )
        return plan

    def _batch_counters(self) -> list[Tensor]:
        """The ``num_batches_tracked`` buffers of the train-mode BatchNorms, read from the
        modules' buffer dicts (``Module.__getattr__`` cost 8 µs a step here)."""
        counters = []
        for bn in self._batch_norms:
            module = bn.module
            if module.training:
                tracked = module._buffers.get("num_batches_tracked")
                if tracked is not None:
                    counters.append(tracked)
        return counters

    @property
    def params(self) -> list[Tensor]:
        """The model's parameters in the order of the update's sums (the rows
        :meth:`StepObserver.updated` is given)."""
        return self._params

    def kept_layout(self) -> tuple[object, int] | None:
        """The ``(key, count)`` a native step shows :meth:`StepObserver.kept`, None without the
        native chain (what a monitor checks before a run's last step is kept)."""
        native = self._native
        return None if native is None else (native, native.kept_count)

    def _replay(
        self,
        x: Tensor,
        observer: StepObserver,
        outputs: dict[_Layer, Tensor],
        gradients: dict[_Linear, Tensor],
    ) -> None:
        """Show ``observer`` a step the native kernel took, as :meth:`_observed_forward` shows a
        Python one: modules entered and left with the kernel's intermediate tensors, then ∂L/∂z
        of each linear layer's output z from the top, then the end of the backward pass."""
        self._walk(x, observer, lambda layer, a: outputs[layer])
        for layer in self._backward_layers:
            if isinstance(layer, _Linear):
                observer.gradient(outputs[layer], gradients[layer])
        observer.backward_done()

    def _observed_forward(self, x: Tensor, observer: StepObserver) -> Tensor:
        """The forward pass, telling ``observer`` what each module's hooks would see."""

        def run(layer: _Layer, a: Tensor) -> Tensor:
            out = layer.forward(a)
            if isinstance(layer, _Linear):
                layer.out = out  # for observer.gradient in the backward pass
            return out

        return self._walk(x, observer, run)

    def _walk(
        self, x: Tensor, observer: StepObserver, run: Callable[[_Layer, Tensor], Tensor]
    ) -> Tensor:
        """The forward pass module by module, ``run(layer, input) -> output`` for each layer,
        each module shown to ``observer`` entering with its input and leaving with its output
        (the root first and last; a Dense's own activation module inside the Dense)."""
        observer.enter(self.model, (x,))
        a = x
        for child, layers, inner in self._children:
            inp = a
            observer.enter(child, (inp,))
            if inner is not None:  # Dense: its own activation module runs inside its forward
                z = run(layers[0], inp)
                observer.enter(inner, (z,))
                a = run(layers[1], z) if len(layers) > 1 else z
                observer.exit(inner, (z,), a)
            else:
                for layer in layers:
                    a = run(layer, a)
            observer.exit(child, (inp,), a)
        observer.exit(self.model, (x,), a)
        return a

    def autograd_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The plain step's forward and backward (``model(x)``, autograd: every hook sees them),
        then the fast step's fused optimizer update.

        For the steps a monitor records: its hooks need the model's ``forward`` and autograd's
        backward, but not ``torch.optim``'s per-tensor update (879 µs against 180 µs per Adam
        step of the reference network on this machine's CPU). The gradients are accumulated
        into zeroed ``p.grad`` buffers (0 + g = g exactly), so values are the plain step's.
        """
        self.last_correct = None
        self._link_grads()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        torch._foreach_zero_(self._grads)
        loss.backward()  # type: ignore[no-untyped-call]
        if any(p.grad is not g for p, g in zip(self._params, self._grads, strict=True)):
            self._grads = []  # a hook replaced a gradient: relink before the next fast step
            self.optimizer.step()
        else:
            with torch.no_grad():
                self._update()
        return loss.detach(), logits.detach()

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's ``state_dict()``: torch.optim's format, so checkpoints interchange."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load a ``torch.optim`` state dict (e.g. a plain-path checkpoint's) into the optimizer."""
        self.optimizer.load_state_dict(state)

    # -- when to take the plain step

    def _place(self) -> None:
        """Take dtype and device from the parameters (again after ``model.to(...)``)."""
        first = self._params[0]
        self._dtype = first.dtype
        self._device = first.device
        self._one = torch.ones((), dtype=first.dtype, device=first.device)
        self._grads = []
        self._state = None

    def _fallback_reason(self, x: Tensor, y: Tensor, owner: object | None = None) -> str | None:
        if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            return f"inputs of shape {tuple(x.shape)} and labels {tuple(y.shape)}"
        if x.dtype != self._dtype or x.device != self._device:
            first = self._params[0]
            if first.dtype != self._dtype or first.device != self._device:
                self._place()  # the model was moved or cast since the last call
        if x.dtype != self._dtype or x.device != self._device or y.dtype != torch.int64:
            return f"inputs {x.dtype} on {x.device}, labels {y.dtype}, model {self._dtype}"
        if x.shape[1] != self._in_features:
            return f"inputs with {x.shape[1]} features"
        if x.shape[0] < 2 and any(bn.module.training for bn in self._batch_norms):
            return "a batch of one in train mode"
        if torch.is_autocast_enabled(x.device.type):
            return "autocast is enabled"
        # Every hook registration (module, parameter, global) takes the next RemovableHandle
        # id: while that counter and the owner are those of a look that found no hook, no hook
        # was added since, and none is there now. Saves ~20 µs of a ~1.3 ms step.
        stamp = (RemovableHandle.next_id, id(owner))
        if stamp == self._hook_free:
            return None
        found = _hooked(self._named_modules, self._named_params, owner)
        if found is None:
            self._hook_free = stamp
            return None
        return {
            "global": "global module hooks are registered",
            "module": "a module has forward/backward hooks",
            "parameter": "a parameter has gradient hooks",
        }[found[0]]

    def _plain_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.detach(), logits.detach()

    # -- gradients and optimizer state

    def _link_grads(self) -> None:
        """Make each ``p.grad`` a contiguous tensor like p, which the step overwrites."""
        grads = self._grads
        params = self._params
        if len(grads) == len(params) and all(
            p.grad is g for p, g in zip(params, grads, strict=True)
        ):
            return
        linked = []
        for p in params:
            g = p.grad
            if g is None or not g.is_contiguous() or g.dtype != p.dtype or g.device != p.device:
                g = torch.zeros_like(p, memory_format=torch.contiguous_format)
                p.grad = g
            linked.append(g)
        self._grads = linked

    def gives_stats(self) -> bool:
        """Whether the next update can give the parameters' sums (``csrc/update.cpp``: SGD in
        all its variants, or Adam/AdamW without amsgrad or maximize; float32 on the CPU, native
        kernels built)."""
        if self._kernels is None or self._dtype != torch.float32:
            return False
        opt = self.optimizer
        group = opt.param_groups[0]
        if isinstance(opt, torch.optim.Adam):
            if group["amsgrad"] or group["maximize"]:
                return False
        elif not isinstance(opt, torch.optim.SGD):
            return False
        return self._fused_ok(group)

    def _update(
        self,
        update_stats: Callable[[list[Tensor], Tensor | None], None] | None = None,
        change_only: bool = False,
    ) -> None:
        stats: Tensor | None = None
        try:
            stats = self._apply_update(update_stats is not None, change_only)
        finally:
            if update_stats is not None:
                update_stats(self._params, stats)

    def _apply_update(self, want_stats: bool, change_only: bool = False) -> Tensor | None:
        """The optimizer step; with ``want_stats`` and :meth:`gives_stats`, by ``csrc/update.cpp``
        with the parameters' sums, which it returns (else None); ``change_only``: Adam fills
        only Σ(Δθ)², the others NaN (see :meth:`try_fast`)."""
        opt = self.optimizer
        group = opt.param_groups[0]
        want_stats = want_stats and self.gives_stats()
        if want_stats and isinstance(opt, torch.optim.SGD):
            momentum = float(group["momentum"])
            buffers = self._state_lists[0] if momentum else []
            sums: Tensor = self._kernels.sgd_step(
                self._params,
                self._grads,
                buffers,
                lr=float(group["lr"]),
                momentum=momentum,
                dampening=float(group["dampening"]),
                weight_decay=float(group["weight_decay"]),
                nesterov=bool(group["nesterov"]),
                maximize=bool(group["maximize"]),
                first=self._first_momentum_step,
                stats=True,
            )
            self._after_first_momentum_step()
            opt._opt_called = True  # type: ignore[attr-defined]
            return sums
        if want_stats:  # Adam, AdamW
            exp_avgs, exp_avg_sqs, _, _ = self._state_lists
            self._flat_steps.add_(1)
            beta1, beta2 = group["betas"]
            stats: Tensor = self._kernels.adam_step(
                self._params,
                self._grads,
                exp_avgs,
                exp_avg_sqs,
                self._flat_steps,
                lr=float(group["lr"]),
                beta1=float(beta1),
                beta2=float(beta2),
                eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]),
                decoupled=bool(group.get("decoupled_weight_decay", False)),
                stats=True,
                change_only=change_only,
            )
            opt._opt_called = True  # type: ignore[attr-defined]
            return stats
        if not self._fused_ok(group):
            opt.step()
            return None
        lr = float(group["lr"])
        if isinstance(opt, torch.optim.Adam):  # AdamW too
            exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = self._state_lists
            self._flat_steps.add_(1)
            beta1, beta2 = group["betas"]
            fused = (
                torch._fused_adamw_
                if group.get("decoupled_weight_decay", False)
                else torch._fused_adam_
            )
            fused(
                self._params,
                self._grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                lr=lr,
                beta1=float(beta1),
                beta2=float(beta2),
                weight_decay=float(group["weight_decay"]),
                eps=float(group["eps"]),
                amsgrad=bool(group["amsgrad"]),
                maximize=bool(group["maximize"]),
            )
        else:
            if _plain_sgd(group):
                # θ ← θ − η g: the single-tensor SGD's own kernel, one call for all parameters
                torch._foreach_add_(self._params, self._grads, alpha=-lr)
            else:
                (buffers,) = self._state_lists
                torch._fused_sgd_(
                    self._params,
                    self._grads,
                    buffers,
                    weight_decay=float(group["weight_decay"]),
                    momentum=float(group["momentum"]),
                    lr=lr,
                    dampening=float(group["dampening"]),
                    nesterov=bool(group["nesterov"]),
                    maximize=bool(group["maximize"]),
                    is_first_step=self._first_momentum_step,
                )
                self._after_first_momentum_step()
        # What torch's LR schedulers' wrapper of optimizer.step() records, so that they do not
        # warn that scheduler.step() came first.
        opt._opt_called = True  # type: ignore[attr-defined]
        return None

    def _after_first_momentum_step(self) -> None:
        """After torch's first momentum step (buffers ← gradients), hand the buffers to the
        optimizer's state, where torch keeps them."""
        if self._first_momentum_step:
            self._first_momentum_step = False
            (buffers,) = self._state_lists
            for p, buf in zip(self._params, buffers, strict=True):
                self.optimizer.state[p]["momentum_buffer"] = buf

    def _fused_ok(self, group: dict[str, Any]) -> bool:
        """Whether the fused CPU kernels apply now; otherwise ``optimizer.step()`` runs."""
        if self._device.type != "cpu" or self._dtype not in _FUSED_DTYPES:
            return False
        if any(_GLOBAL_OPTIMIZER_HOOKS):
            return False
        opt = self.optimizer
        if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
            return False
        lr = group["lr"]
        if isinstance(lr, Tensor) or isinstance(group.get("betas", (0.0, 0.0))[0], Tensor):
            return False
        return self._state is opt.state or self._link_state(group)

    def _link_state(self, group: dict[str, Any]) -> bool:
        """Collect (creating, as torch does on its first step) the optimizer's state tensors.

        Returns False (and the step uses ``optimizer.step()``) where the state does not suit the
        fused kernels: tensors of another dtype/device/layout, or Adam steps that differ.
        """
        opt = self.optimizer
        state = opt.state
        params = self._params
        self._state = None
        if isinstance(opt, torch.optim.Adam):
            amsgrad = bool(group["amsgrad"])
            keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            lists: list[list[Tensor]] = [[], [], []]
            steps: list[Any] = []
            for p in params:
                s = state[p]
                if len(s) == 0:  # torch.optim.Adam._init_group, non-fused, non-capturable
                    s["step"] = torch.tensor(0.0, dtype=scalar)
                    for key in keys:
                        s[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if any(key not in s for key in keys) or not self._suits(p, *(s[k] for k in keys)):
                    return False
                for i, key in enumerate(keys):
                    lists[i].append(s[key])
                steps.append(s.get("step"))
            if not all(
                isinstance(t, Tensor) and t.device.type == "cpu" and t.dim() == 0 for t in steps
            ):
                return False
            # Each parameter's "step" becomes a view into one vector, so that one add_ counts
            # the step for all of them (a loop of 0-dim adds costs more than Adam's arithmetic
            # on a small model). The plain path increments the views in place.
            flat_steps = torch.stack([t.detach().to(scalar) for t in steps])
            for i, p in enumerate(params):
                state[p]["step"] = flat_steps[i]
            lists.append([state[p]["step"] for p in params])
            self._flat_steps = flat_steps
        else:
            momentum = float(group["momentum"])
            buffers = [state[p].get("momentum_buffer") for p in params] if momentum else []
            if not buffers:
                self._first_momentum_step = False
            elif any(b is None for b in buffers):
                if not all(b is None for b in buffers):
                    return False
                # torch's first momentum step: b ← g (the kernel fills these with is_first_step)
                buffers = [
                    torch.empty_like(p, memory_format=torch.contiguous_format) for p in params
                ]
                self._first_momentum_step = True
            else:
                self._first_momentum_step = False
                if not all(self._suits(p, b) for p, b in zip(params, buffers, strict=True)):
                    return False
            lists = [buffers]
        self._state_lists = lists
        self._state = state
        return True

    @staticmethod
    def _suits(p: Tensor, *tensors: Tensor | None) -> bool:
        return all(
            t is not None
            and t.dtype == p.dtype
            and t.device == p.device
            and t.shape == p.shape
            and t.is_contiguous()
            for t in tensors
        )
