"""Training speed of midikit's loop against the seed's plain fp32 loop, per preset and model type.

For each model type and preset it measures
  * midikit: tokens/s and step time of `midikit.train.train_step` (the loop's step: device-resident
    tokens + `sample_windows`, autocast, fused AdamW, compile where `train()` would) and MFU on a GPU;
  * seed: the same sizes in the seed's style (`seed_baseline.py`: its models, including the
    TransformerDecoder-with-memory transformer, a per-sample Dataset/DataLoader over every window,
    fp32 Adam);
  * checkpoints: the full state's size, how long a save holds training up (the CPU snapshot), how long
    the background write takes and its share of a 10-minute interval, and the artifact refresh that
    goes with it on the writer's thread (best weights + sidecar + summary + loss arrays);
  * resume: seconds from calling `train()` on a saved run to the end of its first step (in-process,
    imports excluded; includes loading the checkpoint and, for the transformer on CUDA, compiling).

Usage (CPU, a few minutes):   python bench/train_bench.py --device cpu --presets cpu --out bench/results/train_cpu.md
One GPU (H100/H200, ~5 min):  python bench/train_bench.py --device cuda --presets large --synthetic --out bench/results/train_gpu.md
Real data instead of --synthetic: --dataset NAME --checkpoint_dir ROOT (a preprocessed dataset).
"""

from __future__ import annotations

import argparse
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
from seed_baseline import time_seed_loop  # noqa: E402

from midikit import checkpoints, storage  # noqa: E402
from midikit.artifacts import RunReport, write_run_artifacts, write_weights  # noqa: E402
from midikit.data import load_dataset, sample_windows  # noqa: E402
from midikit.models import MODEL_TYPES, count_parameters, flops_per_token, resolve_device  # noqa: E402
from midikit.presets import get_preset  # noqa: E402
from midikit.train import TrainConfig, build_training, train, train_step  # noqa: E402

SYNTHETIC_VOCAB = 357  # miditok REMI defaults, as in the seed
SYNTHETIC_TOKENS = 4_000_000
CHECKPOINT_INTERVAL_S = 600.0

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


def time_midikit_loop(mc, tokens: np.ndarray, batch_size: int, lr: float, device, warmup: int, steps: int) -> dict:
    """The training loop's step exactly as train() runs it (`build_training` + `train_step`), timed
    after `warmup` steps (compile)."""
    torch.manual_seed(0)
    settings = TrainConfig(model_type=mc.model_type, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                           device=str(device)).validate()
    training = build_training(mc, settings, device, total_steps=warmup + steps)
    train_tokens = torch.from_numpy(tokens.astype(np.int32)).to(device)
    generator = torch.Generator().manual_seed(0)

    losses = []
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            warm_seconds, start = time.perf_counter() - started, time.perf_counter()
        inputs, targets = sample_windows(train_tokens, batch_size, mc.context_length, generator)
        losses.append(train_step(training, inputs, targets, 1.0))
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch_size * mc.context_length / seconds
    peak = peak_flops(device)
    result = {
        "step_s": seconds, "tokens_per_s": tokens_per_s, "warmup_s": warm_seconds,
        "mfu": flops_per_token(mc) * tokens_per_s / peak if peak else None,
        "precision": training.precision, "compiled": training.compiled, "final_loss": float(losses[-1]),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return result, (training, generator)


def time_checkpoint(mc, trained, folder: Path) -> dict:
    """One full-state save as the Recorder makes it: the CPU snapshot (what holds training up), the
    state file, and the artifacts that go with a save (best weights .pth, sidecar, summary, arrays)."""
    training, generator = trained
    state = {
        "model": training.raw_model.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(), "rng": checkpoints.capture_rng_state(generator), "step": 1,
    }
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    snapshot = checkpoints.to_cpu_snapshot(state)
    blocked = time.perf_counter() - start
    info = checkpoints.write_checkpoint(run_dir, snapshot, 1, best=False, keep_last=1)
    write = time.perf_counter() - start - blocked

    paths = storage.DatasetPaths(folder, "bench")
    history = {"train_loss": [1.0] * 1000, "val_loss": [1.0] * 10, "val_step": list(range(100, 1001, 100))}
    metrics = {"best_val_loss": 1.0, "best_step": 1000, "final_train_loss": 1.0, "steps": 1000, "epochs": 1, "total_steps": 1000,
               "tokens_seen": 0, "elapsed_seconds": 1.0, "parameters": count_parameters(training.raw_model)}
    report = RunReport("lstm_20260101_000000", "running", mc.to_dict(), {}, {"name": "bench", "fingerprint": "", "vocab_size": mc.vocab_size},
                       metrics, history, weights_step=1000)
    start = time.perf_counter()
    paths.ensure()
    write_weights(paths, report.run_id, checkpoints.to_cpu_snapshot(training.raw_model.state_dict()))
    write_run_artifacts(paths, report, plot=False)
    artifacts = time.perf_counter() - start
    return {
        "size_mib": info.size_bytes / 2**20, "blocked_s": blocked, "write_s": write, "total_s": blocked + write,
        "artifacts_s": artifacts, "share": blocked / CHECKPOINT_INTERVAL_S,
    }


def time_resume(paths: storage.DatasetPaths, model_type: str, preset: str, mc_overrides: dict, device: str) -> float:
    """Seconds from calling train() on a saved run until its first step is done."""
    config = TrainConfig(
        dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset=preset, device=device,
        max_steps=1, eval_every=1, eval_windows=8, compile="off", progress=False, checkpoint_every_minutes=0, resume="never",
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


def report(rows: list[dict], args, device) -> str:
    lines = [
        f"# Training benchmark ({device.type})", "",
        f"- machine: {machine()}; load average before the run {args.load:.1f}",
        f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- data: {'synthetic tokens, vocab ' + str(SYNTHETIC_VOCAB) if args.synthetic else 'dataset ' + args.dataset}; "
        f"context {args.context}; timed steps: midikit {args.steps} after {args.warmup} warm-up, seed {args.seed_steps} after 2",
        "",
        "| model | preset | params | batch | midikit ms/step | midikit tokens/s | MFU | precision | seed ms/step | seed tokens/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, s = r["midikit"], r.get("seed")
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {m['step_s'] * 1e3:.1f} | {fmt(m['tokens_per_s'])} | "
            f"{fmt(m['mfu'], '.1%')} | {m['precision']}{' +compile' if m['compiled'] else ''} | "
            f"{fmt(s and s['step_s'] * 1e3, '.1f')} | {fmt(s and s['tokens_per_s'])} | {fmt(s and m['tokens_per_s'] / s['tokens_per_s'], '.1f')}x |"
        )
    lines += [
        "", "Checkpoints (full training state) and resume:", "",
        "| model | preset | state MiB | save blocks training s | background write s | artifact refresh s | share of a 10-min interval | resume: call to first step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["checkpoint"]
        lines.append(
            f"| {r['model']} | {r['preset']} | {c['size_mib']:.1f} | {c['blocked_s']:.2f} | {c['write_s']:.2f} | {c['artifacts_s']:.2f} | "
            f"{c['share']:.2%} | {fmt(r.get('resume_s'), '.1f')} |"
        )
    lines += [
        "", "Share = time the CPU snapshot holds training up / 600 s; the state file and the artifacts are written on the",
        "writer's background thread. MFU uses models.flops_per_token and the GPU's dense bf16 peak.", "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--presets", default=None, help="comma-separated (default: cpu on CPU, large on GPU)")
    parser.add_argument("--models", default=",".join(MODEL_TYPES))
    parser.add_argument("--synthetic", action="store_true", help=f"random tokens, vocab {SYNTHETIC_VOCAB} (no dataset needed)")
    parser.add_argument("--dataset", default="nottingham")
    parser.add_argument("--checkpoint_dir", default=None)
    parser.add_argument("--context", type=int, default=100, help="tokens per window (the seed's seq_length)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on CPU, 40 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on CPU, 10 on GPU)")
    parser.add_argument("--seed_steps", type=int, default=None, help="timed seed-style steps (default: 5 on CPU, 10 on GPU)")
    parser.add_argument("--skip_seed", action="store_true")
    parser.add_argument("--skip_resume", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", default=None, help="Markdown file for the results")
    args = parser.parse_args(argv)
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
    if args.synthetic:
        vocab_size = SYNTHETIC_VOCAB
        sequences = synthetic_sequences(vocab_size, SYNTHETIC_TOKENS)
        data_paths = storage.DatasetPaths(work, "synthetic")
        write_synthetic_store(data_paths, sequences, vocab_size)
    else:
        data_paths = storage.DatasetPaths(storage.resolve_root(args.checkpoint_dir), args.dataset)
        dataset = load_dataset(data_paths)
        vocab_size, sequences = dataset.vocab_size, real_sequences(dataset)
        # Resume timing writes runs: do it on a copy of the dataset, never in the user's folder.
        copy = storage.DatasetPaths(work, args.dataset)
        copy.ensure()
        for path in data_paths.data.iterdir():
            (copy.data / path.name).write_bytes(path.read_bytes())
        data_paths = copy
    tokens = np.concatenate(sequences)

    rows = []
    for preset_name in presets:
        for model_type in args.models.split(","):
            preset = get_preset(model_type, preset_name)
            mc = preset.model_config(model_type, vocab_size, context_length=args.context)
            print(f"== {model_type} / {preset_name}: batch {preset.batch_size}, lr {preset.lr}", flush=True)
            midikit, trained = time_midikit_loop(mc, tokens, preset.batch_size, preset.lr, device, args.warmup, args.steps)
            print(f"   midikit: {midikit['step_s'] * 1e3:.1f} ms/step, {midikit['tokens_per_s']:,.0f} tokens/s, MFU {fmt(midikit['mfu'], '.1%')}", flush=True)
            row = {"model": model_type, "preset": preset_name, "params": count_parameters(trained[0].raw_model),
                   "batch": preset.batch_size, "midikit": midikit}
            row["checkpoint"] = time_checkpoint(mc, trained, work / f"ckpt_{model_type}_{preset_name}")
            print(f"   checkpoint: {json.dumps({k: round(v, 3) for k, v in row['checkpoint'].items()})}", flush=True)
            del trained
            free_memory(device)
            if not args.skip_seed:
                row["seed"] = time_seed_loop(mc, sequences, preset.batch_size, preset.lr, device, 2, args.seed_steps)
                print(f"   seed: {row['seed']['step_s'] * 1e3:.1f} ms/step, {row['seed']['tokens_per_s']:,.0f} tokens/s", flush=True)
                free_memory(device)
            if not args.skip_resume:
                overrides = {"context_length": args.context}
                row["resume_s"] = time_resume(data_paths, model_type, preset_name, overrides, str(device))
                print(f"   resume to first step: {row['resume_s']:.1f} s", flush=True)
                free_memory(device)
            rows.append(row)

    text = report(rows, args, device)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
