"""Each outcome of the gate, at and across its thresholds (the survivors of the mutation run over compare.py:
results/mutation/compare.md)."""

import copy

import numpy as np
import pytest

from ist_bench.compare import Thresholds, compare_rows
from ist_bench.errors import UsageError
from tests.test_compare import GiB, _memory_row, _time_row


def _outcomes(cmp, figure=None):
    return {f.figure: f.outcome for f in cmp.findings if figure is None or f.figure == figure}


def _busy(row, **phases):
    row = copy.deepcopy(row)
    row["time"]["device"]["busy_ms"].update(phases)
    return row


def test_cuda_memory_beyond_the_tolerance_either_way_is_a_finding_and_within_it_is_not():
    th = Thresholds(memory_pct=2.0, memory_floor=0)
    base = _memory_row(activations=10 * GiB)
    for act, outcome in ((int(10.3 * GiB), "regressed"), (int(9.7 * GiB), "improved"), (int(10.1 * GiB), "unchanged"),
                         (int(9.9 * GiB), "unchanged")):
        cmp = compare_rows([base], [_memory_row(activations=act)], th)
        assert _outcomes(cmp)["steady activations"] == outcome, act


def test_the_memory_floor_is_in_mib_and_wins_over_a_smaller_percentage():
    th = Thresholds(memory_pct=0.0, memory_floor=64 << 20)
    base = _memory_row(activations=10 * GiB)
    inside = compare_rows([base], [_memory_row(activations=10 * GiB + (60 << 20))], th)
    outside = compare_rows([base], [_memory_row(activations=10 * GiB + (70 << 20))], th)
    assert _outcomes(inside)["steady activations"] == "unchanged"
    assert _outcomes(outside)["steady activations"] == "regressed"
    note = next(f.note for f in inside.findings if f.figure == "steady activations")
    assert note == "tolerance 64 MiB"


def test_busy_time_exactly_at_the_factor_is_unchanged_and_past_it_either_way_a_finding():
    th = Thresholds(device_factor=1.05)
    base = _busy(_time_row(), backward=100.0)
    for y, outcome in ((105.0, "unchanged"), (105.5, "regressed"), (100 / 1.05, "unchanged"), (94.0, "improved")):
        cmp = compare_rows([base], [_busy(_time_row(seed=3), backward=y)], th)
        assert _outcomes(cmp)["GPU busy backward ms"] == outcome, y


def test_a_case_that_runs_out_of_memory_now_regressed_and_one_that_fits_now_improved():
    ok, oom = _memory_row(), {**_memory_row(), "status": "oom"}
    oom.pop("memory")
    assert _outcomes(compare_rows([ok], [oom]))["status"] == "regressed"
    assert _outcomes(compare_rows([oom, _memory_row(backend="sim")], [ok, _memory_row(backend="sim")]))["status"] == \
        "improved"


def test_a_new_case_is_listed_as_new_and_every_regression_is_counted():
    extra = copy.deepcopy(_memory_row())
    extra["case"]["select"] = "rst"
    worse = _memory_row(activations=20 * GiB)
    worse["memory"]["summary"]["gradients"] = {k: int(2 * GiB) for k in ("first", "steady", "max")}
    cmp = compare_rows([_memory_row()], [worse, extra])
    assert "rst" in next(f.case for f in cmp.findings if f.outcome == "new")
    counts = cmp.counts()
    assert counts["regressed"] == 2 and counts["new"] == 1 and cmp.failed   # activations and gradients


def test_wall_time_needs_both_the_factor_and_the_u_test():
    """Slower by more than the factor with a significant U test: regressed; slower but the samples overlap (a
    few noisy steps): unchanged; faster: never a regression (the one-sided tests point the right way)."""
    th = Thresholds(wall_factor=1.10, gate_wall=True, p_value=0.002)
    base = _time_row()
    base["time"].pop("device")
    slow = copy.deepcopy(base)
    slow["time"]["steps_ms"] = [s * 1.3 for s in base["time"]["steps_ms"]]
    slow["time"]["phases_ms"]["step"]["median"] = float(np.median(slow["time"]["steps_ms"]))
    assert _outcomes(compare_rows([base], [slow], th))["wall step ms (median)"] == "regressed"
    assert _outcomes(compare_rows([slow], [base], th))["wall step ms (median)"] == "improved"
    noisy = copy.deepcopy(base)
    noisy["time"]["steps_ms"] = [1.0, 1000.0]       # median far above, but two samples prove nothing
    noisy["time"]["phases_ms"]["step"]["median"] = 500.5
    assert _outcomes(compare_rows([base], [noisy], th))["wall step ms (median)"] == "unchanged"


def test_a_time_row_with_one_sample_and_no_busy_time_is_refused_not_passed():
    base = _time_row()
    base["time"].pop("device")
    one = copy.deepcopy(base)
    one["time"]["steps_ms"] = [one["time"]["steps_ms"][0]]
    with pytest.raises(UsageError, match="nothing to compare"):
        compare_rows([base], [one])
