"""Layer-selection policies: which transformer blocks train at each step.

One file per policy, all of the same shape (see base.py): `none` (base.py), `rst`, `ist` and
`ist-code` (ist.py), `lisa`, `ila`, `lift`, and the newer layer-sparse methods `badam`, `hift`,
`dropbp`, `ows`. Each is a `transformers.TrainerCallback`:

    from ist_bench.selection import IST
    trainer = Trainer(model=peft_model, args=args, train_dataset=ds, callbacks=[IST()])
"""

from __future__ import annotations

from typing import Any

from ist_bench.errors import choice_error
from ist_bench.selection.badam import BAdam
from ist_bench.selection.base import (
    OPTIMIZER_STATES,
    LayerGate,
    SelectionPolicy,
    canonical_options,
    parse_options,
)
from ist_bench.selection.dropbp import DropBP
from ist_bench.selection.hift import HiFT
from ist_bench.selection.ila import ILA
from ist_bench.selection.ist import IST, ISTCode
from ist_bench.selection.lift import LIFT
from ist_bench.selection.lisa import LISA
from ist_bench.selection.ows import OWS
from ist_bench.selection.rst import RST

POLICIES: dict[str, type[SelectionPolicy]] = {
    cls.name: cls for cls in (SelectionPolicy, RST, IST, ISTCode, LISA, ILA, LIFT, BAdam, HiFT, DropBP, OWS)
}


def make_policy(name: str, options: dict[str, Any] | None = None, *, seed: int = 0,
                optimizer_state: str = "keep") -> SelectionPolicy:
    """A policy by name with its options (strings from the CLI or typed values); validated."""
    if name not in POLICIES:
        raise choice_error("selection policy", name, list(POLICIES))
    return POLICIES[name](seed=seed, optimizer_state=optimizer_state, **(options or {}))


__all__ = ["ILA", "IST", "LIFT", "LISA", "OWS", "BAdam", "DropBP", "HiFT", "OPTIMIZER_STATES", "POLICIES", "RST", "ISTCode", "LayerGate",
           "SelectionPolicy", "canonical_options", "make_policy", "parse_options"]
