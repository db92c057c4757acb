"""Time prediction (issue 29): the kernel tables' interpolation, the spec-sheet fallback, the host overlap,
and whole predicted rows on synthetic tables whose every kernel time is known."""

import json
import math
import statistics
import time

import pytest

from ist_bench.methods import MethodSpec
from ist_bench.predict.host import simulate
from ist_bench.predict.kernels import gemm_table_us
from ist_bench.predict.trace import Op
from ist_bench.runner.case import Case

DIMS = [16, 64, 256, 1024, 4096, 16384]
BYTES = [2 ** e for e in range(10, 32, 3)]


def synthetic_calibration(gemm_tflops=500.0, bandwidth_gbs=2000.0, per_op_us=5.0) -> dict:
    """Tables of an ideal card: a GEMM takes its FLOPs at `gemm_tflops`, a memory-bound op its bytes at
    `bandwidth_gbs` plus 2 µs, SDPA its FLOPs at half the GEMM rate; the host `per_op_us` per op."""
    def gemm(m, n, k, tf):
        return 2 * m * n * k / (tf * 1e6)
    tables = {"dims": DIMS, **{dt: [[[gemm(m, n, k, tf) for k in DIMS] for n in DIMS] for m in DIMS]
                               for dt, tf in (("bfloat16", gemm_tflops), ("float32", gemm_tflops / 10))}}
    seqs, dims = [256, 1024, 4096], [64, 128]
    attn = {"seq": seqs, "head_dim": dims, "heads": 32}
    for name, f in (("cudnn", 1.0), ("cudnn_bwd", 2.5), ("flash", 1.0), ("flash_bwd", 2.5)):
        attn[name] = [[f * 4 * 32 * s * s * d / (gemm_tflops / 2 * 1e6) for s in seqs] for d in dims]
    memory = {"bytes": BYTES, **{c: [2 + b / (bandwidth_gbs * 1e3) for b in BYTES]
                                 for c in ("elementwise", "softmax", "norm", "reduce", "index")}}
    return {"measured": {"gpu": "synthetic", "torch": "-", "date": "-"}, "gemm": tables, "bmm_factor": 1.0,
            "grouped_factor": 1.0, "attention": attn, "memory": memory,
            "optimizer": {"fused": {"a_us": 10.0, "us_per_byte": 1 / (bandwidth_gbs * 1e3), "us_per_tensor": 0.0},
                          "foreach": {"a_us": 10.0, "us_per_byte": 1 / (bandwidth_gbs * 1e3), "us_per_tensor": 1.0}},
            "host": {"per_op_us": {p: per_op_us for p in ("forward", "backward", "optimizer", "importance", "other")},
                     "launch_us": 4.0, "mark_us": 3.0, "measured_on": "synthetic"}}


@pytest.fixture
def card_file(tmp_path):
    def make(name="h100-80g", **kw):
        from ist_bench.cards import path_of
        data = json.loads(path_of(name).read_text())
        data["calibration"] = synthetic_calibration(**kw)
        path = tmp_path / f"{name}-{len(kw)}.json"
        path.write_text(json.dumps(data))
        return str(path)
    return make


def test_the_gemm_table_is_exact_on_a_power_law_between_and_beyond_its_grid():
    table = synthetic_calibration()["gemm"]
    for m, n, k in ((16, 16, 16), (100, 3000, 777), (4096, 11008, 4096), (5, 40000, 128), (32768, 16384, 100000)):
        assert math.isclose(gemm_table_us(table, "bfloat16", m, n, k), 2 * max(m, 16) * max(n, 16) * max(k, 16) / 5e8,
                            rel_tol=1e-9)


def test_the_host_overlap_is_the_slower_of_host_and_gpu_and_a_sync_waits():
    ops = [Op("forward", "start", "mark")] + [Op("forward", "add", "memory", bytes=1) for _ in range(100)] + \
        [Op("forward", "forward", "mark"), Op("backward", "backward", "mark"), Op("optimizer", "optimizer", "mark"),
         Op("other", "end", "mark")]
    host = {"per_op_us": {p: 10.0 for p in ("forward", "backward", "optimizer", "other")}, "launch_us": 0.0,
            "mark_us": 0.0}
    slow_gpu = simulate(ops, lambda op: 50.0, host)
    fast_gpu = simulate(ops, lambda op: 1.0, host)
    assert math.isclose(slow_gpu.span("start", "forward"), 100 * 50.0, rel_tol=0.01)   # GPU-bound: the kernels
    assert math.isclose(fast_gpu.span("start", "forward"), 100 * 10.0, rel_tol=0.02)   # host-bound: the launches
    assert slow_gpu.busy["forward"] == 5000.0 and fast_gpu.busy["forward"] == 100.0


def _case(**kw):
    d = {"model": "tiny-llama", "method": MethodSpec(name="lora"), "backend": "sim", "seq_len": 64, "steps": 8}
    return Case(**{**d, **kw}).check()


def test_a_predicted_row_is_a_time_row_its_busy_time_the_sum_of_its_kernels(card_file):
    from ist_bench.predict import predict_time, trace_case
    from ist_bench.predict.kernels import KernelModel
    from ist_bench.predict.trace import KERNEL_KINDS
    from ist_bench.schema import Row

    path = card_file()
    row = predict_time(_case(), path)
    assert row["status"] == "ok", row.get("traceback")
    Row.model_validate(row)
    from ist_bench.predict import card_named
    km = KernelModel(card_named(path))
    ops = trace_case(_case())["traces"]["low"]
    for phase in ("forward", "backward", "optimizer"):
        expected = sum(km.us(o) for o in ops if o.phase == phase and o.kind in KERNEL_KINDS) / 1e3
        assert math.isclose(row["time"]["device"]["busy_ms"][phase], expected, rel_tol=1e-9), phase
    assert row["prediction"]["card"] == "h100-80g" and row["prediction"]["fallback"] == {}
    assert row["time"]["device"]["flops_per_step"] > 0 and 0 < row["time"]["device"]["mfu"] < 1


def test_a_higher_lowest_layer_shortens_backward_only(card_file):
    """RST's draws change backward (it stops at the lowest trained block), not forward."""
    from ist_bench.predict import predict_time

    row = predict_time(_case(select="rst", select_opts={"layers": 0.25}, steps=40), card_file())
    busy = row["time"]["device"]["busy"]
    assert busy["forward"]["p10"] == busy["forward"]["p90"]
    assert busy["backward"]["p10"] < busy["backward"]["p90"]


def test_a_host_that_cannot_keep_up_is_flagged(card_file):
    from ist_bench.predict import predict_time

    slow_host = predict_time(_case(), card_file(per_op_us=500.0))
    fast_host = predict_time(_case(), card_file(per_op_us=0.01))
    assert slow_host["prediction"]["host_bound"] and not fast_host["prediction"]["host_bound"]
    assert slow_host["time"]["phases_ms"]["step"]["median"] > fast_host["time"]["phases_ms"]["step"]["median"]


def test_a_card_without_tables_borrows_a_calibrated_cards_scaled_by_the_spec_sheets(card_file, monkeypatch):
    from ist_bench import cards
    from ist_bench.predict import predict_time
    from ist_bench.predict.kernels import SPEC_UNCERTAINTY_PCT

    h100 = cards.load(__import__("pathlib").Path(card_file()))
    table = {**cards.CARDS, "h100-80g": h100}
    monkeypatch.setattr(cards, "_cards", lambda: table)
    a100 = predict_time(_case(), "a100-80g")
    own = predict_time(_case(), "h100-80g")
    h200 = predict_time(_case(), "h200")
    p = a100["prediction"]
    assert p["tables"] == "h100-80g" and p["uncertainty_pct"] is None and "across architectures is not measured" in \
        p["calibration"]   # Ampere from Hopper's tables: no held-out measurement says how far off that is
    assert h200["prediction"]["uncertainty_pct"] == SPEC_UNCERTAINTY_PCT   # the same architecture: held out
    ratio = a100["time"]["device"]["busy_ms"]["step"] / own["time"]["device"]["busy_ms"]["step"]
    lo, hi = sorted((cards.CARDS["h100-80g"].bandwidth_gbs / cards.CARDS["a100-80g"].bandwidth_gbs,
                     cards.CARDS["h100-80g"].bf16_tflops / cards.CARDS["a100-80g"].bf16_tflops))
    assert lo <= ratio <= hi      # between the bandwidth and the compute ratios


def test_the_cli_predicts_prints_what_it_assumed_and_compares_two_policies(card_file, capsys, tmp_path):
    from ist_bench.cli import main

    out = tmp_path / "p.jsonl"
    path = card_file()
    assert main(["time", "--backend", "sim", "--gpu", path, "--model", "tiny-llama", "--seq-len", "64", "--steps", "8",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "predicted for h100-80g (no GPU used)" in text and "tokens/s" in text
    assert json.loads(out.read_text())["backend"] == "sim"
    assert main(["time", "--backend", "sim", "--gpu", path, "--model", "tiny-llama", "--seq-len", "64", "--steps", "8",
                 "--compare-select", "none,rst"]) == 0
    assert "step time rst/none" in capsys.readouterr().out


def test_bad_cards_are_one_line(tmp_path, capsys):
    from ist_bench.cli import main

    bad = tmp_path / "card.json"
    bad.write_text(json.dumps({"name": "x"}))
    assert main(["time", "--backend", "sim", "--gpu", str(bad), "--model", "tiny-llama"]) == 2
    assert "card file" in capsys.readouterr().err
    assert main(["time", "--backend", "sim", "--gpu", "h300", "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'h300'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_llama_7b_step_is_predicted_in_under_10_seconds(card_file):
    from ist_bench.predict import predict_time

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        row = predict_time(Case(model="llama-7b", method=MethodSpec(name="lora"), backend="sim", steps=20).check(),
                           card_file())
        times.append(time.perf_counter() - t0)
        assert row["status"] == "ok"
    assert statistics.median(times) < 10, times


def test_fit_ranks_what_fits_by_predicted_tokens_per_second(capsys, tmp_path):
    """`fit --speed`: every setting that fits, its step predicted for the card with the shipped (measured) tables,
    fastest first."""
    from ist_bench.cli import main

    out = tmp_path / "fit.jsonl"
    assert main(["fit", "--model", "tiny-llama", "--gpu", "h100-80g", "--method", "lora,full", "--select", "none",
                 "--granularity", "256", "--batch-len", "256", "--speed", "--json", str(out)]) == 0
    assert "the fastest setting that fits, predicted for h100-80g" in capsys.readouterr().out
    speed = json.loads(out.read_text())["speed"]
    assert len(speed) == 2 and speed[0]["tokens_per_s"] >= speed[1]["tokens_per_s"] > 0
    assert main(["fit", "--model", "tiny-llama", "--gpu", "40GiB", "--speed"]) == 2   # a size has no kernel tables
