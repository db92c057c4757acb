"""Full fine-tuning: every parameter trains (LISA's setting when paired with `--select lisa`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ist_bench.methods.base import Method

if TYPE_CHECKING:
    from torch import nn


class Full(Method):
    name = "full"
    description = "full fine-tuning: every parameter trains"
    peft = False

    def apply(self, model: nn.Module, spec) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
