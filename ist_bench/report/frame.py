"""The report's one tidy frame: a row per cell (kind x model x column x backend), every figure a column
with its unit in its name, built once from the result rows. Table 1, the savings, Table 13, the CSVs
and the plots are functions of it (tables.py, plots.py); what each figure means: docs/reports.md.

A cell is what a report shows once: when several rows are the same cell (a suite listing a case
twice, or two suites measuring it with different step counts), one stands for it by `preference`,
so the frame never depends on the order of the rows.
"""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from ist_bench.report.cells import column
from ist_bench.results import model_label

GiB = 1 << 30
PAPER = json.loads((resources.files("ist_bench.report") / "paper.json").read_text())
MODEL_ORDER = list(PAPER["table1"]["models"])   # the paper's models first, in its order
METHOD_ORDER = ["full", "series", "parallel", "lora", "dora", "adalora"]
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# our memory figures: (column, how to read it from a row and its summary, in bytes)
FIGURES = {
    "allocated peak (GiB)": lambda r, s: s.get("run_allocated_peak", s.get("run_allocated_peak_est")),
    "reserved peak (GiB)": lambda r, s: s.get("run_reserved_peak"),
    "NVML process peak (GiB)": lambda r, s: (r.get("nvml") or {}).get("nvml_peak"),
    "tensor peak (GiB)": lambda r, s: s.get("run_peak"),
    "typical allocated peak (GiB)": lambda r, s: (s.get("allocated_peak") or s.get("allocated_peak_est") or {}).get(
        "typical"),
}
# what is live at the steady step's peak, by category (the breakdown plot)
AT_PEAK = ("weights", "activations", "gradients", "optimizer", "method_state", "temporary", "overhead")
PHASES = ("forward", "backward", "optimizer", "step")
BUSY = ("forward", "backward", "optimizer", "importance")

# the CSVs' columns, in order; a column in OPTIONAL is written only when some cell has it
MEMORY_CSV = ["model", "column", "backend", "status", "seq_len", "weights (GiB)", "adapter weights (GiB)", "gpu",
              "data", *FIGURES, "seed's median as typical", "peak reached (GiB)"]
TIME_CSV = ["column", "model", "backend", "status", "gpu", "steps",
            *(f"{p} ms ({s})" for p in PHASES for s in ("mean", "median")), "importance ms/iter", "s / 100 iter",
            *(f"{p} busy ms" for p in BUSY)]
OPTIONAL = {"peak reached (GiB)", *(f"{p} busy ms" for p in BUSY)}
INTEGER = ("seq_len", "steps")


def unit_free(name: str) -> str:
    """A figure's column as prose: `allocated peak (GiB)` -> `allocated peak`."""
    return name.removesuffix(" (GiB)")


def build(rows: list[dict]) -> pd.DataFrame:
    """The frame of `rows`' cells: memory cells, then time cells, each in the paper's model and method order."""
    recs = [_memory(r) for r in cells_of(rows, "memory")] + [_time(r) for r in cells_of(rows, "time")]
    df = pd.DataFrame.from_records(recs, columns=["kind", *dict.fromkeys(MEMORY_CSV + TIME_CSV),
                                                  *(f"at peak: {k} (GiB)" for k in AT_PEAK), "top activations"])
    for c in INTEGER:   # whole numbers stay whole (NaN would make them floats) in every view and CSV
        df[c] = df[c].astype("Int64")
    return df


def select(frame: pd.DataFrame, kind: str, backend: str | None = None, ok: bool = False) -> pd.DataFrame:
    """The frame's cells of one kind (of one backend; only those that finished)."""
    keep = frame["kind"] == kind
    if backend is not None:
        keep &= frame["backend"] == backend
    if ok:
        keep &= frame["status"] == "ok"
    return frame[keep]


def csv_view(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One kind's cells with the CSV's columns (an optional one only where some cell has it)."""
    sub = select(frame, kind)
    cols = [c for c in (MEMORY_CSV if kind == "memory" else TIME_CSV) if c not in OPTIONAL or sub[c].notna().any()]
    out = sub[cols]
    return out.astype({c: float for c in INTEGER if c in out and out[c].isna().any()})   # as pandas reads NaN


def preference(row: dict) -> tuple:
    """Which row stands for a cell: the most steps, then the newest, then the row's own bytes, so the
    choice never depends on the order of the rows."""
    case = row["case"]
    return ((case.get("steps") or 0), (row.get("provenance") or {}).get("time") or "",
            json.dumps(row, sort_keys=True))


def cells_of(rows: list[dict], kind: str) -> list[dict]:
    """One row per report cell (model, column, backend) of `kind`, in a fixed order whatever the
    order of the rows: duplicated cells are counted and shown once."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind", "memory") == kind:
            groups.setdefault((r["case"]["model"], column(r["case"]), r.get("backend") or ""), []).append(r)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k[0], column_key(k[1]), k[2]))
    return [max(groups[k], key=preference) for k in keys]


def column_key(c: str) -> tuple:
    """Columns in the paper's order: no policy before a policy, then the method's place in METHOD_ORDER."""
    label, _, knobs = c.partition(" ")
    method, _, sel = label.partition("+")
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (bool(sel), sel, m, method, knobs)


def base_weights(row: dict) -> float | None:
    """The base model's weights in bytes, as this cell holds them (docs/reports.md, "weights"): the row's
    `base_weights` (parameters, buffers and a quantized base's state, measured before the method is
    applied); in rows written before it was recorded, the parameter count times the weight dtype's size,
    or for a quantized base the measured weights minus the method's fp32 trainable parameters."""
    if row.get("base_weights"):
        return row["base_weights"]
    if row["case"].get("quant", "none") != "none":
        s = (row.get("memory") or {}).get("summary") or {}
        total = (s.get("weights") or {}).get("first")
        return total - 4 * row["trainable_params"] if total and row.get("trainable_params") is not None else None
    size = DTYPE_BYTES.get(row["case"].get("dtype") or "bf16")
    return row["params"] * size if row.get("params") and size else None


def seeds_median_typical(row: dict) -> bool:
    """True for a sparse policy's row written before ist-bench derived typical from the policy's
    draw distribution (no `memory.typical` saying how it was derived): its `typical` is the median of
    its own few drawn steps, one seed's luck, which a report does not print as the policy's typical
    step (docs/reports.md)."""
    return (row.get("status") == "ok" and row["case"].get("select", "none") != "none"
            and "typical" not in (row.get("memory") or {}))


def _gib(v) -> float | None:
    return None if v is None else v / GiB


def _memory(r: dict) -> dict:
    s = r.get("memory", {}).get("summary", {})
    base = base_weights(r)
    total = s["weights"]["first"] if "weights" in s else None
    rec = {"kind": "memory", "model": model_label(r["case"]["model"]), "column": column(r["case"]),
           "backend": r.get("backend"), "status": r["status"], "seq_len": r["case"].get("seq_len"),
           "weights (GiB)": _gib(base), "adapter weights (GiB)": None if base is None or total is None else
           (total - base) / GiB, "gpu": r.get("provenance", {}).get("gpu"), "data": r.get("settings", {}).get("data")}
    for name, get in FIGURES.items():
        rec[name] = _gib(get(r, s)) if r["status"] == "ok" else None
    rec["seed's median as typical"] = seeds_median_typical(r)
    if rec["seed's median as typical"]:
        rec["typical allocated peak (GiB)"] = None
    if r["status"] == "oom":
        rec["peak reached (GiB)"] = (r.get("peak_reached") or 0) / GiB
    last = (r.get("memory", {}).get("steps") or [None])[-1]
    if r["status"] == "ok" and last:
        at = last.get("at_peak")
        for k in AT_PEAK if at else ():
            rec[f"at peak: {k} (GiB)"] = (at.get("rounding", 0) + at.get("workspace", 0) if k == "overhead" else
                                          at.get(k, 0)) / GiB
        rec["top activations"] = last.get("top_activations") or None
    return rec


def _time(r: dict) -> dict:
    t = r.get("time", {})
    ph = t.get("phases_ms", {})
    rec = {"kind": "time", "column": column(r["case"]), "model": model_label(r["case"]["model"]),
           "backend": r.get("backend"), "status": r["status"], "gpu": r.get("provenance", {}).get("gpu"),
           "steps": ph.get("step", {}).get("n")}
    for phase in PHASES:
        rec[f"{phase} ms (mean)"] = ph.get(phase, {}).get("mean")
        rec[f"{phase} ms (median)"] = ph.get(phase, {}).get("median")
    rec["importance ms/iter"] = t.get("importance_ms_per_iter")
    rec["s / 100 iter"] = t.get("s_per_100_iter")
    busy = (t.get("device") or {}).get("busy_ms", {})
    for phase in BUSY:
        if phase in busy:
            rec[f"{phase} busy ms"] = busy[phase]
    return rec
