"""Outlier-weighted sampling (OwLore, Li et al. 2024; github.com/pixeli99/OwLore): LISA's rule — `gamma`
layers train, re-drawn every `interval` steps — with layer l drawn with probability proportional to its outlier
ratio, the share of its weights above `threshold` x the layer's mean magnitude (OwLore follows OWL's layerwise
outlier distribution, which also weighs each input channel by its activation norm: weights only here, no data
pass). On random weights every layer's ratio is the same in expectation, so the draws are LISA's; a real
model's ratios can be given: `probabilities=FILE`, a JSON list of one non-negative number per layer. On sim
(no weight values) the ratios are uniform unless a file gives them. OwLore also projects the sampled layers'
gradients to low rank (GaLore); that part is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ist_bench.errors import UsageError
from ist_bench.selection.base import at_least
from ist_bench.selection.lisa import LISA, LISASettings


@dataclass
class OWSSettings(LISASettings):   # gamma and interval as LISA's
    threshold: float = 7.0      # M: a weight is an outlier above M x its layer's mean |w| (OWL's M)
    probabilities: str = ""     # a JSON file: one non-negative number per layer (a real model's ratios)

    def check(self, policy: str) -> None:
        super().check(policy)
        at_least(policy, "threshold", self.threshold, 1.0)


class OWS(LISA):
    name = "ows"
    description = "OwLore's outlier-weighted sampling: gamma layers drawn by outlier ratio every `interval` steps"
    Settings = OWSSettings

    def setup(self) -> None:
        self.p = self._from_file(self.n_layers) if self.settings.probabilities else self._outlier_ratios()

    def check_layers(self, n_layers: int) -> None:
        if self.settings.probabilities:
            self._from_file(n_layers)

    def _from_file(self, n_layers: int) -> np.ndarray:
        from ist_bench.errors import read_json

        values = read_json(self.settings.probabilities, "--select ows probabilities file")
        ok = isinstance(values, list) and len(values) == n_layers and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values)
        if not ok or not sum(values):
            raise UsageError(f"--select ows: probabilities file {self.settings.probabilities} must hold "
                             f"{n_layers} non-negative numbers (one per layer of this model), not all zero")
        p = np.array(values, dtype=float)
        return p / p.sum()

    def _outlier_ratios(self) -> np.ndarray:
        import torch

        ratios = []
        for block in self.gate.modules:
            weights = [p for p in block.parameters() if p.dim() == 2]
            if not weights or weights[0].is_meta:
                return np.full(self.n_layers, 1 / self.n_layers)
            with torch.no_grad():
                outliers = total = 0
                for w in weights:
                    a = w.detach().abs().float()
                    outliers += int((a > self.settings.threshold * a.mean()).sum())
                    total += a.numel()
            ratios.append(outliers / total)
        p = np.array(ratios, dtype=float)
        return p / p.sum() if p.sum() > 0 else np.full(self.n_layers, 1 / self.n_layers)

    def typical_weights(self) -> np.ndarray | None:
        """P(lowest drawn layer = m) under weighted draws without replacement: exact from the ordered draws
        where they are few (gamma <= 3), else the uniform formula when the probabilities are uniform; a
        long run's mean otherwise is not modelled (None: typical is steady)."""
        k, n = self.n_active, self.n_layers
        if k >= n or self.grad_below:
            return None
        if np.allclose(self.p, 1 / n):
            return super().typical_weights()
        if k > 3:
            return None
        w = np.zeros(n)

        def walk(chosen: tuple, prob: float) -> None:
            if len(chosen) == k:
                w[min(chosen)] += prob
                return
            left = 1 - sum(self.p[i] for i in chosen)
            for i in range(n):
                if i not in chosen and self.p[i] > 0:
                    walk((*chosen, i), prob * self.p[i] / left)
        walk((), 1.0)
        return w

    def state_dict(self) -> dict:
        return {"probabilities": [float(x) for x in self.p]}

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state, {"probabilities": self.n_layers})
        p = np.array(state["probabilities"], dtype=float)
        self.p = p / p.sum()
