"""How many CPU threads a small model gets: one.

A model of a few hundred thousand parameters spends its step dispatching many small operations; a
second torch thread only adds waiting, and on cores shared with other work (a laptop, Colab's two
vCPUs, CI) a lot of it: measured on 2 shared cores, 40 training steps of the CPU-preset Transformer
took 46 s on one thread and 192 s on two, a quality report 25 s and 99 s.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

SINGLE_THREAD_BELOW = 5_000_000  # parameters: on the CPU, smaller models run on one torch thread


@contextmanager
def threads_for(model: torch.nn.Module):
    """One torch thread while a small model works on the CPU; the setting is put back afterwards."""
    parameters = sum(p.numel() for p in model.parameters())
    if next(model.parameters()).device.type != "cpu" or parameters >= SINGLE_THREAD_BELOW:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
