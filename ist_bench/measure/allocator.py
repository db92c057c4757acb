"""A replay of PyTorch's CUDA caching allocator: what `max_memory_allocated` books for a sequence of
allocations and frees, without a GPU.

`max_memory_allocated` counts the *blocks* the allocator hands out, not the bytes asked for. A block
is the request rounded up to 512 B, unless it comes from a cached block that the allocator does not
split: a large-pool block is split only if more than 1 MiB would remain, so a 1.25 MiB request served
by a cached 2.2 MiB block books all 2.2 MiB. How much that adds depends on which blocks are cached
when, i.e. on the whole history of the run, so it is replayed here, with the rules of
c10/cuda/CUDACachingAllocator.cpp (native backend, default configuration: no `max_split_size`, no
expandable segments, one stream):

- requests of at most 1 MiB come from the small pool (2 MiB segments), larger ones from the large
  pool; a new large segment is 20 MiB for requests under 10 MiB, else the request rounded up to 2 MiB;
- a request takes the smallest cached block of its pool that fits (lowest address among equals) and
  splits it if the remainder is >= 512 B (small pool) or > 1 MiB (large pool); otherwise a new segment,
  each at a lower address than the ones before (how the driver mapped them on the H200: with rising
  addresses, 5 of 6 recorded sequences part from the GPU's in their choice among equal-sized blocks);
- a freed block merges with free neighbours of its segment and is cached; segments go back to the
  driver only on `empty_cache()` (no OOM retry is modelled).

`tests/test_allocator.py` replays sequences recorded on the H200 (`scripts/probe_allocator.py`)
and checks that the allocated bytes after every event equal the GPU's.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MiB = 1 << 20
MIN_BLOCK = 512
SMALL = MiB               # kSmallSize: the small pool's largest request
SMALL_SEGMENT = 2 * MiB   # kSmallBuffer
LARGE_SEGMENT = 20 * MiB  # kLargeBuffer, for requests below MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB


@dataclass(eq=False)
class Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: Block | None = None
    next: Block | None = None


def round_size(nbytes: int) -> int:
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    if size <= SMALL:
        return SMALL_SEGMENT
    if size < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class CachingAllocator:
    """`alloc(nbytes)` returns the block booked for a request; `free(block)` gives it back.
    `allocated` and `reserved` are the allocator's statistics of the same names (bytes)."""

    def __init__(self):
        self.allocated = self.reserved = 0
        self._pools: dict[bool, list[tuple[int, int, Block]]] = {True: [], False: []}   # (size, addr, block)
        self._next_addr = 1 << 48   # new segments go below the last one

    def alloc(self, nbytes: int) -> Block | None:
        if nbytes == 0:
            return None
        size = round_size(nbytes)
        small = size <= SMALL
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = segment_size(size)
            self._next_addr -= seg
            block = Block(self._next_addr, seg, small)
            self.reserved += seg
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL:
            rest = Block(block.addr + size, remaining, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            bisect.insort(pool, (rest.size, rest.addr, rest))
        block.free = False
        self.allocated += block.size
        return block

    def free(self, block: Block | None) -> None:
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        pool = self._pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                del pool[bisect.bisect_left(pool, (neighbour.size, neighbour.addr))]
                if neighbour is block.prev:
                    block.addr, block.prev = neighbour.addr, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        bisect.insort(pool, (block.size, block.addr, block))

    def empty_cache(self) -> None:
        """Release every segment with nothing allocated in it (`torch.cuda.empty_cache`)."""
        for small, pool in self._pools.items():
            whole = [e for e in pool if e[2].prev is None and e[2].next is None]
            for e in whole:
                self.reserved -= e[0]
            self._pools[small] = [e for e in pool if not (e[2].prev is None and e[2].next is None)]
