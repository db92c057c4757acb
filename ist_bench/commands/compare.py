"""`ist-bench compare`: the regression gate."""

from __future__ import annotations

import argparse

from ist_bench.commands.common import check_distinct, check_writable, factor, positive, write_text
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="the regression gate: compare results with a baseline (exit 1 on a "
                                       "regression)",
                       description="Pair cases by their settings and compare memory (sim: exact bytes; cuda: "
                                   "a tolerance) and time (GPU busy time by a factor; wall median by a factor "
                                   "and a Mann-Whitney U test). Prints improved / unchanged / regressed / missing "
                                   "/ new. Exit codes: 0 no regression, 1 regression or a baseline case missing "
                                   "from the current run, 2 bad input or results measured on another GPU, "
                                   "backend or package versions.")
    p.add_argument("baseline", help="baseline JSONL (e.g. results/baselines/<gpu>.jsonl)")
    p.add_argument("current", help="current JSONL")
    p.add_argument("--memory-pct", type=float, default=2.0, help="cuda memory tolerance in %% (default 2)")
    p.add_argument("--memory-floor", default="64MiB", help="... or this many bytes, the larger (default 64MiB)")
    p.add_argument("--device-factor", type=float, default=1.05, help="GPU busy time slow-down (default 1.05)")
    p.add_argument("--wall-factor", type=float, default=1.10, help="wall median slow-down (default 1.10)")
    p.add_argument("--p-value", type=float, default=0.002, help="Mann-Whitney U threshold (default 0.002)")
    p.add_argument("--allow-mismatch", action="store_true", help="compare across GPUs, backends or versions")
    p.add_argument("--allow-missing", action="store_true", help="pass although the current run lacks baseline cases "
                                                                 "(default: a missing case fails the gate, as a "
                                                                 "regression does; the verdict says it was allowed)")
    p.add_argument("--gate-wall", action="store_true", help="also fail on wall time where GPU busy time exists "
                                                            "(off: wall time then only moves with the host)")
    p.add_argument("--markdown", metavar="FILE", help="also write a Markdown summary (a PR comment) here, replacing "
                                                      "the file ('-': stdout, the table to stderr)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here, replacing the file ('-': stdout)")
    p.add_argument("--all", action="store_true", help="also list unchanged figures")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ist_bench import compare
    from ist_bench.report.console import console
    from ist_bench.units import parse_bytes

    th = compare.Thresholds(memory_pct=positive("--memory-pct", args.memory_pct),
                            memory_floor=parse_bytes(args.memory_floor),
                            device_factor=factor("--device-factor", args.device_factor),
                            wall_factor=factor("--wall-factor", args.wall_factor),
                            p_value=args.p_value, gate_wall=args.gate_wall)
    if not 0 < th.p_value < 1:
        raise UsageError(f"--p-value must be in (0, 1), got {th.p_value:g}")
    for path in (args.markdown, args.junit):
        check_writable(path, [args.baseline, args.current])
    check_distinct({"--markdown": args.markdown, "--junit": args.junit})
    cmp = compare.compare_files(args.baseline, args.current, th, args.allow_mismatch, args.allow_missing)
    _print_findings(console, [f for f in cmp.findings if f.outcome != "unchanged" or args.all],
                    f"{args.baseline} -> {args.current}", compare._fmt)
    counts = cmp.counts()
    console.print(", ".join(f"{n} {k}" for k, n in counts.items()) +
                  (f" -> [bold red]{cmp.verdict()}[/]" if cmp.failed else f" -> {cmp.verdict()}"))
    if args.markdown:
        write_text(args.markdown, compare.markdown(cmp, args.baseline, args.current))
    if args.junit:
        write_text(args.junit, compare.junit(cmp))
    return 1 if cmp.failed else 0


_OUTCOME_STYLE = {"regressed": "red", "improved": "green", "missing": "yellow", "new": "cyan", "advisory": "yellow"}


_ROW = "  {outcome:<9} {figure:<21} {baseline:>10} {current:>10} {delta:>9}"


def _print_findings(console, findings: list, title: str, fmt) -> None:
    """Findings grouped by case: the case on its own line, then one line per figure with baseline,
    current and the change in % (as pytest-benchmark and asv show it); the note follows on the line
    when it fits the terminal, else under it. 80 columns are enough."""
    from rich.markup import escape

    console.print(escape(title), overflow="fold")
    head = _ROW.format(outcome="outcome", figure="figure", baseline="baseline", current="current", delta="change")
    console.print(head + "  note", style="dim", overflow="fold")
    case = None
    for f in findings:
        if f.case != case:
            case = f.case
            console.print(escape(case), style="bold", overflow="fold")
        line = _ROW.format(outcome=f.outcome, figure=f.figure, baseline=fmt(f.baseline), current=fmt(f.current),
                           delta=_change(f.baseline, f.current))
        style = _OUTCOME_STYLE.get(f.outcome, "")
        text = escape(line) if not style else f"[{style}]{escape(line[:12])}[/]{escape(line[12:])}"
        if f.note and len(line) + 2 + len(f.note) <= console.width:
            console.print(f"{text}  [dim]{escape(f.note)}[/]", overflow="fold")
        else:
            console.print(text, overflow="fold")
            if f.note:
                console.print(" " * 12 + escape(f.note), style="dim", overflow="fold")


def _change(baseline, current) -> str:
    """current vs baseline in %: +7.1%, -0.25%, +3.7e-05% (a few bytes of 27 GiB), 0%; blank if not two numbers."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (baseline, current)):
        return ""
    if current == baseline:
        return "0%"
    if not baseline:
        return "new" if current else ""
    pct = (current - baseline) / abs(baseline) * 100
    return f"{pct:+.1f}%" if abs(pct) >= 1 else f"{pct:+.2f}%" if abs(pct) >= 0.01 else f"{pct:+.1e}%"
