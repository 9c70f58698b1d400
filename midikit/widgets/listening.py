"""What notebook 07 (and 06's report) shows of generated music: piano rolls, audio, the pieces'
metrics against the dataset, the quality report, and one zip of the pieces to download.
Displays only read; nothing here trains or generates."""

from __future__ import annotations

import base64
import html
import io
import zipfile
from pathlib import Path

from IPython.display import HTML, Audio, display

from .. import audio, metrics, presets, storage
from ..errors import DatasetError, StorageError
from .displays import _figure, _png, html_table

__all__ = ["show_generation", "download_all", "CPU_QUALITY_PIECES", "quality_config", "show_quality"]

# The quality report on a CPU (a laptop, CI): fewer pieces, so a notebook stays quick; each is sampled as
# everywhere else (the generation defaults, cap included).
CPU_QUALITY_PIECES = 4


def show_generation(result, paths: storage.DatasetPaths | None, max_dataset_files: int = 50) -> None:
    """Per generated piece a piano roll and an audio player; then their metrics next to the dataset's
    (when the run's dataset is at hand), and the seed that makes the same pieces again."""
    for path, score in zip(result.midi_paths, result.scores):
        if score.note_num() == 0:  # the model ended the piece at once: nothing to draw or play
            print(f"{path.name}: no notes (the model ended the piece at its first token)")
            continue
        fig, ax = _figure(10, 3)
        metrics.plot_piano_roll(path, ax=ax, title=path.name)
        display(_png(fig))
        sound, rate = audio.render_audio(path)
        display(Audio(sound, rate=rate))
    generated = {f"sample {i}": metrics.midi_metrics(path) for i, path in enumerate(result.midi_paths)}
    try:
        real = metrics.dataset_metrics(paths, max_files=max_dataset_files) if paths is not None else None
    except (DatasetError, StorageError) as exc:
        real = None
        print(f"(no comparison with the training data: {exc})")
    display(html_table([
        {"metric": name, **{label: values[name] for label, values in generated.items()},
         **({f"dataset ({real['count']} pieces)": f"{real['mean'][name]:.3g} ± {real['std'][name]:.2g}"}
            if real else {})}
        for name in metrics.METRICS
    ]))
    print(f"seed {result.seed}: type it into the form's seed to make these pieces again.")


def download_all(paths: list[Path], name: str | None = None) -> Path | None:
    """All the pieces as one zip: Colab's download in Colab (it copes with a few files at a time, one zip
    always), a download link elsewhere. Returns the zip's path on this runtime's disk."""
    paths = [Path(path) for path in paths]
    if not paths:
        print("No piece to download.")
        return None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, arcname=path.name)
    name = name or f"{paths[0].stem.rsplit('_sample', 1)[0]}.zip"
    target = paths[0].parent / name
    storage.atomic_write_bytes(target, buffer.getvalue())
    if storage.in_colab():
        from google.colab import files  # only importable inside Colab

        files.download(str(target))
    else:  # the zip travels inside the link: it works wherever the page is served from
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        display(HTML(f'<a download="{html.escape(name)}" href="data:application/zip;base64,{data}">'
                     f"Download {len(paths)} MIDI file(s) as {html.escape(name)}</a>"))
    print(f"{len(paths)} piece(s) in {target}")
    return target


def quality_config(paths: storage.DatasetPaths, run="latest"):
    """The QualityConfig of a run of the dataset (its id, a weights path, "latest" or "starter"): the
    package's defaults with a GPU, fewer pieces on a CPU."""
    from ..configs import QualityConfig

    on_cpu = presets.preset_for_hardware() == "cpu"
    sizes = dict(pieces=CPU_QUALITY_PIECES) if on_cpu else {}
    return QualityConfig(run=str(run), dataset=paths.dataset, checkpoint_dir=str(paths.root), **sizes).validate()


def show_quality(report) -> None:
    """A quality report (midikit.evaluate): its held-out loss, the metrics table against the data, the
    pieces' health and the figure of generated vs data distributions."""
    from .. import evaluate

    h = report.heldout
    print(f"{report.run_id}: held-out loss {h['nats_per_token']:.4f} nats/token (perplexity {h['perplexity']:.2f}), "
          f"{h['nats_per_note']:.3f} nats/note on {h['songs']} validation songs")
    print(f"{len(report.pieces)} pieces of at most {report.config['max_tokens']} tokens against "
          f"{report.data['count']} training pieces ({report.seconds['total']:.0f} s)")
    display(html_table([{"metric": row["metric"], "data mean": row["data"], "generated mean": row["generated"],
                         "difference": (f"{row['difference']:+.1%}" if row["relative"]
                                        else f"{row['difference'] * 100:+.1f} pt"),
                         "verdict": row["verdict"]} for row in report.comparison]))
    display(html_table([{"check": row["check"], "value": row["shown"], "target": row["target"],
                         "verdict": row["verdict"]} for row in report.health]))
    display(_png(evaluate.plot_report(report)))
    if report.files:
        print("saved: " + ", ".join(str(path) for path in report.files.values()))
