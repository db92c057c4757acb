"""`ist-bench report`: paper-style tables and plots from result files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ist_bench.commands.common import check_writable
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="paper-style tables (Markdown, LaTeX, CSV) and plots from result files",
                       description="Render Table 1 (memory) and Table 13 (time) layouts with the paper's numbers "
                                   "beside ours, which of our figures matches the paper best, what each policy "
                                   "saves, and plots (memory at the peak, savings, time per phase, IST importance); "
                                   "sharded rows (--nproc) go to a scale table and a plot of per-rank peak vs N.")
    p.add_argument("results", nargs="+", help="JSONL result files (a later row of a case replaces an earlier one)")
    p.add_argument("--out", help="output path without extension (default reports/<first file's name>)")
    p.add_argument("--card", default="h100-80g", help="the card whose memory the scale plot and table mark "
                                                      "(default h100-80g; a size such as 80GiB also works)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ist_bench.report.console import console
    from ist_bench.report.render import render
    from ist_bench.results import read_rows

    paths = [Path(p) for p in args.results]
    if not sum(len(read_rows(p)) for p in paths):   # a missing, malformed or empty input: before anything is written
        raise UsageError(f"no result rows in {', '.join(map(str, paths))}: nothing to report")
    out = Path(args.out) if args.out else Path("reports") / paths[0].stem
    if out.suffix in (".md", ".tex", ".csv"):
        out = out.with_suffix("")
    if out.name in ("", ".", "..") or out.name.startswith(".") or out.is_dir():
        raise UsageError(f"--out {args.out!r}: a report's path without extension, e.g. reports/table1 "
                         f"(it writes <path>.md, .tex, .csv and .png files)")
    for suffix in (".md", ".tex", ".csv", ".png"):
        check_writable(f"{out}{suffix}", args.results)
    from ist_bench import fit
    fit.target(args.card)   # an unknown card fails before anything is written
    written = render([str(p) for p in paths], out, card=args.card)
    console.print("wrote " + ", ".join(written))
    return 0
