"""Fault injection: SIGKILL at random moments, SIGINT, and a failing checkpoint write."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from steadygrad import checkpoint
from steadygrad.errors import CheckpointError
from steadygrad.train import CHECKPOINT_NAME, TrainConfig, fit


def _cmd(data_dir: Path, out: Path, epochs: int = 3) -> list[str]:
    return [
        sys.executable, "-m", "steadygrad.cli", "train", "--data-dir", str(data_dir),
        "--hidden", "32", "--epochs", str(epochs), "--batch-size", "5", "--validation", "100",
        "--out", str(out), "--device", "cpu", "--threads", "1",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(data_dir: Path, run: Path, *, stderr: int) -> subprocess.Popen[str]:
    """``steadygrad train`` in the background, its output lines readable from ``stdout``."""
    return subprocess.Popen(
        _cmd(data_dir, run), stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env()
    )


def _final_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = checkpoint.load(run / "final.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optim/"))}


def _assert_nothing_torn(run: Path) -> None:
    for path in run.glob("*.safetensors"):
        checkpoint.load(path)  # raises on a torn file
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            json.loads(line)


def _kill_and_resume(data_dir: Path, run: Path, delay: float) -> None:
    proc = _start(data_dir, run, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "training mlp …": data loaded, the run folder exists
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _assert_nothing_torn(run)
    resumed = subprocess.run(
        [*_cmd(data_dir, run), "--resume"], capture_output=True, text=True, env=_env()
    )
    if resumed.returncode != 0 and "does not exist" in resumed.stderr:
        # Killed before the first checkpoint: nothing to resume, start again as a user would.
        resumed = subprocess.run(
            [*_cmd(data_dir, run), "--force"], capture_output=True, text=True, env=_env()
        )
    assert resumed.returncode == 0, resumed.stderr
    _assert_nothing_torn(run)


def _kills(tiny_idx_dir: Path, tmp_path: Path, n: int) -> None:
    reference = tmp_path / "reference"
    subprocess.run(_cmd(tiny_idx_dir, reference), check=True, capture_output=True, env=_env())
    expected = _final_tensors(reference)
    rng = random.Random(1234)
    for i in range(n):
        run = tmp_path / f"killed-{i}"
        _kill_and_resume(tiny_idx_dir, run, delay=rng.uniform(0.0, 0.6))
        got = _final_tensors(run)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), f"kill {i} differs"


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    _kills(tiny_idx_dir, tmp_path, 5)


@pytest.mark.slow
def test_twenty_sigkills_then_resume_are_bitwise_identical(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    _kills(tiny_idx_dir, tmp_path, 20)


def test_sigint_writes_a_checkpoint_exits_130_and_resumes_bitwise(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    reference, run = tmp_path / "reference", tmp_path / "run"
    subprocess.run(_cmd(tiny_idx_dir, reference), check=True, capture_output=True, env=_env())
    proc = _start(tiny_idx_dir, run, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if line.startswith("epoch "):
            proc.send_signal(signal.SIGINT)
            break
    proc.wait(timeout=60)
    err = proc.stderr.read()
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "interrupted by signal 2" in err and "checkpoint written" in err
    resumed = subprocess.run(
        [*_cmd(tiny_idx_dir, run), "--resume"], capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr
    expected, got = _final_tensors(reference), _final_tensors(run)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_failed_checkpoint_write_keeps_the_previous_one(
    tiny_data: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    real_replace = os.replace
    saves = {"n": 0}
    previous: dict[str, bytes] = {}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == CHECKPOINT_NAME:
            saves["n"] += 1
            if saves["n"] == 3:  # epoch 0 (initial), epoch 1, then epoch 2 fails: disk full
                previous["bytes"] = Path(dst).read_bytes()
                raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", flaky_replace)
    config = TrainConfig(epochs=3, batch_size=50, out=str(tmp_path), device="cpu")
    with pytest.raises(
        CheckpointError, match=r"No space left on device.*previous checkpoint is intact"
    ):
        fit(model, tiny_data, config)  # type: ignore[arg-type]
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    path = tmp_path / CHECKPOINT_NAME
    assert path.read_bytes() == previous["bytes"]
    _, meta = checkpoint.load(path)
    assert meta["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp-*"))  # the temporary file was removed
