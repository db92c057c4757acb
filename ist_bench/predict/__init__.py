"""Step time without a GPU: `ist-bench time --backend sim --gpu CARD` (docs/time-prediction.md).

The step is traced on meta as sim runs it (trace.py: every op, its phase and shapes), each kernel gets a time
from the card's measured tables (kernels.py), and the host's dispatch is overlapped with the kernels
(host.py). A draw changes a step's time through its lowest trained layer (backward stops there), so two
traces suffice: the lowest layer 0 and the highest it can be; a step whose lowest layer is m lies between
them, linearly in m (identical blocks). The timed steps' own draws (the policy's, as a run of the same seed
takes them) give the per-step times, and an importance round (IST) is traced once.

The row has the schema of a measured time row (`time.phases_ms`, `time.device.busy_ms`, tokens/s, MFU), with
`prediction`: the card, where its tables come from, the uncertainty, host-bound or not, and which ops fell
back to a stand-in model and how much of the step they weigh.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from ist_bench.errors import UsageError, choice_error

PHASES = ("forward", "backward", "optimizer")


def card_named(name: str):
    """A card by name, or a card file (the format of ist_bench/cards/*.json) by its path."""
    from pathlib import Path

    from ist_bench.cards import CARDS, load

    if name in CARDS:
        return CARDS[name]
    if name.endswith(".json") and Path(name).is_file():
        return load(Path(name))
    raise choice_error("GPU", name, [*CARDS, "<path/to/card.json>"])


def trace_case(case) -> dict:
    """The ops of a steady training step of `case` on meta for its lowest and highest possible lowest layer,
    and of an importance round if the policy has one; the timed steps' draws come from the policy."""
    from ist_bench.measure import backends
    from ist_bench.methods import after_optimizer_step, fill_method_state
    from ist_bench.predict.trace import Recorder
    from ist_bench.runner.build import build
    from ist_bench.runner.step import fill_optimizer_state, run_steps

    b = build(dataclasses.replace(case, backend="sim"))
    policy = b.policy
    k, n = policy.n_active, policy.n_layers

    def record(draw, importance: bool) -> list:
        rec = Recorder()
        with rec:
            run_steps(b.model, b.optimizer, b.batches, b.device, policy, [1], meters=[rec],
                      force={"active": draw, "importance": importance},
                      after_optimizer=lambda s: after_optimizer_step(b.model, case.method, s))
        return rec.ops

    with backends.step_context("sim"):
        trained = [p for g in b.optimizer.param_groups for p in g["params"]]
        fill_optimizer_state(b.optimizer, trained)   # a timed step is never a run's first
        fill_method_state(b.model, case.method)
        by_count = getattr(policy, "time_by", "lowest") == "count"   # DropBP: any subset; its size decides
        varies = (k < n and not policy.grad_below) or by_count   # else backward reaches every block anyway
        if by_count:
            low, high = None, [n - 1]          # every block kept; one kept
        else:
            low = [0, *range(n - k + 1, n)] if varies else (None if k >= n else list(range(k)))
            high = list(range(n - k, n))
        traces = {"low": record(low, False)}
        if varies:
            traces["high"] = record(high, False)
        if policy.needs_eval_batch:
            traces["round"] = [op for op in record(low, True) if op.phase == "importance" or
                               op.kind == "mark" and op.name.startswith("importance")]
    return {"traces": traces, "policy": policy, "n_layers": n, "n_active": k, "varies": varies, "by_count": by_count,
            "tokens": b.batches.ids(0).numel(), "info": b.info}


def predict_time(case, card_name: str = "h100-80g", warmup: int = 10) -> dict:
    """A time row predicted for `case` on the card (the case's backend is sim)."""
    from ist_bench.measure import env
    from ist_bench.predict.host import simulate
    from ist_bench.predict.kernels import SPEC_UNCERTAINTY_PCT, KernelModel
    from ist_bench.predict.trace import flops_of
    from ist_bench.results import SCHEMA
    from ist_bench.runner.build import record_failure

    card = card_named(card_name)
    if not card.tflops(_dtype_name(case.dtype)):
        raise UsageError(f"--gpu {card.name} has no {case.dtype} tensor cores (its spec sheet lists none); "
                         f"use --dtype fp16 or another card")
    start = time.time()
    row = {"schema": SCHEMA, "kind": "time", "case": case.to_dict(), "backend": "sim", "status": "ok", "error": None,
           "warmup": warmup}
    try:
        km = KernelModel(card)
        host = km.cal["host"]
        t = trace_case(case)
        row.update(t["info"])
        cache: dict = {}

        def kernel_us(op):
            key = (op.kind, op.cls, op.name, op.dtype, op.m, op.n, op.k, op.batch, op.bytes, op.tensors)
            if key not in cache:
                cache[key] = km.us(op)
            return cache[key]
        lines = {name: simulate(ops, kernel_us, host) for name, ops in t["traces"].items()}
        policy, n, k = t["policy"], t["n_layers"], t["n_active"]
        steps = range(warmup, warmup + case.steps)
        draws = [policy.select(s) for s in steps]
        top = max(n - k, 1)

        def position(d) -> float:   # 0 at the "low" trace, 1 at the "high" one
            if t["by_count"]:       # DropBP: from every block kept (0) to one kept (1)
                return 0.0 if d is None else (n - len(d)) / max(n - 1, 1)
            return min(d) / top if d else 0.0

        def at(figure) -> list[float]:   # per timed step: interpolate between the two traces
            lo = figure(lines["low"])
            if not t["varies"]:
                return [lo] * len(draws)
            hi = figure(lines["high"])
            return [lo + (hi - lo) * position(d) for d in draws]
        wall = {"forward": at(lambda tl: tl.span("start", "forward")),
                "backward": at(lambda tl: tl.span("forward", "backward")),
                "optimizer": at(lambda tl: tl.span("backward", "optimizer"))}
        wall["step"] = at(lambda tl: tl.span("start", "end"))
        busy = {p: at(lambda tl, p=p: tl.busy.get(p, 0.0)) for p in PHASES}
        groups = {f"{p}/{g}": statistics.mean(at(lambda tl, p=p, g=g: tl.groups.get((p, g), 0.0))) / 1e3
                  for p in PHASES for g in {g for line in lines.values() for (q, g) in line.groups if q == p}}
        busy["step"] = [sum(v) for v in zip(*(busy[p] for p in PHASES), strict=True)]
        ms = {p: [x / 1e3 for x in v] for p, v in wall.items()}
        busy_ms = {p: [x / 1e3 for x in v] for p, v in busy.items()}
        rounds = []
        if "round" in lines:
            rline = lines["round"]
            rounds = [rline.span("importance_start", "importance") / 1e3
                      for s in steps if policy.importance_due(s)]
            round_busy = rline.busy.get("importance", 0.0) / 1e3
        tokens = t["tokens"]
        step_median = statistics.median(ms["step"])
        flops = flops_of([op for op in t["traces"]["low"] if op.phase in PHASES])
        host_ms = {p: at(lambda tl, p=p: tl.host.get(p, 0.0)) for p in PHASES}
        host_step = statistics.median([sum(v) for v in zip(*host_ms.values(), strict=True)]) / 1e3
        busy_step = statistics.median(busy_ms["step"])
        total_us = sum(v for line in lines.values() for v in line.busy.values()) or 1.0
        from ist_bench.measure.timing import spread
        row["time"] = {
            "phases_ms": {p: spread(v) for p, v in ms.items()},
            "steps_ms": ms["step"],
            "importance_ms": rounds,
            "importance_ms_per_iter": sum(rounds) / case.steps,
            "tokens_per_s": tokens / (step_median / 1e3),
            "s_per_100_iter": (step_median + sum(rounds) / case.steps) / 10,
            "p90_over_p10": _ratio(ms["step"]),
            "device": {"busy_ms": {p: statistics.median(v) for p, v in busy_ms.items()},
                       "busy": {p: spread(v) for p, v in busy_ms.items()}, "busy_steps_ms": busy_ms["step"],
                       "flops_per_step": flops, "tflops_wall": flops / (step_median / 1e3) / 1e12,
                       "tflops_busy": flops / (busy_step / 1e3) / 1e12, "card": card.name,
                       "peak_tflops": card.bf16_tflops,
                       "mfu": flops / (step_median / 1e3) / 1e12 / card.bf16_tflops},
        }
        if rounds:
            row["time"]["phases_ms"]["importance"] = spread(rounds)
            row["time"]["device"]["busy_ms"]["importance"] = round_busy
        measured = km.src.measured
        same_arch = km.src.tables.arch == card.arch
        row["prediction"] = {
            "card": card.name, "tables": km.src.tables.name,
            "calibration": (km.cal.get("measured") if measured else
                            f"{km.src.tables.name}'s tables scaled by the spec sheets (no tables for {card.name}"
                            + ("" if same_arch else f"; {card.arch or 'another'} is not {km.src.tables.arch}: this "
                               f"fallback's error across architectures is not measured") + ")"),
            "uncertainty_pct": None if measured or not same_arch else SPEC_UNCERTAINTY_PCT,
            "host": host.get("measured_on", "the calibration machine's CPU"),
            "host_ms_per_step": host_step, "busy_ms_per_step": busy_step,
            "host_bound": host_step > busy_step,
            "fallback": {name: round(us / total_us, 4) for name, us in sorted(km.fallback.items(), key=lambda x: -x[1])},
            "busy_ms_by_group": groups,   # phase/kernel group: the mean over the timed steps (scripts/fit_insitu.py)
            "draws": "the timed steps' own draws (the policy's, same seed); IST and ILA: as on sim (no values)",
        }
    except UsageError:
        raise
    except Exception as e:
        record_failure(row, e)
    row["provenance"] = env.provenance()
    row["wall_s"] = round(time.time() - start, 3)
    return row


def _ratio(values: list[float]) -> float:
    from ist_bench.measure.timing import spread

    s = spread(values)
    return s["p90"] / s["p10"] if s["p10"] else 1.0


def _dtype_name(dtype: str) -> str:
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
