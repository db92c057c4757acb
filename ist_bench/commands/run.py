"""`ist-bench run`: a suite of cases in worker processes, each row written as its case finishes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ist_bench.commands.common import busy_arg, check_writable, cores, raise_interrupt
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite (YAML grid) of cases in worker processes",
                       description="Run every case of a suite: GPU and timed cases each in a fresh process, sim "
                                   "and CPU memory cases in warm workers. Each row is written (flushed, fsynced) "
                                   "as its case finishes; an OOM, a crash or a timeout is a row, not an abort. "
                                   "Exit codes: 0 every case ok or oom, 1 some cases failed, 2 bad input, "
                                   "130 interrupted (finished rows kept; --resume finishes the run).")
    p.add_argument("suite", help="suite YAML, e.g. suites/table1.yaml")
    p.add_argument("--out", help="JSONL to write (default results/<suite>[-<backend>].jsonl, or the first free "
                                 "<...>.N.jsonl: a run never writes into an old file unless told to)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run: skip cases that have an ok "
                                                          "or oom row in the output, run the rest")
    p.add_argument("--append", action="store_true", help="add rows to an existing output file")
    p.add_argument("--backend", help="run every case on this backend instead of the suite's")
    p.add_argument("--jobs", type=int, default=None, help="cases at once (sim/cpu memory suites only; default: "
                                                          "one per CPU core, up to 4, for those, else 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a case is killed (default none)")
    busy_arg(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from ist_bench.safeio import load_yaml
    for signum in (signal.SIGTERM, signal.SIGHUP):   # a closed terminal stops a run as Ctrl-C does (exit 130)
        signal.signal(signum, raise_interrupt)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):   # nan too
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.resume and args.append:
        raise UsageError("--resume and --append exclude each other: --resume skips finished cases, --append adds rows")
    # Before any worker starts: the suite must be a readable, bounded YAML mapping (no torch needed), and
    # there are never more workers than cores or than the suite's cases.
    spec = load_yaml(args.suite, "suite", keys=()) or {}
    if not isinstance(spec, dict):
        raise UsageError(f"malformed suite {args.suite}: expected a mapping with keys name, grid or cases, ...")
    args.jobs_asked, args.jobs = args.jobs, args.jobs and min(args.jobs, cores(cap=None))
    from ist_bench.runner.isolate import Worker
    guess = min(args.jobs or (cores() if args.backend in ("sim", "cpu") else 1), _most_cases(spec))
    ready = [Worker() for _ in range(guess)]
    try:
        return _run_suite(args, ready)
    finally:
        for w in ready:
            w.close()


def _most_cases(spec: dict) -> int:
    """An upper bound on a suite's cases from its raw YAML (before exclusions), without importing torch."""
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    n = 1
    for v in grid.values():
        n *= len(v) if isinstance(v, list) else 1
    listed = spec.get("cases")
    kinds = spec.get("kind")
    return max(1, n * (len(listed) if isinstance(listed, list) and listed else 1)
               * (len(kinds) if isinstance(kinds, list) and kinds else 1))


def _run_suite(args: argparse.Namespace, ready: list) -> int:
    import signal

    from ist_bench.report.console import console, print_suite_progress
    from ist_bench.results import append_rows, read_rows, row_key
    from ist_bench.runner.isolate import leftovers, run_isolated
    from ist_bench.runner.suite import job_cost, jobs, load_suite
    from ist_bench.safeio import ResultsLock, repair_tail

    suite = load_suite(args.suite, backend=args.backend)
    gpu_or_timed = "time" in suite.kinds or any(c.backend == "cuda" for c in suite.cases)
    if args.jobs is not None and args.jobs > 1 and gpu_or_timed:
        raise UsageError("--jobs > 1 would share the machine between GPU or timed cases; use it for sim/cpu "
                         "memory suites only")
    args.jobs = args.jobs or (1 if gpu_or_timed else cores())
    out, mode = _run_output(args, suite)
    with ResultsLock(out, create=mode == "written to"):      # held until the run ends: a second run refuses
        repair_tail(out, warn=lambda m: print(f"ist-bench: warning: {m}", file=sys.stderr))
        found = leftovers(out)                                # rows a SIGKILLed run's workers finished
        if found and mode == "written to":                    # for a file since removed: theirs, not ours
            print(f"ist-bench: warning: dropped {len(found)} row(s) a killed run left for an earlier {out}",
                  file=sys.stderr)
        elif found:
            append_rows(out, found)
            print(f"ist-bench: recovered {len(found)} row(s) a killed run left in its temp folder", file=sys.stderr)
        todo = jobs(suite, busy_gpu=args.busy_gpu)
        if args.resume:
            finished = {row_key(r) for r in read_rows(out) if r.get("status") in ("ok", "oom")}
            todo = [j for j in todo if row_key(j) not in finished]
        if args.jobs > 1:
            todo.sort(key=job_cost, reverse=True)   # the largest first: lanes finish together
        capped = f" (--jobs {args.jobs_asked} capped at {args.jobs} cores)" if (args.jobs_asked or 0) > args.jobs else ""
        console.print(f"{suite.name}: {len(todo)} of {len(suite.cases) * len(suite.kinds)} cases to run; rows {mode} "
                      f"{out}{capped}")
        resume = f"ist-bench run {args.suite} --out {out} --resume" + (f" --backend {args.backend}" if args.backend else "")
        try:
            rows = run_isolated(todo, timeout_s=args.timeout, parallel=args.jobs, ready=ready, out=out)
            failed = print_suite_progress(suite, rows, out, total=len(todo))
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, lambda *a: os._exit(130))   # a second Ctrl-C leaves at once
            print(f"ist-bench: interrupted; finished cases are in {out}. Resume with: {resume}", file=sys.stderr)
            return 130
    if failed:
        console.print(f"{failed} case(s) failed (their rows say why); exit code 1. Re-run them with: {resume}")
    return 1 if failed else 0


def _run_output(args: argparse.Namespace, suite) -> tuple[Path, str]:
    """Where `run` writes, and how: a new file (never over an old one), or --resume / --append. A suite's
    name becomes a file name in results/, never a path."""
    from ist_bench.safeio import safe_name

    if args.out:
        out = Path(args.out)
    else:
        stem = "results/" + safe_name(suite.name, "suite name") + (f"-{safe_name(args.backend, '--backend')}"
                                                                   if args.backend else "")
        out = Path(f"{stem}.jsonl")
        if not (args.resume or args.append):
            n = 2
            while out.exists():
                out, n = Path(f"{stem}.{n}.jsonl"), n + 1
    check_writable(str(out), [args.suite], rows=True)
    if args.resume:
        if not out.exists():
            raise UsageError(f"--resume: no results to resume at {out}")
        return out, "appended to"
    if args.append:
        if not out.exists():
            return out, "written to"
        return out, "appended to"
    if out.exists():
        raise UsageError(f"{out} exists; pass --resume to finish its run, --append to add rows, or another --out")
    return out, "written to"
