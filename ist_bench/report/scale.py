"""The scale report: per-rank peak under FSDP2 against the world size N, per model and method +- IST, with
the card's line (docs/reports.md, "Scale"). Input: sharded rows (`nproc` set), e.g. suites/scale.yaml on sim;
`ist-bench report results/scale-sim.jsonl --card h100-80g` renders them (report/render.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ist_bench.results import case_label, model_label

GiB = 1 << 30
SHOWN = ("weights", "activations", "gradients", "optimizer", "fsdp_buffers")   # what can dominate a rank's peak


def scale_frame(rows: list[dict]) -> pd.DataFrame:
    """One record per (backend, model, method+policy, N): the per-rank peak (the rank that peaks highest:
    cuda's max_memory_allocated, sim's estimate of it) and the category largest at that step's peak.
    A cell given twice keeps the row with more steps, then the higher peak: never the order of the rows."""
    records = []
    for r in rows:
        c = r.get("case", {})
        if r.get("kind", "memory") != "memory" or r.get("status") != "ok" or not c.get("nproc"):
            continue
        s = r["memory"]["summary"]
        peak = s.get("run_allocated_peak") or s.get("run_allocated_peak_est")
        at = r["memory"]["steps"][-1].get("at_peak", {})
        records.append({"backend": r["backend"], "model": model_label(c["model"]), "method": case_label(c),
                        "N": c["nproc"], "peak GiB": peak / GiB, "dominant": max(SHOWN, key=lambda k: at.get(k, 0)),
                        "weights GiB": at.get("weights", 0) / GiB, "activations GiB": at.get("activations", 0) / GiB,
                        "steps": c.get("steps", 0)})
    df = pd.DataFrame.from_records(records, columns=["backend", "model", "method", "N", "peak GiB", "dominant",
                                                     "weights GiB", "activations GiB", "steps"])
    df = df.sort_values(["backend", "model", "method", "N", "steps", "peak GiB"], kind="stable")
    return df.drop_duplicates(["backend", "model", "method", "N"], keep="last").reset_index(drop=True)


def _model_order(df: pd.DataFrame) -> list[str]:
    """Models by size: their per-rank peak at the smallest N they ran at."""
    first = df.sort_values("N").groupby("model")["peak GiB"].first()
    return sorted(first.index, key=lambda m: (first[m], m))


def scale_table(df: pd.DataFrame, usable: float) -> pd.DataFrame:
    """model x N rows; per method its per-rank peak (GiB, * where it fits `usable` bytes with fit's margin),
    IST's saving and what dominates."""
    from ist_bench import fit

    out = []
    for model in _model_order(df):
        sub = df[df["model"] == model]
        for n in sorted(set(sub["N"])):
            cell = sub[sub["N"] == n].set_index("method")
            rec = {"model": model, "N": n}
            for method, r in cell.iterrows():
                fits = r["peak GiB"] * GiB + fit.margin(int(r["peak GiB"] * GiB)) <= usable
                rec[method] = f"{r['peak GiB']:.1f}" + (" *" if fits else "")
            if {"lora", "lora+ist"} <= set(cell.index):
                a, b = cell.loc["lora", "peak GiB"], cell.loc["lora+ist", "peak GiB"]
                rec["IST saves %"] = f"{100 * (a - b) / a:.1f}"
            rec["dominant"] = "/".join(dict.fromkeys(cell["dominant"]))
            out.append(rec)
    return pd.DataFrame.from_records(out)


def plot_scale(df: pd.DataFrame, path: str | Path, usable: float, card: str) -> str:
    """Per-rank peak vs N (log 2), a line per model and method (LoRA solid, +IST dashed), the card's line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(_model_order(df)):
        for method, style in (("lora", "-"), ("lora+ist", "--")):
            sub = df[(df["model"] == model) & (df["method"] == method)].sort_values("N")
            if len(sub):
                ax.plot(sub["N"], sub["peak GiB"], style, marker="o", color=colors[i % len(colors)],
                        label=f"{model} {method}")
    ax.axhline(usable / GiB, color="black", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.text(min(df["N"]), usable / GiB, f"{card}: {usable / GiB:.1f} GiB usable", va="bottom", ha="left", fontsize=8)
    ax.set_xticks(sorted(set(df["N"])), [str(n) for n in sorted(set(df["N"]))])
    ax.set_xlabel("ranks N (FSDP2, one GPU each)")
    ax.set_ylabel("per-rank allocated peak, GiB")
    ax.set_title("Per-rank peak vs world size: batch 1, 1024 tokens, eager attention, no checkpointing", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
