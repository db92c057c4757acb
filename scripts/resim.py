"""Measure on sim, with today's code, every cell a validation file measured on cuda: the sim rows a
validation compares against when sim's model of the GPU has changed since the file was written.

    python3 scripts/resim.py OUT.jsonl VALIDATION.jsonl [...] [--jobs N]

`python -m ist_bench.report.validation VALIDATION.jsonl ... OUT.jsonl` then pairs each cuda row with
the newest sim row of its case (OUT's, being last).
"""

from __future__ import annotations

import argparse
import json

from ist_bench.runner.isolate import run_isolated
from ist_bench.safeio import append_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    cases = {}
    for f in a.files:
        for line in open(f):
            r = json.loads(line)
            if r.get("backend") == "cuda" and r.get("status") == "ok" and r.get("kind", "memory") == "memory":
                case = {**r["case"], "backend": "sim"}
                cases[json.dumps(case, sort_keys=True)] = case
    jobs = [{"kind": "memory", "case": c} for c in cases.values()]
    print(f"{len(jobs)} cells", flush=True)
    for i, row in enumerate(run_isolated(jobs, parallel=a.jobs, timeout_s=600), 1):
        append_rows(a.out, [row])
        print(f"{i}/{len(jobs)} {row['case']['model']} {row['status']}", flush=True)


if __name__ == "__main__":
    main()
