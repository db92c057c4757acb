"""`ist-bench time`: per-phase time of controlled steps, measured (cuda, cpu) or predicted (sim)."""

from __future__ import annotations

import argparse

from ist_bench.commands.common import (
    EPILOG,
    append_json,
    busy_arg,
    case_args,
    case_from,
    case_inputs,
    check_writable,
    dist_args,
)
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("time", help="per-phase time of controlled training steps (GPU; CPU for small models)",
                       description="Time forward, backward and optimizer step with CUDA events (host clock on "
                                   "CPU), after uncounted warm-up steps; no memory tracker runs. " + EPILOG)
    case_args(p, steps=100)
    p.add_argument("--warmup", type=int, default=10, help="uncounted warm-up steps (default 10)")
    p.add_argument("--compare-select", metavar="A,B",
                   help="A/B-compare two selection policies, alternating A B A B in fresh processes")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds with --compare-select (default 3)")
    p.add_argument("--gpu", metavar="CARD", help="with --backend sim: the card to predict the step's time for "
                                                 "(default h100-80g; `ist-bench time --help` lists them; or a "
                                                 "card file's path) — docs/time-prediction.md")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="cuda: steps profiled separately for the GPU's busy time per phase (default: as many as "
                        "timed; 0 skips)")
    p.add_argument("--overhead-blocks", type=int, default=0,
                   help="also time the harness against a bare PyTorch loop in this many interleaved pairs of "
                        "10-step blocks (default 0: off)")
    busy_arg(p)
    dist_args(p)
    p.add_argument("--json", metavar="FILE", help="append the result row(s) to this JSONL file (created if missing; "
                                                  "'-': write them to stdout, the table to stderr)")
    p.set_defaults(func=cmd_time)


CPU_TIME_MAX_PARAMS = 400e6  # above this a CPU step takes minutes: refuse rather than hang


def cmd_time(args: argparse.Namespace) -> int:
    import dataclasses

    from ist_bench.runner.case import gpu_may_be_visible

    case = case_from(args)
    if case.backend == "auto" and not gpu_may_be_visible():
        raise UsageError("timing needs a GPU (none is visible): predict it for a card with --backend sim --gpu CARD, "
                         "or time the tiny and GPT-2 models with --backend cpu")
    if args.gpu is not None and case.backend != "sim":
        raise UsageError("--gpu names the card a prediction is for (--backend sim); a measurement times the card "
                         "it runs on")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    variants = [case]
    if args.compare_select:
        names = [n.strip() for n in args.compare_select.split(",") if n.strip()]
        if len(names) != 2 or names[0] == names[1]:
            raise UsageError(f"--compare-select takes two different policies, A,B; got {args.compare_select!r}")
        variants = [dataclasses.replace(case, select=n, select_opts=_options_for(n, case.select_opts, names))
                    for n in names]
    for v in variants:
        v.validate()   # light: refused before torch is imported
    check_writable(args.json, case_inputs(case), rows=True)
    if case.backend == "sim":
        return _predict_time(args, variants, names if args.compare_select else None)
    if args.profile_steps is not None and args.profile_steps < 0:
        raise UsageError(f"--profile-steps must be >= 0, got {args.profile_steps}")
    if args.overhead_blocks < 0:
        raise UsageError(f"--overhead-blocks must be >= 0, got {args.overhead_blocks}")
    from ist_bench import zoo
    from ist_bench.report.console import print_compare, print_time
    from ist_bench.runner.isolate import run_isolated
    from ist_bench.runner.time import measure_time

    variants = [v.check() for v in variants]
    case = variants[0]
    if case.backend == "sim":   # auto without a GPU torch can use
        raise UsageError("timing needs a GPU (none is visible); for the tiny and GPT-2 models use --backend cpu")
    params = zoo.count_parameters(zoo.load_config(case.model))
    if case.backend == "cpu" and params > CPU_TIME_MAX_PARAMS:
        raise UsageError(f"{case.model} has {params / 1e9:.1f}B parameters: too big to time on the CPU "
                         f"(limit {CPU_TIME_MAX_PARAMS / 1e6:.0f}M); use --backend cuda")
    if case.nproc is not None:
        from ist_bench.distributed.launch import run_case
        from ist_bench.report.console import print_ranks
        if args.compare_select:
            raise UsageError("--compare-select runs one process per side; leave it out with --nproc")
        row = run_case(case, "time", args.warmup)
        if row.get("time"):
            print_time(row)
        print_ranks(row)
        append_json(args.json, [row])
        return 0 if row["status"] in ("ok", "oom") else 1
    if args.compare_select:
        jobs = [{"kind": "time", "case": v.to_dict(), "warmup": args.warmup, "profile_steps": args.profile_steps,
                 "busy_gpu": args.busy_gpu} for _ in range(args.rounds) for v in variants]   # A B A B ...
        rows = list(run_isolated(jobs))
        print_compare(rows, names)
    else:
        from ist_bench.report.console import step_progress
        profiled = (case.steps if args.profile_steps is None else args.profile_steps) if case.backend == "cuda" else 0
        with step_progress(planned=args.warmup + case.steps + profiled) as progress:
            rows = [measure_time(case, warmup=args.warmup, profile_steps=args.profile_steps,
                                 overhead_blocks=args.overhead_blocks, busy_gpu=args.busy_gpu, progress=progress)]
        print_time(rows[0])
    append_json(args.json, rows)
    return 0 if all(r["status"] in ("ok", "oom") for r in rows) else 1


def _predict_time(args: argparse.Namespace, variants: list, names: list[str] | None) -> int:
    """`time --backend sim --gpu CARD`: the step's time predicted from the card's kernel tables."""
    from ist_bench.predict import card_named

    gpu = args.gpu or "h100-80g"
    card_named(gpu)   # an unknown card is one line before the model is built
    if args.nproc is not None:
        raise UsageError("--backend sim predicts one GPU's step; leave --nproc out")
    from ist_bench.predict import predict_time
    from ist_bench.report.console import print_compare, print_prediction, print_time

    rows = [predict_time(v.check(), gpu, args.warmup) for v in variants]
    if names:
        print_compare(rows, names)
    else:
        print_time(rows[0])
    for r in rows:
        print_prediction(r)
    append_json(args.json, rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _options_for(name: str, options: dict, names: list[str]) -> dict:
    """The --select-opt options that policy `name` takes (an A/B run may set options of one side);
    an option neither side takes is an error."""
    import dataclasses

    from ist_bench.selection import POLICIES

    def fields(n):
        return {f.name for f in dataclasses.fields(POLICIES[n].Settings)} if n in POLICIES else set()
    unknown = [k for k in options if not any(k in fields(n) for n in names)]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for --select {' or '.join(names)}")
    return {k: v for k, v in options.items() if k in fields(name)}
