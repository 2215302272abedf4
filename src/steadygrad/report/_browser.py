"""Open an HTML report in headless Chromium and collect what its console says.

This is how the reports are checked in a real browser (tests, CI): the page is loaded from disk,
every console message, uncaught exception, browser log entry (failed loads, Content-Security-Policy
violations) and JavaScript dialog (``alert``) is collected, and a screenshot is saved.

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (NUL-separated JSON on file
descriptors 3 and 4 of the browser), so it needs no Python package beyond the standard library and
no network port (POSIX only: it uses pipes, ``select`` and ``bash``). The console level of each
message comes from the protocol itself, not from scraping the browser's log output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygrad.errors import SteadygradError

__all__ = ["BrowserError", "BrowserResult", "ConsoleEntry", "find_chromium", "open_in_browser"]

#: Places looked at, in order, after ``$STEADYGRAD_CHROMIUM``.
CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)

# Flags that keep a headless run quiet, local and reproducible: no sandbox (containers lack the
# namespaces), no GPU, no first-run UI, no background network traffic of any kind.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class BrowserError(SteadygradError):
    """Chromium could not be started, or did not answer in time."""


@dataclass(frozen=True)
class ConsoleEntry:
    """One thing the page said: ``source`` is ``console``, ``exception``, ``log`` or ``dialog``;
    ``level`` is the console level (``log``, ``info``, ``warning``, ``error``, …)."""

    source: str
    level: str
    text: str


@dataclass
class BrowserResult:
    """What loading the page produced."""

    url: str
    entries: list[ConsoleEntry] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""

    @property
    def errors(self) -> list[ConsoleEntry]:
        """Console errors and assertions, uncaught exceptions, browser errors and dialogs."""
        return [
            e
            for e in self.entries
            if e.source in ("exception", "dialog") or e.level in ("error", "assert")
        ]


def find_chromium() -> str | None:
    """The Chromium executable: ``$STEADYGRAD_CHROMIUM``, then :data:`CHROMIUM_CANDIDATES`."""
    configured = os.environ.get("STEADYGRAD_CHROMIUM")
    for candidate in ((configured,) if configured else ()) + CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class _Pipe:
    """The DevTools pipe: write commands to the browser's fd 3, read replies from its fd 4."""

    def __init__(self, to_browser: int, from_browser: int, deadline: float) -> None:
        self._out = to_browser
        self._in = from_browser
        self._deadline = deadline
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._out, data) :]
        except BrokenPipeError:
            raise BrowserError("chromium exited before it could be driven") from None
        return self._next_id

    def _read_one(self, until: float) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            remaining = min(until, self._deadline) - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._in], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe (it exited)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str = ""
    ) -> dict[str, Any]:
        """Send a command and wait for its reply; events seen meanwhile are kept."""
        wanted = self.send(method, params, session)
        while True:
            message = self._read_one(self._deadline)
            if message is None:
                raise BrowserError(f"chromium did not answer {method} in time")
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"chromium refused {method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        until = time.monotonic() + seconds
        while True:
            message = self._read_one(until)
            if message is None:
                return
            if "method" in message:
                self.events.append(message)


def _remote_text(args: Sequence[dict[str, Any]]) -> str:
    parts = []
    for arg in args:
        if "value" in arg:
            parts.append(str(arg["value"]))
        else:
            parts.append(str(arg.get("description", arg.get("type", ""))))
    return " ".join(parts)


def _entries(events: Sequence[dict[str, Any]], session: str) -> list[ConsoleEntry]:
    out: list[ConsoleEntry] = []
    for event in events:
        if event.get("sessionId", session) != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            level = {"warn": "warning"}.get(params.get("type", "log"), params.get("type", "log"))
            out.append(ConsoleEntry("console", level, _remote_text(params.get("args", []))))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            text = exception.get("description") or details.get("text", "exception")
            out.append(ConsoleEntry("exception", "error", str(text)))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            out.append(ConsoleEntry("log", str(entry.get("level", "info")), entry.get("text", "")))
        elif method == "Page.javascriptDialogOpening":
            text = f"{params.get('type', 'dialog')}: {params.get('message', '')}"
            out.append(ConsoleEntry("dialog", "error", text))
    return out


def open_in_browser(
    path: str | os.PathLike[str],
    screenshot: str | os.PathLike[str] | None = None,
    *,
    chromium: str | None = None,
    width: int = 1280,
    height: int = 2000,
    settle: float = 0.5,
    timeout: float = 60.0,
) -> BrowserResult:
    """Load the file ``path`` in headless Chromium; return its console entries and title.

    The page is opened with ``file://``, JavaScript dialogs are recorded and dismissed, and after
    the load event the console is watched for ``settle`` more seconds. With ``screenshot`` a PNG of
    the whole page (``width`` wide, at least ``height`` tall) is written there.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BrowserError: no Chromium was found, it did not start, or it did not answer within
            ``timeout`` seconds.
    """
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file")
    if chromium is not None:
        executable = shutil.which(chromium)
        if executable is None:
            raise BrowserError(f"chromium {chromium!r} is not an executable file")
    else:
        executable = find_chromium()
        if executable is None:
            raise BrowserError(
                "no Chromium found: install Debian's 'chromium' package or set $STEADYGRAD_CHROMIUM"
            )
    import fcntl  # POSIX only; imported here so the package still imports elsewhere

    deadline = time.monotonic() + timeout
    # The browser reads commands on fd 3 and writes replies on fd 4. bash moves the child's ends
    # there (dash only knows fds 0-9); they first get numbers >= 10 so no redirection clobbers them.
    bash = shutil.which("bash")
    if bash is None:
        raise BrowserError("bash is needed to start chromium with a DevTools pipe; none found")
    cmd_r, cmd_w = os.pipe()
    evt_r, evt_w = os.pipe()
    child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
    child_w = fcntl.fcntl(evt_w, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(cmd_r)
    os.close(evt_w)
    with tempfile.TemporaryDirectory(prefix="steadygrad-chromium-") as profile:
        shell = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        argv = [bash, "-c", shell, executable, *_FLAGS, f"--user-data-dir={profile}"]
        argv += [f"--window-size={width},{height}", "about:blank"]
        try:
            process = subprocess.Popen(
                argv,
                pass_fds=(child_r, child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise BrowserError(f"could not start chromium {executable!r}: {exc}") from None
        finally:
            os.close(child_r)
            os.close(child_w)
        pipe = _Pipe(cmd_w, evt_r, deadline)
        try:
            return _drive(pipe, page, screenshot, width, height, settle)
        finally:
            with contextlib.suppress(OSError, BrowserError):
                pipe.send("Browser.close")
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(cmd_w)
            os.close(evt_r)


def _drive(
    pipe: _Pipe,
    page: Path,
    screenshot: str | os.PathLike[str] | None,
    width: int,
    height: int,
    settle: float,
) -> BrowserResult:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    url = page.as_uri()
    pipe.send("Page.navigate", {"url": url}, session=session)
    loaded = False
    while not loaded:
        # A dialog blocks the page until it is answered: record it, dismiss it, keep loading.
        before = len(pipe.events)
        pipe.pump(0.05)
        for event in pipe.events[before:]:
            if event.get("method") == "Page.javascriptDialogOpening":
                pipe.send("Page.handleJavaScriptDialog", {"accept": True}, session=session)
            if event.get("method") == "Page.loadEventFired":
                loaded = True
        if not loaded and pipe.expired():
            raise BrowserError(f"{url} did not finish loading in time")
    pipe.pump(settle)
    title = pipe.call("Runtime.evaluate", {"expression": "document.title"}, session=session)
    result = BrowserResult(url=url, title=str(title.get("result", {}).get("value", "")))
    if screenshot is not None:
        shot = pipe.call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            session=session,
        )
        target_path = Path(screenshot)
        target_path.write_bytes(base64.b64decode(shot["data"]))
        result.screenshot = target_path
    result.entries = _entries(pipe.events, session)
    return result
