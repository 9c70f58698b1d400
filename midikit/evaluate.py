"""How good is the music? A run's quality report, in numbers a musician can read.

    report = evaluate.run_report(QualityConfig(dataset="nottingham"))   # the newest finished run
    print(evaluate.format_table(report))

Two views of one run:

* **held-out loss**: cross-entropy on the validation songs (split by file, never transposed), in
  nats per token and per note (a song's summed loss over its notes, so runs with different
  tokenizations compare), with their perplexities. Every token is predicted the way generation
  sees it: an RNN carries its state through the whole song; a Transformer sees windows of its
  context that slide by `1 - SLIDE_KEEP` of it, so each token has between SLIDE_KEEP and all of the
  context before it, as when generation's window slides.
* **pieces**: `pieces` pieces sampled from BOS until the model emits EOS, capped at `max_tokens`,
  measured with `midikit.metrics` against the training data: data mean, generated mean,
  relative difference and a one-line verdict per metric (`BANDS`); plus the share of pieces
  without notes, miditok's token-error rate and the share of pieces that ended with EOS (nothing is
  trimmed: a piece that ran into the cap did not end).

`run_report` saves the report beside the run (`outputs/quality/<run_id>.json` and `.png`) and
puts its headline numbers into the run's run.json (`runs.annotate`, finished runs only).
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import configs, runs
from .configs import QualityConfig
from .errors import DatasetError
from .generate import SLIDE_KEEP, generate
from .metrics import METRICS, dataset_metrics, midi_metrics, summarize_metrics
from .storage import DatasetPaths, atomic_write_bytes, atomic_write_text, explain_os_error, resolve_root
from .threads import threads_for
from .trained import LoadedRun, load_run


@dataclass(frozen=True)
class Band:
    """How far a generated mean may sit from the data's and still count as close."""

    tolerance: float
    relative: bool  # a share of the data's mean; else absolute (for rates, in points)
    lower: str  # what a generated mean below the band means, in words
    higher: str  # ... and above it


BANDS = {
    "num_notes": Band(0.25, True, "shorter pieces (fewer notes)", "longer pieces (more notes)"),
    "duration": Band(0.25, True, "shorter pieces", "longer pieces"),
    "pitch_range": Band(0.10, True, "a narrower pitch range", "a wider pitch range (stray high or low notes)"),
    "polyphony": Band(0.10, True, "fewer notes at once (thin or missing chords)",
                      "more notes at once (crowded chords)"),
    "note_density": Band(0.10, True, "fewer notes per second (sparse)", "more notes per second (busy)"),
    "pitch_class_entropy": Band(0.10, True, "fewer pitch classes (repetitive)",
                                "pitch classes more spread out (off-key notes)"),
    "scale_consistency": Band(0.03, True, "more notes outside the key", "more strictly in one key than the data"),
    "empty_beat_rate": Band(0.02, False, "fewer silent beats", "more silent beats (gaps in the music)"),
}
MAX_TOKEN_ERRORS = 0.01  # miditok's token-error rate of the pieces, at most
MIN_EOS_SHARE = 15 / 16  # share of pieces that end with EOS, at least
REPORT_FORMAT = "midikit-quality-report"


@dataclass
class QualityReport:
    run_id: str
    model_type: str
    dataset: str
    config: dict  # the QualityConfig
    heldout: dict  # nats_per_token, nats_per_note, perplexity, perplexity_per_note, songs, tokens, notes, per_song
    data: dict  # evaluate.summarize_metrics of the training pieces
    generated: dict  # ... of the generated pieces
    pieces: list[dict]  # per piece: tokens, ended, notes, token_errors
    comparison: list[dict]  # per metric: metric, data, generated, difference, band, ok, verdict
    health: list[dict]  # pieces without notes, token errors, EOS endings: value, target, ok, verdict
    seconds: dict  # heldout, generation, metrics, total
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))
    files: dict = field(default_factory=dict)  # json, png (when saved)
    scores: list = field(default_factory=list, repr=False)  # symusic.Score per piece (not saved)

    def to_dict(self) -> dict:
        data = asdict(replace(self, scores=[]))
        data.pop("scores")
        return {"format": REPORT_FORMAT, **data}

    def headline(self) -> dict:
        """The numbers that go into the run's run.json (`quality`)."""
        health = {row["check"]: row["value"] for row in self.health}
        return {
            "val_nats_per_token": self.heldout["nats_per_token"], "val_nats_per_note": self.heldout["nats_per_note"],
            "val_perplexity": self.heldout["perplexity"], "pieces": len(self.pieces),
            "eos_share": health["ended with EOS"], "empty_share": health["pieces without notes"],
            "token_error_rate": health["token errors"],
            "metrics_in_band": f"{sum(row['ok'] for row in self.comparison)}/{len(self.comparison)}",
            "report": self.files.get("json"), "created": self.created,
        }


# --------------------------------------------------------------------------- held-out loss


@torch.no_grad()
def song_losses(model: torch.nn.Module, songs: list[np.ndarray], window: int | None, rolling: bool = False,
                batch_tokens: int = 16384) -> list[np.ndarray]:
    """Per song, the cross-entropy (nats) of each of its tokens after the first, given those before it.

    window None: the whole song in one pass (an RNN carries its state through it). `rolling` (a RoPE
    Transformer, whose generation rolls its cache on): every token sees the `window` tokens before
    it, computed in chunks with `model(x, window=window)`. Else (learned positions, whose generation
    re-primes): windows of `window` tokens, each starting `window - int(window * SLIDE_KEEP)` tokens
    after the previous one and scoring only the targets the previous window did not reach."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if window is None:
        pieces = [(index, 0, len(song) - 1, 0) for index, song in enumerate(songs)]
    else:
        cut = _rolling if rolling else _windows
        pieces = [(index, *segment) for index, song in enumerate(songs) for segment in cut(len(song) - 1, window)]
    pieces.sort(key=lambda piece: piece[2] - piece[1], reverse=True)  # similar lengths share a batch
    scored = [[] for _ in songs]
    for batch in _batches(pieces, batch_tokens):
        length = max(end - start for _, start, end, _ in batch)
        tokens = torch.zeros(len(batch), length + 1, dtype=torch.long)
        for row, (index, start, end, _) in enumerate(batch):
            tokens[row, : end - start + 1] = torch.from_numpy(np.asarray(songs[index][start : end + 1], dtype=np.int64))
        tokens = tokens.to(device)
        clock = {}
        # Each row starts `start` tokens into its song; a model without a config (bench's original-project
        # model) has no clock.
        if getattr(getattr(model, "config", None), "song_clock", False):
            starts = torch.tensor([start for _, start, _, _ in batch], device=device)
            clock = {"song_positions": starts[:, None] + torch.arange(length, device=device)}
        logits = (model(tokens[:, :-1], window=window, **clock) if rolling else model(tokens[:, :-1], **clock)).float()
        nats = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                               reduction="none").view(len(batch), -1).cpu()
        for row, (index, start, end, skip) in enumerate(batch):
            scored[index].append((start + skip, nats[row, skip : end - start].numpy()))
    model.train(was_training)
    return [np.concatenate([values for _, values in sorted(parts, key=lambda part: part[0])]) for parts in scored]


def _batches(pieces: list[tuple], batch_tokens: int):
    """Consecutive pieces (longest first) in batches of about `batch_tokens` padded tokens."""
    first = 0
    while first < len(pieces):
        length = pieces[first][2] - pieces[first][1]
        size = max(1, batch_tokens // max(length, 1))
        yield pieces[first : first + size]
        first += size


def _windows(targets: int, window: int) -> list[tuple[int, int, int]]:
    """(start, end, skip) per window over a song of `targets` targets: input tokens start..end-1
    predict targets start+1..end, of which the first `skip` were scored by an earlier window."""
    if targets <= window:
        return [(0, targets, 0)]
    stride = max(1, window - int(window * SLIDE_KEEP))
    ends = list(range(window, targets, stride)) + [targets]
    return [(0, window, 0)] + [(end - window, end, window - (end - previous)) for previous, end in zip(ends, ends[1:])]


def _rolling(targets: int, window: int) -> list[tuple[int, int, int]]:
    """(start, end, skip) per chunk of targets for a rolling window: each chunk's input reaches back
    `window - 1` tokens before its first query, so every query sees its `window` tokens."""
    step = max(256, window)  # the inputs are at most twice the window: the overlap costs at most as much again
    return [(max(0, first - window + 1), min(first + step, targets), first - max(0, first - window + 1))
            for first in range(0, targets, step)]


def heldout_loss(model: torch.nn.Module, dataset, max_songs: int | None = None,
                 window: int | None | str = "auto") -> dict:
    """Held-out loss of a model on a dataset's validation songs (`max_songs` of them, spread over
    the split, or all). window "auto": the model's own way (a Transformer's context, an RNN's whole song)."""
    from .data import tokens_to_score

    count = dataset.num_sequences("val")
    if count == 0:
        raise DatasetError(f"Dataset {dataset.name} has no validation songs to measure a held-out loss on.")
    chosen = np.unique(np.linspace(0, count - 1, min(max_songs or count, count)).round().astype(int))
    songs = [np.asarray(dataset.sequence("val", int(i))) for i in chosen]
    rolling = getattr(model.config, "positions", "learned") == "rope"
    if window == "auto":
        window = model.config.context_length if model.config.model_type == "transformer" else None
    nats = song_losses(model, songs, window, rolling=rolling and window is not None)
    notes = [tokens_to_score(dataset.tokenizer, song).note_num() for song in songs]
    return summarize_losses(nats, notes)


def summarize_losses(nats: list[np.ndarray], notes: list[int]) -> dict:
    """Nats per token and per note (the sum over the songs divided by their tokens, their notes)."""
    total, tokens, total_notes = float(sum(n.sum() for n in nats)), int(sum(len(n) for n in nats)), int(sum(notes))
    per_token = total / tokens if tokens else float("nan")
    per_note = total / total_notes if total_notes else float("nan")
    # Every stored song ends with EOS: its last target says how surely the model ends a tune where it ends.
    ends = [float(n[-1]) for n in nats if len(n)]
    return {
        "nats_per_token": per_token, "nats_per_note": per_note, "perplexity": _exp(per_token),
        "perplexity_per_note": _exp(per_note), "end_nats": float(np.mean(ends)) if ends else float("nan"),
        "songs": len(nats), "tokens": tokens, "notes": total_notes,
        "per_song": [{"tokens": len(n), "notes": int(k), "nats": float(n.sum())} for n, k in zip(nats, notes)],
    }


def _exp(value: float) -> float:
    return math.exp(value) if math.isfinite(value) and value < 700 else float("inf")


# --------------------------------------------------------------------------- verdicts


def compare(data_means: dict, generated_means: dict, bands: dict = BANDS) -> list[dict]:
    """Per metric: the data's and the pieces' means, their difference and a one-line verdict."""
    rows = []
    for metric in METRICS:
        data, generated, band = float(data_means[metric]), float(generated_means[metric]), bands[metric]
        relative = band.relative and data != 0
        difference = (generated - data) / abs(data) if relative else generated - data
        ok = abs(difference) <= band.tolerance + 1e-12
        shown = f"{difference:+.1%}" if relative else f"{difference * 100:+.1f} points"
        limit = f"±{band.tolerance:.0%}" if band.relative else f"±{band.tolerance * 100:g} points"
        if ok:
            verdict = f"✓ close to the data ({shown}, band {limit})"
        else:
            verdict = f"✗ {band.higher if difference > 0 else band.lower}: {shown} (band {limit})"
        rows.append({"metric": metric, "data": data, "generated": generated, "difference": difference,
                     "relative": relative, "band": limit, "ok": ok, "verdict": verdict})
    return rows


def health_rows(pieces: list[dict]) -> list[dict]:
    """Whether the pieces are music at all: notes, valid token successions, a clean ending (EOS)."""
    count = len(pieces)
    empty = sum(piece["notes"] == 0 for piece in pieces)
    tokens = sum(piece["tokens"] for piece in pieces)
    errors = sum(piece["token_errors"] * piece["tokens"] for piece in pieces) / tokens if tokens else 0.0
    ended = sum(piece["ended"] for piece in pieces)
    checks = [
        ("pieces without notes", empty / count, f"{empty}/{count}", "none", empty == 0),
        ("token errors", errors, f"{errors:.2%}", f"below {MAX_TOKEN_ERRORS:.0%}", errors < MAX_TOKEN_ERRORS),
        ("ended with EOS", ended / count, f"{ended}/{count}", f"at least {MIN_EOS_SHARE:.0%}",
         ended / count >= MIN_EOS_SHARE),
    ]
    return [{"check": name, "value": value, "shown": shown, "target": target, "ok": ok,
             "verdict": ("✓ " if ok else "✗ ") + shown + ("" if ok else f" (target: {target})")}
            for name, value, shown, target, ok in checks]


# --------------------------------------------------------------------------- the report


def run_report(config: QualityConfig, run: LoadedRun | None = None, log=print) -> QualityReport:
    """The quality report of a run (config.run, or `run` already loaded), saved unless config.save is False."""
    config = replace(config).validate()
    config.sample_config()  # a bad sampling value fails before anything is loaded
    if run is None:
        paths = DatasetPaths(resolve_root(config.checkpoint_dir, create=False), config.dataset)
        run = load_run(config.run, paths, model_type=config.model_type, device=config.device, log=log)
    report = build_report(run, config)
    if config.save:
        save_report(report, run.paths, log)
    return report


def build_report(run: LoadedRun, config: QualityConfig) -> QualityReport:
    """Measure a loaded run: held-out loss, then `config.pieces` pieces against the training data."""
    started = time.perf_counter()
    with threads_for(run.model):
        heldout = heldout_loss(run.model, run.dataset, max_songs=config.val_songs)
        generated_at = time.perf_counter()
        result = generate(run, config.sample_config(), save=False, progress=False)
    measured_at = time.perf_counter()
    pieces = [{"tokens": len(tokens), "ended": bool(ended), "notes": int(score.note_num()),
               "token_errors": float(errors)}
              for tokens, ended, score, errors in zip(result.tokens, result.ended, result.scores,
                                                      result.invalid_token_share)]
    generated = summarize_metrics([midi_metrics(score) for score in result.scores])
    data = dataset_metrics(run.dataset, max_files=config.data_pieces)
    finished = time.perf_counter()
    seconds = {"heldout": generated_at - started, "generation": measured_at - generated_at,
               "metrics": finished - measured_at, "total": finished - started}
    return QualityReport(
        run.run_id, run.model_config.model_type, run.paths.dataset, asdict(config), heldout, data, generated, pieces,
        compare(data["mean"], generated["mean"]), health_rows(pieces), seconds, scores=result.scores,
    )


def save_report(report: QualityReport, paths: DatasetPaths, log=print) -> None:
    """outputs/quality/<run_id>.json and .png, and the headline numbers in the run's run.json."""
    json_path, png_path = paths.quality_report(report.run_id), paths.quality_report(report.run_id, ".png")
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain_os_error(exc, json_path.parent) from exc
    report.files = {"json": str(json_path), "png": str(png_path)}
    buffer = io.BytesIO()
    plot_report(report).savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(png_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(_finite(report.to_dict()), indent=1, allow_nan=False) + "\n")
    record = runs.read_record(paths.run_checkpoints(report.run_id))
    if record is not None and record.done:
        runs.annotate(record.path, quality=_finite(report.headline()))
    else:
        status = record.status if record is not None else "not in the registry"
        log(f"note: run {report.run_id} has not ended ({status}): the report is saved, and its run.json gets these "
            "numbers when it is evaluated after it has finished.")


def _finite(value):
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def load_report(path: str | Path) -> dict:
    """A saved report (the JSON) as a dict."""
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- showing it


def describe_sampling(config: dict) -> str:
    """How a report's pieces were sampled (`config`: its QualityConfig as a dict)."""
    return configs.describe_sampling(config["strategy"], config["p"], config["k"], config["temperature"])


def format_table(report: QualityReport) -> str:
    """The report as plain text: the held-out loss, the metrics table, the pieces' health."""
    h, c = report.heldout, report.config
    lines = [
        f"run {report.run_id} ({report.model_type}) on {report.dataset}",
        f"held-out loss on {h['songs']} validation songs ({h['tokens']:,} tokens, {h['notes']:,} notes): "
        f"{h['nats_per_token']:.4f} nats/token (perplexity {h['perplexity']:.2f}), {h['nats_per_note']:.3f} nats/note",
        f"{len(report.pieces)} pieces ({describe_sampling(c)}, seed {c['seed']}, "
        f"at most {c['max_tokens']} tokens) against {report.data['count']} training pieces; "
        f"{report.seconds['total']:.1f} s",
        "",
    ]
    header = ("metric", "data", "generated", "difference", "verdict")
    rows = [(row["metric"], f"{row['data']:.3f}", f"{row['generated']:.3f}",
             f"{row['difference']:+.1%}" if row["relative"] else f"{row['difference'] * 100:+.1f} pt", row["verdict"])
            for row in report.comparison]
    rows += [(row["check"], "", row["shown"], "", row["verdict"]) for row in report.health]
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    return "\n".join(lines)


def plot_report(report: QualityReport, fig=None):
    """Generated vs training pieces per metric: each piece a dot, the data's band shaded. Returns the Figure."""
    from matplotlib.figure import Figure

    fig = fig or Figure(figsize=(14, 6.5))
    axes = fig.subplots(2, 4).ravel()
    rng = np.random.default_rng(0)
    for ax, row in zip(axes, report.comparison):
        metric = row["metric"]
        for y, (label, values, color) in enumerate((("generated", report.generated["values"][metric], "C1"),
                                                    ("data", report.data["values"][metric], "C0"))):
            values = np.asarray(values, dtype=float)
            ax.scatter(values, y + rng.uniform(-0.18, 0.18, len(values)), s=12, alpha=0.6, color=color)
            if len(values):
                ax.plot([values.mean()] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
        tolerance = BANDS[metric].tolerance * (abs(row["data"]) if row["relative"] else 1.0)
        upper = 1.0 if metric in ("scale_consistency", "empty_beat_rate") else math.inf  # shares
        ax.axvspan(max(0.0, row["data"] - tolerance), min(upper, row["data"] + tolerance), color="#2da44e",
                   alpha=0.15, lw=0)
        ax.set_yticks([0, 1], ["generated", "data"])
        ax.set_ylim(-0.6, 1.6)
        ax.set_title(f"{'✓' if row['ok'] else '✗'} {metric}", color="#1a7f37" if row["ok"] else "#cf222e", fontsize=10)
    h = report.heldout
    ended = sum(piece["ended"] for piece in report.pieces)
    fig.suptitle(f"{report.run_id}: {len(report.pieces)} pieces vs {report.data['count']} training pieces · held-out "
                 f"{h['nats_per_token']:.3f} nats/token, {h['nats_per_note']:.2f} nats/note · "
                 f"{ended}/{len(report.pieces)} ended with EOS\n(dots: pieces; bars: means; green: the band around "
                 "the data's mean)", fontsize=10)
    fig.tight_layout()
    return fig
