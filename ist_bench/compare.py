"""The regression gate: `ist-bench compare BASELINE CURRENT`.

Cases are paired by every case setting (model, method, policy and its options, backend, lengths,
...). For each pair:

- memory (the steady step's figures and the run peak): on sim, bytes are exact, so any increase
  is a regression and any decrease an improvement; on cuda a change must exceed the larger of
  `memory_pct` % and `memory_floor` bytes.
- time: the GPU's busy time per phase (median over profiled steps) must not grow by more than
  `device_factor`; the wall median per step must not grow by more than `wall_factor` *and* the
  per-step samples must differ by a one-sided Mann-Whitney U test at p < `p_value` (asv's rule):
  wall time alone moves with the host, so it needs both to fail the gate.
- a case that was ok and now is not (oom, error, crash) is a regression; the reverse an improvement.

Outcomes: improved, unchanged, regressed, missing (in the baseline only), new (in current only),
and advisory: a wall-time change where the GPU's busy time was measured (wall time alone is not
gated there unless `gate_wall`: it moves with the host; see docs/ci.md for the false alarms seen).
A missing case fails the gate like a regression unless `allow_missing`: a current run that drops a
case, or relabels it (another seed, another setting), must not pass by leaving the regressed case out.
Exit codes: 1 on any regression or missing case, else 0; 2 on bad input, including results from
another GPU, backend or package versions (unless allow_mismatch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ist_bench.errors import UsageError
from ist_bench.results import case_label, model_label, read_rows, row_key
from ist_bench.schema import Thresholds  # the tolerances, validated: finite, factors >= 1

MiB = 1 << 20
MEMORY_FIGURES = ("weights", "activations", "gradients", "optimizer", "method_state", "peak",
                  "allocated_peak", "allocated_peak_est")
RUN_FIGURES = ("run_allocated_peak", "run_allocated_peak_est")
ENVIRONMENT = ("gpu", "torch", "transformers", "peft")


@dataclass
class Finding:
    case: str
    kind: str
    figure: str
    outcome: str
    baseline: float | str | None = None
    current: float | str | None = None
    note: str = ""


@dataclass
class Comparison:
    findings: list[Finding] = field(default_factory=list)
    allow_missing: bool = False

    @property
    def regressed(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == "regressed"]

    @property
    def failed(self) -> bool:
        """What the exit code follows: a regression, or a baseline case the current run lacks."""
        counts = self.counts()
        return bool(counts["regressed"] or (counts["missing"] and not self.allow_missing))

    def verdict(self) -> str:
        counts = self.counts()
        if counts["regressed"]:
            return "REGRESSION (exit 1)"
        if counts["missing"] and not self.allow_missing:
            return "MISSING CASES (exit 1: the current run lacks baseline cases; --allow-missing accepts that)"
        return "no regression" + (f" ({counts['missing']} missing cases allowed by --allow-missing)"
                                  if counts["missing"] else "")

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("regressed", "improved", "unchanged", "advisory", "missing", "new"), 0)
        for f in self.findings:
            out[f.outcome] += 1
        return out


def title(row: dict) -> str:
    model = model_label(row["case"]["model"])
    return f"{row.get('kind', 'memory')}: {model} {case_label(row['case'])} [{row.get('backend')}]"


def environment(rows: list[dict]) -> dict[str, set]:
    env: dict[str, set] = {"backend": {r.get("backend") for r in rows}}
    for key in ENVIRONMENT:
        env[key] = {(r.get("provenance") or {}).get(key) for r in rows} - {None}
    return env


def check_environments(base: list[dict], cur: list[dict]) -> None:
    a, b = environment(base), environment(cur)
    diffs = [f"{k} {sorted(a[k])} vs {sorted(b[k])}" for k in a if a[k] != b[k]]
    if diffs:
        raise UsageError("baseline and current were measured differently: " + "; ".join(diffs) +
                         " (pass --allow-mismatch to compare anyway)")


def compare_rows(base_rows: list[dict], cur_rows: list[dict], th: Thresholds | None = None,
                 allow_mismatch: bool = False, allow_missing: bool = False) -> Comparison:
    th = th or Thresholds()
    for rows, which in ((base_rows, "the baseline"), (cur_rows, "the current results")):
        if not rows:
            raise UsageError(f"{which} hold no result rows: a gate on nothing would always pass")
    if not allow_mismatch:
        check_environments(base_rows, cur_rows)
    base = {row_key(r): r for r in base_rows}
    cur = {row_key(r): r for r in cur_rows}
    if base and cur and not base.keys() & cur.keys():
        raise UsageError(f"no case of the current results is a case of the baseline ({_case_difference(base_rows, cur_rows)}), "
                         f"so nothing would be compared; if the case settings changed on purpose, regenerate the "
                         f"baseline with `ist-bench baseline update`")
    out = Comparison(allow_missing=allow_missing)
    for key, b in base.items():
        c = cur.get(key)
        if c is None:
            out.findings.append(Finding(title(b), b.get("kind", "memory"), "case", "missing"))
            continue
        out.findings.extend(_compare_case(b, c, th))
    for key, c in cur.items():
        if key not in base:
            out.findings.append(Finding(title(c), c.get("kind", "memory"), "case", "new"))
    if not any(f.outcome not in ("missing", "new") and (f.figure != "status" or f.outcome != "unchanged")
               for f in out.findings):
        raise UsageError("no case finished in both the baseline and the current results (only failed or unpaired "
                         "cases), so no figure was compared")
    return out


def _case_difference(base_rows: list[dict], cur_rows: list[dict]) -> str:
    """What sets the two files' cases apart: case fields only one side has, else 'other settings'."""
    fields_b = {k for r in base_rows for k in r["case"]}
    fields_c = {k for r in cur_rows for k in r["case"]}
    parts = []
    if fields_c - fields_b:
        parts.append(f"only the current cases have {', '.join(sorted(fields_c - fields_b))}")
    if fields_b - fields_c:
        parts.append(f"only the baseline's have {', '.join(sorted(fields_b - fields_c))}")
    return "; ".join(parts) or "their settings differ"


def _compare_case(b: dict, c: dict, th: Thresholds) -> list[Finding]:
    name, kind = title(b), b.get("kind", "memory")
    good = ("ok", "oom")
    if b["status"] != c["status"]:
        worse = b["status"] in good and c["status"] not in good or (b["status"] == "ok" and c["status"] == "oom")
        return [Finding(name, kind, "status", "regressed" if worse else "improved", b["status"], c["status"],
                        c.get("error") or "")]
    if b["status"] != "ok":
        return [Finding(name, kind, "status", "unchanged", b["status"], c["status"])]
    if kind == "memory":
        return _compare_memory(name, b, c, th)
    return _compare_time(name, b, c, th)


def _compare_memory(name: str, b: dict, c: dict, th: Thresholds) -> list[Finding]:
    sb, sc = b["memory"]["summary"], c["memory"]["summary"]
    exact = b.get("backend") == "sim"
    out = []
    def steady(fig: dict):
        return fig.get("steady", fig.get("max"))
    pairs = [(f"steady {k}", steady(sb[k]), steady(sc[k])) for k in MEMORY_FIGURES
             if k in sb and k in sc and steady(sb[k]) is not None and steady(sc[k]) is not None]
    pairs += [(k, sb[k], sc[k]) for k in RUN_FIGURES if k in sb and k in sc]
    if not pairs:
        raise UsageError(f"{name}: the baseline's and the current row share no memory figure (baseline: "
                         f"{', '.join(sorted(sb)) or 'none'}; current: {', '.join(sorted(sc)) or 'none'})")
    for figure, x, y in pairs:
        tol = 0 if exact else max(th.memory_pct / 100 * x, th.memory_floor)
        outcome = "regressed" if y > x + tol else "improved" if y < x - tol else "unchanged"
        note = "exact bytes (sim)" if exact else f"tolerance {tol / MiB:.0f} MiB"
        out.append(Finding(name, "memory", figure, outcome, x, y, note))
    return out


def _compare_time(name: str, b: dict, c: dict, th: Thresholds) -> list[Finding]:
    from scipy.stats import mannwhitneyu

    tb, tc = b["time"], c["time"]
    out = []
    db, dc = (tb.get("device") or {}).get("busy_ms", {}), (tc.get("device") or {}).get("busy_ms", {})
    for phase in sorted(set(db) & set(dc)):
        x, y = db[phase], dc[phase]
        if not x:
            continue
        ratio = y / x
        outcome = "regressed" if ratio > th.device_factor else "improved" if ratio < 1 / th.device_factor \
            else "unchanged"
        out.append(Finding(name, "time", f"GPU busy {phase} ms", outcome, x, y, f"x{ratio:.3f}"))
    if len(tb.get("steps_ms", [])) < 2 or len(tc.get("steps_ms", [])) < 2:
        if not out:
            raise UsageError(f"{name}: nothing to compare (no GPU busy time, and fewer than 2 per-step samples)")
        return out   # no per-step samples for the U test: the wall median is not gated
    x, y = tb["phases_ms"]["step"]["median"], tc["phases_ms"]["step"]["median"]
    ratio = y / x
    slower = mannwhitneyu(tc["steps_ms"], tb["steps_ms"], alternative="greater").pvalue
    faster = mannwhitneyu(tc["steps_ms"], tb["steps_ms"], alternative="less").pvalue
    note = f"x{ratio:.3f}, U-test p={min(slower, faster):.2g}"
    if ratio > th.wall_factor and slower < th.p_value:
        outcome = "regressed"
    elif ratio < 1 / th.wall_factor and faster < th.p_value:
        outcome = "improved"
    else:
        outcome = "unchanged"
    if outcome != "unchanged" and db.get("step") and dc.get("step") and not th.gate_wall:
        # With the GPU's own busy time measured, wall time only tells how busy the host was: between
        # two processes on the lent H200 it moved by up to 28% while busy time moved < 0.2%.
        outcome, note = "advisory", note + "; wall time, not gated (GPU busy time is; --gate-wall)"
    out.append(Finding(name, "time", "wall step ms (median)", outcome, x, y, note))
    return out


def compare_files(baseline: str, current: str, th: Thresholds | None = None,
                  allow_mismatch: bool = False, allow_missing: bool = False) -> Comparison:
    return compare_rows(read_rows(baseline), read_rows(current), th, allow_mismatch, allow_missing)


def _fmt(v) -> str:
    if isinstance(v, (int, float)) and v > MiB:
        return f"{v / (1 << 30):.3f} GiB"
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def markdown(cmp: Comparison, baseline: str, current: str) -> str:
    counts = cmp.counts()
    verdict = "**regression**" if counts["regressed"] else "**missing cases**" if cmp.failed else cmp.verdict()
    lines = [f"### ist-bench compare: {verdict}", "", f"`{baseline}` -> `{current}`: " +
             ", ".join(f"{n} {k}" for k, n in counts.items()), ""]
    shown = [f for f in cmp.findings if f.outcome != "unchanged"]
    if shown:
        lines += ["| outcome | case | figure | baseline | current | note |", "|---|---|---|---|---|---|"]
        lines += [f"| {f.outcome} | {f.case} | {f.figure} | {_fmt(f.baseline)} | {_fmt(f.current)} | {f.note} |"
                  for f in sorted(shown, key=lambda f: ("regressed", "improved", "advisory", "missing",
                                                         "new").index(f.outcome))]
    else:
        lines.append("Every figure unchanged within its threshold.")
    return "\n".join(lines) + "\n"


def junit(cmp: Comparison) -> str:
    from xml.sax.saxutils import quoteattr

    cases = []
    for f in cmp.findings:
        body = ""
        if f.outcome == "regressed":
            body = (f"<failure message={quoteattr(f'{f.figure}: {_fmt(f.baseline)} -> {_fmt(f.current)} {f.note}')}/>")
        elif f.outcome == "missing" and not cmp.allow_missing:
            body = f"<failure message={quoteattr('missing: the current run lacks this baseline case')}/>"
        elif f.outcome in ("missing", "new"):
            body = f"<skipped message={quoteattr(f.outcome)}/>"
        cases.append(f"  <testcase classname={quoteattr(f.case)} name={quoteattr(f.figure)}>{body}</testcase>")
    failures = len(cmp.regressed) + (0 if cmp.allow_missing else cmp.counts()["missing"])
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="ist-bench compare" tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def baseline_name(rows: list[dict]) -> str:
    """results/baselines/<name>.jsonl: the GPU's name as a slug, or the backend for sim/cpu rows."""
    import re

    backends = {r.get("backend") for r in rows}
    gpus = {(r.get("provenance") or {}).get("gpu") for r in rows if r.get("backend") == "cuda"} - {None}
    if len(gpus) > 1 or (gpus and backends - {"cuda"}):
        raise UsageError(f"a baseline holds one GPU's or one backend's rows; these have {sorted(map(str, gpus | backends))}")
    if gpus:
        return re.sub(r"[^a-z0-9]+", "-", gpus.pop().lower()).strip("-")
    if len(backends) != 1:
        raise UsageError(f"a baseline holds one backend's rows; these have {sorted(map(str, backends))}")
    return str(backends.pop())


def dumps(cmp: Comparison) -> str:
    return json.dumps([f.__dict__ for f in cmp.findings], indent=1)
