"""Preprocessing speed: all 1034 Nottingham files, the seed's 7 transpositions, 2 CPU cores, cold.

Each repeat preprocesses into a fresh temporary root (no cache, no earlier download) and times:

    in-process   midikit.data.preprocess() wall time (list, hash, tokenize on the pool, split, write)
    CLI          `python -m midikit preprocess ...` as a new process: interpreter start and the
                 miditok import (which imports torch) included
    worker CPU   CPU seconds the worker processes used (load-independent)

`--reference` also times the path without the token-id shift (miditok augment_score + encode for
every transposition), and `--breakdown` times each stage on one core.

    PYTHONPATH=. python bench/preprocess_bench.py                      # the target: <= 15 s
    PYTHONPATH=. python bench/preprocess_bench.py --reference --breakdown

Prints a Markdown summary and writes it to bench/results/preprocess.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTTINGHAM = REPO.parent / "shared" / "data" / "nottingham"
SEED_TRANSPOSITIONS = "-5,-3,-1,0,1,3,5"
TARGET_S = 15.0
NOTES = """
Notes:
- Almost all the time is miditok's `encode` (pure Python, ~12 ms per tune); parsing (symusic) and
  preprocessing are small. Encoding every transposed copy, as a plain `augment_score` + `encode`
  loop does, multiplies the dominant cost by 7. midikit encodes each tune once and makes the
  transposed copies by shifting pitch-token ids, which for REMI/TSD/MIDILike without chords,
  pitch intervals or drums is exactly miditok's result (checked token for token on all 1034 files,
  and in tests/test_data.py); other tokenizer settings fall back to `augment_score` + `encode`.
- Work is spread over a fork-based process pool (tokenizer built once per worker); the parent
  hashes the inputs (cache fingerprint), assembles the splits and writes the store.
- Wall times depend on what else runs on the machine (see the load average); worker CPU seconds
  divided by the number of workers is the wall time an idle machine approaches.
"""


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_in_process(input_dir: Path, workers: int, tracks: str) -> tuple[float, float, dict]:
    from midikit.data import PreprocessConfig, preprocess

    with tempfile.TemporaryDirectory() as root:
        config = PreprocessConfig(input_dir=str(input_dir), checkpoint_dir=root, transpositions=SEED_TRANSPOSITIONS,
                                  tracks=tracks, workers=workers)
        cpu = children_cpu_seconds()
        start = time.perf_counter()
        result = preprocess(config, progress=False, log=lambda message: None)
        return time.perf_counter() - start, children_cpu_seconds() - cpu, result.config


def time_cli(input_dir: Path, workers: int, tracks: str) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "midikit", "preprocess", "--input_dir", str(input_dir), "--checkpoint_dir",
                   root,
                   "--transpositions", SEED_TRANSPOSITIONS, "--tracks", tracks, "--workers", str(workers),
                   "--no_progress"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO)
        shown = shlex.join(["python"] + command[1:]).replace(root, "ROOT").replace(str(input_dir),
                                                                                   "../shared/data/nottingham")
        return time.perf_counter() - start, shown


def breakdown(input_dir: Path, tracks: str) -> list[tuple[str, float]]:
    """Seconds per stage for all files on one core, the stages of FileTokenizer one by one."""
    from miditok.data_augmentation import augment_score

    from midikit.data.tokenization import FileTokenizer, read_score, separate_programs, tokenizer_spec

    worker = FileTokenizer(tokenizer_spec("REMI", tracks))
    offsets = [int(k) for k in SEED_TRANSPOSITIONS.split(",") if k != "0"]
    times = dict.fromkeys(["parse (symusic)", "miditok preprocess_score", "miditok encode (untransposed)",
                           "token-id shift (6 transpositions)", "miditok augment_score (6 transpositions)",
                           "miditok encode (6 transposed copies, reference path)"], 0.0)
    for path in sorted(input_dir.glob("*.mid")):
        marks = [time.perf_counter()]
        score = read_score(path)
        marks.append(time.perf_counter())
        if tracks == "merged":
            separate_programs(score)
        score = worker.tokenizer.preprocess_score(score)
        marks.append(time.perf_counter())
        original = worker._encode(score)
        marks.append(time.perf_counter())
        for k in offsets:
            [worker._shift_table(k)[seq] for seq in original]
        marks.append(time.perf_counter())
        transposed = [augment_score(score, pitch_offset=k) for k in offsets]
        marks.append(time.perf_counter())
        for copy in transposed:
            worker._encode(copy)
        marks.append(time.perf_counter())
        for name, begin, end in zip(times, marks, marks[1:]):
            times[name] += end - begin
    return list(times.items())


def machine() -> str:
    cpu = cpu_name()
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("miditok", "symusic", "numpy"))
    return f"{cpu}, {os.cpu_count()} logical CPUs visible; Python {platform.python_version()}, {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dir", type=Path, default=NOTTINGHAM)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracks", default="merged", choices=("merged", "separate"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time miditok encode for every transposition")
    parser.add_argument("--breakdown", action="store_true", help="time each stage on one core")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "preprocess.md")
    args = parser.parse_args()
    if len(list(args.input_dir.glob("*.mid"))) == 0:
        sys.exit(f"No Nottingham MIDI files in {args.input_dir}")

    start = time.perf_counter()
    import midikit.data.preprocess  # noqa: F401  (miditok imports torch: timed once, apart)
    import_s = time.perf_counter() - start

    runs = [time_in_process(args.input_dir, args.workers, args.tracks) for _ in range(args.repeats)]
    walls, cpus, config = [r[0] for r in runs], [r[1] for r in runs], runs[-1][2]
    cli_s, cli_command = time_cli(args.input_dir, args.workers, args.tracks)
    load = os.getloadavg()

    this_command = shlex.join(["PYTHONPATH=.", "python", "bench/preprocess_bench.py", *sys.argv[1:]])
    splits = config["splits"]
    lines = [
        "# Preprocessing benchmark",
        "",
        f"All {config['files_processed']} Nottingham files, transpositions {SEED_TRANSPOSITIONS}, REMI, "
        f"{args.tracks} tracks, {args.workers} worker processes, cold (fresh root, no cache). Target "
        f"<= {TARGET_S:.0f} s.",
        "",
        f"- machine: {machine()}",
        f"- load average during the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
        f"- command: `{this_command}`",
        f"- output: vocab {config['vocab_size']}, train {splits['train']['sequences']} sequences / "
        f"{splits['train']['tokens']:,} tokens, val {splits['val']['sequences']} sequences / "
        f"{splits['val']['tokens']:,} tokens",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| `preprocess()` wall, in-process, best of {args.repeats} | **{min(walls):.1f}** "
        f"({'meets' if min(walls) <= TARGET_S else 'misses'} the target) |",
        f"| `preprocess()` wall, median of {args.repeats} (each: {', '.join(f'{w:.1f}' for w in walls)}) | "
        f"{statistics.median(walls):.1f} |",
        f"| worker CPU seconds (both workers together), median | {statistics.median(cpus):.1f} |",
        f"| CLI as a new process, end to end (`{cli_command}`) | {cli_s:.1f} |",
        f"| of which `import midikit.data` (miditok imports torch) | {import_s:.1f} |",
    ]
    if args.reference:
        from midikit.data import tokenization

        # Forked workers inherit this: every transposition goes through augment_score + encode.
        tokenization._SHIFTABLE_TOKENIZERS = ()
        wall, cpu, _ = time_in_process(args.input_dir, args.workers, args.tracks)
        lines.append("| reference: miditok `augment_score` + `encode` per transposition, wall (worker CPU) | "
                     f"{wall:.1f} ({cpu:.1f}) |")
    if args.breakdown:
        lines += ["", "Where the time goes (all files, one core, each stage alone):", "", "| stage | seconds |",
                  "|---|---|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in breakdown(args.input_dir, args.tracks)]
    text = "\n".join(lines) + "\n" + NOTES
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
