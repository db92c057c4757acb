"""Micro-benchmarks (pytest-benchmark). Timing is reported, never asserted; the README's test
command disables timing, so these run once as smoke tests. Time them with:
    pytest tests/test_benchmarks.py --benchmark-enable
"""

from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory


def test_sim_step_llama7b_lora(benchmark):
    case = Case(model="llama-7b", method=MethodSpec(name="lora"), backend="sim", steps=1).check()
    row = benchmark.pedantic(measure_memory, args=(case,), rounds=3, iterations=1)
    assert row["status"] == "ok"
