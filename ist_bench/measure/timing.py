"""Per-phase step times: CUDA events on the GPU (read after one synchronize), host clock on CPU.

The timer only records marks; nothing here synchronizes inside the timed loop. Never run it
with the memory tracker on (the tracker's Python hook per op would dominate the times).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

PHASES = (("forward", "start", "forward"), ("backward", "forward", "backward"),
          ("optimizer", "backward", "optimizer"), ("step", "start", "end"))
ROUND = ("importance", "importance_start", "importance")   # only on steps with an importance round


class Timer:
    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._marks: list[dict] = []
        self._pending: dict = {}

    def mark(self, phase: str, step: int) -> None:
        now = self._now()
        if phase.startswith("importance"):
            self._pending[phase] = now
            return
        if phase == "start":
            self._marks.append({"cpu_start": time.process_time(), **self._pending})
            self._pending = {}
        elif phase == "end":
            self._marks[-1]["cpu_end"] = time.process_time()
        self._marks[-1][phase] = now

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def phase_ms(self) -> dict[str, list[float]]:
        """Milliseconds of each phase at each step (synchronizes once, at the end); `importance`
        holds one entry per importance round."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, list[float]] = {name: [] for name, _, _ in PHASES + (ROUND,)}
        for m in self._marks:
            for name, a, b in PHASES + (ROUND,):
                if a in m:
                    out[name].append(self._ms(m[a], m[b]))
        out["host_cpu"] = [(m["cpu_end"] - m["cpu_start"]) * 1e3 for m in self._marks]
        return out


def host_steal_s() -> float | None:
    """CPU time the hypervisor gave to others (all CPUs, /proc/stat 'steal'), in seconds."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def spread(values: list[float]) -> dict:
    """median, mean, p10, p90, min, max of a list of times."""
    if not values:
        return {}
    if len(values) == 1:
        q = [values[0]] * 9
    else:
        q = statistics.quantiles(values, n=10, method="inclusive")
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "p10": q[0], "p90": q[-1],
            "min": min(values), "max": max(values), "n": len(values)}
