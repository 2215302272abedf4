"""The floating-point floor: an epoch's matrix-product FLOPs divided by a measured sgemm rate.

``floor seconds = epoch_flops(n) / R`` where :func:`benchmarks.common.epoch_flops` counts the
forward, weight-gradient and input-gradient products of the epoch, and ``R`` is the FLOP rate of
``torch.mm`` on the *representative shape* ``(batch, 784) @ (784, 300)`` — the first layer's
forward product, which carries 88 % of the FLOPs — measured on this machine with torch's default
threads. No training loop can run faster than its matrix products; BatchNorm, ELU, the loss and
the optimizer add elementwise work on top.

Also measured, for context: the rate of a large square product (2048³, close to the machine's
peak), and the time of the step's actual sequence of eight products with their real shapes and
transposes (:func:`benchmarks.common.gemm_shapes`), times the steps of an epoch ("matmuls only").
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from benchmarks.common import (
    WIDTHS,
    RunResult,
    RunSpec,
    epoch_flops,
    gemm_shapes,
    naive_epoch_flops,
    peak_rss_mb,
    steps_per_epoch,
)

SQUARE = 2048


def _best_seconds(fn: object, calls: int, repeats: int) -> float:
    """Best over ``repeats`` of the mean seconds per call of ``fn()`` over ``calls`` calls."""
    assert callable(fn)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def _calls_for(fn: object, budget: float) -> int:
    """How many calls of ``fn`` take about ``budget`` seconds (after a short warm-up)."""
    assert callable(fn)
    for _ in range(3):
        fn()
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < budget / 5 or n < 3:
        fn()
        n += 1
    per_call = (time.perf_counter() - started) / n
    return max(1, int(budget / per_call))


def sgemm_rate(m: int, k: int, n: int, budget: float = 0.25, repeats: int = 5) -> float:
    """FLOP/s of ``torch.mm`` on float32 ``(m, k) @ (k, n)`` into a preallocated output.

    ``2·m·k·n`` FLOPs per call; the best of ``repeats`` blocks of about ``budget`` seconds.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    out = torch.empty(m, n)

    def call() -> None:
        torch.mm(a, b, out=out)

    calls = _calls_for(call, budget)
    return 2.0 * m * k * n / _best_seconds(call, calls, repeats)


def step_gemm_seconds(batch: int, budget: float = 0.25, repeats: int = 5) -> float:
    """Seconds of one training step's matrix products alone, with autograd's shapes and layouts.

    Forward ``X @ Wᵀ`` (``torch.nn.Linear``'s layout), weight gradient ``∂Yᵀ @ X`` and input
    gradient ``∂Y @ W``, each into a preallocated output, in the order a step runs them.
    """
    gen = torch.Generator().manual_seed(0)
    pairs = list(itertools.pairwise(WIDTHS))
    weights = [torch.randn(d_out, d_in, generator=gen) for d_in, d_out in pairs]  # (out, in)
    acts = [torch.randn(batch, d, generator=gen) for d in WIDTHS]  # (batch, d_l)
    grads = [torch.randn(batch, d, generator=gen) for d in WIDTHS]
    fwd_out = [torch.empty(batch, d_out) for _, d_out in pairs]
    dw_out = [torch.empty(d_out, d_in) for d_in, d_out in pairs]
    dx_out = [torch.empty(batch, d_in) for d_in, _ in pairs]

    def step() -> None:
        for i, w in enumerate(weights):
            torch.mm(acts[i], w.t(), out=fwd_out[i])
        for i in reversed(range(len(weights))):
            torch.mm(grads[i + 1].t(), acts[i], out=dw_out[i])
            if i > 0:
                torch.mm(grads[i + 1], weights[i], out=dx_out[i])

    calls = _calls_for(step, budget)
    return _best_seconds(step, calls, repeats)


def run_floor(spec: RunSpec, budget: float = 0.25, square_size: int = SQUARE) -> RunResult:
    """The floor as a :class:`RunResult`: ``epoch_seconds == [flops / representative rate]``.

    ``extra`` holds the FLOP counts, the rates (FLOP/s) of the representative shape, of every
    shape of the step, of the ``square_size``³ product, and the "matmuls only" epoch seconds.
    ``budget`` is the seconds per timed block of the representative shape (the others scale).
    """
    n, b = spec.n_train, spec.batch_size
    flops = epoch_flops(n)
    representative = sgemm_rate(b, WIDTHS[0], WIDTHS[1], budget=budget)
    sq = square_size
    square = sgemm_rate(sq, sq, sq, budget=2 * budget, repeats=3)
    shapes = {
        name: sgemm_rate(m, k, nn, budget=0.4 * budget, repeats=3)
        for name, m, k, nn in gemm_shapes(b)
    }
    full, rest = divmod(n, b)
    gemm_epoch = full * step_gemm_seconds(b, budget) + (
        step_gemm_seconds(rest, budget) if rest else 0.0
    )
    floor = flops / representative
    return RunResult(
        runner=spec.runner,
        batch_size=b,
        n_train=n,
        epoch_seconds=[floor],
        train_loss=[],
        peak_rss_mb=peak_rss_mb(),
        threads=torch.get_num_threads(),
        versions={"torch": torch.__version__},
        extra={
            "epoch_flops": flops,
            "naive_epoch_flops": naive_epoch_flops(n),
            "steps": steps_per_epoch(n, b),
            "representative_shape": [b, WIDTHS[0], WIDTHS[1]],
            "representative_rate": representative,
            "square_shape": [sq, sq, sq],
            "square_rate": square,
            "shape_rates": shapes,
            "median_shape_rate": statistics.median(shapes.values()),
            "matmuls_only_seconds": gemm_epoch,
        },
    )
