"""Source files -> token store: list the files, tokenize them on every core, split by file,
augment the training split by transposition, write the store, report.

The split is made over source files *before* augmentation (every transposed copy of a tune
lands in the same split as the tune), deterministically from `seed`. Re-running with the same
inputs (relative path, size, content hash of every file) and settings is a cache hit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, storage
from ..configs import PreprocessConfig, parse_transpositions  # noqa: F401  (re-exported)
from ..errors import ConfigError, DatasetError
from ..storage import DatasetPaths
from . import sources
from .store import STORE_FORMAT, STORE_VERSION, load_dataset, write_config, write_store
from .tokenization import FileTokenizer, build_tokenizer, init_worker, special_ids, tokenize_in_worker, tokenizer_spec

REPORT_MAX_SKIPPED = 20  # skipped files listed in the printed report (config.json lists all)


@dataclass
class PreprocessResult:
    paths: DatasetPaths
    config: dict  # the dataset's config.json
    cache_hit: bool
    report: str


def check_tokenizer(config: PreprocessConfig) -> dict:
    """The tokenizer's spec, its options checked by miditok itself (names and values) and the BPE
    vocabulary against the base one: before any file is read, so a bad option costs no time."""
    spec = tokenizer_spec(config.tokenizer, config.tracks, config.tokenizer_params)  # says why one is unsupported
    base = len(build_tokenizer(spec))
    if config.bpe_vocab and config.bpe_vocab <= base:
        raise ConfigError(f"bpe_vocab={config.bpe_vocab} is not above the base vocabulary ({base} tokens): BPE adds "
                          f"merged tokens to it; use --bpe_vocab {base * 2} or more, or leave it out.")
    return spec


def preprocess(config: PreprocessConfig, progress: bool = True, log=print) -> PreprocessResult:
    """Build (or reuse) the token store of `config.dataset` under `config.checkpoint_dir`."""
    started = time.perf_counter()
    config.validate()
    spec = check_tokenizer(config)
    root = storage.resolve_root(config.checkpoint_dir)
    paths = DatasetPaths(root, config.dataset)

    base, files, location = _find_inputs(config, root, log)
    settings, fingerprint = _fingerprint(config, spec, files, base)
    cached = _reusable(paths, fingerprint, log)
    if cached is not None:
        if cached["seq_length"] != config.seq_length:  # only a default for training: no re-tokenizing
            cached["seq_length"] = config.seq_length
            write_config(paths, cached)
        log(f"Cache hit: {paths.data} already holds these {len(files)} files tokenized with the same settings "
            f"(fingerprint {fingerprint}); nothing was re-tokenized.")
        report = format_report(cached, paths)
        log(report)
        return PreprocessResult(paths, cached, True, report)

    results = _tokenize_files(spec, files, base, config, progress, log)
    skipped = [{"file": r.file, "reason": r.reason} for r in results if r.reason]
    usable = {r.file: r for r in results if not r.reason}
    if not usable:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
        raise DatasetError(f"None of the {len(files)} files in {location} could be used ({reasons}). "
                           "Pass a folder of valid MIDI (.mid/.midi) or ABC (.abc) files.")
    val_files = split_files(sorted(usable), config.val_split, config.seed)
    train_files = sorted(set(usable) - set(val_files))
    splits, out_of_range = _assemble_splits(usable, {"train": train_files, "val": val_files}, config)

    tokenizer = build_tokenizer(spec)
    if len(tokenizer) > 65536:
        raise ConfigError(f"The vocabulary has {len(tokenizer)} tokens, more than uint16 storage holds; "
                          "use fewer tokenizer options.")
    if config.bpe_vocab:
        splits = learn_bpe(tokenizer, splits, config.bpe_vocab, log)
    store_config = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "name": config.dataset, "fingerprint": fingerprint,
        "vocab_size": len(tokenizer.vocab_model) if config.bpe_vocab else len(tokenizer), **special_ids(tokenizer),
        "seq_length": config.seq_length, "bpe_vocab": config.bpe_vocab,
        "tokenizer": {**spec, "config": tokenizer.config.to_dict(serialize=True)},
        "augmentation": _augmentation_record(config, out_of_range),
        "split": {"val_split": config.val_split, "seed": config.seed, "by": "source file, before augmentation"},
        "splits": {split: {"files": len(names), "sequences": len(splits[split]),
                           "tokens": int(sum(len(seq) for seq in splits[split]))}
                   for split, names in (("train", train_files), ("val", val_files))},
        "source": {"kind": config.source, "location": str(location)}, "files_found": len(files),
        "files_processed": len(usable), "files_skipped": skipped, "train_files": train_files, "val_files": val_files,
        "settings": settings, "command": config.command(root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2), "midikit_version": __version__,
    }
    paths.ensure()
    write_store(paths, splits, json.dumps(tokenizer.to_dict(), indent=2), store_config)
    report = format_report(store_config, paths)
    log(report)
    return PreprocessResult(paths, store_config, False, report)


def _fingerprint(config: PreprocessConfig, spec: dict, files: list[Path], base: Path) -> tuple[dict, str]:
    """(the settings that shape the tokens, a hash of them and of every input file): equal means a cache hit."""
    inputs = [_describe_input(path, base) for path in files]
    settings = {
        "tokenizer": spec, "transpositions": list(config.transpositions),
        "augment_validation": config.augment_validation,
        "val_split": config.val_split, "seed": config.seed, "miditok": importlib.metadata.version("miditok"),
        "store_version": STORE_VERSION, **({"bpe_vocab": config.bpe_vocab} if config.bpe_vocab else {}),
    }
    described = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True)
    digest = hashlib.sha256(described.encode()).hexdigest()[:16]
    return settings, digest


def learn_bpe(tokenizer, splits: dict, vocab_size: int, log) -> dict:
    """Learn miditok BPE merges on the training split (within bars: a merge never crosses a bar line)
    and re-encode both splits with them; `tokenizer` is trained in place (saved with the dataset)."""
    from miditok import TokSequence

    specials = {tokenizer[f"{name}_None"] for name in ("PAD", "BOS", "EOS", "MASK")}
    bar = tokenizer.vocab.get("Bar_None")
    words = [tokenizer._ids_to_bytes(part, as_one_str=True)  # miditok's own id -> byte mapping for its BPE model
             for sequence in splits["train"]
             for part in _bars([int(i) for i in sequence if int(i) not in specials], bar)]
    tokenizer.config.encode_ids_split = "no"  # whole songs are encoded: no merge was learned across a bar line
    started = time.perf_counter()
    tokenizer.train(vocab_size=vocab_size, model="BPE", iterator=words)
    encoded = {}
    for split, sequences in splits.items():
        bodies = [TokSequence(ids=[int(i) for i in sequence[1:-1]]) for sequence in sequences]
        tokenizer.encode_token_ids(bodies)
        encoded[split] = [np.array([sequence[0], *body.ids, sequence[-1]], dtype=np.uint16)
                          for sequence, body in zip(sequences, bodies)]
    before, after = sum(map(len, splits["train"])), sum(map(len, encoded["train"]))
    log(f"BPE: {len(tokenizer.vocab_model)} tokens learned in {time.perf_counter() - started:.0f} s; "
        f"{before / max(1, after):.2f} tokens become one.")
    return encoded


def _bars(ids: list[int], bar: int | None) -> list[list[int]]:
    cuts = [i for i, token in enumerate(ids) if token == bar and i > 0]
    return [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]


def _augmentation_record(config: PreprocessConfig, out_of_range: dict) -> dict:
    return {
        "transpositions": list(config.transpositions), "augment_validation": config.augment_validation,
        "method": "miditok.data_augmentation.augment_score (pitch tokens shifted where exact)",
        "skipped_out_of_range": sum(out_of_range.values()),
        "skipped_out_of_range_by_offset": {str(k): n for k, n in sorted(out_of_range.items())},
    }


def _assemble_splits(usable: dict, files: dict, config: PreprocessConfig):
    """Sequences of each split in file order, each file's transpositions in ascending order
    (validation untransposed unless augment_validation), and per offset how many files could
    not take it (out of the tokenizer's pitch range)."""
    splits, out_of_range = {}, {}
    for split, names in files.items():
        offsets = config.transpositions if split == "train" or config.augment_validation else (0,)
        splits[split] = []
        for name in names:
            result = usable[name]
            for k in offsets:
                if k in result.skipped_offsets:
                    out_of_range[k] = out_of_range.get(k, 0) + 1
                splits[split].extend(result.sequences.get(k, []))
    return splits, out_of_range


def _find_inputs(config: PreprocessConfig, root: Path, log):
    """(base folder, files, description of where they came from)."""
    if config.source == "nottingham":
        base = sources.download_nottingham(root, log=log)
        location = f"{base} (from {sources.NOTTINGHAM_URL})"
    elif config.source == "corpus":
        base = sources.corpus_dir()
        location = f"{base} (music21's bundled folk tunes)"
    else:
        base = Path(config.input_dir).expanduser().absolute()
        location = str(base)
    files = sources.list_music_files(base)
    if not files:
        raise DatasetError(f"No .mid, .midi or .abc files in {base}; "
                           "point --input_dir at a folder of MIDI or ABC files.")
    if config.limit:
        files = files[: config.limit]
    return base, files, location


def _describe_input(path: Path, base: Path) -> list:
    """[relative path, size, content hash]: what the fingerprint knows of one input file."""
    data = path.read_bytes()
    return [path.relative_to(base).as_posix(), len(data), hashlib.sha1(data).hexdigest()]


def _reusable(paths: DatasetPaths, fingerprint: str, log) -> dict | None:
    """The existing store's config when it is complete and built from the same inputs and settings."""
    if not (paths.data / "config.json").is_file():
        return None
    try:
        existing = load_dataset(paths)
    except DatasetError as exc:
        log(f"Rebuilding {paths.data}: {exc}")
        return None
    if existing.fingerprint != fingerprint:
        log(f"Rebuilding {paths.data}: inputs or settings changed "
            f"(fingerprint {existing.fingerprint} -> {fingerprint}).")
        return None
    return existing.config


def _tokenize_files(spec: dict, files: list[Path], base: Path, config: PreprocessConfig, progress: bool, log):
    """Tokenize every file at every transposition (offset 0 always: validation needs it) on
    `config.workers` processes (default: all cores), in file order."""
    from tqdm.auto import tqdm

    offsets = tuple(sorted(set(config.transpositions) | {0}))
    tasks = [(path, path.relative_to(base).as_posix(), offsets) for path in files]
    workers = min(config.workers or _usable_cores(), len(tasks))
    log(f"Tokenizing {len(tasks)} files ({config.tokenizer}, {config.tracks} tracks, transpositions "
        f"{','.join(map(str, config.transpositions))}) on {workers} process{'es' if workers > 1 else ''} ...")
    bar = tqdm(total=len(tasks), desc="tokenizing", unit="file", disable=not progress)
    try:
        if workers == 1:
            tokenize = FileTokenizer(spec)
            results = [_advance(bar, tokenize(task)) for task in tasks]
        else:
            # fork shares the already imported miditok/torch with the workers (spawn would
            # re-import them in every worker, seconds each); each builds its tokenizer once.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            chunksize = max(1, min(8, len(tasks) // (workers * 8)))
            with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(spec,)) as pool:
                results = [_advance(bar, r) for r in pool.map(tokenize_in_worker, tasks, chunksize=chunksize)]
    except BrokenProcessPool as exc:
        raise DatasetError(
            "A tokenizer worker process died (out of memory, or a file that crashes the MIDI parser). "
            "Run again with --workers 1 to see which file, and move it out of the input folder."
        ) from exc
    finally:
        bar.close()
    return results


def _usable_cores() -> int:
    # The cores this process may run on (a container may see more than it gets).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _advance(bar, result):
    bar.update()
    return result


def split_files(files: list[str], val_split: float, seed: int) -> list[str]:
    """The validation files: the `val_split` share (at least one when there are two or more files)
    whose hash of (seed, relative path) is lowest. Depends only on the names and the seed, so
    adding files moves few others."""
    if len(files) < 2:
        return []
    count = min(len(files) - 1, max(1, round(val_split * len(files))))
    ranked = sorted(files, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    return sorted(ranked[:count])


def format_report(config: dict, paths: DatasetPaths) -> str:
    """The short summary printed at the end of a run."""
    splits, aug, tok = config["splits"], config["augmentation"], config["tokenizer"]
    lines = [
        f"Dataset {config['name']!r}: {tok['name']} tokens, {tok['tracks']} tracks, vocab {config['vocab_size']} "
        f"(fingerprint {config['fingerprint']})",
        f"  files: {config['files_found']} found, {config['files_processed']} processed, "
        f"{len(config['files_skipped'])} skipped",
        f"  train: {splits['train']['files']} files -> {splits['train']['sequences']} sequences, "
        f"{splits['train']['tokens']:,} tokens "
        f"(transpositions {','.join(map(str, aug['transpositions']))}; "
        f"{aug['skipped_out_of_range']} skipped: out of pitch range)",
        f"  val:   {splits['val']['files']} files -> {splits['val']['sequences']} sequences, "
        f"{splits['val']['tokens']:,} tokens "
        f"({'transposed too' if aug['augment_validation'] else 'untransposed'})",
    ]
    if not splits["val"]["files"]:
        lines.append("  warning: only one usable file, so there is no validation split; add files to validate.")
    skipped = config["files_skipped"]
    if skipped:
        lines.append("  skipped files:")
        lines += [f"    {s['file']}: {s['reason']}" for s in skipped[:REPORT_MAX_SKIPPED]]
        if len(skipped) > REPORT_MAX_SKIPPED:
            lines.append(f"    ... and {len(skipped) - REPORT_MAX_SKIPPED} more (all listed in config.json)")
    lines.append(f"  built in {config['seconds']:.1f} s, stored in {paths.data}")
    return "\n".join(lines)
