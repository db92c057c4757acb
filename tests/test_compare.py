"""The regression gate and device-time helpers, on doctored results (outcomes and exit codes)."""

import copy
import json

import numpy as np
import pytest

from ist_bench.cli import main
from ist_bench.measure.timing import busy_by_phase, count_flops, union_ms

GiB = 1 << 30


def _memory_row(backend="cuda", gpu="NVIDIA H100 80GB HBM3", activations=14 * GiB):
    figs = {"weights": 12.8 * GiB, "activations": activations, "gradients": 0.2 * GiB, "optimizer": 0.4 * GiB,
            "method_state": 0, "peak": 27.5 * GiB, "allocated_peak": 27.6 * GiB}
    summary = {k: {"first": int(v), "steady": int(v), "max": int(v)} for k, v in figs.items()}
    summary["run_allocated_peak"] = int(27.6 * GiB)
    return {"schema": 1, "kind": "memory", "backend": backend, "status": "ok",
            "case": {"model": "llama-7b", "method": {"name": "lora"}, "select": "none", "select_opts": {},
                     "backend": backend, "seq_len": 1024},
            "memory": {"summary": summary}, "provenance": {"gpu": gpu, "torch": "2.11.0", "peft": "0.21.0"}}


def _time_row(select="none", backward=80.0, seed=0, gpu="NVIDIA H100 80GB HBM3"):
    rng = np.random.default_rng(seed)
    steps = list(60 + backward + 1 + rng.normal(0, 1.5, 100))      # host noise on the wall clock
    return {"schema": 1, "kind": "time", "backend": "cuda", "status": "ok",
            "case": {"model": "llama-7b", "method": {"name": "lora"}, "select": select, "select_opts": {},
                     "backend": "cuda"},
            "time": {"phases_ms": {"step": {"median": float(np.median(steps))}}, "steps_ms": steps,
                     "device": {"busy_ms": {"forward": 58.0, "backward": backward * 0.97, "optimizer": 0.5,
                                            "step": 58.0 + backward * 0.97 + 0.5}}},
            "provenance": {"gpu": gpu, "torch": "2.11.0", "peft": "0.21.0"}}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def baseline(tmp_path):
    return _write(tmp_path / "base.jsonl", [_memory_row(), _time_row("none"), _time_row("rst", seed=1)])


def test_an_unchanged_rerun_passes(tmp_path, baseline, capsys):
    rerun = _write(tmp_path / "cur.jsonl", [_memory_row(), _time_row("none", seed=5), _time_row("rst", seed=6)])
    assert main(["compare", baseline, rerun, "--markdown", str(tmp_path / "c.md")]) == 0
    assert "0 regressed" in capsys.readouterr().out
    assert "no regression" in (tmp_path / "c.md").read_text()


def test_five_percent_more_activation_memory_is_a_regression(tmp_path, baseline, capsys):
    cur = _write(tmp_path / "cur.jsonl", [_memory_row(activations=int(14.7 * GiB)), _time_row("none", seed=5),
                                          _time_row("rst", seed=6)])
    assert main(["compare", baseline, cur, "--junit", str(tmp_path / "j.xml")]) == 1
    out = capsys.readouterr().out
    assert "regressed" in out and "steady activations" in out
    xml = (tmp_path / "j.xml").read_text()
    assert xml.count("<failure") == 1 and 'name="steady activations"' in xml
    # 1% more stays inside cuda's tolerance (the larger of 2% and 64 MiB) ...
    cur = _write(tmp_path / "cur2.jsonl", [_memory_row(activations=int(14.14 * GiB))])
    assert main(["compare", _write(tmp_path / "b2.jsonl", [_memory_row()]), cur]) == 0
    # ... but on sim every byte counts
    sim = [_memory_row(backend="sim", gpu=None)]
    assert main(["compare", _write(tmp_path / "s1.jsonl", sim),
                 _write(tmp_path / "s2.jsonl", [_memory_row(backend="sim", gpu=None, activations=14 * GiB + 512)])]) == 1


def test_a_thirty_percent_slower_backward_is_a_regression_on_device_and_wall(tmp_path, baseline, capsys):
    cur = _write(tmp_path / "cur.jsonl", [_memory_row(), _time_row("none", backward=104.0, seed=5),
                                          _time_row("rst", seed=6)])
    assert main(["compare", baseline, cur, "--markdown", str(tmp_path / "c.md")]) == 1
    md = (tmp_path / "c.md").read_text()
    assert "**regression**" in md and "GPU busy backward ms" in md and "wall step ms (median)" in md
    # where GPU busy time exists (backward and so the step regress), wall time is advisory unless asked for
    # (it moves with the host) ...
    assert md.count("| regressed |") == 2 and md.count("| advisory |") == 1
    # ... and gates with --gate-wall
    assert main(["compare", baseline, cur, "--gate-wall", "--markdown", str(tmp_path / "c.md")]) == 1
    assert (tmp_path / "c.md").read_text().count("| regressed |") == 3


def test_a_missing_case_fails_the_gate_unless_allowed_and_the_verdict_says_so(tmp_path, baseline, capsys):
    """A current run that lacks a baseline case (dropped, or relabelled: another seed) must not pass by
    leaving the regressed case out; --allow-missing accepts it, and the verdict says it did."""
    cur = _write(tmp_path / "cur.jsonl", [_memory_row(), _time_row("none", seed=5)])
    assert main(["compare", baseline, cur]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "1 missing" in out and "MISSING CASES (exit 1" in out
    assert main(["compare", baseline, cur, "--allow-missing", "--junit", str(tmp_path / "j.xml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no regression (1 missing cases allowed by --allow-missing)" in out
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()


def test_results_sharing_no_case_with_the_baseline_are_refused(tmp_path, baseline, capsys):
    """A gate that pairs nothing cannot fail: e.g. a baseline made before the case gained a field."""
    newer = copy.deepcopy(_memory_row())
    newer["case"]["batch"] = 1
    assert main(["compare", _write(tmp_path / "b.jsonl", [_memory_row()]), _write(tmp_path / "c.jsonl", [newer])]) == 2
    err = capsys.readouterr().err.strip()
    assert "only the current cases have batch" in err and "baseline update" in err and len(err.splitlines()) == 1
    # one shared case is enough to compare: the rest are missing (failing the gate unless allowed) or new
    assert main(["compare", baseline, _write(tmp_path / "c2.jsonl", [_memory_row(), newer])]) == 1
    assert main(["compare", baseline, str(tmp_path / "c2.jsonl"), "--allow-missing"]) == 0


def test_results_from_another_gpu_are_refused_unless_allowed(tmp_path, baseline, capsys):
    other = "NVIDIA H200"
    cur = _write(tmp_path / "cur.jsonl", [_memory_row(gpu=other), _time_row("none", gpu=other),
                                          _time_row("rst", gpu=other)])
    assert main(["compare", baseline, cur]) == 2
    err = capsys.readouterr().err
    assert "gpu ['NVIDIA H100 80GB HBM3'] vs ['NVIDIA H200']" in err and err.count("\n") == 1
    assert main(["compare", baseline, cur, "--allow-mismatch"]) == 0


def test_a_case_that_fails_now_is_a_regression(tmp_path, baseline):
    broken = copy.deepcopy(_memory_row())
    broken.update(status="oom", error="CUDA out of memory")
    assert main(["compare", baseline, _write(tmp_path / "c.jsonl", [broken, _time_row("none"),
                                                                    _time_row("rst", seed=1)])]) == 1


def test_baseline_update_names_the_file_after_the_gpu(tmp_path, baseline, capsys):
    assert main(["baseline", "update", baseline, "--dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "nvidia-h100-80gb-hbm3.jsonl").read_text() == open(baseline).read()
    assert main(["baseline", "path", baseline, "--dir", "results/baselines"]) == 0
    assert capsys.readouterr().out.strip().endswith("results/baselines/nvidia-h100-80gb-hbm3.jsonl")


def test_device_activity_is_split_into_phases_at_the_marker_kernels():
    marks = [("start", 0), ("forward", 0), ("backward", 0), ("optimizer", 0), ("end", 0)]
    acts = [("spin_kernel", 0, 1), ("gemm", 2, 10), ("gemm", 5, 12),      # overlapping streams: 2..12 = 10 us
            ("spin_kernel", 20, 21), ("gemm", 22, 52),                      # backward 30 us
            ("spin_kernel", 60, 61), ("adam", 62, 64),                      # optimizer 2 us
            ("spin_kernel", 70, 71), ("zero", 72, 73), ("spin_kernel", 80, 81)]
    busy = busy_by_phase(acts, marks)
    assert busy == {"forward": [0.010], "backward": [0.030], "optimizer": [0.002]}
    assert union_ms([(0, 1000), (500, 1500), (2000, 2500)]) == 2.0
    with pytest.raises(RuntimeError, match="4 marker kernels on the device timeline for 5 marks"):
        busy_by_phase(acts[:-1], marks)


def test_flops_of_a_linear_layer_match_the_formula():
    import torch
    layer = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    flops = count_flops(lambda: layer(x).sum().backward())
    assert flops == 2 * 8 * 64 * 32 * 3        # forward; backward: grad of input and of weight


def _gate(tmp_path, base_rows, cur_rows, *options):
    """compare's exit code on these rows."""
    return main(["compare", _write(tmp_path / "gb.jsonl", base_rows), _write(tmp_path / "gc.jsonl", cur_rows),
                 *options])


@pytest.mark.parametrize("base_rows,cur_rows,message", [
    ([], [], "the baseline hold no result rows"),
    ([_memory_row()], [], "the current results hold no result rows"),
    ([], [_memory_row()], "the baseline hold no result rows"),
], ids=["nothing-vs-nothing", "rows-vs-nothing", "nothing-vs-rows"])
def test_the_gate_refuses_empty_input(tmp_path, capsys, base_rows, cur_rows, message):
    assert _gate(tmp_path, base_rows, cur_rows) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("garbage,message", [
    ({"schema": 1, "kind": "memory", "case": {"model": "llama-7b", "method": {"name": "lora"}}},
     "gc.jsonl:1: status is missing"),
    ({"status": "ok", "case": {"model": "llama-7b", "method": {"name": "lora"}}},
     "a finished memory row needs its 'memory' figures"),
    ({"status": "ok", "case": {"method": {"name": "lora"}}, "memory": {"summary": {"peak": {"first": 1, "max": 1}}}},
     "gc.jsonl:1: case.model is missing"),
    ({"status": "done", "case": {"model": "m", "method": {"name": "lora"}}}, "status must be 'ok', 'oom'"),
    ({"status": "ok", "case": {"model": "m", "method": {"name": "lora"}}, "memory": {"summary": {}}},
     "a finished memory row has an empty memory.summary"),
    ({"status": "ok", "case": {"model": "m", "method": {"name": "lora"}},
      "memory": {"summary": {"peak": {"first": 1, "max": 10**400}}}}, "memory.summary.peak.max must be a number within int64"),
    ({"status": "ok", "case": {"model": "m", "method": {"name": "lora"}},
      "memory": {"summary": {"peak": {"max": "12GiB"}}}}, "gc.jsonl:1: memory.summary.peak"),
    ({"status": "ok", "case": {"model": 7, "method": {"name": "lora"}}}, "case.model must be"),
], ids=["no-status", "no-memory", "no-model", "bad-status", "empty-summary", "10**400", "string-figure",
        "int-model"])
def test_the_gate_refuses_garbage_rows_naming_file_line_and_field(tmp_path, capsys, garbage, message):
    assert _gate(tmp_path, [_memory_row()], [garbage]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_the_gate_refuses_rows_that_share_no_figure(tmp_path, capsys):
    only_weights, only_peak = copy.deepcopy(_memory_row()), copy.deepcopy(_memory_row())
    only_weights["memory"]["summary"] = {"weights": {"first": 1, "max": 1, "steady": 1}}
    only_peak["memory"]["summary"] = {"peak": {"first": 1, "max": 1, "steady": 1}}
    assert _gate(tmp_path, [only_weights], [only_peak]) == 2
    err = capsys.readouterr().err
    assert "share no memory figure (baseline: weights; current: peak)" in err and err.count("\n") == 1


def test_the_gate_refuses_when_only_failed_cases_pair(tmp_path, capsys):
    failed = {**_memory_row(), "status": "error", "error": "boom"}
    del failed["memory"]
    assert _gate(tmp_path, [failed], [failed]) == 2
    assert "no figure was compared" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--memory-pct", "nan"), ("--memory-pct", "inf"),
                                          ("--device-factor", "nan"), ("--wall-factor", "inf"),
                                          ("--p-value", "nan"), ("--memory-pct", "-1")])
def test_non_finite_thresholds_are_refused_and_never_let_a_regression_through(tmp_path, capsys, option, value):
    regressed = _memory_row(activations=int(21 * GiB))          # 50% more activation memory
    assert _gate(tmp_path, [_memory_row()], [regressed]) == 1     # the regression the threshold must not hide
    capsys.readouterr()
    assert _gate(tmp_path, [_memory_row()], [regressed], option, value) == 2
    err = capsys.readouterr().err
    assert option in err and value in err and err.count("\n") == 1, err


def test_thresholds_refuse_non_finite_values_from_python_too():
    from ist_bench.compare import Thresholds
    from ist_bench.errors import UsageError
    with pytest.raises(UsageError, match="--memory-pct must be a finite number, got nan"):
        Thresholds(memory_pct=float("nan"))
    assert Thresholds(device_factor=1.2).device_factor == 1.2


def _doctored(change):
    rows = [_memory_row(), _time_row("none"), _time_row("rst", seed=1)]
    change(rows)
    return rows


def _neg(rows):
    rows[0]["memory"]["summary"]["activations"]["steady"] = -1.1 * GiB


def _zero_busy(rows):
    rows[1]["time"]["device"]["busy_ms"]["backward"] = 0


def _partial_busy(rows):
    del rows[1]["time"]["device"]["busy_ms"]["backward"]


def _summary_not_its_samples(rows):
    rows[1]["time"]["phases_ms"]["step"]["median"] *= 10


@pytest.mark.parametrize("change,message", [
    (_neg, "memory.summary.activations.steady must be >= 0"),
    (_zero_busy, "time.device.busy_ms.backward must be > 0"),
    (_partial_busy, "time.device.busy_ms has no backward"),
    (_summary_not_its_samples, "time.phases_ms.step.median is"),
    (lambda rows: rows[0].update(schema=True), "has result schema True"),
], ids=["negative-bytes", "zero-busy", "partial-busy", "summary-vs-samples", "schema-true"])
def test_rows_a_gate_could_be_fooled_by_are_refused(tmp_path, capsys, baseline, change, message):
    """Negative bytes (counted as improvements, written into baselines), zero or partial busy time (a busy
    phase of 0 was skipped, so a x2 slower step passed), a summary that disagrees with its own samples (a x10
    wall median read 'unchanged' beside the baseline's samples), `schema: true`: each is refused, on either side."""
    bad = _write(tmp_path / "bad.jsonl", _doctored(change))
    for argv in (["compare", baseline, bad], ["compare", bad, baseline], ["baseline", "update", bad,
                                                                         "--dir", str(tmp_path / "b")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
