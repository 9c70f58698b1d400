"""Training: `TrainConfig` and `train()`, the loop readable top to bottom (nanoGPT's train.py is
the model).

The training tokens live on the device as one tensor; each step draws random windows from it
with a seeded CPU generator, whose state is checkpointed with everything else, so a resumed run
continues with exactly the batches, dropout masks and schedule it would have seen. One epoch is
one pass over the training tokens. Checkpoints go through `checkpoints.CheckpointWriter`
(background, atomic); the seed's artifacts are refreshed at each checkpoint (`midikit.artifacts`).
"""

from __future__ import annotations

import copy
import math
import random
import shlex
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints, storage
from .artifacts import write_run_artifacts
from .data import evaluation_windows, load_dataset, sample_windows
from .models import MODEL_TYPES, ConfigError, ModelConfig, build_model, count_parameters, resolve_device
from .presets import PRESET_NAMES, get_preset, preset_for_hardware

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
LOSS_FLUSH_EVERY = 20  # steps between GPU->CPU syncs of the per-step losses
BEST_SAVE_COST_FACTOR = 20  # a new best is checkpointed when the last save cost < 1/20 of the time since
PLOT_EVERY_SECONDS = 60.0  # the loss plot is redrawn at most this often (and at the end)
# What a resumed run keeps from its checkpoint whatever is asked now: changing any of these would
# change the batches or the schedule. Stopping, checkpointing and hardware settings follow the new config.
RUN_DEFINING = ("preset", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "seed",
                "max_batches", "subsample_ratio", "eval_every", "eval_windows")


@dataclass
class TrainConfig:
    """How to train. Model sizes live in `ModelConfig` (from a preset unless given)."""

    dataset: str = "nottingham"
    checkpoint_dir: str | None = None  # the root; None: storage.default_root()
    model_type: str = "lstm"
    preset: str | None = None  # None: presets.preset_for_hardware()
    epochs: int = 20
    batch_size: int | None = None  # None: the preset's
    lr: float | None = None  # None: the preset's
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: 5% of the run, at most 200 steps
    max_steps: int | None = None  # stops the run earlier than `epochs` would
    max_batches: int | None = None  # caps the steps of one epoch
    subsample_ratio: float = 1.0  # an epoch covers this share of the training tokens
    val_split: float | None = None  # only checked against the dataset's (splitting is preprocessing's)
    patience: int = 5  # evaluations without a new best before stopping; 0 never stops early
    eval_every: int | None = None  # steps; None: once per epoch
    eval_windows: int = 256  # validation windows per evaluation, spread over the whole split
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU
    compile: str = "auto"  # auto: torch.compile for the transformer on CUDA
    checkpoint_every_minutes: float = 10.0  # 0: off
    checkpoint_every_steps: int = 0  # 0: off
    keep_last: int = 2
    resume: str = "auto"  # auto | never | path to a checkpoint file or run folder
    grad_clip: float = 1.0  # 0: off
    progress: bool = True

    def validate(self) -> "TrainConfig":
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"Unknown model_type {self.model_type!r}: choose one of {', '.join(MODEL_TYPES)}.")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise ConfigError(f"Unknown preset {self.preset!r}: choose one of {', '.join(PRESET_NAMES)}.")
        for name in ("epochs", "eval_windows", "keep_last"):
            _check_number(name, getattr(self, name), integer=True)
        for name in ("batch_size", "max_steps", "max_batches", "eval_every"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), integer=True)
        for name in ("warmup_steps", "patience", "checkpoint_every_steps", "seed"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), integer=True, minimum=0)
        if self.lr is not None:
            _check_number("lr", self.lr)
        for name in ("weight_decay", "grad_clip", "checkpoint_every_minutes"):
            _check_number(name, getattr(self, name), minimum=0)
        if not 0.0 < float(self.subsample_ratio) <= 1.0:
            raise ConfigError(f"subsample_ratio must be in (0, 1], got {self.subsample_ratio!r}.")
        if self.val_split is not None and not 0.0 < float(self.val_split) < 1.0:
            raise ConfigError(f"val_split must be in (0, 1), got {self.val_split!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"Unknown compile setting {self.compile!r}: choose one of {', '.join(COMPILE_MODES)}.")
        if not self.resume:
            raise ConfigError("resume must be 'auto', 'never' or a path to a checkpoint or run folder.")
        return self

    def to_dict(self) -> dict:
        values = asdict(self)
        values["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return values


@dataclass
class TrainResult:
    run_id: str
    status: str  # finished | early_stopped | interrupted | max_steps
    resumed_from_step: int | None
    steps: int
    epochs: int
    best_val_loss: float | None
    history: dict
    artifacts: dict[str, Path] = field(default_factory=dict)


def _check_number(name, value, integer=False, minimum=None):
    kind = int if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kind)
    if bad or (value <= 0 if minimum is None else value < minimum):
        what = "an integer" if integer else "a number"
        bound = "> 0" if minimum is None else f">= {minimum}"
        raise ConfigError(f"{name} must be {what} {bound}, got {value!r}.")


# --------------------------------------------------------------------------- hardware


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


# --------------------------------------------------------------------------- schedule, optimizer, eval


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW decaying matrices and embeddings only (not biases or norms); fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def autocast_context(amp_dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def train_step(model, optimizer, scheduler, scaler, autocast, inputs, targets, grad_clip: float) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss, left on the device (no sync)."""
    with autocast:
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss.detach()


@torch.no_grad()
def evaluate_loss(model, inputs, targets, batch_size: int, autocast) -> float:
    """Mean cross-entropy per token over fixed windows (model in eval mode, dropout off)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=inputs.device)
    for start in range(0, len(inputs), batch_size):
        with autocast:
            logits = model(inputs[start : start + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets[start : start + batch_size].flatten(), reduction="sum")
    model.train(was_training)
    return total.item() / targets.numel()


class _GracefulStop:
    """The first Ctrl-C (Colab's stop button) asks the loop to stop after the current step, so the
    saved state is a consistent one; a second one interrupts at once."""

    def __init__(self, log, message="Stop requested: saving a checkpoint after this step (interrupt again to stop at once)."):
        self.requested = False
        self.log = log
        self.message = message
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log(self.message)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------- set-up


def _open_dataset(tc: TrainConfig):
    paths = storage.DatasetPaths(storage.resolve_root(tc.checkpoint_dir), tc.dataset)
    dataset = load_dataset(paths)  # DatasetError (a StorageError) names the preprocess command
    built = dataset.config.get("split", {}).get("val_split")
    if tc.val_split is not None and (built is None or not math.isclose(float(built), float(tc.val_split))):
        new_name = f"{tc.dataset}_val{tc.val_split:g}"
        raise ConfigError(
            f"val_split={tc.val_split} was asked for, but dataset {tc.dataset!r} was split with val_split={built} "
            "when it was preprocessed (the split is made once, by song, before augmentation). Either drop "
            f"--val_split, or preprocess a dataset with that split and train on it (--dataset {new_name}): "
            f"{_command_with(dataset.config.get('command', 'python -m midikit preprocess'), dataset=new_name, val_split=tc.val_split)}"
        )
    return paths, dataset


def _command_with(command: str, **flags) -> str:
    """The dataset's recorded preprocess command with some flags set to new values."""
    args = shlex.split(command)
    for name, value in flags.items():
        if f"--{name}" in args:
            args[args.index(f"--{name}") + 1] = str(value)
        else:
            args += [f"--{name}", str(value)]
    return shlex.join(args)


def _find_resume(tc: TrainConfig, paths: storage.DatasetPaths, log) -> tuple[Path, dict] | None:
    """The checkpoint `tc.resume` points at: (path, state), or None to start a new run."""
    if tc.resume == "never":
        return None
    if tc.resume == "auto":
        found = checkpoints.load_resumable(paths.checkpoints, tc.model_type, log=log)
        if found is not None and found[1].get("finished"):
            run_dir = found[0].parent
            # It finished but died before marking run.json: mark it now, never resume it.
            checkpoints.write_run_info(run_dir, {**(checkpoints.read_run_info(run_dir) or {}), "status": "finished"})
            return None
        return found
    target = Path(tc.resume).expanduser()
    if target.is_file():
        return target, checkpoints.load_state(target)
    if target.is_dir():
        found = checkpoints.load_latest(target, log=log)
        if found is None:
            raise checkpoints.CheckpointError(f"No valid checkpoint in {target}; pass another run folder, or --resume never.")
        return found
    raise storage.StorageError(
        f"resume={tc.resume!r} is neither 'auto', 'never', a checkpoint file nor a run folder "
        f"(runs of this dataset are under {paths.checkpoints})."
    )


def _check_resumable(state: dict, path: Path, dataset) -> None:
    if state.get("format") != checkpoints.STATE_FORMAT:
        raise checkpoints.CheckpointError(f"{path} is not a midikit training state; pass a step_*.pt or best.pt of a run.")
    trained_on = state["dataset"]
    if trained_on["fingerprint"] != dataset.fingerprint or trained_on["vocab_size"] != dataset.vocab_size:
        raise ConfigError(
            f"Run {state['run_id']} ({path}) was trained on another build of dataset {trained_on['name']!r} "
            "(it was preprocessed again since), so it cannot continue on this one. Pass --resume never "
            "(resume='never') to start a new run."
        )


def _new_model_config(tc, preset, dataset, model_config: ModelConfig | None, overrides: dict) -> ModelConfig:
    vocab_size = dataset.vocab_size
    if model_config is None:
        # The context is the dataset's --seq_length (the seed's window), not the preset's.
        values = preset.model_config(tc.model_type, vocab_size, context_length=dataset.seq_length).to_dict()
    else:
        values = model_config.to_dict()
        if values["vocab_size"] in (0, None):
            values["vocab_size"] = vocab_size
        if values["model_type"] != tc.model_type:
            raise ConfigError(f"model_config is a {values['model_type']} but model_type is {tc.model_type!r}; make them agree.")
    unknown = set(overrides) - set(values)
    if unknown:
        raise ConfigError(f"Unknown model settings {sorted(unknown)}; known: {', '.join(sorted(values))}.")
    config = ModelConfig(**{**values, **overrides}).validate()
    if config.vocab_size != vocab_size:
        raise ConfigError(
            f"vocab_size={config.vocab_size} but the dataset's tokenizer has {vocab_size} tokens; "
            "leave vocab_size at 0 to take the dataset's."
        )
    return config


def _resumed_model_config(state: dict, model_config: ModelConfig | None, overrides: dict) -> ModelConfig:
    """A run keeps its model; asking for different sizes is an error, not silently ignored."""
    saved = ModelConfig.from_dict(state["model_config"])
    asked = {}
    if model_config is not None:
        asked = {k: v for k, v in model_config.to_dict().items() if not (k == "vocab_size" and v in (0, None))}
    asked.update(overrides)
    conflicts = {k: v for k, v in asked.items() if getattr(saved, k, v) != v}
    if conflicts:
        was = ", ".join(f"{k}={getattr(saved, k)!r}" for k in conflicts)
        now = ", ".join(f"{k}={v!r}" for k, v in conflicts.items())
        raise ConfigError(
            f"Run {state['run_id']} was trained with {was}; you asked for {now}. A run keeps its model: "
            "drop those settings to continue it, or pass --resume never (resume='never') to start a new run with them."
        )
    return saved


def check_context(config: ModelConfig, dataset) -> None:
    """Raise ConfigError when the context is longer than the dataset's splits allow (also used by the training form)."""
    context = config.context_length
    train_n, val_n = len(dataset.train_tokens), len(dataset.val_tokens)
    if val_n < 2:
        raise ConfigError(
            f"Dataset {dataset.name!r} has no validation tokens (its validation split holds no file); preprocess it "
            "again with at least two source files, or a larger --val_split if it has several."
        )
    if train_n < context + 2 or val_n < context + 1:
        fits = min(train_n - 2, val_n - 1)
        raise ConfigError(
            f"context_length={context} is longer than dataset {dataset.name!r} allows (training split: {train_n} "
            f"tokens, validation split: {val_n}); use --context_length {fits} or less, or preprocess more data."
        )


def _new_run_id(paths: storage.DatasetPaths, model_type: str) -> str:
    # Two runs started within one second would share a timestamp: take the next free one.
    now = datetime.now()
    for offset in range(3600):
        run_id = storage.make_run_id(model_type, storage.timestamp(now + timedelta(seconds=offset)))
        if not paths.run_checkpoints(run_id).exists() and not paths.weights_sidecar(run_id).exists():
            return run_id
    raise storage.StorageError(f"No free run id under {paths.checkpoints}; remove old runs.")


# --------------------------------------------------------------------------- the loop


def train(
    train_config: TrainConfig,
    model_config: ModelConfig | None = None,
    on_eval=None,
    log=print,
    model_overrides: dict | None = None,
) -> TrainResult:
    """Train a new run, or continue one (`train_config.resume`), and write its artifacts.

    model_config None: the preset's sizes for `train_config.model_type` (`train_config.preset`,
    else the one for this hardware), with the dataset's vocab_size; `model_overrides` (e.g. from
    explicit CLI flags) replace single fields. `on_eval(history)` runs after each evaluation.
    Every bad input raises ConfigError/StorageError before training starts.
    """
    tc = replace(train_config).validate()
    overrides = dict(model_overrides or {})
    paths, dataset = _open_dataset(tc)
    device = resolve_device(tc.device)
    amp_dtype = resolve_precision(tc.precision, device)
    resumed = _find_resume(tc, paths, log)
    resumed_path = resumed[0] if resumed is not None else None

    if resumed is not None:
        resume_path, state = resumed
        _check_resumable(state, resume_path, dataset)
        saved_tc = state["train_config"]
        changed = [f"{k}={saved_tc[k]!r} (asked {getattr(tc, k)!r})" for k in RUN_DEFINING
                   if getattr(tc, k) is not None and getattr(tc, k) != saved_tc[k]]
        if changed:
            log(f"Resuming keeps the run's own settings: {', '.join(changed)}.")
        tc = replace(tc, model_type=state["model_config"]["model_type"], **{k: saved_tc[k] for k in RUN_DEFINING})
        mc = _resumed_model_config(state, model_config, overrides)
        run_id = state["run_id"]
    else:
        preset = get_preset(tc.model_type, tc.preset or preset_for_hardware(str(device)))
        tc = replace(tc, preset=preset.name, batch_size=tc.batch_size or preset.batch_size, lr=tc.lr or preset.lr)
        mc = _new_model_config(tc, preset, dataset, model_config, overrides)
        run_id = _new_run_id(paths, tc.model_type)
    check_context(mc, dataset)
    paths.ensure()
    run_dir = paths.run_checkpoints(run_id)

    # Steps: one epoch is one pass over the training tokens (shrunk by subsample_ratio, capped by max_batches).
    context, batch_size = mc.context_length, tc.batch_size
    tokens_per_step = batch_size * context
    steps_per_epoch = max(1, int(len(dataset.train_tokens) * tc.subsample_ratio) // tokens_per_step)
    if tc.max_batches:
        steps_per_epoch = min(steps_per_epoch, tc.max_batches)
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)
    if tc.warmup_steps is None:
        tc = replace(tc, warmup_steps=min(200, max(1, total_steps // 20)))
    if tc.eval_every is None:
        tc = replace(tc, eval_every=steps_per_epoch)

    # Reproducibility: every RNG is seeded; a resume then overwrites all of them from the checkpoint.
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    generator = torch.Generator().manual_seed(tc.seed)  # data order, on the CPU for every device

    configure_backends(device)
    autocast = autocast_context(amp_dtype, device)
    use_compile = resolve_compile(tc.compile, mc.model_type, device)
    # Record what "auto" became, for the summary and models.csv.
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    tc = replace(tc, device=str(device), precision=precision, compile="on" if use_compile else "off")

    try:
        # Tokens as int32 on the device (uint16 has too few ops); one gather per batch from here on.
        train_tokens = torch.from_numpy(np.asarray(dataset.train_tokens, dtype=np.int32)).to(device)
        val_tokens = torch.from_numpy(np.asarray(dataset.val_tokens, dtype=np.int32)).to(device)
        val_inputs, val_targets = evaluation_windows(val_tokens, context, max_windows=tc.eval_windows)

        raw_model = build_model(mc).to(device)
        optimizer = make_optimizer(raw_model, tc.lr, tc.weight_decay, device)
        scheduler = make_scheduler(optimizer, tc.warmup_steps, total_steps)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        step, tokens_seen, elapsed_before = 0, 0, 0.0
        history = {"train_loss": [], "train_step": [], "val_loss": [], "val_step": [], "lr": []}
        best_val_loss, best_step, bad_evals = None, 0, 0
        if resumed is not None:
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # load_state_dict restores the saving machine's choice
                group["fused"] = device.type == "cuda"
            scheduler.load_state_dict(state["scheduler"])
            if scaler.is_enabled() and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            checkpoints.restore_rng_state(state["rng"], generator)
            step, tokens_seen, elapsed_before = state["step"], state["tokens_seen"], state["elapsed_seconds"]
            history = state["history"]
            best_val_loss, best_step, bad_evals = state["best_val_loss"], state["best_step"], state["bad_evals"]
            del state, resumed  # the model and optimizer hold their own copies now
        resumed_from_step = step if resumed_path is not None else None
        model = torch.compile(raw_model) if use_compile else raw_model
        parameters = count_parameters(raw_model)

        dataset_info = {"name": dataset.name, "fingerprint": dataset.fingerprint, "vocab_size": dataset.vocab_size}
        say = tqdm.write if (log is print and tc.progress) else log  # keeps the progress bar intact
        writer = checkpoints.CheckpointWriter(run_dir, keep_last=tc.keep_last, log=say)
        checkpoints.write_run_info(run_dir, {"run_id": run_id, "model_type": mc.model_type, "status": "running", "dataset": dataset.name})
        tc_dict = tc.to_dict()
        say(
            f"{'Resuming' if resumed_from_step is not None else 'Starting'} {run_id}: {mc.model_type}, "
            f"{parameters / 1e6:.2f}M parameters, {device}, {precision}"
            f"{', compiled' if use_compile else ''}; batch {batch_size} x {context} tokens, {steps_per_epoch} steps/epoch, "
            f"step {step} of {total_steps}; checkpoints in {run_dir}"
        )
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(batch_size, mc, resumed_path is not None) from None

    best_weights = None  # device copy of the best model, written to models/<run_id>.pth when it changes
    pth_written = resumed_from_step is not None  # a resumed run's .pth exists already
    pending_losses = []  # per-step losses still on the device
    t_start = time.monotonic()
    last_save_end, last_save_cost = t_start, 0.0
    last_plot = -math.inf
    artifacts = {}

    def flush_losses():
        if pending_losses:
            values = torch.stack(pending_losses).float().tolist()  # one device sync for many steps
            history["train_loss"].extend(values)
            history["train_step"].extend(range(step - len(values) + 1, step + 1))
            pending_losses.clear()

    def metrics(stop_reason=None) -> dict:
        return {
            "best_val_loss": best_val_loss, "best_step": best_step,
            "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
            "steps": step, "epochs": step // steps_per_epoch, "tokens_seen": tokens_seen,
            "elapsed_seconds": elapsed_before + time.monotonic() - t_start, "parameters": parameters,
            "stop_reason": stop_reason,
        }

    def save_checkpoint(best: bool, finished: bool = False, stop_reason=None, wait: bool = False):
        nonlocal last_save_end, last_save_cost, last_plot, best_weights
        started = time.monotonic()
        flush_losses()
        state = {
            "format": checkpoints.STATE_FORMAT, "version": 1, "run_id": run_id,
            "model_config": mc.to_dict(), "train_config": tc_dict, "dataset": dataset_info,
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "epoch": step // steps_per_epoch, "tokens_seen": tokens_seen,
            "rng": checkpoints.capture_rng_state(generator), "history": history,
            "best_val_loss": best_val_loss, "best_step": best_step, "bad_evals": bad_evals,
            "elapsed_seconds": elapsed_before + started - t_start, "finished": finished,
        }
        # The .pth holds the best weights; before the first evaluation, the current ones.
        weights = best_weights
        if weights is None and not pth_written:
            weights = raw_model.state_dict()
        weights = None if weights is None else checkpoints.to_cpu_snapshot(weights)
        best_weights = None
        plot = stop_reason is not None or started - last_plot >= PLOT_EVERY_SECONDS
        last_plot = started if plot else last_plot
        # Copies taken now: the refresh runs on the writer thread while training goes on.
        run_history, run_metrics = copy.deepcopy(history), metrics(stop_reason)

        def refresh_artifacts():
            nonlocal artifacts, best_weights, pth_written
            try:
                artifacts = write_run_artifacts(
                    paths, run_id, mc.to_dict(), tc_dict, dataset_info, run_history, run_metrics,
                    "finished" if finished else "running", best_weights=weights, checkpoints_dir=run_dir, plot=plot,
                )
                pth_written = pth_written or weights is not None
            except Exception as exc:  # never into training (a full Drive, a dropped mount, ...)
                if weights is not None and best_weights is None:
                    best_weights = weights  # written with the next checkpoint instead
                say(f"Could not refresh the run's artifacts ({exc}); the next checkpoint tries again.")

        # Artifacts first: a kill between the two then leaves a .pth that the resumed run rewrites
        # identically, never a state whose best weights are missing from the .pth.
        if not writer.save(state, step, best=best, wait=wait, before=refresh_artifacts):
            best_weights = weights  # skipped (previous write hung): kept for the next save
        last_save_end = time.monotonic()
        last_save_cost = last_save_end - started

    status, in_step = None, False
    progress_bar = tqdm(total=total_steps, initial=step, disable=not tc.progress, unit="step", dynamic_ncols=True)
    postfix = {}
    loop_start, loop_start_tokens = time.monotonic(), tokens_seen
    try:
        with _GracefulStop(say) as stop:
            while step < total_steps:
                in_step = True
                inputs, targets = sample_windows(train_tokens, batch_size, context, generator)
                history["lr"].append(scheduler.get_last_lr()[0])
                pending_losses.append(train_step(model, optimizer, scheduler, scaler, autocast, inputs, targets, tc.grad_clip))
                step += 1
                in_step = False
                tokens_seen += tokens_per_step
                if len(pending_losses) >= LOSS_FLUSH_EVERY:
                    flush_losses()
                    rate = (tokens_seen - loop_start_tokens) / max(1e-9, time.monotonic() - loop_start)
                    postfix.update(loss=f"{history['train_loss'][-1]:.3f}", tok_s=f"{rate:,.0f}")
                    progress_bar.set_postfix(postfix, refresh=False)
                progress_bar.update(1)

                # Evaluate on a step schedule only: patience, the best step and a resumed run's
                # evaluations must not depend on wall-clock time.
                time_due = tc.checkpoint_every_minutes > 0 and time.monotonic() - last_save_end >= tc.checkpoint_every_minutes * 60
                improved = False
                if step % tc.eval_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                    val_loss = evaluate_loss(raw_model, val_inputs, val_targets, batch_size, autocast)
                    history["val_loss"].append(val_loss)
                    history["val_step"].append(step)
                    improved = best_val_loss is None or val_loss < best_val_loss
                    if improved:
                        best_val_loss, best_step, bad_evals = val_loss, step, 0
                        best_weights = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
                    else:
                        bad_evals += 1
                    postfix.update(val=f"{val_loss:.3f}", best=f"{best_val_loss:.3f}")
                    progress_bar.set_postfix(postfix, refresh=False)
                    if on_eval is not None:
                        flush_losses()
                        on_eval(history)

                if tc.patience and bad_evals >= tc.patience:
                    status = "early_stopped"
                    break
                if stop.requested:
                    raise KeyboardInterrupt
                # Checkpoint on schedule, and at a new best unless saving has been costly lately
                # (the last step is saved after the loop).
                step_due = tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0
                best_due = improved and time.monotonic() - last_save_end >= BEST_SAVE_COST_FACTOR * last_save_cost
                if step < total_steps and (time_due or step_due or best_due):
                    save_checkpoint(best=improved)
            else:
                status = "max_steps" if total_steps < tc.epochs * steps_per_epoch else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
    except torch.cuda.OutOfMemoryError:
        writer.close()
        raise _out_of_memory(batch_size, mc, resumed_from_step is not None) from None
    finally:
        progress_bar.close()

    finished = status != "interrupted"
    if in_step:
        # Interrupted inside a step (second Ctrl-C): its state is half-applied; the last checkpoint stands.
        say(f"Stopped in the middle of step {step + 1}; resume continues from the last checkpoint.")
        writer.close()
        return TrainResult(run_id, status, resumed_from_step, step, step // steps_per_epoch, best_val_loss, history, artifacts)
    with _GracefulStop(say, "Saving the final checkpoint first (interrupt again to stop at once)."):
        save_checkpoint(best=best_step == step and best_val_loss is not None, finished=finished, stop_reason=status, wait=True)
        writer.close()
    final_saved = writer.last_saved is not None and writer.last_saved.step == step and writer.last_error is None
    if finished and not final_saved:
        say(f"The final checkpoint of {run_id} could not be written; the run stays resumable from its last good one.")
    elif finished:
        try:
            checkpoints.write_run_info(run_dir, {"run_id": run_id, "model_type": mc.model_type, "status": "finished", "dataset": dataset.name})
        except storage.StorageError as exc:
            say(f"Could not mark {run_id} finished ({exc}); --resume auto may continue it once more.")
    best_text = "n/a" if best_val_loss is None else f"{best_val_loss:.4f} at step {best_step}"
    say(f"{run_id}: {status} at step {step} (epoch {step // steps_per_epoch}); best validation loss {best_text}.")
    return TrainResult(run_id, status, resumed_from_step, step, step // steps_per_epoch, best_val_loss, history, artifacts)


def _out_of_memory(batch_size: int, mc: ModelConfig, resuming: bool = False) -> ConfigError:
    torch.cuda.empty_cache()
    smaller = max(1, batch_size // 2)
    if resuming:
        # A resumed run keeps its batch size, so a smaller one means a new run.
        return ConfigError(
            f"The GPU ran out of memory continuing a run with batch_size={batch_size} ({mc.model_type}); this GPU is "
            f"smaller than the one that started it. Use a larger GPU to continue it, or start a new run with "
            f"--resume never --batch_size {smaller} (resume='never', batch_size={smaller})."
        )
    return ConfigError(
        f"The GPU ran out of memory with batch_size={batch_size} ({mc.model_type}, context {mc.context_length}). "
        f"Try --batch_size {smaller} (batch_size={smaller}), a smaller --preset, or a shorter --context_length."
    )


def describe_resumable(train_config: TrainConfig) -> dict | None:
    """What `resume` would continue (run_id, step, epoch, best_val_loss, path, and the run's own
    model_config and train_config dicts), or None for a new run."""
    tc = replace(train_config).validate()
    paths = storage.DatasetPaths(storage.resolve_root(tc.checkpoint_dir), tc.dataset)
    found = _find_resume(tc, paths, log=lambda message: None)
    if found is None:
        return None
    path, state = found
    return {
        "run_id": state["run_id"], "model_type": state["model_config"]["model_type"], "step": state["step"],
        "epoch": state["epoch"], "best_val_loss": state["best_val_loss"], "path": path,
        "elapsed_seconds": state["elapsed_seconds"], "model_config": state["model_config"],
        "train_config": state["train_config"],
    }
