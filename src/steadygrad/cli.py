"""The ``steadygrad`` command: a thin layer that parses, calls the library and reports.

Every error a user can cause is printed as one line on stderr (``steadygrad: error: …``) with a
non-zero exit status and no traceback: 2 for usage errors, 1 for everything else, 128+N when
signal N interrupted training (after a checkpoint was written). Set ``STEADYGRAD_DEBUG=1`` to see
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from steadygrad import __version__
from steadygrad.errors import SteadygradError

__all__ = ["main"]

CONFIG_NAME = "config.json"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CLIError(SteadygradError):
    """A problem with the command line or the run folder, reported as one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 300,100; got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer widths such as 300,100; got {text!r}"
        )
    return sizes


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", help="named network to start from (default: reference)")
    g.add_argument("--activation", help="hidden activation, e.g. elu, relu, leaky_relu, selu")
    g.add_argument("--init", dest="initializer", help="initializer, e.g. he_normal, or auto")
    g.add_argument("--batch-norm", choices=["before", "after", "none"], help="BatchNorm placement")
    g.add_argument("--hidden", type=_hidden, help="hidden widths, e.g. 300,100")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=["fashion-mnist", "mnist"], help="dataset (fashion-mnist)")
    g.add_argument("--data-dir", help="folder holding the IDX files (default: search, download)")
    g.add_argument(
        "--validation", type=int, help="images held out of the training file (default 5000)"
    )
    g.add_argument(
        "--standardize",
        action="store_true",
        default=None,
        help="standardize pixels with the training mean/std (SELU networks need it)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (exposed for docs and tests)."""
    parser = _Parser(
        prog="steadygrad",
        description="Train deep networks whose signals neither vanish nor explode.",
    )
    parser.add_argument("--version", action="version", version=f"steadygrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train a network, printing the test accuracy every epoch",
        description=(
            "Train a network on MNIST-format data with mini-batches, print the test accuracy "
            "after every epoch, and write the run folder (config.json, metrics.jsonl, "
            "checkpoint.safetensors, final.safetensors)."
        ),
    )
    _add_model_options(t)
    _add_data_options(t)
    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, help="epochs (default 10)")
    g.add_argument("--batch-size", type=_positive_int, help="mini-batch size (default 50)")
    g.add_argument(
        "--optimizer", choices=["sgd", "momentum", "nesterov", "adam"], help="(default adam)"
    )
    g.add_argument("--lr", type=_positive_float, help="learning rate (default 0.001)")
    g.add_argument("--seed", type=int, help="seed for initialization and shuffling (default 42)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument(
        "--threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)"
    )
    g.add_argument("--out", help="run folder (default runs/<preset>)")
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    g.add_argument(
        "--force", action="store_true", help="start over even if --out already holds a run"
    )
    m = t.add_argument_group("gradient-flow monitor")
    m.add_argument(
        "--monitor",
        action="store_true",
        help="record per-layer forward/backward statistics into RUN_DIR/monitor.jsonl "
        "(render them with `steadygrad report RUN_DIR`)",
    )
    m.add_argument(
        "--monitor-every", type=_positive_int, default=10, help="record every N steps (10)"
    )
    m.add_argument(
        "--histograms", action="store_true", help="also record activation/gradient histograms"
    )
    m.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard events (RUN_DIR/tensorboard)",
    )
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="reload a run's final checkpoint and print its test accuracy",
        description="Rebuild the model of RUN_DIR from config.json, load its final checkpoint "
        "and print the test accuracy on the run's dataset.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by steadygrad train")
    e.add_argument("--data-dir", help="folder holding the IDX files (default: as in the run)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser(
        "doctor",
        help="diagnose a network's gradient flow, name the root cause and (with --treat) fix it",
        description="Probe a network on a batch of real images (one forward and backward plus a "
        "few SGD steps), print the per-layer table and the findings ordered by severity, each "
        "with its evidence in numbers and a concrete fix. With --treat, apply the fixes to a "
        "copy, diagnose it again and train both for --steps steps from the same batches.",
    )
    which = d.add_mutually_exclusive_group()
    which.add_argument("--preset", help="a named network (default: reference); see --list")
    which.add_argument(
        "--model", metavar="FILE.py:FACTORY", help="your own model: a file and a function in it"
    )
    d.add_argument("--list", action="store_true", help="list the presets and exit")
    d.add_argument("--data", choices=["fashion-mnist", "mnist"], default="fashion-mnist")
    d.add_argument("--data-dir", help="folder holding the IDX files")
    d.add_argument("--batch-size", type=_positive_int, default=256, help="probe batch (256)")
    d.add_argument("--seed", type=int, default=0, help="seed for the batch and the probe")
    d.add_argument("--treat", action="store_true", help="apply the fixes to a copy and verify")
    d.add_argument(
        "--steps", type=_positive_int, default=50, help="training steps for --treat's check (50)"
    )
    d.add_argument("--out", help="write diagnosis.json (and treatment.json, treated model) here")
    d.set_defaults(func=_cmd_doctor)

    st = sub.add_parser(
        "study",
        help="reproduce the seed's claims on Fashion-MNIST: figures, computed verdicts, HTML",
        description="Run a study (or all of them) on worker processes, with a cache keyed by each "
        "run's full configuration (a rerun costs nothing; an interrupted study resumes), then "
        "write <out>/<study>.json and a self-contained <out>/report.html with figures, tables, "
        "verdicts and the command that reproduces each.",
    )
    st.add_argument("name", metavar="NAME", nargs="?", help="a study name, or 'all' (see --list)")
    st.add_argument("--list", action="store_true", help="list the studies and exit")
    st.add_argument("--quick", action="store_true", help="a miniature of each study (seconds)")
    st.add_argument("--seeds", type=_positive_int, help="seeds per configuration")
    st.add_argument("--workers", type=_positive_int, default=2, help="worker processes (2)")
    st.add_argument("--out", default="studies", help="output folder (default studies/)")
    st.add_argument("--data-dir", help="folder holding the Fashion-MNIST IDX files")
    st.set_defaults(func=_cmd_study)

    r = sub.add_parser(
        "report",
        help="render a run's recorded monitor data as an HTML page with figures",
        description="Render RUN_DIR/monitor.jsonl (written by `steadygrad train --monitor`) and "
        "the run's metrics as a self-contained HTML page: activation and gradient std by depth, "
        "histograms, saturation and dead units over training, a layer x step gradient heatmap. "
        "It never needs the model.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with monitor.jsonl")
    r.add_argument("--out", help="where to write the page (default RUN_DIR/report.html)")
    r.set_defaults(func=_cmd_report)
    return parser


# --- train -------------------------------------------------------------------------------------


def _model_config(args: argparse.Namespace) -> dict[str, Any]:
    from steadygrad import models

    config = dict(models.preset(args.preset or "reference").config)
    overrides = {
        "activation": args.activation,
        "initializer": args.initializer,
        "hidden": args.hidden,
        "batch_norm": None if args.batch_norm == "none" else args.batch_norm,
    }
    for key, value in overrides.items():
        if key == "batch_norm":
            if args.batch_norm is not None:
                config[key] = value
        elif value is not None:
            config[key] = value
    return config


def _data_config(args: argparse.Namespace, model_config: dict[str, Any]) -> dict[str, Any]:
    standardize = args.standardize
    if standardize is None:
        standardize = str(model_config.get("activation", "")).lower() == "selu"
    return {
        "name": args.data or "fashion-mnist",
        "root": args.data_dir,
        "validation": 5000 if args.validation is None else args.validation,
        "standardize": bool(standardize),
    }


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CLIError(f"{run_dir} is not a run folder: {CONFIG_NAME} is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not {"model", "train", "data"} <= value.keys():
        raise CLIError(f"{path} lacks the model, train and data sections of a steadygrad run")
    return value


def _load_data(config: dict[str, Any], root: str | None = None) -> Any:
    from steadygrad import data

    return data.load(
        config["name"],
        root=root if root is not None else config.get("root"),
        validation=int(config["validation"]),
        standardize=bool(config["standardize"]),
    )


def _format_epoch(record: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f}  "
        f"train acc {record['train_accuracy']:.4f}  val acc {record['val_accuracy']:.4f}  "
        f"test accuracy {record['test_accuracy']:.4f}  ({record['seconds']:.1f} s)"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from steadygrad.train import run_lock

    out = Path(args.out or f"runs/{args.preset or 'reference'}")
    with run_lock(out):  # held from the first file written until the last
        return _train_locked(args, out)


def _train_locked(args: argparse.Namespace, out: Path) -> int:
    from steadygrad import models
    from steadygrad.train import CHECKPOINT_NAME, TrainConfig, fit

    if args.resume:
        run = _read_run_config(out)
        train_dict = dict(run["train"])
        for key in ("epochs", "lr", "device", "threads"):
            if getattr(args, key) is not None:
                train_dict[key] = getattr(args, key)
        model_config, data_config = run["model"], run["data"]
    else:
        if (out / CHECKPOINT_NAME).exists() and not args.force:
            raise CLIError(
                f"{out} already holds a run; pass --resume to continue it, --force to start over, "
                "or choose another --out"
            )
        model_config = _model_config(args)
        data_config = _data_config(args, model_config)
        train_dict = TrainConfig().to_dict()
        for key in ("epochs", "batch_size", "optimizer", "lr", "seed", "device", "threads"):
            if getattr(args, key) is not None:
                train_dict[key] = getattr(args, key)
    train_dict["out"] = str(out)
    config = TrainConfig.from_dict(train_dict)
    torch.manual_seed(config.seed)  # initialization is part of the run: same seed, same weights
    model = models.from_config(model_config)  # validates the model options before data loads
    dataset = _load_data(data_config)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        _write_json(
            out / CONFIG_NAME,
            {
                "model": model_config,
                "train": config.to_dict(),
                "data": data_config,
                "steadygrad": __version__,
                "torch": torch.__version__,
            },
        )
    print(
        f"training {model_config.get('kind', 'mlp')} "
        f"{'-'.join(str(n) for n in _widths(model_config))} on {data_config['name']} "
        f"({len(dataset.train)} train / {len(dataset.validation)} val / "
        f"{len(dataset.test)} test) → {out}",
        flush=True,
    )

    def report(record: dict[str, Any]) -> None:
        print(_format_epoch(record, config.epochs), flush=True)

    watching: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    watcher = None
    if args.monitor or args.histograms or args.tensorboard:
        from steadygrad import checkpoint, monitor

        first_step = 0
        if args.resume:
            first_step = int(checkpoint.read_meta(out / CHECKPOINT_NAME).get("step", 0))
        watcher = monitor.watch(
            model,
            every=args.monitor_every,
            out=out,
            tensorboard=args.tensorboard,
            histograms=args.histograms,
            first_step=first_step,
            keep=1000,  # monitor.jsonl has every record; nothing here reads them back
        )
        watching = watcher

    with watching:
        history = fit(
            model,
            dataset,
            config,
            resume=args.resume,
            on_epoch_end=report,
            run_meta={"model_config": model_config, "data_config": data_config},
            monitor=watcher,
        )
    if args.resume and history:
        done = len(history)
        print(
            f"resumed: {done} epochs in total; final test accuracy "
            f"{history[-1]['test_accuracy']:.4f}"
        )
    return 0


def _widths(model_config: dict[str, Any]) -> list[Any]:
    return [
        model_config.get("input_dim", "?"),
        *model_config.get("hidden", []),
        model_config.get("output_dim", "?"),
    ]


# --- evaluate ----------------------------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from steadygrad import checkpoint, models
    from steadygrad.train import CHECKPOINT_NAME, FINAL_NAME, evaluate, resolve_device

    run_dir = Path(args.run_dir)
    run = _read_run_config(run_dir)
    path = run_dir / FINAL_NAME
    if not path.exists():
        path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        raise CLIError(f"{run_dir} has no checkpoint ({FINAL_NAME} or {CHECKPOINT_NAME})")
    tensors, meta = checkpoint.load(path)
    model = models.from_config(run["model"])
    checkpoint.unpack_state(tensors, meta, model)
    device = resolve_device(args.device)
    dataset = _load_data(run["data"], root=args.data_dir)
    model.to(device)
    result = evaluate(
        model, dataset.test.to(device), int(run["train"].get("eval_batch_size", 10_000))
    )
    print(
        f"test accuracy {result['accuracy']:.4f}  (loss {result['loss']:.4f}, "
        f"{len(dataset.test)} {run['data']['name']} test images, {path.name}, "
        f"epoch {meta.get('epoch', '?')})"
    )
    return 0


# --- doctor ------------------------------------------------------------------------------------


def _cmd_doctor(args: argparse.Namespace) -> int:
    from steadygrad import checkpoint, doctor, models

    if args.list:
        for name in sorted(models.PRESETS):
            print(name)
        return 0
    torch.manual_seed(args.seed)
    if args.model:
        model = doctor.load_model_factory(args.model)
        label = args.model
    else:
        label = args.preset or "reference"
        model = models.preset(label)
    batch = doctor.data_batch(args.data, args.batch_size, seed=args.seed, root=args.data_dir)
    diagnosis = doctor.diagnose(model, batch, seed=args.seed)
    print(f"doctor: {label} on {args.batch_size} {args.data} training images")
    print(diagnosis)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "diagnosis.json", diagnosis.to_dict())
    if args.treat:
        if diagnosis.healthy:
            print("nothing to treat: the network is healthy")
            return 0
        treatment = doctor.treat(model, diagnosis, batch, args.steps, seed=args.seed)
        print(treatment)
        if out is not None:
            _write_json(out / "treatment.json", treatment.to_dict())
            tensors, meta = checkpoint.pack_state(
                treatment.model,
                None,
                extra_meta={"model_config": getattr(treatment.model, "config", None)},
            )
            checkpoint.save(out / "treated.safetensors", tensors, meta)
    if out is not None:
        print(f"wrote {out}")
    return 0


# --- study -------------------------------------------------------------------------------------


def _cmd_study(args: argparse.Namespace) -> int:
    from steadygrad import studies

    if args.list:
        for name in studies.names():
            print(f"{name:20} {studies.get(name).claim}")
        return 0
    if args.name is None:
        raise CLIError("study needs a NAME or 'all' (see steadygrad study --list)")
    chosen = None if args.name == "all" else [args.name]
    if chosen is not None:
        studies.get(args.name)  # unknown names fail here, with the valid ones listed
    results = studies.run_all(
        quick=args.quick,
        seeds=args.seeds,
        workers=args.workers,
        out=args.out,
        progress=sys.stderr.isatty(),
        data_root=args.data_dir,
        studies=chosen,
    )
    for result in results:
        for verdict in result.verdicts:
            print(f"{result.name:20} {verdict.status:12} {verdict.claim}")
            print(f"{'':20} {'':12} {verdict.evidence}")
    path = studies.render_report(results, args.out)
    print(f"wrote {path}")
    return 0


# --- report ------------------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    from steadygrad.report import render_run

    path = render_run(args.run_dir, out=args.out)
    print(f"wrote {path}")
    return 0


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from steadygrad.train import TrainingInterrupted

    try:
        return func(args)
    except TrainingInterrupted as exc:
        print(f"steadygrad: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("steadygrad: interrupted", file=sys.stderr)
        return 130
    except (SteadygradError, ValueError, TypeError, OSError, ImportError) as exc:
        if os.environ.get("STEADYGRAD_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"steadygrad: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
