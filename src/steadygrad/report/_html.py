"""A small, self-contained HTML report builder: one file, no external assets, no JavaScript.

Figures are embedded as base64 PNG ``data:`` URIs and the CSS is inline, so the file can be mailed,
committed or opened from disk. Escaping is the default: every method takes plain text and escapes
it with :func:`html.escape` (run names, config values, layer names, notes can contain anything).
The only way to insert markup is :meth:`HtmlReport.raw`, which accepts a :class:`Markup` string;
only steadygrad's own code builds those. A Content-Security-Policy forbids scripts and any
non-``data:`` resource, so even a string that slipped through unescaped could not run.
"""

from __future__ import annotations

import base64
import datetime as _dt
import difflib
import html
import importlib.metadata
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["VERDICT_STATUSES", "HtmlReport", "Markup", "environment", "escape", "format_value"]

#: A verdict's status and its colour.
VERDICT_STATUSES = {"confirmed": "#1a7f37", "refuted": "#cf222e", "inconclusive": "#9a6700"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1100px; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.35em; margin-top: 1.8em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.4em; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .9em; color: #57606a; margin-top: .3em; }
.scroll { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .85em; }
caption { text-align: left; color: #57606a; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.null { color: #8c959f; text-align: center; }
td.bad { color: #cf222e; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #eaeef2; padding: 8px 12px; overflow-x: auto;
      font-size: .85em; }
.verdict { border-left: 6px solid; padding: 8px 14px; margin: 1em 0; background: #f6f8fa; }
.verdict .status { font-weight: 700; text-transform: uppercase; letter-spacing: .04em; }
.verdict ul { margin: .3em 0 0; }
footer { margin-top: 3em; border-top: 1px solid #d0d7de; padding-top: .6em; font-size: .8em;
         color: #57606a; }
footer dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 1em; margin: 0; }
footer dt { font-weight: 600; }
footer dd { margin: 0; }
"""


class Markup(str):
    """HTML produced by steadygrad's own code: inserted as is by :class:`HtmlReport`."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as text in HTML: ``&``, ``<``, ``>``, ``"`` and ``'`` escaped (Markup passes)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def format_value(value: Any) -> str:
    """A table cell's text: ``—`` for None, 4 significant digits for floats, ``NaN``/``inf``."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "−inf"
        return f"{v:.4g}"
    return str(value)


def _cell_class(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return ""
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return "num bad"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "num"
    return ""


def _version(package: str) -> str:
    module = sys.modules.get(package)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Software versions and the machine, for a report's footer.

    Keys: ``steadygrad``, ``torch``, ``numpy``, ``matplotlib``, ``python``, ``platform``,
    ``machine`` (CPU model, architecture, logical cores; and the CUDA device when torch is already
    imported and sees one) and ``generated`` (UTC time). torch is not imported for this.
    """
    from steadygrad import __version__

    machine = f"{_cpu_model()} ({platform.machine()}, {os.cpu_count() or '?'} logical cores)"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                machine += f"; GPU: {torch.cuda.get_device_name(0)}"
        except Exception:  # a footer must never fail a report
            pass
    return {
        "steadygrad": __version__,
        "torch": _version("torch"),
        "numpy": np.__version__,
        "matplotlib": _version("matplotlib"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": machine,
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


class HtmlReport:
    """Build a self-contained HTML page block by block; :meth:`render` returns it as a string.

    >>> report = HtmlReport("run <1>")
    >>> _ = report.heading("Layers").table([[1, "fc1", 0.5]], ["depth", "name", "std"])
    >>> "<title>run &lt;1&gt;</title>" in report.render()
    True

    Every text argument is plain text and is escaped; :meth:`raw` is the one way to add markup and
    only accepts :class:`Markup`.
    """

    def __init__(self, title: str, *, footer: Mapping[str, str] | None = None) -> None:
        self.title = str(title)
        self._blocks: list[Markup] = []
        self._footer = dict(footer) if footer is not None else None

    def raw(self, markup: Markup) -> HtmlReport:
        """Insert HTML written by steadygrad's own code.

        Raises:
            TypeError: ``markup`` is not a :class:`Markup` (plain strings go through
                :meth:`paragraph`, which escapes them).
        """
        if not isinstance(markup, Markup):
            raise TypeError(
                f"markup must be a steadygrad.report.Markup built by our own code; got "
                f"{type(markup).__name__} (use paragraph() for text, which is escaped)"
            )
        self._blocks.append(markup)
        return self

    def heading(self, text: str, level: int = 2) -> HtmlReport:
        """A section heading ``<h2>`` (``level`` 2–4; the page title is the only ``<h1>``).

        Raises:
            ValueError: ``level`` is not 2, 3 or 4.
        """
        if isinstance(level, bool) or level not in (2, 3, 4):
            raise ValueError(f"level must be 2, 3 or 4; got {level!r}")
        return self.raw(Markup(f"<h{level}>{escape(text)}</h{level}>"))

    def paragraph(self, text: str) -> HtmlReport:
        """A paragraph of plain text."""
        return self.raw(Markup(f"<p>{escape(text)}</p>"))

    def bullets(self, items: Iterable[str]) -> HtmlReport:
        """An unordered list of plain-text items."""
        lis = "".join(f"<li>{escape(item)}</li>" for item in items)
        return self.raw(Markup(f"<ul>{lis}</ul>"))

    def code(self, text: str) -> HtmlReport:
        """A preformatted block, e.g. the command that reproduces a figure."""
        return self.raw(Markup(f"<pre><code>{escape(text)}</code></pre>"))

    def table(
        self,
        rows: Iterable[Sequence[Any] | Mapping[str, Any]],
        columns: Sequence[str],
        *,
        caption: str | None = None,
    ) -> HtmlReport:
        """A table with header ``columns``; each row a sequence of cells or a mapping by column.

        Cells are formatted by :func:`format_value` (None → ``—``, floats to 4 significant digits,
        NaN/inf highlighted) and escaped.

        Raises:
            ValueError: a sequence row has a different number of cells than ``columns``.
        """
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = []
        for n, row in enumerate(rows, start=1):
            if isinstance(row, Mapping):
                cells = [row.get(c) for c in columns]
            else:
                cells = list(row)
                if len(cells) != len(columns):
                    raise ValueError(
                        f"rows[{n - 1}] has {len(cells)} cells; columns has {len(columns)}"
                    )
            tds = []
            for cell in cells:
                cls = _cell_class(cell)
                attr = f' class="{cls}"' if cls else ""
                tds.append(f"<td{attr}>{escape(format_value(cell))}</td>")
            body.append(f"<tr>{''.join(tds)}</tr>")
        cap = f"<caption>{escape(caption)}</caption>" if caption else ""
        return self.raw(
            Markup(
                f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div>"
            )
        )

    def figure(
        self, fig: Figure | bytes, caption: str, *, alt: str | None = None, dpi: int = 100
    ) -> HtmlReport:
        """An embedded PNG (a matplotlib Figure, or PNG bytes) with a caption.

        Raises:
            TypeError: ``fig`` is neither a Figure nor bytes.
            ValueError: ``fig`` is bytes that are not a PNG.
        """
        if isinstance(fig, (bytes, bytearray)):
            png = bytes(fig)
            if not png.startswith(PNG_SIGNATURE):
                raise ValueError("fig must be PNG bytes (starting with the PNG signature)")
        elif hasattr(fig, "savefig"):
            from steadygrad.report._figures import figure_to_png_bytes

            png = figure_to_png_bytes(fig, dpi=dpi)
        else:
            raise TypeError(
                f"fig must be a matplotlib Figure or PNG bytes; got {type(fig).__name__}"
            )
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        description = escape(alt if alt is not None else caption)
        return self.raw(
            Markup(
                f'<figure><img src="{uri}" alt="{description}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        )

    def verdict(self, claim: str, status: str, evidence: str | Sequence[str]) -> HtmlReport:
        """A claim with its computed status (confirmed / refuted / inconclusive) and evidence.

        Raises:
            ValueError: ``status`` is not one of :data:`VERDICT_STATUSES` (names the closest).
        """
        if status not in VERDICT_STATUSES:
            close = difflib.get_close_matches(str(status), list(VERDICT_STATUSES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"status must be one of {', '.join(map(repr, VERDICT_STATUSES))}; "
                f"got {status!r}{hint}"
            )
        color = VERDICT_STATUSES[status]
        items = [evidence] if isinstance(evidence, str) else list(evidence)
        lis = "".join(f"<li>{escape(item)}</li>" for item in items)
        return self.raw(
            Markup(
                f'<div class="verdict verdict-{status}" style="border-color:{color}">'
                f'<span class="status" style="color:{color}">{status}</span> '
                f'<span class="claim">{escape(claim)}</span><ul>{lis}</ul></div>'
            )
        )

    def render(self) -> str:
        """The whole page."""
        footer = self._footer if self._footer is not None else environment()
        facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in footer.items())
        body = "\n".join(self._blocks)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(self.title)}</h1>\n{body}\n"
            f"<footer><dl>{facts}</dl></footer>\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`render` to ``path`` atomically (temporary file, fsync, rename).

        Raises:
            OSError: the folder is missing or not writable; no partial file is left.
        """
        target = Path(path)
        data = self.render().encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
