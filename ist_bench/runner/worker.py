"""One case in a fresh process: `python -m ist_bench.runner.worker RESULT.json`.

The process imports the heavy modules first, then waits on stdin for its job (one JSON
line: kind, case, warmup), so a parent can start it while the previous case still holds
the GPU and hand it the case only once the GPU is free. The result row goes to RESULT.json
(written atomically), so a crash never leaves half a row.

`fault` in a job ("raise", "kill", "hang") injects a failure, for the isolation tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    import peft  # noqa: F401  (preload while waiting)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from ist_bench.errors import UsageError
    from ist_bench.runner.case import Case, measure_memory, measure_time

    result_path = argv[0]
    line = sys.stdin.readline()
    if not line.strip():
        return 3  # the parent had no job for us
    job = json.loads(line)
    fault = job.get("fault")
    if fault == "raise":
        raise RuntimeError("injected failure")
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hang":
        time.sleep(3600)
    try:
        case = Case.from_dict(job["case"]).check()
        row = measure_memory(case) if job["kind"] == "memory" else measure_time(case, job.get("warmup", 10))
    except UsageError as e:
        row = {"kind": job["kind"], "case": job["case"], "backend": job["case"].get("backend"),
               "status": "error", "error": f"UsageError: {e}"}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(row, f)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
