"""The memory cost of IST's held-out data on sim (docs/selection.md): LLaMA-7B, LoRA, 1024 tokens, the
steady step with eval_batch 1 and 16, fixed and fresh. ~1.5 min on 2 CPU cores."""
import json
import time

from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory

for n, mode in ((1, "fixed"), (16, "fixed"), (16, "fresh")):
    t = time.time()
    case = Case(model="llama-7b", method=MethodSpec(name="lora"), backend="sim", seq_len=1024, select="ist",
                select_opts={"eval_batch": n, "eval_data": mode}, steps=0).check()
    row = measure_memory(case)
    s = next(s for s in row["memory"]["steps"] if s["phase"] == "steady")
    print(json.dumps({"eval_batch": n, "eval_data": mode, "status": row["status"],
                      "importance_peak_MiB": round(s.get("importance_peak", 0) / 2**20, 1),
                      "importance_allocated_peak_est_MiB": round(s.get("importance_allocated_peak_est", 0) / 2**20, 1),
                      "allocated_peak_est_MiB": round(s["allocated_peak_est"] / 2**20, 1),
                      "peak_MiB": round(s["peak"] / 2**20, 1), "wall_s": round(time.time() - t, 1)}), flush=True)
