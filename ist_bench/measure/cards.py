"""GPUs people fine-tune on: memory, dense bf16 peak, and the cuBLAS workspace per handle.

Memory is the card's total as nvidia-smi reported it where we saw one (H100, H200), else the
datasheet's GB (10^9). The bf16 peaks are the vendors'
dense (no sparsity) tensor-core figures. torch gives cuBLAS a 32 MiB workspace per handle on
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


CARDS = {c.name: c for c in (
    Card("rtx4090", 24 * 10**9, 165.2, OTHER_WORKSPACE, ("RTX 4090",)),
    Card("rtx3090", 24 * 10**9, 71.0, OTHER_WORKSPACE, ("RTX 3090",)),
    Card("l4", 24 * 10**9, 121.0, OTHER_WORKSPACE, (" L4",)),
    Card("a10g", 24 * 10**9, 70.0, OTHER_WORKSPACE, ("A10G",)),
    Card("l40s", 48 * 10**9, 362.0, OTHER_WORKSPACE, ("L40S",)),
    Card("a100-40g", 40 * 10**9, 312.0, OTHER_WORKSPACE, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB")),
    Card("a100-80g", 80 * 10**9, 312.0, OTHER_WORKSPACE, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB")),
    Card("h100-80g", 81559 * MiB, 989.4, HOPPER_WORKSPACE, ("H100 80GB HBM3", "H100 SXM"),
         "memory: nvidia-smi on the lent H100"),
    Card("h100-pcie", 80 * 10**9, 756.0, HOPPER_WORKSPACE, ("H100 PCIe",)),
    Card("h200", 143771 * MiB, 989.4, HOPPER_WORKSPACE, ("H200",), "memory: nvidia-smi on the lent H200"),
)}


def card_of(device_name: str | None) -> Card | None:
    """The card whose name torch reports (None for a card not in the table)."""
    if not device_name:
        return None
    return next((c for c in CARDS.values() if any(m in device_name for m in c.match)), None)
