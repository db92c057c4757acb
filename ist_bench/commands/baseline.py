"""`ist-bench baseline`: make or locate a GPU's committed baseline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("baseline", help="make or locate the committed baseline of a GPU (or sim)",
                       description="`update` writes results/baselines/<gpu>.jsonl from result files (the only "
                                   "way a baseline changes: deliberately, then committed); `path` prints where "
                                   "the baseline for these results lives.")
    p.add_argument("action", choices=("update", "path"))
    p.add_argument("results", nargs="+", help="JSONL result files")
    p.add_argument("--name", help="baseline name (default: the GPU's name, or the backend)")
    p.add_argument("--dir", default="results/baselines", help="where baselines live (default results/baselines)")
    p.add_argument("--keep-failed", action="store_true", help="keep failed rows in the baseline")
    p.set_defaults(func=cmd_baseline)


def cmd_baseline(args: argparse.Namespace) -> int:
    from ist_bench import compare
    from ist_bench.report.console import console
    from ist_bench.results import read_rows, write_atomic

    rows = [r for p in args.results for r in read_rows(p)]
    if not rows:
        raise UsageError("no result rows to make a baseline of")
    from ist_bench.safeio import safe_name
    path = Path(args.dir) / f"{safe_name(args.name or compare.baseline_name(rows), 'baseline name')}.jsonl"
    if args.action == "path":
        print(path)
        return 0
    bad = [r for r in rows if r["status"] not in ("ok", "oom")]
    if bad and not args.keep_failed:
        raise UsageError(f"{len(bad)} row(s) failed (e.g. {compare.title(bad[0])}: {bad[0]['status']}); "
                         f"a baseline should not hold them (--keep-failed to keep them)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"baseline {path}: {len(rows)} rows (commit it: it is what `ist-bench compare` gates on)")
    return 0
