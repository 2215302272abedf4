"""Run a grid of :data:`RunSpec` on worker processes, with a content-addressed result cache.

A run is a JSON-able dict (a :data:`RunSpec`) naming its ``task`` (see :mod:`._tasks`) and every
setting it depends on. Its result is cached as JSON under ``<cache>/<key>.json`` with

    key = sha256(canonical JSON of {"spec": spec, "code": code_version()})

(canonical: sorted keys, no whitespace, ASCII). :func:`code_version` hashes the source of every
module a run executes, plus the torch version, so editing the library invalidates the cache and
editing a verdict or a figure does not. Entries are written atomically (temporary file in the
cache folder, fsync, rename, fsync of the folder) by the process that computed the run, and only
for its own key. Each entry is written once: the grid is de-duplicated first, and a process
computes a run only while it holds the run's claim (an exclusive ``flock`` on
``<cache>/.<key>.lock``), looking in the cache again once it has it, so runners sharing a cache
folder (two ``steadygrad study`` commands at once) wait for each other's runs instead of redoing
and rewriting them. A runner that is killed leaves finished entries intact and at most one
temporary file and one claim file per worker (the kernel releases its lock); the next call skips
the finished runs (resume) and removes the temporary and claim files of dead processes.

Workers: ``workers=1`` runs in the calling process; more use a
:class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (no inherited
threads or locks from the parent), each worker setting ``torch.set_num_threads(1)``: on a 2-core
machine two processes with two OpenMP threads each oversubscribe the cores and run ~20× slower.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from steadygrad.errors import SteadygradError

__all__ = [
    "CACHE_FORMAT",
    "RunRecord",
    "RunSpec",
    "StudyRunError",
    "WorkerPool",
    "canonical_json",
    "code_version",
    "run_grid",
    "spec_key",
]

RunSpec = dict[str, Any]
"""One run: a JSON-able dict with a ``"task"`` name and every setting the result depends on."""

CACHE_FORMAT = "steadygrad.study-run/1"
"""Value of ``"format"`` in every cache entry."""

# Parts of the steadygrad package that cannot change what a run computes (presentation,
# diagnosis, the CLI, the study definitions); everything else is hashed into code_version(), so
# a module added later (e.g. one that train.fit starts to use) is covered without a list to keep.
_CODE_EXCLUDED = ("cli.py", "doctor", "report", "studies")
# ...except the tasks, which are what a run executes.
_CODE_INCLUDED = ("studies/_tasks.py",)


def _code_files(root: Path) -> list[Path]:
    """Sorted source files hashed by :func:`code_version`."""
    files = []
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(root)
        if relative.as_posix() in _CODE_INCLUDED or relative.parts[0] not in _CODE_EXCLUDED:
            files.append(file)
    return files


class StudyRunError(SteadygradError):
    """A run of a study's grid raised; finished runs stay cached, so a rerun resumes."""


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its ``spec``, cache ``key``, ``result`` (the task's JSON output),
    ``seconds`` it took, the ``pid`` and torch ``threads`` of the process that ran it, and whether
    this call read it from the cache (``cached``)."""

    spec: RunSpec
    key: str
    result: dict[str, Any]
    seconds: float
    pid: int
    threads: int
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``<study>.json`` stores per run)."""
        return {
            "key": self.key,
            "spec": self.spec,
            "result": self.result,
            "seconds": self.seconds,
            "pid": self.pid,
            "threads": self.threads,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            spec=dict(data["spec"]),
            key=str(data["key"]),
            result=dict(data["result"]),
            seconds=float(data["seconds"]),
            pid=int(data["pid"]),
            threads=int(data["threads"]),
            cached=bool(data["cached"]),
        )


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no whitespace, ASCII only, finite numbers only.

    Raises:
        TypeError: ``value`` holds something JSON cannot represent (named in the message).
        ValueError: ``value`` holds NaN or infinity (they have no canonical JSON form).
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except TypeError as error:
        raise TypeError(
            f"run spec must be JSON-able (dicts, lists, str, numbers): {error}"
        ) from None
    except ValueError as error:
        raise ValueError(f"run spec must not contain NaN or infinity: {error}") from None


@cache
def code_version() -> str:
    """sha256 (16 hex digits) of the source of the modules a run executes and torch's version.

    Hashes every module of the package except the CLI, ``report``, ``doctor`` and the study
    definitions (the studies' tasks are included): a change there can change a result, so it
    changes every cache key, while editing a rule, a figure or the report does not.
    """
    import torch

    import steadygrad

    root = Path(steadygrad.__file__).parent
    digest = hashlib.sha256()
    digest.update(f"torch {torch.__version__}\n".encode())
    for file in _code_files(root):
        digest.update(file.relative_to(root).as_posix().encode() + b"\n")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def spec_key(spec: RunSpec) -> str:
    """The cache key of ``spec``: sha256 of canonical ``{"spec": spec, "code": code_version()}``."""
    _check_spec(spec)
    payload = canonical_json({"spec": spec, "code": code_version()})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _check_spec(spec: object) -> None:
    if not isinstance(spec, dict):
        raise TypeError(f"run spec must be a dict; got {type(spec).__name__}")
    task = spec.get("task")
    from steadygrad.studies._tasks import TASKS, task_names

    if task not in TASKS:
        import difflib

        close = difflib.get_close_matches(str(task), task_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"run spec 'task' must be one of {', '.join(map(repr, task_names()))}; "
            f"got {task!r}{hint}"
        )


# --------------------------------------------------------------------------- cache entries


def _entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.json"


def _read_entry(cache_dir: Path, key: str, spec: RunSpec) -> RunRecord | None:
    """The cached record of ``spec``, or None when absent, unreadable or for another spec."""
    path = _entry_path(cache_dir, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or torn by something other than our atomic writer: recompute
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or data.get("key") != key
        or canonical_json(data.get("spec")) != canonical_json(spec)
        or not isinstance(data.get("result"), dict)
    ):
        return None
    return RunRecord(
        spec=spec,
        key=key,
        result=data["result"],
        seconds=float(data.get("seconds", 0.0)),
        pid=int(data.get("pid", 0)),
        threads=int(data.get("threads", 0)),
        cached=True,
    )


def _write_entry(cache_dir: Path, record: RunRecord) -> None:
    """Write ``record`` to ``<cache>/<key>.json`` atomically: tmp + fsync + rename + dir fsync."""
    entry = {
        "format": CACHE_FORMAT,
        "key": record.key,
        "code": code_version(),
        "spec": record.spec,
        "result": record.result,
        "seconds": record.seconds,
        "pid": record.pid,
        "threads": record.threads,
    }
    # Results may hold NaN/inf (a diverged loss): Python's JSON reads them back.
    data = json.dumps(entry, sort_keys=True).encode("utf-8")
    target = _entry_path(cache_dir, record.key)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{record.key}.", suffix=f".tmp-{os.getpid()}", dir=cache_dir
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # directory fsync is not supported everywhere
        dir_fd = os.open(cache_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Remove temporary files left by writers that were killed (their pid is gone), and claim
    files nobody holds (left by a process killed while computing that run)."""
    for tmp in cache_dir.glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            tmp.unlink(missing_ok=True)
    for path in cache_dir.glob(".*.lock"):
        with contextlib.suppress(OSError):  # held by a live runner, or removed meanwhile
            fd = _lock(path, block=False)
            if fd is not None and fd >= 0:
                try:
                    path.unlink()  # as its holder, as the claim protocol allows (see _claim)
                finally:
                    os.close(fd)


def _lock(path: Path, *, block: bool) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on the file ``path`` names now.

    Creates the file when ``block``. Returns None when ``path`` was removed (or replaced) while
    this process waited: its holder had finished with it. Raises BlockingIOError when not
    ``block`` and the file is held. Without ``fcntl`` (Windows) nothing is locked: -1.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if block else 0)
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        mine = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
    except BaseException:
        os.close(fd)
        raise
    if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _claim(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold the claim on ``key``'s run: an exclusive ``flock`` on ``<cache>/.<key>.lock``.

    Waits while another process holds it. The holder removes the file before letting go, so no
    claim file outlives its run; a waiter whose lock is then on a removed file starts again on a
    new one. The kernel releases the lock of a killed process, so a claim is never stale.
    """
    path = cache_dir / f".{key}.lock"
    fd = None
    while fd is None:
        fd = _lock(path, block=True)
    try:
        yield
    finally:
        if fd >= 0:
            path.unlink(missing_ok=True)
            os.close(fd)  # closing the descriptor releases the flock


# --------------------------------------------------------------------------- execution


def _worker_init() -> None:
    """Each worker process: one torch thread (two per process oversubscribe 2 cores)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _execute(spec: RunSpec, key: str, cache_dir: str) -> RunRecord:
    """Run one spec in this process, write its cache entry, return the record.

    Holds the run's claim meanwhile; when another runner wrote the entry while this one waited
    for the claim, returns that entry (``cached``) instead.
    """
    import torch

    from steadygrad.studies._tasks import TASKS

    folder = Path(cache_dir)
    with _claim(folder, key):
        done = _read_entry(folder, key, spec)
        if done is not None:
            return done
        started = time.perf_counter()
        result = TASKS[spec["task"]](spec)
        record = RunRecord(
            spec=spec,
            key=key,
            result=result,
            seconds=round(time.perf_counter() - started, 3),
            pid=os.getpid(),
            threads=torch.get_num_threads(),
            cached=False,
        )
        _write_entry(folder, record)
    return record


@contextlib.contextmanager
def _progress(show: bool, label: str, total: int, done: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar on a terminal stderr (nothing otherwise); yields ``advance()``."""
    if not show:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda: bar.advance(task)


def _check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer (1 runs in-process); got {workers!r}")
    return workers


def run_grid(
    specs: Sequence[RunSpec],
    cache: str | os.PathLike[str],
    *,
    workers: int = 2,
    progress: bool = True,
    label: str = "runs",
    on_record: Callable[[RunRecord], None] | None = None,
    pool: WorkerPool | None = None,
) -> list[RunRecord]:
    """Run every spec not already cached; return one :class:`RunRecord` per spec, in order.

    Identical specs are run once. ``workers=1`` runs in this process; more start that many
    ``spawn`` worker processes (one torch thread each), or use ``pool`` when given (its size
    wins). A single missing run is computed in this process (starting workers would cost more).
    ``progress`` shows a rich bar when stderr is a terminal. ``on_record`` is called in this
    process with each record as it finishes (cached ones first).

    Raises:
        ValueError, TypeError: a bad spec (unknown task, not JSON-able) or ``workers``.
        StudyRunError: a run raised; runs finished before it stay cached.
    """
    workers = _check_workers(workers)
    cache_dir = Path(cache)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache_dir)
    keys = [spec_key(spec) for spec in specs]
    records: dict[str, RunRecord] = {}
    todo: dict[str, RunSpec] = {}
    for spec, key in zip(specs, keys, strict=True):
        if key in records or key in todo:
            continue
        hit = _read_entry(cache_dir, key, spec)
        if hit is None:
            todo[key] = spec
        else:
            records[key] = hit
            if on_record is not None:
                on_record(hit)
    show = progress and sys.stderr.isatty()
    with _progress(show, label, len(records) + len(todo), len(records)) as advance:
        if (pool is None and workers == 1) or len(todo) <= 1:
            for key, spec in todo.items():
                records[key] = _run_here(spec, key, cache_dir)
                advance()
                if on_record is not None:
                    on_record(records[key])
        elif pool is not None:
            _run_pool(todo, cache_dir, pool, records, advance, on_record)
        else:
            with WorkerPool(min(workers, len(todo))) as own:
                _run_pool(todo, cache_dir, own, records, advance, on_record)
    return [records[key] for key in keys]


def _describe(spec: RunSpec) -> str:
    text = canonical_json(spec)
    return text if len(text) <= 300 else text[:297] + "..."


def _run_here(spec: RunSpec, key: str, cache_dir: Path) -> RunRecord:
    """Run in this process with one torch thread, as a worker would (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _execute(spec, key, str(cache_dir))
    except (KeyboardInterrupt, SteadygradError):
        raise
    except Exception as error:
        raise StudyRunError(
            f"run {key[:12]} failed: {type(error).__name__}: {error} (spec {_describe(spec)})"
        ) from error
    finally:
        torch.set_num_threads(threads)


class WorkerPool:
    """``workers`` spawned worker processes, started on first use and shared by several grids.

    :func:`steadygrad.studies.run_all` keeps one for all its studies, so the workers start (and
    load the dataset) once. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: int) -> None:
        self.workers = _check_workers(workers)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        """The executor, started now if it is not running yet."""
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
        return self._executor

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers (after their current runs); ``cancel`` drops runs not yet started."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)


def _run_pool(
    todo: Mapping[str, RunSpec],
    cache_dir: Path,
    pool: WorkerPool,
    records: dict[str, RunRecord],
    advance: Callable[[], None],
    on_record: Callable[[RunRecord], None] | None,
) -> None:
    executor = pool.executor()
    try:
        futures = {
            executor.submit(_execute, spec, key, str(cache_dir)): key for key, spec in todo.items()
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            try:
                record = future.result()
            except concurrent.futures.process.BrokenProcessPool as error:
                raise StudyRunError(
                    f"a worker process died while running {key[:12]} (killed, out of memory, or a "
                    "script that starts studies without an `if __name__ == '__main__':` guard, "
                    "which spawned workers need); finished runs are cached, rerun to resume"
                ) from error
            except Exception as error:
                raise StudyRunError(
                    f"run {key[:12]} failed in a worker: {type(error).__name__}: {error} "
                    f"(spec {_describe(todo[key])})"
                ) from error
            records[key] = record
            advance()
            if on_record is not None:
                on_record(record)
    except BaseException:
        pool.close(cancel=True)
        raise
