"""Random training windows drawn straight from a device-resident token stream.

No per-sample Dataset/DataLoader: one gather per batch. Start positions come from a CPU
`torch.Generator` so the data order is reproducible on any device and its state can be saved
in a checkpoint and restored for an exact resume.
"""

from __future__ import annotations

import torch


def sample_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator):
    """Return (inputs, targets), each (batch_size, length) int64 on tokens' device.

    `tokens` is a 1-D tensor holding every sequence of a split back to back (BOS ... EOS);
    targets are inputs shifted by one token.
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
    offsets = starts.to(tokens.device).unsqueeze(1) + torch.arange(length + 1, device=tokens.device)
    window = tokens[offsets].long()
    return window[:, :-1], window[:, 1:]


def evaluation_windows(tokens: torch.Tensor, length: int, max_windows: int | None = None):
    """Non-overlapping (inputs, targets) windows covering the split in order: a fixed,
    RNG-free validation set, so evaluating never disturbs training randomness."""
    n = (tokens.numel() - 1) // length
    if n < 1:
        raise ValueError(f"The validation split holds {tokens.numel()} tokens, too few for one window of {length + 1}.")
    chosen = torch.arange(n, device=tokens.device)
    if max_windows is not None and max_windows < n:
        # Spread the subset over the whole split rather than taking its first songs.
        chosen = torch.linspace(0, n - 1, max_windows, device=tokens.device).long()
    offsets = chosen.unsqueeze(1) * length + torch.arange(length + 1, device=tokens.device)
    window = tokens[offsets].long()
    return window[:, :-1], window[:, 1:]
