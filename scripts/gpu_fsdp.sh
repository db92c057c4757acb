#!/usr/bin/env bash
# FSDP2 on one GPU (issue 19): `--nproc 1 --shard fsdp2` (torchrun, NCCL, one rank) on cuda against sim's
# fake-process-group figures, for llama-7b and llama-13b x LoRA +- IST, then LLaMA-30B and Qwen2.5-32B x
# LoRA +- IST (they fit 141 GB at one rank), the 30B full fine-tune as a plain case (an oom row), and
# `time --nproc 1` of llama-13b LoRA +- IST (step time; the collectives' busy time beside compute).
# sim cases run in the background on the host's cores while the GPU runs the cuda ones. ~8 min on an H200.
# Usage (repo root, lent box):  IST_BENCH_GIT_COMMIT=<sha> scripts/gpu_fsdp.sh
# (FSDP_SMALL, FSDP_BIG, FSDP_FULL, FSDP_TIME override the model lists; empty skips a part)
# CPU check of the script itself:  scripts/gpu_fsdp.sh --dry-run   (tiny-llama, cpu instead of cuda, 64 tokens)
set -u
. scripts/device-env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
log() { echo "== $(date +%T) $*"; }
real=cuda; small=${FSDP_SMALL-"llama-7b llama-13b"}; big=${FSDP_BIG-"llama-30b qwen2.5-32b"}; extra=(); full=${FSDP_FULL-llama-30b}
timed=${FSDP_TIME-llama-13b}
if [ "${1:-}" = "--dry-run" ]; then real=cpu; small=tiny-llama; big=""; full=""; timed=tiny-llama; extra=(--seq-len 64 --optim foreach); fi
sims=()
for m in $small $big; do
  for s in none ist; do
    timeout 420 python3 -m ist_bench.cli memory --model "$m" --method lora --select "$s" --backend sim --nproc 1 --shard fsdp2 --steps 2 "${extra[@]}" \
      --json "$out/fsdp-sim.jsonl" > "$out/sim-$m-$s.log" 2>&1 &
    sims+=($!)
  done
done
for m in $small $big; do
  for s in none ist; do
    log "$real $m lora+$s"
    timeout 150 python3 -m ist_bench.cli memory --model "$m" --method lora --select "$s" --backend "$real" --nproc 1 --shard fsdp2 --steps 2 \
      "${extra[@]}" --json "$out/fsdp-$real.jsonl" 2>&1 | grep -E "^run peak|^│ +0 |OOM|ERROR|error" | head -4
  done
done
if [ -n "$full" ]; then
  log "$real $full full (expected: oom)"
  timeout 120 python3 -m ist_bench.cli memory --model "$full" --method full --backend "$real" --steps 1 --json "$out/full-$real.jsonl" 2>&1 | \
    grep -E "^run peak|OOM|ERROR" | head -2
fi
for m in $timed; do
  for s in none ist; do
    log "time $real $m lora+$s --nproc 1"
    timeout 200 python3 -m ist_bench.cli time --model "$m" --method lora --select "$s" --backend "$real" --nproc 1 --steps 5 \
      --warmup 3 "${extra[@]}" --json "$out/time-$real.jsonl" 2>&1 | grep -E "│ step|^GPU busy|^rank|ERROR|rror" | head -4
  done
done
log "waiting for ${#sims[@]} sim cases"; for p in "${sims[@]}"; do wait "$p"; done
python3 - "$out" "$real" <<'PY'
import json, sys
out, real = sys.argv[1], sys.argv[2]
def rows(name):
    try:
        return {(r["case"]["model"], r["case"]["select"]): r for r in map(json.loads, open(f"{out}/{name}"))}
    except FileNotFoundError:
        return {}
sim, dev = rows("fsdp-sim.jsonl"), rows(f"fsdp-{real}.jsonl")
key = "run_allocated_peak" if real == "cuda" else "run_peak"
summary = []
print(f"{'model':14} {'select':6} {real + ' peak GiB':>14} {'sim GiB':>9} {'gap %':>7}  weights/grads/optim equal")
for k in sorted(set(sim) | set(dev)):
    s, d = sim.get(k), dev.get(k)
    ds = d and d.get("memory", {}).get("summary", {}); ss = s and s.get("memory", {}).get("summary", {})
    dp = ds.get(key) if ds else None; sp = ss.get("run_allocated_peak_est") if ss else None
    same = bool(d and s and d.get("ranks") and s.get("ranks")) and all(
        d["ranks"][0].get(c) == s["ranks"][0].get(c) for c in ("weights", "gradients", "optimizer"))
    gap = None if not (dp and sp) else 100 * (sp - dp) / dp
    summary.append({"model": k[0], "select": k[1], "device": dp, "sim": sp, "gap_pct": gap, "shards_equal": same,
                    "status": [d and d["status"], s and s["status"]]})
    f = lambda v: "-" if v is None else f"{v / 2**30:.2f}"
    print(f"{k[0]:14} {k[1]:6} {f(dp):>14} {f(sp):>9} {'-' if gap is None else f'{gap:+.2f}':>7}  {same}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
tar -czf "$out/logs.tar.gz" -C "$out" $(cd "$out" && ls *.log 2>/dev/null) && rm -f "$out"/*.log
ls -la "$out"
