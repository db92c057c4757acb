"""Each case runs in its own process; a failing case is a row and the others still finish."""

import json

import pytest

from ist_bench.methods import MethodSpec
from ist_bench.results import read_rows
from ist_bench.runner.case import Case
from ist_bench.runner.isolate import run_isolated
from ist_bench.runner.suite import jobs, load_suite


def _job(**fault):
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", seq_len=32, steps=1).check()
    return {"kind": "memory", "case": case.to_dict(), **fault}


@pytest.mark.slow
def test_raising_killed_and_oom_cases_become_rows_while_the_others_complete():
    """(A hang past the timeout, a kill mid-step and an invalid case: tests/test_faults.py.)"""
    oom = _job()
    oom["case"]["capacity"] = "1MiB"
    rows = list(run_isolated([_job(), _job(fault="raise"), _job(fault="kill"), oom, _job()]))
    assert [r["status"] for r in rows] == ["ok", "crashed", "killed", "oom", "ok"]
    assert "injected failure" in rows[1]["log_tail"]
    assert rows[2]["error"] == "worker killed by signal 9"
    assert "capacity" in rows[3]["error"] and rows[3]["peak_reached"] > 1 << 20
    assert rows[0]["memory"]["steps"] and rows[4]["memory"]["steps"]
    assert all(r["case"]["model"] == "tiny-llama" for r in rows)


@pytest.mark.slow
def test_sim_cases_share_a_warm_worker_and_timed_cases_get_fresh_processes():
    rows = list(run_isolated([_job(), _job(), _job()]))
    assert len({r["provenance"]["pid"] for r in rows}) == 1
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="cpu", seq_len=16, steps=1).check()
    timed = list(run_isolated([{"kind": "time", "case": case.to_dict(), "warmup": 0}] * 2))
    assert [r["status"] for r in timed] == ["ok", "ok"]
    assert len({r["provenance"]["pid"] for r in timed}) == 2


@pytest.mark.slow
def test_suite_grid_expands_validates_and_keeps_finished_rows(tmp_path):
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("name: t\nkind: memory\ndefaults: {steps: 1, seq_len: 32}\n"
                          "grid:\n  model: [tiny-llama]\n  method: [lora, series]\n  select: [none, rst]\n"
                          "  backend: [sim]\n")
    suite = load_suite(suite_file)
    assert [(c.method.name, c.select) for c in suite.cases] == [("lora", "none"), ("lora", "rst"),
                                                                ("series", "none"), ("series", "rst")]
    from ist_bench.report.console import print_suite_progress
    out = tmp_path / "out.jsonl"
    bad = jobs(suite)
    bad[1]["fault"] = "kill"
    failed = print_suite_progress(suite, run_isolated(bad, parallel=2), out, total=4)
    rows = read_rows(out)
    assert failed == 1 and len(rows) == 4
    assert sorted(r["status"] for r in rows) == ["killed", "ok", "ok", "ok"]


def test_bad_suites_fail_before_any_case_runs(tmp_path):
    from ist_bench.errors import UsageError
    f = tmp_path / "s.yaml"
    f.write_text("grid:\n  model: [tiny-llama, llama-70b]\n")
    with pytest.raises(UsageError, match="unknown model 'llama-70b'"):
        load_suite(f)
    f.write_text("grid: [1, 2")
    with pytest.raises(UsageError, match="malformed suite"):
        load_suite(f)
    f.write_text(json.dumps({"grid": {"model": ["tiny-llama"], "colour": ["red"]}}))
    with pytest.raises(UsageError, match="unknown case field 'colour'"):
        load_suite(f)


def test_shipped_suites_are_valid(monkeypatch):
    """Every case of every shipped suite validates on sim (a suite that times its cases is predicted there,
    for h100-80g unless it names a card), and as it would where a GPU is."""
    from ist_bench.measure import backends
    from ist_bench.runner import case

    for name in ("smoke", "table1", "table13", "policies", "ci-sim", "ci-gpu", "knobs", "oom", "fit-check", "models",
                 "steady-moe", "time-validation"):
        suite = load_suite(f"suites/{name}.yaml", backend="sim")
        if "time" in suite.kinds:
            assert suite.timing["gpu"] == "h100-80g", name
            with monkeypatch.context() as m:   # as on a GPU machine
                m.setattr(case, "gpu_may_be_visible", lambda: True)
                m.setattr(backends, "resolve", lambda name: "cuda" if name in ("auto", "cuda") else name)
                suite = load_suite(f"suites/{name}.yaml")
            assert "time" in suite.kinds
        assert suite.cases
