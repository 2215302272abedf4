"""Weight initializers for PyTorch tensors, built on one mechanism: variance scaling.

Every initializer acts **in place** under ``torch.no_grad()`` on a tensor in PyTorch's layout
``(out, in, *kernel)``, returns that tensor, and takes a keyword-only ``generator``
(:class:`torch.Generator`) so that a seeded generator reproduces the same weights.

Variance scaling (Keras ``VarianceScaling``) draws weights of variance ``scale / n``, ``n`` being

- ``fan_in``  = in · prod(kernel)            (forward signal, LeCun et al. 1998; He et al. 2015),
- ``fan_out`` = out · prod(kernel)           (backward gradient),
- ``fan_avg`` = (fan_in + fan_out) / 2       (the compromise of Glorot & Bengio 2010; the seed's
  TF1 ``variance_scaling_initializer(mode='FAN_AVG')``),

from one of three distributions, all with realised standard deviation ``sqrt(scale / n)``:

- ``"truncated_normal"``: N(0, s²) cut at ±2s with s = sqrt(scale / n) / 0.87962566103423978, the
  standard deviation of a standard normal truncated to [-2, 2]; dividing by it makes the std *after*
  truncation exactly sqrt(scale / n) (Keras 2+ semantics);
- ``"untruncated_normal"`` (alias ``"normal"``): plain N(0, scale / n), PyTorch's
  ``kaiming_normal_``/``xavier_normal_`` and the seed's Gaussian;
- ``"uniform"``: U[-r, r] with r = sqrt(3 · scale / n).

The presets are fixed arguments of that one mechanism:

=================  =====  =======  ==============================================
preset             scale  mode     formula (normal: realised σ; uniform: bound r)
=================  =====  =======  ==============================================
``glorot_normal``  1      fan_avg  σ = sqrt(2 / (n_in + n_out))   Glorot & Bengio 2010
``glorot_uniform`` 1      fan_avg  r = sqrt(6 / (n_in + n_out))
``he_normal``      2      fan_in   σ = sqrt(2 / n_in)             He et al. 2015
``he_uniform``     2      fan_in   r = sqrt(6 / n_in)
``lecun_normal``   1      fan_in   σ = sqrt(1 / n_in)             LeCun et al. 1998
``lecun_uniform``  1      fan_in   r = sqrt(3 / n_in)
``uniform_fan_in`` 1/3    fan_in   r = 1 / sqrt(n_in)             PyTorch's Linear/Conv default
=================  =====  =======  ==============================================

**Decision: the "normal" presets are truncated.** ``glorot_normal_``, ``he_normal_`` and
``lecun_normal_`` draw from the truncated normal with the Keras correction, so their realised std
equals the formula in the table (what a Keras user of ``kernel_initializer="he_normal"`` gets).
PyTorch's ``kaiming_normal_``/``xavier_normal_`` draw a plain Gaussian with the same std; pass
``distribution="untruncated_normal"`` to :func:`variance_scaling_` for that. The aliases
``xavier_*``/``kaiming_*`` name the same functions as ``glorot_*``/``he_*`` (same realised std as
PyTorch's, but truncated, and a keyword ``mode`` instead of PyTorch's ``gain``/``a``).

Note: in TF/Keras ``distribution="normal"`` is a legacy alias of ``"truncated_normal"``; here
``"normal"`` is the plain Gaussian, as in PyTorch.

Also: :func:`orthogonal_` (Saxe et al. 2014), :func:`zeros_`, :func:`ones_`, and the naive baselines
used by the studies: :func:`normal_` (N(0, 1), N(0, 0.01²)), :func:`uniform_`,
:func:`uniform_fan_in_` (U[±1/sqrt(n_in)]). :func:`recommended` maps an activation to its
initializer; :func:`get` resolves names, configs and callables. :func:`lsuv_` initializes a
whole model from a batch (layer-sequential unit variance, Mishkin & Matas 2016).

References: Glorot & Bengio (2010), *Understanding the difficulty of training deep feedforward
neural networks*; He, Zhang, Ren & Sun (2015), *Delving deep into rectifiers*; LeCun, Bottou, Orr
& Müller (1998), *Efficient BackProp*; Klambauer, Unterthiner, Mayr & Hochreiter (2017),
*Self-normalizing neural networks*; Saxe, McClelland & Ganguli (2014), *Exact solutions to the
nonlinear dynamics of learning in deep linear neural networks*; Mishkin & Matas (2016), *All
you need is a good init*.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn

__all__ = [
    "DISTRIBUTIONS",
    "MODES",
    "TRUNCATED_NORMAL_STD",
    "Initializer",
    "VarianceScaling",
    "compute_fans",
    "constant_",
    "get",
    "glorot_normal_",
    "glorot_uniform_",
    "he_normal_",
    "he_uniform_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "lecun_normal_",
    "lecun_uniform_",
    "lsuv_",
    "names",
    "normal_",
    "ones_",
    "orthogonal_",
    "recommended",
    "uniform_",
    "uniform_fan_in_",
    "variance_scaling_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

Initializer = Callable[..., torch.Tensor]
"""An initializer: ``f(tensor, *, generator=None) -> tensor``, in place under ``no_grad``."""

TRUNCATED_NORMAL_STD: Final[float] = 0.87962566103423978
"""Standard deviation of N(0, 1) truncated to [-2, 2] (Keras ``VarianceScaling``'s constant)."""

_CUT: Final[float] = 2.0  # truncation point, in units of the pre-truncation std

MODES: Final[tuple[str, ...]] = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS: Final[tuple[str, ...]] = ("truncated_normal", "untruncated_normal", "uniform")
_DISTRIBUTION_ALIASES: Final[dict[str, str]] = {"normal": "untruncated_normal"}


# --------------------------------------------------------------------------- name handling


def _squash(name: str) -> str:
    """Key for lenient name matching: 'HeNormal', 'he-normal', 'he_normal' → 'henormal'."""
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def _choice_error(what: str, got: object, choices: Iterable[str]) -> str:
    """One-line message: ``what must be one of 'a', 'b'; got 'x' (did you mean 'a'?)``."""
    options = list(choices)
    message = f"{what} must be one of {', '.join(repr(c) for c in options)}; got {got!r}"
    if isinstance(got, str):
        by_key = {_squash(c): c for c in options}
        close = difflib.get_close_matches(_squash(got), list(by_key), n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {by_key[close[0]]!r}?)"
    return message


def _resolve(what: str, name: object, canonical: Mapping[str, str], choices: Iterable[str]) -> str:
    """Map a user-spelled name to its canonical name via ``canonical`` (squashed key → name)."""
    if isinstance(name, str) and _squash(name) in canonical:
        return canonical[_squash(name)]
    raise ValueError(_choice_error(what, name, choices))


def _normalise_mode(mode: object) -> str:
    """'fan_in' | 'fan_out' | 'fan_avg', case-insensitive (the seed's TF1 'FAN_AVG' included)."""
    if isinstance(mode, str) and mode.lower() in MODES:
        return mode.lower()
    raise ValueError(_choice_error("mode", mode, MODES))


def _normalise_distribution(distribution: object) -> str:
    """'truncated_normal' | 'untruncated_normal' (alias 'normal') | 'uniform', case-insensitive."""
    if isinstance(distribution, str):
        key = distribution.lower()
        key = _DISTRIBUTION_ALIASES.get(key, key)
        if key in DISTRIBUTIONS:
            return key
    raise ValueError(
        _choice_error("distribution", distribution, (*DISTRIBUTIONS, *_DISTRIBUTION_ALIASES))
    )


def _positive_finite(argument: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{argument} must be a positive finite number; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{argument} must be a positive finite number; got {value!r}")
    return float(value)


def _finite(argument: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{argument} must be a finite number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be a finite number; got {value!r}")
    return float(value)


def _float_tensor(tensor: object, initializer: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{initializer}: tensor must be a torch.Tensor; got {type(tensor).__name__}"
        )
    if not tensor.is_floating_point():
        raise ValueError(
            f"{initializer}: tensor must have a floating-point dtype; got {tensor.dtype}"
        )
    return tensor


# --------------------------------------------------------------------------- fans


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)`` (PyTorch layout).

    Linear ``(out, in)``: fan_in = in, fan_out = out. Conv1d/2d/3d ``(out, in, *kernel)``: the
    receptive field counts, fan_in = in · prod(kernel), fan_out = out · prod(kernel)
    (Glorot & Bengio 2010; He et al. 2015 use n = k² · c for a k×k conv with c input channels).
    """
    dims = tuple(shape)
    if len(dims) < 2:
        raise ValueError(
            f"shape must have at least 2 dimensions (out, in, *kernel) to define fans; got {dims}"
        )
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"shape must contain non-negative integers; got {dims}")
    receptive_field = math.prod(dims[2:])
    return dims[1] * receptive_field, dims[0] * receptive_field


def _fan(shape: Sequence[int], mode: str) -> float:
    """n for ``mode``: fan_in, fan_out or (fan_in + fan_out) / 2."""
    fan_in, fan_out = compute_fans(shape)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    if n <= 0:
        raise ValueError(
            f"shape has {mode} = 0, so no variance can be scaled by it; got {tuple(shape)}"
        )
    return float(n)


# --------------------------------------------------------------------------- variance scaling


@dataclass(frozen=True)
class VarianceScaling:
    """Initializer drawing weights with variance ``scale / n`` (Keras ``VarianceScaling``).

    ``n`` is fan_in, fan_out or (fan_in + fan_out) / 2 for ``mode`` = "fan_in" | "fan_out" |
    "fan_avg" (case-insensitive); ``distribution`` is "truncated_normal" (std corrected by
    1 / 0.87962566103423978, cut at ±2 std), "untruncated_normal" (alias "normal") or "uniform"
    (U[±sqrt(3 · scale / n)]). All three have realised std sqrt(scale / n). Callable as an
    initializer ``(tensor, *, generator=None) -> tensor``.
    """

    scale: float = 1.0
    mode: str = "fan_in"
    distribution: str = "truncated_normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _positive_finite("scale", self.scale))
        object.__setattr__(self, "mode", _normalise_mode(self.mode))
        object.__setattr__(self, "distribution", _normalise_distribution(self.distribution))

    def __call__(
        self, tensor: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return variance_scaling_(
            tensor, self.scale, self.mode, self.distribution, generator=generator
        )

    def std(self, shape: Sequence[int]) -> float:
        """Realised standard deviation of the weights drawn for ``shape``: sqrt(scale / n)."""
        return math.sqrt(self.scale / _fan(shape, self.mode))

    def bound(self, shape: Sequence[int]) -> float:
        """Largest |w| the distribution can draw for ``shape``.

        uniform: sqrt(3 · scale / n); truncated normal: 2 · sqrt(scale / n) / 0.87962566103423978;
        untruncated normal: inf.
        """
        if self.distribution == "uniform":
            return math.sqrt(3.0 * self.scale / _fan(shape, self.mode))
        if self.distribution == "truncated_normal":
            return _CUT * self.std(shape) / TRUNCATED_NORMAL_STD
        return math.inf

    @property
    def name(self) -> str:
        """Preset name when the arguments match one ("he_normal", …), else a descriptive repr."""
        for preset, value in _PRESETS.items():
            if value == self:
                return preset
        return (
            f"variance_scaling(scale={self.scale!r}, mode={self.mode!r}, "
            f"distribution={self.distribution!r})"
        )

    def to_config(self) -> dict[str, Any]:
        """JSON-able dict that :func:`get` (or :meth:`from_config`) turns back into this object."""
        return {
            "name": "variance_scaling",
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VarianceScaling:
        """Inverse of :meth:`to_config`."""
        result = get(dict(config))
        if not isinstance(result, VarianceScaling):
            raise ValueError(
                f"config does not describe a variance-scaling initializer; got {dict(config)!r}"
            )
        return result


def _ndtr(x: float) -> float:
    """Standard normal CDF Φ(x) = erfc(-x / √2) / 2."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _truncated_normal_(
    tensor: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Fill with N(0, sigma²) truncated to [-2 sigma, 2 sigma], exactly, by inverse CDF.

    u ~ U(Φ(-2), Φ(2)), w = sigma · Φ⁻¹(u) (``torch.special.ndtri``); computed in float64 (float32
    on MPS, which has no float64) and copied into ``tensor``'s dtype.
    """
    work = torch.float32 if tensor.device.type == "mps" else torch.float64
    u = torch.empty(tensor.shape, dtype=work, device=tensor.device)
    u.uniform_(_ndtr(-_CUT), _ndtr(_CUT), generator=generator)
    z = torch.special.ndtri(u).clamp_(-_CUT, _CUT)  # clamp only absorbs rounding at the ends
    return tensor.copy_(z.mul_(sigma))


def variance_scaling_(
    tensor: torch.Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill ``tensor`` with weights of variance ``scale / n`` (Keras ``VarianceScaling``).

    n = fan_in, fan_out or (fan_in + fan_out) / 2 (``mode``, case-insensitive, "FAN_AVG" ok).

    - "truncated_normal": N(0, s²) truncated to ±2s, s = sqrt(scale / n) / 0.87962566103423978, so
      the realised std is exactly sqrt(scale / n);
    - "untruncated_normal" (alias "normal"): N(0, scale / n);
    - "uniform": U[-r, r], r = sqrt(3 · scale / n).

    In place, under ``no_grad``; returns ``tensor``. Raises ValueError for a non-positive or
    non-finite ``scale``, an unknown ``mode``/``distribution`` or a shape of rank < 2.
    """
    spec = VarianceScaling(scale, mode, distribution)  # validates and normalises the arguments
    _float_tensor(tensor, "variance_scaling_")
    if tensor.numel() == 0:  # nothing to draw; fans may be 0
        return tensor
    n = _fan(tensor.shape, spec.mode)
    with torch.no_grad():
        if spec.distribution == "uniform":
            limit = math.sqrt(3.0 * spec.scale / n)
            tensor.uniform_(-limit, limit, generator=generator)
        elif spec.distribution == "untruncated_normal":
            tensor.normal_(0.0, math.sqrt(spec.scale / n), generator=generator)
        else:
            _truncated_normal_(tensor, math.sqrt(spec.scale / n) / TRUNCATED_NORMAL_STD, generator)
    return tensor


# --------------------------------------------------------------------------- presets


def glorot_normal_(
    tensor: torch.Tensor, *, mode: str = "fan_avg", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Glorot (Xavier) normal, Glorot & Bengio 2010: realised σ = sqrt(2 / (n_in + n_out)).

    ``variance_scaling_(tensor, 1.0, mode, "truncated_normal")``: truncated at ±2 std with the
    Keras correction (PyTorch's ``xavier_normal_`` draws an untruncated Gaussian of the same σ).
    """
    return variance_scaling_(tensor, 1.0, mode, "truncated_normal", generator=generator)


def glorot_uniform_(
    tensor: torch.Tensor, *, mode: str = "fan_avg", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Glorot (Xavier) uniform, Glorot & Bengio 2010: U[-r, r], r = sqrt(6 / (n_in + n_out)).

    ``variance_scaling_(tensor, 1.0, mode, "uniform")``; the default of TF1's ``tf.layers.dense``.
    """
    return variance_scaling_(tensor, 1.0, mode, "uniform", generator=generator)


def he_normal_(
    tensor: torch.Tensor, *, mode: str = "fan_in", generator: torch.Generator | None = None
) -> torch.Tensor:
    """He (Kaiming) normal, He et al. 2015: realised σ = sqrt(2 / n_in) (ReLU family).

    ``variance_scaling_(tensor, 2.0, mode, "truncated_normal")``. ``mode="fan_avg"`` gives
    σ = sqrt(2 / ((n_in + n_out) / 2)), the seed's ``variance_scaling_initializer(mode='FAN_AVG')``.
    """
    return variance_scaling_(tensor, 2.0, mode, "truncated_normal", generator=generator)


def he_uniform_(
    tensor: torch.Tensor, *, mode: str = "fan_in", generator: torch.Generator | None = None
) -> torch.Tensor:
    """He (Kaiming) uniform, He et al. 2015: U[-r, r], r = sqrt(6 / n_in).

    ``variance_scaling_(tensor, 2.0, mode, "uniform")``.
    """
    return variance_scaling_(tensor, 2.0, mode, "uniform", generator=generator)


def lecun_normal_(
    tensor: torch.Tensor, *, mode: str = "fan_in", generator: torch.Generator | None = None
) -> torch.Tensor:
    """LeCun normal, LeCun et al. 1998: realised σ = sqrt(1 / n_in) (SELU: Klambauer et al. 2017).

    ``variance_scaling_(tensor, 1.0, mode, "truncated_normal")``.
    """
    return variance_scaling_(tensor, 1.0, mode, "truncated_normal", generator=generator)


def lecun_uniform_(
    tensor: torch.Tensor, *, mode: str = "fan_in", generator: torch.Generator | None = None
) -> torch.Tensor:
    """LeCun uniform, LeCun et al. 1998: U[-r, r], r = sqrt(3 / n_in).

    ``variance_scaling_(tensor, 1.0, mode, "uniform")``.
    """
    return variance_scaling_(tensor, 1.0, mode, "uniform", generator=generator)


def uniform_fan_in_(
    tensor: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """U[-1/sqrt(n_in), 1/sqrt(n_in)]: the naive baseline, and PyTorch's Linear/Conv default.

    ``variance_scaling_(tensor, 1/3, "fan_in", "uniform")``: r = sqrt(3 · (1/3) / n_in)
    = 1/sqrt(n_in) (PyTorch's ``kaiming_uniform_(a=sqrt(5))`` has the same bound).
    """
    return variance_scaling_(tensor, 1.0 / 3.0, "fan_in", "uniform", generator=generator)


xavier_normal_ = glorot_normal_
xavier_uniform_ = glorot_uniform_
kaiming_normal_ = he_normal_
kaiming_uniform_ = he_uniform_


def orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(Semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014), as ``torch.nn.init.orthogonal_``.

    The tensor is viewed as (rows, cols) = (out, in · prod(kernel)). A Gaussian A (rows, cols) is
    drawn, the QR decomposition of A (or Aᵀ when rows < cols) computed, and Q's columns multiplied
    by sign(diag(R)) so that Q is Haar-distributed. Then W Wᵀ = gain² I when rows ≤ cols, and
    Wᵀ W = gain² I otherwise. The QR runs in float64; the same generator state gives the same
    matrix as torch's (to float32 rounding).
    """
    gain = _finite("gain", gain)
    _float_tensor(tensor, "orthogonal_")
    if tensor.ndim < 2:
        raise ValueError(
            f"orthogonal_: tensor must have at least 2 dimensions; got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    with torch.no_grad():
        gaussian = tensor.new_empty((rows, cols)).normal_(0.0, 1.0, generator=generator)
        a = gaussian.to(torch.float32 if tensor.device.type == "mps" else torch.float64)
        if rows < cols:
            a = a.t()
        q, r = torch.linalg.qr(a)  # a (m, k) = q (m, k) r (k, k), m >= k
        q = q * torch.diagonal(r).sign()  # sign correction: unique, uniformly distributed Q
        if rows < cols:
            q = q.t()
        tensor.copy_(q.mul_(gain).reshape(tensor.shape))
    return tensor


def zeros_(tensor: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill with 0 (biases). ``generator`` is accepted for the common signature and unused."""
    with torch.no_grad():
        return tensor.zero_()


def ones_(tensor: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill with 1 (BatchNorm γ). ``generator`` is accepted for the common signature and unused."""
    with torch.no_grad():
        return tensor.fill_(1.0)


def constant_(
    tensor: torch.Tensor, value: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with ``value`` (Keras ``Constant``; ``torch.nn.init.constant_``), e.g. negative biases
    that leave ReLU units dead from the first step. ``generator`` is accepted and unused."""
    value = _finite("value", value)
    _float_tensor(tensor, "constant_")
    with torch.no_grad():
        return tensor.fill_(value)


def normal_(
    tensor: torch.Tensor,
    std: float = 1.0,
    mean: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N(mean, std²), shape-blind: the naive baselines N(0, 1) and N(0, 0.01²).

    Their std does not depend on the fan, so the signal's variance is multiplied by n · std² at
    each layer (Glorot & Bengio 2010): it explodes for N(0, 1) and vanishes for N(0, 0.01²).
    """
    std = _positive_finite("std", std)
    mean = _finite("mean", mean)
    _float_tensor(tensor, "normal_")
    with torch.no_grad():
        return tensor.normal_(mean, std, generator=generator)


def uniform_(
    tensor: torch.Tensor, limit: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """U[-limit, limit], shape-blind (std = limit / sqrt(3))."""
    limit = _positive_finite("limit", limit)
    _float_tensor(tensor, "uniform_")
    with torch.no_grad():
        return tensor.uniform_(-limit, limit, generator=generator)


# --------------------------------------------------------------------------- registry


_PRESETS: Final[dict[str, VarianceScaling]] = {
    "glorot_normal": VarianceScaling(1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": VarianceScaling(1.0, "fan_avg", "uniform"),
    "he_normal": VarianceScaling(2.0, "fan_in", "truncated_normal"),
    "he_uniform": VarianceScaling(2.0, "fan_in", "uniform"),
    "lecun_normal": VarianceScaling(1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": VarianceScaling(1.0, "fan_in", "uniform"),
    "uniform_fan_in": VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
}
_PRESETS_WITH_MODE: Final = frozenset(_PRESETS) - {"uniform_fan_in"}

_FUNCTIONS: Final[dict[str, Initializer]] = {
    "constant": constant_,
    "normal": normal_,
    "ones": ones_,
    "orthogonal": orthogonal_,
    "uniform": uniform_,
    "zeros": zeros_,
}

_ALIASES: Final[dict[str, str]] = {
    "xavier_normal": "glorot_normal",
    "xavier_uniform": "glorot_uniform",
    "kaiming_normal": "he_normal",
    "kaiming_uniform": "he_uniform",
}

_CANONICAL: Final[dict[str, str]] = {
    _squash(name): _ALIASES.get(name, name)
    for name in (*_PRESETS, *_FUNCTIONS, *_ALIASES, "variance_scaling")
}


def names() -> list[str]:
    """Names :func:`get` accepts (aliases included), sorted."""
    return sorted({*_PRESETS, *_FUNCTIONS, *_ALIASES, "variance_scaling"})


def _check_kwargs(name: str, kwargs: Mapping[str, Any], accepted: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise TypeError(
            f"initializer {name!r} got unexpected argument(s) {', '.join(unknown)}; "
            f"accepted: {allowed}"
        )


def _build(name: str, kwargs: Mapping[str, Any]) -> Initializer:
    canonical = _resolve("initializer", name, _CANONICAL, names())
    if canonical == "variance_scaling":
        _check_kwargs(canonical, kwargs, ("scale", "mode", "distribution"))
        return VarianceScaling(**kwargs)
    if canonical in _PRESETS:
        _check_kwargs(canonical, kwargs, ("mode",) if canonical in _PRESETS_WITH_MODE else ())
        return dataclasses.replace(_PRESETS[canonical], **kwargs)
    function = _FUNCTIONS[canonical]
    parameters = list(inspect.signature(function).parameters.values())[1:]  # skip `tensor`
    accepted = [p.name for p in parameters if p.name != "generator"]
    _check_kwargs(canonical, kwargs, accepted)
    missing = [
        p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise TypeError(
            f"initializer {canonical!r} needs argument(s) {', '.join(missing)}; pass a config "
            f"such as {{'name': {canonical!r}, {missing[0]!r}: ...}}"
        )
    return functools.partial(function, **kwargs) if kwargs else function


def get(identifier: str | Mapping[str, Any] | Initializer | None) -> Initializer | None:
    """Resolve an initializer identifier (Keras ``initializers.get``).

    - a name, matched leniently ("he_normal", "HeNormal", "he-normal"; aliases "xavier_*",
      "kaiming_*"): variance-scaling presets come back as :class:`VarianceScaling` objects, the
      others ("orthogonal", "zeros", "ones", "constant", "normal", "uniform") as functions;
    - a config dict ``{"name" | "class_name": name, **kwargs}`` (or Keras's nested
      ``{"class_name": ..., "config": {...}}``), e.g. ``{"name": "normal", "std": 0.01}``,
      ``{"name": "he_normal", "mode": "fan_avg"}`` or :meth:`VarianceScaling.to_config`'s output;
    - a callable, returned as is; ``None`` → ``None``.

    Unknown names raise ValueError listing the valid names and the closest match; unknown
    arguments raise TypeError listing the accepted ones.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        return _build(identifier, {})
    if isinstance(identifier, Mapping):
        config = dict(identifier)
        name = config.pop("name", None)
        class_name = config.pop("class_name", None)
        name = name if name is not None else class_name
        if not isinstance(name, str):
            raise ValueError(
                "initializer config must have a 'name' (or 'class_name') string; "
                f"got keys {sorted(identifier)}"
            )
        nested = config.pop("config", None)
        if isinstance(nested, Mapping):
            config.update(nested)
        elif nested is not None:
            raise ValueError(f"initializer config's 'config' must be a dict; got {nested!r}")
        return _build(name, config)
    if callable(identifier):
        return identifier
    raise TypeError(
        "initializer must be a name, a config dict, a callable or None; "
        f"got {type(identifier).__name__}"
    )


# --------------------------------------------------------------------------- recommended


_GLOROT_NORMAL: Final = _PRESETS["glorot_normal"]
_HE_NORMAL: Final = _PRESETS["he_normal"]
_LECUN_NORMAL: Final = _PRESETS["lecun_normal"]

# Default negative slopes: ours/torch's LeakyReLU, torch's PReLU init, RReLU's mean slope.
_DEFAULT_SLOPES: Final[dict[str, float]] = {
    "leaky_relu": 0.01,
    "prelu": 0.25,
    "rrelu": (1.0 / 8.0 + 1.0 / 3.0) / 2.0,
}
_RECOMMENDED_GLOROT: Final = (
    "linear", "identity", "sigmoid", "logistic", "tanh", "softmax", "log_softmax",
    "softsign", "hardtanh", "hardsigmoid",
)  # fmt: skip
_RECOMMENDED_HE: Final = (
    "relu", "relu6", "elu", "celu", "gelu", "silu", "swish", "mish", "hardswish", "softplus",
)  # fmt: skip
_RECOMMENDED_LECUN: Final = ("selu",)
_KNOWN_MODULES: Final = (
    "ReLU", "LeakyReLU", "PReLU", "RReLU", "ReLU6", "ELU", "CELU", "SELU", "GELU", "SiLU",
    "Mish", "Hardswish", "Softplus", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softsign",
    "Hardtanh", "Hardsigmoid", "Identity",
)  # fmt: skip
_RECOMMENDED_NAMES: Final[dict[str, str]] = {
    _squash(n): n
    for n in (*_RECOMMENDED_GLOROT, *_RECOMMENDED_HE, *_RECOMMENDED_LECUN, *_DEFAULT_SLOPES)
}


def _slope_corrected(alpha: float) -> VarianceScaling:
    """He et al. 2015, eq. 15: ½ (1 + α²) n_in Var[w] = 1, i.e. scale = 2 / (1 + α²), fan_in."""
    return VarianceScaling(2.0 / (1.0 + alpha * alpha), "fan_in", "truncated_normal")


def _recommended_for_name(name: str) -> VarianceScaling:
    canonical = _resolve(
        "activation", name, _RECOMMENDED_NAMES, sorted(_RECOMMENDED_NAMES.values())
    )
    if canonical in _DEFAULT_SLOPES:
        return _slope_corrected(_DEFAULT_SLOPES[canonical])
    if canonical in _RECOMMENDED_HE:
        return _HE_NORMAL
    if canonical in _RECOMMENDED_LECUN:
        return _LECUN_NORMAL
    return _GLOROT_NORMAL


def _recommended_for_module(module: nn.Module) -> VarianceScaling:
    # Our activations subclass torch's modules, so isinstance on torch's classes covers both.
    if isinstance(module, nn.LeakyReLU):
        return _slope_corrected(float(module.negative_slope))
    if isinstance(module, nn.PReLU):
        # Per-channel slopes a_c: use the mean of a_c² (the layer's average variance gain).
        mean_square = float(module.weight.detach().double().pow(2).mean())
        return VarianceScaling(2.0 / (1.0 + mean_square), "fan_in", "truncated_normal")
    if isinstance(module, nn.RReLU):
        return _slope_corrected((float(module.lower) + float(module.upper)) / 2.0)
    if isinstance(module, nn.SELU):
        return _LECUN_NORMAL
    if isinstance(
        module,
        nn.ReLU
        | nn.ReLU6
        | nn.ELU
        | nn.CELU
        | nn.GELU
        | nn.SiLU
        | nn.Mish
        | nn.Hardswish
        | nn.Softplus,
    ):
        return _HE_NORMAL
    if isinstance(
        module,
        nn.Sigmoid
        | nn.Tanh
        | nn.Softmax
        | nn.LogSoftmax
        | nn.Softsign
        | nn.Hardtanh
        | nn.Hardsigmoid
        | nn.Identity,
    ):
        return _GLOROT_NORMAL
    name = getattr(module, "name", None)  # an Activation whose torch base is not mapped above
    if isinstance(name, str):
        return _recommended_for_name(name)
    raise ValueError(_choice_error("activation module", type(module).__name__, _KNOWN_MODULES))


def recommended(
    activation: str | nn.Module | type[nn.Module] | Callable[..., Any] | None = None,
) -> VarianceScaling:
    """Initializer that keeps the activation's signal variance constant across layers.

    ==============================================  ===========================================
    activation                                      initializer
    ==============================================  ===========================================
    None, linear/identity, sigmoid/logistic, tanh,  glorot_normal: scale 1, fan_avg
    softmax, softsign, hardtanh, hardsigmoid        (Glorot & Bengio 2010)
    relu, relu6, elu, celu, gelu, silu/swish,       he_normal: scale 2, fan_in
    mish, hardswish, softplus                       (He et al. 2015)
    leaky_relu (α), prelu (a), rrelu (lower,        scale 2 / (1 + α²), fan_in (He et al. 2015,
    upper)                                          eq. 15); rrelu: α = (lower + upper) / 2;
                                                    prelu: mean of a², default a = 0.25
    selu                                            lecun_normal: scale 1, fan_in
                                                    (Klambauer et al. 2017; LeCun et al. 1998)
    ==============================================  ===========================================

    All use the truncated normal with the Keras correction. The factor 4 that goes with Glorot's
    initialization for the logistic (whose slope at 0 is 1/4; Bengio 2012) is not applied: sigmoid
    gets plain Glorot, as in Keras and the seed; tanh too (Géron's first edition put the 4 on tanh,
    an error).

    ``activation`` is a name (matched leniently), an activation module (ours or torch's, e.g.
    ``nn.LeakyReLU(0.2)``, whose parameters are read), a module class (instantiated with its
    defaults), an activation function such as ``torch.relu`` (resolved by
    :func:`steadygrad.activations.get`), or ``None`` (linear).
    """
    if activation is None:
        return _GLOROT_NORMAL
    if isinstance(activation, str):
        return _recommended_for_name(activation)
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        try:
            activation = activation()
        except TypeError as error:
            raise TypeError(
                f"activation class {activation.__name__} cannot be built with its defaults "
                f"({error}); pass an instance"
            ) from error
    if isinstance(activation, nn.Module):
        return _recommended_for_module(activation)
    if callable(activation):
        from steadygrad import activations  # lazy: activations imports this module

        return _recommended_for_module(activations.get(activation))
    raise TypeError(
        "activation must be a name, an nn.Module (or class), an activation function or None; "
        f"got {type(activation).__name__}"
    )


# --------------------------------------------------------------------------- LSUV

_LSUV_LAYERS: Final = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LSUVLayer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


class _StopForward(Exception):
    """Raised by an LSUV hook once the layer being scaled has produced its output."""


def _layer_output(layer: _LSUVLayer, x: torch.Tensor) -> torch.Tensor:
    """The affine output z = W x + b of a Linear/Conv layer on its input ``x``.

    Recomputed from the weights rather than read from the module's output, because a layer such as
    :class:`steadygrad.nn.Dense` applies its activation inside ``forward``.
    """
    weight, bias = layer.weight, layer.bias
    if isinstance(layer, nn.Linear):
        return torch.nn.functional.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)  # type: ignore[no-any-return]


def _batch_input(batch: object) -> torch.Tensor:
    x = batch[0] if isinstance(batch, tuple | list) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            "batch must be a tensor x or a tuple (x, y) whose first item is a tensor; "
            f"got {type(x).__name__}"
        )
    return x


def lsuv_(
    model: nn.Module,
    batch: torch.Tensor | tuple[torch.Tensor, ...],
    tol: float = 0.1,
    max_iter: int = 10,
    *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    r"""Layer-sequential unit-variance initialization, in place (Mishkin & Matas 2016, Alg. 1).

    1. Pre-initialize the weight of every Linear and Conv1d/2d/3d layer with an orthonormal matrix
       (:func:`orthogonal_`, Saxe et al. 2014); biases are left as they are.
    2. For each of those layers L, in the order of the model's forward pass: forward ``batch``,
       take the variance :math:`v = \operatorname{Var}(z_L)` of the layer's affine output
       :math:`z_L = W_L x + b_L` over all its entries (batch, units and positions), and while
       :math:`|v - 1| \ge` ``tol`` rescale :math:`W_L \leftarrow W_L / \sqrt{v}`, at most
       ``max_iter`` times.

    Later layers do not change earlier outputs, so afterwards every layer's output has variance
    within ``tol`` of 1 on ``batch`` (std within ``tol`` too). With a zero bias one rescale
    suffices; a bias makes the variance non-linear in the scale, hence the loop. The forward passes
    run under ``no_grad`` in eval mode (no dropout noise, BatchNorm running statistics untouched);
    the modules' train/eval flags are restored afterwards. A pass stops as soon as the layer being
    scaled has produced its output.

    Args:
        model: any module containing Linear/Conv layers.
        batch: the input x, or a tuple (x, y) whose y is ignored.
        tol: tolerance on the variance, positive.
        max_iter: maximum rescalings per layer, positive.
        generator: :class:`torch.Generator` for the orthonormal draws.

    Returns ``model``. Raises ValueError when the model has no Linear/Conv layer that the forward
    pass reaches, or when a layer's output has zero or non-finite variance (no rescaling can give
    it unit variance: its input is constant, e.g. after dead ReLUs); the layers before it have
    been rescaled by then. Warns (``RuntimeWarning``) when a layer is still outside ``tol`` after
    ``max_iter`` rescalings.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    x = _batch_input(batch)
    tol = _positive_finite("tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")
    candidates: dict[nn.Module, str] = {
        m: name for name, m in model.named_modules() if isinstance(m, _LSUV_LAYERS)
    }
    if not candidates:
        raise ValueError(
            "lsuv_: model has no Linear or Conv1d/2d/3d layer to initialize; "
            f"got {type(model).__name__}"
        )
    modes = {m: m.training for m in model.modules()}
    order: list[_LSUVLayer] = []

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, _LSUV_LAYERS) and module not in order:
            order.append(module)

    try:
        model.eval()
        with torch.no_grad():
            for layer in candidates:
                assert isinstance(layer, _LSUV_LAYERS)
                orthogonal_(layer.weight, generator=generator)
            handles = [layer.register_forward_pre_hook(record) for layer in candidates]
            try:
                model(x)
            finally:
                for handle in handles:
                    handle.remove()
            if not order:
                raise ValueError(
                    "lsuv_: the forward pass reached none of the model's Linear/Conv layers "
                    f"({', '.join(candidates.values())})"
                )
            for layer in order:
                _lsuv_layer(model, x, layer, candidates[layer], tol, max_iter)
    finally:
        for module, training in modes.items():
            module.training = training
    return model


def _lsuv_layer(
    model: nn.Module, x: torch.Tensor, layer: _LSUVLayer, name: str, tol: float, max_iter: int
) -> None:
    """Rescale ``layer.weight`` until Var(z) is within ``tol`` of 1 (Mishkin & Matas 2016)."""
    import contextlib  # local: keeps the module namespace to the initializers
    import warnings

    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(_layer_output(layer, args[0]))
        raise _StopForward

    handle = layer.register_forward_pre_hook(capture)
    try:
        variance = math.nan
        for iteration in range(max_iter + 1):
            captured.clear()
            with contextlib.suppress(_StopForward):
                model(x)
            z = captured[0]  # (batch, out, *positions)
            variance = float(z.double().var(correction=0))
            if not (math.isfinite(variance) and variance > 0):
                raise ValueError(
                    f"lsuv_: layer {name!r} output has variance {variance:g} on the batch, "
                    "which no rescaling of its weights makes 1 (is its input constant, e.g. "
                    "behind dead ReLUs?)"
                )
            if abs(variance - 1.0) < tol or iteration == max_iter:
                break
            layer.weight.div_(math.sqrt(variance))
    finally:
        handle.remove()
    if abs(variance - 1.0) >= tol:
        warnings.warn(
            f"lsuv_: layer {name!r} output variance is {variance:.4g} after max_iter={max_iter} "
            f"rescalings, not within tol={tol:g} of 1",
            RuntimeWarning,
            stacklevel=3,
        )
