"""``selu``: self-normalizing networks keep mean 0 and std 1 through 100 layers, and train.

Klambauer, Unterthiner, Mayr & Hochreiter (2017), "Self-normalizing neural networks": with
SELU, selu(z) = λ·z for z > 0 and λ·α·(eᶻ − 1) otherwise (λ ≈ 1.0507, α ≈ 1.6733), weights of
variance 1/n (LeCun) and standardized inputs, the map from one layer's (mean, variance) to the
next has an attracting fixed point at (0, 1) (Theorem 1), so activations stay normalized through
any depth without batch normalization, and very deep feed-forward networks train.

Measured: (a) at initialization, the mean and std of every hidden layer's activations on 256
fixed standardized test images, for SELU/LeCun, ReLU/He and ReLU/He with BN; (b) training the
three 100-layer networks: loss per step and test accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import (
    all_or_none,
    colors,
    fmt,
    fmt_list,
    new_figure,
    seeds,
    two_se_status,
    window_steps,
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

NAME = "selu"
NETWORKS: dict[str, dict[str, Any]] = {
    "SELU/LeCun": {"activation": "selu", "initializer": "lecun_normal", "batch_norm": None},
    "ReLU/He": {"activation": "relu", "initializer": "he_normal", "batch_norm": None},
    "ReLU/He+BN": {"activation": "relu", "initializer": "he_normal", "batch_norm": "before"},
}
STD_BAND = (0.8, 1.2)
MEAN_BAND = (-0.2, 0.2)
TRAINS = 0.5


def grid(options: Options) -> list[RunSpec]:
    """(a) profiles of 100 × 256 networks; (b) training of 100 × 128 networks.

    (b): Adam, lr 1e-4, batch 128, the first 10,000 standardized training images for 3 epochs
    (237 steps), 2,000 test images. Quick: 10 × 32 profiles, 6 × 16 training on 256
    images for 1 epoch.
    """
    q = options.quick
    profile_depth, profile_width = (10, 32) if q else (100, 256)
    train_depth, train_width = (6, 16) if q else (100, 128)
    specs: list[RunSpec] = []
    for name, net in NETWORKS.items():
        for seed in seeds(options.seeds):
            specs.append(
                {
                    "task": "profile",
                    "label": {"part": "init", "network": name, "seed": seed},
                    "model": {
                        "input_dim": 784,
                        "hidden": [profile_width] * profile_depth,
                        "output_dim": 10,
                        "momentum": 0.9,
                        **net,
                    },
                    "data": options.data(train=0, test=0, standardize=True),
                    "batch": 64 if q else 256,
                    "seed": seed,
                    "quick": q,
                }
            )
    for name, net in NETWORKS.items():
        for seed in seeds(options.seeds):
            specs.append(
                {
                    "task": "train",
                    "label": {"part": "train", "network": name, "seed": seed},
                    "model": {
                        "input_dim": 784,
                        "hidden": [train_width] * train_depth,
                        "output_dim": 10,
                        "momentum": 0.9,
                        **net,
                    },
                    "data": options.data(
                        train=256 if q else 10_000, test=200 if q else 2_000, standardize=True
                    ),
                    "optimizer": {"name": "adam", "lr": 1e-4},
                    "epochs": 1 if q else 3,
                    "batch_size": 64 if q else 128,
                    "seed": seed,
                    "measure": {"loss_window": 5},
                    "quick": q,
                }
            )
    return specs


def hidden_stats(record: RunRecord, field: str) -> list[float | None]:
    """``act_mean`` or ``act_std`` of every hidden layer of a profile run."""
    return [layer[field] for layer in record.result["layers"] if layer["activation"] is not None]


def _inside(values: list[float | None], band: tuple[float, float]) -> bool:
    lo, hi = band
    return all(v is not None and lo <= v <= hi for v in values)


def _judge_profile(results: Results) -> tuple[Status, str]:
    runs = results.select(part="init", network="SELU/LeCun")
    flags = []
    parts = []
    for r in runs:
        stds, means = hidden_stats(r, "act_std"), hidden_stats(r, "act_mean")
        flags.append(_inside(stds, STD_BAND) and _inside(means, MEAN_BAND))
        finite_stds = [s for s in stds if s is not None]
        finite_means = [m for m in means if m is not None]
        parts.append(
            f"seed {r.spec['seed']}: std in [{fmt(min(finite_stds, default=None))}, "
            f"{fmt(max(finite_stds, default=None))}], mean in "
            f"[{fmt(min(finite_means, default=None))}, {fmt(max(finite_means, default=None))}] "
            f"over {len(stds)} layers"
        )
    return all_or_none(flags), "SELU/LeCun: " + "; ".join(parts)


def accuracy(record: RunRecord) -> float:
    """Final test accuracy; a diverged run counts as chance (0.10)."""
    final = record.result["final"]
    return 0.1 if final is None else float(final["test_accuracy"])


def _accs(results: Results, name: str) -> list[float]:
    return [accuracy(r) for r in results.select(part="train", network=name)]


def _judge_trains(results: Results) -> tuple[Status, str]:
    accs = _accs(results, "SELU/LeCun")
    return all_or_none([a >= TRAINS for a in accs]), (
        f"SELU/LeCun test accuracy {fmt_list(accs)}; ReLU/He {fmt_list(_accs(results, 'ReLU/He'))}"
        f"; ReLU/He+BN {fmt_list(_accs(results, 'ReLU/He+BN'))}"
    )


def _judge_vs(other: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        base = {r.spec["seed"]: accuracy(r) for r in results.select(part="train", network=other)}
        diffs = [
            accuracy(r) - base[r.spec["seed"]]
            for r in results.select(part="train", network="SELU/LeCun")
            if r.spec["seed"] in base
        ]
        mean, se = mean_se(diffs)
        return two_se_status(mean, se), (
            f"SELU − {other} test accuracy {fmt(mean)} ± {fmt(se)} (se, paired by seed); "
            f"SELU {fmt_list(_accs(results, 'SELU/LeCun'))}, {other} "
            f"{fmt_list(_accs(results, other))}"
        )

    return judge


CLAIMS = (
    Claim(
        "With SELU and LeCun initialization on standardized inputs every one of 100 layers keeps "
        "its activation std within [0.8, 1.2] and its mean within [−0.2, 0.2]",
        "Klambauer et al. 2017, Theorem 1 (attracting fixed point (μ, ν) = (0, 1))",
        "per seed, every hidden layer's act_std ∈ [0.8, 1.2] and act_mean ∈ [−0.2, 0.2] at "
        "initialization; confirmed if so in every seed, refuted if in none, inconclusive "
        "otherwise",
        _judge_profile,
    ),
    Claim(
        "A 100-layer SELU network trains without batch normalization",
        "Klambauer et al. 2017, §4 (self-normalizing networks up to 32 layers on UCI, Tox21; "
        "deep SNNs train where other FNNs struggle)",
        f"trains ⇔ test accuracy ≥ {TRAINS}; confirmed if it trains in every seed, refuted if "
        f"in none, inconclusive otherwise",
        _judge_trains,
    ),
    Claim(
        "At 100 layers SELU/LeCun trains better than ReLU/He without normalization",
        "Klambauer et al. 2017, §4 and Fig. 1 (SNNs train deep networks where ReLU FNNs struggle)",
        "d = test accuracy SELU − ReLU/He paired by seed (diverged = 0.10); confirmed if "
        "m > 2 se, refuted if m < −2 se, inconclusive otherwise",
        _judge_vs("ReLU/He"),
    ),
    Claim(
        "At 100 layers SELU/LeCun trains at least as well as ReLU/He with batch normalization",
        "Klambauer et al. 2017, Fig. 1 (SNN training losses below those of BN networks); deep "
        "batch-normalized networks without skip connections have exploding gradients at "
        "initialization (Yang et al. 2019, 'A mean field theory of batch normalization')",
        "d = test accuracy SELU − ReLU/He+BN paired by seed; confirmed if m > 2 se (better), "
        "refuted if m < −2 se, inconclusive otherwise",
        _judge_vs("ReLU/He+BN"),
    ),
)


def figure_profile(results: Results) -> Figure:
    """Mean and std of each hidden layer's activations at initialization, per network."""
    fig, axes = new_figure(12, 4.2, 1, 2)
    mean_ax, std_ax = axes[0]
    for color, name in zip(colors(len(NETWORKS)), NETWORKS, strict=True):
        for k, r in enumerate(results.select(part="init", network=name)):
            for ax, field in ((mean_ax, "act_mean"), (std_ax, "act_std")):
                ys = hidden_stats(r, field)
                xs = [i for i, y in enumerate(ys, start=1) if y is not None]
                ax.plot(
                    xs,
                    [y for y in ys if y is not None],
                    color=color,
                    lw=1,
                    label=name if k == 0 else None,
                )
    std_ax.axhspan(*STD_BAND, color="tab:green", alpha=0.1, label="[0.8, 1.2]")
    mean_ax.axhspan(*MEAN_BAND, color="tab:green", alpha=0.1, label="[−0.2, 0.2]")
    mean_ax.set_title("activation mean by layer at initialization")
    std_ax.set_title("activation std by layer at initialization")
    std_ax.set_yscale("log")
    for ax in (mean_ax, std_ax):
        ax.set_xlabel("hidden layer")
        ax.legend(fontsize=8)
    return fig


def figure_training(results: Results) -> Figure:
    """Training loss per step of the 100-layer networks (one line per seed)."""
    fig, axes = new_figure(9, 4.2)
    ax = axes[0][0]
    for color, name in zip(colors(len(NETWORKS)), NETWORKS, strict=True):
        for k, r in enumerate(results.select(part="train", network=name)):
            ax.plot(
                window_steps(r.result),
                r.result["losses"],
                color=color,
                lw=1,
                label=name if k == 0 else None,
            )
    ax.axhline(2.302585, color="0.5", ls=":", lw=1, label="chance (ln 10)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean of 5 steps)")
    ax.set_title("Training 100-layer networks")
    ax.legend()
    return fig


def tables(results: Results) -> list[Table]:
    """Per network: std/mean range at init, test accuracy."""
    rows = []
    for name in NETWORKS:
        profiles = results.select(part="init", network=name)
        stds = [s for r in profiles for s in hidden_stats(r, "act_std") if s is not None]
        means = [m for r in profiles for m in hidden_stats(r, "act_mean") if m is not None]
        accs = _accs(results, name)
        acc, se = mean_se(accs) if accs else (None, None)
        rows.append(
            [
                name,
                min(stds, default=None),
                max(stds, default=None),
                min(means, default=None),
                max(means, default=None),
                acc,
                se,
                sum(1 for r in results.select(part="train", network=name) if r.result["diverged"]),
            ]
        )
    return [
        Table(
            "Per network: range over layers and seeds of the activation std and mean at "
            "initialization; test accuracy after training (mean ± se over seeds)",
            [
                "network",
                "min std",
                "max std",
                "min mean",
                "max mean",
                "test accuracy",
                "± se",
                "diverged",
            ],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="SELU: self-normalization through 100 layers",
    claim="SELU with LeCun init keeps mean ≈ 0 and std ≈ 1 through 100 layers and trains a "
    "100-layer network without batch normalization",
    literature="Klambauer, Unterthiner, Mayr & Hochreiter 2017",
    setup=(
        "(a) 784 → 100 × 256 → 10 at initialization: SELU/LeCun normal, ReLU/He normal, "
        "ReLU/He normal with BN before each activation; 256 fixed test images standardized with "
        "the training split's pixel mean and std (Fashion-MNIST). (b) the same three as "
        "100 × 128 networks, Adam, lr 1e-4, batch 128, the first 10,000 standardized training "
        "images for 3 epochs (237 steps), 2,000 test images (in pilots SGD with momentum 0.9 "
        "diverged or oscillated at lr 0.01 and stalled at 0.001–0.003 for all three). Quick: "
        "10 × 32 profiles, 6 × 16 training on 256 images."
    ),
    grid=grid,
    measure=("act_mean and act_std per layer at init", "training loss", "test accuracy"),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "(a) Activation mean and std per hidden layer at initialization (one line per seed)",
            figure_profile,
        ),
        FigureSpec("(b) Training loss of the 100-layer networks", figure_training),
    ),
    tables=tables,
    default_seeds=3,
)
