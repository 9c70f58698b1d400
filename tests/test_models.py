"""Models: positions (learned, RoPE), the padded vocabulary, old checkpoints, the fixed-shape cache."""

from __future__ import annotations

import argparse

import pytest
import torch

from midikit.configs import ModelConfig
from midikit.errors import ConfigError
from midikit.models import build_model, rotate
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
        angles = lambda p: torch.tensor([[float(p)]]) * inv_freq
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
