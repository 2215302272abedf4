"""Trainer: determinism, exact resume (epoch and mid-epoch), divergence, config validation."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from steadygrad import checkpoint
from steadygrad.data import Dataset, Split
from steadygrad.errors import CheckpointError, RunLocked, TrainingDiverged
from steadygrad.train import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    METRICS_NAME,
    TrainConfig,
    TrainingInterrupted,
    evaluate,
    fit,
)


def toy_data(n_train: int = 400, n_test: int = 100, dim: int = 20, seed: int = 0) -> Dataset:
    """Three Gaussian blobs: learnable in a few epochs, so accuracy must rise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, dim, generator=g) * 2

    def split(n: int) -> Split:
        y = torch.randint(0, 3, (n,), generator=g)
        x = centers[y] + torch.randn(n, dim, generator=g)
        return Split(x.float(), y.long())

    return Dataset(train=split(n_train), validation=split(50), test=split(n_test), name="toy")


def toy_model(seed: int = 1, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(20, 32)]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ELU(), nn.Linear(32, 3)]
    return nn.Sequential(*layers)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def cfg(tmp_path: Path | None = None, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        optimizer="momentum", lr=0.05, epochs=3, batch_size=32, seed=7, device="cpu"
    )
    base.update(kw)
    if tmp_path is not None:
        base["out"] = str(tmp_path)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_fit_learns_and_reports_every_epoch(tmp_path: Path) -> None:
    data = toy_data()
    model = toy_model()
    before = evaluate(model, data.test)["accuracy"]
    history = fit(model, data, cfg(tmp_path))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_accuracy"] > max(before, 0.9)
    assert history[-1]["step"] == 3 * 13  # ceil(400 / 32) steps per epoch
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    # evaluate() on the final model reproduces the last reported test accuracy exactly.
    assert evaluate(model, data.test)["accuracy"] == history[-1]["test_accuracy"]
    assert (tmp_path / FINAL_NAME).exists() and (tmp_path / CHECKPOINT_NAME).exists()


def test_train_metrics_match_a_slow_recomputation() -> None:
    data = toy_data()
    model = toy_model()
    history = fit(model, data, cfg(epochs=1))
    model.eval()
    with torch.no_grad():
        logits = model(data.test.images)
    acc = (logits.argmax(1) == data.test.labels).float().mean().item()
    loss = nn.functional.cross_entropy(logits, data.test.labels).item()
    assert history[0]["test_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert history[0]["test_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_same_seed_gives_bitwise_identical_weights(optimizer: str) -> None:
    data = toy_data()
    a, b = toy_model(), toy_model()
    fit(a, data, cfg(optimizer=optimizer, lr=0.01, epochs=2))
    fit(b, data, cfg(optimizer=optimizer, lr=0.01, epochs=2))
    assert_same_weights(a, b)
    c = toy_model()
    fit(c, data, cfg(optimizer=optimizer, lr=0.01, epochs=2, seed=8))
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_resume_at_epoch_boundary_is_bitwise_identical(tmp_path: Path, optimizer: str) -> None:
    data = toy_data()
    full = toy_model()
    fit(full, data, cfg(tmp_path / "full", optimizer=optimizer, lr=0.01, epochs=3))
    part = toy_model()
    fit(part, data, cfg(tmp_path / "part", optimizer=optimizer, lr=0.01, epochs=2))
    resumed = toy_model(seed=99)  # different init: everything must come from the checkpoint
    history = fit(
        resumed, data, cfg(tmp_path / "part", optimizer=optimizer, lr=0.01, epochs=3), resume=True
    )
    assert_same_weights(full, resumed)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    full_lines = (tmp_path / "full" / METRICS_NAME).read_text().splitlines()
    part_lines = (tmp_path / "part" / METRICS_NAME).read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in full_lines]
    assert strip == [
        {k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in part_lines
    ]


def test_interrupt_mid_epoch_checkpoints_and_resumes_bitwise(tmp_path: Path) -> None:
    data = toy_data()
    full = toy_model()
    fit(full, data, cfg(tmp_path / "full"))

    def interrupt(step: int, loss: torch.Tensor) -> None:
        if step == 20:  # mid-epoch 2 (13 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    part = toy_model()
    with pytest.raises(TrainingInterrupted, match="interrupted by signal 15 at epoch 2, step 20"):
        fit(part, data, cfg(tmp_path / "part"), on_step_end=interrupt)
    _, meta = checkpoint.load(tmp_path / "part" / CHECKPOINT_NAME)
    assert (meta["epoch"], meta["step"], meta["step_in_epoch"]) == (1, 20, 7)
    resumed = toy_model(seed=5)
    history = fit(resumed, data, cfg(tmp_path / "part"), resume=True)
    assert_same_weights(full, resumed)
    assert len(history) == 3
    # The handlers are restored after fit returns.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_divergence_names_epoch_step_and_layer_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    data = toy_data()
    model = toy_model(bn=False)
    fit(model, data, cfg(tmp_path, optimizer="sgd", lr=0.01, epochs=1))
    ckpt = tmp_path / CHECKPOINT_NAME
    good = ckpt.read_bytes()
    with pytest.raises(TrainingDiverged) as err:
        fit(model, data, cfg(tmp_path, optimizer="sgd", lr=1e18, epochs=2), resume=True)
    msg = str(err.value)
    assert "training diverged at epoch 2, step" in msg
    assert err.value.epoch == 2 and err.value.step > 13
    assert err.value.layer is not None and err.value.layer in dict(model.named_parameters())
    assert f"first non-finite gradient in {err.value.layer!r}" in msg
    assert "Lower the learning rate" in msg and "\n" not in msg
    assert ckpt.read_bytes() == good  # the last good checkpoint is untouched
    tensors, meta = checkpoint.load(ckpt)
    assert meta["epoch"] == 1
    fresh = toy_model(bn=False)
    checkpoint.unpack_state(tensors, meta, fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    # The model in memory is left at the last good state, not the diverged one.
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergence_in_first_epoch_keeps_initial_checkpoint(tmp_path: Path) -> None:
    data = toy_data()
    model = toy_model(bn=False)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+: .*untouched"):
        fit(model, data, cfg(tmp_path, optimizer="sgd", lr=1e30, epochs=1))
    _, meta = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    assert meta["epoch"] == 0


def test_resume_refuses_changed_options(tmp_path: Path) -> None:
    data = toy_data()
    fit(toy_model(), data, cfg(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="option batch_size was 32 and is now 16"):
        fit(toy_model(), data, cfg(tmp_path, epochs=2, batch_size=16), resume=True)


def test_resume_without_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist; run without --resume"):
        fit(toy_model(), toy_data(), cfg(tmp_path), resume=True)
    with pytest.raises(ValueError, match=r"resume=True needs config.out"):
        fit(toy_model(), toy_data(), cfg(), resume=True)


def test_model_output_shape_is_checked() -> None:
    model = nn.Sequential(nn.Linear(20, 2))
    with pytest.raises(
        ValueError, match=r"logits of shape \(batch, 3\) for 3 classes; got \(2, 2\)"
    ):
        fit(model, toy_data(), cfg(epochs=1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimizer", "rmsprop", "optimizer must be one of 'sgd', 'momentum', 'nesterov', 'adam'"),
        ("lr", 0.0, "lr must be positive; got 0.0"),
        ("lr", float("nan"), "lr must be a finite number; got nan"),
        ("epochs", 0, "epochs must be a positive integer; got 0"),
        ("batch_size", 2.5, "batch_size must be a positive integer; got 2.5"),
        ("seed", -1, "seed must be a non-negative integer; got -1"),
        ("momentum", 1.0, "momentum must be < 1.0; got 1.0"),
        ("threads", 0, "threads must be a positive integer or None; got 0"),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    c = TrainConfig(optimizer="nesterov", lr=0.1, epochs=4)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_device_errors() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA is not available; use --device cpu"):
        fit(toy_model(), toy_data(), cfg(device="cuda"))
    with pytest.raises(ValueError, match="device must be 'auto'"):
        fit(toy_model(), toy_data(), cfg(device="tpu:x"))


def test_second_process_on_the_same_run_folder_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from steadygrad.train import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"is in use by process {holder.pid}; wait for it"):
            fit(toy_model(), toy_data(), cfg(tmp_path, epochs=1))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    # The dead holder's lock is released by the kernel: the next run takes the folder over.
    assert len(fit(toy_model(), toy_data(), cfg(tmp_path, epochs=1))) == 1


def test_run_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    from steadygrad.train import run_lock

    with run_lock(tmp_path), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released after the outer context
        pass


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_fast_and_plain_paths_train_to_the_same_weights(optimizer: str) -> None:
    from steadygrad import fast

    data = toy_data()
    a, b = toy_model(), toy_model()
    assert fast.supports(a, torch.optim.SGD(a.parameters(), lr=0.1))[0]  # the fast path applies
    ha = fit(a, data, cfg(optimizer=optimizer, lr=0.01, epochs=2, fast=True))
    hb = fit(b, data, cfg(optimizer=optimizer, lr=0.01, epochs=2, fast=False))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if k in ("0.bias", "1.running_mean") and optimizer == "adam":
            # The bias in front of BatchNorm has a true gradient of 0 (BN subtracts the batch
            # mean); its computed gradient is rounding noise, which Adam normalises to ±lr steps,
            # and BN's moving mean follows that bias. Their difference (what eval uses) agrees.
            continue
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
    assert ha[-1]["train_loss"] == pytest.approx(hb[-1]["train_loss"], rel=1e-5)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(data.test.images), b(data.test.images), rtol=1e-3, atol=2e-3)


def test_threads_option_applies_during_fit_and_is_restored() -> None:
    seen: list[int] = []
    before = torch.get_num_threads()
    fit(
        toy_model(),
        toy_data(),
        cfg(epochs=1, threads=3),
        on_step_end=lambda step, loss: seen.append(torch.get_num_threads()),
    )
    assert set(seen) == {3} and torch.get_num_threads() == before
