"""Micro-benchmarks (pytest-benchmark). Timing is reported, never asserted; a plain `pytest` runs
each once, untimed, as a smoke test (tests/conftest.py). Time them with:
    pytest tests/test_benchmarks.py --benchmark-only
scripts/bench_cli.py times the commands as a user runs them (fresh processes, wall and CPU).
"""

import subprocess
import sys

from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory


def test_sim_step_llama7b_lora(benchmark):
    case = Case(model="llama-7b", method=MethodSpec(name="lora"), backend="sim", steps=1).check()
    row = benchmark.pedantic(measure_memory, args=(case,), rounds=3, iterations=1)
    assert row["status"] == "ok"


def test_cli_help_in_a_fresh_process(benchmark):
    proc = benchmark.pedantic(subprocess.run, args=([sys.executable, "-m", "ist_bench.cli", "--help"],),
                              kwargs={"capture_output": True, "text": True, "timeout": 60}, rounds=3, iterations=1)
    assert proc.returncode == 0 and "memory" in proc.stdout
