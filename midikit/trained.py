"""A trained run, loaded to play: its model rebuilt from the saved ModelConfig, its weights (read
with weights_only=True), and the tokenizer of the dataset it was trained on.

    run = load_run("latest", paths)   # "latest", a run id, "starter", a .pth, its .json, a .pt or a checkpoint folder

What `--run` names is resolved here (`resolve_run`): "latest" is the newest run of the dataset with
best weights, finished or not, and says which it took.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import STATE_FORMAT, load_latest, load_state
from .errors import CheckpointError, GenerationError, StorageError
from .models import ModelConfig, build_model, resolve_device
from .storage import RUN_ID_PATTERN, DatasetPaths


@dataclass
class LoadedRun:
    model: torch.nn.Module
    model_config: ModelConfig
    tokenizer: object  # miditok tokenizer of the run's dataset
    run_id: str
    paths: DatasetPaths  # the dataset the run was trained on
    sidecar: dict  # the .json sidecar (or the same fields taken from a training-state checkpoint)
    dataset: object  # midikit.data.TokenDataset: special token ids, config, training tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(source: str | Path, paths: DatasetPaths | None = None, model_type: str | None = None, device="auto",
             log=print) -> LoadedRun:
    """Load a trained model with its tokenizer.

    `source` is what `--run` takes: "latest" (the newest run under `paths` with best weights, of
    `model_type` if given, finished or not), a run id of that dataset, "starter" (the model shipped
    with midikit), a best weights `.pth` (its `.json` sidecar beside it), the sidecar itself, a
    training-state `.pt`, or a run's checkpoint folder (its newest valid checkpoint). The model is
    rebuilt from the saved ModelConfig alone; the tokenizer comes from the dataset it was trained on.
    """
    if str(source) == STARTER:
        from .starter import DATASET, load_starter

        # What it plays lands under the user's root, beside their datasets (never inside the package).
        return load_starter(device=device, paths=DatasetPaths(paths.root, DATASET) if paths is not None else None,
                            log=log)
    path = resolve_run(source, paths, model_type, log)
    if path.is_dir() or path.suffix == ".pt":
        sidecar, state_dict = _read_training_state(path, log)
    elif path.suffix in (".pth", ".json"):
        sidecar, state_dict = _read_best_weights(path.with_suffix(".pth"), path.with_suffix(".json"))
    else:
        raise GenerationError(f"Cannot load {path}: expected a .pth (best weights), its .json sidecar "
                              "or a training-state .pt.")
    try:
        model_config = ModelConfig.from_dict(sidecar["model_config"])
    except (KeyError, TypeError) as exc:
        raise GenerationError(f"{path} holds no usable model_config ({exc!r}); it was not written by midikit.") from exc
    dataset = _trained_dataset(path, sidecar, paths, model_config, log)
    model = build_model(model_config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise GenerationError(f"The weights in {path} do not fit the model config saved with them: {exc}") from exc
    model.to(resolve_device(device)).eval()
    return LoadedRun(model, model_config, dataset.tokenizer, str(sidecar.get("run_id", path.stem)), dataset.paths,
                     sidecar, dataset)


STARTER = "starter"  # --run starter: the small model shipped inside the package (midikit.starter)


def resolve_run(source: str | Path, paths: DatasetPaths | None, model_type: str | None = None, log=print) -> Path:
    """The file or folder `--run` names: "latest" is the newest run of the dataset with best weights
    (finished, stopped or still training: said which), a run id is that run's .pth, anything else a path."""
    text = str(source)
    if text == "latest" or (RUN_ID_PATTERN.match(text) and not Path(text).exists()):
        if paths is None:
            raise GenerationError(f"--run {text} names a run of a dataset: pass the dataset (paths=DatasetPaths(root, "
                                  "dataset); --checkpoint_dir and --dataset), or a .pth, .json or .pt file instead.")
        from .runs import describe_progress, playable_runs

        found = playable_runs(paths, model_type)
        if text != "latest":
            found = [record for record in found if record.run_id == text]
        if not found:
            from .data import load_dataset

            load_dataset(paths)  # a dataset that is not there says which preprocess command makes it
            raise GenerationError(_no_run_message(text, paths, model_type))
        record = found[0]
        log(f"{'latest: ' if text == 'latest' else ''}{record.run_id} ({describe_progress(record)})")
        return paths.best_weights(record.run_id)
    path = Path(source).expanduser()
    if not path.exists():
        raise GenerationError(f"Model file {path} does not exist; pass --run latest, a run id, 'starter', or the path "
                              "of a .pth, .json or .pt file.")
    return path


def _no_run_message(text: str, paths: DatasetPaths, model_type: str | None) -> str:
    if text != "latest":
        return (f"No run {text} with best weights in {paths.models}; pass --run latest, another run id of dataset "
                f"{paths.dataset!r}, or the path of a .pth, .json or .pt file.")
    kind = f"{model_type} " if model_type else ""
    return (f"No {kind}run with best weights in {paths.models} yet. Train one first (python -m midikit train --dataset "
            f"{paths.dataset} --model_type {model_type or 'lstm'}; its weights appear at its first checkpoint), pass "
            "--run starter to play the model shipped with midikit, or --run PATH to a .pth or checkpoint.")


def _trained_dataset(path: Path, sidecar: dict, paths: DatasetPaths | None, model_config: ModelConfig, log):
    """The preprocessed dataset a run was trained on (its tokenizer decodes the run's tokens)."""
    run_paths = _run_dataset_paths(path, sidecar, paths)
    from .data import load_dataset  # miditok only where needed: decode() runs on machines without it

    dataset = load_dataset(run_paths)
    if dataset.vocab_size != model_config.vocab_size:
        raise GenerationError(
            f"Run {sidecar.get('run_id')} was trained on a vocabulary of {model_config.vocab_size} tokens, but the "
            f"dataset {run_paths.base} now has {dataset.vocab_size}: it was preprocessed again with other tokenizer "
            "settings. Preprocess it with the run's settings again, or train a new model on this dataset."
        )
    trained_fingerprint = (sidecar.get("dataset") or {}).get("fingerprint")
    if trained_fingerprint and trained_fingerprint != dataset.fingerprint:
        log(f"note: dataset {run_paths.dataset} was preprocessed again since run {sidecar.get('run_id')} trained "
            "(same vocabulary size, so its tokenizer is used).")
    return dataset


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to the user
        raise GenerationError(
            f"Cannot read {path}: the file is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Use another run or checkpoint (for example the run's checkpoints/<run_id>/best.pt)."
        ) from exc


def _read_best_weights(weights: Path, sidecar_path: Path) -> tuple[dict, dict]:
    if not sidecar_path.is_file():
        raise GenerationError(
            f"{weights} has no sidecar {sidecar_path.name} beside it; the sidecar holds the model config needed to "
            "rebuild the model. Copy it next to the .pth, or load the run's training-state checkpoint "
            "(checkpoints/<run_id>/best.pt) instead."
        )
    if not weights.is_file():
        raise GenerationError(f"The sidecar {sidecar_path} has no weights file {weights.name} beside it.")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except ValueError as exc:
        raise GenerationError(f"The sidecar {sidecar_path} is not valid JSON ({exc}); "
                              "it is corrupt or truncated.") from exc
    return sidecar, _torch_load(weights)


def _read_training_state(path: Path, log) -> tuple[dict, dict]:
    try:
        if path.is_dir():
            found = load_latest(path, log=log)
            if found is None:
                raise GenerationError(f"No valid checkpoint in {path}; "
                                      "pass a .pth from the dataset's models/ folder instead.")
            path, state = found
        else:
            state = load_state(path)
    except CheckpointError as exc:
        raise GenerationError(f"Cannot use the checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise GenerationError(f"{path} is not a midikit training-state checkpoint (format {STATE_FORMAT!r} expected).")
    sidecar = {
        "run_id": state.get("run_id"),
        "model_type": state["model_config"].get("model_type"),
        "model_config": state["model_config"],
        "train_config": state.get("train_config"),
        "dataset": state.get("dataset"),
        "metrics": {"best_val_loss": state.get("best_val_loss"), "steps": state.get("step"),
                    "epochs": state.get("epoch")},
        "status": "finished" if state.get("finished") else "running",
        "checkpoint": str(path),
    }
    return sidecar, state["model"]


def _run_dataset_paths(path: Path, sidecar: dict, paths: DatasetPaths | None) -> DatasetPaths:
    """The dataset a run was trained on: the folder its files sit in when that is the standard
    layout (<root>/<dataset>/models/x.pth, <root>/<dataset>/checkpoints/<run>/x.pt) and holds
    preprocessed data, whatever the folder is called now (a copied or renamed dataset); else the
    dataset named in the sidecar under `paths`' root."""
    from .data.store import CONFIG_FILE  # miditok only where needed: decode() runs on machines without it

    name = (sidecar.get("dataset") or {}).get("name")
    path = path.absolute()
    folder = path if path.is_dir() else path.parent
    for dataset_folder in (folder.parent, folder.parent.parent):
        try:
            candidate = DatasetPaths(dataset_folder.parent, dataset_folder.name)
        except StorageError:  # "/" or "..": not a dataset folder
            continue
        in_layout = folder == candidate.models or folder.parent == candidate.checkpoints
        if in_layout and (candidate.data / CONFIG_FILE).is_file():
            return candidate
    if not name:
        raise GenerationError(f"{path} does not say which dataset it was trained on (no dataset.name).")
    if paths is not None:
        return DatasetPaths(paths.root, name)
    raise GenerationError(
        f"{path} is outside a midikit folder layout, so its dataset {name!r} cannot be found; "
        "pass --checkpoint_dir ROOT (the folder that holds the dataset)."
    )
