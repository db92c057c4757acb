"""LISA (Pan et al. 2024): gamma uniformly drawn layers train, re-drawn every `interval` steps.

As in LMFlow's and axolotl's implementations: the draw happens at the first step of each
period (step 0 included). With `--method full` (the LISA paper's setting) the embeddings, the
final norm and the LM head are outside the blocks and always train; with a PEFT method only
the drawn layers' adapters train. The IST paper's Table 13 uses gamma = 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from ist_bench.selection.base import SelectionPolicy, at_least, rng


@dataclass
class LISASettings:
    gamma: int = 2        # layers trained at once
    interval: int = 20    # K: steps between re-draws (LMFlow's default)

    def check(self, policy: str) -> None:
        at_least(policy, "gamma", self.gamma, 1)
        at_least(policy, "interval", self.interval, 1)


class LISA(SelectionPolicy):
    name = "lisa"
    description = "LISA: gamma random layers, re-drawn every `interval` steps (embeddings/head train with full)"
    Settings = LISASettings

    @property
    def n_active(self) -> int:
        return min(self.settings.gamma, self.n_layers)

    p = None   # the layers' draw probabilities: uniform (OWS weighs them by outlier ratio)

    def select(self, step: int) -> list[int]:
        period = step // self.settings.interval
        return sorted(rng(self.seed, period).choice(self.n_layers, size=self.n_active, replace=False,
                                                     p=self.p).tolist())
