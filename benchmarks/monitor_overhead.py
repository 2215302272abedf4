"""Cost of ``steadygrad.monitor.watch``: monitored over unmonitored training time, in one run.

``python -m benchmarks.monitor_overhead [--steps N] [--repeats R] [--threads T] [--no-append]``

The reference network (``steadygrad.models.preset("reference")``: 784-300-100-10, BatchNorm,
ELU) trains on Fashion-MNIST (``steadygrad.data.load()``), batch 50, for ``N`` steps per timed
run, in two training loops:

- **torch loop**: a hand-written PyTorch loop (forward, ``cross_entropy``, ``backward``, plain
  SGD lr 0.01, the seed's optimizer) — what a user's own loop pays;
- **steadygrad fit**: ``steadygrad.fit`` (Adam lr 1e-3, or ``--fit-optimizer`` momentum/SGD/Nesterov
  at lr 0.01; its fast step), given the monitor with
  ``fit(..., monitor=mon)`` as ``steadygrad train --monitor`` does: every step takes the native
  fast step, and the recorded ones are shown to the monitor (from the kernel's kept tensors and
  the update's sums, after one replayed step). Time is fit's ``train_seconds`` (evaluation
  excluded).

Each repeat times, per loop, three runs back to back in an order rotated from repeat to repeat:
unmonitored, ``watch(every=10)`` and ``watch(every=1)``, both writing ``monitor.jsonl`` to a
temporary folder and given each step's loss. The overhead of a cadence is the median over repeats
of the ratio monitored / unmonitored *within* the repeat, so drifts of the machine's speed (other
jobs, clock changes) cancel out. Targets: ≤ 1.03 at every=10, ≤ 1.25 at every=1.

The table is printed and appended, with the command, to ``benchmarks/RESULTS.md`` under the
heading "Monitor overhead".
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from steadygrad import data, models, monitor
from steadygrad.data import Dataset, Split
from steadygrad.train import TrainConfig, fit

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Monitor overhead"
TARGETS = {10: 1.03, 1: 1.25}
BATCH = 50
CONFIGS: list[tuple[str, int | None]] = [("off", None), ("every=10", 10), ("every=1", 1)]
LOOPS = ("torch loop", "steadygrad fit")


def _batches(dataset: Dataset, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``steps`` mini-batches of a fixed shuffle of the training split."""
    generator = torch.Generator().manual_seed(0)
    return list(data.batches(dataset.train, BATCH, generator=generator))[:steps]


def _torch_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    every: int | None,
    folder: Path,
) -> float:
    """Seconds to train on ``batches``, monitored every ``every`` steps (None: not monitored)."""

    def train(log: Callable[[torch.Tensor], None] | None) -> None:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if log is not None:
                log(loss.detach())

    started = time.perf_counter()
    if every is None:
        train(None)
    else:
        with monitor.watch(model, every=every, out=folder) as mon:
            train(mon.log_loss)
    return time.perf_counter() - started


def _subset(dataset: Dataset, images: int) -> Dataset:
    """The first ``images`` training images; small validation and test splits (not timed)."""

    def head(split: Split, n: int) -> Split:
        return Split(split.images[:n], split.labels[:n])

    return Dataset(
        train=head(dataset.train, images),
        validation=head(dataset.validation, 100),
        test=head(dataset.test, 100),
        name=dataset.name,
    )


def _fit_run(subset: Dataset, every: int | None, folder: Path, optimizer: str = "adam") -> float:
    """``train_seconds`` of one epoch of ``fit`` on ``subset``, monitored every ``every`` steps,
    with ``optimizer`` (a ``TrainConfig.optimizer``: Adam 1e-3, else SGD 0.01)."""
    torch.manual_seed(0)
    model = models.preset("reference")
    lr = 1e-3 if optimizer == "adam" else 0.01
    config = TrainConfig(
        optimizer=optimizer, lr=lr, epochs=1, batch_size=BATCH, seed=0, progress=False
    )
    if every is None:
        history = fit(model, subset, config)
    else:
        with monitor.watch(model, every=every, out=folder) as mon:
            history = fit(model, subset, config, monitor=mon)
    return float(history[-1]["train_seconds"])


def measure(
    steps: int, repeats: int, fit_optimizer: str = "adam"
) -> dict[str, dict[str, list[float]]]:
    """Per-repeat seconds, per loop (keys of LOOPS) and configuration ("off", "every=10", …)."""
    dataset = data.load()
    torch.manual_seed(0)
    model = models.preset("reference")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = _batches(dataset, steps)
    subset = _subset(dataset, steps * BATCH)
    warm = _subset(dataset, max(20, steps // 10) * BATCH)
    times: dict[str, dict[str, list[float]]] = {
        loop: {name: [] for name, _ in CONFIGS} for loop in LOOPS
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _, every in CONFIGS:  # warm-up: allocator, kernels, first-call paths
            _torch_loop(model, optimizer, batches[: max(20, steps // 10)], every, folder)
            _fit_run(warm, every, folder, fit_optimizer)
        for r in range(repeats):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            for name, every in order:
                times["torch loop"][name].append(
                    _torch_loop(model, optimizer, batches, every, folder)
                )
            for name, every in order:
                times["steadygrad fit"][name].append(_fit_run(subset, every, folder, fit_optimizer))
    return times


def table(
    times: dict[str, dict[str, list[float]]], steps: int
) -> tuple[str, dict[tuple[str, int], float]]:
    """A Markdown table of the results and the median ratio per (loop, cadence)."""
    lines = [
        "| loop | configuration | ms / step (median) | monitored / unmonitored (median of "
        "paired ratios) | target |",
        "|---|---|---|---|---|",
    ]
    ratios: dict[tuple[str, int], float] = {}
    for loop, per_config in times.items():
        off = per_config["off"]
        lines.append(f"| {loop} | unmonitored | {statistics.median(off) / steps * 1e3:.3f} | 1 | |")
        for every, target in TARGETS.items():
            runs = per_config[f"every={every}"]
            ratio = statistics.median(m / o for m, o in zip(runs, off, strict=True))
            ratios[(loop, every)] = ratio
            verdict = "met" if ratio <= target else "MISSED"
            lines.append(
                f"| {loop} | watch(every={every}) | {statistics.median(runs) / steps * 1e3:.3f} "
                f"| {ratio:.3f} | ≤ {target} ({verdict}) |"
            )
    return "\n".join(lines), ratios


def append_results(text: str, command: str, heading: str = HEADING) -> None:
    """Add a dated entry at the end of the ``heading`` section of RESULTS.md.

    The section is created at the end of the file the first time; later entries go after the
    previous ones, before the next section (other benchmarks write their own sections).
    """
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}"
    entry = (
        f"### {stamp}\n\n`{command}` — {machine}, {torch.get_num_threads()} thread(s)\n\n{text}\n"
    )
    existing = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    start = existing.find(heading + "\n")
    if start < 0:
        updated = existing.rstrip("\n") + ("\n\n" if existing else "") + heading + "\n\n" + entry
    else:
        following = existing.find("\n## ", start + len(heading))
        end = len(existing) if following < 0 else following + 1
        section = existing[:end].rstrip("\n") + "\n\n" + entry
        updated = section + ("\n" + existing[end:] if end < len(existing) else "")
    RESULTS.write_text(updated, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monitor_overhead")
    parser.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="training steps per timed run (default 1000: opening and closing a watch, ~4 ms "
        "once, is then under 0.3 %% of a run)",
    )
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--fit-optimizer",
        choices=("adam", "sgd", "momentum", "nesterov"),
        default="adam",
        help="fit's optimizer (default adam, as `steadygrad train`; the torch loop keeps SGD)",
    )
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    times = measure(args.steps, args.repeats, args.fit_optimizer)
    text, _ = table(times, args.steps)
    print(text)
    if not args.no_append:
        command = "python -m benchmarks.monitor_overhead " + shlex.join(
            sys.argv[1:] if argv is None else argv
        )
        append_results(text, command.strip())
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
