"""Tests for steadygrad.report: figures against the recorded numbers, HTML escaping, render_run,
and the rendered report opened in headless Chromium (with a negative control that must fail)."""

from __future__ import annotations

import base64
import html.parser
import itertools
import json
import math
import platform
import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import steadygrad
import steadygrad.report as report
from steadygrad.errors import DataError, SteadygradError
from steadygrad.report import (
    LAYER_COLUMNS,
    PLOTS_HINT,
    QUANTITIES,
    BrowserError,
    HtmlReport,
    Markup,
    MissingExtraError,
    dead_over_time,
    depth_profile,
    environment,
    figure_to_data_uri,
    figure_to_png_bytes,
    find_chromium,
    format_value,
    grad_heatmap,
    histograms,
    open_in_browser,
    recorded,
    render_run,
    saturation_over_time,
    training_curves,
)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

HOSTILE = "<script>alert(1)</script>"
HOSTILE_LAYER = '"><img src=x onerror=alert(2)>'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_LAYERS = 30
STEPS = (0, 10, 20, 30)
RATIO = 1e-6  # gradient std at layer 1 over layer 30


# --------------------------------------------------------------------------- synthetic logs


def grad_std(k: int, n: int = N_LAYERS, ratio: float = RATIO) -> float:
    """Back-propagated gradient std of layer k (1-based): falls geometrically ×ratio to layer 1."""
    return 1e-2 * ratio ** ((n - k) / (n - 1))


def layer_record(k: int, i: int, n: int, name: str) -> dict[str, Any]:
    """LayerStats of layer k at the i-th recorded step, as the monitor writes them."""
    g = grad_std(k, n)
    return {
        "name": name,
        "kind": "Linear",
        "depth": k,
        "activation": "sigmoid" if k < n else None,
        "pre_mean": 0.1 * k,
        "pre_std": 1.0 + 0.01 * k,
        "act_mean": 0.5,
        "act_std": 0.5 * 0.9 ** (k - 1),
        "saturated": min(1.0, 0.02 * k + 0.05 * i),
        "dead": 0.01 * i * (k % 3),
        "grad_out_std": g,
        "grad_out_norm": 16 * g * (1 + 0.1 * i),
        "weight_std": 0.06,
        "weight_grad_std": 0.5 * g,
        "weight_grad_norm": 10 * g,
        "update_ratio": 1e-3,
        "recommended_std": 0.0884,
        "nan": 0,
        "inf": 0,
    }


def layer_names(n: int, hostile: bool = False) -> list[str]:
    names = [f"net.{2 * (k - 1)}" for k in range(1, n + 1)]
    if hostile:
        names[1] = HOSTILE_LAYER
    return names


def hist_of(values: np.ndarray, bins: int = 20) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def write_log(
    folder: Path,
    n: int = N_LAYERS,
    steps: tuple[int, ...] = STEPS,
    *,
    with_histograms: bool = True,
    hostile: bool = False,
    edit: Any = None,
) -> Path:
    """Write ``folder/monitor.jsonl`` in the steadygrad.monitor/1 format (docs/architecture.md).

    ``edit(i, records)`` may change the i-th step's layer records before they are written.
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = layer_names(n, hostile)
    header = {
        "format": "steadygrad.monitor/1",
        "layers": [
            {
                "name": names[k - 1],
                "kind": "Linear",
                "depth": k,
                "activation": "sigmoid" if k < n else None,
                "weight_shape": [256, 256],
            }
            for k in range(1, n + 1)
        ],
        "notes": [f"skipped module {HOSTILE} (not interpretable)"] if hostile else [],
    }
    lines = [json.dumps(header)]
    for i, step in enumerate(steps):
        records = [layer_record(k, i, n, names[k - 1]) for k in range(1, n + 1)]
        if edit is not None:
            edit(i, records)
        hists = {}
        if with_histograms:
            for k in range(1, n + 1):
                hists[names[k - 1]] = {
                    "act": hist_of(rng.normal(0.5, 0.5 * 0.9 ** (k - 1), 500)),
                    "grad": hist_of(rng.normal(0.0, grad_std(k, n), 500)),
                }
        lines.append(
            json.dumps(
                {"step": step, "loss": 2.3 - 0.1 * i, "layers": records, "histograms": hists}
            )
        )
    path = folder / "monitor.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


METRICS = [
    {
        "epoch": 1,
        "train_loss": 1.2,
        "train_accuracy": 0.6,
        "val_accuracy": 0.7,
        "test_accuracy": 0.69,
    },
    {
        "epoch": 2,
        "train_loss": 0.8,
        "train_accuracy": 0.7,
        "val_accuracy": 0.75,
        "test_accuracy": 0.74,
    },
    {
        "epoch": 3,
        "train_loss": 0.6,
        "train_accuracy": 0.8,
        "val_accuracy": 0.8,
        "test_accuracy": 0.79,
    },
]


@pytest.fixture(scope="module")
def vanishing_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_log(tmp_path_factory.mktemp("vanishing"))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A full run folder whose config, a layer name and a note are HTML; rendered once."""
    folder = tmp_path_factory.mktemp("hostile")
    write_log(folder, hostile=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    config = {"model": {"name": HOSTILE, "widths": [256, 256]}, "train": {"lr": 0.001}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, render_run(folder)


# --------------------------------------------------------------------------- HTML parsing


class Page(html.parser.HTMLParser):
    """Elements (tag, attrs) and text of an HTML page, parsed by the standard library."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def note_texts(fig: Any) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


# --------------------------------------------------------------------------- reading logs


def test_recorded_matches_the_written_numbers(vanishing_log: Path) -> None:
    run = recorded(vanishing_log)
    assert [info.depth for info in run.layers] == list(range(1, N_LAYERS + 1))
    assert run.steps.tolist() == list(STEPS)
    np.testing.assert_allclose(run.loss, [2.3 - 0.1 * i for i in range(len(STEPS))])
    for i in range(len(STEPS)):
        for k in range(1, N_LAYERS + 1):
            expected = layer_record(k, i, N_LAYERS, f"net.{2 * (k - 1)}")
            for q in QUANTITIES:
                assert run.values[q][i, k - 1] == pytest.approx(expected[q], rel=1e-12)
    assert all(run.observed[q].all() for q in QUANTITIES)
    assert run.has_histograms and not run.notes


def test_recorded_null_nan_and_unsorted_header(tmp_path: Path) -> None:
    def edit(i: int, records: list[dict[str, Any]]) -> None:
        records[2]["grad_out_std"] = None  # not observable
        records[4]["grad_out_std"] = float("nan")  # recorded NaN
        records.reverse()  # order in the record must not matter

    path = write_log(tmp_path, n=6, steps=(0, 5), with_histograms=False, edit=edit)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["layers"].reverse()
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    run = recorded(path)
    assert [info.depth for info in run.layers] == [1, 2, 3, 4, 5, 6]
    g = run.values["grad_out_std"]
    assert not run.observed["grad_out_std"][:, 2].any() and np.isnan(g[:, 2]).all()
    assert run.observed["grad_out_std"][:, 4].all() and np.isnan(g[:, 4]).all()
    assert g[0, 0] == pytest.approx(grad_std(1, 6))
    assert not run.has_histograms


def test_recorded_accepts_monitor_objects(vanishing_log: Path) -> None:
    """A MonitorLog-like object (dataclasses with attributes) gives the same arrays as the file."""
    data = [json.loads(line) for line in vanishing_log.read_text().splitlines()]
    log = SimpleNamespace(
        layers=[SimpleNamespace(**layer) for layer in data[0]["layers"]],
        notes=[],
        records=[
            SimpleNamespace(
                step=r["step"],
                loss=r["loss"],
                layers=[SimpleNamespace(**s) for s in r["layers"]],
                histograms=r["histograms"],
            )
            for r in data[1:]
        ],
    )
    a, b = recorded(log), recorded(vanishing_log)
    for q in QUANTITIES:
        np.testing.assert_array_equal(a.values[q], b.values[q])
    assert a.layers == b.layers and a.steps.tolist() == b.steps.tolist()


HEADER_LINE = json.dumps({"format": "steadygrad.monitor/1", "layers": [], "notes": []})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "is empty; expected a 'steadygrad.monitor/1' header line"),
        (
            '{"format": "steadygrad.monitor/2", "layers": [], "notes": []}\n',
            "line 1 must be a header with format 'steadygrad.monitor/1'; "
            "got 'steadygrad.monitor/2'",
        ),
        (f"{HEADER_LINE}\n{{oops\n{HEADER_LINE}\n", "line 2 is not valid JSON"),
        (f"{HEADER_LINE}\n[1, 2]\n", "line 2 must be a JSON object; got list"),
    ],
)
def test_recorded_rejects_bad_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "monitor.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(match)):
        recorded(path)


def test_recorded_missing_file_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        recorded(tmp_path / "monitor.jsonl")
    with pytest.raises(TypeError, match=r"log must be a MonitorLog.*got int"):
        recorded(42)


def test_recorded_drops_a_cut_short_last_line(tmp_path: Path) -> None:
    """A run killed while writing leaves half a line; the steps before it are still readable."""
    path = write_log(tmp_path, n=3, steps=(0, 1, 2), with_histograms=False)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    assert recorded(path).steps.tolist() == [0, 1]
    path.write_text(text[: len(text) - 40] + "\n")  # the same line, complete: an error
    with pytest.raises(DataError, match="line 4 is not valid JSON"):
        recorded(path)


def test_unknown_step_names_the_closest(vanishing_log: Path) -> None:
    run = recorded(vanishing_log)
    with pytest.raises(ValueError, match=r"recorded steps \(0, 10, 20, 30\); got 12; closest: 10"):
        depth_profile(run, step=12)
    with pytest.raises(TypeError, match="step must be an integer"):
        run.index_of(True)


# --------------------------------------------------------------------------- figures


def test_depth_profile_draws_the_recorded_stds(vanishing_log: Path) -> None:
    fig = depth_profile(vanishing_log)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {
        f"{q}, step {s}"
        for q in ("activation std", "back-propagated gradient std")
        for s in (STEPS[0], STEPS[-1])
    }
    grad = lines[f"back-propagated gradient std, step {STEPS[-1]}"]
    np.testing.assert_allclose(grad.get_xdata(), np.arange(1, N_LAYERS + 1))
    np.testing.assert_allclose(grad.get_ydata(), [grad_std(k) for k in range(1, N_LAYERS + 1)])
    act = lines[f"activation std, step {STEPS[0]}"]
    np.testing.assert_allclose(act.get_ydata(), [0.5 * 0.9 ** (k - 1) for k in range(1, 31)])
    # The title gives the vanishing ratio, layer 1 over layer 30.
    assert "layer 1 / layer 30 = 1e-06" in ax.get_title()
    one = depth_profile(vanishing_log, step=10)
    assert {line.get_label() for line in one.axes[0].get_lines()} == {
        "activation std, step 10",
        "back-propagated gradient std, step 10",
    }


def test_depth_profile_skips_and_names_null_nan_and_zero(tmp_path: Path) -> None:
    def edit(i: int, records: list[dict[str, Any]]) -> None:
        records[2]["grad_out_std"] = None
        records[4]["grad_out_std"] = float("inf")
        records[6]["act_std"] = 0.0
        records[7]["nan"] = 3  # statistics over the finite entries; the NaNs are counted

    path = write_log(tmp_path, n=8, steps=(0,), with_histograms=False, edit=edit)
    fig = depth_profile(path)
    ax = fig.axes[0]
    grad = next(x for x in ax.get_lines() if "gradient" in str(x.get_label()))
    y = np.asarray(grad.get_ydata(), dtype=float)
    assert np.isnan(y[[2, 4]]).all() and np.isfinite(np.delete(y, [2, 4])).all()
    act = next(x for x in ax.get_lines() if "activation" in str(x.get_label()))
    assert np.isnan(np.asarray(act.get_ydata(), dtype=float)[6])
    notes = note_texts(fig)
    assert "grad_out_std not observable at step 0: layer 3" in notes
    assert "grad_out_std NaN/Inf at step 0: layer 5" in notes
    assert "act_std ≤ 0 at step 0 (not drawn on a log axis): layer 7" in notes
    assert "NaN/Inf entries counted at step 0: layer 8" in notes


def test_histograms_are_the_recorded_bins(vanishing_log: Path) -> None:
    run = recorded(vanishing_log)
    fig = histograms(vanishing_log)
    act_ax, grad_ax = fig.axes[0], fig.axes[1]
    assert len(fig.axes) == 3  # the two panels and the depth colour bar (30 layers > legend)
    data = json.loads(vanishing_log.read_text().splitlines()[-1])["histograms"]
    for ax, which in ((act_ax, "act"), (grad_ax, "grad")):
        lines = ax.get_lines()
        assert [x.get_label() for x in lines] == [f"layer {k}" for k in range(1, N_LAYERS + 1)]
        for k, line in enumerate(lines):
            h = data[run.layers[k].name][which]
            edges, counts = np.array(h["edges"]), np.array(h["counts"], dtype=float)
            np.testing.assert_allclose(line.get_xdata(), (edges[1:] + edges[:-1]) / 2)
            np.testing.assert_allclose(line.get_ydata(), counts / counts.sum())
    # Vanishing: layer 1's gradient curve spans ~1e-6 of layer 30's range.
    spans = [np.ptp(line.get_xdata()) for line in grad_ax.get_lines()]
    assert spans[0] / spans[-1] == pytest.approx(RATIO, rel=0.5)
    assert "step 30" in act_ax.get_title()


def test_histograms_legend_step_and_bad_bins(tmp_path: Path) -> None:
    path = write_log(tmp_path, n=4, steps=(0, 10))
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["histograms"]["net.2"]["grad"]["counts"] = [0] * 20  # empty
    record["histograms"]["net.4"]["grad"]["edges"][3] = float("nan")
    del record["histograms"]["net.6"]
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    fig = histograms(path, step=0)
    assert len(fig.axes) == 2  # 4 layers: a legend, no colour bar
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["layer 1", "layer 2", "layer 3"]
    assert [x.get_label() for x in fig.axes[1].get_lines()] == ["layer 1"]
    notes = note_texts(fig)
    assert "no grad histogram: layer 4" in notes and "no act histogram: layer 4" in notes
    assert "grad histogram empty or NaN/Inf: layers 2, 3" in notes


def test_histograms_legend_goes_to_a_panel_with_curves(tmp_path: Path) -> None:
    """Regression: with no usable activation histogram the legend sits on the gradient panel."""
    path = write_log(tmp_path, n=3, steps=(0,))
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    for pair in record["histograms"].values():
        del pair["act"]
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    fig = histograms(path)
    assert fig.axes[0].get_legend() is None
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "layer 1",
        "layer 2",
        "layer 3",
    ]


def test_histograms_errors(tmp_path: Path) -> None:
    path = write_log(tmp_path, n=3, steps=(0, 1), with_histograms=False)
    with pytest.raises(ValueError, match=r"no histograms; record them with watch\(model, hist"):
        histograms(path)
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["histograms"] = {"net.0": {"act": hist_of(np.arange(10.0))}}
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="step 1 has no histograms; steps with histograms: 0"):
        histograms(path, step=1)


@pytest.mark.parametrize(
    ("plot", "quantity"), [(saturation_over_time, "saturated"), (dead_over_time, "dead")]
)
def test_fractions_over_time(tmp_path: Path, plot: Any, quantity: str) -> None:
    def edit(i: int, records: list[dict[str, Any]]) -> None:
        records[-1][quantity] = None  # output layer: no activation, not observable
        records[1][quantity] = float("nan") if i == 2 else records[1][quantity]

    path = write_log(tmp_path, n=5, steps=(0, 10, 20, 30), with_histograms=False, edit=edit)
    fig = plot(path)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [x.get_label() for x in lines] == ["layer 1", "layer 2", "layer 3", "layer 4"]
    for k, line in enumerate(lines, start=1):
        np.testing.assert_allclose(line.get_xdata(), [0, 10, 20, 30])
        expected = [layer_record(k, i, 5, "")[quantity] for i in range(4)]
        if k == 2:
            expected[2] = np.nan
        np.testing.assert_allclose(line.get_ydata(), expected)
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    notes = note_texts(fig)
    assert "not observable: layer 5" in notes and "layer 2: NaN/Inf at step 20" in notes


def test_fraction_not_observable_anywhere(tmp_path: Path) -> None:
    def edit(i: int, records: list[dict[str, Any]]) -> None:
        for r in records:
            r["saturated"] = None

    fig = saturation_over_time(
        write_log(tmp_path, n=3, steps=(0,), with_histograms=False, edit=edit)
    )
    assert fig.axes[0].get_lines() == []
    assert "saturated was not observable for any layer" in note_texts(fig)


def test_grad_heatmap_is_the_gradient_norm_matrix(vanishing_log: Path) -> None:
    import matplotlib.colors

    run = recorded(vanishing_log)
    fig = grad_heatmap(vanishing_log)
    ax, colorbar = fig.axes
    (mesh,) = ax.collections
    expected = np.array(
        [[16 * grad_std(k) * (1 + 0.1 * i) for i in range(len(STEPS))] for k in range(1, 31)]
    )
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(N_LAYERS, len(STEPS)), expected)
    assert isinstance(mesh.norm, matplotlib.colors.LogNorm)
    assert mesh.norm.vmin == pytest.approx(expected.min())
    assert mesh.norm.vmax == pytest.approx(expected.max())
    assert "log scale" in colorbar.get_ylabel()
    # Cells are centred on the recorded steps and the depths.
    x, y = mesh.get_coordinates()[0, :, 0], mesh.get_coordinates()[:, 0, 1]
    np.testing.assert_allclose((x[1:] + x[:-1]) / 2, STEPS)
    np.testing.assert_allclose((y[1:] + y[:-1]) / 2, [info.depth for info in run.layers])


def test_grad_heatmap_masks_and_counts_bad_cells(tmp_path: Path) -> None:
    def edit(i: int, records: list[dict[str, Any]]) -> None:
        if i == 0:
            records[0]["grad_out_norm"] = None
            records[1]["grad_out_norm"] = float("nan")
            records[2]["grad_out_norm"] = 0.0

    fig = grad_heatmap(write_log(tmp_path, n=4, steps=(0, 7), with_histograms=False, edit=edit))
    mesh = fig.axes[0].collections[0]
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(4, 2)
    assert mask[:3, 0].all() and not mask[3, 0] and not mask[:, 1].any()
    assert "grey: 3 cell(s) not drawn (1 not observable, 1 NaN/Inf, 1 zero)" in note_texts(fig)


def test_training_curves(tmp_path: Path) -> None:
    metrics = [dict(m) for m in METRICS]
    metrics[1]["train_loss"] = float("nan")
    fig = training_curves(metrics)
    loss_ax, acc_ax = fig.axes
    (loss,) = loss_ax.get_lines()
    np.testing.assert_allclose(loss.get_ydata(), [1.2, np.nan, 0.6])
    acc = {x.get_label(): x.get_ydata() for x in acc_ax.get_lines()}
    assert set(acc) == {"train", "val", "test"}
    np.testing.assert_allclose(acc["val"], [m["val_accuracy"] for m in METRICS])
    assert "train_loss NaN/Inf at epoch 2" in note_texts(fig)
    with pytest.raises(ValueError, match="metrics must hold at least one epoch record"):
        training_curves([])


def small_figure() -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0, 1.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_png_helpers() -> None:
    fig = small_figure()
    png = figure_to_png_bytes(fig, dpi=50)
    width, height = png_size(png)
    assert (width, height) == (round(fig.get_figwidth() * 50), round(fig.get_figheight() * 50))
    uri = figure_to_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png


def test_missing_matplotlib_gives_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, vanishing_log: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=re.escape(PLOTS_HINT)) as info:
        depth_profile(vanishing_log)
    assert str(info.value) == "plots need matplotlib: pip install 'steadygrad[plots]'"
    assert isinstance(info.value, ImportError) and isinstance(info.value, SteadygradError)


# --------------------------------------------------------------------------- HTML builder


def test_every_method_escapes_text() -> None:
    page = HtmlReport(HOSTILE, footer={HOSTILE: HOSTILE})
    page.heading(HOSTILE).paragraph(HOSTILE).bullets([HOSTILE]).code(HOSTILE)
    page.table([[HOSTILE, 1.5], {"a": HOSTILE}], ["a", HOSTILE])
    page.verdict(HOSTILE, "refuted", [HOSTILE, HOSTILE])
    page.figure(PNG_SIGNATURE + b"rest", HOSTILE, alt=HOSTILE)
    text = page.render()
    parsed = Page(text)
    assert parsed.tags("script") == []
    # title, h1, h2, p, li, code (6) + th, 2 td (3) + claim, 2 li (3) + figcaption + dt, dd
    assert parsed.all_text.count(HOSTILE) == 15
    assert parsed.tags("img")[0]["alt"] == HOSTILE  # escaped inside the attribute, read back


def test_raw_markup_only_from_our_code() -> None:
    page = HtmlReport("t")
    with pytest.raises(TypeError, match=r"markup must be a steadygrad\.report\.Markup.*got str"):
        page.raw("<b>x</b>")  # type: ignore[arg-type]
    page.raw(Markup("<b>x</b>"))
    assert "<b>x</b>" in page.render()
    assert report.escape(Markup("<i>")) == "<i>" and report.escape("<i>") == "&lt;i&gt;"


def test_table_cells_and_errors() -> None:
    page = HtmlReport("t", footer={})
    page.table(
        [[None, float("nan"), float("-inf"), 3, 0.000123456, True]],
        ["a", "b", "c", "d", "e", "f"],
        caption="cap",
    )
    parsed = Page(page.render())
    cells = [attrs.get("class") for attrs in parsed.tags("td")]
    assert cells == ["null", "num bad", "num bad", "num", "num", None]
    assert "—NaN−inf30.0001235yes" in parsed.all_text
    with pytest.raises(ValueError, match=r"rows\[1\] has 1 cells; columns has 2"):
        page.table([[1, 2], [3]], ["x", "y"])
    assert format_value(np.float32(0.5)) == "0.5" and format_value(np.int64(7)) == "7"


def test_figure_embeds_png_and_rejects_others() -> None:
    fig = small_figure()
    png = figure_to_png_bytes(fig)
    page = HtmlReport("t", footer={}).figure(fig, "caption one").figure(png, "caption two")
    srcs = [str(img["src"]) for img in Page(page.render()).tags("img")]
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[1].split(",", 1)[1]) == png
    assert png_size(base64.b64decode(srcs[0].split(",", 1)[1])) == png_size(png)
    with pytest.raises(ValueError, match="fig must be PNG bytes"):
        page.figure(b"GIF89a", "x")
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure or PNG bytes; got str"):
        page.figure("plot.png", "x")  # type: ignore[arg-type]


def test_verdict_status_and_colour() -> None:
    page = HtmlReport("t", footer={})
    for status, colour in report.VERDICT_STATUSES.items():
        page.verdict("claim", status, "evidence")
        assert f'class="verdict verdict-{status}" style="border-color:{colour}"' in page.render()
    with pytest.raises(
        ValueError, match=r"status must be one of .*; got 'confirm'; did you mean 'con"
    ):
        page.verdict("claim", "confirm", "evidence")


def test_heading_level() -> None:
    with pytest.raises(ValueError, match="level must be 2, 3 or 4; got 1"):
        HtmlReport("t").heading("x", level=1)


def test_footer_names_versions_and_machine() -> None:
    env = environment()
    assert env["steadygrad"] == steadygrad.__version__
    assert env["python"] == platform.python_version()
    assert env["platform"] == platform.platform()
    import importlib.metadata

    assert env["torch"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    footer = Page(HtmlReport("t").render())
    text = footer.all_text
    for key in ("steadygrad", "torch", "python", "platform", "machine", "generated"):
        assert key in text
    assert env["python"] in text and env["machine"] in text


def test_page_is_self_contained_with_a_strict_policy(hostile_run: tuple[Path, Path]) -> None:
    parsed = Page(hostile_run[1].read_text(encoding="utf-8"))
    csp = [m for m in parsed.tags("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1
    assert csp[0]["content"] == "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    links = [v for _, attrs in parsed.elements for k, v in attrs.items() if k in ("src", "href")]
    assert len(links) == 6 and all(str(v).startswith("data:image/png;base64,") for v in links)
    assert parsed.tags("link") == [] and parsed.tags("script") == []
    assert len(parsed.tags("style")) == 1


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    target.write_text("old")
    path = HtmlReport("new", footer={}).write(target)
    assert path == target and "<title>new</title>" in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    with pytest.raises(OSError):
        HtmlReport("x").write(tmp_path / "missing" / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


# --------------------------------------------------------------------------- render_run


def test_render_run_page(hostile_run: tuple[Path, Path]) -> None:
    folder, path = hostile_run
    assert path == folder / "report.html"
    parsed = Page(path.read_text(encoding="utf-8"))
    text = parsed.all_text
    for section in ("Configuration", "Training curves", "Signal by depth", "Histograms",
                    "Saturation and dead units", "Gradient norm by layer and step",
                    "Layers at step 30"):  # fmt: skip
        assert section in text
    imgs = parsed.tags("img")
    assert len(imgs) == 6  # curves, depth profile, histograms, saturation, dead, heatmap
    for img in imgs:
        src = str(img["src"])
        assert src.startswith("data:image/png;base64,")
        png_size(base64.b64decode(src.split(",", 1)[1]))
    assert "layer 1 / layer 30 = 1e-06" in text  # the vanishing ratio, in words
    assert f"steadygrad report {folder}" in text


def test_render_run_layer_table_matches_the_last_step(hostile_run: tuple[Path, Path]) -> None:
    _, path = hostile_run
    parsed = Page(path.read_text(encoding="utf-8"))
    tables = re.findall(r"<table>.*?</table>", path.read_text(encoding="utf-8"), re.S)
    layer_table = Page(tables[-1])
    assert [h for h in layer_table.text[: len(LAYER_COLUMNS)]] == list(LAYER_COLUMNS)
    rows = re.findall(r"<tr>(.*?)</tr>", tables[-1], re.S)[1:]
    assert len(rows) == N_LAYERS
    names = layer_names(N_LAYERS, hostile=True)
    for k, row in enumerate(rows, start=1):
        cells = Page(row).text
        expected = layer_record(k, len(STEPS) - 1, N_LAYERS, names[k - 1])
        assert cells[0] == str(k) and cells[1] == names[k - 1]
        column = LAYER_COLUMNS.index("grad_out_std")
        assert cells[column] == format_value(expected["grad_out_std"])
        assert float(cells[column]) == pytest.approx(grad_std(k), rel=1e-3)
    assert parsed.tags("script") == []


def test_render_run_escapes_config_layer_names_and_notes(hostile_run: tuple[Path, Path]) -> None:
    _, path = hostile_run
    text = path.read_text(encoding="utf-8")
    parsed = Page(text)
    assert parsed.tags("script") == []
    assert all(str(img.get("src", "")).startswith("data:") for img in parsed.tags("img"))
    assert all(not any(k.startswith("on") for k in attrs) for _, attrs in parsed.elements)
    assert HOSTILE in parsed.all_text and HOSTILE_LAYER in parsed.all_text
    assert f"skipped module {HOSTILE} (not interpretable)" in parsed.all_text


def test_render_run_without_histograms_metrics_or_config(tmp_path: Path) -> None:
    write_log(tmp_path, n=4, steps=(0, 10), with_histograms=False)
    out = render_run(tmp_path, out=tmp_path / "elsewhere.html")
    assert out == tmp_path / "elsewhere.html" and not (tmp_path / "report.html").exists()
    parsed = Page(out.read_text())
    assert len(parsed.tags("img")) == 4
    assert "No metrics.jsonl in this folder" in parsed.all_text
    assert "No histograms were recorded" in parsed.all_text
    assert "Configuration" not in parsed.all_text


def test_render_run_header_only_log(tmp_path: Path) -> None:
    (tmp_path / "monitor.jsonl").write_text(
        json.dumps({"format": "steadygrad.monitor/1", "layers": [], "notes": []}) + "\n"
    )
    parsed = Page(render_run(tmp_path).read_text())
    assert "holds no recorded step yet" in parsed.all_text and parsed.tags("img") == []


def test_render_run_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has no monitor.jsonl: train with --monitor"):
        render_run(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        render_run(tmp_path / "nope")
    write_log(tmp_path, n=2, steps=(0,), with_histograms=False)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(DataError, match=r"could not read .*config\.json"):
        render_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not JSON"):
        render_run(tmp_path)


def test_real_monitored_run(tmp_path: Path) -> None:
    """A log recorded by steadygrad.monitor.watch on a deep sigmoid net (Glorot & Bengio 2010's
    standard init, U[±1/√n]) reads back to the numbers the monitor held in memory, and its
    depth profile shows the gradient vanishing toward layer 1."""
    import torch

    monitor = pytest.importorskip("steadygrad.monitor")
    if not hasattr(monitor, "watch"):
        pytest.skip("steadygrad.monitor.watch is not available yet")
    torch.manual_seed(0)
    widths = [20, 64, 64, 64, 64]
    layers: list[torch.nn.Module] = []
    for n_in, n_out in itertools.pairwise(widths):
        linear = torch.nn.Linear(n_in, n_out)
        torch.nn.init.uniform_(linear.weight, -1 / math.sqrt(n_in), 1 / math.sqrt(n_in))
        layers += [linear, torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    with monitor.watch(model, every=2, out=tmp_path, histograms=True) as mon:
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    from_file = recorded(tmp_path / "monitor.jsonl")
    in_memory = recorded(SimpleNamespace(records=mon.records, layers=mon.layers, notes=mon.notes))
    assert from_file.steps.tolist() == [0, 2, 4] and len(from_file.layers) == 5
    for q in QUANTITIES:
        np.testing.assert_array_equal(from_file.observed[q], in_memory.observed[q])
        np.testing.assert_allclose(from_file.values[q], in_memory.values[q], rtol=1e-12)
    last = mon.records[-1]
    grad = [s.grad_out_std for s in last.layers]
    assert grad[0] / grad[-1] < 0.05  # ≈ (√(64·var W)·σ')⁴ ≈ 0.14⁴: vanishing toward layer 1
    fig = depth_profile(tmp_path / "monitor.jsonl", step=4)
    line = next(x for x in fig.axes[0].get_lines() if "gradient" in str(x.get_label()))
    np.testing.assert_allclose(line.get_ydata(), grad, rtol=1e-12)
    hist_fig = histograms(tmp_path / "monitor.jsonl")
    for line, stats in zip(hist_fig.axes[1].get_lines(), last.layers, strict=True):
        counts = np.array(last.histograms[stats.name]["grad"]["counts"], dtype=float)
        np.testing.assert_allclose(line.get_ydata(), counts / counts.sum())


def test_public_names_are_exported() -> None:
    assert sorted(report.__all__) == sorted(set(report.__all__))
    for name in report.__all__:
        assert hasattr(report, name), name


# --------------------------------------------------------------------------- browser

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="needs headless Chromium (Debian package 'chromium', or set $STEADYGRAD_CHROMIUM)",
)


@pytest.mark.browser
@needs_chromium
def test_report_opens_in_chromium_without_console_errors(
    hostile_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = hostile_run
    shot = tmp_path / "report.png"
    result = open_in_browser(path, shot)
    assert result.errors == [], result.errors
    assert not [e for e in result.entries if "alert" in e.text]
    assert result.title == f"steadygrad run report: {path.parent.name}"
    width, height = png_size(shot.read_bytes())
    assert width == 1280 and height > 2000  # the whole page, not just the window


@pytest.mark.browser
@needs_chromium
def test_browser_check_catches_errors(tmp_path: Path) -> None:
    """Negative control: the check above can fail. Each kind of problem is reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<script>console.error('deliberate console error'); console.log('fine');</script>"
        "<script>alert('deliberate alert')</script>"
        "<img src='missing.png'>"
        "<script>throw new Error('deliberate exception')</script></body></html>"
    )
    result = open_in_browser(page, tmp_path / "bad.png")
    errors = {(e.source, e.text.splitlines()[0]) for e in result.errors}
    assert ("console", "deliberate console error") in errors
    assert ("dialog", "alert: deliberate alert") in errors
    assert ("exception", "Error: deliberate exception") in errors
    assert any(src == "log" and "ERR_FILE_NOT_FOUND" in text for src, text in errors)
    assert ("console", "log", "fine") in {(e.source, e.level, e.text) for e in result.entries}
    assert len(result.errors) == 4
    assert (tmp_path / "bad.png").read_bytes().startswith(PNG_SIGNATURE)


def test_browser_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "p.html"
    with pytest.raises(FileNotFoundError, match="is not a file"):
        open_in_browser(page)
    page.write_text("<p>x</p>")
    with pytest.raises(BrowserError, match="chromium '/no/such/chromium' is not an executable"):
        open_in_browser(page, chromium="/no/such/chromium")
    monkeypatch.setenv("STEADYGRAD_CHROMIUM", "/no/such/chromium")
    monkeypatch.setattr("steadygrad.report._browser.CHROMIUM_CANDIDATES", ())
    with pytest.raises(BrowserError, match="no Chromium found: install Debian's 'chromium'"):
        open_in_browser(page)
