"""What every runner shares: the network, the optimizer, the run spec, results, memory, FLOPs.

Standard library only at import time (numpy inside :func:`load_arrays`), because this module is
also imported by the JAX/Keras workers running in ``.bench-env/``, whose peak memory must not
include an unused ``import torch``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import platform
import resource
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: The reference network (the seed's): 784-300-100-10, each Dense followed by BatchNorm, ELU after
#: the two hidden BatchNorms, BatchNorm on the logits; He-normal weights, zero biases.
WIDTHS: tuple[int, ...] = (784, 300, 100, 10)
#: BatchNorm momentum in the seed's/Keras' convention: the fraction of the moving average kept
#: (PyTorch's ``BatchNorm1d(momentum=p)`` takes ``p = 1 - BN_MOMENTUM``).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3
#: Optimizers every runner implements identically, with their default learning rates: Adam as
#: in ``steadygrad train`` (Kingma & Ba, 2015; β₁ 0.9, β₂ 0.999, ε 1e-8 as in ``torch.optim.Adam``)
#: and plain SGD as in the seed (``GradientDescentOptimizer(0.01)``).
DEFAULT_LR: dict[str, float] = {"adam": 1e-3, "sgd": 0.01}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

REPO = Path(__file__).resolve().parent.parent
BENCH_ENV = REPO / ".bench-env"
RESULT_MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class Runner:
    """One way of training the reference network for an epoch.

    ``env`` is ``"main"`` (the project's ``.venv``) or ``"alt"`` (``.bench-env/``, JAX + Keras).
    """

    name: str
    title: str
    env: str


#: Every runner, in table order. ``floor`` is not a training loop: its "epoch" is the epoch's
#: FLOP count divided by a measured sgemm rate (see :mod:`benchmarks.floor`).
RUNNERS: dict[str, Runner] = {
    r.name: r
    for r in (
        Runner("floor", "floating-point floor (epoch FLOPs / measured sgemm rate)", "main"),
        Runner("steadygrad", "steadygrad `fit` (progress off, out=None)", "main"),
        Runner("torch-inmemory", "PyTorch eager, batches sliced from in-memory tensors", "main"),
        Runner("torch-dataloader", "PyTorch eager, DataLoader(TensorDataset) loop", "main"),
        Runner("jax-scan", "JAX, jit + lax.scan over the whole epoch, by hand", "alt"),
        Runner("keras-jax", "Keras 3 `fit`, JAX backend", "alt"),
        Runner("keras-torch", "Keras 3 `fit`, torch backend", "alt"),
    )
}
MAIN_RUNNERS = tuple(name for name, r in RUNNERS.items() if r.env == "main")
ALT_RUNNERS = tuple(name for name, r in RUNNERS.items() if r.env == "alt")


def check_runner(name: str) -> Runner:
    """The :class:`Runner` called ``name``; ``ValueError`` naming the closest valid one."""
    if name in RUNNERS:
        return RUNNERS[name]
    close = difflib.get_close_matches(name, list(RUNNERS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"runner must be one of {', '.join(RUNNERS)}; got {name!r}{hint}")


@dataclass(frozen=True)
class RunSpec:
    """What one worker process runs: ``epochs`` epochs of ``runner`` at ``batch_size``.

    ``data`` is an ``.npz`` file with ``images`` (N, 784) uint8 and ``labels`` (N,) int64, the
    training split every runner trains on (pixels become ``byte / 255`` float32, as in
    ``steadygrad.data.load``). ``validation`` is the number of images held out of the 60 000
    training file before ``data`` was written (the steadygrad runner loads its data itself and
    checks that it gets the same ``n_train`` images).
    """

    runner: str
    batch_size: int
    epochs: int
    optimizer: str
    lr: float
    data: str
    n_train: int
    validation: int = 5000
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


@dataclass
class RunResult:
    """What a worker reports: the seconds and mean training loss of each epoch, and peak RSS.

    ``epoch_seconds[0]`` is the warm-up epoch; the harness times the later ones.
    """

    runner: str
    batch_size: int
    n_train: int
    epoch_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    threads: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        return cls(**json.loads(text))


def emit(result: RunResult) -> None:
    """Print ``result`` as the one marked line the harness parses (other output is ignored)."""
    sys.stdout.flush()
    sys.stdout.write(RESULT_MARKER + result.to_json() + "\n")
    sys.stdout.flush()


def parse_result(stdout: str) -> RunResult | None:
    """The last :data:`RESULT_MARKER` line of a worker's stdout, or ``None``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return RunResult.from_json(line[len(RESULT_MARKER) :])
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10⁶ bytes).

    ``VmHWM`` from ``/proc/self/status`` (the kernel's high-water mark of this address space, in
    KiB). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries that across ``fork`` + ``exec``,
    so a worker would report its parent's peak (the harness, with all the data loaded) whenever
    that is larger. ``ru_maxrss`` (KiB on Linux) only where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch: ``ceil(n / batch_size)`` (the last one may be partial)."""
    return -(-n // batch_size)


def epoch_flops(n: int, widths: tuple[int, ...] = WIDTHS) -> int:
    r"""Floating-point operations of the matrix products in one training epoch over ``n`` samples.

    A dense layer ``in → out`` on a batch of m rows costs, counting a multiply-add as 2 FLOPs:

    * forward ``Y = X Wᵀ``: ``2·m·in·out``;
    * backward, weight gradient ``∂W = ∂Yᵀ X``: ``2·m·in·out``;
    * backward, input gradient ``∂X = ∂Y W``: ``2·m·in·out``, for every layer but the first (the
      images need no gradient, and autograd does not compute it).

    Summed over the batches of an epoch (the sizes add up to ``n`` whatever the batch size):

    .. math::

        F = 2n\Big(2\sum_{l=1}^{L} d_{l-1} d_l + \sum_{l=2}^{L} d_{l-1} d_l\Big)
          = 6n\sum_{l} d_{l-1} d_l - 2n\,d_0 d_1 .

    For 784-300-100-10: ``Σ d_{l-1}d_l = 235 200 + 30 000 + 1 000 = 266 200``, so
    ``F = n·(6·266 200 − 2·235 200) = 1 126 800·n``: 61.97 GFLOP for n = 55 000 and 67.61 GFLOP
    for n = 60 000. The common "backward = 2 × forward" rule (``6n Σ d_{l-1}d_l``, 95.8 GFLOP at
    60 000) counts the first layer's unneeded input gradient. BatchNorm, ELU, softmax, bias and
    optimizer updates are O(n·Σd_l) elementwise work (≈ 0.2 % of F) and are not counted.
    """
    products = [a * b for a, b in itertools.pairwise(widths)]
    return 2 * n * (2 * sum(products) + sum(products[1:]))


def naive_epoch_flops(n: int, widths: tuple[int, ...] = WIDTHS) -> int:
    """``6·n·Σ d_{l-1}d_l``: forward ``2·n·Σ d_{l-1}d_l`` and backward twice that, for reference."""
    return 6 * n * sum(a * b for a, b in itertools.pairwise(widths))


def gemm_shapes(batch: int, widths: tuple[int, ...] = WIDTHS) -> list[tuple[str, int, int, int]]:
    """The (name, m, k, n) of every matrix product ``(m, k) @ (k, n)`` of one training step.

    Forward ``(batch, in) @ (in, out)``; weight gradient ``(out, batch) @ (batch, in)``; input
    gradient ``(batch, out) @ (out, in)`` for layers after the first (see :func:`epoch_flops`).
    """
    shapes: list[tuple[str, int, int, int]] = []
    pairs = list(itertools.pairwise(widths))
    for i, (d_in, d_out) in enumerate(pairs, start=1):
        shapes.append((f"fwd{i}", batch, d_in, d_out))
    for i, (d_in, d_out) in reversed(list(enumerate(pairs, start=1))):
        shapes.append((f"dW{i}", d_out, batch, d_in))
        if i > 1:
            shapes.append((f"dX{i}", batch, d_out, d_in))
    return shapes


def load_arrays(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(x, y)`` arrays of a :class:`RunSpec` ``data`` file: float32 ``byte/255``, int64."""
    import numpy as np

    with np.load(path) as f:
        images, labels = f["images"], f["labels"]
    x = images.astype(np.float32)
    x /= np.float32(255.0)  # same IEEE float32 division as steadygrad.data.load
    return x, labels.astype(np.int64)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """SIMD flags of interest (AVX2, FMA, AVX-512 F/BF16/VNNI, AMX) found in ``/proc/cpuinfo``."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran: ``python -m benchmarks.<module>`` and its arguments (``argv``, or the
    process's own when None), shell-quoted, for the RESULTS.md entries."""
    args = sys.argv[1:] if argv is None else argv
    return f"python -m benchmarks.{module} {shlex.join(args)}".strip()


def section_head(title: str, started: datetime, command: str, torch_note: str = "") -> list[str]:
    """The first lines of a dated RESULTS.md section: its heading, the command and the machine
    (``torch_note`` follows the torch version, e.g. the thread count)."""
    import torch

    info = machine_info()
    return [
        f"## {started.strftime('%Y-%m-%d %H:%M UTC')} — {title}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {info['cpu']}, {info['logical_cores']} logical cores, load average "
        f"{info['load_average']} at the end; torch {torch.__version__}{torch_note}.",
    ]


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores (all / usable by this process), memory, OS and Python."""
    mem_gb: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
