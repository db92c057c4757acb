"""One case = (model, method, selection policy, settings, backend); one result = one JSON row.

`Case` is the single source of truth for defaults. `check()` validates everything that
can be validated without building the model, so bad input fails in one line, before any
work. `measure_memory(case)` runs the controlled step under the memory meter, in this
process, and returns the result row; an OOM becomes `status: oom` with the peak reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from ist_bench import zoo
from ist_bench.data import TokenBatches, model_inputs
from ist_bench.errors import UsageError, choice_error
from ist_bench.measure import backends, env
from ist_bench.measure.cuda import ClockPoller, NvmlPoller
from ist_bench.measure.memory import MemoryMeter, summarize
from ist_bench.measure.timing import Timer, host_steal_s, spread
from ist_bench.methods import MethodSpec, after_optimizer_step, apply_method, method_state
from ist_bench.results import SCHEMA
from ist_bench.selection import OPTIMIZER_STATES, POLICIES, SelectionPolicy, make_policy
from ist_bench.units import parse_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPTIM_IMPLS = ("fused", "foreach", "for-loop")


@dataclass
class Case:
    model: str = "llama-7b"
    method: MethodSpec = field(default_factory=MethodSpec)
    select: str = "none"          # selection policy (ist_bench.selection.POLICIES)
    select_opts: dict = field(default_factory=dict)   # its settings, e.g. {"beta": 0.5, "mu": 100}
    optimizer_state: str = "keep"  # keep | reset: a deselected layer's AdamW state stays or is freed
    backend: str = "auto"
    steps: int = 5
    seq_len: int = 1024
    dtype: str = "bf16"
    seed: int = 0
    data: str | None = None       # Alpaca-format JSON; with `tokenizer`, else synthetic tokens
    tokenizer: str | None = None
    data_mode: str = "pack"
    optim: str = "fused"          # AdamW kernel: fused is transformers.Trainer's default on torch >= 2.8
    lr: float = 1e-4
    capacity: str | None = None   # sim: memory to simulate an OOM against; cuda: cap the allocator ("24GiB")

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        """A case from a suite's or a result row's dict; wrong names or types are UsageErrors."""
        d = dict(d)
        method = d.pop("method", "lora")
        if isinstance(method, dict):
            fields = [f.name for f in dataclasses.fields(MethodSpec)]
            if set(method) - set(fields):
                raise choice_error("method field", sorted(set(method) - set(fields))[0], fields)
            _check_types(method, {f.name: f.type for f in dataclasses.fields(MethodSpec)})
            method = MethodSpec(**method)
        elif isinstance(method, str):
            method = MethodSpec(name=method)
        elif not isinstance(method, MethodSpec):
            raise UsageError(f"method must be a name or a mapping, got {method!r}")
        select = d.get("select")
        if isinstance(select, dict):    # {name: ist, beta: 0.5} in a suite: a policy with its options
            select = dict(select)
            if not isinstance(select.get("name"), str):
                raise UsageError(f"a select mapping needs a policy name (name: ist), got {select!r}")
            d["select"] = select.pop("name")
            opts = d.get("select_opts") or {}
            d["select_opts"] = {**opts, **select} if isinstance(opts, dict) else opts
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise choice_error("case field", sorted(unknown)[0], [f.name for f in dataclasses.fields(cls)])
        _check_types(d, {f.name: f.type for f in dataclasses.fields(cls)})
        return cls(method=method, **d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["method"] = self.method.settings()
        return d

    def check(self) -> Case:
        """Validate and resolve (`auto` backend, AdaLoRA's total steps); raises UsageError."""
        config = zoo.load_config(self.model)
        policy = self.policy()
        if policy.needs_adapters and not self.method.method.peft:
            raise UsageError(f"--select {self.select} scales each layer's PEFT output and --method {self.method.name} "
                             f"has none; use lora, dora, adalora, series or parallel")
        if self.dtype not in DTYPES:
            raise choice_error("dtype", self.dtype, list(DTYPES))
        if self.optim not in OPTIM_IMPLS:
            raise choice_error("optimizer implementation", self.optim, OPTIM_IMPLS)
        if self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        limit = zoo.max_positions(config)
        if limit is not None and self.seq_len > limit:
            raise UsageError(f"--seq-len {self.seq_len} is longer than {self.model}'s {limit} positions")
        if self.method.name != "full":
            zoo.family(config)  # adapters need to know where the projections are
        elif self.select != "none":
            zoo.locate_layers(zoo.build_model(config, device="meta"))  # a policy needs the blocks
        backend = backends.resolve(self.backend)
        if self.capacity is not None and backend == "cpu":
            raise UsageError("--capacity applies to the sim and cuda backends only")
        parse_bytes(self.capacity)
        method = dataclasses.replace(self.method, total_steps=self.steps + 1)  # + the steady-state step
        # Build the data source once here, so a missing or malformed file fails now.
        TokenBatches(self.seq_len, config.vocab_size, data=self.data, tokenizer=self.tokenizer,
                     mode=self.data_mode, seed=self.seed)
        return dataclasses.replace(self, backend=backend, method=method)

    def policy(self) -> SelectionPolicy:
        """The selection policy, validated (not yet bound to a model)."""
        if self.select not in POLICIES:
            raise choice_error("selection policy", self.select, list(POLICIES))
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise choice_error("optimizer-state policy", self.optimizer_state, OPTIMIZER_STATES)
        return make_policy(self.select, self.select_opts, seed=self.seed, optimizer_state=self.optimizer_state)


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "str | None": (str, type(None)), "dict": (dict,)}


def _check_types(d: dict, annotations: dict) -> None:
    for key, value in d.items():
        allowed = _TYPES.get(str(annotations.get(key)))
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise UsageError(f"{key} must be {str(annotations[key]).replace(' | None', ' or null')}, got {value!r}")


@dataclass
class Built:
    """Everything one run needs, built for a backend."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: TokenBatches
    device: torch.device
    policy: SelectionPolicy
    info: dict


def build(case: Case) -> Built:
    config = zoo.load_config(case.model)
    device = backends.device(case.backend)
    model = zoo.build_model(config, dtype=DTYPES[case.dtype], device=device, seed=case.seed)
    n_params = sum(p.numel() for p in model.parameters())
    model = apply_method(model, case.method)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[case.optim]
    optimizer = torch.optim.AdamW(trainable, lr=case.lr, **impl)
    batches = TokenBatches(case.seq_len, config.vocab_size, data=case.data, tokenizer=case.tokenizer,
                           mode=case.data_mode, seed=case.seed)
    policy = case.policy()
    heldout = model_inputs(batches.heldout(policy.settings.eval_batch), device) if policy.needs_eval_batch else None
    policy.bind(model, optimizer, eval_batch=heldout)  # after the optimizer: it must know every trainable parameter
    gate = policy.gate
    info = {
        "n_layers": len(gate.blocks),
        "params": n_params,
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_params_per_layer": sum(p.numel() for p in gate.blocks[0]),
        "settings": {
            "dtype": case.dtype,
            "attn_implementation": model.config._attn_implementation,
            "gradient_checkpointing": _checkpointing(model),
            "use_cache": bool(model.config.use_cache),
            "optimizer": f"AdamW({case.optim})",
            "optimizer_state": case.optimizer_state,
            "device": str(device),
            **batches.describe(),
        },
        "selection": {"policy": policy.describe(), "n_active": policy.n_active},
    }
    return Built(model, optimizer, batches, device, policy, info)


def measure_memory(case: Case) -> dict:
    """Measure memory over the steps of the protocol (docs/measurement.md); returns the result row.

    1. step 0, the *first* step, as a real run takes it (no optimizer state before it);
    2. steps 1 .. steps-1 as the policy draws them (*drawn*), with the optimizer state a long run
       holds (`keep`: every layer's, filled in after the first step; `reset`: the state a run
       creates and frees); their median is the *typical* step;
    3. one *steady*-state step: that optimizer state (with `reset`, the active layers' state as
       if they had trained the step before), the policy's importance round if it has one, and its
       worst-case draw (`SelectionPolicy.worst_case`). Its figures depend neither on `--steps`
       nor on the luck of the draw: they bound what a long run reaches.
    """
    from ist_bench.runner.step import fill_optimizer_state, run_steps

    start = time.time()
    row = {"schema": SCHEMA, "kind": "memory", "case": case.to_dict(), "backend": case.backend, "status": "ok", "error": None}
    tracker = backends.tracker(case.backend, capacity=parse_bytes(case.capacity))
    meter = policy = None
    nvml = _cuda_setup(case) if case.backend == "cuda" else contextlib.nullcontext()
    try:
        with nvml:
            b = build(case)
            row.update(b.info)
            policy = b.policy
            meter = MemoryMeter(tracker, b.model, b.optimizer, method_state=lambda: method_state(b.model, case.method),
                                allocator=case.backend == "cuda", estimate=case.backend == "sim")
            if policy.eval_batch:
                tracker.register(policy.eval_batch.values())

            def run(steps, force=None):
                run_steps(b.model, b.optimizer, b.batches, b.device, policy, steps, meters=[meter], force=force,
                          after_optimizer=lambda s: after_optimizer_step(b.model, case.method, s))
            with backends.step_context(case.backend), tracker, meter:
                run([0])
                if case.optimizer_state == "keep":   # a long run's state: every layer has been drawn
                    fill_optimizer_state(b.optimizer, [p for block in policy.gate.blocks for p in block])
                run(range(1, case.steps))
                worst = policy.worst_case()
                policy.gate.apply(worst)      # `reset` frees the state of the layers it leaves out
                held = policy.gate.blocks if worst is None else [policy.gate.blocks[i] for i in worst]
                fill_optimizer_state(b.optimizer, [p for block in held for p in block])
                run([case.steps], force={"active": worst, "importance": policy.needs_eval_batch})
    except Exception as e:  # one case must never take the others down: its failure is its row
        _record_failure(row, e)
        row["peak_reached"] = _peak_reached(case.backend, tracker)
    if meter is not None:
        active = {h["step"]: h["active"] for h in policy.history}
        for i, r in enumerate(meter.steps):
            r["phase"] = "first" if i == 0 else "steady" if r["step"] == case.steps else "drawn"
            r["active_layers"] = active.get(r["step"])
        row["memory"] = {"steps": meter.steps, "summary": summarize(meter.steps)}
    if policy is not None and policy.gate is not None:
        row["selection"]["history"] = policy.history
        row["selection"]["rounds"] = getattr(policy, "rounds", [])
    if case.backend == "cuda":
        row["nvml"] = nvml.result()
    row["provenance"] = env.provenance()
    row["wall_s"] = round(time.time() - start, 3)
    return row


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


def measure_time(case: Case, warmup: int = 10) -> dict:
    """Time `case.steps` controlled steps after `warmup` uncounted ones (no tracker anywhere).

    Importance rounds fall where the policy schedules them (IST: every T_c steps) and are timed
    as their own phase; `s_per_100_iter` is wall time and includes them (the paper's Table 13)."""
    from ist_bench.runner.step import run_steps

    if case.backend == "sim":
        raise UsageError("timing needs real compute: use --backend cuda (or cpu for small models)")
    # AdaLoRA's budget schedule must span every step this run takes, warm-up included.
    case = dataclasses.replace(case, method=dataclasses.replace(case.method, total_steps=warmup + case.steps))
    start = time.time()
    row = {"schema": SCHEMA, "kind": "time", "case": case.to_dict(), "backend": case.backend, "status": "ok", "error": None,
           "warmup": warmup}
    try:
        b = build(case)
        row.update(b.info)
        cuda = case.backend == "cuda"

        def run(steps, meters=()):
            run_steps(b.model, b.optimizer, b.batches, b.device, b.policy, steps, meters=meters,
                      after_optimizer=lambda s: after_optimizer_step(b.model, case.method, s))
        run(range(warmup))
        timer = Timer(cuda)
        clocks = ClockPoller() if cuda else contextlib.nullcontext()
        _sync(cuda)
        gc.collect()
        gc.disable()  # a full collection of a process holding transformers takes tens of ms
        try:
            with clocks:
                steal0 = host_steal_s()
                t0 = time.perf_counter()
                run(range(warmup, warmup + case.steps), meters=[timer])
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
        row["time"] = {
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
            row["time"]["phases_ms"]["importance"] = spread(rounds)
        if cuda:
            row["time"]["gpu_clocks"] = clocks.result()
        row["selection"]["history"] = b.policy.history
        row["selection"]["rounds"] = getattr(b.policy, "rounds", [])
    except Exception as e:  # an OOM or a crash in timing is a row too
        _record_failure(row, e)
    row["provenance"] = env.provenance()
    row["wall_s"] = round(time.time() - start, 3)
    return row


def _record_failure(row: dict, e: BaseException) -> None:
    row["status"] = "oom" if backends.is_oom(e) else "error"
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    if row["status"] == "error":
        row["traceback"] = traceback.format_exc(limit=8)


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _peak_reached(backend: str, tracker) -> int:
    if backend == "cuda":
        return torch.cuda.max_memory_allocated()
    return tracker.peak_estimate if backend == "sim" else tracker.peak


def _checkpointing(model: torch.nn.Module) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    flag = getattr(base, "is_activation_checkpointing", None)
    if flag is None:  # transformers < 5
        flag = getattr(base, "is_gradient_checkpointing", False)
    return bool(flag)
