"""LIFT (Zhu et al. 2023): one block trains at a time, each for `interval` steps, moving through
the stack front-to-end, end-to-front, or in a random order (a new permutation every pass)."""

from __future__ import annotations

from dataclasses import dataclass

from ist_bench.errors import choice_error
from ist_bench.selection.base import SelectionPolicy, at_least, rng

ORDERS = ("front", "back", "random")


@dataclass
class LIFTSettings:
    order: str = "front"   # front (layer 0 first), back (last layer first), random
    interval: int = 50     # steps per block

    def check(self, policy: str) -> None:
        if self.order not in ORDERS:
            raise choice_error(f"--select {policy} order", self.order, ORDERS)
        at_least(policy, "interval", self.interval, 1)


class LIFT(SelectionPolicy):
    name = "lift"
    description = "LIFT: one block at a time for `interval` steps; order front, back or random"
    Settings = LIFTSettings

    @property
    def n_active(self) -> int:
        return 1

    def select(self, step: int) -> list[int]:
        turn = step // self.settings.interval
        passes, position = divmod(turn, self.n_layers)
        if self.settings.order == "front":
            return [position]
        if self.settings.order == "back":
            return [self.n_layers - 1 - position]
        return [int(rng(self.seed, passes).permutation(self.n_layers)[position])]
