"""The operator graph of a training step, recorded on meta: every aten op the step dispatches, in order,
with its phase and what decides its time (a GEMM's M, N, K and dtype; an attention kernel's shape; a
memory-bound op's bytes). Nothing is computed: the step runs as sim runs it (measure/sim.py), so the ops
are the ones the GPU would launch, shapes and dtypes exact.

Kinds: `gemm` (mm, addmm, bmm, baddbmm, grouped mm), `attention` (SDPA's fused kernels, forward and
backward), `optimizer` (fused or foreach AdamW and friends), `memory` (every other kernel: elementwise,
reductions, norms, softmax, indexing, copies; by class), `view` (no kernel: views, reshapes, empty
allocations; host time only), `sync` (the host waits for the GPU: `.item()`), `mark` (where the step's
timer records a CUDA event: a phase begins or ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ist_bench.measure.tracker import _composite

aten = torch.ops.aten

GEMMS = {aten.mm: "mm", aten.addmm: "mm", aten.bmm: "bmm", aten.baddbmm: "bmm"}
if hasattr(aten, "_grouped_mm"):
    GEMMS[aten._grouped_mm] = "grouped"
ATTENTION = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention")
NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
             "_to_copy_meta", "set_", "resize_", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
             "is_same_size", "_has_compatible_shallow_copy_type", "record_stream", "_local_scalar_dense_meta"}
SYNC = {"_local_scalar_dense", "is_nonzero", "item"}
# memory-bound classes with calibrations of their own (microbench); every other op is `elementwise`
CLASSES = {
    "softmax": ("_softmax", "_softmax_backward_data", "_log_softmax", "_log_softmax_backward_data"),
    "norm": ("native_layer_norm", "native_layer_norm_backward", "_fused_rms_norm", "_fused_rms_norm_backward"),
    "reduce": ("sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var_mean", "std", "var",
               "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "all", "any", "argmax", "cumsum"),
    "index": ("embedding", "embedding_dense_backward", "index_select", "index", "index_put_", "index_add_", "gather",
              "scatter", "scatter_add", "scatter_add_", "index_put", "_index_put_impl_", "sort", "topk",
              "histc", "bincount", "masked_select", "nonzero"),
}
OPTIMIZER_PREFIXES = ("_fused_adam", "_fused_sgd", "_foreach_")
KERNEL_KINDS = ("gemm", "attention", "optimizer", "memory")   # the kinds that launch a kernel


@dataclass
class Op:
    phase: str
    name: str                 # the aten op (overload packet)
    kind: str                 # gemm, attention, optimizer, memory, view, sync
    cls: str = ""             # the kind's class: mm/bmm/grouped; flash/efficient/cudnn(+_bwd); elementwise/softmax/...
    dtype: str = ""
    m: int = 0                # gemm: M, N, K (per batch), batch
    n: int = 0
    k: int = 0
    batch: int = 1
    bytes: int = 0            # memory-bound: bytes read and written; attention: its (b, h, s_q, s_kv, d) in m..
    flops: int = 0
    tensors: int = 0          # optimizer: how many tensors its lists hold
    count: int = 1            # identical ops merged (Graph.compact)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def describe(func, args, kwargs, out, phase: str) -> Op:
    """What decides the time of one dispatched op."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    packet = getattr(func, "overloadpacket", None)
    if name in SYNC:
        return Op(phase, name, "sync")
    if name in NO_KERNEL or getattr(func, "is_view", False) or "view" in name:   # _unsafe_view: a reshape
        return Op(phase, name, "view")
    if packet in GEMMS:
        return _gemm(phase, name, GEMMS[packet], args)
    base = name.removesuffix("_backward")
    if base in ATTENTION:
        return _attention(phase, name, base, name.endswith("_backward"), args)
    if name.startswith(OPTIMIZER_PREFIXES):
        tensors = _tensors(args)
        return Op(phase, name, "optimizer", "fused" if name.startswith("_fused") else "foreach",
                  dtype=_dtype(tensors[0]) if tensors else "", bytes=_nbytes(args) + _nbytes(out),
                  tensors=len(tensors))
    ins, outs = _tensors(args) + _tensors(list((kwargs or {}).values())), _tensors(out)
    if not outs and not name.endswith("_"):
        return Op(phase, name, "view")
    if not name.endswith("_") and name != "copy" and _aliases(ins, outs):   # split, unbind, ...: views
        return Op(phase, name, "view")
    seen, total = set(), 0
    for t in ins + outs:   # an in-place op's output is its input: read and written once each
        key = (t.untyped_storage().data_ptr() if not t.is_meta else id(t), t.storage_offset(), tuple(t.shape))
        total += t.numel() * t.element_size() * (2 if key in seen else 1)
        seen.add(key)
    if total == 0:
        return Op(phase, name, "view")
    cls = next((c for c, names in CLASSES.items() if name in names), "elementwise")
    dtype = _dtype((outs or ins)[0])
    return Op(phase, name, "memory", cls, dtype=dtype, bytes=total)


def _aliases(ins: list[torch.Tensor], outs: list[torch.Tensor]) -> bool:
    """Every output shares an input's storage (a view the schema does not flag)."""
    storages = {t.untyped_storage()._cdata for t in ins}
    return bool(outs) and all(t.untyped_storage()._cdata in storages for t in outs)


def _gemm(phase: str, name: str, cls: str, args) -> Op:
    mats = [a for a in args if isinstance(a, torch.Tensor)]
    if cls == "mm":
        a, b = mats[-2:]
        m, k, n, batch = a.shape[0], a.shape[1], b.shape[1], 1
    elif cls == "bmm":
        a, b = mats[-2:]
        batch, m, k, n = a.shape[0], a.shape[1], a.shape[2], b.shape[2]
    else:   # grouped: (S, K) x (E, K, N) with offsets: every row meets one expert's weight
        a, b = mats[0], mats[1]
        if a.dim() == 2 and b.dim() == 3:
            m, k, n, batch = a.shape[0], a.shape[1], b.shape[-1], 1
        elif a.dim() == 3 and b.dim() == 2:   # backward for the weights: (E? ) shapes vary; (K, S) x (S, N)
            m, k, n, batch = a.shape[-2], a.shape[-1], b.shape[-1], 1
        else:
            m, k, n, batch = a.shape[-2], a.shape[-1], b.shape[-1], 1
    return Op(phase, name, "gemm", cls, dtype=_dtype(a), m=int(m), n=int(n), k=int(k), batch=int(batch),
              flops=2 * int(batch) * int(m) * int(n) * int(k))


def _attention(phase: str, name: str, base: str, backward: bool, args) -> Op:
    q, k = (args[1], args[2]) if backward else (args[0], args[1])
    b, h, s_q, d = q.shape
    s_kv = k.shape[2]
    cls = base.removeprefix("_scaled_dot_product_").removesuffix("_attention") + ("_bwd" if backward else "")
    flops = 4 * b * h * s_q * s_kv * d * (2.5 if backward else 1)   # QK^T and PV; backward ~2.5x forward
    return Op(phase, name, "attention", cls, dtype=_dtype(q), m=int(s_q), n=int(s_kv), k=int(d), batch=int(b * h),
              flops=int(flops))


class Recorder(TorchDispatchMode):
    """Records every op dispatched on meta while active; a meter (`mark`) names the phase."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.phase = "other"

    def mark(self, phase: str, step: int) -> None:
        self.ops.append(Op(self.phase, phase, "mark"))   # where the timer records a CUDA event
        self.phase = {"importance_start": "importance", "importance": "other", "start": "forward",
                      "forward": "backward", "backward": "optimizer", "optimizer": "other", "end": "other"}.get(
            phase, self.phase)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _composite(func, torch._C.DispatchKey.Meta):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        self.ops.append(describe(func, args, kwargs, out, self.phase))
        return out


def flops_of(ops: list[Op]) -> int:
    return sum(o.flops * o.count for o in ops if o.kind in ("gemm", "attention"))


def log2(x: float) -> float:
    return math.log2(max(x, 1))
