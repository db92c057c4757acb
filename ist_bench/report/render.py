"""`ist-bench report`: result files -> Markdown, LaTeX (booktabs), CSV and PNG plots, paper beside ours."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from ist_bench.report import plots, tables
from ist_bench.results import read_rows, write_atomic

FIGURE = "allocated peak"


def render(paths: list[str], out: str | Path) -> list[str]:
    """Write out.md, out.tex, out.csv (and out-time.csv) and out-*.png; return the paths written."""
    rows = [r for p in paths for r in read_rows(p)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    cells = tables.memory_cells(rows)
    times = tables.time_cells(rows)
    md = [f"# ist-bench report: {out.name}", "", _sources(paths, rows), ""]
    tex = [f"% ist-bench report {out.name}; paper values from: {tables.PAPER['source']}", ""]
    backends = [b for b in ("cuda", "sim", "cpu") if not cells.empty and b in set(cells["backend"])]
    for backend in backends:
        t1 = tables.table1(cells, backend, FIGURE)
        gpu = _gpu(cells, backend)
        what = {"cuda": "max_memory_allocated over the run", "sim": "sim's estimate of max_memory_allocated",
                "cpu": "peak of live tensors"}[backend]
        md += [f"## Table 1: memory, {backend}" + (f" on {gpu}" if gpu else ""), "",
               f"GiB, batch 1, {_lengths(cells, backend)}. Each cell: ours / paper's GB (ours / paper). "
               f"Ours is the allocator peak ({what}), steady state included (docs/measurement.md); "
               f"the paper does not say what it measured.", "", t1.to_markdown(index=False), ""]
        tex.append(tables.to_latex(t1, f"Training memory (GiB), {backend}" + (f" on {gpu}" if gpu else "") +
                                   ": ours / paper (ratio). " + tables.PAPER["table1"]["caption"]))
        if cells[cells["backend"] == backend]["typical allocated peak"].notna().any():
            typical = tables.table1(cells, backend, "typical allocated peak")
            md += ["### The typical step", "", "The same cells for the median drawn step (a sparse policy's "
                   "usual draw, optimizer state as in a long run) instead of the steady-state bound:", "",
                   typical.to_markdown(index=False), ""]
        sv = tables.savings(cells, backend, FIGURE)
        if not sv.empty:
            md += ["### What layer selection saves", "", _claim(sv, cells, backend), "",
                   sv.to_markdown(index=False, floatfmt=".1f"), ""]
        png = plots.breakdown(rows, backend, f"{out}-{backend}-breakdown.png")
        if png:
            written.append(png)
            md += [f"![memory at the peak]({Path(png).name})", "", _top_modules(rows, backend), ""]
        png = plots.savings(sv, f"{out}-{backend}-savings.png")
        if png:
            written.append(png)
            md += [f"![saving]({Path(png).name})", ""]
    if not cells.empty:
        match = tables.figure_match(cells)
        if not match.empty:
            best = match.sort_values("mean |ours/paper - 1|").iloc[0]
            md += ["### Which of our figures is closest to the paper's", "",
                   f"Closest: **{best['figure']}** on {best['backend']} (mean ours/paper "
                   f"{best['mean ours/paper']:.2f} over {best['cells']} cells). The paper's GB are read as GiB.",
                   "", match.to_markdown(index=False, floatfmt=".3f"), ""]
        buf = io.StringIO()
        tables.table1_long(cells).to_csv(buf, index=False, float_format="%.4f")
        write_atomic(f"{out}.csv", buf.getvalue())
        written.append(f"{out}.csv")
    if not times.empty:
        t13 = tables.table13(times)
        gpu = times["gpu"].dropna().iloc[0] if times["gpu"].notna().any() else "CPU"
        md += [f"## Table 13: time per iteration on {gpu}", "",
               "Each cell: ours / paper (ours / paper); the paper used one 'GTX 4090'. ms are means over the "
               "timed iterations (the paper averaged 100 of 140); s / 100 iter is wall time including IST's "
               "importance forwards. Medians, device busy time and every phase are in the CSV.", "",
               t13.to_markdown(index=False), "", times.to_markdown(index=False, floatfmt=".1f"), ""]
        tex.append(tables.to_latex(t13, f"Time per iteration on {gpu}: ours / paper (ratio). " +
                                   tables.PAPER["table13"]["caption"]))
        buf = io.StringIO()
        times.to_csv(buf, index=False, float_format="%.3f")
        write_atomic(f"{out}-time.csv", buf.getvalue())
        written.append(f"{out}-time.csv")
        png = plots.step_time(times, f"{out}-time.png")
        if png:
            written.append(png)
            md += [f"![time per phase]({Path(png).name})", ""]
    png = plots.importance(rows, f"{out}-importance.png")
    if png:
        written.append(png)
        md += ["## What IST learned", "", "Importance of each layer over the steps of the IST run with the most "
               "steps, and how often each layer was selected.", "", f"![importance]({Path(png).name})", ""]
    md += ["---", f"Paper values: {tables.PAPER['source']} (ist_bench/report/paper.json)."]
    write_atomic(f"{out}.md", "\n".join(md) + "\n")
    write_atomic(f"{out}.tex", "\n".join(tex))
    return [f"{out}.md", f"{out}.tex", *written]


def _sources(paths, rows) -> str:
    prov = next((r.get("provenance") for r in rows if r.get("provenance")), {}) or {}
    versions = ", ".join(f"{k} {prov[k]}" for k in ("torch", "transformers", "peft", "git_commit") if prov.get(k))
    return f"From {', '.join(str(p) for p in paths)} ({len(rows)} rows; {versions})."


def _gpu(cells: pd.DataFrame, backend: str) -> str | None:
    if backend != "cuda":
        return None
    g = cells[cells["backend"] == backend]["gpu"].dropna()
    return g.iloc[0] if len(g) else None


def _lengths(cells: pd.DataFrame, backend: str) -> str:
    sub = cells[cells["backend"] == backend]
    lens = sorted(set(sub["seq_len"].dropna().astype(int)))
    data = sorted(set(sub["data"].dropna()))
    return f"{'/'.join(map(str, lens))} tokens per step ({', '.join(data) or 'synthetic'} data)"


def _claim(sv: pd.DataFrame, cells: pd.DataFrame, backend: str) -> str:
    row = sv[(sv["model"] == "llama-7b") & (sv["method"] == "lora") & (sv["policy"] == "ist")]
    if row.empty:
        return "The paper claims about 36% less training memory with IST on LLaMA-7B."
    r = row.iloc[0]
    paper = (f"its own Table 1 gives {r['paper saving %']:.0f}% of the peak and "
             f"{r['paper saving above weights %']:.0f}% of the memory above the weights"
             if "paper saving %" in r and pd.notna(r.get("paper saving %")) else "")
    text = (f"The paper claims about 36% less training memory with IST on LLaMA-7B ({paper}). We measure for "
            f"LLaMA-7B LoRA+IST at the steady-state bound: {r['saving %']:.1f}% of the peak, "
            f"{r['saving above weights %']:.1f}% of the memory above the weights")
    typ = tables.savings(cells, backend, "typical allocated peak")
    if not typ.empty:
        typ = typ[(typ["model"] == "llama-7b") & (typ["method"] == "lora") & (typ["policy"] == "ist")]
    if not typ.empty and pd.notna(typ.iloc[0]["saving %"]):
        t = typ.iloc[0]
        text += (f"; at the typical step: {t['saving %']:.1f}% of the peak, {t['saving above weights %']:.1f}% "
                 f"above the weights")
    return text + "."


def _top_modules(rows: list[dict], backend: str) -> str:
    lines = []
    for r in tables.latest(rows, "memory"):
        steps = r.get("memory", {}).get("steps") or []
        if r.get("backend") == backend and r["status"] == "ok" and steps and r["case"]["model"] == "llama-7b":
            tops = steps[-1].get("top_activations") or {}
            if tops:
                items = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in list(tops.items())[:3])
                lines.append(f"- {tables.column(r['case'])}: {items}")
    if not lines:
        return ""
    return "Activations live at the steady peak, by module (GiB), LLaMA-7B:\n\n" + "\n".join(lines)
