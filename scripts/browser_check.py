"""The notebooks' forms in a real browser: JupyterLab in headless Chromium, driven by Playwright.

nbval runs the notebooks' code but never draws a widget. This opens notebooks 01, 03 and 07 in
JupyterLab, runs them top to bottom with the keyboard, and checks what a person sees: each form
renders with its message line; a bad value typed into a field shows the form's error (red, ⚠);
a good value clears it and is what the next cell uses; no cell shows a traceback. It works on
copies of the notebooks in a fresh `$MIDIKIT_ROOT`, where it first preprocesses a small dataset
and trains a tiny run with the package (notebooks never do that behind the user's back: 03 trains
because its training cell is run, 07 needs a finished run). Screenshots of a failure are kept.

    python scripts/browser_check.py [--keep] [--screenshots DIR] [--timeout 180]

It took 78 s to 1 min 55 s on 2 CPU cores shared with other jobs (load average 2 to 4; set-up and the three
notebooks included), and about 4 min once when the machine was busier (a cell then waits up to --timeout).
On a failure the temporary folder is kept: a screenshot of the failing notebook (FAILED_*.png), the
notebook copies with their outputs and JupyterLab's log.

Needs, beyond requirements-dev.txt (none of it is in CI, which does not run this check):
    apt-get install -y chromium          # Debian's Chromium: no browser download is possible offline
    pip install jupyterlab playwright    # the Python client only; `playwright install` is NOT needed
It exits 0 when every check passed, 1 otherwise, and prints each check and the time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
# The network is closed here: without these Chromium hangs on connection attempts.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = ("01_setup.ipynb", "03_train_lstm.ipynb", "07_generate.ipynb")
DATASET = "folk_corpus"  # the notebooks' default dataset outside Colab (midikit.widgets.forms.SOURCES)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|-{20,}\n\w*(Error|Exception)")


class CheckFailed(AssertionError):
    pass


# --------------------------------------------------------------------------- set-up


def prepare_root(root: Path) -> str:
    """What 03 and 07 need, made with the package: a small dataset and one finished tiny LSTM run that
    has learnt enough to write notes (07 plays what it generates). Returns the run's id."""
    from midikit.data import PreprocessConfig, preprocess
    from midikit.train import TrainConfig, train

    preprocess(PreprocessConfig(source="corpus", dataset=DATASET, checkpoint_dir=str(root), limit=40), progress=False,
               log=lambda *_: None)
    result = train(TrainConfig(dataset=DATASET, checkpoint_dir=str(root), model_type="lstm", preset="cpu", max_steps=60,
                               eval_every=30, eval_windows=16, batch_size=16, lr=1e-2, device="cpu", progress=False,
                               resume="never", checkpoint_every_minutes=0),
                   model_overrides=dict(embed_size=32, hidden_size=64, num_layers=1, context_length=32), log=lambda *_: None)
    assert result.status == "max_steps", result.status
    return result.run_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_jupyterlab(work: Path, root: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1 serving `work`, its kernels with MIDIKIT_ROOT=root. Settings of its own:
    every cell rendered (no windowing, so each cell can be found), no news or update checks."""
    settings = work.parent / "lab_settings"
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / plugin).write_text(json.dumps(values))
    env = dict(os.environ, MIDIKIT_ROOT=str(root), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(work.parent / "lab_workspaces"), PYTHONPATH=str(REPO),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a container's root (CI machines, this one)
        command.append("--allow-root")
    process = subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=work)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(f"JupyterLab exited at start ({log_path}):\n{log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    raise CheckFailed(f"JupyterLab did not answer within 90 s ({log_path})")


def shut_down_kernels(port: int, token: str) -> None:
    """End every kernel, so the next notebook has the CPU to itself."""
    base = f"http://127.0.0.1:{port}/api/sessions"
    with urllib.request.urlopen(f"{base}?token={token}", timeout=10) as response:
        sessions = json.load(response)
    for session in sessions:
        request = urllib.request.Request(f"{base}/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


# --------------------------------------------------------------------------- driving a notebook


class Notebook:
    """One notebook open in JupyterLab: run its cells in order, read its forms and outputs."""

    def __init__(self, page, name: str, timeout_s: float, report):
        self.page, self.name, self.timeout_ms, self.report = page, name, timeout_s * 1000, report
        self.cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        self.next, self.total = 0, 0

    def open(self, base_url: str, cells: int) -> None:
        """A page of its own with only this notebook open (`?reset`: no tabs restored from the last page);
        waits until all its `cells` are drawn and its kernel is idle."""
        self.page.goto(f"{base_url}/lab/tree/{self.name}?reset", wait_until="domcontentloaded")
        self.page.wait_for_function("(n) => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length >= n",
                                    arg=cells, timeout=self.timeout_ms)
        self.wait_kernel_idle()
        self.total = cells  # running the last cell must not make us chase cells JupyterLab adds

    def wait_kernel_idle(self) -> None:
        self.page.wait_for_function(
            "() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            " return s && s.getAttribute('data-status') === 'idle'; }", timeout=self.timeout_ms)

    def count(self) -> int:
        return self.cells.count()

    def source(self, index: int) -> str:
        return self.cells.nth(index).locator(".jp-InputArea-editor").inner_text()

    def run_next(self) -> int:
        """Run the next cell (select it, Ctrl+Enter) and wait until it has finished; its index. A key press
        that JupyterLab missed (it sometimes does while a page settles) is pressed again."""
        index = self.next
        cell = self.cells.nth(index)
        is_code = "jp-CodeCell" in (cell.get_attribute("class") or "")
        prompt = cell.locator(".jp-InputPrompt").first
        for attempt in range(4):
            cell.locator(".jp-InputPrompt").first.click()  # selects the cell, in command mode
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("Control+Enter")  # run it, in place
            if not is_code:
                break
            try:
                self.page.wait_for_function("(el) => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                            arg=prompt.element_handle(), timeout=5000)
                break
            except Exception:  # not started: press again
                if attempt == 3:
                    raise
        if is_code:
            self.page.wait_for_function("(el) => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(),
                                        timeout=self.timeout_ms)
        self.next += 1
        return index

    def run_until(self, text: str) -> int:
        """Run cells up to and including the first one whose source contains `text`."""
        while self.next < self.total:
            has = text in self.source(self.next)
            index = self.run_next()
            if has:
                return index
        raise CheckFailed(f"{self.name}: no cell containing {text!r}")

    def run_rest(self) -> None:
        while self.next < self.total:
            self.run_next()

    def output_text(self, index: int) -> str:
        return self.cells.nth(index).locator(".jp-OutputArea").inner_text()

    # -- forms
    def form(self, index: int):
        box = self.cells.nth(index).locator(".jp-OutputArea .widget-vbox").first
        box.wait_for(timeout=self.timeout_ms)
        return box

    def message(self, form) -> tuple[str, str]:
        """The form's message line: its text and colour."""
        span = form.locator(":scope > .widget-html span").last
        span.wait_for(timeout=self.timeout_ms)
        return span.inner_text(), span.get_attribute("style") or ""

    def wait_message(self, form, starts: str, contains: str = "") -> str:
        deadline = time.monotonic() + self.timeout_ms / 1000
        text = ""
        while time.monotonic() < deadline:
            text, style = self.message(form)
            if text.startswith(starts) and contains in text:
                colour = "cf222e" if starts == "⚠" else "1a7f37"  # red for an error, green for a good value
                if colour not in style:
                    raise CheckFailed(f"{self.name}: the message {text!r} is not drawn in #{colour} ({style})")
                return text
            time.sleep(0.2)
        raise CheckFailed(f"{self.name}: the form's message line is {text!r}, expected {starts}…{contains}")

    def type_into(self, form, label: str, value: str) -> None:
        """Replace a field's text, as a person does, and commit it (Enter: the fields update on Enter or blur)."""
        row = form.locator(".widget-inline-hbox").filter(has=self.page.locator(".widget-label", has_text=label)).first
        field = row.locator("input, textarea").first
        field.click()
        field.press("Control+a")
        field.type(value)
        field.press("Enter")
        field.press("Tab")

    def choose(self, form, label: str, option_text: str) -> None:
        """Pick the option of a dropdown field whose text contains `option_text`."""
        row = form.locator(".widget-inline-hbox").filter(has=self.page.locator(".widget-label", has_text=label)).first
        select = row.locator("select").first
        option = select.locator("option").filter(has_text=option_text).first
        select.select_option(value=option.get_attribute("value"))

    def errors(self) -> list[str]:
        """Every cell whose output shows a traceback."""
        found = []
        for i in range(self.count()):
            outputs = self.cells.nth(i).locator(".jp-OutputArea")
            text = outputs.inner_text() if outputs.count() else ""
            if TRACEBACK.search(text):
                found.append(f"cell {i}: {text[:600]}")
        return found


def check_no_traceback(notebook: Notebook, say) -> None:
    errors = notebook.errors()
    if errors:
        raise CheckFailed(f"{notebook.name}: a cell shows an error:\n" + "\n".join(errors))
    say(f"{notebook.name}: no cell shows a traceback")


# --------------------------------------------------------------------------- the checks


def check_form_messages(nb: Notebook, form, say, name: str, ready: str, field: str, bad: str, error: str) -> None:
    """The form renders with its message line (holding `ready`), and `bad` typed into `field` shows
    the form's error (holding `error`)."""
    text = nb.wait_message(form, "✓", ready)
    say(f"{name} renders with its message line: {text!r}")
    nb.type_into(form, field, bad)
    text = nb.wait_message(form, "⚠", error)
    say(f"{name}: {bad!r} in {field!r} shows the form's error: {text[:90]!r}")


def check_01(nb: Notebook, root: Path, say, trained: str) -> None:
    index = nb.run_until("FolderForm()")
    form = nb.form(index)
    check_form_messages(nb, form, say, "01 folder form", str(root), "checkpoint folder", "/content/drive/MyDrive/elsewhere",
                        "Drive is not mounted")
    other = root.parent / "other_root"  # another folder, holding a copy of the dataset under another name
    shutil.copytree(root / DATASET / "data", other / "folk_copy" / "data")
    nb.type_into(form, "checkpoint folder", str(other))
    nb.wait_message(form, "✓", "datasets: folk_copy")
    used = nb.output_text(nb.run_until("show_folder(root)"))
    if "folk_copy" not in used or DATASET in used:
        raise CheckFailed(f"01: the next cell did not use the folder typed in ({other}):\n{used[:500]}")
    say("01 the folder typed in is what the next cell shows")
    nb.run_rest()


def check_03(nb: Notebook, root: Path, say, trained: str) -> None:
    from midikit.data import load_dataset
    from midikit.models import ModelConfig, build_model, count_parameters
    from midikit.presets import get_preset
    from midikit.storage import DatasetPaths

    nb.run_until("DatasetForm()")
    index = nb.run_until('TrainForm("lstm"')
    form = nb.form(index)
    check_form_messages(nb, form, say, "03 training form", "new run", "max_steps", "-3", "max_steps must be")
    nb.type_into(form, "max_steps", "4")
    nb.type_into(form, "hidden_size", "48")
    nb.type_into(form, "eval_every", "2")
    nb.wait_message(form, "✓", "4 steps")
    dataset = load_dataset(DatasetPaths(root, DATASET))
    preset = get_preset("lstm", "cpu").model_config("lstm", dataset.vocab_size, dataset.seq_length)
    expected = count_parameters(build_model(ModelConfig(**{**preset.to_dict(), "hidden_size": 48})))
    used = nb.output_text(nb.run_until("form.value"))
    if f"{expected:,} parameters" not in used:
        raise CheckFailed(f"03: the next cell did not build the model typed in (expected {expected:,} parameters): {used!r}")
    say(f"03 the hidden_size typed in is what the next cell builds ({expected:,} parameters)")
    nb.run_until("show_resumable")
    nb.run_until("train_with_live_plot")
    done = nb.output_text(nb.run_until("show_artifacts"))
    if "after 4 steps" not in done:
        raise CheckFailed(f"03: training did not take the max_steps typed in: {done[:400]!r}")
    say("03 the max_steps typed in is what the training cell ran (4 steps)")
    nb.run_rest()


def check_07(nb: Notebook, root: Path, say, trained: str) -> None:
    nb.run_until("DatasetForm()")
    nb.run_until("require_finished_run")
    index = nb.run_until("GenerateForm(paths)")
    form = nb.form(index)
    check_form_messages(nb, form, say, "07 generate form", "top_p", "p (top_p)", "1.5", "p must be")
    nb.choose(form, "run", trained)  # the run prepared above: 03's 4-step run (the newest) writes no notes yet
    nb.type_into(form, "p (top_p)", "0.8")
    nb.type_into(form, "tokens to generate", "96")
    nb.type_into(form, "seed (-1 = random)", "7")
    nb.wait_message(form, "✓", f"{trained} · top_p · 96 tokens")
    used = nb.output_text(nb.run_until("generate.generate(run, sample)"))
    if "seed 7" not in used or "1 piece(s)" not in used:
        raise CheckFailed(f"07: the next cell did not use the values typed in: {used!r}")
    tokens = int(re.search(r"(\d+) new tokens", used).group(1))
    if tokens > 96:
        raise CheckFailed(f"07: {tokens} tokens generated, more than the 96 typed in")
    say(f"07 the seed and length typed in are what the next cell used ({used.strip()!r})")
    line = nb.output_text(nb.run_until("audio_synthesizer()")).strip()
    if not line.startswith("Audio preview:"):
        raise CheckFailed(f"07: the optional audio cell did not say which synthesizer plays: {line!r}")
    say(f"07 the audio cell says: {line!r}")
    nb.run_rest()
    audio = nb.page.locator(".jp-OutputArea audio")
    if audio.count() < 1:
        raise CheckFailed("07: no audio player was drawn")
    say(f"07 {audio.count()} audio player(s) drawn")


CHECKS = {"01_setup.ipynb": check_01, "03_train_lstm.ipynb": check_03, "07_generate.ipynb": check_07}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="also copy the failure screenshots here (they are kept in the temporary folder anyway)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (notebook copies, root, logs)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds any one cell or element may take")
    args = parser.parse_args()
    started = time.monotonic()
    say = lambda text: print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)  # noqa: E731
    if not Path(CHROMIUM).is_file():
        print(f"{CHROMIUM} not found: apt-get install -y chromium", file=sys.stderr)
        return 1
    import nbformat

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: pip install playwright (no browser download needed)", file=sys.stderr)
        return 1

    temp = Path(tempfile.mkdtemp(prefix="midikit_browser_"))
    work, root = temp / "notebooks", temp / "root"
    work.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(REPO / "notebooks" / name, work / name)
    server, failed = None, []
    try:
        trained = prepare_root(root)
        say(f"prepared {root}: dataset {DATASET} and one finished tiny LSTM run, {trained}")
        port, token = free_port(), os.urandom(12).hex()
        server = start_jupyterlab(work, root, port, token, temp / "jupyterlab.log")
        say(f"JupyterLab on port {port}")
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(temp / "chromium_profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(args.timeout * 1000)
            first = context.pages[0] if context.pages else context.new_page()
            first.goto(f"http://127.0.0.1:{port}/lab?token={token}", wait_until="domcontentloaded")  # the login cookie
            for name in NOTEBOOKS:
                page = context.new_page()
                notebook = Notebook(page, name, args.timeout, say)
                try:
                    notebook.open(f"http://127.0.0.1:{port}", len(nbformat.read(work / name, as_version=4).cells))
                    say(f"{name}: opened, kernel idle")
                    CHECKS[name](notebook, root, say, trained)
                    notebook.wait_kernel_idle()
                    check_no_traceback(notebook, say)
                except Exception as exc:  # keep going: every notebook gets its verdict and its screenshot
                    shot = temp / f"FAILED_{Path(name).stem}.png"
                    page.screenshot(path=str(shot))
                    if args.screenshots:
                        args.screenshots.mkdir(parents=True, exist_ok=True)
                        shutil.copy(shot, args.screenshots / shot.name)
                    failed.append(name)
                    say(f"FAILED {name}: {type(exc).__name__}: {exc}\n  screenshot: {shot}")
                page.keyboard.press("Control+s")  # the copy's outputs, for a look afterwards (--keep)
                page.screenshot(path=str(temp / f"{Path(name).stem}.png"))
                page.close()
                shut_down_kernels(port, token)
            context.close()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep or failed:
            say(f"kept {temp} (notebook copies with their outputs, a screenshot of each, the root, jupyterlab.log)")
        else:
            shutil.rmtree(temp, ignore_errors=True)
    say(f"{len(NOTEBOOKS) - len(failed)} of {len(NOTEBOOKS)} notebooks passed in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
