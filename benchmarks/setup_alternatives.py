"""Install JAX and Keras 3 into a separate virtual environment, ``.bench-env/``, for the benchmark.

``python -m benchmarks.setup_alternatives [--force]``

The JAX and Keras runners run as subprocesses with ``.bench-env/bin/python``; steadygrad never
imports either. The environment gets::

    pip install -c constraints.txt torch==2.13.0 jax jaxlib keras

``torch==2.13.0`` is the local CPU wheel (``2.13.0+cpu``); any other specification would pull a
multi-GB CUDA build. So the install is first resolved with ``pip install --dry-run --report``,
and refused unless torch resolves to ``2.13.0+cpu`` and no ``nvidia-*``/``triton`` package
appears; after installing, ``torch.__version__`` and the package list are checked again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_ENV, REPO

TORCH_VERSION = "2.13.0+cpu"
REQUIREMENTS = ("torch==2.13.0", "jax", "jaxlib", "keras")
#: Packages that only come with a CUDA build of torch: their presence means the wrong wheel.
CUDA_MARKERS = ("nvidia-", "triton", "cuda-")


def env_python(env: Path = BENCH_ENV) -> Path:
    """The interpreter of the benchmark environment."""
    return env / "bin" / "python"


def installed_versions(env: Path = BENCH_ENV) -> dict[str, str] | None:
    """``{torch, jax, jaxlib, keras}`` versions importable in ``env``, or ``None`` if incomplete."""
    python = env_python(env)
    if not python.exists():
        return None
    code = (
        "import json, importlib.metadata as m\n"
        "print(json.dumps({p: m.version(p) for p in ('torch', 'jax', 'jaxlib', 'keras')}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    versions: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return versions


def cuda_packages(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that only a CUDA build of torch would bring."""
    return sorted(n for n in names if n.lower().startswith(CUDA_MARKERS))


def check_plan(report: dict[str, Any]) -> None:
    """Refuse a ``pip install --report`` plan that would install anything but the CPU torch.

    Raises:
        RuntimeError: torch resolves to another version, or a CUDA-only package is planned.
    """
    planned = {item["metadata"]["name"].lower(): item for item in report.get("install", [])}
    torch_item = planned.get("torch")
    if torch_item is not None:
        version = torch_item["metadata"]["version"]
        if version != TORCH_VERSION:
            url = torch_item.get("download_info", {}).get("url", "?")
            raise RuntimeError(
                f"pip would install torch {version} from {url}; only the local {TORCH_VERSION} "
                "wheel is allowed (a CUDA build is several GB). Check constraints.txt and pip's "
                "find-links"
            )
    bad = cuda_packages(list(planned))
    if bad:
        raise RuntimeError(
            f"pip would install CUDA packages {', '.join(bad)}; only CPU builds are allowed"
        )


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True, check=False, cwd=REPO
    )


def setup(env: Path = BENCH_ENV, force: bool = False, quiet: bool = False) -> dict[str, str]:
    """Create ``env`` with torch 2.13.0+cpu, JAX and Keras 3; return the installed versions.

    An existing complete environment is kept unless ``force``.

    Raises:
        RuntimeError: the resolved plan or the result is not the CPU-only set (see module doc),
            or pip failed (its last lines are in the message).
    """

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    if not force:
        versions = installed_versions(env)
        if versions is not None:
            say(f"{env} already has {versions}")
            return versions
    if force and env.exists():
        shutil.rmtree(env)
    say(f"creating {env} ...")
    venv.EnvBuilder(with_pip=True, clear=False).create(env)
    python = env_python(env)
    constraints = str(REPO / "constraints.txt")

    say("resolving (dry run) ...")
    dry = _pip(
        python,
        "install",
        "--dry-run",
        "--quiet",
        "--report",
        "-",
        "-c",
        constraints,
        *REQUIREMENTS,
    )
    if dry.returncode != 0:
        raise RuntimeError("pip could not resolve the .bench-env packages:\n" + dry.stderr[-2000:])
    check_plan(json.loads(dry.stdout))

    say(f"installing {' '.join(REQUIREMENTS)} (with -c constraints.txt) ...")
    proc = _pip(python, "install", "--quiet", "-c", constraints, *REQUIREMENTS)
    if proc.returncode != 0:
        raise RuntimeError("pip install failed:\n" + (proc.stderr or proc.stdout)[-2000:])

    listing = _pip(python, "list", "--format", "json")
    names = [p["name"] for p in json.loads(listing.stdout)] if listing.returncode == 0 else []
    bad = cuda_packages(names)
    if bad:
        raise RuntimeError(f"{env} ended up with CUDA packages {', '.join(bad)}; remove {env}")
    versions = installed_versions(env)
    if versions is None:
        raise RuntimeError(f"{env} was created but jax/keras/torch do not import there")
    if versions["torch"] != TORCH_VERSION:
        raise RuntimeError(
            f"{env} has torch {versions['torch']}; only {TORCH_VERSION} is allowed: remove {env}"
        )
    say(f"done: {versions}")
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.setup_alternatives",
        description="Install JAX and Keras 3 (and the CPU torch 2.13.0) into .bench-env/ for the "
        "benchmark's alternative runners.",
    )
    parser.add_argument("--force", action="store_true", help="delete and recreate .bench-env/")
    args = parser.parse_args(argv)
    try:
        versions = setup(force=args.force)
    except RuntimeError as err:
        print(f"setup_alternatives: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(versions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
