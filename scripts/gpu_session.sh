#!/usr/bin/env bash
# Every GPU measurement the committed results come from, in parts that fit one device call each.
# Run from the repo root on the lent GPU box: IST_BENCH_GIT_COMMIT=<sha> scripts/gpu_session.sh A|B|C|D|E|F|G
# Rows, logs and a tarball go to $OUT.
set -u
. scripts/device-env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out/r"
log() { echo "== $(date +%T) $*"; }
case "${1:-}" in
A)  # memory: Table 1 on cuda, the peers, a real OOM, the fit knobs
    log table1;   ist run suites/table1.yaml --backend cuda --out "$out/r/table1-h200.jsonl" --timeout 300 | tail -3
    log policies; ist run suites/policies.yaml --backend cuda --out "$out/r/policies-h200.jsonl" --timeout 300 | tail -3
    log oom;      ist run suites/oom.yaml --out "$out/r/oom-h200.jsonl" --timeout 300 | tail -6
    log knobs;    ist run suites/knobs.yaml --backend cuda --out "$out/r/knobs-h200.jsonl" --timeout 300 | tail -6
    ;;
B)  # time: Table 13 (100 timed + 100 profiled iterations), harness overhead, two A/B runs; fit's boundaries
    log table13;  ist run suites/table13.yaml --out "$out/r/table13-h200.jsonl" --timeout 400 | tail -6
    log overhead; ist time --model llama-7b --method lora --steps 50 --profile-steps 0 --overhead-blocks 6 \
                    --json "$out/r/overhead-h200.jsonl" 2>&1 | tail -4
    for k in 1 2; do
      log "ab $k";  ist time --model llama-7b --method lora --compare-select none,rst --rounds 1 --steps 50 \
                    --profile-steps 50 --json "$out/r/ab-h200.jsonl" 2>&1 | tail -3
    done
    log fit;      ist run suites/fit-check.yaml --out "$out/r/fit-check-h200.jsonl" --timeout 300 | tail -22
    ;;
C)  # the regression gate: ci-gpu twice (no false alarm), once with a regression injected; then the
    # rest of fit's boundary check (part B ran out of time in it)
    for k in 1 2; do
      log "ci $k";  ist run suites/ci-gpu.yaml --out "$out/r/ci-gpu-$k.jsonl" --timeout 300 | tail -2
    done
    log "ci injected"
    IST_BENCH_INJECT=unfreeze ist run suites/ci-gpu.yaml --out "$out/r/ci-gpu-injected.jsonl" --timeout 300 | tail -2
    log "fit (rest)"
    cp results/gpu/fit-check-h200.jsonl "$out/r/fit-check-h200.jsonl"
    ist run suites/fit-check.yaml --out "$out/r/fit-check-h200.jsonl" --resume --timeout 120 | tail -14
    ;;
D)  # (a later session) fit's batch answers and the 64 GiB Series case; three more plain reruns of
    # ci-gpu, each compared with the committed baseline, for the false-alarm rate
    log "fit (batch)"
    cp results/gpu/fit-check-h200.jsonl "$out/r/fit-check-h200.jsonl"
    ist run suites/fit-check.yaml --out "$out/r/fit-check-h200.jsonl" --resume --timeout 120 | tail -16
    for k in 3 4 5; do
      log "ci $k";  ist run suites/ci-gpu.yaml --out "$out/r/ci-gpu-$k.jsonl" --timeout 300 | tail -2
      ist compare results/baselines/nvidia-h200.jsonl "$out/r/ci-gpu-$k.jsonl" --markdown "$out/r/compare-ci-$k.md" \
        > "$out/r/compare-ci-$k.txt"; echo "compare exit $?"; tail -4 "$out/r/compare-ci-$k.txt"
    done
    ;;
E)  # issue 28: the new models and MoE, cuda beside sim on this host's torch and transformers (sim on the CPU
    # while the GPU runs); the 60-step MoE steady check; issue 26 item 16 (Gemma-2 + SDPA) is the suite's last
    card=$(python3 -c "import torch; n=torch.cuda.get_device_name(0); print('h200' if 'H200' in n else 'h100')")
    log "sim ($card host)"
    ( ist run suites/models.yaml --backend sim --jobs 6 --out "$out/r/models-sim-$card.jsonl" --timeout 500 \
        > "$out/r/models-sim.log" 2>&1 ) &
    log models;       ist run suites/models.yaml --out "$out/r/models-$card.jsonl" --timeout 240 | tail -22
    log steady-moe;   ist run suites/steady-moe.yaml --out "$out/r/steady-moe-$card.jsonl" --timeout 240 | tail -3
    log "gemma2 sdpa (issue 26 item 16)"   # refused in one line where this transformers has no SDPA for Gemma-2
    for b in cuda sim; do
      ist memory --model gemma2-9b --method lora --attn sdpa --steps 0 --backend $b --json "$out/r/gemma2-sdpa-$card.jsonl" 2>&1 | tail -2
    done
    wait; tail -3 "$out/r/models-sim.log"
    python3 scripts/steady_check.py "$out/r/steady-moe-$card.jsonl"
    ist validate "$out/r/models-$card.jsonl" "$out/r/models-sim-$card.jsonl" --markdown "$out/r/models-$card.md" | tail -25
    ;;
F)  # issue 29: this card's kernel tables (scripts/microbench.py), then issue 31's policies on cuda (LS=0 skips
    # them), then the time validation cells from SKIP until BUDGET seconds (default 300) are spent; the
    # policies' sim rows last
    card=$(python3 -c "import torch; n=torch.cuda.get_device_name(0); print('h200' if 'H200' in n else 'h100-80g')")
    log "microbench ($card)"; python3 scripts/microbench.py --card "$card" --out "$out/r/card-$card.json" 2>&1 | tail -9
    [ "${LS:-1}" = 1 ] && { log layer-sparse;  ist run suites/layer-sparse.yaml --backend cuda \
                         --out "$out/r/layer-sparse-$card.jsonl" --timeout 120 | tail -8; }
    log cells;         python3 scripts/time_cells.py suites/time-validation.yaml "$out/r/time-$card.jsonl" \
                         --budget "${BUDGET:-300}" --skip "${SKIP:-0}" 2>&1 | tail -45
    [ "${LS:-1}" = 1 ] && { log "layer-sparse sim"; ist run suites/layer-sparse.yaml --backend sim --jobs 4 \
                         --out "$out/r/layer-sparse-sim-$card.jsonl" --timeout 120 | tail -8; }
    ;;
G)  # issue 31's rest: the policies' full fine-tuning cells (cuda, then sim on the same host) and 60-step runs
    card=$(python3 -c "import torch; n=torch.cuda.get_device_name(0); print('h200' if 'H200' in n else 'h100-80g')")
    log layer-sparse;  ist run suites/layer-sparse.yaml --backend cuda --out "$out/r/layer-sparse-$card.jsonl" \
                         --timeout 180 | tail -12
    log "layer-sparse sim"; ist run suites/layer-sparse.yaml --backend sim --jobs 4 \
                         --out "$out/r/layer-sparse-sim-$card.jsonl" --timeout 180 | tail -12
    log steady;        ist run suites/steady-layer-sparse.yaml --out "$out/r/steady-layer-sparse-$card.jsonl" \
                         --timeout 400 | tail -8
    python3 scripts/steady_check.py "$out/r/steady-layer-sparse-$card.jsonl" | tail -12
    ;;
*)  echo "usage: scripts/gpu_session.sh A|B|C|D|E|F|G"; exit 2 ;;
esac
tar -C "$out" -czf "$out/results-$1.tgz" r
log done
