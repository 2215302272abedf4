"""Where a recorded step of ``steadygrad.monitor.watch`` spends its time, in one run.

``python -m benchmarks.monitor_profile [--steps N] [--repeats R] [--threads T] [--no-append]``

The reference network (784-300-100-10, BatchNorm, ELU), batch 50, plain SGD in a hand-written
torch loop on random inputs (no dataset needed: the cost does not depend on the values), every
step recorded (``watch(every=1)``). Four configurations, interleaved ``R`` times with a rotated
order, ``N`` steps each, CPU time of this process (``time.process_time``: other processes on a
shared machine do not count):

- **off**: no monitor;
- **hooks only**: ``watch(every=1)`` with every statistic replaced by a constant: the queued
  reductions, the weight pass (``distances_and_moments``: constant rows, no pass over the
  weights) and the planned read's native call (``record_stats``: constant numbers) — what the
  hooks, the module-call path they force, the bookkeeping and the record (JSON line included)
  cost, on the same path as **full** (steps read by the plan);
- **full**: ``watch(every=1)``;
- **reductions alone**: no monitor; after each backward pass, the reductions one record needs
  (Σx and Σx² of the 9 forward and backward signals and of W and ∂L/∂W of the 3 layers, the
  saturation counts of the 2 ELU inputs, ‖ΔW‖² and the weight snapshot), back to back, then
  read — the floor of the statistics as computed today.

Reported per step: the median over repeats of (configuration − off) within the repeat. The
table is printed and appended to ``benchmarks/RESULTS.md`` under "Monitor profile".
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import command_line
from benchmarks.monitor_overhead import append_results
from steadygrad import models, monitor, native
from steadygrad.monitor import _stats

HEADING = "## Monitor profile"
BATCH = 50
CONFIGS = ("off", "hooks only", "full", "reductions alone")


@contextmanager
def _statistics_stubbed() -> Iterator[None]:
    """Every queued statistic is a constant 0-d tensor; the weight pass and the planned read's
    native call give constants without reading a tensor (the first weight copy is taken)."""
    zero = torch.zeros(())
    kernels = native.load()

    class Constant:
        """``native.load()``'s module, but ``record_stats`` answers ones (sums that suffice)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(kernels, name)

        @staticmethod
        def record_stats(tensors: Any, kinds: list[int], *rest: Any) -> torch.Tensor:
            rows = rest[2]
            size = sum(3 if k == _stats.KIND_MOMENTS else 1 for k in kinds) + 6 * len(rows) + 1
            return torch.ones(size, dtype=torch.float64)

    def distances(
        after: list[torch.Tensor], before: list[torch.Tensor], *, copy: bool
    ) -> torch.Tensor:
        return torch.zeros(len(after), 3, dtype=torch.float64)

    def moments(t: torch.Tensor, batch: _stats.Batch, *, keep: bool = True) -> _stats.Moments:
        return _stats.Moments(1, batch.add(zero), batch.add(zero), t)

    def moments_many(
        tensors: list[torch.Tensor], batch: _stats.Batch
    ) -> list[_stats.Moments | None]:
        return [_stats.Moments(1, batch.add(zero), batch.add(zero), t) for t in tensors]

    saved = {
        name: getattr(_stats, name)
        for name in (
            "moments", "moments_many", "count_saturated", "count_dead", "sum_of_squares",
            "distances_and_moments",
        )
    }  # fmt: skip
    load = native.load
    _stats.moments = moments  # type: ignore[assignment]
    _stats.moments_many = moments_many  # type: ignore[assignment]
    _stats.count_saturated = lambda x, lo, hi, batch: batch.add(zero)  # type: ignore[assignment]
    _stats.count_dead = lambda x, dim, below, batch: (batch.add(zero), 1)  # type: ignore[assignment]
    _stats.sum_of_squares = lambda x: zero  # type: ignore[assignment]
    _stats.distances_and_moments = distances  # type: ignore[assignment]
    constant = Constant()
    native.load = lambda: constant  # type: ignore[assignment,return-value]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_stats, name, value)
        native.load = load  # type: ignore[method-assign]


def _reductions(
    model: torch.nn.Module, signals: list[torch.Tensor], snapshots: list[torch.Tensor]
) -> list[float]:
    """The reductions of one record, back to back, then read (see the module docstring)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        tensors = [*signals, *weights, *(w.grad for w in weights if w.grad is not None)]
        out = [t.sum() for t in tensors]
        out += [_stats.sum_of_squares(t) for t in tensors]
        out += [torch.count_nonzero(t < -2.3) for t in signals[:2]]
        for before, w in zip(snapshots, weights, strict=True):
            out.append(_stats.sum_of_squares(before.sub_(w)))
            before.copy_(w)
    return [float(v.item()) for v in out]


def measure(steps: int, repeats: int) -> dict[str, list[float]]:
    """Per-repeat CPU seconds per step of each configuration."""
    torch.manual_seed(0)
    model = models.preset("reference")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
        for _ in range(steps)
    ]
    # forward signals the reductions-alone configuration measures: pre-activations and
    # activations of the 3 layers (the ELU inputs first), and the back-propagated signals
    captured: list[torch.Tensor] = []
    modules = [model.get_submodule(n) for n in ("hidden1_act", "hidden2_act", "outputs_bn")]
    snapshots = [
        m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]

    def capture(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        captured.extend([args[0].detach(), output.detach()])

    def train(log: Callable[[torch.Tensor], None] | None, reduce: bool = False) -> None:
        for x, y in batches:
            captured.clear()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if reduce:
                ordered = [captured[0], captured[2], captured[1], captured[3], *captured[4:]]
                grads = [ordered[0], ordered[1], ordered[4]]  # the shapes of ∂L/∂z1..3
                _reductions(model, ordered + grads, snapshots)
            optimizer.step()
            if log is not None:
                log(loss.detach())

    def run(config: str, folder: Path) -> float:
        started = time.process_time()
        if config == "off":
            train(None)
        elif config == "reductions alone":
            handles = [m.register_forward_hook(capture) for m in modules]
            try:
                train(None, reduce=True)
            finally:
                for h in handles:
                    h.remove()
        elif config == "hooks only":
            with _statistics_stubbed(), monitor.watch(model, every=1, out=folder) as mon:
                train(mon.log_loss)
        else:
            with monitor.watch(model, every=1, out=folder) as mon:
                train(mon.log_loss)
        return (time.process_time() - started) / steps

    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for config in CONFIGS:
            run(config, folder)  # warm-up
        for r in range(repeats):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for config in order:
                times[config].append(run(config, folder))
    return times


def table(times: dict[str, list[float]]) -> str:
    """Markdown: ms per step, and µs per step over "off" (median of paired differences)."""
    off = times["off"]
    lines = [
        "| configuration | ms / step (median) | over unmonitored, µs / step (median of paired "
        "differences) |",
        "|---|---:|---:|",
    ]
    for config in CONFIGS:
        runs = times[config]
        extra = statistics.median((m - o) * 1e6 for m, o in zip(runs, off, strict=True))
        lines.append(
            f"| {config} | {statistics.median(runs) * 1e3:.3f} | "
            f"{'' if config == 'off' else f'{extra:.0f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monitor_profile")
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = table(measure(args.steps, args.repeats))
    print(text)
    if not args.no_append:
        command = command_line("monitor_profile", argv)
        append_results(text, command, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
