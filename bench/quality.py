"""Quality benchmark: how good is the music each model makes, and what makes it better?

On full Nottingham (all 1034 files, the original csce585-midi project's transpositions -5,-3,-1,0,1,3,5,
midikit's by-file split), every configuration is trained on the same number of training tokens (the
machine is shared and noisy: tokens are the fair unit, wall-clock is reported beside them), then
judged by `midikit.evaluate` (held-out loss per token and per note; 16 pieces generated until EOS,
capped at 2,048 tokens, against the training data).

Modes (each writes its own section of the results file; the other sections are kept):

  --quick      LSTM, GRU and Transformer at the preset, midikit's recipe and the original project's recipe
               (bench/seed_baseline.py: its models, every overlapping window as an epoch, fp32 Adam
               with its learning rate and weight decay, label-smoothed loss, no clipping, no
               scheduler), all at equal tokens; both recipes scored with plain cross-entropy on
               midikit's validation split. 1M tokens each: 6 minutes on 2 quiet CPU cores, about
               2.4x that on busy ones.
  (default)    the full run: the best configuration found (BEST: the Transformer with rotary
               positions, context 256, on miditok BPE 1000 tokens; change it with --model_type,
               --context, --positions, --bpe N or --bpe 0 for REMI) trained on --tokens (10M, about
               20 minutes), then its report and the same pieces under other sampling settings;
               what the targets are measured on.
  --experiments context,positions,bpe,sampling
               the time-boxed searches: context 100/256/512 at equal tokens, learned vs rotary
               positions, miditok BPE, and sampling settings on the best run.
  --render_from quality_<section>.json
               write a saved result's section of the results file again.

The BPE dataset (<dataset>_bpe<N> beside the REMI one) is preprocessed once with `--bpe_vocab N`:
`tokenizer.train` on the training songs cut at bar lines, then every song re-encoded.

  nice -n 10 python bench/quality.py --quick --threads 1
  nice -n 10 python bench/quality.py --threads 1
  python bench/quality.py --quick --device cuda --preset large --out bench/results/quality_gpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe_torch_machine  # noqa: E402
from seed_baseline import seed_loader, seed_model  # noqa: E402

from midikit import evaluate  # noqa: E402
from midikit.configs import ModelConfig, PreprocessConfig, QualityConfig, TrainConfig  # noqa: E402
from midikit.data import load_dataset, preprocess  # noqa: E402
from midikit.models import count_parameters, resolve_device  # noqa: E402
from midikit.presets import get_preset  # noqa: E402
from midikit.storage import DatasetPaths  # noqa: E402
from midikit.train import train  # noqa: E402

MODEL_TYPES = ("lstm", "gru", "transformer")
SEED_LR = {"lstm": 1e-3, "gru": 1e-3, "transformer": 1e-4}  # the seed's (SEED_BASELINE.md)
SEED_WEIGHT_DECAY = 1e-4
SEED_LABEL_SMOOTHING = 0.1
SEED_POSITIONS_PER_SONG = 48  # the seed Transformer's honest loss: positions recomputed per validation song
EVALUATIONS = 4  # validation evaluations per training run (the best one's weights are reported)
HAS_POSITIONS = "positions" in {f.name for f in fields(ModelConfig)}
# The best configuration found by --experiments (bench/results/quality_cpu.md), used by the full mode.
BEST = dict(model_type="transformer", context=256, positions="rope", bpe=1000)
QUIET = lambda *args, **kwargs: None  # noqa: E731


# --------------------------------------------------------------------------- data


def prepare(args, bpe: int | None = None) -> DatasetPaths:
    """Full Nottingham (or --source corpus: music21's folk tunes) with the seed's transpositions
    (midikit's defaults), built once and reused; with `bpe`, the same songs in miditok BPE tokens
    learned on the training split (`--bpe_vocab` of preprocessing), a dataset of its own (<name>_bpe<N>)."""
    if args.source == "corpus":
        source = dict(source="corpus")
    else:
        given = args.input_dir and Path(args.input_dir).is_dir()
        source = dict(input_dir=args.input_dir) if given else dict(source="nottingham")
    name = SOURCE_DATASETS[args.source] + (f"_bpe{bpe}" if bpe else "")
    result = preprocess(PreprocessConfig(**source, dataset=name, checkpoint_dir=args.checkpoint_dir,
                                         bpe_vocab=bpe or None),
                        progress=False, log=QUIET)
    return result.paths


SOURCE_DATASETS = {"nottingham": "nottingham", "corpus": "folk"}
DATA_WORDS = {"nottingham": "full Nottingham, 1034 files", "corpus": "music21's folk corpus (Ryan's Mammoth "
                                                                     "Collection), 1059 tunes"}


# --------------------------------------------------------------------------- training


def model_config(paths: DatasetPaths, model_type: str, preset: str, context: int,
                 positions: str | None = None) -> ModelConfig:
    config = get_preset(model_type, preset).model_config(model_type, load_dataset(paths).vocab_size,
                                                         context_length=context)
    if positions and HAS_POSITIONS and model_type == "transformer":
        config = replace(config, positions=positions)
    return config.validate()


def batch_for(preset: str, model_type: str, context: int) -> int:
    """The preset's batch at its 100-token windows, scaled so a step holds as many tokens at any context."""
    return max(1, round(get_preset(model_type, preset).batch_size * 100 / context))


def train_midikit(paths: DatasetPaths, mc: ModelConfig, args, tokens: int, **train_values) -> dict:
    """midikit's recipe (AdamW, warm-up + cosine, clipping, random windows) for `tokens` training tokens;
    `train_values`: TrainConfig fields that differ (a variant's lr, batch_size, ...)."""
    batch = train_values.pop("batch_size", None) or batch_for(args.preset, mc.model_type, mc.context_length)
    every = max(1, math.ceil(tokens / (batch * mc.context_length) / EVALUATIONS))
    config = TrainConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=mc.model_type,
                         preset=args.preset,
                         batch_size=batch, max_steps=every * EVALUATIONS, eval_every=every, patience=0,
                         device=args.device, resume="never", progress=False, checkpoint_every_minutes=0, **train_values)
    started = time.perf_counter()
    result = train(config, mc, log=QUIET)
    seconds = time.perf_counter() - started
    return {"run_id": result.run_id, "steps": result.steps, "batch": batch,
            "tokens": result.steps * batch * mc.context_length,
            "train_s": seconds, "best_val_loss": result.best_val_loss}


def train_seed(paths: DatasetPaths, mc: ModelConfig, args, tokens: int) -> tuple[nn.Module, dict]:
    """The seed's recipe on the same data and model sizes: its modules, every overlapping window
    shuffled (one epoch = all of them), fp32 Adam with its lr and weight decay, label smoothing 0.1,
    no clipping, no scheduler."""
    device = resolve_device(args.device)
    dataset = load_dataset(paths)
    batch = batch_for(args.preset, mc.model_type, mc.context_length)
    steps = EVALUATIONS * max(1, math.ceil(tokens / (batch * mc.context_length) / EVALUATIONS))
    torch.manual_seed(42)
    model = seed_model(mc).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=SEED_LR[mc.model_type], weight_decay=SEED_WEIGHT_DECAY)
    criterion = nn.CrossEntropyLoss(label_smoothing=SEED_LABEL_SMOOTHING)
    songs = [dataset.sequence("train", i) for i in range(dataset.num_sequences("train"))]
    loader = seed_loader(songs, mc.context_length, batch, device)
    started, batches = time.perf_counter(), iter(loader)
    model.train()
    for _ in range(steps):
        try:
            inputs, targets = next(batches)
        except StopIteration:  # an epoch (every window) is over: the next, reshuffled
            batches = iter(loader)
            inputs, targets = next(batches)
        optimizer.zero_grad()
        loss = criterion(model(inputs.to(device)).reshape(-1, mc.vocab_size), targets.to(device).reshape(-1))
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    return model, {"steps": steps, "batch": batch, "tokens": steps * batch * mc.context_length, "train_s": seconds}


@torch.no_grad()
def recomputed_losses(model: nn.Module, songs: list[np.ndarray], context: int, per_song: int) -> list[np.ndarray]:
    """The seed Transformer's honest loss: its decoder also attends, unmasked, to its own input as
    "memory", so a window's outputs see the tokens they predict. As the seed generated, each scored
    token is predicted from a fresh window of the `context` tokens before it (its last output only);
    `per_song` positions per song, spread evenly, stand for the song (each song's sum = their mean
    times its tokens)."""
    model.eval()
    device = next(model.parameters()).device
    estimates = []
    for song in songs:
        song = torch.from_numpy(np.asarray(song, dtype=np.int64))
        targets = len(song) - 1
        positions = np.unique(np.linspace(1, targets, min(per_song, targets)).round().astype(int))
        by_length: dict[int, list[int]] = {}
        for t in positions:
            by_length.setdefault(min(int(t), context), []).append(int(t))
        nats = []
        for length, ts in by_length.items():
            windows = torch.stack([song[t - length : t] for t in ts]).to(device)
            logits = model(windows)[:, -1].float()
            nats.append(nn.functional.cross_entropy(logits, song[ts].to(device), reduction="none").cpu().numpy())
        estimates.append(np.full(targets, np.concatenate(nats).mean()))
    return estimates


def seed_heldout(model: nn.Module, paths: DatasetPaths, mc: ModelConfig) -> dict:
    """Plain cross-entropy on midikit's validation split, as for midikit's runs (RNN: the whole song)."""
    from midikit.data import tokens_to_score

    dataset = load_dataset(paths)
    songs = [np.asarray(dataset.sequence("val", i)) for i in range(dataset.num_sequences("val"))]
    notes = [tokens_to_score(dataset.tokenizer, song).note_num() for song in songs]
    if mc.model_type == "transformer":
        honest = evaluate.summarize_losses(recomputed_losses(model, songs, mc.context_length, SEED_POSITIONS_PER_SONG),
                                           notes)
        leaky = evaluate.summarize_losses(evaluate.song_losses(model, songs, mc.context_length), notes)
        return {**honest, "teacher_forced_nats_per_token": leaky["nats_per_token"]}
    return evaluate.summarize_losses(evaluate.song_losses(model, songs, None), notes)


def report(paths: DatasetPaths, run_id: str, args, save: bool = True, **sampling) -> evaluate.QualityReport:
    config = QualityConfig(run=run_id, dataset=paths.dataset, checkpoint_dir=str(paths.root), device=args.device,
                           pieces=args.pieces, max_tokens=args.max_tokens, save=save, **sampling)
    return evaluate.run_report(config, log=QUIET)


def summary(report_: evaluate.QualityReport) -> dict:
    """What the results tables show of a report."""
    return {"heldout": {k: v for k, v in report_.heldout.items() if k != "per_song"}, "comparison": report_.comparison,
            "health": report_.health, "report_s": report_.seconds["total"], "files": report_.files}


# --------------------------------------------------------------------------- the modes


def run_quick(args, paths: DatasetPaths, log) -> dict:
    """midikit vs the seed's recipe for each model type, at equal tokens."""
    rows = []
    for model_type in args.model_types:
        mc = model_config(paths, model_type, args.preset, args.context or 100)
        trained = train_midikit(paths, mc, args, args.tokens)
        result = report(paths, trained["run_id"], args)
        log(f"{model_type} midikit: {result.heldout['nats_per_token']:.4f} nats/token, {trained['train_s']:.0f} s")
        rows.append({"model_type": model_type, "recipe": "midikit", "parameters": _parameters(mc),
                     "context": mc.context_length, **trained, **summary(result)})
        model, seeded = train_seed(paths, mc, args, args.tokens)
        heldout = seed_heldout(model, paths, mc)
        log(f"{model_type} seed: {heldout['nats_per_token']:.4f} nats/token, {seeded['train_s']:.0f} s")
        rows.append({"model_type": model_type, "recipe": "seed", "parameters": count_parameters(model),
                     "context": mc.context_length, **seeded,
                     "heldout": {k: v for k, v in heldout.items() if k != "per_song"}})
    return {"rows": rows}


# Each model type's best recipe at the CPU preset's sizes (variant values: see `variant`), what --goals
# measures against issue #19's goals; the Transformer's is the full mode's default too.
RECIPES = {
    "transformer": dict(model_type="transformer", bpe=1000, context=256, lr=0.002, batch_size=6, tie_embeddings=True,
                        song_clock=True, dropout=0.0),
    "lstm": dict(model_type="lstm", bpe=1000, context=100, hidden_size=256, lr=0.01, song_clock=True),
    "gru": dict(model_type="gru", bpe=1000, context=100, hidden_size=256, lr=0.005, song_clock=True),
}
# nats/note: 10% below the best Transformer before issue #19 (BPE 1000, context 256, 10M tokens)
LOSS_GOAL = 1.496 * 0.9
RNN_SCALE_BAND = 0.05  # the goals' scale-consistency band for the LSTM and the GRU (the report's is 3%)


def run_goals(args, paths: DatasetPaths, log) -> dict:
    """Each model type's recipe (RECIPES) on --tokens tokens, reported at the generation defaults."""
    rows = []
    for model_type in args.model_types:
        values = RECIPES[model_type]
        data_paths, mc, train_values = variant(paths, args, values)
        if model_type in args.runs:  # trained before: report it again (e.g. at other generation defaults)
            trained = trained_run(data_paths, args.runs[model_type])
        else:
            trained = train_midikit(data_paths, mc, args, args.tokens, **train_values)
        result = report(data_paths, trained["run_id"], args)
        log(f"{model_type}: {result.heldout['nats_per_note']:.3f} nats/note, {_health(summary(result))}")
        rows.append({"model_type": model_type, "recipe": _recipe_words(values, mc), "parameters": _parameters(mc),
                     "context": mc.context_length, "bpe": values.get("bpe"), "config": result.config, **trained,
                     "command": shlex.join(["python", "bench/quality.py", "--goals", "--model_types", model_type,
                                            "--tokens", f"{args.tokens:g}", "--threads", "1"]), **summary(result)})
    return {"rows": rows}


def trained_run(paths: DatasetPaths, run_id: str) -> dict:
    """What train_midikit returns, read back from a finished run's run.json."""
    record = json.loads((paths.run_checkpoints(run_id) / "run.json").read_text())
    batch, context = record["train_config"]["batch_size"], record["model_config"]["context_length"]
    return {"run_id": run_id, "steps": record["step"], "batch": batch, "tokens": record["step"] * batch * context,
            "train_s": record["elapsed_seconds"], "best_val_loss": record["best_val_loss"]}


def _recipe_words(values: dict, mc: ModelConfig) -> str:
    tokens = f"BPE {values['bpe']}" if values.get("bpe") else "REMI"
    extras = [name.replace("_", " ") for name in ("song_clock", "tie_embeddings") if getattr(mc, name, False)]
    return ", ".join([tokens, f"context {mc.context_length}", *extras,
                      *([f"{mc.positions} positions"] if mc.model_type == "transformer" else [])])


def run_full(args, paths: DatasetPaths, log) -> dict:
    """The best configuration trained on --tokens tokens, then its report (what the targets are measured on)."""
    data_paths = prepare(args, args.bpe)
    mc = model_config(data_paths, args.model_type, args.preset, args.context or BEST["context"], args.positions)
    trained = train_midikit(data_paths, mc, args, args.tokens)
    result = report(data_paths, trained["run_id"], args)
    table = evaluate.format_table(result)  # the report at the default sampling, the last word on the targets
    log(table)
    sampling = sampling_sweep(data_paths, trained["run_id"], args, log) if args.sweep else []
    return {"sampling": sampling, "rows": [{"model_type": mc.model_type, "recipe": "midikit",
                                            "parameters": _parameters(mc), "context": mc.context_length,
                      "positions": getattr(mc, "positions", "learned"), "bpe": args.bpe, **trained, **summary(result)}],
            "table": table}


# Sampling settings of the sweep (QualityConfig fields; the rest as the report's): top-p with the end
# of the piece cut like any token (the old top-p) or never cut, and temperatures.
SAMPLINGS = "p=0.9; p=0.95; p=0.98; p=1.0; p=0.9, keep_end=false; p=0.95, keep_end=false; p=0.98, keep_end=false; " \
            "p=0.95, temperature=0.9"


def sampling_sweep(paths: DatasetPaths, run_id: str, args, log) -> list[dict]:
    """The same run's report under other sampling settings (generation only changes)."""
    rows = []
    for _, values in args.samplings:
        result = report(paths, run_id, args, save=False, **values)  # the saved report: the default
        rows.append({"run_id": run_id, **{k: result.config[k] for k in ("p", "temperature", "keep_end")},
                     **summary(result)})
        log(f"sampling {values}: target metrics in band {_in_band(rows[-1])}, {_health(rows[-1])}")
    return rows


def run_experiments(args, paths: DatasetPaths, log) -> dict:
    """Context, positions, BPE and sampling, each at equal tokens (sampling: on one run)."""
    rows, sampling = [], []
    todo = set(args.experiments)

    def one(label, data_paths, mc, tokens=args.tokens, bpe=None, **train_values):
        trained = train_midikit(data_paths, mc, args, tokens, **train_values)
        result = report(data_paths, trained["run_id"], args)
        log(f"{label}: {result.heldout['nats_per_token']:.4f} nats/token, {result.heldout['nats_per_note']:.3f} "
            f"nats/note, {_health(summary(result))}, {trained['train_s']:.0f} s")
        rows.append({"experiment": label, "model_type": mc.model_type, "parameters": _parameters(mc), "bpe": bpe,
                     "context": mc.context_length, "positions": getattr(mc, "positions", "learned"), **trained,
                     **summary(result)})
        return trained["run_id"], result

    def best(prefix):
        found = [row for row in rows if row["experiment"].startswith(prefix)]
        return min(found, key=lambda row: row["heldout"]["nats_per_note"]) if found else None

    if "context" in todo:
        for context in args.contexts:
            one(f"context {context}", paths, model_config(paths, "transformer", args.preset, context, args.positions))
    context = best("context")["context"] if best("context") else (args.context or BEST["context"])
    if "positions" in todo and HAS_POSITIONS:
        for at in args.position_contexts or [context]:
            for positions in args.position_kinds:
                one(f"{positions} positions, context {at}", paths,
                    model_config(paths, "transformer", args.preset, at, positions))
    if "bpe" in todo:
        for vocab in args.bpe_vocabs:
            bpe_paths = prepare(args, vocab)
            one(f"BPE {vocab}", bpe_paths, model_config(bpe_paths, "transformer", args.preset, context, args.positions),
                bpe=vocab)
    for label, values in args.variants if "variants" in todo else []:
        data_paths, mc, train_values = variant(paths, args, values)
        one(label, data_paths, mc, int(values.get("tokens", args.tokens)), values.get("bpe", args.bpe), **train_values)
    if "sampling" in todo:
        chosen = {"run_id": args.sweep_run, "bpe": args.bpe} if args.sweep_run else best("")
        if chosen is None:
            one("sampling base", paths, model_config(paths, "transformer", args.preset, context, args.positions))
            chosen = rows[-1]
        data_paths = DatasetPaths(paths.root, f"{paths.dataset}_bpe{chosen['bpe']}") if chosen.get("bpe") else paths
        sampling = sampling_sweep(data_paths, chosen["run_id"], args, log)
    return {"rows": rows, "sampling": sampling}


TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """'name: key=value, key=value; name2: ...' -> [(name, {key: value})] (without 'name:' the entry
    is its own name); values are JSON (1, 0.5,
    true) or plain strings. Keys: bpe, context, model_type, tokens, any ModelConfig or TrainConfig field."""
    found = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, named, rest = part.partition(":")
        rest = rest if named else name  # 'p=0.9' names itself
        values = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, _, value = item.partition("=")
            try:
                values[key.strip()] = json.loads(value)
            except ValueError:
                values[key.strip()] = value.strip()
        found.append((name.strip(), values))
    return found


def variant(paths: DatasetPaths, args, values: dict) -> tuple[DatasetPaths, ModelConfig, dict]:
    """A variant's data, model config and TrainConfig values (the full mode's configuration, changed by `values`)."""
    values = {k: v for k, v in values.items() if k != "tokens"}
    bpe = values.pop("bpe", args.bpe)
    data_paths = prepare(args, bpe)
    model_type = values.pop("model_type", args.model_type)
    context = values.pop("context", args.context or BEST["context"])
    train_values = {k: values.pop(k) for k in list(values) if k in TRAIN_FIELDS}
    mc = replace(model_config(data_paths, model_type, args.preset, context, values.pop("positions", args.positions)),
                 **values)
    return data_paths, mc.validate(), train_values


# --------------------------------------------------------------------------- results


def _parameters(mc: ModelConfig) -> int:
    from midikit.models import build_model

    return count_parameters(build_model(mc))


# The metrics the targets name (num_notes and duration have bands too, but no target).
TARGET_METRICS = ("pitch_class_entropy", "polyphony", "note_density", "pitch_range", "scale_consistency",
                  "empty_beat_rate")


def _in_band(row) -> str:
    """How many of the six target metrics are within their bands, and which are not."""
    rows = [c for c in row["comparison"] if c["metric"] in TARGET_METRICS]
    missed = [c["metric"] for c in rows if not c["ok"]]
    return f"{len(rows) - len(missed)}/{len(rows)}" + (f" (not: {', '.join(missed)})" if missed else "")


SWEEP_METRICS = ("num_notes", "duration", "pitch_class_entropy", "scale_consistency")


def _health(row) -> str:
    return ", ".join(f"{h['check']} {h['shown']}" for h in row["health"])


def _metric_cell(row, metric: str) -> str:
    found = next(c for c in row["comparison"] if c["metric"] == metric)
    shown = f"{found['difference']:+.0%}" if found["relative"] else f"{found['difference'] * 100:+.1f} pt"
    return f"{found['generated']:.3g} ({shown}) {'✓' if found['ok'] else '✗'}"


# rows of the original csce585-midi project's recipe (bench/seed_baseline.py)
RECIPE_LABELS = {"seed": "original project"}


def _loss_columns(row) -> str:
    h = row["heldout"]
    ended = next((c["shown"] for c in row.get("health", []) if c["check"] == "ended with EOS"), "-")
    end = f"{h['end_nats']:.2f}" if h.get("end_nats") is not None else "-"
    return f"{h['nats_per_token']:.4f} | {h['nats_per_note']:.3f} | {h['perplexity']:.3f} | {end} | {ended}"


def render(name: str, result: dict, args, seconds: float, section: str) -> str:
    title = SECTION_TITLES[name] + (f": {section.split(': ', 1)[1]}" if ": " in section else "")
    meta = result.get("meta", {})
    lines = [f"## {title}", "",
             f"- command: `{meta.get('command', args.command)}`",
             f"- machine: {meta.get('machine', machine())}; load average {meta.get('load', os.getloadavg()[0]):.1f} at "
             f"the end; wall-clock {meta.get('seconds', seconds) / 60:.1f} min",
             f"- data: {DATA_WORDS[meta.get('source', 'nottingham')]}, transpositions "
             "-5,-3,-1,0,1,3,5, REMI merged tracks"
             + "".join(sorted({f", then miditok BPE {row['bpe']} (nats/token are per BPE token; compare nats/note)"
                               for row in result["rows"] if row.get("bpe")}))
             + f"; validation: {result.get('val_songs', '52')} songs by file, untransposed", ""]
    rows = result["rows"]
    if name == "goals":
        lines += [*render_goals(result), ""]
    if rows:
        key = "recipe" if name == "quick" else "experiment" if name == "experiments" else "recipe"
        lines += [f"| model | {key} | params | context | batch × steps | tokens | train s | report s | nats/token | "
                  "nats/note | perplexity | EOS nats at a song's end | ended with EOS |", "|---" * 13 + "|"]
        for row in rows:
            label = RECIPE_LABELS.get(row.get(key, row.get("recipe", "")), row.get(key, row.get("recipe", "")))
            lines.append(f"| {row['model_type']} | {label} | {row['parameters'] / 1e6:.2f}M | "
                         f"{row['context']} | {row['batch']} × {row['steps']} | {row['tokens'] / 1e6:.2f}M | "
                         f"{row['train_s']:.0f} | {format(row['report_s'], '.0f') if 'report_s' in row else '-'} | "
                         f"{_loss_columns(row)} |")
        seeded = [row for row in rows if row.get("recipe") == "seed"
                  and "teacher_forced_nats_per_token" in row["heldout"]]
        for row in seeded:
            lines += ["", "The original project's Transformer, scored the way it was trained (teacher forcing, its "
                          "decoder seeing the predicted tokens through its memory): "
                          f"{row['heldout']['teacher_forced_nats_per_token']:.4f} nats/token. Its row above predicts "
                          "each token from the window before it only, as the original project generated "
                          f"({SEED_POSITIONS_PER_SONG} positions per song)."]
        reported = [row for row in rows if "comparison" in row]
        if reported:
            labels = [f"{row['model_type']} {row.get('experiment', '')}".strip() for row in reported]
            lines += ["", "Generated pieces (mean, difference from the data, ✓ within the band) "
                          "against the training data:", "",
                      "| metric | data | band | " + " | ".join(labels) + " |", "|---" * (3 + len(labels)) + "|"]
            for metric in [c["metric"] for c in reported[0]["comparison"]]:
                first = next(c for c in reported[0]["comparison"] if c["metric"] == metric)
                lines.append(f"| {metric} | {first['data']:.3g} | {first['band']} | " +
                             " | ".join(_metric_cell(row, metric) for row in reported) + " |")
            for check in [h["check"] for h in reported[0]["health"]]:
                cells = [next(h for h in row["health"] if h["check"] == check) for row in reported]
                lines.append(f"| {check} | | {cells[0]['target']} | " +
                             " | ".join(f"{c['shown']} {'✓' if c['ok'] else '✗'}" for c in cells) + " |")
    if result.get("sampling"):
        lines += ["", f"Sampling settings on {result['sampling'][0]['run_id']} ({args.pieces} pieces each, at most "
                  f"{args.max_tokens} tokens):", "",
                  "| p | temperature | end of piece | target metrics in band | num_notes | duration | "
                  "pitch_class_entropy | scale_consistency | pieces without notes | token errors | ended with EOS |",
                  "|---" * 11 + "|"]
        for row in result["sampling"]:
            health = {h["check"]: h["shown"] for h in row["health"]}
            lines.append(f"| {row['p']} | {row['temperature']} | "
                         f"{'never cut' if row.get('keep_end') else 'cut by top-p'} | {_in_band(row)} | "
                         + " | ".join(_metric_cell(row, m) for m in SWEEP_METRICS) +
                         f" | {health['pieces without notes']} | {health['token errors']} | "
                         f"{health['ended with EOS']} |")
    if result.get("table"):
        lines += ["", "```", result["table"], "```"]
    return "\n".join(lines) + "\n"


def render_goals(result: dict) -> list[str]:
    """The three model types against issue #19's goals, one row each with the command that made it."""
    lines = ["| model | recipe | nats/note (Transformer: ≤ " + f"{LOSS_GOAL:.3f})" + " | ended with an EOS it sampled "
             "(≥ 15/16) | num_notes (±25%) | duration (±25%) | metrics in their bands | scale consistency (TF ±3%, RNN "
             "±5%) | goals met | command |", "|---" * 10 + "|"]
    for row in result["rows"]:
        metrics = {c["metric"]: c for c in row["comparison"]}
        scale = metrics["scale_consistency"]
        band = 0.03 if row["model_type"] == "transformer" else RNN_SCALE_BAND
        in_band = [c["ok"] if name != "scale_consistency" else abs(c["difference"]) <= band
                   for name, c in metrics.items()]
        ended = next(h for h in row["health"] if h["check"] == "ended with EOS")
        loss = row["heldout"]["nats_per_note"]
        checks = {"EOS": ended["ok"], "notes": metrics["num_notes"]["ok"], "duration": metrics["duration"]["ok"],
                  "bands": all(in_band), "loss": loss <= LOSS_GOAL if row["model_type"] == "transformer" else True}
        missed = [name for name, ok in checks.items() if not ok]
        lines.append(f"| {row['model_type']} | {row['recipe']} | {loss:.3f} | {ended['shown']} | "
                     f"{_metric_cell(row, 'num_notes')} | {_metric_cell(row, 'duration')} | "
                     f"{sum(in_band)}/{len(in_band)} | {scale['generated']:.3f} ({scale['difference']:+.1%}) "
                     f"{'✓' if abs(scale['difference']) <= band else '✗'} | "
                     f"{'all' if not missed else 'missed: ' + ', '.join(missed)} | `{row['command']}` |")
    config = result["rows"][0]["config"] if result["rows"] else {}
    truncates = config.get("strategy") in ("top_p", "top_k")
    cut = "never cut" if config.get("keep_end") else "cut by the truncation"
    end = f", the end of a piece {cut}" if truncates else ""
    lines += ["", f"Generation: {config.get('pieces')} pieces each, {evaluate.describe_sampling(config)}{end}, at most "
              f"{config.get('max_tokens')} tokens, seed {config.get('seed')}: the generation defaults."]
    return lines


SECTION_TITLES = {"quick": "Comparison at equal training tokens (--quick)", "experiments": "Experiments",
                  "goals": "Goals: each model type's best recipe at equal tokens",
                  "full": "Full run: a configuration trained longer, then its report"}


def write_section(path: Path, name: str, text: str) -> None:
    """Replace this mode's section of the results file (between its markers), keeping the others."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = path.read_text() if path.is_file() else "# Quality benchmark\n\n"
    block = f"{begin}\n{text}{end}\n"
    if begin in old:
        new = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def machine() -> str:
    return describe_torch_machine(" (shared)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the comparison: 3 model types x 2 "
                                                             "recipes at equal tokens")
    parser.add_argument("--goals", action="store_true", help="each model type's recipe (RECIPES) "
                                                             "against issue #19's goals")
    parser.add_argument("--runs", type=lambda s: dict(item.split("=", 1) for item in s.split(",") if item), default={},
                        help="--goals: report these finished runs instead of training them "
                             "(lstm=RUN_ID,gru=RUN_ID,...)")
    parser.add_argument("--experiments", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help="comma list of context,positions,bpe,variants,sampling")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--tokens", type=float, default=None,
                        help="training tokens per configuration (default: by mode)")
    parser.add_argument("--model_types", type=lambda s: s.split(","), default=list(MODEL_TYPES))
    parser.add_argument("--model_type", default=BEST["model_type"], help="full mode: the model type")
    parser.add_argument("--context", type=int, default=None, help="context length (quick: 100; full: the best found)")
    parser.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[100, 256, 512])
    parser.add_argument("--positions", default=BEST["positions"], choices=("learned", "rope"))
    parser.add_argument("--position_kinds", type=lambda s: s.split(","), default=["learned", "rope"])
    parser.add_argument("--position_contexts", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="positions experiment: the contexts (default: the best context)")
    parser.add_argument("--bpe", type=int, default=BEST["bpe"], help="full mode: BPE vocabulary size (0: none)")
    parser.add_argument("--bpe_vocabs", type=lambda s: [int(x) for x in s.split(",")], default=[1000])
    parser.add_argument("--variants", type=parse_variants, default=[],
                        help="--experiments variants: 'name: key=value, ...; name2: ...' (keys: bpe, context, "
                        "model_type, tokens, ModelConfig and TrainConfig fields), each trained on "
                        "--tokens and reported")
    parser.add_argument("--no_sweep", dest="sweep", action="store_false", help="full mode: no sampling sweep")
    parser.add_argument("--samplings", type=parse_variants, default=parse_variants(SAMPLINGS),
                        help="the sweep's settings: 'p=0.95, keep_end=false; temperature=0.9; ...' "
                             "(QualityConfig fields)")
    parser.add_argument("--sweep_run", default=None, help="--experiments sampling: sweep this run id "
                                                          "(of --bpe's dataset)")
    parser.add_argument("--pieces", type=int, default=QualityConfig().pieces)
    parser.add_argument("--max_tokens", type=int, default=QualityConfig().max_tokens,
                        help="the report's cap (default: the generation default); its sampling is "
                             "QualityConfig's default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--checkpoint_dir",
                        default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "midikit_quality_bench"))
    parser.add_argument("--source", choices=tuple(SOURCE_DATASETS), default="nottingham",
                        help="the songs: Nottingham (--input_dir, else downloaded) or music21's offline folk corpus")
    parser.add_argument("--input_dir", default=str(HERE.parent.parent / "shared" / "data" / "nottingham"),
                        help="the Nottingham MIDI files (else they are downloaded)")
    parser.add_argument("--render_from", default=None, help="write a saved result's section (quality_*.json) again")
    parser.add_argument("--render_section", default=None, help="with --render_from: the section's name")
    parser.add_argument("--out", default=None, help="results file (default: bench/results/quality_<device>.md)")
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "goals" if args.goals else "experiments" if args.experiments else "full"
    default_tokens = {"quick": 1.0e6, "experiments": 1.0e6, "full": 10.0e6, "goals": 10.0e6}[args.mode]
    args.tokens = int(args.tokens or default_tokens)
    args.out = Path(args.out or HERE / "results" / f"quality_{'cpu' if args.device == 'cpu' else 'gpu'}.md")
    args.command = shlex.join(["python", "bench/quality.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def render_saved(args) -> None:
    """--render_from: write the section of a saved result (quality_<section>.json) into --out again."""
    result = json.loads(Path(args.render_from).read_text())
    meta = result.get("meta", {})
    section = args.render_section or meta.get("section") or meta.get("mode", args.mode)
    write_section(args.out, section, render(meta.get("mode", args.mode), result, args, meta.get("seconds", 0.0),
                                            section))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_from:
        return render_saved(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log = lambda message: print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)  # noqa: E731
    paths = prepare(args)
    log(f"dataset {paths.base}: {load_dataset(paths)}")
    run = {"quick": run_quick, "experiments": run_experiments, "full": run_full, "goals": run_goals}[args.mode]
    result = run(args, paths, log)
    result["val_songs"] = load_dataset(paths).num_sequences("val")
    seconds = time.perf_counter() - started
    result["meta"] = {"command": args.command, "machine": machine(), "load": os.getloadavg()[0], "seconds": seconds,
                      "mode": args.mode, "experiments": args.experiments, "source": args.source}
    section = args.mode if args.mode != "experiments" else "experiments: " + ", ".join(args.experiments)
    if args.mode == "full":
        section = (f"full: {'BPE ' + str(args.bpe) if args.bpe else 'REMI'}, {args.positions} positions, "
                   f"context {args.context or BEST['context']}")
    result["meta"]["section"] = section
    saved = Path(args.checkpoint_dir) / f"quality_{re.sub(r'[^A-Za-z0-9]+', '_', section).strip('_')}.json"
    saved.write_text(json.dumps(result, indent=1, default=str))
    write_section(args.out, section, render(args.mode, result, args, seconds, section))
    log(f"done in {seconds / 60:.1f} min; results in {args.out}")


if __name__ == "__main__":
    main()
