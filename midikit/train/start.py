"""Where a call of `train()` starts: a new run, the run `resume` points at, or an orphan run (killed
before its first checkpoint) started over under its own id. Every bad input is found here, before
any training, as one ConfigError/StorageError that says what to do."""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from .. import checkpoints, owners, runs, storage
from ..artifacts import remove_temporaries
from ..configs import ModelConfig, TrainConfig, kept_on_resume
from ..errors import CheckpointError, ConfigError
from ..presets import get_preset, preset_for_hardware
from .setup import lr_factor
from .state import TrainState


@dataclass
class Start:
    state: TrainState  # the run as it continues now
    checkpoint: dict | None = None  # the loaded state to restore (model, optimizer, RNG); None at step 0
    source: Path | None = None  # the checkpoint it came from
    kind: str = "new"  # new | resumed | restarted


def open_dataset(tc: TrainConfig):
    from ..data import load_dataset  # numpy and JSON only

    paths = storage.DatasetPaths(storage.resolve_root(tc.checkpoint_dir), tc.dataset)
    dataset = load_dataset(paths)  # DatasetError (a StorageError) names the preprocess command
    built = dataset.config.get("split", {}).get("val_split")
    if tc.val_split is not None and (built is None or not math.isclose(float(built), float(tc.val_split))):
        new_name = f"{tc.dataset}_val{tc.val_split:g}"
        command = _command_with(dataset.config.get("command", "python -m midikit preprocess"), dataset=new_name,
                                val_split=tc.val_split)
        raise ConfigError(
            f"val_split={tc.val_split} was asked for, but dataset {tc.dataset!r} was split with val_split={built} "
            "when it was preprocessed (the split is made once, by song, before augmentation). Either drop "
            f"--val_split, or preprocess a dataset with that split and train on it (--dataset {new_name}): "
            f"{command}"
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


def find_start(tc: TrainConfig, model_config, overrides: dict, paths, dataset, device, log,
               world_size: int = 1) -> Start:
    """The Start that `tc.resume` asks for (`world_size`: processes that will train it together)."""
    if tc.resume == "never":
        return new_run(tc, model_config, overrides, paths, dataset, device, world_size)
    if tc.resume != "auto":
        return _resume_from(Path(tc.resume).expanduser(), tc, model_config, overrides, paths, dataset, log)
    for record in runs.list_runs(paths, model_type=tc.model_type, status="resumable"):
        found = checkpoints.load_latest(record.path, log=log)
        if found is not None and found[1].get("finished"):
            # It finished but died before its record said so: mark it now, never resume it.
            runs.write_record(record.path, {**record.data, "status": found[1].get("stop_reason") or "finished"})
            continue
        if found is not None:
            return _resumed(found, tc, model_config, overrides, dataset, log)
        if isinstance(record.get("model_config"), dict) and isinstance(record.get("train_config"), dict):
            return _restarted(record, tc, dataset, log, world_size)
    if tc.extend:  # nothing unfinished: extend continues the newest finished run of this type
        for record in runs.list_runs(paths, model_type=tc.model_type, status="done"):
            found = checkpoints.load_latest(record.path, log=log)
            if found is not None:
                return _resumed(found, tc, model_config, overrides, dataset, log)
    return new_run(tc, model_config, overrides, paths, dataset, device, world_size)


def _resume_from(target: Path, tc, model_config, overrides, paths, dataset, log) -> Start:
    if target.is_file():
        found = target, checkpoints.load_state(target)
    elif target.is_dir():
        found = checkpoints.load_latest(target, log=log)
        if found is None:
            raise CheckpointError(f"No valid checkpoint in {target}; pass another run folder, or --resume never.")
    else:
        raise storage.StorageError(f"resume={tc.resume!r} is neither 'auto', 'never', a checkpoint file nor a run "
                                   f"folder (runs of this dataset are under {paths.checkpoints}).")
    return _resumed(found, tc, model_config, overrides, dataset, log)


def _resumed(found, tc: TrainConfig, model_config, overrides, dataset, log) -> Start:
    path, checkpoint = found
    if checkpoint.get("format") != checkpoints.STATE_FORMAT:
        raise CheckpointError(f"{path} is not a midikit training state; pass a step_*.pt or best.pt of a run.")
    _check_same_dataset(checkpoint, path, dataset)
    saved = TrainState.from_state(checkpoint, *_legacy_horizon(checkpoint, dataset))
    _refuse_other_model(saved, model_config, overrides)
    asked_changes = [f"{k}={getattr(saved.train_config, k)!r} (asked {getattr(tc, k)!r})" for k in kept_on_resume()
                     if k not in HORIZON and getattr(tc, k) is not None
                     and getattr(tc, k) != getattr(saved.train_config, k)]
    if asked_changes:
        log(f"Resuming keeps the run's own settings: {', '.join(asked_changes)}.")
    state = saved.with_settings_of_now(tc)
    if tc.extend:
        state = _extended(state, tc, log)
    elif (tc.epochs, tc.max_steps) != (saved.train_config.epochs, saved.train_config.max_steps):
        log(f"{saved.run_id} keeps its horizon of {saved.total_steps} steps (epochs={saved.train_config.epochs}, "
            f"max_steps={saved.train_config.max_steps}); pass --extend (extend=True) to train it to a new one.")
    if saved.finished and state.total_steps <= saved.step:
        raise ConfigError(f"Run {saved.run_id} already finished ({saved.stop_reason or 'finished'} at step "
                          f"{saved.step}). To train it further pass --extend with a larger --max_steps or --epochs; "
                          "--resume never starts a new run.")
    return Start(replace(state, finished=False, stop_reason=None), checkpoint, path, "resumed")


# The settings that plan a run's horizon: kept on resume like the others, said apart (extend changes them).
HORIZON = ("epochs", "max_steps")


def _extended(state: TrainState, tc: TrainConfig, log) -> TrainState:
    """The run with a horizon planned from the new epochs/max_steps: an explicit, logged choice."""
    total = planned_steps(tc.epochs, tc.max_steps, state.steps_per_epoch)
    if total == state.total_steps and not state.finished:
        log(f"{state.run_id}: extend asks for the horizon it already has ({total} steps); nothing to re-plan.")
        return state
    if total <= state.step:
        raise ConfigError(f"extend: the new horizon ({total} steps from epochs={tc.epochs}, max_steps={tc.max_steps}) "
                          f"is not past step {state.step}; ask for more max_steps or epochs (--max_steps, --epochs).")
    log(f"Extending {state.run_id}: horizon {state.total_steps} -> {total} steps. The learning rate goes on from where "
        f"it is at step {state.step}, moves over {state.train_config.warmup_steps} steps to where a run planned this "
        "long would be, then decays over the new horizon; early stopping's patience starts over.")
    train_config = replace(state.train_config, epochs=tc.epochs, max_steps=tc.max_steps)
    warmup = train_config.warmup_steps
    # Where the curve is now: the re-planned curve starts there (past the warm-up; a warm-up goes on as it was).
    decay_from = state.decay_from
    if state.step >= warmup:
        decay_from = (state.step, lr_factor(state.step, warmup, state.total_steps, state.decay_from))
    return replace(state, train_config=train_config, total_steps=total, decay_from=decay_from, bad_evals=0)


def _legacy_horizon(checkpoint: dict, dataset) -> tuple[int | None, int | None]:
    """Checkpoints of midikit 0.1 did not save the horizon: rebuild it as 0.1 computed it."""
    if "total_steps" in checkpoint:
        return None, None
    tc, mc = checkpoint["train_config"], checkpoint["model_config"]
    per_epoch = steps_per_epoch(len(dataset.train_tokens), tc["batch_size"] * mc["context_length"],
                                tc["subsample_ratio"], tc["max_batches"])
    return per_epoch, planned_steps(tc["epochs"], tc["max_steps"], per_epoch)


def _restarted(record: runs.RunRecord, tc: TrainConfig, dataset, log, world_size: int = 1) -> Start:
    """A run killed before its first checkpoint: start it over under its own id, with its own settings."""
    saved_tc = TrainConfig(**{k: v for k, v in record.get("train_config").items()
                              if k in TrainConfig.__dataclass_fields__})
    mc = ModelConfig.from_dict(record.get("model_config"))
    log(f"{record.run_id} stopped before its first checkpoint: starting it over from step 0 under the same id.")
    session = {name: getattr(tc, name) for name in kept_on_resume(False)}
    state = _planned(record.run_id, mc, replace(saved_tc, **session), dataset, world_size)
    return Start(state, kind="restarted")


def new_run(tc: TrainConfig, model_config, overrides: dict, paths, dataset, device, world_size: int = 1) -> Start:
    preset = get_preset(tc.model_type, tc.preset or preset_for_hardware(str(device)))
    tc = replace(tc, preset=preset.name, batch_size=tc.batch_size or preset.batch_size, lr=tc.lr or preset.lr)
    mc = _new_model_config(tc, preset, dataset, model_config, overrides)
    return Start(_planned(new_run_id(paths, tc.model_type), mc, tc, dataset, world_size))


def _planned(run_id: str, mc: ModelConfig, tc: TrainConfig, dataset, world_size: int = 1) -> TrainState:
    """A run at step 0 with its horizon, warm-up and evaluation cadence worked out (an epoch is one
    pass over the training tokens by all `world_size` processes together)."""
    check_context(mc, dataset)
    per_epoch = steps_per_epoch(len(dataset.train_tokens), tc.batch_size * mc.context_length * world_size,
                                tc.subsample_ratio, tc.max_batches)
    total = planned_steps(tc.epochs, tc.max_steps, per_epoch)
    tc = replace(tc, warmup_steps=min(200, max(1, total // 20)) if tc.warmup_steps is None else tc.warmup_steps,
                 eval_every=per_epoch if tc.eval_every is None else tc.eval_every)
    info = {"name": dataset.name, "fingerprint": dataset.fingerprint, "vocab_size": dataset.vocab_size}
    return TrainState(run_id, mc, tc, info, per_epoch, total)


def steps_per_epoch(train_tokens: int, tokens_per_step: int, subsample_ratio: float, max_batches: int | None) -> int:
    """One epoch is one pass over the training tokens (shrunk by subsample_ratio, capped by max_batches)."""
    per_epoch = max(1, int(train_tokens * subsample_ratio) // tokens_per_step)
    return min(per_epoch, max_batches) if max_batches else per_epoch


def planned_steps(epochs: int, max_steps: int | None, per_epoch: int) -> int:
    total = epochs * per_epoch
    return min(total, max_steps) if max_steps else total


def _check_same_dataset(checkpoint: dict, path: Path, dataset) -> None:
    trained_on = checkpoint["dataset"]
    if trained_on["fingerprint"] != dataset.fingerprint or trained_on["vocab_size"] != dataset.vocab_size:
        raise ConfigError(
            f"Run {checkpoint['run_id']} ({path}) was trained on another build of dataset {trained_on['name']!r} "
            "(it was preprocessed again since), so it cannot continue on this one. Pass --resume never "
            "(resume='never') to start a new run."
        )


def _new_model_config(tc, preset, dataset, model_config: ModelConfig | None, overrides: dict) -> ModelConfig:
    vocab_size = dataset.vocab_size
    if model_config is None:
        # The context is the dataset's --seq_length (the original project's window), not the preset's.
        values = preset.model_config(tc.model_type, vocab_size, context_length=dataset.seq_length).to_dict()
    else:
        values = model_config.to_dict()
        if values["vocab_size"] in (0, None):
            values["vocab_size"] = vocab_size
        if values["model_type"] != tc.model_type:
            raise ConfigError(f"model_config is a {values['model_type']} but model_type is {tc.model_type!r}; "
                              "make them agree.")
    unknown = set(overrides) - set(values)
    if unknown:
        raise ConfigError(f"Unknown model settings {sorted(unknown)}; known: {', '.join(sorted(values))}.")
    config = ModelConfig(**{**values, **overrides}).validate()
    if config.vocab_size != vocab_size:
        raise ConfigError(f"vocab_size={config.vocab_size} but the dataset's tokenizer has {vocab_size} tokens; "
                          "leave vocab_size at 0 to take the dataset's.")
    return config


def _refuse_other_model(saved: TrainState, model_config: ModelConfig | None, overrides: dict) -> None:
    """A run keeps its model; asking for different sizes is an error, not silently ignored."""
    asked = {}
    if model_config is not None:
        asked = {k: v for k, v in model_config.to_dict().items() if not (k == "vocab_size" and v in (0, None))}
    asked.update(overrides)
    conflicts = {k: v for k, v in asked.items() if getattr(saved.model_config, k, v) != v}
    if conflicts:
        was = ", ".join(f"{k}={getattr(saved.model_config, k)!r}" for k in conflicts)
        now = ", ".join(f"{k}={v!r}" for k, v in conflicts.items())
        raise ConfigError(
            f"Run {saved.run_id} was trained with {was}; you asked for {now}. A run keeps its model: "
            "drop those settings to continue it, or pass --resume never (resume='never') to start a new run with them."
        )


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


def new_run_id(paths: storage.DatasetPaths, model_type: str) -> str:
    # Two runs started within one second would share a timestamp: take the next free one.
    now = datetime.now()
    for offset in range(3600):
        run_id = storage.make_run_id(model_type, storage.timestamp(now + timedelta(seconds=offset)))
        if not paths.run_checkpoints(run_id).exists() and not paths.weights_sidecar(run_id).exists():
            return run_id
    raise storage.StorageError(f"No free run id under {paths.checkpoints}; remove old runs.")


def describe_resumable(train_config: TrainConfig) -> dict | None:
    """What `resume="auto"` would continue, from the registry alone (no checkpoint is read): run_id,
    model_type, status, step, epoch, best_val_loss, elapsed_seconds, model_config and train_config
    (dicts), path (the run folder), progress (in words), done (a finished run that `extend` goes on
    with), owner_state ("live" while another runtime trains it) and owner (who, since when). None when
    a new run would start."""
    tc = replace(train_config).validate()
    if tc.resume != "auto":
        return None
    paths = storage.DatasetPaths(storage.resolve_root(tc.checkpoint_dir, create=False), tc.dataset)
    candidates = runs.list_runs(paths, model_type=tc.model_type, status="resumable")
    if tc.extend:  # nothing unfinished: extend goes on with the newest finished run (as find_start does)
        candidates += runs.list_runs(paths, model_type=tc.model_type, status="done")[:1]
    for record in candidates:
        if not isinstance(record.get("model_config"), dict) or not isinstance(record.get("train_config"), dict):
            continue
        owner = record.owner
        step = record.get("step") or 0
        per_epoch = max(1, (record.get("total_steps") or 1) // max(1, record.get("train_config").get("epochs") or 1))
        return {
            "run_id": record.run_id, "model_type": record.model_type, "status": record.status, "step": step,
            "epoch": record.get("epoch", step // per_epoch), "best_val_loss": record.get("best_val_loss"),
            "elapsed_seconds": record.get("elapsed_seconds"), "model_config": record.get("model_config"),
            "train_config": record.get("train_config"), "path": record.path, "owner_state": record.owner_state(),
            "owner": owner.describe() if owner is not None else None, "done": record.done,
            "progress": runs.describe_progress(record), "total_steps": record.get("total_steps"),
        }
    return None


# --------------------------------------------------------------------------- the one writer


@dataclass(frozen=True)
class Claimed:
    """What making this process a run's one writer gives: its owner entry and the thread that keeps its
    run.json, the step whose weights models/<run_id>.pth holds (None: no .pth yet), and best weights
    still to be written there (recovered from the checkpoints)."""

    run_id: str
    owner: runs.Owner
    keeper: owners.RecordKeeper
    weights_step: int | None = None
    pending_weights: dict | None = None


def claim_run(paths: storage.DatasetPaths, start: Start, log, takeover: bool = False,
              heartbeat_s: float = runs.HEARTBEAT_SECONDS) -> Claimed:
    """Make this process the run's one writer and get its folder ready: claim the record (refused
    while another runtime holds it), clean up what killed or abandoned writes left, drop the step
    files of a timeline this run abandoned, and find out what models/<run_id>.pth holds."""
    state = start.state
    run_dir = paths.run_checkpoints(state.run_id)
    previous = runs.read_record(run_dir)
    record = {**(previous.data if previous is not None else {}), "run_id": state.run_id,
              "model_type": state.model_config.model_type, "status": "running",
              "model_config": state.model_config.to_dict(),
              "train_config": state.train_config.to_dict(), "dataset": dict(state.dataset), "step": state.step,
              "total_steps": state.total_steps}
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    owner = owners.claim(run_dir, record, takeover=takeover, log=log)
    strays = checkpoints.remove_temporaries(run_dir) + remove_temporaries(paths, state.run_id)
    if strays:
        log(f"Removed {strays} temporary file(s) left by an interrupted write of {state.run_id}.")
    if start.kind == "resumed":
        dropped = checkpoints.discard_newer_than(run_dir, state.step)
        if dropped:
            log(f"Removed {', '.join(p.name for p in dropped)}: newer than step {state.step}, "
                "where this run continues.")
    weights_step, pending = _weights_on_disk(paths, start, previous, log)
    keeper = owners.RecordKeeper(paths, run_dir, record, owner, log, heartbeat_s=heartbeat_s)
    return Claimed(state.run_id, owner, keeper, weights_step, pending)


def _weights_on_disk(paths: storage.DatasetPaths, start, previous, log) -> tuple[int | None, dict | None]:
    """(the step the .pth holds, best weights still to write). A resumed run checks rather than
    assumes: a .pth write may have failed before the disconnect."""
    state, checkpoint = start.state, start.checkpoint
    recorded = ((previous.get("weights") or {}) if previous is not None else {}).get("step")
    weights_step = recorded if recorded is not None and paths.best_weights(state.run_id).is_file() else None
    if checkpoint is None or state.best_val_loss is None:
        return weights_step, None
    if "best_model" in checkpoint:  # its .pth write had failed: the weights travelled in the state file
        return weights_step, checkpoint["best_model"]
    if weights_step == state.best_step:
        return weights_step, None
    if state.best_step == state.step:
        best = checkpoint["model"]
    else:
        found = _best_checkpoint_weights(paths.run_checkpoints(state.run_id), state.best_step)
        if found is None:
            log(f"models/{state.run_id}.pth does not hold the best weights (step {state.best_step}) and no checkpoint "
                "has them any more; it will hold the next best.")
            return weights_step, None
        best = found
    log(f"models/{state.run_id}.pth is missing or out of date: "
        f"writing the best weights (step {state.best_step}) again.")
    return weights_step, best


def _best_checkpoint_weights(run_dir, best_step: int) -> dict | None:
    try:
        best = checkpoints.load_state(run_dir / checkpoints.BEST_FILE)
    except Exception:
        return None
    return best["model"] if best.get("step") == best_step else None
