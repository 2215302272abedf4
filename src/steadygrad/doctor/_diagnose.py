"""``diagnose``: probe a copy of the model with the monitor and turn the numbers into findings."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steadygrad import monitor
from steadygrad.doctor import _thresholds as T
from steadygrad.doctor._findings import (
    SEVERITIES,
    Evidence,
    Finding,
    Remedy,
    findings,
    fmt,
    forward_ratio,
    grad_ratio,
    model_facts,
    remedy_text,
    span,
)
from steadygrad.monitor import LayerStats

LossFn = Callable[..., torch.Tensor]
"""``loss_fn(output, y) -> scalar`` for a batch ``(x, y)``; ``loss_fn(output)`` for a batch x."""

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor]


# --------------------------------------------------------------------------- arguments


def split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` → (x, None); ``(x,)`` → (x, None); ``(x, y)`` → (x, y). TypeError otherwise."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, tuple | list) and len(batch) in (1, 2):
        items = tuple(batch)
        if all(isinstance(item, torch.Tensor) for item in items):
            return items[0], items[1] if len(items) == 2 else None
    described = (
        f"{type(batch).__name__} of {len(batch)} item(s)"
        if isinstance(batch, tuple | list)
        else type(batch).__name__
    )
    raise TypeError(f"batch must be a tensor x or a tuple (x, y) of tensors; got {described}")


def default_loss(output: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The doctor's loss when none is given: mean squared error for float targets shaped like the
    output, else :func:`steadygrad.monitor.default_loss` (cross-entropy with targets,
    ‖f(x)‖² / (2B) without)."""
    if y is not None and y.is_floating_point() and y.shape == output.shape:
        return nn.functional.mse_loss(output, y)
    return monitor.default_loss(output, y)


def make_loss(loss_fn: LossFn | None) -> Callable[..., torch.Tensor]:
    """``loss(output, y=None)``: ``loss_fn`` called as the monitor calls it, or the default."""
    if loss_fn is None:
        return default_loss
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a callable loss_fn(output, y) or None; got {type(loss_fn).__name__}"
        )

    def loss(output: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return loss_fn(output) if y is None else loss_fn(output, y)

    return loss


def check_model(model: object, what: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module; got {type(model).__name__}")
    return model


def check_steps(steps: object, allow_zero: bool = True) -> int:
    low = 0 if allow_zero else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"steps must be {kind} int; got {steps!r}")
    return steps


def check_lr(lr: object) -> float:
    if lr is None:
        return T.DEFAULT_LR
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        raise TypeError(f"lr must be a positive number or None; got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number or None; got {lr!r}")
    return float(lr)


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def cuda_indices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


# --------------------------------------------------------------------------- diagnosis


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    ``findings`` (ordered by severity, causes before symptoms), ``healthy`` (no critical or
    warning finding), ``verdict`` (one line), ``key_numbers`` (gradient and forward ratios, std
    ranges, saturation and dead maxima, update/weight maximum, losses, timing), ``layers`` (the
    probe's :class:`~steadygrad.monitor.LayerStats` at the model's weights), ``trained_layers``
    (after the probe's training steps; None without steps or after a divergence),
    ``update_ratios`` (layer → ‖ΔW‖/‖W‖ of each step), ``losses`` (before each step, then after
    the last), ``steps``, ``lr``, ``batch_size``, ``notes`` (the monitor's notes: modules it could
    not interpret).
    """

    findings: list[Finding]
    layers: list[LayerStats]
    trained_layers: list[LayerStats] | None
    update_ratios: dict[str, list[float]]
    losses: list[float]
    steps: int
    lr: float
    batch_size: int
    probe_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when no finding is critical or a warning."""
        return not any(f.severity in ("critical", "warning") for f in self.findings)

    @property
    def remedies(self) -> list[Remedy]:
        """The critical and warning findings' remedies, in finding order, without repeats."""
        result: list[Remedy] = []
        for finding in self.findings:
            if finding.severity == "info" or finding.remedy is None:
                continue
            if finding.remedy not in result:
                result.append(finding.remedy)
        return result

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    @property
    def key_numbers(self) -> dict[str, Any]:
        """The numbers a healthy verdict quotes (None where not measurable)."""
        layers = self.layers

        def largest(key: str) -> tuple[float | None, str | None]:
            values = [
                (float(getattr(s, key)), s.name)
                for s in (*layers, *(self.trained_layers or []))
                if getattr(s, key) is not None and math.isfinite(getattr(s, key))
            ]
            if not values:
                return None, None
            return max(values, key=lambda v: v[0])

        sat, sat_layer = largest("saturated")
        dead, dead_layer = largest("dead")
        pre = [s.pre_std for s in layers if s.pre_std is not None and math.isfinite(s.pre_std)]
        act = [s.act_std for s in layers if s.act_std is not None and math.isfinite(s.act_std)]
        updates = [v for r in self.update_ratios.values() for v in r if math.isfinite(v)]
        return {
            "depth": len(layers),
            "grad_ratio": grad_ratio(layers),
            "forward_ratio": forward_ratio(layers),
            "pre_std_min": min(pre) if pre else None,
            "pre_std_max": max(pre) if pre else None,
            "act_std_min": min(act) if act else None,
            "act_std_max": max(act) if act else None,
            "saturated_max": sat,
            "saturated_layer": sat_layer,
            "dead_max": dead,
            "dead_layer": dead_layer,
            "update_ratio_max": max(updates) if updates else None,
            "loss_start": self.losses[0] if self.losses else None,
            "loss_end": self.losses[-1] if self.losses else None,
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "probe_seconds": self.probe_seconds,
        }

    @property
    def verdict(self) -> str:
        """One line: ``healthy: <key numbers>`` or ``<counts>: <top finding>``."""
        k = self.key_numbers
        if self.healthy:
            parts = [
                f"gradient std ratio layer 1 / layer {k['depth']} = {fmt(k['grad_ratio'])}",
                f"pre-activation std {fmt(k['pre_std_min'])}–{fmt(k['pre_std_max'])}",
            ]
            if k["saturated_max"] is not None:
                parts.append(f"saturation ≤ {k['saturated_max']:.0%}")
            if k["dead_max"] is not None:
                parts.append(f"dead units ≤ {k['dead_max']:.0%}")
            if k["update_ratio_max"] is not None:
                parts.append(f"update/weight ≤ {fmt(k['update_ratio_max'])} at lr {self.lr:g}")
            if self.steps and k["loss_start"] is not None:
                parts.append(
                    f"loss {fmt(k['loss_start'], 4)} → {fmt(k['loss_end'], 4)} in "
                    f"{self.steps} SGD steps"
                )
            return "healthy: " + ", ".join(parts)
        counts = self.counts()
        label = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != "info")
        top = self.findings[0]
        return f"unhealthy ({label}): {top.kind.replace('_', ' ')}: {top.evidence}"

    def table(self) -> str:
        """The per-layer table as plain text."""
        trained = {s.name: s for s in self.trained_layers or []}
        header = (
            "depth", "layer", "activation", "pre std", "act std", "sat", "dead", "grad std",
            "w/rec", "upd/w",
        )  # fmt: skip
        rows = [header]
        for s in self.layers:
            rho = (
                s.weight_std / s.recommended_std
                if s.weight_std is not None and s.recommended_std
                else None
            )
            updates = [v for v in self.update_ratios.get(s.name, []) if math.isfinite(v)]
            after = trained.get(s.name)
            dead = s.dead
            if after is not None and after.dead is not None and dead is not None:
                dead = max(dead, after.dead)
            rows.append(
                (
                    str(s.depth),
                    s.name,
                    s.activation or "—",
                    fmt(s.pre_std),
                    fmt(s.act_std),
                    "—" if s.saturated is None else f"{s.saturated:.0%}",
                    "—" if dead is None else f"{dead:.0%}",
                    fmt(s.grad_out_std),
                    fmt(rho),
                    fmt(max(updates)) if updates else "—",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = []
        for row in rows:
            cells = [
                cell.ljust(w) if i in (1, 2) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"steadygrad doctor: {self.verdict}\n"
            f"probe: {len(self.layers)} layers, batch {self.batch_size}, {self.steps} SGD steps "
            f"at lr {self.lr:g}, {self.probe_seconds:.2f} s"
        )
        parts = [head, "", self.table()]
        if self.notes:
            parts += ["", "notes:", *(f"  - {note}" for note in self.notes)]
        if self.findings:
            parts += ["", "findings:"]
            for i, f in enumerate(self.findings, start=1):
                where = f": {span(f.layers)}" if f.layers else ""
                parts.append(f"{i}. [{f.severity}] {f.kind}{where}")
                parts.append(f"   evidence: {f.evidence}")
                parts.append(f"   why: {f.explanation}")
                parts.append(f"   fix: {f.fix}")
                if f.remedy is not None:
                    parts.append(f"   remedy: {remedy_text(f.remedy)}")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers become None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return {
            "healthy": self.healthy,
            "verdict": self.verdict,
            "counts": self.counts(),
            "key_numbers": clean(self.key_numbers),
            "findings": [f.to_dict() for f in self.findings],
            "remedies": clean(self.remedies),
            "layers": [s.to_dict() for s in self.layers],
            "trained_layers": (
                None if self.trained_layers is None else [s.to_dict() for s in self.trained_layers]
            ),
            "update_ratios": clean(self.update_ratios),
            "losses": clean(self.losses),
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "probe_seconds": self.probe_seconds,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- the probe


def zero_grad(model: nn.Module) -> None:
    """Drop every parameter's ``.grad`` (as ``optimizer.zero_grad(set_to_none=True)``)."""
    for parameter in model.parameters():
        parameter.grad = None


def sgd_step(model: nn.Module, lr: float) -> None:
    """Plain SGD, W ← W − lr · ∂L/∂W, on every parameter that has a gradient.

    The same update as ``torch.optim.SGD(lr=lr)`` without momentum or weight decay, written out
    because the first ``torch.optim`` step of a process imports ``torch._dynamo`` (2–5 s), which
    would dominate a probe of a small network.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-lr)


def _probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, loss: Callable[..., torch.Tensor]
) -> list[LayerStats]:
    """One forward and backward recorded by :func:`steadygrad.monitor.probe`."""
    return list(monitor.probe(model, x if y is None else (x, y), loss_fn=loss))


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    loss: Callable[..., torch.Tensor],
    lr: float,
    steps: int,
) -> tuple[list[float], dict[str, list[float]], int | None, list[str]]:
    """Full-batch SGD for ``steps`` steps, every step recorded by :func:`steadygrad.monitor.watch`.

    Returns (loss before each step, then after the last; layer → ‖ΔW‖/‖W‖ of each step; the
    first step whose loss was not finite, or None; the monitor's notes). Stops at a non-finite
    loss. A step is one forward call for the monitor, so its record k carries the update made
    between forward k − 1 and forward k; a last forward pass (the final loss, no backward) closes
    the update of the last step.
    """
    losses: list[float] = []
    diverged: int | None = None
    with monitor.watch(model, every=1) as watcher:
        for step in range(steps):
            zero_grad(model)
            value = loss(model(x), y)
            losses.append(float(value.detach()))
            if not math.isfinite(losses[-1]):
                diverged = step
                break
            value.backward()  # type: ignore[no-untyped-call]
            sgd_step(model, lr)
        if diverged is None:
            with torch.no_grad():
                losses.append(float(loss(model(x), y)))
            if not math.isfinite(losses[-1]):
                diverged = steps
        records = list(watcher.records)
        notes = watcher.notes
    ratios: dict[str, list[float]] = {}
    for record in records:
        for stats in record.layers:
            if stats.update_ratio is not None:
                value_ = float(stats.update_ratio)
                ratios.setdefault(stats.name, []).append(value_)
    return losses, ratios, diverged, notes


def diagnose(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn | None = None,
    *,
    steps: int = T.DEFAULT_STEPS,
    lr: float | None = None,
    seed: int = 0,
) -> Diagnosis:
    """Diagnose the gradient flow of ``model`` on ``batch``.

    On a deep copy of the model, in train mode (the model itself and the global RNG state are left
    untouched): one forward and backward recorded by :func:`steadygrad.monitor.probe`, then
    ``steps`` full-batch SGD steps at ``lr`` watched by :func:`steadygrad.monitor.watch` (the
    update/weight ratios, and whether the loss stays finite), then a second probe (dead units or
    saturation that training brings). The findings compare these numbers with the thresholds of
    docs/doctor.md, e.g. vanishing gradients when grad_out_std(layer 1) / grad_out_std(layer L) <
    1e-2 (Glorot & Bengio 2010; He et al. 2015).

    Args:
        model: any ``nn.Module`` with weight-bearing layers (Linear, Conv, …).
        batch: ``x`` or ``(x, y)``; moved to the model's device.
        loss_fn: ``loss_fn(output, y)`` (or ``loss_fn(output)`` without ``y``); default
            cross-entropy for integer ``y``, mean squared error for float ``y``, mean squared
            output without ``y``.
        steps: SGD steps of the dynamic part (0: the single probe only).
        lr: their learning rate; default 0.01.
        seed: seeds torch's RNG inside the probe (dropout), restored afterwards.
    """
    model = check_model(model)
    x, y = split_batch(batch)
    steps = check_steps(steps)
    lr = check_lr(lr)
    started = time.perf_counter()
    device = model_device(model)
    x = x.to(device)
    y = None if y is None else y.to(device)
    loss = make_loss(loss_fn)
    with torch.random.fork_rng(devices=cuda_indices(model)):
        torch.manual_seed(seed)
        patient = copy.deepcopy(model).train()
        layers = _probe(patient, x, y, loss)
        if not layers:
            raise ValueError(
                "diagnose: the monitor found no layer with a weight (Linear, Conv, or a module "
                f"with a weight of rank >= 2) in {type(model).__name__}"
            )
        trained: list[LayerStats] | None = None
        if steps:
            losses, ratios, diverged, notes = _train(patient, x, y, loss, lr, steps)
            if diverged is None:
                trained = _probe(patient, x, y, loss)
        else:
            with torch.no_grad():
                losses, ratios, diverged, notes = [float(loss(patient(x), y))], {}, None, []
    units, biases, normalized = model_facts(model, [s.name for s in layers])
    evidence = Evidence(
        layers=layers,
        trained=trained,
        update_ratios=ratios,
        losses=losses,
        diverged_at=diverged,
        steps=steps,
        lr=lr,
        units=units,
        bias_mean=biases,
        normalized=normalized,
    )
    return Diagnosis(
        findings=findings(evidence),
        layers=layers,
        trained_layers=trained,
        update_ratios=ratios,
        losses=losses,
        steps=steps,
        lr=lr,
        batch_size=int(x.shape[0]),
        probe_seconds=time.perf_counter() - started,
        notes=notes,
    )


def layer_names(diagnosis: Diagnosis) -> Sequence[str]:
    return [s.name for s in diagnosis.layers]
