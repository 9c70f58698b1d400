"""Data: sources (any folder, Nottingham download, music21's offline folk corpus), miditok
tokenization, split by file, transposition, the token store and the window sampler.

    from midikit.data import PreprocessConfig, preprocess, load_dataset
    result = preprocess(PreprocessConfig(source="corpus", dataset="folk", checkpoint_dir="runs"))
    data = load_dataset(result.paths)  # TokenDataset: memory-mapped uint16 tokens + config
"""

from importlib import import_module

from ..configs import TOKENIZERS, TRACK_MODES, PreprocessConfig
from ..errors import DatasetError
from .store import TokenDataset, load_dataset

# The rest imports torch (the sampler) or miditok (and through it much else): loaded on first use,
# so `--help`, the forms and the synthetic GPU benchmarks start fast and run where miditok is absent.
_LAZY = {
    "sample_windows": "sampler", "evaluation_windows": "sampler",
    "PreprocessResult": "preprocess", "preprocess": "preprocess",
    "split_files": "preprocess", "NOTTINGHAM_URL": "sources", "corpus_dir": "sources",
    "download_nottingham": "sources", "list_music_files": "sources",
    "load_tokenizer": "tokenization", "tokens_to_score": "tokenization",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(f".{_LAZY[name]}", __name__)
    # Importing a submodule binds its name here (`preprocess` the module); bind the functions over it.
    for lazy_name, module_name in _LAZY.items():
        if module_name == _LAZY[name]:
            globals()[lazy_name] = getattr(module, lazy_name)
    return globals()[name]


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
