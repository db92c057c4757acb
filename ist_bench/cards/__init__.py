"""GPUs people fine-tune on, one JSON file each: `<name>.json` in this folder. A new card is one file.

Each holds what the memory answers and the time prediction need:

- `memory_mib`: the card's total as the driver reports it (nvidia-smi, NVML, `torch.cuda.mem_get_info`), in
  MiB: what an allocator can ever hold, never the datasheet's round GB (an RTX 4090's "24 GB" is 24,564 MiB,
  2.4% above 24 x 10^9 B); `memory_source` says where the figure was seen.
- the spec sheet: dense (no sparsity) tensor-core TFLOP/s for bf16/fp16, tf32 and plain fp32, memory
  bandwidth (GB/s), SMs, NVLink (GB/s per GPU, null for none), `spec_source`.
- `workspace`: cuBLAS's workspace per handle (torch gives 32 MiB on Hopper, 4 MiB x 2 + 16 KiB x 8 elsewhere);
  a training step uses two handles (forward thread, autograd's backward thread).
- `calibration` (optional): the kernel tables `scripts/microbench.py` measured on the card, and where and
  when (ist_bench/predict/kernels.py reads them). A card without one is predicted from its spec sheet and
  a calibrated card's tables (docs/time-prediction.md says how, and how far off that was on a held-out card).

This module is light (JSON only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30
FOLDER = Path(__file__).parent


@dataclass(frozen=True)
class Card:
    name: str
    memory: int                   # bytes (the driver's total)
    bf16_tflops: float            # dense tensor-core peak (fp16 the same on every card here)
    workspace: int                # cuBLAS workspace per handle
    match: tuple[str, ...] = ()   # substrings of torch.cuda.get_device_name()
    source: str = "datasheet"     # where the memory figure was seen
    fp32_tflops: float = 0.0
    tf32_tflops: float = 0.0
    bandwidth_gbs: float = 0.0
    sms: int = 0
    nvlink_gbs: float | None = None
    arch: str = ""
    spec_source: str = ""
    calibration: dict | None = field(default=None, compare=False, repr=False)

    def tflops(self, dtype: str) -> float:
        """Dense peak for a matmul in `dtype` (fp32: without TF32, torch's default for matmuls)."""
        return {"bfloat16": self.bf16_tflops, "float16": self.bf16_tflops, "float32": self.fp32_tflops}.get(dtype, 0.0)


def load(path: Path) -> Card:
    """A card from its file (a name not among the shipped ones is fine: --gpu path/to/card.json)."""
    from ist_bench.errors import UsageError, read_json

    d = read_json(path, "card file")
    missing = [k for k in ("name", "memory_mib", "bf16_tflops", "workspace") if not isinstance(d, dict) or k not in d]
    if missing:
        raise UsageError(f"card file {path} has no {', '.join(missing)}")
    return Card(name=d["name"], memory=d["memory_mib"] * MiB, bf16_tflops=d["bf16_tflops"], workspace=d["workspace"],
                match=tuple(d.get("match", ())), source=d.get("memory_source", "datasheet"),
                fp32_tflops=d.get("fp32_tflops", 0.0), tf32_tflops=d.get("tf32_tflops", 0.0),
                bandwidth_gbs=d.get("bandwidth_gbs", 0.0), sms=d.get("sms", 0), nvlink_gbs=d.get("nvlink_gbs"),
                arch=d.get("arch", ""), spec_source=d.get("spec_source", ""), calibration=d.get("calibration"))


@functools.cache
def _cards() -> dict[str, Card]:
    found = sorted(FOLDER.glob("*.json"))
    cards = {}
    for path in found:
        card = load(path)
        cards[card.name] = card
    return dict(sorted(cards.items(), key=lambda kv: kv[1].memory))


def __getattr__(name: str):
    if name == "CARDS":
        return _cards()
    raise AttributeError(f"module 'ist_bench.cards' has no attribute {name!r}")


def card_of(device_name: str | None) -> Card | None:
    """The card whose name torch reports (None for a card not in the table)."""
    if not device_name:
        return None
    return next((c for c in _cards().values() if any(m in device_name for m in c.match)), None)


def path_of(name: str) -> Path:
    return FOLDER / f"{name}.json"
