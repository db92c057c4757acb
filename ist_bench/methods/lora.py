"""LoRA, DoRA and AdaLoRA through peft's current API (paper defaults: docs/measurement.md).

IST's suppression scales a LoRA-family module's output through peft's own per-adapter
`scaling` dict: `scale_layer` multiplies the active adapters' entries, and the exact
entries are put back afterwards (peft's `unscale_layer(None)` would restore AdaLoRA
wrongly, by a factor of r). For DoRA only the low-rank part is scaled: the magnitude
vector still rescales the base weight, so scale 0 is not the base model once the
magnitude has trained.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from ist_bench.errors import UsageError
from ist_bench.methods.base import Method

if TYPE_CHECKING:
    import torch
    from torch import nn


def targets(model: nn.Module, spec) -> dict:
    """peft's target_modules (and target_parameters: fused expert weights) for this model: `--target-modules`
    where given (names, or all-linear), else the paper's placement the structure finds (zoo/structure.py)."""
    from ist_bench.zoo.structure import discover

    s = discover(model)
    if spec.target_modules:
        if spec.target_modules == "all-linear":
            return {"target_modules": "all-linear"}
        return {"target_modules": spec.target_modules.split(",")}
    if not s.lora_modules() and not s.lora_parameters():
        raise UsageError(f"{s.model_type}: no attention projection or MLP linear found for LoRA in its blocks "
                         f"(at {s.layers}); name them with --target-modules (or all-linear)")
    out = {"target_modules": s.lora_modules()}
    if s.lora_parameters():
        out["target_parameters"] = s.lora_parameters()
    return out


def _as_named(spec):
    """peft renames the targets of some MoE families from transformers 4's names to 5's (an adapter trained on
    4 then loads), and refuses an `up_proj` without its `gate_proj` there. The placement ist-bench finds is in
    transformers 5's own names already (a dense or shared MLP's `up_proj` is not an expert's): no renaming."""
    import contextlib
    from unittest import mock

    if spec.target_modules:
        return contextlib.nullcontext()
    return mock.patch("peft.utils.transformers_weight_conversion.convert_peft_config_for_transformers",
                      lambda *args, **kwargs: None)


def _fan_in_fan_out(model: nn.Module) -> bool:
    # GPT-2 stores its projections as Conv1D (weight in x out); peft must be told.
    from ist_bench.zoo.structure import discover

    return discover(model).conv1d


class Lora(Method):
    name = "lora"
    description = "LoRA (peft) on q,k,v,up,down"
    knobs = ("r", "alpha", "dropout", "target_modules")
    use_dora = False

    def apply(self, model: nn.Module, spec) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                            fan_in_fan_out=_fan_in_fan_out(model), use_dora=self.use_dora, task_type="CAUSAL_LM",
                            **targets(model, spec))
        with _as_named(spec):
            return get_peft_model(model, config)


class Dora(Lora):
    name = "dora"
    description = "DoRA (peft, use_dora=True) on q,k,v,up,down"
    use_dora = True


class AdaLora(Method):
    name = "adalora"
    description = "AdaLoRA (peft) on q,k,v,up,down, with its rank allocation after each step"
    knobs = ("adalora_init_r", "adalora_target_r", "alpha", "dropout", "total_steps", "target_modules")

    def apply(self, model: nn.Module, spec) -> nn.Module:
        from peft import AdaLoraConfig, get_peft_model

        config = AdaLoraConfig(init_r=spec.adalora_init_r, target_r=spec.adalora_target_r, lora_alpha=spec.alpha,
                               lora_dropout=spec.dropout, fan_in_fan_out=_fan_in_fan_out(model),
                               total_step=max(spec.total_steps, 1), task_type="CAUSAL_LM", **targets(model, spec))
        with _as_named(spec):
            peft_model = get_peft_model(model, config)
        # peft 0.21 re-wraps `ranknum` (a constant: the current rank) in a fresh nn.Parameter when it
        # casts it to the base layer's dtype, which makes it trainable; AdamW would then move it.
        for name, p in peft_model.named_parameters():
            if ".ranknum." in name:
                p.requires_grad_(False)
        allocator = peft_model.base_model.rankallocator
        allocator.update_ipt = functools.partial(_update_ipt_skipping_frozen, allocator)
        if next(peft_model.parameters()).is_meta:
            # Masking to the budget ranks singular values by score (`.item()`), which meta tensors
            # cannot answer. It works in place on lora_E with small temporaries; a test
            # (test_adalora_budget_masking_changes_no_memory_figure) shows on the CPU that it moves
            # no memory figure, so sim skips it.
            allocator.mask_to_budget = lambda model, budget: None
        return peft_model

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def fill_state(self, model: nn.Module) -> None:
        """AdaLoRA's EMAs (one of each per adapter parameter) as the first step creates them."""
        allocator = model.base_model.rankallocator
        for n, p in model.base_model.model.named_parameters():   # the names update_ipt sees
            if "lora_" in n and allocator.adapter_name in n:
                _ensure_ipt(allocator, n, p)

    def state(self, model: nn.Module) -> list[torch.Tensor]:
        """AdaLoRA's importance EMAs (kept besides the optimizer's state)."""
        allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
        if allocator is None:
            return []
        return [t for d in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in d.values()]


def _update_ipt_skipping_frozen(allocator, model: nn.Module) -> None:
    """peft's RankAllocator.update_ipt, but a layer frozen this step (grad None) keeps its scores.

    peft multiplies `p * p.grad` unguarded, which raises once a selection policy has
    frozen layers. Frozen layers get no new evidence, so their EMAs are left as they are.
    """
    import torch

    for n, p in model.named_parameters():
        if "lora_" not in n or allocator.adapter_name not in n:
            continue
        _ensure_ipt(allocator, n, p)
        if p.grad is None:
            continue
        with torch.no_grad():
            allocator.ipt[n] = (p * p.grad).abs()
            allocator.exp_avg_ipt[n] = allocator.beta1 * allocator.exp_avg_ipt[n] + (1 - allocator.beta1) * allocator.ipt[n]
            allocator.exp_avg_unc[n] = (allocator.beta2 * allocator.exp_avg_unc[n]
                                        + (1 - allocator.beta2) * (allocator.ipt[n] - allocator.exp_avg_ipt[n]).abs())


def _ensure_ipt(allocator, n: str, p: torch.Tensor) -> None:
    import torch

    if n not in allocator.ipt:
        allocator.ipt[n] = torch.zeros_like(p)
        allocator.exp_avg_ipt[n] = torch.zeros_like(p)
        allocator.exp_avg_unc[n] = torch.zeros_like(p)


def scale_output(module: nn.Module, factor: float) -> Callable[[], None] | None:
    """Scale a peft LoRA/DoRA/AdaLoRA layer's adapter output by `factor`; returns the undo."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer):
        return None
    saved = dict(module.scaling)
    module.scale_layer(factor)          # peft's supported path: multiplies the active adapters' entries

    def restore() -> None:
        for adapter, value in saved.items():
            module.scaling[adapter] = value
    return restore
