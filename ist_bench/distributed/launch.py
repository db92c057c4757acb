"""Run one case on N ranks through `torch.distributed.run` (torchrun) and gather the ranks into one row.

torchrun starts N workers (ist_bench/distributed/worker.py) on this host; gloo on the CPU, NCCL on GPUs. Every
collective has the process group's timeout; when a worker fails, torchrun's agent stops the others, and
the whole launch has a wall-clock limit after which its process group is killed. Each rank writes its row;
the case row holds them all under `ranks`, and its own `memory` is the rank that peaks highest.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ist_bench.errors import UsageError


def check_devices(nproc: int, backend: str) -> None:
    """More ranks than GPUs is one line (the rest of a sharded case is checked by Case.validate)."""
    import torch

    if backend == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {nproc}: only {torch.cuda.device_count()} GPU(s) visible on cuda")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case, kind: str = "memory", warmup: int = 10) -> dict:
    """The row of a case with `nproc` set (a suite's, the CLI's): sim plays rank 0 under a fake process
    group; cpu and cuda launch real ranks."""
    if case.backend == "sim":
        if kind != "memory":
            raise UsageError("timing needs real compute: use --backend cuda, or cpu for small models")
        from ist_bench.distributed.fake import simulate
        return simulate(case, case.nproc, reshard_after_forward=case.reshard_after_forward)
    return launch(case, case.nproc, case.shard, reshard_after_forward=case.reshard_after_forward, kind=kind,
                  warmup=warmup)


def launch(case, nproc: int, shard: str = "fsdp2", *, reshard_after_forward: bool = True,
           timeout_s: float = 1800, collective_timeout_s: float = 300, kind: str = "memory",
           warmup: int = 10) -> dict:
    """The case row of a real N-rank run (cpu: gloo; cuda: NCCL); `kind` memory or time."""
    import dataclasses

    start = time.time()
    case = dataclasses.replace(case, nproc=nproc, shard=shard, reshard_after_forward=reshard_after_forward)
    job = {"case": case.to_dict(), "timeout_s": collective_timeout_s, "kind": kind, "warmup": warmup,
           "profile_steps": None}   # cuda: profiled steps after the timed ones (busy, communication)
    with tempfile.TemporaryDirectory(prefix="ist-bench-dist-") as tmp:
        Path(tmp, "job.json").write_text(json.dumps(job))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "ist_bench.distributed.worker", str(Path(tmp, "job.json")), tmp]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)   # its own process group: torn down as one
        def stop(*_):   # killed ourselves (SIGTERM, Ctrl-C): take the ranks down with us
            raise SystemExit(143)
        try:
            previous = signal.signal(signal.SIGTERM, stop)
        except ValueError:   # not the main thread
            previous = None
        try:
            log, _ = proc.communicate(timeout=timeout_s)
            launcher = "ok" if proc.returncode == 0 else f"torchrun exited {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            launcher = f"timeout: killed after {timeout_s:.0f} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        ranks = []
        for r in range(nproc):
            path = Path(tmp, f"rank{r}.json")
            ranks.append(json.loads(path.read_text()) if path.is_file() else
                         {"rank": r, "status": "error", "error": f"rank {r} wrote no row ({launcher})"})
    return gather(case, ranks, nproc, shard, reshard_after_forward, launcher=launcher, log=log,
                  wall_s=time.time() - start, kind=kind)


def gather(case, ranks: list[dict], nproc: int, shard: str, reshard_after_forward: bool, **extra) -> dict:
    """One case row from its ranks' rows: status is the first failing rank's, memory the highest peak's."""
    from ist_bench.results import SCHEMA

    draws = {json.dumps(r["selection"].get("history") and [h["active"] for h in r["selection"]["history"]])
             for r in ranks if r.get("status") == "ok" and "selection" in r}
    if len(draws) > 1:   # every rank must train the same layers, or the collectives pair different tensors
        for r in ranks:
            r.update(status="error", error="the ranks drew different layers")
    failed = sorted((r for r in ranks if r.get("status") != "ok"), key=lambda r: r.get("failed_at", float("inf")))
    ok = [r for r in ranks if r.get("status") == "ok" and "memory" in r]
    kind = extra.get("kind", "memory")
    row = {"schema": SCHEMA, "kind": kind, "case": case.to_dict(), "backend": case.backend,
           "status": failed[0]["status"] if failed else "ok",
           "error": f"rank {failed[0]['rank']}: {failed[0].get('error')}" if failed else None,
           "dist": {"nproc": nproc, "shard": shard, "reshard_after_forward": reshard_after_forward,
                    "launcher": extra.get("launcher", "in-process")},
           "ranks": [_rank_summary(r) for r in ranks]}
    timed = [r for r in ranks if r.get("status") == "ok" and "time" in r]
    if timed:   # the slowest rank sets the pace of a synchronous step
        top = max(timed, key=lambda r: r["time"]["phases_ms"]["step"]["median"])
        row["time"] = top["time"]
        for k in ("n_layers", "params", "trainable_params", "settings", "selection", "provenance", "warmup"):
            if k in top:
                row[k] = top[k]
    if ok:
        top = max(ok, key=lambda r: r["memory"]["summary"].get("run_peak", 0))
        row["memory"] = top["memory"]
        for k in ("n_layers", "params", "trainable_params", "trainable_params_per_layer", "settings", "selection",
                  "provenance"):
            if k in top:
                row[k] = top[k]
    if failed and extra.get("log"):
        row["log_tail"] = extra["log"][-2000:]
    if "wall_s" in extra:
        row["wall_s"] = round(extra["wall_s"], 3)
    return row


def _rank_summary(r: dict) -> dict:
    """Per rank: status, the run's peak, and each category's steady figure (weights/grads/optimizer shards)."""
    s = r.get("memory", {}).get("summary", {})
    out = {"rank": r["rank"], "status": r.get("status"), "error": r.get("error")}
    at = (r.get("memory", {}).get("steps") or [{}])[-1].get("at_peak", {})
    if "fsdp_buffers" in at:
        out["fsdp_buffers_at_peak"] = at["fsdp_buffers"]
    for k in ("run_peak", "run_allocated_peak", "run_allocated_peak_est", "run_reserved_peak"):
        if k in s:
            out[k] = s[k]
    for cat in ("weights", "gradients", "optimizer", "activations", "fsdp_buffers"):
        if cat in s:
            out[cat] = s[cat].get("steady", s[cat].get("max"))
    if "time" in r:
        out["step_ms"] = r["time"]["phases_ms"]["step"]["median"]
        out["s_per_100_iter"] = r["time"].get("s_per_100_iter")
        comm = r["time"].get("device", {}).get("comm")
        if comm:   # cuda: this rank's collectives' busy ms per step, and what no compute overlaps
            out["comm_ms"], out["comm_exposed_ms"] = comm["comm"]["step"], comm["exposed"]["step"]
    if "history" in r.get("selection", {}):
        out["draws"] = [h["active"] for h in r["selection"]["history"]]
    return out
