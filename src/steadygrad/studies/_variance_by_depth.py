"""``variance-by-depth``: activation and back-propagated gradient std by depth at initialization.

Glorot & Bengio (2010), Figs. 6–7: with the standard initialization U[±1/√n] the activations and
the back-propagated gradients of a tanh network shrink layer after layer; with the normalized
(Glorot) initialization they keep their spread. He et al. (2015), §2.2: for ReLU the forward
variance obeys Var[y_L] = Var[y_1] · Π_l (½ n_l Var[w_l]), so Var[w_l] = 2/n_l keeps it constant,
and the backward variance likewise. Klambauer et al. (2017): SELU with Var[w] = 1/n (LeCun) has an
attracting fixed point at mean 0, variance 1.

Measured: one forward and backward pass of 256 fixed test images through a 50 × 256 network
(standardized inputs) for every initializer × activation, with
``forward ratio = std(a_50) / std(a_1)`` (activations of the last and first hidden layers) and
``backward ratio = std(∂L/∂z_1) / std(∂L/∂z_50)`` (back-propagated gradients reaching the first
hidden layer relative to the last). A pair is *steady* when both ratios are finite and in
[0.1, 10] (the std changes by at most 10× over the whole network, ≤ 4.7 % per layer on average).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import (
    INITS,
    STEADY_BAND,
    all_or_none,
    colors,
    empty_panel,
    fmt_list,
    init_name,
    median,
    new_figure,
    plot_positive,
    ratio,
    seeds,
    steady,
)
from steadygrad.studies._runner import RunRecord, RunSpec
from steadygrad.studies._study import Claim, FigureSpec, Options, Results, Status, Study, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "variance-by-depth"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "selu")
INIT_KEYS = ("normal_1", "normal_0.01", "uniform_fan_in", "glorot", "he", "lecun", "orthogonal")
NAIVE = ("normal_1", "normal_0.01", "uniform_fan_in")


def grid(options: Options) -> list[RunSpec]:
    """7 initializers × 4 activations × seeds; quick: 8 × 32 layers, 64 images."""
    depth, width, batch = (8, 32, 64) if options.quick else (50, 256, 256)
    specs = []
    for activation in ACTIVATIONS:
        for key in INIT_KEYS:
            for seed in seeds(options.seeds):
                specs.append(
                    {
                        "task": "profile",
                        "label": {"init": key, "activation": activation, "seed": seed},
                        "model": {
                            "input_dim": 784,
                            "hidden": [width] * depth,
                            "output_dim": 10,
                            "activation": activation,
                            "initializer": INITS[key][1],
                        },
                        "data": options.data(train=0, test=0, standardize=True),
                        "batch": batch,
                        "seed": seed,
                        "quick": options.quick,
                    }
                )
    return specs


def _hidden(record: RunRecord) -> list[dict[str, Any]]:
    return [layer for layer in record.result["layers"] if layer["activation"] is not None]


def ratios(record: RunRecord) -> tuple[float | None, float | None]:
    """(forward ratio, backward ratio) of one profile run; None where not finite."""
    hidden = _hidden(record)
    first, last = hidden[0], hidden[-1]
    forward = ratio(last["act_std"], first["act_std"])
    backward = ratio(first["grad_out_std"], last["grad_out_std"])
    return forward, backward


def classify(forward: float | None, backward: float | None) -> str:
    """``steady``, ``vanishing``, ``exploding`` or ``non-finite`` from the two ratios."""
    if forward is None or backward is None:
        return "non-finite"
    if steady(forward) and steady(backward):
        return "steady"
    lo, _ = STEADY_BAND
    return "vanishing" if min(forward, backward) < lo else "exploding"


def _pair(results: Results, key: str, activation: str) -> list[tuple[float | None, float | None]]:
    return [ratios(r) for r in results.select(init=key, activation=activation)]


def _pair_text(results: Results, key: str, activation: str) -> str:
    pairs = _pair(results, key, activation)
    kinds = [classify(f, b) for f, b in pairs]
    return (
        f"{init_name(key)}/{activation}: forward {fmt_list([p[0] for p in pairs])}, "
        f"backward {fmt_list([p[1] for p in pairs])} ({', '.join(kinds)})"
    )


def _judge_naive(results: Results) -> tuple[Status, str]:
    unstable_pairs = []
    steady_everywhere = []
    mixed = []
    for activation in ACTIVATIONS:
        for key in NAIVE:
            flags = [classify(f, b) != "steady" for f, b in _pair(results, key, activation)]
            if all(flags):
                unstable_pairs.append((key, activation))
            elif not any(flags):
                steady_everywhere.append((key, activation))
            else:
                mixed.append((key, activation))
    total = len(ACTIVATIONS) * len(NAIVE)
    examples = "; ".join(
        _pair_text(results, k, a) for k, a in [("normal_0.01", "tanh"), ("normal_1", "relu")]
    )
    evidence = f"{len(unstable_pairs)}/{total} naive pairs vanish or explode in every seed"
    if steady_everywhere:
        evidence += "; steady: " + ", ".join(f"{init_name(k)}/{a}" for k, a in steady_everywhere)
    if mixed:
        evidence += "; seed-dependent: " + ", ".join(f"{init_name(k)}/{a}" for k, a in mixed)
    evidence += f". Examples: {examples}"
    status: Status
    if len(unstable_pairs) == total:
        status = "confirmed"
    elif steady_everywhere:
        status = "refuted"
    else:
        status = "inconclusive"
    return status, evidence


def _judge_pair(key: str, activation: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        pairs = _pair(results, key, activation)
        flags = [classify(f, b) == "steady" for f, b in pairs]
        return all_or_none(flags), (
            f"{_pair_text(results, key, activation)}; steady in {sum(flags)}/{len(flags)} seeds"
        )

    return judge


_RULE_PAIR = (
    "steady ⇔ forward ratio std(a_last)/std(a_first) and backward ratio "
    "std(∂L/∂z_first)/std(∂L/∂z_last) both finite and within [0.1, 10]; confirmed if steady in "
    "every seed, refuted if in none, inconclusive otherwise"
)

CLAIMS = (
    Claim(
        "Naive initializations (N(0,1), N(0,0.01²), U[±1/√n]) make the forward signal or the "
        "back-propagated gradient vanish or explode with depth, whatever the activation",
        "Glorot & Bengio 2010, §4.2.1 and Figs. 6–7 (standard init: back-propagated gradients "
        "shrink toward the input); He et al. 2015, §2.2 (a 30-layer ReLU net with std 0.01 "
        "stalls); the seed",
        "a pair is unstable when either ratio is outside [0.1, 10] or not finite; confirmed if "
        "all 12 naive pairs (3 inits × 4 activations) are unstable in every seed, refuted if "
        "some pair is steady in every seed, inconclusive otherwise",
        _judge_naive,
    ),
    Claim(
        "He initialization keeps a ReLU network's forward and backward std steady over depth",
        "He et al. 2015, §2.2: Var[w] = 2/n makes Π ½ n_l Var[w_l] = 1 both ways",
        _RULE_PAIR,
        _judge_pair("he", "relu"),
    ),
    Claim(
        "Glorot initialization keeps a tanh network's activations and back-propagated "
        "gradients steady over depth",
        "Glorot & Bengio 2010, Figs. 6–7 (normalized init: similar spread in every layer)",
        _RULE_PAIR,
        _judge_pair("glorot", "tanh"),
    ),
    Claim(
        "LeCun initialization keeps a SELU network steady over depth",
        "Klambauer et al. 2017, Theorem 1 (attracting fixed point at mean 0, variance 1)",
        _RULE_PAIR,
        _judge_pair("lecun", "selu"),
    ),
    Claim(
        "Glorot initialization keeps a sigmoid (logistic) network steady over depth",
        "the seed (Xavier's σ = √(2/(n_in + n_out)) 'is used when the activation is the logistic "
        "function'); Glorot & Bengio 2010 derive it for f'(0) = 1, while σ'(0) = 1/4",
        _RULE_PAIR,
        _judge_pair("glorot", "sigmoid"),
    ),
)


def _profile(results: Results, key: str, activation: str, field: str) -> list[float | None]:
    """Median over seeds of ``field`` per hidden layer."""
    runs = results.select(init=key, activation=activation)
    if not runs:
        return []
    per_layer = zip(*[[layer[field] for layer in _hidden(r)] for r in runs], strict=True)
    return [median(list(values)) for values in per_layer]


def _depth_figure(results: Results, field: str, title: str) -> Figure:
    fig, axes = new_figure(12, 7, 2, 2)
    palette = colors(len(INIT_KEYS))
    for ax, activation in zip(axes.flat, ACTIVATIONS, strict=True):
        drawn = False
        for color, key in zip(palette, INIT_KEYS, strict=True):
            ys = _profile(results, key, activation, field)
            xs = list(range(1, len(ys) + 1))
            if plot_positive(ax, xs, ys, color=color, label=init_name(key), marker="."):
                drawn = True
        ax.set_yscale("log")
        ax.set_title(activation)
        ax.set_xlabel("hidden layer (1 = next to the input)")
        ax.set_ylabel(field.replace("_", " "))
        if drawn:
            ax.legend(fontsize=7, ncol=2)
        else:
            empty_panel(ax, "no finite values")
    fig.suptitle(title + " (median over seeds; missing points: 0, NaN or inf)")
    return fig


def figure_forward(results: Results) -> Figure:
    """Activation std per hidden layer, one panel per activation, one line per initializer."""
    return _depth_figure(results, "act_std", "Activation std by depth at initialization")


def figure_backward(results: Results) -> Figure:
    """Back-propagated gradient std per hidden layer (∂L/∂z), as :func:`figure_forward`."""
    return _depth_figure(results, "grad_out_std", "Back-propagated gradient std by depth")


def tables(results: Results) -> list[Table]:
    """Median forward/backward ratio and the class of every pair."""
    rows = []
    for activation in ACTIVATIONS:
        for key in INIT_KEYS:
            pairs = _pair(results, key, activation)
            if not pairs:
                continue
            kinds = sorted({classify(f, b) for f, b in pairs})
            rows.append(
                [
                    init_name(key),
                    activation,
                    median([p[0] for p in pairs]),
                    median([p[1] for p in pairs]),
                    ", ".join(kinds),
                ]
            )
    return [
        Table(
            "Ratios across the network at initialization (median over seeds; — = not finite)",
            ["init", "activation", "forward ratio", "backward ratio", "class"],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="Activation and gradient variance by depth at initialization",
    claim="Naive initializations make signals vanish or explode with depth; Glorot, He and "
    "LeCun keep them steady for the activations they were derived for",
    literature="Glorot & Bengio 2010 (Figs. 6–7); He et al. 2015 (§2.2); Klambauer et al. 2017",
    setup=(
        "50 hidden layers × 256 units, 7 initializers (N(0,1), N(0,0.01²), U[±1/√n], Glorot "
        "uniform, He normal, LeCun normal, orthogonal) × 4 activations (sigmoid, tanh, ReLU, "
        "SELU), biases 0; one forward and backward pass (cross-entropy) of 256 fixed "
        "Fashion-MNIST test images, standardized to mean 0 and std 1. Quick: 8 × 32, 64 images."
    ),
    grid=grid,
    measure=("act_std per layer", "grad_out_std per layer", "forward ratio", "backward ratio"),
    claims=CLAIMS,
    figures=(
        FigureSpec(
            "Activation std per hidden layer (log scale): naive inits collapse or blow up, "
            "He/ReLU, Glorot/tanh and LeCun/SELU stay flat (Glorot & Bengio 2010, Fig. 6)",
            figure_forward,
        ),
        FigureSpec(
            "Back-propagated gradient std per hidden layer (log scale), read from the output "
            "(right) toward the input (left) (Glorot & Bengio 2010, Fig. 7; He et al. 2015, §2.2)",
            figure_backward,
        ),
    ),
    tables=tables,
    default_seeds=3,
)
