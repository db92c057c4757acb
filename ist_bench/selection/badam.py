"""BAdam (Luo et al., NeurIPS 2024; github.com/Ledzy/BAdam): block coordinate descent with Adam. One block
(a transformer layer) trains for `interval` steps, then the next: in ascending or descending order, or a
random order per pass (the public code's `switch_mode`); only the active block holds optimizer state —
switching drops the previous block's (`optimizer_state` is always `reset` here). The embeddings, final norm
and LM head stay frozen (the public code's default: `include_embedding`/`include_lm_head` off), so under
`--method full` only the active layer trains. Not modelled: BAdam keeps the active block's parameters in
fp32 for the update (a bf16 model's active layer is upcast); ist-bench's step trains them in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from ist_bench.errors import choice_error
from ist_bench.selection.base import SelectionPolicy, at_least
from ist_bench.selection.lift import one_at_a_time

ORDERS = ("ascending", "descending", "random")


@dataclass
class BAdamSettings:
    order: str = "random"    # switch_mode: ascending, descending, random (a new permutation every pass)
    interval: int = 50       # switch_block_every: steps per block (LLaMA-Factory's default)

    def check(self, policy: str) -> None:
        if self.order not in ORDERS:
            raise choice_error(f"--select {policy} order", self.order, ORDERS)
        at_least(policy, "interval", self.interval, 1)


class BAdam(SelectionPolicy):
    name = "badam"
    description = "BAdam: one block at a time for `interval` steps, only its optimizer state held; head/embeddings frozen"
    Settings = BAdamSettings
    freezes_outside = True
    optimizer_state_rule = "reset"

    @property
    def n_active(self) -> int:
        return 1

    def select(self, step: int) -> list[int]:
        order = {"ascending": "up", "descending": "down"}.get(self.settings.order, "random")
        return one_at_a_time(step, self.settings.interval, order, self.n_layers, self.seed)
