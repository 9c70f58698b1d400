"""`python -m midikit generate`: sample MIDI files from a trained run (the seed's flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluate import midi_metrics
from ..generate import STRATEGIES, SampleConfig, generate, load_run
from ..models import MODEL_TYPES
from ..storage import DatasetPaths, resolve_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SampleConfig()
    parser.add_argument("--model", default="latest", help="'latest' (newest finished run), or a .pth, its .json sidecar, or a training-state .pt (default: latest)")
    parser.add_argument("--model_type", choices=MODEL_TYPES, default=None, help="with --model latest: newest run of this type")
    parser.add_argument("--dataset", default="nottingham", help="dataset name under the checkpoint folder (default: nottingham)")
    parser.add_argument("--checkpoint_dir", default=None, help="root folder (default: $MIDIKIT_ROOT, Drive in Colab, else ./midikit_data)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy, help=f"default: {defaults.strategy}")
    parser.add_argument("--k", type=int, default=defaults.k, help=f"top_k: tokens to keep (default: {defaults.k})")
    parser.add_argument("--p", type=float, default=defaults.p, help=f"top_p: probability mass to keep, in (0, 1] (default: {defaults.p})")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help=f"> 0; below 1 is safer, above 1 wilder (default: {defaults.temperature})")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--num_tokens", type=int, default=defaults.num_tokens, help=f"tokens to generate (default: {defaults.num_tokens})")
    length.add_argument("--bars", type=int, default=None, help="generate this many bars instead of --num_tokens")
    parser.add_argument("--num_samples", type=int, default=defaults.num_samples, help="variations, generated in one batch (default: 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for the same music again (default: random)")
    parser.add_argument("--seed_midi", type=Path, default=None, help="a MIDI file to continue")


def run(args: argparse.Namespace) -> int:
    sample = SampleConfig(
        strategy=args.strategy, k=args.k, p=args.p, temperature=args.temperature, num_tokens=args.num_tokens,
        bars=args.bars, num_samples=args.num_samples, seed=args.seed,
    ).validate()  # before loading anything, so a bad flag fails fast
    paths = DatasetPaths(resolve_root(args.checkpoint_dir, create=False), args.dataset)
    loaded = load_run(args.model, paths, model_type=args.model_type, device=args.device)
    print(f"run {loaded.run_id} ({loaded.model_config.model_type}) on {loaded.device}")
    result = generate(loaded, sample, seed_midi=args.seed_midi)
    for path, score, invalid, new in zip(result.midi_paths, result.scores, result.invalid_token_share, result.new_tokens):
        metrics = midi_metrics(score)
        print(f"{path}: {new} new tokens, {metrics['num_notes']} notes, {metrics['duration']:.1f} s, "
              f"{invalid:.1%} invalid tokens")
    print(f"{sum(result.new_tokens)} tokens in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s), seed {result.seed}")
    return 0
