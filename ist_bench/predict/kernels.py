"""Kernel time per operator class, per card: tables measured by scripts/microbench.py (the card's JSON,
`calibration`), read by interpolation, never one roofline.

- GEMMs: the measured time of M x N x K on a grid of sizes per dtype, interpolated in log space (so the
  tile and wave quantization the grid saw carries over; a skinny LoRA or adapter GEMM sits on the grid's
  small sizes), beyond the grid scaled with the FLOPs. A batched GEMM (eager attention) is read as one
  GEMM of batch x M rows, times the factor the microbenchmark measured between the two; a grouped GEMM
  (MoE experts) as one GEMM of all its rows, times its own measured factor.
- SDPA: the measured forward and backward of each backend (flash, memory-efficient, cuDNN) per sequence
  length and head size, scaled with batch x heads.
- memory-bound ops by class (elementwise, softmax, norm, reduce, index): measured time against bytes moved
  (achieved, not datasheet, bandwidth; a small kernel's floor included); an op of no class is elementwise.
- the optimizers: time = a + bytes / bandwidth + tensors x cost, fitted to the measured fused and foreach
  AdamW.

A card without tables borrows a calibrated card's (the same architecture's first, else the H100's) scaled by
the spec sheets: GEMM and attention by the dense peak for the dtype, the rest by memory bandwidth; the
prediction then says so and carries the held-out uncertainty (docs/time-prediction.md).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from ist_bench import cards
from ist_bench.cards import Card
from ist_bench.errors import UsageError
from ist_bench.predict.trace import Op

REFERENCE = "h100-80g"
# |error| of busy time predicted from another card's tables and the spec sheets: the held-out experiment
# (reports/time-prediction.md: the H200's measured steps from the H100's tables, median 8.2%, max 9.0%),
# rounded up; what a prediction for a card without tables states as its uncertainty
SPEC_UNCERTAINTY_PCT = 10.0


@dataclass
class Source:
    card: Card
    tables: Card                  # the card whose tables are read
    compute_scale: dict           # dtype -> time factor for GEMM/attention (spec ratio)
    memory_scale: float           # time factor for memory-bound ops (bandwidth ratio)

    @property
    def measured(self) -> bool:
        return self.tables is self.card


def source(card: Card) -> Source:
    """Where a card's kernel times come from: its own tables, else a calibrated card's scaled by spec."""
    if card.calibration:
        return Source(card, card, {}, 1.0)
    calibrated = [c for c in cards.CARDS.values() if c.calibration]
    if not calibrated:
        raise UsageError(f"no card has kernel tables yet (scripts/microbench.py writes them); cannot predict "
                         f"for {card.name}")
    ref = next((c for c in calibrated if c.arch == card.arch), None) or \
        next((c for c in calibrated if c.name == REFERENCE), calibrated[0])
    if not card.bandwidth_gbs or not card.bf16_tflops:
        raise UsageError(f"card {card.name} has no spec sheet figures (bandwidth_gbs, bf16_tflops) to predict from")
    scale = {dt: ref.tflops(dt) / card.tflops(dt) for dt in ("bfloat16", "float16", "float32") if card.tflops(dt)}
    return Source(card, ref, scale, ref.bandwidth_gbs / card.bandwidth_gbs)


def _interp1(xs: list[float], ys: list[float], x: float, extrapolate_linear: bool = True) -> float:
    """Log-log interpolation of ys over xs at x; beyond the ends: the end's value scaled linearly in x
    (time proportional to work) above, the end's value below (a kernel's floor)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * (x / xs[-1] if extrapolate_linear else 1.0)
    i = bisect.bisect_right(xs, x) - 1
    t = (math.log(x) - math.log(xs[i])) / (math.log(xs[i + 1]) - math.log(xs[i]))
    return math.exp(math.log(ys[i]) * (1 - t) + math.log(ys[i + 1]) * t)


def _axis(dims: list[int], x: float) -> tuple[int, int, float, float]:
    """(i, j, t, beyond): x between dims[i] and dims[j] at fraction t in log space; `beyond` scales a value
    read at the last grid point (x past the grid: time proportional to the size)."""
    if x <= dims[0]:
        return 0, 0, 0.0, 1.0
    if x >= dims[-1]:
        n = len(dims) - 1
        return n, n, 0.0, x / dims[-1]
    i = bisect.bisect_right(dims, x) - 1
    return i, i + 1, (math.log(x) - math.log(dims[i])) / (math.log(dims[i + 1]) - math.log(dims[i])), 1.0


GROUPS = ("gemm", "attention", "elementwise", "softmax", "norm", "reduce", "index", "optimizer")


def group(op: Op) -> str:
    """The op's group for in-model factors: its kind, or a memory-bound op's class."""
    return op.cls if op.kind == "memory" else op.kind


def gemm_table_us(table: dict, dtype: str, m: float, n: float, k: float) -> float:
    """Trilinear interpolation of log(time) over the measured (M, N, K) grid."""
    dims, grid = table["dims"], table[dtype]
    (mi, mj, mt, ms), (ni, nj, nt, ns), (ki, kj, kt, ks) = (_axis(dims, x) for x in (m, n, k))
    acc = 0.0
    for a, wa in ((mi, 1 - mt), (mj, mt)):
        for b, wb in ((ni, 1 - nt), (nj, nt)):
            for c, wc in ((ki, 1 - kt), (kj, kt)):
                w = wa * wb * wc
                if w:
                    acc += w * math.log(grid[a][b][c])
    return math.exp(acc) * ms * ns * ks


class KernelModel:
    """Microseconds of each traced op on one card."""

    def __init__(self, card: Card):
        self.src = source(card)
        self.cal = self.src.tables.calibration
        self.fallback: dict[str, float] = {}     # op name -> microseconds predicted by a stand-in model

    def us(self, op: Op) -> float:
        """The op's kernel time; an op no table of its own covers is noted in `fallback` with its time."""
        model = {"gemm": self._gemm, "attention": self._attention, "optimizer": self._optimizer,
                 "memory": self._memory}.get(op.kind)
        if model is None:
            return 0.0
        t, stand_in = model(op)
        t *= self.insitu.get(group(op), 1.0)
        if stand_in:
            self.fallback[op.name] = self.fallback.get(op.name, 0.0) + t * op.count
        return t

    @property
    def insitu(self) -> dict:
        """In-model factors per group (`calibration.insitu`, scripts/fit_insitu.py): an isolated microbenchmark
        replays its kernel on operands the L2 cache still holds; inside a step they come cold."""
        return self.cal.get("insitu", {}).get("factors", {})

    def _compute_scale(self, dtype: str) -> float:
        return 1.0 if self.src.measured else self.src.compute_scale.get(dtype, 1.0)

    def _memory_scale(self) -> float:
        return 1.0 if self.src.measured else self.src.memory_scale

    def _gemm(self, op: Op) -> tuple[float, bool]:
        table = self.cal["gemm"]
        dtype = op.dtype if op.dtype in table else "bfloat16"
        factor = {"bmm": self.cal.get("bmm_factor", 1.0), "grouped": self.cal.get("grouped_factor", 1.0)}.get(op.cls, 1.0)
        t = gemm_table_us(table, dtype, op.batch * op.m, op.n, op.k) * factor * self._compute_scale(op.dtype)
        return t, dtype != op.dtype

    def _attention(self, op: Op) -> tuple[float, bool]:
        table = self.cal.get("attention", {})
        name, stand_in = op.cls, False
        if name not in table:      # a backend not measured: a measured one of the same direction
            name = next((c for c in table if c not in ("seq", "head_dim", "heads")
                         and c.endswith("_bwd") == op.cls.endswith("_bwd")), None)
            stand_in = True
            if name is None:
                return op.flops / (self.src.card.bf16_tflops * 0.5e6), True   # half the peak
        seqs, dims = table["seq"], table["head_dim"]
        d = min(dims, key=lambda x: abs(math.log(x / max(op.k, 1))))
        s = math.sqrt(op.m * op.n)                # s_q x s_kv as one square
        t = _interp1(seqs, table[name][dims.index(d)], s, extrapolate_linear=False)
        if s > seqs[-1]:
            t *= (s / seqs[-1]) ** 2
        return t * op.batch / table["heads"] * (op.k / d) * self._compute_scale(op.dtype), stand_in

    def _memory(self, op: Op) -> tuple[float, bool]:
        table = self.cal["memory"]
        stand_in = op.cls not in table
        t = _interp1(table["bytes"], table[op.cls if not stand_in else "elementwise"], op.bytes)
        return t * self._memory_scale(), stand_in and op.cls != "elementwise"

    def _optimizer(self, op: Op) -> tuple[float, bool]:
        """AdamW's kernels stream every state tensor once: memory-bound, at the elementwise kernels' measured
        bandwidth for the bytes they move (the microbenchmark's own AdamW timings, taken with plain launches,
        held the host's launch time: they are kept in the card file as a check, not read)."""
        mem = self.cal["memory"]
        return _interp1(mem["bytes"], mem["elementwise"], op.bytes) * self._memory_scale(), False
