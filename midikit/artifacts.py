"""The seed's per-run artifacts, written at the end of a run and refreshed at each checkpoint,
so a disconnect still leaves them on Drive:

* ``models/<run_id>.pth`` best weights (a plain state_dict) + ``models/<run_id>.json`` sidecar;
* ``outputs/plots/loss_curve_<run_id>.png``;
* ``logs/models.csv`` (one row per run), ``logs/training_summary_<run_id>.txt``,
  ``logs/train_losses_<run_id>.npy`` and ``logs/val_losses_<run_id>.npy``.

Every path comes from `storage.DatasetPaths`; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .storage import DatasetPaths, atomic_write_bytes, atomic_write_text

# models.csv columns, in order. New columns go at the end so old files keep lining up.
CSV_FIELDS = [
    "run_id", "model_type", "status", "dataset", "preset", "parameters",
    "vocab_size", "context_length", "embed_size", "hidden_size", "num_layers", "dropout",
    "d_model", "nhead", "dim_feedforward",
    "epochs", "batch_size", "lr", "weight_decay", "max_steps", "seed", "device", "precision",
    "steps", "epochs_done", "tokens_seen", "best_val_loss", "best_step", "final_train_loss",
    "elapsed_seconds", "weights", "updated",
]
_RNN_ONLY = ("embed_size", "hidden_size")
_TRANSFORMER_ONLY = ("d_model", "nhead", "dim_feedforward")


def write_run_artifacts(
    paths: DatasetPaths,
    run_id: str,
    model_config: dict,
    train_config: dict,
    dataset_info: dict,
    history: dict,
    metrics: dict,
    status: str,
    best_weights: dict | None = None,
    checkpoints_dir: Path | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write (or refresh) every artifact of one run; returns their paths by name.

    `status` is the run's state for the sidecar ("running" or "finished"); `metrics` holds the
    sidecar's metrics plus optional "stop_reason" for the CSV and summary. `best_weights` (a
    state_dict) is written to the .pth only when given, so an unchanged best is not rewritten.
    """
    artifacts = {
        "weights": paths.best_weights(run_id),
        "sidecar": paths.weights_sidecar(run_id),
        "plot": paths.loss_plot(run_id),
        "summary": paths.training_summary(run_id),
        "csv": paths.models_csv,
        "train_losses": paths.train_losses(run_id),
        "val_losses": paths.val_losses(run_id),
    }
    if checkpoints_dir is not None:
        artifacts["checkpoints"] = Path(checkpoints_dir)
    paths.ensure()

    if best_weights is not None:
        buffer = io.BytesIO()
        torch.save(best_weights, buffer)
        atomic_write_bytes(artifacts["weights"], buffer.getvalue())

    # A diverged run (NaN/inf loss) still gets its artifacts: non-finite numbers become null.
    metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
    sidecar_metrics = {k: v for k, v in metrics.items() if k != "stop_reason"}
    sidecar = {
        "run_id": run_id,
        "model_type": model_config["model_type"],
        "model_config": model_config,
        "train_config": train_config,
        "dataset": dataset_info,
        "metrics": sidecar_metrics,
        "status": status,
        "midikit_version": __version__,
    }
    atomic_write_text(artifacts["sidecar"], json.dumps(sidecar, indent=2, allow_nan=False) + "\n")

    atomic_write_bytes(artifacts["train_losses"], _npy_bytes(history["train_loss"]))
    atomic_write_bytes(artifacts["val_losses"], _npy_bytes(history["val_loss"]))
    if plot:
        plot_losses(history, artifacts["plot"], title=run_id)
    _update_models_csv(paths, _csv_row(run_id, model_config, train_config, dataset_info, metrics, status, artifacts))
    atomic_write_text(artifacts["summary"], _summary_text(run_id, model_config, train_config, dataset_info, metrics, status, artifacts))
    return artifacts


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_models_csv(paths: DatasetPaths) -> list[dict]:
    """Rows of logs/models.csv as dicts of strings (empty list when there is none yet)."""
    if not paths.models_csv.is_file():
        return []
    with open(paths.models_csv, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_losses(history: dict, path: Path | None = None, ax=None, title: str | None = None):
    """Train loss per step and validation loss per evaluation on one axis.

    With `ax`, draws there (live plots in a notebook); otherwise on a new figure, saved to
    `path` at 150 dpi when given. Returns the figure.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any backend

    fig = ax.figure if ax is not None else Figure(figsize=(8, 4.5), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    ax.clear()
    if history["train_loss"]:
        ax.plot(history["train_step"], history["train_loss"], lw=0.8, alpha=0.6, label="train")
    if history["val_loss"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if history["train_loss"] or history["val_loss"]:
        ax.legend()
    if path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=150)
        atomic_write_bytes(Path(path), buffer.getvalue())
    return fig


def _npy_bytes(values) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.float64), allow_pickle=False)
    return buffer.getvalue()


def _csv_row(run_id, model_config, train_config, dataset_info, metrics, status, artifacts) -> dict:
    row = {name: model_config.get(name, "") for name in CSV_FIELDS if name in model_config}
    unused = _TRANSFORMER_ONLY if model_config["model_type"] != "transformer" else _RNN_ONLY
    row.update({name: "" for name in unused})  # columns that do not apply stay empty
    row.update({name: train_config.get(name, "") for name in ("epochs", "batch_size", "lr", "weight_decay", "max_steps", "seed", "device", "precision", "preset")})
    row.update(
        run_id=run_id,
        status=metrics.get("stop_reason") or status,
        dataset=dataset_info["name"],
        parameters=metrics["parameters"],
        steps=metrics["steps"],
        epochs_done=metrics["epochs"],
        tokens_seen=metrics["tokens_seen"],
        best_val_loss=_fmt(metrics["best_val_loss"]),
        best_step=metrics["best_step"],
        final_train_loss=_fmt(metrics["final_train_loss"]),
        elapsed_seconds=f"{metrics['elapsed_seconds']:.1f}",
        weights=str(artifacts["weights"]),
        updated=datetime.now().isoformat(timespec="seconds"),
    )
    return {name: ("" if row.get(name) is None else row.get(name, "")) for name in CSV_FIELDS}


def _update_models_csv(paths: DatasetPaths, row: dict) -> None:
    """Replace this run's row (or append it), keeping every other row, in one atomic write."""
    rows = [r for r in read_models_csv(paths) if r.get("run_id") != row["run_id"]]
    rows.append(row)
    rows.sort(key=lambda r: r.get("run_id", ""))  # run ids carry their start time
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths.models_csv, buffer.getvalue())


def _summary_text(run_id, model_config, train_config, dataset_info, metrics, status, artifacts) -> str:
    def block(title: str, values: dict) -> list[str]:
        width = max(len(k) for k in values) if values else 0
        return [title, "-" * len(title)] + [f"  {k:<{width}}  {v}" for k, v in values.items()] + [""]

    results = dict(metrics)
    results["status"] = metrics.get("stop_reason") or status
    for key in ("best_val_loss", "final_train_loss"):
        results[key] = _fmt(results[key])
    lines = [f"midikit training summary: {run_id}", f"updated {datetime.now().isoformat(timespec='seconds')}", ""]
    lines += block("Dataset", dataset_info)
    lines += block("Model config", model_config)
    lines += block("Training config", train_config)
    lines += block("Results", results)
    lines += block("Artifacts", {name: str(path) for name, path in artifacts.items()})
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6f}"
