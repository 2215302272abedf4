"""A study is data: a grid of runs, the measurements, the rules that turn results into verdicts.

:class:`Study` holds a claim from the seed or the literature, the grid of :data:`RunSpec` that
tests it (a function of :class:`Options`: quick or full, seeds, data folder), and one
:class:`Claim` per verdict: the claim's text, the literature result it is compared with, the rule
in words, and ``judge(results) -> (status, evidence)`` that applies the rule to the measured
numbers. Verdicts are always computed, never written by hand. Figures are functions of the
results (never of a live model).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from steadygrad.studies._runner import RunRecord, RunSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "STATUSES",
    "Claim",
    "FigureSpec",
    "Options",
    "Results",
    "Status",
    "Study",
    "StudyResult",
    "Table",
    "Verdict",
    "mean_se",
]

Status = Literal["confirmed", "refuted", "inconclusive"]
STATUSES: tuple[Status, ...] = ("confirmed", "refuted", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """A claim checked against measurements.

    ``status`` is ``"confirmed"``, ``"refuted"`` or ``"inconclusive"``; ``evidence`` gives the
    measured numbers; ``rule`` the rule that turned them into the status; ``literature`` the
    published result the claim is compared with.
    """

    claim: str
    status: Status
    evidence: str
    rule: str
    literature: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(map(repr, STATUSES))}; got {self.status!r}"
            )

    def to_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return {
            "claim": self.claim,
            "status": self.status,
            "evidence": self.evidence,
            "rule": self.rule,
            "literature": self.literature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of :meth:`to_dict`."""
        return cls(
            claim=str(data["claim"]),
            status=data["status"],
            evidence=str(data["evidence"]),
            rule=str(data["rule"]),
            literature=str(data["literature"]),
        )


@dataclass(frozen=True)
class Options:
    """What a grid depends on: ``quick`` (the miniature), ``seeds`` (per configuration) and the
    dataset folder ``data_root`` (None: the usual search path of :func:`steadygrad.data.load`)."""

    quick: bool
    seeds: int
    data_root: str | None = None

    def data(
        self, *, train: int | None, test: int | None, standardize: bool = False
    ) -> dict[str, Any]:
        """A run's ``"data"`` spec: the first ``train`` training and ``test`` test images."""
        return {
            "name": "fashion-mnist",
            "root": self.data_root,
            "standardize": standardize,
            "train": train,
            "test": test,
        }


class Results:
    """The finished runs of a study, selectable by the ``"label"`` dict of their specs."""

    def __init__(self, records: Sequence[RunRecord], options: Options) -> None:
        self.records = list(records)
        self.options = options

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.records)

    def select(self, **label: Any) -> list[RunRecord]:
        """Records whose ``spec["label"]`` has every given key equal to the given value."""
        return [
            r
            for r in self.records
            if all(r.spec.get("label", {}).get(k) == v for k, v in label.items())
        ]

    def values(self, key: str, **label: Any) -> list[Any]:
        """Distinct values of label ``key`` among the selected records, in grid order."""
        seen: list[Any] = []
        for r in self.select(**label):
            value = r.spec.get("label", {}).get(key)
            if value not in seen:
                seen.append(value)
        return seen


Judge = Callable[[Results], tuple[Status, str]]


@dataclass(frozen=True)
class Claim:
    """One checkable claim: ``text``, the ``literature`` result, the ``rule`` in words, and
    ``judge(results) -> (status, evidence)`` applying it."""

    text: str
    literature: str
    rule: str
    judge: Judge

    def verdict(self, results: Results) -> Verdict:
        """Apply the rule to ``results``."""
        status, evidence = self.judge(results)
        return Verdict(self.text, status, evidence, self.rule, self.literature)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of a study: ``draw(results) -> matplotlib Figure`` and its caption."""

    caption: str
    draw: Callable[[Results], Figure]


@dataclass(frozen=True)
class Table:
    """A table of a study's report: ``caption``, ``columns`` and ``rows`` (cells by column)."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"caption": self.caption, "columns": self.columns, "rows": self.rows}


@dataclass(frozen=True)
class Study:
    """A study: the claim, its literature, the setup, the grid, measurements, rules and figures.

    ``grid(options)`` returns the runs (each spec carries a ``"label"`` dict naming its factors:
    init, activation, seed, …). ``measure`` names what the runs record. ``claims`` are judged in
    order; the first is the headline. ``tables(results)`` gives the report's tables.
    ``default_seeds`` is used when the caller passes no ``seeds`` (quick mode always uses 1).
    """

    name: str
    title: str
    claim: str
    literature: str
    setup: str
    grid: Callable[[Options], list[RunSpec]]
    measure: tuple[str, ...]
    claims: tuple[Claim, ...]
    figures: tuple[FigureSpec, ...]
    tables: Callable[[Results], list[Table]] = field(default=lambda results: [])
    default_seeds: int = 3

    def verdicts(self, results: Results) -> list[Verdict]:
        """Every claim judged on ``results``."""
        return [claim.verdict(results) for claim in self.claims]


@dataclass
class StudyResult:
    """What :func:`steadygrad.studies.run_study` returns and ``<out>/<name>.json`` stores.

    ``verdicts[0]`` is the headline claim's; ``command`` reproduces the run (and every figure).
    """

    name: str
    title: str
    claim: str
    literature: str
    setup: str
    measure: list[str]
    options: Options
    command: str
    runs: list[RunRecord]
    verdicts: list[Verdict]
    tables: list[Table]
    seconds: float
    code_version: str
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """The headline verdict (the study's first claim)."""
        return self.verdicts[0]

    @property
    def results(self) -> Results:
        """The runs as :class:`Results` (what rules and figures read)."""
        return Results(self.runs, self.options)

    @property
    def cached_runs(self) -> int:
        """How many runs were read from the cache rather than computed by this call."""
        return sum(1 for r in self.runs if r.cached)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``<out>/<name>.json``)."""
        return {
            "format": "steadygrad.study/1",
            "name": self.name,
            "title": self.title,
            "claim": self.claim,
            "literature": self.literature,
            "setup": self.setup,
            "measure": self.measure,
            "options": {
                "quick": self.options.quick,
                "seeds": self.options.seeds,
                "data_root": self.options.data_root,
            },
            "command": self.command,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "tables": [t.to_dict() for t in self.tables],
            "seconds": self.seconds,
            "code_version": self.code_version,
            "environment": self.environment,
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyResult:
        """Inverse of :meth:`to_dict`."""
        options = data["options"]
        return cls(
            name=str(data["name"]),
            title=str(data["title"]),
            claim=str(data["claim"]),
            literature=str(data["literature"]),
            setup=str(data["setup"]),
            measure=[str(m) for m in data["measure"]],
            options=Options(bool(options["quick"]), int(options["seeds"]), options["data_root"]),
            command=str(data["command"]),
            runs=[RunRecord.from_dict(r) for r in data["runs"]],
            verdicts=[Verdict.from_dict(v) for v in data["verdicts"]],
            tables=[
                Table(str(t["caption"]), list(t["columns"]), [list(r) for r in t["rows"]])
                for t in data["tables"]
            ],
            seconds=float(data["seconds"]),
            code_version=str(data["code_version"]),
            environment=dict(data.get("environment", {})),
        )


# --------------------------------------------------------------------------- statistics helpers


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error s/√n of ``values`` (se = NaN for fewer than two values).

    s is the sample standard deviation sqrt(Σ(x − x̄)² / (n − 1)).
    """
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    if len(xs) == 1:
        return xs[0], math.nan
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))
