"""A checked case, built for its backend: the model with its method, the optimizer, the data, the bound
selection policy (`build`); what a failure's row says (`record_failure`). Heavy: torch, transformers, peft.

`resolve(case)` finishes `Case.check()`: what needs the built config (the family's placements, the
position limit transformers' config class defaults to, the data's token ids against the vocabulary,
the host's memory for a CPU case) and the backend (`auto` -> cuda or sim).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import traceback
from dataclasses import dataclass

import torch

from ist_bench import quant, zoo
from ist_bench.data import TokenBatches, model_inputs, needs_mask
from ist_bench.errors import UsageError
from ist_bench.measure import backends
from ist_bench.measure.tracker import storage_bytes
from ist_bench.methods import apply_method
from ist_bench.runner.case import Case, check_positions
from ist_bench.selection import SelectionPolicy
from ist_bench.zoo.structure import describe, discover

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve(case: Case) -> Case:
    """The heavy half of `Case.check()` (after `Case.validate()`): returns the case with its backend
    resolved and AdaLoRA's total steps set."""
    config = zoo.load_config(case.model)
    check_positions(case, zoo.max_positions(config))   # a class default the raw config did not name
    zoo.check_attention(config, case.attn, case.model)
    try:     # a config transformers accepts may still not build (a junk rope_scaling, hidden_act, width)
        model = zoo.build_model(config, device="meta", attn=case.attn)
    except Exception as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise UsageError(f"cannot build {case.model} ({config.model_type}) from its config: {why[:200]}") from None
    structure = discover(model)   # the blocks and where the method goes; refuses a model without them
    if backends.resolve(case.backend) == "sim" and structure.forward_error:
        raise UsageError(f"sim cannot run {case.model} ({structure.model_type}): its forward fails on meta tensors, "
                         f"which hold no values ({structure.forward_error[:120]}); measure it with --backend cuda "
                         f"or cpu")
    case = _placement(case, structure, model)
    backend = backends.resolve(case.backend)
    if backend == "cpu":
        _check_host_memory(case, config)
    if case.quant != "none":
        quant.require_bnb(f"--quant {case.quant}")
    if case.optim in quant.BNB_OPTIMS:
        quant.require_bnb(f"--optim {case.optim}")
    if case.nproc is not None:
        from ist_bench.distributed.launch import check_devices
        check_devices(case.nproc, backend)
    method = dataclasses.replace(case.method, total_steps=case.steps + 1)  # + the steady-state step
    # Build the data source once here, so a file the tokenizer cannot read fails now.
    TokenBatches(case.seq_len, zoo.text_config(config).vocab_size, data=case.data, tokenizer=case.tokenizer, batch=case.batch,
                 mode=case.data_mode, seed=case.seed)
    return dataclasses.replace(case, backend=backend, method=method)


LORA_FAMILY = ("lora", "dora", "adalora")


def structure_of(model: str, attn: str = "eager"):
    """The structure of a zoo name or config path, found on a meta build (cached per process, by the
    config's content: a file rewritten between two cases is another config)."""
    import json

    return _structure(json.dumps(zoo.raw_config(model), sort_keys=True), model, attn)


@functools.lru_cache(maxsize=8)
def _structure(content: str, model: str, attn: str):
    return discover(zoo.build_model(zoo.load_config(model), device="meta", attn=attn))


def _placement(case: Case, structure, model) -> Case:
    """Where the method goes on this model, checked: `--target-modules` names what exists in the blocks (not
    the LM head); on an MoE whose experts are fused 3-D weights, LoRA adapts them through peft's
    `target_parameters`, which takes no dropout (so the case's dropout is 0, and the row says so), and
    DoRA and AdaLoRA, which peft cannot put there, are refused unless --target-modules leaves the experts out."""
    name, targets = case.method.name, case.method.target_modules
    if targets is not None and name not in LORA_FAMILY:
        raise UsageError(f"--target-modules applies to lora, dora and adalora (peft's target_modules); --method {name} "
                         f"places its own modules")
    if targets and targets != "all-linear":
        wanted = [t.strip() for t in targets.split(",")]
        names = [n for n, _ in model.named_modules()]
        head = getattr(model.get_output_embeddings(), "__class__", None) if hasattr(model, "get_output_embeddings") else None
        for t in wanted:
            hits = [n for n in names if n == t or n.endswith("." + t)]
            if not hits:
                leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n.count(".") >= 2} - {""}, key=str)
                leaves = [x for x in leaves if not x.isdigit()]
                raise UsageError(f"--target-modules {t!r} matches no module of {case.model} ({structure.model_type}); "
                                 f"its blocks hold e.g. {', '.join(leaves[:12])}")
            if head is not None and any(model.get_submodule(h) is model.get_output_embeddings() for h in hits):
                raise UsageError(f"--target-modules {t!r} matches the LM head of {case.model}; ist-bench adapts the "
                                 f"transformer blocks (their layers are what the policies select)")
    if name in ("series", "parallel"):
        needs = {"series": "both an up and a down projection", "parallel": "an up or a gate projection"}[name]
        for k in structure.kinds:
            if k.moe is None and not (k.up and k.down if name == "series" else k.up or k.gate):
                block = model.get_submodule(structure.layers)[structure.kind_of.index(structure.kinds.index(k))]
                raise UsageError(f"--method {name} on {case.model} ({structure.model_type}): its blocks have no MLP with "
                                 f"{needs} for the bottleneck adapters ({type(block).__name__}: "
                                 f"{', '.join(n for n, _ in block.named_children())}); use --method lora")
    if name in LORA_FAMILY and targets is None and structure.lora_parameters():
        if name != "lora":
            raise UsageError(f"--method {name} on {case.model} ({structure.model_type}): its experts are fused 3-D "
                             f"weights, which peft adapts only with plain LoRA (target_parameters); use --method lora, "
                             f"or --target-modules {','.join(structure.lora_modules())} to leave the experts out")
        if case.method.dropout:
            case = dataclasses.replace(case, method=dataclasses.replace(case.method, dropout=0.0))
    return case


def _check_host_memory(case: Case, config) -> None:
    """Refuse a CPU case that would not fit in this machine's RAM (a 7B model on a laptop), up front.
    A rough upper bound: weights, their gradients and AdamW moments if every parameter trains (else a
    quarter more for adapters), and activations (34 bytes per token and hidden unit per layer, plus
    eager attention's scores), per Korthikanti et al. 2022."""
    import psutil

    params = zoo.count_parameters(config)
    size = TORCH_DTYPES[case.dtype].itemsize
    weights = params * size * (4 if case.method.name == "full" else 1.25)
    tokens = case.seq_len * case.batch
    text = zoo.text_config(config)
    layers, hidden = text.num_hidden_layers, text.hidden_size
    heads = getattr(text, "num_attention_heads", 1)
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
    """`wrap(model)`, if given, runs after the method and before the optimizer (FSDP2 sharding: ist_bench/distributed)."""
    config = zoo.load_config(case.model)
    device = backends.device(case.backend)
    prepared = None
    if case.quant == "none":
        model = zoo.build_model(config, dtype=TORCH_DTYPES[case.dtype], device=device, seed=case.seed, attn=case.attn)
    else:
        model = quant.build_quantized(config, quant=case.quant, double_quant=case.double_quant,
                                      compute_dtype=case.quant_compute_dtype, dtype=TORCH_DTYPES[case.dtype], device=device,
                                      seed=case.seed, attn=case.attn)
        prepared = quant.prepare(model, case.grad_checkpointing)
    # the structure as found on meta (the forward's call order is traced there), the same on every device
    model._ist_structure = structure_of(case.model, case.attn)
    n_params = sum(_numel(p) for p in model.parameters())
    # the base model's weights as they lie in memory (a quantized base: packed weights and their state)
    base_weights = storage_bytes([*model.parameters(), *quant.state_tensors(model)])
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
        if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
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
    batches = TokenBatches(case.seq_len, zoo.text_config(config).vocab_size, data=case.data, tokenizer=case.tokenizer, batch=case.batch,
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
        "base_weights": base_weights,
        "trainable_params": sum(p.numel() for p in trainable if p.requires_grad or not policy.freezes_outside),
        "trainable_params_per_layer": sum(p.numel() for p in gate.blocks[0]),
        # what trains outside the blocks whatever the draw (LISA with full: embeddings, final norm, head)
        "trainable_outside_params": sum(p.numel() for p in trainable if p.requires_grad and id(p) not in
                                        {id(q) for block in gate.blocks for q in block}),
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
            "structure": describe(model._ist_structure if hasattr(model, "_ist_structure")
                                  else structure_of(case.model, case.attn)),
        },
        "selection": {"policy": policy.describe(), "n_active": policy.n_active},
    }
    if info["settings"]["structure"]["moe"]:   # grouped_mm: every tensor's shape is routing-free (docs/measurement.md)
        inner = getattr(model, "get_base_model", lambda: model)()
        info["settings"]["experts_implementation"] = getattr(inner.config, "_experts_implementation", None)
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
