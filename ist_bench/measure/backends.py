"""Where a step runs and how its memory is read: `sim`, `cpu` or `cuda`.

- sim: the model lives on the meta device; nothing is allocated or computed, every byte
  is real. CUDA's kernel choices are emulated (see sim.py). Default without a GPU.
- cpu: a real step on the CPU (small models, tests, CI).
- cuda: a real step on the GPU; the tracker's categories plus the allocator's own peak.
"""

from __future__ import annotations

import contextlib

import torch

from ist_bench.errors import UsageError, choice_error
from ist_bench.measure import sim
from ist_bench.measure.allocator import CachingAllocator
from ist_bench.measure.tracker import MemoryTracker

BACKENDS = ("sim", "cpu", "cuda")


def resolve(name: str) -> str:
    """`auto` becomes cuda when a GPU is present, else sim; cuda without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "sim"
    if name not in BACKENDS:
        raise choice_error("backend", name, ("auto",) + BACKENDS)
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("backend 'cuda' is not available: no CUDA GPU visible to torch (use --backend sim or cpu)")
    return name


def device(backend: str) -> torch.device:
    return torch.device({"sim": "meta", "cpu": "cpu", "cuda": "cuda"}[backend])


def step_context(backend: str) -> contextlib.AbstractContextManager:
    """Modes active around the training steps (sim: CUDA kernel emulation)."""
    if backend != "sim":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(sim.cuda_kernels())
    stack.enter_context(sim.fused_adam_on_meta())
    stack.enter_context(sim.bnb_on_meta())
    return stack


def tracker(backend: str, capacity: int | None = None, history: bool = False) -> MemoryTracker:
    """A tracker for the backend's device; sim and cuda also count modelled CUDA blocks (sim replays the
    caching allocator over the run, measure/allocator.py; cuda rounds each request as a fresh block would).

    On sim the tracker also holds the modelled cuBLAS workspaces (`outside`), so its estimate
    and its `capacity` check (what the allocator may hand out in all) both include them.
    """
    if backend != "sim":
        return MemoryTracker(device(backend).type, block=None if backend == "cpu" else sim.cuda_block_bytes,
                             history=history)
    return MemoryTracker("meta", allocator=CachingAllocator(), capacity=capacity, outside=sim.CUBLAS_WORKSPACE_BYTES,
                         memo=True, scratch=sim.cuda_scratch, history=history)


def is_oom(exc: BaseException) -> bool:
    """Out of memory on any backend (the simulated one included)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "can't allocate memory" in text
