"""Generation speed: tokens/s for new tokens at batch 1 and 8, four ways.

recompute = the original csce585-midi project's loop: re-run the model on the last context_length
            tokens for every token.
cached    = midikit.generate.decode with a Python `pick` per token (its noise drawn per token):
            the KV cache / the RNN's hidden state, one position per token.
step      = decode with a Sampler: the fixed-shape step (cache written in place at a device
            position, sampling and end-of-piece bookkeeping on the device, noise drawn in blocks).
compiled  = the same step under torch.compile: mode="reduce-overhead" (CUDA graphs) on a GPU; on the
            CPU only with --compile (inductor, slow to build).

Every way runs once untimed first (compiling and recording its CUDA graphs there, through a window
slide), then twice timed; the faster of the two is reported. Learned positions re-prime the window
(SLIDE_KEEP of the context) whenever it is full; RoPE rolls its cache and never re-primes: a spec
names its positions (`transformer:large:learned`, `transformer:large:rope`).

Synthetic weights and vocabulary 357 (the original project's REMI), so it needs neither miditok nor
data. The table's rows go to stdout as they are measured, progress to stderr:

    PYTHONPATH=. python bench/generate_bench.py --device cpu --threads 1
    PYTHONPATH=. python bench/generate_bench.py --device cuda        # transformer large (learned, rope) + LSTM large

and the report to bench/results/generate_<device>.md (or --out).
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

VOCAB = 357  # the original project's REMI vocabulary
DEFAULT_MODELS = {"cpu": ["transformer:cpu:learned", "transformer:cpu:rope", "transformer:small:rope", "lstm:small"],
                  "cuda": ["transformer:large:learned", "transformer:large:rope", "lstm:large"]}
KINDS = ("recompute", "cached", "step", "compiled")
TOP_P = SampleConfig(strategy="top_p", p=0.9)  # frozen in use: never modified
ORIGINAL_NUMBERS = ("the original project on one H200, batch 1: transformer large 129 tokens/s (recompute), "
                    "LSTM large 1539 tokens/s (hidden state)")
TARGET = 2000  # tokens/s, transformer large at batch 1 on one H100/H200-class GPU


@torch.inference_mode()
def recompute_decode(model, prime: torch.Tensor, new_tokens: int, pick) -> torch.Tensor:
    """The original project's generation loop: the whole last window through the model for every new token."""
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
    """The faster of two timed runs, after an untimed one that compiles, records CUDA graphs and
    slides the window once (a later run's buffers may sit elsewhere: one re-recording, untimed)."""
    prime = torch.ones(batch, 1, dtype=torch.long, device=device)  # a BOS-like first token

    def run(n) -> float:
        started = time.perf_counter()
        run_decoding(model, prime, n, kind)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if kind == "compiled":
        torch._dynamo.reset()  # each model and batch compiles afresh: no shapes made dynamic by the last one
    run(min(new_tokens, model.config.context_length + 40))
    return batch * new_tokens / min(run(new_tokens), run(new_tokens))


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
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None,
                        help="model_type:preset[:positions], e.g. transformer:large:learned "
                             "transformer:large:rope lstm:large")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new_tokens", type=int, default=1024)
    parser.add_argument("--recompute_tokens", type=int, default=None,
                        help="new tokens timed for the original project's loop (default: "
                             "--new_tokens; it is the slowest)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="on the CPU too: a compiled (inductor) step column")
    parser.add_argument("--no_compile", action="store_true", help="no compiled column, on a GPU too (no C compiler)")
    parser.add_argument("--skip_agreement", action="store_true", help="without the greedy compiled = eager column")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/generate_<device>.md)")
    return parser.parse_args(argv)


def build(spec: str, device: torch.device):
    model_type, preset, *positions = spec.split(":")
    torch.manual_seed(0)
    config = get_preset(model_type, preset).model_config(model_type, VOCAB)
    if positions:
        config = replace(config, positions=positions[0]).validate()
    return model_type, preset, config, build_model(config).to(device).eval()


def measure(spec: str, args, device: torch.device, kinds, agreement_column: bool) -> tuple[str, list[tuple[str, dict]]]:
    """(the model's positions, [(row, speeds) per batch size]) for one model spec."""
    model_type, preset, config, model = build(spec, device)
    transformer = model_type == "transformer"
    agreement = greedy_agreement(model, device) if agreement_column and transformer else "—"
    rows = []
    for batch in args.batches:
        speed = {}
        for kind in kinds:
            if transformer or kind != "compiled":
                tokens = args.recompute_tokens if kind == "recompute" and args.recompute_tokens else args.new_tokens
                speed[kind] = tokens_per_second(model, batch, tokens, kind, device)
                print(f"   {spec} batch {batch} {kind}: {speed[kind]:,.0f} tokens/s", file=sys.stderr, flush=True)
        cells = [f"{speed[kind]:,.0f}" if kind in speed else "—" for kind in kinds]
        rows.append((f"| {model_type} | {preset} | {config.positions if transformer else '—'} "
                     f"| {count_parameters(model) / 1e6:.1f}M | {config.context_length} | {batch} | "
                     + " | ".join(cells)
                     + f" | {speed['step'] / speed['cached']:.2f}x |" + (f" {agreement} |" if agreement_column else ""),
                     speed))
    return config.positions if transformer else "—", rows


def target_note(results: list[tuple[str, str, int, dict]], device: torch.device) -> list[str]:
    """Whether the large Transformer makes TARGET tokens/s at batch 1 (its fastest way), per positions."""
    notes = []
    for spec, positions, batch, speed in results:
        if device.type == "cuda" and spec.startswith("transformer:large") and batch == 1:
            best = max(speed.values())
            verdict = "met" if best >= TARGET else f"**missed** by {1 - best / TARGET:.0%}"
            notes.append(f"Target {TARGET:,} tokens/s, transformer large ({positions}) at batch 1: "
                         f"{best:,.0f} — {verdict}.")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = args.models or DEFAULT_MODELS[device.type]
    compiling = (device.type == "cuda" or args.compile) and not args.no_compile
    kinds = [kind for kind in KINDS if kind != "compiled" or compiling]
    agreement_column = compiling and not args.skip_agreement
    tokens_text = f"{args.new_tokens} new tokens" + (f" ({args.recompute_tokens} for recompute)"
                                                     if args.recompute_tokens else "")
    lines = [
        f"# Generation speed ({device.type})", "",
        f"{tokens_text} from one start token, top_p sampling (p=0.9), synthetic weights, vocabulary {VOCAB}, fp32; "
        "each the faster of two timed runs after an untimed one.",
        f"Machine: {machine(device)}.", f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`", "",
        "| model | preset | positions | parameters | context | batch | " + " | ".join(f"{k} tokens/s" for k in kinds)
        + " | step vs cached |" + (" compiled = eager (greedy) |" if agreement_column else ""),
        "|---" * (7 + len(kinds) + agreement_column) + "|",
    ]
    for line in lines:
        print(line, flush=True)
    measured = []
    for spec in specs:
        positions, rows = measure(spec, args, device, kinds, agreement_column)
        for batch, (row, speed) in zip(args.batches, rows):
            print(row, flush=True)
            lines.append(row)
            measured.append((spec, positions, batch, speed))
    skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
    notes = [f"CUDA graphs were skipped {skips} times (run with TORCH_LOGS=perf_hints to see why)."] if skips else []
    notes += target_note(measured, device) + [f"For reference, {ORIGINAL_NUMBERS}.", ""]
    for line in ["", *notes]:
        print(line, flush=True)
    out = args.out or Path(__file__).parent / "results" / f"generate_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines + ["", *notes]))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
