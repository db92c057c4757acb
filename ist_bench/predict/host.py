"""The host's side of a step: the CPU dispatches every op (views included) and launches the kernels; the GPU
runs them in order, each starting when both it and its launch are ready. Overlapping the two predicts the
step's wall time; where the host takes longer than the kernels, the GPU waits and the step is host-bound.

Per-op host costs come from the card's calibration (`host`: microseconds per dispatched op, by phase, and the
launch latency), measured by scripts/microbench.py on the GPU machine's own CPU: a different host CPU is a
different number, which the row says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ist_bench.predict.kernels import group
from ist_bench.predict.trace import KERNEL_KINDS, Op


@dataclass
class Timeline:
    """One step as the timer sees it: CUDA events at its marks (GPU time, µs), busy µs per phase."""
    events: dict[str, float] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    host: dict[str, float] = field(default_factory=dict)     # host µs per phase
    groups: dict[tuple, float] = field(default_factory=dict)  # busy µs per (phase, kernel group)

    def span(self, a: str, b: str) -> float:
        return self.events[b] - self.events[a] if a in self.events and b in self.events else 0.0


def simulate(ops: list[Op], kernel_us: Callable[[Op], float], host: dict, repeat: int = 2) -> Timeline:
    """Run `ops` (one step, marks included) `repeat` times back to back, as timed steps run (no sync between
    them: the host may run ahead into the next step); the last repetition's timeline."""
    h = g = 0.0
    launch = host.get("launch_us", 0.0)
    per_op = host["per_op_us"]
    mark_us = host.get("mark_us", 0.0)
    t = Timeline()
    for _ in range(repeat):
        t = Timeline()
        for op in ops:
            if op.kind == "mark":
                t.events[op.name] = max(g, h + launch)   # the event runs when the GPU reaches it
                h += mark_us
                continue
            cost = per_op.get(op.phase, per_op["other"])
            h += cost
            t.host[op.phase] = t.host.get(op.phase, 0.0) + cost
            if op.kind == "sync":
                h = g = max(h, g)
            elif op.kind in KERNEL_KINDS:
                d = kernel_us(op)
                g = max(g, h + launch) + d
                t.busy[op.phase] = t.busy.get(op.phase, 0.0) + d
                key = (op.phase, group(op))
                t.groups[key] = t.groups.get(key, 0.0) + d
    return t
