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
        order = {"front": "up", "back": "down"}.get(self.settings.order, "random")
        return one_at_a_time(step, self.settings.interval, order, self.n_layers, self.seed)


def one_at_a_time(step: int, interval: int, order: str, n_layers: int, seed: int) -> list[int]:
    """The block of step `step` when each block trains `interval` steps in turn: up (0 first), down (the last
    first), or random (a new permutation every pass). LIFT's and BAdam's rule."""
    passes, position = divmod(step // interval, n_layers)
    if order == "up":
        return [position]
    if order == "down":
        return [n_layers - 1 - position]
    return [int(rng(seed, passes).permutation(n_layers)[position])]
