"""A worker process: `python -m ist_bench.runner.worker`.

It imports the heavy modules first, then reads jobs from stdin, one JSON line each (kind, case,
warmup, result), and writes each result row to the job's `result` path (atomically: a temp file
renamed), so a crash never leaves half a row. A parent can start it while the previous case
still holds the GPU and hand it a case only once the GPU is free; sim/CPU workers stay warm and
take case after case. It exits at the end of its input.

`fault` in a job injects a failure, for the fault-injection tests: "raise" (the worker crashes),
"kill" (SIGKILL before the case), "kill-mid-step" (SIGKILL in the case's first backward pass), "hang" (never
answers), "invalid" (a setting that no longer validates, as when a file changed after the suite
was checked).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from ist_bench.process import prepare


def main() -> int:
    prepare()   # offline, bitsandbytes hidden until a quantized case (ist_bench/process.py)
    import peft  # noqa: F401  (preload while waiting)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from ist_bench.errors import UsageError
    from ist_bench.results import SCHEMA, write_atomic
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    from ist_bench.runner.time import measure_time

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        open(f"{job['result'][:-5]}.start", "w").close()   # the case's clock starts now (runner/isolate.py)
        fault = job.get("fault")
        if fault == "raise":
            raise RuntimeError("injected failure")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        if fault == "kill-mid-step":   # in the step itself, whatever the machine's speed (a timer raced fast cases)
            import torch

            torch.autograd.backward = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        if fault == "invalid":
            job["case"] = {**job["case"], "seq_len": 10**9}
        try:
            case = Case.from_dict(job["case"]).check()
            busy = job.get("busy_gpu", "refuse")
            if case.nproc is not None:   # ranks under FSDP2/DDP: torchrun (cpu, cuda) or a fake process group (sim)
                from ist_bench.distributed.launch import run_case
                row = run_case(case, job["kind"], job.get("warmup", 10))
            elif job["kind"] == "memory":
                row = measure_memory(case, busy_gpu=busy, timeline=job.get("timeline"))
            elif case.backend == "sim":    # predicted for the suite's card
                from ist_bench.predict import predict_time
                row = predict_time(case, job.get("gpu") or "h100-80g", job.get("warmup", 10))
            else:
                row = measure_time(case, job.get("warmup", 10), profile_steps=job.get("profile_steps"),
                                   overhead_blocks=job.get("overhead_blocks", 0), busy_gpu=busy)
        except UsageError as e:
            row = {"schema": SCHEMA, "kind": job["kind"], "case": job["case"], "backend": job["case"].get("backend"),
                   "status": "error", "error": f"UsageError: {e}"}
        write_atomic(job["result"], json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
