"""``leaky-vs-relu``: dead units and accuracy of ReLU and leaky ReLU across learning rates.

The seed: ReLU units can die (output 0 for every input, so they get no gradient and never
recover); a leaky ReLU, max(αz, z), keeps a gradient α for z < 0, and "leaky ReLUs outperform
strict ReLUs". Maas et al. (2013) introduced α = 0.01; Xu et al. (2015), "Empirical evaluation of
rectified activations in convolutional network", report leaky ReLU (α = 1/5.5 ≈ 0.18) beating
ReLU.

Measured per activation × learning rate × seed, after training: the fraction of *dead* units per
hidden layer (f'(z) = 0 for each of 300 fixed test images) and of *inactive* ones (z ≤ 0 for all of
them: a dead unit for ReLU, a unit passing only α·z for leaky ReLU), and the test accuracy.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import colors, fmt, fmt_list, new_figure, seeds, two_se_status
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

NAME = "leaky-vs-relu"
ACTIVATIONS: dict[str, Any] = {
    "relu": "relu",
    "leaky 0.01": {"name": "leaky_relu", "alpha": 0.01},
    "leaky 0.2": {"name": "leaky_relu", "alpha": 0.2},
}
LRS = (0.01, 0.03, 0.1)
DEAD_MIN = 0.01  # at least 1 % of the units dead: a measurable loss


def grid(options: Options) -> list[RunSpec]:
    """3 activations × lr 0.01, 0.03, 0.1 × seeds: 5 × 256, He init, SGD momentum 0.9, batch 64.

    Full: first 10,000 training images × 2 epochs (313 steps), 2,000 test images. Quick: 3 × 32,
    256 images, 1 epoch.
    """
    if options.quick:
        depth, width, n_train, n_test, epochs = 3, 32, 256, 200, 1
    else:
        depth, width, n_train, n_test, epochs = 5, 256, 10_000, 2_000, 2
    specs = []
    for name, activation in ACTIVATIONS.items():
        for lr in LRS:
            for seed in seeds(options.seeds):
                specs.append(
                    {
                        "task": "train",
                        "label": {"activation": name, "lr": lr, "seed": seed},
                        "model": {
                            "input_dim": 784,
                            "hidden": [width] * depth,
                            "output_dim": 10,
                            "activation": activation,
                            "initializer": "he_normal",
                        },
                        "data": options.data(train=n_train, test=n_test),
                        "optimizer": {"name": "momentum", "lr": lr, "momentum": 0.9},
                        "epochs": epochs,
                        "batch_size": 64,
                        "seed": seed,
                        "measure": {"units_end": True, "probe_batch": 300, "loss_window": 10},
                        "quick": options.quick,
                    }
                )
    return specs


def accuracy(record: RunRecord) -> float:
    """Final test accuracy; a diverged run counts as chance (0.10)."""
    final = record.result["final"]
    return 0.1 if final is None else float(final["test_accuracy"])


def unit_fraction(record: RunRecord, field: str) -> float | None:
    """Mean over hidden layers of ``dead`` or ``inactive`` after training (None if diverged)."""
    units = record.result.get("units_end")
    if not units:
        return None
    values = [u[field] for u in units if u[field] is not None]
    return statistics.fmean(values) if values else None


def _dead(results: Results, lr: float) -> list[float | None]:
    return [unit_fraction(r, "dead") for r in results.select(activation="relu", lr=lr)]


def _judge_dead(results: Results) -> tuple[Status, str]:
    lrs = [lr for lr in LRS if results.select(activation="relu", lr=lr)]
    # The highest learning rate at which no ReLU run diverged: dead units need a live network.
    usable = [lr for lr in lrs if all(d is not None for d in _dead(results, lr))]
    if len(usable) < 2:
        return "inconclusive", (
            f"ReLU runs diverged at learning rates {[lr for lr in lrs if lr not in usable]}; "
            "fewer than two learning rates to compare"
        )
    low, high = usable[0], usable[-1]
    dead_low = [float(d) for d in _dead(results, low) if d is not None]
    dead_high = [float(d) for d in _dead(results, high) if d is not None]
    more = [h > lo and h >= DEAD_MIN for h, lo in zip(dead_high, dead_low, strict=True)]
    fewer = [h <= lo for h, lo in zip(dead_high, dead_low, strict=True)]
    leaky = [unit_fraction(r, "dead") for r in results.select(activation="leaky 0.01", lr=high)]
    evidence = (
        f"ReLU dead-unit fraction at lr {low}: {fmt_list(dead_low)}, at lr {high}: "
        f"{fmt_list(dead_high)} (per seed); leaky 0.01 at lr {high}: {fmt_list(leaky)}"
    )
    if all(more):
        return "confirmed", evidence
    if all(fewer):
        return "refuted", evidence
    return "inconclusive", evidence


def accuracy_difference(results: Results, name: str) -> tuple[float, float, int]:
    """Mean and standard error of acc(name) − acc(relu), paired by learning rate and seed."""
    diffs = []
    for lr in LRS:
        relu = {r.spec["seed"]: accuracy(r) for r in results.select(activation="relu", lr=lr)}
        for r in results.select(activation=name, lr=lr):
            if r.spec["seed"] in relu:
                diffs.append(accuracy(r) - relu[r.spec["seed"]])
    mean, se = mean_se(diffs)
    return mean, se, len(diffs)


def _judge_accuracy(results: Results) -> tuple[Status, str]:
    statuses = []
    parts = []
    for name in ("leaky 0.01", "leaky 0.2"):
        mean, se, n = accuracy_difference(results, name)
        statuses.append(two_se_status(mean, se))
        parts.append(f"{name} − ReLU: {fmt(mean)} ± {fmt(se)} (se, {n} pairs)")
    status: Status = "inconclusive"
    if all(s == "confirmed" for s in statuses):
        status = "confirmed"
    elif all(s == "refuted" for s in statuses):
        status = "refuted"
    return status, "test accuracy difference " + "; ".join(parts)


CLAIMS = (
    Claim(
        "ReLU units die during training, more of them at a higher learning rate; leaky ReLU "
        "units cannot die (their gradient is α > 0 for z < 0)",
        "the seed ('neurons die … leaky ReLU … solves this'); Maas et al. 2013",
        f"dead ⇔ f'(z) = 0 for all 300 probe images; per seed, compare ReLU's dead fraction "
        f"(mean over hidden layers) at the lowest and the highest learning rate without "
        f"divergence; confirmed if it is higher at the highest and ≥ {DEAD_MIN} in every seed, "
        f"refuted if it is not higher in any seed, inconclusive otherwise",
        _judge_dead,
    ),
    Claim(
        "Leaky ReLU (α = 0.01 and α = 0.2) reaches a higher test accuracy than ReLU",
        "the seed ('leaky ReLUs outperform strict ReLUs'); Xu et al. 2015 (leaky ReLU beats "
        "ReLU on CIFAR-10/100 and NDSB)",
        "per α, the accuracy difference leaky − ReLU paired by learning rate and seed (diverged "
        "= 0.10): its mean m and standard error se; an α is better if m > 2 se, worse if m < −2 "
        "se; confirmed if both α are better, refuted if both are worse, inconclusive otherwise",
        _judge_accuracy,
    ),
)


def _mean_by(results: Results, name: str, value: Any) -> list[float | None]:
    out = []
    for lr in LRS:
        xs = [value(r) for r in results.select(activation=name, lr=lr)]
        finite = [x for x in xs if x is not None]
        out.append(statistics.fmean(finite) if finite else None)
    return out


def figure_units(results: Results) -> Figure:
    """Dead (ReLU) and inactive (all) unit fractions and test accuracy against learning rate."""
    fig, axes = new_figure(12, 4.2, 1, 2)
    dead_ax, acc_ax = axes[0]
    for color, name in zip(colors(len(ACTIVATIONS)), ACTIVATIONS, strict=True):
        inactive = _mean_by(results, name, lambda r: unit_fraction(r, "inactive"))
        dead = _mean_by(results, name, lambda r: unit_fraction(r, "dead"))
        xs = [lr for lr, v in zip(LRS, inactive, strict=True) if v is not None]
        dead_ax.plot(
            xs,
            [v for v in inactive if v is not None],
            color=color,
            ls="--",
            marker="o",
            label=f"{name}: z ≤ 0 on every image",
        )
        xs_d = [lr for lr, v in zip(LRS, dead, strict=True) if v is not None]
        dead_ax.plot(
            xs_d,
            [v for v in dead if v is not None],
            color=color,
            marker="s",
            label=f"{name}: dead (f' = 0)",
        )
        acc_ax.plot(LRS, _mean_by(results, name, accuracy), color=color, marker="o", label=name)
    for ax in (dead_ax, acc_ax):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (SGD, momentum 0.9)")
        ax.legend(fontsize=7)
    dead_ax.set_ylabel("fraction of hidden units (mean over layers)")
    dead_ax.set_title("Dead and inactive units after training")
    acc_ax.set_ylabel("test accuracy (diverged = 0.10)")
    acc_ax.set_title("Test accuracy")
    return fig


def tables(results: Results) -> list[Table]:
    """Per activation and learning rate: accuracy, dead and inactive fractions."""
    rows = []
    for name in ACTIVATIONS:
        for lr in LRS:
            runs = results.select(activation=name, lr=lr)
            if not runs:
                continue
            acc, se = mean_se([accuracy(r) for r in runs])
            dead = [d for r in runs if (d := unit_fraction(r, "dead")) is not None]
            inactive = [d for r in runs if (d := unit_fraction(r, "inactive")) is not None]
            rows.append(
                [
                    name,
                    lr,
                    acc,
                    se,
                    statistics.fmean(dead) if dead else None,
                    statistics.fmean(inactive) if inactive else None,
                    sum(1 for r in runs if r.result["diverged"]),
                ]
            )
    return [
        Table(
            "Mean over seeds: test accuracy (± se), fraction of dead units (f'(z) = 0 on all 300 "
            "probe images) and of inactive units (z ≤ 0 on all of them), diverged runs",
            ["activation", "lr", "test accuracy", "± se", "dead", "inactive", "diverged"],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="Dead units: ReLU vs leaky ReLU across learning rates",
    claim="ReLU units die, more so at high learning rates, and leaky ReLU outperforms ReLU",
    literature="the seed; Maas et al. 2013; Xu et al. 2015",
    setup=(
        "784 → 5 × 256 → 10 with ReLU, leaky ReLU α = 0.01 and α = 0.2, He init, biases 0; SGD "
        "with momentum 0.9 at learning rates 0.01, 0.03, 0.1 (in a pilot at 0.5 every network "
        "diverged), batch 64; the first 10,000 Fashion-MNIST training images (pixels in "
        "[0, 1]) for 2 epochs, 2,000 test images. Quick: 3 × 32, 256 images, 1 epoch."
    ),
    grid=grid,
    measure=("dead and inactive unit fractions after training", "test accuracy"),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "Left: units dead (ReLU: z ≤ 0 on every probe image) and inactive, against the "
            "learning rate; right: test accuracy",
            figure_units,
        ),
    ),
    tables=tables,
    default_seeds=3,
)
