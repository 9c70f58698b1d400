"""Where music files come from: any folder, the Nottingham dataset (downloaded once and cached
under the root), or the folk tunes bundled with music21 (offline)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .. import storage
from ..errors import DatasetError

MUSIC_SUFFIXES = (".mid", ".midi", ".abc")

# The original project's default dataset: the top-level MIDI/*.mid of jukedeck/nottingham-dataset.
NOTTINGHAM_URL = "https://github.com/jukedeck/nottingham-dataset/archive/refs/heads/master.zip"
_NOTTINGHAM_MEMBER = re.compile(r"^[^/]+/MIDI/([^/]+\.mid)$", re.IGNORECASE)
_DOWNLOAD_MARKER = ".midikit_download.json"  # written last: the cache is complete


def list_music_files(folder: Path) -> list[Path]:
    """Every .mid/.midi/.abc under `folder` (recursive, hidden entries skipped), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"Input folder {folder} does not exist; "
                           "pass a folder of .mid/.midi/.abc files with --input_dir.")
    found = []
    for parent, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(parent, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(MUSIC_SUFFIXES)]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def corpus_dir() -> Path:
    """The 1059 folk-tune ABC files of Ryan's Mammoth Collection inside the installed music21
    (located without importing music21, which takes seconds)."""
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("The offline corpus needs music21: `pip install music21`, "
                           "or use --input_dir / --source nottingham.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "corpus" / "ryansMammoth"
    if not folder.is_dir():
        raise DatasetError(f"music21 is installed but has no bundled folk corpus at {folder}; "
                           "reinstall music21 or use --input_dir.")
    return folder


def download_nottingham(root: Path, url: str | None = None, log=print) -> Path:
    """Download the Nottingham MIDI files once into `<root>/_sources/nottingham/`; later calls reuse them."""
    url = url or NOTTINGHAM_URL
    target = storage.sources_dir(root, "nottingham")
    marker = target / _DOWNLOAD_MARKER
    if marker.is_file():
        return target
    log(f"Downloading the Nottingham dataset from {url} ...")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            archive = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetError(
            f"Could not download the Nottingham dataset from {url} ({getattr(exc, 'reason', exc)}). "
            "Check the internet connection, or download the repository yourself and pass its MIDI folder with "
            "--input_dir; --source corpus works offline."
        ) from exc
    try:
        members = _extract_nottingham(archive, target)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"The download from {url} is not a zip archive ({exc}); run the command again.") from exc
    if not members:
        raise DatasetError(f"The archive from {url} holds no MIDI/*.mid files; is the URL right?")
    storage.atomic_write_text(marker, json.dumps({"url": url, "files": members}))
    log(f"Saved {members} Nottingham MIDI files to {target}")
    return target


def _extract_nottingham(archive: bytes, target: Path) -> int:
    count = 0
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        try:
            target.mkdir(parents=True, exist_ok=True)
            for info in zipped.infolist():
                match = _NOTTINGHAM_MEMBER.match(info.filename)
                if match:  # only the base name is used, so no member can escape `target`
                    # Plain writes: the marker written after them is what marks the cache complete.
                    (target / match.group(1)).write_bytes(zipped.read(info))
                    count += 1
        except OSError as exc:
            raise storage.explain_os_error(exc, target) from exc
    return count
