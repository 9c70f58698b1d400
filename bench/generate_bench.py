"""Generation speed: tokens/s for 1024 new tokens at batch 1 and 8, four ways.

recompute = the seed's loop: re-run the model on the last context_length tokens for every token.
cached    = midikit.generate.decode with a Python `pick` per token (its noise drawn per token):
            the KV cache / the RNN's hidden state, one position per token.
step      = decode with a Sampler: the fixed-shape step (cache written in place at a device
            position, sampling and end-of-piece bookkeeping on the device, noise drawn in blocks).
compiled  = the same step under torch.compile: mode="reduce-overhead" (CUDA graphs) on a GPU; on the
            CPU only with --compile (inductor, slow to build).

Learned positions re-prime the window (SLIDE_KEEP of the context) whenever it is full; RoPE
(`transformer:cpu:rope`) rolls its cache and never re-primes.

Synthetic weights and vocabulary 357 (the seed's REMI), so it needs neither miditok nor data:

    PYTHONPATH=. python bench/generate_bench.py --device cpu --threads 1
    PYTHONPATH=. python bench/generate_bench.py --device cuda        # transformer large (learned, rope) + LSTM large

Prints a Markdown table and writes it to bench/results/generate_<device>.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from midikit.generate import SampleConfig, Sampler, decode, next_tokens
from midikit.models import build_model, count_parameters
from midikit.presets import get_preset

VOCAB = 357  # the seed's REMI vocabulary
DEFAULT_MODELS = {"cpu": ["transformer:cpu", "transformer:cpu:rope", "transformer:small", "lstm:small"],
                  "cuda": ["transformer:large", "transformer:large:rope", "lstm:large"]}
KINDS = ("recompute", "cached", "step", "compiled")
TOP_P = SampleConfig(strategy="top_p", p=0.9)  # frozen in use: never modified
SEED_NUMBERS = "seed on one H200, batch 1: transformer large 129 tokens/s (recompute), LSTM large 1539 tokens/s (hidden state)"


@torch.inference_mode()
def recompute_decode(model, prime: torch.Tensor, new_tokens: int, pick) -> torch.Tensor:
    """The seed's generation loop: the whole last window through the model for every new token."""
    out = prime
    for _ in range(new_tokens):
        logits = model(out[:, -model.config.context_length :])[:, -1]
        out = torch.cat([out, pick(logits)[:, None]], dim=1)
    return out


def compile_step_for(device: torch.device):
    if device.type == "cuda":
        return functools.partial(torch.compile, mode="reduce-overhead", fullgraph=True)  # CUDA graphs
    return functools.partial(torch.compile, fullgraph=True)


def run_decoding(model, prime: torch.Tensor, new_tokens: int, kind: str, sample: SampleConfig = TOP_P) -> torch.Tensor:
    generator = torch.Generator(device=prime.device).manual_seed(0)
    if kind == "recompute":
        return recompute_decode(model, prime, new_tokens, lambda logits: next_tokens(logits, sample, generator))
    if kind == "cached":
        return decode(model, prime, new_tokens, lambda logits: next_tokens(logits, sample, generator))
    compile_step = compile_step_for(prime.device) if kind == "compiled" else None
    return decode(model, prime, new_tokens, Sampler(sample, generator), compile_step=compile_step)


def tokens_per_second(model, batch: int, new_tokens: int, kind: str, device: torch.device) -> float:
    prime = torch.ones(batch, 1, dtype=torch.long, device=device)  # a BOS-like first token

    def run(n):
        run_decoding(model, prime, n, kind)
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch._dynamo.reset()  # each model and batch compiles afresh: no shapes made dynamic by the last one
    run(min(new_tokens, model.config.context_length + 40))  # warm-up (and compile), through window slides
    started = time.perf_counter()
    run(new_tokens)
    return batch * new_tokens / (time.perf_counter() - started)


def greedy_agreement(model, device: torch.device, new_tokens: int = 256) -> str:
    """How many greedy tokens the compiled step gives as the eager one (rounding may differ on a GPU)."""
    prime = torch.ones(1, 1, dtype=torch.long, device=device)
    greedy = SampleConfig(strategy="greedy")
    torch._dynamo.reset()
    eager = run_decoding(model, prime, new_tokens, "step", sample=greedy)[0, 1:].tolist()
    compiled = run_decoding(model, prime, new_tokens, "compiled", sample=greedy)[0, 1:].tolist()
    same = next((i for i, (a, b) in enumerate(zip(eager, compiled)) if a != b), len(eager))
    return f"{same}/{len(eager)}"


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
    parser.add_argument("--compile", action="store_true", help="on the CPU too: a compiled (inductor) step column")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/generate_<device>.md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = args.models or DEFAULT_MODELS[device.type]

    compiling = device.type == "cuda" or args.compile
    kinds = [kind for kind in KINDS if kind != "compiled" or compiling]
    rows = ["| model | preset | positions | parameters | context | batch | " + " | ".join(f"{k} tokens/s" for k in kinds)
            + " | step vs cached |" + (" compiled = eager (greedy) |" if compiling else ""),
            "|---" * (7 + len(kinds) + compiling) + "|"]
    for spec in specs:
        model_type, preset, *positions = spec.split(":")
        torch.manual_seed(0)
        config = get_preset(model_type, preset).model_config(model_type, VOCAB)
        if positions:
            config = replace(config, positions=positions[0]).validate()
        model = build_model(config).to(device).eval()
        transformer = model_type == "transformer"
        agreement = greedy_agreement(model, device) if compiling and transformer else "—"
        for batch in args.batches:
            speed = {kind: tokens_per_second(model, batch, args.new_tokens, kind, device)
                     for kind in kinds if transformer or kind != "compiled"}
            cells = [f"{speed[kind]:,.0f}" if kind in speed else "—" for kind in kinds]
            rows.append(f"| {model_type} | {preset} | {config.positions if transformer else '—'} "
                        f"| {count_parameters(model) / 1e6:.1f}M | {config.context_length} | {batch} | " + " | ".join(cells)
                        + f" | {speed['step'] / speed['cached']:.2f}x |" + (f" {agreement} |" if compiling else ""))
            print(rows[-1], flush=True)

    skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
    notes = [f"CUDA graphs were skipped {skips} times (run with TORCH_LOGS=perf_hints to see why)."] if skips else []
    command = "PYTHONPATH=. python " + " ".join(sys.argv)
    report = "\n".join([
        f"# Generation speed ({device.type})", "",
        f"{args.new_tokens} new tokens from one start token, top_p sampling (p=0.9), synthetic weights, vocabulary {VOCAB}, fp32.",
        f"Machine: {machine(device)}.", f"Command: `{command}`", "", *rows, "", *notes, f"For reference, {SEED_NUMBERS}.",
        "On a GPU: `PYTHONPATH=. python bench/generate_bench.py --device cuda` (transformer large learned and rope, LSTM large) "
        "writes generate_cuda.md; target: transformer large >= 2000 tokens/s at batch 1.", "",
    ])
    out = args.out or Path(__file__).parent / "results" / f"generate_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
