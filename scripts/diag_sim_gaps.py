"""Where sim and the GPU part (issue 18): run cases on cuda with the allocator's history recorded, and on
sim in the same process, and write what explains a gap between them.

    python3 scripts/diag_sim_gaps.py OUT_DIR [CASES.jsonl]

CASES.jsonl: one case dict a line (a result row's `case`); default: the cells of issue 18.

For each case: the cuda row and the sim row (both with the tracker's categories), the allocator's
`memory_stats()` (allocated vs requested peak: block rounding and unsplit remainders), and a
compressed `_snapshot()` with the alloc/free trace, for offline replay. Plus a probe of what SDPA
saves for backward with grouped-query attention on this GPU.
"""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

import torch

from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory

CASES = {
    "parallel-ist-gc-2048": dict(model="llama-7b", method=MethodSpec(name="parallel"), select="ist",
                                 grad_checkpointing=True, seq_len=2048, attn="eager", steps=1),
    "tinyllama-dora-sdpa-b8": dict(model="tinyllama-1.1b", method=MethodSpec(name="dora"), attn="sdpa", batch=8,
                                   seq_len=1024, steps=1),
    "tinyllama-lora-sdpa-b8": dict(model="tinyllama-1.1b", method=MethodSpec(name="lora"), attn="sdpa", batch=8,
                                   seq_len=1024, steps=1),
    "llama7b-lora-gc-2048": dict(model="llama-7b", method=MethodSpec(name="lora"), grad_checkpointing=True,
                                 seq_len=2048, attn="eager", steps=1),
}


def sdpa_gqa_probe() -> dict:
    """Shapes SDPA saves for backward with enable_gqa on this GPU (32 query heads, 4 key/value heads)."""
    q = torch.randn(2, 32, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((list(t.shape), str(t.dtype))) or t,
                                                  lambda t: t):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return {"grad_fn": type(out.grad_fn).__name__, "saved": saved}


def main(out: Path, cases_file: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"sdpa_gqa": sdpa_gqa_probe(), "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    cases = {name: Case(**kw).to_dict() for name, kw in CASES.items()}
    if cases_file:
        cases = {f"cell{i}": json.loads(line) for i, line in enumerate(Path(cases_file).read_text().splitlines())}
    for name, d in cases.items():
        entry = {}
        for backend in ("sim", "cuda"):
            case = Case.from_dict({**d, "backend": backend}).check()
            if backend == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.memory._record_memory_history(max_entries=400_000, context=None, stacks="python")
            row = measure_memory(case)
            entry[backend] = row
            if backend == "cuda":
                stats = torch.cuda.memory_stats()
                entry["stats"] = {k: v for k, v in stats.items() if k.endswith(".all.peak") or k.startswith("num_")}
                snap = torch.cuda.memory._snapshot()
                torch.cuda.memory._record_memory_history(enabled=None)
                with gzip.open(out / f"{name}.snapshot.pkl.gz", "wb") as f:
                    pickle.dump({"device_traces": snap.get("device_traces")}, f)
        s, c = entry["sim"]["memory"]["summary"], entry["cuda"]["memory"]["summary"]
        summary[name] = {
            "cuda_allocated_peak": c.get("run_allocated_peak"), "sim_estimate": s.get("run_allocated_peak_est"),
            "cuda_tracker_peak": c.get("run_peak"), "sim_tracker_peak": s.get("run_peak"),
            "requested_peak": entry["stats"].get("requested_bytes.all.peak"),
            "allocated_stat_peak": entry["stats"].get("allocated_bytes.all.peak"),
        }
        print(name, json.dumps(summary[name]), flush=True)
        (out / f"{name}.rows.json").write_text(json.dumps(entry))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["sdpa_gqa"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
