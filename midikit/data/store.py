"""The token store of one dataset (`DatasetPaths.data`), per docs/architecture.md:

    train_tokens.npy / val_tokens.npy    uint16, every sequence of the split back to back (BOS ... EOS)
    train_offsets.npy / val_offsets.npy  int64, start of each sequence plus the total
    tokenizer.json                       the miditok tokenizer
    config.json                          written last: its presence marks the store complete

Everything is plain numpy/JSON: loading never unpickles anything.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import storage
from ..errors import DatasetError
from ..storage import DatasetPaths

STORE_FORMAT = "midikit-token-store"
STORE_VERSION = 1
SPLITS = ("train", "val")
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def tokens_file(paths: DatasetPaths, split: str):
    return paths.data / f"{split}_tokens.npy"


def offsets_file(paths: DatasetPaths, split: str):
    return paths.data / f"{split}_offsets.npy"


def invalidate_store(paths: DatasetPaths) -> None:
    """Mark the store incomplete before rewriting it, so a crash mid-way never looks finished."""
    try:
        (paths.data / CONFIG_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise storage.explain_os_error(exc, paths.data) from exc


def write_store(paths: DatasetPaths, splits: dict, tokenizer_json: str, config: dict) -> None:
    """Write both splits (`splits[name]` = list of uint16 arrays), the tokenizer, then config.json."""
    invalidate_store(paths)
    for split in SPLITS:
        sequences = splits[split]
        lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(sequences).astype(np.uint16) if sequences else np.zeros(0, np.uint16)
        _atomic_save(tokens_file(paths, split), tokens)
        _atomic_save(offsets_file(paths, split), offsets)
    storage.atomic_write_text(paths.data / TOKENIZER_FILE, tokenizer_json)
    write_config(paths, config)


def write_config(paths: DatasetPaths, config: dict) -> None:
    storage.atomic_write_text(paths.data / CONFIG_FILE, json.dumps(config, indent=2))


def _atomic_save(path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    storage.atomic_write_bytes(path, buffer.getvalue())


def preprocess_hint(paths: DatasetPaths) -> str:
    return (
        f"python -m midikit preprocess --checkpoint_dir {paths.root} --dataset {paths.dataset} "
        "--source nottingham (or --source corpus, or --input_dir YOUR_MIDI_FOLDER)"
    )


@dataclass
class TokenDataset:
    """A preprocessed dataset: memory-mapped token arrays plus its config.json.

    `train_tokens`/`val_tokens` hold every sequence of a split back to back (BOS ... EOS);
    sequence i of a split is `tokens[offsets[i]:offsets[i + 1]]`."""

    paths: DatasetPaths
    config: dict
    train_tokens: np.ndarray
    train_offsets: np.ndarray
    val_tokens: np.ndarray
    val_offsets: np.ndarray

    @property
    def name(self) -> str:
        return self.paths.dataset

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    @property
    def bos_id(self) -> int:
        return self.config["bos_id"]

    @property
    def eos_id(self) -> int:
        return self.config["eos_id"]

    @property
    def pad_id(self) -> int:
        return self.config["pad_id"]

    @property
    def seq_length(self) -> int:
        """The dataset's default context length (the original project's --seq_length)."""
        return self.config["seq_length"]

    @cached_property
    def tokenizer(self):
        from .tokenization import load_tokenizer

        return load_tokenizer(self.paths.data / TOKENIZER_FILE)

    def num_sequences(self, split: str) -> int:
        return len(self._offsets(split)) - 1

    def sequence(self, split: str, index: int) -> np.ndarray:
        offsets = self._offsets(split)
        return getattr(self, f"{split}_tokens")[offsets[index] : offsets[index + 1]]

    def _offsets(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"{split}_offsets")

    def __repr__(self) -> str:
        return (
            f"TokenDataset({self.name!r}, vocab_size={self.vocab_size}, "
            f"train={len(self.train_tokens):,} tokens/{self.num_sequences('train')} seqs, "
            f"val={len(self.val_tokens):,} tokens/{self.num_sequences('val')} seqs)"
        )


def load_dataset(paths: DatasetPaths) -> TokenDataset:
    """Open a preprocessed dataset (arrays memory-mapped). Raises DatasetError naming the
    preprocess command when it is missing, half-built or damaged."""
    config_path = paths.data / CONFIG_FILE
    if not config_path.is_file():
        raise DatasetError(
            f"No preprocessed dataset {paths.dataset!r} under {paths.root} ({config_path} is missing, "
            f"so preprocessing never finished there). Run: {preprocess_hint(paths)}"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{config_path} is unreadable ({exc}). Preprocess again: {preprocess_hint(paths)}") from exc
    rerun = config.get("command") or preprocess_hint(paths)
    if config.get("format") != STORE_FORMAT or config.get("version") != STORE_VERSION:
        raise DatasetError(f"{paths.data} holds a token store of another format/version; preprocess again: {rerun}")
    arrays = {}
    try:
        for split in SPLITS:
            tokens = np.load(tokens_file(paths, split), mmap_mode="r", allow_pickle=False)
            offsets = np.load(offsets_file(paths, split), mmap_mode="r", allow_pickle=False)
            counts = config["splits"][split]
            if (
                tokens.dtype != np.uint16
                or offsets.dtype != np.int64
                or tokens.ndim != 1
                or offsets.ndim != 1
                or len(tokens) != counts["tokens"]
                or len(offsets) != counts["sequences"] + 1
                or (len(offsets) and int(offsets[-1]) != len(tokens))
            ):
                raise ValueError(f"{split} arrays do not match config.json")
            arrays[f"{split}_tokens"], arrays[f"{split}_offsets"] = tokens, offsets
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"The token store in {paths.data} is incomplete or damaged ({exc}). "
                           f"Preprocess again: {rerun}") from exc
    return TokenDataset(paths=paths, config=config, **arrays)
