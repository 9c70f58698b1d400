"""Look at generated music: the metrics symbolic-music papers report, and piano rolls (listen: `midikit.audio`).

The metrics are the ones symbolic-music papers report (MusPy's definitions, in its words where
it has them), computed the same way for generated files and for the training set, so a notebook
can put the two side by side:

* num_notes, duration (s), pitch_range (semitones), note_density (notes per second);
* polyphony: mean number of notes sounding at once, over the time at least one sounds;
* pitch_class_entropy: Shannon entropy (bits) of the pitch-class histogram (0 to log2 12 = 3.58);
* scale_consistency: largest share of notes inside one major (or its relative minor) scale;
* empty_beat_rate: share of beats (quarter notes) in which no note sounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = (
    "num_notes", "duration", "pitch_range", "polyphony", "note_density",
    "pitch_class_entropy", "scale_consistency", "empty_beat_rate",
)
MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])


def load_score(score_or_path):
    """A symusic.Score from a Score, a MIDI path, or MIDI bytes."""
    import symusic

    if isinstance(score_or_path, symusic.Score):
        return score_or_path
    if isinstance(score_or_path, (bytes, bytearray)):
        return symusic.Score.from_midi(bytes(score_or_path))
    return symusic.Score(str(Path(score_or_path)))


def _notes(score) -> dict[str, np.ndarray]:
    """Every pitched note of every track: time, duration, pitch (in the score's time unit)."""
    tracks = [track.notes.numpy() for track in score.tracks if not track.is_drum and len(track.notes)]
    if not tracks:
        return {key: np.zeros(0) for key in ("time", "duration", "pitch")}
    return {key: np.concatenate([t[key] for t in tracks]).astype(np.float64) for key in ("time", "duration", "pitch")}


def midi_metrics(score_or_path) -> dict:
    """The metrics above for one piece (a symusic.Score or a MIDI path)."""
    score = load_score(score_or_path)
    ticks = _notes(score)
    seconds = _notes(score.to("second"))
    num_notes = len(ticks["pitch"])
    if num_notes == 0:
        return dict.fromkeys(METRICS, 0.0) | {"num_notes": 0, "empty_beat_rate": 1.0}
    duration = float((seconds["time"] + seconds["duration"]).max())  # from the start of the piece
    pitch_classes = np.bincount(ticks["pitch"].astype(int) % 12, minlength=12)
    return {
        "num_notes": num_notes,
        "duration": duration,
        "pitch_range": int(ticks["pitch"].max() - ticks["pitch"].min()),
        "polyphony": _polyphony(seconds["time"], seconds["duration"]),
        "note_density": num_notes / duration if duration > 0 else 0.0,
        "pitch_class_entropy": _entropy(pitch_classes),
        "scale_consistency": _scale_consistency(pitch_classes),
        "empty_beat_rate": _empty_beat_rate(ticks["time"], ticks["duration"], score.ticks_per_quarter),
    }


def _polyphony(starts: np.ndarray, durations: np.ndarray) -> float:
    # Time-weighted mean of the number of sounding notes = total note time / time anything sounds.
    ends = starts + durations
    order = np.argsort(starts)
    starts, ends = starts[order], ends[order]
    covered_until = np.maximum.accumulate(ends)
    # A note adds to the sounding time only the part after everything before it has ended.
    previous_end = np.concatenate([[starts[0]], covered_until[:-1]])
    sounding = np.clip(ends - np.maximum(starts, previous_end), 0, None).sum()
    return float(durations.sum() / sounding) if sounding > 0 else 0.0


def _entropy(counts: np.ndarray) -> float:
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log2(probs)).sum())


def _scale_consistency(pitch_class_counts: np.ndarray) -> float:
    in_scale = [pitch_class_counts[(MAJOR_SCALE + tonic) % 12].sum() for tonic in range(12)]
    return float(max(in_scale) / pitch_class_counts.sum())


def _empty_beat_rate(starts: np.ndarray, durations: np.ndarray, ticks_per_beat: int) -> float:
    ends = starts + np.maximum(durations, 1)
    num_beats = int(np.ceil(ends.max() / ticks_per_beat))
    sounding = np.zeros(num_beats + 1, dtype=np.int64)  # +1 at a note's first beat, -1 after its last
    np.add.at(sounding, (starts // ticks_per_beat).astype(int), 1)
    np.add.at(sounding, ((ends - 1) // ticks_per_beat).astype(int) + 1, -1)
    return float((np.cumsum(sounding)[:num_beats] == 0).mean())


def summarize_metrics(rows: list[dict]) -> dict:
    """Mean and standard deviation of each metric over several pieces."""
    values = {name: np.array([row[name] for row in rows], dtype=np.float64) for name in METRICS}
    return {
        "count": len(rows),
        "mean": {name: float(v.mean()) if len(v) else float("nan") for name, v in values.items()},
        "std": {name: float(v.std()) if len(v) else float("nan") for name, v in values.items()},
        "values": {name: v.tolist() for name, v in values.items()},
    }


def dataset_metrics(dataset, max_files: int = 64, seed: int = 0) -> dict:
    """`summarize_metrics` over up to `max_files` training sequences of a dataset (a TokenDataset
    or its DatasetPaths), decoded with the dataset's tokenizer: the same token vocabulary and
    quantization the model learned, so they compare fairly with generated pieces."""
    from .data import load_dataset, tokens_to_score

    if not hasattr(dataset, "train_offsets"):
        dataset = load_dataset(dataset)
    count = dataset.num_sequences("train")
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=min(max_files, count), replace=False))
    scores = (tokens_to_score(dataset.tokenizer, dataset.sequence("train", int(i))) for i in chosen)
    return summarize_metrics([midi_metrics(score) for score in scores])


def plot_piano_roll(score_or_path, ax=None, title: str | None = None):
    """Notes as bars, time in seconds against MIDI pitch, one colour per track. Returns the axes."""
    import matplotlib.pyplot as plt

    score = load_score(score_or_path).to("second")
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 4))
    pitches = []
    for index, track in enumerate(t for t in score.tracks if len(t.notes)):
        notes = track.notes.numpy()
        ax.barh(notes["pitch"], notes["duration"], left=notes["time"], height=0.8, color=f"C{index}",
                label=track.name or f"track {index + 1}")
        pitches.extend(notes["pitch"].tolist())
    if pitches:
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
        if len(score.tracks) > 1:
            ax.legend(loc="upper right", fontsize="small")
    else:  # an empty piece (a sample that ended at once): say so rather than draw a blank frame
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or "piano roll")
    return ax
