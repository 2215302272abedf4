"""Tests for steadygrad.data: IDX format, locating, downloading, splits, batches."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import re
import shutil
import socket
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    TINY_FILES,
    DataEnv,
    LocalMirror,
    QuietHTTPServer,
    reference_idx_bytes,
    serve,
)
from steadygrad import data
from steadygrad.errors import DataError

pytestmark = pytest.mark.usefixtures("isolated_data_env")

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------
# helpers


def copy_tiny(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def tiny_spec(folder: Path, mirror: str = "http://unused.invalid/") -> data.DatasetSpec:
    """The fashion-mnist spec with the checksums of the tiny .gz files in ``folder``."""
    base = data.DATASETS["fashion-mnist"]
    files = {
        role: (f"{stem}.gz", hashlib.sha256((folder / f"{stem}.gz").read_bytes()).hexdigest())
        for role, stem in TINY_FILES.items()
    }
    return dataclasses.replace(base, files=files, mirrors=(mirror,))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def write_bytes(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


# ------------------------------------------------------------------------------------------
# IDX reading and writing


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.uint8, (5, 3, 4)),
        (np.int8, (7,)),
        (np.int16, (2, 3)),
        (np.int32, (3, 1, 2, 2)),
        (np.float32, (4, 5)),
        (np.float64, (6,)),
    ],
)
def test_write_read_round_trip(tmp_path: Path, dtype: type, shape: tuple[int, ...], compress: bool):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        array.flat[0], array.flat[-1] = info.min, info.max
    else:
        array = rng.normal(0, 1e3, size=shape).astype(dtype)
    path = data.write_idx(tmp_path / "a.idx", array, gzip=compress)
    out = data.read_idx(path)
    assert out.dtype == torch.from_numpy(array).dtype
    assert tuple(out.shape) == shape
    torch.testing.assert_close(out, torch.from_numpy(array), rtol=0, atol=0)


def test_read_idx_matches_the_format_byte_by_byte(tmp_path: Path):
    # int16, 1-D, 2 elements: 0x0102 = 258 and 0xFFFE = -2 (big-endian, two's complement).
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    assert data.read_idx(path).tolist() == [258, -2]
    # float32 2×1: 1.5 and -0.25 big-endian.
    path.write_bytes(
        bytes([0, 0, 0x0D, 2, 0, 0, 0, 2, 0, 0, 0, 1]) + struct.pack(">2f", 1.5, -0.25)
    )
    out = data.read_idx(path)
    assert out.dtype == torch.float32 and out.tolist() == [[1.5], [-0.25]]


def test_write_idx_bytes_equal_reference_writer(tmp_path: Path, tiny_idx_arrays):
    array = tiny_idx_arrays["test_images"]
    data.write_idx(tmp_path / "a", array)
    assert (tmp_path / "a").read_bytes() == reference_idx_bytes(array)
    data.write_idx(tmp_path / "b.gz", torch.from_numpy(array), gzip=True)
    assert gzip.decompress((tmp_path / "b.gz").read_bytes()) == reference_idx_bytes(array)


def test_read_idx_of_fixture_files_equals_arrays(
    tiny_idx_dir: Path, tiny_idx_dir_raw: Path, tiny_idx_arrays
):
    for role, stem in TINY_FILES.items():
        expected = torch.from_numpy(tiny_idx_arrays[role])
        assert torch.equal(data.read_idx(tiny_idx_dir / f"{stem}.gz"), expected)
        assert torch.equal(data.read_idx(tiny_idx_dir_raw / stem), expected)


def test_gzip_detected_by_magic_bytes_not_extension(tmp_path: Path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    compressed = data.write_idx(tmp_path / "no-extension", array, gzip=True)
    raw = data.write_idx(tmp_path / "misleading.gz", array, gzip=False)
    assert compressed.read_bytes()[:2] == b"\x1f\x8b"
    assert torch.equal(data.read_idx(compressed), torch.from_numpy(array))
    assert torch.equal(data.read_idx(raw), torch.from_numpy(array))


def test_write_idx_is_deterministic(tmp_path: Path):
    array = np.arange(100, dtype=np.int32)
    a = data.write_idx(tmp_path / "a.gz", array, gzip=True).read_bytes()
    b = data.write_idx(tmp_path / "b.gz", array, gzip=True).read_bytes()
    assert a == b


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload(tmp_path: Path, compress: bool):
    good = reference_idx_bytes(np.zeros((1, 28, 28), np.uint8))
    path = write_bytes(tmp_path / "t", good[:-1], compress)
    with pytest.raises(DataError, match=r"/t: truncated: expected 784 bytes of data, found 783$"):
        data.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path: Path, compress: bool):
    good = reference_idx_bytes(np.zeros((2, 3), np.uint8))
    path = write_bytes(tmp_path / "t", good + b"\x00\x00", compress)
    found = "more than 6" if compress else "8"
    with pytest.raises(
        DataError, match=rf"/t: trailing bytes: expected 6 bytes of data, found {found}"
    ):
        data.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_wrong_magic_number(tmp_path: Path, compress: bool):
    path = write_bytes(tmp_path / "page.html", b"<html><body>Not Found</body></html>", compress)
    with pytest.raises(DataError, match=r"page\.html: wrong magic number 0x3c68746d"):
        data.read_idx(path)


def test_unsupported_element_type(tmp_path: Path):
    path = write_bytes(tmp_path / "t", bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), False)
    with pytest.raises(DataError, match=r"/t: unsupported element type 0x0a; allowed: 0x08 uint8"):
        data.read_idx(path)


def test_zero_dimensions_rejected(tmp_path: Path):
    path = write_bytes(tmp_path / "t", bytes([0, 0, 0x08, 0]), False)
    with pytest.raises(DataError, match=r"wrong magic number 0x00000800: 0 dimensions"):
        data.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_header(tmp_path: Path, compress: bool):
    path = write_bytes(tmp_path / "t", bytes([0, 0, 0x08, 3, 0, 0, 0, 9]), compress)
    with pytest.raises(DataError, match=r"truncated: expected 12 bytes of dimension sizes for 3"):
        data.read_idx(path)
    path = write_bytes(tmp_path / "t", bytes([0, 0]), compress)
    with pytest.raises(DataError, match=r"truncated: expected a 4-byte IDX magic number, found 2"):
        data.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_hostile_header_does_not_allocate(tmp_path: Path, compress: bool):
    # Declares 255 dimensions of 2**32 - 1 elements of float64: far beyond any memory.
    header = bytes([0, 0, 0x0E, 255]) + struct.pack(">255I", *([2**32 - 1] * 255))
    path = write_bytes(tmp_path / "t", header + bytes(1000), compress)
    tracemalloc.start()
    try:
        with pytest.raises(
            DataError, match=r"truncated: expected about 10\^\d+ bytes of data, found 1000$"
        ):
            data.read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_cut_gzip_stream(tmp_path: Path):
    payload = reference_idx_bytes(
        np.arange(10000, dtype=np.uint32).astype(np.uint8).reshape(100, 100)
    )
    blob = gzip.compress(payload, mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: truncated gzip stream: expected 10000 bytes"):
        data.read_idx(path)


def test_corrupt_gzip_checksum(tmp_path: Path):
    blob = bytearray(gzip.compress(reference_idx_bytes(np.zeros(50, np.uint8)), mtime=0))
    blob[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"crc\.gz: cannot read: CRC check failed"):
        data.read_idx(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.gz: cannot read: No such file or directory"):
        data.read_idx(tmp_path / "nope.gz")


def test_write_idx_rejects_bad_arrays(tmp_path: Path):
    with pytest.raises(TypeError, match=r"array dtype must be one of uint8, .*; got int64"):
        data.write_idx(tmp_path / "a", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"array must have 1 to 255 dimensions; got 0"):
        data.write_idx(tmp_path / "a", np.uint8(3))


# ------------------------------------------------------------------------------------------
# load(): values, splits, standardisation, validation of the files


@pytest.mark.parametrize("variant", ["tiny_idx_dir", "tiny_idx_dir_raw"])
def test_load_values_and_splits(request, variant: str, tiny_idx_arrays):
    root = request.getfixturevalue(variant)
    ds = data.load("fashion-mnist", root=root, validation=100)
    images = torch.from_numpy(
        tiny_idx_arrays["train_images"].reshape(600, 784).astype(np.float32) / 255
    )
    labels = torch.from_numpy(tiny_idx_arrays["train_labels"].astype(np.int64))
    test = torch.from_numpy(
        tiny_idx_arrays["test_images"].reshape(100, 784).astype(np.float32) / 255
    )
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (500, 100, 100)
    assert ds.train.images.dtype == torch.float32 and ds.train.labels.dtype == torch.int64
    torch.testing.assert_close(ds.train.images, images[:500], rtol=0, atol=0)
    torch.testing.assert_close(ds.validation.images, images[500:], rtol=0, atol=0)  # the LAST 100
    assert torch.equal(ds.train.labels, labels[:500]) and torch.equal(
        ds.validation.labels, labels[500:]
    )
    torch.testing.assert_close(ds.test.images, test, rtol=0, atol=0)
    assert float(ds.train.images.min()) >= 0.0 and float(ds.train.images.max()) <= 1.0
    assert ds.name == "fashion-mnist" and ds.mean is None and ds.std is None
    assert ds.source == str(root)


def test_validation_zero_gives_empty_split(tiny_idx_dir: Path):
    ds = data.load(root=tiny_idx_dir, validation=0)
    assert len(ds.train) == 600 and len(ds.validation) == 0
    assert tuple(ds.validation.images.shape) == (0, 784)
    assert list(data.batches(ds.validation, 32)) == []


def test_info_summary(tiny_idx_dir: Path):
    info = data.load(root=tiny_idx_dir, validation=50).info()
    assert info == {
        "name": "fashion-mnist",
        "train": 550,
        "validation": 50,
        "test": 100,
        "features": 784,
        "classes": 10,
        "standardized": False,
        "mean": None,
        "std": None,
        "source": str(tiny_idx_dir),
    }


def test_standardize_uses_training_split_statistics_only(tiny_idx_dir: Path, tiny_idx_arrays):
    raw = data.load(root=tiny_idx_dir, validation=100)
    ds = data.load(root=tiny_idx_dir, validation=100, standardize=True)
    # Reference: float64 statistics of the [0, 1] training split (population std).
    train64 = torch.from_numpy(tiny_idx_arrays["train_images"][:500].astype(np.float64) / 255)
    mean, std = train64.mean().item(), train64.std(correction=0).item()
    all64 = torch.from_numpy(tiny_idx_arrays["train_images"].astype(np.float64) / 255)
    assert abs(all64.mean().item() - mean) > 1e-4  # the validation images would change the mean
    assert ds.mean == pytest.approx(mean, rel=1e-12) and ds.std == pytest.approx(std, rel=1e-12)
    for name in ("train", "validation", "test"):
        expected = (getattr(raw, name).images.double() - mean) / std
        torch.testing.assert_close(getattr(ds, name).images.double(), expected, rtol=0, atol=1e-6)
    assert ds.train.images.double().mean().item() == pytest.approx(0.0, abs=1e-6)
    assert ds.train.images.double().std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    assert ds.info()["standardized"] is True


def test_standardize_constant_images_rejected(tmp_path: Path, tiny_idx_dir: Path):
    root = copy_tiny(tiny_idx_dir, tmp_path / "const")
    data.write_idx(
        root / "train-images-idx3-ubyte.gz", np.full((600, 28, 28), 7, np.uint8), gzip=True
    )
    with pytest.raises(DataError, match=r"cannot standardize: every training pixel equals"):
        data.load(root=root, standardize=True, validation=10)


def test_gz_and_raw_names_both_accepted_in_one_folder(
    tmp_path: Path, tiny_idx_dir, tiny_idx_dir_raw
):
    root = tmp_path / "mixed"
    root.mkdir()
    shutil.copy(tiny_idx_dir / "train-images-idx3-ubyte.gz", root)
    shutil.copy(tiny_idx_dir_raw / "train-labels-idx1-ubyte", root)
    shutil.copy(tiny_idx_dir_raw / "t10k-images-idx3-ubyte", root)
    shutil.copy(tiny_idx_dir / "t10k-labels-idx1-ubyte.gz", root)
    assert len(data.load(root=root, validation=0).train) == 600


def test_count_mismatch(tmp_path: Path, tiny_idx_dir: Path, tiny_idx_arrays):
    root = copy_tiny(tiny_idx_dir, tmp_path / "r")
    data.write_idx(
        root / "train-labels-idx1-ubyte.gz", tiny_idx_arrays["train_labels"][:599], gzip=True
    )
    with pytest.raises(
        DataError,
        match=r"images file .*train-images-idx3-ubyte\.gz has 600 entries but labels file "
        r".*train-labels-idx1-ubyte\.gz has 599$",
    ):
        data.load(root=root)


def test_label_out_of_range(tmp_path: Path, tiny_idx_dir: Path, tiny_idx_arrays):
    root = copy_tiny(tiny_idx_dir, tmp_path / "r")
    labels = tiny_idx_arrays["test_labels"].copy()
    labels[3] = 12
    data.write_idx(root / "t10k-labels-idx1-ubyte.gz", labels, gzip=True)
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 12 at index 3 is outside 0\.\.9"
    ):
        data.load(root=root)


def test_wrong_image_shape(tmp_path: Path, tiny_idx_dir: Path):
    root = copy_tiny(tiny_idx_dir, tmp_path / "r")
    data.write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((100, 28, 27), np.uint8), gzip=True)
    with pytest.raises(
        DataError,
        match=r"images must be uint8 of shape \(N, 28, 28\); "
        r"got torch.uint8 of shape \(100, 28, 27\)",
    ):
        data.load(root=root)


def test_malformed_file_error_reaches_load(tmp_path: Path, tiny_idx_dir: Path):
    root = copy_tiny(tiny_idx_dir, tmp_path / "r")
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03" + bytes(10))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        data.load(root=root)


def test_bad_arguments(tiny_idx_dir: Path):
    with pytest.raises(
        ValueError,
        match=r"name must be one of \['fashion-mnist', 'mnist'\]; "
        r"got 'minst' \(did you mean 'mnist'\?\)",
    ):
        data.load("minst", root=tiny_idx_dir)
    with pytest.raises(TypeError, match=r"name must be a str"):
        data.load(3, root=tiny_idx_dir)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"validation must be an int number of images; got 0\.1"):
        data.load(root=tiny_idx_dir, validation=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"validation must be an int number of images; got True"):
        data.load(root=tiny_idx_dir, validation=True)
    with pytest.raises(ValueError, match=r"validation must be >= 0; got -1"):
        data.load(root=tiny_idx_dir, validation=-1)
    with pytest.raises(
        ValueError, match=r"validation must be smaller than the 600 training images .*; got 600"
    ):
        data.load(root=tiny_idx_dir, validation=600)
    with pytest.raises(
        ValueError, match=r"mirror must be an http, https or file URL; got 'ftp://x/'"
    ):
        data.download("mnist", mirror="ftp://x/")


def test_name_is_normalised(tiny_idx_dir: Path):
    assert data.load("Fashion_MNIST", root=tiny_idx_dir, validation=9).name == "fashion-mnist"
    assert data.load("MNIST", root=tiny_idx_dir, validation=9).classes == tuple("0123456789")


# ------------------------------------------------------------------------------------------
# Where files are looked for


def test_search_order(tmp_path: Path, isolated_data_env: DataEnv, tiny_idx_dir: Path, monkeypatch):
    name = "fashion-mnist"
    root = copy_tiny(tiny_idx_dir, tmp_path / "root")
    env = tmp_path / "envdata"
    env_named = copy_tiny(tiny_idx_dir, env / name)
    copy_tiny(tiny_idx_dir, env)
    debian = copy_tiny(tiny_idx_dir, isolated_data_env.system_dir / name)
    cache = copy_tiny(tiny_idx_dir, isolated_data_env.cache_home / "steadygrad" / name)
    monkeypatch.setenv("STEADYGRAD_DATA", str(env))
    assert data.search_path(name) == [env_named, env, debian, cache]
    assert data.search_path(name, root) == [root]

    assert data.locate(name, root) == root
    assert data.load(name, root=root, validation=0).source == str(root)
    assert data.locate(name) == env_named
    shutil.rmtree(env_named)
    assert data.locate(name) == env
    shutil.rmtree(env)
    assert data.locate(name) == debian
    (debian / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete folder is skipped
    assert data.locate(name) == cache
    assert data.load(name, validation=0, download=False).source == str(cache)
    shutil.rmtree(cache)
    assert data.locate(name) is None


def test_cache_dir_follows_xdg(isolated_data_env: DataEnv, monkeypatch):
    assert data.cache_dir("mnist") == isolated_data_env.cache_home / "steadygrad" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", "/home/someone")
    assert data.cache_dir() == Path("/home/someone/.cache/steadygrad/fashion-mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path("/home/someone/.cache/steadygrad/fashion-mnist")


def test_explicit_root_is_the_only_place(
    tmp_path: Path, isolated_data_env: DataEnv, tiny_idx_dir: Path
):
    copy_tiny(tiny_idx_dir, isolated_data_env.system_dir / "fashion-mnist")  # would be found
    root = copy_tiny(tiny_idx_dir, tmp_path / "partial")
    (root / "train-labels-idx1-ubyte.gz").unlink()
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(
        DataError,
        match=rf"root '{re.escape(str(root))}' lacks train-labels-idx1-ubyte\[\.gz\], "
        r"t10k-images-idx3-ubyte\[\.gz\]; put the Fashion-MNIST IDX files there "
        r"\(steadygrad\.data\.download\('fashion-mnist', folder=\.\.\.\) fetches them\)",
    ):
        data.load(root=root)
    with pytest.raises(
        DataError,
        match=rf"root '{re.escape(str(tmp_path / 'absent'))}' is not a folder; .*or pass root=None",
    ):
        data.load(root=tmp_path / "absent")


def test_not_found_anywhere_names_the_places(
    tmp_path: Path, isolated_data_env: DataEnv, tiny_idx_dir, monkeypatch
):
    env = tmp_path / "envdata"
    env.mkdir()
    shutil.copy(tiny_idx_dir / "train-images-idx3-ubyte.gz", env)
    monkeypatch.setenv("STEADYGRAD_DATA", str(env))
    cache = data.cache_dir()
    with pytest.raises(DataError) as info:
        data.load(download=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "Fashion-MNIST files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    )
    lacks = "lacks train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    assert f"searched {env / 'fashion-mnist'} (no such folder); {env} ({lacks}" in message
    debian = isolated_data_env.system_dir / "fashion-mnist"
    assert f"; {debian} (no such folder); {cache} (no such folder);" in message
    assert message.endswith(
        "pass download=True, set STEADYGRAD_DATA to a folder holding them, "
        "or install Debian's dataset-fashion-mnist"
    )


# ------------------------------------------------------------------------------------------
# Downloads from a local mirror


def test_download_verifies_and_keeps(
    local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch, tiny_idx_arrays
):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    ds = data.load(validation=0, mirror=local_mirror.url)
    cache = data.cache_dir()
    assert ds.source == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in TINY_FILES.values())
    for f in cache.iterdir():
        assert f.read_bytes() == (tiny_idx_dir / f.name).read_bytes()
    assert torch.equal(ds.test.labels, torch.from_numpy(tiny_idx_arrays["test_labels"]).long())
    assert len(local_mirror.requests) == 4
    # Second load: found in the cache, no request.
    data.load(validation=0, mirror=local_mirror.url)
    assert len(local_mirror.requests) == 4


def test_download_uses_env_mirror_and_fetches_only_missing(
    local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch
):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    monkeypatch.setenv("STEADYGRAD_MIRROR", local_mirror.url)
    cache = data.cache_dir()
    cache.mkdir(parents=True)
    shutil.copy(tiny_idx_dir / "train-images-idx3-ubyte.gz", cache)
    data.load(validation=0)
    assert sorted(local_mirror.requests) == sorted(
        f"/{s}.gz"
        for s in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    )


def test_download_falls_back_to_next_mirror(
    local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch, tmp_path
):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    spec = dataclasses.replace(
        tiny_spec(tiny_idx_dir), mirrors=(closed_port_url(), local_mirror.url)
    )
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", spec)
    folder = data.download(folder=tmp_path / "here")
    assert folder == tmp_path / "here" and len(list(folder.iterdir())) == 4


def test_corrupt_download_rejected_and_nothing_left(
    local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch
):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    spec = tiny_spec(tiny_idx_dir)
    bad = local_mirror.folder / "train-images-idx3-ubyte.gz"
    blob = bytearray(bad.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit
    bad.write_bytes(bytes(blob))
    got = hashlib.sha256(bad.read_bytes()).hexdigest()
    expected = spec.files["train_images"][1]
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", spec)
    url = f"{local_mirror.url}train-images-idx3-ubyte.gz"
    with pytest.raises(
        DataError,
        match=rf"^download of {re.escape(url)} failed its checksum: "
        rf"expected sha256 {expected}, got {got}; the file was discarded$",
    ):
        data.load(mirror=local_mirror.url)
    assert list(data.cache_dir().iterdir()) == []


def test_unreachable_mirror(tiny_idx_dir: Path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    base = closed_port_url()
    with pytest.raises(
        DataError,
        match=rf"^download of {re.escape(base)}train-images-idx3-ubyte\.gz failed: .*refused",
    ):
        data.load(mirror=base)
    assert list(data.cache_dir().iterdir()) == []


def test_missing_file_on_mirror(local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz failed: HTTP Error 404: File not found"
    ):
        data.load(mirror=local_mirror.url)
    assert list(data.cache_dir().iterdir()) == []


def test_download_size_limit(local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    monkeypatch.setattr(data, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte\.gz failed: size \d+ bytes exceeds the limit of 1000",
    ):
        data.load(mirror=local_mirror.url)
    assert list(data.cache_dir().iterdir()) == []


def test_download_size_limit_without_content_length(tiny_idx_dir: Path, monkeypatch):
    class Endless(http.server.BaseHTTPRequestHandler):  # no Content-Length: count while reading
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(bytes(5000))

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Endless)
    serve(server)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    monkeypatch.setattr(data, "MAX_DOWNLOAD_BYTES", 1000)
    try:
        with pytest.raises(
            DataError, match=r"failed: more than 1000 bytes \(the size limit per file\)"
        ):
            data.load(mirror=f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
    assert list(data.cache_dir().iterdir()) == []


def test_download_progress_on_a_terminal(
    local_mirror: LocalMirror, tiny_idx_dir: Path, monkeypatch, capsys
):
    copy_tiny(tiny_idx_dir, local_mirror.folder)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny_spec(tiny_idx_dir))
    data.load(mirror=local_mirror.url, validation=0)
    assert capsys.readouterr().err == ""  # not a terminal: silent
    shutil.rmtree(data.cache_dir())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert len(data.load(mirror=local_mirror.url, validation=0).train) == 600


def test_download_folder_not_creatable(tmp_path: Path, tiny_idx_dir: Path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        DataError, match=rf"cannot create data folder '{re.escape(str(blocker / 'sub'))}'"
    ):
        data.download(folder=blocker / "sub", mirror="http://127.0.0.1:9/")


# ------------------------------------------------------------------------------------------
# Splits and batches


def indexed_split(n: int) -> data.Split:
    # Each sample carries its own index as feature and label, so batches can be traced back.
    return data.Split(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), torch.arange(n))


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (12, 4), (5, 8)])
def test_batches_cover_each_sample_once(n: int, batch_size: int):
    split = indexed_split(n)
    got = list(data.batches(split, batch_size, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in got] == [min(batch_size, n - i) for i in range(0, n, batch_size)]
    seen = torch.cat([y for _, y in got])
    assert sorted(seen.tolist()) == list(range(n))
    for x, y in got:
        assert torch.equal(x[:, 0].long(), y) and torch.equal(x[:, 2].long(), y)


def test_batches_follow_randperm_of_the_generator():
    split = indexed_split(50)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(7))
    got = torch.cat(
        [y for _, y in data.batches(split, 16, generator=torch.Generator().manual_seed(7))]
    )
    assert torch.equal(got, order)


def test_batches_are_deterministic_per_seed_and_differ_across_epochs():
    split = indexed_split(100)

    def epoch(g: torch.Generator) -> list[int]:
        return torch.cat([y for _, y in data.batches(split, 32, generator=g)]).tolist()

    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first, second = epoch(g1), epoch(g1)
    assert first == epoch(g2) and second == epoch(g2)
    assert first != second  # the generator advances: a new order each epoch
    assert first != epoch(torch.Generator().manual_seed(2))


def test_batches_in_order_and_drop_last():
    split = indexed_split(10)
    got = [y.tolist() for _, y in data.batches(split, 4, shuffle=False)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    got = [y.tolist() for _, y in data.batches(split, 4, shuffle=False, drop_last=True)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]
    got = list(data.batches(split, 4, generator=torch.Generator().manual_seed(0), drop_last=True))
    assert [len(y) for _, y in got] == [4, 4]
    assert list(data.batches(split, 11, drop_last=True)) == []


def test_batches_argument_errors():
    split = indexed_split(4)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int; got 0"):
        data.batches(split, 0)
    with pytest.raises(TypeError, match=r"batch_size must be a positive int; got 2\.5"):
        data.batches(split, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_size must be a positive int; got True"):
        data.batches(split, True)
    with pytest.raises(TypeError, match=r"split must be a steadygrad\.data\.Split; got tuple"):
        data.batches((split.images, split.labels), 2)  # type: ignore[arg-type]


def test_split_validation():
    assert len(indexed_split(6)) == 6
    with pytest.raises(
        ValueError,
        match=r"images must be a 2-D floating-point tensor \(N, features\); "
        r"got \(3,\) torch.float32",
    ):
        data.Split(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"labels must be a 1-D int64 tensor \(N,\); got \(3,\) torch.int32"
    ):
        data.Split(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"same length; got 3 images and 2 labels"):
        data.Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))


def test_dataset_to_device(tiny_data):
    moved = tiny_data.to("cpu")
    assert moved.info() == tiny_data.info()
    assert torch.equal(moved.test.images, tiny_data.test.images)


# ------------------------------------------------------------------------------------------
# The real Fashion-MNIST (Debian's dataset-fashion-mnist)


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not at {DEBIAN_FASHION} (apt install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    ds = data.load("fashion-mnist", root=DEBIAN_FASHION)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (55000, 5000, 10000)
    assert tuple(ds.train.images.shape) == (55000, 784) and ds.train.images.dtype == torch.float32
    train_labels = torch.cat([ds.train.labels, ds.validation.labels])
    assert torch.bincount(train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10
    assert float(ds.train.images.min()) == 0.0 and float(ds.train.images.max()) == 1.0
    assert ds.classes[9] == "Ankle boot"
