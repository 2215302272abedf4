"""Reliability of the studies (issue 7): cache entries are written once; soak in one process.

Point 2: every cache entry is written exactly once, whether the grid repeats a spec, grids
overlap on one worker pool, or two runners race on one cache folder; a rerun writes nothing.
The writes are observed with inotify on the cache folder: what is counted is what the kernel saw
any process do to ``<key>.json`` (a rename onto it, or a write to it being closed), not what the
runner says about itself.

Point 6: 50 consecutive study runs in one process (each on a fresh cache, so every run is
computed) grow resident memory (``VmRSS``) by less than 5 %.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.test_studies import profile_spec

from steadygrad import studies
from steadygrad.studies import RunRecord, WorkerPool, run_grid, spec_key

# --------------------------------------------------------------------------- observing writes

IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class EntryWrites:
    """The writes the kernel reports in one folder (inotify), counted per file name.

    A write is a rename onto the name (how an atomic writer finishes) or the close of the name
    after it was opened for writing (how any other writer finishes). Hidden names (the runner's
    temporary and claim files) are not entries and are left out.
    """

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            pytest.skip("inotify (Linux) is needed to observe the writes of other processes")
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        watch = libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO)
        if watch < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {folder}")

    def take(self) -> Counter[str]:
        """Writes per name since the last call."""
        writes: Counter[str] = Counter()
        while True:
            try:
                buffer = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return writes
            offset = 0
            while offset < len(buffer):
                _, mask, _, length = _EVENT.unpack_from(buffer, offset)
                start = offset + _EVENT.size
                name = buffer[start : start + length].rstrip(b"\0").decode()
                offset = start + length
                assert not mask & IN_Q_OVERFLOW, "inotify queue overflowed: writes were lost"
                if name and not name.startswith("."):
                    writes[name] += 1

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture()
def cache(tmp_path: Path) -> Iterator[tuple[Path, EntryWrites]]:
    """An empty cache folder and the watcher of its writes."""
    folder = tmp_path / "cache"
    folder.mkdir()
    watcher = EntryWrites(folder)
    yield folder, watcher
    watcher.close()


def entries(keys: Iterable[str]) -> Counter[str]:
    """Exactly one write of each key's entry."""
    return Counter({f"{key}.json": 1 for key in keys})


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every entry: a rewrite, atomic or not, changes one of them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.json")}


# --------------------------------------------------------------------------- one runner


def test_pool_workers_write_each_entry_once_and_a_rerun_writes_nothing(
    tiny_idx_dir: Path, cache: tuple[Path, EntryWrites]
) -> None:
    """Duplicate specs, then an overlapping grid, on one pool: one write per key, by a worker."""
    folder, writes = cache
    a = [profile_spec(tiny_idx_dir, seed) for seed in range(6)]
    reordered = dict(reversed(list(a[1].items())))  # same spec, other key order
    grid_a = [a[0], *a, dict(a[0]), reordered, a[5], json.loads(json.dumps(a[2]))]
    keys_a = {spec_key(s) for s in a}
    assert len(grid_a) == 11 and len(keys_a) == 6

    with WorkerPool(2) as pool:
        first = run_grid(grid_a, folder, pool=pool, progress=False)
        assert writes.take() == entries(keys_a)
        assert [r.key for r in first] == [spec_key(s) for s in grid_a]
        assert not any(r.cached for r in first)
        assert os.getpid() not in {r.pid for r in first}  # the workers computed and wrote them
        for record in first:
            stored = json.loads((folder / f"{record.key}.json").read_text())
            assert stored["pid"] == record.pid and stored["result"] == record.result

        b = [profile_spec(tiny_idx_dir, seed) for seed in range(3, 9)]  # a's seeds 3..5 again
        keys_b = {spec_key(s) for s in b} - keys_a
        before = stamps(folder)
        second = run_grid(b + b[::-1], folder, pool=pool, progress=False)
        assert writes.take() == entries(keys_b)
        assert [r.cached for r in second[:6]] == [True] * 3 + [False] * 3
        assert os.getpid() not in {r.pid for r in second if not r.cached}

        stamped = stamps(folder)
        again = run_grid(grid_a + b, folder, pool=pool, progress=False)
        assert writes.take() == Counter()  # all cache hits: nothing written
    assert all(r.cached for r in again)
    assert stamps(folder) == stamped
    assert {k: v for k, v in stamped.items() if k in before} == before
    assert len(stamped) == len(keys_a | keys_b) == 9
    assert not list(folder.glob(".*"))  # no temporary or claim file left behind
    by_key = {r.key: r.result for r in first + second}
    assert all(r.result == by_key[r.key] for r in again)


def test_in_process_runner_writes_each_entry_once(
    tiny_idx_dir: Path, cache: tuple[Path, EntryWrites]
) -> None:
    folder, writes = cache
    specs = [profile_spec(tiny_idx_dir, seed) for seed in (0, 1, 0, 2, 1, 0)]
    records = run_grid(specs, folder, workers=1, progress=False)
    assert writes.take() == entries({r.key for r in records})
    assert len({r.key for r in records}) == 3
    run_grid(specs, folder, workers=1, progress=False)
    assert writes.take() == Counter()


# --------------------------------------------------------------------------- racing runners

RACER = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from steadygrad.studies import WorkerPool, code_version, run_grid

    specs_file, cache, workers, ready, go = sys.argv[1:]
    specs, workers = json.load(open(specs_file)), int(workers)
    code_version()
    with WorkerPool(workers) as pool:
        if workers > 1:  # start the workers before the race
            futures = [pool.executor().submit(code_version) for _ in range(workers)]
            [f.result() for f in futures]
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.001)
        runs = [  # the race, then a rerun (every entry is there once this runner is done)
            run_grid(
                specs, cache, workers=workers, pool=pool if workers > 1 else None, progress=False
            )
            for _ in range(2)
        ]
    print(json.dumps([[r.to_dict() for r in records] for records in runs]))
    """
)


def race(
    specs: list[dict[str, Any]], folder: Path, workers: list[int]
) -> list[list[list[RunRecord]]]:
    """Run ``run_grid(specs, folder)`` twice in one process per entry of ``workers`` (its worker
    count), released at the same moment once every process has started; per process, the
    records of its two calls."""
    base = folder.parent
    (base / "specs.json").write_text(json.dumps(specs))
    go = base / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i, count in enumerate(workers):
        argv = [str(base / "specs.json"), str(folder), str(count), str(base / f"ready{i}"), str(go)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RACER, *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not all((base / f"ready{i}").exists() for i in range(len(workers))):
            assert time.monotonic() < deadline, "the racers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [
        [[RunRecord.from_dict(r) for r in records] for records in json.loads(out)]
        for out, _ in outputs
    ]


@pytest.mark.parametrize(
    "workers",
    [[2, 1], pytest.param([1, 1], marks=pytest.mark.slow)],
    ids=["pool-vs-in-process", "in-process"],
)
def test_two_runners_racing_on_one_cache_write_each_entry_once(
    tiny_idx_dir: Path, cache: tuple[Path, EntryWrites], workers: list[int]
) -> None:
    """Two ``run_grid`` calls in two processes, started together on the same grid and cache.

    Each run takes ~0.1 s, so both runners want every entry at the same time; each entry is still
    computed by one process and written once, and the other runner reads it from the cache. Each
    runner then reruns the grid: all cache hits, nothing written.
    """
    folder, writes = cache
    specs = [profile_spec(tiny_idx_dir, seed, width=1024, depth=8) for seed in range(8)]
    (first, first_rerun), (second, second_rerun) = race(specs, folder, workers)
    # The keys as the racers computed them (this process may have hashed other code: the
    # working tree can change while the suite runs).
    keys = [r.key for r in first]
    assert len(set(keys)) == len(specs)
    assert [r.key for r in second] == keys
    assert writes.take() == entries(keys)  # the race and both reruns together
    computed = [r for r in first + second if not r.cached]
    assert sorted(r.key for r in computed) == sorted(keys)  # each run computed once in all
    for one, other in zip(first, second, strict=True):
        assert one.result == other.result  # the waiting runner read the other's entry
    assert all(r.cached for r in first_rerun + second_rerun)
    assert not list(folder.glob(".*"))  # no temporary or claim file left behind


def test_claim_files_of_dead_runners_are_removed_and_live_ones_kept(
    tiny_idx_dir: Path, cache: tuple[Path, EntryWrites]
) -> None:
    import fcntl

    folder, _ = cache
    spec = profile_spec(tiny_idx_dir, 0)
    key = spec_key(spec)
    stale = folder / ".0123abcd.lock"  # left by a runner killed while computing that run
    stale.write_text("")
    held = folder / ".4567cdef.lock"
    held.write_text("")
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live runner computing that run
        run_grid([spec], folder, workers=1, progress=False)
        assert not stale.exists()
        assert held.exists()
    finally:
        os.close(fd)
    # A stale claim on the very run to compute is taken over (the kernel freed its lock).
    (folder / f"{key}.json").unlink()
    (folder / f".{key}.lock").write_text("")
    [record] = run_grid([spec], folder, workers=1, progress=False)
    assert not record.cached
    assert sorted(p.name for p in folder.iterdir()) == [f"{key}.json"]  # and no longer held


# --------------------------------------------------------------------------- soak


def rss_bytes() -> int:
    """Resident memory of this process (``VmRSS`` of /proc/self/status), after a collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def soak(names: list[str], runs: int, root: Path, tmp: Path) -> tuple[int, int, float]:
    """``runs`` consecutive quick study runs in this process, cycling through ``names``, after a
    warm-up of one run of each; every run on a fresh cache. Returns (RSS after the warm-up,
    RSS at the end, seconds of the measured runs)."""

    def run(i: int) -> None:
        name = names[i % len(names)]
        out = tmp / f"run{i}"
        result = studies.run_study(
            name, quick=True, workers=1, out=out, progress=False, data_root=root
        )
        assert result.cached_runs == 0 and len(result.runs) == len(
            studies.get(name).grid(result.options)
        )

    for i in range(len(names)):
        run(i)
    before = rss_bytes()
    started = time.perf_counter()
    for i in range(runs):
        run(len(names) + i)
    seconds = time.perf_counter() - started
    return before, rss_bytes(), seconds


def check_growth(before: int, after: int, runs: int, seconds: float) -> None:
    growth = (after - before) / before
    print(
        f"{runs} study runs in {seconds:.1f} s: RSS {before / 2**20:.1f} MiB -> "
        f"{after / 2**20:.1f} MiB ({growth:+.2%})"
    )
    assert growth < 0.05, f"RSS grew {growth:.1%} over {runs} study runs ({before} -> {after} B)"


def test_fifty_study_runs_in_one_process_grow_rss_less_than_5_percent(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    """50 consecutive quick runs of five of the cheaper studies (all three task kinds)."""
    names = ["deep-relu", "elu-vs-relu", "selu", "leaky-vs-relu", "cost"]
    before, after, seconds = soak(names, 50, tiny_idx_dir, tmp_path)
    check_growth(before, after, 50, seconds)


@pytest.mark.slow
def test_soak_of_every_study_in_one_process_grows_rss_less_than_5_percent(
    tiny_idx_dir: Path, tmp_path: Path
) -> None:
    """200 consecutive quick runs cycling through all eight studies (25 runs of each)."""
    names = studies.names()
    before, after, seconds = soak(names, 200, tiny_idx_dir, tmp_path)
    check_growth(before, after, 200, seconds)
