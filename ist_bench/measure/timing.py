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


# -- the GPU's own view: busy time per phase from the profiler's device trace ------------------------
MARK_CYCLES = 1000   # a ~1 us spin kernel that marks a phase boundary on the device timeline
SEGMENTS = {("importance_start", "importance"): "importance", ("start", "forward"): "forward",
            ("forward", "backward"): "backward", ("backward", "optimizer"): "optimizer"}


class DeviceMarks:
    """A meter for profiled steps: at every phase mark it launches a tiny marker kernel on the
    current stream. Forward, backward and the optimizer all run on that stream, so the markers
    split the device timeline into phases in launch order, without synchronizing."""

    def __init__(self):
        self.marks: list[tuple[str, int]] = []

    def mark(self, phase: str, step: int) -> None:
        torch.cuda._sleep(MARK_CYCLES)
        self.marks.append((phase, step))


def is_marker(name: str) -> bool:
    return "spin_kernel" in name or "sleep" in name.lower()


def is_comm(name: str) -> bool:
    """A collective's kernel (NCCL's: ncclDevKernel_AllGather_..., ncclKernel_ReduceScatter_...)."""
    return "nccl" in name.lower()


def comm_split(activity: list[tuple[str, float, float]], marks: list[tuple[str, int]]) -> dict[str, dict[str, list[float]]]:
    """Per phase and step: `comm`, the busy ms of the collectives' kernels (their union: FSDP2's all-gather
    and reduce-scatter streams overlap); `compute`, the busy ms of everything else; `exposed`, what the
    collectives add to the device's busy time beyond compute (busy minus compute: communication that no
    compute overlaps)."""
    comm = busy_by_phase([a for a in activity if is_marker(a[0]) or is_comm(a[0])], marks)
    compute = busy_by_phase([a for a in activity if not is_comm(a[0])], marks)
    total = busy_by_phase(activity, marks)
    return {"comm": comm, "compute": compute,
            "exposed": {p: [t - c for t, c in zip(total[p], compute[p], strict=True)] for p in total}}


def device_activity(prof) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of every kernel, memcpy and memset in a torch.profiler run, by start."""
    out = []
    try:
        events = prof.profiler.kineto_results.events()
        for e in events:
            if e.device_type() == torch.autograd.DeviceType.CUDA:
                start = e.start_ns() / 1e3
                out.append((e.name(), start, start + e.duration_ns() / 1e3))
    except AttributeError:  # older torch: the FunctionEvent view
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                out.append((e.name, e.time_range.start, e.time_range.end))
    return sorted(out, key=lambda a: a[1])


def busy_segments(activity: list[tuple[str, float, float]], n_marks: int) -> list[float]:
    """Split device activity at the marker kernels (`n_marks` of them, in launch order) and return the
    busy milliseconds after each marker, up to the next: the union of the intervals of the kernels,
    copies and sets that started there (streams may overlap: counted once)."""
    import bisect

    starts = [a[1] for a in activity if is_marker(a[0])]
    if len(starts) != n_marks:
        raise RuntimeError(f"{len(starts)} marker kernels on the device timeline for {n_marks} marks")
    segments: list[list[tuple[float, float]]] = [[] for _ in starts]
    for name, s, e in activity:
        if not is_marker(name):
            i = bisect.bisect_right(starts, s) - 1
            if i >= 0:
                segments[i].append((s, e))
    return [union_ms(seg) for seg in segments]


def busy_by_phase(activity: list[tuple[str, float, float]], marks: list[tuple[str, int]]) -> dict[str, list[float]]:
    """Per phase, the busy milliseconds of each step, from a run whose phase marks (`marks`, in order)
    each launched a marker kernel (DeviceMarks)."""
    busy = busy_segments(activity, len(marks))
    out: dict[str, list[float]] = {}
    for i in range(len(marks) - 1):
        (a, step_a), (b, step_b) = marks[i], marks[i + 1]
        phase = SEGMENTS.get((a, b))
        if phase and step_a == step_b:
            out.setdefault(phase, []).append(busy[i])
    return out


def union_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start_us, end_us) intervals, in ms."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


def count_flops(run_one_step) -> int:
    """Model FLOPs of one step, counted from the ops' shapes (torch.utils.flop_counter; works on
    any device). SDPA's fused kernels count with grouped-query attention too (`sdpa_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=sdpa_flops()) as counter:
        run_one_step()
    return int(counter.get_total_flops())


def sdpa_flops() -> dict:
    """FLOP formulas for SDPA's flash, memory-efficient and cuDNN kernels (forward and backward) that take
    grouped-query attention: the kernel broadcasts each key/value head over its group of query heads, so
    the work is that of every query head attending. torch's own formulas assert equal head counts before
    2.13 ("sdpa_flop_count: query/key/value shapes are incompatible", seen on the H100 with torch 2.11 on
    Llama-3 + SDPA); these expand the key/value heads first and then ask torch's."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def heads(q, kv):   # (b, h_kv, s, d) -> (b, h_q, s, d)
        return (kv[0], q[1], *kv[2:]) if len(q) == 4 and len(kv) == 4 and kv[1] != q[1] else kv

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(q, heads(q, k), heads(q, v))

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, heads(q, k), heads(q, v))
    kernels = ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_cudnn_attention")
    out = {}
    for name in kernels:
        for suffix, formula in (("", forward), ("_backward", backward)):
            op = getattr(aten, name + suffix, None)
            if op is not None:
                out[op] = formula
    return out
