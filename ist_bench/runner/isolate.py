"""Each case in its own fresh Python process, so no case inherits another's allocator state,
caches, compiled kernels or fragmentation. A case that raises, is killed or times out
becomes a row with its status; the others carry on.

GPU cases run one at a time, but the next worker is started (and imports torch,
transformers, peft) while the current one runs, so a grid pays the import cost once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed


class Worker:
    """A started worker process waiting for its job."""

    def __init__(self):
        fd, self.result_path = tempfile.mkstemp(prefix="ist-bench-", suffix=".json")
        os.close(fd)
        os.unlink(self.result_path)
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ist_bench.runner.worker", self.result_path],
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, env=env)

    def run(self, job: dict, timeout_s: float | None) -> dict:
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died while importing: reported below from its exit code
        try:
            code = self.proc.wait(timeout=timeout_s)
            status = None
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            status = "timeout"
        try:
            with open(self.result_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            pass
        finally:
            if os.path.exists(self.result_path):
                os.unlink(self.result_path)
        if status is None:
            status = "killed" if code < 0 else "crashed"
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        what = {"timeout": f"no result within {timeout_s} s; killed",
                "killed": f"worker killed by signal {-code}",
                "crashed": f"worker exited with code {code}"}[status]
        case = job.get("case", {})
        return {"kind": job.get("kind"), "case": case, "backend": case.get("backend"), "status": status,
                "error": what, "log_tail": tail}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_isolated(jobs: Iterable[dict], *, timeout_s: float | None = None, parallel: int = 1) -> Iterator[dict]:
    """Yield one row per job. `parallel` > 1 runs that many at once (sim/cpu memory only)."""
    jobs = list(jobs)
    if parallel > 1:
        def one(job):
            w = Worker()
            try:
                return w.run(job, timeout_s)
            finally:
                w.close()
        with ThreadPoolExecutor(parallel) as pool:
            for fut in as_completed([pool.submit(one, j) for j in jobs]):
                yield fut.result()
        return
    # Timed cases get the machine alone: a worker importing torch beside them would steal CPU.
    prefetch = all(j.get("kind") == "memory" for j in jobs)
    nxt = Worker() if jobs else None
    try:
        for i, job in enumerate(jobs):
            cur = nxt or Worker()
            nxt = None
            try:
                # Start the next worker only now: it imports while this one runs, but gets its
                # case (and touches the GPU) only after this one has exited.
                nxt = Worker() if prefetch and i + 1 < len(jobs) else None
                yield cur.run(job, timeout_s)
            finally:
                cur.close()
    finally:
        if nxt is not None:
            nxt.close()
