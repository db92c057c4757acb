"""A time case: warm-up, timed steps (CUDA events, wall), then separately profiled steps for the
GPU's own busy time per phase, one FLOP-counted step, and optionally the harness's overhead
against a bare PyTorch loop. No memory tracker runs; the timed steps are never profiled.

Steps are numbered on: warm-up [0, w), timed [w, w+n), profiled, the FLOP step, overhead blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable

import torch

from ist_bench import cards
from ist_bench.data import model_inputs, needs_mask
from ist_bench.errors import UsageError
from ist_bench.measure import env
from ist_bench.measure.cuda import ClockPoller, gpu_guard
from ist_bench.measure.timing import (
    DeviceMarks,
    Timer,
    busy_by_phase,
    busy_segments,
    comm_split,
    count_flops,
    device_activity,
    host_steal_s,
    is_comm,
    spread,
)
from ist_bench.methods import after_optimizer_step
from ist_bench.results import SCHEMA
from ist_bench.runner.build import build, record_failure
from ist_bench.runner.case import Case
from ist_bench.runner.step import run_steps

OVERHEAD_BLOCK = 10   # steps per block when the harness is compared with a bare loop


class _Progress:
    """A meter that reports finished steps to a callback (stage, done, total)."""

    def __init__(self, callback, stage: str, total: int):
        self.callback, self.stage, self.total, self.done = callback, stage, total, 0

    def mark(self, phase: str, step: int) -> None:
        if phase == "end":
            self.done += 1
            self.callback(self.stage, self.done, self.total)


def measure_time(case: Case, warmup: int = 10, *, profile_steps: int | None = None, overhead_blocks: int = 0,
                 busy_gpu: str = "refuse", progress: Callable[[str, int, int], None] | None = None,
                 wrap=None) -> dict:
    """The time row of `case`: `case.steps` timed steps after `warmup` uncounted ones.

    On cuda also: device busy time per phase over `profile_steps` profiled steps (default: as many
    as timed), model FLOPs per step with TFLOP/s and MFU against the card's dense bf16 peak, and,
    with `overhead_blocks` > 0, the harness's overhead against a bare loop in interleaved blocks."""
    if case.backend == "sim":
        raise UsageError("timing needs real compute: use --backend cuda (or cpu for small models)")
    if case.steps < 1:
        raise UsageError(f"timing needs --steps >= 1, got {case.steps}")
    cuda = case.backend == "cuda"
    profile_steps = (case.steps if profile_steps is None else profile_steps) if cuda else 0
    extra = profile_steps + 1 + 2 * overhead_blocks * OVERHEAD_BLOCK + (2 * OVERHEAD_BLOCK if overhead_blocks else 0)
    # AdaLoRA's budget schedule must span every step this run takes.
    case = dataclasses.replace(case, method=dataclasses.replace(case.method,
                                                                total_steps=warmup + case.steps + extra))
    start = time.time()
    row = {"schema": SCHEMA, "kind": "time", "case": case.to_dict(), "backend": case.backend, "status": "ok",
           "error": None, "warmup": warmup}
    try:
        if cuda:
            row["gpu_guard"] = gpu_guard(busy_gpu)
        b = build(case, wrap)
        row.update(b.info)

        def run(steps, meters=(), force=None, data_step=None):
            run_steps(b.model, b.optimizer, b.batches, b.device, b.policy, steps, meters=meters, force=force,
                      after_optimizer=lambda s: after_optimizer_step(b.model, case.method, s), data_step=data_step)
        tell = (lambda stage, n: [_Progress(progress, stage, n)]) if progress else (lambda stage, n: [])
        run(range(warmup), tell("warm-up", warmup))
        timer = Timer(cuda)
        clocks = ClockPoller() if cuda else contextlib.nullcontext()
        _sync(cuda)
        gc.collect()
        gc.disable()  # a full collection of a process holding transformers takes tens of ms
        try:
            with clocks:
                steal0 = host_steal_s()
                t0 = time.perf_counter()
                run(range(warmup, warmup + case.steps), meters=[timer, *tell("timed", case.steps)])
                _sync(cuda)
                wall = time.perf_counter() - t0
                steal = host_steal_s()
        finally:
            gc.enable()
        phases = timer.phase_ms()
        host_cpu = phases.pop("host_cpu")
        rounds = phases.pop("importance")
        tokens = sum(b.batches.ids(s).shape[1] for s in range(warmup, warmup + case.steps))
        step = spread(phases["step"])
        t = row["time"] = {
            "phases_ms": {k: spread(v) for k, v in phases.items()},
            "steps_ms": phases["step"],
            "importance_ms": rounds,          # one entry per importance round (IST)
            "importance_ms_per_iter": sum(rounds) / case.steps,
            "host_cpu_ms": host_cpu,          # this process's CPU time per step (all threads)
            "host_steal_s": None if steal is None or steal0 is None else steal - steal0,
            "tokens_per_s": tokens / (sum(phases["step"]) / 1e3),
            "s_per_100_iter": wall / case.steps * 100,   # every overhead of the loop included
            "p90_over_p10": step["p90"] / step["p10"],
        }
        if rounds:
            t["phases_ms"]["importance"] = spread(rounds)
        if cuda:
            t["gpu_clocks"] = clocks.result()
        next_step = warmup + case.steps
        device = t["device"] = {}
        if profile_steps:
            # the profiled steps replay the timed ones: the same draws, importance rounds and batches, so
            # their busy time is the timed steps' (a LISA run once profiled other draws than it timed)
            plan = replay_plan(b.policy, case.steps, next_step, profile_steps)
            device.update(_device_busy(run, plan, t["phases_ms"], tell))
            next_step += profile_steps
        device.update(_flops(run, next_step, t["phases_ms"]["step"]["median"], device.get("busy_ms", {}), cuda))
        next_step += 1
        if overhead_blocks:
            t["overhead"] = _overhead(b, run, next_step, overhead_blocks, cuda)
        row["selection"]["history"] = b.policy.history
        row["selection"]["rounds"] = getattr(b.policy, "rounds", [])
    except Exception as e:  # an OOM or a crash in timing is a row too
        record_failure(row, e)
    row["provenance"] = env.provenance()
    row["wall_s"] = round(time.time() - start, 3)
    return row


def replay_plan(policy, timed: int, first: int, n: int) -> list[tuple[int, dict, int]]:
    """(step, force, data_step) of `n` profiled steps from `first` on that replay the last `timed` steps
    the policy took, in order (cycling if n > timed): each one's draw, importance round and batch."""
    history = policy.history[-timed:]
    rounds_at = {r["step"] for r in getattr(policy, "rounds", [])}
    return [(first + i, {"active": h["active"], "importance": h["step"] in rounds_at}, h["step"])
            for i, h in ((i, history[i % len(history)]) for i in range(n))]


def _device_busy(run, plan: list[tuple[int, dict, int]], wall_phases: dict, tell) -> dict:
    """Busy ms per phase and step from the profiler's device trace of separate profiled steps, each
    (step, force, data_step): a timed step replayed (its draw, its importance round, its batch)."""
    from torch.profiler import ProfilerActivity, profile

    marks = DeviceMarks()
    progress = tell("profiled", len(plan))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for step, force, data_step in plan:
            run([step], meters=[marks, *progress], force=force, data_step=data_step)
        torch.cuda.synchronize()
    activity = device_activity(prof)

    def by_step(busy):   # a step is its forward, backward and optimizer phases
        busy["step"] = [sum(v) for v in zip(*(busy[p] for p in ("forward", "backward", "optimizer")), strict=True)]
        return busy
    busy = by_step(busy_by_phase(activity, marks.marks))
    per_step = busy["step"]
    medians = {p: statistics.median(v) for p, v in busy.items()}
    out = {"profiled_steps": len(plan), "profiled": "the timed steps replayed: their draws, rounds and batches",
           "busy_ms": medians, "busy": {p: spread(v) for p, v in busy.items()},
           "busy_steps_ms": per_step,
           "busy_fraction": {p: medians[p] / wall_phases[p]["median"] for p in medians if p in wall_phases}}
    out["busy_p90_over_p10"] = out["busy"]["step"]["p90"] / out["busy"]["step"]["p10"]
    if torch.distributed.is_initialized() or any(is_comm(a[0]) for a in activity):
        # ranks (--nproc): the collectives' busy time beside compute (none at one rank: FSDP2 skips them)
        split = {k: by_step(v) for k, v in comm_split(activity, marks.marks).items()}
        out["comm"] = {k: {p: statistics.median(v) for p, v in phases.items()} for k, phases in split.items()}
    return out


def _flops(run, step: int, wall_step_ms: float, busy_ms: dict, cuda: bool) -> dict:
    """FLOPs of one training step (importance forwards not included), TFLOP/s on the wall step
    time and on the device busy time, and MFU against the card's dense bf16 peak."""
    flops = count_flops(lambda: run([step], force={"importance": False}))   # a training step, no round
    out = {"flops_per_step": flops, "tflops_wall": flops / (wall_step_ms / 1e3) / 1e12}
    if busy_ms.get("step"):
        out["tflops_busy"] = flops / (busy_ms["step"] / 1e3) / 1e12
    card = cards.card_of(torch.cuda.get_device_name(0)) if cuda else None
    if card is not None:
        out.update(card=card.name, peak_tflops=card.bf16_tflops, mfu=out["tflops_wall"] / card.bf16_tflops)
    return out


def _overhead(b, run, first: int, blocks: int, cuda: bool) -> dict:
    """The harness's step (policy, gate, meters' marks) against a bare PyTorch loop on the same
    model and batches, in interleaved blocks (A B B A ...: a drift hits both); per block wall time
    per step, and one profiled pair of blocks for device busy time."""
    def bare(steps):
        for s in steps:
            inputs = model_inputs(b.batches.ids(s), b.device, needs_mask(b.model))
            loss = b.model(**inputs).loss
            loss.backward()
            b.optimizer.step()
            b.optimizer.zero_grad(set_to_none=True)

    def harness(steps):
        run(steps, meters=[Timer(cuda)])

    step = first
    walls: dict[str, list[float]] = {"harness": [], "bare": []}
    for i in range(blocks):
        order = (("harness", harness), ("bare", bare)) if i % 2 == 0 else (("bare", bare), ("harness", harness))
        for name, fn in order:
            _sync(cuda)
            t0 = time.perf_counter()
            fn(range(step, step + OVERHEAD_BLOCK))
            _sync(cuda)
            walls[name].append((time.perf_counter() - t0) / OVERHEAD_BLOCK * 1e3)
            step += OVERHEAD_BLOCK
    ratios = [h / b_ for h, b_ in zip(walls["harness"], walls["bare"], strict=True)]
    out = {"block_steps": OVERHEAD_BLOCK, "blocks": blocks, "wall_ms_per_step": walls,
           "wall_ratio": statistics.median(ratios), "wall_ratio_min": min(ratios), "wall_ratio_max": max(ratios)}
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        marks = DeviceMarks()   # one marker before each block and one after: inside, Timer records only events
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for name, fn in (("harness", harness), ("bare", bare)):
                marks.mark(name, step)
                fn(range(step, step + OVERHEAD_BLOCK))
                step += OVERHEAD_BLOCK
            marks.mark("end", step)
            torch.cuda.synchronize()
        busy = busy_segments(device_activity(prof), len(marks.marks))
        out.update(busy_ms_per_step={"harness": busy[0] / OVERHEAD_BLOCK, "bare": busy[1] / OVERHEAD_BLOCK},
                   busy_ratio=busy[0] / busy[1])
    return out


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
