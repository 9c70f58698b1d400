"""The Colab hour as a person lives it, in a real browser: JupyterLab in headless Chromium, driven by
Playwright (`browser_driver`).

With the default values on the CPU: 01, 02 and 05 with Run All; in 05, once the first evaluation has
drawn the loss plot, the toolbar's stop button; 07 with Run All names the stopped run ("stopped at
step N, best at 20") and plays it; a primer uploaded through 07's form is continued (the pieces
start with the primer's notes, as the tokenizer keeps them) and sounds (the audio is not silence);
the download link gives a zip of as many MIDI files as pieces. Every form renders with its ✓ line,
a bad value typed into it shows the package's error (⚠), and no cell shows a traceback.

No $MIDIKIT_ROOT: 01's default folder is remembered (in a fresh $XDG_CONFIG_HOME) and the later
notebooks start from it, as they do for a person. On a failure, screenshots, the notebooks with
their outputs and JupyterLab's log are kept in the folder the message names ($CI_ARTIFACTS/browser
if set). Skips, saying why, where chromium, playwright or jupyterlab is missing.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
import wave
import zipfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import nbformat
import numpy as np
import pytest
import symusic
from browser_driver import JupyterLab, Notebook, keep_for_a_look, launch, missing

REPO = Path(__file__).resolve().parents[1]
HOUR = ("01_setup.ipynb", "02_preprocess.ipynb", "05_train_transformer.ipynb", "07_generate.ipynb")
DATASET = "folk_corpus"  # 02's default dataset outside Colab
PRIMER_BARS = 4  # 07's default "bars of the primer to keep"
WAIT_S = 300  # the most a cell (or Run All) may take: a busy 2-core machine is slow
FIND_S = 90  # the most finding an element or a connected kernel may take
SILENCE_RMS = 0.01  # of full scale: sine tones of real notes are far louder


@pytest.fixture
def hour(tmp_path):
    """JupyterLab serving copies of the notebooks, its kernels with this checkout on PYTHONPATH, a fresh
    config folder and no $MIDIKIT_ROOT; Chromium on it. Yields (lab, browser context, say, where a failure
    is kept)."""
    reason = missing()
    if reason:
        pytest.skip(f"browser test: {reason}")
    from playwright.sync_api import sync_playwright

    work = tmp_path / "notebooks"
    work.mkdir()
    for name in HOUR:
        shutil.copy(REPO / "notebooks" / name, work / name)
    (tmp_path / "tmp").mkdir()  # the kernels' temporary files (07 keeps an uploaded primer there): not the machine's
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PYTHONPATH": str(REPO), "MIDIKIT_ROOT": None,
           "TMPDIR": str(tmp_path / "tmp")}
    lab = JupyterLab(work, env, tmp_path / "jupyterlab.log")
    started = time.monotonic()

    def say(text):
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    kept = Path(os.environ["CI_ARTIFACTS"]) / "browser" if os.environ.get("CI_ARTIFACTS") else tmp_path / "failure"
    try:
        lab.start()
        with sync_playwright() as playwright:
            context = launch(playwright, tmp_path / "chromium_profile", FIND_S)
            login = context.pages[0] if context.pages else context.new_page()
            login.goto(f"{lab.url}/lab?token={lab.token}", wait_until="domcontentloaded")  # sets the token's cookie
            yield lab, context, say, kept
            context.close()
    finally:
        lab.stop()


def open_notebook(lab: JupyterLab, context, name: str, say) -> Notebook:
    notebook = Notebook(context.new_page(), lab, name, WAIT_S, say)
    notebook.open(len(nbformat.read(lab.work / name, as_version=4).cells))
    return notebook


def run_all(notebook: Notebook) -> None:
    notebook.run_all()
    notebook.wait_done()
    notebook.say(f"{notebook.name}: Run All done")


def clean(notebook: Notebook) -> None:
    """No cell shows a traceback, nor a bare Python repr as its result."""
    errors = notebook.tracebacks()
    assert not errors, f"{notebook.name}: a cell shows a traceback:\n" + "\n".join(errors)
    bare = notebook.bare_results()
    assert not bare, f"{notebook.name}: cells show a bare Python value as their result: {bare}"


def close(notebook: Notebook) -> None:
    notebook.page.close()
    notebook.lab.shut_down_kernels()  # the next notebook has the two cores to itself


def test_the_colab_hour_in_a_browser(hour):
    lab, context, say, kept = hour
    try:
        root = setup_01(open_notebook(lab, context, HOUR[0], say))
        preprocess_02(open_notebook(lab, context, HOUR[1], say), root)
        run_id, stopped = train_and_stop_05(open_notebook(lab, context, HOUR[2], say))
        generate_07(open_notebook(lab, context, HOUR[3], say), root, run_id, stopped)
    except Exception as exc:
        keep_for_a_look(context, lab, kept)
        raise AssertionError(f"{exc}\nScreenshots, the notebooks and JupyterLab's log: {kept}") from exc


def setup_01(nb: Notebook) -> Path:
    run_all(nb)
    form = nb.form(nb.index_of("FolderForm()"))
    shown = nb.renders(form, "midikit_data (default: midikit's default outside Colab)")
    root = Path(re.match(r"✓ (\S+) ", shown).group(1))
    assert root == nb.lab.work / "midikit_data", shown  # ./midikit_data, where the kernel runs
    assert "Later notebooks" in nb.output_text(nb.index_of("folder.remember()"))
    clean(nb)
    error = nb.check_bad_value(form, "checkpoint folder", "/content/drive/MyDrive/elsewhere", "Drive is not mounted")
    nb.say(f"01: the folder form renders ({shown!r}); a folder on an unmounted Drive shows {error[:70]!r}")
    close(nb)
    return root


def preprocess_02(nb: Notebook, root: Path) -> None:
    run_all(nb)
    form = nb.form(nb.index_of("PreprocessForm()"))
    nb.renders(form, "corpus → folk_corpus")
    folder = nb.field(form, "checkpoint").input_value()
    assert Path(folder) == root, f"02 does not start from the folder 01 remembered: {folder}"
    clean(nb)
    assert (root / DATASET / "data").is_dir(), f"02 preprocessed nothing into {root / DATASET}"
    error = nb.check_bad_value(form, "transpositions", "0,x", "transpositions must be")
    nb.say(f"02: preprocessed into {root / DATASET}; a bad transposition shows {error[:70]!r}")
    close(nb)


def train_and_stop_05(nb: Notebook) -> tuple[str, int]:
    """Run All; the stop button once the first evaluation drew the loss plot. Returns (run id, step)."""
    nb.run_all()
    training = nb.index_of("result = train(")
    nb.output(training).locator("img").first.wait_for(timeout=WAIT_S * 1000)  # drawn after the first evaluation
    nb.interrupt()
    nb.say("05: the loss plot is drawn: stop pressed")
    nb.wait_done()
    ended = nb.output_text(nb.index_of("show_artifacts(result)"))
    found = re.search(r"(\S+): interrupted after (\d+) steps", ended)
    assert found, f"05: the stop button did not end training as 'interrupted':\n{ended[:600]}"
    run_id, stopped = found.group(1), int(found.group(2))
    assert 20 <= stopped < 40, ended
    assert "Stop requested" in nb.output_text(training)
    clean(nb)
    for index, (label, bad, error) in {"DatasetForm()": ("dataset", "a/b", "Invalid dataset name"),
                                      "TrainForm(": ("max_steps", "-3", "max_steps must be")}.items():
        form = nb.form(nb.index_of(index))
        nb.renders(form)
        nb.check_bad_value(form, label, bad, error)
    nb.say(f"05: {run_id} stopped at step {stopped}; both forms render and show their errors")
    close(nb)
    return run_id, stopped


def generate_07(nb: Notebook, root: Path, run_id: str, stopped: int) -> None:
    run_all(nb)
    listed = nb.output_text(nb.index_of("show_runs_to_play"))
    assert f"{run_id}: stopped at step {stopped}, best at 20" in listed, listed
    clean(nb)
    form = nb.form(nb.index_of("GenerateForm(paths)"))
    nb.renders(form, f"{run_id} · temperature 0.95 · up to 2048 tokens")
    data = nb.form(nb.index_of("DatasetForm()"))
    nb.renders(data)
    nb.check_bad_value(data, "dataset", "a/b", "Invalid dataset name")
    nb.check_bad_value(form, "primer MIDI", "/nowhere/primer.mid", "is not a file")
    nb.say(f"07: lists {run_id} as stopped at step {stopped}, best at 20; both forms render and show their errors")

    primer = write_primer(nb.lab.work.parent / "primer.mid")
    with nb.page.expect_file_chooser() as chooser:  # the upload button, and the file picked in its dialog
        form.locator(".widget-upload").click()
    chooser.value.set_files(str(primer))
    nb.type_into(form, "variations", "2")
    nb.type_into(form, "seed (-1 = random)", "7")
    nb.type_into(form, "tokens to generate (cap)", "256")  # a barely trained model may never end its piece
    nb.renders(form, f"{run_id} · temperature 0.95 · up to 256 tokens × 2 · seed 7 · continues primer.mid (its first "
                     f"{PRIMER_BARS} bars)")
    first, last = nb.index_of("generate.generate("), nb.index_of("download_all(")
    for index in range(first, last + 1):
        if "jp-CodeCell" in (nb.cells.nth(index).get_attribute("class") or ""):
            nb.run_cell(index)
    clean(nb)
    made = nb.output_text(first)
    found = re.search(r"(\d+) piece\(s\), (\d+) new tokens", made)
    assert found and int(found.group(1)) == 2 and int(found.group(2)) > 0, made
    pieces = sorted((root / DATASET / "outputs" / "generated").rglob("*cont_*.mid"))
    assert len(pieces) == 2, pieces
    for piece in pieces:
        starts_with_primer(piece, primer, root)
    nb.say(f"07: both pieces start with the primer's first {PRIMER_BARS} bars")
    shown = nb.index_of("show_generation(")
    assert "seed 7:" in nb.output_text(shown), "07: the seed typed into the form is not the one used"
    sounds(nb, shown, pieces=2)
    downloads(nb, last, pieces)


def write_primer(path: Path) -> Path:
    """A real tune to continue: the last of music21's folk corpus in 4/4 with notes in its first five bars
    (02 keeps the first 120 files)."""
    from midikit.data.sources import corpus_dir, list_music_files
    from midikit.data.tokenization import read_score

    for candidate in reversed(list_music_files(corpus_dir())):
        score = read_score(candidate)
        signatures = [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures]
        if signatures == [(0, 4, 4)] and 12 <= len(notes_of(first_bars(score))) < len(notes_of(first_bars(score, 5))):
            score.dump_midi(str(path))
            return path
    raise AssertionError("no 4/4 tune in music21's corpus")


def first_bars(score: symusic.Score, bars: int = PRIMER_BARS) -> symusic.Score:
    """A 4/4 score's first `bars` bars (notes sounding past the cut are shortened to it)."""
    return score.clip(0, bars * 4 * score.ticks_per_quarter, clip_end=True)


def notes_of(score: symusic.Score) -> list[tuple]:
    """(start, pitch, duration) of every note, in beats, in order."""
    beat = score.ticks_per_quarter
    return sorted((Fraction(n.time, beat), n.pitch, Fraction(n.duration, beat)) for t in score.tracks for n in t.notes)


def starts_with_primer(piece: Path, primer: Path, root: Path) -> None:
    """The piece's notes start with what the tokenizer keeps of the primer's first bars: those notes all
    sound in the piece, and before the primer's last kept bar (where the continuation may add notes) they
    are the piece's only ones; the primer's next bar is not there. What the tokenizer keeps is the raw
    primer's notes on its grid."""
    from midikit.data import load_dataset
    from midikit.storage import DatasetPaths

    tokenizer = load_dataset(DatasetPaths(root, DATASET)).tokenizer

    def kept_by_tokenizer(score):
        return notes_of(tokenizer.decode(tokenizer.encode(score)))

    score = symusic.Score(str(primer))
    raw, kept = notes_of(first_bars(score)), kept_by_tokenizer(first_bars(score))
    grid = Fraction(1, max(tokenizer.config.beat_res.values()))
    assert [p for _, p, _ in kept] == [p for _, p, _ in raw], "the tokenizer changed the primer's pitches"
    assert all(abs(a[0] - b[0]) <= grid for a, b in zip(kept, raw)), "the tokenizer moved the primer's notes"
    notes = notes_of(symusic.Score(str(piece)))
    last_bar = kept[-1][0] // 4 * 4
    before = [note for note in kept if note[0] < last_bar]
    assert notes[:len(before)] == before, f"{piece.name} does not start with the primer: {notes[:8]} vs {before[:8]}"
    assert not Counter(kept) - Counter(notes), f"{piece.name} lost notes of the primer's last kept bar"
    following = [note for note in kept_by_tokenizer(first_bars(score, PRIMER_BARS + 1)) if note[0] >= 4 * PRIMER_BARS]
    assert Counter(following) - Counter(notes), f"{piece.name} goes on with the primer's bar {PRIMER_BARS + 1}"


def sounds(nb: Notebook, index: int, pieces: int) -> None:
    """Each piece's audio player holds a WAV that is not silence."""
    sources = nb.output(index).locator("audio source, audio[src]")
    assert sources.count() == pieces, f"07: {sources.count()} audio players for {pieces} pieces"
    for number in range(pieces):
        uri = sources.nth(number).get_attribute("src")
        assert uri.startswith("data:audio/wav;base64,"), uri[:60]
        with wave.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as wav:
            assert wav.getsampwidth() == 2, wav.getsampwidth()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16) / 32768
        rms = float(np.sqrt(np.mean(samples**2)))
        assert rms > SILENCE_RMS, f"07: piece {number}'s audio is silence (RMS {rms:.4f})"
        nb.say(f"07: piece {number} plays {len(samples) / wav.getframerate() / wav.getnchannels():.1f} s, RMS "
               f"{rms:.3f}")


def downloads(nb: Notebook, index: int, pieces: list[Path]) -> None:
    """The download link gives a zip that opens with the pieces' MIDI files."""
    with nb.page.expect_download() as download:
        nb.output(index).locator("a[download]").first.click()
    target = Path(download.value.path())
    with zipfile.ZipFile(target) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(piece.name for piece in pieces), names
        for name in names:
            assert symusic.Score.from_midi(archive.read(name)).note_num() > 0, name
    nb.say(f"07: the download is a zip of {len(names)} MIDI files: {', '.join(names)}")
