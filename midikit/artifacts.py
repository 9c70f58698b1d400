"""The original project's per-run artifacts, refreshed at every checkpoint so a disconnect still leaves them on Drive:

* ``models/<run_id>.pth`` best weights (a plain state_dict) + ``models/<run_id>.json`` sidecar;
* ``outputs/plots/loss_curve_<run_id>.png``;
* ``logs/training_summary_<run_id>.txt``, ``logs/train_losses_<run_id>.npy``, ``logs/val_losses_<run_id>.npy``;
* ``logs/models.csv`` is derived from the run registry (`midikit.models_csv.rebuild_models_csv`).

Every path comes from `storage.DatasetPaths`; every file is written atomically. Written on the
checkpoint writer's thread from a `RunReport`, an immutable summary the training thread hands over.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__
from .storage import DatasetPaths, atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class RunReport:
    """What a run's artifacts and its registry record say about it at one save."""

    run_id: str
    status: str  # running | finished | early_stopped | max_steps | interrupted | failed | taken_over
    model_config: dict
    train_config: dict
    dataset: dict
    # steps, epochs, total_steps, tokens_seen, elapsed_seconds, parameters, best_val_loss, best_step, final_train_loss
    metrics: dict
    history: dict = field(default_factory=dict)  # plain lists (LossHistory.as_lists)
    weights_step: int | None = None  # the step whose weights models/<run_id>.pth holds

    def record_fields(self) -> dict:
        """The fields of the run's run.json (midikit.runs) that this report sets."""
        m = {k: finite_or_none(v) for k, v in self.metrics.items()}
        return {
            "run_id": self.run_id, "model_type": self.model_config["model_type"], "status": self.status,
            "model_config": self.model_config, "train_config": self.train_config, "dataset": self.dataset,
            "step": m["steps"], "epoch": m["epochs"], "total_steps": m["total_steps"], "tokens_seen": m["tokens_seen"],
            "elapsed_seconds": m["elapsed_seconds"], "parameters": m["parameters"], "best_val_loss": m["best_val_loss"],
            "best_step": m["best_step"], "final_train_loss": m["final_train_loss"],
            "weights": None if self.weights_step is None else {"file": f"{self.run_id}.pth", "step": self.weights_step},
        }


def remove_temporaries(paths: DatasetPaths, run_id: str) -> int:
    """Delete what interrupted writes of this run's artifacts left behind (hidden `.*.tmp-*` files in
    models/, logs/ and outputs/plots/). Only the run's one writer calls this, when no artifact write
    of its own is live: at its start, and after its final save."""
    from .checkpoints import remove_file

    strays = []
    for folder in (paths.models, paths.logs, paths.plots):
        if folder.is_dir():
            strays += [p for p in folder.glob(".*.tmp-*") if run_id in p.name]
    for stray in strays:
        try:
            remove_file(stray)
        except OSError:
            pass
    return len(strays)


def finite_or_none(value):
    """A diverged run (NaN/inf loss) still gets its artifacts: non-finite numbers become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_weights(paths: DatasetPaths, run_id: str, weights: dict, abandoned=None) -> Path:
    """models/<run_id>.pth: a plain state_dict (the original project's `torch.load` snippet reads it), streamed
    to disk and installed atomically; the replaced file is emptied (Drive's trash)."""
    import torch

    from .checkpoints import write_atomically

    path = paths.best_weights(run_id)
    write_atomically(path, lambda handle: torch.save(weights, handle), abandoned)
    return path


def artifact_paths(paths: DatasetPaths, run_id: str) -> dict[str, Path]:
    """Where each artifact of a run lives, by name."""
    return {
        "weights": paths.best_weights(run_id), "sidecar": paths.weights_sidecar(run_id),
        "plot": paths.loss_plot(run_id), "summary": paths.training_summary(run_id), "csv": paths.models_csv,
        "train_losses": paths.train_losses(run_id),
        "val_losses": paths.val_losses(run_id), "checkpoints": paths.run_checkpoints(run_id),
    }


def write_run_artifacts(paths: DatasetPaths, report: RunReport, plot: bool = True) -> dict[str, Path]:
    """Write (or refresh) the sidecar, loss arrays, loss plot and summary of one run; returns every
    artifact's path by name (the .pth and models.csv included)."""
    run_id = report.run_id
    artifacts = artifact_paths(paths, run_id)  # the folders exist since the run started: never made again here
    metrics = {k: finite_or_none(v) for k, v in report.metrics.items()}
    sidecar = {
        "run_id": run_id, "model_type": report.model_config["model_type"], "model_config": report.model_config,
        "train_config": report.train_config, "dataset": report.dataset, "metrics": metrics,
        "status": report.status, "weights_step": report.weights_step, "midikit_version": __version__,
    }
    atomic_write_text(artifacts["sidecar"], json.dumps(sidecar, indent=2, allow_nan=False) + "\n")
    history = report.history
    atomic_write_bytes(artifacts["train_losses"], _npy_bytes(history.get("train_loss", [])))
    atomic_write_bytes(artifacts["val_losses"], _npy_bytes(history.get("val_loss", [])))
    if plot:
        plot_losses(history, artifacts["plot"], title=run_id)
    atomic_write_text(artifacts["summary"], _summary_text(report, metrics, artifacts))
    return artifacts


def plot_losses(history: dict, path: Path | None = None, ax=None, title: str | None = None):
    """Train loss per step and validation loss per evaluation on one axis.

    With `ax`, draws there (live plots in a notebook); otherwise on a new figure, saved to
    `path` at 150 dpi when given. Returns the figure.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any backend

    fig = ax.figure if ax is not None else Figure(figsize=(8, 4.5), layout="constrained")
    ax = ax if ax is not None else fig.add_subplot()
    ax.clear()
    train_loss = np.asarray(history.get("train_loss", []), dtype=np.float64)
    val_loss = list(history.get("val_loss", []))
    if len(train_loss):
        ax.plot(np.arange(1, len(train_loss) + 1), train_loss, lw=0.8, alpha=0.6, label="train")
    if val_loss:
        ax.plot(history["val_step"], val_loss, "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if len(train_loss) or val_loss:
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


def _summary_text(report: RunReport, metrics: dict, artifacts: dict) -> str:
    def block(title: str, values: dict) -> list[str]:
        width = max(len(k) for k in values) if values else 0
        return [title, "-" * len(title)] + [f"  {k:<{width}}  {v}" for k, v in values.items()] + [""]

    results = {"status": report.status, **metrics, "weights_step": report.weights_step}
    for key in ("best_val_loss", "final_train_loss"):
        results[key] = "" if results.get(key) is None else f"{results[key]:.6f}"
    lines = [f"midikit training summary: {report.run_id}",
             f"updated {datetime.now().isoformat(timespec='seconds')}", ""]
    lines += block("Dataset", report.dataset)
    lines += block("Model config", report.model_config)
    lines += block("Training config", report.train_config)
    lines += block("Results", results)
    lines += block("Artifacts", {name: str(path) for name, path in artifacts.items()})
    return "\n".join(lines)
