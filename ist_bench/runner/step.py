"""The controlled training step, every phase visible (paper Table 1 / Table 13 setting).

Batch 1, `seq_len` tokens, eager attention, no gradient checkpointing, no KV cache.
Meters (memory, time) are told where each phase ends; the loop never knows what they count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from ist_bench.data import TokenBatches, model_inputs
from ist_bench.selection import LayerGate, SelectionPolicy


class Meter(Protocol):
    def mark(self, phase: str, step: int) -> None: ...


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TokenBatches, device: torch.device,
              policy: SelectionPolicy, gate: LayerGate, n_steps: int, meters: Sequence[Meter] = (),
              after_optimizer: Callable[[int], None] = lambda step: None, first_step: int = 0) -> None:
    def mark(phase: str, step: int) -> None:
        for m in meters:
            m.mark(phase, step)

    for step in range(first_step, first_step + n_steps):
        gate.apply(policy.select(step))              # which blocks train this step
        inputs = model_inputs(batches.ids(step), device)
        mark("start", step)
        loss = model(**inputs).loss                  # logits and other outputs are dropped at once
        mark("forward", step)
        loss.backward()
        mark("backward", step)
        optimizer.step()
        after_optimizer(step)                        # e.g. AdaLoRA's rank allocation (needs the grads)
        mark("optimizer", step)
        optimizer.zero_grad(set_to_none=True)
        del loss, inputs
        mark("end", step)
