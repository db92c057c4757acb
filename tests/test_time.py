import statistics

import pytest

from ist_bench.cli import main
from ist_bench.measure.timing import Timer, spread
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case, measure_time


def test_spread_reports_median_and_deciles():
    s = spread([float(x) for x in range(1, 101)])
    assert s["median"] == 50.5 and s["min"] == 1 and s["max"] == 100 and s["n"] == 100
    assert s["p10"] == pytest.approx(10.9) and s["p90"] == pytest.approx(90.1)


def test_timer_phases_add_up_to_the_step():
    import time
    t = Timer(cuda=False)
    for step in range(3):
        for phase in ("start", "forward", "backward", "optimizer", "end"):
            t.mark(phase, step)
            time.sleep(0.002)
    ms = t.phase_ms()
    for i in range(3):
        assert ms["forward"][i] + ms["backward"][i] + ms["optimizer"][i] <= ms["step"][i]
        assert ms["step"][i] >= 4 * 2


def test_cpu_timing_counts_steps_after_warmup_and_never_tracks_memory():
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="cpu", seq_len=32, steps=12).check()
    row = measure_time(case, warmup=2)
    t = row["time"]
    assert row["status"] == "ok" and "memory" not in row
    assert len(t["steps_ms"]) == 12 and t["phases_ms"]["step"]["n"] == 12
    assert t["phases_ms"]["step"]["median"] == pytest.approx(statistics.median(t["steps_ms"]))
    assert t["tokens_per_s"] == pytest.approx(32 / (t["phases_ms"]["step"]["median"] / 1e3))
    # s/100 iter is the wall time of the loop, so it includes what the phases leave out
    assert t["s_per_100_iter"] * 10 >= sum(t["steps_ms"]) / 12 * 100 / 100 * 0.99


def test_time_refuses_models_too_big_for_the_cpu_and_sim(capsys):
    assert main(["time", "--model", "llama-7b", "--backend", "cpu"]) == 2
    assert "too big to time on the CPU" in capsys.readouterr().err
    assert main(["time", "--model", "tiny-llama", "--backend", "sim"]) == 2
    assert "timing needs real compute" in capsys.readouterr().err


def test_ab_compare_alternates_policies_in_fresh_processes(tmp_path, capsys):
    import json
    out = tmp_path / "ab.jsonl"
    assert main(["time", "--model", "tiny-llama", "--backend", "cpu", "--seq-len", "32", "--steps", "5",
                 "--warmup", "1", "--compare-select", "none,rst", "--rounds", "2", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"]["select"] for r in rows] == ["none", "rst", "none", "rst"]
    assert len({r["provenance"]["pid"] for r in rows}) == 4
    assert "step time rst/none" in capsys.readouterr().out
