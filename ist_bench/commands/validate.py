"""`ist-bench validate`: sim vs cuda (and predicted vs measured time), cell by cell."""

from __future__ import annotations

import argparse
import os

from ist_bench.commands.common import check_distinct, check_writable
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="sim vs cuda, cell by cell, from a suite's results or a random sample",
                       description="Compare sim with cuda for every case measured on both: peak allocated, "
                                   "each category, and the gap in %%. With --sample N, draw N cells at random "
                                   "from the whole case space (models, methods, policies and their options, "
                                   "batch, length, attention, checkpointing, dtype, optimizer, optimizer state), "
                                   "measure each on sim and then on this machine's GPU, and list the worst "
                                   "cells first (how to check sim on your own card).")
    p.add_argument("results", nargs="*", help="JSONL files with cuda and sim rows of the same cases (a later "
                                               "file's row of a case replaces an earlier one's)")
    p.add_argument("--sample", type=int, metavar="N", help="draw and measure N random cells (needs a GPU)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0): a seed names the same cells "
                                                       "everywhere")
    p.add_argument("--out", help="--sample's rows (default results/validation/sample-<seed>.jsonl; cells already "
                                 "finished there are not run again)")
    p.add_argument("--timeout", type=float, default=600, help="--sample: seconds before a cell is killed "
                                                               "(default 600)")
    p.add_argument("--jobs", type=int, help="--sample: sim cells at once (default: the cores, up to 12)")
    p.add_argument("--timeline-worst", metavar="PNG", help="--sample: measure the worst cell again on both backends "
                                                          "and draw their memory timelines side by side here")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown here, replacing the file ('-': "
                                                      "stdout only)")
    p.add_argument("--md", dest="markdown", help=argparse.SUPPRESS)   # its old name
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    from ist_bench.report.validation import validation_report
    from ist_bench.results import read_rows, write_atomic

    check_writable(args.markdown, args.results)
    if args.sample is not None:
        rows = _validate_sample(args)
    elif args.results:
        rows = [r for path in args.results for r in read_rows(path)]   # in order: a later sim row of a case wins
    else:
        raise UsageError("validate needs a results file, or --sample N to draw and measure N cells (on a GPU)")
    text = validation_report(rows, worst_first=args.sample is not None)
    from ist_bench.report.time_validation import time_report

    timing = time_report(rows)   # predicted (sim) beside measured (cuda) time rows
    if timing:
        text = timing if text.startswith("no case was measured") else text + "\n" + timing
    if args.markdown and args.markdown != "-":
        write_atomic(args.markdown, text)
    print(text)
    return 0


def _validate_sample(args: argparse.Namespace) -> list[dict]:
    """`validate --sample N --seed S`: draw N cells, measure each on sim and cuda, return their rows."""
    if args.results:
        raise UsageError("validate takes a results file or --sample, not both")
    if args.sample < 1:
        raise UsageError(f"--sample must be >= 1, got {args.sample}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeline_worst and not args.timeline_worst.endswith(".png"):
        raise UsageError(f"--timeline-worst {args.timeline_worst!r}: a .png file")
    import torch

    from ist_bench.measure.cuda import card_memory
    from ist_bench.report.console import console
    from ist_bench.results import model_label
    from ist_bench.runner.sample import draw_cases, run_sample

    if not torch.cuda.is_available():
        raise UsageError("validate --sample measures each cell on cuda and sim: it needs a GPU (none is visible)")
    out = args.out or f"results/validation/sample-{args.seed}.jsonl"
    check_writable(out, rows=True)
    check_writable(args.timeline_worst)
    check_distinct({"--out": out, "--timeline-worst": args.timeline_worst, "--markdown": args.markdown})
    cases = draw_cases(args.sample, args.seed)
    console.print(f"validate: {len(cases)} cells drawn with seed {args.seed}; rows to {out}")
    count = iter(range(1, 2 * len(cases) + 1))
    lanes = args.jobs or max(1, min(12, os.cpu_count() or 1))   # sim cells at once (cuda cells one by one)
    rows = run_sample(cases, out, timeout_s=args.timeout, parallel=lanes, card_bytes=card_memory(),
                      on_row=lambda r: console.print(f"  {next(count)}: {r['backend']} {model_label(r['case']['model'])} "
                                                     f"{r['status']}", style="dim"))
    if args.timeline_worst:
        from ist_bench.runner.sample import worst_cell_timelines
        drawn = worst_cell_timelines(rows, args.timeline_worst, timeout_s=args.timeout)
        console.print(f"worst cell's timelines (cuda, sim): {drawn or 'none: no cell finished on both'}")
    return rows
