#!/usr/bin/env bash
# The quantized cells still open after scripts/gpu_quant.sh, and fit's QLoRA answer checked on the GPU
# (issue 20), plus the one seed-2026 validation cell that never ran on cuda (issue 18). One device call:
#   1. suites/quant.yaml on cuda and sim with --resume on the committed rows: llama-13b int8 +- IST and
#      Llama-2-70B QLoRA + IST (the cells missing from results/gpu/quant-{h200,sim}.jsonl);
#   2. `fit --model llama2-70b --gpu h100-80g --method lora --quant nf4 --select none,ist` on sim, then
#      each answer on cuda with the allocator capped at the card's usable bytes (`--capacity`), at fit's
#      length and one granularity longer (--steps 0: the steady step fit plans for);
#   3. the seed-2026 sample's last cell (mistral-7b AdaLoRA, batch 4 x 2048: sim says 186 GiB) on cuda,
#      to show the OOM sim predicts; meanwhile the sample's sim rows again on the host's cores.
# Usage (repo root, lent box, carry [".whl"]):  IST_BENCH_GIT_COMMIT=<sha> scripts/gpu_quant_fit.sh
set -u
. scripts/device-env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"; tmp=$(mktemp -d)
log() { echo "== $(date +%T) $*"; }
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" || { echo "no bitsandbytes: copy its wheel into .whl/"; exit 2; }
cp results/gpu/quant-h200.jsonl results/gpu/quant-sim.jsonl "$out/"
# sim in the background, no GPU for its processes (the busy-GPU guard would see their CUDA contexts);
# rows go straight to $OUT (a few files: they come back even if the call runs out of time)
CUDA_VISIBLE_DEVICES= ist fit --model llama2-70b --gpu h100-80g --method lora --quant nf4 --select none,ist \
  --json "$out/fit-70b-nf4.jsonl" > "$tmp/fit.log" 2>&1 &
fit_pid=$!
( CUDA_VISIBLE_DEVICES= ist run suites/quant.yaml --backend sim --resume --jobs 2 --timeout 400 --out "$out/quant-sim.jsonl"
  CUDA_VISIBLE_DEVICES= python3 scripts/resim.py "$out/resim-sample-2026.jsonl" results/validation/sample-2026.jsonl --jobs 8
) > "$tmp/sim.log" 2>&1 &
sim_pid=$!
log "quant suite on cuda (resume: the cells without an ok row)"
ist run suites/quant.yaml --backend cuda --resume --timeout 240 --out "$out/quant-h200.jsonl" 2>&1 | tail -6
log "fit on sim"; wait "$fit_pid"; tail -12 "$tmp/fit.log"
python3 - "$out/fit-70b-nf4.jsonl" > "$tmp/fit-check-70b.yaml" <<'PY'
import json, sys
print("name: fit-check-70b\nkind: memory\n"
      "defaults: {model: llama2-70b, method: lora, quant: nf4, steps: 0, backend: cuda}\ncases:")
for a in map(json.loads, open(sys.argv[1])):
    for x in a["answers"]:
        if x.get("max_seq_len"):
            for length in (x["max_seq_len"], x["max_seq_len"] + x["granularity"]):
                print(f"  - {{select: {x['select']}, seq_len: {length}, capacity: '{int(a['usable'])}B'}}")
PY
cat "$tmp/fit-check-70b.yaml"
log "fit's answers on cuda, the allocator capped at the card's usable bytes"
ist run "$tmp/fit-check-70b.yaml" --timeout 150 --out "$out/fit-check-70b-h200.jsonl" 2>&1 | tail -8
log "seed-2026's last cell on cuda (sim: 186 GiB)"
ist memory --model mistral-7b --method adalora --select none --optimizer-state reset --steps 1 --seq-len 2048 --batch 4 \
  --attn eager --dtype bf16 --optim foreach --backend cuda --json "$out/sample-2026-last.jsonl" 2>&1 | grep -E "OOM|peak|rror" | head -3
log "waiting for sim"; wait "$sim_pid"; tail -4 "$tmp/sim.log"
tar -C "$tmp" -czf "$out/logs.tgz" .
log done
