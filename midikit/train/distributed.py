"""Several processes, one run: `torchrun --nproc_per_node=N -m midikit train ...`.

PyTorch's own engine does the work: torchrun starts the processes, `torch.distributed` connects
them (NCCL on GPUs, gloo on CPUs) and DistributedDataParallel averages the gradients. midikit adds
the rules of a run: rank 0 alone decides where the run starts and writes or rotates any file; every
decision that depends on the clock or on a signal (save now, stop now) is rank 0's, broadcast each
step, so all ranks always do the same thing; each rank draws its own windows from its own
generator, whose state rank 0 gathers into every checkpoint.

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op: same behaviour, same speed.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError, StorageError
from ..models import resolve_device

TIMEOUT = timedelta(minutes=10)  # a collective that long without an answer means a rank is gone


class RankLost(StorageError):
    """Another process of the run stopped; the message says how to resume (one line in the CLI)."""


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Rank 0: the only process that writes files, logs and decides."""
        return self.rank == 0


def join(device_name: str) -> tuple[Cluster, torch.device]:
    """This process's place in the run (from torchrun's RANK, WORLD_SIZE, LOCAL_RANK) and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster(), resolve_device(device_name)
    cluster = Cluster(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() < world and device.index is None:
            raise ConfigError(f"torchrun started {world} processes but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node={torch.cuda.device_count()}.")
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    return cluster, device


def _stopped_by_torchrun(signum, frame):
    # torchrun stops the other processes (SIGTERM, then SIGKILL after a while) when one of them dies: say so
    # in midikit's words before going, rather than leave torchrun's exit codes as the only trace.
    rank = dist.get_rank() if dist.is_initialized() else "?"
    raise RankLost(f"Rank {rank}: another process of this run stopped, and torchrun stopped this one. Run the same "
                   "torchrun command again to continue from the last checkpoint.")


def leave(cluster: Cluster, together: bool = True) -> None:
    """Tear the group down once nothing holds it, and (`together`: every process ended the run the
    same way) after the others are done with it: a process that exits while DDP still references the
    group, or while a peer is mid-collective, can be aborted by gloo at exit."""
    if cluster.active and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the run is over: a SIGTERM now is only a SIGTERM
    if cluster.active and dist.is_initialized():
        gc.collect()  # DDP's hooks form reference cycles: free the wrapped model, and its hold on the group, now
        if together:
            try:
                dist.barrier()
            except RuntimeError:  # a peer already gone: the run is saved, nothing is left to wait for
                pass
        dist.destroy_process_group()


def broadcast(cluster: Cluster, value):
    """Rank 0's `value` on every rank (a small Python object: a decision, a run's plan)."""
    if not cluster.active:
        return value
    box = [value]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def gather(cluster: Cluster, value) -> list:
    """Every rank's `value`, in rank order, on every rank (RNG states: small)."""
    if not cluster.active:
        return [value]
    values = [None] * cluster.world_size
    _collective(dist.all_gather_object, values, value)
    return values


def mean(cluster: Cluster, tensor: torch.Tensor) -> torch.Tensor:
    """The average of `tensor` over the ranks (the same on every rank)."""
    if not cluster.active:
        return tensor
    tensor = tensor.clone()
    _collective(dist.all_reduce, tensor)
    return tensor / cluster.world_size


def total(cluster: Cluster, tensor: torch.Tensor) -> torch.Tensor:
    if not cluster.active:
        return tensor
    tensor = tensor.clone()
    _collective(dist.all_reduce, tensor)
    return tensor


def _collective(operation, *args, **kwargs):
    try:
        return operation(*args, **kwargs)
    except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection or timed out
        raise lost(exc) from exc


def lost(exc: BaseException) -> RankLost:
    if isinstance(exc, RankLost):
        return exc
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return RankLost(f"Rank {rank}: another process of this run stopped ({str(exc).splitlines()[0][:160]}). This one "
                    "stops too, without saving: run the same torchrun command again to continue from the last "
                    "checkpoint.")


def is_lost(exc: BaseException) -> bool:
    """Whether `exc` (raised inside a step: DDP's gradient all-reduce) means a peer is gone."""
    if isinstance(exc, RankLost):
        return True
    text = str(exc)
    return dist.is_initialized() and isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset", "Broken pipe", "Timed out",
                                      "NCCL", "gloo", "ProcessGroup"))
