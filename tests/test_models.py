"""Models: positions (learned, RoPE), the padded vocabulary, old checkpoints, the fixed-shape cache."""

from __future__ import annotations

import argparse

import pytest
import torch

from midikit.configs import ModelConfig
from midikit.data.sampler import evaluation_windows, sample_windows
from midikit.errors import ConfigError
from midikit.models import SONG_BUCKETS, SONG_SPAN, build_model, rotate, song_clock_edges
from midikit.settings import add_flags

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB = 357  # the seed's REMI vocabulary: padded to 384
CONTEXT = 16


def tiny_transformer(positions: str, vocab_size: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig("transformer", vocab_size, CONTEXT, d_model=32, nhead=2, num_layers=2, dim_feedforward=64,
                         dropout=0.0, positions=positions)
    return build_model(config).eval()


def tokens(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- config


def test_configs_saved_before_positions_existed_load_as_learned():
    old = ModelConfig("transformer", VOCAB, 100, d_model=64, nhead=4).to_dict()
    del old["positions"]
    assert ModelConfig.from_dict(old).positions == "learned"
    assert ModelConfig.from_dict(dict(old, positions="rope")).positions == "rope"


def test_bad_positions_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="Unknown positions 'alibi': choose one of learned, rope"):
        ModelConfig("transformer", VOCAB, positions="alibi").validate()
    with pytest.raises(ConfigError, match=r"d_model/nhead = 30/5 = 6 is odd|= 3 is odd"):
        ModelConfig("transformer", VOCAB, d_model=30, nhead=10, positions="rope").validate()
    ModelConfig("transformer", VOCAB, d_model=30, nhead=10, positions="learned").validate()  # odd is fine without RoPE


def test_positions_is_a_transformer_flag():
    parser = argparse.ArgumentParser()
    add_flags(parser, ModelConfig)
    assert parser.parse_args(["--positions", "learned"]).positions == "learned"
    assert parser.parse_args([]).positions == "rope"  # new runs; configs saved without the field load as learned
    with pytest.raises(SystemExit):
        parser.parse_args(["--positions", "sinusoidal"])


# --------------------------------------------------------------------------- padded vocabulary


@pytest.mark.parametrize("vocab_size, padded", [(357, 384), (384, 384), (65, 128)])
def test_vocabulary_is_padded_inside_and_logits_keep_the_true_size(vocab_size, padded):
    model = tiny_transformer("rope", vocab_size)
    assert model.token_emb.weight.shape[0] == model.head.weight.shape[0] == padded
    assert model.config.vocab_size == vocab_size
    idx = torch.randint(0, vocab_size, (2, 8))
    assert model(idx).shape == (2, 8, vocab_size)
    logits, _ = model.step(idx, model.init_state(2))
    assert logits.shape == (2, 8, vocab_size)


def test_padding_rows_never_win_even_when_their_weights_would():
    model = tiny_transformer("learned")
    with torch.no_grad():
        model.head.weight[VOCAB:] = 100.0  # padding rows that would dominate every logit if they were seen
    logits = model(tokens(8))
    assert logits.shape[-1] == VOCAB and logits.abs().max() < 50


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_checkpoints_from_before_the_padding_load_and_give_the_same_logits(positions):
    model = tiny_transformer(positions)
    old_format = {name: (value[:VOCAB].clone() if name in ("token_emb.weight", "head.weight") else value.clone())
                  for name, value in model.state_dict().items()}
    assert old_format["head.weight"].shape == (VOCAB, 32)
    fresh = tiny_transformer(positions, seed=5)
    fresh.load_state_dict(old_format)
    idx = tokens(CONTEXT)
    torch.testing.assert_close(fresh(idx), model(idx), rtol=0, atol=0)
    assert (fresh.head.weight[VOCAB:] == 0).all()
    assert old_format["head.weight"].shape == (VOCAB, 32)  # the caller's dict is left alone


def test_a_checkpoint_of_another_vocabulary_still_does_not_fit():
    other = tiny_transformer("learned", vocab_size=300).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for token_emb.weight"):
        tiny_transformer("learned").load_state_dict(other)


def test_learned_and_rope_checkpoints_do_not_mix():
    with pytest.raises(RuntimeError, match="pos_emb"):
        tiny_transformer("rope").load_state_dict(tiny_transformer("learned").state_dict())
    assert "inv_freq" not in tiny_transformer("rope").state_dict()  # derived from the config, never saved


# --------------------------------------------------------------------------- positions


def test_rotary_scores_depend_only_on_the_distance_between_positions():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    inv_freq = 10000.0 ** -(torch.arange(0, 8, 2).float() / 8)

    def score(q_pos, k_pos):
        def angles(p):
            return torch.tensor([[float(p)]]) * inv_freq

        q_rot = rotate(q, angles(q_pos).cos(), angles(q_pos).sin())
        k_rot = rotate(k, angles(k_pos).cos(), angles(k_pos).sin())
        return (q_rot * k_rot).sum()

    torch.testing.assert_close(score(7, 3), score(507, 503), rtol=1e-4, atol=1e-4)
    assert not torch.isclose(score(7, 3), score(7, 5), atol=1e-3)  # another distance, another score
    angle = torch.tensor([[1.3] * 4])
    torch.testing.assert_close(rotate(q, angle.cos(), angle.sin()).norm(), q.norm())  # a rotation


def test_rope_logits_do_not_depend_on_how_far_into_the_piece_they_are():
    """With a window, the last token sees 2 layers x (CONTEXT - 1) tokens back: the same tokens at
    positions ~1000 or ~30 give the same logits."""
    model = tiny_transformer("rope")
    with torch.no_grad():  # sharp attention, as a trained model's: untrained scores are all near zero
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10)
    long = tokens(1000)
    far, near = model(long, window=CONTEXT)[:, -1], model(long[:, -2 * CONTEXT :], window=CONTEXT)[:, -1]
    torch.testing.assert_close(far, near, rtol=1e-3, atol=1e-3)
    model.inv_freq.zero_()  # no rotation at all: the positions must have made a difference
    assert not torch.allclose(model(long[:, -2 * CONTEXT :], window=CONTEXT)[:, -1], near, atol=1e-3)


def test_learned_positions_stop_at_the_context_and_rope_goes_on():
    with pytest.raises(ConfigError, match="longer than the model's context_length 16.*positions='rope'"):
        tiny_transformer("learned")(tokens(CONTEXT + 1))
    assert tiny_transformer("rope")(tokens(3 * CONTEXT)).shape == (2, 3 * CONTEXT, VOCAB)


# --------------------------------------------------------------------------- the cache


def stepwise_logits(model, idx: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed idx through one cache in chunks of the given sizes (then one token at a time)."""
    state, outputs, start = model.init_state(idx.shape[0]), [], 0
    for size in chunks + [1] * (idx.shape[1] - sum(chunks)):
        logits, state = model.step(idx[:, start : start + size], state)
        outputs.append(logits)
        start += size
    assert int(state.position) == idx.shape[1]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("chunks", [[1], [5], [CONTEXT + 7], [3, 2 * CONTEXT - 3, 5]])
def test_a_rolling_rope_cache_equals_attention_over_the_last_context_tokens(chunks):
    """Past its slots the cache overwrites its oldest key: every layer then sees the last
    CONTEXT positions, which is the whole sequence run with a band mask of CONTEXT."""
    model = tiny_transformer("rope")
    idx = tokens(3 * CONTEXT + 4)
    reference = model(idx, window=CONTEXT)
    torch.testing.assert_close(stepwise_logits(model, idx, chunks), reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(idx)[:, -1], reference[:, -1], atol=1e-3)  # the window does cut something


def test_learned_cache_equals_recompute_and_restarts_after_reset():
    model = tiny_transformer("learned")
    idx = tokens(CONTEXT)
    torch.testing.assert_close(stepwise_logits(model, idx, [4]), model(idx), rtol=1e-5, atol=1e-5)
    state = model.init_state(2)
    model.step(tokens(CONTEXT, seed=9), state)  # fills every slot with other tokens
    state.reset()
    again, _ = model.step(idx[:, :6], state)
    for t in range(6, CONTEXT):  # the stale slots must stay invisible
        logits, _ = model.step(idx[:, t : t + 1], state)
        again = torch.cat([again, logits], dim=1)
    torch.testing.assert_close(again, model(idx), rtol=1e-5, atol=1e-5)


def test_the_cache_is_allocated_once_in_the_models_dtype():
    model = tiny_transformer("rope").to(torch.bfloat16)
    state = model.init_state(2)
    assert state.keys[0].dtype == torch.bfloat16 and state.keys[0].shape == (2, 2, CONTEXT, 16)
    addresses = [t.data_ptr() for t in state.tensors()]
    idx = tokens(3 * CONTEXT)
    model.step(idx[:, :4], state)
    for t in range(4, idx.shape[1]):
        model.step(idx[:, t : t + 1], state)
    assert [t.data_ptr() for t in state.tensors()] == addresses
    assert int(state.position) == 3 * CONTEXT


# --------------------------------------------------------------------------- the song clock


def tiny(model_type: str, **values) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(model_type, VOCAB, CONTEXT, d_model=32, nhead=2, num_layers=2, dim_feedforward=64,
                         embed_size=32,
                         hidden_size=32, dropout=0.0, **{"positions": "rope", "song_clock": True, **values})
    return build_model(config).eval()


def test_configs_saved_before_the_song_clock_and_tying_load_without_them():
    old = ModelConfig("transformer", VOCAB, 100, d_model=64, nhead=4, positions="rope").to_dict()
    del old["song_clock"], old["tie_embeddings"]
    loaded = ModelConfig.from_dict(old)
    assert (loaded.song_clock, loaded.tie_embeddings) == (False, False)
    assert "clock.embedding.weight" not in build_model(loaded).state_dict()


def test_tying_an_rnn_of_two_sizes_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="embed_size == hidden_size.*got 64 and 128"):
        ModelConfig("lstm", VOCAB, embed_size=64, hidden_size=128, tie_embeddings=True).validate()


def test_the_song_clock_buckets_are_exact_below_16_then_about_6_percent_wide():
    edges = song_clock_edges()
    assert edges[:15].tolist() == list(range(1, 16)) and len(edges) == SONG_BUCKETS - 1
    widths = edges[16:].double() / edges[15:-1].double()
    assert (edges[1:] > edges[:-1]).all() and widths.min() > 1.0 and widths[-20:].max() < 1.08
    assert 15000 < edges[-1] <= SONG_SPAN


@pytest.mark.parametrize("model_type", ["transformer", "lstm", "gru"])
def test_the_song_clock_counts_from_the_piece_start_in_training_and_in_decoding(model_type):
    """Step by step (a cache's positions, an RNN state's counter) gives the logits of the whole
    piece run at once; given positions reproduce them for a piece cut mid-way; the clock matters."""
    model = tiny(model_type)
    with torch.no_grad():  # an RNN's clock starts at zero (no effect): give it a trained clock's spread
        model.clock.embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    idx = tokens(3 * CONTEXT + 4)
    whole = model(idx, window=CONTEXT) if model_type == "transformer" else model(idx)
    state, steps = model.init_state(2), []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-5, atol=1e-5)
    later = idx.shape[1] - 2 * CONTEXT  # the last 2 contexts: all the last token sees through 2 layers
    cut = idx[:, later:]
    if model_type == "transformer":
        placed = model(cut, window=CONTEXT, song_positions=torch.arange(later, idx.shape[1]).expand(2, -1))
        torch.testing.assert_close(placed[:, -1], whole[:, -1], rtol=1e-5, atol=1e-5)
        # at the start: other logits
        assert not torch.allclose(model(cut, window=CONTEXT)[:, -1], whole[:, -1], atol=1e-4)
    else:
        torch.testing.assert_close(model(idx, song_positions=torch.arange(idx.shape[1]).expand(2, -1)), whole)
        assert not torch.allclose(model(cut, song_positions=torch.arange(later, idx.shape[1]).expand(2, -1)),
                                  model(cut), atol=1e-4)


def test_windows_say_where_in_its_song_each_token_is_without_changing_the_draws():
    songs = [[1, 5, 6, 7, 2], [1, 8, 2], [1, 9, 9, 9, 9, 9, 2]]  # BOS ... EOS, back to back
    stream = torch.tensor([t for song in songs for t in song], dtype=torch.int32)
    starts = torch.tensor([0, 5, 8, 15])  # the store's offsets: each song's start, then the total
    plain = sample_windows(stream, 64, 6, torch.Generator().manual_seed(3))
    clocked = sample_windows(stream, 64, 6, torch.Generator().manual_seed(3), starts)
    assert plain.positions is None and torch.equal(plain.inputs, clocked.inputs)
    index = {i: (i - start) for start, end in zip(starts, starts[1:]) for i in range(int(start), int(end))}
    for row, positions in zip(clocked.inputs, clocked.positions):
        first = next(i for i in range(len(stream) - 6) if torch.equal(stream[i : i + 6].long(), row))
        assert positions.tolist() == [index[first + t] for t in range(6)]
    assert (clocked.positions[clocked.inputs == 1] == 0).all()  # a BOS starts its song
    val = evaluation_windows(stream, 4, song_starts=starts)
    assert val.positions.tolist() == [[0, 1, 2, 3], [4, 0, 1, 2], [0, 1, 2, 3]]


def test_tied_embeddings_are_one_tensor_in_the_model_and_load_back():
    for model_type in ("transformer", "lstm"):
        model = tiny(model_type, tie_embeddings=True)
        head = model.head.weight if model_type == "transformer" else model.fc.weight
        embedding = model.token_emb.weight if model_type == "transformer" else model.embedding.weight
        assert head is embedding
        fresh = tiny(model_type, tie_embeddings=True)
        with torch.no_grad():
            embedding.add_(1.0)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(tokens(8)), model(tokens(8)))


def test_a_learned_positions_window_primed_mid_piece_keeps_the_pieces_clock():
    """Generation re-primes a learned-positions window at token `start` of the piece: its positions
    restart at 0, its song clock does not."""
    model = tiny("transformer", positions="learned")
    idx, start = tokens(CONTEXT), 40
    state = model.init_state(2)
    model.step(tokens(CONTEXT, seed=9), state)
    state.reset(start)
    logits, _ = model.step(idx[:, :5], state)
    for t in range(5, CONTEXT):
        step, _ = model.step(idx[:, t : t + 1], state)
        logits = torch.cat([logits, step], dim=1)
    placed = model(idx, song_positions=torch.arange(start, start + CONTEXT).expand(2, -1))
    torch.testing.assert_close(logits, placed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(placed, model(idx), atol=1e-4)  # the clock did move
