"""Live tensor bytes, counted per storage, the same way on cuda, cpu and meta tensors.

The tracker is a `TorchDispatchMode`: every op's output storage on the tracked device
is counted once (views share their base's storage) and un-counted when the storage is
freed, through a weak reference on the storage object. Tensors that existed before the
tracker (weights, optimizer state) are registered explicitly so their views are not
counted twice and their bytes are part of the total.

`live` is what a caching allocator would call "allocated", without its block rounding;
`peak` is the largest `live` since the last `reset_peak()`. An optional `block` function
(sim's allocator model) keeps a second count of rounded block bytes, and an optional
`capacity` turns exceeding it (with `outside` bytes, e.g. modelled workspaces, added) into
`SimulatedOOM`: what a GPU of that size would do.

Every storage gets a serial number and a birth and death time on one clock (an event counter),
plus the tag current at its birth (the meter sets `tag` to the running module). The moment of
the peak (in blocks) is a clock value, so `alive_at(moment)` can later list exactly which
storages were live then, without copying the live set at every new peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class SimulatedOOM(MemoryError):
    """A simulated step needed more than the capacity it was given."""


@dataclass
class Storage:
    nbytes: int
    blocks: int
    tag: str | None
    born: int
    died: int | None = None


class MemoryTracker(TorchDispatchMode):
    def __init__(self, device_type: str, *, block: Callable[[int], int] | None = None,
                 capacity: int | None = None, outside: int = 0):
        super().__init__()
        self.device_type = device_type
        self.block = block or (lambda n: n)
        self.capacity, self.outside = capacity, outside  # `outside`: bytes taken besides tensors
        self._live: dict[int, tuple[weakref.ref, int]] = {}   # id(storage) -> (ref, serial)
        self.log: dict[int, Storage] = {}                      # serial -> its bytes, tag and lifetime
        self.clock = 0
        self.tag: str | None = None
        self.live = self.peak = 0
        self.live_blocks = self.peak_blocks = 0
        self.peak_moment = 0   # the clock when `peak_blocks` was reached

    # -- counting -------------------------------------------------------------------
    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors created outside the tracker (weights, inputs, optimizer state)."""
        for t in tensors:
            self._add(t)

    @property
    def peak_estimate(self) -> int:
        """Peak in allocator blocks plus the bytes taken besides tensors: the modelled allocated peak."""
        return self.peak_blocks + self.outside

    def reset_peak(self) -> None:
        self.peak, self.peak_blocks, self.peak_moment = self.live, self.live_blocks, self.clock
        self.log = {s: e for s, e in self.log.items() if e.died is None}   # forget the dead

    def serial(self, t: torch.Tensor) -> int | None:
        """The serial of a live tensor's storage (None if untracked)."""
        entry = self._live.get(id(t.untyped_storage())) if isinstance(t, torch.Tensor) else None
        return None if entry is None else entry[1]

    def alive_at(self, moment: int) -> dict[int, Storage]:
        return {s: e for s, e in self.log.items() if e.born <= moment and (e.died is None or e.died > moment)}

    def _add(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        nbytes = storage.nbytes()
        blocks = self.block(nbytes)
        self.clock += 1
        serial = self.clock
        self._live[key] = (weakref.ref(storage, self._freed(key)), serial)
        self.log[serial] = Storage(nbytes, blocks, self.tag, serial)
        self.live += nbytes
        self.live_blocks += blocks
        if self.live > self.peak:
            self.peak = self.live
        if self.live_blocks > self.peak_blocks:
            self.peak_blocks, self.peak_moment = self.live_blocks, self.clock
        if self.capacity is not None and self.live_blocks + self.outside > self.capacity:
            raise SimulatedOOM(f"simulated out of memory: {self.live_blocks + self.outside} bytes needed "
                               f"({self.outside} of them workspace) > capacity {self.capacity}")

    def _freed(self, key: int):
        self_ref = weakref.ref(self)  # the callback must not keep the tracker alive

        def callback(_ref):
            tracker = self_ref()
            if tracker is None:
                return
            entry = tracker._live.pop(key, None)
            if entry is not None:
                tracker.clock += 1
                storage = tracker.log[entry[1]]
                storage.died = tracker.clock
                tracker.live -= storage.nbytes
                tracker.live_blocks -= storage.blocks
        return callback

    # -- the dispatch hook ----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the unique storages behind `tensors` (shared/tied storages once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and not t.is_sparse:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())
