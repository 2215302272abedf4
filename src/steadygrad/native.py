"""Native (C++) kernels, compiled on this machine on first use and cached.

Why hand-written C++: on a CPU, a small network's training step is as much the work *between*
the matrix products as the products themselves — BatchNorm's statistics, normalisation and
activation, the loss, and a Python-level dispatch for each of ~30 ATen kernels (see
docs/performance.md for the profile). No library fuses these for eager PyTorch on a CPU:
``torch.compile`` does, after a compile of tens of seconds per model and with guard checks on
every call (measured slower than eager here, issue 6). ``csrc/chain.cpp`` runs a whole
Linear/BatchNorm/activation chain's forward and backward in one call, with ATen's own
``addmm``/``mm`` for the products and one pass per layer for everything else.

It is built with :func:`torch.utils.cpp_extension.load` (a C++ compiler and ``ninja`` are needed;
``ninja`` is a dependency of steadygrad, the compiler is the system's) into :func:`build_root`
(``$STEADYGRAD_NATIVE_DIR``, default ``~/.cache/torch_extensions/steadygrad``), once per machine
and source version: about a minute the first time, milliseconds after. Where it cannot be built, or
with ``STEADYGRAD_NATIVE=0``, :func:`load` returns None and everything runs on the Python fast
step (:mod:`steadygrad.fast`), which needs no compiler; :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from importlib import resources
from types import ModuleType

__all__ = ["build", "build_root", "is_built", "load", "unavailable_reason"]

_log = logging.getLogger("steadygrad.native")
_lock = threading.Lock()
_module: ModuleType | None = None
_reason: str | None = None
_tried = False

SOURCES = ("bindings.cpp", "capture.cpp", "chain.cpp", "loop.cpp", "stats.cpp", "update.cpp")
HEADERS = ("capture.h", "gemm.h", "loop.h")  # included by the sources: hashed and copied with them
# -fno-trapping-math (as torch itself is built): lets the activation's select vectorise.
# -fopenmp: at::parallel_for is a template compiled into the extension, and with torch's OpenMP
# backend it is an `omp parallel` pragma: without the flag every "parallel" loop ran on one thread.
# The extension then uses the libgomp torch has already loaded (same soname).
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (Linux), else the arch."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.machine()


def _disabled() -> bool:
    return os.environ.get("STEADYGRAD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _name() -> str:
    """The extension's name: a hash of the sources, the flags, torch's version and installation,
    and the CPU (``-march=native``), so a new source, torch, environment or machine builds afresh
    in its own folder."""
    import torch

    folder = resources.files("steadygrad").joinpath("csrc")
    texts = [folder.joinpath(name).read_bytes() for name in (*SOURCES, *HEADERS)]
    key = hashlib.sha256(
        b"\0".join(
            [
                *texts,
                " ".join(FLAGS + LDFLAGS).encode(),
                torch.__version__.encode(),
                # the installation too: its headers are on the compile line, and ninja rebuilds
                # when that line changes, so two environments sharing one folder would take
                # turns recompiling
                os.path.dirname(torch.__file__).encode(),
                _cpu_signature().encode(),
            ]
        )
    ).hexdigest()[:12]
    return f"steadygrad_native_{key}"


def build_root() -> str:
    """Where builds go: ``$STEADYGRAD_NATIVE_DIR``, else ``steadygrad/`` in torch's extension
    cache (``~/.cache/torch_extensions``, or below ``$XDG_CACHE_HOME``), one folder per build."""
    explicit = os.environ.get("STEADYGRAD_NATIVE_DIR")
    if explicit:
        return explicit
    from torch.utils import cpp_extension

    return os.path.join(cpp_extension.get_default_build_root(), "steadygrad")


def _build_directory(name: str) -> str:
    folder = os.path.join(build_root(), name)
    os.makedirs(folder, exist_ok=True)
    return folder


def _sources(name: str) -> list[str]:
    """The sources, copied once into the build's own folder, where nothing touches them again.

    ninja rebuilds when a source is newer than its object file: compiling the package's files in
    place would recompile (a minute) after anything rewrote them with the same content — a git
    checkout or stash, a reinstall. The build's name hashes their content, so a copy made once
    stays right for it. Copies are written atomically (two processes may build at once).
    """
    folder = resources.files("steadygrad").joinpath("csrc")
    target = os.path.join(_build_directory(name), "src")
    os.makedirs(target, exist_ok=True)
    paths = []
    for source in (*SOURCES, *HEADERS):
        path = os.path.join(target, source)
        if not os.path.exists(path):
            partial = f"{path}.{os.getpid()}.partial"
            with open(partial, "wb") as f:
                f.write(folder.joinpath(source).read_bytes())
            os.replace(partial, path)
        if source in SOURCES:
            paths.append(path)
    return paths


def is_built() -> bool:
    """Whether this machine's cache already holds the compiled kernels (loading takes ms)."""
    name = _name()
    return os.path.exists(os.path.join(build_root(), name, f"{name}.so"))


def build(verbose: bool = False) -> ModuleType:
    """Compile (or load from the cache) the native kernels and return the module.

    Raises:
        RuntimeError: one line naming what failed (no compiler, no ninja, a compile error) and
            that ``STEADYGRAD_NATIVE=0`` runs without the kernels.
    """
    from torch.utils import cpp_extension

    try:
        name = _name()
        module: ModuleType = cpp_extension.load(
            name=name,
            sources=_sources(name),
            build_directory=_build_directory(name),
            # copies: torch appends its libraries to extra_ldflags in place, and a second load()
            # in the process with the grown list looked like new arguments to torch's versioner
            # (a "_v1" build, and a full recompile in every process after it)
            extra_cflags=list(FLAGS),
            extra_ldflags=list(LDFLAGS),
            verbose=verbose,
        )
        return module
    except Exception as exc:  # compiler, ninja, linker: any of them may be missing
        text = str(exc).strip()
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise RuntimeError(
            f"cannot build steadygrad's native kernels ({first}); they need a C++ compiler and "
            "ninja (build(verbose=True) shows the compiler's output) — set STEADYGRAD_NATIVE=0 "
            "to run without them"
        ) from exc


def load() -> ModuleType | None:
    """The native kernels, building them on the first call; None where they are unavailable
    (``STEADYGRAD_NATIVE=0``, no compiler, a failed build — logged once, see
    :func:`unavailable_reason`). Thread-safe; later calls return the same answer at once."""
    global _module, _reason, _tried
    if _tried:  # the common case, once per monitored tensor: keep it a flag test
        return _module
    with _lock:
        if _tried:
            return _module
        if _disabled():
            _reason = "STEADYGRAD_NATIVE=0"
        else:
            try:
                if not is_built():  # a minute of silence would look like a hang: say so
                    _log.warning(
                        "building steadygrad's native kernels (once per machine, about a "
                        "minute; STEADYGRAD_NATIVE=0 skips them)"
                    )
                _module = build()
            except RuntimeError as exc:
                _reason = str(exc)
                _log.warning("%s", exc)
        _tried = True
    return _module


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None (None if it has not been called or succeeded)."""
    return _reason


if __name__ == "__main__":  # python -m steadygrad.native: build now (CI does, before the tests)
    import sys
    import time

    start = time.perf_counter()
    kernels = load()
    if kernels is None:
        print(f"steadygrad native kernels: unavailable ({unavailable_reason()})", file=sys.stderr)
    else:
        print(f"steadygrad native kernels: ready ({time.perf_counter() - start:.1f} s)")
