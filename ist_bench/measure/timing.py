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


class Timer:
    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._marks: list[dict] = []

    def mark(self, phase: str, step: int) -> None:
        if phase == "start":
            self._marks.append({"cpu_start": time.process_time()})
        elif phase == "end":
            self._marks[-1]["cpu_end"] = time.process_time()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks[-1][phase] = event
        else:
            self._marks[-1][phase] = time.perf_counter()

    def phase_ms(self) -> dict[str, list[float]]:
        """Milliseconds of each phase at each step (synchronizes once, at the end)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
        for m in self._marks:
            for name, a, b in PHASES:
                out[name].append(m[a].elapsed_time(m[b]) if self.cuda else (m[b] - m[a]) * 1e3)
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
    """median, p10, p90, min, max of a list of times."""
    if not values:
        return {}
    if len(values) == 1:
        q = [values[0]] * 9
    else:
        q = statistics.quantiles(values, n=10, method="inclusive")
    return {"median": statistics.median(values), "p10": q[0], "p90": q[-1], "min": min(values), "max": max(values),
            "n": len(values)}
