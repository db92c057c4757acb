#!/usr/bin/env bash
# Quantized bases on the lent H200 (docs/quant.md), one device call of ~8 minutes: suites/quant.yaml on
# cuda (LLaMA-7B/13B x {QLoRA nf4+double quant, LoRA int8} x {none, IST}, QLoRA with paged-adamw8bit,
# Llama-2-70B QLoRA +- IST) while the same suite runs on sim on the host's cores; then sim vs cuda cell by
# cell. bitsandbytes is not installed there: carry its wheel in .whl/ (device-env.sh installs it):
#   mkdir -p .whl && cp /tmp/bnbw/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl .whl/
#   run: IST_BENCH_GIT_COMMIT=<sha> scripts/gpu_quant.sh        (carry: [".whl"])
# --dry-run: the same commands on sim only, tiny-llama (a CPU check of this script).
set -u
. scripts/device-env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out/r"
log() { echo "== $(date +%T) $*"; }
suite=suites/quant.yaml
cuda=cuda
if [ "${1:-}" = "--dry-run" ]; then
  suite=$out/quant-dry.yaml; cuda=sim
  sed -e 's/llama2-70b/tiny-llama/; s/llama-13b/tiny-llama/; s/llama-7b/tiny-llama/' suites/quant.yaml > "$suite"
fi
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" || { echo "no bitsandbytes: copy its wheel into .whl/"; exit 2; }
log "sim (background)"
# no GPU for sim's workers: importing bitsandbytes queries the device, which would open a CUDA context
# that the cuda cases' busy-GPU guard then refuses to share
CUDA_VISIBLE_DEVICES= ist run "$suite" --backend sim --jobs 6 --timeout 400 --out "$out/r/quant-sim.jsonl" > "$out/r/sim.log" 2>&1 &
sim_pid=$!
log "cuda"
ist run "$suite" --backend "$cuda" --timeout 240 --out "$out/r/quant-h200.jsonl" 2>&1 | tail -14
log "waiting for sim"; wait "$sim_pid"; tail -3 "$out/r/sim.log"
cat "$out/r/quant-h200.jsonl" "$out/r/quant-sim.jsonl" > "$out/r/quant-validation.jsonl"
if [ "$cuda" = cuda ]; then
  ist validate "$out/r/quant-validation.jsonl" --markdown "$out/r/validation-quant.md" 2>&1 | tail -24
fi
python3 - "$out/r/quant-h200.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); c = r["case"]; s = r.get("memory", {}).get("summary", {})
    peak = s.get("run_allocated_peak") or s.get("run_allocated_peak_est")
    w = s.get("weights", {}).get("steady")
    print(f"{c['model']:11} {c.get('quant', 'none'):4} {c['optim']:15} {c['select']:4} {r['status']:5} "
          f"weights {w} peak {peak}" + (f" paged {s['optimizer_paged']['steady']}" if "optimizer_paged" in s else ""))
PY
tar -C "$out" -czf "$out/quant-results.tgz" r
log done
