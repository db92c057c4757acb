"""One case = (model, method, selection policy, settings, backend); one result = one JSON row.

`Case` is the single source of truth for defaults. `check()` validates everything that
can be validated without building the model, so bad input fails in one line, before any
work. `measure_memory(case)` runs the controlled step under the memory meter, in this
process, and returns the result row; an OOM becomes `status: oom` with the peak reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import traceback
from dataclasses import asdict, dataclass, field

import torch

from ist_bench import quant, schema, zoo
from ist_bench.data import TokenBatches, model_inputs, needs_mask
from ist_bench.errors import UsageError, choice_error
from ist_bench.measure import backends
from ist_bench.methods import MethodSpec, apply_method
from ist_bench.selection import SelectionPolicy, make_policy
from ist_bench.units import parse_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPTIM_IMPLS = ("fused", "foreach", "for-loop", "adamw8bit", "paged-adamw8bit", "paged-adamw32bit")  # the last 3: bitsandbytes
QUANTS = ("none", "nf4", "fp4", "int8")   # bitsandbytes base (ist_bench/quant.py)
QUANT_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
ATTENTION = ("eager", "sdpa")


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
    batch: int = 1                # sequences per step (micro-batch)
    grad_checkpointing: bool = False
    attn: str = "eager"           # eager (the paper's) or sdpa (flash / memory-efficient kernels on cuda)
    dtype: str = "bf16"
    seed: int = 0
    data: str | None = None       # Alpaca-format JSON; with `tokenizer`, else synthetic tokens
    tokenizer: str | None = None
    data_mode: str = "pack"
    optim: str = "fused"          # AdamW kernel: fused is transformers.Trainer's default on torch >= 2.8
    lr: float = 1e-4
    capacity: str | None = None   # sim: memory to simulate an OOM against; cuda: cap the allocator ("24GiB")
    quant: str = "none"           # bitsandbytes base: nf4 | fp4 (Linear4bit) | int8 (Linear8bitLt); docs/quant.md
    double_quant: bool = False    # 4-bit: quantize the absmax too (QLoRA's double quantization)
    quant_compute_dtype: str = "bf16"   # 4-bit: the dtype each layer dequantizes to and computes in
    nproc: int | None = None      # ranks (world size) under `shard` (ist_bench/dist); None: one process, no sharding
    shard: str = "fsdp2"          # with nproc: fsdp2 (fully_shard per block, then the root) or ddp
    reshard_after_forward: bool = True   # fsdp2: free each block's gathered weights after its forward

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        """A case from a suite's or a result row's dict; wrong names or types are UsageErrors."""
        d = dict(d)
        method = d.pop("method", "lora")
        if isinstance(method, dict):
            fields = [f.name for f in dataclasses.fields(MethodSpec)]
            if set(method) - set(fields):
                raise choice_error("method field", sorted(set(method) - set(fields))[0], fields)
            schema.validate(schema.dataclass_schema(MethodSpec, tuple(schema.METHOD_LIMITS.items())), method, "")
            method = MethodSpec(**method)
        elif isinstance(method, str):
            method = MethodSpec(name=method)
        elif not isinstance(method, MethodSpec):
            raise UsageError(f"method must be a name or a mapping, got {schema.show(method)}")
        select = d.get("select")
        if isinstance(select, dict):    # {name: ist, beta: 0.5} in a suite: a policy with its options
            select = dict(select)
            if not isinstance(select.get("name"), str):
                raise UsageError(f"a select mapping needs a policy name (name: ist), got {schema.show(select)}")
            d["select"] = select.pop("name")
            opts = d.get("select_opts") or {}
            d["select_opts"] = {**opts, **select} if isinstance(opts, dict) else opts
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise choice_error("case field", sorted(unknown)[0], [f.name for f in dataclasses.fields(cls)])
        return cls(method=method, **d)._check_values()

    def _check_values(self) -> Case:
        """Every field's type and range against the case schema (ist_bench/schema.py)."""
        schema.check_dataclass(self, limits=schema.CASE_LIMITS, exclude=("method",))
        schema.check_dataclass(self.method, limits=schema.METHOD_LIMITS)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["method"] = self.method.settings()
        if self.quant == "none" and not self.double_quant and self.quant_compute_dtype == "bf16":
            for key in ("quant", "double_quant", "quant_compute_dtype"):   # a bf16 case's row stays as before
                del d[key]
        if self.nproc is None and self.shard == "fsdp2" and self.reshard_after_forward:
            for key in ("nproc", "shard", "reshard_after_forward"):        # so does a one-process case's
                del d[key]
        return d

    def check(self) -> Case:
        """Validate and resolve (`auto` backend, AdaLoRA's total steps); raises UsageError."""
        self._check_values()
        config = zoo.load_config(self.model)
        policy = self.policy()
        if policy.needs_adapters and not self.method.method.peft:
            raise UsageError(f"--select {self.select} scales each layer's PEFT output and --method {self.method.name} "
                             f"has none; use lora, dora, adalora, series or parallel")
        if self.dtype not in DTYPES:
            raise choice_error("dtype", self.dtype, list(DTYPES))
        if self.optim not in OPTIM_IMPLS:
            raise choice_error("optimizer implementation", self.optim, OPTIM_IMPLS)
        if self.attn not in ATTENTION:
            raise choice_error("attention implementation", self.attn, ATTENTION)
        self._check_quant()
        limit = zoo.max_positions(config)
        if limit is not None and self.seq_len > limit:
            raise UsageError(f"--seq-len {self.seq_len} is longer than {self.model}'s {limit} positions")
        if limit is None and self.seq_len > zoo.UNBOUNDED_MAX_LEN:
            raise UsageError(f"--seq-len {self.seq_len}: {self.model} has no position limit (ALiBi); ist-bench takes "
                             f"at most {zoo.UNBOUNDED_MAX_LEN} tokens for such models")
        schema.check_tokens(self.seq_len, self.batch)   # after the position limit: the more telling line
        if self.method.name != "full":
            zoo.family(config)  # adapters need to know where the projections are
        elif self.select != "none":
            zoo.locate_layers(zoo.build_model(config, device="meta"))  # a policy needs the blocks
        backend = backends.resolve(self.backend)
        if backend == "cpu":
            _check_host_memory(self, config)
        if self.capacity is not None and backend == "cpu":
            raise UsageError("--capacity applies to the sim and cuda backends only")
        parse_bytes(self.capacity)
        self._check_dist(backend)
        method = dataclasses.replace(self.method, total_steps=self.steps + 1)  # + the steady-state step
        # Build the data source once here, so a missing or malformed file fails now.
        TokenBatches(self.seq_len, config.vocab_size, data=self.data, tokenizer=self.tokenizer, batch=self.batch,
                     mode=self.data_mode, seed=self.seed)
        return dataclasses.replace(self, backend=backend, method=method)

    def _check_dist(self, backend: str) -> None:
        if self.nproc is None:
            if self.shard != "fsdp2" or not self.reshard_after_forward:
                raise UsageError("--shard and --reshard-after-forward apply to sharded runs; give --nproc N")
            return
        from ist_bench.dist.launch import check
        check(self.nproc, self.shard, backend, self.method.name)
        if self.quant != "none":
            raise UsageError(f"--quant {self.quant} cannot run under --nproc: FSDP2 turns bitsandbytes' packed "
                             f"weights into DTensors without their quantization state (the layer's forward "
                             f"fails: 'DTensor' object has no attribute 'blocksize'); run it in one process")

    def _check_quant(self) -> None:
        if self.quant not in QUANTS:
            raise choice_error("quantization", self.quant, QUANTS)
        if self.quant_compute_dtype not in QUANT_COMPUTE_DTYPES:
            raise choice_error("quantization compute dtype", self.quant_compute_dtype, QUANT_COMPUTE_DTYPES)
        if self.quant != "none":
            if self.method.name not in quant.QUANT_METHODS:
                raise UsageError(f"--quant {self.quant} freezes the base in {self.quant} and --method "
                                 f"{self.method.name} trains it; use one of {', '.join(quant.QUANT_METHODS)}")
            if self.double_quant and self.quant == "int8":
                raise UsageError("--double-quant applies to 4-bit bases (nf4, fp4), not --quant int8")
            quant.require_bnb(f"--quant {self.quant}")
        if self.optim in quant.BNB_OPTIMS:
            quant.require_bnb(f"--optim {self.optim}")

    def policy(self) -> SelectionPolicy:
        """The selection policy, validated (not yet bound to a model)."""
        policy = make_policy(self.select, self.select_opts, seed=self.seed, optimizer_state=self.optimizer_state)
        schema.check_dataclass(policy.settings, f"--select {self.select}: ")   # finite, of its types
        return policy


def _check_host_memory(case: Case, config) -> None:
    """Refuse a CPU case that would not fit in this machine's RAM (a 7B model on a laptop), up front.
    A rough upper bound: weights, their gradients and AdamW moments if every parameter trains (else a
    quarter more for adapters), and activations (34 bytes per token and hidden unit per layer, plus
    eager attention's scores), per Korthikanti et al. 2022."""
    import psutil

    params = zoo.count_parameters(config)
    size = DTYPES[case.dtype].itemsize
    weights = params * size * (4 if case.method.name == "full" else 1.25)
    tokens = case.seq_len * case.batch
    layers, hidden = config.num_hidden_layers, config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    acts = layers * tokens * (34 * hidden + (5 * heads * case.seq_len if case.attn == "eager" else 0))
    need, have = weights + acts, psutil.virtual_memory().total
    if need > 0.8 * have:
        raise UsageError(f"{case.model} on --backend cpu needs about {need / 2**30:.0f} GiB of host RAM; this machine "
                         f"has {have / 2**30:.0f} GiB: use --backend sim (memory, any size) or cuda")


@dataclass
class Built:
    """Everything one run needs, built for a backend."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: TokenBatches
    device: torch.device
    policy: SelectionPolicy
    info: dict
    created: list[torch.Tensor]   # parameters and buffers in the order the device allocated them


def build(case: Case, wrap=None) -> Built:
    """`wrap(model)`, if given, runs after the method and before the optimizer (FSDP2 sharding: ist_bench/dist)."""
    config = zoo.load_config(case.model)
    device = backends.device(case.backend)
    prepared = None
    if case.quant == "none":
        model = zoo.build_model(config, dtype=DTYPES[case.dtype], device=device, seed=case.seed, attn=case.attn)
    else:
        model = quant.build_quantized(config, quant=case.quant, double_quant=case.double_quant,
                                      compute_dtype=case.quant_compute_dtype, dtype=DTYPES[case.dtype], device=device,
                                      seed=case.seed, attn=case.attn)
        prepared = quant.prepare(model, case.grad_checkpointing)
    n_params = sum(_numel(p) for p in model.parameters())
    # the base model's tensors are allocated first, then the method's: their order, by id only (holding the
    # tensors would keep the originals that FSDP2's sharding replaces alive, a full unsharded copy per rank)
    base = {id(t): i for i, t in enumerate([*model.parameters(), *model.buffers()])}
    with torch.device(device) if device.type == "meta" else contextlib.nullcontext():
        model = apply_method(model, case.method)   # sim: adapters born on meta, not initialised on the CPU
    if os.environ.get("IST_BENCH_INJECT") == "unfreeze":
        # A deliberate regression for testing the gate (never set it otherwise): the bug of forgetting
        # to freeze the base model, so every parameter trains while the case still says its method.
        for p in model.parameters():
            p.requires_grad_(True)
    if case.grad_checkpointing:
        # non-reentrant: no need for inputs that require grad (peft's frozen embeddings), as Trainer does today
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    if wrap is not None:
        model = wrap(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if case.optim in quant.BNB_OPTIMS:
        optimizer = quant.make_optimizer(case.optim, trainable, case.lr)
    else:
        impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[case.optim]
        optimizer = torch.optim.AdamW(trainable, lr=case.lr, **impl)
    batches = TokenBatches(case.seq_len, config.vocab_size, data=case.data, tokenizer=case.tokenizer, batch=case.batch,
                           mode=case.data_mode, seed=case.seed, meta=device.type == "meta")
    policy = case.policy()
    heldout = None
    if policy.needs_eval_batch:   # a function of the round's step: IST's eval_data=fresh draws one per round
        fresh = policy.settings.eval_data == "fresh"

        def heldout(step):
            return model_inputs(batches.heldout(policy.settings.eval_batch, step if fresh else 0), device,
                                needs_mask(model))
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
            "optimizer": f"bnb.optim.{quant.BNB_OPTIMS[case.optim]}" if case.optim in quant.BNB_OPTIMS
            else f"AdamW({case.optim})",
            "optimizer_state": case.optimizer_state,
            "device": str(device),
            **batches.describe(),
        },
        "selection": {"policy": policy.describe(), "n_active": policy.n_active},
    }
    if case.quant != "none":
        info["settings"]["quant"] = quant.describe(model, case, prepared)
    if os.environ.get("IST_BENCH_INJECT"):
        info["injected"] = os.environ["IST_BENCH_INJECT"]
    created = sorted([*model.parameters(), *model.buffers()], key=lambda t: base.get(id(t), len(base)))   # stable
    return Built(model, optimizer, batches, device, policy, info, created)


def _numel(p: torch.Tensor) -> int:
    """A parameter's element count; a packed 4-bit weight counts the values it holds (two a byte)."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def record_failure(row: dict, e: BaseException) -> None:
    row["status"] = "oom" if backends.is_oom(e) else "error"
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    if row["status"] == "error":
        row["traceback"] = traceback.format_exc(limit=-12)


def _checkpointing(model: torch.nn.Module) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    flag = getattr(base, "is_activation_checkpointing", None)
    if flag is None:  # transformers < 5
        flag = getattr(base, "is_gradient_checkpointing", False)
    return bool(flag)
