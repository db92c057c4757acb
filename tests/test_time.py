import statistics

import pytest

from ist_bench.cli import main
from ist_bench.measure.timing import Timer, spread
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.time import measure_time


def test_spread_reports_median_and_deciles():
    s = spread([float(x) for x in range(1, 101)])
    assert s["median"] == 50.5 and s["min"] == 1 and s["max"] == 100 and s["n"] == 100
    assert s["p10"] == pytest.approx(10.9) and s["p90"] == pytest.approx(90.1)


def test_timer_attributes_time_to_the_phase_it_was_spent_in():
    import time
    t = Timer(cuda=False)
    for step in range(3):
        t.mark("start", step)
        time.sleep(0.010)                      # "forward"
        t.mark("forward", step)
        time.sleep(0.030)                      # "backward"
        t.mark("backward", step)
        t.mark("optimizer", step)
        t.mark("end", step)
    ms = t.phase_ms()
    for i in range(3):
        assert 10 <= ms["forward"][i] < 25 and 30 <= ms["backward"][i] < 45 and ms["optimizer"][i] < 5
        assert ms["step"][i] >= 40


def test_cpu_timing_counts_steps_after_warmup_and_never_tracks_memory():
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="cpu", seq_len=32, steps=12).check()
    row = measure_time(case, warmup=2)
    t = row["time"]
    assert row["status"] == "ok" and "memory" not in row
    assert len(t["steps_ms"]) == 12 and t["phases_ms"]["step"]["n"] == 12
    assert t["phases_ms"]["step"]["median"] == pytest.approx(statistics.median(t["steps_ms"]))
    # the loop's wall time (s/100 iter) includes what the timed phases leave out, so the
    # throughput over the phases is at least the throughput over the wall clock
    assert t["s_per_100_iter"] / 100 * 1e3 >= statistics.mean(t["steps_ms"])
    assert t["tokens_per_s"] >= 32 * 100 / t["s_per_100_iter"]


def test_adalora_timing_schedule_spans_warmup_and_timed_steps():
    case = Case(model="tiny-llama", method=MethodSpec(name="adalora"), backend="cpu", seq_len=16, steps=3).check()
    row = measure_time(case, warmup=2)
    assert row["status"] == "ok" and row["case"]["method"]["total_steps"] == 2 + 3 + 1   # + the FLOP-counted step


def test_time_refuses_models_too_big_for_the_cpu_and_sim(capsys):
    assert main(["time", "--model", "gpt2-large", "--backend", "cpu"]) == 2
    assert "too big to time on the CPU" in capsys.readouterr().err
    assert main(["time", "--model", "tiny-llama", "--backend", "sim", "--gpu", "nope"]) == 2
    assert "unknown GPU 'nope'" in capsys.readouterr().err
    assert main(["time", "--model", "tiny-llama", "--backend", "cuda", "--gpu", "h100-80g"]) == 2
    assert "--gpu names the card a prediction is for" in capsys.readouterr().err
    assert main(["time", "--model", "tiny-llama", "--backend", "cpu", "--compare-select", "rst,rst"]) == 2
    assert "two different policies" in capsys.readouterr().err


@pytest.mark.slow
def test_ab_compare_alternates_policies_in_fresh_processes(tmp_path, capsys):
    import json
    out = tmp_path / "ab.jsonl"
    assert main(["time", "--model", "tiny-llama", "--backend", "cpu", "--seq-len", "32", "--steps", "5",
                 "--warmup", "1", "--compare-select", "none,rst", "--rounds", "2", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"]["select"] for r in rows] == ["none", "rst", "none", "rst"]
    assert len({r["provenance"]["pid"] for r in rows}) == 4
    assert "step time rst/none" in capsys.readouterr().out


def test_flops_per_step_count_a_training_step_without_importance_forwards():
    """IST's FLOP-counted step must not include an importance round, even when one falls due on it."""
    rows = {}
    for select in ("none", "ist"):
        case = Case(model="tiny-llama", method=MethodSpec(name="lora"), select=select, backend="cpu", seq_len=32,
                    steps=9, select_opts={"layers": 1.0} if select == "ist" else {}).check()
        rows[select] = measure_time(case, warmup=0)      # the FLOP step is step 9 + 1 = 10: a round is due
        assert rows[select]["status"] == "ok", rows[select].get("error")
    assert rows["ist"]["time"]["device"]["flops_per_step"] == rows["none"]["time"]["device"]["flops_per_step"]


def test_communication_busy_time_is_split_from_compute():
    """FSDP2's collectives run on their own streams: their busy time is the union of the NCCL kernels';
    what they add beyond compute (exposed) is the step's busy time less compute's."""
    from ist_bench.measure.timing import comm_split

    marks = [("start", 0), ("forward", 0), ("backward", 0), ("optimizer", 0), ("end", 0)]
    acts = [("spin_kernel", 0, 1), ("ncclDevKernel_AllGather_RING_LL", 2, 8), ("gemm", 6, 16),   # 4 us overlap
            ("spin_kernel", 20, 21), ("gemm", 22, 32), ("ncclDevKernel_ReduceScatter_Sum", 30, 40),
            ("ncclDevKernel_AllGather_RING_LL", 34, 38),                # inside the reduce-scatter: counted once
            ("spin_kernel", 50, 51), ("adam", 52, 54), ("spin_kernel", 60, 61), ("spin_kernel", 70, 71)]
    split = comm_split(acts, marks)
    assert split["comm"] == {"forward": [0.006], "backward": [0.010], "optimizer": [0.0]}
    assert split["compute"] == {"forward": [0.010], "backward": [0.010], "optimizer": [0.002]}
    assert split["exposed"] == {"forward": [pytest.approx(0.004)], "backward": [pytest.approx(0.008)],
                                "optimizer": [0.0]}


def test_a_cpu_timing_run_shows_its_progress_and_how_long_is_left_where_no_terminal_draws_a_bar(capsys):
    """`time --backend cpu` (what the GPU error suggests) once printed nothing for minutes when stderr was
    not a terminal: the bar is drawn only on one, so elsewhere plain lines say where it is and what is left."""
    from ist_bench.cli import main

    assert main(["time", "--backend", "cpu", "--model", "tiny-llama", "--seq-len", "64", "--steps", "3",
                 "--warmup", "1"]) == 0
    err = capsys.readouterr().err
    assert "time: warm-up step 1 of 1" in err and "s left" in err and "time: timed step 3 of 3" in err


def test_flops_of_an_sdpa_step_on_a_grouped_query_model_count_every_query_head(monkeypatch):
    """torch before 2.13 asserts equal head counts in its SDPA FLOP formulas, so `time --attn sdpa` on any
    grouped-query model (Llama 3, Mistral, Qwen 2.5) ended in an error after timing it (H100, torch 2.11).
    ist-bench's formulas expand the key/value heads first: the same total as torch 2.13's GQA-aware one,
    also with the old assertion put back."""
    import torch
    from torch.utils import flop_counter as fc

    from ist_bench.measure import backends
    from ist_bench.measure.timing import count_flops, sdpa_flops
    from ist_bench.runner.build import build
    from ist_bench.runner.step import run_steps

    flash = torch.ops.aten._scaled_dot_product_flash_attention
    q, kv = (1, 32, 1024, 128), (1, 8, 1024, 128)
    assert sdpa_flops()[flash](q, kv, kv) == fc.sdpa_flop_count(q, q, q) == 2 * 2 * 32 * 1024 * 1024 * 128
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", attn="sdpa", seq_len=64,
                steps=1).check()   # tiny-llama: 4 query heads, 2 key/value heads
    b = build(case)

    def step():
        with backends.step_context("sim"):
            run_steps(b.model, b.optimizer, b.batches, b.device, b.policy, [0])
    seen = []
    real = fc.sdpa_flop_count

    def old_torch(query, key, value):   # torch 2.11's check
        seen.append(key[1])
        assert query[1] == key[1], "sdpa_flop_count: query/key/value shapes are incompatible"
        return real(query, key, value)
    total = count_flops(step)
    monkeypatch.setattr(fc, "sdpa_flop_count", old_torch)
    assert count_flops(step) == total > 0 and seen


def test_profiled_steps_replay_the_timed_steps_draws_rounds_and_batches():
    """Busy time comes from separate profiled steps after the timed ones; a LISA run once profiled other
    draws than it timed (mistral-7b Parallel+LISA on the H100: busy 136.4 ms above a wall median of 110.4).
    The profiled steps now replay the timed ones: draw, importance round, batch."""
    from test_selection_contract import unbound

    from ist_bench.runner.time import replay_plan
    from ist_bench.selection import IST, LISA

    lisa = unbound(LISA(gamma=2, interval=3, seed=1), 8)
    lisa.history = [{"step": s, "active": lisa.select(s)} for s in range(10, 40)]   # 10 warm-up, 30 timed
    plan = replay_plan(lisa, 30, 40, 30)
    assert [f["active"] for _, f, _ in plan] == [lisa.select(s) for s in range(10, 40)]
    assert [d for _, _, d in plan] == list(range(10, 40)) and [s for s, _, _ in plan] == list(range(40, 70))
    assert [lisa.select(s) for s in range(40, 70)] != [f["active"] for _, f, _ in plan]   # not what 40.. would draw
    ist = unbound(IST(interval=10), 8)
    ist.history = [{"step": s, "active": [0, 1]} for s in range(5, 25)]
    ist.rounds = [{"step": 10}, {"step": 20}]
    assert [s for (_, f, s) in replay_plan(ist, 20, 25, 20) if f["importance"]] == [10, 20]
