"""One benchmark run in its own process: ``python -m benchmarks.worker '<RunSpec JSON>'``.

Runs the spec's runner and prints its :class:`~benchmarks.common.RunResult` as one line starting
with :data:`~benchmarks.common.RESULT_MARKER` (anything else on stdout, e.g. Keras' messages, is
ignored by the harness). A failing runner still prints a result, with ``error`` set, and exits 1.

Only the standard library is imported here; the runner's module (torch, or JAX/Keras in
``.bench-env/``) is imported on dispatch, so each process loads just what its runner needs and
its peak RSS is that runner's.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

from benchmarks.common import RunResult, RunSpec, check_runner, emit


def runner_function(name: str) -> Callable[[RunSpec], RunResult]:
    """The ``run_*`` function of runner ``name`` (its module imported now)."""
    check_runner(name)
    if name == "floor":
        from benchmarks.floor import run_floor

        return run_floor
    if name in ("steadygrad", "torch-inmemory", "torch-dataloader"):
        from benchmarks import runners_torch

        return {
            "steadygrad": runners_torch.run_steadygrad,
            "torch-inmemory": runners_torch.run_torch_inmemory,
            "torch-dataloader": runners_torch.run_torch_dataloader,
        }[name]
    from benchmarks import runners_alt

    return {
        "jax-scan": runners_alt.run_jax_scan,
        "keras-jax": runners_alt.run_keras_jax,
        "keras-torch": runners_alt.run_keras_torch,
    }[name]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m benchmarks.worker '<RunSpec JSON>'", file=sys.stderr)
        return 2
    spec = RunSpec.from_json(args[0])
    try:
        result = runner_function(spec.runner)(spec)
    except Exception as err:  # reported to the harness, which shows it in the table
        traceback.print_exc()
        emit(
            RunResult(
                spec.runner,
                spec.batch_size,
                spec.n_train,
                error=f"{type(err).__name__}: {err}".splitlines()[0][:300],
            )
        )
        return 1
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
