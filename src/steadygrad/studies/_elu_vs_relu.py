"""``elu-vs-relu``: does ELU learn faster than ReLU, with mean activations closer to zero?

Clevert, Unterthiner & Hochreiter (2015), "Fast and accurate deep network learning by
exponential linear units (ELUs)", §4.1 and Fig. 1: on MNIST, 8 hidden layers of 128 units, He
init, SGD with learning rate 0.01 and mini-batches of 64, ELU networks keep the median unit mean
activation closer to zero and reach a lower training loss sooner than ReLU and leaky ReLU ones.
The seed: "ELUs … converge faster … ELU has an average output closer to zero".

Measured per activation and seed: the mean training loss of every epoch, the epochs each takes to
reach a target loss, and after training, per hidden layer, the median over units of the unit's
mean activation on 300 fixed test images.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import (
    all_or_none,
    colors,
    fmt,
    fmt_list,
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

NAME = "elu-vs-relu"
ACTIVATIONS: dict[str, Any] = {
    "elu": "elu",
    "relu": "relu",
    "leaky 0.01": {"name": "leaky_relu", "alpha": 0.01},
}


def grid(options: Options) -> list[RunSpec]:
    """3 activations × seeds; 8 × 128, He init, SGD lr 0.01, batch 64 (Clevert et al. 2015).

    Full: the first 20,000 training images × 10 epochs (3,130 steps), 2,000 test images. Quick:
    3 × 16, 256 images, 2 epochs.
    """
    if options.quick:
        depth, width, n_train, n_test, epochs = 3, 16, 256, 200, 2
    else:
        depth, width, n_train, n_test, epochs = 8, 128, 20_000, 2_000, 10
    specs = []
    for name, activation in ACTIVATIONS.items():
        for seed in seeds(options.seeds):
            specs.append(
                {
                    "task": "train",
                    "label": {"activation": name, "seed": seed},
                    "model": {
                        "input_dim": 784,
                        "hidden": [width] * depth,
                        "output_dim": 10,
                        "activation": activation,
                        "initializer": "he_normal",
                    },
                    "data": options.data(train=n_train, test=n_test),
                    "optimizer": {"name": "sgd", "lr": 0.01},
                    "epochs": epochs,
                    "batch_size": 64,
                    "seed": seed,
                    "measure": {"units_end": True, "probe_batch": 300, "loss_window": 50},
                    "quick": options.quick,
                }
            )
    return specs


def epoch_losses(record: RunRecord) -> list[float]:
    """Mean training loss of each completed epoch."""
    return [float(h["train_loss"]) for h in record.result["history"]]


def mean_curve(results: Results, name: str) -> list[float]:
    """Per-epoch training loss averaged over seeds (epochs every seed completed)."""
    curves = [epoch_losses(r) for r in results.select(activation=name)]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[k] for c in curves) for k in range(n)]


def epochs_to(curve: list[float], target: float) -> int | None:
    """First epoch (1-based) whose loss is ≤ ``target``; None if never."""
    for k, value in enumerate(curve, start=1):
        if value <= target:
            return k
    return None


def final_losses(results: Results, name: str) -> list[float]:
    """Each seed's training loss in its last epoch."""
    return [epoch_losses(r)[-1] for r in results.select(activation=name) if r.result["history"]]


def target_loss(results: Results) -> float | None:
    """The target: ReLU's final-epoch training loss (mean over seeds)."""
    finals = final_losses(results, "relu")
    return statistics.fmean(finals) if finals else None


def _judge_speed(results: Results) -> tuple[Status, str]:
    elu, relu = final_losses(results, "elu"), final_losses(results, "relu")
    paired = {r.spec["seed"]: epoch_losses(r)[-1] for r in results.select(activation="relu")}
    diffs = [
        paired[r.spec["seed"]] - epoch_losses(r)[-1]
        for r in results.select(activation="elu")
        if r.spec["seed"] in paired and r.result["history"]
    ]
    mean, se = mean_se(diffs)
    target = target_loss(results)
    reach = {
        name: epochs_to(mean_curve(results, name), target) if target is not None else None
        for name in ACTIVATIONS
    }
    evidence = (
        f"final training loss ELU {fmt_list(elu)}, ReLU {fmt_list(relu)}; ReLU − ELU = "
        f"{fmt(mean)} ± {fmt(se)} (se, paired by seed); epochs to ReLU's final loss "
        f"{fmt(target)}: " + ", ".join(f"{n} {fmt(e)}" for n, e in reach.items())
    )
    return two_se_status(mean, se), evidence


def unit_mean(record: RunRecord, field: str = "unit_mean_median") -> float | None:
    """Median over hidden layers of a per-layer unit statistic after training.

    ``unit_mean_median``: the median over units of each unit's mean activation (signed; Clevert et
    al.'s Fig. 1a statistic), taken in absolute value; ``unit_mean_abs_median``: the median over
    units of |unit mean activation| (each unit's own distance from zero).
    """
    units = record.result.get("units_end")
    if not units:
        return None
    return float(statistics.median(abs(float(u[field])) for u in units))


def _judge_mean(field: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        relu = {r.spec["seed"]: unit_mean(r, field) for r in results.select(activation="relu")}
        flags = []
        elu_values = []
        for r in results.select(activation="elu"):
            value = unit_mean(r, field)
            elu_values.append(value)
            other = relu.get(r.spec["seed"])
            flags.append(value is not None and other is not None and value < other)
        leaky = [unit_mean(r, field) for r in results.select(activation="leaky 0.01")]
        evidence = (
            f"ELU {fmt_list(elu_values)}, ReLU {fmt_list(list(relu.values()))}, leaky 0.01 "
            f"{fmt_list(leaky)} (per seed)"
        )
        return all_or_none(flags), evidence

    return judge


CLAIMS = (
    Claim(
        "ELU learns faster than ReLU: a lower training loss after the same number of epochs",
        "Clevert et al. 2015, Fig. 1b and §4.1 (MNIST, 8 × 128: ELU's training loss falls "
        "faster); the seed ('Gradient Descent converges faster')",
        "d = ReLU's final-epoch training loss − ELU's, paired by seed, mean m and standard error "
        "se; confirmed if m > 2 se, refuted if m < −2 se, inconclusive otherwise (and with one "
        "seed); epochs to reach ReLU's final loss are reported alongside",
        _judge_speed,
    ),
    Claim(
        "ELU keeps the median unit mean activation closer to zero than ReLU",
        "Clevert et al. 2015, Fig. 1a (the median over units of the unit's mean activation: "
        "near 0 for ELU, positive for ReLU)",
        "per seed, |median over units of the unit mean activation| on 300 probe images after "
        "training, median over hidden layers; confirmed if ELU's is lower than ReLU's in every "
        "seed, refuted if in none, inconclusive otherwise",
        _judge_mean("unit_mean_median"),
    ),
    Claim(
        "ELU keeps each unit's own mean activation closer to zero than ReLU",
        "a stricter reading of Clevert et al. 2015 ('ELUs push mean unit activations closer to "
        "zero'): a median near 0 could also come from units with large means of both signs",
        "per seed, the median over units of |unit mean activation|, median over hidden layers; "
        "confirmed if ELU's is lower than ReLU's in every seed, refuted if in none, "
        "inconclusive otherwise",
        _judge_mean("unit_mean_abs_median"),
    ),
)


def figure_loss(results: Results) -> Figure:
    """Training loss per epoch (mean over seeds, seeds as thin lines) and the target loss."""
    fig, axes = new_figure(12, 4.2, 1, 2)
    loss_ax, mean_ax = axes[0]
    for color, name in zip(colors(len(ACTIVATIONS)), ACTIVATIONS, strict=True):
        for r in results.select(activation=name):
            losses = epoch_losses(r)
            loss_ax.plot(range(1, len(losses) + 1), losses, color=color, alpha=0.3, lw=0.8)
        curve = mean_curve(results, name)
        loss_ax.plot(range(1, len(curve) + 1), curve, color=color, marker="o", label=name)
        layers: list[list[float]] = []
        for r in results.select(activation=name):
            units = r.result.get("units_end") or []
            layers.append([u["unit_mean_median"] for u in units])
        if layers and all(layers):
            per_layer = [statistics.fmean(v) for v in zip(*layers, strict=True)]
            mean_ax.plot(
                range(1, len(per_layer) + 1), per_layer, color=color, marker="o", label=name
            )
    target = target_loss(results)
    if target is not None:
        loss_ax.axhline(target, color="0.4", ls=":", lw=1, label="target: ReLU's final loss")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (epoch mean)")
    loss_ax.set_title("Training loss (Clevert et al. 2015, Fig. 1b)")
    loss_ax.legend()
    mean_ax.axhline(0.0, color="0.6", lw=0.8)
    mean_ax.set_xlabel("hidden layer")
    mean_ax.set_ylabel("median over units of the unit's mean activation")
    mean_ax.set_title("Unit mean activation after training (Fig. 1a)")
    mean_ax.legend()
    return fig


def tables(results: Results) -> list[Table]:
    """Per activation: final loss, epochs to target, accuracy, unit mean activation."""
    target = target_loss(results)
    rows = []
    for name in ACTIVATIONS:
        runs = results.select(activation=name)
        if not runs:
            continue
        loss, loss_se = mean_se(final_losses(results, name))
        accs = [r.result["final"]["test_accuracy"] for r in runs if r.result["final"]]
        means = [m for r in runs if (m := unit_mean(r)) is not None]
        abs_means = [m for r in runs if (m := unit_mean(r, "unit_mean_abs_median")) is not None]
        rows.append(
            [
                name,
                loss,
                loss_se,
                epochs_to(mean_curve(results, name), target) if target is not None else None,
                statistics.fmean(accs) if accs else None,
                statistics.fmean(means) if means else None,
                statistics.fmean(abs_means) if abs_means else None,
            ]
        )
    return [
        Table(
            f"Mean over seeds; target loss = ReLU's final training loss ({fmt(target)})",
            [
                "activation",
                "final train loss",
                "± se",
                "epochs to target",
                "test accuracy",
                "|median unit mean|",
                "median |unit mean|",
            ],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="ELU vs ReLU vs leaky ReLU: learning speed and mean activations",
    claim="ELU learns faster than ReLU and keeps mean activations closer to zero",
    literature="Clevert, Unterthiner & Hochreiter 2015 (§4.1, Fig. 1)",
    setup=(
        "784 → 8 × 128 → 10 (Clevert et al.'s MNIST network) with ELU, ReLU and leaky ReLU "
        "(α = 0.01), He init, biases 0; SGD lr 0.01 without momentum, batch 64; the first "
        "20,000 Fashion-MNIST training images (pixels in [0, 1]) for 10 epochs (3,130 steps), "
        "2,000 test images. Clevert et al. trained on all of MNIST for longer; the subset keeps "
        "the study within its time budget, and the claim is about the early learning speed. "
        "Quick: 3 × 16, 256 images, 2 epochs."
    ),
    grid=grid,
    measure=("training loss per epoch", "epochs to target loss", "median unit mean activation"),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "Left: training loss per epoch (thin: seeds); right: median unit mean activation "
            "per hidden layer after training",
            figure_loss,
        ),
    ),
    tables=tables,
    default_seeds=3,
)
