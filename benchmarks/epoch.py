"""Seconds per training epoch of the reference network, side by side, in one run.

``python -m benchmarks.epoch [--batch-sizes 50,256] [--epochs 2] [--repeats 3]
[--with-alternatives] [--quick] [--runners a,b] [--optimizer adam|sgd] [--note TEXT]``

Every runner (:data:`benchmarks.common.RUNNERS`) trains the same network on the same training
images with the same optimizer, each in its own worker process (``python -m benchmarks.worker``)
so that its peak RSS is its own. A process runs ``--epochs`` epochs; the first is warm-up (JIT
compilation, allocator, caches) and the later ones are timed. Noise on a shared machine is
reduced by repetition and interleaving: ``--repeats`` rounds, each running every runner once per
batch size in a rotated order, and the table reports the best (minimum) timed epoch over all
rounds, with the median beside it. The floor is measured the same way (best sgemm rate).

The table goes to stdout and, as a dated section with the machine, the versions and the exact
command, to ``benchmarks/RESULTS.md`` (``--results``; ``--quick`` writes nothing unless
``--results`` is given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ALT_RUNNERS,
    DEFAULT_LR,
    MAIN_RUNNERS,
    REPO,
    RUNNERS,
    WIDTHS,
    RunResult,
    RunSpec,
    check_runner,
    command_line,
    epoch_flops,
    machine_info,
    naive_epoch_flops,
    parse_result,
)
from benchmarks.setup_alternatives import env_python, installed_versions, setup

RESULTS = REPO / "benchmarks" / "RESULTS.md"
QUICK_TRAIN = 4000  # images per epoch with --quick
TRAIN_FILE_IMAGES = 60_000  # Fashion-MNIST's training file, before the validation split


@dataclass
class Row:
    """Aggregated measurements of one runner at one batch size."""

    runner: str
    batch_size: int
    timed: list[float] = field(default_factory=list)  # every timed epoch of every repeat
    rss_mb: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # last-epoch training loss per repeat
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        return min(self.timed) if self.timed else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.timed) if self.timed else None


# --------------------------------------------------------------------------- command line


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 2 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers >= 2 (BatchNorm needs two samples); got {text!r}"
        )
    return sizes


def _runner_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must name at least one runner; got {text!r}")
    try:
        for name in names:
            check_runner(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return names


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.epoch",
        description="Seconds per epoch of the reference network: steadygrad's trainer against "
        "hand-written PyTorch, Keras 3 and JAX loops and the floating-point floor.",
    )
    p.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=[50, 256],
        metavar="B,B",
        help="mini-batch sizes (default 50,256)",
    )
    p.add_argument(
        "--epochs",
        type=_int_at_least(2),
        default=2,
        help="epochs per worker process; the first is warm-up, the rest are timed (default 2)",
    )
    p.add_argument(
        "--repeats",
        type=_int_at_least(1),
        default=None,
        help="interleaved rounds of fresh processes per runner (default 3; 1 with --quick)",
    )
    p.add_argument(
        "--runners",
        type=_runner_list,
        default=None,
        metavar="NAME,NAME",
        help=f"subset of {', '.join(RUNNERS)} (default: all; the JAX/Keras ones when "
        ".bench-env/ exists)",
    )
    p.add_argument(
        "--with-alternatives",
        action="store_true",
        help="install JAX and Keras into .bench-env/ if missing "
        "(python -m benchmarks.setup_alternatives) and run their runners",
    )
    p.add_argument(
        "--no-alternatives",
        action="store_true",
        help="skip the JAX/Keras runners even when .bench-env/ exists",
    )
    p.add_argument(
        "--optimizer",
        choices=sorted(DEFAULT_LR),
        default="adam",
        help="the optimizer every runner uses (default adam, as `steadygrad train`)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 1e-3 for adam, 0.01 for sgd)"
    )
    p.add_argument(
        "--validation",
        type=_int_at_least(0),
        default=5000,
        help="images held out of the 60,000 training file; the rest are trained on "
        "(default 5000: 55,000 training images, steadygrad's default split)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"development run: the first {QUICK_TRAIN} training images, 1 repeat, "
        "no RESULTS.md unless --results is given",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"markdown file to append the dated section to (default {RESULTS}); '-' for none",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--note", default="", help="a line for the RESULTS.md section (e.g. load)")
    p.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        help="force N compute threads: OMP_NUM_THREADS/MKL_NUM_THREADS for torch (and Keras "
        "on torch); for JAX only N=1 is possible (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false); "
        "default: each library's own choice",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds before a worker process is killed (default 1800)",
    )
    return p


# --------------------------------------------------------------------------- running


def write_training_data(folder: Path, validation: int, n_train: int | None) -> tuple[Path, int]:
    """Write the training split of ``steadygrad.data.load`` as uint8 ``.npz`` for the workers.

    The split's float32 pixels ``byte / 255`` are turned back into the exact bytes (checked), so
    every runner computes the same floats from them. Returns the file and its image count.
    """
    import numpy as np
    import torch

    from steadygrad import data

    train = data.load("fashion-mnist", validation=validation).train
    images, labels = train.images, train.labels
    if n_train is not None:
        images, labels = images[:n_train], labels[:n_train]
    as_bytes = torch.round(images * 255.0).to(torch.uint8)
    if not torch.equal(as_bytes.to(torch.float32).div_(255.0), images):
        raise RuntimeError("steadygrad.data.load's training images are not byte/255 values")
    path = folder / "train.npz"
    np.savez(path, images=as_bytes.numpy(), labels=labels.numpy())
    return path, len(labels)


def plan(
    runners: Sequence[str], batch_sizes: Sequence[int], repeats: int
) -> list[tuple[int, str, int]]:
    """``(round, runner, batch)`` in run order: each round visits every runner at every batch
    size, the runner order rotated by one per round so no runner always follows the same one."""
    order: list[tuple[int, str, int]] = []
    for r in range(repeats):
        k = r % len(runners)
        rotated = list(runners[k:]) + list(runners[:k])
        for b in batch_sizes:
            order += [(r, name, b) for name in rotated]
    return order


def worker_env(scratch: Path, threads: int | None = None) -> dict[str, str]:
    """The environment of a worker: this one, CPU-only JAX, Keras' config in ``scratch``, and
    ``threads`` compute threads for every library when given."""
    env = dict(os.environ)
    env.update(
        {
            "JAX_PLATFORMS": "cpu",  # no GPU probing on a CPU machine
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "KERAS_HOME": str(scratch / "keras"),  # Keras writes keras.json there, not in ~
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if threads == 1:  # XLA has no N-thread flag; it can only turn its Eigen pool off
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    return env


def run_worker(
    spec: RunSpec, timeout: float, scratch: Path, threads: int | None = None
) -> RunResult:
    """Run ``spec`` in a fresh process (``.bench-env``'s Python for JAX/Keras runners)."""
    runner = check_runner(spec.runner)
    python = str(env_python()) if runner.env == "alt" else sys.executable
    env = worker_env(scratch, threads)
    try:
        proc = subprocess.run(
            [python, "-m", "benchmarks.worker", spec.to_json()],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(
            spec.runner, spec.batch_size, spec.n_train, error=f"timed out after {timeout:.0f} s"
        )
    result = parse_result(proc.stdout)
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        result = RunResult(
            spec.runner,
            spec.batch_size,
            spec.n_train,
            error=f"exit {proc.returncode}: {tail[0][:300]}",
        )
    return result


def aggregate(results: Sequence[RunResult]) -> dict[tuple[str, int], Row]:
    """Group results by (runner, batch): timed epochs are ``epoch_seconds[1:]`` (all of the
    floor's, which has no warm-up), peak RSS per process, last-epoch loss per process."""
    rows: dict[tuple[str, int], Row] = {}
    for res in results:
        row = rows.setdefault((res.runner, res.batch_size), Row(res.runner, res.batch_size))
        if res.error is not None:
            row.errors.append(res.error)
            continue
        row.timed += res.epoch_seconds if res.runner == "floor" else res.epoch_seconds[1:]
        if res.peak_rss_mb is not None:
            row.rss_mb.append(res.peak_rss_mb)
        if res.train_loss:
            row.losses.append(res.train_loss[-1])
        row.versions.update(res.versions)
        row.threads = res.threads
        if res.runner == "floor" and res.extra:
            best = row.extra.get("representative_rate", 0.0)
            if res.extra["representative_rate"] >= best:
                row.extra = dict(res.extra)
        elif res.extra:
            row.extra = dict(res.extra)
    return rows


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows: dict[tuple[str, int], Row], runners: Sequence[str], batch: int) -> str:
    """The markdown table of one batch size: seconds, ratios, peak RSS, loss."""
    sg = rows.get(("steadygrad", batch))
    fl = rows.get(("floor", batch))
    sg_best = sg.best if sg is not None else None
    floor_best = fl.best if fl is not None else None
    lines = [
        "| runner | s/epoch (best) | s/epoch (median) | ratio vs steadygrad | × floor "
        "| peak RSS (MB) | train loss, last epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in runners:
        row = rows.get((name, batch))
        if row is None:
            continue
        title = f"`{name}`: {RUNNERS[name].title}"
        if row.best is None:
            lines.append(f"| {title} | failed: {'; '.join(row.errors)[:200]} | | | | | |")
            continue
        ratio = row.best / sg_best if sg_best else None
        over_floor = row.best / floor_best if floor_best else None
        rss = max(row.rss_mb) if row.rss_mb and name != "floor" else None
        loss = statistics.mean(row.losses) if row.losses else None
        lines.append(
            f"| {title} | {_fmt(row.best)} | {_fmt(row.median)} | {_fmt(ratio, 2)} "
            f"| {_fmt(over_floor, 2)} | {_fmt(rss, 0)} | {_fmt(loss, 4)} |"
        )
    return "\n".join(lines)


def floor_notes(rows: dict[tuple[str, int], Row], batch: int) -> str:
    """How the floor of one batch size was computed: FLOPs, rates, matmul-only time."""
    fl = rows.get(("floor", batch))
    if fl is None or not fl.extra:
        return ""
    e = fl.extra
    m, k, n = e["representative_shape"]
    rates = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in e["shape_rates"].items())
    return (
        f"Floor at batch {batch}: {e['epoch_flops'] / 1e9:.2f} GFLOP per epoch (exact count, "
        f"below) / {e['representative_rate'] / 1e9:.1f} GFLOP/s measured for torch.mm "
        f"({m}×{k})@({k}×{n}), the representative shape (first-layer forward, 88 % of the "
        f"FLOPs). Large square ({e['square_shape'][0]}³): {e['square_rate'] / 1e9:.1f} GFLOP/s "
        f"(floor at that rate: {e['epoch_flops'] / e['square_rate']:.3f} s). All eight products "
        f"of a step with their real shapes and layouts, timed alone: "
        f"{e['matmuls_only_seconds']:.3f} s per epoch. Per-shape GFLOP/s: {rates}."
    )


def markdown_section(
    rows: dict[tuple[str, int], Row],
    runners: Sequence[str],
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> str:
    """The dated RESULTS.md section: machine, versions, command, method, one table per batch."""
    info = meta["machine"]
    versions: dict[str, str] = {"python": info["python"]}
    for row in rows.values():
        versions.update(row.versions)
    threads = sorted({r.threads for r in rows.values() if r.threads is not None})
    sg_timing = next(
        (r.extra.get("timing") for r in rows.values() if r.runner == "steadygrad" and r.extra),
        None,
    )
    n = meta["n_train"]
    lines = [
        f"## {meta['started']} — {'quick run' if args.quick else 'full run'}",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {info['cpu']} ({', '.join(info['cpu_flags']) or 'no AVX flags'}), "
        f"{info['logical_cores']} logical cores ({info['usable_cores']} usable), "
        f"{info['memory_gb']} GB RAM, {info['os']}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after; {meta['minutes']:.1f} minutes in all.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}; torch "
        f"threads {', '.join(map(str, threads)) or '?'}"
        + (f" (forced by --threads {args.threads})" if args.threads else " (torch's default)")
        + (
            "; XLA's Eigen thread pool off for JAX (--xla_cpu_multi_thread_eigen=false)."
            if args.threads == 1
            else "; JAX uses XLA's own CPU thread pool."
        ),
        f"- Workload: {'-'.join(map(str, WIDTHS))} (Dense → BatchNorm(momentum 0.9, ε 1e-3) → "
        f"ELU ×2, Dense → BatchNorm on the logits; He-normal), Fashion-MNIST, {n:,} training "
        f"images per epoch ({'the first of ' if args.quick else ''}the training file less "
        f"{args.validation:,} validation images), last partial batch included, mean "
        f"cross-entropy, {args.optimizer} lr {meta['lr']} for every runner.",
        f"- Timing: each runner in its own process per batch size and round; {args.epochs} "
        f"epochs per process, the first is warm-up; {meta['repeats']} interleaved round(s) with "
        f"a rotated runner order; **best** = minimum over the {meta['repeats']} × "
        f"{args.epochs - 1} timed epochs (median beside it). steadygrad's evaluation after each "
        f"epoch is excluded (timed by {sg_timing or 'n/a'}). Peak RSS = the process's "
        f"VmHWM from /proc/self/status (MB = 10⁶ bytes), imports and data loading included.",
        "- Ratio vs steadygrad = runner's best / steadygrad's best (> 1: steadygrad is faster). "
        "× floor = runner's best / the floor.",
    ]
    if args.note:
        lines.append(f"- Note: {args.note}")
    for b in args.batch_sizes:
        lines += ["", f"### Batch size {b}", "", table(rows, runners, b)]
        notes = floor_notes(rows, b)
        if notes:
            lines += ["", notes]
    lines += [
        "",
        f"FLOP count per epoch of n images: F = 2n(2·Σ d_(l−1)d_l + Σ_(l≥2) d_(l−1)d_l) = "
        f"n·(6·266,200 − 2·235,200) = 1,126,800·n = {epoch_flops(n) / 1e9:.3f} GFLOP for "
        f"n = {n:,} (forward, weight gradients, and input gradients of layers 2–3; the "
        f'first layer\'s input gradient is never needed). The rule "backward = 2 × forward" '
        f"would give {naive_epoch_flops(n) / 1e9:.3f} GFLOP.",
        "",
    ]
    return "\n".join(lines)


def append_results(path: Path, section: str) -> None:
    """Append ``section`` to ``path``, creating it with a title if it does not exist."""
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nAppended by `python -m benchmarks.epoch`; newest last. "
            "See benchmarks/README.md for what each runner does.\n\n",
            encoding="utf-8",
        )
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + section)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.validation >= TRAIN_FILE_IMAGES - 1:
        parser.error(f"--validation must be < {TRAIN_FILE_IMAGES - 1}; got {args.validation}")
    if args.with_alternatives and args.no_alternatives:
        parser.error("--with-alternatives and --no-alternatives exclude each other")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.results is None:
        args.results = None if args.quick else RESULTS
    elif str(args.results) == "-":
        args.results = None

    if args.with_alternatives:
        try:
            setup()
        except RuntimeError as err:
            print(f"benchmarks.epoch: error: {err}", file=sys.stderr)
            return 1
    alt_ready = installed_versions() is not None
    if args.runners is not None:
        runners = list(args.runners)
        missing = [r for r in runners if r in ALT_RUNNERS] if not alt_ready else []
        if missing:
            parser.error(
                f"--runners {','.join(missing)} need .bench-env/: run with --with-alternatives "
                "or python -m benchmarks.setup_alternatives first"
            )
    else:
        runners = list(MAIN_RUNNERS)
        if alt_ready and not args.no_alternatives:
            runners += list(ALT_RUNNERS)
        elif not args.no_alternatives:
            print(
                "note: .bench-env/ not installed: skipping the JAX/Keras runners (add "
                "--with-alternatives to install them)",
                file=sys.stderr,
            )

    if "steadygrad" in runners:
        # Compile steadygrad's native kernels now (once per machine, about a minute) rather
        # than inside the first steadygrad worker.
        from steadygrad import native

        if native.load() is None:
            reason = native.unavailable_reason()
            print(
                f"note: steadygrad's native kernels are unavailable ({reason}); the steadygrad "
                "runner uses its Python fast step",
                file=sys.stderr,
            )

    started = datetime.datetime.now(datetime.UTC)
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="steadygrad-bench-") as tmp:
        scratch = Path(tmp)
        data_path, n_train = write_training_data(
            scratch, args.validation, QUICK_TRAIN if args.quick else None
        )
        order = plan(runners, args.batch_sizes, repeats)
        for i, (r, name, b) in enumerate(order, start=1):
            spec = RunSpec(
                runner=name,
                batch_size=b,
                epochs=1 if name == "floor" else args.epochs,
                optimizer=args.optimizer,
                lr=lr,
                data=str(data_path),
                n_train=n_train,
                validation=args.validation,
            )
            res = run_worker(spec, args.timeout, scratch, args.threads)
            results.append(res)
            shown = (
                f"error: {res.error}"
                if res.error is not None
                else "epochs "
                + ", ".join(f"{s:.3f}" for s in res.epoch_seconds)
                + " s"
                + (f", peak RSS {res.peak_rss_mb:.0f} MB" if res.peak_rss_mb else "")
            )
            print(
                f"[{i}/{len(order)}] round {r + 1} batch {b} {name}: {shown}",
                file=sys.stderr,
                flush=True,
            )
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line("epoch", argv),
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "minutes": (time.perf_counter() - t0) / 60,
        "n_train": n_train,
        "repeats": repeats,
        "lr": lr,
    }
    rows = aggregate(results)
    section = markdown_section(rows, runners, args, meta)
    print(section)
    if args.results is not None:
        append_results(args.results, section)
        print(f"appended to {args.results}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"meta": meta, "results": [json.loads(r.to_json()) for r in results]}, indent=1
            ),
            encoding="utf-8",
        )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
