"""Quantized bases (QLoRA) and bitsandbytes' optimizers, the way the standard stack builds them.

A quantized case (`--quant nf4|fp4|int8`) is built as transformers' bitsandbytes quantizer builds a
model: the model is created with its parameters on the meta device (buffers such as RoPE's on the
real one), `transformers.integrations.replace_with_bnb_linear` swaps every `nn.Linear` except the
output head for `bnb.nn.Linear4bit` / `bnb.nn.Linear8bitLt` (the settings of a
`BitsAndBytesConfig`), and each weight is materialised with random values and quantized by
bitsandbytes itself on `.to(device)` — one layer at a time, so a 70B base never exists in bf16.
On sim the same bitsandbytes code quantizes on the meta device (its ops have fake kernels): the
packed storage and every quantization-state tensor get their real shapes and dtypes.
Then peft's `prepare_model_for_kbit_training` runs, with gradient checkpointing as the case asks
(the Table 1 setting keeps it off); what it did is recorded in the row (`prepared`).

Quantization-state tensors (absmax, code tables, the double-quant offset, int8's SCB) are neither
parameters nor buffers: `state_tensors` names them so the meter counts them as weights.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import nn

from ist_bench.errors import UsageError
from ist_bench.runner.case import BNB_OPTIMS, BNB_PIP, QUANT_METHODS  # noqa: F401  (the case's names)

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INT8_THRESHOLD = 0.0


def require_bnb(what: str):
    """bitsandbytes, or the one-line error that names the pip command."""
    from ist_bench.process import use_bitsandbytes

    try:
        return use_bitsandbytes()
    except ImportError:
        raise UsageError(f"{what} needs bitsandbytes, which is not installed: {BNB_PIP}") from None


def bnb_config(quant: str, double_quant: bool, compute_dtype: str):
    """The transformers BitsAndBytesConfig of a case. int8 runs without LLM.int8()'s outlier decomposition
    (threshold 0; transformers' default is 6.0): which columns exceed the threshold depends on the values
    (docs/quant.md), so with it no byte would follow from shapes."""
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute_dtype])


def build_quantized(config, *, quant: str, double_quant: bool, compute_dtype: str, dtype: torch.dtype,
                    device: torch.device, seed: int, attn: str) -> nn.Module:
    """A causal LM with random weights whose linear layers (not the head) are bitsandbytes-quantized."""
    bnb = require_bnb(f"--quant {quant}")
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    torch.manual_seed(seed)
    config.use_cache = False
    qconfig = bnb_config(quant, double_quant, compute_dtype)
    with torch.device(device), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    replace_with_bnb_linear(model, modules_to_not_convert=get_keys_to_not_convert(model), quantization_config=qconfig)
    _keep_code_tables_off_meta(bnb)
    # MatMul8bitLt logs "inputs will be cast from ... to float16" on every call
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    std = getattr(config, "initializer_range", 0.02) or 0.02
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if not p.is_meta or device.type == "meta" and not isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
                continue
            w = _random(p.shape, dtype, device, std if p.dim() > 1 else None, gen)
            if name == "weight" and isinstance(module, bnb.nn.Linear4bit):
                param = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double_quant, quant_type=quant,
                                          quant_storage=torch.uint8, module=module)
                module.weight = param._quantize(device)    # what Params4bit.to(device) does off meta
            elif name == "weight" and isinstance(module, bnb.nn.Linear8bitLt):
                module.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)._quantize(device)
            else:
                setattr(module, name, nn.Parameter(w, requires_grad=p.requires_grad))
    # what transformers' bnb quantizer sets after loading (peft reads these flags)
    model.is_loaded_in_4bit = quant in ("nf4", "fp4")
    model.is_loaded_in_8bit = quant == "int8"
    model.is_quantized = True
    model.quantization_method = "bitsandbytes"
    model.config.quantization_config = qconfig
    return model


def _random(shape, dtype, device, std, gen) -> torch.Tensor:
    """Random values (matrices: normal(0, std); vectors: ones, as norms start) — values do not move bytes."""
    if device.type == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if std is None:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0, std, generator=gen if device.type == "cpu" else None)


def _keep_code_tables_off_meta(bnb) -> None:
    """bitsandbytes caches its dynamic code table on the device of the first call: a sim run would
    leave a meta table behind that breaks every later real quantization in the process."""
    table = bnb.functional.name2qmap.get("dynamic")
    if table is None or table.is_meta:
        bnb.functional.name2qmap["dynamic"] = bnb.functional.create_dynamic_map().to("cpu")


def prepare(model: nn.Module, grad_checkpointing: bool) -> dict:
    """peft's prepare_model_for_kbit_training, with checkpointing only when the case asks; returns what it did."""
    from peft import prepare_model_for_kbit_training

    before = {n: p.dtype for n, p in model.named_parameters()}
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing,
                                    gradient_checkpointing_kwargs={"use_reentrant": False})
    upcast = [n for n, p in model.named_parameters() if p.dtype != before[n]]
    return {"function": "peft.prepare_model_for_kbit_training",
            "use_gradient_checkpointing": grad_checkpointing,
            "upcast_to_fp32": _summarize(upcast), "n_upcast": len(upcast),
            "upcast_params": sum(model.get_parameter(n).numel() for n in upcast)}


def _summarize(names: list[str]) -> list[str]:
    """Parameter names with layer numbers folded (`model.layers.*.input_layernorm.weight`)."""
    import re

    return sorted({re.sub(r"\.\d+\.", ".*.", n) for n in names})


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The quantization-state tensors of every bnb layer (not parameters or buffers)."""
    out = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, qs.code, getattr(qs, "offset", None)]
            if qs.state2 is not None:
                out += [qs.state2.absmax, qs.state2.code]
        scb = getattr(w, "SCB", None)
        if scb is not None:
            out.append(scb)
    return [t for t in out if isinstance(t, torch.Tensor)]


def describe(model: nn.Module, case, prepared: dict | None) -> dict:
    """What the row records of a quantized base: the format, its bytes, and what peft's preparation did."""
    from ist_bench.measure.tracker import storage_bytes

    bnb = importlib.import_module("bitsandbytes")
    layers = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    four = case.quant != "int8"
    out = {"quant": case.quant, "library": f"bitsandbytes {bnb.__version__}", "layers": len(layers),
           "packed_bytes": storage_bytes(m.weight for m in layers), "state_bytes": storage_bytes(state_tensors(model))}
    if four:
        out |= {"double_quant": case.double_quant, "compute_dtype": case.quant_compute_dtype,
                "blocksize": layers[0].weight.blocksize if layers else None}
    else:
        out["int8_threshold"] = layers[0].state.threshold if layers else None
    out["prepared"] = prepared
    return out


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit / PagedAdamW8bit / PagedAdamW32bit (weight decay as torch's AdamW: 0.01)."""
    bnb = require_bnb(f"--optim {name}")
    return getattr(bnb.optim, BNB_OPTIMS[name])(params, lr=lr, weight_decay=0.01)
