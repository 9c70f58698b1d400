"""Generation speed: tokens/s for 1024 new tokens at batch 1 and 8, cached against recompute.

cached    = midikit.generate.decode: the Transformer's KV cache / the RNN's hidden state, one
            position per token (the Transformer's window slides by re-priming a fresh cache).
recompute = the seed's loop: re-run the model on the last context_length tokens for every token.

Synthetic weights and vocabulary 357 (the seed's REMI), so it needs neither miditok nor data:

    PYTHONPATH=. python bench/generate_bench.py --device cpu
    PYTHONPATH=. python bench/generate_bench.py --device cuda        # transformer large + LSTM large

Prints a Markdown table and writes it to bench/results/generate_<device>.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from midikit.generate import SampleConfig, decode, next_tokens
from midikit.models import build_model, count_parameters
from midikit.presets import get_preset

VOCAB = 357  # the seed's REMI vocabulary
DEFAULT_MODELS = {"cpu": ["transformer:cpu", "transformer:small", "lstm:small"], "cuda": ["transformer:large", "lstm:large"]}
SEED_NUMBERS = "seed on one H200, batch 1: transformer large 129 tokens/s (recompute), LSTM large 1539 tokens/s (hidden state)"


@torch.inference_mode()
def recompute_decode(model, prime: torch.Tensor, new_tokens: int, pick) -> torch.Tensor:
    """The seed's generation loop: the whole last window through the model for every new token."""
    out = prime
    for _ in range(new_tokens):
        logits = model(out[:, -model.config.context_length :])[:, -1]
        out = torch.cat([out, pick(logits)[:, None]], dim=1)
    return out


def tokens_per_second(model, batch: int, new_tokens: int, cached: bool, device: torch.device) -> float:
    sample = SampleConfig(strategy="top_p", p=0.9)
    generator = torch.Generator(device=device).manual_seed(0)
    prime = torch.ones(batch, 1, dtype=torch.long, device=device)  # a BOS-like first token
    loop = decode if cached else recompute_decode

    def run(n):
        loop(model, prime, n, lambda logits: next_tokens(logits, sample, generator))
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(min(new_tokens, model.config.context_length + 8))  # warm-up, through one window slide
    started = time.perf_counter()
    run(new_tokens)
    return batch * new_tokens / (time.perf_counter() - started)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    # Other work on the machine slows CPU numbers down a lot; the load average says how busy it was.
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None, help="model_type:preset, e.g. transformer:large lstm:large")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new_tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/generate_<device>.md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = args.models or DEFAULT_MODELS[device.type]

    rows = ["| model | preset | parameters | context | batch | cached tokens/s | recompute tokens/s | speed-up |", "|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        model_type, preset = spec.split(":")
        torch.manual_seed(0)
        config = get_preset(model_type, preset).model_config(model_type, VOCAB)
        model = build_model(config).to(device).eval()
        for batch in args.batches:
            cached = tokens_per_second(model, batch, args.new_tokens, True, device)
            recompute = tokens_per_second(model, batch, args.new_tokens, False, device)
            rows.append(f"| {model_type} | {preset} | {count_parameters(model) / 1e6:.1f}M | {config.context_length} | {batch} "
                        f"| {cached:,.0f} | {recompute:,.0f} | {cached / recompute:.1f}x |")
            print(rows[-1], flush=True)

    command = "PYTHONPATH=. python " + " ".join(sys.argv)
    report = "\n".join([
        f"# Generation speed ({device.type})", "",
        f"{args.new_tokens} new tokens from one start token, top_p sampling (p=0.9), synthetic weights, vocabulary {VOCAB}, fp32.",
        f"Machine: {machine(device)}.", f"Command: `{command}`", "", *rows, "", f"For reference, {SEED_NUMBERS}.",
        "On a GPU: `PYTHONPATH=. python bench/generate_bench.py --device cuda` (transformer large, LSTM large) "
        "writes generate_cuda.md; target: transformer large >= 2000 tokens/s at batch 1.", "",
    ])
    out = args.out or Path(__file__).parent / "results" / f"generate_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
