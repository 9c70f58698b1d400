"""The quality report on a briefly trained run of the real tiny dataset: its numbers, its verdicts,
the files and run.json it writes, and the `evaluate` command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from midikit import runs as registry
from midikit.cli import main
from midikit.configs import QualityConfig
from midikit.data import load_dataset, tokens_to_score
from midikit.evaluate import BANDS, METRICS, QualityReport, _windows, compare, health_rows, run_report, song_losses
from midikit.generate import SLIDE_KEEP, load_run
from midikit.models import ModelConfig
from midikit.storage import DatasetPaths, StorageError
from midikit.train import TrainConfig, train

CONTEXT = 32
STEPS = 40
SMALL = dict(pieces=4, max_tokens=96, data_pieces=6)
TINY_MODELS = {
    "lstm": dict(embed_size=32, hidden_size=64, num_layers=1, dropout=0.0),
    "transformer": dict(d_model=64, nhead=2, num_layers=2, dim_feedforward=128, dropout=0.0),
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> DatasetPaths:
    """A briefly trained LSTM and Transformer on a copy of the tiny dataset."""
    root = tmp_path_factory.mktemp("quality_root")
    paths = DatasetPaths(root, tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    for model_type, sizes in TINY_MODELS.items():
        model_config = ModelConfig(model_type, load_dataset(paths).vocab_size, CONTEXT, **sizes)
        config = TrainConfig(dataset=paths.dataset, checkpoint_dir=str(root), model_type=model_type, preset="cpu",
                             max_steps=STEPS, batch_size=16, lr=1e-2, eval_every=STEPS, eval_windows=8, device="cpu",
                             resume="never", progress=False, checkpoint_every_minutes=0)
        train(config, model_config, log=lambda *args: None)
    return paths


def config_for(paths: DatasetPaths, **values) -> QualityConfig:
    return QualityConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), device="cpu", **{**SMALL, **values})


def test_the_loss_per_note_is_a_songs_summed_loss_over_its_notes(trained):
    report = run_report(config_for(trained, model_type="lstm", save=False), log=lambda *args: None)
    run = load_run(trained.best_weights(report.run_id), device="cpu")
    dataset = run.dataset
    assert report.heldout["songs"] == dataset.num_sequences("val")
    song = np.asarray(dataset.sequence("val", 0), dtype=np.int64)  # computed here from scratch: one pass, no batching
    with torch.no_grad():
        logits = run.model(torch.from_numpy(song[None, :-1]))[0]
    nats = F.cross_entropy(logits, torch.from_numpy(song[1:]), reduction="sum").item()
    notes = tokens_to_score(dataset.tokenizer, song).note_num()
    first = report.heldout["per_song"][0]
    assert (first["tokens"], first["notes"]) == (len(song) - 1, notes) and notes > 0
    assert first["nats"] == pytest.approx(nats, rel=1e-4)
    per_song = report.heldout["per_song"]
    total_nats = sum(s["nats"] for s in per_song)
    assert report.heldout["nats_per_note"] == pytest.approx(total_nats / sum(s["notes"] for s in per_song))
    assert report.heldout["nats_per_token"] == pytest.approx(total_nats / sum(s["tokens"] for s in per_song))
    assert report.heldout["perplexity"] == pytest.approx(np.exp(report.heldout["nats_per_token"]))


def test_a_transformer_is_scored_on_sliding_windows_of_its_context(trained):
    for targets in (5, CONTEXT, CONTEXT + 1, 5 * CONTEXT + 7):
        seen = []
        for start, end, skip in _windows(targets, CONTEXT):
            assert end - start <= CONTEXT
            # target t sees t - start tokens
            seen += [(target, target - start) for target in range(start + skip + 1, end + 1)]
        assert [target for target, _ in seen] == list(range(1, targets + 1))  # every target once, in order
        assert all(context >= min(target, int(CONTEXT * SLIDE_KEEP)) for target, context in seen)
    run = load_run(trained.best_weights(registry.finished_runs(trained, "transformer")[0].run_id), device="cpu")
    song = np.asarray(run.dataset.sequence("val", 0))
    windowed, = song_losses(run.model, [song], CONTEXT)
    with torch.no_grad():  # the last window's targets, recomputed on the same window
        start = len(song) - 1 - CONTEXT
        logits = run.model(torch.from_numpy(song[None, start:-1].astype(np.int64)))[0]
    last = F.cross_entropy(logits, torch.from_numpy(song[start + 1 :].astype(np.int64)), reduction="none").numpy()
    assert len(windowed) == len(song) - 1
    np.testing.assert_allclose(windowed[-5:], last[-5:], rtol=1e-4)


class EndsEarly(torch.nn.Module):
    """A run's model whose even rows emit EOS at their 10th token: pieces that end, and pieces that do not."""

    def __init__(self, model, eos_id):
        super().__init__()
        self.model, self.config, self.eos_id, self.count = model, model.config, eos_id, 0

    def forward(self, idx):
        return self.model(idx)

    def init_state(self, batch_size, device=None):
        self.count = 0
        return self.model.init_state(batch_size)

    def step(self, idx, state):
        logits, state = self.model.step(idx, state)
        self.count += 1
        if self.count == 10:
            logits[0::2, -1, self.eos_id] = 1e9
        else:
            logits[:, -1, self.eos_id] = -1e9
        return logits, state


def test_eos_endings_are_counted_from_the_generated_sequences(trained):
    run = load_run(trained.best_weights(registry.finished_runs(trained, "lstm")[0].run_id), device="cpu")
    run.model = EndsEarly(run.model, run.dataset.eos_id)
    report = run_report(config_for(trained, save=False), run=run)
    assert [piece["ended"] for piece in report.pieces] == [True, False, True, False]
    assert [piece["tokens"] for piece in report.pieces] == [9, 96, 9, 96]  # EOS itself is not a token of the piece
    health = {row["check"]: row for row in report.health}
    assert health["ended with EOS"]["value"] == 0.5 and health["ended with EOS"]["shown"] == "2/4"
    assert not health["ended with EOS"]["ok"] and "✗" in health["ended with EOS"]["verdict"]


def test_the_verdict_changes_when_a_metric_leaves_its_band():
    data = {metric: 2.0 for metric in METRICS} | {"empty_beat_rate": 0.01}
    inside = data | {"pitch_class_entropy": 2.0 * 1.09, "empty_beat_rate": 0.025}
    outside = data | {"pitch_class_entropy": 2.0 * 1.11, "empty_beat_rate": 0.035}
    close, far = ({row["metric"]: row for row in compare(data, means)} for means in (inside, outside))
    assert close["pitch_class_entropy"]["ok"] and close["pitch_class_entropy"]["verdict"].startswith("✓ close")
    assert not far["pitch_class_entropy"]["ok"] and "off-key" in far["pitch_class_entropy"]["verdict"]
    assert far["pitch_class_entropy"]["difference"] == pytest.approx(0.11)
    assert close["empty_beat_rate"]["ok"] and not far["empty_beat_rate"]["ok"]  # 2 points, absolute
    assert "+2.5 points" in far["empty_beat_rate"]["verdict"]
    assert BANDS["scale_consistency"].tolerance == 0.03
    low = compare(data, data | {"scale_consistency": 2.0 * 0.96})
    assert "outside the key" in {row["metric"]: row for row in low}["scale_consistency"]["verdict"]
    pieces = [{"tokens": 100, "notes": 5, "ended": True, "token_errors": 0.0}] * 15
    good = health_rows(pieces + [{"tokens": 100, "notes": 3, "ended": False, "token_errors": 0.02}])
    assert all(row["ok"] for row in good if row["check"] != "token errors")
    assert {row["check"]: row["value"] for row in good}["token errors"] == pytest.approx(0.02 / 16)
    bad = health_rows(pieces + [{"tokens": 0, "notes": 0, "ended": True, "token_errors": 0.0}])
    assert not {row["check"]: row for row in bad}["pieces without notes"]["ok"]


def test_evaluate_prints_the_table_and_saves_the_report(trained, capsys):
    newest = registry.finished_runs(trained)[0]
    owner = newest.data["owner"]
    assert main(["evaluate", "--checkpoint_dir", str(trained.root), "--dataset", trained.dataset, "--device", "cpu",
                 "--pieces", "3", "--max_tokens", "64", "--data_pieces", "5"]) == 0
    out = capsys.readouterr().out
    assert newest.run_id in out and "nats/token" in out and "nats/note" in out
    for name in (*METRICS, "pieces without notes", "token errors", "ended with EOS"):
        assert name in out
    saved = json.loads(trained.quality_report(newest.run_id).read_text())
    assert saved["run_id"] == newest.run_id and len(saved["pieces"]) == 3 and saved["config"]["max_tokens"] == 64
    assert trained.quality_report(newest.run_id, ".png").read_bytes().startswith(b"\x89PNG")
    record = registry.read_record(newest.path)
    assert record.data["owner"] == owner and record.status == newest.status
    assert record.data["quality"]["val_nats_per_note"] == pytest.approx(saved["heldout"]["nats_per_note"])
    assert record.data["quality"]["report"] == str(trained.quality_report(newest.run_id))


def test_annotate_refuses_a_run_that_is_not_done(trained, tmp_path):
    run_dir = tmp_path / "lstm_20260101_000000"
    registry.write_record(run_dir, {"run_id": run_dir.name, "status": "running", "owner": {"host": "h"}})
    with pytest.raises(StorageError, match="not finished"):
        registry.annotate(run_dir, quality={})
    with pytest.raises(ValueError, match="owner"):
        registry.annotate(run_dir, owner={})


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "missing"], "No preprocessed dataset"),
    (["--run", "gru_20200101_000000"], "No run gru_20200101_000000"),
    (["--p", "0"], "p must be"),
    (["--run", "nowhere.pth"], "does not exist"),
])
def test_bad_input_is_one_clear_message(trained, capsys, flags, message):
    args = ["evaluate", "--checkpoint_dir", str(trained.root), "--dataset", trained.dataset, "--device", "cpu", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_report_object_round_trips_to_json(trained):
    report = run_report(config_for(trained, model_type="transformer", save=False, pieces=2, max_tokens=32))
    assert isinstance(report, QualityReport) and not report.files
    data = json.loads(json.dumps(report.to_dict()))
    assert data["format"] == "midikit-quality-report" and "scores" not in data and len(report.scores) == 2


def test_a_rope_transformer_is_scored_with_the_rolling_window_its_generation_uses():
    if "positions" not in {f.name for f in __import__("dataclasses").fields(ModelConfig)}:
        pytest.skip("ModelConfig.positions is not there yet")
    from midikit.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("transformer", 50, CONTEXT, d_model=32, nhead=2, num_layers=1, dim_feedforward=64,
                                    positions="rope")).eval()
    song = np.random.default_rng(0).integers(4, 50, 700)
    rolled, = song_losses(model, [song], CONTEXT, rolling=True)
    with torch.no_grad():  # the reference: the whole song at once, each position seeing its last CONTEXT tokens
        logits = model(torch.from_numpy(song[None, :-1]), window=CONTEXT)[0]
    reference = F.cross_entropy(logits, torch.from_numpy(song[1:]), reduction="none").numpy()
    np.testing.assert_allclose(rolled, reference, rtol=1e-4, atol=1e-5)
