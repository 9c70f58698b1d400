"""A run across Colab sessions: a time budget per command (--max_minutes) that ends a session
resumable, `extend` that re-plans a run without a jump in its learning rate, and a stopped run's
best weights that play like a finished run's (`--run latest`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import assert_same_training, own_root, the_run

from midikit import checkpoints, runs
from midikit.configs import SampleConfig
from midikit.generate import generate, load_run
from midikit.storage import DatasetPaths
from midikit.train import TrainConfig, train

TINY = dict(d_model=32, nhead=2, num_layers=2, dim_feedforward=64, dropout=0.1, context_length=32)
STEPS = 150

pytestmark = pytest.mark.usefixtures("one_thread")


def config(paths: DatasetPaths, **changes) -> TrainConfig:
    values = dict(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type="transformer", preset="cpu",
                  batch_size=8, lr=3e-3, max_steps=STEPS, eval_every=25, eval_windows=16, device="cpu", progress=False,
                  checkpoint_every_minutes=0, patience=0, seed=3)
    values.update(changes)
    return TrainConfig(**values)


def quiet(*_):
    pass


def final_state(paths: DatasetPaths) -> dict:
    _, state = checkpoints.load_latest(the_run(paths))
    return state


def test_a_run_ended_by_its_time_budget_continues_bit_identical_with_the_same_command(tiny_dataset, tmp_path):
    reference, budgeted = own_root(tiny_dataset, tmp_path / "reference"), own_root(tiny_dataset, tmp_path / "budgeted")
    assert train(config(reference), log=quiet, model_overrides=TINY).status == "max_steps"

    # The same call each time, as a user runs the same cell or command again after each budget.
    sessions, messages = [], []
    while not sessions or sessions[-1].status == "time_budget":
        assert len(sessions) < 40, "the run made no progress across sessions"
        sessions.append(train(config(budgeted, max_minutes=0.01), log=messages.append, model_overrides=TINY))
        if sessions[-1].status == "time_budget":
            record = runs.read_record(the_run(budgeted))
            assert record.status == "time_budget" and record.owner_state() == "released"
            assert runs.describe_progress(record).startswith(f"paused (time budget) at step {sessions[-1].steps:,}")
    assert sessions[-1].status == "max_steps" and sum(s.status == "time_budget" for s in sessions) >= 1
    assert all(b.steps > a.steps for a, b in zip(sessions, sessions[1:]))  # every session trained
    assert any("at most 0.01 min (max_minutes)" in m for m in messages)

    state, expected = final_state(budgeted), final_state(reference)
    assert state["step"] == expected["step"] == STEPS
    assert_same_training(state, expected)


def test_the_command_says_the_budget_ended_it_and_exits_zero(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    command = [sys.executable, "-m", "midikit", "train", "--dataset", paths.dataset, "--checkpoint_dir",
               str(paths.root),
               "--model_type", "gru", "--preset", "cpu", "--device", "cpu", "--max_steps", "100000", "--eval_every",
               "50",
               "--eval_windows", "8", "--batch_size", "4", "--context_length", "32", "--max_minutes", "0.02",
               "--no_progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "The time budget of this command (max_minutes) ended it at step" in done.stdout
    record = runs.read_record(the_run(paths))
    assert record.status == "time_budget" and 0 < record.get("step") < 100000


def test_extend_continues_a_finished_run_without_a_jump_in_the_learning_rate(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    first = train(config(paths, max_steps=40, eval_every=20, warmup_steps=5), log=quiet, model_overrides=TINY)
    assert first.status == "max_steps"
    messages = []
    # The form's "extend" with resume "auto": nothing is unfinished, so the newest finished run goes on.
    extended = train(config(paths, max_steps=100, eval_every=20, warmup_steps=5, extend=True), log=messages.append)
    assert extended.run_id == first.run_id and extended.resumed_from_step == 40 and extended.steps == 100
    assert any("horizon 40 -> 100 steps" in m for m in messages)
    lrs, peak = extended.history["lr"], 3e-3
    assert len(lrs) == 100
    # The finished run had decayed to a tenth: the curve goes on from there without a jump, climbs over the warm-up's
    # 5 steps to where a run planned for 100 steps would be, then decays to a tenth again at the new end.
    assert lrs[39] == pytest.approx(0.1 * peak, rel=0.02)
    assert abs(lrs[40] - lrs[39]) < 0.25 * peak and max(lrs[40:]) > 0.5 * peak  # learns again, not at its last rate
    assert all(b > a for a, b in zip(lrs[40:45], lrs[41:46])) and lrs[99] == pytest.approx(0.1 * peak, rel=0.05)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[45:], lrs[46:]))


def test_extending_an_early_stopped_run_trains_past_where_patience_stopped_it(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    first = train(config(paths, max_steps=400, eval_every=5, patience=1, lr=3e-2), log=quiet, model_overrides=TINY)
    assert first.status == "early_stopped" and first.steps < 400
    extended = train(config(paths, max_steps=first.steps + 30, eval_every=5, patience=3, lr=3e-2, extend=True),
                     log=quiet)
    assert extended.run_id == first.run_id and extended.steps >= first.steps + 15  # patience started over


def test_extend_re_plans_a_run_that_stopped_and_a_resume_after_it_is_exact(tiny_dataset, tmp_path):
    reference, resumed = own_root(tiny_dataset, tmp_path / "reference"), own_root(tiny_dataset, tmp_path / "resumed")
    for paths in (reference, resumed):
        train(config(paths, max_steps=40), log=quiet, model_overrides=TINY)
    train(config(reference, max_steps=90, extend=True), log=quiet)
    # The extended run stopped half-way (the stop button), then the same cell again: the re-planned schedule is
    # part of the run, so the resumed run ends where an uninterrupted extension ends.
    stop_at_60 = lambda history: os.kill(os.getpid(), signal.SIGINT) if history["val_step"][-1] == 50 else None  # noqa: E731
    assert train(config(resumed, max_steps=90, extend=True, eval_every=25), on_eval=stop_at_60,
                 log=quiet).status == "interrupted"
    assert train(config(resumed, max_steps=90), log=quiet).steps == 90
    state, expected = final_state(resumed), final_state(reference)
    assert torch.equal(state["history"]["lr"], expected["history"]["lr"])
    for name, tensor in expected["model"].items():
        assert torch.equal(state["model"][name], tensor), name


def test_latest_plays_a_stopped_run_and_says_which_it_is(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    press_stop = lambda history: os.kill(os.getpid(), signal.SIGINT) if history["val_step"][-1] == 50 else None  # noqa: E731
    stopped = train(config(paths), on_eval=press_stop, log=quiet, model_overrides=TINY)
    assert stopped.status == "interrupted" and stopped.steps == 50
    assert runs.finished_runs(paths) == [] and [r.run_id for r in runs.playable_runs(paths)] == [stopped.run_id]

    said = []
    loaded = load_run("latest", paths, log=said.append)
    assert loaded.run_id == stopped.run_id
    assert said == [f"latest: {stopped.run_id} (stopped at step 50, best at 50)"]
    assert torch.equal(loaded.model.state_dict()["head.weight"].cpu(),
                       torch.load(paths.best_weights(stopped.run_id), weights_only=True)["head.weight"])
    result = generate(loaded, SampleConfig(num_tokens=64, num_samples=2, seed=1), progress=False)
    assert len(result.midi_paths) == 2 and all(path.is_file() for path in result.midi_paths)
    assert load_run(stopped.run_id, paths, log=quiet).run_id == stopped.run_id  # a run id names it too


def test_the_commands_lines_reach_a_pipe_as_they_are_printed(tiny_dataset, tmp_path):
    # `... | tee train.log` in a user's shell, where PYTHONUNBUFFERED is not set: a disconnect that kills the
    # process must not take the lines already printed with it (Python buffers 8 kB blocks for a pipe).
    import time

    paths = own_root(tiny_dataset, tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-m", "midikit", "train", "--dataset", paths.dataset, "--checkpoint_dir",
               str(paths.root),
               "--model_type", "gru", "--preset", "cpu", "--device", "cpu", "--max_steps", "100000", "--eval_every",
               "50",
               "--eval_windows", "8", "--batch_size", "4", "--context_length", "32", "--checkpoint_every_steps", "20",
               "--checkpoint_every_minutes", "0", "--no_progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**env, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:  # the first checkpoint on disk: a disconnect now
            landed = [path for run_dir in paths.checkpoints.glob("gru_*")
                      for path in checkpoints.list_checkpoints(run_dir)
                      if checkpoints.verify_checkpoint(path)[0] == "valid"]
            if landed:
                time.sleep(1.0)  # its "Checkpoint saved" line is printed just after the file lands
                break
            time.sleep(0.05)
    finally:
        process.kill()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert landed, output
    assert "Starting gru_" in output and "Checkpoint saved" in output, output


def test_every_training_setting_says_whether_a_resumed_run_keeps_it():
    from dataclasses import fields

    from midikit.configs import TrainConfig, kept_on_resume
    from midikit.settings import declared

    undeclared = [f.name for f in fields(TrainConfig) if declared(f).kept_on_resume not in (True, False)]
    assert undeclared == [], f"declare kept_on_resume=True or False on {undeclared}"
    kept, session = set(kept_on_resume()), set(kept_on_resume(False))
    assert not kept & session and kept | session == {f.name for f in fields(TrainConfig)}
    # What fixes the batches, the learning-rate curve and the horizon stays the run's; how it runs and saves follows
    # now.
    assert {"batch_size", "lr", "seed", "warmup_steps", "epochs", "max_steps"} <= kept
    assert {"max_minutes", "final_wait_minutes", "device", "keep_last", "patience"} <= session


def test_an_orphan_restarted_under_its_id_takes_this_sessions_final_wait(tiny_dataset, tmp_path):
    # A run killed before its first checkpoint starts over under its id with its own settings, but the session's
    # own ones (here final_wait_minutes and max_minutes) are the ones passed now, as for a resume.
    from midikit.data import load_dataset
    from midikit.train.start import find_start

    paths = own_root(tiny_dataset, tmp_path)
    dataset = load_dataset(paths)
    run_id = "transformer_20260101_000000"  # what claim() leaves before the first checkpoint: a record, no state
    model = {"model_type": "transformer", "vocab_size": dataset.vocab_size, **TINY}
    runs.write_record(paths.run_checkpoints(run_id), {"run_id": run_id, "model_type": "transformer",
                                                      "status": "running",
                                                      "model_config": model,
                                                      "train_config": config(paths, final_wait_minutes=3.0).to_dict()})
    asked = config(paths, final_wait_minutes=0.5, max_minutes=2.0, seed=99)
    start = find_start(asked, None, {}, paths, dataset, torch.device("cpu"), quiet)
    assert start.kind == "restarted" and start.state.run_id == run_id
    kept = start.state.train_config
    assert (kept.final_wait_minutes, kept.max_minutes, kept.seed) == (0.5, 2.0, 3)  # the session's; the run's seed
