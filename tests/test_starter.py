"""The starter model shipped in the package: it loads with weights_only=True from the package
alone, plays real music with a fixed seed, writes outside the package, and its report is there."""

from __future__ import annotations

import json

import pytest
import torch

from midikit.configs import SampleConfig
from midikit.generate import generate
from midikit.models import padded_vocab_size
from midikit.starter import load_starter, starter_dir, starter_report, starter_weights
from midikit.storage import DatasetPaths

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    return load_starter(device="cpu", paths=DatasetPaths(tmp_path_factory.mktemp("starter_root"), "starter"),
                        log=lambda *args: None)


def test_the_weights_are_a_plain_state_dict_under_5_mb_that_loads_with_weights_only():
    path = starter_weights()
    assert path.stat().st_size <= 5 * 2**20
    weights = torch.load(path, map_location="cpu", weights_only=True)
    assert weights and all(isinstance(value, torch.Tensor) for value in weights.values())
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert weights["token_emb.weight"].shape[0] == padded_vocab_size(sidecar["model_config"]["vocab_size"])
    assert "nottingham" not in json.dumps(sidecar).lower()  # never trained on the GPL set


def test_the_starter_loads_from_the_package_and_writes_outside_it(starter, tmp_path):
    assert starter.dataset.paths.base == starter_dir()  # tokenizer and special ids from the package
    assert starter.paths.root != starter_dir().parent  # outputs: the user's folder
    weights = torch.load(starter_weights(), map_location="cpu", weights_only=True)
    for name, value in starter.model.state_dict().items():
        torch.testing.assert_close(value, weights[name].float())  # fp16 storage or not, these are its weights
    result = generate(starter, SampleConfig(num_samples=1, num_tokens=32, seed=1), progress=False)
    assert result.midi_paths and all(path.is_relative_to(starter.paths.generated) for path in result.midi_paths)


def test_a_fixed_seed_plays_the_same_real_tunes(starter):
    sample = SampleConfig(num_samples=2, seed=0)  # the generation defaults
    first = generate(starter, sample, save=False, progress=False)
    again = generate(starter, sample, save=False, progress=False)
    assert first.tokens == again.tokens and first.tokens[0] != first.tokens[1]
    for score, errors in zip(first.scores, first.invalid_token_share):
        pitches = [note.pitch for track in score.tracks for note in track.notes]
        assert len(pitches) > 50 and 15 <= max(pitches) - min(pitches) <= 60  # a tune's notes, not noise
        assert errors < 0.02
    assert any(first.ended)  # at least one of the two ends as a tune does, with the model's own EOS


def test_its_report_is_shipped_with_the_eos_rate_of_16_pieces():
    report = starter_report()
    assert report["format"] == "midikit-quality-report" and len(report["pieces"]) == 16
    ended = sum(piece["ended"] for piece in report["pieces"])
    readme = (starter_dir() / "README.md").read_text()
    assert f"{ended}/16 ended with an EOS" in readme
    assert "scripts/build_starter.py" in readme and "public domain" in readme
    assert report["config"]["max_tokens"] == SampleConfig().num_tokens  # measured at the generation defaults
