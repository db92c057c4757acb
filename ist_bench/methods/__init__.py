"""Methods decide *what inside a layer* is trainable (selection policies decide *which layers*).

Each method is one small class (base.py) registered here by name: full.py, lora.py (peft's
LoRA, DoRA, AdaLoRA), bottleneck.py (our Series and Parallel adapters). `apply_method(model,
spec)` returns the model to train (a PeftModel for the peft methods) with exactly the
method's parameters requiring grad. Paper defaults: LoRA r=32, alpha=64, dropout 0.05 on
q,k,v,up,down; Series/Parallel bottleneck 256 on the MLP.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ist_bench.errors import UsageError, choice_error
from ist_bench.methods.base import Method
from ist_bench.methods.bottleneck import Parallel, Series
from ist_bench.methods.full import Full
from ist_bench.methods.lora import AdaLora, Dora, Lora

if TYPE_CHECKING:
    import torch
    from torch import nn

METHODS: dict[str, Method] = {m.name: m for m in (Full(), Lora(), Dora(), AdaLora(), Series(), Parallel())}


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
    target_modules: str | None = None   # LoRA family: peft's target_modules (comma-separated names, or all-linear);
                                        # None: the paper's placement, found by zoo/structure.py

    def __post_init__(self):
        if self.name not in METHODS:
            raise choice_error("method", self.name, list(METHODS))
        for key in ("r", "bottleneck", "adalora_init_r", "adalora_target_r"):
            if getattr(self, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            names = [t.strip() for t in str(self.target_modules).split(",")]
            if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,80}", t) for t in names) or len(names) > 64:
                raise UsageError(f"--target-modules takes comma-separated module names (q_proj,v_proj) or all-linear, "
                                 f"got {str(self.target_modules)[:80]!r}")
            self.target_modules = ",".join(names)

    @property
    def method(self) -> Method:
        return METHODS[self.name]

    def settings(self) -> dict:
        """The knobs that matter for this method (recorded in each result)."""
        d = asdict(self)
        return {"name": self.name, **{k: d[k] for k in self.method.knobs if k != "target_modules" or d[k] is not None}}


def apply_method(model: nn.Module, spec: MethodSpec) -> nn.Module:
    return spec.method.apply(model, spec)


def after_optimizer_step(model: nn.Module, spec: MethodSpec, step: int) -> None:
    spec.method.after_optimizer_step(model, step)


def fill_method_state(model: nn.Module, spec: MethodSpec) -> None:
    """Create the state a method keeps across steps, as it exists after its first step."""
    spec.method.fill_state(model)


def method_state(model: nn.Module, spec: MethodSpec) -> list[torch.Tensor]:
    return spec.method.state(model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def scaled_adapters(blocks: Iterable[nn.Module], factor: float) -> Iterator[int]:
    """Scale the PEFT output of every adapter inside `blocks` by `factor` (IST's suppression:
    a layer's output becomes m(x) + factor * a(x)); restore the exact values on exit, also
    when the body raises. Yields how many adapter modules were scaled."""
    from ist_bench.methods import bottleneck_layer, lora

    _SCALERS = (lora.scale_output, bottleneck_layer.scale_output)
    undo = []
    try:
        for block in blocks:
            for module in block.modules():
                for scaler in _SCALERS:
                    restore = scaler(module, factor)
                    if restore is not None:
                        undo.append(restore)
        yield len(undo)
    finally:
        for restore in reversed(undo):
            restore()


def has_adapters(block: nn.Module) -> bool:
    """Whether a block holds a module whose PEFT output can be scaled."""
    with scaled_adapters([block], 1.0) as n:
        return n > 0
