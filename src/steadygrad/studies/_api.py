"""Running studies by name and writing their JSON: :func:`run_study`, :func:`run_all`."""

from __future__ import annotations

import difflib
import json
import math
import os
import shlex
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steadygrad.studies._runner import WorkerPool, code_version, run_grid
from steadygrad.studies._study import Options, Results, Study, StudyResult

__all__ = [
    "DEFAULT_OUT",
    "get",
    "load_result",
    "names",
    "reproduce_command",
    "run_all",
    "run_study",
    "write_result",
]

DEFAULT_OUT = Path("studies")
"""Where results go when ``out`` is not given: ``studies/<name>.json``, ``studies/cache/``."""


def _registry() -> dict[str, Study]:
    from steadygrad.studies import STUDIES

    return STUDIES


def names() -> list[str]:
    """The study names, in report order."""
    return list(_registry())


def get(name: str | Study) -> Study:
    """The study called ``name`` (a :class:`Study` passes through).

    Raises:
        ValueError: unknown name (lists the studies and the closest match).
    """
    if isinstance(name, Study):
        return name
    studies = _registry()
    if not isinstance(name, str) or name not in studies:
        close = difflib.get_close_matches(str(name), list(studies), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"study must be one of {', '.join(map(repr, studies))} or 'all'; got {name!r}{hint}"
        )
    return studies[name]


def _check_seeds(seeds: object) -> int | None:
    if seeds is None:
        return None
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(
            f"seeds must be a positive integer or None (the study's default); got {seeds!r}"
        )
    return seeds


def reproduce_command(name: str, options: Options, out: str | os.PathLike[str]) -> str:
    """The shell command that reruns study ``name`` with ``options`` into ``out``."""
    parts = ["steadygrad", "study", name]
    if options.quick:
        parts.append("--quick")
    default = 1 if options.quick else get(name).default_seeds
    if options.seeds != default:
        parts += ["--seeds", str(options.seeds)]
    parts += ["--out", str(out)]
    if options.data_root is not None:
        parts += ["--data-dir", str(options.data_root)]
    return shlex.join(parts)


def _strict(value: Any) -> Any:
    """``value`` with NaN and ±inf replaced by None (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _atomic_write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_result(result: StudyResult, out: str | os.PathLike[str]) -> Path:
    """Write ``<out>/<name>.json`` atomically (strict JSON: NaN and inf become null)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_strict(result.to_dict()), indent=1, allow_nan=False, ensure_ascii=False)
    return _atomic_write(folder / f"{result.name}.json", text + "\n")


def load_result(path: str | os.PathLike[str]) -> StudyResult:
    """Read a ``<name>.json`` written by :func:`run_study` (figures can be redrawn from it).

    Raises:
        steadygrad.errors.DataError: the file is missing or not a study result.
    """
    from steadygrad.errors import DataError

    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"cannot read study result {file}: {error.strerror}") from None
    except ValueError as error:
        raise DataError(f"{file} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != "steadygrad.study/1":
        raise DataError(f"{file} is not a steadygrad study result (format steadygrad.study/1)")
    return StudyResult.from_dict(data)


def run_study(
    name: str | Study,
    *,
    quick: bool = False,
    seeds: int | None = None,
    workers: int = 2,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    progress: bool = True,
    cache: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    pool: WorkerPool | None = None,
) -> StudyResult:
    """Run study ``name`` (its grid, on ``workers`` processes), judge it, write its JSON.

    The result goes to ``<out>/<name>.json``.

    ``quick`` runs the miniature (seconds; one seed unless ``seeds`` says otherwise).
    ``seeds`` overrides the study's number of seeds per configuration. Runs are cached under
    ``cache`` (default ``<out>/cache``) by a hash of their full spec and the code version, so a
    rerun only computes what is missing (and a finished study reruns in seconds).
    ``data_root`` is the Fashion-MNIST folder (default: :func:`steadygrad.data.load`'s search).
    ``pool``: a :class:`WorkerPool` to run on instead of starting ``workers`` new processes.

    Raises:
        ValueError: unknown study, bad ``seeds`` or ``workers``.
        steadygrad.errors.DataError: the dataset cannot be found or read.
        StudyRunError: a run failed (finished runs stay cached).
    """
    study = get(name)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False; got {quick!r}")
    count = _check_seeds(seeds)
    if count is None:
        count = 1 if quick else study.default_seeds
    options = Options(quick, count, None if data_root is None else str(data_root))
    folder = Path(out)
    cache_dir = Path(cache) if cache is not None else folder / "cache"
    started = time.perf_counter()
    specs = study.grid(options)
    records = run_grid(
        specs, cache_dir, workers=workers, progress=progress, label=study.name, pool=pool
    )
    results = Results(records, options)
    from steadygrad.report import environment

    result = StudyResult(
        name=study.name,
        title=study.title,
        claim=study.claim,
        literature=study.literature,
        setup=study.setup,
        measure=list(study.measure),
        options=options,
        command=reproduce_command(study.name, options, folder),
        runs=records,
        verdicts=study.verdicts(results),
        tables=study.tables(results),
        seconds=round(time.perf_counter() - started, 3),
        code_version=code_version(),
        environment=environment(),
    )
    write_result(result, folder)
    return result


def run_all(
    *,
    quick: bool = False,
    seeds: int | None = None,
    workers: int = 2,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    progress: bool = True,
    cache: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    studies: Sequence[str] | None = None,
) -> list[StudyResult]:
    """:func:`run_study` for every study (or those named in ``studies``), in report order.

    The studies share one set of ``workers`` processes, started when a study first needs them.
    """
    chosen = names() if studies is None else [get(n).name for n in studies]
    with WorkerPool(workers) as pool:
        return [
            run_study(
                n,
                quick=quick,
                seeds=seeds,
                workers=workers,
                out=out,
                progress=progress,
                cache=cache,
                data_root=data_root,
                pool=pool if workers > 1 else None,
            )
            for n in chosen
        ]
