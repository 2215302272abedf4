"""Models built from configs: the multilayer perceptron :class:`MLP`, :func:`mlp` and presets.

An :class:`MLP` is a flat :class:`torch.nn.Sequential` of named layers (``hidden1``, ``hidden1_bn``,
``hidden1_act``, …, ``outputs``, ``outputs_bn``) so that ``print(model)`` reads like the seed's TF1
graph, and it carries ``.config``: a JSON-able dict from which :func:`from_config` rebuilds the same
architecture (same parameter names and shapes). Configs name their initializers and activations
(strings or small dicts), never lambdas, so a checkpoint can carry its config.

:data:`PRESETS` maps a name to a :class:`Preset` (a builder); :func:`preset` builds one, with
overrides. ``"reference"`` is the seed's network: 784-300-100-10, He initialization, ELU, and
BatchNorm (momentum 0.9) before each activation and on the logits.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import torch

from steadygrad import activations, init
from steadygrad.nn import BatchNorm, Dense, _check_epsilon, _check_momentum, _check_positive_int

__all__ = [
    "BATCH_NORM_PLACEMENTS",
    "KINDS",
    "MLP",
    "PRESETS",
    "Block",
    "Preset",
    "from_config",
    "mlp",
    "preset",
]

BATCH_NORM_PLACEMENTS: Final[tuple[str | None, ...]] = (None, "before", "after")
"""Where :func:`mlp` puts a BatchNorm relative to each hidden activation (None: nowhere)."""

InitializerSpec = str | Mapping[str, Any]
"""A JSON-able :func:`steadygrad.init.get` identifier: a name or ``{"name": ..., **kwargs}``."""

ActivationSpec = str | Mapping[str, Any] | None
"""A JSON-able activation: a name, ``{"name": "leaky_relu", "alpha": 0.2}``, or None (linear)."""


def _choices_message(what: str, got: object, choices: Iterable[str]) -> str:
    """``what must be one of 'a', 'b'; got 'x' (did you mean 'a'?)``."""
    options = list(choices)
    message = f"{what} must be one of {', '.join(repr(c) for c in options)}; got {got!r}"
    if isinstance(got, str):
        close = difflib.get_close_matches(got, options, n=1, cutoff=0.5)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return message


def _check_keys(what: str, keys: Iterable[str], allowed: Sequence[str], error: type) -> None:
    for key in keys:
        if key not in allowed:
            raise error(_choices_message(what, key, allowed))


# --------------------------------------------------------------------------- argument checks


def _check_hidden(hidden: object) -> list[int]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(
            f"hidden must be a list of positive layer widths such as [300, 100]; got {hidden!r}"
        )
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(
                "hidden must be a list of positive layer widths such as [300, 100]; "
                f"got {list(hidden)!r}"
            )
    return list(hidden)


def _check_json(argument: str, value: Any) -> Any:
    """A deep copy of ``value`` after checking that it survives a JSON round trip."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{argument} must be JSON-able (names, numbers, dicts) so that MLP.config can be "
            f"saved; got {value!r} ({error})"
        ) from None
    return json.loads(text)


def _check_activation(activation: object) -> ActivationSpec:
    if activation is not None and not isinstance(activation, (str, Mapping)):
        raise TypeError(
            "activation must be a name such as 'elu', a config such as "
            "{'name': 'leaky_relu', 'alpha': 0.2}, or None (linear), so that MLP.config "
            f"round-trips through JSON; got {type(activation).__name__}"
        )
    return _check_json("activation", activation)  # type: ignore[no-any-return]


def _initializer_spec(argument: str, identifier: object, allow_auto: bool) -> InitializerSpec:
    """Validate an initializer identifier and return it in JSON-able form."""
    if allow_auto and identifier == "auto":
        return "auto"
    if isinstance(identifier, init.VarianceScaling):  # a preset's name, else its config
        name = identifier.name
        return name if name in init.names() else identifier.to_config()
    if not isinstance(identifier, (str, Mapping)):
        allowed = "'auto', a name" if allow_auto else "a name"
        raise TypeError(
            f"{argument} must be {allowed} such as 'he_normal' or a config such as "
            "{'name': 'normal', 'std': 0.01}, so that MLP.config round-trips through JSON; "
            f"got {type(identifier).__name__}"
        )
    spec = _check_json(argument, identifier)
    init.get(spec)  # raises on an unknown name or argument, with the closest match
    return spec  # type: ignore[no-any-return]


def _check_batch_norm(batch_norm: object) -> str | None:
    if batch_norm is None or (isinstance(batch_norm, str) and batch_norm in ("before", "after")):
        return batch_norm
    message = f"batch_norm must be one of None, 'before', 'after'; got {batch_norm!r}"
    if isinstance(batch_norm, str):
        close = difflib.get_close_matches(batch_norm.lower(), ["before", "after"], n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    raise ValueError(message)


def _build_activation(activation: ActivationSpec) -> torch.nn.Module | None:
    if activation is None:
        return None
    if isinstance(activation, str):
        return activations.get(activation)
    kwargs = dict(activation)
    name = kwargs.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(
            "activation config must have a 'name' string, e.g. "
            f"{{'name': 'leaky_relu', 'alpha': 0.2}}; got {dict(activation)!r}"
        )
    return activations.get(name, **kwargs)


def _make_config(
    input_dim: int,
    hidden: Sequence[int],
    output_dim: int,
    activation: ActivationSpec,
    *,
    initializer: InitializerSpec | init.VarianceScaling,
    output_initializer: InitializerSpec | init.VarianceScaling | None,
    bias_initializer: InitializerSpec,
    batch_norm: str | None,
    batch_norm_output: bool,
    momentum: float,
    epsilon: float,
) -> dict[str, Any]:
    """Validate :func:`mlp`'s arguments and return them as a JSON-able config."""
    if not isinstance(batch_norm_output, bool):
        raise TypeError(f"batch_norm_output must be True or False; got {batch_norm_output!r}")
    config: dict[str, Any] = {
        "kind": "mlp",
        "input_dim": _check_positive_int("input_dim", input_dim),
        "hidden": _check_hidden(hidden),
        "output_dim": _check_positive_int("output_dim", output_dim),
        "activation": _check_activation(activation),
        "initializer": _initializer_spec("initializer", initializer, allow_auto=True),
        "output_initializer": (
            None
            if output_initializer is None
            else _initializer_spec("output_initializer", output_initializer, allow_auto=True)
        ),
        "bias_initializer": _initializer_spec(
            "bias_initializer", bias_initializer, allow_auto=False
        ),
        "batch_norm": _check_batch_norm(batch_norm),
        "batch_norm_output": batch_norm_output,
        "momentum": _check_momentum(momentum),
        "epsilon": _check_epsilon(epsilon),
    }
    _build_activation(config["activation"])  # unknown names and arguments fail here
    return config


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Block:
    """One layer of an :class:`MLP`: ``dense`` → ``batch_norm`` → ``activation`` (in model order).

    ``activation`` is the module whose *input* is the layer's pre-activation z: the separate
    activation module when BatchNorm comes before it, else ``dense.activation`` (applied inside the
    Dense); ``None`` for a linear layer (the logits). ``batch_norm`` is ``None`` when the layer has
    none (or after :func:`steadygrad.nn.fold_batchnorm` replaced it by an Identity);
    ``batch_norm_before_activation`` tells which side of the activation it sits on.
    """

    name: str
    dense: Dense
    batch_norm: BatchNorm | None
    activation: torch.nn.Module | None
    batch_norm_before_activation: bool


_LayerNames = tuple[str, str | None, str | None]  # (dense, batch norm, separate activation)


class MLP(torch.nn.Sequential):
    r"""Multilayer perceptron: a flat ``nn.Sequential`` of :class:`~steadygrad.nn.Dense`,
    :class:`~steadygrad.nn.BatchNorm` and activation modules, with a JSON-able ``.config``.

    Hidden layer ``i`` computes, for ``batch_norm`` =

    - ``None``: :math:`a = f(W x + b)` — ``hidden{i}`` (Dense with activation f);
    - ``"before"`` (the seed; Ioffe & Szegedy 2015): :math:`a = f(\mathrm{BN}(W x + b))` —
      ``hidden{i}``, ``hidden{i}_bn``, ``hidden{i}_act``;
    - ``"after"``: :math:`a = \mathrm{BN}(f(W x + b))` — ``hidden{i}`` (with f), ``hidden{i}_bn``.

    The output layer ``outputs`` is linear (logits for a softmax/cross-entropy loss), followed by
    ``outputs_bn`` when ``batch_norm_output`` (the seed normalises its logits). The Dense bias is
    kept even when a BatchNorm follows (its β makes it redundant, but the seed keeps it, and so
    the reference network has 267,430 trainable parameters).

    **Initializers.** ``initializer="auto"`` draws each hidden kernel with
    :func:`steadygrad.init.recommended` for the activation (He for the ReLU family, Glorot for
    sigmoid/tanh, LeCun for SELU) and the logits kernel with ``recommended(None)``, Glorot normal
    (Glorot & Bengio 2010), since the logits feed a softmax, not the hidden activation. An explicit
    ``initializer`` (any :func:`steadygrad.init.get` name or config) is used for *every* layer, as
    a Keras user passing ``kernel_initializer`` to each Dense expects; ``output_initializer``
    overrides it for the logits layer only. ``bias_initializer`` applies to every Dense.

    Args:
        input_dim: features of the input (784 for 28×28 images).
        hidden: widths of the hidden layers, e.g. ``[300, 100]`` (may be empty).
        output_dim: number of classes.
        activation: hidden activation: a name (``"elu"``), a config
            (``{"name": "leaky_relu", "alpha": 0.2}``) or None (linear).
        initializer: ``"auto"`` or an initializer name/config for the kernels.
        output_initializer: kernel initializer of the logits layer; None: as described above.
        bias_initializer: initializer name/config for the biases (default zeros).
        batch_norm: None, ``"before"`` or ``"after"`` the hidden activations.
        batch_norm_output: BatchNorm on the logits.
        momentum: BatchNorm momentum, Keras convention (fraction of the moving average kept).
        epsilon: BatchNorm epsilon.
        generator: :class:`torch.Generator` for the initial weights (not part of the config).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        output_dim: int,
        activation: ActivationSpec = "relu",
        *,
        initializer: InitializerSpec | init.VarianceScaling = "auto",
        output_initializer: InitializerSpec | init.VarianceScaling | None = None,
        bias_initializer: InitializerSpec = "zeros",
        batch_norm: str | None = None,
        batch_norm_output: bool = False,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> None:
        config = _make_config(
            input_dim,
            hidden,
            output_dim,
            activation,
            initializer=initializer,
            output_initializer=output_initializer,
            bias_initializer=bias_initializer,
            batch_norm=batch_norm,
            batch_norm_output=batch_norm_output,
            momentum=momentum,
            epsilon=epsilon,
        )
        layers, names = self._build(config, generator)
        super().__init__(layers)
        self._config = config
        self._layer_names = names

    @staticmethod
    def _build(
        config: Mapping[str, Any], generator: torch.Generator | None
    ) -> tuple[OrderedDict[str, torch.nn.Module], list[_LayerNames]]:
        placement = config["batch_norm"]
        probe = _build_activation(config["activation"])
        hidden_init: InitializerSpec | init.VarianceScaling = config["initializer"]
        output_init: InitializerSpec | init.VarianceScaling = config["initializer"]
        if config["initializer"] == "auto":
            hidden_init = init.recommended(probe)
            output_init = init.recommended(None)
        if config["output_initializer"] is not None:
            output_init = config["output_initializer"]
            if output_init == "auto":
                output_init = init.recommended(None)
        bias_init = config["bias_initializer"]

        def batch_norm(width: int) -> BatchNorm:
            return BatchNorm(width, momentum=config["momentum"], epsilon=config["epsilon"])

        layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
        names: list[_LayerNames] = []
        fan_in = config["input_dim"]
        for i, width in enumerate(config["hidden"], start=1):
            dense_name = f"hidden{i}"
            bn_name = None if placement is None else f"{dense_name}_bn"
            act_name = None
            inside = None if placement == "before" else _build_activation(config["activation"])
            layers[dense_name] = Dense(
                fan_in, width, inside, hidden_init, bias_init, generator=generator
            )
            if bn_name is not None:
                layers[bn_name] = batch_norm(width)
            if placement == "before" and config["activation"] is not None:
                act_name = f"{dense_name}_act"
                layers[act_name] = _build_activation(config["activation"])  # type: ignore[assignment]
            names.append((dense_name, bn_name, act_name))
            fan_in = width
        layers["outputs"] = Dense(
            fan_in, config["output_dim"], None, output_init, bias_init, generator=generator
        )
        out_bn = None
        if config["batch_norm_output"]:
            out_bn = "outputs_bn"
            layers[out_bn] = batch_norm(config["output_dim"])
        names.append(("outputs", out_bn, None))
        return layers, names

    # -- config

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able dict of the constructor's arguments plus ``"kind": "mlp"`` (a copy)."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, generator: torch.Generator | None = None
    ) -> MLP:
        """Rebuild an MLP from :attr:`config` (e.g. after ``json.loads``); new random weights.

        Unknown keys raise ValueError with the closest valid key; ``kind``, when present, must be
        ``"mlp"``.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict; got {type(config).__name__}")
        kwargs = dict(config)
        kind = kwargs.pop("kind", "mlp")
        if kind != "mlp":
            raise ValueError(f"MLP.from_config needs config kind 'mlp'; got {kind!r}")
        _check_keys("config key", kwargs, _MLP_ARGUMENTS, ValueError)
        missing = [key for key in ("input_dim", "hidden", "output_dim") if key not in kwargs]
        if missing:
            raise ValueError(
                f"MLP config is missing {', '.join(repr(k) for k in missing)}; "
                f"got keys {sorted(config)}"
            )
        return cls(generator=generator, **kwargs)

    def extra_repr(self) -> str:
        parts = ["-".join(str(width) for width in self.widths)]
        parts.append(f"activation={self._config['activation']!r}")
        parts.append(f"batch_norm={self._config['batch_norm']!r}")
        if self._config["batch_norm_output"]:
            parts.append("batch_norm_output=True")
        return ", ".join(parts)

    # -- structure

    @property
    def widths(self) -> list[int]:
        """``[input_dim, *hidden, output_dim]``, e.g. ``[784, 300, 100, 10]``."""
        return [self._config["input_dim"], *self._config["hidden"], self._config["output_dim"]]

    def blocks(self) -> list[Block]:
        """Every layer as a :class:`Block`, hidden layers first and the logits layer last."""
        result = []
        before = self._config["batch_norm"] == "before"
        for dense_name, bn_name, act_name in self._layer_names:
            dense = getattr(self, dense_name)
            assert isinstance(dense, Dense)
            bn = getattr(self, bn_name) if bn_name is not None else None
            if act_name is not None:
                activation: torch.nn.Module | None = getattr(self, act_name)
            else:
                activation = dense.activation
            result.append(
                Block(
                    name=dense_name,
                    dense=dense,
                    batch_norm=bn if isinstance(bn, BatchNorm) else None,  # Identity once folded
                    activation=activation,
                    batch_norm_before_activation=before or dense_name == "outputs",
                )
            )
        return result

    def hidden_layers(self) -> list[Block]:
        """The hidden layers' blocks (:meth:`blocks` without the logits layer)."""
        return self.blocks()[:-1]

    def __getitem__(self, idx: slice | int) -> torch.nn.Sequential | torch.nn.Module:
        # Sequential builds a slice with self.__class__(OrderedDict), which an MLP cannot take.
        if isinstance(idx, slice):
            return torch.nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def summary(self) -> str:
        """Layer table (name, type, output shape, trainable parameters) and parameter counts.

        Non-trainable parameters are the BatchNorm moving means and variances (as Keras counts
        them) plus any frozen parameter.
        """
        rows = [("Layer", "Type", "Output shape", "Trainable params")]
        width = self._config["input_dim"]
        for name, module in self.named_children():
            if isinstance(module, torch.nn.Linear):
                width = module.out_features
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            rows.append((name, type(module).__name__, f"(batch, {width})", f"{trainable:,}"))
        sizes = [max(len(row[i]) for row in rows) for i in range(4)]
        rule = "  ".join("-" * s for s in sizes)

        def line(row: tuple[str, str, str, str]) -> str:
            return "  ".join(
                cell.rjust(s) if i == 3 else cell.ljust(s)
                for i, (cell, s) in enumerate(zip(row, sizes, strict=True))
            ).rstrip()

        trainable_total = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        moving = sum(b.numel() for b in self.buffers() if b.is_floating_point())
        header = f"MLP {self.extra_repr()}, initializer={self._config['initializer']!r}"
        lines = [header, rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
        lines.append(f"Trainable params: {trainable_total:,}")
        note = " (BatchNorm moving means and variances)" if moving and not frozen else ""
        lines.append(f"Non-trainable params: {frozen + moving:,}{note}")
        return "\n".join(lines)


_MLP_ARGUMENTS: Final[tuple[str, ...]] = (
    "input_dim",
    "hidden",
    "output_dim",
    "activation",
    "initializer",
    "output_initializer",
    "bias_initializer",
    "batch_norm",
    "batch_norm_output",
    "momentum",
    "epsilon",
)


def mlp(
    input_dim: int,
    hidden: Sequence[int],
    output_dim: int,
    activation: ActivationSpec = "relu",
    *,
    initializer: InitializerSpec | init.VarianceScaling = "auto",
    output_initializer: InitializerSpec | init.VarianceScaling | None = None,
    bias_initializer: InitializerSpec = "zeros",
    batch_norm: str | None = None,
    batch_norm_output: bool = False,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    generator: torch.Generator | None = None,
) -> MLP:
    """Build an :class:`MLP` (see its docstring for the layer formulas and initializer rules).

    ``mlp(784, [300, 100], 10, "elu", initializer="he_normal", batch_norm="before",
    batch_norm_output=True, momentum=0.9)`` is the seed's network (the ``"reference"`` preset).
    """
    return MLP(
        input_dim,
        hidden,
        output_dim,
        activation,
        initializer=initializer,
        output_initializer=output_initializer,
        bias_initializer=bias_initializer,
        batch_norm=batch_norm,
        batch_norm_output=batch_norm_output,
        momentum=momentum,
        epsilon=epsilon,
        generator=generator,
    )


# --------------------------------------------------------------------------- configs and presets

KINDS: Final[dict[str, Callable[..., torch.nn.Module]]] = {"mlp": MLP.from_config}
"""Config ``"kind"`` → builder ``(config, *, generator=None)``; later model kinds register here."""


def from_config(
    config: Mapping[str, Any], *, generator: torch.Generator | None = None
) -> torch.nn.Module:
    """Rebuild a model from its ``.config`` dict, dispatching on ``config["kind"]`` (:data:`KINDS`).

    The weights are freshly initialized (from ``generator``, else torch's global RNG); load a
    checkpoint's state dict to restore trained ones.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    if "kind" not in config:
        raise ValueError(
            f"config must have a 'kind' key, one of {', '.join(repr(k) for k in KINDS)}; "
            f"got keys {sorted(config)}"
        )
    kind = config["kind"]
    if kind not in KINDS:
        raise ValueError(_choices_message("config kind", kind, KINDS))
    return KINDS[kind](config, generator=generator)


@dataclass(frozen=True)
class Preset:
    """A named network: :func:`mlp` keyword arguments and a one-line description.

    Calling it builds the network, ``overrides`` replacing any of its arguments.
    """

    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def config(self) -> dict[str, Any]:
        """The preset's full config (what ``.config`` of the built model returns)."""
        return _preset_config(self.kwargs)

    def __call__(self, *, generator: torch.Generator | None = None, **overrides: Any) -> MLP:
        _check_keys("preset override", overrides, _MLP_ARGUMENTS, TypeError)
        return mlp(**{**self.kwargs, **overrides, "generator": generator})


def _preset_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(mlp).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name != "generator"
    }
    return _make_config(**{**defaults, **kwargs})


_FASHION_MNIST: Final = {"input_dim": 784, "output_dim": 10}

PRESETS: dict[str, Preset] = {
    "reference": Preset(
        "the seed's network: 784-300-100-10, He normal init, ELU, BatchNorm(momentum=0.9) "
        "before each activation and on the logits (Ioffe & Szegedy 2015)",
        {
            **_FASHION_MNIST,
            "hidden": [300, 100],
            "activation": "elu",
            "initializer": "he_normal",
            "batch_norm": "before",
            "batch_norm_output": True,
            "momentum": 0.9,
            "epsilon": 1e-3,
        },
    ),
    "deep-sigmoid": Preset(
        "5 x 1000 sigmoid with the 'standard' init U[±1/sqrt(n_in)]: activations saturate and "
        "gradients vanish in the lower layers (Glorot & Bengio 2010)",
        {
            **_FASHION_MNIST,
            "hidden": [1000] * 5,
            "activation": "sigmoid",
            "initializer": "uniform_fan_in",
        },
    ),
    "deep-relu-tiny-init": Preset(
        "30 x 256 ReLU with N(0, 0.01²) weights: the signal shrinks by n·σ²/2 per layer and "
        "vanishes (He et al. 2015)",
        {
            **_FASHION_MNIST,
            "hidden": [256] * 30,
            "activation": "relu",
            "initializer": {"name": "normal", "std": 0.01},
        },
    ),
    "deep-relu-xavier": Preset(
        "30 x 256 ReLU with Glorot init: variance halves per layer, so the 30-layer net stalls "
        "(He et al. 2015, Fig. 3)",
        {
            **_FASHION_MNIST,
            "hidden": [256] * 30,
            "activation": "relu",
            "initializer": "glorot_normal",
        },
    ),
    "deep-relu-he": Preset(
        "30 x 256 ReLU with He normal init: variance preserved, trains (He et al. 2015)",
        {
            **_FASHION_MNIST,
            "hidden": [256] * 30,
            "activation": "relu",
            "initializer": "he_normal",
        },
    ),
    "deep-relu-normal": Preset(
        "20 x 256 ReLU with N(0, 1) weights: each layer multiplies the signal std by "
        "sqrt(n/2) ≈ 11, so activations and back-propagated gradients explode (He et al. 2015)",
        {
            **_FASHION_MNIST,
            "hidden": [256] * 20,
            "activation": "relu",
            "initializer": {"name": "normal", "std": 1.0},
        },
    ),
    "deep-tanh-large-init": Preset(
        "10 x 256 tanh with N(0, 1) weights: pre-activations of std ~sqrt(n) saturate tanh and "
        "the gradients vanish (Glorot & Bengio 2010; LeCun et al. 1998)",
        {
            **_FASHION_MNIST,
            "hidden": [256] * 10,
            "activation": "tanh",
            "initializer": {"name": "normal", "std": 1.0},
        },
    ),
    "dead-relu": Preset(
        "784-300-100-10 ReLU, He normal weights and biases drawn from N(-5, 0.1²): nearly every "
        "pre-activation is negative, so the units are dead from the start (Lu et al. 2020)",
        {
            **_FASHION_MNIST,
            "hidden": [300, 100],
            "activation": "relu",
            "initializer": "he_normal",
            "bias_initializer": {"name": "normal", "mean": -5.0, "std": 0.1},
        },
    ),
}
"""Registry of named networks. Add one with ``PRESETS["name"] = Preset("what it shows", {...})``."""


def preset(name: str, *, generator: torch.Generator | None = None, **overrides: Any) -> MLP:
    """Build the preset network ``name`` (see :data:`PRESETS`), ``overrides`` replacing its
    :func:`mlp` arguments, e.g. ``preset("reference", activation="selu")``.

    Unknown names raise ValueError listing the presets and the closest match; unknown overrides
    raise TypeError naming the valid arguments.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(_choices_message("preset", name, sorted(PRESETS)))
    return PRESETS[name](generator=generator, **overrides)
