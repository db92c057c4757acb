"""From a config to a model: transformers' config class, the model with random weights on any device
(meta: nothing allocated), its parameter count, and where its blocks and projections are."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ist_bench import schema
from ist_bench.errors import UsageError, choice_error
from ist_bench.zoo import POSITION_KEYS, names, raw_config


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its blocks and the projections the paper adapts.

    Module names are suffixes inside one transformer block. `lora` follows the paper
    (q, k, v, up, down); `gate` is None for MLPs without a gate.
    """

    layers: str
    lora: tuple[str, ...]
    up: str
    down: str
    gate: str | None = None


_LLAMA = Family("model.layers", ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"),
                up="mlp.up_proj", down="mlp.down_proj", gate="mlp.gate_proj")
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    # Phi-3 fuses q,k,v into qkv_proj and gate,up into gate_up_proj: the paper's placements map onto them
    "phi3": Family("model.layers", ("qkv_proj", "gate_up_proj", "down_proj"), up="mlp.gate_up_proj",
                   down="mlp.down_proj"),
    "gpt2": Family("transformer.h", ("c_attn", "mlp.c_fc", "mlp.c_proj"), up="mlp.c_fc", down="mlp.c_proj"),
    "gptj": Family("transformer.h", ("q_proj", "k_proj", "v_proj", "mlp.fc_in", "mlp.fc_out"),
                   up="mlp.fc_in", down="mlp.fc_out"),
    "opt": Family("model.decoder.layers", ("q_proj", "k_proj", "v_proj", "fc1", "fc2"), up="fc1", down="fc2"),
    "bloom": Family("transformer.h", ("query_key_value", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
                    up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h"),
}


def load_config(name_or_path: str):
    """A transformers config from a zoo name or a path to a local config.json."""
    from transformers import AutoConfig
    from transformers.utils import logging

    raw = raw_config(name_or_path)
    model_type = raw.pop("model_type")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()   # its warnings about odd values would be a second line on stderr
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except Exception as e:  # transformers 5 validates with huggingface_hub's own error types
        why = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"cannot build a config of model_type {model_type!r}: {why[:200]}") from None
    finally:
        logging.set_verbosity(verbosity)
    schema.check_config(config, f"model config {name_or_path}: ")   # sizes in range, heads that divide
    layers = getattr(config, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")
    if layers not in raw and "num_hidden_layers" not in raw:   # transformers would take its class default
        raise UsageError(f"model config {name_or_path} has no {layers} (the number of blocks): its class would "
                         f"default to {getattr(config, 'num_hidden_layers', '?')}; give it")
    return config


def check_attention(config, attn: str, model: str) -> None:
    """An attention implementation the model's transformers class does not offer is one line (transformers
    would raise a paragraph while building it): `--attn sdpa` on Gemma-2 or BLOOM in transformers 5.2x."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if attn == "sdpa" and cls is not None and getattr(cls, "_supports_sdpa", True) is False:
        raise UsageError(f"--attn sdpa: {model} ({config.model_type}) has no SDPA attention in this transformers "
                         f"({cls.__name__}); use --attn eager")


def max_positions(config) -> int | None:
    """Longest sequence the model's position embeddings allow (None: no limit, e.g. ALiBi)."""
    for key in POSITION_KEYS:
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def family(config) -> Family:
    try:
        return FAMILIES[config.model_type]
    except KeyError:
        raise choice_error("model family", config.model_type, sorted(FAMILIES)) from None


def build_model(config, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                seed: int = 0, attn: str = "eager") -> nn.Module:
    """A causal LM with random weights and no KV cache; eager attention is the paper's setting.

    On the meta device nothing is allocated: shapes and dtypes are real, values absent.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    return model


def locate_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, through any PEFT wrapping.

    Known families are found by their path; any other model by its only ModuleList of
    `num_hidden_layers` same-typed blocks.
    """
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    fam = FAMILIES.get(getattr(config, "model_type", None))
    if fam is not None:
        for name, m in lists:
            if name == fam.layers or name.endswith("." + fam.layers):
                return m
    blocks = [m for _, m in lists
              if (n_layers is None or len(m) == n_layers) and len({type(c) for c in m}) == 1]
    if len(blocks) == 1:
        return blocks[0]
    raise UsageError(
        f"cannot locate the transformer blocks of {type(model).__name__}: "
        f"{len(blocks)} candidate ModuleLists of {n_layers} layers; known families: {', '.join(sorted(FAMILIES))}"
    )


def count_parameters(config) -> int:
    """Parameter count of the model a config describes (built on meta: instant, no memory)."""
    model = build_model(config, device="meta")
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def summarize() -> dict[str, dict]:
    """The contents of zoo/summary.json (each model built on meta). Regenerate it after adding a config:
    `python -c "from ist_bench.zoo import build; build.write_summary()"`."""
    out = {}
    for name in names():
        cfg = load_config(name)
        out[name] = {"family": cfg.model_type, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                     "params": count_parameters(cfg), "positions": max_positions(cfg)}
    return out


def write_summary() -> None:
    import json

    from ist_bench.zoo import SUMMARY
    SUMMARY.write_text(json.dumps(summarize(), indent=1) + "\n")
