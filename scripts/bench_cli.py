"""Time ist-bench commands as a user runs them: each in a fresh process, wall and CPU (user + sys).

    python scripts/bench_cli.py            # --help, refusals of bad input, models, memory 7B LoRA
    python scripts/bench_cli.py --runs 5 --only help,bad-argument

Prints the median over --runs and the load average (on a shared machine wall time follows the
load; CPU time much less so). Nothing is asserted: this is the benchmark behind the figures in
the issue, not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "help": ["--help"],
    "version": ["--version"],
    "bad-argument": ["memory", "--steps", "abc"],
    "bad-name": ["memory", "--method", "prefix"],
    "batch-0": ["memory", "--batch", "0"],
    "r-0": ["memory", "--r", "0"],
    "seq-len-1": ["memory", "--seq-len", "1"],
    "cuda-no-gpu": ["memory", "--backend", "cuda"],
    "missing-config": ["memory", "--model", "missing.json"],
    "bad-select-opt": ["memory", "--select", "ist", "--select-opt", "beta=2"],
    "models": ["models"],
    "methods": ["methods"],
    "memory-7b-lora": ["memory", "--model", "llama-7b", "--method", "lora"],
}


def run_once(argv: list[str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help=f"comma-separated subset of {', '.join(COMMANDS)}")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(COMMANDS)
    print(f"{'command':<16} {'wall s':>7} {'cpu s':>7}  exit  (median of {args.runs}; load {os.getloadavg()[0]:.1f})")
    for name in names:
        runs = [run_once(COMMANDS[name]) for _ in range(args.runs)]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<16} {wall:7.2f} {cpu:7.2f}  {runs[0][2]:>4}  ist-bench {' '.join(COMMANDS[name])}")
    print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
