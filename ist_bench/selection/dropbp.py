"""DropBP (Woo et al., NeurIPS 2024; github.com/WooSunghyeon/dropbp): layers dropped in the *backward pass
only*. Every block runs its forward; a dropped block runs it without recording the graph, and its output
passes the gradient straight through the residual path (out = x + f(x), with f's backward skipped): it saves
no activations, computes no backward and trains nothing this step. Each block is dropped with probability
`rate` per step (the paper allocates per-layer rates from each layer's sensitivity under a FLOPs budget;
on identical blocks with random weights every sensitivity is the same, so every rate is the budget's: `rate`).
The public code drops the attention and the MLP branches separately; here a block is dropped whole.

Worst draw: no block dropped (a possible step, the steady one). *typical* is not modelled by the lowest
trained layer (a step's figures depend on every kept block): it is reported as steady, an upper bound.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ist_bench.selection.base import SelectionPolicy, at_least, at_most, rng


@dataclass
class DropBPSettings:
    rate: float = 0.5        # P(a block's backward is dropped) per step: the paper's target drop rate

    def check(self, policy: str) -> None:
        at_least(policy, "rate", self.rate, 0.0)
        at_most(policy, "rate", self.rate, 0.99)   # every block dropped: no training step at all


class DropBP(SelectionPolicy):
    name = "dropbp"
    description = "DropBP: each block's backward dropped with probability `rate` (forward runs, no graph)"
    Settings = DropBPSettings
    time_by = "count"      # a step's time follows how many blocks it keeps (ist_bench/predict), not the lowest

    def setup(self) -> None:
        self._hooks = []
        for i, block in enumerate(self.gate.modules):
            self._hooks.append(block.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self._hooks.append(block.register_forward_hook(self._leave(i), with_kwargs=True))
        self._saved: dict[int, tuple] = {}

    def _dropped(self, i: int, module) -> bool:
        import torch

        active = self.gate.active
        return module.training and torch.is_grad_enabled() and active is not None and i not in active

    def _enter(self, i: int):
        import torch

        def hook(module, args, kwargs):
            if self._dropped(i, module):
                x = args[0] if args else kwargs.get("hidden_states")
                self._saved[i] = (x, torch.is_grad_enabled())
                torch.set_grad_enabled(False)
        return hook

    def _leave(self, i: int):
        import torch

        def hook(module, args, kwargs, out):
            if i not in self._saved:
                return None
            x, grad = self._saved.pop(i)
            torch.set_grad_enabled(grad)
            h = out[0] if isinstance(out, tuple) else out
            h = h + (x - x.detach())          # the value f(x) gave; the gradient passes x through unchanged
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return hook

    def select(self, step: int) -> list[int]:
        kept = rng(self.seed, step).random(self.n_layers) >= self.settings.rate
        if not kept.any():                    # a step trains something: keep one block
            kept[int(rng(self.seed, step, 1).integers(self.n_layers))] = True
        return np.flatnonzero(kept).tolist()

    def worst_cases(self) -> list[list[int] | None]:
        return [None]                         # nothing dropped: every block saves and backpropagates

    def possible_draws(self, limit: int = 64) -> list[list[int] | None]:
        n = self.n_layers
        draws = [list(c) for r in range(1, n + 1) for c in itertools.combinations(range(n), r)]
        return draws[:limit]

    def typical_weights(self) -> None:
        return None
