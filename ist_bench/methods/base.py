"""The method interface: *what inside a layer* trains. One small subclass per method, registered by name.

A method module is light to import (torch and peft are imported where they are used), so its name,
description and knobs answer `--help`, `methods` and a bad input before any heavy import.

A method (registered in methods/__init__.py) makes a model trainable (`apply`), may need work after each optimizer step
(AdaLoRA's rank allocation), and may keep tensors outside the optimizer (counted as
`method_state`). How a method's adapter output is scaled for IST's suppression lives
next to its adapter module (`scale_output` in lora.py and bottleneck.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:   # methods are light to import: a case is validated before torch is imported
    import torch
    from torch import nn


class Method:
    name: ClassVar[str]
    description: ClassVar[str]
    knobs: ClassVar[tuple[str, ...]] = ()   # MethodSpec fields this method reads (recorded in results)
    peft: ClassVar[bool] = True             # it adds modules whose output IST can scale

    def apply(self, model: nn.Module, spec) -> nn.Module:
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Per-step work besides the optimizer's (e.g. AdaLoRA's budget allocation)."""

    def fill_state(self, model: nn.Module) -> None:
        """Create `state` as it exists after the first step (the steady step measures a long run)."""

    def state(self, model: nn.Module) -> list[torch.Tensor]:
        """Tensors kept across steps outside the optimizer."""
        return []

