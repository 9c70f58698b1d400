"""Data: sources (any folder, Nottingham download, music21's offline folk corpus), miditok
tokenization, split by file, transposition, the token store and the window sampler.

    from midikit.data import PreprocessConfig, preprocess, load_dataset
    result = preprocess(PreprocessConfig(source="corpus", dataset="folk", checkpoint_dir="runs"))
    data = load_dataset(result.paths)  # TokenDataset: memory-mapped uint16 tokens + config
"""

from .preprocess import PreprocessConfig, PreprocessResult, preprocess, split_files
from .sampler import evaluation_windows, sample_windows
from .sources import NOTTINGHAM_URL, corpus_dir, download_nottingham, list_music_files
from .store import DatasetError, TokenDataset, load_dataset
from .tokenization import TOKENIZERS, TRACK_MODES, load_tokenizer, tokens_to_score

__all__ = [
    "PreprocessConfig",
    "PreprocessResult",
    "preprocess",
    "split_files",
    "sample_windows",
    "evaluation_windows",
    "NOTTINGHAM_URL",
    "corpus_dir",
    "download_nottingham",
    "list_music_files",
    "DatasetError",
    "TokenDataset",
    "load_dataset",
    "TOKENIZERS",
    "TRACK_MODES",
    "load_tokenizer",
    "tokens_to_score",
]
