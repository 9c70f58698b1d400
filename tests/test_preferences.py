"""Typed once: the checkpoint folder chosen in notebook 01 is every later notebook's, runtime's and
command's default; $MIDIKIT_ROOT, --checkpoint_dir and a folder typed into a form win over it."""

from __future__ import annotations

import html
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from midikit import preferences, storage, widgets
from midikit.errors import StorageError


@pytest.fixture
def config_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(storage.ROOT_ENV_VAR, raising=False)
    return tmp_path / "config"


def test_the_folder_chosen_once_is_the_default_everywhere_until_something_wins_over_it(config_home, tmp_path,
                                                                                       monkeypatch):
    assert storage.default_root() == storage.LOCAL_DEFAULT_ROOT  # nothing chosen yet
    chosen = tmp_path / "my_runs"
    form = widgets.FolderForm()
    form.fields["checkpoint_dir"].value = str(chosen)
    assert "typed here" in form.message.value
    assert form.remember() == chosen and (config_home / "midikit" / "preferences.json").is_file()

    # A new notebook (a new form) and the command line start from it, and say where it came from.
    later = widgets.FolderForm()
    assert later.value == chosen and "chosen in notebook 01" in later.message.value
    assert storage.default_root() == chosen
    monkeypatch.setenv(storage.ROOT_ENV_VAR, str(tmp_path / "env_root"))
    assert storage.default_root() == tmp_path / "env_root"  # $MIDIKIT_ROOT wins
    assert "$MIDIKIT_ROOT" in widgets.FolderForm().message.value
    assert widgets.FolderForm(tmp_path / "given").value == tmp_path / "given"  # a form's own value wins over both


def test_a_damaged_preferences_file_falls_back_to_the_default(config_home):
    (config_home / "midikit").mkdir(parents=True)
    (config_home / "midikit" / "preferences.json").write_text("{not json")
    assert preferences.remembered_root() is None and storage.default_root() == storage.LOCAL_DEFAULT_ROOT


def test_in_colab_the_choice_is_kept_on_drive_and_refused_while_drive_is_not_mounted(config_home, tmp_path,
                                                                                     monkeypatch):
    # A fake Colab: google.colab importable, Drive's mount point in a temporary folder, a real tmpfs mounted there.
    mount_point = tmp_path / "content" / "drive"
    mount_point.mkdir(parents=True)
    monkeypatch.setattr(storage, "DRIVE_MOUNT_POINT", mount_point)
    # what storage.in_colab looks for
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(StorageError, match="Drive is not mounted, so the choice cannot be kept"):
        preferences.remember_root(mount_point / "MyDrive" / "runs")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        (mount_point / "MyDrive").mkdir()
        kept = preferences.remember_root(mount_point / "MyDrive" / "runs")
        assert kept == mount_point / "MyDrive" / ".midikit" / "preferences.json"  # where the next runtime reads it
        assert storage.default_root() == mount_point / "MyDrive" / "runs"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)])
    assert preferences.remembered_root() is None  # Drive gone: back to the built-in default
    assert storage.default_root() == storage.COLAB_DEFAULT_ROOT


def test_a_colab_folder_outside_drive_is_said_to_be_lost_with_the_runtime(config_home, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "DRIVE_MOUNT_POINT", tmp_path / "content" / "drive")
    # what storage.in_colab looks for
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    form = widgets.FolderForm(tmp_path / "content" / "midikit_checkpoints")
    shown = html.unescape(form.message.value)
    assert "✓" in shown and "runtime's own disk, lost when it ends" in shown
    assert Path(form.value) == tmp_path / "content" / "midikit_checkpoints"
