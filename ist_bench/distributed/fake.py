"""sim for any world size in one process: FSDP2 on meta tensors under a fake process group.

Every rank of an N-rank FSDP2 run holds the same shapes (dim 0 of each parameter ceil-divided by N; only
the local views of the last ranks are shorter), so one process can play rank r of N: torch's fake process
group (`torch.testing._internal.distributed.fake_pg`, backend "fake") answers every collective at once
without moving data, and the model lives on the meta device as the rest of sim does. The same
`wrap.shard_fsdp2` runs; the tracker counts each local shard, gather and reduce-scatter buffer.

What is patched, only inside `fake_world()`, and why (torch 2.11-2.13; torchtitan's former estimator
used FakeTensorMode on a CUDA build instead, which a CPU-only torch cannot run):
1. `_fully_shard._get_device_from_mesh` -> meta: FSDP2 puts its shards and buffers on the mesh's device;
   a "cpu" mesh would allocate every all-gather buffer for real and copy meta shards into it.
2. `_get_device_handle("meta")` -> `torch.cpu` (in the four FSDP2 modules that import it): FSDP2 asks
   the device module for streams and events; torch.cpu's are no-ops, which is right for a model that
   computes nothing.
3. `FSDPParamGroup._validate_no_meta_params` -> no-op: FSDP2's lazy init refuses meta parameters (it
   expects `to_empty()` first); on sim they stay meta by design.
Nothing else differs from a real run: same wrapping, same mixed precision, same lazy init, same
optimizer, and tests/test_dist.py checks the figures against a real 2-process gloo run.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch


@contextlib.contextmanager
def fake_world(rank: int, world: int):
    """Be rank `rank` of `world` under a fake process group, FSDP2 patched to shard on meta."""
    import torch.distributed as dist
    import torch.distributed.fsdp._fully_shard._fsdp_collectives as collectives
    import torch.distributed.fsdp._fully_shard._fsdp_init as init
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as group
    import torch.distributed.fsdp._fully_shard._fsdp_state as state
    import torch.distributed.fsdp._fully_shard._fully_shard as fully
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("sim --nproc needs a process without a process group")
    real = group._get_device_handle

    def handle(device_type: str):
        return torch.cpu if device_type == "meta" else real(device_type)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(fully, "_get_device_from_mesh", lambda mesh: torch.device("meta")))
        for module in (collectives, init, group, state):
            stack.enter_context(mock.patch.object(module, "_get_device_handle", handle))
        stack.enter_context(mock.patch.object(group.FSDPParamGroup, "_validate_no_meta_params", lambda self: None))
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        try:
            yield
        finally:
            dist.destroy_process_group()


def simulate(case, nproc: int, *, ranks=(0,), reshard_after_forward: bool = True) -> dict:
    """The case row of an N-rank FSDP2 run on sim, rank by rank in this process (default rank 0: with
    dim 0 ceil-divided, rank 0 holds the largest local shards, so its peak is the per-rank peak)."""
    import dataclasses

    from ist_bench.distributed.launch import gather
    from ist_bench.distributed.wrap import shard_fsdp2
    from ist_bench.runner.memory import measure_memory

    case = dataclasses.replace(case, nproc=nproc, shard="fsdp2", reshard_after_forward=reshard_after_forward)
    rows = []
    for r in ranks:
        if not 0 <= r < nproc:
            raise ValueError(f"rank {r} outside 0..{nproc - 1}")
        with fake_world(r, nproc):
            row = measure_memory(case, wrap=lambda m: shard_fsdp2(m, reshard_after_forward=reshard_after_forward))
        rows.append({"rank": r, **row})
    return gather(case, rows, nproc, "fsdp2", reshard_after_forward, launcher="sim (fake process group)")
