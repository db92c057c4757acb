"""Full fine-tuning: every parameter trains (LISA's setting when paired with `--select lisa`)."""

from __future__ import annotations

from torch import nn

from ist_bench.methods.base import Method


class Full(Method):
    name = "full"
    description = "full fine-tuning: every parameter trains"
    peft = False

    def apply(self, model: nn.Module, spec) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
