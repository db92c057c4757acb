"""Layer-selection policies: which transformer blocks train at each step.

Each policy is one small file with the same shape (see base.py). `none` trains every
block the method adapted; `rst` draws random blocks each step.
"""

from __future__ import annotations

from ist_bench.errors import choice_error
from ist_bench.selection.base import LayerGate, SelectionPolicy
from ist_bench.selection.rst import RST

POLICIES: dict[str, type[SelectionPolicy]] = {"none": SelectionPolicy, "rst": RST}


def make_policy(name: str, n_layers: int, fraction: float = 0.25, seed: int = 0) -> SelectionPolicy:
    if name not in POLICIES:
        raise choice_error("selection policy", name, list(POLICIES))
    return POLICIES[name](n_layers, fraction, seed)


__all__ = ["POLICIES", "RST", "LayerGate", "SelectionPolicy", "make_policy"]
