"""Where things live: Colab detection, Drive mounting, the checkpoint root and the per-dataset layout.

This is the only module that spells folder and artifact names. Everything else asks a
`DatasetPaths` for a path and never joins folder names by hand.

Layout under a root (the original project's, plus what midikit adds)::

    <root>/<dataset>/models/                 best weights <model>_<ts>.pth + <model>_<ts>.json
    <root>/<dataset>/outputs/plots/          loss_curve_<model>_<ts>.png, piano rolls
    <root>/<dataset>/outputs/generated/      generated MIDI files
    <root>/<dataset>/logs/                   models.csv, training_summary_*.txt, *_losses_*.npy
    <root>/<dataset>/data/                   preprocessed tokens, tokenizer.json, config.json
    <root>/<dataset>/checkpoints/<run_id>/   full training-state checkpoints of one run
    <root>/_sources/<name>/                  downloaded source datasets (e.g. Nottingham)
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import StorageError

DRIVE_MOUNT_POINT = Path("/content/drive")
COLAB_DEFAULT_ROOT = DRIVE_MOUNT_POINT / "MyDrive" / "midikit_checkpoints"
LOCAL_DEFAULT_ROOT = Path("midikit_data")
ROOT_ENV_VAR = "MIDIKIT_ROOT"
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


# What stands at the Drive mount point. Only MOUNTED is Google Drive: anything written under the
# mount point in another state stays on the runtime's own disk and is lost with it.
MOUNTED, DROPPED, NOT_MOUNTED, PLAIN_FOLDER = "mounted", "dropped", "not mounted", "plain folder"


def drive_state(mount_point: Path | None = None) -> str:
    """MOUNTED (a filesystem is mounted there and answers), DROPPED (the mount answers "Transport
    endpoint is not connected": its FUSE process is gone or stalled), PLAIN_FOLDER (a folder stands
    where the mount should be: made by hand, or left over) or NOT_MOUNTED."""
    mount_point = Path(mount_point or DRIVE_MOUNT_POINT)
    try:
        os.stat(mount_point)
    except FileNotFoundError:
        return NOT_MOUNTED
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return DROPPED
        raise explain_os_error(exc, mount_point) from exc
    if _mount_table_has(mount_point):
        try:
            os.listdir(mount_point)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED):
                return DROPPED
            raise explain_os_error(exc, mount_point) from exc
        return MOUNTED
    return PLAIN_FOLDER if mount_point.is_dir() and any(mount_point.iterdir()) else NOT_MOUNTED


def _mount_table_has(mount_point: Path) -> bool:
    """Whether the kernel's mount table lists `mount_point` (an empty folder is what a mount point is
    before mounting: only the table tells a mount from a folder)."""
    wanted = os.path.realpath(mount_point)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            # Field 5 is the mount point, with spaces and the like escaped as octal (\040).
            points = [line.split()[4] for line in table if len(line.split()) > 4]
    except OSError:
        return os.path.ismount(mount_point)  # no /proc (macOS): the stat-based guess
    unescape = lambda text: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)  # noqa: E731
    return any(unescape(point) == wanted for point in points)


def drive_is_mounted(mount_point: Path | None = None) -> bool:
    return drive_state(mount_point) == MOUNTED


def drive_problem(path: Path, mount_point: Path | None = None) -> StorageError | None:
    """Why `path`, under the Drive mount point, cannot be used now (None: Drive is mounted and
    answers). Each state has its own fix."""
    mount_point = Path(mount_point or DRIVE_MOUNT_POINT)
    state = drive_state(mount_point)
    if state == MOUNTED:
        return None
    if state == DROPPED:
        error = StorageError(
            f"Google Drive's mount at {mount_point} dropped (Transport endpoint is not connected), so {path} cannot be "
            "reached. Remount it: run `midikit.storage.mount_drive(force_remount=True)` (in notebook 01: the mount "
            "cell again), then this cell again; nothing already on Drive is lost.")
        error.errno = errno.ENOTCONN
        return error
    if state == PLAIN_FOLDER:
        return StorageError(
            f"{mount_point} is a plain folder on this runtime's own disk, not Google Drive: anything saved in {path} "
            "would be lost when the runtime ends. Move it away (`!mv {mp} {mp}_local`), then run "
            "`midikit.storage.mount_drive()` (notebook 01 mounts Drive).".replace("{mp}", str(mount_point)))
    return StorageError(
        f"The checkpoint folder {path} is on Google Drive, but Drive is not mounted. In Colab run "
        "`midikit.storage.mount_drive()` (or notebook 01) first; outside Colab pass a local folder, e.g. "
        f"--checkpoint_dir ./midikit_data or ${ROOT_ENV_VAR}.")


def mount_drive(force_remount: bool = False, mount_point: Path | None = None) -> Path | None:
    """Mount Google Drive in Colab (again when its mount dropped); elsewhere do nothing and return
    None. A plain folder standing at the mount point is refused: Drive cannot mount over it, and
    files saved in it would be lost with the runtime."""
    if not in_colab():
        return None
    mount_point = Path(mount_point or DRIVE_MOUNT_POINT)
    state = drive_state(mount_point)
    if state == PLAIN_FOLDER:
        raise drive_problem(mount_point / "MyDrive", mount_point)
    if state == MOUNTED and not force_remount:
        return mount_point
    from google.colab import drive  # only importable inside Colab

    drive.mount(str(mount_point), force_remount=force_remount or state == DROPPED)
    return mount_point


def flush_drive(mount_point: Path | None = None) -> str:
    """Push what Drive has not uploaded yet (Colab uploads in the background): `flush_and_unmount()`
    in Colab when Drive is mounted. Returns what was done, in words."""
    mount_point = Path(mount_point or DRIVE_MOUNT_POINT)
    if not in_colab():
        return "Not in Colab: files are written straight to this machine's disk; nothing to flush."
    state = drive_state(mount_point)
    if state != MOUNTED:
        return f"Google Drive is {state} at {mount_point}: nothing to flush."
    from google.colab import drive  # only importable inside Colab

    drive.flush_and_unmount()
    return (f"Google Drive flushed and unmounted from {mount_point}: every file written so far is uploaded. "
            "Mount it again (notebook 01, or `midikit.storage.mount_drive()`) before training or generating again.")


def default_root() -> Path:
    """$MIDIKIT_ROOT if set, else the folder chosen in notebook 01 (`midikit.preferences`), else a
    folder on MyDrive in Colab, else ./midikit_data."""
    from .preferences import default_root_and_origin  # it asks this module where Drive is

    return default_root_and_origin()[0]


def resolve_root(root: str | os.PathLike | None = None, create: bool = True) -> Path:
    """Turn a user-given root (or None for the default) into a checked, absolute folder.

    Raises StorageError with a fix when the root is on an unmounted Drive or (with `create`)
    cannot be created or written; without `create` a read-only folder is fine (generation).
    """
    path = Path(root).expanduser() if root not in (None, "") else default_root()
    problem = drive_problem(path) if _is_under(path, DRIVE_MOUNT_POINT) else None
    if problem is not None:
        raise problem
    path = path.absolute()
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise explain_os_error(exc, path) from exc
        check_writable(path)
    return path


def check_writable(folder: Path) -> None:
    """Raise StorageError if a small file cannot be created in `folder`."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".midikit_probe_", delete=True) as handle:
            handle.write(b"ok")
            handle.flush()
    except OSError as exc:
        raise explain_os_error(exc, folder) from exc


def explain_os_error(exc: OSError, path: Path) -> StorageError:
    """Translate a raw OSError on `path` into a StorageError that says what to do (its `errno` kept)."""
    if exc.errno == errno.ENOSPC:
        error = StorageError(f"The disk holding {path} is full. Free some space (on Drive: empty the trash) "
                             "or choose another folder.")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        error = StorageError(f"Cannot write to {path} ({exc.strerror}). Choose a folder you can write to.")
    elif exc.errno == errno.ENOTCONN:
        error = StorageError(
            f"Google Drive dropped its connection while using {path} (Transport endpoint is not connected). "
            "If it does not come back by itself, remount with `midikit.storage.mount_drive(force_remount=True)`."
        )
    elif exc.errno == errno.ENOENT:
        error = StorageError(f"{path.parent} is gone (No such file or directory): on Google Drive the mount dropped, "
                             "or the folder was moved. Remount with `midikit.storage.mount_drive(force_remount=True)`.")
    elif exc.errno == errno.EIO:
        error = StorageError(f"The disk failed to read or write {path} (Input/output error): on Drive, a dropped or "
                             "overloaded connection. If it persists, remount with "
                             "`midikit.storage.mount_drive(force_remount=True)`.")
    else:
        error = StorageError(f"Cannot use {path}: {exc.strerror or exc}.")
    error.errno = exc.errno
    return error


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.absolute().relative_to(parent)
        return True
    except ValueError:
        return False


_temporary_names = itertools.count()


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` for writing it: listings never mistake it for the real file, and
    every write gets its own (an abandoned write may still be running when the next one starts)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_temporary_names)}")


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, however it was wrapped: torch.save re-raises a failing file object's
    OSError as a RuntimeError whose __context__ (not __cause__) is the original."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def replace_file(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path`, then empty the replaced file: Drive keeps replaced and deleted
    files in its trash, where full-size checkpoints would keep eating the quota. The old file is
    emptied through a descriptor opened before the rename, so `path` is never empty or missing."""
    try:
        old = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        old = None
    try:
        os.replace(tmp, path)
        if old is not None:
            try:
                os.ftruncate(old, 0)
            except OSError:
                pass  # only the trash copy stays full-size
    finally:
        if old is not None:
            os.close(old)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that `path` is either the old file or the complete new one, never half:
    a temporary name in the same folder, flush + fsync, then rename over `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        replace_file(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise explain_os_error(exc, path) from exc
    _fsync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable on local disks; some filesystems (Drive's FUSE) refuse it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def timestamp(now: datetime | None = None) -> str:
    """The original project's artifact timestamp, e.g. 20261128_214500."""
    return (now or datetime.now()).strftime(TIMESTAMP_FORMAT)


# \Z, not $: "$" also matches before a trailing newline, which would let "lstm_..._...\n" name a folder.
RUN_ID_PATTERN = re.compile(r"^(?P<model_type>[a-z][a-z0-9]*)_(?P<timestamp>\d{8}_\d{6})\Z")


def parse_run_id(run_id: str) -> tuple[str, str]:
    """(model_type, timestamp) of a run id; StorageError for anything else. Run ids read from a
    (possibly shared) folder name paths that midikit writes and deletes, so they are checked."""
    match = RUN_ID_PATTERN.match(str(run_id))
    if match is None:
        raise StorageError(f"{run_id!r} is not a midikit run id "
                           "(expected <model>_<YYYYmmdd_HHMMSS>, e.g. lstm_20261128_214500).")
    return match["model_type"], match["timestamp"]


def make_run_id(model_type: str, ts: str | None = None) -> str:
    """A run's id, `<model>_<YYYYmmdd_HHMMSS>`; every artifact of the run carries it."""
    return f"{model_type}_{ts or timestamp()}"


def sources_dir(root: Path, name: str) -> Path:
    """Cache folder for a downloaded source dataset (shared by all datasets under the root)."""
    return Path(root) / "_sources" / name


@dataclass(frozen=True)
class DatasetPaths:
    """Every path of one dataset under one root. Folders are created by `ensure()`."""

    root: Path
    dataset: str

    def __post_init__(self):
        if not self.dataset or any(sep in self.dataset for sep in ("/", "\\")) or self.dataset in (".", ".."):
            raise StorageError(f"Invalid dataset name {self.dataset!r}: use a plain folder name such as 'nottingham'.")
        object.__setattr__(self, "root", Path(self.root))

    # folders -----------------------------------------------------------------
    @property
    def base(self) -> Path:
        return self.root / self.dataset

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def outputs(self) -> Path:
        return self.base / "outputs"

    @property
    def plots(self) -> Path:
        return self.outputs / "plots"

    @property
    def generated(self) -> Path:
        return self.outputs / "generated"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"

    def run_checkpoints(self, run_id: str) -> Path:
        parse_run_id(run_id)
        return self.checkpoints / run_id

    # files -------------------------------------------------------------------
    @property
    def models_csv(self) -> Path:
        return self.logs / "models.csv"

    def best_weights(self, run_id: str) -> Path:
        parse_run_id(run_id)
        return self.models / f"{run_id}.pth"

    def weights_sidecar(self, run_id: str) -> Path:
        parse_run_id(run_id)
        return self.models / f"{run_id}.json"

    def loss_plot(self, run_id: str) -> Path:
        return self.plots / f"loss_curve_{run_id}.png"

    def training_summary(self, run_id: str) -> Path:
        return self.logs / f"training_summary_{run_id}.txt"

    def train_losses(self, run_id: str) -> Path:
        return self.logs / f"train_losses_{run_id}.npy"

    def val_losses(self, run_id: str) -> Path:
        return self.logs / f"val_losses_{run_id}.npy"

    def generated_midi(self, run_id: str, strategy: str, sample_index: int, tag: str = "") -> Path:
        parse_run_id(run_id)
        suffix = f"_{tag}" if tag else ""
        return self.generated / f"{run_id}_{strategy}{suffix}_sample{sample_index:02d}.mid"

    def quality_report(self, run_id: str, suffix: str = ".json") -> Path:
        """outputs/quality/<run_id>.json (a run's quality report; ".png" its figure)."""
        parse_run_id(run_id)
        return self.outputs / "quality" / f"{run_id}{suffix}"

    def ensure(self) -> "DatasetPaths":
        for folder in (self.models, self.plots, self.generated, self.logs, self.data, self.checkpoints):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise explain_os_error(exc, folder) from exc
        return self


def dataset_paths(root: str | os.PathLike | None, dataset: str, create: bool = True) -> DatasetPaths:
    """Resolve the root (default if None) and return the dataset's layout, folders created."""
    paths = DatasetPaths(resolve_root(root, create=create), dataset)
    return paths.ensure() if create else paths


def list_datasets(root: str | os.PathLike | None) -> list[str]:
    """Datasets under a root: folders that hold a preprocessed `data/config.json` or a `models/` folder."""
    root_path = resolve_root(root, create=False) if root is not None else default_root()
    if not root_path.is_dir():
        return []
    found = []
    for child in sorted(root_path.iterdir()):
        if child.is_dir() and not child.name.startswith(("_", ".")):
            if (child / "data" / "config.json").is_file() or (child / "models").is_dir():
                found.append(child.name)
    return found
