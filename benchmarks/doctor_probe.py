"""How long ``steadygrad.doctor.diagnose`` takes on the reference network (target: < 2 s).

``python -m benchmarks.doctor_probe [--repeats R] [--threads T] [--all-presets] [--no-append]``

The reference network (``steadygrad.models.preset("reference")``: 784-300-100-10, BatchNorm,
ELU) is diagnosed on a batch of 256 Fashion-MNIST training images (``doctor.data_batch``; random
pixels in [0, 1] with random labels when the dataset is not installed, said in the output) with
the defaults: one monitored forward and backward, 20 monitored SGD steps at lr 0.01, a second
probe. *Cold* is the first call in the process (after the imports: it pays torch's and the
monitor's first-use costs, as ``steadygrad doctor --preset reference`` does); *warm* is the median
of ``R`` further calls. ``--all-presets`` adds one warm call per preset of
``steadygrad.models.PRESETS`` with its verdict.

The table is printed and appended, with the command and the machine, to
``benchmarks/RESULTS.md`` as a dated section under the heading "Doctor probe" (written once).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.common import command_line, cpu_model
from steadygrad import doctor, models
from steadygrad.errors import DataError

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Doctor probe"
TARGET_SECONDS = 2.0
BATCH = 256


def _batch() -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """256 Fashion-MNIST training images, or random pixels when the dataset is missing."""
    try:
        return doctor.data_batch("fashion-mnist", BATCH, seed=0), "Fashion-MNIST training images"
    except DataError as error:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(BATCH, 784, generator=g)
        y = torch.randint(0, 10, (BATCH,), generator=g)
        return (x, y), f"random pixels (Fashion-MNIST not found: {error})"


def _timed(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, doctor.Diagnosis]:
    model = models.preset(name, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    diagnosis = doctor.diagnose(model, batch)
    return time.perf_counter() - started, diagnosis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm calls (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--all-presets", action="store_true", help="also time every preset")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    batch, source = _batch()

    cold, diagnosis = _timed("reference", batch)
    warm = [_timed("reference", batch)[0] for _ in range(args.repeats)]
    median = statistics.median(warm)
    rows = [
        ("reference, cold (first call)", cold, diagnosis.verdict),
        (f"reference, warm (median of {len(warm)})", median, diagnosis.verdict),
    ]
    if args.all_presets:
        for name in sorted(models.PRESETS):
            if name == "reference":
                continue
            seconds, found = _timed(name, batch)
            rows.append((name, seconds, found.verdict))
    passed = cold < TARGET_SECONDS and median < TARGET_SECONDS
    load_after = os.getloadavg()

    lines = [
        "| network | diagnose (s) | verdict |",
        "|---|---:|---|",
        *(f"| {name} | {seconds:.3f} | {verdict} |" for name, seconds, verdict in rows),
    ]
    command = command_line("doctor_probe", argv)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"### {stamp}",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical "
        f"cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s), Python "
        f"{platform.python_version()}; load average {[round(v, 2) for v in load_before]} "
        f"before, {[round(v, 2) for v in load_after]} after.",
        f"- Workload: `doctor.diagnose(preset('reference'), batch)` with the defaults (probe, "
        f"20 monitored SGD steps at lr 0.01, second probe); batch of {BATCH} {source}.",
        f"- Target < {TARGET_SECONDS:g} s (cold and warm): "
        f"{'met' if passed else 'NOT met'} (cold {cold:.3f} s, warm median {median:.3f} s, "
        f"warm runs {', '.join(f'{w:.3f}' for w in warm)}).",
        "",
        *lines,
        "",
    ]
    text = "\n".join(report)
    print(text)
    if not args.no_append:
        existing = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
        with RESULTS.open("a", encoding="utf-8") as handle:
            if HEADING not in existing:
                handle.write(("\n" if not existing.endswith("\n\n") else "") + HEADING + "\n")
            handle.write("\n" + text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
