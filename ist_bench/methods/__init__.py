"""Methods decide *what inside a layer* is trainable (selection policies decide *which layers*).

`apply_method(model, spec)` returns the model to train (a PeftModel for the peft methods)
with exactly the method's parameters requiring grad. Paper defaults: LoRA r=32, alpha=64,
dropout 0.05 on q,k,v,up,down; Series/Parallel bottleneck 256 on the MLP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ist_bench.errors import UsageError, choice_error
from ist_bench.methods import bottleneck, peft_methods

METHODS = {
    "full": "full fine-tuning: every parameter trains",
    "lora": "LoRA (peft) on q,k,v,up,down",
    "dora": "DoRA (peft, use_dora=True) on q,k,v,up,down",
    "adalora": "AdaLoRA (peft) on q,k,v,up,down, with its rank allocation after each step",
    "series": "Series bottleneck adapter around the MLP's up (input) and down (output) projections",
    "parallel": "Parallel bottleneck adapter beside the MLP's up and gate projections",
}


@dataclass
class MethodSpec:
    name: str = "lora"
    r: int = 32             # LoRA/DoRA rank; AdaLoRA's initial rank is `adalora_init_r`
    alpha: int = 64
    dropout: float = 0.05
    bottleneck: int = 256
    adalora_init_r: int = 12
    adalora_target_r: int = 8
    total_steps: int = 1    # AdaLoRA's schedule needs it

    def __post_init__(self):
        if self.name not in METHODS:
            raise choice_error("method", self.name, list(METHODS))
        for key in ("r", "bottleneck", "adalora_init_r", "adalora_target_r"):
            if getattr(self, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")

    def settings(self) -> dict:
        """The knobs that matter for this method (recorded in each result)."""
        keys = {"full": [], "lora": ["r", "alpha", "dropout"], "dora": ["r", "alpha", "dropout"],
                "adalora": ["adalora_init_r", "adalora_target_r", "alpha", "dropout", "total_steps"],
                "series": ["bottleneck"], "parallel": ["bottleneck"]}[self.name]
        d = asdict(self)
        return {"name": self.name, **{k: d[k] for k in keys}}


def apply_method(model: nn.Module, spec: MethodSpec) -> nn.Module:
    if spec.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if spec.name in ("lora", "dora"):
        return peft_methods.lora(model, spec.r, spec.alpha, spec.dropout, use_dora=spec.name == "dora")
    if spec.name == "adalora":
        return peft_methods.adalora(model, spec.adalora_init_r, spec.adalora_target_r, spec.alpha,
                                    spec.dropout, spec.total_steps)
    return getattr(bottleneck, spec.name)(model, spec.bottleneck)


def after_optimizer_step(model: nn.Module, spec: MethodSpec, step: int) -> None:
    """Per-step work a method needs besides the optimizer (AdaLoRA's budget allocation)."""
    if spec.name == "adalora":
        model.base_model.update_and_allocate(step)


def method_state(model: nn.Module, spec: MethodSpec) -> list[torch.Tensor]:
    """Tensors a method keeps across steps outside the optimizer (counted as `method_state`)."""
    return peft_methods.adalora_state(model) if spec.name == "adalora" else []


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
