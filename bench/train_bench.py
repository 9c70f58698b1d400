"""Training speed of midikit's loop against the original csce585-midi project's plain fp32 loop,
per preset and model type.

For each model type and preset it measures
  * midikit: tokens/s and step time of `midikit.train.train_step` (the loop's step: device-resident
    tokens + `sample_windows`, autocast, fused AdamW, compile where `train()` would) and MFU on a GPU;
  * original: the same sizes in the original project's style (`seed_baseline.py`: its models,
    including the TransformerDecoder-with-memory transformer, a per-sample Dataset/DataLoader over
    every window, fp32 Adam);
  * checkpoints: the full state's size, how long a save holds training up (measured as training
    takes one: `save_stall.py`, the pools filled when the run starts, the first save and warm ones),
    how long the background write takes, and the artifact refresh that goes with it on the writer's
    thread (best weights + sidecar + summary + loss arrays);
  * resume: seconds from calling `train()` on a saved run to the end of its first step (in-process,
    imports excluded; includes loading the checkpoint and, for the transformer on CUDA, compiling).

Results go to stdout as they are measured (the table's header first, then one row per model), the
progress to stderr; --out writes the whole report.

Usage (CPU, a few minutes):   python bench/train_bench.py --device cpu --presets cpu --out bench/results/train_cpu.md
One GPU (H100/H200, ~3 min):  python bench/train_bench.py --device cuda --presets large --synthetic \
                                  --out bench/results/train_gpu.md
Real data instead of --synthetic: --dataset NAME --checkpoint_dir ROOT (a preprocessed dataset).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_torch_machine  # noqa: E402
from save_stall import measure_save_stall  # noqa: E402
from seed_baseline import time_seed_loop  # noqa: E402

from midikit import checkpoints, snapshots, storage  # noqa: E402
from midikit.artifacts import RunReport, write_run_artifacts, write_weights  # noqa: E402
from midikit.data import load_dataset, sample_windows  # noqa: E402
from midikit.models import MODEL_TYPES, count_parameters, flops_per_token, resolve_device  # noqa: E402
from midikit.presets import get_preset  # noqa: E402
from midikit.train import TrainConfig, build_training, train, train_step  # noqa: E402
from midikit.train.setup import capture_rng_state, describe_precision  # noqa: E402

SYNTHETIC_VOCAB = 357  # miditok REMI defaults, as in the original project
SYNTHETIC_TOKENS = 4_000_000
CHECKPOINT_INTERVAL_S = 600.0
# tokens/s on one H100/H200-class GPU (the issues' targets), by (model type, preset)
TARGETS = {("transformer", "large"): 740e3, ("lstm", "large"): 2.0e6, ("gru", "large"): 2.0e6}

say = functools.partial(print, flush=True)  # results, as they come
note = functools.partial(print, file=sys.stderr, flush=True)  # progress

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU; matched against the device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "T4": 65e12, "V100": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------- data


def synthetic_sequences(vocab_size: int, n_tokens: int, seed: int = 0) -> list[np.ndarray]:
    """Random 'songs' of 200-600 tokens (BOS=1 ... EOS=2), like a tokenized folk-tune corpus."""
    rng = np.random.default_rng(seed)
    sequences, total = [], 0
    while total < n_tokens:
        body = rng.integers(4, vocab_size, int(rng.integers(200, 600)), dtype=np.uint16)
        sequences.append(np.concatenate([[1], body, [2]]).astype(np.uint16))
        total += len(sequences[-1])
    return sequences


def write_synthetic_store(paths: storage.DatasetPaths, sequences: list[np.ndarray], vocab_size: int) -> None:
    """A token store in the contract's format (docs/architecture.md), so `train()` can run on it."""
    from midikit.data.store import STORE_FORMAT, STORE_VERSION, write_store

    splits = {"train": sequences[:-20], "val": sequences[-20:]}
    config = {
        "format": STORE_FORMAT, "version": STORE_VERSION, "name": paths.dataset, "vocab_size": vocab_size,
        "fingerprint": f"synthetic-{vocab_size}-{sum(map(len, sequences))}", "bos_id": 1, "eos_id": 2, "pad_id": 0,
        "seq_length": 100, "split": {"val_split": 0.05},
        "splits": {k: {"sequences": len(v), "tokens": int(sum(map(len, v)))} for k, v in splits.items()},
        "command": "synthetic tokens written by bench/train_bench.py",
    }
    paths.ensure()
    write_store(paths, splits, "{}", config)


def real_sequences(dataset) -> list[np.ndarray]:
    return [dataset.sequence("train", i) for i in range(dataset.num_sequences("train"))]


# --------------------------------------------------------------------------- measurements


def time_midikit_loop(mc, tokens: np.ndarray, batch_size: int, lr: float, device, warmup: int, steps: int,
                      compile_mode: str = "auto") -> dict:
    """The training loop's step exactly as train() runs it (`build_training` + `train_step`), timed
    after `warmup` steps (compile)."""
    torch.manual_seed(0)
    settings = TrainConfig(model_type=mc.model_type, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                           device=str(device), compile=compile_mode).validate()
    training = build_training(mc, settings, device, total_steps=warmup + steps)
    train_tokens = torch.from_numpy(tokens.astype(np.int32)).to(device)
    generator = torch.Generator().manual_seed(0)

    losses = []
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            warm_seconds, start = time.perf_counter() - started, time.perf_counter()
        inputs, targets, _ = sample_windows(train_tokens, batch_size, mc.context_length, generator)
        losses.append(train_step(training, inputs, targets, 1.0))
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch_size * mc.context_length / seconds
    peak = peak_flops(device)
    result = {
        "step_s": seconds, "tokens_per_s": tokens_per_s, "warmup_s": warm_seconds,
        "mfu": flops_per_token(mc) * tokens_per_s / peak if peak else None,
        "precision": describe_precision(training), "compiled": training.compiled, "final_loss": float(losses[-1]),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    # inputs, targets (no song clock)
    batch = sample_windows(train_tokens, batch_size, mc.context_length, generator)[:2]
    return result, (training, generator, batch)


def time_checkpoint(mc, trained, folder: Path) -> dict:
    """A save as the recorder takes one (`save_stall.py`: what it adds to the training step, first
    and warm), then the state file and the artifacts that go with a save (best weights .pth,
    sidecar, summary, arrays) as the writer's thread writes them."""
    training, generator, batch = trained
    stall = measure_save_stall(training, batch)
    state = {
        "model": training.raw_model.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(), "rng": capture_rng_state(generator), "step": 1,
    }
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    snapshot = snapshots.to_cpu_snapshot(state)
    start = time.perf_counter()
    info = checkpoints.write_checkpoint(run_dir, snapshot, 1, best=False, keep_last=1)
    write = time.perf_counter() - start

    paths = storage.DatasetPaths(folder, "bench")
    history = {"train_loss": [1.0] * 1000, "val_loss": [1.0] * 10, "val_step": list(range(100, 1001, 100))}
    metrics = {"best_val_loss": 1.0, "best_step": 1000, "final_train_loss": 1.0, "steps": 1000, "epochs": 1,
               "total_steps": 1000, "tokens_seen": 0, "elapsed_seconds": 1.0,
               "parameters": count_parameters(training.raw_model)}
    dataset = {"name": "bench", "fingerprint": "", "vocab_size": mc.vocab_size}
    report = RunReport("lstm_20260101_000000", "running", mc.to_dict(), {}, dataset, metrics, history,
                       weights_step=1000)
    start = time.perf_counter()
    paths.ensure()
    write_weights(paths, report.run_id, snapshots.to_cpu_snapshot(training.raw_model.state_dict()))
    write_run_artifacts(paths, report, plot=False)
    artifacts = time.perf_counter() - start
    return {
        "size_mib": info.size_bytes / 2**20, "blocked_s": stall["warm_s"], "worst_s": stall["worst_warm_s"],
        "first_s": stall["first_s"],
        "unprepared_s": stall["unprepared_s"], "while_written_s": stall["while_written_s"], "write_s": write,
        "artifacts_s": artifacts, "share": stall["warm_s"] / CHECKPOINT_INTERVAL_S,
    }


def time_resume(paths: storage.DatasetPaths, model_type: str, preset: str, mc_overrides: dict, device: str) -> float:
    """Seconds from calling train() on a saved run until its first step is done."""
    config = TrainConfig(
        dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset=preset, device=device,
        max_steps=1, eval_every=1, eval_windows=8, compile="off", progress=False, checkpoint_every_minutes=0,
        resume="never",
    )
    first = train(config, log=lambda message: None, model_overrides=mc_overrides)
    run_dir = first.artifacts["checkpoints"]
    done = {}
    start = time.perf_counter()
    train(replace(config, max_steps=2, compile="auto", resume=str(run_dir), extend=True), log=lambda message: None,
          on_eval=lambda history: done.setdefault("first_step", time.perf_counter() - start))
    return done["first_step"]


# --------------------------------------------------------------------------- report


def machine() -> str:
    return describe_torch_machine()


def fmt(value, spec=",.0f", none="n/a") -> str:
    return none if value is None else format(value, spec)


def target_cell(row: dict, device) -> str:
    target = TARGETS.get((row["model"], row["preset"])) if device.type == "cuda" else None
    if target is None:
        return "—"
    speed = row["midikit"]["tokens_per_s"]
    return f"{target / 1e3:,.0f}k: " + ("met" if speed >= target else f"**missed** by {1 - speed / target:.0%}")


def header_lines(args, device) -> list[str]:
    return [
        f"# Training benchmark ({device.type})", "",
        f"- machine: {machine()}; load average before the run {args.load:.1f}",
        f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "- data: "
        f"{'synthetic tokens, vocab ' + str(SYNTHETIC_VOCAB) if args.synthetic else 'dataset ' + args.dataset}; "
        f"context {args.context}; timed steps: midikit {args.steps} after {args.warmup} warm-up, the original "
        f"project's loop {args.seed_steps} after 2",
        "",
        "| model | preset | params | batch | midikit ms/step | midikit tokens/s | MFU | precision | original ms/step "
        "| original tokens/s | speed-up | target tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def row_line(r: dict, device) -> str:
    m, s = r["midikit"], r.get("seed")
    return (f"| {r['model']} | {r['preset']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {m['step_s'] * 1e3:.1f} | "
            f"{fmt(m['tokens_per_s'])} | {fmt(m['mfu'], '.1%')} | "
            f"{m['precision']}{' +compile' if m['compiled'] else ''} | {fmt(s and s['step_s'] * 1e3, '.1f')} | "
            f"{fmt(s and s['tokens_per_s'])} | {fmt(s and m['tokens_per_s'] / s['tokens_per_s'], '.1f')}x | "
            f"{target_cell(r, device)} |")


def checkpoint_lines(rows: list[dict]) -> list[str]:
    lines = [
        "", "Checkpoints (full training state) and resume:", "",
        "| model | preset | state MiB | a save holds training s (warm: median, worst) | first save s "
        "| first save, no pool filled s | steps while written +s | background write s | artifact refresh s "
        "| share of a 10-min interval | resume: call to first step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["checkpoint"]
        lines.append(
            f"| {r['model']} | {r['preset']} | {c['size_mib']:.1f} | {c['blocked_s']:.3f}, {c['worst_s']:.3f} | "
            f"{c['first_s']:.3f} | "
            f"{c['unprepared_s']:.3f} | {c['while_written_s']:.3f} | {c['write_s']:.2f} | {c['artifacts_s']:.2f} | "
            f"{c['share']:.3%} | {fmt(r.get('resume_s'), '.1f')} |")
    lines += [
        "", "A save's hold: how much longer the step that takes it runs than a plain step (the "
            "pool's buffers made on its",
        "own thread when the run starts; \"no pool filled\": allocated on the training thread, as before). Share = the",
        "warm hold / 600 s; the state file and the artifacts are written on the writer's background thread.",
    ]
    return lines


def report(rows: list[dict], args, device) -> str:
    lines = header_lines(args, device) + [row_line(r, device) for r in rows]
    if any("checkpoint" in r for r in rows):
        lines += checkpoint_lines([r for r in rows if "checkpoint" in r])
    lines += ["", "MFU uses models.flops_per_token and the GPU's dense bf16 peak.", ""]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--presets", default=None, help="comma-separated (default: cpu on CPU, large on GPU)")
    parser.add_argument("--models", default=",".join(MODEL_TYPES))
    parser.add_argument("--synthetic", action="store_true",
                        help=f"random tokens, vocab {SYNTHETIC_VOCAB} (no dataset needed)")
    parser.add_argument("--synthetic_tokens", type=int, default=SYNTHETIC_TOKENS)
    parser.add_argument("--dataset", default="nottingham")
    parser.add_argument("--checkpoint_dir", default=None)
    parser.add_argument("--context", type=int, default=100,
                        help="tokens per window (the original project's seq_length)")
    parser.add_argument("--batch_size", type=int, default=None, help="instead of the preset's (a quick rehearsal)")
    parser.add_argument("--compile", choices=("auto", "off"), default="auto",
                        help="off: nothing compiled (no C compiler)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on CPU, 40 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on CPU, 10 on GPU)")
    parser.add_argument("--seed_steps", type=int, default=None,
                        help="timed steps of the original project's loop (default: 5 on CPU, 10 on GPU)")
    parser.add_argument("--skip_seed", action="store_true", help="without the original project's loop")
    parser.add_argument("--skip_checkpoint", action="store_true")
    parser.add_argument("--skip_resume", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", default=None, help="Markdown file for the results")
    return parser.parse_args(argv)


def load_tokens(args, work: Path):
    """(vocab size, sequences, the dataset's paths in `work`) from synthetic tokens or a copy of a dataset."""
    if args.synthetic:
        sequences = synthetic_sequences(SYNTHETIC_VOCAB, args.synthetic_tokens)
        data_paths = storage.DatasetPaths(work, "synthetic")
        write_synthetic_store(data_paths, sequences, SYNTHETIC_VOCAB)
        return SYNTHETIC_VOCAB, sequences, data_paths
    data_paths = storage.DatasetPaths(storage.resolve_root(args.checkpoint_dir), args.dataset)
    dataset = load_dataset(data_paths)
    # Resume timing writes runs: do it on a copy of the dataset, never in the user's folder.
    copy = storage.DatasetPaths(work, args.dataset)
    copy.ensure()
    for path in data_paths.data.iterdir():
        (copy.data / path.name).write_bytes(path.read_bytes())
    return dataset.vocab_size, real_sequences(dataset), copy


def measure(model_type: str, preset_name: str, args, device, vocab_size, sequences, tokens, data_paths, work) -> dict:
    """One row: midikit's loop, then (unless skipped) checkpoints, the original project's loop and resume."""
    preset = get_preset(model_type, preset_name)
    mc = preset.model_config(model_type, vocab_size, context_length=args.context)
    batch = args.batch_size or preset.batch_size
    note(f"== {model_type} / {preset_name}: batch {batch}, lr {preset.lr}")
    midikit, trained = time_midikit_loop(mc, tokens, batch, preset.lr, device, args.warmup, args.steps, args.compile)
    note(f"   midikit: {midikit['step_s'] * 1e3:.1f} ms/step, {midikit['tokens_per_s']:,.0f} tokens/s, "
         f"MFU {fmt(midikit['mfu'], '.1%')}")
    row = {"model": model_type, "preset": preset_name, "params": count_parameters(trained[0].raw_model), "batch": batch,
           "midikit": midikit}
    if not args.skip_checkpoint:
        row["checkpoint"] = time_checkpoint(mc, trained, work / f"ckpt_{model_type}_{preset_name}")
        note(f"   checkpoint: {json.dumps({k: round(v, 3) for k, v in row['checkpoint'].items()})}")
    del trained
    free_memory(device)
    if not args.skip_seed:
        row["seed"] = time_seed_loop(mc, sequences, batch, preset.lr, device, 2, args.seed_steps)
        note(f"   original: {row['seed']['step_s'] * 1e3:.1f} ms/step, {row['seed']['tokens_per_s']:,.0f} tokens/s")
        free_memory(device)
    if not args.skip_resume:
        row["resume_s"] = time_resume(data_paths, model_type, preset_name, {"context_length": args.context},
                                      str(device))
        note(f"   resume to first step: {row['resume_s']:.1f} s")
        free_memory(device)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.load = os.getloadavg()[0]
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.steps = args.steps or (40 if gpu else 10)
    args.warmup = args.warmup or (10 if gpu else 2)
    args.seed_steps = args.seed_steps or (10 if gpu else 5)
    presets = (args.presets or ("large" if gpu else "cpu")).split(",")

    work = Path(tempfile.mkdtemp(prefix="midikit_train_bench_"))
    vocab_size, sequences, data_paths = load_tokens(args, work)
    tokens = np.concatenate(sequences)
    for line in header_lines(args, device):
        say(line)
    rows = []
    for preset_name in presets:
        for model_type in args.models.split(","):
            rows.append(measure(model_type, preset_name, args, device, vocab_size, sequences, tokens, data_paths, work))
            say(row_line(rows[-1], device))
    if any("checkpoint" in r for r in rows):
        for line in checkpoint_lines(rows):
            say(line)
    if args.out:
        Path(args.out).write_text(report(rows, args, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
