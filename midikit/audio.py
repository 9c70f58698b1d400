"""Listen to generated music: FluidSynth with a General MIDI soundfont where it is installed, sine
tones elsewhere (`render_audio`), and one line saying which (`audio_synthesizer`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .metrics import load_score


class AudioSynthesizer(NamedTuple):
    """What `render_audio` plays with: `kind` "fluidsynth" (the pyfluidsynth binding), "fluidsynth-program"
    (the `fluidsynth` command-line program) or "sine"; the General MIDI soundfont FluidSynth uses; and
    `line`, one sentence that says which, and why (for a notebook to print)."""

    kind: str
    soundfont: Path | None
    line: str


def audio_synthesizer() -> AudioSynthesizer:
    """FluidSynth with the General MIDI soundfont pretty_midi ships (TimGM6mb.sf2: each track sounds as
    its MIDI program) where FluidSynth is installed, else sine tones, and why.

    FluidSynth is used through pyfluidsynth when that imports, else through the `fluidsynth` program
    (Debian/Ubuntu's `apt-get install -y fluidsynth` alone gives the program: one line in Colab)."""
    import shutil
    import sys

    import pretty_midi

    names = [getattr(sys.modules.get(f"pretty_midi.{name}"), "DEFAULT_SF2", None)
             for name in ("fluidsynth", "pretty_midi")]
    soundfont = Path(pretty_midi.__file__).parent / next((n for n in names if n), "TimGM6mb.sf2")
    sine = "Audio preview: plain sine tones, because "
    if not soundfont.is_file():
        return AudioSynthesizer("sine", None, f"{sine}pretty_midi's soundfont {soundfont} is missing.")
    sounds = f"with the General MIDI soundfont {soundfont.name}: each track plays as its instrument."
    try:
        import fluidsynth
    except (ImportError, OSError) as exc:  # not installed, or installed without the FluidSynth library
        why = ("FluidSynth is not installed" if isinstance(exc, ModuleNotFoundError)
               else f"FluidSynth cannot start ({exc})")
        if shutil.which("fluidsynth"):
            return AudioSynthesizer("fluidsynth-program", soundfont, f"Audio preview: the fluidsynth program {sounds}")
        return AudioSynthesizer("sine", None, f"{sine}{why} (for instruments: apt-get install -y fluidsynth).")
    # pretty_midi looks for pyfluidsynth once, when it is imported: a notebook that installs it later tells it here.
    for name in ("fluidsynth", "pretty_midi", "instrument"):
        module = sys.modules.get(f"pretty_midi.{name}")
        if module is not None and getattr(module, "_HAS_FLUIDSYNTH", True) is False:
            module._HAS_FLUIDSYNTH, module.fluidsynth = True, fluidsynth
    return AudioSynthesizer("fluidsynth", soundfont, f"Audio preview: FluidSynth {sounds}")


def _fluidsynth_program(midi: bytes, soundfont: Path, sample_rate: int) -> np.ndarray:
    """Render with the `fluidsynth` program (16-bit WAV, its channels averaged)."""
    import shutil
    import subprocess
    import tempfile
    import wave

    with tempfile.TemporaryDirectory(prefix="midikit_audio_") as folder:
        piece, sound = Path(folder, "piece.mid"), Path(folder, "piece.wav")
        piece.write_bytes(midi)
        subprocess.run([shutil.which("fluidsynth") or "fluidsynth", "-ni", "-r", str(sample_rate), "-O", "s16",
                        "-F", str(sound), str(soundfont), str(piece)], check=True, capture_output=True, timeout=600)
        with wave.open(str(sound)) as wav:
            channels, frames = wav.getnchannels(), wav.readframes(wav.getnframes())
    audio = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).mean(axis=1) / 32768.0
    # The program keeps writing ~2.5 s of reverb hiss after the last note: cut it at -60 dB.
    audible = np.flatnonzero(np.abs(audio) > 1e-3 * np.abs(audio).max()) if audio.size else []
    return audio[: audible[-1] + 1] if len(audible) else audio


def render_audio(score_or_path, sample_rate: int = 22050, synth: str = "auto") -> tuple[np.ndarray, int]:
    """Mono float32 audio in [-1, 1] and its sample rate, for `IPython.display.Audio(audio, rate=rate)`.

    synth "auto": FluidSynth with a General MIDI soundfont where it is installed (`audio_synthesizer()`
    says which is used, and why), else pretty_midi's additive sine synthesizer, which needs nothing
    and works offline everywhere (symusic 0.6.0's Synthesizer.render is broken); "fluidsynth" or
    "sine" to choose (ValueError when FluidSynth is asked for and cannot run). A piece without notes
    raises ValueError: there is nothing to play (and pretty_midi, like IPython's Audio, fails on it).
    """
    import pretty_midi

    if synth not in ("auto", "fluidsynth", "sine"):
        raise ValueError(f"synth must be 'auto', 'fluidsynth' or 'sine', got {synth!r}.")
    score = load_score(score_or_path)
    if score.note_num() == 0:
        raise ValueError("The piece has no notes, so there is no audio to render; check score.note_num() first.")
    chosen = audio_synthesizer() if synth != "sine" else AudioSynthesizer("sine", None, "")
    if synth == "fluidsynth" and chosen.kind == "sine":
        raise ValueError(chosen.line)
    midi_bytes = score.dumps_midi()
    if chosen.kind == "fluidsynth-program":
        audio = _fluidsynth_program(midi_bytes, chosen.soundfont, sample_rate).astype(np.float32)
    else:
        midi = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
        if chosen.kind == "fluidsynth":
            import inspect

            parameters = inspect.signature(midi.fluidsynth).parameters
            where = "synthesizer" if "synthesizer" in parameters else "sf2_path"  # < 0.2.11
            audio = midi.fluidsynth(fs=sample_rate, **{where: str(chosen.soundfont)}).astype(np.float32)
        else:
            audio = midi.synthesize(fs=sample_rate).astype(np.float32)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio / peak * 0.9 if peak > 0 else audio), sample_rate
