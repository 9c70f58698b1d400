"""midikit.train and midikit.artifacts on the tiny preprocessed Nottingham dataset (`tiny_dataset`):
causality of every model, rebuilding a model from its saved config, learning, artifacts,
`resume="auto"` choosing runs, and clear errors before any training."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import matplotlib.image
import numpy as np
import pytest
import torch
from helpers import own_root

from midikit import checkpoints, runs
from midikit.cli import main as cli_main
from midikit.data import DatasetError, load_dataset
from midikit.models import MODEL_TYPES, ConfigError, ModelConfig, build_model
from midikit.storage import DatasetPaths, StorageError
from midikit.train import TrainConfig, describe_resumable, train

# Small enough for a few hundred steps in seconds on two CPU cores.
TINY_MODELS = {
    "lstm": dict(embed_size=16, hidden_size=32, num_layers=2, dropout=0.1, context_length=32),
    "gru": dict(embed_size=16, hidden_size=32, num_layers=2, dropout=0.1, context_length=32),
    "transformer": dict(d_model=32, nhead=2, num_layers=2, dim_feedforward=64, dropout=0.1, context_length=32),
}



def tiny_config(paths: DatasetPaths, model_type: str = "lstm", **changes) -> TrainConfig:
    values = dict(
        dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset="cpu",
        batch_size=8, lr=3e-3, max_steps=40, eval_every=20, device="cpu", progress=False,
        checkpoint_every_minutes=0,
    )
    values.update(changes)
    return TrainConfig(**values)


def quiet(*_):
    pass


def interrupt(history):
    raise KeyboardInterrupt  # what Colab's stop button raises


def run_dirs(paths: DatasetPaths) -> list:
    return sorted(p.name for p in paths.checkpoints.iterdir()) if paths.checkpoints.is_dir() else []


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished_run(one_thread, tiny_dataset, tmp_path_factory):
    """One short LSTM run to the end, shared by the tests that inspect its results."""
    paths = own_root(tiny_dataset, tmp_path_factory.mktemp("finished"))
    config = tiny_config(paths, "lstm", max_steps=120, eval_every=30, checkpoint_every_steps=30)
    return paths, train(config, log=quiet, model_overrides=TINY_MODELS["lstm"])


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_changing_a_future_token_never_changes_earlier_logits(model_type, tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_type=model_type, vocab_size=dataset.vocab_size,
                                    **TINY_MODELS[model_type])).eval()
    tokens = torch.from_numpy(np.asarray(dataset.val_tokens[:32], dtype=np.int64)).unsqueeze(0)
    with torch.no_grad():
        reference = model(tokens)
        for t in (0, 7, 20, 30):
            changed = tokens.clone()
            changed[0, t + 1] = (changed[0, t + 1] + 1) % dataset.vocab_size
            logits = model(changed)
            torch.testing.assert_close(logits[:, : t + 1], reference[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(logits[:, t + 1], reference[:, t + 1])  # the change does reach t+1


def test_a_saved_config_alone_rebuilds_the_model(finished_run):
    paths, result = finished_run
    sidecar = json.loads(result.artifacts["sidecar"].read_text())
    best = checkpoints.load_state(result.artifacts["checkpoints"] / "best.pt")
    tokens = torch.randint(0, sidecar["dataset"]["vocab_size"], (2, 16))
    outputs = []
    for config, weights in (
        (sidecar["model_config"], torch.load(result.artifacts["weights"], weights_only=True)),
        (best["model_config"], best["model"]),
    ):
        model = build_model(ModelConfig.from_dict(config)).eval()
        model.load_state_dict(weights)
        outputs.append(model(tokens))
    assert outputs[0].shape == (2, 16, sidecar["dataset"]["vocab_size"])
    # The .pth holds the weights of the best evaluation, which best.pt was saved at (every evaluation here
    # is checkpointed, so whichever step was best, both hold it).
    assert sidecar["weights_step"] == sidecar["metrics"]["best_step"] == best["step"] == best["best_step"]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


# --------------------------------------------------------------------------- training


def test_loss_decreases_on_real_data(finished_run):
    _, result = finished_run
    train_loss = result.history["train_loss"]
    assert result.status == "max_steps" and result.steps == 120 and len(train_loss) == 120
    assert np.mean(train_loss[-20:]) < 0.8 * np.mean(train_loss[:5])
    assert result.history["val_step"] == [30, 60, 90, 120]
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    assert result.best_val_loss == min(result.history["val_loss"])


def test_artifacts_exist_and_are_sane(finished_run):
    paths, result = finished_run
    artifacts = result.artifacts
    run_id = result.run_id

    state_dict = torch.load(artifacts["weights"], weights_only=True)
    assert all(not key.startswith("_orig_mod") for key in state_dict)
    # The seed's snippet, with weights_only=True spelled out (torch's default since 2.6).
    n_params = sum(p.numel() for p in torch.load(artifacts["weights"], weights_only=True).values())
    sidecar = json.loads(artifacts["sidecar"].read_text())
    assert sidecar["run_id"] == run_id and sidecar["status"] == "max_steps"
    assert sidecar["metrics"]["parameters"] == n_params
    assert sidecar["metrics"]["steps"] == 120 and sidecar["metrics"]["best_val_loss"] == result.best_val_loss
    assert sidecar["dataset"]["vocab_size"] == load_dataset(paths).vocab_size
    assert (paths.root / sidecar["dataset"]["name"] / "data" / "tokenizer.json").is_file()

    rows = list(csv.DictReader(open(artifacts["csv"], newline="")))
    assert [row["run_id"] for row in rows] == [run_id]
    assert rows[0]["status"] == "max_steps" and rows[0]["hidden_size"] == "32" and rows[0]["d_model"] == ""
    assert float(rows[0]["best_val_loss"]) == pytest.approx(result.best_val_loss)

    summary = artifacts["summary"].read_text()
    for expected in ("Model config", "Training config", "Results", "hidden_size", str(artifacts["weights"])):
        assert expected in summary

    train_losses = np.load(artifacts["train_losses"], allow_pickle=False)
    val_losses = np.load(artifacts["val_losses"], allow_pickle=False)
    np.testing.assert_array_equal(train_losses, result.history["train_loss"])
    np.testing.assert_array_equal(val_losses, result.history["val_loss"])

    image = matplotlib.image.imread(artifacts["plot"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600  # 150 dpi

    record = runs.read_record(artifacts["checkpoints"])
    assert ((record.status, record.run_id, record.get("step"), record.get("total_steps"))
            == ("max_steps", run_id, 120, 120))
    assert (record.get("best_val_loss") == result.best_val_loss
            and record.get("weights") == {"file": f"{run_id}.pth", "step": record.get("best_step")})
    assert record.owner.released and record.get("dataset")["fingerprint"] == load_dataset(paths).fingerprint
    assert (artifacts["checkpoints"] / "best.pt").is_file()
    assert len(checkpoints.list_checkpoints(artifacts["checkpoints"])) <= 2  # keep_last


def test_resume_auto_continues_unfinished_runs_only(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    config = tiny_config(paths, "gru", max_steps=40, eval_every=10)

    stopped = train(config, on_eval=interrupt, log=quiet, model_overrides=TINY_MODELS["gru"])
    assert stopped.status == "interrupted" and stopped.steps == 10
    assert runs.read_record(paths.run_checkpoints(stopped.run_id)).status == "interrupted"
    assert json.loads(stopped.artifacts["sidecar"].read_text())["status"] == "interrupted"

    described = describe_resumable(config)
    assert described["run_id"] == stopped.run_id and described["step"] == 10 and described["owner_state"] == "released"
    assert describe_resumable(tiny_config(paths, "lstm")) is None  # another model type
    assert describe_resumable(tiny_config(paths, "gru", resume="never")) is None

    resumed = train(config, log=quiet)
    assert resumed.run_id == stopped.run_id and resumed.resumed_from_step == 10
    assert resumed.steps == 40 and resumed.status == "max_steps"
    assert resumed.history["val_step"] == [10, 20, 30, 40]
    assert runs.read_record(paths.run_checkpoints(stopped.run_id)).status == "max_steps"

    assert describe_resumable(config) is None
    fresh = train(replace(config, max_steps=5), log=quiet, model_overrides=TINY_MODELS["gru"])
    assert fresh.run_id != stopped.run_id and fresh.resumed_from_step is None

    # A finished run is continued only on purpose: by path, with a new horizon (extend).
    by_path = replace(config, max_steps=50, resume=str(paths.run_checkpoints(stopped.run_id)))
    with pytest.raises(ConfigError, match="already finished .*--extend"):
        train(by_path, log=quiet)
    messages = []
    again = train(replace(by_path, extend=True), log=messages.append)
    assert again.run_id == stopped.run_id and again.resumed_from_step == 40 and again.steps == 50
    assert any("horizon 40 -> 50 steps" in m for m in messages)


def test_epoch_length_follows_max_batches_and_subsample_ratio(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    capped = train(tiny_config(paths, max_steps=None, eval_every=None, epochs=2, max_batches=4), log=quiet,
                   model_overrides=TINY_MODELS["gru"])
    assert (capped.status, capped.steps, capped.epochs) == ("finished", 8, 2)
    assert capped.history["val_step"] == [4, 8]  # one evaluation per epoch by default

    train_tokens = len(load_dataset(paths).train_tokens)
    ratio = (3 * 8 * 32 + 1) / train_tokens  # three batches of 8 windows of 32 tokens
    shrunk = train(tiny_config(paths, max_steps=None, eval_every=None, epochs=1, subsample_ratio=ratio), log=quiet,
                   model_overrides=TINY_MODELS["gru"])
    assert (shrunk.status, shrunk.steps) == ("finished", 3)


def test_out_of_gpu_memory_suggests_a_smaller_batch(tiny_dataset, tmp_path, monkeypatch):
    import midikit.train.loop

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(midikit.train.loop, "train_step", out_of_memory)
    paths = own_root(tiny_dataset, tmp_path)
    with pytest.raises(ConfigError, match="batch_size=8.*Try --batch_size 4"):
        train(tiny_config(paths), log=quiet, model_overrides=TINY_MODELS["lstm"])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, overrides, message",
    [
        (dict(model_type="cnn"), {}, "Unknown model_type 'cnn'"),
        (dict(batch_size=0), {}, "batch_size must be an integer > 0"),
        (dict(epochs=-1), {}, "epochs must be an integer > 0"),
        (dict(lr=0.0), {}, "lr must be a number > 0.0"),
        (dict(lr=float("nan")), {}, "lr must be a finite number, got nan"),
        (dict(grad_clip=float("nan")), {}, "grad_clip must be a finite number"),
        (dict(seed=2**32), {}, "seed must be an integer >= 0 and < 4294967296"),
        (dict(subsample_ratio="0.5"), {}, "subsample_ratio must be a number, got '0.5'"),
        (dict(keep_last=0), {}, "keep_last must be an integer >= 1"),
        (dict(precision="fp8"), {}, "Unknown precision 'fp8'"),
        (dict(model_type="lstm"), dict(hidden_size=0), "hidden_size must be an integer > 0"),
        (dict(model_type="transformer"), dict(d_model=30, nhead=4), "nhead=4 does not divide d_model=30"),
        (dict(), dict(context_length=10**8), "context_length=100000000 is longer than dataset"),
        (dict(val_split=0.3), {}, "val_split=0.3 was asked for"),
        (dict(device="cuda"), {}, "no CUDA GPU is visible"),
        (dict(resume="/nowhere/run"), {}, "resume='/nowhere/run' is neither"),
    ],
)
def test_bad_input_is_one_clear_error_before_training(changes, overrides, message, tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    with pytest.raises((ConfigError, StorageError), match=message.replace("(", r"\(")):
        train(tiny_config(paths, **changes), log=quiet, model_overrides=overrides)
    assert run_dirs(paths) == []


def test_missing_or_half_built_dataset_names_the_command_to_run(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    with pytest.raises(DatasetError, match="preprocess"):
        train(tiny_config(paths, dataset="no_such_dataset"), log=quiet)
    (paths.data / "config.json").unlink()  # written last: without it the store is half-built
    with pytest.raises(DatasetError, match="preprocess"):
        train(tiny_config(paths), log=quiet)
    assert run_dirs(paths) == []


def test_resuming_with_other_model_sizes_is_refused(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    config = tiny_config(paths, "transformer", max_steps=6, eval_every=3)
    stopped = train(config, on_eval=interrupt, log=quiet, model_overrides=TINY_MODELS["transformer"])
    assert stopped.status == "interrupted"
    with pytest.raises(ConfigError, match="was trained with context_length=32; you asked for context_length=64"):
        train(config, log=quiet, model_overrides=dict(TINY_MODELS["transformer"], context_length=64))


def test_cli_reports_bad_input_in_one_line(tiny_dataset, tmp_path, capsys):
    paths = own_root(tiny_dataset, tmp_path)
    code = cli_main(["train", "--dataset", paths.dataset, "--checkpoint_dir", str(paths.root), "--device", "cpu",
                     "--model_type", "transformer", "--d_model", "30", "--nhead", "4"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: nhead=4 does not divide d_model=30") and "\n" not in error
