"""Property tests (hypothesis) on hostile input: initializers, BatchNorm, activations, IDX, config.

Each property runs a fixed, derandomized number of examples (``derandomize=True``), so a failure
reproduces on every machine. References are torch's own functions (``F.batch_norm``, ``F.elu``,
…) and the distributions' closed-form bounds.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steadygrad import activations, init
from steadygrad.cli import main
from steadygrad.data import read_idx
from steadygrad.errors import DataError
from steadygrad.nn import BatchNorm
from steadygrad.train import TrainConfig

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --------------------------------------------------------------------------- initializers

shapes = st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple)
scales = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)
float_dtypes = st.sampled_from([torch.float32, torch.float64])


@FUZZ
@given(
    shape=shapes,
    scale=scales,
    mode=st.sampled_from(init.MODES),
    distribution=st.sampled_from(init.DISTRIBUTIONS),
    dtype=float_dtypes,
    seed=st.integers(0, 2**31 - 1),
)
def test_variance_scaling_any_shape_and_scale(
    shape: tuple[int, ...],
    scale: float,
    mode: str,
    distribution: str,
    dtype: torch.dtype,
    seed: int,
) -> None:
    spec = init.VarianceScaling(scale, mode, distribution)
    w = torch.full(shape, float("nan"), dtype=dtype)
    ptr = w.data_ptr()
    out = spec(w, generator=torch.Generator().manual_seed(seed))
    assert out is w and w.data_ptr() == ptr and tuple(w.shape) == shape
    assert torch.isfinite(w).all()
    # The bound: uniform r = sqrt(3·scale/n); truncated normal 2·s, s = sqrt(scale/n)/0.8796…
    bound = spec.bound(shape)
    if distribution == "uniform":
        assert bound == pytest.approx(math.sqrt(3.0) * spec.std(shape), rel=1e-12)
    elif distribution == "truncated_normal":
        sigma = spec.std(shape) / init.TRUNCATED_NORMAL_STD
        assert bound == pytest.approx(2.0 * sigma, rel=1e-12)
    else:
        assert bound == math.inf
    slack = 1.0 + (4 * torch.finfo(dtype).eps)  # rounding of the bound into the tensor's dtype
    assert w.abs().max().item() <= bound * slack


def _buildable(name: str) -> bool:
    try:
        init.get(name)
    except TypeError:  # "uniform", "normal": need arguments (their own test in test_init.py)
        return False
    return True


NAMED = [name for name in init.names() if _buildable(name)]


@FUZZ
@given(name=st.sampled_from(NAMED), shape=shapes, dtype=float_dtypes)
def test_every_named_initializer_fills_finite_values_in_place(
    name: str, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    initializer = init.get(name)
    assert initializer is not None
    w = torch.full(shape, float("nan"), dtype=dtype)
    out = initializer(w, generator=torch.Generator().manual_seed(0))
    assert out is w and tuple(w.shape) == shape and torch.isfinite(w).all()
    if isinstance(initializer, init.VarianceScaling):
        assert w.abs().max().item() <= initializer.bound(shape) * (1 + 4 * torch.finfo(dtype).eps)


@FUZZ
@given(
    scale=st.one_of(
        st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")), st.just(-math.inf)
    ),
    distribution=st.sampled_from(init.DISTRIBUTIONS),
)
def test_non_positive_or_non_finite_scale_is_refused(scale: float, distribution: str) -> None:
    with pytest.raises(ValueError, match=r"^scale must be a positive finite number; got "):
        init.VarianceScaling(scale, "fan_in", distribution)
    w = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"^scale must be a positive finite number; got "):
        init.variance_scaling_(w, scale, "fan_in", distribution)
    assert torch.equal(w, torch.zeros(3, 4))


# --------------------------------------------------------------------------- BatchNorm

extreme = st.one_of(
    st.floats(-1e30, 1e30, allow_nan=False),
    st.sampled_from([0.0, 1e30, -1e30, 1e-40, -1e-40, 3.4e38]),
)


@FUZZ
@given(
    batch=st.integers(2, 6),
    features=st.integers(1, 4),
    spatial=st.sampled_from([(), (3,), (2, 2)]),
    data=st.data(),
    momentum=st.floats(0.0, 0.999),
    epsilon=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_batchnorm_train_mode_matches_torch(
    batch: int,
    features: int,
    spatial: tuple[int, ...],
    data: st.DataObject,
    momentum: float,
    epsilon: float,
) -> None:
    shape = (batch, features, *spatial)
    n = math.prod(shape)
    values = data.draw(st.lists(extreme, min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float32).reshape(shape)
    constant = data.draw(st.lists(st.booleans(), min_size=features, max_size=features))
    for c, is_constant in enumerate(constant):  # zero-variance features
        if is_constant:
            x[:, c] = x.reshape(batch, features, -1)[0, c, 0]
    bn = BatchNorm(features, momentum=momentum, epsilon=epsilon)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))  # type: ignore[union-attr]
        bn.bias.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(2))  # type: ignore[union-attr]
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    expected = F.batch_norm(
        x, rm, rv, bn.weight, bn.bias, training=True, momentum=1.0 - momentum, eps=epsilon
    )
    got = bn.train()(x)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_mean, rm, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, rv, equal_nan=True, rtol=0, atol=0)
    for c, is_constant in enumerate(constant):
        value = float(x.reshape(batch, features, -1)[0, c, 0])
        if is_constant and abs(value) <= 1e3:
            # x − μ_B = 0: the output is β (up to torch's fused rounding), never 0/0 = NaN.
            beta = torch.full_like(got[:, c], float(bn.bias.detach()[c]))  # type: ignore[union-attr]
            torch.testing.assert_close(got[:, c].detach(), beta, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- activations


def torch_reference(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's own functional for our activation module, with the module's parameters."""
    m: Any = module
    table: list[tuple[type[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]] = [
        (torch.nn.LeakyReLU, lambda x: F.leaky_relu(x, m.negative_slope)),
        (torch.nn.ReLU, F.relu),
        (torch.nn.ELU, lambda x: F.elu(x, m.alpha)),
        (torch.nn.SELU, F.selu),
        (torch.nn.PReLU, lambda x: F.prelu(x, m.weight.to(x.dtype))),
        (torch.nn.RReLU, lambda x: F.rrelu(x, m.lower, m.upper, training=False)),
        (torch.nn.GELU, lambda x: F.gelu(x, approximate=m.approximate)),
        (torch.nn.SiLU, F.silu),
        (torch.nn.Sigmoid, torch.sigmoid),
        (torch.nn.Tanh, torch.tanh),
        (torch.nn.Softplus, lambda x: F.softplus(x, m.beta, m.threshold)),
        (torch.nn.Identity, lambda x: x),
    ]
    for cls, fn in table:
        if isinstance(module, cls):
            return fn
    raise AssertionError(f"no torch reference for {type(module).__name__}")


SPECIAL = [math.inf, -math.inf, math.nan, 1e30, -1e30, 1e-40, -1e-40, 1e-310, 0.0, -0.0, 3.4e38]
activation_inputs = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL)),
    min_size=1,
    max_size=16,
)


@FUZZ
@given(
    name=st.sampled_from(activations.names()),
    values=activation_inputs,
    dtype=float_dtypes,
    training=st.booleans(),
)
def test_activations_equal_torch_on_extreme_inputs(
    name: str, values: list[float], dtype: torch.dtype, training: bool
) -> None:
    module = activations.get(name)
    if name == "rrelu":
        training = False  # randomized in train mode: compared in eval mode only
    module.train(training)
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    expected = torch_reference(module)(x.clone())
    got = module.to(dtype)(x.clone())
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)


# --------------------------------------------------------------------------- IDX reader

MAX_PEAK = 50 * 2**20


def _valid_idx(gzipped: bool, type_code: int = 0x08) -> bytes:
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}[type_code]
    dims = (3, 4, 5)
    payload = bytes(range(256)) * 1
    body = (payload * 8)[: math.prod(dims) * itemsize]
    raw = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + body
    return gzip.compress(raw, mtime=0) if gzipped else raw


def _read_guarded(blob: bytes) -> torch.Tensor | None:
    """read_idx on ``blob``: a tensor, or None for DataError; bounded memory and time."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f-idx3-ubyte"
        path.write_bytes(blob)
        tracemalloc.start()
        started = time.perf_counter()
        try:
            result: torch.Tensor | None = read_idx(path)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
            result = None
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert time.perf_counter() - started < 5.0
        assert peak < MAX_PEAK, f"read_idx allocated {peak} bytes for a {len(blob)}-byte file"
    return result


@FUZZ
@given(blob=st.binary(max_size=200))
def test_idx_random_bytes_give_a_tensor_or_data_error(blob: bytes) -> None:
    _read_guarded(blob)


@FUZZ
@given(blob=st.binary(max_size=64).map(lambda b: gzip.compress(b, mtime=0)))
def test_idx_random_gzip_give_a_tensor_or_data_error(blob: bytes) -> None:
    _read_guarded(blob)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
    st.tuples(
        st.just("dim"),
        st.integers(0, 2),
        st.sampled_from([0, 1, 2**16, 2**31, 2**31 - 1, 2**32 - 1, 59, 61]),
    ),
    st.tuples(st.just("ndim"), st.integers(0, 255), st.just(0)),
    st.tuples(st.just("type"), st.integers(0, 255), st.just(0)),
)


def _mutate(raw: bytes, kind: str, a: int, b: int) -> bytes:
    data = bytearray(raw)
    if len(data) < 16 and kind in ("flip", "truncate", "dim", "ndim", "type"):
        return bytes(data)  # already cut inside the header: nothing left to mutate there
    if kind == "flip":
        data[a % len(data)] ^= b
    elif kind == "truncate":
        del data[a % len(data) :]
    elif kind == "extend":
        data += bytes([b]) * a
    elif kind == "dim":
        data[4 + 4 * a : 8 + 4 * a] = struct.pack(">I", b)
    elif kind == "ndim":
        data[3] = a
    else:
        data[2] = a
    return bytes(data)


@FUZZ
@given(
    type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    gzipped=st.booleans(),
    mutation_list=st.lists(mutations, min_size=1, max_size=3),
)
def test_idx_mutated_files_give_a_tensor_or_data_error(
    type_code: int, gzipped: bool, mutation_list: list[tuple[str, int, int]]
) -> None:
    raw = _valid_idx(False, type_code)
    for kind, a, b in mutation_list:
        raw = _mutate(raw, kind, a, b)
    blob = gzip.compress(raw, mtime=0) if gzipped else raw
    result = _read_guarded(blob)
    if result is not None:  # accepted: the header must describe exactly what was read
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        assert tuple(result.shape) == dims


def test_idx_huge_declared_dims_are_refused_before_allocating() -> None:
    raw = _valid_idx(False)
    for gzipped in (False, True):
        for dims in ([2**31, 2**31, 5], [2**32 - 1, 4, 5], [3, 2**31, 2**31]):
            header = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", d) for d in dims)
            blob = header + raw[16:]
            blob = gzip.compress(blob, mtime=0) if gzipped else blob
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "x"
                path.write_bytes(blob)
                with pytest.raises(DataError, match="truncated"):
                    read_idx(path)
            assert _read_guarded(blob) is None


# --------------------------------------------------------------------------- TrainConfig


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["adam", "sgd", "momentum", "nesterov", "cpu", "auto"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
field_names = [f.name for f in dataclasses.fields(TrainConfig)]


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(field_names), json_values, max_size=5))
def test_train_config_is_valid_or_one_line_value_error(fields: dict[str, Any]) -> None:
    try:
        config = TrainConfig(**fields)
    except ValueError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    # Accepted: the config must survive the JSON round trip every checkpoint makes.
    document = json.dumps(config.to_dict())
    assert TrainConfig.from_dict(json.loads(document)) == config


# --------------------------------------------------------------------------- CLI options

cli_values = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            "0",
            "-1",
            "1e400",
            "nan",
            "inf",
            "-inf",
            "0.0",
            "1e-320",
            "3",
            "300,100",
            "relu",
            "he_normal",
            "sgd",
            "",
            " ",
            "1,,2",
            "0,5",
            "elu",
            "adam",
            "--",
            "-5",
            "1_000",
            "99999999999999999999",
            "glorot",
            "nope",
            "0x10",
        ]
    ),
)
OPTIONS = ["--lr", "--epochs", "--batch-size", "--hidden", "--activation", "--init", "--optimizer"]


@FUZZ
@given(choices=st.dictionaries(st.sampled_from(OPTIONS), cli_values, min_size=1, max_size=4))
def test_cli_random_option_values_give_a_usage_or_one_line_error(
    choices: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        argv = [
            "train",
            "--data-dir",
            str(Path(folder) / "missing"),
            "--out",
            str(Path(folder) / "r"),
        ]
        argv += ["--epochs", "1"]
        for option, value in choices.items():
            argv += [f"{option}={value}"]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:
            assert exc.code == 2
            _, err = capsys.readouterr()
            assert "error:" in err and "Traceback" not in err
            return
        _, err = capsys.readouterr()
        assert code == 1, err
        assert err.startswith("steadygrad: error: ") and err.count("\n") == 1, err


def test_fuzz_helpers_are_exercised() -> None:
    """The mutation helper really changes what it says (a no-op mutator would fuzz nothing)."""
    raw = _valid_idx(False)
    assert _mutate(raw, "dim", 0, 2**31)[4:8] == struct.pack(">I", 2**31)
    assert len(_mutate(raw, "truncate", 10, 0)) == 10
    assert _read_guarded(raw) is not None
    assert _read_guarded(_valid_idx(True)) is not None
