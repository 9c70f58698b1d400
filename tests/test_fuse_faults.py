"""Drive's faults on a real FUSE mount (`testsupport.fusefs`: a filesystem in a process of its own, as
Colab's Drive is), each survived by the real CLI and compared with a fault-free run of the same seed.

The mount stands for /content/drive (`python -m testsupport.fusedrive MOUNT -- train ...` tells midikit
so), its backing folder for what reached Drive. Faults fire from inside the filesystem at a chosen
call (`trigger`), so "the mount is down when the next save starts" is exact, whatever the machine's speed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midikit import checkpoints, runs, storage
from midikit.cli import main as cli_main
from midikit.errors import StorageError
from midikit.storage import RUN_ID_PATTERN
from midikit.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testsupport.fusedrive import FuseDrive, fuse_unavailable  # noqa: E402

_WHY_NOT = fuse_unavailable()
if _WHY_NOT:
    pytest.skip(f"FUSE fault tests skipped: {_WHY_NOT}", allow_module_level=True)

STEPS = 200
# A tiny GRU; evaluated only at the end (eval_every > STEPS), so the number of saves during training
# follows --checkpoint_every_steps alone and a trigger's "the n-th save" is the same on every machine.
ARGS = ["--dataset", "tiny", "--model_type", "gru", "--preset", "cpu", "--device", "cpu", "--batch_size", "8", "--lr",
        "3e-3", "--max_steps", str(STEPS), "--eval_every", "500", "--eval_windows", "16", "--checkpoint_every_minutes",
        "0", "--embed_size", "16", "--hidden_size", "32", "--num_layers", "1", "--context_length", "32", "--seed", "3",
        "--no_progress"]
SAVE_DONE = ".models.csv.lock"  # its removal is a save's last Drive call (run.json written, models.csv rebuilt)
NOT_CONNECTED = "Transport endpoint is not connected"


def run_cli(command: list[str], expect: int = 0, timeout: float = 240) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=timeout, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == expect, output
    return output


def train_on(drive: FuseDrive, *flags: str, expect: int = 0) -> str:
    """`python -m midikit train` with the mount taken for Colab's Drive."""
    root = drive.mount_point / "MyDrive" / "midikit_checkpoints"
    return run_cli(["testsupport.fusedrive", str(drive.mount_point), "--", "train", "--checkpoint_dir", str(root),
                    *ARGS, *flags],
                   expect)


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory, one_thread) -> dict:
    """The fault-free run: the same command and seed on a plain folder, in this process (one torch
    thread, as the runs under test have: the same arithmetic), which spares an interpreter's start."""
    root = tmp_path_factory.mktemp("fault_free")
    shutil.copytree(tiny_dataset.data, root / "tiny" / "data")
    assert cli_main(["train", "--checkpoint_dir", str(root), *ARGS, "--checkpoint_every_steps", "100"]) == 0
    (run_dir,) = (root / "tiny" / "checkpoints").iterdir()
    _, state = checkpoints.load_latest(run_dir)
    return {"state": state, "checkpoint_bytes": checkpoints.list_checkpoints(run_dir)[0].stat().st_size}


@pytest.fixture
def drive(tiny_dataset, tmp_path):
    """A fresh FUSE "Drive" holding a copy of the tiny dataset under MyDrive/midikit_checkpoints."""
    with FuseDrive(tmp_path / "fuse") as mounted:
        shutil.copytree(tiny_dataset.data, mounted.backing / "MyDrive" / "midikit_checkpoints" / "tiny" / "data")
        yield mounted


def run_dir_of(drive: FuseDrive) -> Path:
    """The one run folder, as it reached Drive (the backing folder, not through the mount)."""
    (run_dir,) = [p for p in (drive.backing / "MyDrive" / "midikit_checkpoints" / "tiny" / "checkpoints").iterdir()
                  if RUN_ID_PATTERN.match(p.name)]
    return run_dir


def valid_steps(run_dir: Path) -> list[int]:
    return [checkpoints.step_of(p) for p in checkpoints.list_checkpoints(run_dir)
            if checkpoints.verify_checkpoint(p)[0] == "valid"]


def assert_bit_identical(run_dir: Path, reference: dict) -> None:
    _, state = checkpoints.load_latest(run_dir, log=lambda message: None)
    expected = reference["state"]
    assert state["step"] == expected["step"] == STEPS and state["finished"]
    assert all(torch.equal(state["model"][k], v) for k, v in expected["model"].items())
    assert all(torch.equal(state["optimizer"]["state"][i][k], v)
               for i, moments in expected["optimizer"]["state"].items() for k, v in moments.items())
    assert all(torch.equal(state["history"][k], expected["history"][k]) for k in ("train_loss", "lr"))
    assert state["history"]["val_loss"] == expected["history"]["val_loss"]


def assert_finished_and_released(run_dir: Path) -> None:
    record = runs.read_record(run_dir)
    assert record.status == "max_steps" and record.get("step") == STEPS and record.owner.released
    assert not list(run_dir.parent.parent.rglob(".*.tmp-*"))  # no temporary file of a failed write is left


def saved_steps(output: str) -> list[int]:
    return [int(step) for step in re.findall(r"^Checkpoint saved: \S+/step (\d+)", output, re.M)]


@pytest.mark.parametrize("outage", ["down", "kill"])
def test_the_mount_down_when_the_final_save_starts_is_waited_for(outage, drive, reference):
    """The last save before the end lands; at once Drive answers ENOTCONN for 12 s (its process says so,
    or is killed and the kernel does, until a remount). The final save starts inside the outage, waits
    for Drive, lands: exit 0, the final checkpoint verified, run.json finished and released."""
    drive.trigger("unlink", outage, match=SAVE_DONE, count=1, for_s=12)
    output = train_on(drive, "--checkpoint_every_steps", "150")
    (fired,) = drive.events("trigger")
    waited = [m for m in output.splitlines() if m.startswith(f"Checkpoint step {STEPS}:") and NOT_CONNECTED in m]
    assert len(waited) == 1 and "mount_drive(force_remount=True)" in waited[0] and "Retrying" in waited[0], output
    assert saved_steps(output) == [150, STEPS] and "NOT saved" not in output and "could not be written" not in output
    run_dir = run_dir_of(drive)
    landed_at = checkpoints.checksum_path(run_dir / checkpoints.step_file_name(STEPS)).stat().st_mtime
    assert landed_at >= fired["wall"] + 11.5  # it landed after the outage, not before it began
    assert valid_steps(run_dir)[0] == STEPS
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_the_mount_down_when_a_save_starts_mid_run_is_waited_for_while_training_goes_on(drive, reference):
    """Drive answers ENOTCONN for 6 s from the end of the second save. The save that meets the outage
    waits and lands once Drive answers; the saves due meanwhile are skipped, none is given up, and
    training goes on: checkpoints newer than the outage land before the end."""
    drive.trigger("unlink", "down", match=SAVE_DONE, count=2, for_s=6)
    output = train_on(drive, "--checkpoint_every_steps", "10", "--keep_last", "1000")
    waited = [m for m in output.splitlines() if NOT_CONNECTED in m and "Retrying" in m]
    assert len(waited) == 1 and waited[0].startswith("Checkpoint step "), output
    met = int(waited[0].split()[2].rstrip(":"))  # the save that met the outage (step 30, unless one was skipped before)
    assert "NOT saved" not in output and f"Checkpoint step {met}: Drive answered after" in output
    assert re.search(rf"checkpoint step \d+: skipped, the previous write \(checkpoint step {met}\) is still running",
                     output)
    run_dir = run_dir_of(drive)
    steps = valid_steps(run_dir)
    assert met in steps and met in saved_steps(output)  # the save that met the outage landed and verifies
    assert steps[0] == STEPS and [s for s in steps if met < s < STEPS]  # training went on: newer saves landed mid-run
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_the_fuse_process_killed_in_the_middle_of_a_save(drive, reference):
    """Drive's process dies while a state file is being written (the kernel then answers ENOTCONN) and
    is mounted again 3 s later: the write is retried from the start and lands."""
    drive.trigger("write", "kill", match="*step_*.pt*", count=4, at="before", for_s=3)
    output = train_on(drive, "--checkpoint_every_steps", "20")
    assert len(drive.events("mount")) == 2 and "landed after" in output and "NOT saved" not in output, output
    assert [m for m in output.splitlines() if NOT_CONNECTED in m and "Retrying" in m], output
    run_dir = run_dir_of(drive)
    assert valid_steps(run_dir)[0] == STEPS
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_io_errors_in_the_middle_of_writes_are_retried_and_land(drive, reference):
    """A state-file write fails with EIO after 100 kB (Drive's connection overloaded): the write is
    retried from the start, training goes on meanwhile, and it lands."""
    drive.fail("write", "EIO", match="*step_*.pt*", after_bytes=100_000, times=1)
    output = train_on(drive, "--checkpoint_every_steps", "20")
    assert len(drive.events("fail")) == 1
    explained = [m for m in output.splitlines() if "Input/output error" in m and "Retrying" in m]
    assert len(explained) == 1 and "landed after 2 attempts" in output, output
    assert "NOT saved" not in output
    run_dir = run_dir_of(drive)
    assert valid_steps(run_dir)[0] == STEPS
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_a_full_drive_makes_room_and_every_checkpoint_lands(drive, reference):
    """Room for the data, the artifacts and about three checkpoints, counted as Drive does (deleted and
    replaced files stay in the trash until emptied): an older step file makes room, nothing is lost."""
    # The end needs four (two kept, the new one, best.pt): one older step file must make room.
    drive.quota(drive.call("usage")["usage"] + int(3.3 * reference["checkpoint_bytes"]) + 350_000, trash=True)
    output = train_on(drive, "--checkpoint_every_steps", "20")
    assert drive.events("enospc") and "the disk is full; removed" in output and "NOT saved" not in output, output
    run_dir = run_dir_of(drive)
    assert valid_steps(run_dir)[0] == STEPS and len(checkpoints.list_checkpoints(run_dir)) <= 2
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_hung_writes_skip_saves_and_training_goes_on(drive, reference):
    """From the end of the second save every state-file write hangs for 3 s: the saves due meanwhile
    are skipped (each holds training half a second at most), then the hung one lands."""
    drive.trigger("unlink", "hang", match=SAVE_DONE, count=2, for_s=3, path="*step_*.pt*")
    output = train_on(drive, "--checkpoint_every_steps", "10")
    assert drive.events("block") and "NOT saved" not in output, output
    hung = re.search(r"skipped, the previous write \(checkpoint step (\d+)\) is still running", output)
    assert hung, output
    run_dir = run_dir_of(drive)
    assert valid_steps(run_dir)[0] == STEPS and int(hung.group(1)) in saved_steps(output)
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_a_vanished_drive_folder_is_waited_for_never_made_again(drive, reference):
    """MyDrive vanishes for 3 s (as a dropped mount shows it): nothing is created in its place, the
    save says how to remount, waits, and lands when the folder is back."""
    drive.trigger("unlink", "vanish", match=SAVE_DONE, count=2, for_s=3, path="MyDrive")
    output = train_on(drive, "--checkpoint_every_steps", "10")
    assert drive.events("trigger") and drive.events("back") and not drive.events("mkdir"), output  # nothing made again
    explained = [m for m in output.splitlines() if "is gone" in m and "Retrying" in m]
    assert explained and all("mount_drive(force_remount=True)" in m for m in explained), output
    assert "NOT saved" not in output
    run_dir = run_dir_of(drive)
    assert valid_steps(run_dir)[0] == STEPS
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)


def test_a_checkpoint_drive_never_uploaded_is_skipped_on_resume(drive, reference, monkeypatch):
    """Drive acknowledges writes and uploads them later. After the save at step 150 nothing more is
    uploaded but the step-200 file itself, then the runtime dies: its checksum, run.json and the artifacts
    never reach Drive. The user was told how to make sure of the upload; a resume while the mount is down
    says how to remount; once mounted, it skips the unverified file, says so, and continues from step 150."""
    drive.trigger("unlink", "defer_uploads", match=SAVE_DONE, count=3)
    output = train_on(drive, "--checkpoint_every_steps", "50")
    assert f"max_steps at step {STEPS}" in output and "midikit.storage.flush_drive()" in output, output
    lost = drive.lose_pending(keep=checkpoints.step_file_name(STEPS))  # the runtime dies: the FUSE process with it
    assert any(p.endswith(checkpoints.step_file_name(STEPS) + ".sha256") for p in lost)
    run_dir = run_dir_of(drive)
    assert runs.read_record(run_dir).get("step") == 150 and valid_steps(run_dir)[0] == 150

    # The mount is still dead (the kernel answers ENOTCONN): resuming says so, with the fix.
    monkeypatch.setattr(storage, "DRIVE_MOUNT_POINT", drive.mount_point)
    config = TrainConfig(dataset="tiny", checkpoint_dir=str(drive.mount_point / "MyDrive" / "midikit_checkpoints"))
    with pytest.raises(StorageError, match=r"dropped \(Transport endpoint is not connected\).*force_remount=True"):
        train(config, log=pytest.fail)
    drive.start()
    resumed = train_on(drive, "--checkpoint_every_steps", "50")
    skipped = [m for m in resumed.splitlines() if m.startswith("Skipped 1 unusable checkpoint(s)")]
    assert skipped and "is unverified" in skipped[0] and checkpoints.step_file_name(150) in skipped[0], resumed
    assert re.search(r"Resuming \S+: .* step 150 of 200", resumed), resumed
    assert_finished_and_released(run_dir)
    assert_bit_identical(run_dir, reference)
