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


# -- the U test's edges, the defaults, the messages and the renderings (the rest of the survivors) ------------------

def _wall(steps):
    row = _time_row()
    row["time"].pop("device")
    row["time"]["steps_ms"] = list(steps)
    row["time"]["phases_ms"]["step"]["median"] = float(np.median(steps))
    return row


BASE_STEPS = [10.0, 11.0, 12.0, 13.0]      # four samples each way: every one slower is p = 1/70 one-sided


def test_the_u_test_is_one_sided_both_ways():
    """p = 1/70 one-sided (2/70 two-sided): a threshold between the two tells a one-sided test from a two-sided one."""
    th = Thresholds(wall_factor=1.10, p_value=0.02)
    slower = _wall([2 * s for s in BASE_STEPS])
    faster = _wall([s / 3 for s in BASE_STEPS])
    assert _outcomes(compare_rows([_wall(BASE_STEPS)], [slower], th))["wall step ms (median)"] == "regressed"
    assert _outcomes(compare_rows([_wall(BASE_STEPS)], [faster], th))["wall step ms (median)"] == "improved"


def test_the_wall_factor_and_the_p_value_are_strict_bounds():
    """Exactly twice as slow with factor 2 is unchanged; exactly half with factor 2 too; p exactly at the
    threshold is not significant."""
    from scipy.stats import mannwhitneyu

    base = _wall(BASE_STEPS)
    twice, half = _wall([2 * s for s in BASE_STEPS]), _wall([s / 2 for s in BASE_STEPS])
    th = Thresholds(wall_factor=2.0, p_value=0.02)
    assert _outcomes(compare_rows([base], [twice], th))["wall step ms (median)"] == "unchanged"
    assert _outcomes(compare_rows([base], [half], th))["wall step ms (median)"] == "unchanged"
    p = mannwhitneyu([3 * s for s in BASE_STEPS], BASE_STEPS, alternative="greater").pvalue
    at_p = Thresholds(wall_factor=1.10, p_value=p)
    assert _outcomes(compare_rows([base], [_wall([3 * s for s in BASE_STEPS])], at_p))["wall step ms (median)"] == \
        "unchanged"
    assert _outcomes(compare_rows([base], [_wall([s / 3 for s in BASE_STEPS])], at_p))["wall step ms (median)"] == \
        "unchanged"


def test_a_faster_median_needs_the_u_test_and_the_factor_to_count_as_improved():
    th = Thresholds(wall_factor=2.0, p_value=0.02)
    base = _wall(BASE_STEPS)
    overlapping = _wall([1.0, 2.0, 3.0, 100.0])          # median 2.5 (x0.22) but one step slower than every baseline one
    a_little = _wall([s * 0.6 for s in BASE_STEPS])       # every step faster, but only x0.6
    assert _outcomes(compare_rows([base], [overlapping], th))["wall step ms (median)"] == "unchanged"
    assert _outcomes(compare_rows([base], [a_little], th))["wall step ms (median)"] == "unchanged"


def test_two_samples_a_side_are_enough_for_the_wall_test():
    row = _wall([10.0, 11.0])
    cmp = compare_rows([row], [_wall([10.5, 11.5])], Thresholds())
    assert "wall step ms (median)" in _outcomes(cmp)


def test_busy_time_exactly_at_one_over_the_factor_is_unchanged():
    th = Thresholds(device_factor=2.0)
    base = _busy(_time_row(), backward=100.0)
    assert _outcomes(compare_rows([base], [_busy(_time_row(seed=3), backward=50.0)], th))["GPU busy backward ms"] == \
        "unchanged"


def test_busy_phases_are_listed_in_name_order():
    names = ["zeta", "alpha", "mid", "omega", "beta", "kappa", "delta"]
    base = _busy(_time_row(), **{n: 10.0 for n in names})
    cur = _busy(_time_row(seed=3), **{n: 10.0 for n in names})
    phases = [f.figure for f in compare_rows([base], [cur]).findings if f.figure.startswith("GPU busy")]
    assert phases == sorted(phases) and len(phases) == len(names) + 4


def test_memory_exactly_at_the_percentage_is_unchanged():
    th = Thresholds(memory_pct=1.0, memory_floor=0)
    cmp = compare_rows([_memory_row(activations=100 * GiB)], [_memory_row(activations=101 * GiB)], th)
    assert _outcomes(cmp)["steady activations"] == "unchanged"


def test_a_run_figure_only_one_side_has_is_skipped_not_a_crash():
    cur = _memory_row()
    del cur["memory"]["summary"]["run_allocated_peak"]
    for base_rows, cur_rows in (([_memory_row()], [cur]), ([cur], [_memory_row()])):
        figures = _outcomes(compare_rows(base_rows, cur_rows))
        assert "run_allocated_peak" not in figures and figures["steady activations"] == "unchanged"


def test_rows_sharing_no_memory_figure_name_both_sides_in_order():
    base, cur = _memory_row(), _memory_row()
    base["memory"]["summary"] = {"zeta": 1, "alpha": 2, "mid": 3}
    cur["memory"]["summary"] = {"yankee": 1, "bravo": 2}
    with pytest.raises(UsageError, match=r"\(baseline: alpha, mid, zeta; current: bravo, yankee\)"):
        compare_rows([base], [cur])


def test_an_error_that_now_runs_out_of_memory_improved():
    err, oom = {**_memory_row(), "status": "error"}, {**_memory_row(), "status": "oom"}
    assert _outcomes(compare_rows([err, _memory_row(backend="sim")], [oom, _memory_row(backend="sim")],
                                  allow_mismatch=True))["status"] == "improved"


def test_missing_cases_fail_and_environments_are_checked_by_default(tmp_path):
    import json

    from ist_bench.compare import compare_files

    extra = copy.deepcopy(_memory_row())
    extra["case"]["select"] = "rst"
    assert compare_rows([_memory_row(), extra], [_memory_row()]).failed
    base, cur = tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in (_memory_row(), extra)))
    cur.write_text(json.dumps(_memory_row()) + "\n")
    assert compare_files(str(base), str(cur)).failed
    cur.write_text(json.dumps(_memory_row(gpu="NVIDIA A100-SXM4-80GB")) + "\n")
    with pytest.raises(UsageError, match="measured differently"):
        compare_files(str(base), str(cur))


def test_a_mismatch_names_every_value_sorted_and_a_side_without_the_field():
    gpus = ["H", "C", "F", "A", "G", "B"]
    base = [_memory_row(gpu=g) for g in gpus]
    for i, r in enumerate(base):
        r["case"]["seq_len"] = 100 + i
    cur = [_memory_row(gpu=g.lower()) for g in reversed(gpus)]
    for i, r in enumerate(cur):
        r["case"]["seq_len"] = 100 + i
    with pytest.raises(UsageError, match=r"gpu \['A', 'B', 'C', 'F', 'G', 'H'\] vs \['a', 'b', 'c', 'f', 'g', 'h'\]"):
        compare_rows(base, cur)
    bare = _memory_row()
    del bare["provenance"]["torch"]
    with pytest.raises(UsageError, match=r"torch \[\] vs \['2.11.0'\]"):
        compare_rows([bare], [_memory_row()])


def test_unpaired_files_name_the_fields_only_one_side_has():
    base, cur = _memory_row(), _memory_row()
    base["case"].update(zeta=1, alpha=2, mid=3, omega=4, beta=5)
    with pytest.raises(UsageError, match="only the baseline's have alpha, beta, mid, omega, zeta"):
        compare_rows([base], [cur])
    with pytest.raises(UsageError, match="only the current cases have alpha, beta, mid, omega, zeta"):
        compare_rows([cur], [base])


def test_figures_render_as_gib_above_a_mib_and_plainly_below():
    from ist_bench.compare import _fmt

    assert _fmt(3 * GiB) == "3.000 GiB" and _fmt(1.5 * GiB) == "1.500 GiB" and _fmt(GiB // 2) == "0.500 GiB"
    assert _fmt(1 << 20) == "1048576" and _fmt(2.5) == "2.50" and _fmt(None) == "" and _fmt("oom") == "oom"


def test_markdown_orders_findings_and_says_when_nothing_changed():
    from ist_bench.compare import markdown

    quiet = markdown(compare_rows([_memory_row()], [_memory_row()]), "b", "c")
    assert quiet.endswith("Every figure unchanged within its threshold.\n") and "| outcome |" not in quiet
    extra = copy.deepcopy(_memory_row())
    extra["case"]["select"] = "rst"
    worse = _memory_row(activations=20 * GiB)
    worse["memory"]["summary"]["gradients"] = {k: 0 for k in ("first", "steady", "max")}
    text = markdown(compare_rows([_memory_row()], [extra, worse]), "b", "c")
    outcomes = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ") and
                not line.startswith("| outcome")]
    assert outcomes == ["regressed", "improved", "new"] and "**regression**" in text
    assert "| steady activations | 14.000 GiB | 20.000 GiB |" in text


def test_junit_marks_regressions_and_unallowed_missing_cases_failed_and_the_rest_skipped():
    import xml.etree.ElementTree as ET

    from ist_bench.compare import junit

    extra = copy.deepcopy(_memory_row())
    extra["case"]["select"] = "rst"
    gone = copy.deepcopy(_memory_row())
    gone["case"]["select"] = "lisa"
    for allow in (False, True):
        cmp = compare_rows([_memory_row(), gone], [_memory_row(activations=20 * GiB), extra], allow_missing=allow)
        suite = ET.fromstring(junit(cmp))
        cases = {(c.get("classname").split(" ")[2] if "rst" in c.get("classname") or "lisa" in c.get("classname")
                  else "lora", c.get("name")): c for c in suite}
        tags = {k: [e.tag for e in c] for k, c in cases.items()}
        assert suite.get("failures") == str(1 + (not allow)) and suite.get("tests") == str(len(cmp.findings))
        assert tags[("lora", "steady activations")] == ["failure"] and tags[("lora", "steady weights")] == []
        missing = [t for (label, fig), t in tags.items() if fig == "case" and t != []]
        assert sorted(missing) == sorted([["skipped"], ["skipped"] if allow else ["failure"]])


def test_a_baseline_is_named_after_its_one_gpu_or_backend():
    from ist_bench.compare import baseline_name

    assert baseline_name([_memory_row(), _memory_row()]) == "nvidia-h100-80gb-hbm3"
    assert baseline_name([_memory_row(backend="sim", gpu=None)]) == "sim"
    for rows, message in (([_memory_row(), _memory_row(gpu="B")], r"\['B', 'NVIDIA H100 80GB HBM3', 'cuda'\]"),
                          ([_memory_row(), _memory_row(backend="sim")], r"\['NVIDIA H100 80GB HBM3', 'cuda', 'sim'\]"),
                          ([_memory_row(backend="sim"), _memory_row(backend="cpu")], r"one backend's rows; these have "
                                                                                     r"\['cpu', 'sim'\]")):
        with pytest.raises(UsageError, match=message):
            baseline_name(rows)


def test_findings_dump_as_indented_json_one_per_entry():
    import json

    from ist_bench.compare import dumps

    cmp = compare_rows([_memory_row()], [_memory_row(activations=20 * GiB)])
    text = dumps(cmp)
    assert json.loads(text) == [f.__dict__ for f in cmp.findings] and '\n  "figure": "steady activations"' in text


def test_busy_time_alone_is_compared_when_a_side_has_one_step_sample():
    one = _time_row(seed=3)
    one["time"]["steps_ms"] = one["time"]["steps_ms"][:1]
    figures = _outcomes(compare_rows([_time_row()], [one]))
    assert figures["GPU busy backward ms"] == "unchanged" and "wall step ms (median)" not in figures


def test_the_wall_note_gives_the_significant_sides_p_value():
    th = Thresholds(wall_factor=1.10, p_value=0.02)
    cmp = compare_rows([_wall(BASE_STEPS)], [_wall([2 * s for s in BASE_STEPS])], th)
    assert next(f.note for f in cmp.findings if f.figure == "wall step ms (median)") == "x2.000, U-test p=0.014"


def test_a_case_that_fails_now_carries_its_error_in_the_note():
    err = {**_memory_row(), "status": "error", "error": "RuntimeError: boom"}
    cmp = compare_rows([_memory_row(), _memory_row(backend="sim")], [err, _memory_row(backend="sim")],
                       allow_mismatch=True)
    assert next(f.note for f in cmp.findings if f.figure == "status") == "RuntimeError: boom"


def test_a_comparison_fails_on_a_missing_case_unless_told_and_its_verdict_says_why():
    from ist_bench.compare import Comparison, Finding

    missing = Finding("memory: llama-7b lora [cuda]", "memory", "case", "missing")
    regressed = Finding("memory: llama-7b lora [cuda]", "memory", "steady activations", "regressed", 1, 2)
    assert Comparison([missing]).failed and Comparison([missing]).verdict().startswith("MISSING CASES (exit 1")
    assert not Comparison([missing], allow_missing=True).failed
    assert Comparison([regressed]).verdict() == "REGRESSION (exit 1)"


def test_sim_bytes_are_exact_one_byte_more_is_a_regression():
    base, cur = _memory_row(backend="sim", gpu=None), _memory_row(backend="sim", gpu=None, activations=14 * GiB + 1)
    assert _outcomes(compare_rows([base], [cur]))["steady activations"] == "regressed"


def test_cuda_memory_exactly_the_tolerance_lower_is_unchanged():
    th = Thresholds(memory_pct=0.0, memory_floor=64 << 20)
    cmp = compare_rows([_memory_row(activations=10 * GiB)], [_memory_row(activations=10 * GiB - (64 << 20))], th)
    assert _outcomes(cmp)["steady activations"] == "unchanged"
