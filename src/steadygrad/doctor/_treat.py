"""``treat``: apply a diagnosis's remedies to a copy, diagnose it again, and compare training."""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steadygrad import activations, init, models
from steadygrad.doctor._diagnose import (
    Batch,
    Diagnosis,
    LossFn,
    check_model,
    check_steps,
    cuda_indices,
    diagnose,
    make_loss,
    model_device,
    sgd_step,
    split_batch,
    zero_grad,
)
from steadygrad.doctor._findings import ACTIONS, Remedy, fmt, remedy_text
from steadygrad.nn import Dense

LOSS_WINDOW = 10
"""The comparison's "loss after N steps" is the mean of the whole batch's loss over the last 10
evaluations (steps N − 9 … N): full-batch SGD on a 30-layer ReLU net at lr 0.01 swings between
1.2 and 3.2 from one step to the next on Fashion-MNIST, so a single step's value is a coin toss."""

MAX_ROUNDS = 2
"""treat applies the remedies, diagnoses again, and applies the new diagnosis's remedies once
more if the first round left the model unhealthy (e.g. a learning rate that was only too large
for the broken initialization)."""


# --------------------------------------------------------------------------- remedies


def _check_remedy(remedy: object) -> Remedy:
    if not isinstance(remedy, Mapping) or not isinstance(remedy.get("action"), str):
        raise TypeError(f"remedy must be a dict with an 'action' string; got {remedy!r}")
    action = remedy["action"]
    if action not in ACTIONS:
        close = difflib.get_close_matches(action, ACTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"remedy action must be one of {', '.join(repr(a) for a in ACTIONS)}; "
            f"got {action!r}{hint}"
        )
    return dict(remedy)


def _activation_name(module: nn.Module) -> str | None:
    converted = activations.from_module(module)
    return None if converted is None else converted.name


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." not in path:
        return model, path
    head, _, tail = path.rpartition(".")
    return model.get_submodule(head), tail


def _replace_activation(
    model: nn.Module, source: str, target: str, activation_of: dict[str, str | None]
) -> tuple[list[str], list[str]]:
    """Swap every activation module named ``source`` for ``target``; (layers affected, notes)."""
    swapped = 0
    for path, module in list(model.named_modules()):
        if path and _activation_name(module) == source:
            parent, attribute = _parent(model, path)
            setattr(parent, attribute, activations.get(target))
            swapped += 1
    affected = [name for name, act in activation_of.items() if act == source]
    notes = []
    if affected and not swapped:
        notes.append(
            f"replace_activation: {source} is applied as a function in {type(model).__name__}"
            f".forward, not as a module; replace it by {target} in the code"
        )
    elif affected:
        for name in affected:
            activation_of[name] = target
    return (affected if swapped else []), notes


def _batchnorm_for(module: nn.Module) -> nn.Module | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    features = int(weight.shape[0])
    if isinstance(module, nn.Conv1d):
        return nn.BatchNorm1d(features)
    if isinstance(module, nn.Conv2d):
        return nn.BatchNorm2d(features)
    if isinstance(module, nn.Conv3d):
        return nn.BatchNorm3d(features)
    if isinstance(module, nn.Linear):
        return nn.BatchNorm1d(features)
    return None


def _insert_batchnorm(
    model: nn.Module, layers: Sequence[str], activation_of: Mapping[str, str | None]
) -> list[str]:
    """BatchNorm after every layer followed by an activation (generic models); returns notes.

    A Dense that applies its activation itself gets ``BatchNorm → activation`` as its
    activation, so the normalization comes before the nonlinearity (Ioffe & Szegedy 2015).
    """
    notes = []
    for name in layers:
        if activation_of.get(name) is None:
            continue  # the output layer, or a linear one
        module = model.get_submodule(name)
        norm = _batchnorm_for(module)
        if norm is None:
            notes.append(f"insert_batchnorm: no BatchNorm fits {name} ({type(module).__name__})")
            continue
        norm.to(model_device(module))
        if isinstance(module, Dense) and module.activation is not None:
            module.activation = nn.Sequential(norm, module.activation)
        else:
            parent, attribute = _parent(model, name)
            setattr(parent, attribute, nn.Sequential(module, norm))
    return notes


def _reinit(
    model: nn.Module,
    layers: Sequence[str],
    initializer: str,
    activation_of: Mapping[str, str | None],
    replaced: set[str],
    generator: torch.Generator,
) -> None:
    for name in layers:
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if initializer == "recommended" or name in replaced:
            chosen: Callable[..., torch.Tensor] | None = init.recommended(activation_of.get(name))
        else:
            chosen = init.get(initializer)
        assert chosen is not None
        with torch.no_grad():
            if weight.device.type == "cpu":
                chosen(weight, generator=generator)
            else:
                weight.copy_(chosen(torch.empty_like(weight, device="cpu"), generator=generator))


def _reset_bias(model: nn.Module, layers: Sequence[str]) -> None:
    for name in layers:
        bias = getattr(model.get_submodule(name), "bias", None)
        if isinstance(bias, torch.Tensor):
            with torch.no_grad():
                bias.zero_()


@dataclass
class _Plan:
    """Remedies grouped by action, in the order treat applies them."""

    remedies: list[Remedy]
    lr_factor: float = 1.0

    def of(self, action: str) -> list[Remedy]:
        return [r for r in self.remedies if r["action"] == action]


def _mlp_config(model: models.MLP, plan: _Plan) -> dict[str, Any] | None:
    """The corrected config of an MLP, when every structural/init remedy maps onto a config key."""
    config = model.config
    changed = False
    activation = config["activation"]
    current = (
        activation if isinstance(activation, str) or activation is None else activation.get("name")
    )
    for remedy in plan.of("replace_activation"):
        if current is not None and activations.get(current).name == remedy.get("from"):
            config["activation"] = remedy["to"]
            config["initializer"], config["output_initializer"] = "auto", None
            changed = True
    for remedy in plan.of("reinit"):
        if remedy.get("initializer", "recommended") not in _recommended_names(model, remedy):
            return None  # a specific initializer for some layers only: apply it in place
        config["initializer"], config["output_initializer"] = "auto", None
        changed = True
    if plan.of("insert_batchnorm"):
        config["batch_norm"] = "before"
        changed = True
    if plan.of("reset_bias"):
        config["bias_initializer"] = "zeros"
        changed = True
    return config if changed else None


def _recommended_names(model: models.MLP, remedy: Remedy) -> set[str]:
    """ "recommended" and the names of the initializers ``auto`` gives the MLP's layers."""
    names = {"recommended"}
    for block in model.blocks():
        names.add(init.recommended(block.activation).name)
    return names


def apply_remedies(
    model: nn.Module,
    remedies: Sequence[Remedy],
    batch: Batch,
    *,
    layers: Mapping[str, str | None],
    seed: int = 0,
) -> tuple[nn.Module, float, list[str]]:
    """Apply ``remedies`` to a deep copy of ``model``: (treated copy, lr factor, notes).

    Order: replace_activation, insert_batchnorm, reinit, reset_bias, lsuv; lower_lr only divides
    the learning rate. ``layers`` maps each layer (module path) to the activation that follows
    it, as the monitor saw it (a diagnosis's ``layers``). A replaced activation re-initializes
    the layers that feed it with ``init.recommended`` of the new one, whatever a reinit remedy
    names for them. An :class:`~steadygrad.models.MLP` is rebuilt from its corrected config
    (activation, ``initializer="auto"``, ``batch_norm="before"``, ``bias_initializer="zeros"``)
    so that its ``.config`` stays true; other models are changed in place.
    """
    checked = [_check_remedy(r) for r in remedies]
    order = {action: i for i, action in enumerate(ACTIONS)}
    plan = _Plan(sorted(checked, key=lambda r: order[r["action"]]))
    for remedy in plan.of("lower_lr"):
        factor = remedy.get("factor", 10)
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1:
            raise ValueError(f"lower_lr factor must be a number > 1; got {factor!r}")
        plan.lr_factor *= float(factor)
    generator = torch.Generator().manual_seed(seed)
    notes: list[str] = []
    activation_of = dict(layers)
    treated: nn.Module
    config = _mlp_config(model, plan) if isinstance(model, models.MLP) else None
    if config is not None:
        treated = models.from_config(config, generator=generator).to(model_device(model))
        treated.train(model.training)
    else:
        treated = copy.deepcopy(model)
        replaced: set[str] = set()
        for remedy in plan.of("replace_activation"):
            affected, more = _replace_activation(
                treated, str(remedy["from"]), str(remedy["to"]), activation_of
            )
            replaced.update(affected)
            notes += more
            if affected:
                _reinit(treated, affected, "recommended", activation_of, replaced, generator)
        for remedy in plan.of("reinit"):
            names = remedy.get("layers") or list(activation_of)
            _reinit(
                treated, names, str(remedy.get("initializer", "recommended")), activation_of,
                replaced, generator,
            )  # fmt: skip
        if plan.of("insert_batchnorm"):
            notes += _insert_batchnorm(treated, list(activation_of), activation_of)
        for remedy in plan.of("reset_bias"):
            _reset_bias(treated, remedy.get("layers") or list(activation_of))
    if plan.of("lsuv"):
        x, _ = split_batch(batch)
        init.lsuv_(treated, x.to(model_device(treated)), generator=generator)
    return treated, plan.lr_factor, notes


# --------------------------------------------------------------------------- comparison


def _train_copy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    loss_fn: LossFn | None,
    lr: float,
    steps: int,
    seed: int,
    batch_size: int | None,
) -> list[float]:
    """SGD on a copy for ``steps`` steps; the whole batch's loss before each step and after the
    last (``steps + 1`` values; NaN from the first non-finite one on).

    Each step uses the whole batch (``batch_size=None``: the loss of the step's own forward) or
    a mini-batch of ``batch_size`` from a permutation per epoch drawn by a generator seeded with
    ``seed`` (then the whole batch's loss is one more forward, without gradient).
    """
    size = x.shape[0] if batch_size is None else batch_size
    with torch.random.fork_rng(devices=cuda_indices(model)):
        torch.manual_seed(seed)
        student = copy.deepcopy(model).train()
        order = torch.Generator().manual_seed(seed)
        loss = make_loss(loss_fn)
        curve: list[float] = []
        queue: list[torch.Tensor] = []
        for _ in range(steps):
            if not queue:
                permutation = torch.randperm(x.shape[0], generator=order)
                queue = [permutation[i : i + size] for i in range(0, x.shape[0], size)]
            index = queue.pop(0).to(x.device)
            zero_grad(student)
            if batch_size is None:
                value = loss(student(x), y)
                curve.append(float(value.detach()))
            else:
                with torch.no_grad():
                    curve.append(float(loss(student(x), y)))
                value = loss(student(x[index]), None if y is None else y[index])
            if not (math.isfinite(curve[-1]) and math.isfinite(float(value.detach()))):
                curve[-1] = curve[-1] if math.isfinite(curve[-1]) else math.nan
                return curve + [math.nan] * (steps + 1 - len(curve))
            value.backward()  # type: ignore[no-untyped-call]
            sgd_step(student, lr)
        with torch.no_grad():
            curve.append(float(loss(student(x), y)))
    return [v if math.isfinite(v) else math.nan for v in curve]


def _tail_mean(curve: Sequence[float]) -> float:
    """Mean of the last LOSS_WINDOW losses (inf if any is not finite): SGD at a usual learning
    rate oscillates, and one step's loss would decide the comparison by chance."""
    tail = curve[-LOSS_WINDOW:]
    if not tail or not all(math.isfinite(v) for v in tail):
        return math.inf
    return sum(tail) / len(tail)


@dataclass
class Treatment:
    """What :func:`treat` did: ``model`` (the treated copy, untrained), ``before``/``after``
    (diagnoses), ``remedies`` (applied, in order), ``notes`` (what could not be applied), and
    ``comparison`` (losses of the original and the treated copy trained from the same batches,
    gradient and forward ratios, findings before and after)."""

    model: nn.Module
    before: Diagnosis
    after: Diagnosis
    remedies: list[Remedy]
    comparison: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        """The treated copy's loss after the comparison steps is below the original's."""
        return bool(self.comparison["improved"])

    def __str__(self) -> str:
        c = self.comparison
        b, a = self.before.key_numbers, self.after.key_numbers

        def findings(d: Diagnosis) -> str:
            items = [f"{f.kind} ({f.severity})" for f in d.findings if f.severity != "info"]
            return ", ".join(items) if items else "none"

        def loss(value: float) -> str:
            return fmt(value, 4) if math.isfinite(value) else "diverged"

        def std_range(k: dict[str, Any]) -> str:
            return f"{fmt(k['pre_std_min'])} – {fmt(k['pre_std_max'])}"

        rows = [
            ("", "original", "treated"),
            ("healthy", str(self.before.healthy).lower(), str(self.after.healthy).lower()),
            ("findings", findings(self.before), findings(self.after)),
            ("gradient ratio layer 1 / L", fmt(b["grad_ratio"]), fmt(a["grad_ratio"])),
            ("forward ratio layer L / 1", fmt(b["forward_ratio"]), fmt(a["forward_ratio"])),
            ("pre-activation std", std_range(b), std_range(a)),
            ("lr", f"{c['lr']['original']:g}", f"{c['lr']['treated']:g}"),
            ("loss before training", loss(c["loss_start"]["original"]),
             loss(c["loss_start"]["treated"])),
            (f"loss after {c['steps']} SGD steps", loss(c["loss_final"]["original"]),
             loss(c["loss_final"]["treated"])),
            (f"mean loss, last {c['loss_window']} evaluations", loss(c["loss_end"]["original"]),
             loss(c["loss_end"]["treated"])),
        ]  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        applied = "; ".join(remedy_text(r) for r in self.remedies) or "nothing to apply"
        if not self.remedies:
            verdict = "nothing to treat"
        else:
            verdict = "improved" if self.improved else "not improved"
        text = [f"steadygrad doctor --treat: applied {applied}", "", *lines, "",
                f"verdict: {verdict}; treated model {self.after.verdict}"]  # fmt: skip
        if self.notes:
            text += ["notes:", *(f"  - {n}" for n in self.notes)]
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: remedies, notes, comparison, and both diagnoses."""
        return {
            "remedies": self.remedies,
            "notes": self.notes,
            "comparison": _clean(self.comparison),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def treat(
    model: nn.Module,
    diagnosis: Diagnosis,
    batch: Batch,
    steps: int = 50,
    *,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Treatment:
    """Apply ``diagnosis``'s remedies to a deep copy of ``model`` and check that they work.

    1. :func:`apply_remedies` with the critical and warning findings' remedies
       (:attr:`Diagnosis.remedies`);
    2. :func:`diagnose` the copy with the diagnosis's steps and learning rate (divided by any
       ``lower_lr`` factor); if it is still unhealthy, apply the new remedies once more (at most
       :data:`MAX_ROUNDS` rounds);
    3. train a copy of the original and a copy of the treated model with SGD for ``steps``
       steps from the same batches: the whole ``batch`` each step (``batch_size=None``), or
       mini-batches of ``batch_size`` in one seeded order; compare their losses on the whole
       batch before and after.

    ``loss_fn`` as in :func:`diagnose` (pass the one the diagnosis used). The original model is
    not modified; ``Treatment.model`` is the treated copy before the comparison training.
    """
    model = check_model(model)
    if not isinstance(diagnosis, Diagnosis):
        raise TypeError(
            f"diagnosis must be a Diagnosis from diagnose(); got {type(diagnosis).__name__}"
        )
    steps = check_steps(steps)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    names = {name for name, _ in model.named_modules()}
    missing = [s.name for s in diagnosis.layers if s.name not in names]
    if missing:
        raise ValueError(
            f"diagnosis does not describe this model: it has no layer {missing[0]!r} "
            "(diagnose this model first)"
        )
    x, y = split_batch(batch)
    device = model_device(model)
    x = x.to(device)
    y = None if y is None else y.to(device)
    with torch.random.fork_rng(devices=cuda_indices(model)):
        treated: nn.Module = model
        applied: list[Remedy] = []
        notes: list[str] = []
        lr = diagnosis.lr
        current = diagnosis
        after = diagnosis
        for _ in range(MAX_ROUNDS):
            todo = [r for r in current.remedies if r not in applied]
            if not todo:
                break
            layers = {s.name: s.activation for s in current.layers}
            treated, factor, more = apply_remedies(
                treated, todo, (x, y) if y is not None else x, layers=layers, seed=seed
            )
            applied += todo
            notes += more
            lr /= factor
            after = diagnose(treated, x if y is None else (x, y), loss_fn,
                             steps=diagnosis.steps, lr=lr, seed=seed)  # fmt: skip
            current = after
            if after.healthy:
                break
        if not applied:
            treated = copy.deepcopy(model)
    original = _train_copy(model, x, y, loss_fn, diagnosis.lr, steps, seed, batch_size)
    if applied:
        cured = _train_copy(treated, x, y, loss_fn, lr, steps, seed, batch_size)
    else:  # nothing changed: the treated copy would retrace the original's steps exactly
        cured = list(original)
    comparison = {
        "steps": steps,
        "batch_size": int(x.shape[0]) if batch_size is None else min(batch_size, int(x.shape[0])),
        "lr": {"original": diagnosis.lr, "treated": lr},
        "loss_start": {"original": original[0], "treated": cured[0]},
        "loss_end": {"original": _tail_mean(original), "treated": _tail_mean(cured)},
        "loss_final": {"original": original[-1], "treated": cured[-1]},
        "loss_window": min(LOSS_WINDOW, steps + 1),
        "loss_curve": {"original": original, "treated": cured},
        "grad_ratio": {
            "before": diagnosis.key_numbers["grad_ratio"],
            "after": after.key_numbers["grad_ratio"],
        },
        "forward_ratio": {
            "before": diagnosis.key_numbers["forward_ratio"],
            "after": after.key_numbers["forward_ratio"],
        },
        "findings": {
            "before": [{"kind": f.kind, "severity": f.severity} for f in diagnosis.findings],
            "after": [{"kind": f.kind, "severity": f.severity} for f in after.findings],
        },
        "healthy": {"before": diagnosis.healthy, "after": after.healthy},
        "improved": _tail_mean(cured) < _tail_mean(original),
    }
    return Treatment(treated, diagnosis, after, applied, comparison, notes)
