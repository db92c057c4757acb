"""Time a suite's cells on this GPU in one process (no fresh process per cell: a device call is short), each
row appended as it finishes; cells not started before --budget seconds are left for a later call.

    python3 scripts/time_cells.py suites/time-validation.yaml OUT.jsonl [--budget 400] [--skip N]

4 warm-up, the suite's timed steps, 8 profiled steps per cell (busy time per phase), the FLOP step."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from ist_bench.process import prepare

    prepare()
    import dataclasses

    import torch

    from ist_bench.results import append_rows
    from ist_bench.runner.suite import load_suite
    from ist_bench.runner.time import measure_time

    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=400, help="start no cell after this many seconds")
    ap.add_argument("--skip", type=int, default=0, help="skip the suite's first N cells")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--profile-steps", type=int, default=8)
    a = ap.parse_args()
    start = time.time()
    cases = load_suite(a.suite, backend="cuda").cases[a.skip:]
    for i, case in enumerate(cases, 1):
        if time.time() - start > a.budget:
            print(f"budget spent: {len(cases) - i + 1} cells left (--skip {a.skip + i - 1})", flush=True)
            break
        t0 = time.time()
        row = measure_time(dataclasses.replace(case).check(), warmup=a.warmup, profile_steps=a.profile_steps,
                           busy_gpu="ignore")
        append_rows(a.out, [row])
        busy = row.get("time", {}).get("device", {}).get("busy_ms", {}).get("step")
        wall = row.get("time", {}).get("phases_ms", {}).get("step", {}).get("median")
        print(f"[{i}/{len(cases)}] {case.model} {case.method.name}+{case.select} {row['status']} "
              f"wall {wall or 0:.1f} ms busy {busy or 0:.1f} ms ({time.time() - t0:.0f} s)", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
