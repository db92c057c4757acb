"""The selection-policy interface and the gate that applies a selection to a model.

A policy answers one question per optimizer step: which transformer blocks train now?
The gate turns that answer into `requires_grad` flags on the parameters the *method*
made trainable in those blocks; parameters outside the blocks (a full fine-tune's
embeddings and head, say) keep what the method gave them.
"""

from __future__ import annotations

import math

from torch import nn

from ist_bench.errors import UsageError
from ist_bench.zoo import locate_layers


class SelectionPolicy:
    """Base class: subclasses set `name` and implement `select`."""

    name = "none"
    description = "no selection: every layer the method adapted trains at every step"

    def __init__(self, n_layers: int, fraction: float = 0.25, seed: int = 0):
        if not 0 < fraction <= 1:
            raise UsageError(f"--layers must be a fraction in (0, 1], got {fraction}")
        self.n_layers, self.fraction, self.seed = n_layers, fraction, seed

    @property
    def n_active(self) -> int:
        """Layers trained per step: fraction x L rounded half up (30 x 25% -> 8), at least one."""
        return max(1, math.floor(self.fraction * self.n_layers + 0.5))

    def select(self, step: int) -> list[int] | None:
        """Indices of the blocks that train at optimizer step `step`; None means all."""
        return None

    def settings(self) -> dict:
        return {"name": self.name}


class LayerGate:
    """Freezes and unfreezes blocks between optimizer steps.

    Build it after the method is applied *and after the optimizer exists* (an optimizer
    built over frozen parameters would never train them).
    """

    def __init__(self, model: nn.Module):
        self.blocks = [[p for p in block.parameters() if p.requires_grad] for block in locate_layers(model)]
        self.active: list[int] | None = None

    def apply(self, active: list[int] | None) -> None:
        self.active = None if active is None else sorted(active)
        on = set(range(len(self.blocks))) if active is None else set(active)
        for i, params in enumerate(self.blocks):
            for p in params:
                p.requires_grad_(i in on)
                if i not in on:
                    p.grad = None  # a frozen layer must not be touched by the optimizer
