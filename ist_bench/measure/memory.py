"""Files one step's bytes under the categories of docs/measurement.md.

End-of-phase figures (what each phase leaves behind):
- weights: all parameters and buffers (unique storages), once the model is built.
- activations: live bytes at the end of forward minus live bytes before it.
- gradients: bytes of every `.grad` after backward.
- optimizer: bytes of every tensor in `optimizer.state` after `step()`.
- method_state: tensors a method keeps outside the optimizer (AdaLoRA's importance EMAs).
- peak: the largest live total during the step (tensors), `peak_blocks` in allocator blocks.

At the peak (`at_peak`): the storages live at the moment of the step's peak, each filed under
the category it belongs to (a weight, a gradient, optimizer or method state, an activation
saved by this step's forward, else a temporary; on sim a kernel's own scratch at that moment
counts as temporary too), plus the allocator's rounding of their blocks
and the cuBLAS workspaces: modelled on sim; on cuda, `max_memory_allocated` minus the tracked
blocks (workspaces and anything the tracker cannot see). These sum to the peak exactly: to sim's
estimated allocated peak, to cuda's allocated peak, to `peak` on the CPU. `top_activations`
names the modules (one entry per kind of block child, summed over layers) whose forward
created the activations live at the peak.

An importance phase (IST's held-out forwards, before the step) has its own peak: `importance_*`.
The meter only sees tensors, module names and, on cuda, the allocator; it never knows what
model or method it measures.
"""

from __future__ import annotations

import bisect
import re
import statistics
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ist_bench.measure.tracker import MemoryTracker, storage_bytes

CATEGORIES = ("weights", "activations", "gradients", "optimizer", "method_state")
AT_PEAK = CATEGORIES + ("temporary", "rounding", "workspace")
TOP_MODULES = 5


_RUNNING = {"importance_start": "importance forwards", "importance": "before the forward", "start": "forward",
            "forward": "backward", "backward": "optimizer step", "optimizer": "after the optimizer step",
            "end": "between steps"}


class MemoryMeter:
    def __init__(self, tracker: MemoryTracker, model: nn.Module, optimizer: torch.optim.Optimizer,
                 method_state: Callable[[], list[torch.Tensor]] = list, allocator: bool = False,
                 estimate: bool = False, extra_weights: list[torch.Tensor] = (),
                 created: list[torch.Tensor] | None = None, blocks: list[nn.Module] = ()):
        self.tracker, self.optimizer, self.method_state = tracker, optimizer, method_state
        self.params = list(model.parameters())
        # extra_weights: tensors a module holds besides parameters and buffers (a quantized layer's absmax)
        weights = self.params + list(model.buffers()) + list(extra_weights)
        self.paged = bool(getattr(optimizer, "is_paged", False))   # bitsandbytes' paged optimizers
        self.allocator = allocator  # read torch.cuda's allocator statistics too
        self.estimate = estimate  # sim: report the tracker's modelled allocated peak
        self.weights = storage_bytes(weights)
        # in the order the device allocated them (`created`, if known): sim's allocator replay packs them as the GPU did
        tracker.register([*(created or ()), *weights])
        self._weight_serials = {tracker.serial(t) for t in weights}
        self._names = {m: _short(n) for n, m in model.named_modules()}
        # the transformer blocks, in order: a tensor born after block i's forward began (and before block
        # i+1's) is block i's, whichever module's code made it (`_by_block`)
        self._blocks = {m: i for i, m in enumerate(blocks)}
        self._block_clock: dict[int, int] = {}
        self._in_forward = False
        self._stack: list[str] = []
        self._hooks: list = []
        self.steps: list[dict] = []
        self._row: dict = {}
        self._pending: dict = {}
        self._serials: dict[str, set[int]] = {}
        self.marks: list[tuple[str, int, int]] = []   # (phase, step, tracker clock) of every mark: a timeline's phases
        self.filed: dict[str, set[int]] = {c: set() for c in CATEGORIES[1:]}   # every step's storages by category

    # Module hooks tag each new storage with the module whose forward made it.
    def __enter__(self) -> MemoryMeter:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def enter(module, args):
            if self._in_forward and module in self._blocks:
                self._block_clock.setdefault(self._blocks[module], self.tracker.clock)
            self._stack.append(self._names.get(module, "?"))
            self.tracker.tag = self._stack[-1]

        def leave(module, args, out):
            if self._stack:
                self._stack.pop()
            self.tracker.tag = self._stack[-1] if self._stack else None
        self._hooks = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self.tracker.tag = None

    def mark(self, phase: str, step: int) -> None:
        t = self.tracker
        t.where = f"step {step}, {_RUNNING.get(phase, phase)}"   # for an OOM message: what runs from here
        self.marks.append((phase, step, t.clock))
        if phase in ("start", "importance_start"):
            self._stack.clear()
            t.register(self._state_tensors())
            t.reset_peak()
            self._allocator_reset()
            if phase == "start":
                self._row = {"step": step, "weights": self.weights, "live_before": t.live, **self._pending}
                self._pending, self._start_clock = {}, t.clock
                self._block_clock, self._in_forward = {}, True
                self._serials = {"optimizer": self._serials_of(self._optimizer_tensors()),
                                 "method_state": self._serials_of(self.method_state())}
        elif phase == "importance":
            self._pending = {"importance_peak": t.peak, "importance_peak_blocks": t.peak_blocks,
                             **self._allocator_peaks("importance_")}
            if self.estimate:
                self._pending["importance_allocated_peak_est"] = t.peak_estimate
        elif phase == "forward":
            self._in_forward = False
            saved = {s: e for s, e in t.log.items() if e.born > self._start_clock and e.died is None}
            gathered = sum(saved.pop(s).nbytes for s in list(saved) if s in t.fsdp)   # FSDP2's, not autograd's
            self._row["activations"] = t.live - self._row["live_before"] - gathered
            self._serials["activations"] = set(saved)
            self._row["activations_by_layer"] = self._by_block(saved.values(), "nbytes")
            if self.allocator:
                torch.cuda.synchronize()
                self._row["activations_allocated"] = torch.cuda.memory_allocated() - self._alloc_before
        elif phase == "backward":
            grads = [p.grad for p in self.params if p.grad is not None]
            self._row["gradients"] = storage_bytes(grads)
            self._serials["gradients"] = self._serials_of(grads)
        elif phase == "optimizer":
            opt, state = self._optimizer_tensors(), self.method_state()
            self._row["optimizer"] = storage_bytes(opt)
            if self.paged:   # in CUDA managed memory, outside the caching allocator (and its peak)
                self._row["optimizer_paged"] = storage_bytes(self._optimizer_tensors(paged=True))
            self._row["method_state"] = storage_bytes(state)
            self._serials["optimizer"] |= self._serials_of(opt)
            self._serials["method_state"] |= self._serials_of(state)
        elif phase == "end":
            for cat, serials in self._serials.items():
                self.filed[cat] |= serials
            r = self._row
            r["peak"], r["peak_blocks"] = t.peak, t.peak_blocks
            r["at_peak"], r["top_activations"] = self._at_peak()
            r.update(self._allocator_peaks(""))
            if self.allocator:   # what the allocator handed out beyond the tracked blocks: workspaces, untracked
                r["at_peak"]["workspace"] = max(0, r["allocated_peak"] - t.peak_blocks)
            if self.estimate:
                r["allocated_peak_est"] = t.peak_estimate
            self.steps.append(r)

    def category(self, serial: int) -> str:
        """The category a storage of any measured step was filed under (`temporary` if none)."""
        if serial in self._weight_serials:
            return "weights"
        return next((c for c in ("gradients", "optimizer", "method_state", "activations")
                     if serial in self.filed[c] or serial in self._serials.get(c, ())), "temporary")

    def _at_peak(self) -> tuple[dict, dict]:
        t = self.tracker
        out = dict.fromkeys(AT_PEAK, 0)
        top: Counter = Counter()
        acts = []
        for serial, e in t.alive_at(t.peak_moment).items():
            cat = "weights" if serial in self._weight_serials else next(
                (c for c in ("gradients", "optimizer", "method_state", "activations")
                 if serial in self._serials.get(c, ())), "fsdp_buffers" if serial in t.fsdp else "temporary")
            out[cat] = out.get(cat, 0) + e.nbytes   # fsdp_buffers: only in a sharded run
            out["rounding"] += e.blocks - e.nbytes
            if cat == "activations":
                top[_group(e.tag)] += e.nbytes
                acts.append(e)
        out["temporary"] += t.peak_scratch   # kernels' own scratch at that moment (sim's model of it)
        out["workspace"] = t.outside if self.estimate else 0
        # per layer at the tensor peak (bytes: what typical's tensor peak follows) and at the block peak
        at_tensor_peak = [e for s, e in t.alive_at(t.tensor_peak_moment).items() if s in self._serials.get("activations", ())]
        self._row["at_peak_activations_by_layer"] = {"bytes": self._by_block(at_tensor_peak, "nbytes"),
                                                     "blocks": self._by_block(acts, "blocks")}
        return out, dict(top.most_common(TOP_MODULES))

    def _allocator_reset(self) -> None:
        if self.allocator:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._alloc_before = torch.cuda.memory_allocated()
            self._retries_before = torch.cuda.memory_stats().get("num_alloc_retries", 0)

    def _allocator_peaks(self, prefix: str) -> dict:
        if not self.allocator:
            return {}
        torch.cuda.synchronize()
        return {f"{prefix}allocated_peak": torch.cuda.max_memory_allocated(),
                f"{prefix}reserved_peak": torch.cuda.max_memory_reserved(),
                f"{prefix}alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0) - self._retries_before}

    def _by_block(self, entries, field: str) -> dict[str, int]:
        """Bytes per block index, by when each tensor was born: after block i's forward began and before
        block i+1's, it is block i's (a hidden state the model's own loop saves between blocks included;
        what is born before block 0, the embeddings', is no block's). Without the blocks' clocks (a meter
        told no blocks), by the creating module's name (`model.layers.3.mlp` -> 3)."""
        if not self._block_clock:
            return _by_layer(entries, field)
        order = sorted((c, i) for i, c in self._block_clock.items())
        clocks = [c for c, _ in order]
        out: Counter = Counter()
        for e in entries:
            at = bisect.bisect_right(clocks, e.born) - 1
            if at >= 0:
                out[str(order[at][1])] += getattr(e, field)
        return dict(out)

    def _serials_of(self, tensors) -> set[int]:
        return {s for s in (self.tracker.serial(x) for x in tensors) if s is not None}

    def _optimizer_tensors(self, paged: bool = False) -> list[torch.Tensor]:
        """The optimizer's state tensors: those the allocator holds, or (`paged`) bitsandbytes' paged ones."""
        return [v for state in self.optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and getattr(v, "is_paged", False) == paged]

    def _state_tensors(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.params if p.grad is not None]
        return grads + self._optimizer_tensors() + list(self.method_state())


def _short(name: str) -> str:
    """A module path without peft's wrapper prefix."""
    return re.sub(r"^base_model\.model\.?", "", name)


def _group(tag: str | None) -> str:
    """`model.layers.3.mlp.up_proj.lora_A.default` -> `model.layers.*.mlp` (the block's child, over layers)."""
    if tag is None:
        return "(outside any module)"
    if tag == "":
        return "(model: logits and loss)"
    m = re.match(r"(.*?)\.\d+(?:\.([^.]+))?", tag)
    return f"{m.group(1)}.*" + (f".{m.group(2)}" if m.group(2) else "") if m else tag


def _by_layer(entries, field: str) -> dict[str, int]:
    """Bytes per block index (the first number in the creating module's name: `model.layers.3.mlp` -> 3)."""
    out: Counter = Counter()
    for e in entries:
        m = re.search(r"\.(\d+)(?:\.|$)", e.tag or "")
        if m:
            out[m.group(1)] += getattr(e, field)
    return dict(out)


# How a figure of the step changes when blocks below the lowest trained one save nothing:
# by the activations those blocks saved (end of forward) or had live at the steady step's peak.
_LAYER_SHARE = {"activations": ("activations_by_layer", None), "peak": ("at_peak_activations_by_layer", "bytes")}
# Allocator figures: the typical tensor peak plus what the allocator holds beyond the tensors at the steady
# step's peak (block rounding, workspaces, a kernel's scratch): the draws share that overhead but where a
# kernel's scratch sets the steady peak and a draw's lowest block is the top one (its peak is then the end
# of forward), so it is within that overhead of the mean over the draws, not exact.
_OVER_PEAK = ("peak_blocks", "allocated_peak_est", "allocated_peak")


def typical(steady: dict, anchors: list[dict], weights, base: dict | None = None) -> dict[str, int]:
    """The expected figures of a step over the policy's draws (docs/measurement.md, "typical").

    `weights[m]` is P(lowest trained block = m); a draw changes a step's figures through its lowest
    block m (tests/test_steady.py checks it draw by draw, knob by knob). f(0) is the figure of `base`,
    the layer-0 candidate (layer 0 and the top layers). For m >= 1, f follows what the blocks below m
    held, S(m) = sum of the per-block bytes c_j, j < m (at the end of forward, or live at the steady
    step's peak; each tensor the block's by when it was born, measure.memory.MemoryMeter._by_block):
    f(m) = f(a) + s (S(a) - S(m)), through the measured `anchors` (steps whose lowest block a is not 0).
    With two anchors the slope s is what they measured (1 when a draw sheds exactly what the blocks below
    it saved; -1 with gradient checkpointing, where every block saves its input whatever the draw and a
    higher draw's peak is higher); with one, s = 1; where the blocks below hold nothing at that figure
    (S(a) equal at both anchors), f is linear in m through them. So with identical blocks f is exact at
    every m, and blocks of different sizes keep their own weight. Figures a draw does not change (weights, gradients,
    optimizer and method state, importance) are the steady's; `reserved_peak` (allocator caching) is not
    modelled and has none. weights None or no anchor: every step is like the steady one."""
    base = base or steady
    points = {min(a["active_layers"]): a for a in anchors if a.get("active_layers") and min(a["active_layers"]) > 0}
    out = {}
    for k, v in steady.items():
        if not isinstance(v, int) or isinstance(v, bool) or k in ("step", "reserved_peak"):
            continue
        if weights is None or not points or k not in _LAYER_SHARE:
            out[k] = v
            continue
        share, field = _LAYER_SHARE[k]
        per = base.get(share, {})
        per = per.get(field, {}) if field else per
        cost = np.array([per.get(str(i), 0) for i in range(len(weights))], dtype=float)
        S = np.concatenate([[0.0], np.cumsum(cost)])          # S[m]: what blocks 0 .. m-1 hold
        lo, hi = min(points), max(points)
        if hi > lo and S[hi] == S[lo]:     # the blocks below hold nothing at this figure: f is linear in m
            S = np.arange(len(weights) + 1, dtype=float)
        slope = (points[lo][k] - points[hi][k]) / (S[hi] - S[lo]) if hi > lo else 1.0
        f = [base.get(k, v) if m == 0 else points[hi][k] + slope * (S[hi] - S[m]) for m in range(len(weights))]
        out[k] = int(round(float(np.dot(weights, f))))
    if weights is not None and points and "peak" in out:
        for k in _OVER_PEAK:
            if isinstance(steady.get(k), int):
                out[k] = out["peak"] + steady[k] - steady["peak"]
    return out


def summarize(steps: list[dict], weights=None) -> dict:
    """first / typical / steady / min / median / max / last of each per-step figure, plus the run's
    peaks. `steady` is the steady-state step (`phase: steady`); `typical` the expected step over
    the policy's draws (`typical`, from the steady step and `weights`)."""
    if not steps:
        return {}
    keys = [k for k in steps[0] if k not in ("step",) and isinstance(steps[0][k], int) and not isinstance(steps[0][k], bool)]
    keys += [k for k in steps[-1] if k.startswith("importance_") and k not in keys]
    out = {}
    steady = next((s for s in steps if s.get("phase") == "steady"), None)
    anchors = [s for s in steps if s.get("typical_anchor")]
    base = next((s for s in steps if s.get("typical_base")), None)
    typ = typical(steady, anchors, weights, base) if steady is not None else {}
    for k in keys:
        vals = [s[k] for s in steps if k in s]
        out[k] = {"first": vals[0], "min": min(vals), "median": statistics.median_low(vals), "max": max(vals),
                  "last": vals[-1]}
        if steady is not None and k in steady:
            out[k]["steady"] = steady[k]
        if k in typ:
            out[k]["typical"] = typ[k]
    for k in ("peak", "peak_blocks", "allocated_peak", "allocated_peak_est", "reserved_peak"):
        vals = [s[k] for s in steps if k in s] + [s[f"importance_{k}"] for s in steps if f"importance_{k}" in s]
        if vals:
            out[f"run_{k}"] = max(vals)
    return out
