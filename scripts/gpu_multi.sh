#!/usr/bin/env bash
# FSDP2 across the GPUs of one host (issue "GPU run on several GPUs"), one device call:
#   1. suites/fsdp2.yaml (llama-7b/13b x LoRA/Series x none/IST) at N = the machine's GPU count, on cuda;
#      on 4+ GPUs also suites/fsdp2-70b.yaml (Llama-2-70B LoRA +- IST); meanwhile sim plays every rank
#      of every cell on the host's cores (scripts/sim_ranks.py);
#   2. `ist-bench validate` on the rows: per-rank sim vs cuda gap;
#   3. `ist-bench time` of llama-13b LoRA +- IST at N = 1, 2 (and 4): step time, the collectives' busy time.
# Usage (repo root, lent multi-GPU box):  IST_BENCH_GIT_COMMIT=<sha> scripts/gpu_multi.sh
# NPROC=1 FSDP2_MODELS=llama-7b FSDP2_METHODS=series: the one-GPU dry run of the same path (no time part with NO_TIME=1).
# NCCL's NVLink multicast stays off: the lent machines set NCCL_NVLS_ENABLE=0; keep it.
set -u
. scripts/device-env.sh
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
out=${OUT:-/tmp/out}; mkdir -p "$out"; tmp=$(mktemp -d)
log() { echo "== $(date +%T) $*"; }
n=${NPROC:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
models=${FSDP2_MODELS:-"llama-7b, llama-13b"}; methods=${FSDP2_METHODS:-"lora, series"}
sed -e "s/nproc: 2/nproc: $n/" -e "s/model: \[llama-7b, llama-13b\]/model: [$models]/" \
  -e "s/method: \[lora, series\]/method: [$methods]/" suites/fsdp2.yaml > "$tmp/fsdp2.yaml"
suites=("$tmp/fsdp2.yaml")
if [ "$n" -ge 4 ]; then sed "s/nproc: 4/nproc: $n/" suites/fsdp2-70b.yaml > "$tmp/fsdp2-70b.yaml"; suites+=("$tmp/fsdp2-70b.yaml"); fi
cat "$tmp/fsdp2.yaml" | grep -E "model|method|nproc"
log "N=$n; sim, every rank (background)"
( for s in "${suites[@]}"; do CUDA_VISIBLE_DEVICES= python3 scripts/sim_ranks.py "$s" "$out/fsdp2-sim.jsonl" --jobs 6; done ) \
  > "$tmp/sim.log" 2>&1 &
sim_pid=$!
for s in "${suites[@]}"; do
  log "cuda: $(basename "$s")"
  ist run "$s" --backend cuda --timeout 400 --out "$out/fsdp2-cuda.jsonl" --append 2>&1 | tail -12
done
if [ -z "${NO_TIME:-}" ]; then
  for k in 1 2 4; do
    [ "$k" -le "$n" ] || continue
    for sel in none ist; do
      log "time llama-13b lora+$sel --nproc $k"
      ist time --model llama-13b --method lora --select "$sel" --backend cuda --nproc "$k" --steps 10 --warmup 5 \
        --json "$out/fsdp2-time.jsonl" 2>&1 | grep -E "│ step|^GPU busy|^rank|rror" | head -4
    done
  done
fi
log "waiting for sim"; wait "$sim_pid"; tail -3 "$tmp/sim.log"
cat "$out/fsdp2-cuda.jsonl" "$out/fsdp2-sim.jsonl" > "$tmp/pairs.jsonl"
ist validate "$tmp/pairs.jsonl" --markdown "$out/validation-fsdp2.md" 2>&1 | tail -30
tar -C "$tmp" -czf "$out/logs.tgz" .
log done
