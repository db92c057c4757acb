"""RST, random sparse tuning: N_u uniformly random layers, re-drawn every step.

The IST paper's ablation baseline (4 random layers: 67.1 avg; 8: 75.8 on LLaMA-7B).
"""

from __future__ import annotations

from dataclasses import dataclass

from ist_bench.selection.base import SelectionPolicy, count, fraction, rng


@dataclass
class RSTSettings:
    layers: float = 0.25   # N_u as a fraction of L

    def check(self, policy: str) -> None:
        fraction(policy, "layers", self.layers)


class RST(SelectionPolicy):
    name = "rst"
    description = "random sparse tuning: N_u = layers x L random layers, re-drawn every step"
    Settings = RSTSettings

    @property
    def n_active(self) -> int:
        return count(self.settings.layers, self.n_layers)

    def select(self, step: int) -> list[int]:
        return sorted(rng(self.seed, step).choice(self.n_layers, size=self.n_active, replace=False).tolist())
