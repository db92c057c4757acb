"""Issue 16's check: per case, the steady step's allocated peak against every other step of the run.

    python3 scripts/steady_check.py results/gpu/steady-check-h200.jsonl
"""

import sys

from ist_bench.results import case_label, read_rows

GiB = 1 << 30


def main(path: str) -> int:
    bad = 0
    for row in read_rows(path):
        if row["status"] != "ok":
            print(f"{row['case']['model']} {case_label(row['case'])} {row['backend']}: {row['status']}")
            continue
        key = "allocated_peak" if row["backend"] == "cuda" else "allocated_peak_est"
        steps = row["memory"]["steps"]
        steady = [s[key] for s in steps if s.get("phase") == "steady"]
        others = [(s[key], s["step"], s.get("phase")) for s in steps if s.get("phase") not in ("steady", "candidate")]
        worst = max(others)
        ok = steady and steady[0] >= worst[0]
        bad += not ok
        print(f"{row['case']['model']} {case_label(row['case']):22s} {row['backend']:4s} steady {steady[0] / GiB:7.3f} GiB"
              f"  worst of {len(others)} steps {worst[0] / GiB:7.3f} GiB (step {worst[1]}, {worst[2]})"
              f"  {'ok' if ok else 'UNDER'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
