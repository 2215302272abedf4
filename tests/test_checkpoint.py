"""Tests for steadygrad.checkpoint: round trips, exact resume, atomic writes, refusals."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from steadygrad import checkpoint
from steadygrad.errors import CheckpointError

# ---------------------------------------------------------------------------------------------
# helpers


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    # Dropout draws from the global CPU RNG, so an unrestored RNG changes the resumed run.
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3))


_X = torch.linspace(-2.0, 2.0, 64 * 6).reshape(64, 6).sin()
_Y = torch.arange(64) % 3


def _train(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, steps: int) -> None:
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 64, (8,), generator=gen)  # batches from the named generator
        loss = nn.functional.cross_entropy(model(_X[idx]), _Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


_OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adamw-tensor-lr": lambda m: torch.optim.AdamW(m.parameters(), lr=torch.tensor(1e-2)),
}


def _assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Recursive equality with exact types: tensors by torch.equal and dtype/shape."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _saved(tmp_path: Path, name: str = "ckpt.safetensors") -> Path:
    path = tmp_path / name
    checkpoint.save(path, {"w": torch.arange(6.0).reshape(2, 3)}, {"epoch": 1})
    return path


def _raw_safetensors(header: dict[str, Any], data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


# ---------------------------------------------------------------------------------------------
# save / load round trip


def test_round_trip_keeps_dtypes_shapes_and_values(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "f32": base,
        "f64": torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        "f16": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "bf16": torch.tensor([3.0, 0.125], dtype=torch.bfloat16),
        "i64_scalar": torch.tensor(7, dtype=torch.int64),  # 0-dim
        "f32_scalar": torch.tensor(2.5),
        "bool": torch.tensor([True, False, True]),
        "rng_u8": torch.get_rng_state(),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # non-contiguous view of base
        "same_again": base,  # shares memory with "f32"
        "row": base[1],  # a view into base's storage
    }
    meta = {"config": {"depth": 4, "act": "tanh", "sizes": [3, 2]}, "ünï": "ok", "f": 0.1}
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, tensors, meta)
    loaded, loaded_meta = checkpoint.load(path)

    assert set(loaded) == set(tensors)
    for key, expected in tensors.items():
        got = loaded[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert torch.equal(got, expected), key
        assert got.device.type == "cpu" and got.is_contiguous()
    assert loaded["i64_scalar"].dim() == 0 and loaded["i64_scalar"].item() == 7
    assert loaded_meta == meta
    # Loaded tensors own writable memory: writing one does not touch another.
    loaded["f32"].add_(1)
    assert torch.equal(loaded["same_again"], base)


def test_meta_keeps_nan_and_inf_and_turns_tuples_into_lists(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {}, {"loss": math.nan, "hi": math.inf, "sizes": (256, 128)})
    meta = checkpoint.read_meta(path)
    assert math.isnan(meta["loss"]) and meta["hi"] == math.inf
    assert meta["sizes"] == [256, 128]


def test_file_is_plain_safetensors_readable_by_safetensors_itself(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(4, dtype=torch.int64), "b": torch.tensor(1.25)}
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, tensors, {"epoch": 3})

    plain = safetensors.torch.load_file(path)
    assert set(plain) == {"a", "b"}
    assert torch.equal(plain["a"], tensors["a"]) and torch.equal(plain["b"], tensors["b"])
    with safe_open(path, framework="pt") as f:
        document = json.loads(f.metadata()["steadygrad"])
    assert document == {"format_version": checkpoint.FORMAT_VERSION, "meta": {"epoch": 3}}


def test_saving_the_same_state_twice_gives_identical_bytes(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6.0), "s": torch.tensor(3)}
    checkpoint.save(tmp_path / "a.safetensors", tensors, {"k": [1, 2]})
    checkpoint.save(tmp_path / "b.safetensors", tensors, {"k": [1, 2]})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_read_meta_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"w": torch.ones(1000)}, {"epoch": 2})
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])  # tensor data cut short: read_meta does not look at it
    assert checkpoint.read_meta(path) == {"epoch": 2}
    with pytest.raises(CheckpointError, match=r"is a corrupt safetensors file"):
        checkpoint.load(path)


# ---------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("opt_name", list(_OPTIMIZERS))
def test_resume_from_checkpoint_is_bitwise_identical(tmp_path: Path, opt_name: str) -> None:
    make_opt = _OPTIMIZERS[opt_name]
    # Uninterrupted run: 5 steps, checkpoint, 5 more steps.
    model = _mlp(seed=0)
    opt = make_opt(model)
    gen = torch.Generator().manual_seed(1)
    _train(model, opt, gen, 5)
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save_training_state(path, model, opt, {"batches": gen}, {"epoch": 1, "step": 5})
    _train(model, opt, gen, 5)

    # Resumed run: different init, scrambled global RNG, fresh generator, then load.
    resumed = _mlp(seed=123)
    resumed_opt = make_opt(resumed)
    resumed_gen = torch.Generator().manual_seed(99)
    torch.manual_seed(4242)
    meta = checkpoint.load_training_state(path, resumed, resumed_opt, {"batches": resumed_gen})
    assert meta["epoch"] == 1 and meta["step"] == 5
    _train(resumed, resumed_opt, resumed_gen, 5)

    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    _assert_same_state(opt.state_dict(), resumed_opt.state_dict())
    assert torch.equal(gen.get_state(), resumed_gen.get_state())


def test_adam_step_comes_back_as_a_float32_scalar_tensor(tmp_path: Path) -> None:
    model = _mlp(seed=0)
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, torch.Generator().manual_seed(0), 3)
    path = tmp_path / "c.safetensors"
    checkpoint.save_training_state(path, model, opt)

    fresh = torch.optim.Adam(_mlp(seed=5).parameters())
    checkpoint.load_training_state(path, _mlp(seed=5), None)  # model only: optimizer untouched
    assert fresh.state_dict()["state"] == {}
    fresh_model = _mlp(seed=5)
    fresh = torch.optim.Adam(fresh_model.parameters())
    checkpoint.load_training_state(path, fresh_model, fresh)
    step = fresh.state_dict()["state"][0]["step"]
    assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and step.dim() == 0
    assert step.item() == 3.0
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999)
    assert isinstance(fresh.param_groups[0]["betas"], tuple)


def test_lbfgs_nested_state_round_trips_exactly(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.LBFGS(model.parameters(), history_size=4)
    x = torch.linspace(-1, 1, 12).reshape(4, 3)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    tensors, meta = checkpoint.pack_state(model, opt)
    assert "optim/state/0/old_dirs/0" in tensors  # lists of tensors get indexed names
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, tensors, meta)

    other = nn.Linear(3, 2)
    other_opt = torch.optim.LBFGS(other.parameters(), history_size=4)
    checkpoint.unpack_state(*checkpoint.load(path), other, other_opt)
    _assert_same_state(opt.state_dict(), other_opt.state_dict())


def test_generator_and_global_rng_states_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(11)
    torch.rand(3, generator=gen)  # advance past the seed
    torch.manual_seed(5)
    torch.rand(7)
    model = nn.Linear(2, 2)
    path = tmp_path / "c.safetensors"
    checkpoint.save_training_state(path, model, None, {"g": gen})
    expected_gen = torch.rand(5, generator=gen)
    expected_global = torch.rand(5)

    other = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    checkpoint.load_training_state(path, model, None, {"g": other})
    assert torch.equal(torch.rand(5, generator=other), expected_gen)
    assert torch.equal(torch.rand(5), expected_global)


def test_pack_state_is_a_snapshot_not_a_view(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, _ = checkpoint.pack_state(model, opt)
    before = {k: v.clone() for k, v in tensors.items()}
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for key, value in tensors.items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(tensors["model/weight"], model.weight.detach())


def test_tied_weights_are_saved_and_restored(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight  # tied: state_dict has two keys sharing memory
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, dict(model.state_dict()), {})
    loaded, _ = checkpoint.load(path)
    assert torch.equal(loaded["0.weight"], model[0].weight.detach())
    assert torch.equal(loaded["1.weight"], model[0].weight.detach())


def test_caller_tensors_outside_the_state_prefixes_are_ignored_by_unpack() -> None:
    model = nn.Linear(2, 2)
    tensors, meta = checkpoint.pack_state(model, None, None, {"epoch": 0})
    tensors["progress/loss_sum"] = torch.tensor(1.0)
    assert checkpoint.unpack_state(tensors, meta, nn.Linear(2, 2))["epoch"] == 0


def test_cuda_rng_states_without_cuda_warn(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the warning is for CPU-only resumes")
    model = nn.Linear(2, 2)
    tensors, meta = checkpoint.pack_state(model)
    tensors["rng/global/cuda/0"] = torch.zeros(16, dtype=torch.uint8)
    meta["rng_state"]["cuda_devices"] = 1
    with pytest.warns(RuntimeWarning, match=r"CUDA RNG states for 1 device\(s\) but this .* has 0"):
        checkpoint.unpack_state(tensors, meta, model)


# ---------------------------------------------------------------------------------------------
# atomic writes


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail_at", ["replace", "fsync", "write"])
def test_failed_write_leaves_previous_checkpoint_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()
    if fail_at == "replace":
        monkeypatch.setattr(os, "replace", _enospc)
    elif fail_at == "fsync":
        monkeypatch.setattr(os, "fsync", _enospc)
    else:
        real_fdopen = os.fdopen

        class _Full:
            def __init__(self, fd: int) -> None:
                self.f = real_fdopen(fd, "wb")

            def __enter__(self) -> _Full:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> int:
                self.f.write(data[: len(data) // 2])  # half of it lands, then the disk is full
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _Full(fd))

    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"could not write checkpoint {path}: No space left on device (ENOSPC); "
            "the previous checkpoint is intact"
        ),
    ):
        checkpoint.save(path, {"w": torch.zeros(1000)}, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    assert checkpoint.read_meta(path) == {"epoch": 1}


def test_failed_first_write_says_no_file_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "replace", _enospc)
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(CheckpointError, match=r"\(ENOSPC\); no file was written$"):
        checkpoint.save(path, {"w": torch.zeros(3)}, {})
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_write_removes_temp_file_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": torch.zeros(3)}, {})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_write_goes_through_fsynced_temp_file_in_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if os.name != "nt" else fd))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(("replace", (Path(src), Path(dst))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, {"w": torch.ones(2)}, {})
    monkeypatch.undo()

    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    src, dst = calls[1][1]
    assert dst == path and src.parent == path.parent
    assert re.fullmatch(rf"\.ckpt\.safetensors\.tmp-{os.getpid()}-[0-9a-f]+", src.name)
    if os.name != "nt":
        assert calls[0][1] == str(src.resolve())  # the temp file was synced before the rename
        assert calls[2][1] == str(tmp_path.resolve())  # then the folder, after it
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_folder_sync_failure_is_reported_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    count = [0]

    def fsync(fd: int) -> None:
        count[0] += 1
        if count[0] == 2:  # the folder
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint .* was written but its folder could not be synced: Input/output "
        r"error \(EIO\); it may not survive a crash",
    ):
        checkpoint.save(path, {"w": torch.ones(2)}, {"epoch": 9})
    monkeypatch.undo()
    assert checkpoint.read_meta(path) == {"epoch": 9}


def test_save_into_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "ckpt.safetensors"
    with pytest.raises(
        CheckpointError, match=r"No such file or directory \(ENOENT\); no file was written"
    ):
        checkpoint.save(path, {}, {})


def test_save_onto_a_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*: it is a folder"):
        checkpoint.save(tmp_path, {}, {})


# ---------------------------------------------------------------------------------------------
# refusing what is not a steadygrad checkpoint


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


_PICKLE_WRITERS: dict[str, Callable[[object, Path], None]] = {
    "pickle-protocol-2": lambda obj, p: p.write_bytes(pickle.dumps(obj, protocol=2)),
    "pickle-protocol-5": lambda obj, p: p.write_bytes(pickle.dumps(obj, protocol=5)),
    "torch-save-zip": lambda obj, p: torch.save(obj, p),
    "torch-save-legacy": lambda obj, p: torch.save(obj, p, _use_new_zipfile_serialization=False),
}


@pytest.mark.parametrize("writer", list(_PICKLE_WRITERS))
def test_pickle_checkpoints_are_refused_without_running_them(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _PICKLE_WRITERS[writer]({"model": _Payload(marker)}, path)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{path} is not a steadygrad checkpoint (safetensors); refusing to unpickle it"
        ),
    ):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle it"):
        checkpoint.read_meta(path)
    assert not marker.exists()


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    # Guards the test above: the payload really runs code when unpickled.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


def test_protocol_0_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    with pytest.raises(CheckpointError, match=r"is not a steadygrad checkpoint \(safetensors\)"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, r"is 0 bytes, too short for the 8-byte header length"),
        (5, r"is 5 bytes, too short for the 8-byte header length"),
        (40, r"its header length \d+ does not fit in a file of 40 bytes \(truncated or corrupt\)"),
        (-1, r"is a corrupt safetensors file"),
    ],
)
def test_truncated_checkpoint_is_refused(tmp_path: Path, cut: int, message: str) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
        checkpoint.load(path)


def test_trailing_garbage_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"is a corrupt safetensors file: .+"):
        checkpoint.load(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
        .to(torch.uint8)
        .numpy()
        .tobytes()
    )
    with pytest.raises(CheckpointError, match=r"is not a steadygrad checkpoint \(safetensors\)"):
        checkpoint.load(path)


def test_huge_declared_header_length_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(
        CheckpointError,
        match=r"header length 18446744073709551615 does not fit in a file of 10 bytes",
    ):
        checkpoint.load(path)


def test_header_over_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    monkeypatch.setattr(checkpoint, "_MAX_HEADER_BYTES", 16)
    with pytest.raises(CheckpointError, match=r"header length \d+ exceeds the limit of 16 bytes"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\xfe\xfe{}", r"its header is not valid JSON"),
        (b"[1, 2]", r"its header is a JSON list, not an object"),
        (b"{bad}", r"its header is not valid JSON"),
        (b"[" * 200_000, r"its header is nested too deeply"),
    ],
)
def test_corrupt_header_is_refused(tmp_path: Path, header: bytes, message: str) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_safetensors_without_steadygrad_metadata_is_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, bare)
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, other, metadata={"format": "pt"})
    for path in (bare, other):
        with pytest.raises(
            CheckpointError,
            match=re.escape(f"{path} is a safetensors file without steadygrad metadata"),
        ):
            checkpoint.load(path)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", r"has corrupt steadygrad metadata: Expecting"),
        ('{"meta": {}}', r"has corrupt steadygrad metadata: no 'format_version'"),
        ('{"format_version": "1", "meta": {}}', r"format_version '1' is not a positive integer"),
        ('{"format_version": 1, "meta": [1]}', r"'meta' is list, not an object"),
        (
            '{"format_version": 2, "meta": {}}',
            r"has checkpoint format version 2, newer than the newest this steadygrad reads "
            r"\(1\); upgrade steadygrad",
        ),
    ],
)
def test_bad_steadygrad_metadata_is_refused(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "c.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, path, metadata={"steadygrad": document})
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_bad_data_offsets_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    header = {
        "__metadata__": {"steadygrad": '{"format_version": 1, "meta": {}}'},
        "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]},  # 4 floats need 16 bytes
    }
    path.write_bytes(_raw_safetensors(header, b"\0" * 12))
    with pytest.raises(CheckpointError, match=r"is a corrupt safetensors file: .+"):
        checkpoint.load(path)


def test_missing_checkpoint_suggests_the_closest_name(tmp_path: Path) -> None:
    _saved(tmp_path, "final.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint .*finl\.safetensors does not exist; did you mean 'final\.safetensors'\?",
    ):
        checkpoint.load(tmp_path / "finl.safetensors")


def test_loading_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is a folder; pass the \.safetensors file inside"):
        checkpoint.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# state mismatches: errors, and nothing changed


def _packed(tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model = _mlp(seed=0)
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, torch.Generator().manual_seed(0), 2)
    return checkpoint.pack_state(model, opt, {"batches": torch.Generator().manual_seed(3)})


def test_model_shape_mismatch_names_the_keys_and_changes_nothing(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    other = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model: shape mismatch for '0\.weight' \(checkpoint \(16, 6\), "
        r"model \(8, 6\)\), '0\.bias'",
    ):
        checkpoint.unpack_state(tensors, meta, other)
    _assert_same_state(before, dict(other.state_dict()))
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_model_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    other = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Tanh(), nn.Linear(3, 3)
    )
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model: missing keys '2\.weight', '2\.bias', '5\.weight' "
        r"\(\+1 more\); unexpected keys '3\.weight', '3\.bias'$",
    ):
        checkpoint.unpack_state(tensors, meta, other)


def test_optimizer_class_mismatch_is_refused(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    model = _mlp(seed=0)
    with pytest.raises(
        CheckpointError, match=r"checkpoint holds Adam optimizer state; the optimizer is SGD"
    ):
        checkpoint.unpack_state(tensors, meta, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_optimizer_group_mismatch_is_refused_and_model_untouched(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    model = _mlp(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(
        [{"params": list(model[0].parameters())}, {"params": list(model[3].parameters())}]
    )
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint optimizer has parameter groups of sizes \[4\]; "
        r"the optimizer has \[2, 2\]",
    ):
        checkpoint.unpack_state(tensors, meta, model, opt)
    _assert_same_state(before, dict(model.state_dict()))


def test_checkpoint_without_optimizer_state_is_refused_for_an_optimizer() -> None:
    model = nn.Linear(2, 2)
    tensors, meta = checkpoint.pack_state(model)
    with pytest.raises(CheckpointError, match=r"no optimizer state; pass optimizer=None"):
        checkpoint.unpack_state(tensors, meta, model, torch.optim.SGD(model.parameters(), lr=1))


def test_missing_optimizer_tensor_is_named(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    del tensors["optim/state/1/exp_avg"]
    model = _mlp(seed=0)
    with pytest.raises(
        CheckpointError, match=r"missing tensor 'optim/state/1/exp_avg' that its optimizer state 1"
    ):
        checkpoint.unpack_state(tensors, meta, model, torch.optim.Adam(model.parameters()))


def test_missing_generator_state_names_what_is_there(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"no state for generator 'batch'; it has 'batches'; did you mean 'batches'\?",
    ):
        checkpoint.unpack_state(tensors, meta, _mlp(seed=0), None, {"batch": torch.Generator()})


def test_wrong_size_generator_state_is_refused(tmp_path: Path) -> None:
    tensors, meta = _packed(tmp_path)
    tensors["rng/batches"] = torch.zeros(3, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    with pytest.raises(
        CheckpointError,
        match=r"RNG state 'rng/batches' is torch\.uint8 of shape \(3,\); expected uint8 of "
        r"shape \(\d+,\)",
    ):
        checkpoint.unpack_state(tensors, meta, _mlp(seed=0), None, {"batches": gen})
    assert torch.equal(gen.get_state(), before)


def test_load_training_state_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    checkpoint.save_training_state(path, nn.Linear(2, 3))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: checkpoint does not fit")):
        checkpoint.load_training_state(path, nn.Linear(2, 4))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"epoch": 1}, r"no valid 'format_version'/'rng_state'; it was not made by .*pack_state"),
        ({"format_version": 1, "rng_state": [0]}, r"'rng_state' is malformed: \[0\]; expected"),
        (
            {"format_version": 2, "rng_state": {}},
            r"format version 2, newer than the newest this steadygrad reads \(1\)",
        ),
    ],
)
def test_unpack_refuses_foreign_or_newer_meta(meta: dict[str, Any], message: str) -> None:
    model = nn.Linear(2, 2)
    tensors, _ = checkpoint.pack_state(model)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.unpack_state(tensors, meta, model)


# ---------------------------------------------------------------------------------------------
# argument validation


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([torch.ones(1)], r"tensors must be a dict of str to Tensor; got list"),
        (
            {1: torch.ones(1)},
            r"tensor names must be non-empty str other than '__metadata__'; got 1",
        ),
        ({"__metadata__": torch.ones(1)}, r"got '__metadata__'"),
        ({"w": [1.0]}, r"tensors\['w'\] must be a Tensor; got list"),
        (
            {"w": torch.ones(2, dtype=torch.complex128)},
            r"tensors\['w'\] has dtype torch\.complex128; allowed: float64, float32",
        ),
        ({"w": torch.eye(2).to_sparse()}, r"has layout torch\.sparse_coo; only dense"),
        ({"w": torch.empty(2, device="meta")}, r"is on the meta device"),
    ],
)
def test_save_rejects_bad_tensors(tmp_path: Path, tensors: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        checkpoint.save(tmp_path / "c.safetensors", tensors, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([1], r"meta must be a dict; got list"),
        (
            {"cfg": {"device": torch.device("cpu")}},
            r"meta\['cfg'\]\['device'\] is a device, which checkpoint metadata \(JSON\) cannot "
            r"store; allowed: dict with str keys",
        ),
        ({"x": torch.ones(1)}, r"meta\['x'\] is a Tensor.*; put tensors in the tensors dict"),
        ({"hist": {3: 0.5}}, r"meta\['hist'\] has key 3 of type int; .* keys must be str"),
    ],
)
def test_save_rejects_meta_json_cannot_store(tmp_path: Path, meta: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        checkpoint.save(tmp_path / "c.safetensors", {}, meta)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_self_containing_meta(tmp_path: Path) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(
        TypeError, match=r"meta\['l'\]\[0\] contains itself; checkpoint metadata must be a tree"
    ):
        checkpoint.save(tmp_path / "c.safetensors", {}, {"l": loop})


def test_pack_state_rejects_reserved_meta_keys_and_bad_generators() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"extra_meta key 'rng_state' is reserved by pack_state"):
        checkpoint.pack_state(model, None, None, {"rng_state": 1})
    with pytest.raises(ValueError, match=r"generator names must be .* without '/'; got 'a/b'"):
        checkpoint.pack_state(model, None, {"a/b": torch.Generator()})
    with pytest.raises(TypeError, match=r"generators\['g'\] must be a torch\.Generator; got int"):
        checkpoint.pack_state(model, None, {"g": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"generators must be a dict .*; got list"):
        checkpoint.pack_state(model, None, [torch.Generator()])  # type: ignore[arg-type]


def test_pack_state_rejects_non_tensor_model_state() -> None:
    class WithExtra(nn.Linear):
        def get_extra_state(self) -> Any:
            return {"note": "x"}

        def set_extra_state(self, state: Any) -> None:
            pass

    with pytest.raises(TypeError, match=r"model state entry '_extra_state' is a dict; only"):
        checkpoint.pack_state(WithExtra(2, 2))


# ---------------------------------------------------------------------------------------------
# latest


def test_latest_picks_the_newest_checkpoint(tmp_path: Path) -> None:
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.latest(tmp_path) is None
    epoch = _saved(tmp_path, "checkpoint.safetensors")
    final = _saved(tmp_path, "final.safetensors")
    (tmp_path / ".checkpoint.safetensors.tmp-1-ab").write_bytes(b"partial")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    os.utime(epoch, ns=(2_000_000_000, 2_000_000_000))
    os.utime(final, ns=(1_000_000_000, 1_000_000_000))
    assert checkpoint.latest(tmp_path) == epoch
    os.utime(final, ns=(3_000_000_000, 3_000_000_000))
    assert checkpoint.latest(str(tmp_path)) == final
    os.utime(epoch, ns=(3_000_000_000, 3_000_000_000))
    assert checkpoint.latest(tmp_path) == final  # tie: the name that sorts last


def test_latest_rejects_a_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"run_dir must be a folder; got .*, which is a file"):
        checkpoint.latest(path)
