"""Metrics, piano roll and audio preview on hand-made and real Nottingham pieces."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import symusic

from midikit.audio import render_audio
from midikit.metrics import METRICS, dataset_metrics, midi_metrics, plot_piano_roll

TPQ = 480


def score_of(*notes) -> symusic.Score:
    """A one-track score at 120 bpm (a quarter note = 0.5 s) from (start, duration, pitch) in quarters."""
    score = symusic.Score(TPQ)
    score.tempos.append(symusic.Tempo(0, 120.0))
    track = symusic.Track("piano")
    for start, duration, pitch in notes:
        track.notes.append(symusic.Note(int(start * TPQ), int(duration * TPQ), pitch, 80))
    score.tracks.append(track)
    return score


def test_metrics_of_a_hand_made_piece():
    # C major scale in quarters, a chord of three over beats 8-9, silence at beats 10-11, a final F#.
    scale = [(i, 1, pitch) for i, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    chord = [(8, 2, 60), (8, 2, 64), (8, 2, 67)]
    metrics = midi_metrics(score_of(*scale, *chord, (12, 1, 66)))
    assert metrics["num_notes"] == 12
    assert metrics["duration"] == pytest.approx(6.5)  # 13 quarters at 0.5 s
    assert metrics["pitch_range"] == 12
    assert metrics["note_density"] == pytest.approx(12 / 6.5)
    # 8 quarters of 1 note, 2 of 3 notes, 1 of 1 note: (8 + 6 + 1) / 11 sounding quarters.
    assert metrics["polyphony"] == pytest.approx(15 / 11)
    assert metrics["scale_consistency"] == pytest.approx(11 / 12)  # one note (F# in C, F in G major) is outside
    counts = np.array([3, 1, 2, 1, 2, 1, 1, 1])  # C D E F G A B F#
    probs = counts / 12
    assert metrics["pitch_class_entropy"] == pytest.approx(-(probs * np.log2(probs)).sum())
    assert metrics["empty_beat_rate"] == pytest.approx(2 / 13)


def test_an_empty_piece_has_zero_metrics():
    metrics = midi_metrics(score_of())
    assert set(metrics) == set(METRICS)
    assert metrics["num_notes"] == 0 and metrics["empty_beat_rate"] == 1.0


def test_metrics_of_a_real_nottingham_tune(nottingham_dir):
    path = nottingham_dir / "ashover1.mid"
    metrics = midi_metrics(path)
    score = symusic.Score(path)
    assert metrics["num_notes"] == score.note_num() == 158
    assert metrics["duration"] == pytest.approx(score.to("second").end(), rel=0.01)
    assert 24 <= metrics["pitch_range"] <= 48  # melody over chords
    assert 2.5 < metrics["polyphony"] < 5  # a melody note over three-note chords
    assert 1.5 < metrics["note_density"] < 8
    assert 2.0 < metrics["pitch_class_entropy"] < math.log2(12)
    assert metrics["scale_consistency"] > 0.85  # folk tunes stay in their key
    assert metrics["empty_beat_rate"] < 0.1


def test_dataset_metrics_summarize_training_sequences(tiny_dataset):
    summary = dataset_metrics(tiny_dataset, max_files=8)
    assert summary["count"] == 8 and set(summary["mean"]) == set(METRICS)
    assert all(len(values) == 8 for values in summary["values"].values())
    assert summary["mean"]["num_notes"] > 10 and summary["mean"]["duration"] > 5
    assert 0.5 < summary["mean"]["scale_consistency"] <= 1.0
    assert summary == dataset_metrics(tiny_dataset, max_files=8)  # the sample is reproducible


def test_piano_roll_draws_every_note(nottingham_dir):
    path = nottingham_dir / "ashover1.mid"
    ax = plot_piano_roll(path, title="ashover1")
    assert len(ax.patches) == 158 and ax.get_title() == "ashover1"
    assert ax.get_xlim()[1] >= 47


def test_audio_preview_is_real_sound(nottingham_dir):
    audio, rate = render_audio(nottingham_dir / "ashover1.mid", sample_rate=8000)
    assert rate == 8000 and audio.dtype == np.float32
    assert np.isfinite(audio).all()
    assert 47 * rate <= len(audio) <= 49.5 * rate  # the tune lasts 47.5 s
    assert 0.5 < np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio[: 40 * rate] ** 2)) > 0.05  # sounding, not silence


def test_an_empty_piece_draws_and_plays_as_empty():
    ax = plot_piano_roll(symusic.Score(480), title="empty")
    assert len(ax.patches) == 0 and [text.get_text() for text in ax.texts] == ["no notes"]
    with pytest.raises(ValueError, match="no notes"):
        render_audio(symusic.Score(480))
