"""`ist-bench report`: result files -> Markdown, LaTeX (booktabs), CSV and PNG plots, paper beside ours.

Every figure a report prints is defined once in docs/reports.md. A report depends on the rows it is
given, never on their order (tests/test_report.py shuffles them).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from ist_bench.report import cells as cellinfo
from ist_bench.report import frame, plots, scale, tables
from ist_bench.results import read_rows, write_atomic

FIGURE = "allocated peak (GiB)"
GiB = 1 << 30
WHAT = {"cuda": "max_memory_allocated over the run", "sim": "sim's estimate of max_memory_allocated",
        "cpu": "peak of live tensors"}


def render(paths: list[str], out: str | Path, card: str = "h100-80g") -> list[str]:
    """Write out.md, out.tex, out.csv (and out-time.csv) and out-*.png; return the paths written. Sharded
    rows (`nproc` set) make the scale section (per-rank peak vs N, `card`'s memory marked), the others
    the paper's tables. Every file is made in a temporary folder beside `out` and moved into place only
    once the whole report is made: a report that fails leaves nothing behind."""
    import os
    import shutil
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        made = _render(paths, stage / out.name, card)
        for path in made:
            os.replace(path, out.parent / Path(path).name)
        return [str(out.parent / Path(path).name) for path in made]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _render(paths: list[str], out: Path, card: str) -> list[str]:
    everything = [r for p in paths for r in read_rows(p)]
    sharded = [r for r in everything if r.get("case", {}).get("nproc")]
    rows = [r for r in everything if not r.get("case", {}).get("nproc")]
    scaled = scale.scale_frame(sharded)
    written: list[str] = []
    cells = frame.build(rows)            # every table and plot below is a function of this one frame
    memory = frame.select(cells, "memory")
    times = frame.csv_view(cells, "time")
    md = [f"# ist-bench report: {out.name}", "", _sources(paths, everything, len(cells) + len(scaled)), ""]
    tex = [f"% ist-bench report {out.name}; paper values from: {tables.PAPER['source']}", ""]
    backends = [b for b in ("cuda", "sim", "cpu") if b in set(memory["backend"])]
    for backend in backends:
        unchecked = _unchecked(backend)
        t1 = tables.table1(cells, backend, FIGURE, unchecked=unchecked)
        gpu = _gpu(memory, backend)
        md += [f"## Table 1: memory, {backend}" + (f" on {gpu}" if gpu else ""), "",
               f"GiB, batch 1, {_lengths(memory, backend)}. Each cell: ours / the paper's (ours / paper); the "
               f"paper prints GB, read here as GiB. Ours is the allocator peak ({WHAT[backend]}), steady state "
               f"included; *weights* is the base model's weights (parameters x bytes of the weight dtype), the "
               f"same for every method; what a method adds is in its cells and in the CSV's `adapter weights "
               f"(GiB)`; definitions: docs/reports.md.", "", t1.to_markdown(index=False), "",
               _check_line(memory, backend, unchecked), ""]
        tex.append(tables.to_latex(
            tables.transposed(tables.table1(cells, backend, FIGURE, ratio=False, unchecked=unchecked)),
            f"Training memory in GiB, {backend}" + (f" on {gpu}" if gpu else "") + ", " + _lengths(memory, backend) +
            f": ours ({WHAT[backend]}) / the paper's Table 1 (printed as GB, read as GiB). Weights: the base model's."))
        here = frame.select(cells, "memory", backend)
        legacy = here[here["seed's median as typical"] == True]   # noqa: E712 (the column holds NaN too)
        if len(legacy):
            md += ["### The typical step", "", f"Not shown: in {len(legacy)} cell{'s' if len(legacy) > 1 else ''} with a layer-selection policy "
                   "the rows' *typical* is the median of one seed's few drawn steps (rows written before "
                   "ist-bench derived it from the policy's draw distribution: docs/measurement.md, \"typical\"); "
                   "re-run the rows to get it. The steady-state bound above does not depend on the draws.", ""]
        elif here["typical allocated peak (GiB)"].notna().any():
            typical = tables.table1(cells, backend, "typical allocated peak (GiB)", unchecked=unchecked)
            md += ["### The typical step", "", "The same cells at the *typical* step instead of the steady-state "
                   "bound: a property of the policy's draw distribution, not of one seed's draws (how it is "
                   "computed: docs/measurement.md, \"typical\").", "", typical.to_markdown(index=False), ""]
        sv = tables.savings(cells, backend, FIGURE)
        if not sv.empty:
            md += ["### What layer selection saves", "", _claim(sv, cells, backend), "",
                   sv.to_markdown(index=False, floatfmt=".1f", missingval="-"), ""]
        png = plots.breakdown(cells, backend, f"{out}-{backend}-breakdown.png")
        if png:
            written.append(png)
            md += [f"![memory at the peak]({Path(png).name})", "", _top_modules(cells, backend), ""]
        png = plots.savings(sv, f"{out}-{backend}-savings.png", FIGURE, backend)
        if png:
            written.append(png)
            md += [f"![saving]({Path(png).name})", ""]
    if not memory.empty:
        match = tables.figure_match(cells)
        if not match.empty:
            best = match.sort_values(["mean |ours/paper - 1|", "backend", "figure"]).iloc[0]
            md += ["### Which of our figures is closest to the paper's", "",
                   f"Closest: **{best['figure']}** on {best['backend']} (mean ours/paper "
                   f"{best['mean ours/paper']:.2f} over {best['cells']} cells). The paper's GB are read as GiB.",
                   "", match.to_markdown(index=False, floatfmt=".3f"), ""]
        buf = io.StringIO()
        tables.table1_long(cells).to_csv(buf, index=False, float_format="%.4f")
        write_atomic(f"{out}.csv", buf.getvalue())
        written.append(f"{out}.csv")
    if not times.empty:
        t13 = tables.table13(cells)
        gpu = times["gpu"].dropna().iloc[0] if times["gpu"].notna().any() else "CPU"
        md += [f"## Table 13: time per iteration on {gpu}", "",
               "Each cell: ours / paper (ours / paper); the paper used one 'GTX 4090'. ms are means over the "
               "timed iterations (the paper averaged 100 of 140); s / 100 iter is wall time including IST's "
               "importance forwards. Medians, device busy time and every phase are in the CSV.", "",
               t13.to_markdown(index=False), "", times.to_markdown(index=False, floatfmt=".1f", missingval="-"), ""]
        tex.append(tables.to_latex(tables.table13(cells, ratio=False),
                                   f"Time per iteration on {gpu}, LLaMA-7B: ours / the paper's Table 13 (one "
                                   f"GTX 4090). ms: mean forward and backward; s / 100 iter: wall time including "
                                   f"IST's importance forwards."))
        buf = io.StringIO()
        times.to_csv(buf, index=False, float_format="%.3f")
        write_atomic(f"{out}-time.csv", buf.getvalue())
        written.append(f"{out}-time.csv")
        png = plots.step_time(cells, f"{out}-time.png")
        if png:
            written.append(png)
            md += [f"![time per phase]({Path(png).name})", ""]
    run, why = plots.importance_run(rows)
    png = plots.importance(rows, f"{out}-importance.png")
    if png:
        written.append(png)
        md += ["## What IST learned", "", f"Importance of each layer over the steps of the IST run with the most "
               f"steps ({why}), and how often each layer was selected.", "", f"![importance]({Path(png).name})", ""]
    elif why != plots.NO_RUN:
        md += ["## What IST learned", "", f"Not drawn: {why} (docs/reports.md).", ""]
    if not scaled.empty:
        md += _scale(scaled, out, card, written)
    md += ["---", f"Paper values: {tables.PAPER['source']} (ist_bench/report/paper.json).",
           f"GPU validation: {_coverage()}"]
    write_atomic(f"{out}.md", "\n".join(md) + "\n")
    write_atomic(f"{out}.tex", "\n".join(tex))
    return [f"{out}.md", f"{out}.tex", *written]


def _scale(df: pd.DataFrame, out: Path, card: str, written: list[str]) -> list[str]:
    """The scale section from `scale.scale_frame`'s records: a table and a plot per backend."""
    from ist_bench import fit

    tgt = fit.target(card)
    md = ["## Scale: per-rank peak under FSDP2", "",
          f"GiB per rank, the rank that peaks highest (sim plays rank 0, which holds the largest shards); `*`: fits "
          f"the {tgt.name} ({tgt.usable / GiB:.2f} GiB usable) with fit's margin; dominant: the largest category at "
          f"the peak (docs/reports.md, \"Scale\").", ""]
    for backend in sorted(set(df["backend"])):
        sub = df[df["backend"] == backend]
        png = scale.plot_scale(sub, f"{out}-{backend}-scale.png", tgt.usable, tgt.name)
        written.append(png)
        md += [f"### {backend}", "", scale.scale_table(sub, tgt.usable).to_markdown(index=False), "",
               f"![per-rank peak vs N]({Path(png).name})", ""]
    return md


def _distinct(rows, key: str) -> str:
    return "/".join(sorted({str(r["provenance"][key]) for r in rows if (r.get("provenance") or {}).get(key)}))


def _sources(paths, rows, n_cells: int) -> str:
    versions = ", ".join(f"{k} {v}" for k in ("torch", "transformers", "peft", "git_commit") if (v := _distinct(rows, k)))
    n = len(rows) - n_cells
    dup = f"; {n} {'row repeats a cell' if n == 1 else 'rows repeat cells'} shown once (docs/reports.md)" if n else ""
    return f"From {', '.join(str(p) for p in paths)} ({len(rows)} rows, {n_cells} cells{dup}; {versions})."


def _unchecked(backend: str):
    """A predicate (model, column) -> True when the cell is an estimate no GPU validation covers."""
    if backend == "cuda":
        return lambda model, col: False
    covered = cellinfo.validated()["cells"]
    return lambda model, col: f"{model} {col}" not in covered


def _check_line(cells: pd.DataFrame, backend: str, unchecked) -> str:
    if backend == "cuda":
        return "Measured on the GPU: these are the allocator's own numbers."
    sub = cells[cells["backend"] == backend]
    miss = sorted({f"{m} {c}" for m, c in zip(sub["model"], sub["column"], strict=True) if unchecked(m, c)})
    v = cellinfo.validated()
    head = (f"Every cell here was checked against the {v['gpu']}: sim within {v['max_abs_gap_pct']}% of its "
            f"allocator peak (reports/validation.md)." if not miss else
            f"{tables.UNCHECKED} marks cells no GPU validation covers ({', '.join(miss)}): sim's unchecked "
            f"estimate. The other cells were checked against the {v['gpu']}, sim within "
            f"{v['max_abs_gap_pct']}% (reports/validation.md).")
    return head if backend == "sim" else head + " cpu figures are the tracker's tensor peak on the host."


def _coverage() -> str:
    return cellinfo.covered() + " Any other cell of a sim table is sim's unchecked estimate (marked)."


def _gpu(cells: pd.DataFrame, backend: str) -> str | None:
    if backend != "cuda":
        return None
    g = sorted(set(cells[cells["backend"] == backend]["gpu"].dropna()))
    return "/".join(g) if g else None


def _lengths(cells: pd.DataFrame, backend: str) -> str:
    sub = cells[cells["backend"] == backend]
    lens = sorted(set(sub["seq_len"].dropna().astype(int)))
    data = sorted(set(sub["data"].dropna()))
    return f"{'/'.join(map(str, lens))} tokens per step ({', '.join(data) or 'synthetic'} data)"


def _claim(sv: pd.DataFrame, cells: pd.DataFrame, backend: str) -> str:
    row = sv[(sv["model"] == "llama-7b") & (sv["cell"] == "lora+ist")]
    if row.empty:
        return "The paper claims about 36% less training memory with IST on LLaMA-7B."
    r = row.iloc[0]
    paper = (f"its own Table 1 gives {r['paper saving %']:.0f}% of the peak and "
             f"{r['paper saving above weights %']:.0f}% of the memory above the weights"
             if "paper saving %" in r and pd.notna(r.get("paper saving %")) else "")
    text = (f"The paper claims about 36% less training memory with IST on LLaMA-7B ({paper}). We measure for "
            f"LLaMA-7B LoRA+IST at the steady-state bound: {r['saving %']:.1f}% of the peak, "
            f"{r['saving above weights %']:.1f}% of the memory above the base model's weights")
    typ = tables.savings(cells, backend, "typical allocated peak (GiB)")
    if not typ.empty:
        typ = typ[(typ["model"] == "llama-7b") & (typ["cell"] == "lora+ist")]
    if not typ.empty and pd.notna(typ.iloc[0]["saving %"]):
        t = typ.iloc[0]
        text += (f"; at the typical step: {t['saving %']:.1f}% of the peak, {t['saving above weights %']:.1f}% "
                 f"above the weights")
    return text + "."


def _top_modules(cells: pd.DataFrame, backend: str) -> str:
    lines = []
    sub = frame.select(cells, "memory", backend, ok=True)
    for _, r in sub[(sub["model"] == "llama-7b") & sub["top activations"].notna()].iterrows():
        items = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in list(r["top activations"].items())[:3])
        lines.append(f"- {r['column']}: {items}")
    if not lines:
        return ""
    return "Activations live at the steady peak, by module (GiB), LLaMA-7B:\n\n" + "\n".join(lines)
