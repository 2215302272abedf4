"""``deep-relu``: a 30-layer ReLU network trains with He init and stalls with naive ones.

He et al. (2015), Fig. 3: a 30-layer ReLU network initialized with their method converges,
while with Xavier (Glorot) it "completely stalls"; §2.2 / Fig. 2 note that std 0.01 stalls deep
networks too. Mishkin & Matas (2016): LSUV (orthonormal, then each layer's output scaled to unit
variance on a batch) trains very deep networks as well.

Measured per initializer and seed: the back-propagated gradient std of every layer at step 0
(probe of 300 fixed test images), the training loss of every step (means of 10), and the test
accuracy after training.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import (
    INITS,
    all_or_none,
    colors,
    fmt_list,
    init_name,
    median,
    new_figure,
    plot_positive,
    ratio,
    seeds,
    steady,
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

NAME = "deep-relu"
INIT_KEYS = ("he", "glorot", "normal_0.01", "lsuv")
TRAINS = 0.5  # test accuracy ≥ 5× chance: the network learned
AT_CHANCE = 0.15  # test accuracy ≤ 0.15: chance (0.10) plus sampling noise on ≥ 1,000 images
LR = 0.003


def grid(options: Options) -> list[RunSpec]:
    """4 initializers × seeds; 30 × 256 ReLU, SGD momentum 0.9, lr 0.003, batch 128.

    Full: first 15,000 training images × 3 epochs (351 steps), 2,000 test images. Quick: 6 × 32,
    256 images, 1 epoch of batch 64.
    """
    if options.quick:
        depth, width, n_train, n_test, epochs, batch = 6, 32, 256, 200, 1, 64
    else:
        depth, width, n_train, n_test, epochs, batch = 30, 256, 15_000, 2_000, 3, 128
    specs = []
    for key in INIT_KEYS:
        for seed in seeds(options.seeds):
            specs.append(
                {
                    "task": "train",
                    "label": {"init": key, "seed": seed},
                    "model": {
                        "input_dim": 784,
                        "hidden": [width] * depth,
                        "output_dim": 10,
                        "activation": "relu",
                        "initializer": INITS[key][1],
                    },
                    "lsuv": key == "lsuv",
                    "data": options.data(train=n_train, test=n_test),
                    "optimizer": {"name": "momentum", "lr": LR, "momentum": 0.9},
                    "epochs": epochs,
                    "batch_size": batch,
                    "seed": seed,
                    "measure": {"probe_start": True, "probe_batch": 300, "loss_window": 10},
                    "quick": options.quick,
                }
            )
    return specs


def accuracy(record: RunRecord) -> float:
    """Final test accuracy; a diverged run counts as chance (0.10)."""
    final = record.result["final"]
    return 0.1 if final is None else float(final["test_accuracy"])


def gradient_ratio(record: RunRecord) -> float | None:
    """std(∂L/∂z) of hidden layer 1 over that of the last hidden layer, at step 0."""
    hidden = [layer for layer in record.result["probe_start"] if layer["activation"] is not None]
    return ratio(hidden[0]["grad_out_std"], hidden[-1]["grad_out_std"])


def _accs(results: Results, key: str) -> list[float]:
    return [accuracy(r) for r in results.select(init=key)]


def _acc_text(results: Results, key: str) -> str:
    accs = _accs(results, key)
    ratios = [gradient_ratio(r) for r in results.select(init=key)]
    return (
        f"{init_name(key)}: test accuracy {fmt_list(accs)}, step-0 gradient ratio layer 1/"
        f"layer L {fmt_list(ratios)}"
    )


def _judge_he_vs_tiny(results: Results) -> tuple[Status, str]:
    he = [a >= TRAINS for a in _accs(results, "he")]
    tiny = [a <= AT_CHANCE for a in _accs(results, "normal_0.01")]
    evidence = f"{_acc_text(results, 'he')}; {_acc_text(results, 'normal_0.01')}"
    if all(he) and all(tiny):
        return "confirmed", evidence
    if not any(he) or not any(tiny):
        return "refuted", evidence
    return "inconclusive", evidence


def _judge_stalls(key: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        flags = [a <= AT_CHANCE for a in _accs(results, key)]
        trained = [a >= TRAINS for a in _accs(results, key)]
        status: Status = "confirmed" if flags and all(flags) else "inconclusive"
        if trained and all(trained):
            status = "refuted"
        return status, _acc_text(results, key)

    return judge


def _judge_trains(key: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        flags = [a >= TRAINS for a in _accs(results, key)]
        return all_or_none(flags), _acc_text(results, key)

    return judge


def _judge_gradients(results: Results) -> tuple[Status, str]:
    he = [steady(gradient_ratio(r)) for r in results.select(init="he")]
    tiny = [(g := gradient_ratio(r)) is None or g < 0.1 for r in results.select(init="normal_0.01")]
    evidence = (
        f"He: {fmt_list([gradient_ratio(r) for r in results.select(init='he')])}; "
        f"N(0,0.01²): {fmt_list([gradient_ratio(r) for r in results.select(init='normal_0.01')])}"
    )
    if all(he) and all(tiny):
        return "confirmed", evidence
    if not any(he) or not any(tiny):
        return "refuted", evidence
    return "inconclusive", evidence


_RULE_ACC = (
    f"trains ⇔ test accuracy ≥ {TRAINS}; at chance ⇔ test accuracy ≤ {AT_CHANCE} (a diverged "
    "run counts as 0.10)"
)

CLAIMS = (
    Claim(
        "A He-initialized 30-layer ReLU network trains while one initialized with N(0,0.01²) "
        "stays at chance",
        "He et al. 2015, Fig. 3 and §2.2 (std 0.01 and Xavier stall deep ReLU nets; their init "
        "converges)",
        _RULE_ACC + "; confirmed if He trains and N(0,0.01²) is at chance in every seed, refuted "
        "if either fails in every seed, inconclusive otherwise",
        _judge_he_vs_tiny,
    ),
    Claim(
        "At step 0 the back-propagated gradient reaches layer 1 undiminished with He init "
        "(ratio layer 1/layer 30 within [0.1, 10]) but vanishes with N(0,0.01²) (ratio < 0.1)",
        "He et al. 2015, §2.2 (backward variance Π ½ n_l Var[w_l])",
        "per seed; confirmed if both hold in every seed, refuted if either fails in every seed, "
        "inconclusive otherwise",
        _judge_gradients,
    ),
    Claim(
        "Glorot (Xavier) initialization stalls the 30-layer ReLU network",
        "He et al. 2015, Fig. 3 (Xavier: 'completely stalls' at 30 layers)",
        _RULE_ACC + "; confirmed if at chance in every seed, refuted if it trains in every seed, "
        "inconclusive otherwise",
        _judge_stalls("glorot"),
    ),
    Claim(
        "LSUV initialization trains the 30-layer ReLU network",
        "Mishkin & Matas 2016 (LSUV matches or beats He init on deep nets)",
        _RULE_ACC + "; confirmed if it trains in every seed, refuted if in none, inconclusive "
        "otherwise",
        _judge_trains("lsuv"),
    ),
)


def figure_loss(results: Results) -> Figure:
    """Training loss per step (means of 10 steps), one colour per initializer, one line per seed."""
    fig, axes = new_figure(9, 4.5)
    ax = axes[0][0]
    for color, key in zip(colors(len(INIT_KEYS)), INIT_KEYS, strict=True):
        for k, record in enumerate(results.select(init=key)):
            ax.plot(
                window_steps(record.result),
                record.result["losses"],
                color=color,
                alpha=0.8,
                lw=1,
                label=init_name(key) if k == 0 else None,
            )
    ax.axhline(2.302585, color="0.5", ls=":", lw=1, label="chance (ln 10)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean of 10 steps)")
    ax.set_title("30-layer ReLU network: training loss by initialization")
    ax.legend()
    return fig


def figure_gradients(results: Results) -> Figure:
    """Back-propagated gradient std per layer at step 0 (log), median over seeds."""
    fig, axes = new_figure(9, 4.5)
    ax = axes[0][0]
    for color, key in zip(colors(len(INIT_KEYS)), INIT_KEYS, strict=True):
        runs = results.select(init=key)
        if not runs:
            continue
        per_layer = zip(
            *[[layer["grad_out_std"] for layer in r.result["probe_start"]] for r in runs],
            strict=True,
        )
        ys = [median(list(v)) for v in per_layer]
        plot_positive(ax, range(1, len(ys) + 1), ys, color=color, marker=".", label=init_name(key))
    ax.set_yscale("log")
    ax.set_xlabel("layer (1 = next to the input; last = logits)")
    ax.set_ylabel("std of ∂L/∂z at step 0")
    ax.set_title("Back-propagated gradient by depth before training (median over seeds)")
    ax.legend()
    return fig


def tables(results: Results) -> list[Table]:
    """Accuracy, final loss and step-0 gradient ratio per initializer."""
    rows = []
    for key in INIT_KEYS:
        runs = results.select(init=key)
        if not runs:
            continue
        acc, se = mean_se([accuracy(r) for r in runs])
        last = [r.result["losses"][-1] for r in runs if r.result["losses"]]
        rows.append(
            [
                init_name(key),
                acc,
                se,
                statistics.fmean(last) if last else None,
                median([gradient_ratio(r) for r in runs]),
                sum(1 for r in runs if r.result["diverged"]),
            ]
        )
    return [
        Table(
            "Per initializer (mean over seeds): test accuracy and its standard error, last "
            "training loss, step-0 gradient ratio layer 1 / last hidden layer (median)",
            ["init", "test accuracy", "± se", "last loss", "gradient ratio", "diverged runs"],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="Training a 30-layer ReLU network: He vs Glorot vs N(0,0.01²) vs LSUV",
    claim="He initialization lets a 30-layer ReLU network train; N(0,0.01²) and Glorot leave it "
    "stalled at chance",
    literature="He et al. 2015 (Fig. 3, §2.2); Mishkin & Matas 2016",
    setup=(
        "784 → 30 × 256 ReLU → 10, biases 0; SGD with momentum 0.9, lr 0.003 for every init (at "
        "0.01 a pilot's He-initialized runs spiked back to the chance loss), batch 128; the "
        "first 15,000 Fashion-MNIST training images (pixels in [0, 1]) for 3 epochs (351 steps) "
        "and 2,000 test images: a subset and few epochs, since the claim is whether training "
        "starts at all. Quick: 6 × 32, 256 images, 1 epoch."
    ),
    grid=grid,
    measure=("step-0 grad_out_std per layer", "training loss per step", "test accuracy"),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "Training loss: He and LSUV fall below chance, N(0,0.01²) stays at ln 10 "
            "(He et al. 2015, Fig. 3)",
            figure_loss,
        ),
        FigureSpec(
            "Back-propagated gradient std by layer at step 0: flat for He/LSUV, vanishing toward "
            "the input for N(0,0.01²) and Glorot",
            figure_gradients,
        ),
    ),
    tables=tables,
    default_seeds=3,
)
