"""A memory timeline of one case: live bytes by category over its steps, phases and the peak marked.

The same on both backends, from the tracker's history (every storage's birth and death on one
clock, filed under the meter's categories, in allocator blocks) and, on sim, the kernel scratch
it models. On cuda, `cuda_snapshot()` also gives the allocator's own record
(`torch.cuda.memory._record_memory_history`), and a sim timeline converts to that format
(`to_snapshot`), so `torch.cuda._memory_viz` and the memory_viz page open both alike.

    tl = Timeline.of(tracker, meter, backend="sim", label="llama-7b lora+ist")
    tl.save("out.png")       # also .html (memory_viz's trace view), .pickle (a snapshot), .json
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

ORDER = ("weights", "optimizer", "method_state", "gradients", "activations", "temporary", "scratch")
FORMATS = (".png", ".html", ".pickle", ".json")


@dataclass
class Timeline:
    label: str
    backend: str
    clock: list[int]                    # event times (the tracker's clock)
    live: dict[str, list[int]]          # category -> live blocks after each event
    phases: list[tuple[str, int, int]]  # (phase, step, clock)
    peak: int                           # the allocated peak (cuda) or the estimate (sim), bytes
    peak_clock: int | None = None
    workspace: int = 0                  # sim: the modelled cuBLAS workspaces (held the whole run)
    events: list[tuple[int, int, int, str, str]] = field(default_factory=list)  # (clock, serial, +-blocks, cat, tag)

    @classmethod
    def of(cls, tracker, meter, backend: str, label: str, peak: int) -> Timeline:
        events = []
        for serial, e in tracker.log.items():
            cat = meter.category(serial) if meter is not None else "temporary"
            events.append((e.born, serial, e.blocks, cat, e.tag or ""))
            if e.died is not None:
                events.append((e.died, serial, -e.blocks, cat, e.tag or ""))
        for clock, blocks in tracker.scratch_log:   # a kernel's scratch: up and down at one op
            events += [(clock, -1, blocks, "scratch", ""), (clock, -1, -blocks, "scratch", "")]
        events.sort(key=lambda e: (e[0], e[2] < 0))
        level = dict.fromkeys(ORDER, 0)
        clock, live = [], {c: [] for c in ORDER}
        for t, _, blocks, cat, _ in events:
            level[cat] += blocks
            clock.append(t)
            for c in ORDER:
                live[c].append(level[c])
        totals = [sum(live[c][i] for c in ORDER) for i in range(len(clock))]
        peak_clock = clock[max(range(len(totals)), key=totals.__getitem__)] if totals else None
        phases = list(meter.marks) if meter is not None else []
        workspace = tracker.outside if backend == "sim" else 0
        return cls(label, backend, clock, live, phases, peak, peak_clock, workspace, events)

    def to_snapshot(self) -> dict:
        """The timeline in `torch.cuda.memory._snapshot()`'s format (device_traces of alloc/free events;
        each event's frame names its category and module), for torch.cuda._memory_viz."""
        trace = []
        for t, serial, blocks, cat, tag in self.events:
            frames = [{"filename": tag or "(step)", "line": 0, "name": cat}]
            addr = serial * 4096 if serial >= 0 else -t
            if blocks >= 0:
                trace.append({"action": "alloc", "addr": addr, "size": blocks, "stream": 0, "time_us": t,
                              "frames": frames})
            else:
                for action in ("free_requested", "free_completed"):
                    trace.append({"action": action, "addr": addr, "size": -blocks, "stream": 0, "time_us": t,
                                  "frames": frames})
        return {"segments": [], "device_traces": [trace], "allocator_settings": {}}

    def save(self, path: str | Path) -> Path:
        from ist_bench.safeio import write_atomic

        path = Path(path)
        if path.suffix == ".json":
            data = asdict(self)
            data.pop("events")
            write_atomic(path, json.dumps(data))
        elif path.suffix == ".pickle":
            write_atomic(path, pickle.dumps(self.to_snapshot()))
        elif path.suffix == ".html":
            from torch.cuda._memory_viz import trace_plot
            write_atomic(path, trace_plot(self.to_snapshot()))
        else:
            from ist_bench.report.timeline import plot_timelines
            plot_timelines([self], path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Timeline:
        data = json.loads(Path(path).read_text())
        data["phases"] = [tuple(p) for p in data["phases"]]
        return cls(**data)
