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

from ist_bench.results import case_label, row_key

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


column = case_label   # a Table-1 column: method + policy

def _column_order(cols) -> list[str]:
    def key(c):
        method, _, sel = c.partition("+")
        m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return (bool(sel), sel, m) if sel else (False, "", m)
    return sorted(cols, key=key)


def latest(rows: list[dict], kind: str) -> list[dict]:
    """The last row of each case of `kind` (a later run of a case replaces an earlier one)."""
    out = {row_key(r): r for r in rows if r.get("kind", "memory") == kind}
    return list(out.values())


def memory_cells(rows: list[dict]) -> pd.DataFrame:
    """One record per memory row: model, column, backend, status, every figure (GiB), weights."""
    recs = []
    for r in latest(rows, "memory"):
        s = r.get("memory", {}).get("summary", {})
        rec = {"model": r["case"]["model"], "column": column(r["case"]), "backend": r.get("backend"),
               "status": r["status"], "seq_len": r["case"].get("seq_len"),
               "weights": s["weights"]["first"] / GiB if "weights" in s else None,
               "gpu": r.get("provenance", {}).get("gpu"), "data": r.get("settings", {}).get("data")}
        for name, get in FIGURES.items():
            v = get(r, s) if r["status"] == "ok" else None
            rec[name] = None if v is None else v / GiB
        if r["status"] == "oom":
            rec["peak reached"] = (r.get("peak_reached") or 0) / GiB
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def _paper(model: str, col: str):
    return PAPER["table1"]["models"].get(model, {}).get(col)


def _cell(ours, paper) -> str:
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        ours_s = "-"
    else:
        ours_s = ours if isinstance(ours, str) else f"{ours:.1f}"
    if paper is None:
        return ours_s
    if isinstance(paper, str) or isinstance(ours, str) or ours_s == "-":
        return f"{ours_s} / {paper}"
    return f"{ours_s} / {paper:g} ({ours / paper:.2f}x)"


def table1(cells: pd.DataFrame, backend: str, figure: str = "allocated peak") -> pd.DataFrame:
    """Rows = models, columns = weights and each method/policy, cells 'ours / paper (ratio)'."""
    sub = cells[cells["backend"] == backend]
    if sub.empty:
        return pd.DataFrame()
    models = [m for m in MODEL_ORDER if m in set(sub["model"])] + sorted(set(sub["model"]) - set(MODEL_ORDER))
    cols = _column_order(set(sub["column"]))
    out = []
    for model in models:
        rows = sub[sub["model"] == model]
        weights = rows["weights"].dropna()
        rec = {"model": model, "weights": _cell(weights.iloc[0] if len(weights) else None, _paper(model, "weights"))}
        for col in cols:
            hit = rows[rows["column"] == col]
            if hit.empty:
                rec[col] = _cell(None, _paper(model, col))
                continue
            r = hit.iloc[-1]
            ours = "OOM" if r["status"] == "oom" else r[figure] if r["status"] == "ok" else r["status"]
            rec[col] = _cell(ours, _paper(model, col))
        out.append(rec)
    return pd.DataFrame.from_records(out)


def table1_long(cells: pd.DataFrame) -> pd.DataFrame:
    """Every cell with every figure and the paper's value: the CSV a reader can re-plot."""
    df = cells.copy()
    df["paper_GB"] = [_paper(m, c) for m, c in zip(df["model"], df["column"], strict=True)]
    return df


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
        method, _, sel = r["column"].partition("+")
        if not sel:
            continue
        base = sub[(sub["model"] == r["model"]) & (sub["column"] == method)]
        if base.empty:
            continue
        b = base.iloc[-1]
        if pd.isna(r[figure]) or pd.isna(b[figure]):
            continue
        rec = {"model": r["model"], "method": method, "policy": sel,
               "saving %": 100 * (1 - r[figure] / b[figure]),
               "saving above weights %": 100 * (1 - (r[figure] - r["weights"]) / (b[figure] - b["weights"]))}
        p_sel, p_base, p_w = _paper(r["model"], r["column"]), _paper(r["model"], method), _paper(r["model"], "weights")
        if all(isinstance(v, (int, float)) for v in (p_sel, p_base, p_w)):
            rec["paper saving %"] = 100 * (1 - p_sel / p_base)
            rec["paper saving above weights %"] = 100 * (1 - (p_sel - p_w) / (p_base - p_w))
        recs.append(rec)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    recs.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"], METHOD_ORDER.index(r["method"])
                             if r["method"] in METHOD_ORDER else 99, r["policy"]))
    return pd.DataFrame.from_records(recs)


def time_cells(rows: list[dict]) -> pd.DataFrame:
    recs = []
    for r in latest(rows, "time"):
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


def table13(times: pd.DataFrame, model: str = "llama-7b") -> pd.DataFrame:
    """Rows = the paper's three lines, columns = LoRA, LISA, LoRA+IST (ours / paper (ratio))."""
    sub = times[(times["model"] == model) & (times["status"] == "ok")]
    paper = PAPER["table13"]["columns"]
    picks = {"lora": sub[sub["column"] == "lora"],
             "lisa": sub[sub["column"].str.contains(r"\+lisa", regex=True)],
             "lora+ist": sub[sub["column"] == "lora+ist"]}
    out = []
    for label, ours_key, paper_key in TABLE13_ROWS:
        rec = {"": label}
        for col, hit in picks.items():
            ours = hit.iloc[-1][ours_key] if not hit.empty else None
            rec[col if hit.empty else f"{col} ({hit.iloc[-1]['column']})"] = _cell(ours, paper[col][paper_key])
        out.append(rec)
    return pd.DataFrame.from_records(out)


def to_latex(df: pd.DataFrame, caption: str) -> str:
    """A booktabs table (no jinja2 needed)."""
    def esc(x) -> str:
        return str(x).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace(
            "_", r"\_").replace("#", r"\#")
    cols = list(df.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)
