"""Inference latency of the reference network: BatchNorm folded, without BatchNorm, and unfolded.

``python -m benchmarks.inference [--batch-sizes 1,1000] [--seconds 3] [--threads N] [--quick]``

Three eval-mode variants of the reference network (``steadygrad.models.preset("reference")``):

* ``unfolded``: the network as trained, each BatchNorm applied with its moving statistics;
* ``folded``: ``steadygrad.nn.fold_batchnorm(model)``, each BatchNorm merged into the Dense before
  it (``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``; Jacob et al., 2018);
* ``no-bn``: the same architecture built without BatchNorm
  (``preset("reference", batch_norm=None, batch_norm_output=False)``): the latency folding
  should reach.

The moving statistics are first filled by train-mode forward passes over Fashion-MNIST images
(so folding changes real numbers), and the folded outputs are checked against the unfolded ones.
Latency is measured under ``torch.inference_mode()``: blocks of consecutive calls (about 2 ms
each) are timed with ``time.perf_counter``, the three variants interleaved block by block for
``--seconds`` per batch size, and the median seconds per call over the blocks is reported, with
the 10th–90th percentiles. Ratios are against ``no-bn`` (``folded / no-bn``: the goal is ≤ 1.05),
of the medians and of the 10th percentiles (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.common import command_line, section_head
from benchmarks.epoch import RESULTS, append_results

VARIANTS = ("folded", "no-bn", "unfolded")
BLOCK_SECONDS = 0.002


def build_variants(images: torch.Tensor, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The three eval-mode variants; BatchNorm statistics filled from ``images`` (N, 784)."""
    from steadygrad import models
    from steadygrad.nn import fold_batchnorm

    gen = torch.Generator().manual_seed(seed)
    model = models.preset("reference", generator=gen)
    model.train()
    with torch.no_grad():  # fill the moving averages: 20 batches of 250 in train mode
        for start in range(0, min(len(images), 5000), 250):
            model(images[start : start + 250])
    model.eval()
    no_bn = models.preset(
        "reference", batch_norm=None, batch_norm_output=False, generator=gen
    ).eval()
    return {"folded": fold_batchnorm(model), "no-bn": no_bn, "unfolded": model}


def fold_error(variants: dict[str, torch.nn.Module], x: torch.Tensor) -> float:
    """Largest ``|folded(x) − unfolded(x)|`` (float rounding only, when folding is right)."""
    with torch.inference_mode():
        diff = variants["folded"](x) - variants["unfolded"](x)
    return float(diff.abs().max())


def _calls_per_block(fn: Callable[[], object]) -> int:
    for _ in range(20):  # warm-up: allocator, caches, lazy initialisation
        fn()
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < 0.05:
        fn()
        n += 1
    return max(1, int(BLOCK_SECONDS / ((time.perf_counter() - started) / n)))


def measure(
    variants: dict[str, torch.nn.Module], x: torch.Tensor, seconds: float
) -> dict[str, list[float]]:
    """Seconds per call of each variant on ``x``, one value per timed block, interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        calls = {
            name: _calls_per_block(lambda m=model: m(x))  # type: ignore[misc]
            for name, model in variants.items()
        }
        deadline = time.perf_counter() + seconds
        rounds = 0
        while time.perf_counter() < deadline or rounds < 5:
            names = list(variants)
            names = names[rounds % len(names) :] + names[: rounds % len(names)]
            for name in names:
                model, k = variants[name], calls[name]
                started = time.perf_counter()
                for _ in range(k):
                    model(x)
                samples[name].append((time.perf_counter() - started) / k)
            rounds += 1
    return samples


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(results: dict[int, dict[str, list[float]]]) -> str:
    """Markdown: batch, variant, median µs per call, 10th–90th percentiles, ratios vs no-BN.

    Two ratios: of the medians, and of the 10th percentiles (on a shared machine the fast blocks
    are the ones nobody interrupted, so the p10 ratio is the steadier estimate of the cost).
    """
    lines = [
        "| batch | variant | median µs/call | p10–p90 µs | ratio vs no-BN (median) "
        "| ratio vs no-BN (p10) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch, samples in results.items():
        base_med = statistics.median(samples["no-bn"])
        base_p10 = _quantile(samples["no-bn"], 0.1)
        for name in VARIANTS:
            med = statistics.median(samples[name])
            lo, hi = _quantile(samples[name], 0.1), _quantile(samples[name], 0.9)
            lines.append(
                f"| {batch} | {name} | {med * 1e6:.1f} | {lo * 1e6:.1f}–{hi * 1e6:.1f} "
                f"| {med / base_med:.3f} | {lo / base_p10:.3f} |"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.inference",
        description="Inference latency of the reference network: BatchNorm folded "
        "(steadygrad.nn.fold_batchnorm) vs without BatchNorm vs unfolded.",
    )
    p.add_argument("--batch-sizes", default="1,1000", help="batch sizes (default 1,1000)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per batch size (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="0.5 s per batch size, no RESULTS.md")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"markdown file to append to (default {RESULTS}; none with --quick); '-' for none",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        batch_sizes = []
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        parser.error(
            f"--batch-sizes must be comma-separated integers >= 1; got {args.batch_sizes!r}"
        )
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0; got {args.seconds}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    seconds = 0.5 if args.quick else args.seconds
    results_path = args.results if args.results is not None else (None if args.quick else RESULTS)
    if results_path is not None and str(results_path) == "-":
        results_path = None

    from steadygrad import data

    images = data.load("fashion-mnist").train.images  # (N, 784) float32
    variants = build_variants(images)
    error = fold_error(variants, images[:1000])
    started = datetime.datetime.now(datetime.UTC)
    results = {b: measure(variants, images[:b].clone(), seconds) for b in batch_sizes}
    command = command_line("inference", argv)
    section = "\n".join(
        [
            *section_head(
                "inference latency",
                started,
                command,
                f", {torch.get_num_threads()} threads; `torch.inference_mode()`",
            ),
            f"- Reference network (784-300-100-10, BatchNorm + ELU), eval mode, moving "
            f"statistics from 20 train-mode batches of Fashion-MNIST. max |folded − unfolded| "
            f"on 1,000 images: {error:.2e}.",
            f"- Median over blocks of ~{BLOCK_SECONDS * 1e3:.0f} ms of consecutive calls, the "
            f"three variants interleaved block by block, {seconds:g} s per batch size.",
            "",
            table(results),
            "",
        ]
    )
    print(section)
    if results_path is not None:
        append_results(results_path, section)
        print(f"appended to {results_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
