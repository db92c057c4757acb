"""GPUs people fine-tune on: memory, dense bf16 peak, and the cuBLAS workspace per handle.

Memory is the card's total as the driver reports it (nvidia-smi, NVML, `torch.cuda.mem_get_info`), in
MiB: what an allocator can ever hold, never the datasheet's round GB (an RTX 4090's "24 GB" is 24,564 MiB,
2.4% above 24 x 10^9 B). Each card's `source` says where the figure was seen. The bf16 peaks are the
vendors' dense (no sparsity) tensor-core figures. torch gives cuBLAS a 32 MiB workspace per handle on
Hopper (sm90) and 4 MiB x 2 + 16 KiB x 8 on other cards (its CUBLAS_WORKSPACE_CONFIG default);
a training step uses two handles (forward thread, autograd's backward thread).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB, GiB = 1 << 20, 1 << 30
HOPPER_WORKSPACE = 32 * MiB
OTHER_WORKSPACE = 2 * 4 * MiB + 8 * 16 * 1024


@dataclass(frozen=True)
class Card:
    name: str
    memory: int           # bytes
    bf16_tflops: float    # dense
    workspace: int        # cuBLAS workspace per handle
    match: tuple[str, ...] = ()   # substrings of torch.cuda.get_device_name()
    source: str = "datasheet"


# Driver-reported totals: our own nvidia-smi on the lent cards; the others as published with nvidia-smi output.
_MODAL = "nvidia-smi via Modal's GPU table (modal-labs/modal-client PR #2797; thundergolfer.com, 'nvidia-gpu-memory-capacity')"
CARDS = {c.name: c for c in (
    Card("rtx4090", 24564 * MiB, 165.2, OTHER_WORKSPACE, ("RTX 4090",),
         "memory: nvidia-smi in RLinf/RLinf issue #255 ('24564MiB', driver 550.163.01)"),
    Card("rtx3090", 24576 * MiB, 71.0, OTHER_WORKSPACE, ("RTX 3090",),
         "memory: nvidia-smi in noonghunna/club-3090 issues #390 and #1128 ('24576MiB', drivers 580.142, 595.84)"),
    Card("l4", 23034 * MiB, 121.0, OTHER_WORKSPACE, (" L4",), f"memory: {_MODAL}"),
    Card("a10g", 23028 * MiB, 70.0, OTHER_WORKSPACE, ("A10G",),
         "memory: nvidia-smi in NVIDIA/DCGM issue #232 ('23028MiB', driver 535.247.01); A10: the same in " + _MODAL),
    Card("l40s", 46068 * MiB, 362.0, OTHER_WORKSPACE, ("L40S",), f"memory: {_MODAL}"),
    Card("a100-40g", 40960 * MiB, 312.0, OTHER_WORKSPACE, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
         f"memory: {_MODAL}"),
    Card("a100-80g", 81920 * MiB, 312.0, OTHER_WORKSPACE, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
         f"memory: {_MODAL}; NVIDIA/mig-parted issue #31 ('81920MiB', A100-SXM4-80GB)"),
    Card("h100-80g", 81559 * MiB, 989.4, HOPPER_WORKSPACE, ("H100 80GB HBM3", "H100 SXM"),
         "memory: nvidia-smi on the lent H100 (and in " + _MODAL + ")"),
    Card("h100-pcie", 81559 * MiB, 756.0, HOPPER_WORKSPACE, ("H100 PCIe",),
         "memory: not seen published; taken as the H100 SXM's 81,559 MiB (the same 80 GB of memory)"),
    Card("h200", 143771 * MiB, 989.4, HOPPER_WORKSPACE, ("H200",), "memory: nvidia-smi on the lent H200"),
)}


def card_of(device_name: str | None) -> Card | None:
    """The card whose name torch reports (None for a card not in the table)."""
    if not device_name:
        return None
    return next((c for c in CARDS.values() if any(m in device_name for m in c.match)), None)
