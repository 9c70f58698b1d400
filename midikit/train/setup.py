"""Everything a training step needs, built once for a model config, a run's settings and a device:
`build_training` gives the model (compiled where it pays), AdamW, the warm-up + cosine schedule,
the fp16 grad scaler and the autocast context. `train()` and `bench/train_bench.py` both use it,
so the benchmark times exactly what training runs."""

from __future__ import annotations

import functools
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import ModelConfig, TrainConfig
from ..errors import ConfigError
from ..models import build_model


@dataclass
class Training:
    """The live objects of one run on one device."""

    raw_model: torch.nn.Module  # the plain module: its state_dict is what checkpoints hold
    # (inputs, targets, song positions or None) -> mean cross-entropy: forward and loss, compiled together where it pays
    loss_of: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: object  # a context manager
    device: torch.device
    precision: str  # "bf16" | "fp16" | "fp32": what "auto" became
    compiled: bool
    core_precision: str | None = None  # an RNN's recurrent core, as it runs (None: a Transformer)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    bf16_ok = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8  # Ampere+
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if bf16_ok else torch.float16  # a T4 (sm_75) only has fast fp16
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU.")
    if precision == "bf16" and device.type == "cuda" and not bf16_ok:
        raise ConfigError("This GPU has no fast bf16 (it needs an Ampere or newer GPU); use --precision fp16.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (e.g. the optimizer) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest RNN kernels


def resolve_compile(mode: str, model_type: str, device: torch.device) -> bool:
    """auto: compile the transformer on CUDA (the RNNs already run as fused cuDNN kernels)."""
    return mode == "on" or (mode == "auto" and model_type == "transformer" and device.type == "cuda")


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay_from: tuple[int, float] | None = None) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate over `total_steps`.

    A run extended to a new horizon (`decay_from`: the step it was extended at and the factor it had
    there) goes on from that factor: over the warm-up's length it moves in a straight line to where a
    run planned with the new horizon would be, then follows that run's cosine. The curve never jumps,
    and a finished run (at a tenth) learns again rather than crawling on at its last rate."""
    if decay_from is None and step < warmup_steps:
        return (step + 1) / warmup_steps
    planned = lambda at: 0.1 + 0.9 * 0.5 * (1.0 + math.cos(  # noqa: E731
        math.pi * min(1.0, max(0, at - warmup_steps) / max(1, total_steps - warmup_steps))))
    if decay_from is not None:
        start, start_factor = decay_from
        ramp = max(1, warmup_steps)
        if step < start + ramp:
            return start_factor + (planned(start + ramp) - start_factor) * max(0, step - start) / ramp
    return planned(step)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, decay_from: tuple[int, float] | None = None):
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda step: lr_factor(step, warmup_steps, total_steps, decay_from))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW decaying matrices and embeddings only (not biases or norms); fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a run draws from; returns the CPU generator of the data order (any device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def capture_rng_state(sampler_generator: torch.Generator | None) -> dict:
    """Every RNG a training step draws from, as tensors and plain Python only."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "sampler": sampler_generator.get_state() if sampler_generator is not None else None,
    }


def restore_rng_state(rng: dict, sampler_generator: torch.Generator | None) -> None:
    """Put back what `capture_rng_state` took, so the next random draws are bit-identical."""
    # Loading with map_location="cuda" would move these too; the setters want CPU byte tensors.
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") and torch.cuda.is_available():
        states = [state.cpu() for state in rng["cuda"]][: torch.cuda.device_count()]
        for device, state in enumerate(states):
            torch.cuda.set_rng_state(state, device)
    numpy_state = rng["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = rng["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if sampler_generator is not None and rng.get("sampler") is not None:
        sampler_generator.set_state(rng["sampler"].cpu())


def build_training(mc: ModelConfig, tc: TrainConfig, device: torch.device, total_steps: int, cluster=None,
                   decay_from: tuple[int, float] | None = None) -> Training:
    """Model, optimizer, schedule, scaler and autocast for one run; `tc` is the resolved config (and
    `decay_from` where the run was extended: `lr_factor`). Under torchrun (`cluster.active`) the step
    runs through DistributedDataParallel, which averages the gradients of all processes."""
    configure_backends(device)
    amp_dtype = resolve_precision(tc.precision, device)
    raw_model = build_model(mc).to(device)
    stepped = raw_model
    if cluster is not None and cluster.active:
        from torch.nn.parallel import DistributedDataParallel

        stepped = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = resolve_compile(tc.compile, mc.model_type, device)
    optimizer = make_optimizer(raw_model, tc.lr, tc.weight_decay, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    core = recurrent_core_dtype(raw_model, autocast, device)
    loss_of = functools.partial(_forward_loss, stepped)
    return Training(
        raw_model=raw_model, loss_of=torch.compile(loss_of) if compiled else loss_of, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, tc.warmup_steps, total_steps, decay_from),
        # fp16 anywhere in the backward pass (the run's autocast, or an RNN core cuDNN runs in fp16 only) needs
        # loss scaling
        scaler=torch.amp.GradScaler(device.type, enabled=torch.float16 in (amp_dtype, core)), autocast=autocast,
        device=device, precision=DTYPE_NAMES[amp_dtype], compiled=compiled,
        core_precision=None if core is None else DTYPE_NAMES[core],
    )


DTYPE_NAMES = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@torch.no_grad()
def recurrent_core_dtype(model: torch.nn.Module, autocast, device: torch.device) -> torch.dtype | None:
    """The dtype an RNN's LSTM/GRU core computes in under the run's autocast, found by running it on
    one token: what torch does (fp16 for cuDNN under any CUDA autocast, bf16 where rnn_cores.LSTMCore
    takes over, fp32 for a CPU GRU), not what was asked for. None for a Transformer."""
    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, torch.nn.RNNBase):
        return None
    probe = torch.zeros(1, 1, rnn.input_size, device=device)
    with autocast:
        return rnn(probe)[0].dtype


def describe_precision(training: Training) -> str:
    """The start line's precision: the autocast dtype, and an RNN's core where it differs or matters."""
    core = training.core_precision
    if core is None:
        return training.precision
    scaled = ", loss-scaled" if core == "fp16" and training.scaler.is_enabled() else ""
    why = " (this GPU's cuDNN has no bf16 RNN)" if core == "fp16" and training.precision == "bf16" else ""
    return f"{training.precision}, recurrent core {core}{scaled}{why}"


def _forward_loss(model, inputs, targets, positions=None):
    # One function for the model and its loss: compiled, the logits never make a round trip to memory
    # between the output layer and the cross-entropy, and backward comes from the same graph.
    # positions: a song clock's
    logits = model(inputs) if positions is None else model(inputs, song_positions=positions)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def restore_training(training: Training, state: dict) -> None:
    """Load a checkpoint's model, optimizer, schedule and scaler into freshly built objects."""
    training.raw_model.load_state_dict(state["model"])
    # The saving machine's kernel choice travels in param_groups: a CPU run saved unfused AdamW, whose
    # `step` counters torch would leave on the CPU, where GPU's fused kernel fails. Marking the groups
    # fused before loading makes torch put them on the device.
    fused = training.device.type == "cuda"
    saved = state["optimizer"]
    training.optimizer.load_state_dict({**saved,
                                        "param_groups": [{**g, "fused": fused} for g in saved["param_groups"]]})
    training.scheduler.load_state_dict(state["scheduler"])
    if training.scaler.is_enabled() and state["scaler"] is not None:
        training.scaler.load_state_dict(state["scaler"])
