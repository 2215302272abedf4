"""Smoke tests of the benchmark harness (``benchmarks/``): the pure-PyTorch runners train a tiny
epoch and report correctly shaped results; FLOP counts agree with torch's own counter; ratios,
tables and the command line behave. No timing is asserted."""

from __future__ import annotations

import math
import re
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from steadygrad.nn import BatchNorm

# benchmarks/ is a folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (
    common,
    epoch,
    floor,
    inference,
    runners_torch,
    setup_alternatives,
    worker,
)
from benchmarks.common import RunResult, RunSpec

N_TINY = 200  # training images the runners see (of the 500 in the tiny training split)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can make a tiny
    step 10-100x slower; these tests check results, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_npz(tmp_path: Path, tiny_idx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The harness's data file for the tiny dataset; steadygrad.data.load finds the same files."""
    monkeypatch.setenv("STEADYGRAD_DATA", str(tiny_idx_dir))
    path, n = epoch.write_training_data(tmp_path, validation=100, n_train=N_TINY)
    assert n == N_TINY
    return path


def spec(runner: str, data: Path, batch_size: int = 64, epochs: int = 2) -> RunSpec:
    return RunSpec(
        runner=runner,
        batch_size=batch_size,
        epochs=epochs,
        optimizer="adam",
        lr=1e-3,
        data=str(data),
        n_train=N_TINY,
        validation=100,
    )


# --------------------------------------------------------------------------- FLOP count


def test_epoch_flops_matches_torch_flop_counter() -> None:
    # One training step on a batch of m costs what the formula says for an epoch of n = m.
    torch.manual_seed(0)
    model = runners_torch.reference_network()
    x, y = torch.rand(37, 784), torch.randint(0, 10, (37,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    assert counter.get_total_flops() == common.epoch_flops(37)


def test_epoch_flops_numbers() -> None:
    # 2n(2·266,200 + 31,000) = 1,126,800·n; the naive "3 × forward" rule is 6·266,200·n.
    assert common.epoch_flops(1) == 1_126_800
    assert common.epoch_flops(55_000) == 61_974_000_000
    assert common.naive_epoch_flops(60_000) == 6 * 266_200 * 60_000
    for b in (1, 50, 256):
        assert sum(2 * m * k * n for _, m, k, n in common.gemm_shapes(b)) == common.epoch_flops(b)
    assert len(common.gemm_shapes(50)) == 8  # 3 forward, 3 weight grads, 2 input grads


def test_floor_is_flops_over_representative_rate(tmp_path: Path) -> None:
    s = RunSpec("floor", 50, 1, "adam", 1e-3, data="", n_train=1000)
    res = floor.run_floor(s, budget=0.005, square_size=64)
    assert res.extra["epoch_flops"] == common.epoch_flops(1000)
    assert res.epoch_seconds == [res.extra["epoch_flops"] / res.extra["representative_rate"]]
    assert res.extra["representative_shape"] == [50, 784, 300]
    assert set(res.extra["shape_rates"]) == {name for name, *_ in common.gemm_shapes(50)}
    assert res.extra["matmuls_only_seconds"] > 0


# --------------------------------------------------------------------------- runners


def test_training_data_file_is_the_exact_bytes(
    tiny_npz: Path, tiny_idx_arrays: dict[str, np.ndarray]
) -> None:
    with np.load(tiny_npz) as f:
        images, labels = f["images"], f["labels"]
    assert images.dtype == np.uint8 and images.shape == (N_TINY, 784)
    np.testing.assert_array_equal(
        images, tiny_idx_arrays["train_images"][:N_TINY].reshape(N_TINY, 784)
    )
    np.testing.assert_array_equal(labels, tiny_idx_arrays["train_labels"][:N_TINY])
    x, y = common.load_arrays(tiny_npz)  # what every runner trains on: byte / 255 in float32
    torch.testing.assert_close(
        torch.from_numpy(x), torch.from_numpy(images).to(torch.float32) / 255, rtol=0, atol=0
    )
    assert y.dtype == np.int64


def test_reference_network_matches_steadygrad_preset() -> None:
    from steadygrad import models

    plain = runners_torch.reference_network()
    preset = models.preset("reference")
    assert [tuple(p.shape) for p in plain.parameters()] == [
        tuple(p.shape) for p in preset.parameters()
    ]
    norms = [m for m in plain if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(n.momentum, n.eps) for n in norms] == [(pytest.approx(0.1), 1e-3)] * 3
    assert sum(isinstance(m, torch.nn.ELU) for m in plain) == 2


@pytest.mark.parametrize(
    "runner", ["torch-inmemory", "torch-dataloader", "steadygrad"], ids=lambda r: r
)
def test_torch_runner_trains_and_reports(runner: str, tiny_npz: Path) -> None:
    fn = worker.runner_function(runner)
    res = fn(spec(runner, tiny_npz, batch_size=64, epochs=2))
    assert res.error is None
    assert (res.runner, res.batch_size, res.n_train) == (runner, 64, N_TINY)
    assert len(res.epoch_seconds) == 2 and all(s > 0 for s in res.epoch_seconds)
    assert len(res.train_loss) == 2 and all(math.isfinite(v) for v in res.train_loss)
    # Mean cross-entropy of 10 classes starts near log(10) and must fall on this easy data.
    assert 0.5 < res.train_loss[0] < 5.0
    assert res.train_loss[1] < res.train_loss[0]
    assert res.peak_rss_mb is not None and res.peak_rss_mb > 50
    assert res.threads == 1


def test_steadygrad_runner_excludes_evaluation(tiny_npz: Path) -> None:
    res = runners_torch.run_steadygrad(spec("steadygrad", tiny_npz, epochs=2))
    assert res.extra["timing"] in {"train_seconds", "on_epoch_end..on_step_end"}
    with_eval = res.extra["epoch_seconds_with_eval"]
    assert len(with_eval) == 2
    # The trainer's own "seconds" include the evaluation; the timed epoch cannot exceed it.
    assert res.epoch_seconds[1] <= with_eval[1]


def test_worker_process_reports_its_own_result(tiny_npz: Path, tmp_path: Path) -> None:
    res = epoch.run_worker(spec("torch-inmemory", tiny_npz, epochs=2), 120, tmp_path, threads=1)
    assert res.error is None, res.error
    assert len(res.epoch_seconds) == 2 and len(res.train_loss) == 2
    assert res.peak_rss_mb is not None and res.peak_rss_mb > 50
    assert res.threads == 1  # --threads reached the worker through OMP_NUM_THREADS


def test_worker_reports_a_failing_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = spec("torch-inmemory", tmp_path / "missing.npz")
    assert worker.main([bad.to_json()]) == 1
    res = common.parse_result(capsys.readouterr().out)
    assert res is not None and res.runner == "torch-inmemory"
    assert res.error is not None and "missing.npz" in res.error


def _current_rss_mb() -> float:
    """Resident set size now, from /proc/self/statm (pages), independent of VmHWM."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_peak_rss_is_the_high_water_mark() -> None:
    now, peak = _current_rss_mb(), common.peak_rss_mb()
    assert peak >= now * 0.99
    # Allocate past the old peak: the mark must rise to at least now + the block.
    block = np.ones(int((peak - now + 64) * 1e6) // 8)  # float64, every page written
    assert block.sum() == block.size
    assert common.peak_rss_mb() >= now + 0.95 * block.nbytes / 1e6


# --------------------------------------------------------------------------- aggregation, report


def _result(runner: str, seconds: list[float], batch: int = 50, rss: float = 400.0) -> RunResult:
    return RunResult(
        runner,
        batch,
        1000,
        epoch_seconds=seconds,
        train_loss=[0.5] * len(seconds),
        peak_rss_mb=rss,
        extra={"timing": "train_seconds"},
    )


def test_aggregate_skips_warmup_and_takes_best_over_repeats() -> None:
    rows = epoch.aggregate(
        [
            _result("steadygrad", [9.0, 2.5, 2.2]),
            _result("steadygrad", [8.0, 2.0], rss=450.0),
            _result("torch-inmemory", [9.0, 3.0]),
            RunResult("floor", 50, 1000, epoch_seconds=[1.0]),
            RunResult("floor", 50, 1000, epoch_seconds=[0.8]),  # the floor has no warm-up
            RunResult("keras-torch", 50, 1000, error="ImportError: no keras"),
        ]
    )
    sg = rows[("steadygrad", 50)]
    assert sg.best == 2.0 and sg.median == statistics.median([2.5, 2.2, 2.0])
    assert max(sg.rss_mb) == 450.0
    assert rows[("floor", 50)].best == 0.8
    assert rows[("keras-torch", 50)].errors == ["ImportError: no keras"]
    text = epoch.table(rows, ["floor", "steadygrad", "torch-inmemory", "keras-torch"], 50)
    line = next(row for row in text.splitlines() if row.startswith("| `torch-inmemory`"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # best 3.0, median 3.0, ratio 3.0/2.0 (> 1: steadygrad faster), 3.0/0.8 floor, RSS, loss
    assert cells[1:] == ["3.000", "3.000", "1.50", "3.75", "400", "0.5000"]
    assert "failed: ImportError: no keras" in text


def test_plan_interleaves_and_rotates() -> None:
    order = epoch.plan(["a", "b", "c"], [50, 256], repeats=3)
    assert len(order) == 3 * 3 * 2
    for name in "abc":
        for b in (50, 256):
            assert sum(1 for _, n, bb in order if (n, bb) == (name, b)) == 3
    firsts = [order[i][1] for i in (0, 6, 12)]  # first runner of each round
    assert firsts == ["a", "b", "c"]


def test_results_section_is_appended(tmp_path: Path) -> None:
    rows = epoch.aggregate([_result("steadygrad", [3.0, 2.0]), _result("torch-dataloader", [5, 4])])
    args = epoch.build_parser().parse_args(["--batch-sizes", "50", "--note", "machine shared"])
    meta = {
        "started": "2030-01-01 00:00 UTC",
        "command": "python -m benchmarks.epoch --batch-sizes 50",
        "machine": common.machine_info(),
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [2.0, 2.0, 2.0],
        "minutes": 1.5,
        "n_train": 55_000,
        "repeats": 3,
        "lr": 1e-3,
    }
    section = epoch.markdown_section(rows, ["steadygrad", "torch-dataloader"], args, meta)
    path = tmp_path / "RESULTS.md"
    epoch.append_results(path, section)
    epoch.append_results(path, section)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("## 2030-01-01 00:00 UTC — full run") == 2
    assert "`python -m benchmarks.epoch --batch-sizes 50`" in text
    assert "Note: machine shared" in text
    assert "61.974 GFLOP for n = 55,000" in text
    assert "| 2.00 |" in text  # torch-dataloader 4.0 / steadygrad 2.0


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "50,x"], r"--batch-sizes: must be comma-separated integers >= 2"),
        (["--batch-sizes", "1"], r"--batch-sizes: .*got '1'"),
        (["--epochs", "1"], r"--epochs: must be an integer >= 2; got '1'"),
        (["--runners", "steadygrd"], r"runner must be one of .*did you mean 'steadygrad'\?"),
        (["--optimizer", "rmsprop"], r"--optimizer: invalid choice: 'rmsprop'"),
    ],
)
def test_command_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        epoch.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_main_rejects_conflicting_alternative_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        epoch.main(["--with-alternatives", "--no-alternatives"])
    assert "--with-alternatives and --no-alternatives exclude each other" in capsys.readouterr().err


def test_check_runner_names_closest_match() -> None:
    with pytest.raises(ValueError, match=r"got 'keras_jax' \(did you mean 'keras-jax'\?\)"):
        common.check_runner("keras_jax")


def test_run_spec_round_trips_json() -> None:
    s = RunSpec("jax-scan", 256, 3, "sgd", 0.01, data="/x.npz", n_train=55_000)
    assert RunSpec.from_json(s.to_json()) == s
    r = RunResult("jax-scan", 256, 55_000, [1.0, 0.5], [2.0, 1.0], 400.0)
    assert common.parse_result("noise\n" + common.RESULT_MARKER + r.to_json() + "\n") == r


# --------------------------------------------------------------------------- alternatives env


def _report(*packages: tuple[str, str]) -> dict[str, object]:
    return {
        "install": [
            {"metadata": {"name": n, "version": v}, "download_info": {"url": f"https://x/{n}"}}
            for n, v in packages
        ]
    }


def test_setup_accepts_only_the_cpu_torch() -> None:
    setup_alternatives.check_plan(_report(("torch", "2.13.0+cpu"), ("jax", "0.10.2")))
    with pytest.raises(RuntimeError, match=r"pip would install torch 2\.13\.0 from https://x"):
        setup_alternatives.check_plan(_report(("torch", "2.13.0"), ("keras", "3.15.1")))
    with pytest.raises(RuntimeError, match=r"CUDA packages nvidia-cublas-cu12, triton"):
        setup_alternatives.check_plan(
            _report(("torch", "2.13.0+cpu"), ("triton", "3.0"), ("nvidia-cublas-cu12", "12"))
        )


# --------------------------------------------------------------------------- inference


def test_inference_variants_agree_and_are_timed() -> None:
    torch.manual_seed(0)
    images = torch.rand(600, 784)
    variants = inference.build_variants(images)
    assert set(variants) == set(inference.VARIANTS)
    assert not any(isinstance(m, BatchNorm) for m in variants["no-bn"].modules())
    assert sum(isinstance(m, BatchNorm) for m in variants["unfolded"].modules()) == 3
    assert not any(isinstance(m, BatchNorm) for m in variants["folded"].modules())
    assert inference.fold_error(variants, images[:100]) < 1e-4
    samples = inference.measure(variants, images[:4], seconds=0.02)
    assert all(len(v) >= 5 and min(v) > 0 for v in samples.values())
    text = inference.table({4: samples})
    assert text.count("\n| 4 |") == 3
    assert "| 4 | no-bn |" in text and "| 1.000 | 1.000 |" in text  # no-bn against itself


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"
)
def test_monitor_overhead_measures_both_loops_and_pairs_ratios_within_repeats() -> None:
    from benchmarks import monitor_overhead

    times = monitor_overhead.measure(steps=3, repeats=1, fit_steps=2, splits=2)
    assert set(times) == set(monitor_overhead.LOOPS)
    for loop, per_config in times.items():
        assert set(per_config) == {"off", "off, second copy", "every=10", "every=1"}
        segments = 2 if loop == "torch loop" else 1  # the torch loop's sub-rounds
        assert all(len(v) == segments and min(v) > 0 for v in per_config.values())
    fake = {
        loop: {
            "off": [1.0, 2.0, 4.0],
            "off, second copy": [1.1, 1.8, 4.0],
            "every=10": [1.02, 2.2, 4.0],
            "every=1": [1.5, 2.4, 4.4],
        }
        for loop in monitor_overhead.LOOPS
    }
    text, ratios = monitor_overhead.table(fake, {"torch loop": 100, "steadygrad fit": 50})
    # paired ratios every=10: 1.02, 1.1, 1.0 → median 1.02 (met); every=1: 1.5, 1.2, 1.1 →
    # 1.2 (met); the verdict is the median, not best ÷ best (1.02 and 1.5)
    assert ratios[("torch loop", 10)] == pytest.approx(1.02)
    assert ratios[("steadygrad fit", 1)] == pytest.approx(1.2)
    assert "| torch loop | unmonitored | 10.000 | 20.000 | 1 | | 1 | |" in text
    assert "| steadygrad fit | unmonitored | 20.000 | 40.000 | 1 | | 1 | |" in text
    # the interval of a median of three resampled values lies within their range; no
    # quartiles of fewer than four rounds
    assert "| 1.020 [1.000, 1.100] |  | 1.020 | ≤ 1.03 (met; the interval holds 1.03) |" in text
    assert "| 1.200 [1.100, 1.500] |  | 1.500 | ≤ 1.25 (met; the interval holds 1.25) |" in text
    assert "| unmonitored, second copy (A/A control) |" in text and "1 in truth" in text
    assert text.count("(met; the interval holds") == 4
    missed = {loop: dict(fake[loop], **{"every=1": [1.3, 2.6, 5.2]}) for loop in fake}
    text, ratios = monitor_overhead.table(missed, 100)
    assert ratios[("torch loop", 1)] == pytest.approx(1.3)
    assert text.count("≤ 1.25 (MISSED)") == 2  # [1.3, 1.3]: the goal is outside it
    assert monitor_overhead.verdict(1.01, 1.0, 1.02, 1.03) == "met"
    assert monitor_overhead.verdict(1.04, 1.02, 1.06, 1.03) == "MISSED; the interval holds 1.03"


def test_monitor_overhead_rejects_empty_segments(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import monitor_overhead

    with pytest.raises(SystemExit):
        monitor_overhead.main(["--splits", "0", "--no-append"])
    assert "--splits must be at least 1" in capsys.readouterr().err


def test_the_verdicts_interval_covers_the_median_and_is_reproducible() -> None:
    import random
    import statistics

    from benchmarks import monitor_overhead

    rng = random.Random(1)
    values = [1.0 + rng.gauss(0, 0.05) for _ in range(60)]
    low, high = monitor_overhead.sign_test_interval(values)
    assert low < statistics.median(values) < high
    # the median's standard error is ~1.25 σ / √n ≈ 0.008: the interval is ~±2 of them
    assert 0.01 < high - low < 0.06
    assert monitor_overhead.sign_test_interval(values) == (low, high)


def test_monitor_profile_runs_each_configuration_and_restores_the_statistics() -> None:
    from benchmarks import monitor_profile

    from steadygrad import native
    from steadygrad.monitor import _stats

    before = (_stats.moments, _stats.distances_and_moments, native.load)
    times = monitor_profile.measure(steps=2, repeats=1)
    # the stubs are gone
    assert (_stats.moments, _stats.distances_and_moments, native.load) == before
    assert set(times) == set(monitor_profile.CONFIGS)
    assert all(len(v) == 1 and v[0] > 0 for v in times.values())
    text = monitor_profile.table(
        {
            "off": [0.002, 0.003],
            "hooks only": [0.0025, 0.0034],
            "full": [0.004, 0.005],
            "reductions alone": [0.0028, 0.0037],
        }
    )
    assert "| hooks only | 2.950 | 450 |" in text  # medians: 2.95 ms; (500 + 400) / 2 µs
    assert "| full | 4.500 | 2000 |" in text


def test_gemm_benchmark_times_both_sides_of_the_same_products(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """benchmarks.gemm: gemm.h's and MKL's step give the same products (compared here), and the
    table has one row per thread count and batch size with a positive ratio."""
    from benchmarks import gemm

    from steadygrad import native

    if native.load() is None:
        pytest.skip("native kernels unavailable")
    one = torch.ones(1, 1)
    if not native.load().sgemm(False, False, one, one, torch.empty(1, 1), 0.0):
        pytest.skip("csrc/gemm.h needs AVX2 and FMA")
    own, mkl, outputs = gemm.step_products(7, seed=1)
    own()
    ours = [t.clone() for t in outputs]
    mkl()
    assert len(outputs) == 8
    for a, b in zip(ours, outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    results = tmp_path / "RESULTS.md"
    results.write_text("# r\n")
    args = ["--threads", "1", "--batch-sizes", "5,9", "--blocks", "2", "--results", str(results)]
    assert gemm.main(args) == 0
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2 and "GEMM: csrc/gemm.h against MKL" in text
    assert all(float(row.rstrip(" |").rsplit("|", 1)[1]) > 0 for row in rows)
    with pytest.raises(SystemExit):
        gemm.main(["--threads", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_command_line_and_section_head() -> None:
    import datetime

    from benchmarks.common import command_line, section_head

    assert command_line("gemm", []) == "python -m benchmarks.gemm"
    assert command_line("epoch", ["--note", "a b"]) == "python -m benchmarks.epoch --note 'a b'"
    started = datetime.datetime(2026, 11, 27, 16, 5, tzinfo=datetime.UTC)
    head = section_head("GEMM", started, "python -m benchmarks.gemm", ", 2 threads")
    assert head[:3] == [
        "## 2026-11-27 16:05 UTC — GEMM",
        "",
        "- Command: `python -m benchmarks.gemm`",
    ]
    assert head[3].startswith("- Machine: ") and head[3].endswith(", 2 threads.")
