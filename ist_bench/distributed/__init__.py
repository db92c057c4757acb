"""Beyond one GPU: PyTorch's own FSDP2 (`torch.distributed.fsdp.fully_shard`) under `torchrun`.

- `wrap`: how a model is sharded (each transformer block, then the root; the mixed-precision policy).
- `launch`: `ist-bench memory --nproc N --shard fsdp2|ddp` runs N ranks through `torch.distributed.run`;
  each rank measures its own categories with ist_bench.measure; the row holds every rank.
- `worker`: one rank (what torchrun starts).
- `fake`: sim for any world size in one process (a fake process group); everything it patches.
See docs/distributed.md.
"""

from ist_bench.runner.case import SHARDS  # noqa: E402,F401  (the case's names)
