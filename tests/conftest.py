"""Shared fixtures.

Data (owned with ``steadygrad.data``):

* ``tiny_idx_arrays``: the numpy arrays of a tiny MNIST-format dataset (600 train / 100 test
  images, 28×28 uint8, labels 0..9 balanced). Each class is a fixed random prototype plus noise,
  so a small MLP reaches ~100% validation accuracy after one epoch (useful for training tests).
  `make_tiny_arrays(seed)` and `write_tiny(folder, arrays, compress)` build variants.
* ``tiny_idx_dir`` / ``tiny_idx_dir_raw``: read-only folders holding those arrays as the four
  MNIST file names, gzip-compressed (``*.gz``) / uncompressed. Written by an IDX writer
  independent of ``steadygrad.data.write_idx``. Copy them before modifying anything.
* ``tiny_data``: ``steadygrad.data.load("fashion-mnist", root=tiny_idx_dir, validation=100)``.
* ``isolated_data_env``: no ``$STEADYGRAD_DATA`` / ``$STEADYGRAD_MIRROR``, the user cache and the
  Debian location moved into ``tmp_path``; use it in any test that may search for or download
  data, so no test reads or writes the real cache.
* ``local_mirror``: an HTTP server on 127.0.0.1 serving a temporary folder (no internet needed).
"""

from __future__ import annotations

import gzip
import http.server
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steadygrad import native

# Two cores: with pytest-xdist's 2 workers (or anything else running), torch's default of 2
# intra-op threads per process oversubscribes the CPU, and OpenMP spin-waiting then makes small
# matmuls 20× slower. One thread per test process (and per subprocess the tests start) keeps the
# suite fast and stable. STEADYGRAD_TEST_THREADS=N runs the suite on N threads instead (to check
# the native kernels' parallel loops on a machine with the cores for it).
_THREADS = os.environ.get("STEADYGRAD_TEST_THREADS", "1")
torch.set_num_threads(int(_THREADS))
os.environ["OMP_NUM_THREADS"] = _THREADS

# The native kernels' build folder, fixed before any test points $XDG_CACHE_HOME at a temporary
# folder (isolated_data_env): otherwise every such test, and every CLI process it starts, would
# compile the kernels afresh (a minute each).
os.environ.setdefault("STEADYGRAD_NATIVE_DIR", native.build_root())

TINY_TRAIN = 600
TINY_TEST = 100
TINY_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def reference_idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array written from the format description (LeCun et al. 1998)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.tobytes()


def make_tiny_arrays(seed: int = 20240601) -> dict[str, np.ndarray]:
    """The arrays behind ``tiny_idx_arrays``: each class a random prototype plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, size=(10, 28, 28)) > 0.7  # (class, 28, 28) bool

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        noise = rng.normal(0, 40, size=(n, 28, 28))
        images = np.clip(prototypes[labels] * 170.0 + 40.0 + noise, 0, 255).round()
        return images.astype(np.uint8), labels

    train_images, train_labels = make(TINY_TRAIN)
    test_images, test_labels = make(TINY_TEST)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


@pytest.fixture(scope="session")
def tiny_idx_arrays() -> dict[str, np.ndarray]:
    return make_tiny_arrays()


def write_tiny(folder: Path, arrays: dict[str, np.ndarray], compress: bool) -> Path:
    """Write ``arrays`` into ``folder`` under the four MNIST file names (``.gz`` if compressed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for role, stem in TINY_FILES.items():
        payload = reference_idx_bytes(arrays[role])
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload, mtime=0))
        else:
            (folder / stem).write_bytes(payload)
    return folder


@pytest.fixture(scope="session")
def tiny_idx_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_arrays: dict[str, np.ndarray]
) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny_idx_gz"), tiny_idx_arrays, compress=True)


@pytest.fixture(scope="session")
def tiny_idx_dir_raw(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_arrays: dict[str, np.ndarray]
) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny_idx_raw"), tiny_idx_arrays, compress=False)


@pytest.fixture()
def tiny_data(tiny_idx_dir: Path) -> Any:
    from steadygrad import data

    return data.load("fashion-mnist", root=tiny_idx_dir, validation=100)


@dataclass
class DataEnv:
    """Where an isolated test's data locations point."""

    cache_home: Path  # $XDG_CACHE_HOME; the cache of dataset ``name`` is cache_home/steadygrad/name
    system_dir: Path  # replaces /usr/share/datasets


@pytest.fixture()
def isolated_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataEnv:
    from steadygrad import data

    env = DataEnv(cache_home=tmp_path / "xdg-cache", system_dir=tmp_path / "usr-share-datasets")
    monkeypatch.delenv("STEADYGRAD_DATA", raising=False)
    monkeypatch.delenv("STEADYGRAD_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(env.cache_home))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", env.system_dir)
    return env


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server that stays silent when a client hangs up mid-transfer."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def serve(server: http.server.HTTPServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (stop it with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.daemon = True
    thread.start()
    return thread


@dataclass
class LocalMirror:
    """A folder served over HTTP: ``url`` ends with '/'; ``requests`` lists the paths asked for."""

    folder: Path
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture()
def local_mirror(tmp_path: Path) -> Iterator[LocalMirror]:
    folder = tmp_path / "mirror"
    folder.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = QuietHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = serve(server)
    try:
        yield LocalMirror(folder, f"http://127.0.0.1:{server.server_address[1]}/", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
