"""One case = (model, method, selection policy, settings, backend); one result = one JSON row.

`Case` is the single source of truth for defaults. Checking a case has two halves:

- `validate()` (this module, light: no torch, transformers or peft) checks everything the case's own
  values and the config's raw JSON decide — types and ranges, names, policy options, method x policy,
  quantization and sharding settings, the position limit a config names, the data files, a GPU for
  `--backend cuda` — so a bad input answers in a fraction of a second;
- `check()` runs `validate()`, then `runner.build.resolve`: what needs the built config or torch.

`runner.build.build(case)` builds a checked case; `runner.memory.measure_memory(case)` measures it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ist_bench import schema, zoo
from ist_bench.errors import UsageError, choice_error
from ist_bench.methods import MethodSpec
from ist_bench.selection import SelectionPolicy, make_policy

DTYPES = ("bf16", "fp16", "fp32")
OPTIM_IMPLS = ("fused", "foreach", "for-loop", "adamw8bit", "paged-adamw8bit", "paged-adamw32bit")  # the last 3: bitsandbytes
BNB_OPTIMS = {"adamw8bit": "AdamW8bit", "paged-adamw8bit": "PagedAdamW8bit", "paged-adamw32bit": "PagedAdamW32bit"}
QUANTS = ("none", "nf4", "fp4", "int8")   # bitsandbytes base (ist_bench/quant.py)
QUANT_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
# peft supports these on a bnb base; our bottleneck adapters wrap the bnb module as they wrap nn.Linear
QUANT_METHODS = ("lora", "dora", "adalora", "series", "parallel")
ATTENTION = ("eager", "sdpa")
BACKENDS = ("auto", "sim", "cpu", "cuda")
DATA_MODES = ("pack", "sample")
SHARDS = ("fsdp2", "ddp")
# Methods that cannot run sharded, and why (found by running each method x policy on sim at N = 2).
UNSHARDABLE = {"adalora": "its rank allocator masks each adapter's whole singular-value vector after the optimizer "
                          "step, and under FSDP2 a rank holds only a shard of it"}
BNB_PIP = "pip install bitsandbytes==0.50.2 (or pip install -e '.[quant]')"


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
    nproc: int | None = None      # ranks (world size) under `shard` (ist_bench/distributed); None: one process, no sharding
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

    def validate(self) -> Case:
        """Everything that can be checked without torch, transformers or peft; raises UsageError."""
        self._check_values()
        for value, valid, what in ((self.dtype, DTYPES, "dtype"), (self.optim, OPTIM_IMPLS, "optimizer implementation"),
                                   (self.attn, ATTENTION, "attention implementation"), (self.backend, BACKENDS, "backend"),
                                   (self.data_mode, DATA_MODES, "data mode")):
            if value not in valid:
                raise choice_error(what, value, valid)
        raw = zoo.raw_config(self.model)
        policy = self.policy()
        from ist_bench.selection import canonical_options  # the options as the row records them
        self.select_opts = canonical_options(type(policy).Settings, self.select_opts, self.select)
        if policy.needs_adapters and not self.method.method.peft:
            raise UsageError(f"--select {self.select} scales each layer's PEFT output and --method {self.method.name} "
                             f"has none; use lora, dora, adalora, series or parallel")
        layers = next((v for k, v in zoo.raw_text(raw).items() if k in ("num_hidden_layers", "n_layer", "n_layers",
                                                                          "num_layers") and isinstance(v, int)), None)
        if layers:
            policy.check_layers(layers)
        self._check_quant()
        check_positions(self, zoo.raw_positions(raw))
        schema.check_tokens(self.seq_len, self.batch)   # after the position limit: the more telling line
        self._check_backend()
        self._check_dist()
        self._check_data()
        return self

    def check(self) -> Case:
        """Validate and resolve (`auto` backend, AdaLoRA's total steps); raises UsageError."""
        self.validate()
        from ist_bench.runner.build import resolve
        return resolve(self)

    def _check_backend(self) -> None:
        from ist_bench.units import parse_bytes

        if self.backend == "cuda" and not gpu_may_be_visible():
            raise UsageError("backend 'cuda' is not available: no CUDA GPU visible (use --backend sim or cpu)")
        if self.capacity is not None and self.backend == "cpu":
            raise UsageError("--capacity applies to the sim and cuda backends only")
        parse_bytes(self.capacity, "--capacity", at_least=1 << 20)

    def _check_dist(self) -> None:
        if self.nproc is None:
            if self.shard != "fsdp2" or not self.reshard_after_forward:
                raise UsageError("--shard and --reshard-after-forward apply to sharded runs; give --nproc N")
            return
        if self.shard not in SHARDS:
            raise choice_error("shard", self.shard, SHARDS)
        if self.method.name in UNSHARDABLE and self.shard == "fsdp2":
            raise UsageError(f"--method {self.method.name} cannot run under --shard fsdp2: "
                             f"{UNSHARDABLE[self.method.name]}")
        if self.backend == "sim" and self.shard != "fsdp2":
            raise UsageError(f"--backend sim --nproc runs FSDP2 under a fake process group; --shard {self.shard} is "
                             f"not modelled (valid: fsdp2)")
        if self.quant != "none":
            raise UsageError(f"--quant {self.quant} cannot run under --nproc: FSDP2 turns bitsandbytes' packed "
                             f"weights into DTensors without their quantization state (the layer's forward "
                             f"fails: 'DTensor' object has no attribute 'blocksize'); run it in one process")

    def _check_quant(self) -> None:
        if self.quant not in QUANTS:
            raise choice_error("quantization", self.quant, QUANTS)
        if self.quant_compute_dtype not in QUANT_COMPUTE_DTYPES:
            raise choice_error("quantization compute dtype", self.quant_compute_dtype, QUANT_COMPUTE_DTYPES)
        if self.quant == "none" and (self.double_quant or self.quant_compute_dtype != "bf16"):
            raise UsageError("--double-quant and --quant-compute-dtype apply to a quantized base; give --quant "
                             "nf4 or fp4")
        if self.quant == "int8" and self.quant_compute_dtype != "bf16":
            raise UsageError("--quant-compute-dtype applies to 4-bit bases (nf4, fp4), not --quant int8")
        if self.quant != "none":
            if self.method.name not in QUANT_METHODS:
                raise UsageError(f"--quant {self.quant} freezes the base in {self.quant} and --method "
                                 f"{self.method.name} trains it; use one of {', '.join(QUANT_METHODS)}")
            if self.double_quant and self.quant == "int8":
                raise UsageError("--double-quant applies to 4-bit bases (nf4, fp4), not --quant int8")
            _require_bnb(f"--quant {self.quant}")
        if self.optim in BNB_OPTIMS:
            _require_bnb(f"--optim {self.optim}")

    def _check_data(self) -> None:
        from ist_bench.data import check_sources

        check_sources(self.data, self.tokenizer, self.data_mode, self.batch)

    def policy(self) -> SelectionPolicy:
        """The selection policy, validated (not yet bound to a model)."""
        policy = make_policy(self.select, self.select_opts, seed=self.seed, optimizer_state=self.optimizer_state)
        schema.check_dataclass(policy.settings, f"--select {self.select}: ")   # finite, of its types
        return policy


def check_positions(case: Case, limit: int | None) -> None:
    """`--seq-len` within the model's position limit (a config without one: ist-bench's own cap)."""
    if limit is not None and case.seq_len > limit:
        raise UsageError(f"--seq-len {case.seq_len} is longer than {case.model}'s {limit} positions")
    if limit is None and case.seq_len > zoo.UNBOUNDED_MAX_LEN:
        raise UsageError(f"--seq-len {case.seq_len}: {case.model} has no position limit (ALiBi); ist-bench takes "
                         f"at most {zoo.UNBOUNDED_MAX_LEN} tokens for such models")


def gpu_may_be_visible() -> bool:
    """False when no CUDA GPU can be visible to this process, decided without torch: CUDA_VISIBLE_DEVICES
    hides every device, or the NVIDIA driver (NVML) is absent or counts none. True is only a maybe: torch
    decides then (measure/backends.py)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:   # no driver, no library: no GPU
        return False


def _require_bnb(what: str) -> None:
    """bitsandbytes is installed (found without importing it: importing it is what takes seconds)."""
    from importlib import metadata

    from ist_bench import process
    try:
        metadata.version(process.BNB)
    except metadata.PackageNotFoundError:
        raise UsageError(f"{what} needs bitsandbytes, which is not installed: {BNB_PIP}") from None
