"""A memory case: the protocol of docs/measurement.md (first, drawn and steady steps) under the meter."""

from __future__ import annotations

import contextlib
import time

import torch

from ist_bench import quant
from ist_bench.measure import backends, env
from ist_bench.measure.cuda import NvmlPoller, gpu_guard
from ist_bench.measure.memory import MemoryMeter, summarize
from ist_bench.methods import after_optimizer_step, fill_method_state, method_state
from ist_bench.results import SCHEMA
from ist_bench.runner.build import build, record_failure
from ist_bench.runner.case import Case
from ist_bench.runner.step import fill_optimizer_state, run_steps
from ist_bench.units import parse_bytes


def measure_memory(case: Case, busy_gpu: str = "refuse", probe_draws: bool | list = False,
                   timeline: str | None = None, wrap=None) -> dict:
    """Measure memory over the steps of the protocol (docs/measurement.md); returns the result row.

    1. step 0, the *first* step, as a real run takes it (no optimizer state before it); with
       `steps=0` only the steady step runs (what `ist-bench fit` probes);
    2. steps 1 .. steps-1 as the policy draws them (*drawn*), with the optimizer state a long run
       holds (`keep`: every layer's, filled in after the first step; `reset`: the state a run
       creates and frees);
    3. one *steady*-state step per candidate worst draw (`SelectionPolicy.worst_cases`), with that
       optimizer state (with `reset`, the drawn layers' state as if they had trained the step
       before), the method's state as after its first step (AdaLoRA's EMAs), the policy's
       importance round if it has one, and the longest batch (`--data-mode sample`). The
       candidate that peaks highest is the *steady* step; the others are kept as `candidate`.
       Its figures depend neither on `--steps` nor on the luck of the draw: they bound what a
       long run reaches (tests/test_steady.py checks every draw and step by brute force).
       The *typical* figures follow from the steady step and one anchor step whose lowest layer
       is not 0 (measure.memory.typical): a drawn step where those run under the steady step's
       conditions, else one more step with the top layers drawn, before the candidates.

    `timeline`: also write the case's memory timeline there (measure/timeline.py; .png, .html,
    .pickle or .json), up to the failure if the case fails or runs out of memory.
    """
    start = time.time()
    row = {"schema": SCHEMA, "kind": "memory", "case": case.to_dict(), "backend": case.backend, "status": "ok", "error": None}
    tracker = backends.tracker(case.backend, capacity=parse_bytes(case.capacity), history=timeline is not None)
    meter = policy = None
    n_measured = candidates = 0
    weights = anchor = None
    nvml = contextlib.nullcontext()
    try:
        if case.backend == "cuda":
            row["gpu_guard"] = gpu_guard(busy_gpu)
            nvml = _cuda_setup(case)
            if timeline:
                torch.cuda.memory._record_memory_history(max_entries=1_000_000, context=None)
        with nvml:
            b = build(case, wrap)
            row.update(b.info)
            policy = b.policy
            meter = MemoryMeter(tracker, b.model, b.optimizer, method_state=lambda: method_state(b.model, case.method),
                                allocator=case.backend == "cuda", estimate=case.backend == "sim",
                                extra_weights=quant.state_tensors(b.model), created=b.created,
                                blocks=policy.gate.modules)
            if policy.eval_batch:
                tracker.register(policy.eval_batch.values())

            def run(steps, force=None, data_step=None):
                run_steps(b.model, b.optimizer, b.batches, b.device, policy, steps, meters=[meter], force=force,
                          after_optimizer=lambda s: after_optimizer_step(b.model, case.method, s),
                          data_step=data_step)
            with backends.step_context(case.backend), tracker, meter:
                trained = [p for g in b.optimizer.param_groups for p in g["params"]]
                in_blocks = {id(p) for block in policy.gate.blocks for p in block}

                def steady(draw, step):
                    """One step under a long run's conditions with `draw` forced (docs/measurement.md)."""
                    policy.gate.apply(draw)       # `reset` frees the state of the layers it leaves out
                    held = trained if draw is None else [p for i in draw for p in policy.gate.blocks[i]] + \
                        [p for p in trained if id(p) not in in_blocks]    # e.g. LISA's embeddings and head
                    fill_optimizer_state(b.optimizer, held)
                    fill_method_state(b.model, case.method)             # AdaLoRA's EMAs exist after step 0
                    run([step], force={"active": draw, "importance": policy.needs_eval_batch},
                        data_step=b.batches.longest_step())             # sample mode: the longest sample
                if case.steps:
                    run([0])
                if case.optimizer_state == "keep":   # a long run's state: every layer has been drawn
                    fill_optimizer_state(b.optimizer, trained)
                run(range(1, case.steps))
                weights = policy.typical_weights()
                cands = policy.worst_cases()
                # typical's anchors (measure.memory.typical): the candidates and one step whose lowest layer
                # is another one: a drawn step where drawn steps run under the steady step's conditions (keep,
                # batches of one length), else one more step, the draw [1, top layers]
                reuse = case.optimizer_state == "keep" and b.batches.longest_step() == 0
                lowest = {min(d) for d in cands if d}
                anchor = next((i for i, h in enumerate(policy.history) if i and reuse and h["active"]
                               and min(h["active"]) not in lowest), None)
                top = policy.n_layers - policy.n_active     # the highest a draw's lowest layer can be
                if weights is not None and anchor is None and 1 not in lowest and top > 1:
                    anchor = len(meter.steps)
                    steady([1, *range(top + 1, policy.n_layers)], case.steps)
                for draw in cands:
                    steady(draw, case.steps)
                candidates = len(cands)
                n_measured = len(meter.steps)
                for draw in (policy.possible_draws() if probe_draws is True else probe_draws or ()):
                    steady(draw, case.steps)
    except Exception as e:  # one case must never take the others down: its failure is its row
        record_failure(row, e)
        row["peak_reached"] = _peak_reached(case.backend, tracker)
    if meter is not None:
        n = n_measured or len(meter.steps)     # n_measured: set once the steady step is done
        for i, (r, h) in enumerate(zip(meter.steps, policy.history, strict=False)):   # a failed step: no row
            r["phase"] = "probe" if i >= n else "first" if i == 0 and case.steps else "drawn"
            r["active_layers"] = h["active"]
        if n_measured and weights is not None and anchor is not None:
            meter.steps[anchor]["typical_anchor"] = True
            if anchor >= case.steps:        # not a drawn step: one run for the anchor alone
                meter.steps[anchor]["phase"] = "anchor"
        if n_measured:   # the steady step: the candidate worst draw that peaks highest, placed last
            tried = meter.steps[n - candidates:n]
            for r in tried:
                r["phase"] = "candidate"
            if weights is not None:
                tried[0]["typical_base"] = True   # worst_cases()[0]: layer 0 and the top layers
                for r in tried[1:]:
                    if r["active_layers"] and min(r["active_layers"]) > 0:
                        r["typical_anchor"] = True    # the top layers: an anchor of typical too
            worst = max(tried, key=lambda r: r.get("allocated_peak", r.get("allocated_peak_est", r["peak"])))
            worst["phase"] = "steady"
            tried.remove(worst)
            meter.steps[n - candidates:n] = [*tried, worst]
        steps, probes = meter.steps[:n], meter.steps[n:]
        row["memory"] = {"steps": steps, "summary": summarize(steps, weights),
                         "typical": "steady" if weights is None else "draws"}   # how summary's typical was derived
        if probes:
            row["memory"]["probes"] = probes
    if policy is not None and policy.gate is not None:
        row["selection"]["history"] = policy.history
        row["selection"]["rounds"] = getattr(policy, "rounds", [])
    if isinstance(nvml, NvmlPoller):
        row["nvml"] = nvml.result()
    if timeline:
        row["timeline"] = _write_timeline(timeline, case, row, tracker, meter)
    row["provenance"] = env.provenance()
    row["wall_s"] = round(time.time() - start, 3)
    return row


def _write_timeline(path: str, case: Case, row: dict, tracker, meter) -> list[str]:
    """The timeline (and on cuda the allocator's own snapshot beside it, `<stem>.cuda.pickle`)."""
    import pickle
    from pathlib import Path

    from ist_bench.measure.timeline import Timeline
    from ist_bench.results import case_label, model_label

    summary = row.get("memory", {}).get("summary", {})
    peak = max(summary.get("run_allocated_peak") or summary.get("run_allocated_peak_est") or 0,
               row.get("peak_reached") or 0)   # an OOM's failing step peaks above the steps before it
    tl = Timeline.of(tracker, meter, case.backend, f"{model_label(case.model)} {case_label(case.to_dict())}", peak)
    written = [str(tl.save(path))]
    if case.backend == "cuda":
        snapshot = Path(path).with_suffix(".cuda.pickle")
        from ist_bench.safeio import write_atomic
        write_atomic(snapshot, pickle.dumps(torch.cuda.memory._snapshot()))
        torch.cuda.memory._record_memory_history(enabled=None)
        written.append(str(snapshot))
    return written


def _cuda_setup(case: Case) -> NvmlPoller:
    """Create the CUDA context, cap the allocator if asked, and return an NVML poller whose
    baseline is the context alone (taken before the model exists)."""
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    cap = parse_bytes(case.capacity)
    if cap is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    torch.cuda.reset_peak_memory_stats()
    return NvmlPoller()


def _peak_reached(backend: str, tracker) -> int:
    if backend == "cuda":
        return torch.cuda.max_memory_allocated()
    return tracker.peak_estimate if backend == "sim" else tracker.peak


