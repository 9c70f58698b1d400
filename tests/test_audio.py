"""The audio preview (`midikit.audio.render_audio`): FluidSynth with a General MIDI soundfont where
it is installed (through pyfluidsynth, or the `fluidsynth` program that one apt line gives), else
pretty_midi's sine tones, with one line (`audio_synthesizer().line`) that says which and why. The
fallback is tested everywhere, by hiding pyfluidsynth, its library or the program; each FluidSynth
path where it is installed (skipped elsewhere)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic

from midikit import audio as preview

RATE = 16000


def has_pyfluidsynth() -> bool:
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


needs_pyfluidsynth = pytest.mark.skipif(not has_pyfluidsynth(), reason="pyfluidsynth or the FluidSynth library is not "
                                        "installed (apt-get install fluidsynth; pip install pyfluidsynth)")
needs_program = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="the fluidsynth program is not installed "
                                   "(apt-get install fluidsynth)")


def one_note(program: int = 0, pitch: int = 69, seconds: float = 1.0) -> symusic.Score:
    """A4 (440 Hz) held for `seconds` on a General MIDI program (0: acoustic grand piano)."""
    score, track = symusic.Score(480), symusic.Track(program=program)
    track.notes.append(symusic.Note(0, int(seconds * 960), pitch, 100))  # 120 bpm: 960 ticks a second
    score.tracks.append(track)
    return score


def harmonic_share(audio: np.ndarray, fundamental: float = 440.0) -> float:
    """Energy at 2x, 3x, 4x the fundamental relative to the fundamental's (a sine has none)."""
    spectrum = np.abs(np.fft.rfft(audio[: RATE]))  # the first second
    freqs = np.fft.rfftfreq(RATE, 1 / RATE)
    band = lambda f: spectrum[(freqs > f - 15) & (freqs < f + 15)].sum() ** 2  # noqa: E731
    return sum(band(k * fundamental) for k in (2, 3, 4)) / band(fundamental)


class _NoFluidSynthLibrary:
    """An import hook that answers `import fluidsynth` as pyfluidsynth does without libfluidsynth."""

    def find_spec(self, name, path=None, target=None):
        if name == "fluidsynth":
            raise ImportError("Couldn't find the FluidSynth library.")
        return None


@pytest.fixture
def without_pyfluidsynth(monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # `import fluidsynth` -> ModuleNotFoundError


@pytest.fixture
def without_the_library(monkeypatch):
    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoFluidSynthLibrary(), *sys.meta_path])


@pytest.fixture
def without_the_program(monkeypatch):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "fluidsynth"
                        else which(name, *args, **kwargs))


def test_without_fluidsynth_the_preview_is_sine_tones_and_says_why(without_pyfluidsynth, without_the_program):
    chosen = preview.audio_synthesizer()
    assert chosen.kind == "sine" and chosen.soundfont is None and "\n" not in chosen.line
    assert ("sine tones" in chosen.line and "FluidSynth is not installed" in chosen.line
            and "apt-get install -y fluidsynth" in chosen.line)
    audio, rate = preview.render_audio(one_note(), sample_rate=RATE)
    sine, _ = preview.render_audio(one_note(), sample_rate=RATE, synth="sine")
    assert rate == RATE and np.array_equal(audio, sine)
    assert harmonic_share(audio) < 0.01  # pure sine: nothing above the fundamental


def test_without_the_fluidsynth_library_the_preview_is_sine_tones_and_says_why(without_the_library,
                                                                               without_the_program):
    chosen = preview.audio_synthesizer()
    assert (chosen.kind == "sine" and "FluidSynth cannot start" in chosen.line
            and "apt-get install -y fluidsynth" in chosen.line)
    audio, _ = preview.render_audio(one_note(), sample_rate=RATE)
    assert np.array_equal(audio, preview.render_audio(one_note(), sample_rate=RATE, synth="sine")[0])


def test_asking_for_fluidsynth_where_it_cannot_run_says_why(without_pyfluidsynth, without_the_program):
    with pytest.raises(ValueError, match="FluidSynth is not installed"):
        preview.render_audio(one_note(), synth="fluidsynth")
    with pytest.raises(ValueError, match="synth must be"):
        preview.render_audio(one_note(), synth="organ")


def test_a_piece_without_notes_is_refused_whatever_the_synthesizer():
    with pytest.raises(ValueError, match="no notes"):
        preview.render_audio(symusic.Score(480))


def check_instruments(kind: str) -> None:
    chosen = preview.audio_synthesizer()
    assert chosen.kind == kind and chosen.soundfont.is_file() and "General MIDI" in chosen.line
    piano, rate = preview.render_audio(one_note(program=0), sample_rate=RATE)
    assert rate == RATE and piano.dtype == np.float32 and np.isfinite(piano).all()
    assert 0.5 < np.abs(piano).max() <= 1.0 and len(piano) >= RATE
    assert harmonic_share(piano) > 0.05  # a piano's overtones, which a sine lacks
    violin, _ = preview.render_audio(one_note(program=40), sample_rate=RATE)
    assert not np.allclose(piano[: len(violin)], violin[: len(piano)], atol=0.05)  # another instrument, another sound


@needs_pyfluidsynth
def test_pyfluidsynth_plays_each_track_as_its_general_midi_instrument():
    check_instruments("fluidsynth")


@needs_program
def test_the_fluidsynth_program_alone_plays_instruments_too(without_pyfluidsynth):
    """What Colab's one apt line gives: the program, no Python binding."""
    check_instruments("fluidsynth-program")


@needs_pyfluidsynth
def test_fluidsynth_installed_after_pretty_midi_was_imported_is_used(monkeypatch):
    """A notebook imports pretty_midi, then installs pyfluidsynth: pretty_midi's own flag still says no."""
    module = sys.modules.get("pretty_midi.fluidsynth") or sys.modules["pretty_midi.pretty_midi"]
    monkeypatch.setattr(module, "_HAS_FLUIDSYNTH", False)
    assert preview.audio_synthesizer().kind == "fluidsynth"
    audio, _ = preview.render_audio(one_note(), sample_rate=RATE)
    assert harmonic_share(audio) > 0.05


@needs_program
def test_the_fluidsynth_program_renders_a_tune_its_whole_length_without_a_silent_tail(nottingham_dir,
                                                                                      without_pyfluidsynth):
    assert preview.audio_synthesizer().kind == "fluidsynth-program"
    audio, rate = preview.render_audio(nottingham_dir / "ashover1.mid", sample_rate=8000)
    assert 47 * rate <= len(audio) <= 49.5 * rate  # the tune lasts 47.5 s, plus the last note's release
    assert np.sqrt(np.mean(audio[: 40 * rate] ** 2)) > 0.02  # sounding, not silence


def test_the_notebook_offers_fluidsynth_in_a_thin_cell():
    """Notebook 07's optional cell: the install line in markdown, then a code cell of at most 8 lines, no
    def or loop, that installs only in Colab (one apt line, no pip) and prints which synthesizer plays."""
    import nbformat

    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "07_generate.ipynb", as_version=4)
    markdown = [cell for cell in notebook.cells if cell.cell_type == "markdown" and "apt-get install" in cell.source]
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and "fluidsynth" in cell.source.lower()]
    assert (len(markdown) == 1 and "apt-get install -y fluidsynth" in markdown[0].source
            and "pyfluidsynth" in markdown[0].source)
    assert len(code) == 1 and "pip" not in code[0].source
    lines = [line for line in code[0].source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 8 and not any(line.lstrip().startswith(("def ", "for ", "while ")) for line in lines)
    assert 'if INSTRUMENTS and "google.colab" in sys.modules:' in code[0].source
    assert "apt-get install" in code[0].source and "audio_synthesizer().line" in code[0].source
    # apt's package lists are stale in a fresh runtime, and its errors are what the user needs to see.
    assert "apt-get update" in code[0].source and "/dev/null" not in code[0].source
    position = notebook.cells.index(code[0])
    assert notebook.cells.index(markdown[0]) == position - 1
    assert position < next(i for i, cell in enumerate(notebook.cells) if "show_generation" in cell.source)


def test_pyfluidsynth_is_not_a_requirement():
    """It is optional: midikit installs and runs without it (CI installs requirements-dev.txt only)."""
    root = Path(__file__).resolve().parents[1]
    for name in ("requirements.txt", "pyproject.toml"):
        assert "fluidsynth" not in (root / name).read_text().lower()
