"""The controlled training step, every phase visible (paper Table 1 / Table 13 setting).

Batch 1, `seq_len` tokens, eager attention, no gradient checkpointing, no KV cache.
Meters (memory, time) are told where each phase ends; the loop never knows what they count.
The selection policy runs first: its importance round, if one is due, is a phase of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import nn

from ist_bench.data import TokenBatches, model_inputs, needs_mask
from ist_bench.selection import SelectionPolicy


class Meter(Protocol):
    def mark(self, phase: str, step: int) -> None: ...


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TokenBatches, device: torch.device,
              policy: SelectionPolicy, steps: Iterable[int], meters: Sequence[Meter] = (),
              after_optimizer: Callable[[int], None] = lambda step: None, force: dict | None = None,
              data_step: int | None = None) -> None:
    """Train `steps` under the policy; `force` forces a selection/importance round (begin_step's
    arguments) and `data_step` trains that step's batch instead of each step's own."""
    def mark(phase: str, step: int) -> None:
        for m in meters:
            m.mark(phase, step)

    mask = needs_mask(model)
    for step in steps:
        policy.begin_step(step, mark, **(force or {}))   # importance round if due; which blocks train
        inputs = model_inputs(batches.ids(step if data_step is None else data_step), device, mask)
        mark("start", step)
        loss = model(**inputs).loss                  # logits and other outputs are dropped at once
        mark("forward", step)
        loss.backward()
        mark("backward", step)
        policy.after_backward(step)                  # e.g. ILA's importance from the gradients
        optimizer.step()
        after_optimizer(step)                        # e.g. AdaLoRA's rank allocation (needs the grads)
        mark("optimizer", step)
        optimizer.zero_grad(set_to_none=True)
        del loss, inputs
        mark("end", step)


def fill_optimizer_state(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> None:
    """Give each of `params` the optimizer state a long run would have given it by now.

    One optimizer step with zero gradients at learning rate 0 creates exactly the state the
    optimizer creates (dtype, device, layout, step counter), and moves no weight (AdamW's
    decay multiplies by 1 - lr * wd = 1). Parameters that already hold state are left out.
    """
    missing = [p for p in params if p not in optimizer.state]
    if not missing:
        return
    lrs = [g["lr"] for g in optimizer.param_groups]
    others = {p: p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None}
    for p in others:
        p.grad = None
    try:
        for p in missing:
            p.grad = torch.zeros_like(p)
        for g in optimizer.param_groups:
            g["lr"] = 0.0
        optimizer.step()
    finally:
        for g, lr in zip(optimizer.param_groups, lrs, strict=True):
            g["lr"] = lr
        for p in missing:
            p.grad = None
        for p, grad in others.items():
            p.grad = grad
