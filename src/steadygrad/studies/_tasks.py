"""What one run of a study computes: a task takes a :data:`RunSpec` and returns a JSON-able dict.

Tasks (the ``"task"`` key of a spec):

- ``"profile"``: build the network, take one fixed batch, run one forward and backward pass
  (:func:`steadygrad.monitor.probe`) and return each layer's statistics at initialization.
- ``"train"``: build the network (optionally LSUV-initialize it), train it with
  :func:`steadygrad.train.fit` and record what ``spec["measure"]`` asks for: the loss of every
  step (window means), the per-epoch history, probes of every layer on a fixed batch every k
  steps, percentiles of one unit's pre-activation, unit statistics at the end.
- ``"timing"``: time (CPU time of the process) training steps and inference of several networks
  in this one process, in interleaved, shuffled repeats (so that drifting machine load hits every
  variant alike), and
  check that folding BatchNorm leaves the outputs unchanged.

Shared spec keys: ``"model"`` (keyword arguments of :func:`steadygrad.models.mlp`), ``"data"``
(``{"name", "root", "standardize", "train", "test"}``: the first ``train`` training images and the
first ``test`` test images; probes use the *last* ``probe`` test images, fixed across runs, as
Glorot & Bengio 2010 use 300 fixed test examples), ``"seed"`` (seeds the weights and the
shuffling). Everything runs on the CPU with the calling process's torch threads (one per worker).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad import data, init, models, monitor, train
from steadygrad import nn as sg_nn

__all__ = ["TASKS", "load_data", "task_names"]

_PROBE_FIELDS = (
    "name",
    "depth",
    "activation",
    "pre_mean",
    "pre_std",
    "act_mean",
    "act_std",
    "saturated",
    "dead",
    "grad_out_std",
    "weight_grad_std",
    "nan",
    "inf",
)

_DATA_CACHE: dict[tuple[str, str | None, bool], data.Dataset] = {}


def _full(spec: Mapping[str, Any]) -> data.Dataset:
    """The whole dataset of a ``"data"`` spec, loaded once per process."""
    name = str(spec.get("name", "fashion-mnist"))
    root = spec.get("root")
    standardize = bool(spec.get("standardize", False))
    key = (name, None if root is None else str(root), standardize)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = data.load(name, root=root, validation=0, standardize=standardize)
    return _DATA_CACHE[key]


def load_data(spec: Mapping[str, Any]) -> data.Dataset:
    """The dataset of a run's ``"data"`` spec (loaded once per process; subsets are views).

    ``train``/``test``: how many of the first training/test images to use (None: all). The
    validation split is empty: the studies measure training and test behaviour.
    """
    full = _full(spec)
    n_train = spec.get("train")
    n_test = spec.get("test")
    train_split = data.Split(full.train.images[:n_train], full.train.labels[:n_train])
    test_split = data.Split(full.test.images[:n_test], full.test.labels[:n_test])
    empty = data.Split(full.train.images[:0], full.train.labels[:0])
    return data.Dataset(
        train_split,
        empty,
        test_split,
        name=full.name,
        classes=full.classes,
        mean=full.mean,
        std=full.std,
        source=full.source,
    )


def _probe_batch(spec: Mapping[str, Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``size`` images of the full test split (fixed across runs and subsets)."""
    full = _full(spec)
    return full.test.images[-size:], full.test.labels[-size:]


def _build(spec: Mapping[str, Any], generator: torch.Generator) -> models.MLP:
    return models.mlp(**spec["model"], generator=generator)


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _layers(stats: Sequence[monitor.LayerStats]) -> list[dict[str, Any]]:
    return [{k: getattr(s, k) for k in _PROBE_FIELDS} for s in stats]


def profile(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer statistics of the freshly initialized network on one batch (forward + backward).

    Spec: ``model``, ``data``, ``seed``, ``batch`` (how many fixed test images), ``lsuv`` (bool).
    Returns ``layers``: per layer the :class:`steadygrad.monitor.LayerStats` fields
    ``name, depth, activation, pre_mean, pre_std, act_mean, act_std, saturated, dead,
    grad_out_std, weight_grad_std, nan, inf`` (None where not observable or not finite).
    """
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    model = _build(spec, generator)
    x, y = _probe_batch(spec["data"], int(spec["batch"]))
    if spec.get("lsuv"):
        init.lsuv_(model, x, generator=generator)
    return {"layers": _layers(monitor.probe(model, (x, y)))}


class _Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss {loss} at step {step}")
        self.step = step
        self.loss = loss


def _hidden_preactivations(model: models.MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """The input z of every hidden activation on ``x`` (train-mode pass, buffers restored)."""
    captured: list[torch.Tensor] = []
    handles = []
    for block in model.hidden_layers():
        if block.activation is None:
            continue

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())

        handles.append(block.activation.register_forward_pre_hook(hook))
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        model.train(was_training)
    return captured


def _unit_summary(model: models.MLP, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per hidden layer: unit statistics over the batch ``x``.

    ``inactive``: fraction of units whose pre-activation z ≤ 0 for every sample (a ReLU unit there
    outputs 0 and gets no gradient: dead; a leaky ReLU or ELU unit still passes α·z and a
    gradient); ``dead``: fraction with f'(z) = 0 for every sample (the activation's own
    ``derivative``); ``unit_mean_median``: median over units of the unit's mean activation f(z);
    ``unit_mean_abs_median``: the same of |mean|.
    """
    result = []
    blocks = [b for b in model.hidden_layers() if b.activation is not None]
    for block, z in zip(blocks, _hidden_preactivations(model, x), strict=True):
        act = block.activation
        assert act is not None
        a = act(z)  # (batch, units)
        unit_means = a.mean(dim=0)
        inactive = (z <= 0).all(dim=0).float().mean().item()
        derivative = getattr(act, "derivative", None)
        dead = None
        if derivative is not None:
            dead = (derivative(z) == 0).all(dim=0).float().mean().item()
        result.append(
            {
                "name": block.name,
                "inactive": inactive,
                "dead": dead,
                "unit_mean_median": unit_means.median().item(),
                "unit_mean_abs_median": unit_means.abs().median().item(),
                "act_mean": a.mean().item(),
            }
        )
    return result


def _unit_percentiles(
    model: models.MLP, x: torch.Tensor, layer: int, unit: int, qs: Sequence[float]
) -> list[float]:
    """Percentiles ``qs`` (in %) of unit ``unit`` of hidden layer ``layer`` (1-based)'s z on x."""
    z = _hidden_preactivations(model, x)[layer - 1][:, unit]  # (batch,)
    q = torch.tensor([p / 100.0 for p in qs], dtype=torch.float64)
    return [float(v) for v in torch.quantile(z.double(), q)]


def train_run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Train one network and record what ``spec["measure"]`` asks for.

    Spec: ``model``, ``data``, ``seed``, ``lsuv`` (bool), ``optimizer`` (``{"name": "sgd" |
    "momentum" | "nesterov" | "adam", "lr", "momentum"}``), ``epochs``, ``batch_size``, and
    ``measure`` with keys ``probe_batch`` (fixed test images, default 300), ``loss_window``
    (steps per recorded loss mean, default 10), ``probe_start`` (every layer's statistics at
    step 0), ``probe_every`` (k: layer act_mean/act_std/saturated/dead every k steps),
    ``unit_percentiles`` (``{"layer", "unit", "q": [15, 50, 85], "every"}``), ``units_end``
    (:func:`_unit_summary` after training).

    A non-finite loss stops the run: ``diverged`` holds the step and the loss; ``history`` the
    completed epochs. Returns ``losses`` (window means), ``history`` (per epoch: train loss and
    accuracy, test loss and accuracy), ``final`` (last epoch's record, None when diverged first).
    """
    ds = load_data(spec["data"])
    measure: Mapping[str, Any] = spec.get("measure", {})
    seed = int(spec["seed"])
    generator = torch.Generator().manual_seed(seed)
    model = _build(spec, generator)
    xp, yp = _probe_batch(spec["data"], int(measure.get("probe_batch", 300)))
    if spec.get("lsuv"):
        init.lsuv_(model, ds.train.images[:500], generator=generator)
    optimizer = dict(spec["optimizer"])
    config = train.TrainConfig(
        optimizer=optimizer["name"],
        lr=float(optimizer["lr"]),
        momentum=float(optimizer.get("momentum", 0.9)),
        epochs=int(spec["epochs"]),
        batch_size=int(spec["batch_size"]),
        seed=seed,
        device="cpu",
        progress=False,
    )
    result: dict[str, Any] = {}
    if measure.get("probe_start"):
        result["probe_start"] = _layers(monitor.probe(model, (xp, yp)))
    window = int(measure.get("loss_window", 10))
    every = int(measure.get("probe_every", 0))
    percentiles = measure.get("unit_percentiles")
    losses: list[float] = []
    pending: list[float] = []
    probes: list[dict[str, Any]] = []
    unit_trace: list[dict[str, Any]] = []

    def take_probe(step: int) -> None:
        stats = monitor.probe(model, (xp, yp))
        probes.append(
            {
                "step": step,
                "layers": [
                    {k: getattr(s, k) for k in ("act_mean", "act_std", "saturated", "dead")}
                    for s in stats
                ],
            }
        )

    def take_percentiles(step: int) -> None:
        assert percentiles is not None
        values = _unit_percentiles(
            model, xp, int(percentiles["layer"]), int(percentiles["unit"]), percentiles["q"]
        )
        unit_trace.append({"step": step, "values": values})

    def on_step_end(step: int, loss: torch.Tensor) -> None:
        value = float(loss)
        if not math.isfinite(value):
            raise _Diverged(step, value)
        pending.append(value)
        if len(pending) == window:
            losses.append(statistics.fmean(pending))
            pending.clear()
        if every and step % every == 0:
            take_probe(step)
        if percentiles is not None and step % int(percentiles["every"]) == 0:
            take_percentiles(step)

    if every:
        take_probe(0)
    if percentiles is not None:
        take_percentiles(0)
    history: list[dict[str, Any]] = []
    diverged = None
    started = time.perf_counter()
    try:
        train.fit(model, ds, config, on_step_end=on_step_end, on_epoch_end=history.append)
    except _Diverged as stop:
        diverged = {"step": stop.step, "loss": stop.loss}
    if pending:
        losses.append(statistics.fmean(pending))
    keep = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    history = [{k: record[k] for k in keep} for record in history]
    result.update(
        {
            "losses": losses,
            "loss_window": window,
            "history": history,
            "diverged": diverged,
            "final": history[-1] if history and diverged is None else None,
            "train_seconds": round(time.perf_counter() - started, 3),
        }
    )
    if every:
        result["probes"] = probes
    if percentiles is not None:
        result["unit_percentiles"] = unit_trace
    if measure.get("units_end") and diverged is None:
        result["units_end"] = _unit_summary(model, xp)
    return result


def _time_train(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """CPU seconds of this process for one SGD step per batch (forward, loss, backward, update).

    CPU time (``time.process_time``), not wall time: with one torch thread it is the work done,
    and unlike wall time it does not count the time other processes held the core.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    started = time.process_time()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return time.process_time() - started


@torch.no_grad()
def _time_inference(model: nn.Module, x: torch.Tensor, passes: int) -> float:
    """CPU seconds of this process for ``passes`` eval-mode forward passes of ``x``."""
    model.eval()
    started = time.process_time()
    for _ in range(passes):
        model(x)
    return time.process_time() - started


def timing(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Training-step and inference times of several networks, interleaved in this process.

    Spec: ``models`` (name → :func:`steadygrad.models.mlp` kwargs), ``fold`` (names of BatchNorm
    networks whose folded copy is timed at inference as ``<name>+folded``), ``data``, ``seed``,
    ``batch_size`` (training), ``steps`` (training steps per timing), ``inference_batch``,
    ``passes`` (inference passes per timing), ``warmup`` (untimed training steps first, which also
    give the BatchNorm moving statistics something to fold), ``repeats``.

    Each repeat times every variant once, in an order shuffled per repeat (seeded). Returns
    ``train`` and ``inference``: name → CPU seconds per repeat; ``fold_max_abs_diff``: name → the
    largest |output(folded) − output(eval)| on the inference batch.
    """
    ds = load_data(spec["data"])
    rng = random.Random(int(spec["seed"]))
    torch.manual_seed(int(spec["seed"]))
    nets: dict[str, nn.Module] = {}
    for name, kwargs in spec["models"].items():
        nets[name] = models.mlp(
            **kwargs, generator=torch.Generator().manual_seed(int(spec["seed"]))
        )
    bs = int(spec["batch_size"])
    steps = int(spec["steps"])
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    batches = [
        (ds.train.images[idx], ds.train.labels[idx]) for idx in torch.split(order[: bs * steps], bs)
    ]
    x_inf = ds.test.images[: int(spec["inference_batch"])]
    passes = int(spec["passes"])
    for net in nets.values():  # warm-up: allocator, kernels, and BatchNorm statistics
        for _ in range(int(spec.get("warmup", 1))):
            _time_train(net, batches)
    folded: dict[str, nn.Module] = {}
    diffs: dict[str, float] = {}
    for name in spec.get("fold", []):
        copy = sg_nn.fold_batchnorm(nets[name])
        folded[f"{name}+folded"] = copy
        with torch.no_grad():
            reference = nets[name].eval()(x_inf)
            diffs[name] = float((copy(x_inf) - reference).abs().max())
    train_times: dict[str, list[float]] = {name: [] for name in nets}
    inference_nets = {**nets, **folded}
    inference_times: dict[str, list[float]] = {name: [] for name in inference_nets}
    for _ in range(int(spec["repeats"])):
        jobs: list[tuple[str, str]] = [("train", n) for n in nets]
        jobs += [("inference", n) for n in inference_nets]
        rng.shuffle(jobs)
        for kind, name in jobs:
            if kind == "train":
                # Training changes the weights; timing does not depend on their values.
                train_times[name].append(_time_train(nets[name], batches))
            else:
                inference_times[name].append(_time_inference(inference_nets[name], x_inf, passes))
    return {
        "train": train_times,
        "inference": inference_times,
        "fold_max_abs_diff": diffs,
        "threads": torch.get_num_threads(),
    }


TASKS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "profile": profile,
    "timing": timing,
    "train": train_run,
}
"""Task name → function(spec) → JSON-able result."""


def task_names() -> list[str]:
    """The task names a spec may use."""
    return sorted(TASKS)
