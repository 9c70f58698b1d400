"""The parts of bench/gpu_check.py, one per process: `python bench/gpu_parts.py NAME --device D --scratch DIR`.

A part prints its result lines (Markdown) on stdout, each as soon as it has it, and its progress on
stderr; gpu_check.py appends the first to the results file and the second to the log. --quick runs
every part with tiny models and few steps (a rehearsal of the script, on the CPU too); --no_compile
runs it without torch.compile (the preflight found it broken).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FIX_COMPILER = "install a C compiler and Python's headers (e.g. `apt-get install gcc g++ python3-dev`)"
KNOWN_FAILURES = (  # (text in the error or the compiler's output, what it means)
    ("Python.h", "Python's headers (Python.h) are missing"),
    ("InvalidCxxCompiler", "no working C++ compiler"),
    ("Failed to find C compiler", "no C compiler"),
)


def say(line: str = "") -> None:
    print(line, flush=True)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def die_with_parent() -> None:
    """SIGKILL this process when gpu_check.py dies (Linux), so a check killed from outside leaves no part running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- preflight


def preflight(args) -> None:
    status_path = Path(args.scratch) / "preflight.json"
    status = {"compile": "unknown"}
    status_path.write_text(json.dumps(status))  # "unknown" stays if this part dies or times out
    say(f"- nvidia-smi: {nvidia_smi()}")
    import torch
    from machine import describe_torch_machine

    say(f"- machine: {describe_torch_machine()}")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            status_path.write_text(json.dumps(dict(status, device="missing")))
            say(f"- **CUDA is not available** to torch {torch.__version__} (built for CUDA {torch.version.cuda}): "
                "every part needs the GPU; check the driver (nvidia-smi) and that this torch is a CUDA build.")
            raise SystemExit(1)
        say(f"- {describe_gpu(device)}")
    say(f"- {check_compile(device, status, status_path, args.no_compile)}")


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "not found (no NVIDIA driver on this machine)"
    found = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
    return (found.stdout.strip() or found.stderr.strip() or f"exit {found.returncode}").replace("\n", "; ")


def describe_gpu(device) -> str:
    import torch

    from midikit.rnn_cores import cudnn_has_bf16_rnn

    properties = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    bf16_rnn = cudnn_has_bf16_rnn(device.index or 0, torch.backends.cudnn.enabled)
    core = ("bf16 (cuDNN has bf16 RNNs here)" if bf16_rnn else
            "fp16 with loss scaling (this cuDNN has no bf16 RNN; torch's autocast runs cuDNN RNNs in fp16)")
    return (f"{properties.name}: sm_{properties.major}{properties.minor}, {properties.total_memory / 2**30:.0f} GiB, "
            f"{properties.multi_processor_count} SMs; CUDA {torch.version.cuda}, cuDNN {cudnn}; "
            f"a bf16 run's LSTM/GRU core: {core}")


@contextmanager
def stderr_into(path: Path):
    """fd 2 (and so a C compiler's messages) into `path` for the block, then echoed to the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("w") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.write(path.read_text())


def check_compile(device, status: dict, status_path: Path, skipped: bool) -> str:
    """torch.compile of a tiny function, cold (its own caches), as every compiled part will need it."""
    if skipped:
        return "torch.compile: not tried (--no_compile); the rest runs uncompiled."
    import torch

    cache = Path(tempfile.mkdtemp(prefix="preflight_compile_"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    started, error = time.perf_counter(), None
    with stderr_into(cache / "stderr.txt"):
        try:
            x = torch.linspace(-3, 3, 64, device=device)
            same = torch.allclose(torch.compile(lambda t: torch.sin(t) * 2 + 1)(x), torch.sin(x) * 2 + 1, atol=1e-4)
        except Exception as exc:  # whatever broke beneath: the compiler, Triton, Python.h
            error = exc
    seconds = time.perf_counter() - started
    status["compile"] = "ok" if error is None and same else "failed"
    status_path.write_text(json.dumps(status))
    what = f"torch.compile of a tiny {device.type} function (cold, its own caches)"
    if error is None and same:
        return f"{what}: works, {seconds:.1f} s."
    reason = (failure_reason(error, (cache / "stderr.txt").read_text()) if error
              else "it ran, with results that differ from eager")
    return (f"{what}: **FAILED** after {seconds:.1f} s ({reason}); the rest of this check runs uncompiled. "
            f"To compile: {FIX_COMPILER}.")


def failure_reason(error: BaseException, compiler_output: str) -> str:
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    first = (str(root).strip().splitlines() or [""])[0]
    known = next((meaning for text, meaning in KNOWN_FAILURES if text in compiler_output or text in str(error)), None)
    detail = f"{type(root).__name__}: {first}"[:220]
    return f"{known}: {detail}" if known else detail


# --------------------------------------------------------------------------- the benchmarks


def throughput(args) -> None:
    import train_bench

    common = ["--device", args.device, "--synthetic", "--skip_resume", "--skip_checkpoint"]
    if args.no_compile:
        common += ["--compile", "off"]
    if args.quick:
        sizes = ["--presets", "cpu", "--synthetic_tokens", "200000", "--context", "32", "--batch_size", "8",
                 "--steps", "2", "--warmup", "1", "--seed_steps", "1"]
    else:  # the RNNs first: quick and certain; then the Transformer's cold compile with what is left
        sizes = ["--presets", "large", "--models", "lstm,gru,transformer", "--steps", "20", "--warmup", "5",
                 "--seed_steps", "5"]
    train_bench.main(common + sizes + ["--out", str(Path(args.scratch) / "train.md")])


def generation(args) -> None:
    import generate_bench

    # The LSTM first (quick, certain), then rotary positions (new runs' default), then learned (re-primes its window).
    if args.quick:
        models = ["lstm:cpu", "transformer:cpu:rope", "transformer:cpu:learned"]
        counts = ["--new_tokens", "24", "--recompute_tokens", "8"]
    else:
        models = ["lstm:large", "transformer:large:rope", "transformer:large:learned"]
        counts = ["--new_tokens", "256", "--recompute_tokens", "128"]
    generate_bench.main(["--device", args.device, "--models", *models, "--batches", "1", *counts, "--skip_agreement",
                         "--out", str(Path(args.scratch) / "generate.md")]
                        + (["--no_compile"] if args.no_compile else []))


def stall(args) -> None:
    """A checkpoint of the Transformer (large, eager: the copy overlaps the forward and backward)."""
    import torch
    from save_stall import measure_save_stall
    from train_bench import SYNTHETIC_VOCAB

    from midikit.data import sample_windows
    from midikit.presets import get_preset
    from midikit.train import TrainConfig, build_training, train_step

    device = torch.device(args.device)
    preset = get_preset("transformer", "cpu" if args.quick else "large")
    mc = preset.model_config("transformer", SYNTHETIC_VOCAB, context_length=32 if args.quick else 100)
    if args.quick:  # a rehearsal: tiny, so its 30-odd steps take no time
        mc = replace(mc, d_model=32, nhead=2, num_layers=1, dim_feedforward=64).validate()
    batch_size = 8 if args.quick else preset.batch_size
    settings = TrainConfig(model_type="transformer", batch_size=batch_size, lr=preset.lr, warmup_steps=10,
                           device=str(device), compile="off").validate()
    training = build_training(mc, settings, device, total_steps=1000)
    tokens = torch.randint(4, SYNTHETIC_VOCAB, (200_000,), dtype=torch.int32, device=device)
    batch = sample_windows(tokens, batch_size, mc.context_length, torch.Generator().manual_seed(0))[:2]  # no song clock
    for _ in range(3):  # AdamW's state exists after the first step; cuDNN/cuBLAS choose their kernels
        train_step(training, *batch, 1.0)
    r = measure_save_stall(training, batch)
    verdict = "—" if device.type != "cuda" else (
        "met" if r["worst_warm_s"] <= 0.1 else f"**missed** by {r['worst_warm_s'] - 0.1:.3f} s")
    size = "a tiny" if args.quick else f"the {preset.name}"
    say(f"- {size} Transformer, eager, batch {batch_size}: state {r['state_gib']:.2f} GiB "
        f"({'pinned' if r['pinned'] else 'pageable'}), plain step {r['plain_step_s'] * 1e3:.0f} ms")
    say(f"- the pool's buffers: made on thread `{r['fill_thread']}` in {r['fill_s']:.2f} s, when the run starts")
    say(f"- a save holds training: first {r['first_s'] * 1e3:.0f} ms, warm {r['warm_s'] * 1e3:.0f} ms (worst "
        f"{r['worst_warm_s'] * 1e3:.0f} ms; half of them carry the best weights); steps while its file is written "
        f"+{r['while_written_s'] * 1e3:.0f} ms each. Target <= 100 ms: {verdict}")
    say(f"- for comparison, a first save with no pool filled (allocating on the training thread, as before): "
        f"{r['unprepared_s'] * 1e3:.0f} ms; at a 10-minute cadence a warm save costs "
        f"{r['warm_s'] / 600:.4%} of training")


def path(args) -> None:
    import gpu_path

    gpu_path.run(args)


PARTS = {"preflight": preflight, "path": path, "throughput": throughput, "generation": generation, "stall": stall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scratch", required=True, help="a folder the parts share with gpu_check.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no_compile", action="store_true")
    args = parser.parse_args(argv)
    die_with_parent()
    PARTS[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
