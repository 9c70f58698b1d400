"""Measure what docs/COLAB_TRAINING.md states as numbers, and write them into its generated sections
(between `<!-- BEGIN generated: NAME -->` and `<!-- END generated: NAME -->`; the prose around them
is edited by hand).

* presets: each preset's model per model type, built for real: its parameters; the size on disk of
  a training-state checkpoint (`step_*.pt`, `best.pt`) and of the weights-only `.pth`, measured on
  the files a real one-step `train()` run writes on the CPU; tokens/s from `bench/results/train_*.md`,
  with the machine each was measured on ("not measured" where there is none);
* storage: the Drive budget those files add up to with the defaults (`--keep_last 2`);
* estimates: time per epoch and per run, computed from the benchmark figures (each labelled);
* first_run: how long the notebooks' first run takes on Colab's GPUs, calculated (`midikit.estimates`;
  `--first_run` rewrites only this section, in seconds).

    python scripts/write_training_doc.py [--nottingham ../shared/data/nottingham] [--keep DIR]

Takes 2-4 minutes on 2 CPU cores and about 4 GB of temporary disk (a large Transformer's training
state is 1.2 GB); needs about 4 GB of RAM. Without the Nottingham files the offline corpus is
used (the vocabulary, and so every size, is the same: it comes from the tokenizer's settings).
tests/test_docs.py checks the parameter counts and `.pth` sizes in the doc against models built
on the meta device, so a preset that changes without a new measurement fails there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from machine import cpu_name  # noqa: E402

DOC = REPO / "docs" / "COLAB_TRAINING.md"
RESULTS = REPO / "bench" / "results"
NOTTINGHAM = REPO.parent / "shared" / "data" / "nottingham"
MODEL_TYPES = ("lstm", "gru", "transformer")
PRESETS = ("large", "t4", "small", "cpu")

# The original project's own loop, measured by the original project on one H200 (random tokens, sequence 100, vocabulary
# 357, fp32, the original project's batch sizes). Not midikit's numbers: midikit has no GPU measurement yet.
SEED_H200_TOKENS_PER_S = {"transformer": 49_500, "lstm": 930_000, "gru": 1_150_000}
SEED_H200_SOURCE = "the original project's own training loop on one H200 (its SEED_BASELINE: fp32, batch 512/256)"


# --------------------------------------------------------------------------- measuring


def machine() -> str:
    cpu = cpu_name()
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} CPU cores, no GPU; torch {torch.__version__}, Python {platform.python_version()}"


def parameters_of(model_type: str, preset: str, vocab_size: int, context_length: int) -> int:
    """The preset's model built on the meta device (no memory, no time): its parameter count."""
    import torch

    from midikit.models import build_model, count_parameters
    from midikit.presets import get_preset

    with torch.device("meta"):
        config = get_preset(model_type, preset).model_config(model_type, vocab_size, context_length)
        return count_parameters(build_model(config))


def prepare_dataset(root: Path, nottingham: Path | None) -> dict:
    """The dataset the measurements train on: all of Nottingham with midikit's defaults, or the corpus."""
    from midikit.data import PreprocessConfig, load_dataset, preprocess

    if nottingham is not None and any(nottingham.glob("*.mid")):
        config = PreprocessConfig(input_dir=str(nottingham), dataset="nottingham", checkpoint_dir=str(root))
        source = f"all {len(list(nottingham.glob('*.mid')))} Nottingham files, midikit's default preprocessing"
    else:
        config = PreprocessConfig(source="corpus", dataset="nottingham", checkpoint_dir=str(root), limit=60)
        source = "60 tunes of the offline corpus (Nottingham not found), midikit's default preprocessing"
    result = preprocess(config, progress=False, log=lambda *_: None)
    dataset = load_dataset(result.paths)
    data_bytes = sum(p.stat().st_size for p in result.paths.data.iterdir() if p.is_file())
    return {"paths": result.paths, "vocab_size": dataset.vocab_size, "seq_length": dataset.config["seq_length"],
            "train_tokens": len(dataset.train_tokens), "data_bytes": data_bytes, "source": source,
            "full": config.input_dir is not None}


def measure_run(paths, model_type: str, preset: str) -> dict:
    """One real training step of the preset's model on the CPU, then the sizes of the files it wrote."""
    import torch

    from midikit.train import TrainConfig, train

    torch.manual_seed(0)
    config = TrainConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset=preset,
                         max_steps=1, batch_size=1, eval_windows=1, device="cpu", compile="off", progress=False,
                         resume="never", checkpoint_every_minutes=0)
    started = time.perf_counter()
    result = train(config, log=lambda *_: None)
    run_dir = paths.run_checkpoints(result.run_id)
    weights = result.artifacts["weights"]
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    steps = sorted(run_dir.glob("step_*.pt"))
    best = run_dir / "best.pt"
    assert steps and best.is_file(), sorted(p.name for p in run_dir.iterdir())
    row = {"model_type": model_type, "preset": preset, "parameters": sidecar["metrics"]["parameters"],
           "state_bytes": steps[-1].stat().st_size, "best_bytes": best.stat().st_size,
           "pth_bytes": weights.stat().st_size,
           "other_bytes": sum(p.stat().st_size for p in (run_dir / "run.json", weights.with_suffix(".json"))),
           "model_config": sidecar["model_config"], "train_config": sidecar["train_config"],
           "seconds": time.perf_counter() - started}
    shutil.rmtree(run_dir)  # the next run's files must not crowd the disk
    weights.unlink()
    return row


def bench_tokens_per_second() -> dict:
    """{(model_type, preset): [(tokens/s, label)]} from every bench/results/train_*.md table that has a
    "midikit tokens/s" column; the label names the file, the data and the machine line above the table."""
    found: dict = {}
    for path in sorted(RESULTS.glob("train_*.md")):
        section, machine_line, header = "", "", None
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                section, header = line.lstrip("# ").strip(), None
            elif line.startswith("- machine:"):
                machine_line = line.split(":", 1)[1].strip()
            elif line.startswith("|") and "midikit tokens/s" in line:
                header = [c.strip() for c in line.strip("|").split("|")]
            elif header and line.startswith("|") and not set(line) <= set("|-: "):
                cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                try:
                    value = int(cells["midikit tokens/s"].replace(",", ""))
                except (KeyError, ValueError):
                    continue
                data = section.split(":")[0].strip()  # "Synthetic tokens", "Real data"
                label = f"{data}, {machine_line.split(';')[0]} ([{path.name}](../bench/results/{path.name}))"
                found.setdefault((cells.get("model"), cells.get("preset")), []).append((value, label))
            elif not line.startswith("|"):
                header = None if line.strip() else header
    return found


# --------------------------------------------------------------------------- writing


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def sizes_text(mc: dict) -> str:
    if mc["model_type"] == "transformer":
        return f"d_model {mc['d_model']}, {mc['nhead']} heads, {mc['num_layers']} layers, ff {mc['dim_feedforward']}"
    return (f"embed {mc['embed_size']}, hidden {mc['hidden_size']}, {mc['num_layers']} "
            f"layer{'s' * (mc['num_layers'] > 1)}")


def presets_section(rows: list[dict], data: dict, speeds: dict, where: str) -> str:
    from midikit.presets import get_preset

    notes: dict[str, int] = {}
    lines = [f"Measured by `python scripts/write_training_doc.py` on {where}: each model built by a real one-step "
             f"`train()` run on the CPU with the dataset's vocabulary ({data['vocab_size']} tokens) and context "
             f"({data['seq_length']} tokens); the sizes are of the files that run wrote. A GPU run writes the same "
             "sizes (weights and AdamW moments stay fp32 under bf16 autocast).", "",
             "| model | preset | sizes | batch, lr | parameters | checkpoint (`step_*.pt`, `best.pt`) | "
             "weights `.pth` | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        measured = speeds.get((row["model_type"], row["preset"]), [])
        cells = []
        for value, label in measured:
            number = notes.setdefault(label, len(notes) + 1)
            cells.append(f"{value:,} [{number}]")
        preset = get_preset(row["model_type"], row["preset"])  # the measuring run used batch 1
        lines.append(f"| {row['model_type']} | `{row['preset']}` | {sizes_text(row['model_config'])} | "
                     f"{preset.batch_size}, {preset.lr:g} | {row['parameters'] / 1e6:,.2f}M | {mb(row['state_bytes'])} "
                     f"| {mb(row['pth_bytes'])} | {', '.join(cells) or 'not measured'} |")
    lines.append("")
    for label, number in notes.items():
        lines.append(f"[{number}] {label}  ")
    if notes:
        lines[-1] = lines[-1].rstrip()
    lines += ["", "No GPU figure is in `bench/results/` yet: every tokens/s above is a CPU measurement."]
    return "\n".join(lines)


def storage_section(rows: list[dict], data: dict, where: str) -> str:
    by = {(r["model_type"], r["preset"]): r for r in rows}
    lines = [f"Measured on the files of real runs ({where}). With the defaults (`--keep_last 2`) a run keeps two "
             "`step_*.pt` files and `best.pt`, each a full training state (weights and both AdamW moments: about "
             "three times the weights), plus the best weights in `models/<run_id>.pth`. While a checkpoint is "
             "written the folder briefly holds up to two more states (the new step file, then a new `best.pt` "
             "beside the old one); the oldest step file goes once they are in place.", "",
             "| model (`large`) | one state | `.pth` | kept per run: 3 states + `.pth` | peak while "
             "saving: 5 states + `.pth` |",
             "|---|---|---|---|---|"]
    total_rest, peaks = 0, []
    for model_type in MODEL_TYPES:
        row = by[model_type, "large"]
        rest = 3 * row["state_bytes"] + row["pth_bytes"] + row["other_bytes"]
        peak = 5 * row["state_bytes"] + row["pth_bytes"] + row["other_bytes"]
        total_rest += rest
        peaks.append(peak - rest)
        lines.append(f"| {model_type} | {mb(row['state_bytes'])} | {mb(row['pth_bytes'])} | {mb(rest)} | {mb(peak)} |")
    dataset = "the whole Nottingham dataset" if data["full"] else "the dataset"
    lines += [f"| **the three, one after another** | | | **{mb(total_rest)}** | **{mb(total_rest + max(peaks))}** |",
              "",
              f"Add {mb(data['data_bytes'])} for {dataset}'s tokens (`data/`), and a few hundred kB of logs, plots "
              "and MIDI. The same budget for the smaller presets (three models, kept / peak):"]
    for preset in PRESETS[1:]:
        rest = sum(3 * by[m, preset]["state_bytes"] + by[m, preset]["pth_bytes"] for m in MODEL_TYPES)
        peak = rest + max(2 * by[m, preset]["state_bytes"] for m in MODEL_TYPES)
        lines.append(f"`{preset}` {mb(rest)} / {mb(peak)}{';' if preset != PRESETS[-1] else '.'}")
    lines[-len(PRESETS) + 1:] = [" ".join(lines[-len(PRESETS) + 1:])]
    return "\n".join(lines)


def estimates_section(rows: list[dict], data: dict, speeds: dict) -> str:
    by = {(r["model_type"], r["preset"]): r for r in rows}
    tokens = data["train_tokens"]
    what = "Nottingham" if data["full"] else "this dataset"
    lines = [f"One epoch is one pass over the training tokens: {tokens:,} for {what} with the default "
             "preprocessing (7 transpositions). Time = tokens ÷ tokens/s; a run is 20 epochs (`--epochs`) unless early "
             "stopping ends it sooner. Every figure says where its speed comes from.", "",
             "| model, preset | where the speed comes from | tokens/s | one epoch | 20 epochs |",
             "|---|---|---|---|---|"]

    def duration(seconds: float) -> str:
        if seconds < 60:
            return f"{seconds:.0f} s"
        if seconds < 3600:
            return f"{seconds / 60:,.0f} min"
        return f"{seconds / 3600:,.1f} h"

    for model_type in MODEL_TYPES:
        for value, label in speeds.get((model_type, "cpu"), []):
            if not label.startswith("Real data") and any(other.startswith("Real data")
                                                         for _, other in speeds[model_type, "cpu"]):
                continue  # the real-data figure where there is one
            lines.append(f"| {model_type}, `cpu` | midikit, measured on 2 shared CPU cores: {label} | {value:,} | "
                         f"{duration(tokens / value)} | {duration(20 * tokens / value)} |")
    for model_type in MODEL_TYPES:
        value = SEED_H200_TOKENS_PER_S[model_type]
        lines.append(f"| {model_type}, `large` | **not midikit's**: {SEED_H200_SOURCE} | {value:,} | "
                     f"{duration(tokens / value)} | {duration(20 * tokens / value)} |")
    lines += ["", "midikit has not been measured on a GPU yet, so the `large` rows use the speed of the original "
              "project's loop on an H200: what midikit would take on that GPU if it were no faster than the original "
              "project's loop (its bf16, fused and compiled step is meant to be several times faster: the targets are "
              "in `bench/README.md`). Colab's A100 is slower than an H200, so expect longer there. The `large` presets "
              "are not for a CPU: one step of the `large` Transformer at batch 1 took "
              f"{by['transformer', 'large']['seconds']:.0f} s with set-up and saving, on the machine above."]
    return "\n".join(lines)


# The Colab GPUs a first run is sized for, and the preset midikit picks on each (preset_for_hardware: by memory).
FIRST_RUN_GPUS = (("Tesla T4", "t4"), ("NVIDIA A100-SXM4-40GB", "large"))


def first_run_section(speeds: dict) -> str:
    """How long the notebooks' first GPU run takes, by calculation (midikit.estimates): no measurement."""
    from midikit import estimates
    from midikit.presets import get_preset
    from midikit.widgets.forms import BEST_RECIPE
    from midikit.widgets.train_form import CPU_MAX_STEPS

    vocab, context = BEST_RECIPE["bpe_vocab"], BEST_RECIPE["seq_length"]  # notebook 02's defaults

    lines = [f"An estimate, not a measurement: midikit has not run on a GPU yet. A step costs about 6 FLOPs per "
             f"parameter per token; the FLOP rate comes from models of each family measured on one H200 (the `large` "
             "sizes: a decoder-only Transformer with SDPA, bf16 and torch.compile at 647k tokens/s, the LSTM and GRU "
             "under bf16 autocast at 1.75M and 1.79M tokens/s), scaled by each GPU's dense fp16/bf16 peak "
             f"({', '.join(f'{g} {p:g}' for g, p in estimates.GPU_PEAK_TFLOPS.items() if g in ('T4', 'A100', 'H200'))} "
             f"TFLOPS). Smaller models use less of a GPU, so real runs are slower: `max_minutes` "
             f"({estimates.FIRST_RUN_GUARD_MINUTES:g}) ends the first run in any case, resumable. Dataset: notebook "
             f"02's defaults (BPE vocabulary {vocab}, context {context}).", "",
             "| GPU | model, preset | parameters | tokens per step | estimated tokens/s | first run: steps | about |",
             "|---|---|---|---|---|---|---|"]
    for gpu, preset in FIRST_RUN_GPUS:
        for model_type in MODEL_TYPES:
            parameters = parameters_of(model_type, preset, vocab, context)
            per_step = get_preset(model_type, preset).batch_size * context
            rate = estimates.tokens_per_second(model_type, parameters, gpu)
            steps = estimates.first_run_steps(model_type, parameters, per_step, gpu)
            lines.append(f"| {gpu} | {model_type}, `{preset}` | {parameters / 1e6:.2f}M | {per_step:,} | {rate:,.0f} | "
                         f"{steps:,} | {steps * per_step / rate / 60:.1f} min |")
    cpu = [(model_type, speeds.get((model_type, "cpu"), [(None, "")])[-1]) for model_type in MODEL_TYPES]
    measured = ", ".join(f"{model_type} {value:,} tokens/s" for model_type, (value, _) in cpu if value)
    lines += ["", f"On a CPU the first run is {CPU_MAX_STEPS} steps of the `cpu` preset; measured there "
              f"(one torch thread, 2 shared cores, context 100): {measured} "
              "([train_cpu.md](../bench/results/train_cpu.md))."]
    return "\n".join(lines) + "\n"


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN generated: {name} -->\n).*?(<!-- END generated: {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no generated section {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nottingham", type=Path, default=NOTTINGHAM, help="folder of the Nottingham MIDI files")
    parser.add_argument("--keep", type=Path, default=None, help="keep the measured dataset here instead "
                                                                "of a temporary folder")
    parser.add_argument("--measurements", type=Path, default=None,
                        help="a JSON file: written after measuring, and read instead of measuring when it exists "
                             "(to change the text without measuring again)")
    parser.add_argument("--first_run", action="store_true",
                        help="only the first-run estimates (a calculation: seconds)")
    args = parser.parse_args()
    if args.first_run:
        DOC.write_text(replace_section(DOC.read_text(), "first_run", first_run_section(bench_tokens_per_second())))
        return 0
    if args.measurements and args.measurements.is_file():
        saved = json.loads(args.measurements.read_text())
        return write(saved["rows"], saved["data"], saved["where"])

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    where = f"{machine()}, {datetime.date.today().isoformat()}"
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="midikit_doc_"))
    try:
        data = prepare_dataset(workdir, args.nottingham)
        print(f"dataset: {data['source']}: vocab {data['vocab_size']}, {data['train_tokens']:,} training tokens")
        rows = []
        for preset in PRESETS:
            for model_type in MODEL_TYPES:
                row = measure_run(data["paths"], model_type, preset)
                expected = parameters_of(model_type, preset, data["vocab_size"], data["seq_length"])
                assert row["parameters"] == expected, (row["parameters"], expected)
                print(f"{model_type:<11} {preset:<5} {row['parameters']:>12,} parameters  state "
                      f"{mb(row['state_bytes'])}  .pth {mb(row['pth_bytes'])}  ({row['seconds']:.0f} s)")
                rows.append(row)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    data = {key: value for key, value in data.items() if key != "paths"}
    if args.measurements:
        args.measurements.write_text(json.dumps({"rows": rows, "data": data, "where": where}, indent=1))
    return write(rows, data, where)


def write(rows: list[dict], data: dict, where: str) -> int:
    speeds = bench_tokens_per_second()
    text = DOC.read_text()
    text = replace_section(text, "presets", presets_section(rows, data, speeds, where))
    text = replace_section(text, "storage", storage_section(rows, data, where))
    text = replace_section(text, "estimates", estimates_section(rows, data, speeds))
    text = replace_section(text, "first_run", first_run_section(speeds))
    DOC.write_text(text)
    print(f"wrote the measured sections of {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
