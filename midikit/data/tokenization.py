"""MIDI/ABC file -> token id sequences with a miditok tokenizer, transposed copies included.

How tracks reach the model (``tracks``):

* ``"merged"`` (default): REMI with ``use_programs=True`` and ``one_token_stream_for_programs=True``,
  one sequence per tune holding every track, each note preceded by its ``Program`` token. miditok
  merges tracks that share a program, and the Nottingham MIDI files play melody *and* chords on
  program 0, so before tokenizing we give each repeated program the next free program of its
  instrument family (melody piano 0, chords bright piano 1): both tracks survive, stay apart, and
  decode back to two tracks.
* ``"separate"``: the original project's layout, one sequence per track (no Program tokens); the melody and the
  chords of a tune become two sequences and the model never sees them together.

Transposition: the file's pitch range decides which offsets fit the tokenizer's pitch range; the
others are skipped and counted. The transposed copies are what miditok's
``data_augmentation.augment_score`` + ``encode`` give. When that equals shifting the pitch tokens
of the untransposed sequence (pitch-only tokenizers, no chords, pitch intervals or drums; see
``FileTokenizer._can_shift``) we shift token ids instead: encoding is nearly all of the work, so
this cuts the CPU time of the original project's 7 transpositions about 6x (bench/results/preprocess.md). A
test checks that both give the same tokens on real data.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import miditok
import numpy as np
import symusic
from miditok import TokenizerConfig
from miditok.data_augmentation import augment_score

from ..configs import TOKENIZERS, TRACK_MODES
from ..errors import ConfigError, DatasetError

SPECIAL_TOKENS = ["PAD", "BOS", "EOS", "MASK"]
# TokenizerConfig arguments set by `tracks`, not by free tokenizer options.
_TRACK_KEYS = ("use_programs", "one_token_stream_for_programs")
_PITCH_TOKEN_TYPES = ("Pitch", "NoteOn", "NoteOff")
_SHIFTABLE_TOKENIZERS = ("REMI", "TSD", "MIDILike")


def tokenizer_spec(name: str = "REMI", tracks: str = "merged", params: dict | None = None) -> dict:
    """Validated, JSON-able description of a tokenizer (it enters the dataset fingerprint)."""
    if name not in TOKENIZERS:
        raise ConfigError(
            f"Unsupported tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)} "
            "(multi-vocabulary tokenizers such as CPWord or Octuple do not give one token stream)."
        )
    if tracks not in TRACK_MODES:
        raise ConfigError(f"Unknown tracks mode {tracks!r}: choose 'merged' (one sequence per tune) "
                          "or 'separate' (one per track).")
    params = dict(params or {})
    known = set(inspect.signature(TokenizerConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"Unknown tokenizer options {unknown}; "
                          f"valid miditok TokenizerConfig options: {', '.join(sorted(known))}.")
    fixed = sorted(set(params) & set(_TRACK_KEYS + ("special_tokens",)))
    if fixed:
        raise ConfigError(f"Tokenizer options {fixed} are set by midikit; "
                          "choose the track layout with tracks='merged'|'separate'.")
    return {"name": name, "tracks": tracks, "params": params}


def build_tokenizer(spec: dict) -> miditok.MusicTokenizer:
    merged = spec["tracks"] == "merged"
    try:
        config = TokenizerConfig(
            special_tokens=SPECIAL_TOKENS, use_programs=merged, one_token_stream_for_programs=merged, **spec["params"]
        )
        return getattr(miditok, spec["name"])(config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"miditok rejected the tokenizer options {spec['params']}: {exc}") from exc


def load_tokenizer(path: Path) -> miditok.MusicTokenizer:
    """The tokenizer saved next to a dataset (``tokenizer.json``): one of TOKENIZERS."""
    name = json.loads(Path(path).read_text())["tokenization"]
    if name not in TOKENIZERS:  # the name picks a class to instantiate: never trust it blindly
        raise DatasetError(
            f"{path} names the tokenizer {name!r}, which midikit does not use ({', '.join(TOKENIZERS)}); "
            "the file is damaged or not midikit's: preprocess the dataset again."
        )
    return getattr(miditok, name)(params=path)


def special_ids(tokenizer) -> dict:
    return {"bos_id": tokenizer["BOS_None"], "eos_id": tokenizer["EOS_None"], "pad_id": tokenizer["PAD_None"]}


def tokens_to_score(tokenizer, ids) -> symusic.Score:
    """Decode one stored or generated sequence (special tokens are dropped) to a symusic Score.

    Merged datasets decode to one track per program; separate ones to a single track."""
    drop = {tokenizer[f"{t}_None"] for t in SPECIAL_TOKENS}
    ids = [int(i) for i in ids if int(i) not in drop]
    if not ids:  # a sample that ended at once: miditok cannot decode nothing, so give an empty piece
        return symusic.Score(tokenizer.time_division)
    return tokenizer.decode(ids if tokenizer.one_token_stream else [ids])


def separate_programs(score: symusic.Score) -> symusic.Score:
    """Give tracks that share a program distinct programs of the same instrument family
    (programs come in families of 8), so a one-stream tokenizer keeps them apart. In place."""
    used = set()
    for track in score.tracks:
        if track.is_drum:
            continue
        if track.program in used:
            family = track.program - track.program % 8
            candidates = [family + (track.program - family + i) % 8 for i in range(1, 8)] + list(range(128))
            free = next((p for p in candidates if p not in used), None)
            if free is None:  # 128 pitched tracks: nothing left, let miditok merge
                continue
            track.program = free
        used.add(track.program)
    return score


@dataclass
class FileResult:
    """What one source file gave: sequences per transposition (offset -> list of uint16 arrays,
    BOS ... EOS), or the reason it was skipped."""

    file: str
    sequences: dict = field(default_factory=dict)
    skipped_offsets: list = field(default_factory=list)
    reason: str | None = None


class FileTokenizer:
    """Tokenizes files with one tokenizer; built once per worker process."""

    def __init__(self, spec: dict):
        self.tokenizer = build_tokenizer(spec)
        self.merged = spec["tracks"] == "merged"
        ids = special_ids(self.tokenizer)
        self.bos, self.eos = ids["bos_id"], ids["eos_id"]
        self.pitch_low, self.pitch_high = self.tokenizer.config.pitch_range  # high is exclusive
        self._shift_tables = {}
        cfg = self.tokenizer.config
        self._can_shift = (
            type(self.tokenizer).__name__ in _SHIFTABLE_TOKENIZERS
            and not cfg.use_chords
            and not cfg.use_pitch_intervals
            and not self.tokenizer.is_trained
        )

    def __call__(self, task: tuple[Path, str, tuple[int, ...]]) -> FileResult:
        path, rel, offsets = task
        result = FileResult(rel)
        try:
            score = read_score(path)
        except Exception as exc:  # any unreadable file is reported, never fatal
            result.reason = describe_error(exc, path)
            return result
        if score.note_num() == 0:
            result.reason = "no notes"
            return result
        try:
            self._tokenize(score, offsets, result)
        except Exception as exc:
            result.reason = f"tokenization failed: {describe_error(exc, path)}"
            result.sequences = {}
        return result

    def _tokenize(self, score, offsets, result: FileResult) -> None:
        if self.merged:
            separate_programs(score)
        score = self.tokenizer.preprocess_score(score)
        pitched = [t.notes.numpy()["pitch"] for t in score.tracks if not t.is_drum and len(t.notes)]
        if not pitched:
            result.reason = f"no notes within the tokenizer's pitch range {self.pitch_low}-{self.pitch_high - 1}"
            return
        low = min(int(p.min()) for p in pitched)
        high = max(int(p.max()) for p in pitched)
        fits = [k for k in offsets if k == 0 or (low + k >= self.pitch_low and high + k < self.pitch_high)]
        result.skipped_offsets = [k for k in offsets if k not in fits]
        original = self._encode(score)
        if not original:
            result.reason = "the tokenizer produced no tokens"
            return
        shift = self._can_shift and not any(t.is_drum for t in score.tracks)
        for k in fits:
            if k == 0:
                result.sequences[k] = original
            elif shift:
                table = self._shift_table(k)
                result.sequences[k] = [table[seq] for seq in original]
            else:
                result.sequences[k] = self._encode(augment_score(score, pitch_offset=k))

    def _encode(self, score) -> list[np.ndarray]:
        encoded = self.tokenizer.encode(score, no_preprocess_score=True)
        streams = [encoded] if self.merged else encoded
        return [
            np.array([self.bos, *seq.ids, self.eos], dtype=np.uint16)
            for seq in streams
            if len(seq.ids)
        ]

    def _shift_table(self, offset: int) -> np.ndarray:
        """Token id -> id of the same token with its pitch moved by `offset` (others unchanged)."""
        if offset not in self._shift_tables:
            vocab = self.tokenizer.vocab
            table = np.arange(len(vocab), dtype=np.uint16)
            for token, token_id in vocab.items():
                kind, _, value = token.partition("_")
                if kind in _PITCH_TOKEN_TYPES:
                    # Offsets were range-checked, so a missing target never occurs in a sequence.
                    table[token_id] = vocab.get(f"{kind}_{int(value) + offset}", token_id)
            self._shift_tables[offset] = table
        return self._shift_tables[offset]


def keep_bars(score: symusic.Score, bars: int) -> symusic.Score:
    """The first `bars` bars of `score`, following its time signatures (4/4 where it has none); notes
    that sound past the cut are shortened to it."""
    per_quarter = score.ticks_per_quarter
    changes = sorted({(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures}) or [(0, 4, 4)]
    if changes[0][0] > 0:
        changes.insert(0, (0, 4, 4))
    tick, left = 0, bars
    for index, (_, numerator, denominator) in enumerate(changes):
        bar = per_quarter * 4 * numerator // denominator
        following = changes[index + 1][0] if index + 1 < len(changes) else None
        fits = left if following is None else min(left, max(0, -(-(following - tick) // bar)))
        tick, left = tick + fits * bar, left - fits
        if left == 0:
            break
    return score.clip(0, tick, clip_end=True)


def read_score(path: Path) -> symusic.Score:
    """Parse a MIDI or ABC file. abc2midi prints a line per ABC quirk to the process's stdout;
    those are silenced (a broken file still raises)."""
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    if path.suffix.lower() == ".abc":
        with _silenced_stdout():
            return symusic.Score(path)
    return symusic.Score(path)


def describe_error(exc: Exception, path: Path) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.replace(str(path), path.name)
    # symusic's messages carry a trailing ": iostream error" that says nothing more.
    text = text.removesuffix(": iostream error")
    return text[:200]


@contextmanager
def _silenced_stdout():
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# Worker-process plumbing: one FileTokenizer per process, built by the pool initializer.
_worker: FileTokenizer | None = None


def init_worker(spec: dict) -> None:
    global _worker
    _worker = FileTokenizer(spec)


def tokenize_in_worker(task) -> FileResult:
    return _worker(task)
