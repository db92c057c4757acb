"""One rank of a distributed case (what `torchrun` starts): join the group, shard, measure, write the row.

    python -m torch.distributed.run --nproc-per-node N -m ist_bench.distributed.worker JOB.json OUT_DIR

Each rank runs the memory protocol of runner/memory.py on its own tensors (a sharded parameter, gradient
or optimizer state counts by its local shard) and writes `OUT_DIR/rank<R>.json`, also when it fails.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path


def init(backend: str, timeout_s: float) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def wrapper(case, job: dict):
    """How this rank shards the model: the case's `shard` and `reshard_after_forward`; the job may name
    FSDP2's param and reduce dtypes."""
    from ist_bench.distributed import wrap

    if case.shard == "ddp":
        return wrap.shard_ddp
    return lambda m: wrap.shard_fsdp2(m, reshard_after_forward=case.reshard_after_forward,
                                      param=job.get("param_dtype", "bf16"), reduce=job.get("reduce_dtype", "fp32"))


def main(argv: list[str] | None = None) -> int:
    from ist_bench.process import prepare

    prepare()
    import torch
    import torch.distributed as dist

    from ist_bench.runner.build import record_failure
    from ist_bench.runner.case import Case

    job_path, out = (argv or sys.argv[1:])[:2]
    job = json.loads(Path(job_path).read_text())
    rank = int(os.environ.get("RANK", 0))
    row = {"rank": rank, "status": "ok", "error": None}
    try:
        case = Case.from_dict(job["case"])
        if case.backend == "cuda":   # before the group: NCCL binds each rank to its own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        init("nccl" if case.backend == "cuda" else "gloo", job.get("timeout_s", 300))
        if os.environ.get("IST_BENCH_DIST_FAIL_RANK") == str(rank):   # tests only: one rank dies mid-run
            raise RuntimeError(f"injected failure on rank {rank}")
        row.update(measure(case, job))
        if row["status"] != "ok":       # measure_memory keeps a step's failure in its row
            row["failed_at"] = time.time()
    except Exception as e:   # this rank's failure is its row; torchrun tears the other ranks down
        record_failure(row, e)
        row["failed_at"] = time.time()   # the first rank to fail is the cause; the others lost their peer
    Path(out, f"rank{rank}.json").write_text(json.dumps(row, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if row["status"] == "ok" else 1


def measure(case, job: dict) -> dict:
    """The memory protocol of runner/memory.py on this rank, the model sharded before the optimizer exists."""
    from ist_bench.runner.memory import measure_memory
    from ist_bench.runner.time import measure_time

    if job.get("kind") == "time":
        return measure_time(case, warmup=job.get("warmup", 10), profile_steps=job.get("profile_steps"),
                            busy_gpu="ignore", wrap=wrapper(case, job))
    return measure_memory(case, busy_gpu="ignore", wrap=wrapper(case, job))   # the other ranks share the host's GPUs


if __name__ == "__main__":
    sys.exit(main())
