"""HiFT (Liu et al., EMNLP 2024; github.com/misonsky/HiFT): the layers in groups of `group` consecutive
blocks, one group updated per step, bottom-up, top-down or in a random order per pass; the optimizer state of
the groups not being updated lives on the CPU, so the GPU holds the active group's only (`optimizer_state`
reset on the GPU; the CPU copy is host memory, not counted). Its delayed learning-rate update (the schedule
moves once every group has been updated) changes no memory or time and is the Trainer's business.
Not modelled: HiFT's cycle also visits the embedding and the LM head as groups of their own; here they stay
frozen (a step training the embeddings would backpropagate through every block: heavier than any here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ist_bench.errors import choice_error
from ist_bench.selection.base import SelectionPolicy, at_least, rng

ORDERS = ("bottom-up", "top-down", "random")


@dataclass
class HiFTSettings:
    group: int = 1            # m: blocks per group (the paper's k groups = layers / m)
    order: str = "bottom-up"  # bottom-up, top-down, random (a new permutation of groups every pass)

    def check(self, policy: str) -> None:
        at_least(policy, "group", self.group, 1)
        if self.order not in ORDERS:
            raise choice_error(f"--select {policy} order", self.order, ORDERS)


class HiFT(SelectionPolicy):
    name = "hift"
    description = "HiFT: groups of `group` blocks, one group per step (bottom-up, top-down, random)"
    Settings = HiFTSettings
    freezes_outside = True
    optimizer_state_rule = "reset"

    @property
    def n_groups(self) -> int:
        return math.ceil(self.n_layers / min(self.settings.group, self.n_layers))

    def group_of(self, g: int) -> list[int]:
        m = min(self.settings.group, self.n_layers)
        return list(range(g * m, min((g + 1) * m, self.n_layers)))

    @property
    def n_active(self) -> int:
        return min(self.settings.group, self.n_layers)

    def select(self, step: int) -> list[int]:
        passes, position = divmod(step, self.n_groups)
        if self.settings.order == "bottom-up":
            return self.group_of(position)
        if self.settings.order == "top-down":
            return self.group_of(self.n_groups - 1 - position)
        return self.group_of(int(rng(self.seed, passes).permutation(self.n_groups)[position]))

    def worst_cases(self) -> list[list[int] | None]:
        """Only whole groups are ever drawn: the lowest (backward reaches every block above it) and the
        top one (with checkpointing the highest is the worst), and the heaviest where groups differ."""
        if self.n_groups == 1:
            return [None]
        groups = [self.group_of(g) for g in range(self.n_groups)]
        out = [groups[0], groups[-1]]
        if self.block_bytes and len(set(self.block_bytes)) > 1:
            heaviest = max(groups, key=lambda g: (sum(self.block_bytes[i] for i in g), g[0]))
            if heaviest not in out:
                out.append(heaviest)
        return out

    def possible_draws(self, limit: int = 64) -> list[list[int] | None]:
        return [self.group_of(g) for g in range(self.n_groups)][:limit] if self.n_groups > 1 else [None]

    def typical_weights(self) -> np.ndarray | None:
        """Each group is updated equally often: P(lowest = the first block of group g) = 1 / groups."""
        if self.n_groups == 1 or self.grad_below:
            return None
        w = np.zeros(self.n_layers)
        for g in range(self.n_groups):
            w[self.group_of(g)[0]] = 1 / self.n_groups
        return w
