"""``cost``: what ELU and batch normalization cost in run time, and what folding BN saves.

The seed: "ELUs are slower to compute than ReLUs … ELUs will take longer than ReLUs in the test
time"; batch normalization "leads to a runtime penalty, since the model has to perform the
normalization for each layer". At inference a BatchNorm with frozen statistics is an affine map
and folds into the preceding layer: W' = W · γ/√(σ² + ε), b' = (b − μ) · γ/√(σ² + ε) + β
(:func:`steadygrad.nn.fold_batchnorm`; Jacob et al. 2018, §3.2), which removes its cost.

Measured in one process, one torch thread: the seed's network 784 → 300 → 100 → 10 with ReLU,
ELU, ReLU + BN and ELU + BN (BN before each hidden activation), the CPU time of 50 training steps
(batch 50, the seed's) and of 10 inference passes over 1,000 test images, in interleaved repeats
whose order is shuffled each time, so that load changes hit every variant alike. CPU time of the
process rather than wall time: on a shared machine wall time also counts the time other processes
held the core. Each claim
compares two variants by the ratio of their times *within the same repeat*: the median ratio and
a distribution-free 95 % confidence interval for it (order statistics of the binomial sign test).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from steadygrad.studies._common import colors, fmt, new_figure, seeds
from steadygrad.studies._runner import RunRecord, RunSpec
from steadygrad.studies._study import Claim, FigureSpec, Options, Results, Status, Study, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "cost"
FOLD_TOLERANCE = 1e-5


def _net(activation: str, bn: bool, hidden: list[int]) -> dict[str, Any]:
    return {
        "input_dim": 784,
        "hidden": hidden,
        "output_dim": 10,
        "activation": activation,
        "initializer": "he_normal",
        "batch_norm": "before" if bn else None,
        "momentum": 0.9,
    }


def grid(options: Options) -> list[RunSpec]:
    """One timing run per seed (each with its own interleaved repeats).

    Full: 100 repeats of 50 training steps and 10 inference passes over 1,000 images. Quick: a
    784 → 32 → 16 → 10 network, 5 repeats of 3 steps and 2 passes over 100 images.
    """
    q = options.quick
    hidden = [32, 16] if q else [300, 100]
    specs = []
    for seed in seeds(options.seeds):
        specs.append(
            {
                "task": "timing",
                "label": {"seed": seed},
                "models": {
                    "relu": _net("relu", False, hidden),
                    "elu": _net("elu", False, hidden),
                    "relu+bn": _net("relu", True, hidden),
                    "elu+bn": _net("elu", True, hidden),
                },
                "fold": ["relu+bn", "elu+bn"],
                "data": options.data(train=2_500 if not q else 150, test=1_000 if not q else 100),
                "batch_size": 50,
                "steps": 3 if q else 50,
                "inference_batch": 100 if q else 1_000,
                "passes": 2 if q else 10,
                "warmup": 1 if q else 3,
                "repeats": 5 if q else 100,
                "seed": seed,
                "quick": q,
            }
        )
    return specs


def sign_test_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval for the median of ``values``.

    With x₍₁₎ ≤ … ≤ x₍ₙ₎ sorted, [x₍ₖ₎, x₍ₙ₋ₖ₊₁₎] covers the median with probability
    1 − 2·P(B ≤ k − 1), B ~ Binomial(n, ½); k is the largest index keeping that ≥ ``level``
    (the sign test's interval; Conover, *Practical Nonparametric Statistics*, §3.2). With too
    few values for the level, the interval is the whole range [x₍₁₎, x₍ₙ₎] (or NaN when empty).
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    k = 1
    for candidate in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(candidate)) / 2**n  # P(B ≤ candidate − 1)
        if 1 - 2 * tail >= level:
            k = candidate
        else:
            break
    return xs[k - 1], xs[n - k]


def paired_ratios(results: Results, kind: str, top: str, bottom: str) -> list[float]:
    """time(top) / time(bottom) per repeat, over every timing run."""
    out = []
    for r in results.records:
        times = r.result[kind]
        if top in times and bottom in times:
            out += [a / b for a, b in zip(times[top], times[bottom], strict=True) if b > 0]
    return out


def _ratio_text(results: Results, kind: str, top: str, bottom: str) -> tuple[str, float, float]:
    ratios = paired_ratios(results, kind, top, bottom)
    lo, hi = sign_test_interval(ratios)
    med = statistics.median(ratios) if ratios else math.nan
    return f"{kind} {top}/{bottom} = {fmt(med)} (95 % CI {fmt(lo)}–{fmt(hi)})", lo, hi


def _slower(top: str, bottom: str) -> Any:
    def judge(results: Results) -> tuple[Status, str]:
        parts = []
        lows, highs = [], []
        for kind in ("train", "inference"):
            text, lo, hi = _ratio_text(results, kind, top, bottom)
            parts.append(text)
            lows.append(lo)
            highs.append(hi)
        status: Status = "inconclusive"
        if all(lo > 1 for lo in lows):
            status = "confirmed"
        elif any(hi < 1 for hi in highs):
            status = "refuted"
        return status, "; ".join(parts)

    return judge


def max_fold_difference(record: RunRecord) -> float:
    """Largest |folded − unfolded| output over the folded networks of a run."""
    diffs = record.result["fold_max_abs_diff"].values()
    return max((float(d) for d in diffs), default=math.nan)


def _judge_fold(results: Results) -> tuple[Status, str]:
    diff = max((max_fold_difference(r) for r in results.records), default=math.nan)
    parts = [f"max |output folded − output with BN| = {fmt(diff)}"]
    highs, lows = [], []
    for name in ("relu+bn", "elu+bn"):
        text, lo, hi = _ratio_text(results, "inference", f"{name}+folded", name)
        parts.append(text)
        lows.append(lo)
        highs.append(hi)
        plain = name.removesuffix("+bn")
        parts.append(_ratio_text(results, "inference", f"{name}+folded", plain)[0])
    status: Status = "inconclusive"
    if not math.isfinite(diff) or diff > FOLD_TOLERANCE or any(lo > 1 for lo in lows):
        status = "refuted"
    elif all(hi < 1 for hi in highs):
        status = "confirmed"
    return status, "; ".join(parts)


_RULE = (
    "per repeat, the ratio of the two variants' CPU times (interleaved, same process, one "
    "thread); median and its 95 % sign-test confidence interval; confirmed if the interval "
    "lies above 1 for both training and inference, refuted if it lies below 1 for either, "
    "inconclusive otherwise"
)

CLAIMS = (
    Claim(
        "ELU costs run time: training steps and inference are slower than with ReLU",
        "the seed ('ELUs are slower to compute than ReLUs … take longer … in the test time'); "
        "Clevert et al. 2015",
        _RULE,
        _slower("elu", "relu"),
    ),
    Claim(
        "Batch normalization costs run time: training steps and inference are slower with BN",
        "the seed ('a runtime penalty'); Ioffe & Szegedy 2015",
        _RULE,
        _slower("relu+bn", "relu"),
    ),
    Claim(
        "Folding BN into the preceding layer leaves the outputs unchanged (within 1e-5) and "
        "makes inference faster than with BN",
        "Jacob et al. 2018, §3.2 (folding batch normalization for inference)",
        "max |output(folded) − output(BN, eval)| ≤ 1e-5 on 1,000 test images, and the folded / "
        "unfolded inference ratio's 95 % interval below 1 for ReLU+BN and ELU+BN: confirmed; "
        "refuted if the outputs differ or the interval lies above 1; inconclusive otherwise",
        _judge_fold,
    ),
)


def figure_times(results: Results) -> Figure:
    """Per-repeat times of each variant (training and inference), relative to ReLU's median."""
    fig, axes = new_figure(12, 4.2, 1, 2)
    for ax, kind in zip(axes[0], ("train", "inference"), strict=True):
        names: list[str] = []
        for r in results.records:
            names += [n for n in r.result[kind] if n not in names]
        base = statistics.median(t for r in results.records for t in r.result[kind].get("relu", []))
        data = [
            [t / base for r in results.records for t in r.result[kind].get(n, [])] for n in names
        ]
        box = ax.boxplot(data, patch_artist=True)
        for patch, color in zip(box["boxes"], colors(len(names)), strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.axhline(1.0, color="0.5", ls=":", lw=1)
        ax.set_ylabel("time / median ReLU time")
        ax.set_title(
            "50 training steps (batch 50)" if kind == "train" else "10 passes over 1,000 images"
        )
    return fig


def tables(results: Results) -> list[Table]:
    """Median times and the paired ratios of every comparison."""
    rows = []
    for kind in ("train", "inference"):
        names: list[str] = []
        for r in results.records:
            names += [n for n in r.result[kind] if n not in names]
        for name in names:
            times = [t for r in results.records for t in r.result[kind].get(name, [])]
            ratios = paired_ratios(results, kind, name, "relu")
            lo, hi = sign_test_interval(ratios)
            rows.append(
                [kind, name, statistics.median(times) * 1e3, statistics.median(ratios), lo, hi]
            )
    return [
        Table(
            "Median time per timing block (ms) and the paired ratio to ReLU with its 95 % "
            "sign-test interval",
            ["phase", "network", "median ms", "ratio to relu", "CI low", "CI high"],
            rows,
        )
    ]


STUDY = Study(
    name=NAME,
    title="Run-time cost of ELU and batch normalization; folding BN for inference",
    claim="ELU and batch normalization cost run time; folding BN removes its inference cost",
    literature="the seed; Clevert et al. 2015; Ioffe & Szegedy 2015; Jacob et al. 2018",
    setup=(
        "the seed's 784 → 300 → 100 → 10 network (He init) with ReLU, ELU, ReLU + BN, ELU + BN "
        "(BN momentum 0.9 before each hidden activation) and the folded copies of the BN "
        "networks (after 3 warm-up blocks of 50 steps, so the moving statistics are not "
        "trivial); 100 interleaved repeats, shuffled, of 50 SGD steps (batch 50) and of 10 "
        "inference passes over 1,000 test images, one torch thread, CPU time of the process. "
        "Times depend on the machine; the ratios are what the claims use. Quick: 784 → 32 → "
        "16 → 10, 5 repeats."
    ),
    grid=grid,
    measure=("training-step time", "inference time", "folded-output difference"),
    claims=CLAIMS,
    figures=(
        FigureSpec("Time per block relative to ReLU's median (boxes: the repeats)", figure_times),
    ),
    tables=tables,
    default_seeds=1,
)
