"""The steadygrad command: train/evaluate round trip, one-line errors, kill and resume."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from steadygrad import checkpoint
from steadygrad.cli import main

SMALL = ["--hidden", "32", "--epochs", "2", "--batch-size", "20", "--validation", "100"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate_prints_the_same_test_accuracy(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        ["train", "--data-dir", str(tiny_idx_dir), *SMALL, "--out", str(out_dir)], capsys
    )
    assert code == 0, err
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and all("test accuracy" in line for line in epoch_lines)
    last_acc = epoch_lines[-1].split("test accuracy ")[1].split()[0]
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "final.safetensors"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"]["hidden"] == [32] and config["train"]["batch_size"] == 20
    code, out, err = run_cli(["evaluate", str(out_dir)], capsys)
    assert code == 0, err
    assert out.startswith(f"test accuracy {last_acc}")
    # The reference preset's activation/BN survive the overrides.
    assert config["model"]["activation"] == "elu" and config["model"]["batch_norm"] == "before"


def test_existing_run_is_not_overwritten(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--data-dir",
        str(tiny_idx_dir),
        *SMALL,
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().endswith(
        "already holds a run; pass --resume to continue it, --force to "
        "start over, or choose another --out"
    )


def _corrupt(src: Path, dst: Path, name: str, mutate: str) -> Path:
    shutil.copytree(src, dst)
    path = dst / name
    raw = __import__("gzip").decompress(path.read_bytes())
    if mutate == "truncate":
        raw = raw[: len(raw) - 100]
    elif mutate == "magic":
        raw = b"\x01\x02" + raw[2:]
    elif mutate == "count":
        raw = raw[:4] + (int.from_bytes(raw[4:8], "big") - 1).to_bytes(4, "big") + raw[8:-1]
    path.write_bytes(__import__("gzip").compress(raw))
    return path


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        ("train-images-idx3-ubyte.gz", "truncate", "truncated"),
        ("t10k-images-idx3-ubyte.gz", "magic", "magic"),
        ("train-labels-idx1-ubyte.gz", "count", "entries"),
    ],
)
def test_bad_data_files_give_one_line_errors_naming_the_file(
    tiny_idx_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    mutate: str,
    expected: str,
) -> None:
    bad = _corrupt(tiny_idx_dir, tmp_path / "data", name, mutate)
    code, _, err = run_cli(
        ["train", "--data-dir", str(bad.parent), *SMALL, "--out", str(tmp_path / "run")], capsys
    )
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("steadygrad: error: ")
    assert name in err and expected in err


def test_evaluate_refuses_a_pickle_checkpoint_without_running_it(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        run_cli(
            ["train", "--data-dir", str(tiny_idx_dir), *SMALL, "--epochs", "1", "--out", str(run)],
            capsys,
        )[0]
        == 0
    )
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    for writer in ("pickle", "torch"):
        target = run / "final.safetensors"
        if writer == "pickle":
            target.write_bytes(pickle.dumps(Payload()))
        else:
            torch.save({"model": Payload()}, target)
        code, _, err = run_cli(["evaluate", str(run)], capsys)
        assert code == 1
        assert "refusing to unpickle" in err and err.count("\n") == 1
        assert not marker.exists()


def test_diverging_run_stops_with_the_non_finite_error(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--data-dir",
            str(tiny_idx_dir),
            *SMALL,
            "--batch-norm",
            "none",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--out",
            str(run),
        ],
        capsys,
    )
    assert code == 1
    assert err.startswith("steadygrad: error: training diverged at epoch 1, step ")
    assert "first non-finite gradient in" in err or "loss itself overflowed" in err
    tensors, meta = checkpoint.load(run / "checkpoint.safetensors")  # the last good one loads
    assert meta["epoch"] == 0
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model/"))


@pytest.mark.parametrize(
    "command", [[], ["train"], ["evaluate"], ["report"], ["doctor"], ["study"]]
)
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: steadygrad" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--lr", "-1"], "argument --lr: expected a positive finite number, got '-1'"),
        (["train", "--hidden", "a,b"], "expected comma-separated layer widths"),
        (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_preset_and_activation_are_one_line_errors(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "r")]
    code, _, err = run_cli([*base, "--preset", "refrence"], capsys)
    assert code == 1 and "reference" in err and err.count("\n") == 1
    code, _, err = run_cli([*base, "--activation", "eluu"], capsys)
    assert code == 1 and "elu" in err and err.count("\n") == 1


def test_evaluate_on_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["evaluate", str(tmp_path)], capsys)
    assert code == 1
    assert err == f"steadygrad: error: {tmp_path} is not a run folder: config.json is missing\n"


def _train_cmd(data_dir: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "steadygrad.cli", "train", "--data-dir", str(data_dir),
        "--hidden", "64", "--epochs", str(epochs), "--batch-size", "5", "--validation", "100",
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip


def kill_during_epoch(
    data_dir: Path, out: Path, epochs: int, after_epoch: int, delay: float
) -> None:
    """Start training, SIGKILL it ``delay`` seconds after epoch ``after_epoch`` is printed."""
    proc = subprocess.Popen(
        _train_cmd(data_dir, out, epochs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"epoch {after_epoch:>3}/"):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)


def test_sigkill_during_epoch_3_then_resume_is_bitwise_identical(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    epochs = 10  # enough that the kill lands before the run ends (4 was not, once steps got faster)
    subprocess.run(_train_cmd(tiny_idx_dir, full, epochs), check=True, capture_output=True)
    kill_during_epoch(tiny_idx_dir, killed, epochs, after_epoch=2, delay=0.05)
    _, meta = checkpoint.load(killed / "checkpoint.safetensors")
    assert meta["epoch"] < epochs, "the kill landed after training finished"
    assert not (killed / "final.safetensors").exists()
    resumed = subprocess.run(
        [*_train_cmd(tiny_idx_dir, killed, epochs), "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in killed.iterdir() if ".tmp-" in p.name]  # no torn temp files left
    a, _ = checkpoint.load(full / "final.safetensors")
    b, _ = checkpoint.load(killed / "final.safetensors")
    model_keys = [k for k in a if k.startswith(("model/", "optim/"))]
    assert model_keys and all(torch.equal(a[k], b[k]) for k in model_keys)
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, epochs + 1))


def test_report_without_monitor_data_says_how_to_record_it(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        run_cli(
            ["train", "--data-dir", str(tiny_idx_dir), *SMALL, "--epochs", "1", "--out", str(run)],
            capsys,
        )[0]
        == 0
    )
    code, _, err = run_cli(["report", str(run)], capsys)
    assert code == 1 and "has no monitor.jsonl: train with --monitor" in err
    assert err.count("\n") == 1


def test_train_with_monitor_records_and_report_renders(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from steadygrad import monitor

    run = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--data-dir", str(tiny_idx_dir), *SMALL, "--out", str(run), "--monitor",
         "--monitor-every", "5", "--histograms"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    log = monitor.read(run / "monitor.jsonl")
    steps = [r.step for r in log.records]
    assert steps == list(range(0, 50, 5))  # 2 epochs × 25 steps, every 5th recorded
    assert [layer.name for layer in log.layers] == ["hidden1", "outputs"]
    assert all(r.loss is not None for r in log.records)
    code, out, err = run_cli(["report", str(run)], capsys)
    assert code == 0, err
    assert (run / "report.html").is_file() and out.strip() == f"wrote {run / 'report.html'}"


def test_doctor_names_vanishing_gradients_on_the_tiny_init_preset(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["doctor", "--preset", "deep-relu-tiny-init", "--data-dir", str(tiny_idx_dir),
         "--batch-size", "64", "--out", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    first = out.split("findings:")[1].strip().splitlines()[0]
    assert first.startswith("1. [critical] vanishing_gradients")
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["findings"][0]["kind"] == "vanishing_gradients" and not saved["healthy"]


def test_doctor_on_a_user_model_file(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / "mymodel.py"
    model_file.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    layers = []\n"
        "    for i in range(20):\n"
        "        lin = torch.nn.Linear(784 if i == 0 else 128, 128)\n"
        "        torch.nn.init.normal_(lin.weight, 0.0, 1.0)\n"
        "        layers += [lin, torch.nn.ReLU()]\n"
        "    return torch.nn.Sequential(*layers, torch.nn.Linear(128, 10))\n"
    )
    code, out, err = run_cli(
        ["doctor", "--model", f"{model_file}:build", "--data-dir", str(tiny_idx_dir),
         "--batch-size", "64"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "exploding_gradients" in out.split("findings:")[1].strip().splitlines()[0]
    code, _, err = run_cli(["doctor", "--model", f"{model_file}:buildd"], capsys)
    assert code == 1 and "build" in err and err.count("\n") == 1


def test_study_quick_writes_json_and_report_and_prints_verdicts(
    tiny_idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["study", "elu-vs-relu", "--quick", "--workers", "1", "--out", str(tmp_path),
         "--data-dir", str(tiny_idx_dir)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "elu-vs-relu.json").is_file() and (tmp_path / "report.html").is_file()
    statuses = {line.split()[1] for line in out.splitlines() if line.startswith("elu-vs-relu")}
    assert statuses and statuses <= {"confirmed", "refuted", "inconclusive"}


def test_study_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["study", "elu-vs-rel"], capsys)
    assert code == 1 and "elu-vs-relu" in err and err.count("\n") == 1
    code, _, err = run_cli(["study"], capsys)
    assert code == 1 and "study needs a NAME or 'all'" in err
