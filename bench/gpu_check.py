"""One device check for a CUDA machine, within about 5 minutes on one H100/H200-class GPU.

1. The GPU path works: each model type trains a few hundred steps on CUDA with torch.compile
   through the real CLI; one run is killed with SIGKILL and resumed; a run started on the CPU
   (unfused AdamW) is resumed on the GPU (fused AdamW: torch must put its step counters on the
   device); every run's model generates.
2. The numbers: bf16 matmul peak measured here; the training benchmark of the large presets beside
   a seed-style loop in the same process (bench/train_bench.py); the generation benchmark
   (bench/generate_bench.py); and the checkpoint stall: how much longer a training step of the
   large Transformer takes when a full-state save happens during it.
3. One dated results file: bench/results/gpu_check_<date>.md (and a copy under $OUT when set).

Needs neither miditok nor symusic: the data are synthetic tokens in midikit's store format.

    bash bench/gpu_check.sh                      # on the GPU machine
    python bench/gpu_check.py --device cpu --quick   # the same steps, tiny, to check the script here
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_bench import SYNTHETIC_VOCAB, synthetic_sequences, write_synthetic_store  # noqa: E402

from midikit import checkpoints, storage  # noqa: E402
from midikit.configs import TrainConfig  # noqa: E402
from midikit.generate import SampleConfig, decode, next_tokens  # noqa: E402
from midikit.models import build_model  # noqa: E402
from midikit.presets import get_preset  # noqa: E402
from midikit.train import build_training, train_step  # noqa: E402

RESULTS: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    RESULTS.append(line)


def midikit_train(root: Path, *args: str, timeout: float = 240) -> subprocess.Popen:
    command = [sys.executable, "-m", "midikit", "train", "--dataset", "synthetic", "--checkpoint_dir", str(root),
               "--no_progress", "--checkpoint_every_minutes", "0", "--eval_windows", "64", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(HERE.parent)))


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output


def newest_state(root: Path, model_type: str):
    paths = storage.DatasetPaths(root, "synthetic")
    run_dir = sorted(p for p in paths.checkpoints.iterdir() if p.name.startswith(model_type))[-1]
    return checkpoints.load_latest(run_dir, log=lambda message: None)


# --------------------------------------------------------------------------- 1. the GPU path


def check_training(root: Path, device: str, preset: str, steps: int) -> None:
    say("## 1. The GPU path")
    say()
    # auto: the Transformer compiled on CUDA (the RNNs are cuDNN kernels); on a CPU inductor takes minutes: off.
    compile_mode = "auto" if device.startswith("cuda") else "off"
    for model_type in ("lstm", "gru", "transformer"):
        started = time.perf_counter()
        code, output = finish(midikit_train(root, "--model_type", model_type, "--preset", preset, "--device", device,
                                            "--compile", compile_mode, "--max_steps", str(steps), "--eval_every", str(steps // 2),
                                            "--checkpoint_every_steps", str(steps // 2), "--resume", "never"))
        compiled = next((line for line in output.splitlines() if line.startswith("Compiled")), "no compile line")
        say(f"- {model_type} ({preset}, compile {compile_mode}): exit {code} in {time.perf_counter() - started:.0f} s; {compiled}")
        if code != 0:
            say("```\n" + output[-3000:] + "\n```")

    paths = storage.DatasetPaths(root, "synthetic")
    earlier = set(paths.checkpoints.iterdir())
    victim = midikit_train(root, "--model_type", "transformer", "--preset", preset, "--device", device, "--compile", compile_mode,
                           "--max_steps", str(steps * 4), "--eval_every", str(steps), "--checkpoint_every_steps", str(steps // 2),
                           "--resume", "never")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None:
        found = _newest_step(set(paths.checkpoints.iterdir()) - earlier)
        if found and found >= steps:
            break
        time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _newest_step(set(paths.checkpoints.iterdir()) - earlier)
    code, output = finish(midikit_train(root, "--model_type", "transformer", "--preset", preset, "--device", device,
                                        "--compile", compile_mode, "--max_steps", str(steps * 4), "--eval_every", str(steps)))
    resumed = next((line for line in output.splitlines() if line.startswith("Resuming")), "no resume line")
    say(f"- SIGKILL at checkpoint step {killed_at}, resumed: exit {code}; {resumed[:160]}")

    code, output = finish(midikit_train(root, "--model_type", "gru", "--preset", preset, "--device", "cpu", "--max_steps", "10",
                                        "--eval_every", "10", "--resume", "never"))
    cpu_run = sorted(p for p in paths.checkpoints.iterdir() if p.name.startswith("gru"))[-1]
    code, output = finish(midikit_train(root, "--model_type", "gru", "--device", device, "--resume", str(cpu_run),
                                        "--extend", "--max_steps", "30", "--eval_every", "10"))
    say(f"- a CPU-started run (unfused AdamW) resumed on {device} (fused AdamW): exit {code}"
        + ("" if code == 0 else "\n```\n" + output[-3000:] + "\n```"))
    check_generation(root, device)


def _newest_step(run_dirs) -> int | None:
    steps = [checkpoints.step_of(p) for run_dir in run_dirs for p in checkpoints.list_checkpoints(run_dir)
             if checkpoints.verify_checkpoint(p)[0] == "valid"]
    return max(steps, default=None)


def check_generation(root: Path, device: str) -> None:
    for model_type in ("lstm", "gru", "transformer"):
        _, state = newest_state(root, model_type)
        from midikit.configs import ModelConfig

        model = build_model(ModelConfig.from_dict(state["model_config"])).to(device).eval()
        model.load_state_dict(state["model"])
        prime = torch.ones(1, 1, dtype=torch.long, device=device)
        # On a GPU the Transformer's fixed-shape step runs as a CUDA graph: the path Colab users get.
        graph = functools.partial(torch.compile, mode="reduce-overhead") if model_type == "transformer" and device.startswith("cuda") else None
        started = time.perf_counter()
        out = decode(model, prime, 256, lambda logits: next_tokens(logits, SampleConfig(strategy="top_p", p=0.95)),
                     compile_step=graph)
        seconds = time.perf_counter() - started
        say(f"- {model_type} generates{' (CUDA graph step)' if graph else ''}: {out.shape[1] - 1} tokens in {seconds:.2f} s "
            "(compile included)")
    say()


# --------------------------------------------------------------------------- 2. numbers


def matmul_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - started)


def checkpoint_stall(device: torch.device, preset: str) -> None:
    """Step time of the large Transformer with and without a full-state save during the step."""
    mc = get_preset("transformer", preset).model_config("transformer", SYNTHETIC_VOCAB)
    settings = TrainConfig(model_type="transformer", batch_size=get_preset("transformer", preset).batch_size, lr=1e-4,
                           warmup_steps=10, device=str(device), compile="off").validate()
    training = build_training(mc, settings, device, total_steps=100)
    tokens = torch.randint(0, SYNTHETIC_VOCAB, (settings.batch_size, mc.context_length + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def timed_step(save: bool, pool, folder) -> tuple[float, float]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        host = time.perf_counter()
        held = 0.0
        if save:
            state = {"model": training.raw_model.state_dict(), "optimizer": training.optimizer.state_dict()}
            snapshot, copied = pool.take(state)
            held = time.perf_counter() - host
            training.copy_done = copied
            threading.Thread(target=_write_when_copied, args=(snapshot, copied, folder), daemon=True).start()
        train_step(training, inputs, targets, 1.0)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, held

    pool, folder = checkpoints.SnapshotPool(size=2), Path(tempfile.mkdtemp(prefix="stall_"))
    for _ in range(5):
        timed_step(False, pool, folder)
    plain = sorted(timed_step(False, pool, folder)[0] for _ in range(10))[5]
    with_save = [timed_step(True, pool, folder) for _ in range(2)]
    time.sleep(1)
    state_gib = sum(t.numel() * t.element_size() for t in training.raw_model.state_dict().values()) * 3 / 2**30
    worst = max(seconds for seconds, _ in with_save)
    say(f"- checkpoint stall, {preset} Transformer (about {state_gib:.2f} GiB of weights + AdamW moments): step {plain * 1e3:.0f} ms "
        f"without a save, {worst * 1e3:.0f} ms with one (GPU stall {max(0.0, worst - plain) * 1e3:.0f} ms; the host "
        f"held {max(h for _, h in with_save) * 1e3:.0f} ms); overhead at a 10-minute cadence "
        f"{max(0.0, worst - plain) / 600:.4%}")
    shutil.rmtree(folder, ignore_errors=True)


def _write_when_copied(snapshot, copied, folder: Path) -> None:
    if copied is not None:
        copied.synchronize()
    torch.save(snapshot, folder / "state.pt")


def run_benchmarks(device: torch.device, preset: str, quick: bool) -> None:
    say("## 2. Numbers")
    say()
    peak = matmul_peak(device)
    if peak:
        say(f"- measured bf16 matmul peak (8192^3): {peak / 1e12:.0f} TFLOP/s (data sheet, H100/H200 SXM dense bf16: 989)")
    out = Path(tempfile.mkdtemp(prefix="bench_")) / "train.md"
    train_args = ["--device", str(device), "--presets", preset, "--synthetic", "--out", str(out)]
    if quick:
        train_args += ["--steps", "3", "--warmup", "1", "--seed_steps", "2", "--skip_resume"]
    subprocess.run([sys.executable, str(HERE / "train_bench.py"), *train_args], check=False, timeout=200)
    if out.exists():
        say(out.read_text())
    gen_out = out.with_name("generate.md")
    gen_args = ["--device", str(device), "--out", str(gen_out)] + (["--new_tokens", "64", "--batches", "1"] if quick else [])
    subprocess.run([sys.executable, str(HERE / "generate_bench.py"), *gen_args], check=False, timeout=150,
                   env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
    if gen_out.exists():
        say(gen_out.read_text())
    if device.type == "cuda":
        checkpoint_stall(device, preset)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script, measures nothing")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: path, numbers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    preset = "cpu" if args.quick else "large"
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"# Device check {stamp}: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    say()
    say(f"Command: `bash bench/gpu_check.sh` (python bench/gpu_check.py {' '.join(argv or sys.argv[1:])})")
    say()
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    write_synthetic_store(storage.DatasetPaths(root, "synthetic"), synthetic_sequences(SYNTHETIC_VOCAB, 2_000_000), SYNTHETIC_VOCAB)
    started = time.perf_counter()
    if "path" not in args.skip:
        check_training(root, str(device), "small" if not args.quick else "cpu", 20 if args.quick else 100)
    if "numbers" not in args.skip:
        run_benchmarks(device, preset, args.quick)
    say(f"\nTotal {time.perf_counter() - started:.0f} s.")
    text = "\n".join(RESULTS) + "\n"
    result = HERE / "results" / f"gpu_check_{stamp}.md"
    result.write_text(text)
    if os.environ.get("OUT"):
        shutil.copy(result, Path(os.environ["OUT"]) / result.name)
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
