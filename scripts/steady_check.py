"""Is every steady figure a bound? For each memory row of a JSONL (e.g. suites/steady-check.yaml's),
the steady step's allocated peak against the largest of every other step (importance rounds too).

    python scripts/steady_check.py results/steady-check-cuda.jsonl

Prints one line per case and exits 1 if any steady figure is below a step's."""

from __future__ import annotations

import json
import sys

FIGURES = ("allocated_peak", "allocated_peak_est", "peak")


def check(rows: list[dict]) -> list[dict]:
    """Per ok memory row: the figure checked, steady, the worst other step (its number and draw), margin."""
    out = []
    for row in rows:
        if row.get("kind") != "memory" or row.get("status") != "ok":
            continue
        steps = row["memory"]["steps"]
        steady = next(s for s in steps if s["phase"] == "steady")
        k = next(f for f in FIGURES if f in steady)
        others = [(s.get(f"importance_{k}", 0), s) for s in steps] + [(s[k], s) for s in steps if s is not steady]
        worst, at = max(others, key=lambda x: x[0])
        case = row["case"]
        out.append({"case": f"{case['model']} {case['method']['name']}+{case['select']} {row['backend']}",
                    "figure": k, "steady": steady[k], "worst_step": worst, "at_step": at["step"],
                    "phase": at["phase"], "margin": steady[k] - worst, "ok": steady[k] >= worst})
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/steady_check.py RESULTS.jsonl", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    results = check(rows)
    mib = 2**20
    for r in results:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:<34} {r['figure']}: steady {r['steady'] / mib:,.0f} MiB, "
              f"worst step {r['worst_step'] / mib:,.0f} MiB (step {r['at_step']}, {r['phase']}), "
              f"margin {r['margin'] / mib:+,.1f} MiB")
    if not results:
        print("no ok memory rows", file=sys.stderr)
        return 2
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
