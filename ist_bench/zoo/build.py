"""From a config to a model: transformers' config class, the model with random weights on any device
(meta: nothing allocated), its parameter count; where its blocks and projections are is zoo/structure.py's."""

from __future__ import annotations

import torch
from torch import nn

from ist_bench import schema
from ist_bench.errors import UsageError
from ist_bench.zoo import POSITION_KEYS, names, raw_config, raw_text


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
    text = text_config(config)
    schema.check_config(text, f"model config {name_or_path}: ")   # sizes in range, heads that divide
    layers = getattr(text, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")
    given = raw_text({**raw, "model_type": model_type})
    # a count under any of its usual names, or a per-layer pattern it follows (LongCat-Flash's num_layers
    # counts pairs of blocks; Nemotron-H's hybrid_override_pattern has a letter per block)
    if not {layers, *LAYER_COUNT_KEYS} & {k for k, v in given.items() if v is not None}:  # else the class default
        where = " or its text_config" if "text_config" in raw else ""
        raise UsageError(f"model config {name_or_path} has no {layers}{where} (the number of blocks): its class "
                         f"would default to {getattr(text, 'num_hidden_layers', '?')}; give it")
    return config


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "layer_types", "layers_block_type",
                    "hybrid_override_pattern", "block_types")


def text_config(config):
    """The language model's config: a multimodal config's `text_config` (its blocks are the ones ist-bench
    adapts and selects; the vision tower is built, frozen, as loading the checkpoint would), else itself."""
    try:
        text = config.get_text_config(decoder=True)
    except (AttributeError, ValueError, TypeError):   # several text configs (an encoder-decoder): no single one
        return config
    return text if getattr(text, "num_hidden_layers", None) else config


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
    config = text_config(config)
    for key in POSITION_KEYS:
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


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
    """The list of transformer blocks, through any PEFT or FSDP wrapping (zoo/structure.py finds it)."""
    from ist_bench.zoo.structure import locate_layers as locate

    return locate(model)


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
        total, active = parameters(cfg)
        text = text_config(cfg)
        out[name] = {"family": cfg.model_type, "layers": text.num_hidden_layers, "hidden": text.hidden_size,
                     "params": total, "positions": max_positions(cfg)}
        if active != total:
            out[name]["active_params"] = active
    return out


def parameters(config) -> tuple[int, int]:
    """(total, active per token) parameters: a mixture of experts uses num_experts_per_tok of its routed
    experts for a token (the fused expert weights' first dimension is the expert)."""
    from ist_bench.zoo.structure import discover

    model = build_model(config, device="meta")
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    s = discover(model)
    k = getattr(text_config(config), "num_experts_per_tok", None)
    idle = 0
    for i, block in enumerate(locate_layers(model)):
        moe = s.kinds[s.kind_of[i]].moe
        if moe is not None and k:
            experts = block.get_submodule(moe.experts)
            for p in experts.parameters(recurse=False):
                if p.dim() == 3:
                    idle += p.numel() * (1 - k / p.shape[0])
    return total, int(total - idle)


def write_summary() -> None:
    import json

    from ist_bench.zoo import SUMMARY
    SUMMARY.write_text(json.dumps(summarize(), indent=1) + "\n")
