"""sim rows of a suite's sharded cases with every rank played (`ist-bench run` plays rank 0, the largest
shards): what a per-rank comparison with a real N-rank run needs. One process per case, in parallel.

    python3 scripts/sim_ranks.py SUITE.yaml OUT.jsonl [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def one(case: dict) -> dict:
    """In a child process (a fake process group per process): the case on sim, ranks 0..N-1."""
    code = ("import json, sys, dataclasses\n"
            "from ist_bench.runner.case import Case\nfrom ist_bench.distributed.fake import simulate\n"
            "c = Case.from_dict(json.loads(sys.argv[1]))\nc = dataclasses.replace(c, backend='sim').check()\n"
            "print(json.dumps(simulate(c, c.nproc, ranks=range(c.nproc), "
            "reshard_after_forward=c.reshard_after_forward)))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True, text=True, timeout=3600)
    if p.returncode:
        return {"kind": "memory", "case": {**case, "backend": "sim"}, "backend": "sim", "status": "error",
                "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    from ist_bench.runner.suite import load_suite
    from ist_bench.safeio import append_rows

    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    cases = [c.to_dict() for c in load_suite(a.suite, backend="sim").cases]
    with ThreadPoolExecutor(a.jobs) as pool:
        for i, row in enumerate(pool.map(one, cases), 1):
            append_rows(a.out, [row])
            print(f"{i}/{len(cases)} {row['case']['model']} {row['status']}", flush=True)


if __name__ == "__main__":
    main()
