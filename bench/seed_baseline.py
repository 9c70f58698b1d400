"""The original csce585-midi project's training, rebuilt for benchmarks (see /work/shared/SEED_BASELINE.md):
its models, its per-sample Dataset over every overlapping window, and its plain fp32 loop.

`train_bench.py` and `quality.py` use it; nothing in midikit depends on it.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class SeedRNN(nn.Module):
    """Embedding(V, 128) -> LSTM/GRU(128, hidden, layers, batch_first, dropout) -> Linear(hidden, V)."""

    def __init__(self, model_type, vocab_size, embed_size=128, hidden_size=1024, num_layers=4, dropout=0.4):
        super().__init__()
        rnn = nn.LSTM if model_type == "lstm" else nn.GRU
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = rnn(embed_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1
                       else 0.0)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, x):
        out, _ = self.rnn(self.embedding(x))
        return self.fc(out)


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model, dropout, max_len=5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)
        self.register_buffer("table", table.unsqueeze(0))

    def forward(self, x):
        return self.dropout(x + self.table[:, : x.size(1)])


class SeedTransformer(nn.Module):
    """The original project's transformer: a TransformerDecoder whose cross-attention "memory" is its own
    embedded input, unmasked (so it sees the tokens it predicts), and a causal self-attention mask."""

    def __init__(self, vocab_size, d_model=1024, nhead=16, num_layers=8, dim_feedforward=4096, dropout=0.3):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions = SinusoidalPositions(d_model, dropout)
        layer = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.fc = nn.Linear(d_model, vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x):
        h = self.positions(self.embedding(x) * math.sqrt(self.d_model))
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device)
        return self.fc(self.decoder(h, h, tgt_mask=mask))


def seed_model(model_config) -> nn.Module:
    """The original project's model of the same sizes as a midikit ModelConfig."""
    c = model_config
    if c.model_type == "transformer":
        return SeedTransformer(c.vocab_size, c.d_model, c.nhead, c.num_layers, c.dim_feedforward, c.dropout)
    return SeedRNN(c.model_type, c.vocab_size, c.embed_size, c.hidden_size, c.num_layers, c.dropout)


class EveryWindowDataset(Dataset):
    """Every window of seq_length + 1 tokens, one token apart, from every sequence; one sample
    per __getitem__, as the original project served them."""

    def __init__(self, sequences: list[np.ndarray], seq_length: int):
        kept = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) > seq_length]
        self.tokens = np.concatenate(kept)
        ends = np.cumsum([len(s) for s in kept])
        # Global start of every window that stays inside its own sequence.
        self.starts = np.concatenate([np.arange(end - len(s), end - seq_length) for s, end in zip(kept, ends)])
        self.seq_length = seq_length

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, item):
        start = self.starts[item]
        window = self.tokens[start : start + self.seq_length + 1]
        return torch.from_numpy(window[:-1].copy()), torch.from_numpy(window[1:].copy())


def seed_loader(sequences, seq_length, batch_size, device: torch.device) -> DataLoader:
    cuda = device.type == "cuda"
    return DataLoader(
        EveryWindowDataset(sequences, seq_length), batch_size=batch_size, shuffle=True,
        num_workers=4 if cuda else 0, pin_memory=cuda, drop_last=True, persistent_workers=cuda,
    )


def time_seed_loop(model_config, sequences, batch_size, lr, device, warmup_steps, timed_steps) -> dict:
    """Seconds per step and tokens/s of the original project's fp32 loop (Adam, label smoothing 0.1, no clipping,
    default fp32 matmul precision), after `warmup_steps` untimed steps."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    model = seed_model(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    loader = iter(seed_loader(sequences, model_config.context_length, batch_size, device))
    model.train()
    start = None
    for step in range(warmup_steps + timed_steps):
        if step == warmup_steps:
            _sync(device)
            start = time.perf_counter()
        inputs, targets = next(loader)
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs).reshape(-1, model_config.vocab_size), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        loss.item()  # the original project accumulated running loss with .item() every step
    _sync(device)
    seconds = (time.perf_counter() - start) / timed_steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer
    return {"step_s": seconds, "tokens_per_s": batch_size * model_config.context_length / seconds, "peak_gib": peak}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
