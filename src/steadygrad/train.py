"""Mini-batch training of a classifier on in-memory data, with checkpoints and exact resume.

The seed trains its 784-300-100-10 network with mini-batch gradient descent, prints the test
accuracy after every epoch and saves a checkpoint at the end. :func:`fit` does that for any
``nn.Module`` that maps a batch of flattened images ``(batch, features)`` to logits
``(batch, classes)``, and adds what a long run needs:

* **Throughput**: batches are sliced from device-resident tensors by one shuffled index per epoch;
  the step makes no host synchronisation (loss and accuracy are summed on the device and read once
  per epoch; the progress bar reads the running loss every ``progress_every`` steps, and only when
  it is shown).
* **Determinism**: shuffling uses its own ``torch.Generator`` seeded from ``config.seed``; the
  same seed and config give bitwise-identical weights on the same machine.
* **Checkpoints**: after every epoch (and at a step boundary when SIGINT/SIGTERM arrives) the model,
  optimizer, RNG states, epoch, step, config and history are written atomically to
  ``<out>/checkpoint.safetensors`` (see :mod:`steadygrad.checkpoint`); the end of training also
  writes ``<out>/final.safetensors``. ``resume=True`` continues from the last checkpoint and ends
  bitwise identical to an uninterrupted run.
* **Divergence**: a NaN/Inf loss stops training with :class:`~steadygrad.errors.TrainingDiverged`
  naming the epoch, the step and the first layer whose gradient went non-finite. The loss flag is
  kept on the device; when it trips, the epoch is replayed from its in-memory start snapshot with
  per-step checks to find the exact step and layer, so the fast path pays nothing for it. The last
  good checkpoint is never overwritten by a diverged epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import nn

from steadygrad import checkpoint, fast
from steadygrad.data import Dataset, Split
from steadygrad.errors import CheckpointError, RunLocked, TrainingDiverged

if TYPE_CHECKING:
    from steadygrad.monitor import Monitor
    from steadygrad.monitor._watch import _FastObserver

__all__ = [
    "CHECKPOINT_NAME",
    "FINAL_NAME",
    "METRICS_NAME",
    "OPTIMIZERS",
    "History",
    "TrainConfig",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "make_optimizer",
    "resolve_device",
    "run_lock",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
FINAL_NAME = "final.safetensors"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".lock"
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
# Most steps fit takes in one native call without a progress bar (FastStep.train_steps): a
# signal is answered, and the checkpoint written, after at most this many steps (~0.13 s at
# batch 50 on the reference network).
_RUN = 100

History = list[dict[str, Any]]


@dataclass
class TrainConfig:
    """How to train. Round-trips through :meth:`to_dict` / :meth:`from_dict` (JSON-able).

    The defaults are the reference preset's: Adam at 1e-3 with the seed's batch of 50 reaches about
    0.88 test accuracy on Fashion-MNIST in 10 epochs with the batch-normalized ELU network.
    """

    optimizer: str = "adam"  # "sgd" | "momentum" (SGD, momentum 0.9) | "nesterov" | "adam"
    lr: float = 1e-3  # learning rate
    epochs: int = 10
    batch_size: int = 50  # the seed's mini-batch size
    seed: int = 42  # seeds the shuffling generator (model init is seeded by the caller)
    device: str = "auto"  # "cpu", "cuda", "cuda:1", … or "auto" (cuda when available)
    momentum: float = 0.9  # for "momentum" and "nesterov"
    weight_decay: float = 0.0  # L2 penalty added by the optimizer
    out: str | None = None  # run folder for checkpoints and metrics.jsonl; None keeps nothing
    eval_batch_size: int = 10_000  # evaluation chunks (bounds memory, not results)
    progress: bool | None = None  # progress bar; None = only when stderr is a terminal
    progress_every: int = 50  # steps between progress-bar loss reads (each one is a host sync)
    fast: bool = True  # steadygrad.fast's hand-written step where it applies (equal to rounding)
    native: bool = True  # its C++ forward/backward (steadygrad.native) where it applies and builds
    threads: int | None = None  # torch intra-op threads while training; None keeps torch's
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, stored with the run

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and what is allowed."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; "
                f"got {self.optimizer!r}"
            )
        _check_number("lr", self.lr, positive=True)
        _check_number("momentum", self.momentum, low=0.0, high=1.0)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None; got {self.threads!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "progress_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {self.seed!r}")
        if not isinstance(self.device, str):
            raise ValueError(
                f"device must be a string such as 'cpu' or 'auto'; got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _check_number(
    name: str,
    value: object,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value!r}")
    if high is not None and value >= high:
        raise ValueError(f"{name} must be < {high}; got {value!r}")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at a step boundary after a checkpoint was written.

    ``signum`` is the signal received; a CLI exits with ``128 + signum``.
    """

    def __init__(self, message: str, *, signum: int, checkpoint_path: Path | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint_path = checkpoint_path


_held_locks: dict[Path, tuple[int, int]] = {}  # resolved run folder → (fd, depth)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on a run folder for as long as the context lasts.

    Uses ``fcntl.flock`` on ``<run_dir>/.lock``: the kernel releases the lock when its process
    dies, so a lock left by a killed run is taken over without any staleness heuristics, while a
    live holder makes the second process fail fast with :class:`~steadygrad.errors.RunLocked`
    naming its PID. Re-entrant within one process. Where ``fcntl`` does not exist (Windows) the
    folder is not locked.
    """
    folder = Path(run_dir).resolve()
    if folder in _held_locks:
        fd, depth = _held_locks[folder]
        _held_locks[folder] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held_locks[folder]
            _held_locks[folder] = (fd, depth - 1)
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLocked(
            f"run folder {run_dir} is in use by process {holder}; wait for it to finish "
            "or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held_locks[folder] = (fd, 1)
    try:
        yield
    finally:
        del _held_locks[folder]
        os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; anything else is parsed by torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was requested but CUDA is not available; use --device cpu"
        )
    return device


def make_optimizer(params: Iterator[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` (SGD; SGD with momentum or Nesterov; Adam)."""
    wd = config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "nesterov":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=wd
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=wd)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 10_000) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``split``, in eval mode.

    The model's train/eval mode is restored afterwards. Sums stay on the device and are read once.
    """
    n = len(split)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for start in range(0, n, batch_size):
            x = split.images[start : start + batch_size]
            y = split.labels[start : start + batch_size]
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}


@dataclass
class _Progress:
    """Where training stands; everything a checkpoint needs besides tensors."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps (global)
    step_in_epoch: int = 0  # completed steps of the current (unfinished) epoch
    history: History = field(default_factory=list)


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if _is_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: give up waiting for the step boundary
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _batch_size_plan(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; a trailing batch of one sample is dropped.

    BatchNorm cannot normalise a batch of one in train mode.
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def _first_nonfinite_grad(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


def _json_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rewrite_metrics(path: Path, history: History) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in history:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[int, torch.Tensor], None] | None = None,
    run_meta: dict[str, Any] | None = None,
    monitor: Monitor | None = None,
) -> History:
    """Train ``model`` on ``data.train`` with mini-batches; evaluate validation and test each epoch.

    Loss: mean cross-entropy of the logits, ``L = −(1/m) Σᵢ log softmax(f(xᵢ))_{yᵢ}`` over each
    mini-batch of m samples. After every epoch the record ``{epoch, step, train_loss,
    train_accuracy, val_loss, val_accuracy, test_loss, test_accuracy, train_seconds, seconds}``
    (``train_seconds``: the training steps alone; ``seconds``: with evaluation) is appended to the
    returned history, passed to ``on_epoch_end`` and, when ``config.out`` is set, appended to
    ``<out>/metrics.jsonl`` after the epoch's checkpoint is written.

    Steps: :mod:`steadygrad.fast`'s hand-written step where it applies (``config.fast``), with its
    forward and backward in :mod:`steadygrad.native`'s C++ kernel where that applies and builds
    (``config.native``; the first use on a machine compiles it, about a minute); the plain
    autograd step elsewhere. The three agree to float rounding; each is deterministic, so a run
    and its resumption on the same path are bitwise identical.

    ``on_step_end(step, loss)`` (optional) is called after each optimizer step with the global step
    and the loss tensor (still on the device: reading it synchronises). ``run_meta`` is stored in
    every checkpoint (the CLI puts the model and data configs there).

    ``monitor``: a :func:`steadygrad.monitor.watch` on ``model`` (made without ``optimizer=``).
    ``fit`` gives it each step's loss and takes every step by the fast step where it applies,
    which the monitor's hooks would otherwise turn off for the whole run: the monitor counts the
    steps it does not record (``Monitor.pass_step``) and is shown the ones it records
    (``Monitor.fast_observer``); elsewhere recorded steps run through ``forward`` and autograd.

    With ``resume=True`` training continues from ``<out>/checkpoint.safetensors`` (epoch boundary
    or mid-epoch), restoring model, optimizer and RNG states, so the result is bitwise identical to
    an uninterrupted run. The run folder is locked (:func:`run_lock`) while training.

    Raises:
        TrainingDiverged: the loss or a gradient became NaN/Inf (names epoch, step and layer).
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written first.
        RunLocked: another live process is training into ``config.out``.
        ValueError: bad configuration, or the model's output does not fit the labels.
    """
    cfg = config if config is not None else TrainConfig()
    lock = run_lock(cfg.out) if cfg.out is not None else contextlib.nullcontext()
    with lock, _threads(cfg.threads):
        return _fit(model, data, cfg, resume, on_epoch_end, on_step_end, run_meta, monitor)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the context, then restore torch's setting.

    On a small machine shared with other work, one thread is often faster than two for the
    reference network's small matrices (OpenMP threads spin while they wait for each other);
    the thread count also changes float summation order, so a run is bitwise reproducible only
    with the same setting.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    resume: bool,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    on_step_end: Callable[[int, torch.Tensor], None] | None,
    run_meta: dict[str, Any] | None,
    monitor: Monitor | None = None,
) -> History:
    cfg.validate()
    if monitor is not None and monitor.step_unit != "forward":
        raise ValueError(
            "monitor counts optimizer steps (watch(..., optimizer=...)), but fit makes its own "
            "optimizer: give fit a monitor made without optimizer="
        )
    device = resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs config.out, the run folder to resume from")

    model.to(device)
    train, val, test = (s.to(device) for s in (data.train, data.validation, data.test))
    if len(train) < 2:
        raise ValueError(f"the training split needs at least 2 samples; got {len(train)}")
    _check_output_shape(model, train)

    optimizer = make_optimizer(iter(list(model.parameters())), cfg)
    # The fast step computes the same update without autograd (see steadygrad.fast); it falls
    # back to the plain step by itself whenever a call cannot be taken fast (hooks, e.g.).
    # With cfg.native, its forward and backward run in C++ (steadygrad.native, built on first use;
    # without a compiler the Python fast step runs).
    fast_step = (
        fast.make_step(model, optimizer, ignore_hooks_of=monitor, native=cfg.native)
        if cfg.fast
        else None
    )

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss.detach(), logits.detach()

    take_step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = (
        fast_step if fast_step is not None else plain_step
    )
    observer: _FastObserver | None = None
    if monitor is not None and fast_step is not None:
        watcher, fast_only = monitor, fast_step

        observer = watcher.fast_observer()

        def monitored_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Where the update can give the parameters' sums (csrc/update.cpp), the monitor takes
            # the weights' moments and the update's norm from it: no snapshot, no extra passes.
            if watcher.records_next_step():  # the fast step shows the monitor what hooks would see
                out = fast_only.try_fast(
                    x, y, ignore_hooks_of=watcher, observer=observer, update_stats=observer.updated
                )
            elif observer.wants_norms() and fast_only.gives_stats():
                out = fast_only.try_fast(
                    x,
                    y,
                    ignore_hooks_of=watcher,
                    before=observer.pass_step,
                    update_stats=observer.updated,
                    change_only=True,  # only the update's norm: the record's update ratio
                )
            else:
                out = fast_only.try_fast(x, y, ignore_hooks_of=watcher, before=watcher.pass_step)
            if out is not None:
                return out
            # Through forward and autograd, so the monitor's hooks see (and count) the step;
            # the update is still the fast step's fused one.
            return fast_only.autograd_step(x, y)

        take_step = monitored_step
    # Whether runs of steps may go to the native loop (FastStep.train_steps; it declines by
    # itself where it does not apply): not where a callback must see every step.
    chunked = fast_step is not None and cfg.native and on_step_end is None
    shuffle = torch.Generator(device="cpu").manual_seed(cfg.seed)
    epoch_start_rng = shuffle.get_state()
    progress = _Progress()
    sums = _EpochSums(device)

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # A process killed mid-write leaves its temporary file behind; the real files are intact.
        for name in (CHECKPOINT_NAME, FINAL_NAME, METRICS_NAME):
            for stale in out.glob(f".{name}.tmp-*"):
                stale.unlink(missing_ok=True)
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    metrics_path = out / METRICS_NAME if out is not None else None

    if resume:
        assert ckpt_path is not None and metrics_path is not None
        if not ckpt_path.exists():
            raise CheckpointError(
                f"cannot resume: {ckpt_path} does not exist; run without --resume to start fresh"
            )
        tensors, meta = checkpoint.load(ckpt_path)
        stored = meta.get("train_config", {})
        _check_resumable(stored, cfg, ckpt_path)
        checkpoint.unpack_state(tensors, meta, model, optimizer, {"shuffle": shuffle})
        for group in optimizer.param_groups:  # a changed --lr applies from here on
            group["lr"] = cfg.lr
        progress = _Progress(
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            step_in_epoch=int(meta["step_in_epoch"]),
            history=list(meta["history"]),
        )
        epoch_start_rng = tensors["progress/epoch_start_rng"].clone()
        sums.load(tensors)
        _rewrite_metrics(metrics_path, progress.history)

    def save(path: Path) -> None:
        tensors, meta = checkpoint.pack_state(
            model,
            optimizer,
            {"shuffle": shuffle},
            {
                "epoch": progress.epoch,
                "step": progress.step,
                "step_in_epoch": progress.step_in_epoch,
                "history": progress.history,
                "train_config": cfg.to_dict(),
                **(run_meta or {}),
            },
        )
        tensors["progress/epoch_start_rng"] = epoch_start_rng.clone()
        tensors.update(sums.tensors())
        checkpoint.save(path, tensors, meta)

    if ckpt_path is not None and not resume:
        save(ckpt_path)  # epoch 0: there is always a last good checkpoint to go back to

    plan = _batch_size_plan(len(train), cfg.batch_size)
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    model.train()
    with _SignalCatcher() as catcher, _progress_bar(show) as bar:
        while progress.epoch < cfg.epochs:
            epoch = progress.epoch  # 0-based index of the epoch being run
            if progress.step_in_epoch == 0:
                epoch_start_rng = shuffle.get_state()
                sums.reset()
            else:  # mid-epoch resume: regenerate this epoch's permutation
                shuffle.set_state(epoch_start_rng)
            perm = torch.randperm(len(train), generator=shuffle).to(device)
            snapshot = _snapshot(model, optimizer)
            snap_k, snap_step = progress.step_in_epoch, progress.step
            started = time.perf_counter()
            task = bar.start(epoch + 1, cfg.epochs, len(plan), progress.step_in_epoch)
            k = progress.step_in_epoch
            while k < len(plan):
                # Runs of steps nothing needs to see one by one (no callback; with a monitor,
                # the steps it does not record) go to the native loop in one call (csrc/loop.cpp,
                # FastStep.train_steps). A run ends where the progress bar is drawn, so the bar
                # reads the same sums. With a monitor, the recorded steps are recorded inside the
                # run (fast.RunRecords) once the monitor has learnt from one replayed step what to
                # read; until then a run ends before a recorded step, its last step's update
                # giving that record's update norm.
                end = (k // cfg.progress_every + 1) * cfg.progress_every if show else k + _RUN
                end = min(len(plan), end)
                last: str | None = None  # the run's last step's sums: None or "change"
                records: fast.RunRecords | None = None
                if monitor is not None:
                    end, last, records = _monitored_run(monitor, observer, fast_step, k, end)
                taken = None
                if chunked and end > k:
                    assert fast_step is not None
                    taken = fast_step.train_steps(
                        train.images,
                        train.labels,
                        perm,
                        plan[k:end],
                        sums.loss_sum,
                        sums.correct,
                        ignore_hooks_of=monitor,
                        last_sums=last,
                        records=records,
                    )
                if taken is not None and taken.steps:
                    if monitor is not None:
                        _tell_monitor(monitor, observer, fast_step, taken, end - k, last, records)
                    sums.count += sum(hi - lo for lo, hi in plan[k : k + taken.steps])
                    k += taken.steps
                    progress.step += taken.steps
                else:
                    lo, hi = plan[k]
                    idx = perm[lo:hi]
                    x = train.images.index_select(0, idx)
                    y = train.labels.index_select(0, idx)
                    loss, logits = take_step(x, y)
                    sums.add(loss, logits, y, None if fast_step is None else fast_step.last_correct)
                    k += 1
                    progress.step += 1
                    if monitor is not None:
                        monitor.log_loss(loss)
                    if on_step_end is not None:
                        on_step_end(progress.step, loss)
                progress.step_in_epoch = k
                if show and k % cfg.progress_every == 0:
                    bar.update(task, k, sums.running_loss())
                if catcher.signum is not None:
                    signum = catcher.signum
                    if not sums.diverged() and ckpt_path is not None:
                        save(ckpt_path)
                    raise TrainingInterrupted(
                        f"interrupted by signal {signum} at epoch {epoch + 1}, step "
                        f"{progress.step}"
                        + (f"; checkpoint written to {ckpt_path}" if ckpt_path else ""),
                        signum=signum,
                        checkpoint_path=ckpt_path,
                    )
            bad = sums.diverged()  # also the epoch's one host sync: timing is honest
            train_seconds = time.perf_counter() - started
            if bad:
                _restore(model, optimizer, snapshot)
                replaying = monitor.paused() if monitor is not None else contextlib.nullcontext()
                with replaying:  # the replay's steps were recorded already
                    _diagnose_divergence(
                        model,
                        optimizer,
                        take_step,
                        train,
                        plan,
                        perm,
                        epoch,
                        snap_k,
                        snap_step,
                        cfg,
                        ckpt_path,
                    )
            train_loss, train_acc = sums.read()
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": progress.step,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
            }
            for prefix, split in (("val", val), ("test", test)):
                result = evaluate(model, split, cfg.eval_batch_size)
                record[f"{prefix}_loss"] = result["loss"]
                record[f"{prefix}_accuracy"] = result["accuracy"]
            # Wall time of the epoch's training steps and evaluation: informational only.
            record["train_seconds"] = round(train_seconds, 4)
            record["seconds"] = round(time.perf_counter() - started, 3)
            progress.history.append(record)
            progress.epoch += 1
            progress.step_in_epoch = 0
            sums.reset()
            bar.finish(task)
            if ckpt_path is not None and metrics_path is not None:
                save(ckpt_path)
                _json_line(metrics_path, record)
            if on_epoch_end is not None:
                on_epoch_end(record)
    if out is not None:
        save(out / FINAL_NAME)
    return progress.history


def _monitored_run(
    monitor: Monitor,
    observer: _FastObserver | None,
    step: fast.FastStep | None,
    k: int,
    end: int,
) -> tuple[int, str | None, fast.RunRecords | None]:
    """Where a native run from the epoch's step ``k`` ends (≤ ``end``) with ``monitor``
    watching, whether its last step's update gives Σ(Δθ)² (``"change"``: the step after the run
    is recorded, and that is its update ratio's numerator; else None), and the run's steps
    recorded where they run.

    Once the monitor has learnt what to read of a native step (``observer.run_plan``), the run
    goes to ``end`` and records its recorded steps inside (one call, whatever ``every``).
    Before that, the run stops before the next recorded step, which the caller's per-step path
    takes and replays to the monitor, which learns from it (``k`` itself: no run)."""
    if observer is None or step is None:
        return k, None, None
    layout = step.kept_layout()
    if layout is not None and step.gives_stats():
        plan = observer.run_plan(*layout, step.params, step.record_plan)
        if plan is not None:
            every = monitor.every
            first = 0 if monitor.records_next_step() else monitor.steps_to_pass() + 1
            steps = end - k
            at = list(range(first, steps, every))
            after = steps >= first and (steps - first) % every == 0  # the step after the run
            return end, "change" if after else None, fast.RunRecords(at, plan) if at else None
    if monitor.records_next_step():
        return k, None, None
    ahead = monitor.steps_to_pass()
    if k + ahead < end and step.gives_stats():
        return k + ahead + 1, "change", None
    return min(end, k + ahead), None, None


def _tell_monitor(
    monitor: Monitor,
    observer: _FastObserver | None,
    step: fast.FastStep | None,
    taken: fast.StepsTaken,
    asked: int,
    last: str | None,
    records: fast.RunRecords | None,
) -> None:
    """Tell ``monitor`` of a native run's steps (:func:`_monitored_run`'s): the unrecorded ones
    counted, the recorded ones recorded, and the last one's sums, where it gave them."""
    if records is not None:
        assert observer is not None and step is not None
        counted = observer.ran(taken.steps, records.at, taken.records)
        if counted < taken.steps:  # a recorded step whose numbers need the precise path
            layout = step.kept_layout()
            assert counted == taken.steps - 1 and layout is not None
            assert taken.kept is not None and taken.loss is not None
            observer.kept(layout[0], taken.kept)
            observer.updated(step.params, taken.sums)
            monitor.log_loss(taken.loss)
        elif taken.sums is not None:  # Σ(Δθ)² for the recorded step after the run
            observer.updated(step.params, taken.sums)
        return
    plain = taken.steps - (1 if last is not None and taken.steps == asked else 0)
    if plain:
        monitor.pass_step(plain)
    if plain < taken.steps:
        assert observer is not None and step is not None
        observer.pass_step()  # counted; the norm comes with the sums: no copy of the weights
        observer.updated(step.params, taken.sums)


def _check_output_shape(model: nn.Module, train: Split) -> None:
    """Fail early, with the shapes, when the model's logits cannot match the labels."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(train.images[:2])
    finally:
        model.train(was_training)
    classes = int(train.labels.max().item()) + 1
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model output must be logits of shape (batch, {classes}) for {classes} classes; "
            f"got {shape}"
        )


def _check_resumable(stored: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Resuming must not silently change the run.

    Allowed to change: ``epochs`` (train longer), ``lr`` (the usual answer to a divergence; the
    result is then no longer identical to an uninterrupted run), and options that do not affect
    the numbers (progress, device, out, eval_batch_size).
    """
    ignore = {
        "epochs",
        "lr",
        "progress",
        "progress_every",
        "device",
        "out",
        "eval_batch_size",
        "fast",
        "native",
    }
    current = cfg.to_dict()
    changed = [k for k in current if k not in ignore and k in stored and stored[k] != current[k]]
    if changed:
        k = changed[0]
        raise CheckpointError(
            f"cannot resume from {path}: option {k} was {stored[k]!r} and is now {current[k]!r}; "
            "use the original options or a new --out folder"
        )


class _EpochSums:
    """Loss and accuracy sums of the epoch, kept on the device (no host sync per step).

    A non-finite loss makes ``loss_sum`` non-finite for the rest of the epoch, which is all the
    divergence check needs: the replay in :func:`_diagnose_divergence` finds the exact step.
    Two small kernels per step where the step counted its right argmaxes (the native kernel),
    five elsewhere (the first version also tracked the first bad step on the device and cost
    three times as much; see docs/performance.md).
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.count = 0

    def add(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        y: torch.Tensor,
        correct: torch.Tensor | None = None,
    ) -> None:
        """``correct``: the step's count of right argmaxes where the step already counted them
        (``FastStep.last_correct``), saving three kernels."""
        m = y.shape[0]
        self.loss_sum.add_(loss, alpha=m)  # float32 loss summed in float64
        if correct is None:
            correct = (logits.argmax(dim=1) == y).sum()
        self.correct.add_(correct)
        self.count += m

    def diverged(self) -> bool:
        return not bool(torch.isfinite(self.loss_sum))

    def running_loss(self) -> float:
        return float(self.loss_sum.item()) / max(self.count, 1)

    def read(self) -> tuple[float, float]:
        n = max(self.count, 1)
        return self.loss_sum.item() / n, self.correct.item() / n

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "progress/loss_sum": self.loss_sum.detach().cpu().clone(),
            "progress/correct": self.correct.detach().cpu().clone(),
            "progress/count": torch.tensor(self.count, dtype=torch.int64),
        }

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.loss_sum.copy_(tensors["progress/loss_sum"])
        self.correct.copy_(tensors["progress/correct"])
        self.count = int(tensors["progress/count"])


_Snapshot = tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor]


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> _Snapshot:
    """Epoch-start copy of model, optimizer and global RNG state (for the divergence replay)."""
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    opt_copy = {
        "state": {
            i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
            for i, s in opt_state["state"].items()
        },
        "param_groups": [dict(g) for g in opt_state["param_groups"]],
    }
    return model_state, opt_copy, torch.get_rng_state()


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, snap: _Snapshot) -> None:
    model.load_state_dict(snap[0])
    optimizer.load_state_dict(snap[1])
    torch.set_rng_state(snap[2])


def _diagnose_divergence(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    take_step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    train: Split,
    plan: list[tuple[int, int]],
    perm: torch.Tensor,
    epoch: int,
    start_k: int,
    start_step: int,
    cfg: TrainConfig,
    ckpt_path: Path | None,
) -> None:
    """Replay the epoch with per-step checks to name the first non-finite step and layer.

    Training is deterministic and the replay takes the same steps (``take_step``, which leaves
    each step's gradients in ``.grad``), so it walks the same path as the loop did; it stops at
    the first step whose loss or gradient is non-finite and raises. The model is left at the
    replay's start state (the last good one).
    """
    snapshot = _snapshot(model, optimizer)
    found_step, layer, loss_value = start_step, None, float("nan")
    for k in range(start_k, len(plan)):
        lo, hi = plan[k]
        idx = perm[lo:hi]
        x = train.images.index_select(0, idx)
        y = train.labels.index_select(0, idx)
        loss, _ = take_step(x, y)
        layer = _first_nonfinite_grad(model)
        loss_value = float(loss.item())
        if layer is not None or not math.isfinite(loss_value):
            found_step = start_step + k - start_k
            break
    else:  # the replay stayed finite: something outside the training step changed the model
        layer, loss_value = None, float("nan")
    _restore(model, optimizer, snapshot)
    where = f"epoch {epoch + 1}, step {found_step + 1}"
    grad_note = (
        f"first non-finite gradient in {layer!r}"
        if layer is not None
        else "all gradients were finite; the loss itself overflowed"
    )
    kept = (
        f"the last good checkpoint {ckpt_path} is untouched"
        if ckpt_path is not None and ckpt_path.exists()
        else "no checkpoint was written for this epoch"
    )
    raise TrainingDiverged(
        f"training diverged at {where}: loss is {loss_value}; {grad_note}; {kept}. "
        f"Lower the learning rate (now {cfg.lr:g}) or add batch normalization",
        epoch=epoch + 1,
        step=found_step + 1,
        layer=layer,
    )


class _Bar:
    """A rich progress bar per epoch (steps/s, running loss), or nothing when hidden."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress

    def start(self, epoch: int, epochs: int, total: int, done: int) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(
            f"epoch {epoch}/{epochs}", total=total, completed=done, loss=float("nan")
        )

    def update(self, task: Any, completed: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(task, completed=completed, loss=loss)

    def finish(self, task: Any) -> None:
        if self._progress is not None:
            self._progress.remove_task(task)


@contextlib.contextmanager
def _progress_bar(show: bool) -> Iterator[_Bar]:
    if not show:
        yield _Bar(None)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _SpeedColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as p:
        yield _Bar(p)


class _SpeedColumn(ProgressColumn):
    """Steps per second from rich's own speed estimate (rich ships no such column)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("      - steps/s" if speed is None else f"{speed:>7.0f} steps/s")
