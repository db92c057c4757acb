"""What `sim` needs to stand in for a CUDA step on the meta device.

The step runs the real model, PEFT and selection code on meta tensors: shapes and dtypes
(hence bytes) are real, nothing is computed. Three things differ from a GPU and are
corrected here, explicitly:

1. Dropout. On CUDA, `F.dropout` (0 < p < 1, training) runs the fused `native_dropout`,
   which saves a 1-byte bool mask for backward. On CPU and meta, it multiplies by a noise
   tensor in the input's dtype and saves that (2x the bytes for bf16, 4x for fp32).
   `CudaKernels` routes dropout to `native_dropout` so meta saves what CUDA saves.
2. Fused AdamW. torch refuses `fused=True` on meta in a Python-level device check only;
   the fused kernel has a meta implementation. `fused_adam_on_meta` skips that check.
3. The caching allocator. It hands out blocks rounded up to 512 B, and a large request
   that leaves <= 1 MiB of a fresh segment takes the whole segment; cuBLAS takes a
   workspace through the allocator on the first matmul of each handle. `cuda_block_bytes`
   and `CUBLAS_WORKSPACE_BYTES` model these (the estimate, not the tensor bytes).
"""

from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MiB = 1 << 20

# cuBLAS takes 32 MiB per handle on Hopper through the caching allocator, and a training step
# uses two handles: the forward's thread and autograd's backward thread. Measured on the lent
# H200 (torch 2.11, `cublas_workspace_bytes()`: 32 MiB forward + 32 MiB backward); with it,
# sim's estimate is within 1.1% of max_memory_allocated in every Table-1 cell
# (reports/validation.md). Older GPUs use smaller workspaces: this models Hopper.
CUBLAS_WORKSPACE_BYTES = 2 * 32 * MiB


class CudaKernels(TorchFunctionMode):
    """Make meta tensors take the kernels CUDA takes where their saved tensors differ."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p, training, inplace = _dropout_args(*args, **kwargs)
            if training and 0.0 < p < 1.0 and x.numel() > 0 and not inplace:
                return torch.ops.aten.native_dropout(x, p, True)[0]
        return func(*args, **kwargs)


def _dropout_args(input, p=0.5, training=True, inplace=False):
    return input, p, training, inplace


@contextlib.contextmanager
def fused_adam_on_meta():
    """Let `torch.optim.AdamW(fused=True)` step meta parameters (see module doc, point 2)."""
    with contextlib.ExitStack() as stack:
        for name in ("torch.optim.adam", "torch.optim.adamw"):
            module = importlib.import_module(name)
            if hasattr(module, "_device_dtype_check_for_fused"):
                stack.enter_context(mock.patch.object(module, "_device_dtype_check_for_fused", lambda *a, **k: None))
        yield


def cuda_block_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator books for a request of `nbytes` (fresh segments)."""
    if nbytes == 0:
        return 0
    size = max(512, -(-nbytes // 512) * 512)
    if size < 10 * MiB:  # small pool (2 MiB segments) or split from a 20 MiB segment
        return size
    segment = -(-size // (2 * MiB)) * (2 * MiB)
    return segment if segment - size <= MiB else size
