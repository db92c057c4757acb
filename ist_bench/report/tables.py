"""Paper-style tables from result rows: Table 1 (memory) and Table 13 (time), ours beside the paper's.

The paper's numbers live in paper.json (with their source). Each of our cells names the figure it
is: the allocator's peak (`max_memory_allocated` on cuda, the modelled estimate on sim) by default;
the report also scores how close each of our other figures (reserved, NVML process, tensor peak)
comes to the paper's, so a reader can see which one the paper most likely printed.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import pandas as pd

from ist_bench.report.cells import KNOB_DEFAULTS, column  # noqa: F401  (re-exported)
from ist_bench.results import model_label

GiB = 1 << 30
PAPER = json.loads((resources.files("ist_bench.report") / "paper.json").read_text())
MODEL_ORDER = list(PAPER["table1"]["models"])
METHOD_ORDER = ["full", "series", "parallel", "lora", "dora", "adalora"]

# our memory figures: (name, how to read it from a row)
FIGURES = {
    "allocated peak": lambda r, s: s.get("run_allocated_peak", s.get("run_allocated_peak_est")),
    "reserved peak": lambda r, s: s.get("run_reserved_peak"),
    "NVML process peak": lambda r, s: (r.get("nvml") or {}).get("nvml_peak"),
    "tensor peak": lambda r, s: s.get("run_peak"),
    "typical allocated peak": lambda r, s: (s.get("allocated_peak") or s.get("allocated_peak_est") or {}).get("typical"),
}


DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


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


def _preference(row: dict) -> tuple:
    """Which row stands for a cell when several rows are the same cell (a suite listing a case twice,
    or two suites measuring it with different step counts): the most steps, then the newest, then
    the row's own bytes, so the choice never depends on the order of the rows."""
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
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k[0], _column_key(k[1]), k[2]))
    return [max(groups[k], key=_preference) for k in keys]


def _column_key(c: str) -> tuple:
    label, _, knobs = c.partition(" ")
    method, _, sel = label.partition("+")
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (bool(sel), sel, m, method, knobs)


def _column_order(cols) -> list[str]:
    return sorted(cols, key=_column_key)


def memory_cells(rows: list[dict]) -> pd.DataFrame:
    """One record per memory cell: model, column, backend, status, every figure (GiB), the base
    model's weights and the weights the method adds (docs/reports.md)."""
    recs = []
    for r in cells_of(rows, "memory"):
        s = r.get("memory", {}).get("summary", {})
        base = base_weights(r)
        total = s["weights"]["first"] if "weights" in s else None
        rec = {"model": model_label(r["case"]["model"]), "column": column(r["case"]), "backend": r.get("backend"),
               "status": r["status"], "seq_len": r["case"].get("seq_len"),
               "weights": None if base is None else base / GiB,
               "adapter weights": None if base is None or total is None else (total - base) / GiB,
               "gpu": r.get("provenance", {}).get("gpu"), "data": r.get("settings", {}).get("data")}
        for name, get in FIGURES.items():
            v = get(r, s) if r["status"] == "ok" else None
            rec[name] = None if v is None else v / GiB
        rec["seed's median as typical"] = seeds_median_typical(r)
        if rec["seed's median as typical"]:
            rec["typical allocated peak"] = None
        if r["status"] == "oom":
            rec["peak reached"] = (r.get("peak_reached") or 0) / GiB
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def seeds_median_typical(row: dict) -> bool:
    """True for a sparse policy's row written before ist-bench derived typical from the policy's
    draw distribution (no `memory.typical` saying how it was derived): its `typical` is the median of
    its own few drawn steps, one seed's luck, which a report does not print as the policy's typical
    step (docs/reports.md)."""
    return (row.get("status") == "ok" and row["case"].get("select", "none") != "none"
            and "typical" not in (row.get("memory") or {}))


def _paper(model: str, col: str):
    return PAPER["table1"]["models"].get(model, {}).get(col)


def _cell(ours, paper, ratio: bool = True, mark: str = "") -> str:
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        ours_s = "-"
    else:
        ours_s = (ours if isinstance(ours, str) else f"{ours:.1f}") + mark
    if paper is None:
        return ours_s
    if isinstance(paper, str) or isinstance(ours, str) or ours_s == "-" or not ratio:
        return f"{ours_s} / {paper:g}" if not isinstance(paper, str) else f"{ours_s} / {paper}"
    return f"{ours_s} / {paper:g} ({ours / paper:.2f}x)"


def _weights_cell(weights: list[float], paper, ratio: bool) -> str:
    """The base model's weights; two dtypes of one model give a range, never whichever came first."""
    if len(weights) > 1:
        return f"{weights[0]:.1f}-{weights[-1]:.1f}" + (f" / {paper:g}" if paper is not None else "")
    return _cell(weights[0] if weights else None, paper, ratio)


UNCHECKED = "\u2020"   # a dagger: a sim/cpu figure whose cell no GPU validation covers


def table1(cells: pd.DataFrame, backend: str, figure: str = "allocated peak", ratio: bool = True,
           unchecked=lambda model, col: False) -> pd.DataFrame:
    """Rows = models, columns = weights and each method/policy, cells 'ours / paper (ratio)'; a cell
    for which `unchecked(model, column)` holds carries UNCHECKED after our figure."""
    sub = cells[cells["backend"] == backend]
    if sub.empty:
        return pd.DataFrame()
    models = [m for m in MODEL_ORDER if m in set(sub["model"])] + sorted(set(sub["model"]) - set(MODEL_ORDER))
    cols = _column_order(set(sub["column"]))
    out = []
    for model in models:
        rows = sub[sub["model"] == model]
        weights = sorted({round(w, 6) for w in rows["weights"].dropna()})
        rec = {"model": model, "weights": _weights_cell(weights, _paper(model, "weights"), ratio)}
        for col in cols:
            hit = rows[rows["column"] == col]
            if hit.empty:
                rec[col] = _cell(None, _paper(model, col))
                continue
            r = hit.iloc[-1]
            ours = "OOM" if r["status"] == "oom" else r[figure] if r["status"] == "ok" else r["status"]
            rec[col] = _cell(ours, _paper(model, col), ratio, UNCHECKED if unchecked(model, col) else "")
        out.append(rec)
    return pd.DataFrame.from_records(out)


def table1_long(cells: pd.DataFrame) -> pd.DataFrame:
    """Every cell with every figure and the paper's value: the CSV a reader can re-plot."""
    df = cells.copy()
    df["paper"] = [_paper(m, c) for m, c in zip(df["model"], df["column"], strict=True)]
    gib = ["weights", "adapter weights", *FIGURES, "peak reached", "paper"]
    return df.rename(columns={c: f"{c} (GiB)" for c in gib if c in df})


def figure_match(cells: pd.DataFrame) -> pd.DataFrame:
    """For each of our figures and backend: over the cells the paper also has, the mean ratio ours /
    paper and the mean |ratio - 1|. The smallest error is the figure the paper most likely printed."""
    recs = []
    for backend in sorted(set(cells["backend"])):
        sub = cells[(cells["backend"] == backend) & (cells["status"] == "ok")]
        for name in FIGURES:
            ratios = [r[name] / p for _, r in sub.iterrows()
                      if isinstance(p := _paper(r["model"], r["column"]), (int, float)) and pd.notna(r[name])]
            if ratios:
                recs.append({"backend": backend, "figure": name, "cells": len(ratios),
                             "mean ours/paper": sum(ratios) / len(ratios),
                             "mean |ours/paper - 1|": sum(abs(x - 1) for x in ratios) / len(ratios)})
    return pd.DataFrame.from_records(recs)


def savings(cells: pd.DataFrame, backend: str, figure: str = "allocated peak") -> pd.DataFrame:
    """The memory a policy saves against its method without selection, ours and the paper's: on the
    whole peak, and on the peak above the weights (what training adds)."""
    sub = cells[(cells["backend"] == backend) & (cells["status"] == "ok")]
    recs = []
    for _, r in sub.iterrows():
        label, _, knobs = r["column"].partition(" ")
        method, _, sel = label.partition("+")
        if not sel:
            continue
        base = sub[(sub["model"] == r["model"]) & (sub["column"] == " ".join(filter(None, (method, knobs))))]
        if base.empty:
            continue
        b = base.iloc[-1]
        if pd.isna(r[figure]) or pd.isna(b[figure]):
            continue
        rec = {"model": r["model"], "cell": r["column"], "against": b["column"], "method": method, "policy": sel,
               "saving %": 100 * (1 - r[figure] / b[figure]),
               "saving above weights %": None if pd.isna(r["weights"]) else
               100 * (1 - (r[figure] - r["weights"]) / (b[figure] - b["weights"]))}
        p_sel, p_base, p_w = _paper(r["model"], r["column"]), _paper(r["model"], method), _paper(r["model"], "weights")
        if all(isinstance(v, (int, float)) for v in (p_sel, p_base, p_w)):
            rec["paper saving %"] = 100 * (1 - p_sel / p_base)
            rec["paper saving above weights %"] = 100 * (1 - (p_sel - p_w) / (p_base - p_w))
        recs.append(rec)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    recs.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"], METHOD_ORDER.index(r["method"])
                             if r["method"] in METHOD_ORDER else 99, r["policy"], r["cell"]))
    return pd.DataFrame.from_records(recs).drop(columns=["method", "policy"], errors="ignore")


def time_cells(rows: list[dict]) -> pd.DataFrame:
    recs = []
    for r in cells_of(rows, "time"):
        t = r.get("time", {})
        ph = t.get("phases_ms", {})
        rec = {"column": column(r["case"]), "model": r["case"]["model"], "backend": r.get("backend"),
               "status": r["status"], "gpu": r.get("provenance", {}).get("gpu"), "steps": ph.get("step", {}).get("n")}
        for phase in ("forward", "backward", "optimizer", "step"):
            rec[f"{phase} ms (mean)"] = ph.get(phase, {}).get("mean")
            rec[f"{phase} ms (median)"] = ph.get(phase, {}).get("median")
        rec["importance ms/iter"] = t.get("importance_ms_per_iter")
        rec["s / 100 iter"] = t.get("s_per_100_iter")
        dev = t.get("device") or {}
        for phase in ("forward", "backward", "optimizer", "importance"):
            if phase in dev.get("busy_ms", {}):
                rec[f"{phase} busy ms"] = dev["busy_ms"][phase]
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


TABLE13_ROWS = (("forward ms / iter", "forward ms (mean)", "forward_ms"),
                ("backward ms / iter", "backward ms (mean)", "backward_ms"),
                ("s / 100 iter (incl. importance forwards)", "s / 100 iter", "s_per_100_iter"))


def table13(times: pd.DataFrame, model: str = "llama-7b", ratio: bool = True) -> pd.DataFrame:
    """Rows = the paper's three lines, columns = LoRA, LISA, LoRA+IST (ours / paper (ratio)); without
    the ratio (LaTeX), short row labels and the paper's column names only."""
    sub = times[(times["model"] == model) & (times["status"] == "ok")]
    paper = PAPER["table13"]["columns"]
    picks = {"lora": sub[sub["column"] == "lora"],
             "lisa": sub[sub["column"].str.contains(r"\+lisa", regex=True)],
             "lora+ist": sub[sub["column"] == "lora+ist"]}
    out = []
    for label, ours_key, paper_key in TABLE13_ROWS:
        rec = {"": label if ratio else label.split(" (")[0]}
        for col, hit in picks.items():
            ours = hit.iloc[-1][ours_key] if not hit.empty else None
            head = col if hit.empty or not ratio else f"{col} ({hit.iloc[-1]['column']})"
            rec[head] = _cell(ours, paper[col][paper_key], ratio)
        out.append(rec)
    return pd.DataFrame.from_records(out)


def transposed(df: pd.DataFrame, corner: str = "") -> pd.DataFrame:
    """Rows become columns: Table 1 with one column per model fits a page; one per method does not."""
    first = df.columns[0]
    out = df.set_index(first).T.reset_index()
    return out.rename(columns={"index": corner}).rename_axis(None, axis=1)


def to_latex(df: pd.DataFrame, caption: str) -> str:
    """A booktabs table (no jinja2 needed), in `table*`: in a two-column paper it spans both columns,
    in a one-column one it is a plain table. tests/test_report.py compiles it in both."""
    def esc(x) -> str:
        return str(x).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace(
            "_", r"\_").replace("#", r"\#").replace(UNCHECKED, r"\textsuperscript{\dag}")
    cols = list(df.columns)
    # a wide table (Table 1 with QLoRA columns: five models) gets a smaller font and tighter columns
    size = r"\small" if len(cols) <= 5 else r"\scriptsize\setlength{\tabcolsep}{2pt}"
    lines = [r"\begin{table*}[t]", r"\centering", size, r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table*}", ""]
    return "\n".join(lines)
