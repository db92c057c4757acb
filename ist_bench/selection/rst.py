"""RST, random sparse tuning: N_u uniformly random layers, re-drawn every step.

The IST paper's ablation baseline (4 random layers: 67.1 avg; 8: 75.8 on LLaMA-7B).
Draws come from `default_rng(seed + step)`, so every data-parallel rank agrees.
"""

from __future__ import annotations

import numpy as np

from ist_bench.selection.base import SelectionPolicy


class RST(SelectionPolicy):
    name = "rst"
    description = "random sparse tuning: N_u = --layers x L random layers, re-drawn every step"

    def select(self, step: int) -> list[int]:
        rng = np.random.default_rng(self.seed + step)
        return sorted(rng.choice(self.n_layers, size=self.n_active, replace=False).tolist())

    def settings(self) -> dict:
        return {"name": self.name, "fraction": self.fraction, "n_active": self.n_active, "seed": self.seed}
