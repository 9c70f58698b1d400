"""Generation: loading runs, cached decoding == recompute, sampling, MIDI output, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from helpers import own_root

from midikit import checkpoints
from midikit import runs as registry
from midikit.cli import main
from midikit.data import DatasetError, load_dataset, tokens_to_score
from midikit.generate import (
    FINISHED_CHECK_EVERY,
    SLIDE_KEEP,
    GenerationError,
    SampleConfig,
    Sampler,
    _tokenize_seed,
    decode,
    generate,
    load_run,
    next_tokens,
)
from midikit.models import MODEL_TYPES, ConfigError, ModelConfig, build_model
from midikit.storage import DatasetPaths
from midikit.train import TrainConfig, train

CONTEXT = 32
STEPS = 60  # enough for every model type to write notes
GREEDY = SampleConfig(strategy="greedy")
# Small enough to train in seconds on two CPU cores, big enough to learn REMI's grammar.
TINY_MODELS = {
    "lstm": dict(embed_size=32, hidden_size=64, num_layers=1, dropout=0.0),
    "gru": dict(embed_size=32, hidden_size=64, num_layers=1, dropout=0.0),
    # learned positions: the tests of runs saved before `positions` existed need one; rotary runs are tested on their
    # own.
    "transformer": dict(d_model=64, nhead=2, num_layers=2, dim_feedforward=128, dropout=0.0, positions="learned"),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


ROPE = "transformer_rope"  # the Transformer with rotary positions, trained in a root of its own
MODELS = (*MODEL_TYPES, ROPE)


def _train_tiny(paths: DatasetPaths, model_type: str, **model_values):
    model_config = ModelConfig(model_type, load_dataset(paths).vocab_size, CONTEXT, **model_values)
    config = TrainConfig(
        dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset="cpu", max_steps=STEPS,
        batch_size=16, lr=1e-2, eval_every=STEPS // 2, eval_windows=16, device="cpu", resume="never", progress=False,
        checkpoint_every_minutes=0,
    )
    return train(config, model_config, log=lambda *args: None)


def _copy_of(tiny_dataset, tmp_path_factory, name: str) -> DatasetPaths:
    paths = DatasetPaths(tmp_path_factory.mktemp(name), tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    return paths


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> dict:
    """One briefly trained run per model type, in a root of their own (a copy of the tiny dataset)."""
    paths = _copy_of(tiny_dataset, tmp_path_factory, "generate_root")
    results = {model_type: _train_tiny(paths, model_type, **TINY_MODELS[model_type]) for model_type in MODEL_TYPES}
    return {"paths": paths, "results": results}


@pytest.fixture(scope="module")
def loaded(runs, tiny_dataset, tmp_path_factory) -> dict:
    """The runs of `runs`, and a RoPE Transformer (its own root: 'latest transformer' stays one run)."""
    models = {mt: load_run(result.artifacts["weights"], device="cpu") for mt, result in runs["results"].items()}
    rope_paths = _copy_of(tiny_dataset, tmp_path_factory, "rope_root")
    rope = _train_tiny(rope_paths, "transformer", **{**TINY_MODELS["transformer"], "positions": "rope"})
    models[ROPE] = load_run(rope.artifacts["weights"], device="cpu")
    return models


def greedy_reference(model, prime: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """The definition of greedy decoding, by re-running the model for every token:

    * RNN: on everything so far;
    * Transformer, learned positions: on the visible window, which restarts at the last
      SLIDE_KEEP of the context when it would grow past the context;
    * Transformer, RoPE: on everything so far, at absolute positions 0.., every layer attending to
      the last context_length positions only (`window`): a rolling cache computes exactly that,
      its oldest key overwritten by each new one.

    Returns the sequence and the logits each token was chosen from."""
    config = model.config
    slides = config.model_type == "transformer" and config.positions == "learned"
    window = config.context_length if config.model_type == "transformer" and not slides else None
    keep = int(config.context_length * SLIDE_KEEP)
    seq, start, chosen_from = list(prime), 0, []
    for _ in range(new_tokens):
        if slides and len(seq) - start > config.context_length:
            start = len(seq) - keep
        with torch.no_grad():
            inputs = torch.tensor([seq[start:]])
            chosen_from.append((model(inputs, window=window) if window else model(inputs))[0, -1])
        seq.append(int(chosen_from[-1].argmax()))
    return seq, torch.stack(chosen_from)


def recording_greedy():
    """A greedy `pick` that keeps the logits it was given."""
    seen = []

    def pick(logits):
        seen.append(logits.clone())
        return next_tokens(logits, GREEDY)

    return pick, seen


@pytest.mark.parametrize("model_type", MODELS)
def test_greedy_cached_decoding_equals_recompute_past_the_context(loaded, model_type):
    run = loaded[model_type]
    prime = [int(t) for t in run.dataset.val_tokens[: CONTEXT // 2]]
    new_tokens = 3 * CONTEXT  # the learned transformer's window slides several times, the RoPE cache rolls twice over
    pick, seen = recording_greedy()
    cached = decode(run.model, torch.tensor([prime, prime]), new_tokens, pick)
    reference, reference_logits = greedy_reference(run.model, prime, new_tokens)
    assert cached.shape == (2, len(prime) + new_tokens)
    assert cached[0].tolist() == reference == cached[1].tolist()
    # Same tokens could hide a different window; the logits they came from cannot.
    torch.testing.assert_close(torch.stack(seen)[:, 0], reference_logits, rtol=1e-4, atol=1e-4)
    assert len(set(reference[len(prime) :])) > 3  # a real tune, not one token repeated
    # The same through the step that picks on the device (Sampler: no Python function per token).
    on_device = decode(run.model, torch.tensor([prime, prime]), new_tokens, Sampler(GREEDY))
    assert on_device[0].tolist() == reference == on_device[1].tolist()


@pytest.mark.parametrize("model_type", ["transformer", ROPE])
def test_long_prime_slides_or_rolls_before_the_first_token(loaded, model_type):
    run = loaded[model_type]
    prime = [int(t) for t in run.dataset.val_tokens[: 2 * CONTEXT + 5]]
    pick, seen = recording_greedy()
    cached = decode(run.model, torch.tensor([prime]), CONTEXT, pick)
    reference, reference_logits = greedy_reference(run.model, prime, CONTEXT)
    assert cached[0].tolist() == reference
    torch.testing.assert_close(torch.stack(seen)[:, 0], reference_logits, rtol=1e-4, atol=1e-4)


def aot_eager(step):
    return torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error


@pytest.mark.parametrize("model_type, sample", [
    ("transformer", GREEDY), (ROPE, GREEDY), (ROPE, SampleConfig("top_p", p=0.9)),
])
def test_the_compiled_step_is_one_graph_and_decodes_like_the_eager_one(loaded, model_type, sample):
    """The fixed-shape step traces whole and never recompiles (same shapes and guards every token,
    the learned window's slides included, and for any length), and gives the eager step's tokens
    over hundreds of steps."""
    run = loaded[model_type]
    prime = torch.tensor([[int(t) for t in run.dataset.val_tokens[:5]]] * 2)
    bars = [i for token, i in run.tokenizer.vocab.items() if token.startswith("Bar_")]
    common = dict(stop_ids=[run.dataset.eos_id], bar_ids=bars, max_bars=1000, fill_id=run.dataset.pad_id)
    new_tokens = 300
    eager = decode(run.model, prime, new_tokens, Sampler(sample, torch.Generator().manual_seed(3)), **common)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode(run.model, prime, new_tokens, Sampler(sample, torch.Generator().manual_seed(3)),
                          compile_step=aot_eager, **common)
        shorter = decode(run.model, prime, 40, Sampler(sample, torch.Generator().manual_seed(3)),  # the same graph
                         compile_step=aot_eager, **common)
    assert torch.equal(compiled, eager)
    assert torch.equal(shorter, eager[:, : 5 + 40])
    assert eager.shape[1] > 5 + 2 * CONTEXT  # long enough to slide or roll before any EOS


def test_compiling_an_rnn_step_is_refused_with_the_fix(loaded):
    with pytest.raises(ConfigError, match="compile_step is for the Transformer.*compile_step=None"):
        decode(loaded["gru"].model, torch.tensor([[1, 2]]), 4, Sampler(GREEDY), compile_step=aot_eager)


def test_sampler_draws_follow_its_seed_differ_per_row_and_leave_the_global_rng_alone(loaded):
    run = loaded[ROPE]
    prime = torch.tensor([[int(t) for t in run.dataset.val_tokens[:5]]] * 3)
    top_p = SampleConfig("top_p", p=0.95)

    def draw(seed):
        return decode(run.model, prime, 3 * FINISHED_CHECK_EVERY, Sampler(top_p, torch.Generator().manual_seed(seed)))

    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # rows get noise of their own
    state = torch.get_rng_state()
    draw(1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_sampling_strategies_respect_their_limits():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    generator = torch.Generator().manual_seed(0)

    def draws(sample):
        return torch.stack([next_tokens(logits, sample, generator) for _ in range(200)], 1)

    top3 = logits.topk(3).indices
    assert all(set(row.tolist()) <= set(allowed.tolist())
               for row, allowed in zip(draws(SampleConfig("top_k", k=3)), top3))
    assert (draws(SampleConfig("top_p", p=1e-6)) == logits.argmax(-1, keepdim=True)).all()  # tiny p: only the best
    probs, order = logits.softmax(-1).sort(descending=True)
    nucleus_sizes = (probs.cumsum(-1) < 0.5).sum(-1) + 1  # the fewest tokens holding half the probability
    for row, allowed, size in zip(draws(SampleConfig("top_p", p=0.5, temperature=1.0)), order, nucleus_sizes):
        assert set(row.tolist()) == set(allowed[:size].tolist())
    assert torch.equal(next_tokens(logits, GREEDY), logits.argmax(-1))
    assert len(set(draws(SampleConfig("temperature", temperature=5.0))[0].tolist())) > 10  # hot: spread out
    # Given noise decides among the allowed tokens only.
    worst_allowed, best_banned = top3[:, 2], logits.topk(4).indices[:, 3]
    noise = torch.zeros_like(logits)
    noise[torch.arange(4), worst_allowed] = 100.0
    assert torch.equal(next_tokens(logits, SampleConfig("top_k", k=3), noise=noise), worst_allowed)
    noise[torch.arange(4), best_banned] = 1000.0
    assert torch.equal(next_tokens(logits, SampleConfig("top_k", k=3), noise=noise), worst_allowed)


@pytest.mark.parametrize("sample", [SampleConfig("top_p", p=0.9), SampleConfig("top_k", k=1)])
def test_top_p_and_top_k_never_cut_a_kept_token_and_draw_it_at_the_models_probability(sample):
    """The end of a piece is kept out of the truncation: drawn about as often as the model gives it
    (3% beside a 95% token), while the tail it would have been cut with stays cut."""
    probs = torch.tensor([0.95, 0.03] + [0.02 / 48] * 48)
    logits = probs.log().expand(4000, -1)
    generator = torch.Generator().manual_seed(0)
    cut = next_tokens(logits, sample, generator)
    kept = next_tokens(logits, sample, generator, keep_ids=torch.tensor([1]))
    assert set(cut.tolist()) == {0}
    assert set(kept.tolist()) == {0, 1} and 0.02 < (kept == 1).float().mean() < 0.045  # 0.03 / 0.98 expected


def test_pieces_end_when_the_model_ends_them_unless_the_end_may_be_cut(loaded):
    run = loaded["lstm"]
    sample = SampleConfig(strategy="top_p", p=0.5, num_tokens=400, num_samples=16, seed=0)
    kept, cut = (generate(run, replace(sample, keep_end=keep), save=False, progress=False) for keep in (True, False))
    assert sum(kept.ended) > sum(cut.ended)


def test_fixed_seed_gives_the_same_music(loaded):
    run = loaded["lstm"]
    sample = SampleConfig(strategy="top_k", k=8, num_tokens=48, num_samples=2, seed=7)
    first = generate(run, sample, save=False, progress=False)
    again = generate(run, sample, save=False, progress=False)
    other = generate(run, replace(sample, seed=8), save=False, progress=False)
    assert first.tokens == again.tokens and first.seed == 7
    assert first.tokens != other.tokens
    assert first.tokens[0] != first.tokens[1]  # variations in one batch differ


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generated_files_load_back_with_notes(loaded, model_type):
    run = loaded[model_type]
    result = generate(run, SampleConfig(strategy="top_p", p=0.9, num_tokens=160, num_samples=2, seed=0), progress=False)
    assert len(result.midi_paths) == 2
    for i, path in enumerate(result.midi_paths):
        assert path.parent == run.paths.generated
        assert path.name.startswith(f"{run.run_id}_top_p_") and path.name.endswith(f"_sample{i:02d}.mid")
        assert symusic.Score(path).note_num() == result.scores[i].note_num() > 0
    bos, eos, pad = run.dataset.bos_id, run.dataset.eos_id, run.dataset.pad_id
    assert all(not {bos, eos, pad} & set(tokens) for tokens in result.tokens)
    assert all(0.0 <= share <= 1.0 for share in result.invalid_token_share)
    assert result.tokens_per_second > 0


def test_length_in_bars(loaded):
    run = loaded["transformer"]
    bar = run.tokenizer["Bar_None"]
    result = generate(run, SampleConfig(strategy="top_k", bars=2, num_samples=3, seed=1), save=False, progress=False)
    assert all(tokens.count(bar) <= 2 for tokens in result.tokens)
    assert any(tokens.count(bar) == 2 for tokens in result.tokens)


def test_continues_a_seed_midi(loaded, nottingham_dir):
    run = loaded["gru"]
    seed_midi = nottingham_dir / "ashover1.mid"
    result = generate(run, SampleConfig(strategy="top_k", num_tokens=64, seed=3), seed_midi=seed_midi, progress=False)
    prime = _tokenize_seed(run.tokenizer, seed_midi)
    assert len(prime) > 100 and result.tokens[0][: len(prime)] == prime
    assert result.new_tokens[0] > 0 and len(result.tokens[0]) == len(prime) + result.new_tokens[0]
    assert "_cont_" in result.midi_paths[0].name
    seed_notes = tokens_to_score(run.tokenizer, prime).note_num()
    assert seed_notes >= 0.9 * symusic.Score(seed_midi).note_num()  # the tokenizer keeps the seed
    assert symusic.Score(result.midi_paths[0]).note_num() >= seed_notes


def test_a_seed_midi_without_notes_is_refused(loaded, tmp_path):
    empty = symusic.Score(480)
    empty.tracks.append(symusic.Track("silence"))
    empty.dump_midi(tmp_path / "empty.mid")
    with pytest.raises(GenerationError, match="has no notes"):
        generate(loaded["lstm"], SampleConfig(num_tokens=8), seed_midi=tmp_path / "empty.mid", progress=False)
    (tmp_path / "junk.mid").write_bytes(b"not a midi file")
    with pytest.raises(GenerationError, match="Cannot read the seed MIDI"):
        generate(loaded["lstm"], SampleConfig(num_tokens=8), seed_midi=tmp_path / "junk.mid", progress=False)


def test_every_way_to_name_a_run_loads_the_same_model(runs, loaded):
    paths, result = runs["paths"], runs["results"]["transformer"]
    finished = registry.finished_runs(paths)
    assert {run.run_id for run in finished} == {r.run_id for r in runs["results"].values()}
    assert [run.run_id for run in registry.finished_runs(paths, "gru")] == [runs["results"]["gru"].run_id]
    latest = load_run("latest", paths, model_type="transformer", device="cpu")
    by_sidecar = load_run(result.artifacts["sidecar"], device="cpu")
    by_checkpoint = load_run(paths.run_checkpoints(result.run_id) / "best.pt", device="cpu")
    expected = loaded["transformer"].model.state_dict()
    for run in (latest, by_sidecar, by_checkpoint):
        assert run.run_id == result.run_id
        assert all(torch.equal(value, run.model.state_dict()[name]) for name, value in expected.items())
    assert by_checkpoint.sidecar["model_config"] == latest.sidecar["model_config"]
    # its newest checkpoint
    by_folder = load_run(paths.run_checkpoints(result.run_id), device="cpu", log=lambda *args: None)
    assert by_folder.run_id == result.run_id and by_folder.sidecar["status"] == "finished"


def _copy_run(runs, tmp_root: Path, model_type: str = "lstm") -> tuple[DatasetPaths, Path, Path]:
    """The run's weights and sidecar in a fresh root that shares the dataset."""
    source = runs["paths"]
    paths = DatasetPaths(tmp_root, source.dataset).ensure()
    shutil.copytree(source.data, paths.data, dirs_exist_ok=True)
    result = runs["results"][model_type]
    weights = shutil.copy(result.artifacts["weights"], paths.models)
    sidecar = shutil.copy(result.artifacts["sidecar"], paths.models)
    return paths, Path(weights), Path(sidecar)


def test_a_checkpoint_of_another_vocabulary_is_refused(runs, tmp_path):
    paths, weights, sidecar_path = _copy_run(runs, tmp_path)
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["model_config"]["vocab_size"] += 12
    sidecar_path.write_text(json.dumps(sidecar))
    torch.save(build_model(ModelConfig.from_dict(sidecar["model_config"])).state_dict(), weights)
    with pytest.raises(GenerationError, match=r"vocabulary of \d+ tokens.*now has \d+"):
        load_run(weights, device="cpu")


def test_a_transformer_saved_before_positions_and_padding_loads_and_generates_the_same(runs, loaded, tmp_path):
    """Old .pth files have vocab_size rows in token_emb/head and sidecars without `positions`."""
    paths, weights, sidecar_path = _copy_run(runs, tmp_path, "transformer")
    vocab = loaded["transformer"].model_config.vocab_size
    state = torch.load(weights, weights_only=True)
    assert state["head.weight"].shape[0] % 64 == 0 and state["head.weight"].shape[0] > vocab
    torch.save({name: value[:vocab] if name in ("token_emb.weight", "head.weight") else value
                for name, value in state.items()}, weights)
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["model_config"]["positions"]
    sidecar_path.write_text(json.dumps(sidecar))
    old = load_run(weights, device="cpu")
    assert old.model_config.positions == "learned"
    sample = SampleConfig(strategy="top_k", num_tokens=40, seed=4)
    assert generate(old, sample, save=False, progress=False).tokens == \
        generate(loaded["transformer"], sample, save=False, progress=False).tokens


def test_a_missing_sidecar_is_refused(runs, tmp_path):
    _, weights, sidecar = _copy_run(runs, tmp_path)
    sidecar.unlink()
    with pytest.raises(GenerationError, match="has no sidecar"):
        load_run(weights, device="cpu")


def test_corrupt_files_are_refused(runs, tmp_path):
    _, weights, _ = _copy_run(runs, tmp_path)
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(GenerationError, match="corrupt or truncated"):
        load_run(weights, device="cpu")
    best = runs["paths"].run_checkpoints(runs["results"]["lstm"].run_id) / "best.pt"
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(best.read_bytes()[:-100])
    shutil.copy(checkpoints.checksum_path(best), checkpoints.checksum_path(damaged))
    with pytest.raises(GenerationError, match="Cannot use the checkpoint"):
        load_run(damaged, device="cpu")


def test_latest_without_a_run_with_weights_says_how_to_train(tiny_dataset, tmp_path):
    with pytest.raises(GenerationError, match="python -m midikit train --dataset tiny --model_type gru"):
        load_run("latest", own_root(tiny_dataset, tmp_path), model_type="gru")
    with pytest.raises(DatasetError, match="midikit preprocess"):  # no dataset at all: the step before
        load_run("latest", DatasetPaths(tmp_path, "nottingham"), model_type="gru")
    with pytest.raises(GenerationError, match="names a run of a dataset"):  # no dataset name is guessed
        load_run("latest")


def test_a_tokenizer_file_naming_another_class_is_refused(runs, tmp_path):
    paths, weights, _ = _copy_run(runs, tmp_path)
    tokenizer_file = paths.data / "tokenizer.json"
    saved = json.loads(tokenizer_file.read_text())
    assert saved["tokenization"] == "REMI"
    tokenizer_file.write_text(json.dumps(dict(saved, tokenization="CPWord")))  # real miditok class, not a usable one
    with pytest.raises(DatasetError, match="'CPWord'.*preprocess the dataset again"):
        load_run(weights, device="cpu")


def test_finished_runs_sort_by_run_id_and_skip_foreign_folders(runs, tmp_path):
    paths = runs["paths"]
    listed = [run.run_id for run in registry.finished_runs(paths)]
    assert (listed == sorted(listed, key=lambda run_id: run_id.split("_", 1)[1], reverse=True)
            and len(listed) == len(MODEL_TYPES))
    own = DatasetPaths(tmp_path, paths.dataset)
    shutil.copytree(paths.models, own.models)
    shutil.copytree(paths.checkpoints, own.checkpoints)
    (own.checkpoints / "notes").mkdir()  # not a run id: never listed
    (own.checkpoints / "lstm_20200101_000000").mkdir()  # a run id without a record or weights
    (own.checkpoints / "lstm_20200101_000000" / "run.json").write_text("{not json")
    assert [run.run_id for run in registry.finished_runs(own)] == listed


@pytest.mark.parametrize("values, flag", [
    (dict(p=0.0), "p must be a number > 0.0 and <= 1.0, got 0.0. Try 0.9"), (dict(p=1.5), "p must be"),
    (dict(k=0), "k must be an integer >= 1"),
    (dict(temperature=0.0), "temperature must be a number > 0.0, got 0.0. 1.0 samples the model as trained"),
    (dict(temperature=-1.0), "temperature must be"), (dict(strategy="beam"), "Unknown strategy 'beam'"),
    (dict(num_tokens=0), "num_tokens must be an integer >= 1"),
    (dict(seed=np.int64(3), k=np.float64(2.0)), "k must be an integer"),
])
def test_bad_sampling_values_are_refused(values, flag):
    with pytest.raises(ConfigError, match=flag):
        SampleConfig(**values).validate()


def test_cli_generates_and_reports_bad_flags_in_one_line(runs, capsys):
    paths = runs["paths"]
    common = ["generate", "--checkpoint_dir", str(paths.root), "--dataset", paths.dataset, "--device", "cpu"]
    assert main(common + ["--p", "1.5"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    before = set(paths.generated.glob("*.mid")) if paths.generated.is_dir() else set()
    assert main(common + ["--model_type", "gru", "--strategy", "top_k", "--num_tokens", "40", "--num_samples", "2",
                          "--seed", "5"]) == 0
    written = set(paths.generated.glob("*.mid")) - before
    assert len(written) == 2 and all(p.name.startswith(runs["results"]["gru"].run_id) for p in written)
    assert "tokens/s" in capsys.readouterr().out


class _EndsFirstSampleAtOnce(torch.nn.Module):
    """The run's model, except that sample 0's first token is EOS (as an untrained model may pick)."""

    def __init__(self, model, eos_id: int):
        super().__init__()
        self.inner, self.config, self.eos_id, self.calls = model, model.config, eos_id, 0

    def init_state(self, batch):
        return self.inner.init_state(batch)

    def step(self, tokens, state):
        logits, state = self.inner.step(tokens, state)
        if self.calls == 0:
            logits = logits.clone()
            logits[0, -1, self.eos_id] = 1e9
        self.calls += 1
        return logits, state


def test_a_sample_that_ends_at_once_is_an_empty_piece(loaded):
    run = replace(loaded["lstm"], model=_EndsFirstSampleAtOnce(loaded["lstm"].model, loaded["lstm"].dataset.eos_id))
    result = generate(run, SampleConfig(strategy="top_p", p=0.9, num_tokens=160, num_samples=2, seed=0), progress=False)
    assert result.tokens[0] == [] and result.new_tokens[0] == 0 and result.invalid_token_share[0] == 0.0
    assert result.scores[0].note_num() == 0 and symusic.Score(result.midi_paths[0]).note_num() == 0
    assert result.scores[1].note_num() > 0 and symusic.Score(result.midi_paths[1]).note_num() > 0


def test_a_copied_dataset_folder_generates_with_its_own_data(runs, tmp_path, capsys):
    copy = DatasetPaths(tmp_path, "renamed_copy")  # no dataset of the sidecar's name in this root
    shutil.copytree(runs["paths"].base, copy.base, ignore=shutil.ignore_patterns("outputs"))
    gru = runs["results"]["gru"].run_id
    assert load_run(copy.run_checkpoints(gru) / "best.pt", device="cpu").paths == copy
    command = ["generate", "--checkpoint_dir", str(tmp_path), "--dataset", copy.dataset, "--model", "latest",
               "--model_type", "gru", "--num_tokens", "16", "--seed", "1", "--device", "cpu"]
    assert main(command) == 0, capsys.readouterr().err
    written = list(copy.generated.glob("*.mid"))
    assert len(written) == 1 and written[0].name.startswith(gru)
