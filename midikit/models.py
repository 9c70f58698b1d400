"""LSTM, GRU and causal Transformer generators over token ids, built from one config.

Every model offers the same two ways in:

* ``model(idx)`` -> logits ``(B, T, vocab)`` for training (teacher forcing);
* ``state = model.init_state(batch_size, device)`` then ``logits, state = model.step(idx, state)``
  for incremental decoding: the RNNs carry their hidden state, the Transformer a key/value cache
  allocated once, written in place at a position kept on the device (so a one-token step has the
  same shapes every time and can be compiled or CUDA-graphed).

Logits always have `vocab_size` columns; the Transformer pads its vocabulary to a multiple of 64
inside and cuts the padding off.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configs import MODEL_TYPES, ModelConfig
from .errors import ConfigError
from .rnn_cores import GRUCore, LSTMCore

__all__ = ["MODEL_TYPES", "ConfigError", "ModelConfig", "build_model", "count_parameters", "flops_per_token",
           "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """"auto" (a CUDA GPU when one is visible, else the CPU) or an explicit device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but no CUDA GPU is visible. In Colab: Runtime > Change runtime "
            "type > GPU; elsewhere use --device cpu."
        )
    return device


def build_model(config: ModelConfig) -> nn.Module:
    config.validate()
    if config.model_type == "transformer":
        return TransformerGenerator(config)
    return RNNGenerator(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The song clock: a learned vector per bucket of the position in the piece (tokens since its BOS),
# one bucket per position below SONG_LINEAR, then buckets each about 6% wider than the last up to
# SONG_SPAN (the last open-ended): a tune's end is placed relative to its length, whatever the tokenizer.
SONG_BUCKETS, SONG_LINEAR, SONG_SPAN = 128, 16, 16384


def song_clock_edges() -> torch.Tensor:
    """The first position of each bucket after the first (integers: the same buckets on any device)."""
    ratio = (SONG_SPAN / SONG_LINEAR) ** (1 / (SONG_BUCKETS - SONG_LINEAR))
    return torch.tensor(list(range(1, SONG_LINEAR))
                        + [round(SONG_LINEAR * ratio**i) for i in range(SONG_BUCKETS - SONG_LINEAR)])


class SongClock(nn.Module):
    """What the model adds to a token's embedding to say how far into the piece it is."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Embedding(SONG_BUCKETS, width)
        self.register_buffer("edges", song_clock_edges(), persistent=False)  # a function of the constants: not saved

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.bucketize(positions.contiguous(), self.edges, right=True))


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward), as in the PaLM/nanoGPT MFU estimate."""
    if config.model_type == "transformer":
        d, L, T, ff = config.d_model, config.num_layers, config.context_length, config.dim_feedforward
        matmul_params = L * (4 * d * d + 2 * d * ff) + d * padded_vocab_size(config.vocab_size)
        return 6 * matmul_params + 12 * L * d * T  # weights plus attention scores/values
    gates = 4 if config.model_type == "lstm" else 3
    params = 0
    in_size = config.embed_size
    for _ in range(config.num_layers):
        params += gates * config.hidden_size * (in_size + config.hidden_size)
        in_size = config.hidden_size
    params += config.hidden_size * config.vocab_size
    return 6 * params


# --------------------------------------------------------------------------- RNNs


class RNNGenerator(nn.Module):
    """Embedding -> LSTM/GRU -> Linear, the original project's architecture (cuDNN kernels on a GPU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        rnn_class = LSTMCore if config.model_type == "lstm" else GRUCore  # nn.LSTM/nn.GRU, bf16 under bf16 autocast
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.rnn = rnn_class(
            config.embed_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.hidden_size, config.vocab_size)
        self.clock = SongClock(config.embed_size) if config.song_clock else None
        if self.clock is not None:  # the token embedding is N(0, 1): a clock as loud would drown it at the start
            nn.init.zeros_(self.clock.embedding.weight)
        if config.tie_embeddings:
            self.fc.weight = self.embedding.weight

    def _embed(self, idx: torch.Tensor, song_positions: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding(idx)
        if self.clock is not None:
            x = x + self.clock(torch.arange(idx.shape[1], device=idx.device)
                               if song_positions is None else song_positions)
        return x

    def forward(self, idx: torch.Tensor, song_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size); `song_positions` (B, T) says where in its piece each token is
        (a song clock's input; None: idx starts at its piece's start)."""
        out, _ = self.rnn(self._embed(idx, song_positions))
        return self.fc(self.drop(out))

    def init_state(self, batch_size: int, device=None):
        return None  # nn.LSTM/GRU start from zeros when given no state

    def step(self, idx: torch.Tensor, state):
        """With a song clock the state is (hidden, position of the next token) after the first step."""
        if self.clock is None:
            out, state = self.rnn(self.embedding(idx), state)
            return self.fc(self.drop(out)), state
        hidden, position = state if state is not None else (None, torch.zeros((), dtype=torch.long, device=idx.device))
        out, hidden = self.rnn(self._embed(idx, position + torch.arange(idx.shape[1], device=idx.device)), hidden)
        return self.fc(self.drop(out)), (hidden, position + idx.shape[1])


# --------------------------------------------------------------------------- Transformer

VOCAB_MULTIPLE = 64  # embedding and output rows are padded to this: matrix shapes the GPU's kernels like


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class KVCache:
    """Keys and values of the last `slots` positions of every layer, allocated once.

    The token at absolute position p lives in slot p % slots, so nothing ever moves and every step
    has the same shapes: past `slots` positions (RoPE only) the newest key overwrites the oldest, a
    ring buffer. `position` is a device tensor, the absolute position of the next token, so a step
    never reads a number back to the host.
    """

    def __init__(self, num_layers, batch_size, nhead, slots, head_dim, device, dtype):
        shape = (batch_size, nhead, slots, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)  # where in the piece position 0 is (song clock)
        self.slots = slots

    def reset(self, start: int = 0) -> None:
        """Start over at position 0, which is token `start` of the piece (a learned-positions window
        re-primed mid-piece); stale slots are masked out by their positions."""
        self.position.zero_()
        self.start.fill_(start)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.position, self.start]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (GPT-NeoX layout): feature pairs (i, i + head_dim/2) turned by position * frequency_i."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast q and k are bf16/fp16: stay so
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.nhead = config.nhead
        self.head_dim = config.d_model // config.nhead
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """`rope`: (cos, sin) of the T positions, or None; `mask`: which keys each query sees (None:
        causal); with a cache, `mask` covers its slots (T == 1) or its slots then the T new keys."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)  # each key keeps the position it was written at
        if cache is None:
            # Causal: position t attends to positions <= t only (the original project's model saw the future).
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=mask is None)
        elif T == 1:
            # Write first, then attend over every slot: the one overwritten (RoPE, full ring) is the
            # key that has just left the window. Same shapes at every step.
            slot = (cache.position % cache.slots).view(1)
            keys = cache.keys[layer].index_copy_(2, slot, k.to(cache.keys[layer].dtype))
            values = cache.values[layer].index_copy_(2, slot, v.to(cache.values[layer].dtype))
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
        else:
            y = self._attend_then_write(q, k, v, mask, cache, layer)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))

    @staticmethod
    def _attend_then_write(q, k, v, mask, cache: KVCache, layer: int) -> torch.Tensor:
        """Several new tokens (priming): attend over the old slots and the new keys together, then
        keep the newest `slots` of them; writing first would overwrite keys the first queries need."""
        keys = torch.cat((cache.keys[layer].to(q.dtype), k), dim=2)
        values = torch.cat((cache.values[layer].to(q.dtype), v), dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        T, kept = k.shape[2], min(k.shape[2], cache.slots)
        slots = (cache.position + torch.arange(T - kept, T, device=k.device)) % cache.slots
        cache.keys[layer].index_copy_(2, slots, k[:, :, T - kept :].to(cache.keys[layer].dtype))
        cache.values[layer].index_copy_(2, slots, v[:, :, T - kept :].to(cache.values[layer].dtype))
        return y


class Block(nn.Module):
    """Pre-LayerNorm decoder block: attention then a GELU feed-forward, each residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.dim_feedforward),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.dim_feedforward, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, rope=None, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), rope, mask, cache, layer)
        return x + self.mlp(self.ln2(x))


def window_mask(length: int, window: int, device) -> torch.Tensor:
    """(length, length): query i sees keys i-window+1 .. i (causal, at most `window` of them)."""
    distance = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)
    return (distance >= 0) & (distance < window)


def cache_mask(start: torch.Tensor, T: int, slots: int) -> torch.Tensor:
    """Which keys the T queries at absolute positions start.. may see in a KVCache of `slots`.

    T == 1 (after the write): slot j holds the last position <= the query's that is j modulo
    `slots`, valid when that position is >= 0. T > 1: the old slots (holding positions < start)
    then the T new keys, each query seeing only the last `slots` positions up to its own.
    """
    device = start.device
    slot = torch.arange(slots, device=device)
    if T == 1:
        return (start - (start - slot) % slots >= 0).view(1, slots)
    query = start + torch.arange(T, device=device)
    old = (start - 1) - (start - 1 - slot) % slots
    sees_old = (old >= 0) & (query[:, None] - old < slots)
    return torch.cat((sees_old, window_mask(T, slots, device)), dim=1)


class TransformerGenerator(nn.Module):
    """Decoder-only Transformer: learned or rotary (RoPE) positions, SDPA attention, a KV cache of
    fixed shapes, and a vocabulary padded to VOCAB_MULTIPLE inside (logits keep `vocab_size`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.padded_vocab = padded_vocab_size(config.vocab_size)
        self.token_emb = nn.Embedding(self.padded_vocab, config.d_model)
        self.rope = config.positions == "rope"
        if self.rope:
            head_dim = config.d_model // config.nhead
            # Not saved in checkpoints: a function of the config.
            self.register_buffer("inv_freq", 10000.0 ** -(torch.arange(0, head_dim, 2).float() / head_dim),
                                 persistent=False)
        else:
            self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        self.clock = SongClock(config.d_model) if config.song_clock else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, self.padded_vocab, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.token_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps activations stable with depth.
        for name, param in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.num_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the padded vocabulary have vocab_size rows: pad them with zeros
        # (never looked up, and their logits are cut off).
        for name in ("token_emb.weight", "head.weight"):
            weight = state_dict.get(prefix + name)
            if (weight is not None and weight.dim() == 2
                    and weight.shape[0] == self.config.vocab_size < self.padded_vocab):
                state_dict[prefix + name] = F.pad(weight, (0, 0, 0, self.padded_vocab - weight.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _run(self, idx: torch.Tensor, cache: KVCache | None = None, window: int | None = None,
             song_positions: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.shape[1]
        if not self.rope and T > self.config.context_length:
            raise ConfigError(
                f"Sequence of {T} tokens is longer than the model's context_length {self.config.context_length} "
                "(learned positions); use a shorter sequence (generation slides its window), or positions='rope'."
            )
        positions = torch.arange(T, device=idx.device)
        if cache is not None:
            positions = positions + cache.position
            mask = cache_mask(cache.position, T, cache.slots)
            song_positions = positions + cache.start
        else:
            mask = window_mask(T, window, idx.device) if window is not None and T > window else None
        x = self.token_emb(idx)
        rope = None
        if self.rope:
            angles = positions[:, None].float() * self.inv_freq
            rope = (angles.cos(), angles.sin())
        else:
            x = x + self.pos_emb(positions)
        if self.clock is not None:
            x = x + self.clock(positions if song_positions is None else song_positions)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, layer)
        if cache is not None:
            cache.position.add_(T)
        return self.head(self.ln_f(x))[..., : self.config.vocab_size]

    def forward(self, idx: torch.Tensor, window: int | None = None,
                song_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position, positions counted from 0. With `window`,
        each position sees only the last `window` tokens up to itself: what decoding with a
        rolling cache of `window` slots computes (RoPE), a reference for it. `song_positions` (B, T):
        where in its piece each token is, for a song clock (None: idx starts at its piece's start)."""
        return self._run(idx, window=window, song_positions=song_positions)

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty cache of context_length slots, in the model's dtype unless told otherwise."""
        param = self.head.weight
        c = self.config
        return KVCache(c.num_layers, batch_size, c.nhead, c.context_length, c.d_model // c.nhead,
                       device or param.device, dtype or param.dtype)

    def step(self, idx: torch.Tensor, state: KVCache):
        """Append idx (B, T) at the cache's position; logits (B, T, vocab_size). T == 1 is the
        fixed-shape decoding step (no host sync, no new shapes). Learned positions stop at
        context_length: `reset()` the cache and prime it again (midikit.generate.decode does)."""
        return self._run(idx, cache=state), state
