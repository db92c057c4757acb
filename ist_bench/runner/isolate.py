"""Cases in worker processes, so no case inherits another's allocator state, caches, compiled
kernels or fragmentation, and a case that crashes, is killed or hangs becomes a row while the
others carry on.

- GPU cases and timed cases get a fresh process each. For GPU memory cases the next worker is
  started (and imports torch, transformers, peft) while the current one runs; it is handed its
  case only once the current one has exited. Timed cases get the machine alone.
- sim and CPU memory cases share nothing a process could carry over (sim allocates nothing; the
  CPU figures are the tracker's, not an allocator's), so one warm worker per lane runs case after
  case: a grid pays the import cost once per lane, not once per case.
- `stop` (a threading.Event, set on Ctrl-C) kills the running workers at once; queued cases
  never start.
- A case's timeout runs from when its worker starts the case (the worker says so with a `N.start` file),
  not from when the job was sent: a replacement worker's imports never count against the next case.
- Each worker's temp folder is named after the run's process id and says which results file it
  serves (`owner.json`); a run killed with SIGKILL leaves it behind, and the next run collects it
  (`leftovers`): the rows its workers finished go to their results file, then the folder goes.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator

from ist_bench.results import SCHEMA

POLL_S = 0.05
START_S = 300            # with a timeout: how long a worker may take to import before its case starts
PREFIX = "ist-bench-"


def reusable(job: dict) -> bool:
    """Whether a warm worker may run this job after another one."""
    return job.get("kind") == "memory" and job.get("case", {}).get("backend") in ("sim", "cpu")


class Worker:
    """A worker process: it imports the heavy modules, then runs the jobs it is sent, one per line."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ist_bench.runner.worker"], stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)
        open(os.path.join(self.dir, f"pid-{self.proc.pid}"), "x").close()
        self.jobs = 0

    def tag(self, out) -> None:
        """Record which results file this worker's rows belong to (for `leftovers` after a SIGKILL)."""
        if out is not None:
            with open(os.path.join(self.dir, ".owner.json"), "w") as f:   # renamed: never read half-written
                json.dump({"out": os.path.realpath(out)}, f)
            os.replace(os.path.join(self.dir, ".owner.json"), os.path.join(self.dir, "owner.json"))

    def run(self, job: dict, timeout_s: float | None, stop: threading.Event) -> dict | None:
        """The job's row; a failure row if the worker dies or times out; None if `stop` was set."""
        self.jobs += 1
        path = os.path.join(self.dir, f"{self.jobs}.json")
        try:
            self.proc.stdin.write(json.dumps({**job, "result": path}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died while importing: reported below from its exit code
        sent, started = time.monotonic(), None
        status = None
        while True:
            if started is None and os.path.exists(f"{path[:-5]}.start"):
                started = time.monotonic()
            if os.path.exists(path):
                with open(path) as f:
                    row = json.load(f)
                os.unlink(path)
                return row
            if stop.is_set():
                self.kill()
                return None
            code = self.proc.poll()
            if code is not None:
                time.sleep(POLL_S)          # a row written just before exiting
                if os.path.exists(path):
                    continue
                status = "killed" if code < 0 else "crashed"
                break
            now = time.monotonic()
            if timeout_s is not None and (now - started > timeout_s if started else now - sent > timeout_s + START_S):
                self.kill()
                code, status = self.proc.returncode, "timeout"
                break
            time.sleep(POLL_S)
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        if status == "timeout" and not started:
            what = f"the worker did not start the case within {timeout_s + START_S:g} s; killed"
        elif status == "timeout":
            what = f"no result within {timeout_s:g} s; killed"
        elif status == "killed":
            what = f"worker killed by signal {-code}"
        else:
            what = f"worker exited with code {code}"
        case = job.get("case", {})
        return {"schema": SCHEMA, "kind": job.get("kind"), "case": case, "backend": case.get("backend"), "status": status,
                "error": what, "log_tail": tail}

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Kill the process if it still runs and remove its files (idempotent)."""
        self.kill()
        if self.log.closed:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_isolated(jobs: Iterable[dict], *, timeout_s: float | None = None, parallel: int = 1,
                 stop: threading.Event | None = None, ready: list[Worker] | None = None,
                 out=None) -> Iterator[dict]:
    """Yield one row per job as each finishes (in finishing order with `parallel` > 1).

    `ready`: workers started earlier (they import while the caller loads the suite); each is a
    fresh process until its first job. `out`: the results file the rows go to (see `leftovers`). Closing the generator (or an exception in the consumer,
    e.g. KeyboardInterrupt) stops every worker at once; jobs not yet started never start."""
    jobs = list(jobs)
    ready = list(ready or [])
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    done: queue.Queue = queue.Queue()
    stop = stop or threading.Event()
    workers: set[Worker] = set(ready)
    for w in ready:
        w.tag(out)
    lock = threading.Lock()
    END = object()

    def start() -> Worker:
        with lock:
            if ready:
                return ready.pop()
        w = Worker()
        with lock:
            workers.add(w)
        w.tag(out)
        return w

    def retire(w: Worker | None) -> None:
        if w is not None:
            w.close()
            with lock:
                workers.discard(w)

    def lane() -> None:
        warm = spare = None
        try:
            while not stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                if reusable(job):
                    warm = warm if warm is not None and warm.alive else start()
                    row = warm.run(job, timeout_s, stop)
                    if row is None or row["status"] in ("killed", "crashed", "timeout"):
                        retire(warm)
                        warm = None
                else:
                    w = spare or start()
                    spare = None
                    # the next GPU memory case imports while this one runs (never beside a timed case)
                    if parallel == 1 and job.get("kind") == "memory" and not todo.empty():
                        spare = start()
                    row = w.run(job, timeout_s, stop)
                    retire(w)
                if row is not None:
                    done.put(row)
        finally:
            retire(warm)
            retire(spare)
            done.put(END)

    threads = [threading.Thread(target=lane, daemon=True) for _ in range(max(1, min(parallel, len(jobs))))]
    for t in threads:
        t.start()
    try:
        finished = 0
        while finished < len(threads):
            try:
                item = done.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is END:
                finished += 1
            else:
                yield item
    finally:
        stop.set()
        with lock:
            running = list(workers)
        for w in running:
            w.kill()
        for t in threads:
            t.join(timeout=10)
        for w in list(workers):
            w.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(out) -> list[dict]:
    """Collect the temp folders of runs that died without cleaning up (SIGKILL): the rows their workers
    finished for `out` are returned (the caller appends them); folders of dead runs are removed, except
    those holding finished rows for another results file that still exists (its own next run takes them)."""
    mine, rows = os.path.realpath(out), []
    for d in sorted(os.scandir(tempfile.gettempdir()), key=lambda e: e.name):
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", d.name)
        if not m or not d.is_dir(follow_symlinks=False) or d.stat(follow_symlinks=False).st_uid != os.getuid():
            continue
        names = os.listdir(d.path)
        pids = [int(m.group(1))] + [int(n[4:]) for n in names if re.fullmatch(r"pid-\d+", n)]
        if any(_alive(p) for p in pids):
            continue                        # a live run (or its worker still finishing a case)
        try:
            with open(os.path.join(d.path, "owner.json")) as f:
                owner = json.load(f).get("out")
        except (OSError, ValueError, AttributeError):
            owner = None
        found = sorted((n for n in names if re.fullmatch(r"\d+\.json", n)), key=lambda n: int(n[:-5]))
        if found and owner != mine and owner and os.path.exists(owner):
            continue
        if owner == mine:
            for n in found:
                try:
                    with open(os.path.join(d.path, n)) as f:
                        row = json.load(f)
                except (OSError, ValueError):
                    continue
                if isinstance(row, dict) and isinstance(row.get("case"), dict):
                    rows.append(row)
        shutil.rmtree(d.path, ignore_errors=True)
    return rows
