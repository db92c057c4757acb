"""reports/time-prediction.md (and its plot): predicted against measured step time per card, the held-out card,
and Table 13 predicted for every card beside the measured rows and the paper's.

    python scripts/time_report.py --measured results/gpu/time-*.jsonl --predicted results/time/predicted-*.jsonl \\
        [--table13 results/time/table13-cards.jsonl] --out reports/time-prediction
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measured", nargs="+", required=True)
    ap.add_argument("--predicted", nargs="+", required=True)
    ap.add_argument("--table13", help="predicted Table 13 rows for every card")
    ap.add_argument("--out", default="reports/time-prediction")
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ist_bench.report.time_validation import summary, time_frame

    rows = [json.loads(line) for p in a.measured + a.predicted for line in open(p) if line.strip()]
    df = time_frame(rows)
    from ist_bench.cards import CARDS

    fitted = {(c, label) for c, card in CARDS.items() if card.calibration
              for label in card.calibration.get("insitu", {}).get("fitted_on", [])}
    df["set"] = ["held-out card" if c != t else "fitted" if (c, f"{m} {cell}") in fitted else "validation"
                 for c, t, m, cell in zip(df["card"], df["tables"], df["model"], df["cell"], strict=True)]
    own = df[df["card"] == df["tables"]]
    held = df[df["card"] != df["tables"]]
    s = pd.concat([summary(g).assign(set=name) for name, g in df.groupby("set")], ignore_index=True)
    s = s[["set", *[c for c in s.columns if c != "set"]]]
    measured = [r for r in rows if r.get("backend") == "cuda" and r.get("kind") == "time"]
    gpus = sorted({r["provenance"].get("gpu") for r in measured if r.get("provenance")})
    versions = next((r["provenance"] for r in measured if r.get("provenance")), {})
    md = ["# Step time predicted without a GPU, against the GPU", "",
          f"Measured on {', '.join(gpus)} (torch {versions.get('torch')}, transformers {versions.get('transformers')}): "
          "`scripts/time_cells.py suites/time-validation.yaml` (4 warm-up, 15 timed, 8 profiled steps per cell). "
          "Predicted on a CPU from each card's tables: `scripts/predict_cells.py` (`--held-out`: the card's own tables "
          "hidden, another card's read through the spec sheets). How the prediction works: docs/time-prediction.md. "
          "error % = 100 (predicted - measured) / measured; busy = GPU kernel time per step (profiler), wall = the "
          "step's CUDA-event time; host-bound cells (GPU busy under 80% of the wall, or predicted so) are left out of "
          "the wall figures.", "", "**Sets.** The card's in-model factors (docs/time-prediction.md) were fitted on "
          "half the measured cells, every other one in suite order (`scripts/fit_insitu.py`): those are *fitted*; the "
          "*validation* cells never entered any fit; the *held-out card* rows are another card's measured steps "
          "predicted from this card's tables alone.", "", "## Summary", "", s.round(2).to_markdown(index=False), ""]
    if not held.empty:
        md += ["**Held-out card** (NeuSight's protocol): each card predicted from the other card's tables only — the "
               "rows whose *tables* differ from their *card* above. That error is the uncertainty a prediction from the "
               "spec sheets states (`prediction.uncertainty_pct`).", ""]
    cols = ["set", "card", "tables", "model", "cell", "busy ms", "predicted busy ms", "busy err %", "forward busy err %",
            "backward busy err %", "optimizer busy err %", "wall ms", "predicted wall ms", "wall err %", "host-bound"]
    md += ["## Every cell", "", df.sort_values(["set", "card", "model", "cell"])[cols].round(2).to_markdown(index=False), ""]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, what in zip(axes, ("busy", "wall"), strict=True):
        for (name, card), g in df.groupby(["set", "card"]):
            m, p = g[f"{what} ms"], g[f"predicted {what} ms"]
            ax.scatter(m, p, s=14, label=f"{card}: {name}")
        lim = [max(1.0, df[[f"{what} ms", f"predicted {what} ms"]].min().min() * 0.8),
               df[[f"{what} ms", f"predicted {what} ms"]].max().max() * 1.2]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.fill_between(lim, [x * 0.95 for x in lim], [x * 1.05 for x in lim], color="grey", alpha=0.15, label="±5%")
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel=f"measured {what} ms / step",
               ylabel=f"predicted {what} ms / step", title=f"GPU {what} time" if what == "busy" else "wall time")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = f"{a.out}.png"
    fig.savefig(png, dpi=110, metadata={"Software": None})
    md += [f"![predicted vs measured]({Path(png).name})", ""]
    if a.table13:
        t13 = [json.loads(line) for line in open(a.table13) if line.strip()]
        paper = json.loads(Path("ist_bench/report/paper.json").read_text())["table13"]["columns"]
        md += ["## Table 13 on every card", "", "LLaMA-7B, 1024 tokens, batch 1: ms per step (forward / backward) "
               "predicted for each card; the paper's one GTX 4090 and our measured H100/H200 rows beside. "
               "`ist-bench time --backend sim --gpu CARD --model llama-7b --method lora --select ...`.", "",
               "| card | how | lora fwd / bwd | lisa fwd / bwd | lora+ist fwd / bwd | s / 100 iter (lora, lisa, lora+ist) |",
               "|---|---|---|---|---|---|"]
        cells = {"lora": ("lora", "none"), "lisa": ("full", "lisa"), "lora+ist": ("lora", "ist")}

        def line(card, how, pick):
            vals, s100 = [], []
            for method, sel in cells.values():
                r = pick(method, sel)
                if r is None:
                    vals.append("-")
                    s100.append("-")
                    continue
                ph = r["time"]["phases_ms"]
                vals.append(f"{ph['forward']['mean']:.0f} / {ph['backward']['mean']:.0f}")
                s100.append(f"{r['time']['s_per_100_iter']:.1f}")
            return f"| {card} | {how} | " + " | ".join(vals) + f" | {', '.join(s100)} |"

        def finder(pool, card, backend):
            def pick(method, sel):
                return next((r for r in pool if r["case"]["model"] == "llama-7b" and r["case"]["method"]["name"] == method
                             and r["case"]["select"] == sel and r["backend"] == backend and r["status"] == "ok"
                             and ((r.get("prediction") or {}).get("card") == card or
                                  r["time"].get("device", {}).get("card") == card)), None)
            return pick
        for card in sorted({(r.get("prediction") or {}).get("card") for r in t13} - {None}):
            md.append(line(card, "predicted", finder(t13, card, "sim")))
        for card in sorted({r["time"]["device"].get("card") for r in measured if r["status"] == "ok"} - {None}):
            md.append(line(card, "measured", finder(measured, card, "cuda")))
        md.append("| GTX 4090 (paper) | measured | " + " | ".join(f"{paper[c]['forward_ms']} / {paper[c]['backward_ms']}"
                                                                     for c in cells) +
                  f" | {', '.join(str(paper[c]['s_per_100_iter']) for c in cells)} |")
        md.append("")
    Path(f"{a.out}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {a.out}.md, {png}; {len(df)} pairs ({len(own)} own tables, {len(held)} held out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
