"""The one check for a GPU machine: runs in a short window and keeps every result it gets.

Parts, most important first. --budget_s (default 300) drops from the end of this list: a part
starts only with at least its `min_s` of the budget left, and runs at most `cap_s` or what is left.

    preflight    always, first: nvidia-smi, CUDA, cuDNN, and a tiny torch.compile (a C compiler and
                 Python.h); if that fails the check says why in one line and runs the rest uncompiled
    path         the GPU path through the CLI: each model type trains; the Transformer compiled,
                 killed with SIGKILL after a checkpoint and resumed; a run started on the CPU resumed
                 on the GPU (fused AdamW); each run's model generates; the RNN core's dtype on the device
    throughput   tokens/s of the three large models against the original project's loop (train_bench.py)
    generation   tokens/s of the large Transformer (learned and rotary positions) and LSTM (generate_bench.py)
    stall        what a checkpoint of the large Transformer adds to a training step (save_stall.py)

Each part runs as its own process (`gpu_parts.py NAME`) under its own time limit; every line it
prints is appended to the dated results file the moment it arrives (and to a copy under $OUT), so
a part killed by its limit, or the whole check killed from outside, leaves every earlier line. A
part that overruns is written as "timed out after N s".

    bash bench/gpu_check.sh                                      # on the GPU machine (about 5 minutes)
    python bench/gpu_check.py --device cpu --quick --out DIR     # a CPU rehearsal, tiny (about 65 CPU-seconds)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    min_s: int  # starts only with this much of the budget left
    cap_s: int  # its own time limit


PREFLIGHT = Part("preflight", "Preflight", 10, 90)
PARTS = (  # most important first: the budget drops from the end
    Part("path", "The GPU path through the CLI", 60, 150),
    Part("throughput", "Training throughput against the original project's loop", 50, 120),
    Part("generation", "Generation speed", 40, 100),
    Part("stall", "Checkpoint stall", 25, 60),
)
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}  # Python 3.10
TAIL_LINES = 25  # of a failed part's log, copied into the results
QUICK_SLACK = 4  # --quick (a rehearsal on a slow, shared CPU): limits and the default budget this many times longer


class Results:
    """The results file (and its copy under $OUT): each line appended and flushed as it comes."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        for path in self.paths:
            with path.open("a") as file:
                file.write(line + "\n")


def _pipe_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _log_lines(stream, log_path: Path, header: str, done: queue.Queue) -> None:
    """Copies a part's progress (stderr) to the log; hands its last lines back at the end."""
    tail = collections.deque(maxlen=TAIL_LINES)
    with log_path.open("a") as log:
        log.write(header)
        for line in stream:
            log.write(line)
            log.flush()
            tail.append(line.rstrip("\n"))
    done.put(tuple(tail))


def run_part(part: Part, limit_s: float, args, scratch: Path, compiled: bool, results: Results, log_path: Path) -> str:
    """Run one part under its limit, its result lines appended as they come; returns how it ended."""
    command = [sys.executable, str(HERE / "gpu_parts.py"), part.name, "--device", args.device, "--scratch",
               str(scratch)]
    command += (["--quick"] if args.quick else []) + ([] if compiled else ["--no_compile"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    if args.quick:  # tiny models are all dispatch: a second torch thread on shared cores only adds waiting
        env["OMP_NUM_THREADS"] = "1"
    started = time.monotonic()
    # Its own process group: a part that overruns goes with everything it started (CLI runs, compile workers).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **OWN_GROUP)
    lines, tail = queue.Queue(), queue.Queue()
    threading.Thread(target=_pipe_lines, args=(process.stdout, lines), daemon=True).start()
    header = f"\n===== {part.name}: {shlex.join(command)}\n"
    threading.Thread(target=_log_lines, args=(process.stderr, log_path, header, tail), daemon=True).start()
    try:
        ended = _relay(lines, results, started + limit_s)
    except BaseException:  # SIGTERM or Ctrl-C: the part goes too, the lines so far stay
        _kill_group(process)
        results.add(f"- **stopped from outside** after {time.monotonic() - started:.0f} s: the lines "
                    "above are what it had.")
        raise
    if ended == "timed out":
        _kill_group(process)
    code = process.wait()
    seconds = time.monotonic() - started
    if ended == "timed out":
        results.add(f"- **timed out after {limit_s:.0f} s** (its limit): the lines above are what it had.")
        return "timed out"
    if code != 0:
        try:
            last = tail.get(timeout=30)
        except queue.Empty:
            last = ("(its log did not close)",)
        results.add(f"- **failed** (exit {code}) after {seconds:.0f} s; the end of its log:")
        results.add("```\n" + "\n".join(last) + "\n```")
        return "failed"
    results.add()
    results.add(f"({part.name}: {seconds:.0f} s)")
    return "ok"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _relay(lines: queue.Queue, results: Results, deadline: float) -> str:
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return "timed out"
        if line is None:
            return "done"
        results.add("###" + line[1:] if line.startswith("# ") else line)  # a benchmark's own title, under the part's


def preflight_found(scratch: Path) -> dict:
    try:
        return json.loads((scratch / "preflight.json").read_text())
    except (OSError, ValueError):
        return {}


def compile_works(scratch: Path) -> bool:
    """What the preflight found; no answer (it failed or timed out first) counts as no."""
    return preflight_found(scratch).get("compile") == "ok"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps: rehearses every "
                                                             "part, measures nothing")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the dated results file")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="seconds for the whole check, parts dropped from the end (default 300; with --quick 1200)")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS), help="comma-separated, of: "
                        + ", ".join(p.name for p in PARTS) + " (the preflight always runs)")
    parser.add_argument("--limits", default="", help="a part's own limit instead of its cap: NAME=SECONDS,...")
    return parser.parse_args(argv)


def plan(args) -> tuple[list[Part], dict[str, float]]:
    names = [name for name in args.parts.split(",") if name]
    unknown = sorted(set(names) - {p.name for p in PARTS})
    if unknown:
        raise SystemExit(f"Unknown part(s) {', '.join(unknown)}: choose from {', '.join(p.name for p in PARTS)}.")
    slack = QUICK_SLACK if args.quick else 1
    limits = {part.name: part.cap_s * slack for part in (PREFLIGHT, *PARTS)}
    for item in filter(None, args.limits.split(",")):
        name, _, seconds = item.partition("=")
        limits[name] = float(seconds)
    args.budget_s = args.budget_s or 300 * slack
    return [p for p in PARTS if p.name in names], limits


def main(argv=None) -> int:
    args = parse_args(argv)
    parts, limits = plan(args)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")  # a rerun never overwrites
    name = f"gpu_check_{stamp}{'_' + args.device.replace(':', '') if args.device != 'cuda' else ''}"
    copies = [Path(os.environ["OUT"]) / f"{name}.md"] if os.environ.get("OUT") else []
    results = Results([args.out / f"{name}.md", *copies])
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    log_path = (Path(os.environ["OUT"]) if os.environ.get("OUT") else scratch) / f"{name}.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: end like a kill, the lines stay
    started = time.monotonic()
    results.add(f"# GPU check {stamp} ({args.device}{', quick rehearsal' if args.quick else ''})")
    results.add()
    results.add(f"Command: `bash bench/gpu_check.sh {shlex.join(argv if argv is not None else sys.argv[1:])}`; "
                f"budget {args.budget_s:.0f} s; parts: preflight, {', '.join(p.name for p in parts)}; "
                f"progress log: {log_path}")
    results.add()
    results.add(f"## {PREFLIGHT.title}")
    run_part(PREFLIGHT, limits[PREFLIGHT.name], args, scratch, True, results, log_path)
    compiled = compile_works(scratch)
    if preflight_found(scratch).get("device") == "missing":
        results.add()
        results.add("Stopped: every part needs the device the preflight did not find.")
        return 1
    for number, part in enumerate(parts, start=1):
        results.add()
        results.add(f"## {number}. {part.title}")
        left = args.budget_s - (time.monotonic() - started)
        if left < part.min_s:
            results.add(f"- **dropped**: {max(0.0, left):.0f} s of the {args.budget_s:.0f} s budget left, it needs "
                        f"{part.min_s} s (run it alone: `--parts {part.name}`, or raise --budget_s).")
            continue
        run_part(part, min(limits[part.name], left), args, scratch, compiled, results, log_path)
    results.add()
    results.add(f"Total {time.monotonic() - started:.0f} s (budget {args.budget_s:.0f} s).")
    print(f"wrote {results.paths[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
