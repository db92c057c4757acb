"""Files one step's bytes under the categories of MEASUREMENT.md.

- weights: all parameters and buffers (unique storages), once the model is built.
- activations: live bytes at the end of forward minus live bytes before it.
- gradients: bytes of every `.grad` after backward.
- optimizer: bytes of every tensor in `optimizer.state` after `step()`.
- method_state: tensors a method keeps outside the optimizer (AdaLoRA's importance EMAs).
- temporary: peak minus the sum above. It can be negative: activations are freed during
  backward while gradients and optimizer state appear, so the categories need not coexist.
- peak: the largest live total during the step.

The meter only sees tensors and, on cuda, the allocator; it never knows what model it measures.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from ist_bench.measure.tracker import MemoryTracker, storage_bytes

CATEGORIES = ("weights", "activations", "gradients", "optimizer", "method_state", "temporary", "peak")


class MemoryMeter:
    def __init__(self, tracker: MemoryTracker, params: list[torch.Tensor], buffers: list[torch.Tensor],
                 optimizer: torch.optim.Optimizer, method_state: Callable[[], list[torch.Tensor]] = list,
                 allocator: bool = False, estimate: bool = False):
        self.tracker, self.params, self.optimizer, self.method_state = tracker, params, optimizer, method_state
        self.allocator = allocator  # read torch.cuda's allocator statistics too
        self.estimate = estimate  # sim: report the tracker's modelled allocated peak
        self.weights = storage_bytes(params + buffers)
        tracker.register(params + buffers)
        self.steps: list[dict] = []
        self._row: dict = {}

    def mark(self, phase: str, step: int) -> None:
        t = self.tracker
        if phase == "start":
            t.register(self._state_tensors())
            t.reset_peak()
            self._row = {"step": step, "weights": self.weights, "live_before": t.live}
            if self.allocator:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._alloc_before = torch.cuda.memory_allocated()
                self._retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        elif phase == "forward":
            self._row["activations"] = t.live - self._row["live_before"]
            if self.allocator:
                torch.cuda.synchronize()
                self._row["activations_allocated"] = torch.cuda.memory_allocated() - self._alloc_before
        elif phase == "backward":
            self._row["gradients"] = storage_bytes(p.grad for p in self.params if p.grad is not None)
        elif phase == "optimizer":
            self._row["optimizer"] = storage_bytes(self._optimizer_tensors())
            self._row["method_state"] = storage_bytes(self.method_state())
        elif phase == "end":
            r = self._row
            r["peak"] = t.peak
            r["temporary"] = t.peak - sum(r[c] for c in CATEGORIES[:-2])
            r["peak_blocks"] = t.peak_blocks
            if self.allocator:
                torch.cuda.synchronize()
                stats = torch.cuda.memory_stats()
                r["allocated_peak"] = torch.cuda.max_memory_allocated()
                r["reserved_peak"] = torch.cuda.max_memory_reserved()
                r["alloc_retries"] = stats.get("num_alloc_retries", 0) - self._retries_before
            elif self.estimate:
                r["allocated_peak_est"] = t.peak_estimate
            self.steps.append(r)

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        return [v for state in self.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]

    def _state_tensors(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.params if p.grad is not None]
        return grads + self._optimizer_tensors() + list(self.method_state())


def summarize(steps: list[dict]) -> dict:
    """first / min / median / max of each per-step field over the steps, plus the run's peak."""
    if not steps:
        return {}
    keys = [k for k in steps[0] if k not in ("step", "active_layers") and isinstance(steps[0][k], int)]
    out = {}
    for k in keys:
        vals = [s[k] for s in steps if k in s]
        out[k] = {"first": vals[0], "min": min(vals), "median": statistics.median_low(vals), "max": max(vals),
                  "last": vals[-1]}
    out["run_peak"] = out["peak"]["max"]
    for k in ("peak_blocks", "allocated_peak", "allocated_peak_est", "reserved_peak"):
        if k in out:
            out[f"run_{k}"] = out[k]["max"]
    return out
