"""Paper-style tables, each a function of the report's frame (frame.py): Table 1 (memory), the savings
and Table 13 (time), ours beside the paper's.

The paper's numbers live in paper.json (with their source). Each of our cells names the figure it
is: the allocator's peak (`max_memory_allocated` on cuda, the modelled estimate on sim) by default;
the report also scores how close each of our other figures (reserved, NVML process, tensor peak)
comes to the paper's, so a reader can see which one the paper most likely printed.
"""

from __future__ import annotations

import math

import pandas as pd

from ist_bench.report.frame import (
    FIGURES,
    METHOD_ORDER,
    MODEL_ORDER,
    PAPER,
    column_key,
    csv_view,
    select,
    unit_free,
)


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


def table1(frame: pd.DataFrame, backend: str, figure: str = "allocated peak (GiB)", ratio: bool = True,
           unchecked=lambda model, col: False) -> pd.DataFrame:
    """Rows = models, columns = weights and each method/policy, cells 'ours / paper (ratio)'; a cell
    for which `unchecked(model, column)` holds carries UNCHECKED after our figure."""
    sub = select(frame, "memory", backend)
    if sub.empty:
        return pd.DataFrame()
    models = [m for m in MODEL_ORDER if m in set(sub["model"])] + sorted(set(sub["model"]) - set(MODEL_ORDER))
    cols = sorted(set(sub["column"]), key=column_key)
    out = []
    for model in models:
        rows = sub[sub["model"] == model]
        weights = sorted({round(w, 6) for w in rows["weights (GiB)"].dropna()})
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


def table1_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Every memory cell with every figure and the paper's value: the CSV a reader can re-plot."""
    df = csv_view(frame, "memory")
    df["paper (GiB)"] = [_paper(m, c) for m, c in zip(df["model"], df["column"], strict=True)]
    return df


def figure_match(frame: pd.DataFrame) -> pd.DataFrame:
    """For each of our figures and backend: over the cells the paper also has, the mean ratio ours /
    paper and the mean |ratio - 1|. The smallest error is the figure the paper most likely printed."""
    recs = []
    for backend in sorted(set(select(frame, "memory")["backend"])):
        sub = select(frame, "memory", backend, ok=True)
        for name in FIGURES:
            ratios = [r[name] / p for _, r in sub.iterrows()
                      if isinstance(p := _paper(r["model"], r["column"]), (int, float)) and pd.notna(r[name])]
            if ratios:
                recs.append({"backend": backend, "figure": unit_free(name), "cells": len(ratios),
                             "mean ours/paper": sum(ratios) / len(ratios),
                             "mean |ours/paper - 1|": sum(abs(x - 1) for x in ratios) / len(ratios)})
    return pd.DataFrame.from_records(recs)


def savings(frame: pd.DataFrame, backend: str, figure: str = "allocated peak (GiB)") -> pd.DataFrame:
    """The memory a policy saves against its method without selection, ours and the paper's: on the
    whole peak, and on the peak above the weights (what training adds)."""
    sub = select(frame, "memory", backend, ok=True)
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
               "saving above weights %": None if pd.isna(r["weights (GiB)"]) else
               100 * (1 - (r[figure] - r["weights (GiB)"]) / (b[figure] - b["weights (GiB)"]))}
        p_sel, p_base, p_w = _paper(r["model"], r["column"]), _paper(r["model"], method), _paper(r["model"], "weights")
        if all(isinstance(v, (int, float)) for v in (p_sel, p_base, p_w)):
            rec["paper saving %"] = 100 * (1 - p_sel / p_base)
            rec["paper saving above weights %"] = 100 * (1 - (p_sel - p_w) / (p_base - p_w))
        recs.append(rec)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    recs.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"], METHOD_ORDER.index(r["method"])
                             if r["method"] in METHOD_ORDER else 99, r["policy"], r["cell"]))
    return pd.DataFrame.from_records(recs).drop(columns=["method", "policy"], errors="ignore")


TABLE13_ROWS = (("forward ms / iter", "forward ms (mean)", "forward_ms"),
                ("backward ms / iter", "backward ms (mean)", "backward_ms"),
                ("s / 100 iter (incl. importance forwards)", "s / 100 iter", "s_per_100_iter"))


def table13(frame: pd.DataFrame, model: str = "llama-7b", ratio: bool = True) -> pd.DataFrame:
    """Rows = the paper's three lines, columns = LoRA, LISA, LoRA+IST (ours / paper (ratio)); without
    the ratio (LaTeX), short row labels and the paper's column names only."""
    sub = select(frame, "time", ok=True)
    sub = sub[sub["model"] == model]
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
