"""JupyterLab in headless Chromium, driven by Playwright as a person drives it: the menu's Run All, the
toolbar's stop button, typing into a form's fields, the upload button, a download link.

`tests/test_browser.py` uses it; nothing here knows midikit's notebooks. Needs Debian's chromium
(`apt-get install -y chromium`) and `pip install -r requirements-browser.txt` (Playwright's Python
client only: `playwright install` downloads a browser, which is neither possible offline nor needed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the test skips (missing() says why)
    PlaywrightTimeout = TimeoutError

CHROMIUM = "/usr/bin/chromium"
# The network is closed on CI machines: without these Chromium hangs on connection attempts.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|-{20,}\n\w*(Error|Exception)")
GREEN, RED = "1a7f37", "cf222e"  # the forms' message colours (midikit.widgets.fields)


def missing() -> str | None:
    """Why a browser test cannot run here (one line), or None when everything it needs is installed."""
    lacks = [] if Path(CHROMIUM).is_file() else [f"{CHROMIUM} (apt-get install -y chromium)"]
    modules = [name for name in ("playwright", "jupyterlab") if importlib.util.find_spec(name) is None]
    if modules:
        lacks.append(f"{' and '.join(modules)} (pip install -r requirements-browser.txt)")
    return f"needs {', '.join(lacks)}" if lacks else None


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving `work`, its kernels started with `env` added. Its own
    settings: every cell rendered (no windowing, so each cell can be found), no news or update checks."""

    def __init__(self, work: Path, env: dict, log_path: Path):
        self.work, self.log_path, self.token = work, log_path, os.urandom(12).hex()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        settings = log_path.parent / "lab_settings"
        for plugin, values in {
            "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                "checkForUpdates": False},
        }.items():
            (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
            (settings / plugin).write_text(json.dumps(values))
        self.env = {**{key: value for key, value in os.environ.items() if key not in env},
                    **{key: value for key, value in env.items() if value is not None}}  # None: unset
        self.env.update(JUPYTERLAB_SETTINGS_DIR=str(settings),
                        JUPYTERLAB_WORKSPACES_DIR=str(log_path.parent / "lab_workspaces"),
                        JUPYTER_CONFIG_DIR=str(log_path.parent / "jupyter_config"),  # not the user's own
                        MPLBACKEND="module://matplotlib_inline.backend_inline")
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_s: float = 120) -> None:
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.work}",
                   "--LabApp.extension_manager=readonly",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # a container's root (CI machines)
            command.append("--allow-root")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
                                        cwd=self.work)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start:\n{self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {wait_s:.0f} s ({self.log_path})")

    def shut_down_kernels(self) -> None:
        """End every kernel, as closing a notebook's tab and its kernel does: the next one has the CPU."""
        base = f"{self.url}/api/sessions"
        with urllib.request.urlopen(f"{base}?token={self.token}", timeout=30) as response:
            sessions = json.load(response)
        for session in sessions:
            request = urllib.request.Request(f"{base}/{session['id']}?token={self.token}", method="DELETE")
            urllib.request.urlopen(request, timeout=60).close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launch(playwright, profile: Path, timeout_s: float):
    """Debian's Chromium through Playwright (`executable_path`: no browser download), with a fresh profile."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, accept_downloads=True,
        viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(timeout_s * 1000)
    return context


# What a code cell's prompt says: "[ ]" not run, "[*]" running or queued, "[12]" done.
_PROMPTS = "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell .jp-InputPrompt')]" \
           ".map(p => p.textContent.trim())"


class Notebook:
    """One notebook open in its own JupyterLab page: run its cells, press its buttons, read its forms."""

    def __init__(self, page, lab: JupyterLab, name: str, timeout_s: float, say=print):
        self.page, self.lab, self.name, self.say = page, lab, name, say
        self.timeout_s = timeout_s
        self.cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")

    def open(self, cells: int) -> None:
        """Only this notebook open (`?reset`: no tabs restored from an earlier page); waits until its
        `cells` are drawn and its kernel is idle."""
        self.page.goto(f"{self.lab.url}/lab/tree/{self.name}?reset", wait_until="domcontentloaded")
        self.page.wait_for_function("(n) => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')"
                                    ".length >= n", arg=cells)
        self.wait_kernel_idle()

    def wait_kernel_idle(self) -> None:
        """Until the notebook's kernel is connected and idle (the status bar says so)."""
        self.page.wait_for_function(
            "() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            " const bar = document.querySelector('#jp-main-statusbar');"
            " return s && s.getAttribute('data-status') === 'idle' && /\\| Idle/.test(bar ? bar.textContent : ''); }",
            timeout=self.timeout_s * 1000)

    def index_of(self, text: str) -> int:
        """The first cell whose source contains `text`."""
        sources = self.page.eval_on_selector_all(
            ".jp-NotebookPanel .jp-Notebook .jp-Cell",
            "cells => cells.map(c => (c.querySelector('.jp-InputArea-editor') || {}).textContent || '')")
        for index, source in enumerate(sources):
            if text in source:
                return index
        raise AssertionError(f"{self.name}: no cell contains {text!r}")

    # -- running
    def run_all(self) -> None:
        """Run → Run All Cells, from the menu bar. Cells run before the page's kernel is connected stay
        silently unrun (JupyterLab's way): then the menu is used again."""
        for attempt in range(5):
            self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            self.page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            try:
                self.page.wait_for_function(f"() => ({_PROMPTS})().some(p => /\\[(\\*|\\d+)\\]/.test(p))",
                                            timeout=10_000)
                return
            except PlaywrightTimeout:  # nothing started
                if attempt == 4:
                    raise
                self.wait_kernel_idle()

    def wait_done(self, timeout_s: float | None = None) -> None:
        """Until no cell is running or queued and the kernel is idle (after Run All, or a stop)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            prompts = self.page.evaluate(_PROMPTS)
            if not any("*" in prompt for prompt in prompts) and self._kernel_idle():
                return
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: cells still running after {timeout_s or self.timeout_s:.0f} s")

    def _kernel_idle(self) -> bool:
        return self.page.evaluate("() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                                  " return !!s && s.getAttribute('data-status') === 'idle'; }")

    def run_cell(self, index: int) -> None:
        """Select cell `index` and run it in place (Ctrl+Enter); wait until it has finished. A key press that
        JupyterLab missed (it sometimes does while a page settles) is pressed again."""
        cell = self.cells.nth(index)
        prompt = cell.locator(".jp-InputPrompt").first
        before = prompt.inner_text()
        for attempt in range(4):
            prompt.click()  # selects the cell, in command mode
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("Control+Enter")
            try:
                self.page.wait_for_function("([el, before]) => el.textContent.includes('*') || "
                                            "el.textContent !== before",
                                            arg=[prompt.element_handle(), before], timeout=5000)
                break
            except PlaywrightTimeout:  # not started: press again
                if attempt == 3:
                    raise
        self.page.wait_for_function("(el) => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(),
                                    timeout=self.timeout_s * 1000)

    def interrupt(self) -> None:
        """The toolbar's stop button (interrupt the kernel)."""
        self.page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").first.click()

    # -- reading
    def output(self, index: int):
        return self.cells.nth(index).locator(".jp-OutputArea")

    def output_text(self, index: int) -> str:
        return self.output(index).inner_text()

    def tracebacks(self) -> list[str]:
        """Every cell whose output shows a traceback: its source's first line and the error's end."""
        found = []
        for index in range(self.cells.count()):
            area = self.cells.nth(index).locator(".jp-OutputArea")
            text = area.inner_text() if area.count() else ""
            if TRACEBACK.search(text):
                found.append(f"cell {index} "
                             f"({self.cells.nth(index).locator('.jp-InputArea-editor').inner_text()[:60]!r}): "
                             f"…{text[-600:]}")
        return found

    def bare_results(self) -> list[str]:
        """Every cell result that is only a Python repr (`[16]: PosixPath('…')`): clutter nobody asked to
        see. Forms, tables and pictures are results too, drawn as such."""
        return self.page.eval_on_selector_all(
            ".jp-NotebookPanel .jp-OutputArea-executeResult .jp-OutputArea-output",
            "outputs => outputs.filter(o => o.getAttribute('data-mime-type') === 'text/plain')"
            ".map(o => o.textContent.trim().slice(0, 120))")

    # -- forms
    def form(self, index: int):
        box = self.output(index).locator(".widget-vbox").first
        box.wait_for()
        return box

    def message(self, form) -> tuple[str, str]:
        """The form's message line: its text and its style (the colour)."""
        span = form.locator(":scope > .widget-html span").last
        span.wait_for()
        return span.inner_text(), span.get_attribute("style") or ""

    def wait_message(self, form, starts: str, contains: str = "", timeout_s: float = 60) -> str:
        """Until the form's message starts with ✓ or ⚠ and holds `contains`, drawn in green or red."""
        deadline, text = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            text, style = self.message(form)
            if text.startswith(starts) and contains in text:
                colour = RED if starts == "⚠" else GREEN
                assert colour in style, f"{self.name}: the message {text!r} is not drawn in #{colour} ({style})"
                return text
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: the form's message line is {text!r}, expected {starts}…{contains}")

    def renders(self, form, contains: str = "") -> str:
        """The form is drawn whole: its ✓ message line (holding `contains`), and every label and button
        readable (none cut short with an ellipsis). Returns the message."""
        shown = self.wait_message(form, "✓", contains)
        cut = form.evaluate("box => [...box.querySelectorAll('.widget-label, .widget-upload, .widget-button')]"
                            ".filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)"
                            ".map(e => e.textContent.trim())")
        assert not cut, f"{self.name}: the form {shown[:40]!r}… cuts these short: {cut}"
        return shown

    def field(self, form, label: str):
        row = form.locator(".widget-inline-hbox").filter(has=self.page.locator(".widget-label", has_text=label)).first
        return row.locator("input, textarea, select").first

    def type_into(self, form, label: str, value: str) -> None:
        """Replace a field's text, as a person does, and commit it (text fields update on Enter or on leaving)."""
        field = self.field(form, label)
        field.click()
        field.press("Control+a")
        field.press("Backspace")
        field.type(value)
        field.press("Enter")
        field.press("Tab")

    def check_bad_value(self, form, label: str, bad: str, error: str) -> str:
        """`bad` typed into a field shows the form's error (holding `error`); the value that was there,
        typed back, clears it. Returns the error shown."""
        good = self.field(form, label).input_value()
        self.type_into(form, label, bad)
        shown = self.wait_message(form, "⚠", error)
        self.type_into(form, label, good)
        self.wait_message(form, "✓")
        return shown


def keep_for_a_look(context, lab: JupyterLab | None, folder: Path) -> None:
    """After a failure: a screenshot of each open page, the notebooks as they are (outputs included) and
    JupyterLab's log, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, page in enumerate(context.pages if context is not None else []):
        try:
            opened = re.search(r"/tree/([^?]+)", page.url)  # /lab/tree/… or /lab/workspaces/…/tree/…
            name = re.sub(r"\W+", "_", opened.group(1)) if opened else f"page{number}"
            page.screenshot(path=str(folder / f"FAILED_{name}.png"), full_page=True)
            page.keyboard.press("Control+s")  # the copy's outputs, for a look afterwards
        except Exception as exc:  # noqa: BLE001 (a page that cannot be drawn any more: keep the rest)
            (folder / f"page{number}_error.txt").write_text(repr(exc))
    if lab is not None:
        time.sleep(1)  # the saves above
        (folder / "notebooks").mkdir(exist_ok=True)
        for notebook in lab.work.glob("*.ipynb"):
            shutil.copy(notebook, folder / "notebooks" / notebook.name)
        if lab.log_path.exists():
            shutil.copy(lab.log_path, folder / lab.log_path.name)
