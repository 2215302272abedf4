"""The native step's matrix products: ``csrc/gemm.h`` against ATen's (MKL), per thread count.

``python -m benchmarks.gemm [--threads 1,2] [--batch-sizes 50,256] [--blocks 15] [--no-append]``

One training step of the reference network does eight products (per layer ``(in, out)`` of
784-300, 300-100, 100-10: the forward ``X·Wᵀ``, the weight gradient ``δᵀ·X`` and, for the two upper
layers, the input gradient ``δ·W``). For each batch size and thread count, the eight products are
run back to back through ``steadygrad.native``'s ``sgemm`` (``csrc/gemm.h`` spread over torch's
threads by column panels, as the step calls it) and through ``torch.mm(..., out=)`` with the
same layouts, in alternating blocks of about 20 ms; reported are the best and median block times
per step and the ratio MKL ÷ gemm.h of the medians of the paired blocks (> 1: gemm.h is faster).
Both sides pay the same Python call per product. The native step uses gemm.h up to
``kOwnGemmThreads`` threads (``csrc/chain.cpp``); this benchmark is what chose that bound.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.common import WIDTHS, command_line, section_head
from benchmarks.epoch import RESULTS, append_results

BLOCK_SECONDS = 0.02


def step_products(
    batch: int, seed: int = 0
) -> tuple[Callable[[], None], Callable[[], None], list[torch.Tensor]]:
    """(gemm.h step, MKL step, their eight outputs): the products of one step, written by either
    side into the same preallocated outputs."""
    from steadygrad import native

    kernels = native.load()
    if kernels is None:
        raise SystemExit(f"native kernels unavailable: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for d_in, d_out in itertools.pairwise(WIDTHS):
        layers.append(
            {
                "W": torch.randn(d_out, d_in, generator=gen),
                "X": torch.randn(batch, d_in, generator=gen),
                "D": torch.randn(batch, d_out, generator=gen),
                "Y": torch.empty(batch, d_out),
                "dW": torch.empty(d_out, d_in),
                "dX": torch.empty(batch, d_in),
            }
        )

    def own() -> None:
        for t in layers:
            kernels.sgemm(False, True, t["X"], t["W"], t["Y"], 0.0)
        for i in reversed(range(len(layers))):
            t = layers[i]
            kernels.sgemm(True, False, t["D"], t["X"], t["dW"], 0.0)
            if i > 0:
                kernels.sgemm(False, False, t["D"], t["W"], t["dX"], 0.0)

    def mkl() -> None:
        for t in layers:
            torch.mm(t["X"], t["W"].t(), out=t["Y"])
        for i in reversed(range(len(layers))):
            t = layers[i]
            torch.mm(t["D"].t(), t["X"], out=t["dW"])
            if i > 0:
                torch.mm(t["D"], t["W"], out=t["dX"])

    one = torch.ones(1, 1)
    if not kernels.sgemm(False, False, one, one, torch.empty(1, 1), 0.0):
        raise SystemExit("csrc/gemm.h is not compiled here (it needs AVX2 and FMA)")
    outputs = [t[key] for t in layers for key in ("Y", "dW")] + [t["dX"] for t in layers[1:]]
    return own, mkl, outputs


def measure(batch: int, blocks: int) -> dict[str, list[float]]:
    """Seconds per step of each side, one sample per block, the sides alternating."""
    own, mkl, _ = step_products(batch)
    for fn in (own, mkl, own, mkl):
        fn()
    started = time.perf_counter()
    own()
    calls = max(1, int(BLOCK_SECONDS / max(time.perf_counter() - started, 1e-6)))
    samples: dict[str, list[float]] = {"gemm.h": [], "MKL": []}
    for b in range(blocks):
        order = (("gemm.h", own), ("MKL", mkl)) if b % 2 == 0 else (("MKL", mkl), ("gemm.h", own))
        for name, fn in order:
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - started) / calls)
    return samples


def table(rows: list[tuple[int, int, dict[str, list[float]]]]) -> str:
    lines = [
        "| threads | batch | gemm.h µs/step (best / median) | MKL µs/step (best / median) "
        "| MKL ÷ gemm.h (median of paired blocks) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for threads, batch, s in rows:
        ratio = statistics.median(m / o for m, o in zip(s["MKL"], s["gemm.h"], strict=True))
        lines.append(
            f"| {threads} | {batch} | {min(s['gemm.h']) * 1e6:.0f} / "
            f"{statistics.median(s['gemm.h']) * 1e6:.0f} | {min(s['MKL']) * 1e6:.0f} / "
            f"{statistics.median(s['MKL']) * 1e6:.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gemm", description=__doc__)
    p.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("--batch-sizes", default="50,256", help="batch sizes (default 50,256)")
    p.add_argument("--blocks", type=int, default=15, help="blocks per side (default 15)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    p.add_argument("--no-append", action="store_true", help="print only")
    args = p.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error("--threads and --batch-sizes take comma-separated integers, e.g. 1,2")
    if min(threads) < 1 or min(batches) < 1 or args.blocks < 1:
        p.error("--threads, --batch-sizes and --blocks must be >= 1")
    started = datetime.datetime.now(datetime.UTC)
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for b in batches:
            rows.append((t, b, measure(b, args.blocks)))
    command = command_line("gemm", argv)
    section = "\n".join(
        [
            *section_head("GEMM: csrc/gemm.h against MKL", started, command),
            "- The eight products of one step of the reference network, alternating blocks of "
            f"~{BLOCK_SECONDS * 1e3:.0f} ms, {args.blocks} per side.",
            "",
            table(rows),
            "",
        ]
    )
    print(section)
    if not args.no_append:
        append_results(args.results, section)
        print(f"appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
