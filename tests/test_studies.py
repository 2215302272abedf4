"""steadygrad.studies: runner (cache, resume, workers), verdict rules, quick studies, the report.

Runs use the tiny MNIST-format fixture data (``tiny_idx_dir``) so the default suite needs no
download; the full studies on Fashion-MNIST are marked ``study`` and run with
``pytest -m study``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from steadygrad import studies
from steadygrad.errors import DataError
from steadygrad.studies import (
    Options,
    Results,
    RunRecord,
    StudyResult,
    StudyRunError,
    Verdict,
    _batchnorm,
    _cost,
    _deep_relu,
    _leaky_vs_relu,
    _selu,
    _sigmoid_saturation,
    _tasks,
    _variance_by_depth,
    canonical_json,
    code_version,
    run_grid,
    spec_key,
)
from steadygrad.studies._common import two_se_status

HOSTILE = "<script>alert(1)</script>"


def profile_spec(root: Path, seed: int = 0, width: int = 8, depth: int = 3) -> dict[str, Any]:
    return {
        "task": "profile",
        "label": {"seed": seed},
        "model": {
            "input_dim": 784,
            "hidden": [width] * depth,
            "output_dim": 10,
            "activation": "tanh",
            "initializer": "glorot_uniform",
        },
        "data": {"name": "fashion-mnist", "root": str(root), "standardize": True},
        "batch": 16,
        "seed": seed,
    }


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every spec the in-process runner executes, in order."""
    calls: list[dict[str, Any]] = []
    original = dict(_tasks.TASKS)

    def wrap(name: str) -> Callable[[Any], dict[str, Any]]:
        def run(spec: Any) -> dict[str, Any]:
            calls.append(spec)
            return original[name](spec)

        return run

    for name in original:
        monkeypatch.setitem(_tasks.TASKS, name, wrap(name))
    yield calls


# --------------------------------------------------------------------------- cache keys


def test_spec_key_is_sha256_of_canonical_spec_and_code_version(tiny_idx_dir: Path) -> None:
    spec = profile_spec(tiny_idx_dir)
    payload = json.dumps(
        {"spec": spec, "code": code_version()}, sort_keys=True, separators=(",", ":")
    )
    assert spec_key(spec) == hashlib.sha256(payload.encode()).hexdigest()
    reordered = dict(reversed(list(spec.items())))
    assert spec_key(reordered) == spec_key(spec)
    changed = profile_spec(tiny_idx_dir, seed=1)
    assert spec_key(changed) != spec_key(spec)


def test_code_version_covers_the_modules_a_run_executes() -> None:
    import steadygrad

    root = Path(steadygrad.__file__).parent
    hashed = {f.relative_to(root).as_posix() for f in studies._runner._code_files(root)}
    for module in (
        "train.py",
        "fast.py",
        "models.py",
        "init.py",
        "activations.py",
        "nn.py",
        "data.py",
        "monitor/__init__.py",
        "studies/_tasks.py",
    ):
        assert module in hashed, module
    for module in ("cli.py", "report/__init__.py", "studies/_api.py", "studies/_cost.py"):
        assert module not in hashed, module
    digest = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for name in sorted(hashed, key=lambda n: root / n):
        digest.update(name.encode() + b"\n" + (root / name).read_bytes())
    assert code_version() == digest.hexdigest()[:16]


def test_spec_errors(tiny_idx_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'task' must be one of .*got 'profil'.*'profile'"):
        spec_key({"task": "profil"})
    with pytest.raises(TypeError, match="run spec must be a dict; got list"):
        spec_key([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON-able"):
        spec_key({**profile_spec(tiny_idx_dir), "x": object()})
    with pytest.raises(ValueError, match="NaN or infinity"):
        canonical_json({"lr": math.nan})


# --------------------------------------------------------------------------- runner


def test_grid_is_cached_and_deleted_entries_are_recomputed(
    tiny_idx_dir: Path, tmp_path: Path, counted: list[dict[str, Any]]
) -> None:
    specs = [profile_spec(tiny_idx_dir, seed=s) for s in range(5)]
    first = run_grid(specs, tmp_path, workers=1, progress=False)
    assert [r.cached for r in first] == [False] * 5
    assert len(counted) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.key}.json" for r in first)

    again = run_grid(specs, tmp_path, workers=1, progress=False)
    assert len(counted) == 5  # nothing recomputed
    assert all(r.cached for r in again)
    assert [r.result for r in again] == [r.result for r in first]

    for r in (first[1], first[3]):
        (tmp_path / f"{r.key}.json").unlink()
    counted.clear()
    third = run_grid(specs, tmp_path, workers=1, progress=False)
    assert [c["seed"] for c in counted] == [1, 3]
    assert [r.cached for r in third] == [True, False, True, False, True]
    assert [r.result for r in third] == [r.result for r in first]  # deterministic runs


def test_cache_entry_format_and_atomic_write(tiny_idx_dir: Path, tmp_path: Path) -> None:
    [record] = run_grid([profile_spec(tiny_idx_dir)], tmp_path, workers=1, progress=False)
    entry = json.loads((tmp_path / f"{record.key}.json").read_text())
    assert entry["format"] == studies._runner.CACHE_FORMAT
    assert entry["key"] == record.key == spec_key(record.spec)
    assert entry["code"] == code_version()
    assert entry["spec"] == record.spec and entry["result"] == record.result
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_interrupted_grid_resumes_without_redoing_finished_runs(
    tiny_idx_dir: Path, tmp_path: Path, counted: list[dict[str, Any]]
) -> None:
    specs = [profile_spec(tiny_idx_dir, seed=s) for s in range(6)]

    class Interrupt(Exception):
        pass

    def stop_after_two(record: RunRecord) -> None:
        if len(counted) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_grid(specs, tmp_path, workers=1, progress=False, on_record=stop_after_two)
    assert len(list(tmp_path.glob("*.json"))) == 2
    counted.clear()
    records = run_grid(specs, tmp_path, workers=1, progress=False)
    assert [c["seed"] for c in counted] == [2, 3, 4, 5]
    assert [r.cached for r in records] == [True, True, False, False, False, False]


def test_killed_runner_resumes_from_its_cache(
    tiny_idx_dir: Path, tmp_path: Path, counted: list[dict[str, Any]]
) -> None:
    """SIGKILL a runner process mid-grid; the rerun computes only the unfinished runs."""
    cache = tmp_path / "cache"
    specs = [profile_spec(tiny_idx_dir, seed=s, width=512, depth=12) for s in range(40)]
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    script = textwrap.dedent(
        f"""
        import json, torch
        torch.set_num_threads(1)
        from steadygrad.studies import run_grid
        specs = json.load(open({str(tmp_path / "specs.json")!r}))
        run_grid(specs, {str(cache)!r}, workers=1, progress=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(cache.glob("*.json"))) < 2:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list(cache.glob("*.json")))
    assert 2 <= done < len(specs), "the runner finished before it could be killed"
    records = run_grid(specs, cache, workers=1, progress=False)
    assert len(counted) == len(specs) - done
    assert sum(r.cached for r in records) == done
    assert not list(cache.glob(".*.tmp-*"))  # the killed writer's temporary file is gone


def test_workers_one_runs_in_process_with_one_thread(tiny_idx_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    [record] = run_grid([profile_spec(tiny_idx_dir)], tmp_path, workers=1, progress=False)
    assert record.pid == os.getpid()
    assert record.threads == 1
    assert torch.get_num_threads() == threads  # restored


def test_worker_pool_runs_grids_in_two_spawned_single_thread_processes(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    specs = [profile_spec(tiny_idx_dir, seed=s) for s in range(6)]
    with studies.WorkerPool(2) as pool:
        first = run_grid(specs[:3], tmp_path, pool=pool, progress=False)
        second = run_grid(specs[3:], tmp_path, pool=pool, progress=False)
    records = first + second
    pids = {r.pid for r in records}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2  # one pool for both grids
    assert all(r.threads == 1 for r in records)
    in_process = run_grid(specs, tmp_path / "again", workers=1, progress=False)
    assert [r.result for r in in_process] == [r.result for r in records]


def test_duplicate_specs_run_once(
    tiny_idx_dir: Path, tmp_path: Path, counted: list[dict[str, Any]]
) -> None:
    spec = profile_spec(tiny_idx_dir)
    records = run_grid([spec, dict(spec), spec], tmp_path, workers=1, progress=False)
    assert len(counted) == 1
    assert len({r.key for r in records}) == 1


def test_corrupt_or_foreign_cache_entries_are_recomputed(
    tiny_idx_dir: Path, tmp_path: Path, counted: list[dict[str, Any]]
) -> None:
    spec = profile_spec(tiny_idx_dir)
    [record] = run_grid([spec], tmp_path, workers=1, progress=False)
    path = tmp_path / f"{record.key}.json"
    path.write_text('{"format": "steadygrad.study-run/1", "key": "x"')  # torn
    run_grid([spec], tmp_path, workers=1, progress=False)
    entry = json.loads(path.read_text())
    entry["spec"] = {**spec, "seed": 99}  # another spec under this key
    path.write_text(json.dumps(entry))
    [again] = run_grid([spec], tmp_path, workers=1, progress=False)
    assert len(counted) == 3
    assert again.result == record.result


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path, tiny_idx_dir: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".abc.json.tmp-{dead.stdout.strip()}"
    stale.write_text("partial")
    mine = tmp_path / f".def.json.tmp-{os.getpid()}"
    mine.write_text("in progress")
    run_grid([profile_spec(tiny_idx_dir)], tmp_path, workers=1, progress=False)
    assert not stale.exists()
    assert mine.exists()


def test_progress_is_silent_when_stderr_is_not_a_terminal(
    tiny_idx_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_grid([profile_spec(tiny_idx_dir)], tmp_path, workers=1, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_worker_count_errors(tiny_idx_dir: Path, tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"workers must be a positive integer.*got {bad!r}"):
            run_grid([profile_spec(tiny_idx_dir)], tmp_path, workers=bad)  # type: ignore[arg-type]


def test_failing_run_raises_and_keeps_finished_runs(tiny_idx_dir: Path, tmp_path: Path) -> None:
    good = profile_spec(tiny_idx_dir)
    bad = profile_spec(tiny_idx_dir, seed=1)
    bad["model"]["activation"] = "relux"
    with pytest.raises(StudyRunError, match=r"run [0-9a-f]{12} failed: ValueError: .*relux"):
        run_grid([good, bad], tmp_path, workers=1, progress=False)
    assert (tmp_path / f"{spec_key(good)}.json").exists()
    # workers=2 without a pool starts its own processes: the error comes from a worker.
    with pytest.raises(StudyRunError, match=r"failed in a worker: ValueError: .*relux"):
        run_grid([bad, profile_spec(tiny_idx_dir, seed=2)], tmp_path, workers=2, progress=False)


# --------------------------------------------------------------------------- tasks


def test_profile_matches_a_direct_computation(tiny_idx_dir: Path) -> None:
    """The profile task's stds against a hand-written forward/backward of the same network."""
    from steadygrad import data, models

    spec = profile_spec(tiny_idx_dir, width=16, depth=4)
    result = _tasks.profile(spec)
    ds = data.load("fashion-mnist", root=tiny_idx_dir, validation=0, standardize=True)
    x, y = ds.test.images[-16:], ds.test.labels[-16:]
    model = models.mlp(**spec["model"], generator=torch.Generator().manual_seed(0))
    zs = []
    h = x
    for block in model.blocks():
        z = torch.nn.functional.linear(h, block.dense.weight, block.dense.bias)
        z.retain_grad()
        zs.append(z)
        h = torch.tanh(z) if block.activation is not None else z
    torch.nn.functional.cross_entropy(h, y).backward()
    for layer, z in zip(result["layers"], zs, strict=True):
        act = torch.tanh(z) if layer["activation"] else z
        assert layer["act_std"] == pytest.approx(act.detach().std(correction=0).item(), rel=1e-5)
        assert layer["grad_out_std"] == pytest.approx(z.grad.std(correction=0).item(), rel=1e-4)


def test_train_task_records_losses_divergence_and_units(tiny_idx_dir: Path) -> None:
    spec = {
        "task": "train",
        "model": {"input_dim": 784, "hidden": [16, 16], "output_dim": 10, "activation": "relu"},
        "data": {"name": "fashion-mnist", "root": str(tiny_idx_dir), "train": 200, "test": 50},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 2,
        "batch_size": 20,
        "seed": 0,
        "measure": {
            "loss_window": 5,
            "probe_every": 10,
            "units_end": True,
            "probe_batch": 40,
            "unit_percentiles": {"layer": 2, "unit": 3, "q": [15, 50, 85], "every": 10},
        },
    }
    result = _tasks.train_run(spec)
    assert len(result["losses"]) == 4  # 2 epochs × 10 steps, windows of 5
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["final"] == result["history"][-1] and result["diverged"] is None
    assert [p["step"] for p in result["probes"]] == [0, 10, 20]
    assert [t["step"] for t in result["unit_percentiles"]] == [0, 10, 20]
    low, mid, high = result["unit_percentiles"][0]["values"]
    assert low <= mid <= high
    assert len(result["units_end"]) == 2
    assert all(0 <= u["dead"] <= u["inactive"] <= 1 for u in result["units_end"])

    diverging = {**spec, "optimizer": {"name": "sgd", "lr": 1e6}, "measure": {}}
    result = _tasks.train_run(diverging)
    assert result["diverged"] is not None and result["final"] is None
    assert not math.isfinite(result["diverged"]["loss"])


def test_timing_task_folds_batchnorm_exactly(tiny_idx_dir: Path) -> None:
    [spec] = _cost.grid(Options(quick=True, seeds=1, data_root=str(tiny_idx_dir)))
    result = _tasks.timing(spec)
    assert set(result["inference"]) == {
        "relu",
        "elu",
        "relu+bn",
        "elu+bn",
        "relu+bn+folded",
        "elu+bn+folded",
    }
    assert all(len(t) == spec["repeats"] for t in result["train"].values())
    assert max(result["fold_max_abs_diff"].values()) <= 1e-5


# --------------------------------------------------------------------------- verdict rules


def record(spec: dict[str, Any], result: dict[str, Any]) -> RunRecord:
    return RunRecord(spec=spec, key="k", result=result, seconds=0.0, pid=0, threads=1, cached=False)


def results_of(records: list[RunRecord]) -> Results:
    return Results(records, Options(quick=False, seeds=3))


def profile_record(
    label: dict[str, Any], act: list[float | None], grad: list[float | None]
) -> RunRecord:
    layers = [
        {"activation": "tanh", "act_std": a, "grad_out_std": g, "act_mean": 0.0}
        for a, g in zip(act, grad, strict=True)
    ]
    layers.append({"activation": None, "act_std": 1.0, "grad_out_std": 1.0, "act_mean": 0.0})
    return record({"label": label, "seed": label.get("seed", 0)}, {"layers": layers})


@pytest.mark.parametrize(
    ("per_seed", "status"),
    [
        ([(1.0, 0.5), (1.0, 2.0), (1.0, 9.0)], "confirmed"),
        ([(1.0, 1e-6), (1.0, 50.0), (None, 1.0)], "refuted"),
        ([(1.0, 1.0), (1.0, 0.01), (1.0, 1.0)], "inconclusive"),
    ],
)
def test_variance_pair_rule(per_seed: list[tuple[float | None, float]], status: str) -> None:
    records = [
        profile_record(
            {"init": "he", "activation": "relu", "seed": s}, [1.0, 1.0, end], [grad, 1.0, 1.0]
        )
        for s, (end, grad) in enumerate(per_seed)
    ]
    verdict = _variance_by_depth.CLAIMS[1].verdict(results_of(records))
    assert verdict.status == status
    assert "He/relu" in verdict.evidence


def test_variance_classes() -> None:
    classify = _variance_by_depth.classify
    assert classify(1.0, 1.0) == "steady"
    assert classify(0.1, 10.0) == "steady"  # the band is closed
    assert classify(0.099, 1.0) == "vanishing"
    assert classify(1.0, 10.5) == "exploding"
    assert classify(None, 1.0) == "non-finite"


def _naive(steady_pair: tuple[str, str] | None, mixed: bool = False) -> Results:
    records = []
    for activation in _variance_by_depth.ACTIVATIONS:
        for key in _variance_by_depth.NAIVE:
            for seed in range(2):
                good = (key, activation) == steady_pair and (seed == 0 or not mixed)
                end = 1.0 if good else 1e-8
                records.append(
                    profile_record(
                        {"init": key, "activation": activation, "seed": seed},
                        [1.0, end],
                        [1.0, 1.0],
                    )
                )
    return results_of(records)


def test_variance_naive_rule_reaches_every_status() -> None:
    claim = _variance_by_depth.CLAIMS[0]
    assert claim.verdict(_naive(None)).status == "confirmed"
    assert claim.verdict(_naive(("glorot", "tanh"))).status == "confirmed"  # not a naive init
    refuted = claim.verdict(_naive(("normal_1", "tanh")))
    assert refuted.status == "refuted" and "steady: N(0,1)/tanh" in refuted.evidence
    assert claim.verdict(_naive(("normal_1", "tanh"), mixed=True)).status == "inconclusive"


def train_record(
    label: dict[str, Any], accuracy: float | None, losses: list[float] | None = None, **extra: Any
) -> RunRecord:
    final = None if accuracy is None else {"test_accuracy": accuracy, "train_loss": 0.5}
    result = {
        "final": final,
        "losses": losses or [1.0],
        "diverged": None if final else {"step": 3},
        "history": [],
        "loss_window": 10,
        **extra,
    }
    return record({"label": label, "seed": label.get("seed", 0)}, result)


@pytest.mark.parametrize(
    ("he", "tiny", "status"),
    [
        ([0.8, 0.81, 0.79], [0.1, 0.1, 0.12], "confirmed"),
        ([0.1, 0.1, None], [0.1, 0.1, 0.1], "refuted"),
        ([0.8, 0.3, 0.8], [0.1, 0.1, 0.1], "inconclusive"),
    ],
)
def test_deep_relu_headline_rule(he: list[float | None], tiny: list[float], status: str) -> None:
    records = [train_record({"init": "he", "seed": s}, a) for s, a in enumerate(he)]
    records += [train_record({"init": "normal_0.01", "seed": s}, a) for s, a in enumerate(tiny)]
    for r in records:
        r.result["probe_start"] = [{"activation": "relu", "grad_out_std": 1.0}] * 2
    verdict = _deep_relu.CLAIMS[0].verdict(results_of(records))
    assert verdict.status == status


def lr_records(plain_max: float, bn_max: float) -> Results:
    records = []
    for bn, best in ((False, plain_max), (True, bn_max)):
        for lr in _batchnorm.LRS:
            for seed in range(2):
                ok = lr <= best
                records.append(
                    train_record(
                        {"part": "a", "bn": bn, "lr": lr, "seed": seed},
                        0.8 if ok else None,
                        losses=[2.3] * 9 + [0.5 if ok else 2.0],
                    )
                )
    return results_of(records)


@pytest.mark.parametrize(
    ("plain", "bn", "status"),
    [
        (0.1, 1.0, "confirmed"),
        (0.1, 0.3, "inconclusive"),
        (0.3, 0.3, "refuted"),
        (0.3, 0.1, "refuted"),
    ],
)
def test_batchnorm_learning_rate_rule(plain: float, bn: float, status: str) -> None:
    results = lr_records(plain, bn)
    assert _batchnorm.largest_stable(results, False) == plain
    assert _batchnorm.largest_stable(results, True) == bn
    verdict = _batchnorm.CLAIMS[0].verdict(results)
    assert verdict.status == status
    assert f"plain {plain:g}, BN {bn:g}" in verdict.evidence


def test_batchnorm_stability_definition() -> None:
    assert _batchnorm.stable(train_record({}, 0.8, losses=[2.3] * 9 + [1.1]))
    assert not _batchnorm.stable(train_record({}, 0.8, losses=[2.3] * 9 + [1.2]))  # > ln10/2
    assert not _batchnorm.stable(train_record({}, None, losses=[0.5]))  # diverged


def test_two_standard_error_rule() -> None:
    assert two_se_status(0.05, 0.02) == "confirmed"
    assert two_se_status(-0.05, 0.02) == "refuted"
    assert two_se_status(0.03, 0.02) == "inconclusive"
    assert two_se_status(0.5, math.nan) == "inconclusive"  # one seed: no noise estimate


@pytest.mark.parametrize("n", [1, 5, 6, 9, 20, 40])
def test_sign_test_interval_matches_the_binomial(n: int) -> None:
    from scipy import stats

    values = [float(v) for v in range(n)]
    lo, hi = _cost.sign_test_interval(values)
    # The widest-k interval with coverage ≥ 95 %: k = the largest with 1 − 2·F(k − 1) ≥ 0.95.
    ks = [k for k in range(1, n // 2 + 1) if 1 - 2 * stats.binom.cdf(k - 1, n, 0.5) >= 0.95]
    k = max(ks) if ks else 1
    assert (lo, hi) == (values[k - 1], values[n - k])


def cost_results(elu_factor: float, noise: float) -> Results:
    import random

    rng = random.Random(0)
    relu = [1.0 + rng.uniform(-noise, noise) for _ in range(30)]
    elu = [t * elu_factor + rng.uniform(-noise, noise) for t in relu]
    times = {"relu": relu, "elu": elu}
    return results_of(
        [
            record(
                {"label": {"seed": 0}},
                {"train": times, "inference": times, "fold_max_abs_diff": {}},
            )
        ]
    )


def test_cost_rule_reaches_every_status() -> None:
    claim = _cost.CLAIMS[0]
    assert claim.verdict(cost_results(1.2, 0.01)).status == "confirmed"
    assert claim.verdict(cost_results(0.8, 0.01)).status == "refuted"
    assert claim.verdict(cost_results(1.0, 0.2)).status == "inconclusive"


def test_other_rules_reach_their_statuses() -> None:
    # leaky-vs-relu dead units: more dead at the high rate in every seed → confirmed.
    def leaky(dead_low: float, dead_high: float) -> Results:
        records = []
        for name in _leaky_vs_relu.ACTIVATIONS:
            for lr in _leaky_vs_relu.LRS:
                for seed in range(2):
                    dead = dead_low if lr == _leaky_vs_relu.LRS[0] else dead_high
                    units = [{"dead": dead if name == "relu" else 0.0, "inactive": dead}]
                    records.append(
                        train_record(
                            {"activation": name, "lr": lr, "seed": seed}, 0.8, units_end=units
                        )
                    )
        return results_of(records)

    assert _leaky_vs_relu.CLAIMS[0].verdict(leaky(0.0, 0.2)).status == "confirmed"
    assert _leaky_vs_relu.CLAIMS[0].verdict(leaky(0.2, 0.0)).status == "refuted"

    # selu profile: std inside [0.8, 1.2] everywhere → confirmed; one seed outside → inconclusive.
    def selu(stds: list[float]) -> Results:
        records = [
            record(
                {"label": {"part": "init", "network": "SELU/LeCun", "seed": s}, "seed": s},
                {"layers": [{"activation": "selu", "act_std": v, "act_mean": 0.0}] * 3},
            )
            for s, v in enumerate(stds)
        ]
        return results_of(records)

    assert _selu.CLAIMS[0].verdict(selu([1.0, 1.1])).status == "confirmed"
    assert _selu.CLAIMS[0].verdict(selu([1.0, 1.3])).status == "inconclusive"
    assert _selu.CLAIMS[0].verdict(selu([0.5, 1.3])).status == "refuted"

    # sigmoid saturation: top layer at 0.05 → collapsed.
    def sigmoid(top: float) -> Results:
        layers = [{"act_mean": 0.5, "act_std": 0.1, "saturated": 0.0}] * 3
        probes = [
            {
                "step": 0,
                "layers": [*layers, {"act_mean": 0.5, "act_std": 0.1, "saturated": 0.0}, {}],
            },
            {
                "step": 50,
                "layers": [*layers, {"act_mean": top, "act_std": 0.1, "saturated": 0.0}, {}],
            },
        ]
        return results_of(
            [train_record({"network": "sigmoid, U[±1/√n]", "seed": 0}, 0.1, probes=probes)]
        )

    claim = _sigmoid_saturation.CLAIMS[0]
    assert claim.verdict(sigmoid(0.05)).status == "confirmed"
    assert claim.verdict(sigmoid(0.45)).status == "refuted"
    assert "first below 0.1 at step [50]" in claim.verdict(sigmoid(0.05)).evidence


def test_verdict_status_is_checked() -> None:
    with pytest.raises(ValueError, match=r"status must be one of 'confirmed'.*got 'confirm'"):
        Verdict("c", "confirm", "e", "r", "l")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- studies end to end


def test_every_study_quick_runs_end_to_end(tiny_idx_dir: Path, tmp_path: Path) -> None:
    """The quick miniature of every study: runs, verdicts from the rules, figures, JSON."""
    from matplotlib.figure import Figure

    assert studies.names() == [
        "variance-by-depth",
        "sigmoid-saturation",
        "deep-relu",
        "leaky-vs-relu",
        "elu-vs-relu",
        "batchnorm",
        "cost",
        "selu",
    ]
    results = studies.run_all(
        quick=True, workers=1, out=tmp_path, progress=False, data_root=tiny_idx_dir
    )
    for result in results:
        study = studies.get(result.name)
        assert result.options == Options(True, 1, str(tiny_idx_dir))
        assert len(result.verdicts) == len(study.claims) >= 1
        assert result.verdicts == study.verdicts(result.results)  # computed from the runs
        assert {v.status for v in result.verdicts} <= set(studies.STATUSES)
        assert study.figures
        for spec in study.figures:
            fig = spec.draw(result.results)
            assert isinstance(fig, Figure) and fig.axes
        stored = json.loads((tmp_path / f"{result.name}.json").read_text())
        assert stored["verdicts"] == [v.to_dict() for v in result.verdicts]
        assert len(stored["runs"]) == len(study.grid(result.options))
        assert result.command == (
            f"steadygrad study {result.name} --quick --out {tmp_path} --data-dir {tiny_idx_dir}"
        )
    started = time.perf_counter()
    again = studies.run_study(
        "deep-relu", quick=True, workers=1, out=tmp_path, progress=False, data_root=tiny_idx_dir
    )
    assert time.perf_counter() - started < 10
    assert again.cached_runs == len(again.runs)


def test_result_json_round_trip_is_strict(tiny_idx_dir: Path, tmp_path: Path) -> None:
    result = studies.run_study(
        "cost", quick=True, workers=1, out=tmp_path, progress=False, data_root=tiny_idx_dir
    )
    result.runs[0].result["train"]["relu"][0] = math.inf
    path = studies.write_result(result, tmp_path)
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    loaded = studies.load_result(path)
    assert loaded.runs[0].result["train"]["relu"][0] is None
    assert loaded.verdicts == result.verdicts
    assert loaded.to_dict()["tables"] == json.loads(text)["tables"]


def test_run_study_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"study must be one of .*got 'deep-rel'.*'deep-relu'"):
        studies.run_study("deep-rel", out=tmp_path)
    with pytest.raises(ValueError, match=r"seeds must be a positive integer or None.*got 0"):
        studies.run_study("cost", seeds=0, out=tmp_path)
    with pytest.raises(TypeError, match="quick must be True or False; got 'yes'"):
        studies.run_study("cost", quick="yes", out=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="results must hold at least one StudyResult"):
        studies.render_report([], tmp_path)
    with pytest.raises(DataError, match="cannot read study result"):
        studies.load_result(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(DataError, match="is not a steadygrad study result"):
        studies.load_result(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="is not JSON"):
        studies.load_result(tmp_path / "bad.json")


def test_reproduce_command_names_seeds_only_when_not_default() -> None:
    full = Options(quick=False, seeds=3)
    assert studies.reproduce_command("selu", full, "out") == "steadygrad study selu --out out"
    assert studies.reproduce_command("selu", Options(False, 5), "o d") == (
        "steadygrad study selu --seeds 5 --out 'o d'"
    )
    assert studies.reproduce_command("cost", Options(True, 1), "o") == (
        "steadygrad study cost --quick --out o"
    )


# --------------------------------------------------------------------------- report


@pytest.fixture()
def hostile_result(tiny_idx_dir: Path, tmp_path: Path) -> StudyResult:
    """A quick study whose configs, claims and evidence carry a script tag."""
    result = studies.run_study(
        "cost", quick=True, workers=1, out=tmp_path, progress=False, data_root=tiny_idx_dir
    )
    result.runs[0].spec["label"]["note"] = HOSTILE
    result.verdicts[0] = Verdict(HOSTILE, "refuted", HOSTILE, HOSTILE, HOSTILE)
    result.setup = HOSTILE
    return result


def test_report_escapes_every_config_string(hostile_result: StudyResult, tmp_path: Path) -> None:
    path = studies.render_report([hostile_result], tmp_path)
    assert path == tmp_path / "report.html"
    html = path.read_text()
    assert HOSTILE not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6
    assert "<script" not in html.lower()
    assert html.count('src="data:image/png;base64,') == len(studies.get("cost").figures)
    assert "steadygrad study cost --quick" in html  # the command under each figure
    assert "torch" in html and "machine" in html  # the footer's versions and machine


needs_chromium = pytest.mark.skipif(
    __import__("steadygrad.report", fromlist=["find_chromium"]).find_chromium() is None,
    reason="needs headless Chromium (Debian package 'chromium', or set $STEADYGRAD_CHROMIUM)",
)


@pytest.mark.browser
@needs_chromium
def test_report_opens_in_chromium_without_console_errors(
    hostile_result: StudyResult, tmp_path: Path
) -> None:
    from steadygrad.report import open_in_browser

    path = studies.render_report([hostile_result], tmp_path)
    shot = tmp_path / "studies.png"
    result = open_in_browser(path, shot)
    assert result.errors == [], result.errors
    assert not [e for e in result.entries if "alert" in e.text.lower()]
    assert result.title == "steadygrad study: cost"
    assert shot.read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- full studies


@pytest.mark.study
@pytest.mark.parametrize("name", studies.names())
def test_full_study(name: str, tmp_path: Path) -> None:
    """One full study on Fashion-MNIST (minutes): it runs and every claim gets a verdict."""
    result = studies.run_study(name, out=tmp_path, progress=False)
    assert len(result.verdicts) == len(studies.get(name).claims)
    studies.render_report([result], tmp_path)
