"""CPU copies of a run's state for its checkpoints, made so that training waits for as little as
possible: `to_cpu_snapshot` copies a state of tensors and plain Python, reusing an earlier copy's
memory; a `SnapshotPool` keeps at most two copies (one for the write in flight, one being filled),
prepares the first one's buffers on a thread of its own, and on a GPU queues the copies on a side
stream into pinned memory (`after_copy`: the next optimizer update waits for them, on the GPU).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

import torch

# Exact types: subclasses (numpy scalars are float/int subclasses, defaultdict, namedtuple,
# enums) pickle fine but torch.load(weights_only=True) refuses them.
_PLAIN = (str, int, float, bool, type(None), bytes, torch.dtype, torch.device, torch.Size)
_DICTS = (dict, OrderedDict)


def to_cpu_snapshot(obj, reuse=None, _where: str = "state", non_blocking: bool = False, spares: "Spares | None" = None):
    """Deep copy of a state made of dicts/lists/tuples, tensors and plain values, every tensor
    detached and cloned to CPU, so the caller may keep training (and mutate its tensors) at once.

    `reuse`, a previous snapshot nobody reads any more, lends its tensors wherever shape and dtype
    match: copying into memory already touched is several times faster than into fresh memory,
    whose page faults dominate for a GB-sized state. `spares` (a `SnapshotPool`'s buffers, made on
    another thread) lend theirs where `reuse` has none. With `non_blocking`, GPU tensors go into
    pinned memory and the copies are only queued on the current CUDA stream: the caller records an
    event and makes sure it has completed before anything reads the snapshot. Anything else (numpy
    arrays and scalars, Generators, other objects) raises TypeError naming where it is: it would not
    load with `weights_only=True`.
    """
    kind = type(obj)
    if isinstance(obj, torch.Tensor):
        pinned = non_blocking and obj.is_cuda
        if not _fits(reuse, obj, pinned) and spares is not None:
            reuse = spares.pop(obj, pinned)
        if _fits(reuse, obj, pinned):
            return reuse.copy_(obj.detach(), non_blocking=pinned)
        if pinned:
            return torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True).copy_(obj.detach(), non_blocking=True)
        return obj.detach().to("cpu", copy=True)
    if kind in _DICTS:
        previous = reuse if type(reuse) in _DICTS else {}
        copied = copy.copy(obj)  # keeps the dict type and, for state_dicts, their `_metadata`
        for key, value in obj.items():
            copied[key] = to_cpu_snapshot(value, previous.get(key), f"{_where}[{key!r}]", non_blocking, spares)
        return copied
    if kind in (list, tuple):
        previous = reuse if type(reuse) is kind and len(reuse) == len(obj) else [None] * len(obj)
        items = [to_cpu_snapshot(value, old, f"{_where}[{i}]", non_blocking, spares)
                 for i, (value, old) in enumerate(zip(obj, previous))]
        return items if kind is list else tuple(items)
    if kind in _PLAIN:
        return obj
    raise TypeError(
        f"{_where} is a {kind.__module__}.{kind.__name__}; a checkpoint may hold only tensors and plain "
        "Python (dict, list, tuple, str, int, float, bool, None) so that torch.load(weights_only=True) "
        "reads it. Convert it, e.g. float(x), x.item(), x.tolist() or torch.from_numpy(x)."
    )


def _fits(buffer, obj: torch.Tensor, pinned: bool) -> bool:
    return (isinstance(buffer, torch.Tensor) and buffer.shape == obj.shape and buffer.dtype == obj.dtype
            and (not pinned or buffer.is_pinned()))


@dataclass(frozen=True)
class Filled:
    """What a pool's fill thread hands back: the buffers of a spec, and where and how fast they were made."""

    spec: tuple
    buffers: tuple
    thread: str
    seconds: float


class Spares:
    """Empty snapshot buffers by (shape, dtype, pinned), lent out once each; the training thread's alone."""

    def __init__(self, filled: Filled):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        for key, buffer in zip(filled.spec, filled.buffers):
            self._free.setdefault(key, []).append(buffer)

    def pop(self, like: torch.Tensor, pinned: bool) -> torch.Tensor | None:
        free = self._free.get((tuple(like.shape), like.dtype, pinned))
        return free.pop() if free else None


def buffer_spec(tensors) -> tuple:
    """(shape, dtype, pinned) of the CPU buffer a snapshot needs for each tensor: pinned for a GPU
    tensor (its copy is then asynchronous). Plain values, computed on the caller's thread."""
    return tuple((tuple(t.shape), t.dtype, t.is_cuda) for t in tensors)


def _fill(spec: tuple, device: torch.device, done: Future) -> None:
    """Make the buffers of `spec` (on the pool's own thread): pinning a GB takes the host a good part of
    a second, and fresh pageable memory is paid for in page faults; neither on the training thread."""
    started = time.perf_counter()
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # pinned memory through the training GPU's context, not GPU 0's
        buffers = tuple(torch.empty(shape, dtype=dtype, pin_memory=True) if pinned else torch.zeros(shape, dtype=dtype)
                        for shape, dtype, pinned in spec)
        done.set_result(Filled(spec, buffers, threading.current_thread().name, time.perf_counter() - started))
    except BaseException as exc:  # e.g. no pinned memory left: the snapshots allocate as they go instead
        done.set_exception(exc)


class SnapshotPool:
    """At most `size` CPU copies of a run's state, reused from save to save (pinned on a GPU, so the
    copies run asynchronously). A copy still held by a write in flight, or by one that was given up
    on, is never handed out again: a file's checksum must cover one consistent state. `take` gives
    None when every copy is held, and the save is then skipped.

    `prepare` makes the first copy's buffers on a thread of the pool's own, so that no save ever
    allocates on the training thread (a second copy is needed only while a write hangs)."""

    FILL_THREAD = "midikit-snapshot-pool"

    def __init__(self, size: int = 2):
        self.size = size
        self._slots: list[tuple[dict, object]] = []  # (snapshot, the Future of the write holding it)
        self._filling: Future | None = None
        self.filled: Filled | None = None  # once a take has used the prepared buffers
        self.fill_error: BaseException | None = None

    def prepare(self, spec: tuple, device: torch.device) -> Future:
        """Start making the buffers of `spec` (see `buffer_spec`) for a state on `device` on the pool's
        own thread; returns its Future. Only the spec (plain values) crosses to that thread."""
        done: Future = Future()
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the caller's; the fill thread has its own
        threading.Thread(target=_fill, args=(spec, device, done), name=self.FILL_THREAD, daemon=True).start()
        self._filling = done
        return done

    def take(self, state: dict) -> tuple[dict, object] | None:
        """(a snapshot of `state`, a CUDA event that completes once its copies have, or None on the CPU),
        or None when no copy is free. The next optimizer step must wait for the event (`after_copy`)."""
        free = next((i for i, (_, holder) in enumerate(self._slots) if holder is None or holder.done()), None)
        if free is None and len(self._slots) >= self.size:
            return None
        reuse = self._slots.pop(free)[0] if free is not None else None
        spares = self._spares() if reuse is None else None
        if not _has_cuda_tensors(state):
            return to_cpu_snapshot(state, reuse=reuse, spares=spares), None
        side = _copy_stream()
        side.wait_stream(torch.cuda.current_stream())  # copy what the last step wrote
        with torch.cuda.stream(side):
            snapshot = to_cpu_snapshot(state, reuse=reuse, non_blocking=True, spares=spares)
            _keep_alive(state, side)
        return snapshot, side.record_event()

    def _spares(self) -> Spares | None:
        """The prepared buffers, once: waits for the fill if a save comes before it is done (that
        wait is all the first save costs beyond queueing its copies)."""
        filling, self._filling = self._filling, None
        if filling is None:
            return None
        try:
            self.filled = filling.result()
        except BaseException as exc:
            self.fill_error = exc
            return None
        return Spares(self.filled)

    def hold(self, snapshot: dict, holder) -> None:
        """`snapshot` belongs to the write whose Future is `holder` until that write is done."""
        self._slots.append((snapshot, holder))


def after_copy(event) -> None:
    """Make the GPU's next writes to the model and optimizer wait for a snapshot's copies (GPU-side:
    the host does not wait)."""
    if event is not None:
        torch.cuda.current_stream().wait_event(event)


_copy_streams: dict = {}


def _copy_stream():
    device = torch.cuda.current_device()
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


def tensors_in(obj):
    """Every tensor in a state made of dicts, lists and tuples (the one walk the savers need)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_in(value)


def _has_cuda_tensors(obj) -> bool:
    return any(tensor.is_cuda for tensor in tensors_in(obj))


def _keep_alive(obj, stream) -> None:
    """Tell the caching allocator that `stream` reads these GPU tensors, so their memory is not
    handed out again before the copies are done."""
    for tensor in tensors_in(obj):
        if tensor.is_cuda:
            tensor.record_stream(stream)
