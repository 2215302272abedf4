"""Findings: what the doctor concludes from the monitor's per-layer statistics.

Each rule reads the :class:`~steadygrad.monitor.LayerStats` of the probe (one forward and backward
at the model's current weights), the statistics after the probe's training steps and the
update/weight ratios of those steps, compares them with the thresholds of
:mod:`steadygrad.doctor._thresholds`, and writes a :class:`Finding` with the numbers, the
mechanism and a fix, in words and as a machine-applicable remedy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn

from steadygrad import activations, init
from steadygrad.doctor import _thresholds as T
from steadygrad.monitor import LayerStats

KINDS: Final[tuple[str, ...]] = (
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
"""Finding kinds, in the order the doctor ranks them within a severity: causes before the
symptoms they produce (saturated or dead units make gradients vanish; a mismatched initializer is
reported after the drift it explains)."""

SEVERITIES: Final[tuple[str, ...]] = ("critical", "warning", "info")
"""Severities, most severe first. ``info`` findings do not make a model unhealthy."""

ACTIONS: Final[tuple[str, ...]] = (
    "replace_activation",
    "insert_batchnorm",
    "reinit",
    "reset_bias",
    "lsuv",
    "lower_lr",
)
"""Remedy actions :func:`~steadygrad.doctor.treat` can apply, in the order it applies them."""

Remedy = dict[str, Any]
"""A machine-applicable fix: ``{"action": one of ACTIONS, ...}`` (see docs/doctor.md)."""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem.

    ``kind`` (one of :data:`KINDS`), ``severity`` (``"critical"`` | ``"warning"`` | ``"info"``),
    ``layers`` (module paths affected), ``evidence`` (the measured numbers), ``explanation`` (the
    mechanism, with references), ``fix`` (what to do, in words), ``remedy`` (the same as a dict
    :func:`~steadygrad.doctor.treat` applies, or None when no automatic fix exists), ``numbers``
    (the measurements behind ``evidence``, JSON-able).
    """

    kind: str
    severity: str
    layers: list[str]
    evidence: str
    explanation: str
    fix: str
    remedy: Remedy | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (non-finite numbers become None)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "layers": list(self.layers),
            "evidence": self.evidence,
            "explanation": self.explanation,
            "fix": self.fix,
            "remedy": _jsonable(self.remedy),
            "numbers": _jsonable(self.numbers),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 2) -> str:
    """``1.5e-32``, ``0.61``, ``16``: ``digits`` significant digits; ``—`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


def span(names: Sequence[str]) -> str:
    """``hidden1, hidden2`` or ``hidden1 … hidden30 (30 layers)``."""
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} layers)"


def remedy_text(remedy: Remedy) -> str:
    """A remedy as JSON, its layer list shortened with :func:`span` for display."""
    shown = {
        key: (span(value) if key == "layers" and isinstance(value, list) else value)
        for key, value in remedy.items()
    }
    return json.dumps(shown, ensure_ascii=False)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# --------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """Everything the rules read: the probe's statistics and the training steps' outcome."""

    layers: list[LayerStats]  # the probe at the model's weights (step 0)
    trained: list[LayerStats] | None  # the probe after the training steps (None: none or diverged)
    update_ratios: dict[str, list[float]]  # layer → ‖ΔW‖/‖W‖ of each training step
    losses: list[float]  # loss before each step, then after the last
    diverged_at: int | None  # first step whose loss was not finite
    steps: int
    lr: float
    units: dict[str, int]  # layer → output units (rows of its weight)
    bias_mean: dict[str, float]  # layer → mean of its bias (layers with a bias)
    normalized: bool  # the model has BatchNorm/LayerNorm/GroupNorm layers

    @property
    def depth(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return [s.name for s in self.layers]


def _grad_profile(layers: Sequence[LayerStats]) -> tuple[float, float, float] | None:
    """(grad_out_std of layer 1, of layer L, ratio 1/L), or None when not measurable."""
    first, last = layers[0].grad_out_std, layers[-1].grad_out_std
    if len(layers) < 2 or not (_finite(first) and _finite(last)) or not last:
        return None
    assert first is not None and last is not None
    return first, last, first / last


def _forward_profile(layers: Sequence[LayerStats]) -> tuple[float, float, float] | None:
    """(pre_std of layer 1, of layer L, ratio L/1), or None when not measurable."""
    first, last = layers[0].pre_std, layers[-1].pre_std
    if len(layers) < 2 or not (_finite(first) and _finite(last)) or not first:
        return None
    assert first is not None and last is not None
    return first, last, last / first


def grad_ratio(layers: Sequence[LayerStats]) -> float | None:
    """grad_out_std(layer 1) / grad_out_std(layer L): < 1 vanishing, > 1 exploding."""
    profile = _grad_profile(layers)
    return None if profile is None else profile[2]


def forward_ratio(layers: Sequence[LayerStats]) -> float | None:
    """pre_std(layer L) / pre_std(layer 1): < 1 the forward signal shrinks, > 1 it grows."""
    profile = _forward_profile(layers)
    return None if profile is None else profile[2]


def _times(ratio: float) -> str:
    """``×3e-28``, or ``to 0 (float32)`` for a ratio that underflowed."""
    return f"×{fmt(ratio, 1)}" if ratio > 0 else "to 0 (below float32 range)"


def _per_layer(ratio: float, depth: int) -> float:
    """Geometric mean factor per layer: ratio^(1 / (depth − 1))."""
    if ratio <= 0 or depth < 2:
        return 0.0
    return math.exp(math.log(ratio) / (depth - 1))


# --------------------------------------------------------------------------- texts

_EXPLAIN: Final[dict[str, str]] = {
    "vanishing_gradients": (
        "Back-propagation multiplies the gradient at each layer by the transposed weights and by "
        "the activation's slope f'(z), so its variance changes by about n_out · Var(W) · E[f'(z)²] "
        "per layer; below 1 the factor compounds geometrically and the lower layers receive "
        "almost no gradient, so they stop learning while the top ones still move (Glorot & Bengio "
        "2010; He et al. 2015)."
    ),
    "exploding_gradients": (
        "Back-propagation multiplies the gradient at each layer by the transposed weights and by "
        "the activation's slope, a factor n_out · Var(W) · E[f'(z)²] on its variance; above 1 it "
        "compounds geometrically toward the input, so any learning rate small enough for the "
        "lower layers freezes the upper ones, and a usual one makes the first steps overshoot and "
        "diverge (Glorot & Bengio 2010; He et al. 2015)."
    ),
    "forward_shrinking": (
        "Each layer multiplies the variance of the signal by n_in · Var(W) · E[f(z)²] / Var(z) "
        "(for ReLU, n_in · Var(W) / 2: He et al. 2015, eq. 10); below 1 the activations shrink "
        "geometrically with depth, the output stops depending on the input, and since the "
        "weight gradients are products of activations and back-propagated signals they shrink "
        "too (Glorot & Bengio 2010)."
    ),
    "forward_growing": (
        "Each layer multiplies the variance of the signal by n_in · Var(W) · E[f(z)²] / Var(z) "
        "(for ReLU, n_in · Var(W) / 2: He et al. 2015, eq. 10); above 1 the activations grow "
        "geometrically with depth, the logits become huge, the softmax saturates to one-hot "
        "outputs and the loss and weight gradients blow up or overflow."
    ),
    "saturation": (
        "A sigmoid or tanh unit whose pre-activation is far from 0 sits on a flat part of the "
        "curve, where f'(z) is below a tenth of its maximum: it passes almost no gradient back "
        "and its weights stop learning. Large weights (or unnormalized inputs) put the units "
        "there from the start; Glorot & Bengio (2010, Fig. 2) watched the top hidden sigmoid "
        "layer saturate at 0 during training. ELU does not saturate for z > 0 (Clevert et al. "
        "2015), and BatchNorm keeps z near 0 where the slope is largest (Ioffe & Szegedy 2015)."
    ),
    "dead_units": (
        "A ReLU unit whose pre-activation is negative for every input outputs 0 and has a zero "
        "derivative, so no gradient ever reaches its weights and gradient descent cannot revive "
        "it: the layer loses that capacity for good. Large negative biases or one too-large "
        "update push units there. Leaky ReLU keeps a slope α for z < 0 (Maas et al. 2013), as "
        "ELU does (Clevert et al. 2015), so such units can recover."
    ),
    "init_mismatch": (
        "The initializer that keeps the signal's variance constant depends on the activation: "
        "std sqrt(2 / n_in) for the ReLU family (He et al. 2015), sqrt(2 / (n_in + n_out)) for "
        "tanh, sigmoid and linear layers (Glorot & Bengio 2010), sqrt(1 / n_in) for SELU. A "
        "weight std ρ times the recommended one scales the signal by about ρ per layer, ρ^L over "
        "L layers."
    ),
    "update_ratio": (
        "One SGD step changes the weights by lr · ∇W. When ‖ΔW‖ / ‖W‖ is a sizeable fraction of "
        "1, a single step rewrites the layer: the loss jumps, ReLU units are knocked dead and "
        "training diverges. About 1e-3 per step is the usual healthy value (CS231n's rule of "
        "thumb); the cure is a smaller learning rate, or fixing the gradients' scale first."
    ),
    "non_finite": (
        "Once a NaN or Inf appears in the forward or backward pass it spreads to every parameter "
        "it touches through the next update, and training cannot recover. Overflow from "
        "exploding activations or gradients, a learning rate so large that the weights blow up, "
        "or an invalid operation (log or sqrt of a non-positive number, 0/0) produce it."
    ),
}


# --------------------------------------------------------------------------- rules


@dataclass
class _Drafts:
    """Findings under construction, with the cause analysis shared between rules."""

    evidence: Evidence
    found: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        self.found.append(finding)

    def of_kind(self, kind: str) -> Finding | None:
        for finding in self.found:
            if finding.kind == kind and finding.severity != "info":
                return finding
        return None


def _severity(value: float, warning: float, critical: float, above: bool) -> str | None:
    """critical / warning / None for a value compared with its thresholds."""
    if above:
        return "critical" if value > critical else "warning" if value > warning else None
    return "critical" if value < critical else "warning" if value < warning else None


def _rho(stats: LayerStats) -> float | None:
    """weight_std / recommended_std of a layer, or None."""
    if _finite(stats.weight_std) and _finite(stats.recommended_std) and stats.recommended_std:
        assert stats.weight_std is not None and stats.recommended_std is not None
        return stats.weight_std / stats.recommended_std
    return None


def _init_drift(ev: Evidence) -> tuple[float, list[str], list[str]]:
    """(product of ρ over the layers, layers off by > INIT_LAYER_TOLERANCE, layers outside
    [1/INIT_FACTOR, INIT_FACTOR]) — the drift the initialization predicts, and who causes it."""
    log_sum, deviating, mismatched = 0.0, [], []
    for stats in ev.layers:
        rho = _rho(stats)
        if rho is None or rho <= 0:
            continue
        log_sum += math.log(rho)
        if abs(math.log(rho)) > math.log(T.INIT_LAYER_TOLERANCE):
            deviating.append(stats.name)
        if not (1 / T.INIT_FACTOR <= rho <= T.INIT_FACTOR):
            mismatched.append(stats.name)
    return math.exp(max(min(log_sum, 700.0), -700.0)), deviating, mismatched


def _compounds(product: float) -> bool:
    """The compounded mismatch predicts more than a decade of drift (INIT_DRIFT)."""
    return product > 0 and abs(math.log10(product)) >= math.log10(T.INIT_DRIFT)


def _recommended_names(ev: Evidence, names: Sequence[str]) -> dict[str, str]:
    """layer → name of the recommended initializer for the activation that follows it."""
    by_name = {s.name: s for s in ev.layers}
    return {name: init.recommended(by_name[name].activation).name for name in names}


def _reinit(ev: Evidence, names: Sequence[str]) -> tuple[Remedy, str]:
    """The reinit remedy for ``names`` and its description in words."""
    recommended = _recommended_names(ev, names)
    groups: dict[str, list[str]] = {}
    for layer, initializer in recommended.items():
        groups.setdefault(initializer, []).append(layer)
    words = " and ".join(f"{span(layers)} with {name}" for name, layers in groups.items())
    initializer = next(iter(groups)) if len(groups) == 1 else "recommended"
    remedy: Remedy = {"action": "reinit", "initializer": initializer, "layers": list(names)}
    cites = []
    if any("he" in name for name in groups):
        cites.append("He et al. 2015")
    if any("glorot" in name for name in groups):
        cites.append("Glorot & Bengio 2010")
    cite = f" ({'; '.join(cites)})" if cites else ""
    return remedy, f"re-initialize {words}{cite}"


def _init_cause(ev: Evidence, direction: int) -> tuple[Remedy, str] | None:
    """A reinit remedy when the compounded init mismatch predicts a drift in ``direction``."""
    product, deviating, _ = _init_drift(ev)
    if deviating and _compounds(product) and direction * math.log10(product) > 0:
        remedy, words = _reinit(ev, [s.name for s in ev.layers if _rho(s) is not None])
        return (
            remedy,
            f"the initializer is off by ×{fmt(product, 1)} compounded over the layers: {words}",
        )
    return None


def _fallback(ev: Evidence) -> tuple[Remedy, str]:
    """BatchNorm for an unnormalized model, else LSUV."""
    if not ev.normalized:
        return (
            {"action": "insert_batchnorm"},
            "insert BatchNorm before the activations, which renormalizes every layer's input "
            "(Ioffe & Szegedy 2015)",
        )
    return (
        {"action": "lsuv"},
        "re-initialize layer by layer to unit output variance with LSUV (Mishkin & Matas 2016)",
    )


_SIGMOID_FIX: Final = (
    "the logistic's slope is at most 1/4, so each sigmoid layer divides the gradient by ≥ 4 "
    "whatever the weights: replace sigmoid with ELU and re-initialize with he_normal (Clevert et "
    "al. 2015), or insert BatchNorm before the activations (Ioffe & Szegedy 2015)"
)


def _drift_cause(drafts: _Drafts, direction: int, layers: Sequence[str]) -> tuple[Remedy, str]:
    """The remedy for a signal that shrinks (direction −1) or grows (+1), and the cause in words.

    In order: sigmoid's slope ≤ 1/4 (shrinking only; no initializer fixes it), an initializer
    whose compounded mismatch predicts the drift, saturated or dead units (their finding's
    remedy), else BatchNorm (or LSUV when the model is already normalized).
    """
    ev = drafts.evidence
    acts = {s.activation for s in ev.layers if s.name in layers}
    if direction < 0 and "sigmoid" in acts:
        return {"action": "replace_activation", "from": "sigmoid", "to": "elu"}, _SIGMOID_FIX
    cause = _init_cause(ev, direction)
    if cause is not None:
        return cause
    for kind in ("saturation", "dead_units"):
        found = drafts.of_kind(kind)
        if found is not None and found.remedy is not None:
            return found.remedy, f"caused by the {kind.replace('_', ' ')}: {found.fix}"
    return _fallback(ev)


def _non_finite_at_init(drafts: _Drafts) -> None:
    ev = drafts.evidence
    bad = [s for s in ev.layers if s.nan or s.inf]
    loss0 = ev.losses[0] if ev.losses else math.nan
    if not bad and math.isfinite(loss0):
        return
    where = (
        f"{bad[0].nan} NaN and {bad[0].inf} Inf values in layer {bad[0].depth} ({bad[0].name}) "
        f"at the model's current weights; {len(bad)} layer(s) affected"
        if bad
        else f"the loss is {loss0} at the model's current weights"
    )
    drafts.add(
        Finding(
            kind="non_finite",
            severity="critical",
            layers=[s.name for s in bad],
            evidence=where,
            explanation=_EXPLAIN["non_finite"],
            fix="find the operation that produces it first: if the activations grow with depth, "
            "fix the initialization (see the other findings); else check the input for NaN and "
            "the model for log/sqrt/division of values that can be ≤ 0",
            remedy=None,
            numbers={
                "layer": bad[0].name if bad else None,
                "nan": sum(s.nan for s in bad),
                "inf": sum(s.inf for s in bad),
                "loss": loss0,
            },
        )
    )


def _saturation(drafts: _Drafts) -> None:
    ev = drafts.evidence
    trained = {s.name: s for s in ev.trained or []}
    hits: list[tuple[LayerStats, float, float | None]] = []  # stats, at start, after training
    for stats in ev.layers:
        at_start = stats.saturated if _finite(stats.saturated) else 0.0
        later = trained.get(stats.name)
        after = later.saturated if later is not None and _finite(later.saturated) else None
        assert at_start is not None
        if max(at_start, after or 0.0) > T.SATURATION_WARNING:
            hits.append((stats, at_start, after))
    if not hits:
        return
    worst_value = max(max(h[1], h[2] or 0.0) for h in hits)
    severity = _severity(worst_value, T.SATURATION_WARNING, T.SATURATION_CRITICAL, above=True)
    assert severity is not None
    from_start = any(h[1] > T.SATURATION_WARNING for h in hits)
    if from_start:  # quote the layer most saturated at the model's weights
        first, value, after = max(hits, key=lambda h: h[1])
    else:  # saturation that training brought
        first, value, after = max(hits, key=lambda h: h[2] or 0.0)
    act_name = first.activation or "activation"
    lo, hi = activations.get(act_name).saturation_region() if first.activation else (0.0, 0.0)
    if math.isfinite(hi) and lo == -hi:
        region = f"|z| > {fmt(hi, 3)}"
    elif math.isinf(hi):
        region = f"z < {fmt(lo, 3)}"
    elif math.isinf(lo):
        region = f"z > {fmt(hi, 3)}"
    else:
        region = f"z < {fmt(lo, 3)} or z > {fmt(hi, 3)}"
    training = f"{ev.steps} SGD steps at lr {ev.lr:g}"
    if from_start:
        shown = value
        when = "at the model's current weights"
        if after is not None and round(after, 2) != round(value, 2):
            when += f" ({after:.0%} after {training})"
    else:
        shown = after or 0.0
        when = f"after {training} ({value:.0%} before)"
    evidence = (
        f"{shown:.0%} of the {act_name} pre-activations of layer {first.depth} ({first.name}) "
        f"are in the saturating region {region}, where the slope is < 0.1 × its maximum, {when}; "
        f"{len(hits)} layer(s) above {T.SATURATION_WARNING:.0%}"
    )
    if _finite(first.pre_std):
        evidence += f"; pre-activation std {fmt(first.pre_std)}"
    saturated = [h[0] for h in hits]
    rhos = [_rho(s) for s in saturated]
    big = [s.name for s, r in zip(saturated, rhos, strict=True) if r and r > T.INIT_FACTOR]
    if big:
        remedy, words = _reinit(ev, [s.name for s in ev.layers if _rho(s) is not None])
        worst_rho = max(r for r in rhos if r)
        fix = (
            f"the weights are ×{fmt(worst_rho)} the recommended std, driving z far from 0: {words}"
        )
    elif "sigmoid" in {s.activation for s in saturated}:
        remedy = {"action": "replace_activation", "from": "sigmoid", "to": "elu"}
        fix = (
            "replace sigmoid with ELU and re-initialize with he_normal (Clevert et al. 2015), or "
            "insert BatchNorm before the activations (Ioffe & Szegedy 2015)"
        )
    elif not ev.normalized:
        remedy = {"action": "insert_batchnorm"}
        fix = "insert BatchNorm before the activations to keep z near 0 (Ioffe & Szegedy 2015)"
    else:
        remedy = {"action": "replace_activation", "from": act_name, "to": "elu"}
        fix = f"replace {act_name} with ELU and re-initialize with he_normal (Clevert et al. 2015)"
    drafts.add(
        Finding(
            kind="saturation",
            severity=severity,
            layers=[s.name for s in saturated],
            evidence=evidence,
            explanation=_EXPLAIN["saturation"],
            fix=fix,
            remedy=remedy,
            numbers={
                "saturated": {h[0].name: h[1] for h in hits},
                "saturated_after": {h[0].name: h[2] for h in hits if h[2] is not None},
                "max": worst_value,
                "region": [lo, hi],
            },
        )
    )


def _dead_threshold(units: int | None) -> float:
    """max(DEAD_WARNING, 0.5 + 3 · sqrt(0.25 / units)) (see the thresholds module)."""
    if not units:
        return T.DEAD_WARNING
    return max(T.DEAD_WARNING, 0.5 + T.DEAD_NOISE_SIGMAS * math.sqrt(0.25 / units))


def _dead_units(drafts: _Drafts) -> None:
    ev = drafts.evidence
    trained = {s.name: s for s in ev.trained or []}
    hits: list[tuple[LayerStats, float, float, float]] = []  # stats, at start, after, threshold
    for stats in ev.layers:
        threshold = _dead_threshold(ev.units.get(stats.name))
        start = stats.dead if _finite(stats.dead) else 0.0
        later = trained.get(stats.name)
        after = later.dead if later is not None and _finite(later.dead) else 0.0
        assert start is not None and after is not None
        if max(start, after) > threshold:
            hits.append((stats, start, after, threshold))
    if not hits:
        return
    worst = max(max(h[1], h[2]) for h in hits)
    severity = "critical" if worst > T.DEAD_CRITICAL else "warning"
    appeared = all(h[1] <= h[3] for h in hits)
    if appeared:  # quote the layer that training killed most
        stats, start, after, threshold = max(hits, key=lambda h: h[2])
        shown, when = after, f"after {ev.steps} SGD steps at lr {ev.lr:g} ({start:.0%} before)"
    else:  # quote the layer most dead at the model's weights
        stats, start, after, threshold = max(hits, key=lambda h: h[1])
        shown, when = start, "at the model's current weights"
        if ev.trained is not None and round(after, 2) != round(start, 2):
            when += f" ({after:.0%} after {ev.steps} SGD steps)"
    evidence = (
        f"{shown:.0%} of the units of layer {stats.depth} ({stats.name}) are dead (z ≤ 0 for "
        f"every sample of the batch) {when}; {len(hits)} layer(s) above {threshold:.0%}"
    )
    negative = [
        h[0]
        for h in hits
        if h[0].name in ev.bias_mean
        and _finite(h[0].pre_std)
        and ev.bias_mean[h[0].name] < -T.NEGATIVE_BIAS * (h[0].pre_std or 0.0)
    ]
    p_first = ev.layers[0].pre_std
    starved = [
        h[0]
        for h in hits
        if _finite(p_first)
        and _finite(h[0].pre_std)
        and (h[0].pre_std or 0.0) < T.FORWARD_SHRINK_RATIO * (p_first or 0.0)
    ]
    remedy: Remedy | None
    if negative and not appeared:
        b = ev.bias_mean[negative[0].name]
        evidence += (
            f"; mean bias {fmt(b)} against a pre-activation std of {fmt(negative[0].pre_std)}"
        )
        with_bias = [s.name for s in ev.layers if s.name in ev.bias_mean]
        remedy = {"action": "reset_bias", "layers": with_bias}
        fix = (
            f"the biases push the pre-activations below 0: reset the biases of {span(with_bias)} "
            "to 0"
        )
    elif starved:
        evidence += (
            f"; the forward signal reaching {starved[0].name} has vanished (pre-activation std "
            f"{fmt(starved[0].pre_std)} against {fmt(p_first)} at layer 1), so the biases alone "
            "decide the sign of z for every sample"
        )
        remedy, words = _init_cause(ev, -1) or _fallback(ev)
        fix = f"a symptom of the vanishing signal: {words}"
    elif appeared:
        factor = 10
        remedy = {"action": "lower_lr", "factor": factor}
        fix = (
            f"the units died during training: lower the learning rate ×{factor} (to "
            f"{ev.lr / factor:g}), or use leaky ReLU (Maas et al. 2013)"
        )
    else:
        remedy = {"action": "replace_activation", "from": "relu", "to": "leaky_relu"}
        fix = (
            "replace ReLU with leaky ReLU (α = 0.01, Maas et al. 2013) or ELU (Clevert et al. "
            "2015), re-initialized with He's scale 2 / (1 + α²)"
        )
    drafts.add(
        Finding(
            kind="dead_units",
            severity=severity,
            layers=[h[0].name for h in hits],
            evidence=evidence,
            explanation=_EXPLAIN["dead_units"],
            fix=fix,
            remedy=remedy,
            numbers={
                "dead": {h[0].name: h[1] for h in hits},
                "dead_after": {h[0].name: h[2] for h in hits} if ev.trained is not None else {},
                "max": worst,
            },
        )
    )


def _gradients(drafts: _Drafts) -> None:
    ev = drafts.evidence
    profile = _grad_profile(ev.layers)
    if profile is None:
        return
    g_first, g_last, ratio = profile
    depth = ev.depth
    last, first = ev.layers[-1], ev.layers[0]
    if ratio < T.VANISHING_RATIO:
        kind, direction = "vanishing_gradients", -1
        severity = _severity(ratio, T.VANISHING_RATIO, T.VANISHING_CRITICAL, above=False)
        layers = [
            s.name
            for s in ev.layers
            if _finite(s.grad_out_std) and (s.grad_out_std or 0.0) < T.VANISHING_RATIO * g_last
        ]
        if ratio == 0:
            zero = max(s.depth for s in ev.layers if s.grad_out_std == 0)
            evidence = (
                f"back-propagated gradient std is 0 (to float32 precision) from layer {zero} "
                f"({ev.layers[zero - 1].name}) down to layer 1 ({first.name}), against "
                f"{fmt(g_last)} at layer {depth} ({last.name})"
            )
        else:
            evidence = (
                f"back-propagated gradient std falls ×{fmt(ratio, 1)} from layer {depth} "
                f"({last.name}) to layer 1 ({first.name}): {fmt(g_last)} → {fmt(g_first)}, "
                f"×{fmt(_per_layer(ratio, depth))} per layer"
            )
        forward = forward_ratio(ev.layers)
        if forward is not None and forward < T.FORWARD_SHRINK_RATIO:
            evidence += (
                f"; the forward signal vanishes too: pre-activation std {_times(forward)} from "
                f"layer 1 to layer {depth}"
            )
    elif ratio > T.EXPLODING_RATIO:
        kind, direction = "exploding_gradients", 1
        severity = _severity(ratio, T.EXPLODING_RATIO, T.EXPLODING_CRITICAL, above=True)
        layers = [
            s.name
            for s in ev.layers
            if _finite(s.grad_out_std) and (s.grad_out_std or 0.0) > T.EXPLODING_RATIO * g_last
        ]
        evidence = (
            f"back-propagated gradient std grows ×{fmt(ratio, 1)} from layer {depth} "
            f"({last.name}) to layer 1 ({first.name}): {fmt(g_last)} → {fmt(g_first)}, "
            f"×{fmt(_per_layer(ratio, depth))} per layer"
        )
        forward = forward_ratio(ev.layers)
        if forward is not None and forward > T.FORWARD_GROW_RATIO:
            evidence += (
                f"; the forward signal explodes too: pre-activation std ×{fmt(forward, 1)} from "
                f"layer 1 to layer {depth}"
            )
    else:
        return
    assert severity is not None
    remedy, fix = _drift_cause(drafts, direction, layers)
    drafts.add(
        Finding(
            kind=kind,
            severity=severity,
            layers=layers,
            evidence=evidence,
            explanation=_EXPLAIN[kind],
            fix=fix,
            remedy=remedy,
            numbers={
                "grad_ratio": ratio,
                "grad_out_std_first": g_first,
                "grad_out_std_last": g_last,
                "per_layer": _per_layer(ratio, depth),
                "depth": depth,
            },
        )
    )


def _forward(drafts: _Drafts) -> None:
    ev = drafts.evidence
    profile = _forward_profile(ev.layers)
    if profile is None:
        return
    p_first, p_last, ratio = profile
    depth = ev.depth
    if ratio < T.FORWARD_SHRINK_RATIO:
        kind, direction, verb = "forward_shrinking", -1, "falls"
        severity = _severity(ratio, T.FORWARD_SHRINK_RATIO, T.FORWARD_SHRINK_CRITICAL, False)
        layers = [
            s.name
            for s in ev.layers
            if _finite(s.pre_std) and (s.pre_std or 0.0) < T.FORWARD_SHRINK_RATIO * p_first
        ]
    elif ratio > T.FORWARD_GROW_RATIO:
        kind, direction, verb = "forward_growing", 1, "grows"
        severity = _severity(ratio, T.FORWARD_GROW_RATIO, T.FORWARD_GROW_CRITICAL, True)
        layers = [
            s.name
            for s in ev.layers
            if _finite(s.pre_std) and (s.pre_std or 0.0) > T.FORWARD_GROW_RATIO * p_first
        ]
    else:
        return
    assert severity is not None
    remedy, fix = _drift_cause(drafts, direction, layers)
    drafts.add(
        Finding(
            kind=kind,
            severity=severity,
            layers=layers,
            evidence=(
                f"pre-activation std {verb} {_times(ratio)} from layer 1 ({ev.layers[0].name}) "
                f"to layer {depth} ({ev.layers[-1].name}): {fmt(p_first)} → {fmt(p_last)}, "
                f"×{fmt(_per_layer(ratio, depth))} per layer"
            ),
            explanation=_EXPLAIN[kind],
            fix=fix,
            remedy=remedy,
            numbers={
                "forward_ratio": ratio,
                "pre_std_first": p_first,
                "pre_std_last": p_last,
                "per_layer": _per_layer(ratio, depth),
            },
        )
    )


def _reinit_cause(drafts: _Drafts) -> Finding | None:
    """The exploding/growing finding whose remedy re-initializes, if any."""
    for kind in ("exploding_gradients", "forward_growing"):
        finding = drafts.of_kind(kind)
        if finding is not None and finding.remedy and finding.remedy["action"] == "reinit":
            return finding
    return None


def _non_finite_in_training(drafts: _Drafts) -> None:
    ev = drafts.evidence
    if ev.diverged_at is None or drafts.of_kind("non_finite") is not None:
        return
    cause = _reinit_cause(drafts)
    worst = _max_update(ev)
    evidence = f"the loss becomes {ev.losses[-1]} at SGD step {ev.diverged_at} (lr {ev.lr:g})"
    if worst is not None:
        evidence += f"; the update/weight ratio reached {fmt(worst[1])} on {worst[0]}"
    if cause is not None:
        remedy, fix = (
            cause.remedy,
            f"it follows from the {cause.kind.replace('_', ' ')}: {cause.fix}",
        )
    else:
        factor = _lr_factor(worst[1] if worst else None)
        remedy = {"action": "lower_lr", "factor": factor}
        fix = f"lower the learning rate ×{factor} (to {ev.lr / factor:g})"
    drafts.add(
        Finding(
            kind="non_finite",
            severity="critical",
            layers=[worst[0]] if worst else [],
            evidence=evidence,
            explanation=_EXPLAIN["non_finite"],
            fix=fix,
            remedy=remedy,
            numbers={"step": ev.diverged_at, "lr": ev.lr, "loss": ev.losses[-1]},
        )
    )


def _max_update(ev: Evidence) -> tuple[str, float, int] | None:
    """(layer, largest finite ‖ΔW‖/‖W‖, its step index) over the training steps."""
    best: tuple[str, float, int] | None = None
    for name, ratios in ev.update_ratios.items():
        for step, value in enumerate(ratios):
            if math.isfinite(value) and (best is None or value > best[1]):
                best = (name, value, step)
    return best


def _lr_factor(ratio: float | None) -> int:
    """Power of 10 that brings ``ratio`` under UPDATE_RATIO_WARNING (10 … MAX_LR_FACTOR)."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return 10
    exponent = math.ceil(math.log10(ratio / T.UPDATE_RATIO_WARNING) + 1e-9)
    return int(min(max(10 ** max(exponent, 1), 10), T.MAX_LR_FACTOR))


def _update_ratio(drafts: _Drafts) -> None:
    ev = drafts.evidence
    worst = _max_update(ev)
    if worst is None or worst[1] <= T.UPDATE_RATIO_WARNING:
        return
    name, value, step = worst
    severity = "critical" if value > T.UPDATE_RATIO_CRITICAL else "warning"
    over = sorted(
        n for n, r in ev.update_ratios.items() if any(v > T.UPDATE_RATIO_WARNING for v in r)
    )
    order = {s.name: s.depth for s in ev.layers}
    over.sort(key=lambda n: order.get(n, 0))
    cause = _reinit_cause(drafts)
    if cause is not None:
        remedy = None
        fix = (
            f"it follows from the {cause.kind.replace('_', ' ')}; fix those first ("
            f"{cause.fix}) and diagnose again"
        )
    else:
        factor = _lr_factor(value)
        remedy = {"action": "lower_lr", "factor": factor}
        fix = f"lower the learning rate ×{factor} (to {ev.lr / factor:g})"
    drafts.add(
        Finding(
            kind="update_ratio",
            severity=severity,
            layers=over,
            evidence=(
                f"one SGD step at lr {ev.lr:g} changes {name}'s weights by ‖ΔW‖/‖W‖ = "
                f"{fmt(value)} (step {step}); {len(over)} layer(s) above "
                f"{T.UPDATE_RATIO_WARNING:g}"
            ),
            explanation=_EXPLAIN["update_ratio"],
            fix=fix,
            remedy=remedy,
            numbers={"update_ratio": value, "layer": name, "step": step, "lr": ev.lr},
        )
    )


def _init_mismatch(drafts: _Drafts) -> None:
    ev = drafts.evidence
    product, deviating, mismatched = _init_drift(ev)
    flagged = deviating if _compounds(product) else mismatched
    if not flagged:
        return
    direction = 1 if product > 1 else -1
    confirming = {
        -1: ("vanishing_gradients", "forward_shrinking"),
        1: ("exploding_gradients", "forward_growing", "saturation"),
    }[direction]
    measured = [k for k in confirming if drafts.of_kind(k) is not None]
    by_name = {s.name: s for s in ev.layers}
    rhos = {name: _rho(by_name[name]) for name in flagged}
    worst = max(flagged, key=lambda n: abs(math.log(rhos[n] or 1.0)))
    stats = by_name[worst]
    evidence = (
        f"weight std of {worst} is {fmt(stats.weight_std)}, ×{fmt(rhos[worst])} the "
        f"{init.recommended(stats.activation).name} std {fmt(stats.recommended_std)} for "
        f"{stats.activation or 'a linear output'}; {len(flagged)} layer(s) off, "
        f"compounding to ×{fmt(product, 1)} over {ev.depth} layers"
    )
    remedy: Remedy | None
    remedy, words = _reinit(ev, [s.name for s in ev.layers if _rho(s) is not None])
    if measured and _compounds(product):
        severity = "warning"
        evidence += f", which the measured {' and '.join(measured).replace('_', ' ')} confirm"
        fix = words
    else:
        severity = "info"
        reason = "normalization layers rescale the signal" if ev.normalized else "no layer drifts"
        evidence += f"; harmless here: {reason}"
        fix = f"nothing needed now; if the network grows deeper, {words}"
        remedy = None
    drafts.add(
        Finding(
            kind="init_mismatch",
            severity=severity,
            layers=flagged,
            evidence=evidence,
            explanation=_EXPLAIN["init_mismatch"],
            fix=fix,
            remedy=remedy,
            numbers={"ratio": {n: rhos[n] for n in flagged}, "compounded": product},
        )
    )


def findings(ev: Evidence) -> list[Finding]:
    """All findings for ``ev``, ordered by severity, then by :data:`KINDS` (causes first)."""
    drafts = _Drafts(ev)
    _non_finite_at_init(drafts)
    _saturation(drafts)
    _dead_units(drafts)
    _gradients(drafts)
    _forward(drafts)
    _non_finite_in_training(drafts)
    _update_ratio(drafts)
    _init_mismatch(drafts)
    rank = {kind: i for i, kind in enumerate(KINDS)}
    at_init = {id(f) for f in drafts.found if f.kind == "non_finite" and "step" not in f.numbers}

    def key(f: Finding) -> tuple[int, int]:
        # NaN at the current weights comes first; NaN that appears in training is a symptom.
        kind_rank = -1 if id(f) in at_init else rank[f.kind] + (10 if f.kind == "non_finite" else 0)
        return SEVERITIES.index(f.severity), kind_rank

    return sorted(drafts.found, key=key)


# --------------------------------------------------------------------------- model facts


def model_facts(
    model: nn.Module, names: Sequence[str]
) -> tuple[dict[str, int], dict[str, float], bool]:
    """(output units, mean bias, normalized?) read from the model for the layers ``names``."""
    units: dict[str, int] = {}
    biases: dict[str, float] = {}
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if module is None:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            units[name] = int(weight.shape[0])
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.numel():
            biases[name] = float(bias.detach().float().mean())
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    normalized = any(
        isinstance(m, norm_types) or type(m).__name__ == "BatchNorm" for m in model.modules()
    )
    return units, biases, normalized
