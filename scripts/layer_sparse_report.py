"""reports/layer-sparse.md: every layer-selection policy with LoRA and full fine-tuning, side by side.

    python scripts/layer_sparse_report.py results/layer-sparse-sim.jsonl [TIME.jsonl ...] > reports/layer-sparse.md

Memory from the sim rows (steady: the bound a long run reaches; typical: the expected step over the policy's
draws; docs/measurement.md); what trains outside the blocks and what it costs (its gradient and two AdamW
moments in the weights' dtype, per parameter: 3 x 2 bytes in bf16); step time from any time rows given
(measured on a GPU, or predicted: `ist-bench time --backend sim --gpu CARD`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GiB = 1 << 30
ORDER = ("none", "ist", "rst", "lisa", "lift", "ila", "badam", "hift", "dropbp", "ows")
# what the papers and users report, as the issue quotes them (GB as printed)
CLAIMS = [
    ("BAdam paper", "Llama-3-8B full fine-tuning: BAdam about 23.5 GB against 144.8 GB for AdamW"),
    ("a LISA user", "Llama-3.1-8B: LISA (2 of 20 layers) 52.14 GB against LoRA r16 34.56 GB; the embeddings, LM "
                    "head and final norm LISA always trains were 70.7% of what it trained"),
    ("another LISA user", "LISA 31 GB against LoRA 23 GB"),
]


def main(argv: list[str]) -> int:
    rows = [json.loads(line) for path in argv for line in open(path) if line.strip()]
    mem = {(r["case"]["model"], r["case"]["method"]["name"], r["case"]["select"]): r
           for r in rows if r.get("kind", "memory") == "memory" and r["status"] == "ok"}
    times = {}
    plain = {"seq_len": 1024, "batch": 1, "attn": "eager", "grad_checkpointing": False, "dtype": "bf16", "optim": "fused"}
    for r in rows:
        c = r["case"]
        if r.get("kind") == "time" and r["status"] == "ok" and c["model"] in {k[0] for k in mem} and \
                all(c.get(k, v) == v for k, v in plain.items()) and c["select"] in ORDER:
            card = (r.get("prediction") or {}).get("card") or r["time"].get("device", {}).get("card") or r["backend"]
            how = "predicted" if r["backend"] == "sim" else "measured"
            times[(r["case"]["model"], r["case"]["method"]["name"], r["case"]["select"], card, how)] = \
                r["time"]["phases_ms"]["step"]["median"]
    out = ["# The layer-sparse field side by side", "",
           "Every policy with LoRA and with full fine-tuning, 1024 tokens, batch 1, bf16, eager attention, on sim "
           "(`ist-bench run suites/layer-sparse-sim.yaml`; rows: results/layer-sparse-sim.jsonl; sim is within 0.1% of "
           "the allocator on the cells validated: reports/validation.md, reports/models.md). GiB: *steady* is the "
           "bound a long run reaches, *typical* the expected step over the policy's draws (DropBP's is its steady: "
           "docs/selection.md). *outside* is what trains outside the blocks whatever the draw, and *its cost* its "
           "gradient and AdamW moments (3 x 2 bytes per parameter in bf16). Policy settings are each one's "
           "defaults (docs/selection.md); `none` trains every layer.", ""]
    for model in dict.fromkeys(k[0] for k in mem):
        out += [f"## {model}", "", "| policy | LoRA steady | LoRA typical | full steady | full typical | full: trains "
                "outside the blocks | its cost (GiB) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for sel in ORDER:
            cells = []
            for method in ("lora", "full"):
                r = mem.get((model, method, sel))
                if r is None:
                    cells += ["-", "-"]
                    continue
                s = r["memory"]["summary"]["allocated_peak_est"]
                cells += [f"{r['memory']['summary']['run_allocated_peak_est'] / GiB:.2f}", f"{s['typical'] / GiB:.2f}"]
            full = mem.get((model, "full", sel))
            outside = full.get("trainable_outside_params", 0) if full else 0
            cells += [f"{outside / 1e6:,.0f} M" if full else "-", f"{outside * 6 / GiB:.2f}" if full else "-"]
            out.append(f"| {sel} | " + " | ".join(cells) + " |")
        out.append("")
    if times:
        cards = sorted({(k[3], k[4]) for k in times})
        out += ["## Step time", "", "Median ms per step (forward + backward + optimizer; IST's importance rounds apart): "
                "measured on the lent GPUs (scripts/time_cells.py) and predicted for other cards "
                "(`ist-bench time --backend sim --gpu CARD`, docs/time-prediction.md).", "",
                "| model | method | policy | " + " | ".join(f"{c} ({h})" for c, h in cards) + " |",
                "|---|---|---|" + "---:|" * len(cards)]
        for key in sorted({k[:3] for k in times}, key=lambda k: (k[0], k[1], ORDER.index(k[2]) if k[2] in ORDER else 99)):
            vals = [times.get((*key, c, h)) for c, h in cards]
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                       + " |")
        out.append("")
    out += ["## What the papers and users report", ""] + [f"- {who}: {what}." for who, what in CLAIMS] + [""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
