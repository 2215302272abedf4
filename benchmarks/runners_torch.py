"""The PyTorch runners: steadygrad's ``fit`` and the two loops a PyTorch user writes by hand.

Each ``run_*`` function trains the reference network (see :mod:`benchmarks.common`) for
``spec.epochs`` epochs on the spec's data, times every epoch with ``time.perf_counter`` (CPU
execution is synchronous, so no device sync is needed) and returns a :class:`RunResult`. The
harness calls them in a fresh worker process each, so that peak RSS is per runner.

All three keep the mean training loss of each epoch on the device (``loss_sum += m · loss``) and
read it once per epoch, as steadygrad's trainer does, so no loop pays a per-step host read the
others do not.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    ADAM_BETAS,
    ADAM_EPS,
    BN_EPSILON,
    BN_MOMENTUM,
    WIDTHS,
    RunResult,
    RunSpec,
    load_arrays,
    peak_rss_mb,
    steps_per_epoch,
)


def reference_network(widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    """The reference network written with plain ``torch.nn``, as a PyTorch user would.

    ``Linear → BatchNorm1d(momentum=1 − 0.9, eps=1e-3) → ELU`` per hidden layer, then
    ``Linear → BatchNorm1d`` on the logits; weights He-normal ``N(0, 2/fan_in)`` (He et al.,
    2015), biases zero. Seed torch's global RNG before calling for reproducible weights.
    """
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(widths))
    for i, (d_in, d_out) in enumerate(pairs):
        linear = nn.Linear(d_in, d_out)
        nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(d_out, momentum=1.0 - BN_MOMENTUM, eps=BN_EPSILON)]
        if i < len(pairs) - 1:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def make_optimizer(params: Any, spec: RunSpec) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (β 0.9/0.999, ε 1e-8) or plain ``torch.optim.SGD`` at ``spec.lr``.

    Both with torch's default implementation choice (``foreach`` on CPU tensors), as
    ``steadygrad.train.make_optimizer`` builds them.
    """
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {spec.optimizer!r}")


def _tensors(spec: RunSpec) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_arrays(spec.data)
    return torch.from_numpy(x), torch.from_numpy(y)


def _result(spec: RunSpec, seconds: list[float], losses: list[float], **extra: Any) -> RunResult:
    return RunResult(
        runner=spec.runner,
        batch_size=spec.batch_size,
        n_train=spec.n_train,
        epoch_seconds=seconds,
        train_loss=losses,
        peak_rss_mb=peak_rss_mb(),
        threads=torch.get_num_threads(),
        versions={"torch": torch.__version__},
        extra=extra,
    )


def run_torch_inmemory(spec: RunSpec) -> RunResult:
    """The plain in-memory loop: one ``randperm`` per epoch, batches by ``index_select``."""
    torch.manual_seed(spec.seed)
    x, y = _tensors(spec)  # (N, 784) float32, (N,) int64
    model = reference_network()
    optimizer = make_optimizer(model.parameters(), spec)
    n, b = len(y), spec.batch_size
    seconds: list[float] = []
    losses: list[float] = []
    model.train()
    for _ in range(spec.epochs):
        loss_sum = torch.zeros(())
        started = time.perf_counter()
        perm = torch.randperm(n)
        for lo in range(0, n, b):
            idx = perm[lo : lo + b]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        seconds.append(time.perf_counter() - started)
        losses.append(loss_sum.item() / n)
    return _result(spec, seconds, losses)


def run_torch_dataloader(spec: RunSpec) -> RunResult:
    """The tutorial loop: ``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(spec.seed)
    x, y = _tensors(spec)
    loader = DataLoader(TensorDataset(x, y), batch_size=spec.batch_size, shuffle=True)
    model = reference_network()
    optimizer = make_optimizer(model.parameters(), spec)
    loss_fn = nn.CrossEntropyLoss()
    seconds: list[float] = []
    losses: list[float] = []
    model.train()
    for _ in range(spec.epochs):
        loss_sum = torch.zeros(())
        started = time.perf_counter()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
        seconds.append(time.perf_counter() - started)
        losses.append(loss_sum.item() / len(y))
    return _result(spec, seconds, losses)


def _steadygrad_data(spec: RunSpec) -> Any:
    """``steadygrad.data.load`` as a user calls it, cut to ``spec.n_train`` images for ``--quick``.

    Checks that the images are the ones in ``spec.data`` (the other runners' data).
    """
    import numpy as np

    from steadygrad import data

    dataset = data.load("fashion-mnist", validation=spec.validation)
    n = spec.n_train
    if len(dataset.train) < n:
        raise ValueError(f"steadygrad.data.load gave {len(dataset.train)} images; need {n}")
    if len(dataset.train) > n:  # --quick: the first n images, and small evaluation splits
        m = max(2, n // 10)
        dataset = data.Dataset(
            train=data.Split(dataset.train.images[:n], dataset.train.labels[:n]),
            validation=data.Split(dataset.validation.images[:m], dataset.validation.labels[:m]),
            test=data.Split(dataset.test.images[:m], dataset.test.labels[:m]),
            name=dataset.name,
            classes=dataset.classes,
        )
    with np.load(spec.data) as f:
        labels = f["labels"]
    if not np.array_equal(dataset.train.labels.numpy(), labels):
        raise RuntimeError(f"steadygrad.data.load's training labels differ from {spec.data}")
    return dataset


def _trainer_reports_train_seconds(data_module: Any, train_module: Any) -> bool:
    """Whether ``fit``'s epoch records carry ``train_seconds`` (train-only time), by a tiny fit."""
    torch.manual_seed(0)
    tiny = data_module.Split(torch.rand(8, WIDTHS[0]), torch.arange(8) % WIDTHS[-1])
    probe = data_module.Dataset(train=tiny, validation=tiny, test=tiny, name="probe")
    config = train_module.TrainConfig(epochs=1, batch_size=4, progress=False, out=None)
    history = train_module.fit(reference_network(), probe, config)
    return "train_seconds" in history[-1]


def run_steadygrad(spec: RunSpec) -> RunResult:
    """``steadygrad.train.fit(preset("reference"), data, TrainConfig(progress=False, out=None))``.

    The trainer evaluates validation and test after each epoch; that is excluded from the timing:
    when the epoch records carry ``train_seconds`` that is used, otherwise the epoch is timed from
    the end of the previous epoch's ``on_epoch_end`` (after its evaluation) to the
    ``on_step_end`` of its last step (which adds one Python call per step).
    """
    from steadygrad import data as sg_data
    from steadygrad import models
    from steadygrad import train as sg_train

    dataset = _steadygrad_data(spec)
    has_train_seconds = _trainer_reports_train_seconds(sg_data, sg_train)
    torch.manual_seed(spec.seed)
    model = models.preset("reference")
    config = sg_train.TrainConfig(
        optimizer=spec.optimizer,
        lr=spec.lr,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
        device="cpu",
        out=None,
        progress=False,
    )
    steps = steps_per_epoch(spec.n_train, spec.batch_size)
    if spec.n_train % spec.batch_size == 1:
        steps -= 1  # fit drops a trailing batch of one sample (BatchNorm needs two)
    marks: dict[str, float] = {"epoch_start": time.perf_counter()}
    seconds: list[float] = []

    def on_step_end(step: int, loss: torch.Tensor) -> None:
        if step % steps == 0:
            seconds.append(time.perf_counter() - marks["epoch_start"])

    def on_epoch_end(record: dict[str, Any]) -> None:
        marks["epoch_start"] = time.perf_counter()

    step_hook: Callable[[int, torch.Tensor], None] | None = (
        None if has_train_seconds else on_step_end
    )
    marks["epoch_start"] = time.perf_counter()
    history = sg_train.fit(model, dataset, config, on_epoch_end=on_epoch_end, on_step_end=step_hook)
    if has_train_seconds:
        seconds = [float(r["train_seconds"]) for r in history]
    losses = [float(r["train_loss"]) for r in history]
    return _result(
        spec,
        seconds,
        losses,
        timing="train_seconds" if has_train_seconds else "on_epoch_end..on_step_end",
        epoch_seconds_with_eval=[float(r["seconds"]) for r in history],
    )
