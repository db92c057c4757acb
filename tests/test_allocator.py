"""sim's replay of the CUDA caching allocator (measure/allocator.py): its rules one by one, and the
sequences recorded on the H200 (scripts/probe_allocator.py) replayed event by event."""

import gzip
import json
from pathlib import Path

import pytest

from ist_bench.measure.allocator import CachingAllocator
from ist_bench.measure.sim import cuda_block_bytes

MiB = 1 << 20
RECORDED = Path(__file__).parent.parent / "results" / "probes" / "h200-allocator-sequences.json.gz"


@pytest.mark.parametrize("nbytes", [1, 511, 512, 513, MiB, MiB + 1, 3 * MiB, 10 * MiB - 1, 10 * MiB,
                                    11 * MiB + 1, 13 * MiB - 1, 13 * MiB, 300 * MiB + 7])
def test_a_fresh_allocator_books_what_a_fresh_segment_gives(nbytes):
    a = CachingAllocator()
    block = a.alloc(nbytes)
    assert block.size == a.allocated == cuda_block_bytes(nbytes)


def test_a_cached_block_is_split_only_above_one_mib_left_in_the_large_pool():
    a = CachingAllocator()
    first = a.alloc(int(2.2 * MiB))
    a.alloc(4 * MiB)                       # keeps the first block from merging with the segment's rest
    a.free(first)
    size = -(-int(2.2 * MiB) // 512) * 512
    reused = a.alloc(int(1.25 * MiB))      # 0.95 MiB would remain: booked whole
    assert reused.size == size
    a.free(reused)
    split = a.alloc(MiB + 4096)            # more than 1 MiB remains: split
    assert split.size == MiB + 4096
    assert a.allocated == 4 * MiB + MiB + 4096


def test_the_small_pool_splits_down_to_512_bytes_and_best_fit_takes_the_smallest_block():
    a = CachingAllocator()
    blocks = [a.alloc(n) for n in (4096, 512, 8192, 512)]
    a.free(blocks[0])
    a.free(blocks[2])
    b = a.alloc(3000)                      # 3072 from the 4096 block (smallest that fits), 1024 left split off
    assert b.size == 3072 and b.addr == blocks[0].addr
    assert a.reserved == 2 * MiB


def test_freed_neighbours_merge_back_into_their_segment_and_empty_cache_releases_it():
    a = CachingAllocator()
    xs = [a.alloc(3 * MiB) for _ in range(3)]      # one 20 MiB segment
    assert a.reserved == 20 * MiB
    for x in (xs[0], xs[2], xs[1]):
        a.free(x)
    assert a.allocated == 0
    big = a.alloc(19 * MiB)                        # fits only in the merged segment: no new one
    assert a.reserved == 20 * MiB and big.size == 20 * MiB   # 1 MiB left: not split
    a.free(big)
    a.empty_cache()
    assert a.reserved == 0


def test_recorded_gpu_sequences_replay_byte_for_byte():
    if not RECORDED.exists():
        pytest.skip("no recorded sequences (scripts/probe_allocator.py on a GPU)")
    data = json.loads(gzip.decompress(RECORDED.read_bytes()))
    assert data["sequences"]
    for seq in data["sequences"]:
        a, blocks = CachingAllocator(), {}
        for (op, ident, size), gpu in zip(seq["events"], seq["gpu"], strict=True):
            if op:
                blocks[ident] = a.alloc(size)
            else:
                a.free(blocks.pop(ident))
            assert [a.allocated, a.reserved] == gpu, (seq["seed"], ident)


def test_the_memo_never_turns_a_view_into_an_allocation():
    # `_unsafe_view` promises a fresh tensor in its schema but returns a view of `mm`'s output: replayed
    # from the memo as a storage of its own, it was one allocation per linear layer the GPU never makes
    import torch

    from ist_bench.measure.tracker import MemoryTracker

    def requests(memo):
        log = []

        class Logging(CachingAllocator):
            def alloc(self, nbytes):
                log.append(nbytes)
                return super().alloc(nbytes)
        t = MemoryTracker("meta", allocator=Logging(), memo=memo)
        w = torch.empty(64, 32, device="meta")
        t.register([w])
        with t:
            for _ in range(3):
                x = torch.empty(2, 8, 32, device="meta")
                torch.nn.functional.linear(x, w)
        return log
    # each step: the weight once (registered), then the input and mm's output
    assert requests(memo=True) == requests(memo=False) == [64 * 32 * 4] + [2 * 8 * 32 * 4, 2 * 8 * 64 * 4] * 3


def test_sim_books_the_weights_in_the_order_the_device_allocates_them():
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.build import build
    from ist_bench.runner.case import Case
    b = build(Case(model="tiny-llama", method=MethodSpec(name="lora"), seq_len=32, steps=1, backend="sim").check())
    names = {id(p): n for n, p in b.model.named_parameters()}
    order = [names[id(t)] for t in b.created if id(t) in names]
    first_adapter = next(i for i, n in enumerate(order) if "lora_" in n)
    assert all("lora_" not in n for n in order[:first_adapter]) and all("lora_" in n for n in order[first_adapter:])
    assert len(order) == len(names)
