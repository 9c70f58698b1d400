"""gpu_check's first part: the GPU path through the real CLI (`python -m midikit train`).

Three chains at once (independent runs; on a GPU machine the Transformer's cold compile is what
takes longest, and its CPU cores are many):
  * the Transformer, compiled where `--compile auto` compiles it, killed with SIGKILL once a
    checkpoint has landed, then resumed by the same command to the end;
  * an LSTM trained on the device;
  * a GRU started on the CPU (unfused AdamW) and resumed on the device (fused AdamW: torch must put
    its step counters there).
Then every run's model generates, and the LSTM's and GRU's recurrent core runs a forward and backward
pass on the device under its run's precision: its dtype must be what the run's start line said.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_parts import say
from train_bench import SYNTHETIC_VOCAB, synthetic_sequences, write_synthetic_store

from midikit import checkpoints, storage
from midikit.configs import ModelConfig
from midikit.generate import SampleConfig, Sampler, decode
from midikit.models import build_model
from midikit.rnn_cores import ran_on_cudnn

QUICK = ["--preset", "cpu", "--context_length", "32", "--batch_size", "8", "--embed_size", "16", "--hidden_size", "32",
         "--num_layers", "1", "--d_model", "32", "--nhead", "2", "--dim_feedforward", "64", "--eval_windows", "8"]
FULL = ["--preset", "small", "--eval_windows", "64"]
# steps: (the Transformer's, its checkpoint cadence, the LSTM's, the GRU's on the CPU, the GRU's in all)
QUICK_STEPS, FULL_STEPS = (60, 10, 20, 6, 12), (300, 50, 200, 10, 40)
RUN_TIMEOUT_S = 240  # one CLI run; the part's own limit is what really bounds it
START_LINE = re.compile(r"^(Starting|Resuming) \S+: (\w+), [\d.]+M parameters, (\S+), (.+?)(, compiled)?; batch", re.M)


def midikit_train(root: Path, *args: str) -> subprocess.Popen:
    """One CLI run, its output into a file of its own (a pipe nobody reads while it runs could fill and stall it)."""
    command = [sys.executable, "-m", "midikit", "train", "--dataset", "synthetic", "--checkpoint_dir", str(root),
               "--no_progress", "--checkpoint_every_minutes", "0", *args]
    log = tempfile.NamedTemporaryFile("w+", prefix="cli_", suffix=".log", dir=root, delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    process.log_path = Path(log.name)
    log.close()
    return process


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int | None, str]:
    """(exit code, output); code None when it ran past `timeout` and was killed."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    return code, process.log_path.read_text(errors="replace")


def outcome(code: int | None, seconds: float) -> str:
    return f"**timed out after {seconds:.0f} s**" if code is None else f"exit {code} in {seconds:.0f} s"


def log_tail(output: str, lines: int = 15) -> str:
    return "```\n" + "\n".join(output.strip().splitlines()[-lines:]) + "\n```"


def start_line(output: str) -> str:
    found = START_LINE.search(output)
    return f"{found.group(4)}{found.group(5) or ''}" if found else "no start line"


def run_dirs(root: Path, model_type: str) -> list[Path]:
    folder = storage.DatasetPaths(root, "synthetic").checkpoints
    return sorted(p for p in folder.iterdir() if p.name.startswith(model_type + "_")) if folder.is_dir() else []


def newest_valid_step(run_dir: Path) -> int | None:
    steps = [checkpoints.step_of(p) for p in checkpoints.list_checkpoints(run_dir)
             if checkpoints.verify_checkpoint(p)[0] == "valid"]
    return max(steps, default=None)


# --------------------------------------------------------------------------- the three chains


def transformer_chain(root: Path, device: str, sizes: list, steps: tuple, compile_mode: str) -> tuple[str, ...]:
    """Train, SIGKILL once a checkpoint has landed, resume with the same command."""
    total, every = steps[0], steps[1]
    command = ["--model_type", "transformer", *sizes, "--device", device, "--compile", compile_mode, "--max_steps",
               str(total), "--checkpoint_every_steps", str(every), "--eval_every", str(total // 3)]
    started = time.monotonic()
    victim = midikit_train(root, *command, "--resume", "never")
    killed_at = None
    while victim.poll() is None and time.monotonic() - started < RUN_TIMEOUT_S:
        dirs = run_dirs(root, "transformer")
        killed_at = newest_valid_step(dirs[-1]) if dirs else None
        if killed_at is not None:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    code, output = finish(victim, timeout=30)
    if killed_at is not None:  # the newest checkpoint now: one may have landed between the look and the kill
        killed_at = newest_valid_step(run_dirs(root, "transformer")[-1])
    if killed_at is None or code != -signal.SIGKILL:
        return (f"- transformer: not killed after a checkpoint (checkpoint step {killed_at}, "
                f"{outcome(code, time.monotonic() - started)}); nothing to resume:", log_tail(output))
    first = f"killed with SIGKILL after its step-{killed_at} checkpoint, {time.monotonic() - started:.0f} s in"
    resumed_at = time.monotonic()
    code, output = finish(midikit_train(root, *command))
    resumed = re.search(r"^Resuming .*step (\d+) of (\d+)", output, re.M)
    expected = device.startswith("cuda") and compile_mode == "auto"  # auto compiles the Transformer on CUDA only
    compiled = next((line for line in output.splitlines() if line.startswith("Compiled")),
                    "**no 'Compiled' line**" if expected else "Not compiled here.")
    lines = [f"- transformer ({start_line(output)}): {first}; the same command resumed it "
             f"{'at step ' + resumed.group(1) if resumed else '(**no Resuming line**)'} and ran to step {total}: "
             f"{outcome(code, time.monotonic() - resumed_at)}. {compiled}"]
    return tuple(lines + ([] if code == 0 and resumed else [log_tail(output)]))


def lstm_chain(root: Path, device: str, sizes: list, steps: tuple, compile_mode: str) -> tuple[str, ...]:
    started = time.monotonic()
    code, output = finish(midikit_train(root, "--model_type", "lstm", *sizes, "--device", device, "--max_steps",
                                        str(steps[2]), "--eval_every", str(steps[2] // 2), "--resume", "never"))
    line = f"- lstm ({start_line(output)}): {steps[2]} steps on {device}, {outcome(code, time.monotonic() - started)}"
    return (line,) if code == 0 else (line, log_tail(output))


def gru_chain(root: Path, device: str, sizes: list, steps: tuple, compile_mode: str) -> tuple[str, ...]:
    started = time.monotonic()
    code, output = finish(midikit_train(root, "--model_type", "gru", *sizes, "--device", "cpu", "--max_steps",
                                        str(steps[3]), "--eval_every", str(steps[3]), "--resume", "never"))
    dirs = run_dirs(root, "gru")
    if code != 0 or not dirs:
        return (f"- gru on the CPU, to be resumed on {device}: {outcome(code, time.monotonic() - started)}",
                log_tail(output))
    code, output = finish(midikit_train(root, "--model_type", "gru", "--device", device, "--resume", str(dirs[-1]),
                                        "--extend", "--max_steps", str(steps[4]), "--eval_every", str(steps[4] // 2)))
    line = (f"- gru ({start_line(output)}): started on the CPU (unfused AdamW), resumed on {device} (fused AdamW) "
            f"to step {steps[4]}: {outcome(code, time.monotonic() - started)}")
    return (line,) if code == 0 else (line, log_tail(output))


# --------------------------------------------------------------------------- after training


def load_newest(root: Path, model_type: str, device: torch.device):
    dirs = run_dirs(root, model_type)
    if not dirs:
        return None, None
    _, state = checkpoints.load_latest(dirs[-1], log=lambda message: None)
    model = build_model(ModelConfig.from_dict(state["model_config"])).to(device)
    model.load_state_dict(state["model"])
    return model, state


def check_generation(root: Path, device: torch.device, tokens: int) -> None:
    for model_type in ("transformer", "lstm", "gru"):
        model, _ = load_newest(root, model_type, device)
        if model is None:
            say(f"- {model_type} generates: no run to load")
            continue
        prime = torch.ones(1, 1, dtype=torch.long, device=device)
        sampler = Sampler(SampleConfig(strategy="top_p", p=0.95), torch.Generator(device=device).manual_seed(0))
        started = time.perf_counter()
        out = decode(model.eval(), prime, tokens, sampler)
        say(f"- {model_type} generates: {out.shape[1] - 1} tokens in {time.perf_counter() - started:.2f} s (eager)")


def check_rnn_core(root: Path, device: torch.device, reported: dict) -> None:
    """The recurrent core's dtype in a real forward and backward on the device, under the run's
    precision, against what the run's start line said; whether cuDNN ran it, and with flat weights."""
    for model_type in ("lstm", "gru"):
        model, state = load_newest(root, model_type, device)
        found = re.match(r"(\w+)(?:, recurrent core (\w+))?", reported.get(model_type, ""))
        if model is None or found is None:
            say(f"- {model_type}'s recurrent core: no run or start line to check")
            continue
        precision, said = found.group(1), found.group(2)
        seen = {}
        model.rnn.register_forward_hook(
            lambda module, inputs, output: seen.update(dtype=output[0].dtype, cudnn=ran_on_cudnn(output[0])))
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        tokens = torch.randint(4, SYNTHETIC_VOCAB, (4, 33), device=device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model.train()(tokens[:, :-1])
            F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[seen["dtype"]]
        compacted = any("contiguous chunk of memory" in str(w.message) for w in caught)
        verdict = "as its start line says" if dtype == said else f"**NOT as its start line says ({said})**"
        say(f"- {model_type}'s recurrent core on {device} under {precision}: {dtype}, {verdict} (cuDNN ran it: "
            f"{'yes' if seen['cudnn'] else 'no'}; weights compacted on every call: {'**yes**' if compacted else 'no'})")


def run(args) -> None:
    device = torch.device(args.device)
    root = Path(args.scratch) / "path"
    write_synthetic_store(storage.DatasetPaths(root, "synthetic"),
                          synthetic_sequences(SYNTHETIC_VOCAB, 200_000 if args.quick else 2_000_000), SYNTHETIC_VOCAB)
    sizes, steps = (QUICK, QUICK_STEPS) if args.quick else (FULL, FULL_STEPS)
    compile_mode = "off" if args.no_compile else "auto"  # auto: the Transformer on CUDA (the RNNs are cuDNN kernels)
    say(f"Synthetic tokens; {'tiny models' if args.quick else 'the small preset'}; "
        f"`--compile {compile_mode}`; the three chains run at once.")
    reported = {}
    with ThreadPoolExecutor(3) as pool:
        chains = [pool.submit(chain, root, args.device, sizes, steps, compile_mode)
                  for chain in (transformer_chain, lstm_chain, gru_chain)]
        for done in as_completed(chains):
            for line in done.result():
                say(line)
                found = re.match(r"- (lstm|gru) \((.*?)\):", line)
                if found:
                    reported[found.group(1)] = found.group(2)
    check_generation(root, device, 64 if args.quick else 256)
    check_rnn_core(root, device, reported)
