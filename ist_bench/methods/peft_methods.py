"""LoRA, DoRA and AdaLoRA through peft's current API (paper defaults from IST.md)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ist_bench.zoo import family


def _targets(model: nn.Module) -> list[str]:
    return list(family(model.config).lora)


def _fan_in_fan_out(model: nn.Module) -> bool:
    # GPT-2 stores its projections as Conv1D (weight in x out); peft must be told.
    return model.config.model_type == "gpt2"


def lora(model: nn.Module, r: int, alpha: int, dropout: float, use_dora: bool = False) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_targets(model),
                        fan_in_fan_out=_fan_in_fan_out(model), use_dora=use_dora, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def adalora(model: nn.Module, init_r: int, target_r: int, alpha: int, dropout: float, total_step: int) -> nn.Module:
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(init_r=init_r, target_r=target_r, lora_alpha=alpha, lora_dropout=dropout,
                           target_modules=_targets(model), fan_in_fan_out=_fan_in_fan_out(model),
                           total_step=max(total_step, 1), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    # peft 0.21 re-wraps `ranknum` (a constant: the current rank) in a fresh nn.Parameter when it
    # casts it to the base layer's dtype, which makes it trainable; AdamW would then move it.
    for name, p in peft_model.named_parameters():
        if ".ranknum." in name:
            p.requires_grad_(False)
    allocator = peft_model.base_model.rankallocator
    allocator.update_ipt = functools.partial(_update_ipt_skipping_frozen, allocator)
    if next(peft_model.parameters()).is_meta:
        # Masking the least important singular values reads scores (`.item()`), which meta
        # tensors do not have. It works in place on lora_E with small temporaries, so sim skips it.
        allocator.mask_to_budget = lambda model, budget: None
    return peft_model


def _update_ipt_skipping_frozen(allocator, model: nn.Module) -> None:
    """peft's RankAllocator.update_ipt, but a layer frozen this step (grad None) keeps its scores.

    peft multiplies `p * p.grad` unguarded, which raises once a selection policy has
    frozen layers. Frozen layers get no new evidence, so their EMAs are left as they are.
    """
    for n, p in model.named_parameters():
        if "lora_" not in n or allocator.adapter_name not in n:
            continue
        if n not in allocator.ipt:
            allocator.ipt[n] = torch.zeros_like(p)
            allocator.exp_avg_ipt[n] = torch.zeros_like(p)
            allocator.exp_avg_unc[n] = torch.zeros_like(p)
        if p.grad is None:
            continue
        with torch.no_grad():
            allocator.ipt[n] = (p * p.grad).abs()
            allocator.exp_avg_ipt[n] = allocator.beta1 * allocator.exp_avg_ipt[n] + (1 - allocator.beta1) * allocator.ipt[n]
            allocator.exp_avg_unc[n] = (allocator.beta2 * allocator.exp_avg_unc[n]
                                        + (1 - allocator.beta2) * (allocator.ipt[n] - allocator.exp_avg_ipt[n]).abs())


def adalora_state(model: nn.Module) -> list[torch.Tensor]:
    """Tensors AdaLoRA keeps between steps besides the optimizer's (importance EMAs)."""
    allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
    if allocator is None:
        return []
    return [t for d in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in d.values()]
