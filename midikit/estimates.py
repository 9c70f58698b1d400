"""How fast a GPU will train a model before midikit has measured it there: estimates, said as such.

A training step costs about 6 FLOPs per parameter per token (forward 2, backward 4). The reference
throughputs below were measured on one H200 (`../shared/SEED_BASELINE.md`: a decoder-only Transformer
of the `large` size with SDPA, bf16 and torch.compile, and the `large` LSTM and GRU under bf16
autocast); they give the FLOP rate a model family reaches there, which is scaled to another GPU by
the ratio of its dense fp16/bf16 tensor peak. Small models reach a smaller share of a GPU's peak than
large ones, so these figures are upper bounds; the notebooks cap a first run's time as well
(`FIRST_RUN_GUARD_MINUTES`).
"""

from __future__ import annotations

FIRST_RUN_MINUTES = 5.0  # what the notebooks' first run on a GPU is sized to take
FIRST_RUN_GUARD_MINUTES = 10.0  # its time budget (max_minutes), in case the estimate is too kind

# Measured on one H200 (tokens/s, parameters): the FLOP rate each model family reached there.
_REFERENCE = {"transformer": (647_000, 101.8e6), "lstm": (1_750_000, 30.48e6), "gru": (1_790_000, 23.00e6)}
REFERENCE_PEAK_TFLOPS = 989.0  # H200, dense bf16
# Dense fp16/bf16 tensor-core peaks (vendor datasheets), by a word of the device's name.
GPU_PEAK_TFLOPS = {"T4": 65.0, "L4": 121.0, "V100": 125.0, "A10": 125.0, "A100": 312.0, "L40": 181.0, "H100": 989.0,
                   "H200": 989.0, "B200": 2250.0}


def gpu_peak_tflops(device_name: str) -> float | None:
    """The dense fp16/bf16 peak of a GPU from its name ("Tesla T4", "NVIDIA A100-SXM4-40GB"), or None."""
    words = device_name.upper().replace("-", " ").split()
    return next((peak for gpu, peak in GPU_PEAK_TFLOPS.items() if gpu in words), None)


def tokens_per_second(model_type: str, parameters: int, device_name: str) -> float | None:
    """Estimated training tokens/s of a model on the named GPU; a GPU of unknown peak is taken for the
    slowest one listed (a T4), so a first run there is short rather than long. None without a GPU."""
    peak = gpu_peak_tflops(device_name) or (min(GPU_PEAK_TFLOPS.values()) if device_name else None)
    if peak is None or parameters <= 0:
        return None
    reference_tokens, reference_parameters = _REFERENCE[model_type]
    flops_per_second = 6 * reference_parameters * reference_tokens * peak / REFERENCE_PEAK_TFLOPS
    return flops_per_second / (6 * parameters)


def first_run_steps(model_type: str, parameters: int, tokens_per_step: int, device_name: str,
                    minutes: float = FIRST_RUN_MINUTES) -> int | None:
    """Steps that fill about `minutes` on the named GPU (a multiple of 50, at least 100), or None."""
    rate = tokens_per_second(model_type, parameters, device_name)
    if rate is None:
        return None
    steps = minutes * 60 * rate / tokens_per_step
    return max(100, int(round(steps / 50)) * 50)
