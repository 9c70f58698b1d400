"""What a user chose once and every later notebook, command and runtime starts from: the checkpoint
folder picked in notebook 01.

It is kept in a small JSON file at a fixed place the next runtime can read: on Google Drive in Colab
(`MyDrive/.midikit/preferences.json`: a new Colab runtime starts with an empty disk) and in the
user's config folder elsewhere (`$XDG_CONFIG_HOME/midikit/`, else `~/.config/midikit/`). A folder
typed into a form, `--checkpoint_dir` and `$MIDIKIT_ROOT` each override it, in that order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import storage

FILE_NAME = "preferences.json"


def preferences_file() -> Path | None:
    """Where the preferences live on this machine; None in Colab while Drive is not mounted."""
    if storage.in_colab():
        mount = storage.DRIVE_MOUNT_POINT
        return mount / "MyDrive" / ".midikit" / FILE_NAME if storage.drive_is_mounted(mount) else None
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home).expanduser() / "midikit" / FILE_NAME


def _read() -> dict:
    path = preferences_file()
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):  # none yet, or damaged: the built-in defaults apply
        return {}
    return data if isinstance(data, dict) else {}


def remembered_root() -> Path | None:
    """The checkpoint folder chosen in notebook 01 (or `remember_root`), if one was."""
    folder = _read().get("checkpoint_dir")
    return Path(folder) if isinstance(folder, str) and folder else None


def remember_root(folder: str | os.PathLike) -> Path:
    """Make `folder` the default checkpoint folder of every later notebook, command and runtime;
    returns the file that remembers it. StorageError (with its fix) when it cannot be written."""
    path = preferences_file()
    if path is None:
        raise storage.StorageError("Google Drive is not mounted, so the choice cannot be kept where the next runtime "
                                   "finds it: run the mount cell (`midikit.storage.mount_drive()`) first.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage.explain_os_error(exc, path.parent) from exc
    data = {**_read(), "checkpoint_dir": str(Path(folder).expanduser().absolute())}
    storage.atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def default_root_and_origin() -> tuple[Path, str]:
    """The default checkpoint folder and where it comes from, in words (forms show both)."""
    env = os.environ.get(storage.ROOT_ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${storage.ROOT_ENV_VAR}"
    remembered = remembered_root()
    if remembered is not None:
        return remembered, f"chosen in notebook 01 (kept in {preferences_file()})"
    if storage.in_colab():
        return storage.COLAB_DEFAULT_ROOT, "midikit's default in Colab"
    return storage.LOCAL_DEFAULT_ROOT, "midikit's default outside Colab"
