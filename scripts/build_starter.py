"""Rebuild the starter model shipped in midikit/starter/ (what `generate --run starter` plays).

The best CPU recipe (bench/results/quality_cpu.md) trained on music21's offline folk corpus,
Ryan's Mammoth Collection, whose tunes (1883) are in the public domain and whose ABC encodings
music21 distributes with its corpus: weights trained on it may ship (the GPL Nottingham set may not).
Every step is midikit's own: `preprocess` (BPE learned on the training split), `train`, the
quality report; then the package files are written:

    midikit/starter/models/<run_id>.pth   the best weights (fp16 storage when --fp16), loaded with weights_only=True
    midikit/starter/models/<run_id>.json  the run's sidecar (model config, training config, dataset)
    midikit/starter/data/                 tokenizer, special ids, and a small token store: the validation
                                          songs and 64 training songs, untransposed (for `evaluate`)
    midikit/starter/quality.json           the report: held-out loss, 16 pieces against the data, EOS rate
    midikit/starter/README.md             what it is, its licence, its numbers and this command

    nice -n 10 python scripts/build_starter.py --threads 1     # about 20 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from midikit import evaluate
from midikit.configs import PreprocessConfig, QualityConfig, TrainConfig
from midikit.data import load_dataset, preprocess
from midikit.data.store import write_store
from midikit.presets import get_preset
from midikit.starter import DATASET, starter_dir
from midikit.storage import DatasetPaths
from midikit.train import train

# The best CPU recipe (bench/results/quality_cpu.md, bench/quality.py's RECIPES): the CPU preset's
# Transformer on BPE tokens with a song clock and tied embeddings, lr 0.002 on batches of 6 windows.
# Dropout stays at the preset's 0.2: this corpus is a fifth of Nottingham's size, so its budget is
# several passes (the benchmark's 10M tokens were less than one pass, where dropout 0 won).
RECIPE = dict(model_type="transformer", bpe_vocab=1000, context_length=256, song_clock=True, tie_embeddings=True,
              lr=0.002, batch_size=6)
TRAIN_PIECES = 64  # training songs shipped for `evaluate`'s comparison
MAX_BYTES = 5 * 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=6e6,
                        help="training tokens (default: 6M, about 2.5 passes over the corpus)")
    parser.add_argument("--run", default=None,
                        help="a finished run of --work's folk dataset: report and export it again, without training "
                             "(e.g. after the generation defaults changed)")
    parser.add_argument("--work", default="/tmp/midikit_starter", help="folder for the dataset and the run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (one is fastest on 2 busy cores)")
    parser.add_argument("--fp16", action="store_true", help="store the weights as fp16 (half the size)")
    parser.add_argument("--out", default=str(starter_dir()),
                        help="the package folder to write (default: midikit/starter)")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.run:  # the command that trained it is the one without --run (what the README says rebuilds it)
        at = next(i for i, word in enumerate(given) if word.startswith("--run"))
        given = given[:at] + given[at + (1 if "=" in given[at] else 2):]
    args.command = shlex.join(["python", "scripts/build_starter.py", *given])
    return args


def train_starter(args, paths: DatasetPaths) -> str:
    """The recipe trained on --tokens tokens with midikit's loop; the run id."""
    vocab = load_dataset(paths).vocab_size
    preset = get_preset(RECIPE["model_type"], "cpu")
    model_config = replace(preset.model_config(RECIPE["model_type"], vocab, context_length=RECIPE["context_length"]),
                           song_clock=RECIPE["song_clock"], tie_embeddings=RECIPE["tie_embeddings"])
    batch = RECIPE["batch_size"]
    steps = math.ceil(args.tokens / (batch * model_config.context_length))
    config = TrainConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=RECIPE["model_type"],
                         preset="cpu", batch_size=batch, lr=RECIPE["lr"], max_steps=steps,
                         eval_every=max(1, steps // 16), patience=0,
                         device=args.device, resume="never", progress=False, checkpoint_every_minutes=10)
    return train(config, model_config).run_id


def small_store(paths: DatasetPaths, out: Path) -> dict:
    """out/data: the tokenizer and special ids of the dataset, its validation songs and TRAIN_PIECES
    untransposed training songs (every 7th training song is a file's untransposed copy)."""
    dataset = load_dataset(paths)
    transpositions = len(dataset.config["augmentation"]["transpositions"])
    zero = dataset.config["augmentation"]["transpositions"].index(0)
    untransposed = list(range(zero, dataset.num_sequences("train"), transpositions))
    chosen = [untransposed[int(i)] for i in np.linspace(0, len(untransposed) - 1, TRAIN_PIECES).round()]
    splits = {"train": [np.asarray(dataset.sequence("train", i)) for i in chosen],
              "val": [np.asarray(dataset.sequence("val", i)) for i in range(dataset.num_sequences("val"))]}
    config = dict(dataset.config, name=DATASET)
    config["splits"] = {split: {"files": len(songs), "sequences": len(songs), "tokens": int(sum(map(len, songs)))}
                        for split, songs in splits.items()}
    config["shipped"] = (f"{TRAIN_PIECES} of the {dataset.num_sequences('train')} training sequences (untransposed "
                         "copies) and every validation song; the model was trained on the whole training split")
    target = DatasetPaths(out.parent, out.name)
    write_store(target, splits, (paths.data / "tokenizer.json").read_text(), config)
    return config


def export(args, paths: DatasetPaths, run_id: str, report: evaluate.QualityReport) -> Path:
    """Write the package folder: weights, sidecar, small store, report, README."""
    out = Path(args.out)
    for folder in ("models", "data"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    weights = torch.load(paths.best_weights(run_id), map_location="cpu", weights_only=True)
    if args.fp16:
        weights = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    target = out / "models" / f"{run_id}.pth"
    torch.save(weights, target)
    if target.stat().st_size > MAX_BYTES:
        raise SystemExit(f"The weights take {target.stat().st_size / 2**20:.1f} MB, more than 5 MB: use "
                         "--fp16 or a smaller model.")
    sidecar = json.loads(paths.weights_sidecar(run_id).read_text())
    sidecar["dataset"] = dict(sidecar["dataset"], name=DATASET)
    sidecar["starter"] = {"command": args.command, "weights_dtype": "float16" if args.fp16 else "float32",
                          "source": "music21 corpus: ryansMammoth (Ryan's Mammoth Collection, 1883)"}
    (out / "models" / f"{run_id}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    small_store(paths, out)
    (out / "quality.json").write_text(json.dumps(evaluate._finite(report.to_dict()), indent=1, allow_nan=False) + "\n")
    (out / "README.md").write_text(readme(args, sidecar, report, target))
    return target


def readme(args, sidecar: dict, report: evaluate.QualityReport, weights: Path) -> str:
    """What the starter model is, where it comes from, its licence, its numbers, how it was rebuilt."""
    import music21

    h = report.heldout
    ended = sum(piece["ended"] for piece in report.pieces)
    mc = sidecar["model_config"]
    return f"""# The starter model

Music to play before training a model of your own: `python -m midikit generate --run starter`, or
notebook 07. A {mc['model_type']} of {report_parameters(sidecar)} parameters (the CPU preset's sizes,
{mc['positions']} positions, context {mc['context_length']}, song clock {'on' if mc.get('song_clock') else 'off'}, \
{'tied' if mc.get('tie_embeddings') else 'separate'} embeddings) on miditok BPE
tokens ({mc['vocab_size']}-token vocabulary), trained with midikit's CPU recipe
(`bench/results/quality_cpu.md`) on {sidecar['metrics'].get('steps')} steps.

## Corpus and licence

Trained on music21's offline folk corpus (`--source corpus`): Ryan's Mammoth Collection, 1,059
fiddle tunes published in Boston in 1883 (in the public domain),
in ABC encodings contributed to music21 by Ray Davies and distributed with music21
{music21.__version__} under its corpus terms (`music21/corpus/license.txt`: the encodings are
distributed with the encoders' permission; this folder has no licence file of its own restricting
it). music21's code is BSD-3-Clause. No Nottingham data (GPL) went into these weights. midikit's
own licence (MIT) covers the files here.

## Files

| file | what |
|---|---|
| `models/{weights.name}` | the best weights ({sidecar['starter']['weights_dtype']} storage, \
{weights.stat().st_size / 2**20:.2f} MB), a plain state_dict: `torch.load(..., weights_only=True)` |
| `models/{weights.with_suffix('.json').name}` | its sidecar: model config, training config, dataset |
| `data/` | the tokenizer, special token ids and a small token store: the validation tunes and {TRAIN_PIECES} \
training tunes, untransposed, for `evaluate` |
| `quality.json` | the quality report below, in full |

## Quality (`midikit.evaluate`, as `python -m midikit evaluate` prints it)

Held-out loss on {h['songs']} validation tunes: {h['nats_per_token']:.4f} nats/token, \
{h['nats_per_note']:.3f} nats/note.
{len(report.pieces)} pieces generated with the default sampling: **{ended}/{len(report.pieces)} ended with an EOS the
model sampled itself**.

```
{evaluate.format_table(report)}
```

## Rebuilt with

```bash
{args.command}{reexported(args, sidecar)}
```
"""


def reexported(args, sidecar: dict) -> str:
    """The line that made the report again, when it was not made by the training command."""
    if not args.run:
        return ""
    return ("\n# then, the report at the generation defaults of the time:\n"
            f"python scripts/build_starter.py --run {args.run}")


def report_parameters(sidecar: dict) -> str:
    from midikit.configs import ModelConfig
    from midikit.models import build_model, count_parameters

    return f"{count_parameters(build_model(ModelConfig.from_dict(sidecar['model_config']))) / 1e6:.2f}M"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = preprocess(PreprocessConfig(source="corpus", dataset=f"folk_bpe{RECIPE['bpe_vocab']}",
                                         checkpoint_dir=args.work, bpe_vocab=RECIPE["bpe_vocab"]), progress=False)
    run_id = args.run or train_starter(args, result.paths)
    report = evaluate.run_report(QualityConfig(run=run_id, dataset=result.paths.dataset, checkpoint_dir=args.work,
                                              device=args.device, seed=0))
    print(evaluate.format_table(report))
    weights = export(args, result.paths, run_id, report)
    print(f"starter model written to {weights.parent.parent} ({weights.stat().st_size / 2**20:.2f} MB of weights) "
          f"in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
