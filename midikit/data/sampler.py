"""Random training windows drawn straight from a device-resident token stream.

No per-sample Dataset/DataLoader: one gather per batch. Start positions come from a CPU
`torch.Generator` so the data order is reproducible on any device and its state can be saved
in a checkpoint and restored for an exact resume. Given the split's song offsets, a window also
says where in its song each input token is (tokens since that song's BOS): what a model with a
song clock sees (`ModelConfig.song_clock`). That costs no random draw, so the data order is the
same with or without it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Windows(NamedTuple):
    inputs: torch.Tensor  # (batch, length) int64
    targets: torch.Tensor  # inputs shifted by one token
    positions: torch.Tensor | None  # each input token's position in its song; None without song offsets


def sample_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator,
                   song_starts: torch.Tensor | None = None) -> Windows:
    """`batch_size` random windows of `length` tokens (and their targets) on tokens' device.

    `tokens` is a 1-D tensor holding every sequence of a split back to back (BOS ... EOS);
    `song_starts` (int64, on the same device) the offset of each sequence in it, as the token store
    keeps them (`train_offsets.npy`).
    """
    n_starts = tokens.numel() - length - 1
    if n_starts < 1:
        raise ValueError(
            f"The split holds {tokens.numel()} tokens, too few for windows of {length + 1}; "
            "use a shorter context_length or more data."
        )
    starts = torch.randint(0, n_starts + 1, (batch_size,), generator=generator)
    if tokens.is_cuda:
        starts = starts.pin_memory().to(tokens.device, non_blocking=True)  # no per-step stream sync
    return _windows_at(tokens, starts.to(tokens.device), length, song_starts)


def evaluation_windows(tokens: torch.Tensor, length: int, max_windows: int | None = None,
                       song_starts: torch.Tensor | None = None) -> Windows:
    """Non-overlapping windows covering the split in order: a fixed, RNG-free validation set, so
    evaluating never disturbs training randomness."""
    n = (tokens.numel() - 1) // length
    if n < 1:
        raise ValueError(f"The validation split holds {tokens.numel()} tokens, too few for one window of {length + 1}.")
    chosen = torch.arange(n, device=tokens.device)
    if max_windows is not None and max_windows < n:
        # Spread the subset over the whole split rather than taking its first songs.
        chosen = torch.linspace(0, n - 1, max_windows, device=tokens.device).long()
    return _windows_at(tokens, chosen * length, length, song_starts)


def _windows_at(tokens: torch.Tensor, starts: torch.Tensor, length: int, song_starts: torch.Tensor | None) -> Windows:
    offsets = starts.unsqueeze(1) + torch.arange(length + 1, device=tokens.device)
    window = tokens[offsets].long()
    positions = None
    if song_starts is not None:
        inputs = offsets[:, :-1].contiguous()
        positions = inputs - song_starts[torch.searchsorted(song_starts, inputs, right=True) - 1]
    return Windows(window[:, :-1], window[:, 1:], positions)
