"""LSTM, GRU and causal Transformer generators over token ids, built from one config.

Every model offers the same two ways in:

* ``model(idx)`` -> logits ``(B, T, vocab)`` for training (teacher forcing);
* ``state = model.init_state(batch_size, device)`` then ``logits, state = model.step(idx, state)``
  for incremental decoding: the RNNs carry their hidden state, the Transformer a key/value cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configs import MODEL_TYPES, ModelConfig
from .errors import ConfigError

__all__ = ["MODEL_TYPES", "ConfigError", "ModelConfig", "build_model", "count_parameters", "flops_per_token", "resolve_device"]


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


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward), as in the PaLM/nanoGPT MFU estimate."""
    if config.model_type == "transformer":
        d, L, T, ff = config.d_model, config.num_layers, config.context_length, config.dim_feedforward
        matmul_params = L * (4 * d * d + 2 * d * ff) + d * config.vocab_size
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
    """Embedding -> LSTM/GRU -> Linear, the seed's architecture (cuDNN kernels on a GPU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        rnn_class = nn.LSTM if config.model_type == "lstm" else nn.GRU
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.fc(self.drop(out))

    def init_state(self, batch_size: int, device=None):
        return None  # nn.LSTM/GRU start from zeros when given no state

    def step(self, idx: torch.Tensor, state):
        out, state = self.rnn(self.embedding(idx), state)
        return self.fc(self.drop(out)), state


# --------------------------------------------------------------------------- Transformer


class KVCache:
    """Preallocated keys/values for every layer, filled left to right up to context_length."""

    def __init__(self, num_layers, batch_size, nhead, max_len, head_dim, device, dtype):
        shape = (num_layers, batch_size, nhead, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.nhead = config.nhead
        self.head_dim = config.d_model // config.nhead
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is None:
            # Causal mask: position t attends to positions <= t only (the seed's model saw the future).
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            start = cache.length
            cache.keys[layer, :, :, start : start + T] = k
            cache.values[layer, :, :, start : start + T] = v
            k = cache.keys[layer, :, :, : start + T]
            v = cache.values[layer, :, :, : start + T]
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v)  # one new query sees every cached key
            else:
                # Query i sits at absolute position start+i and may see keys 0..start+i.
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


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

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class TransformerGenerator(nn.Module):
    """Decoder-only Transformer with learned positions, SDPA attention and a KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
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

    def _run(self, idx: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        T = idx.shape[1]
        if start + T > self.config.context_length:
            raise ConfigError(
                f"Sequence of {start + T} tokens is longer than the model's context_length "
                f"{self.config.context_length}; use a shorter sequence (generation slides its window)."
            )
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.token_emb(idx) + self.pos_emb(positions))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._run(idx, 0, None)

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        param = self.head.weight
        c = self.config
        return KVCache(
            c.num_layers, batch_size, c.nhead, c.context_length, c.d_model // c.nhead,
            device or param.device, dtype or param.dtype,
        )

    def step(self, idx: torch.Tensor, state: KVCache):
        logits = self._run(idx, state.length, state)
        state.length += idx.shape[1]
        return logits, state
