"""The errors a user can fix. Each message names the bad value and says what to do instead.

No torch, no miditok: every module (and `python -m midikit --help`) can import these cheaply.
The CLI prints them as one line, without a traceback; notebooks show them in the form.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong; the message names it and says how to fix it."""


class StorageError(RuntimeError):
    """A storage problem the user can fix (folders, Drive, disk, missing files); the message says how."""


class DatasetError(StorageError):
    """A dataset is missing, incomplete or unusable; the message says what to run."""


class CheckpointError(StorageError):
    """A checkpoint is missing, truncated, corrupt or unverified; the message names it."""


class GenerationError(StorageError):
    """A run, checkpoint or seed MIDI that cannot be used; the message says why and what to do."""


class RunOwnedError(StorageError):
    """Another live process (maybe another Colab runtime) is writing this run; the message names it
    and says how to take the run over deliberately."""
