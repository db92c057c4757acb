"""Random cells of the whole case space, for `ist-bench validate --sample N --seed S`.

Every field of a case is drawn uniformly from the values below (a policy's options from a few
values each), with one `random.Random(seed)` stream, so a seed names the same list of cells on
every machine. A draw that cannot run (`Case.check` refuses it: a length beyond the model's
positions, a policy that needs adapters on `full`, ...) is dropped and drawn again; duplicates too.
The cells are measured on sim and on cuda; a cell that sim says cannot fit the card is not run on
cuda (an OOM row has no peak to compare).
"""

from __future__ import annotations

import json
import random

from ist_bench.errors import UsageError
from ist_bench.runner.case import Case

SPACE = {
    "method": ["full", "lora", "dora", "adalora", "series", "parallel"],
    "select": ["none", "rst", "ist", "ist-code", "lisa", "ila", "lift"],
    "batch": [1, 2, 4, 8],
    "seq_len": [256, 512, 1024, 2048],
    "attn": ["eager", "sdpa"],
    "grad_checkpointing": [False, True],
    "dtype": ["bf16", "fp16"],
    "optim": ["fused", "foreach", "for-loop"],
    "optimizer_state": ["keep", "reset"],
}
POLICY_OPTIONS = {"rst": {"layers": [0.125, 0.25, 0.5]}, "ist": {"beta": [0.0, 0.25, 0.5], "mu": [10, 100]},
                  "lisa": {"gamma": [1, 2, 4]}}
# Models of the zoo a validation draws from: the published configs, not the test-sized ones.
MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "tinyllama-1.1b", "phi3-mini", "llama-7b", "llama2-7b",
          "llama3-8b", "mistral-7b", "qwen2.5-7b", "llama-13b"]
MAX_TRIES = 200


def draw_cases(n: int, seed: int, steps: int = 1) -> list[Case]:
    """`n` distinct runnable cases (see the module doc); at most MAX_TRIES draws per case."""
    if n < 1:
        raise UsageError(f"--sample must be >= 1, got {n}")
    rng = random.Random(seed)
    cases, seen, tries = [], set(), 0
    while len(cases) < n:
        tries += 1
        if tries > MAX_TRIES * n:
            raise UsageError(f"could draw only {len(cases)} runnable cases of {n} (seed {seed})")
        d = {k: rng.choice(v) for k, v in SPACE.items()}
        d["model"] = rng.choice(MODELS)
        d["select_opts"] = {k: rng.choice(v) for k, v in POLICY_OPTIONS.get(d["select"], {}).items()}
        try:
            case = Case.from_dict({**d, "steps": steps, "backend": "sim"}).check()
        except UsageError:
            continue
        key = json.dumps(case.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            cases.append(case)
    return cases


def run_sample(cases: list[Case], out, *, timeout_s: float | None = None, parallel: int = 1,
               card_bytes: int | None = None, on_row=lambda row: None) -> list[dict]:
    """Measure each case on sim, then on cuda where sim's estimate fits `card_bytes`; rows are appended
    to `out` as they finish, and cases already finished there (ok or oom) are not run again (a sample
    too long for one sitting finishes in the next). Returns every row of `out`."""
    import dataclasses
    from pathlib import Path

    from ist_bench.results import append_rows, read_rows, row_key
    from ist_bench.runner.isolate import run_isolated

    out = Path(out)
    rows = read_rows(out) if out.exists() else []
    done = {row_key(r): r for r in rows if r["status"] in ("ok", "oom")}

    def job(case: Case, backend: str) -> dict:
        return {"kind": "memory", "case": dataclasses.replace(case, backend=backend).to_dict(), "busy_gpu": "refuse"}

    def run(todo: list[dict], lanes: int) -> None:
        for row in run_isolated([j for j in todo if row_key(j) not in done], timeout_s=timeout_s, parallel=lanes):
            append_rows(out, [row])
            rows.append(row)
            done[row_key(row)] = row
            on_row(row)

    run([job(c, "sim") for c in cases], parallel)
    fits = []
    for c in cases:
        sim = done.get(row_key(job(c, "sim")))
        est = sim and sim["status"] == "ok" and sim["memory"]["summary"].get("run_allocated_peak_est")
        if est and (card_bytes is None or est < card_bytes):
            fits.append(job(c, "cuda"))
    run(fits, 1)
    return rows


def worst_cell_timelines(rows: list[dict], path, *, timeout_s: float | None = None) -> str | None:
    """The timelines of the cell whose sim estimate is farthest from cuda's peak, measured again on both
    backends (each in its own process) and drawn side by side into `path` (a PNG). None if no cell
    finished on both."""
    import tempfile
    from pathlib import Path

    from ist_bench.measure.timeline import Timeline
    from ist_bench.report.timeline import plot_timelines
    from ist_bench.report.validation import pair_rows
    from ist_bench.runner.isolate import run_isolated

    def gap(pair):
        cuda, sim = (r["memory"]["summary"] for r in pair)
        return abs(sim["run_allocated_peak_est"] - cuda["run_allocated_peak"]) / cuda["run_allocated_peak"]
    pairs = [p for p in pair_rows(rows) if all(r["status"] == "ok" for r in p)]
    if not pairs:
        return None
    worst = max(pairs, key=gap)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"kind": "memory", "case": r["case"], "busy_gpu": "refuse", "timeline": f"{tmp}/{r['backend']}.json"}
                for r in worst]
        for row in run_isolated(jobs, timeout_s=timeout_s):
            if row["status"] != "ok":
                return None
        plot_timelines([Timeline.load(f"{tmp}/{r['backend']}.json") for r in worst], Path(path))
    return str(path)
