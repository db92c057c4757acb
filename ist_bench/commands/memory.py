"""`ist-bench memory`: the memory breakdown of one controlled training step."""

from __future__ import annotations

import argparse
from pathlib import Path

from ist_bench.commands.common import (
    EPILOG,
    append_json,
    busy_arg,
    case_args,
    case_from,
    case_inputs,
    check_distinct,
    check_writable,
    dist_args,
)
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="memory breakdown of one controlled training step",
                       description="Measure weights, activations, gradients, optimizer state and peak of "
                                   "controlled training steps. " + EPILOG)
    case_args(p)
    p.add_argument("--capacity", help="memory to run against, e.g. 80GiB: sim simulates the OOM, cuda caps "
                                      "its allocator")
    busy_arg(p)
    dist_args(p)
    p.add_argument("--json", metavar="FILE", help="append the result row (bytes) to this JSONL file (created if "
                                                  "missing; '-': write it to stdout, the table to stderr)")
    p.add_argument("--timeline", metavar="FILE", help="also write the memory timeline (live bytes by category over "
                                                       "the steps, phases and peak marked): .png, .html (memory_viz), "
                                                       ".pickle (a torch.cuda memory snapshot) or .json; on cuda the "
                                                       "allocator's own snapshot goes beside it (.cuda.pickle)")
    p.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    case = case_from(args).validate()   # light: a bad input is refused before torch is imported
    check_writable(args.json, case_inputs(case), rows=True)
    if args.timeline:
        from ist_bench.measure.timeline import FORMATS
        if Path(args.timeline).suffix not in FORMATS:
            raise UsageError(f"--timeline {args.timeline!r}: the file must end in {', '.join(FORMATS)}")
        check_writable(args.timeline, case_inputs(case))
        check_distinct({"--json": args.json, "--timeline": args.timeline})
    if case.nproc is not None and args.timeline:
        raise UsageError("--timeline is for one process; leave it out with --nproc")
    from ist_bench.report.console import print_memory
    from ist_bench.runner.memory import measure_memory

    case = case.check()
    if case.nproc is not None:
        return _memory_dist(args, case)
    row = measure_memory(case, busy_gpu=args.busy_gpu, timeline=args.timeline)
    print_memory(row)
    if row.get("timeline"):
        from ist_bench.report.console import console
        console.print(f"timeline: wrote {', '.join(row['timeline'])}", soft_wrap=True)
    append_json(args.json, [row])
    return 0 if row["status"] in ("ok", "oom") else 1


def _memory_dist(args: argparse.Namespace, case) -> int:
    """`memory --nproc N`: N ranks under FSDP2/DDP (torchrun on cpu/cuda; a fake process group on sim)."""
    from ist_bench.distributed.launch import run_case
    from ist_bench.report.console import print_memory, print_ranks

    row = run_case(case)
    print_memory(row)
    print_ranks(row)
    append_json(args.json, [row])
    return 0 if row["status"] in ("ok", "oom") else 1
