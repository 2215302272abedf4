"""Activation modules that know their derivative, where they saturate, and how to initialize.

Each activation subclasses PyTorch's own module (so values, gradients, ``state_dict`` and
``inplace`` behave exactly as torch's) and the mixin :class:`Activation`, which adds

- ``name``: the registry name ("relu", "leaky_relu", …);
- ``derivative(z)``: f'(z) in closed form, equal to autograd's gradient. Where torch's autograd
  gives NaN for a non-NaN input (GELU and SiLU at ±inf: ``inf · 0`` inside their backward), the
  limit is returned instead (0 at -inf, 1 at +inf). A NaN input gives NaN (torch's backward gives a
  number for some activations, e.g. 1 for ReLU at NaN);
- ``saturation_region(fraction=0.1) -> (lo, hi)``: the unit is *saturated* when z < lo or z > hi,
  i.e. where f'(z) < fraction · max f' (sup f' where the max is not attained). Piecewise-linear
  units (ReLU, leaky ReLU, PReLU, RReLU, identity) have a constant slope on each side and do not
  saturate: (-inf, inf); ReLU's zero side is reported by ``dead_below`` instead. The logistic and
  tanh saturate on both sides, ELU/SELU/GELU/SiLU/softplus only on the negative side;
- ``dead_below``: the z below which f'(z) is exactly 0 (ReLU: 0.0; otherwise None);
- ``recommended_init``: :func:`steadygrad.init.recommended` for this module.

:func:`get` builds an activation from a name (with keyword arguments), a module instance or
class (ours or torch's), a torch function (``torch.relu``, ``F.elu``, …) or None (identity, as
Keras's ``activations.get(None)`` is linear). :func:`from_module` converts a torch activation
module to ours.

References: Nair & Hinton (2010) ReLU; Maas, Hannun & Ng (2013) leaky ReLU; He et al. (2015)
PReLU; Xu et al. (2015) RReLU; Clevert, Unterthiner & Hochreiter (2016) ELU; Klambauer et al.
(2017) SELU; Hendrycks & Gimpel (2016) GELU; Elfwing et al. (2018) / Ramachandran et al. (2017)
SiLU/swish.
"""

from __future__ import annotations

import abc
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import init as _init
from steadygrad.init import _choice_error, _resolve, _squash

__all__ = [
    "ELU",
    "GELU",
    "SELU",
    "Activation",
    "Identity",
    "LeakyReLU",
    "PReLU",
    "RReLU",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "from_module",
    "get",
    "names",
]

_INF: Final = math.inf


def _keep_nan(z: torch.Tensor, derivative: torch.Tensor) -> torch.Tensor:
    """NaN where the input is NaN, ``derivative`` elsewhere."""
    return torch.where(torch.isnan(z), z, derivative)


def _check_fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number in (0, 1); got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
    return float(fraction)


def _number(activation: str, argument: str, value: object, *, positive: bool = False) -> float:
    allowed = "a positive finite number" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{activation} {argument} must be {allowed}; got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{activation} {argument} must be {allowed}; got {value!r}")
    return float(value)


class Activation(nn.Module, metaclass=abc.ABCMeta):
    """Mixin declaring what steadygrad needs to know about an activation (see module docstring).

    Concrete classes list it first and torch's module second: ``class ReLU(Activation, nn.ReLU)``.
    """

    name: ClassVar[str]

    @property
    def dead_below(self) -> float | None:
        """z below which f'(z) == 0 exactly (a unit is dead when every sample is below)."""
        return None

    @property
    def recommended_init(self) -> _init.VarianceScaling:
        """The variance-scaling initializer :func:`steadygrad.init.recommended` gives this unit."""
        return _init.recommended(self)

    @abc.abstractmethod
    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """f'(z), elementwise, in closed form."""

    def saturation_region(self, fraction: float = 0.1) -> tuple[float, float]:
        """(lo, hi): saturated where z < lo or z > hi, i.e. f'(z) < fraction · max f'."""
        return self._saturation_region(_check_fraction(fraction))

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return (-_INF, _INF)  # piecewise linear: constant slope on each side


# --------------------------------------------------------------------------- saturation solvers


def _exp_linear_region(negative: float, positive: float, fraction: float) -> tuple[float, float]:
    """Region for f'(z) = negative · e^z (z ≤ 0), positive (z > 0) — ELU, SELU.

    max f' = M = max(negative, positive); saturated below lo = ln(fraction · M / negative) (capped
    at 0: if even f'(0⁻) is below the threshold the whole negative side is), and above 0 only when
    positive < fraction · M.
    """
    threshold = fraction * max(negative, positive)
    lo = min(math.log(threshold / negative), 0.0)
    hi = _INF if positive >= threshold else 0.0
    return lo, hi


def _golden_argmax(f: Callable[[float], float], a: float, b: float) -> float:
    """Argmax of a unimodal f on [a, b] by golden-section search (to ~1e-12)."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    while b - a > 1e-12:
        if f(c) > f(d):
            b, d = d, c
            c = b - inv_phi * (b - a)
        else:
            a, c = c, d
            d = a + inv_phi * (b - a)
    return (a + b) / 2.0


def _bisect_root(g: Callable[[float], float], a: float, b: float) -> float:
    """Root of g on [a, b] where g(a) < 0 < g(b) or g(a) > 0 > g(b), by bisection."""
    ga = g(a)
    for _ in range(200):
        mid = (a + b) / 2.0
        if mid in (a, b):
            break
        gm = g(mid)
        if (gm < 0) == (ga < 0):
            a, ga = mid, gm
        else:
            b = mid
    return (a + b) / 2.0


def _gelu_prime(z: float) -> float:
    """GELU'(z) = Φ(z) + z φ(z) (Hendrycks & Gimpel 2016)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0)) + z * math.exp(-0.5 * z * z) / math.sqrt(
        2.0 * math.pi
    )


_K: Final = math.sqrt(2.0 / math.pi)
_KAPPA: Final = 0.044715


def _gelu_tanh_prime(z: float) -> float:
    """d/dz ½ z (1 + tanh(k (z + 0.044715 z³))), k = sqrt(2/π)."""
    t = math.tanh(_K * (z + _KAPPA * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _K * (1.0 + 3.0 * _KAPPA * z * z)


def _silu_prime(z: float) -> float:
    """SiLU'(z) = σ(z) (1 + z (1 - σ(z)))."""
    s = 1.0 / (1.0 + math.exp(-z))
    return s * (1.0 + z * (1.0 - s))


_SMOOTH_PRIMES: Final[dict[str, Callable[[float], float]]] = {
    "gelu": _gelu_prime,
    "gelu_tanh": _gelu_tanh_prime,
    "silu": _silu_prime,
}


@functools.lru_cache(maxsize=64)
def _smooth_region(kind: str, fraction: float) -> tuple[float, float]:
    """Region for GELU/SiLU-like f': min at z_min < 0, max M at z_max > 0, f' → 0 at -∞, → 1 at +∞.

    f' < 0 < fraction · M left of z_min and f' increases on [z_min, z_max], so lo is the one root
    of f' = fraction · M there; right of z_max f' decreases to 1, so hi = inf unless
    fraction · M > 1.
    """
    prime = _SMOOTH_PRIMES[kind]
    z_max = _golden_argmax(prime, 0.0, 8.0)
    z_min = _golden_argmax(lambda z: -prime(z), -8.0, 0.0)
    threshold = fraction * prime(z_max)
    lo = _bisect_root(lambda z: prime(z) - threshold, z_min, z_max)
    hi = _INF if threshold <= 1.0 else _bisect_root(lambda z: prime(z) - threshold, z_max, 40.0)
    return lo, hi


# --------------------------------------------------------------------------- activations


class ReLU(Activation, nn.ReLU):
    """ReLU(z) = max(0, z) (Nair & Hinton 2010). f' = 1 for z > 0, 0 for z ≤ 0 (torch: 0 at 0)."""

    name: ClassVar[str] = "relu"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    @property
    def dead_below(self) -> float | None:
        return 0.0

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return _keep_nan(z, (z > 0).to(z.dtype))


class LeakyReLU(Activation, nn.LeakyReLU):
    """Leaky ReLU(z) = max(α z, z) for 0 ≤ α ≤ 1 (Maas et al. 2013; the seed's α = 0.01).

    ``alpha`` is torch's ``negative_slope``. f' = 1 for z > 0, α for z ≤ 0.
    """

    name: ClassVar[str] = "leaky_relu"

    def __init__(self, alpha: float = 0.01, inplace: bool = False) -> None:
        super().__init__(negative_slope=_number("leaky_relu", "alpha", alpha), inplace=inplace)

    @property
    def alpha(self) -> float:
        """Slope for z < 0 (torch's ``negative_slope``)."""
        return float(self.negative_slope)

    @property
    def dead_below(self) -> float | None:
        return 0.0 if self.alpha == 0.0 else None

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return _keep_nan(z, torch.ones_like(z).masked_fill_(z <= 0, self.alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class ELU(Activation, nn.ELU):
    """ELU(z) = z for z > 0, α (e^z − 1) for z ≤ 0, α > 0 (Clevert et al. 2016).

    f' = 1 for z > 0, α e^z for z ≤ 0; saturates for z < ln(fraction · max(1, α) / α).
    """

    name: ClassVar[str] = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha=_number("elu", "alpha", alpha, positive=True), inplace=inplace)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        negative = self.alpha * torch.exp(torch.clamp(z, max=0.0))
        return _keep_nan(z, torch.where(z > 0, torch.ones_like(z), negative))

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return _exp_linear_region(float(self.alpha), 1.0, fraction)


_SELU_ALPHA: Final = 1.6732632423543772848170429916717
_SELU_SCALE: Final = 1.0507009873554804934193349852946


class SELU(Activation, nn.SELU):
    """SELU(z) = λ z for z > 0, λ α (e^z − 1) for z ≤ 0 (Klambauer et al. 2017).

    λ ≈ 1.0507, α ≈ 1.6733; f' = λ for z > 0, λ α e^z for z ≤ 0 (max λα at 0⁻); saturates for
    z < ln(fraction).
    """

    name: ClassVar[str] = "selu"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        negative = _SELU_ALPHA * torch.exp(torch.clamp(z, max=0.0))
        return _keep_nan(z, _SELU_SCALE * torch.where(z > 0, torch.ones_like(z), negative))

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return _exp_linear_region(_SELU_SCALE * _SELU_ALPHA, _SELU_SCALE, fraction)


class PReLU(Activation, nn.PReLU):
    """PReLU(z) = max(0, z) + a · min(0, z) with learned a (He et al. 2015), one a per channel
    (dim 1) when ``num_parameters > 1``. f' = 1 for z > 0, a for z ≤ 0.
    """

    name: ClassVar[str] = "prelu"

    def __init__(self, num_parameters: int = 1, init: float = 0.25) -> None:
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, int):
            raise TypeError(f"prelu num_parameters must be a positive int; got {num_parameters!r}")
        if num_parameters < 1:
            raise ValueError(f"prelu num_parameters must be a positive int; got {num_parameters!r}")
        super().__init__(num_parameters=num_parameters, init=_number("prelu", "init", init))

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        slope = self.weight.detach().to(dtype=z.dtype, device=z.device)
        if slope.numel() == 1:
            slope = slope.reshape(())
        elif z.ndim >= 2 and z.shape[1] == slope.numel():
            slope = slope.view(1, -1, *([1] * (z.ndim - 2)))  # (1, C, 1, ...): channel dim 1
        else:  # torch's forward refuses this input too
            raise ValueError(
                f"prelu with num_parameters={slope.numel()} needs z with that many channels in "
                f"dim 1; got shape {tuple(z.shape)}"
            )
        return _keep_nan(z, torch.where(z > 0, torch.ones_like(z), slope))


class RReLU(Activation, nn.RReLU):
    """Randomized leaky ReLU (Xu et al. 2015): slope a ~ U(lower, upper) per element in training,
    a = (lower + upper) / 2 in eval. ``derivative`` gives the eval-mode (mean-slope) f'.
    """

    name: ClassVar[str] = "rrelu"

    def __init__(
        self, lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0, inplace: bool = False
    ) -> None:
        lower = _number("rrelu", "lower", lower)
        upper = _number("rrelu", "upper", upper)
        if lower > upper:
            raise ValueError(f"rrelu lower must be <= upper; got lower={lower}, upper={upper}")
        super().__init__(lower=lower, upper=upper, inplace=inplace)

    @property
    def alpha(self) -> float:
        """Mean negative slope (lower + upper) / 2, the eval-mode slope."""
        return (float(self.lower) + float(self.upper)) / 2.0

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return _keep_nan(z, torch.ones_like(z).masked_fill_(z <= 0, self.alpha))


_GELU_APPROXIMATIONS: Final = ("none", "tanh")


class GELU(Activation, nn.GELU):
    """GELU(z) = z Φ(z) (Hendrycks & Gimpel 2016); ``approximate="tanh"``:
    ½ z (1 + tanh(sqrt(2/π) (z + 0.044715 z³))).

    f' = Φ(z) + z φ(z): max ≈ 1.129 at z = √2, min ≈ −0.129 at −√2, → 0 at −∞, → 1 at +∞.
    """

    name: ClassVar[str] = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in _GELU_APPROXIMATIONS:
            raise ValueError(_choice_error("gelu approximate", approximate, _GELU_APPROXIMATIONS))
        super().__init__(approximate=approximate)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            t = torch.tanh(_K * (z + _KAPPA * z * z * z))
            left = 0.5 * (1.0 + t)
            right = 0.5 * z * (1.0 - t * t) * _K * (1.0 + 3.0 * _KAPPA * z * z)
            # |t| == 1 in floating point: the true term is below rounding, but inf · 0 gives NaN.
            right = torch.where(t.abs() == 1.0, torch.zeros_like(right), right)
            return _keep_nan(z, left + right)
        cdf = 0.5 * (1.0 + torch.erf(z * math.sqrt(0.5)))
        z_pdf = z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        z_pdf = torch.where(torch.isinf(z), torch.zeros_like(z), z_pdf)  # limit, not inf · 0
        return _keep_nan(z, cdf + z_pdf)

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return _smooth_region("gelu_tanh" if self.approximate == "tanh" else "gelu", fraction)


class SiLU(Activation, nn.SiLU):
    """SiLU / swish(z) = z σ(z) (Elfwing et al. 2018; Ramachandran et al. 2017).

    f' = σ(z) (1 + z (1 − σ(z))): max ≈ 1.0998 at z ≈ 2.40, min ≈ −0.0998 at z ≈ −2.40.
    """

    name: ClassVar[str] = "silu"

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        prime = s * (1.0 + z * (1.0 - s))
        prime = torch.where(torch.isinf(z), (z > 0).to(z.dtype), prime)  # limits 0 and 1
        return _keep_nan(z, prime)

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return _smooth_region("silu", fraction)


class Sigmoid(Activation, nn.Sigmoid):
    """Logistic σ(z) = 1 / (1 + e^−z). f' = σ (1 − σ), max 1/4 at 0.

    f' < fraction / 4 ⇔ |z| > 2 artanh(sqrt(1 − fraction)) (≈ 3.64 for fraction 0.1).
    """

    name: ClassVar[str] = "sigmoid"

    def __init__(self) -> None:
        super().__init__()

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return (1.0 - s) * s

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        hi = 2.0 * math.atanh(math.sqrt(1.0 - fraction))
        return -hi, hi


class Tanh(Activation, nn.Tanh):
    """tanh(z). f' = 1 − tanh², max 1 at 0; f' < fraction ⇔ |z| > artanh(sqrt(1 − fraction))
    (≈ 1.82 for fraction 0.1).
    """

    name: ClassVar[str] = "tanh"

    def __init__(self) -> None:
        super().__init__()

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(z)
        return 1.0 - t * t

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        hi = math.atanh(math.sqrt(1.0 - fraction))
        return -hi, hi


class Softplus(Activation, nn.Softplus):
    """softplus(z) = ln(1 + e^{βz}) / β, linear where βz > threshold (torch's convention).

    f' = σ(βz) (1 above the threshold), sup 1; f' < fraction ⇔ z < logit(fraction) / β.
    """

    name: ClassVar[str] = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__(
            beta=_number("softplus", "beta", beta, positive=True),
            threshold=_number("softplus", "threshold", threshold),
        )

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        scaled = z * self.beta
        return torch.where(scaled > self.threshold, torch.ones_like(z), torch.sigmoid(scaled))

    def _saturation_region(self, fraction: float) -> tuple[float, float]:
        return math.log(fraction / (1.0 - fraction)) / float(self.beta), _INF


class Identity(Activation, nn.Identity):
    """Identity (linear) f(z) = z, f' = 1."""

    name: ClassVar[str] = "identity"

    def __init__(self) -> None:
        super().__init__()

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return _keep_nan(z, torch.ones_like(z))


# --------------------------------------------------------------------------- registry

_CLASSES: Final[dict[str, type[Activation]]] = {
    cls.name: cls
    for cls in (
        ReLU, LeakyReLU, ELU, SELU, PReLU, RReLU, GELU, SiLU, Sigmoid, Tanh, Softplus, Identity,
    )
}  # fmt: skip
_ALIASES: Final[dict[str, str]] = {"swish": "silu", "logistic": "sigmoid", "linear": "identity"}
_CANONICAL: Final[dict[str, str]] = {
    _squash(name): _ALIASES.get(name, name) for name in (*_CLASSES, *_ALIASES)
}

# Torch functions → our modules, with the public spelling used in error messages
# (F.relu is not torch.relu, F.sigmoid is not torch.sigmoid).
_FUNCTION_TABLE: Final[tuple[tuple[str, Callable[..., Any], type[Activation]], ...]] = (
    ("torch.relu", torch.relu, ReLU),
    ("torch.nn.functional.relu", F.relu, ReLU),
    ("torch.nn.functional.leaky_relu", F.leaky_relu, LeakyReLU),
    ("torch.nn.functional.elu", F.elu, ELU),
    ("torch.selu", torch.selu, SELU),
    ("torch.nn.functional.selu", F.selu, SELU),
    ("torch.prelu", torch.prelu, PReLU),
    ("torch.nn.functional.rrelu", F.rrelu, RReLU),
    ("torch.nn.functional.gelu", F.gelu, GELU),
    ("torch.nn.functional.silu", F.silu, SiLU),
    ("torch.sigmoid", torch.sigmoid, Sigmoid),
    ("torch.nn.functional.sigmoid", F.sigmoid, Sigmoid),
    ("torch.special.expit", torch.special.expit, Sigmoid),
    ("torch.tanh", torch.tanh, Tanh),
    ("torch.nn.functional.tanh", F.tanh, Tanh),
    ("torch.nn.functional.softplus", F.softplus, Softplus),
)
_FUNCTIONS: Final[dict[Callable[..., Any], type[Activation]]] = {
    function: cls for _, function, cls in _FUNCTION_TABLE
}
_FUNCTION_NAMES: Final = tuple(public for public, _, _ in _FUNCTION_TABLE)


def names() -> list[str]:
    """Names :func:`get` accepts (aliases "swish", "logistic", "linear" included), sorted."""
    return sorted((*_CLASSES, *_ALIASES))


def _construct(cls: type[Activation], kwargs: Mapping[str, Any]) -> Activation:
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"activation {cls.name!r} got unexpected argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    return cls(**kwargs)


def from_module(module: nn.Module) -> Activation | None:
    """Our equivalent of a torch activation module (same parameters and train/eval mode), else None.

    Ours are returned as is. A PReLU's ``weight`` Parameter is shared, not copied, so that the
    converted module's ``derivative`` follows training.
    """
    if isinstance(module, Activation):
        return module
    converted: Activation
    if isinstance(module, nn.LeakyReLU):
        converted = LeakyReLU(float(module.negative_slope), module.inplace)
    elif isinstance(module, nn.ReLU):
        converted = ReLU(module.inplace)
    elif isinstance(module, nn.ELU):
        converted = ELU(float(module.alpha), module.inplace)
    elif isinstance(module, nn.SELU):
        converted = SELU(module.inplace)
    elif isinstance(module, nn.PReLU):
        converted = PReLU(module.num_parameters)
        converted.weight = module.weight
    elif isinstance(module, nn.RReLU):
        converted = RReLU(float(module.lower), float(module.upper), module.inplace)
    elif isinstance(module, nn.GELU):
        converted = GELU(module.approximate)
    elif isinstance(module, nn.SiLU):
        converted = SiLU(module.inplace)
    elif isinstance(module, nn.Sigmoid):
        converted = Sigmoid()
    elif isinstance(module, nn.Tanh):
        converted = Tanh()
    elif isinstance(module, nn.Softplus):
        converted = Softplus(float(module.beta), float(module.threshold))
    elif isinstance(module, nn.Identity):
        converted = Identity()
    else:
        return None
    converted.train(module.training)
    return converted


_TORCH_MODULES: Final = (
    "ReLU", "LeakyReLU", "ELU", "SELU", "PReLU", "RReLU", "GELU", "SiLU", "Sigmoid", "Tanh",
    "Softplus", "Identity",
)  # fmt: skip


def _convert(module: nn.Module) -> Activation:
    converted = from_module(module)
    if converted is None:
        raise ValueError(_choice_error("activation module", type(module).__name__, _TORCH_MODULES))
    return converted


def get(
    name: str | nn.Module | type[nn.Module] | Callable[..., Any] | None, **kwargs: Any
) -> Activation:
    """Build an activation module.

    ``name`` is a registry name, matched leniently ("leaky_relu", "LeakyReLU", "leaky-relu";
    aliases "swish", "logistic", "linear"), built with ``kwargs`` (e.g. ``get("elu", alpha=0.5)``);
    an activation class, ours or torch's (``get(nn.LeakyReLU, negative_slope=0.2)``: torch's
    arguments), built with ``kwargs``; a module instance (ours returned as is, torch's converted by
    :func:`from_module`); a torch function (``torch.relu``, ``F.elu``, …) mapped to our module and
    built with ``kwargs``; or None → :class:`Identity`.

    Unknown names raise ValueError listing the valid names and the closest match; unknown keyword
    arguments raise TypeError naming the activation and its accepted arguments.
    """
    if name is None:
        return _construct(Identity, kwargs)
    if isinstance(name, str):
        canonical = _resolve("activation", name, _CANONICAL, names())
        return _construct(_CLASSES[canonical], kwargs)
    if isinstance(name, nn.Module):
        if kwargs:
            raise TypeError(
                f"activation {type(name).__name__} is already built; got keyword argument(s) "
                f"{', '.join(sorted(kwargs))}, which only a name or a class accepts"
            )
        return _convert(name)
    if isinstance(name, type) and issubclass(name, nn.Module):
        if issubclass(name, Activation):
            return _construct(name, kwargs)
        return _convert(name(**kwargs))
    if callable(name):
        try:
            cls = _FUNCTIONS.get(name)
        except TypeError:  # unhashable callable
            cls = None
        if cls is None:
            described = getattr(name, "__qualname__", None) or type(name).__name__
            raise ValueError(_choice_error("activation function", described, _FUNCTION_NAMES))
        return _construct(cls, kwargs)
    raise TypeError(
        "activation must be a name, an nn.Module instance or class, a torch function or None; "
        f"got {type(name).__name__}"
    )
