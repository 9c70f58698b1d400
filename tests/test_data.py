"""midikit.data on real music: the Nottingham files and music21's bundled folk corpus."""

from __future__ import annotations

import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import symusic

from midikit import cli, storage
from midikit.data import (
    DatasetError,
    PreprocessConfig,
    load_dataset,
    preprocess,
    sources,
    split_files,
    tokens_to_score,
)
from midikit.data.tokenization import FileTokenizer, separate_programs, tokenizer_spec
from midikit.models import ConfigError
from midikit.storage import DatasetPaths

quiet = dict(progress=False, log=lambda message: None)


def run(root: Path, **settings):
    return preprocess(PreprocessConfig(checkpoint_dir=str(root), **settings), **quiet)


@pytest.fixture(scope="module")
def merged(nottingham_dir, tmp_path_factory):
    """40 Nottingham tunes, merged tracks, transposed by -1, 0, +1."""
    root = tmp_path_factory.mktemp("merged")
    result = run(root, input_dir=str(nottingham_dir), dataset="m", limit=40, transpositions="-1,0,1", val_split=0.1)
    return result, load_dataset(result.paths)


def pitch_table(tokenizer) -> np.ndarray:
    """Token id -> MIDI pitch for Pitch tokens, -1 for every other token."""
    table = np.full(len(tokenizer), -1)
    for token, token_id in tokenizer.vocab.items():
        if token.startswith("Pitch_"):
            table[token_id] = int(token.split("_")[1])
    return table


def transposition_free(seq: np.ndarray, pitches: np.ndarray) -> bytes:
    """A sequence with its pitches made relative to its lowest: equal for all transposed copies of a tune."""
    seq = np.asarray(seq, dtype=np.int64)
    is_pitch = pitches[seq] >= 0
    out = seq.copy()
    out[is_pitch] = 10_000 + pitches[seq[is_pitch]] - pitches[seq[is_pitch]].min()
    return out.tobytes()


def test_counts_split_by_file_and_no_leakage(merged):
    result, data = merged
    config = result.config
    assert not result.cache_hit
    assert config["files_found"] == config["files_processed"] == 40 and config["files_skipped"] == []
    train_files, val_files = set(config["train_files"]), set(config["val_files"])
    assert len(val_files) == 4 and not train_files & val_files and len(train_files | val_files) == 40
    # Every training tune at 3 transpositions (none leave the pitch range), validation untransposed.
    assert config["augmentation"]["skipped_out_of_range"] == 0
    assert data.num_sequences("train") == 3 * 36 and data.num_sequences("val") == 4
    for split in ("train", "val"):
        tokens, offsets = getattr(data, f"{split}_tokens"), getattr(data, f"{split}_offsets")
        assert tokens.dtype == np.uint16 and offsets.dtype == np.int64
        assert offsets[0] == 0 and offsets[-1] == len(tokens) == config["splits"][split]["tokens"]
        assert (tokens[offsets[:-1]] == data.bos_id).all() and (tokens[offsets[1:] - 1] == data.eos_id).all()
        assert tokens.max() < data.vocab_size
    # No transposed copy of a validation tune reached training.
    pitches = pitch_table(data.tokenizer)
    train = {transposition_free(data.sequence("train", i), pitches) for i in range(data.num_sequences("train"))}
    val = [transposition_free(data.sequence("val", i), pitches) for i in range(data.num_sequences("val"))]
    assert len(train) == 36 and not train & set(val)
    assert data.vocab_size == len(data.tokenizer) == 486 and data.seq_length == 100 and data.name == "m"


def test_merged_sequences_decode_to_melody_and_chords(merged, nottingham_dir):
    result, data = merged
    first_val = result.config["val_files"][0]
    source = data.tokenizer.preprocess_score(separate_programs(symusic.Score(nottingham_dir / first_val)))
    decoded = tokens_to_score(data.tokenizer, data.sequence("val", 0))
    # Both source tracks (both on program 0 in the file) come back as two tracks, note for note.
    assert len(source.tracks) == 2 and [t.program for t in decoded.tracks] == [0, 1]
    for original, back in zip(source.tracks, decoded.tracks):
        assert len(back.notes) == len(original.notes) > 0
        assert (back.notes.numpy()["pitch"] == original.notes.numpy()["pitch"]).all()
    # Training holds the -1/0/+1 copies of a tune in that order: same notes, pitches shifted.
    down, same, up = (tokens_to_score(data.tokenizer, data.sequence("train", i)) for i in range(3))
    for shifted, k in ((down, -1), (up, 1)):
        for t_shifted, t_same in zip(shifted.tracks, same.tracks):
            assert (t_shifted.notes.numpy()["pitch"] == t_same.notes.numpy()["pitch"] + k).all()


def test_token_shift_equals_miditok_augmentation(nottingham_dir):
    """The fast path (shifting pitch token ids) gives exactly miditok's augment_score + encode."""
    files = sorted(nottingham_dir.glob("*.mid"))[::90]
    for tracks in ("merged", "separate"):
        fast, reference = FileTokenizer(tokenizer_spec("REMI", tracks)), FileTokenizer(tokenizer_spec("REMI", tracks))
        reference._can_shift = False
        for path in files:
            a, b = fast((path, path.name, (-5, 0, 3))), reference((path, path.name, (-5, 0, 3)))
            assert a.sequences.keys() == b.sequences.keys() == {-5, 0, 3}
            for k in a.sequences:
                assert len(a.sequences[k]) == len(b.sequences[k]) == (1 if tracks == "merged"
                                                                      else len(symusic.Score(path).tracks))
                for x, y in zip(a.sequences[k], b.sequences[k]):
                    assert np.array_equal(x, y)


def test_separate_tracks_give_one_sequence_per_track(nottingham_dir, tmp_path):
    result = run(tmp_path, input_dir=str(nottingham_dir), limit=12, transpositions="0", tracks="separate")
    data = load_dataset(result.paths)
    tracks = {f.name: len(symusic.Score(f).tracks) for f in sorted(nottingham_dir.glob("*.mid"))[:12]}
    assert data.vocab_size == 357  # the seed's REMI vocabulary
    assert data.num_sequences("train") == sum(tracks[f] for f in result.config["train_files"])
    assert data.num_sequences("val") == sum(tracks[f] for f in result.config["val_files"])
    score = tokens_to_score(data.tokenizer, data.sequence("train", 0))
    assert len(score.tracks) == 1 and len(score.tracks[0].notes) > 0


def write_bad_inputs(folder: Path, good: Path) -> dict:
    """A MIDI file of each kind of damage; returns name -> expected words in its skip reason."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (folder / "random.mid").write_bytes(random.Random(0).randbytes(3000))
    (folder / "truncated.mid").write_bytes(data[: len(data) // 2])
    (folder / "empty.mid").write_bytes(b"")
    (folder / "text.mid").write_text("this is a text file, not MIDI\n" * 5)
    (folder / "broken.abc").write_text("no tune in here\n")
    silent = symusic.Score(480)
    silent.tracks.append(symusic.Track())
    silent.dump_midi(folder / "no_notes.mid")
    return {"random.mid": "MThd", "truncated.mid": "chunk", "empty.mid": "empty", "text.mid": "MThd",
            "broken.abc": "abc", "no_notes.mid": "no notes"}


def test_bad_inputs_are_skipped_and_reported_per_file(nottingham_dir, tmp_path):
    folder = tmp_path / "in"
    nested = folder / "nested"
    nested.mkdir(parents=True)
    for path in sorted(nottingham_dir.glob("*.mid"))[:4]:
        shutil.copy(path, nested / path.name)
    (folder / "notes.txt").write_text("not a music file: ignored")
    expected = write_bad_inputs(folder, nottingham_dir / "ashover1.mid")
    logged = []
    result = preprocess(PreprocessConfig(input_dir=str(folder), checkpoint_dir=str(tmp_path / "root"),
                                         transpositions="0"),
                        progress=False, log=logged.append)
    config = result.config
    assert config["files_found"] == 10 and config["files_processed"] == 4
    reasons = {s["file"]: s["reason"] for s in config["files_skipped"]}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words.lower() in reasons[name].lower(), (name, reasons[name])
        assert f"{name}: {reasons[name]}" in result.report
    assert result.report in logged
    assert all(name.startswith("nested/") for name in config["train_files"] + config["val_files"])
    assert load_dataset(result.paths).num_sequences("val") == 1


def test_folder_without_usable_files_is_one_clear_error(nottingham_dir, tmp_path):
    write_bad_inputs(tmp_path / "bad", nottingham_dir / "ashover1.mid")
    with pytest.raises(DatasetError, match="None of the 6 files"):
        run(tmp_path / "root", input_dir=str(tmp_path / "bad"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="No .mid, .midi or .abc files"):
        run(tmp_path / "root", input_dir=str(tmp_path / "nothing"))


def test_rerun_is_a_cache_hit_and_changes_rebuild(nottingham_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(nottingham_dir.glob("*.mid"))[:6]:
        shutil.copy(path, folder / path.name)
    settings = dict(input_dir=str(folder), dataset="c", transpositions="0,1")
    first = run(tmp_path, **settings)
    tokens_file = first.paths.data / "train_tokens.npy"
    written = tokens_file.stat().st_mtime_ns

    logged = []
    again = preprocess(PreprocessConfig(checkpoint_dir=str(tmp_path), **settings), progress=False, log=logged.append)
    assert again.cache_hit and "Cache hit" in logged[0] and "nothing was re-tokenized" in logged[0]
    assert tokens_file.stat().st_mtime_ns == written and again.config["fingerprint"] == first.config["fingerprint"]

    # seq_length is only a recorded default: still a cache hit, config updated.
    longer = run(tmp_path, **settings, seq_length=64)
    assert longer.cache_hit and load_dataset(first.paths).seq_length == 64

    changed = run(tmp_path, **dict(settings, transpositions="0,1,2"))
    assert not changed.cache_hit and changed.config["fingerprint"] != first.config["fingerprint"]
    assert changed.config["splits"]["train"]["sequences"] == 3 * first.config["splits"]["train"]["sequences"] // 2

    (folder / "extra.mid").write_bytes((nottingham_dir / "ashover1.mid").read_bytes())
    grown = run(tmp_path, **dict(settings, transpositions="0,1,2"))
    assert not grown.cache_hit and grown.config["files_processed"] == 7


def test_out_of_range_transpositions_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, pitches in (("high.mid", (60, 104)), ("mid.mid", (60, 64))):
        score = symusic.Score(480)
        track = symusic.Track(program=0)
        for i, pitch in enumerate(pitches):
            track.notes.append(symusic.Note(i * 480, 480, pitch, 80))
        score.tracks.append(track)
        score.dump_midi(folder / name)
    # REMI's pitch range ends at 108: +3 fits both files, +5 only mid.mid, -5 both.
    result = run(tmp_path / "root", input_dir=str(folder), transpositions="-5,0,3,5", val_split=0.5,
                 augment_validation=True, workers=1)  # the in-process path
    augmentation = result.config["augmentation"]
    assert augmentation["skipped_out_of_range"] == 1 and augmentation["skipped_out_of_range_by_offset"] == {"5": 1}
    assert sum(s["sequences"] for s in result.config["splits"].values()) == 7


def test_offline_corpus_source(tmp_path):
    result = run(tmp_path, source="corpus", dataset="folk", limit=6, transpositions="0")
    data = load_dataset(result.paths)
    assert result.config["files_processed"] == 6 and data.num_sequences("train") + data.num_sequences("val") == 6
    assert result.config["source"]["kind"] == "corpus" and all(f.endswith(".abc") for f in result.config["train_files"])
    score = tokens_to_score(data.tokenizer, data.sequence("val", 0))
    assert score.note_num() > 50


def test_nottingham_download_from_a_local_zip(nottingham_dir, tmp_path, monkeypatch):
    archive = tmp_path / "master.zip"
    names = [p.name for p in sorted(nottingham_dir.glob("*.mid"))[:5]]
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("nottingham-dataset-master/README.md", "readme")
        for name in names:
            zipped.write(nottingham_dir / name, f"nottingham-dataset-master/MIDI/{name}")
        zipped.write(nottingham_dir / names[0], "nottingham-dataset-master/MIDI/melody/only_melody.mid")
    monkeypatch.setattr(sources, "NOTTINGHAM_URL", archive.as_uri())
    root = tmp_path / "root"
    result = run(root, source="nottingham", transpositions="0")
    cache = storage.sources_dir(root, "nottingham")
    assert sorted(p.name for p in cache.glob("*.mid")) == names
    assert result.config["files_processed"] == 5 and result.config["source"]["kind"] == "nottingham"
    # The cached download is reused: the archive is no longer needed.
    archive.unlink()
    assert run(root, source="nottingham", transpositions="0").cache_hit

    monkeypatch.setattr(sources, "NOTTINGHAM_URL", (tmp_path / "missing.zip").as_uri())
    with pytest.raises(DatasetError, match="Could not download"):
        run(tmp_path / "other_root", source="nottingham")


def test_cli_preprocess_end_to_end(nottingham_dir, tmp_path, capsys):
    argv = ["preprocess", "--input_dir", str(nottingham_dir), "--dataset", "cli", "--checkpoint_dir", str(tmp_path),
            "--limit", "8", "--transpositions", "-2,0", "--seq_length", "32", "--no_progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "Dataset 'cli'" in out and "8 processed" in out
    data = load_dataset(DatasetPaths(tmp_path, "cli"))
    assert data.seq_length == 32 and data.num_sequences("train") == 2 * len(data.config["train_files"])
    assert "--limit 8" in data.config["command"] and "--transpositions=-2,0" in data.config["command"]
    assert cli.main(argv) == 0 and "Cache hit" in capsys.readouterr().out

    assert cli.main(["preprocess", "--input_dir", str(nottingham_dir), "--checkpoint_dir", str(tmp_path), "--val_split",
                     "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: val_split must be a number > 0.0 and < 1.0, got 1.5. The "
                          "original project uses 0.05.") and "Traceback" not in err
    assert cli.main(["preprocess", "--source", "corpus", "--checkpoint_dir", str(tmp_path), "--tokenizer_params",
                     "{oops"]) == 2
    assert capsys.readouterr().err.startswith("error: tokenizer_params must be a JSON object")


def test_load_dataset_missing_or_damaged_says_what_to_run(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="python -m midikit preprocess"):
        load_dataset(DatasetPaths(tmp_path, "absent"))
    paths = DatasetPaths(tmp_path, tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    data = load_dataset(paths)
    assert data.train_tokens.dtype == np.uint16 and isinstance(data.train_tokens, np.memmap)
    (paths.data / "val_tokens.npy").write_bytes((paths.data / "val_tokens.npy").read_bytes()[:200])
    with pytest.raises(DatasetError, match="incomplete or damaged.*python -m midikit preprocess"):
        load_dataset(paths)
    (paths.data / "config.json").unlink()
    with pytest.raises(DatasetError, match="preprocessing never finished"):
        load_dataset(paths)


def test_split_is_deterministic_and_never_empty():
    files = [f"tune{i}.mid" for i in range(100)]
    val = split_files(files, 0.05, seed=1)
    assert len(val) == 5 and val == split_files(list(reversed(files)), 0.05, seed=1)
    assert val != split_files(files, 0.05, seed=2)
    assert len(split_files(files[:2], 0.05, seed=1)) == 1 and split_files(files[:1], 0.05, seed=1) == []
    # Adding files keeps most earlier validation choices.
    assert len(set(val) & set(split_files(files + [f"new{i}.mid" for i in range(10)], 0.05, seed=1))) >= 4


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(source="corpus", val_split=0), "val_split"),
        (dict(source="corpus", transpositions="a,b"), "transpositions"),
        (dict(source="corpus", tokenizer="Octuple"), "Unknown tokenizer 'Octuple'.*CPWord or Octuple do not give one"),
        (dict(source="corpus", tracks="both"), "tracks"),
        (dict(source="corpus", tokenizer_params={"use_programs": False}), "set by midikit"),
        (dict(source="corpus", tokenizer_params={"no_such_option": 1}), "Unknown tokenizer options"),
        (dict(source="corpus", tokenizer_params={"beat_res": {"x": 3}}), "miditok rejected"),
        (dict(source="folder"), "input_dir"),
        (dict(source="corpus", limit=0), "limit"),
    ],
)
def test_bad_settings_are_config_errors(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, **settings)


def test_bpe_puts_more_music_in_fewer_tokens_and_decodes_to_the_same_notes(tiny_dataset, tmp_path):
    from midikit.data import tokens_to_score

    base = load_dataset(tiny_dataset)
    source = base.config["source"]
    settings = dict(input_dir=source["location"]) if source["kind"] == "folder" else dict(source="corpus")
    result = run(tmp_path, **settings, dataset="bpe", limit=60, transpositions=(0, 2), bpe_vocab=base.vocab_size + 200)
    bpe = load_dataset(result.paths)
    assert bpe.vocab_size == base.vocab_size + 200 and bpe.tokenizer.is_trained
    assert len(bpe.train_tokens) < 0.6 * len(base.train_tokens)  # several REMI tokens become one
    assert bpe.config["splits"]["train"]["sequences"] == base.config["splits"]["train"]["sequences"]
    for index in range(bpe.num_sequences("val")):
        plain = tokens_to_score(base.tokenizer, base.sequence("val", index))
        merged = tokens_to_score(bpe.tokenizer, bpe.sequence("val", index))
        assert merged.note_num() == plain.note_num() > 0
        assert [list(t.notes.numpy()["pitch"]) for t in merged.tracks] == [list(t.notes.numpy()["pitch"])
                                                                           for t in plain.tracks]
    assert "--bpe_vocab" in bpe.config["command"]
    with pytest.raises(ConfigError, match="bpe_vocab=10 is not above the base vocabulary "
                                          f"\\({base.vocab_size} tokens\\)"):
        preprocess(PreprocessConfig(source="corpus", bpe_vocab=10, checkpoint_dir=str(tmp_path)), progress=False)
    assert not (tmp_path / "nottingham").exists()  # refused before anything was read or written
