"""``batchnorm``: larger stable learning rates, less sensitivity to the init, stable inputs.

Ioffe & Szegedy (2015), "Batch normalization": §3.3 (BN makes training resilient to the
parameter scale, so higher learning rates do not blow up), §4.2 (Inception with BN trains with
5× and 30× the learning rate), Fig. 1 (a 3 × 100 sigmoid network on MNIST: with BN the test
accuracy rises faster and the distribution of a sigmoid's input, as its 15th/50th/85th
percentiles, stays put, while without BN it drifts). The seed: BN allows larger learning rates
and makes the network less sensitive to the weight initialization.

Three parts, one grid (``label["part"]``):

(a) largest stable learning rate of a 10 × 256 ReLU network (He init) with and without BN, plain
    SGD over a grid of learning rates. A run is *stable* when its loss stays finite and its mean
    over the last 10 % of steps is below half the chance loss (ln 10 / 2 ≈ 1.15): it learned
    rather than blew up or stalled. The largest stable rate is the largest grid rate that is
    stable in every seed.
(b) test accuracy of the same network for the inits N(0,0.01²), Glorot, He and N(0,1), with and
    without BN; the *spread* is max − min over inits, per seed.
(c) Ioffe & Szegedy's 3 × 100 sigmoid network with and without BN: the 15/50/85th percentiles
    of the input of one sigmoid (unit 0 of the last hidden layer) on 300 fixed test images,
    every 100 steps. *Drift* = (max − min over time of the median) / (mean over time of the
    85th − 15th percentile spread): how far the distribution moves relative to its width.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import (
    CHANCE_LOSS,
    INITS,
    all_or_none,
    colors,
    fmt,
    fmt_list,
    init_name,
    new_figure,
    seeds,
    two_se_status,
)
from steadygrad.studies._runner import RunRecord, RunSpec
from steadygrad.studies._study import (
    Claim,
    FigureSpec,
    Options,
    Results,
    Status,
    Study,
    Table,
    mean_se,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "batchnorm"
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
QUICK_LRS = (0.01, 0.1, 1.0, 10.0)
SPREAD_INITS = ("normal_0.01", "glorot", "he", "normal_1")
PERCENTILES = (15.0, 50.0, 85.0)
STABLE_LOSS = CHANCE_LOSS / 2
LR_FACTOR = 5.0


def _relu_net(depth: int, width: int, initializer: Any, bn: bool) -> dict[str, Any]:
    return {
        "input_dim": 784,
        "hidden": [width] * depth,
        "output_dim": 10,
        "activation": "relu",
        "initializer": initializer,
        "batch_norm": "before" if bn else None,
        "momentum": 0.9,
    }


def grid(options: Options) -> list[RunSpec]:
    """Parts (a), (b) and (c); see the module docstring. Quick: tiny nets and 4 learning rates."""
    q = options.quick
    depth, width = (3, 32) if q else (10, 256)
    specs: list[RunSpec] = []
    for bn in (False, True):
        for lr in QUICK_LRS if q else LRS:
            for seed in seeds(options.seeds):
                specs.append(
                    {
                        "task": "train",
                        "label": {"part": "a", "bn": bn, "lr": lr, "seed": seed},
                        "model": _relu_net(depth, width, "he_normal", bn),
                        "data": options.data(train=256 if q else 6_400, test=200 if q else 2_000),
                        "optimizer": {"name": "sgd", "lr": lr},
                        "epochs": 1 if q else 2,
                        "batch_size": 64,
                        "seed": seed,
                        "measure": {"loss_window": 10},
                        "quick": q,
                    }
                )
        for key in SPREAD_INITS:
            for seed in seeds(options.seeds):
                specs.append(
                    {
                        "task": "train",
                        "label": {"part": "b", "bn": bn, "init": key, "seed": seed},
                        "model": _relu_net(depth, width, INITS[key][1], bn),
                        "data": options.data(train=256 if q else 10_000, test=200 if q else 2_000),
                        "optimizer": {"name": "momentum", "lr": 0.01, "momentum": 0.9},
                        "epochs": 1 if q else 2,
                        "batch_size": 64,
                        "seed": seed,
                        "measure": {"loss_window": 10},
                        "quick": q,
                    }
                )
        for seed in seeds(options.seeds):
            specs.append(
                {
                    "task": "train",
                    "label": {"part": "c", "bn": bn, "seed": seed},
                    "model": {
                        "input_dim": 784,
                        "hidden": [100, 100, 100],
                        "output_dim": 10,
                        "activation": "sigmoid",
                        "initializer": {"name": "normal", "std": 0.1},
                        "batch_norm": "before" if bn else None,
                        "momentum": 0.9,
                    },
                    "data": options.data(train=600 if q else None, test=200 if q else 2_000),
                    "optimizer": {"name": "sgd", "lr": 0.5},
                    "epochs": 1 if q else 3,
                    "batch_size": 60,
                    "seed": seed,
                    "measure": {
                        "loss_window": 10,
                        "probe_batch": 300,
                        "unit_percentiles": {
                            "layer": 3,
                            "unit": 0,
                            "q": list(PERCENTILES),
                            "every": 2 if q else 100,
                        },
                    },
                    "quick": q,
                }
            )
    return specs


# --------------------------------------------------------------------------- (a) learning rates


def stable(record: RunRecord) -> bool:
    """Finite loss throughout and last-10 % mean loss below ln 10 / 2."""
    result = record.result
    if result["diverged"] is not None or not result["losses"]:
        return False
    losses = result["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    return statistics.fmean(tail) < STABLE_LOSS


def largest_stable(results: Results, bn: bool) -> float | None:
    """The largest grid learning rate stable in every seed (None if none is)."""
    best = None
    for lr in results.values("lr", part="a", bn=bn):
        runs = results.select(part="a", bn=bn, lr=lr)
        if runs and all(stable(r) for r in runs):
            best = lr if best is None else max(best, lr)
    return best


def _judge_lr(results: Results) -> tuple[Status, str]:
    plain, bn = largest_stable(results, False), largest_stable(results, True)
    table = "; ".join(
        f"{'BN' if flag else 'plain'}: "
        + ", ".join(
            f"{lr:g} {sum(stable(r) for r in results.select(part='a', bn=flag, lr=lr))}/"
            f"{len(results.select(part='a', bn=flag, lr=lr))}"
            for lr in results.values("lr", part="a", bn=flag)
        )
        for flag in (False, True)
    )
    evidence = (
        f"largest stable learning rate: plain {fmt(plain)}, BN {fmt(bn)}"
        + (f" (ratio {fmt(bn / plain)})" if plain and bn else "")
        + f". Stable seeds per rate: {table}"
    )
    if plain is None or bn is None:
        return "inconclusive", evidence + " (no stable rate for one network)"
    factor = bn / plain
    if factor >= LR_FACTOR:
        return "confirmed", evidence
    if factor <= 1.0:
        return "refuted", evidence
    return "inconclusive", evidence


# --------------------------------------------------------------------------- (b) init spread


def accuracy(record: RunRecord) -> float:
    """Final test accuracy; a diverged run counts as chance (0.10)."""
    final = record.result["final"]
    return 0.1 if final is None else float(final["test_accuracy"])


def spreads(results: Results, bn: bool) -> dict[int, float]:
    """Per seed: max − min test accuracy over the initializers."""
    out = {}
    for seed in results.values("seed", part="b", bn=bn):
        accs = [accuracy(r) for r in results.select(part="b", bn=bn, seed=seed)]
        if len(accs) >= 2:
            out[seed] = max(accs) - min(accs)
    return out


def _judge_spread(results: Results) -> tuple[Status, str]:
    plain, bn = spreads(results, False), spreads(results, True)
    diffs = [plain[s] - bn[s] for s in plain if s in bn]
    mean, se = mean_se(diffs)
    per_init = "; ".join(
        f"{'BN' if flag else 'plain'}: "
        + ", ".join(
            f"{init_name(k)} "
            f"{fmt_list([accuracy(r) for r in results.select(part='b', bn=flag, init=k)])}"
            for k in SPREAD_INITS
        )
        for flag in (False, True)
    )
    evidence = (
        f"accuracy spread over inits per seed: plain {fmt_list(list(plain.values()))}, BN "
        f"{fmt_list(list(bn.values()))}; plain − BN = {fmt(mean)} ± {fmt(se)} (se). "
        f"Test accuracy: {per_init}"
    )
    return two_se_status(mean, se), evidence


# --------------------------------------------------------------------------- (c) sigmoid inputs


def drift(record: RunRecord) -> float | None:
    """(max − min of the median over time) / (mean 85th − 15th percentile spread)."""
    trace = record.result.get("unit_percentiles") or []
    if len(trace) < 2:
        return None
    medians = [float(t["values"][1]) for t in trace]
    widths = [float(t["values"][2]) - float(t["values"][0]) for t in trace]
    width = statistics.fmean(widths)
    if width <= 0:
        return None
    return (max(medians) - min(medians)) / width


def _judge_drift(results: Results) -> tuple[Status, str]:
    plain = {r.spec["seed"]: drift(r) for r in results.select(part="c", bn=False)}
    flags = []
    bn_values = []
    for r in results.select(part="c", bn=True):
        value = drift(r)
        bn_values.append(value)
        other = plain.get(r.spec["seed"])
        flags.append(value is not None and other is not None and value < other)
    evidence = (
        f"drift of the sigmoid input: plain {fmt_list(list(plain.values()))}, BN "
        f"{fmt_list(bn_values)} (per seed)"
    )
    return all_or_none(flags), evidence


def _judge_fig1_accuracy(results: Results) -> tuple[Status, str]:
    plain = {r.spec["seed"]: accuracy(r) for r in results.select(part="c", bn=False)}
    pairs = [
        (accuracy(r), plain[r.spec["seed"]])
        for r in results.select(part="c", bn=True)
        if r.spec["seed"] in plain
    ]
    mean, se = mean_se([a - b for a, b in pairs])
    evidence = (
        f"test accuracy BN {fmt_list([p[0] for p in pairs])}, plain "
        f"{fmt_list([p[1] for p in pairs])}; BN − plain = {fmt(mean)} ± {fmt(se)} (se)"
    )
    return two_se_status(mean, se), evidence


CLAIMS = (
    Claim(
        f"Batch normalization raises the largest stable learning rate of a 10 × 256 ReLU "
        f"network at least {LR_FACTOR:g}×",
        "Ioffe & Szegedy 2015, §3.3 and §4.2.1 (BN-Inception trains at 5× and 30× the "
        "learning rate); the seed ('larger learning rates can be used')",
        f"stable ⇔ finite loss and last-10 % mean loss < ln 10 / 2; largest stable rate = the "
        f"largest grid rate stable in every seed; confirmed if BN's ≥ {LR_FACTOR:g}× the plain "
        f"network's, refuted if ≤ 1×, inconclusive in between or when a network has none",
        _judge_lr,
    ),
    Claim(
        "With batch normalization the test accuracy depends less on the initialization",
        "Ioffe & Szegedy 2015, §3.3 (BN makes training resilient to the parameter scale); the "
        "seed ('less sensitivity to weight initialization')",
        "spread = max − min test accuracy over the 4 inits (diverged = 0.10), per seed; d = "
        "spread without BN − spread with BN, mean m and standard error se over seeds; confirmed "
        "if m > 2 se, refuted if m < −2 se, inconclusive otherwise",
        _judge_spread,
    ),
    Claim(
        "With batch normalization the distribution of a sigmoid's input stays stable during "
        "training; without it, it drifts",
        "Ioffe & Szegedy 2015, Fig. 1b–c (15/50/85th percentiles of a sigmoid's input, MNIST, "
        "3 × 100)",
        "drift = (max − min of the median over time) / (mean 85th − 15th percentile width); "
        "confirmed if BN's drift is smaller in every seed, refuted if in none, inconclusive "
        "otherwise",
        _judge_drift,
    ),
    Claim(
        "With batch normalization the 3 × 100 sigmoid network reaches a higher test accuracy "
        "after the same number of steps",
        "Ioffe & Szegedy 2015, Fig. 1a",
        "d = test accuracy with BN − without, paired by seed; confirmed if m > 2 se, refuted if "
        "m < −2 se, inconclusive otherwise",
        _judge_fig1_accuracy,
    ),
)


# --------------------------------------------------------------------------- figures and tables


def figure_lr(results: Results) -> Figure:
    """Final loss against learning rate, with and without BN (o stable, ^ unstable, × diverged)."""
    from matplotlib.lines import Line2D

    fig, axes = new_figure(9, 4.5)
    ax = axes[0][0]
    palette = colors(2)
    for color, bn in zip(palette, (False, True), strict=True):
        for lr in results.values("lr", part="a", bn=bn):
            for r in results.select(part="a", bn=bn, lr=lr):
                losses = r.result["losses"]
                if r.result["diverged"] is not None or not losses:
                    ax.scatter([lr], [20.0], color=color, marker="x")
                else:
                    ax.scatter([lr], [losses[-1]], color=color, marker="o" if stable(r) else "^")
        best = largest_stable(results, bn)
        if best is not None:
            ax.axvline(best, color=color, ls=":", lw=1)
    ax.axhline(STABLE_LOSS, color="0.5", ls="--", lw=1)
    handles = [
        Line2D([], [], color=palette[0], marker="o", ls="", label="without BN"),
        Line2D([], [], color=palette[1], marker="o", ls="", label="with BN"),
        Line2D([], [], color="0.3", marker="o", ls="", label="stable"),
        Line2D([], [], color="0.3", marker="^", ls="", label="unstable (loss ≥ ln 10 / 2)"),
        Line2D([], [], color="0.3", marker="x", ls="", label="diverged (NaN/inf)"),
        Line2D([], [], color="0.5", ls="--", label="threshold ln 10 / 2"),
    ]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (plain SGD)")
    ax.set_ylabel("final training loss (diverged drawn at 20)")
    ax.set_title("(a) 10 × 256 ReLU: final loss by learning rate; dotted: largest stable rate")
    ax.legend(handles=handles, fontsize=8)
    return fig


def figure_spread(results: Results) -> Figure:
    """Test accuracy per initializer with and without BN (mean over seeds, seeds as dots)."""
    fig, axes = new_figure(9, 4.2)
    ax = axes[0][0]
    xs = range(len(SPREAD_INITS))
    for offset, color, bn in zip((-0.15, 0.15), colors(2), (False, True), strict=True):
        means = []
        for x, key in zip(xs, SPREAD_INITS, strict=True):
            accs = [accuracy(r) for r in results.select(part="b", bn=bn, init=key)]
            ax.scatter([x + offset] * len(accs), accs, color=color, s=12)
            means.append(statistics.fmean(accs) if accs else float("nan"))
        ax.bar(
            [x + offset for x in xs],
            means,
            width=0.3,
            color=color,
            alpha=0.4,
            label="with BN" if bn else "without BN",
        )
    ax.set_xticks(list(xs), [init_name(k) for k in SPREAD_INITS])
    ax.set_ylabel("test accuracy (diverged = 0.10)")
    ax.set_ylim(0, 1)
    ax.set_title("(b) 10 × 256 ReLU: accuracy by initialization")
    ax.legend()
    return fig


def figure_percentiles(results: Results) -> Figure:
    """15/50/85th percentiles of a sigmoid's input over training, without and with BN."""
    fig, axes = new_figure(12, 4.2, 1, 2)
    for ax, bn in zip(axes[0], (False, True), strict=True):
        runs = results.select(part="c", bn=bn)
        if runs:
            trace = runs[0].result.get("unit_percentiles") or []
            steps = [t["step"] for t in trace]
            for k, (q, style) in enumerate(zip(PERCENTILES, (":", "-", ":"), strict=True)):
                ax.plot(
                    steps,
                    [t["values"][k] for t in trace],
                    color="tab:blue",
                    ls=style,
                    label=f"{q:g}th percentile",
                )
        ax.set_xlabel("step")
        ax.set_ylabel("input of the sigmoid (unit 0, layer 3)")
        ax.set_title(f"(c) {'with' if bn else 'without'} BN (seed 0)")
        ax.legend()
    return fig


def tables(results: Results) -> list[Table]:
    """(a) stability per learning rate; (b) accuracy per init; (c) drift and accuracy."""
    rows_a = []
    for bn in (False, True):
        for lr in results.values("lr", part="a", bn=bn):
            runs = results.select(part="a", bn=bn, lr=lr)
            rows_a.append(
                [
                    "BN" if bn else "plain",
                    lr,
                    f"{sum(stable(r) for r in runs)}/{len(runs)}",
                    sum(1 for r in runs if r.result["diverged"]),
                ]
            )
    rows_b = []
    for bn in (False, True):
        for key in SPREAD_INITS:
            runs = results.select(part="b", bn=bn, init=key)
            if runs:
                acc, se = mean_se([accuracy(r) for r in runs])
                rows_b.append(["BN" if bn else "plain", init_name(key), acc, se])
    rows_c = []
    for bn in (False, True):
        runs = results.select(part="c", bn=bn)
        if runs:
            drifts = [d for r in runs if (d := drift(r)) is not None]
            rows_c.append(
                [
                    "BN" if bn else "plain",
                    statistics.fmean(drifts) if drifts else None,
                    statistics.fmean(accuracy(r) for r in runs),
                ]
            )
    return [
        Table(
            "(a) stable seeds per learning rate", ["network", "lr", "stable", "diverged"], rows_a
        ),
        Table(
            "(b) test accuracy per initialization (mean ± se over seeds)",
            ["network", "init", "test accuracy", "± se"],
            rows_b,
        ),
        Table(
            "(c) 3 × 100 sigmoid: drift of the sigmoid input and test accuracy (mean over seeds)",
            ["network", "drift", "test accuracy"],
            rows_c,
        ),
    ]


STUDY = Study(
    name=NAME,
    title="Batch normalization: learning rates, initializations, input distributions",
    claim="Batch normalization tolerates much larger learning rates and worse initializations, "
    "and keeps the inputs of each nonlinearity stable",
    literature="Ioffe & Szegedy 2015 (§3.3, §4.2, Fig. 1)",
    setup=(
        "(a) 784 → 10 × 256 ReLU → 10, He init, BN (momentum 0.9) before each hidden "
        "activation or none, plain SGD at 7 learning rates 0.01 … 10, batch 64, the first "
        "6,400 Fashion-MNIST training images for 2 epochs (200 steps); (b) the same network "
        "with 4 inits, SGD momentum 0.9, lr 0.01, first 10,000 images for 2 epochs; (c) 784 → "
        "3 × 100 sigmoid → 10, N(0, 0.1²) init (Ioffe & Szegedy: 'small random Gaussian "
        "values'), SGD lr 0.5, batch 60, all 60,000 training images for 3 epochs (3,000 steps; "
        "the paper ran 50,000); 2,000 test images; pixels in [0, 1]. Quick: 3 × 32 and 4 "
        "learning rates, 256–600 images, 1 epoch."
    ),
    grid=grid,
    measure=(
        "(a) training loss per step, divergence",
        "(b) test accuracy",
        "(c) 15/50/85th percentiles of one sigmoid's input every 100 steps, test accuracy",
    ),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "(a) Final training loss against the learning rate (o stable, ^ unstable, × diverged)",
            figure_lr,
        ),
        FigureSpec(
            "(b) Test accuracy for four initializations, without and with BN", figure_spread
        ),
        FigureSpec(
            "(c) Percentiles of one sigmoid's input over training (Ioffe & Szegedy "
            "2015, Fig. 1b–c)",
            figure_percentiles,
        ),
    ),
    tables=tables,
    default_seeds=3,
)
