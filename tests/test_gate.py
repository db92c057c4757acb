"""The regression gate's contract, as properties over generated row sets (hypothesis, derandomized):

- if any baseline case regresses beyond its threshold in any gated figure, or is missing from the
  current run, `compare` exits 1 (a missing case exits 0 only with --allow-missing, and says so);
- nonsense input (negative bytes, zero or partial busy time, a summary its samples contradict, NaN)
  exits 2 with one line;
- only clean pairs exit 0.

The expected outcome is computed here from the thresholds of docs/ci.md, never from compare.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ist_bench.cli import main

GiB = 1 << 30
FIGS = ("weights", "activations", "gradients", "optimizer", "peak")
PROPERTY = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def memory_row(i: int, backend: str, scale: dict[str, float] | None = None, status: str = "ok") -> dict:
    scale = scale or {}
    summary = {}
    for j, k in enumerate(FIGS):
        v = int((1 + j) * GiB * scale.get(k, 1.0))
        summary[k] = {"first": v, "steady": v, "max": v}
    peak_key = "allocated_peak" if backend == "cuda" else "allocated_peak_est"
    v = int(8 * GiB * scale.get("peak", 1.0))
    summary[peak_key] = {"first": v, "steady": v, "max": v}
    summary[f"run_{peak_key}"] = v
    row = {"schema": 1, "kind": "memory", "backend": backend, "status": status,
           "case": {"model": f"m{i}", "method": {"name": "lora"}, "select": "none", "backend": backend, "seq_len": 64}}
    if status == "ok":
        row["memory"] = {"summary": summary}
    return row


def time_row(i: int, busy: bool, factor: float = 1.0, status: str = "ok") -> dict:
    rng = np.random.default_rng(i)
    steps = [float(x) for x in (100 + rng.normal(0, 0.5, 60)) * factor]
    row = {"schema": 1, "kind": "time", "backend": "cuda", "status": status,
           "case": {"model": f"t{i}", "method": {"name": "lora"}, "select": "none", "backend": "cuda"}}
    if status == "ok":
        row["time"] = {"phases_ms": {"step": {"median": float(np.median(steps))}}, "steps_ms": steps}
        if busy:
            b = {"forward": 30 * factor, "backward": 50 * factor, "optimizer": 5 * factor}
            row["time"]["device"] = {"busy_ms": {**b, "step": sum(b.values())}}
    return row


FACTORS = st.sampled_from([0.5, 0.9, 0.99, 1.0, 1.0, 1.0, 1.01, 1.03, 1.2, 2.0])


@st.composite
def scenarios(draw):
    """(baseline rows, current rows, expect 1 (regression/missing) or 0, any missing)."""
    kinds = draw(st.lists(st.sampled_from(["sim", "cuda", "busy", "wall"]), min_size=1, max_size=6))
    base, cur, regress, missing = [], [], False, False
    for i, kind in enumerate(kinds):
        fate = draw(st.sampled_from(["same", "same", "scaled", "missing", "fails"]))
        if kind in ("sim", "cuda"):
            b = memory_row(i, kind)
            fig = draw(st.sampled_from(FIGS))
            f = draw(FACTORS)
            c = memory_row(i, kind, {fig: f})
            if fate == "scaled":
                if kind == "sim":
                    regress |= f > 1.0                       # exact bytes: any byte more
                else:
                    base_v = ((FIGS.index(fig) + 1) if fig != "peak" else 8) * GiB
                    tol = max(0.02 * base_v, 64 << 20)       # max(2%, 64 MiB)
                    regress |= f * base_v > base_v + tol or (fig == "peak" and f * 5 * GiB > 5 * GiB + max(
                        0.02 * 5 * GiB, 64 << 20))
        else:
            b = time_row(i, kind == "busy")
            f = draw(FACTORS)
            c = time_row(i, kind == "busy", f)
            if fate == "scaled":
                regress |= f > (1.05 if kind == "busy" else 1.10)
        if fate == "missing":
            missing = True
            base.append(b)
            continue
        if fate == "fails":
            c = memory_row(i, kind, status="error") if kind in ("sim", "cuda") else time_row(i, False, status="error")
            regress = True
        elif fate == "same":
            c = copy.deepcopy(b)
        base.append(b)
        cur.append(c)
    anchor = memory_row(99, "sim")          # one case always pairs: the gate refuses to compare nothing
    return [*base, anchor], [*cur, copy.deepcopy(anchor)], regress, missing


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@PROPERTY
@given(s=scenarios())
def test_the_gate_fails_exactly_on_a_regression_or_a_missing_case(tmp_path, capsys, s):
    base, cur, regress, missing = s
    b, c = _write(tmp_path / "b.jsonl", base), _write(tmp_path / "c.jsonl", cur)
    code = main(["compare", b, c, "--allow-mismatch"])
    capsys.readouterr()
    assert code == (1 if regress or missing else 0), (regress, missing)
    code = main(["compare", b, c, "--allow-mismatch", "--allow-missing"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == (1 if regress else 0)
    if missing and not regress:
        assert "missing cases allowed by --allow-missing" in out


def _negative(row):
    row["memory"]["summary"]["activations"]["steady"] = -5


def _nan(row):
    row["memory"]["summary"]["weights"]["first"] = float("nan")


def _zero_busy(row):
    row["time"]["device"]["busy_ms"]["backward"] = 0.0


def _partial_busy(row):
    del row["time"]["device"]["busy_ms"]["optimizer"]


def _lying_median(row):
    row["time"]["phases_ms"]["step"]["median"] *= 10


def _string_bytes(row):
    row["memory"]["summary"]["peak"]["max"] = "9 GiB"


NONSENSE = {"negative": (_negative, "sim"), "nan": (_nan, "sim"), "zero-busy": (_zero_busy, "busy"),
            "partial-busy": (_partial_busy, "busy"), "lying-median": (_lying_median, "busy"),
            "string-bytes": (_string_bytes, "cuda")}


@PROPERTY
@given(s=scenarios(), which=st.sampled_from(sorted(NONSENSE)), side=st.sampled_from(["baseline", "current"]))
def test_nonsense_on_either_side_exits_2_in_one_line(tmp_path, capsys, s, which, side):
    base, cur, _, _ = s
    spoil, kind = NONSENSE[which]
    bad = memory_row(50, kind) if kind in ("sim", "cuda") else time_row(50, True)
    spoiled = copy.deepcopy(bad)
    if which == "nan":      # json.dumps writes NaN; the reader must refuse it
        spoiled["memory"]["summary"]["weights"]["first"] = float("nan")
    else:
        spoil(spoiled)
    if side == "baseline":
        base, cur = [*base, spoiled], [*cur, bad]
    else:
        base, cur = [*base, bad], [*cur, spoiled]
    code = main(["compare", _write(tmp_path / "b.jsonl", base), _write(tmp_path / "c.jsonl", cur), "--allow-mismatch"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("ist-bench: error: "), err


def test_the_issues_two_ways_of_hiding_a_regression_fail_the_gate(tmp_path, capsys):
    """`head -1 baseline > cur` (8 unchanged, 32 missing) and 'the other 32 cases +50% with another seed'
    (32 missing, 32 new) both passed; both fail now."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    base = [json.loads(x) for x in (root / "results/baselines/sim.jsonl").read_text().splitlines()]
    assert len(base) >= 10
    head = _write(tmp_path / "head.jsonl", base[:1])
    assert main(["compare", str(root / "results/baselines/sim.jsonl"), head]) == 1
    relabelled = [copy.deepcopy(base[0])]
    for r in base[1:]:
        r = copy.deepcopy(r)
        r["case"]["seed"] = 7
        for fig in r["memory"]["summary"].values():
            if isinstance(fig, dict):
                for k in list(fig):
                    fig[k] = int(fig[k] * 1.5)
        relabelled.append(r)
    assert main(["compare", str(root / "results/baselines/sim.jsonl"), _write(tmp_path / "r.jsonl", relabelled)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "MISSING CASES (exit 1" in out


@pytest.mark.parametrize("option", ["--markdown", "--junit"])
def test_no_output_of_compare_may_be_one_of_its_inputs(tmp_path, capsys, option):
    rows = [memory_row(0, "sim")]
    b, c = _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", rows)
    before = (tmp_path / "c.jsonl").read_text()
    assert main(["compare", b, c, option, c]) == 2
    assert "is also an input of this command" in capsys.readouterr().err
    assert (tmp_path / "c.jsonl").read_text() == before
