"""What `sim` needs to stand in for a CUDA step on the meta device.

The step runs the real model, PEFT and selection code on meta tensors: shapes and dtypes
(hence bytes) are real, nothing is computed. Four things differ from a GPU and are
corrected here, explicitly:

1. Values. A meta tensor has none, so a model's check of its mask (is every token unmasked? are the
   positions one packed sequence?) is answered as the GPU answers it for ist-bench's batches, which
   are never padded or packed (`cuda_kernels`); a forward that needs other values cannot run on sim
   (zoo/structure.py finds out on the model's first meta forward, and the case is refused).
2. Kernel choices. On CUDA, `F.dropout` (0 < p < 1, training) runs the fused `native_dropout`,
   which saves a 1-byte bool mask for backward. On CPU and meta, it multiplies by a noise
   tensor in the input's dtype and saves that (2x the bytes for bf16, 4x for fp32).
   `cuda_kernels` routes dropout to `native_dropout` so meta saves what CUDA saves, and SDPA
   to the attention op CUDA picks (the meta fallback would save the attention weights).
   Kernels' own temporaries (scratch the allocator hands an op while it runs, which no tensor
   of the op holds) are modelled by `cuda_scratch`, from measurements on the H200.
3. Fused AdamW. torch refuses `fused=True` on meta in a Python-level device check only;
   the fused kernel has a meta implementation. `fused_adam_on_meta` skips that check.
4. The caching allocator. It hands out blocks rounded up to 512 B, and a request served by
   a block that it does not split (<= 1 MiB would remain) books the whole block, so what a
   step books depends on what is cached: measure/allocator.py replays the allocator over the
   run. cuBLAS takes a workspace through the allocator on the first matmul of each handle
   (`CUBLAS_WORKSPACE_BYTES`). These make the estimate, not the tensor bytes. `cuda_block_bytes`
   is the block of a request from a fresh segment (the cuda backend's tracker books that).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from unittest import mock

import torch
import torch.nn.functional as F

MiB = 1 << 20

# cuBLAS takes 32 MiB per handle on Hopper through the caching allocator, and a training step
# uses two handles: the forward's thread and autograd's backward thread. Measured on the lent
# H200 (torch 2.11, `cublas_workspace_bytes()`: 32 MiB forward + 32 MiB backward); with it,
# sim's estimate is within 1.1% of max_memory_allocated in every Table-1 cell
# (reports/validation.md). Older GPUs use smaller workspaces: this models Hopper.
CUBLAS_WORKSPACE_BYTES = 2 * 32 * MiB


@contextlib.contextmanager
def cuda_kernels():
    """Make meta tensors take the kernels CUDA takes where their saved tensors differ (dropout,
    SDPA). A patch of torch.nn.functional rather than a TorchFunctionMode: function modes are off
    while activation checkpointing recomputes in backward, a patch is not."""
    dropout, sdpa, softmax = F.dropout, F.scaled_dot_product_attention, F.softmax

    def cuda_dropout(input, p=0.5, training=True, inplace=False):
        if input.is_meta and training and 0.0 < p < 1.0 and input.numel() > 0 and not inplace:
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return dropout(input, p, training, inplace)

    def cuda_softmax(input, dim=None, _stacklevel=3, dtype=None):
        # CUDA computes an fp16 input's fp32 softmax in one kernel (`half_to_float`; fp16 only, bf16 is cast
        # first): no fp32 copy of the input, and backward returns fp16 (measured on the H200,
        # scripts/probe_half_softmax.py). Meta would cast first, as the CPU does.
        if input.is_meta and input.dtype == torch.float16 and dtype == torch.float32 and dim is not None:
            return torch.ops.aten._softmax(input, dim, True)
        return softmax(input, dim, _stacklevel, dtype)

    def cuda_sdpa(*args, **kwargs):
        out = _cuda_attention(*args, **kwargs)
        return sdpa(*args, **kwargs) if out is None else out

    import transformers.masking_utils as masking

    packed = masking.find_packed_sequence_indices

    def unpacked_on_meta(position_ids):
        # transformers asks whether the positions restart inside a row (packed samples) with `.all()`,
        # which meta cannot answer; ours never do (each row is 0..T-1), so the GPU's answer is None.
        return None if position_ids.is_meta else packed(position_ids)

    tensor_all, all_ = torch.Tensor.all, torch.all

    def unpadded_all(input, *args, **kwargs):
        # "is every token unmasked?" (BERT's padding check, linear attention's `torch.all(mask == 1)`) reads
        # a value meta does not hold; ist-bench's batches are never padded, so the GPU's answer is True. Only
        # a whole reduction of a mask (no dim, not floating point) is answered; anything else runs as before.
        if input.is_meta and not args and not kwargs and not input.dtype.is_floating_point:
            return torch.ones((), dtype=torch.bool)
        return all_(input, *args, **kwargs)

    def unpadded_tensor_all(self, *args, **kwargs):
        if self.is_meta and not args and not kwargs and not self.dtype.is_floating_point:
            return torch.ones((), dtype=torch.bool)
        return tensor_all(self, *args, **kwargs)

    autocast = torch.autocast

    class meta_autocast(autocast):
        # peft's fused-expert LoRA (ParamWrapper) opens `torch.autocast(device_type=weight.device.type, enabled=False)`;
        # the meta device has no autocast state to read: the CPU's stands in (disabled, it changes nothing)
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    with (mock.patch.object(F, "dropout", cuda_dropout), mock.patch.object(F, "scaled_dot_product_attention", cuda_sdpa),
          mock.patch.object(F, "softmax", cuda_softmax), mock.patch.object(torch, "autocast", meta_autocast),
          mock.patch.object(masking, "find_packed_sequence_indices", unpacked_on_meta),
          mock.patch.object(torch, "all", unpadded_all), mock.patch.object(torch.Tensor, "all", unpadded_tensor_all)):
        yield


def _cuda_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """SDPA on meta falls back to the math kernel, which materialises and saves the attention
    weights. On the H200 (torch 2.11, `scripts/probe_op_temporaries.py`, results/probes/) CUDA runs
    cuDNN attention for half-precision inputs without a mask, with head sizes 64 and 128, with and
    without grouped-query attention (`enable_gqa`: key and value keep their fewer heads; the kernel
    saves them as they are); it saves q, k, v, the output, a fp32 log-sum-exp per head and query,
    and two int64 RNG scalars. Run that op on meta so the same tensors are saved. Head sizes up to
    256 take FlashAttention, which saves the same bytes and, as cuDNN's, takes grouped-query key and
    value as they are (its kernel reads each key/value head for its group of query heads): expanding
    them to the query's heads first, as sim once did, saved twice the key/value bytes of Gemma-2 9B
    (16 query, 8 key/value heads of 256) and over-estimated its SDPA cell by 0.86% on the H100.
    Anything else keeps the default kernel (None)."""
    d = query.shape[-1]
    if (not query.is_meta or attn_mask is not None or query.dtype not in (torch.bfloat16, torch.float16)
            or d % 8 or d > 256):
        return None
    if d <= 128:
        return torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, True, dropout_p, is_causal,
                                                                  False, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                              scale=scale)[0]


def cuda_scratch(func, args, kwargs, out) -> int:
    """Bytes a CUDA kernel takes from the caching allocator for itself while it runs (freed before
    it returns): what `max_memory_allocated` sees beyond the op's tensors. Measured per op on the
    H200 (torch 2.11) by `scripts/probe_op_temporaries.py` (results/probes/h200-op-temporaries-*.json):
    the allocator's peak during the op minus what is still allocated after it. Ops not listed take none
    (in the probed steps — LoRA, DoRA, AdaLoRA, Series, Parallel, full; eager and SDPA; checkpointing;
    inference mode; fused AdamW — no other op took 1 MiB or more)."""
    rule = _SCRATCH.get(func)
    return rule(args, kwargs, out) if rule is not None else 0


def _softmax_backward_scratch(args, kwargs, out) -> int:
    # A buffer the size of the incoming gradient, for every softmax length (256 .. 32000) and dtype
    # measured: at 2048 tokens, LLaMA-7B's eager attention takes 512 MiB more in each layer's backward;
    # with an fp16 input (half_to_float) the gradient is fp32 and the result fp16: still the gradient's size.
    return args[0].untyped_storage().nbytes()


def _cudnn_attention_backward_scratch(args, kwargs, out) -> int:
    # fp32 accumulators of 4 * (head size + 1) bytes per batch, query head and position; with
    # grouped-query attention also dK and dV expanded to the query's heads. Exact in 7 shapes measured.
    query, key = args[1], args[2]
    b, h, t, d = query.shape
    scratch = 4 * b * h * t * (d + 1)
    if key.shape[-3] != h:
        scratch += 2 * b * h * key.shape[-2] * d * query.element_size()
    return scratch


def _sum_scratch(args, kwargs, out) -> int:
    # A reduction over leading dimensions (a norm's weight gradient, DoRA's magnitude) stages partial sums
    # in a global buffer: 8 bytes per input element up to a cap of 512 B per output times
    # ceil(132 * 2048 / outputs) (132: the H200's SMs), plus 512; none over 512 or fewer rows. The same
    # for bf16, fp16 and fp32 inputs, within 1.5 KiB in all 51 shapes of scripts/probe_reduce_scratch.py
    # (results/probes/h200-reduce-scratch.json). Reducing the last dimension takes none.
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(x, torch.Tensor) or not dims or x.dim() == 0:
        return 0
    dims = {d % x.dim() for d in dims}
    if x.dim() - 1 in dims or all(x.shape[d] == 1 for d in dims):
        return 0
    rows = math.prod(x.shape[d] for d in dims)
    outputs = x.numel() // rows
    if rows <= 512 or outputs == 0:
        return 0
    return min(8 * rows * outputs, 512 * outputs * -(-REDUCE_GRID // outputs)) + 512


REDUCE_GRID = 132 * 2048   # the H200's SMs x 2048: where a reduction's staging buffer stops growing


def _gemm_4bit_scratch(args, kwargs, out) -> int:
    # bitsandbytes' gemm_4bit on CUDA: past 512 rows (M) on Hopper its heuristic takes the unfused path
    # (`_dequant_linear_fallback`): the weight dequantized to the input's dtype ([N, K]) and, with double
    # quantization, the absmax dequantized to fp32 and offset (two fp32 tensors of one value per block),
    # then F.linear; all freed when the op returns. At <= 512 rows the fused kernel runs (no scratch).
    A, shape = args[0], args[2]
    absmax_8bit = kwargs.get("absmax_8bit", args[7] if len(args) > 7 else None)
    if A.numel() // A.shape[-1] <= 512:
        return 0
    blocks = [math.prod(shape) * A.element_size()]
    if absmax_8bit is not None:
        blocks += [4 * absmax_8bit.numel()] * 2
    return sum(cuda_block_bytes(b) for b in blocks)


def _int8_scaled_mm_scratch(args, kwargs, out) -> int:
    # bitsandbytes' int8_scaled_mm: an int32 product [M, N], dequantized into fp16 (CUDA's kernel writes
    # fp16 only) and then cast to the output dtype; the int32 and fp16 tensors are the op's own.
    m_n = out.numel()
    return cuda_block_bytes(4 * m_n) + (cuda_block_bytes(2 * m_n) if out.dtype != torch.float16 else 0)


_SCRATCH = {
    torch.ops.aten._softmax_backward_data.default: _softmax_backward_scratch,
    torch.ops.aten._scaled_dot_product_cudnn_attention_backward.default: _cudnn_attention_backward_scratch,
    torch.ops.aten.sum.dim_IntList: _sum_scratch,
}


def _add_bnb_scratch() -> None:
    """bitsandbytes' ops exist once it is imported (quantized cases only)."""
    if sys.modules.get("bitsandbytes") is not None and hasattr(torch.ops, "bitsandbytes"):
        ops = torch.ops.bitsandbytes
        _SCRATCH.setdefault(ops.gemm_4bit.default, _gemm_4bit_scratch)
        _SCRATCH.setdefault(ops.int8_scaled_mm.default, _int8_scaled_mm_scratch)


@contextlib.contextmanager
def bnb_on_meta():
    """bitsandbytes on the meta device. Its ops have fake kernels (they run as they are); what they lack is
    a paged optimizer's state: `get_paged` asks the CUDA driver for managed memory. On meta such a buffer
    is a meta tensor created outside the tracker and marked `is_paged`, as bitsandbytes marks its own, so
    it is counted as paged optimizer state and never as allocated memory (as on the GPU)."""
    if sys.modules.get("bitsandbytes") is None:   # not imported, or hidden (ist_bench/process.py)
        yield
        return
    from bitsandbytes.optim.optimizer import Optimizer8bit
    from torch.utils._python_dispatch import _disable_current_modes

    _add_bnb_scratch()
    state_buffer = Optimizer8bit.get_state_buffer

    def get_state_buffer(self, p, dtype=torch.float32):
        if not (p.is_meta and self.is_paged and p.numel() >= 1e5):   # bitsandbytes pages buffers of >= 1e5 values
            return state_buffer(self, p, dtype)
        with _disable_current_modes():
            buf = torch.empty(p.shape, dtype=dtype, device="meta")
        buf.is_paged = True
        return buf

    prefetch = Optimizer8bit.prefetch_state

    def prefetch_state(self, p):   # moving managed memory to the GPU: nothing to move on meta
        if not p.is_meta:
            prefetch(self, p)

    with (mock.patch.object(Optimizer8bit, "get_state_buffer", get_state_buffer),
          mock.patch.object(Optimizer8bit, "prefetch_state", prefetch_state)):
        yield


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
