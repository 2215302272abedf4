"""CUDA paths: the trainer, resume, the monitor and the doctor on a GPU, against the CPU.

Skipped where no GPU is visible (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``. The CPU runs are the references: the same steps on the GPU must
give the same numbers to float tolerance (cuBLAS and cuDNN sum in other orders), and the parts
that differ by design on CUDA — ``optimizer.step()`` instead of the fused CPU update, the monitor's
norms by one ``_foreach_norm`` kernel and its values read in one ``tolist()`` — are exercised.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from tests.test_train import cfg, toy_data, toy_model

from steadygrad import checkpoint, doctor, models, monitor
from steadygrad.monitor import LAYER_STATS_KEYS, _stats
from steadygrad.train import CHECKPOINT_NAME, TrainingInterrupted, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def test_fit_on_cuda_matches_cpu_and_reports_the_same_history() -> None:
    data = toy_data()
    cpu, gpu = toy_model(), toy_model()
    h_cpu = fit(cpu, data, cfg(epochs=2, optimizer="adam", lr=0.01))
    h_gpu = fit(gpu, data, cfg(epochs=2, optimizer="adam", lr=0.01, device="cuda"))
    assert next(gpu.parameters()).is_cuda
    for a, b in zip(h_cpu, h_gpu, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=0.02)
    gpu_state = {k: v.cpu() for k, v in gpu.state_dict().items()}
    for k, v in cpu.state_dict().items():
        if k in ("0.bias", "1.running_mean"):
            continue  # bias before BatchNorm: Adam-normalised rounding noise (see test_train)
        torch.testing.assert_close(gpu_state[k], v, rtol=2e-3, atol=2e-4, msg=k)


def test_interrupted_cuda_run_resumes_bitwise(tmp_path: Path) -> None:
    data = toy_data()
    full = toy_model()
    fit(full, data, cfg(tmp_path / "full", device="cuda"))

    def interrupt(step: int, loss: torch.Tensor) -> None:
        if step == 20:
            os.kill(os.getpid(), signal.SIGTERM)

    part = toy_model()
    with pytest.raises(TrainingInterrupted, match="at epoch 2, step 20"):
        fit(part, data, cfg(tmp_path / "part", device="cuda"), on_step_end=interrupt)
    _, meta = checkpoint.load(tmp_path / "part" / CHECKPOINT_NAME)
    assert meta["step"] == 20
    resumed = toy_model(seed=5)
    fit(resumed, data, cfg(tmp_path / "part", device="cuda"), resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_monitor_records_on_cuda_match_cpu(tmp_path: Path) -> None:
    data = toy_data()
    records = []
    for device in ("cpu", "cuda"):
        model = toy_model()
        with monitor.watch(model, every=3, out=tmp_path / device) as mon:
            fit(model, data, cfg(epochs=1, device=device), monitor=mon)
        records.append(mon.records)
    cpu, gpu = records
    assert [r.step for r in gpu] == [r.step for r in cpu] == [0, 3, 6, 9, 12]
    for a, b in zip(cpu, gpu, strict=True):
        for la, lb in zip(a.layers, b.layers, strict=True):
            for key in LAYER_STATS_KEYS:
                va, vb = getattr(la, key), getattr(lb, key)
                if isinstance(va, float):
                    assert _close(va, vb, 5e-3), (a.step, la.name, key, va, vb)
                else:
                    assert va == vb, (a.step, la.name, key)
    assert [r.step for r in monitor.read(tmp_path / "cuda").records] == [0, 3, 6, 9, 12]


def test_monitor_reads_each_cuda_step_with_one_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    model = toy_model().cuda()
    x, y = torch.randn(16, 20, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    transfers: list[int] = []
    original = torch.Tensor.tolist

    def counting(self: torch.Tensor) -> object:
        if self.is_cuda:
            transfers.append(self.numel())
        return original(self)

    with monitor.watch(model, every=1) as mon:
        monkeypatch.setattr(torch.Tensor, "tolist", counting)
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        monkeypatch.undo()
    assert len(transfers) == 1 and transfers[0] > 10
    layer = mon.records[0].layers[0]
    assert layer.weight_grad_norm == pytest.approx(float(model[0].weight.grad.norm()), rel=1e-4)
    # the GPU path queues norms (one _foreach_norm), not sums of squares
    batch = _stats.Batch()
    (m,) = _stats.moments_many([model[0].weight.detach()], batch)
    assert m is not None and not m.squared
    mean, std, norm = m.host(batch.read())
    w = model[0].weight.detach().double()
    assert (mean, std, norm) == pytest.approx(
        (float(w.mean()), float(w.std(correction=0)), float(w.norm())), rel=1e-4
    )


def test_doctor_on_cuda_names_the_same_cause_as_on_cpu() -> None:
    findings = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = models.preset("deep-relu-tiny-init").to(device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 784, generator=g).to(device)
        y = torch.randint(0, 10, (64,), generator=g).to(device)
        findings.append(doctor.diagnose(model, (x, y)).findings[0])
    cpu, gpu = findings
    assert gpu.kind == cpu.kind == "vanishing_gradients"
    assert gpu.layers == cpu.layers
