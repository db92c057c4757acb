"""ILA-style static selection: learn layer importance in a warm-up window, then freeze a fixed
set of the least important layers for the rest of training.

ILA (Shi et al. 2024) learns a mask gamma over the layers' PEFT updates; the gradient of the
loss with respect to layer i's mask, at gamma = 1 with the update measured from zero, is
<theta_i, grad theta_i> summed over the layer's trainable parameters. Ours accumulates its
magnitude |<theta_i, grad theta_i>| over every step of the warm-up window, in which all layers
train, then freezes the `freeze` fraction with the smallest score (ties: lower layers first)
and keeps that set for good. For LoRA (B starts at zero) the parameters are the update; for
full fine-tuning the score measures the layer's weights, not their change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ist_bench.errors import UsageError
from ist_bench.selection.base import SelectionPolicy, at_least, count


@dataclass
class ILASettings:
    warmup: int = 50       # steps of training every layer while importance is learned
    freeze: float = 0.25   # fraction of layers frozen afterwards (the least important)

    def check(self, policy: str) -> None:
        at_least(policy, "warmup", self.warmup, 1)
        if not 0 < self.freeze < 1:
            raise UsageError(f"--select {policy}: freeze must be in (0, 1), got {self.freeze:g}")


class ILA(SelectionPolicy):
    name = "ila"
    description = "ILA: learn layer importance for `warmup` steps, then freeze the `freeze` least important"
    Settings = ILASettings

    def setup(self) -> None:
        self.importance = np.zeros(self.n_layers)
        self.kept: list[int] | None = None

    @property
    def n_active(self) -> int:
        return self.n_layers - min(self.n_layers - 1, count(self.settings.freeze, self.n_layers))

    def worst_cases(self) -> list[list[int] | None]:
        return [None]   # every run starts with the warm-up (at least one step), where every layer trains

    def typical_weights(self):
        """None: typical is the steady (warm-up) step. After the warm-up ILA's draw is fixed by what
        it learned, which sim cannot know; the steady step is the only draw-free figure."""
        return None

    def possible_draws(self, limit: int = 64) -> list[list[int] | None]:
        return [None, *super().possible_draws(limit - 1)]   # the warm-up trains every layer

    def select(self, step: int) -> list[int] | None:
        if step < self.settings.warmup:
            return None
        if self.kept is None:
            frozen = np.argsort(self.importance, kind="stable")[: self.n_layers - self.n_active]
            self.kept = sorted(set(range(self.n_layers)) - set(frozen.tolist()))
        return self.kept

    def after_backward(self, step: int) -> None:
        if step >= self.settings.warmup:
            return
        import torch

        with torch.no_grad():
            sums = [sum((torch.dot(p.detach().reshape(-1), p.grad.reshape(-1)).float()
                         for p in params if p.grad is not None), torch.zeros(()))
                    for params in self.gate.blocks]
        if any(isinstance(s, torch.Tensor) and s.is_meta for s in sums):
            return  # sim: gradients have no values
        self.importance += np.abs([float(s) for s in sums])

    def state_dict(self) -> dict:
        return {"importance": self.importance.tolist(), "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state, {"importance": self.n_layers})
        if state.get("kept") is not None:
            self.check_draw(state["kept"])
        self.importance, self.kept = np.array(state["importance"], dtype=float), state.get("kept")

    def record(self) -> dict:
        return {"importance": self.importance.round(6).tolist()}
