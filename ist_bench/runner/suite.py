"""A suite: a YAML grid of cases run one process each, rows appended to JSONL as they finish.

    name: table1
    kind: memory            # time, or [memory, time]
    warmup: 10              # time cases: uncounted steps; also profile_steps, overhead_blocks
    defaults: {steps: 3}    # any Case field
    grid:                   # the cross product of these lists
    cases:                  # and/or a list of mappings, each crossed with the grid
      model: [gpt2-small, llama-7b]
      method: [lora, series]
      select: [none, {name: ist, mu: 100}]   # a policy name, or a mapping with its options
      backend: [cuda, sim]
    exclude:                # combinations to leave out (names match a mapping's `name`)
      - {method: full, select: ist}

Every case is validated before the first one runs. A finished row is written (and
flushed) at once, so a later failure never loses it.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ist_bench import schema
from ist_bench.errors import UsageError
from ist_bench.runner.case import Case
from ist_bench.safeio import load_yaml
from ist_bench.schema import SuiteSpec


@dataclass
class Suite:
    name: str
    kinds: list[str]                 # memory and/or time: each case is measured for each kind
    cases: list[Case]
    timing: dict = field(default_factory=dict)   # warmup, profile_steps, overhead_blocks (time cases)

    @property
    def kind(self) -> str:
        return "+".join(self.kinds)


def load_suite(path: str | Path, backend: str | None = None) -> Suite:
    """Read and validate a suite; `backend` overrides every case's backend."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"suite file not found: {path}")
    raw = load_yaml(path, "suite", keys=tuple(SuiteSpec.model_fields)) or {}   # bounded: size, UTF-8, depth, aliases
    if not isinstance(raw, dict):
        raise UsageError(f"malformed suite {path}: expected a mapping with keys {', '.join(SuiteSpec.model_fields)}")
    found = schema.bounded(raw)
    if found:
        raise UsageError(f"malformed suite {path}: {found}")
    spec = schema.validate(SuiteSpec, raw, f"malformed suite {path}: ", label=lambda name: repr(name))
    if not spec.grid and not spec.cases:
        raise UsageError(f"suite {path} has no cases: give a grid: or a cases: list")
    if schema.suite_size(spec) > schema.MAX_CASES:
        raise UsageError(f"suite {path} expands to {schema.suite_size(spec):,} cases; at most {schema.MAX_CASES:,}")
    kinds, defaults, grid, exclude, listed = spec.kinds, spec.defaults, spec.grid, spec.exclude, spec.cases
    timing = {"warmup": spec.warmup, "profile_steps": spec.profile_steps, "overhead_blocks": spec.overhead_blocks}
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)] if grid else [{}]
    cases, seen = [], set()
    for item in [{**combo, **case} for case in listed or [{}] for combo in combos]:
        d = {**defaults, **item}
        if any(_matches(d, rule) for rule in exclude):
            continue
        if backend:
            d["backend"] = backend
        case = Case.from_dict(d).check()
        key = json.dumps(case.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            cases.append(case)
    if not cases:
        raise UsageError(f"suite {path} has no cases")
    if "time" in kinds and any(c.backend == "sim" for c in cases):   # predicted (ist_bench/predict)
        from ist_bench.predict import card_named

        timing["gpu"] = card_named(spec.gpu or "h100-80g").name if not (spec.gpu or "").endswith(".json") else spec.gpu
    return Suite(spec.name or path.stem, kinds, cases, timing)


def _matches(case: dict, rule: dict) -> bool:
    """Whether a case (suite dict) has every value the rule names; a method or select mapping
    matches by its name."""
    def name(v):
        return v.get("name") if isinstance(v, dict) else v
    return all(name(case.get(k, "none" if k == "select" else None)) == name(v) for k, v in rule.items())


def jobs(suite: Suite, busy_gpu: str = "refuse") -> list[dict]:
    """One job per case and kind (memory cases first), with the suite's timing settings.

    For the fault-injection tests, IST_BENCH_FAULTS='{"3": "kill-mid-step"}' gives the suite's job 3
    that fault (see runner/worker.py)."""
    out = [{"kind": kind, "case": c.to_dict(), "busy_gpu": busy_gpu, **(suite.timing if kind == "time" else {})}
           for kind in suite.kinds for c in suite.cases]
    for i, fault in _faults(len(out)).items():
        out[i]["fault"] = fault
    return out


FAULTS = ("raise", "kill", "kill-mid-step", "hang", "invalid")


def _faults(n_jobs: int) -> dict[int, str]:
    """IST_BENCH_FAULTS, checked: a JSON mapping of job numbers (0 .. n-1) to fault names (runner/worker.py)."""
    text = os.environ.get("IST_BENCH_FAULTS") or "{}"
    usage = (f"IST_BENCH_FAULTS must be a JSON mapping of job numbers 0..{n_jobs - 1} to faults "
             f"({', '.join(FAULTS)}), e.g. '{{\"0\": \"raise\"}}'")
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        raise UsageError(usage + "; it is not JSON") from None
    if not isinstance(spec, dict):
        raise UsageError(usage)
    out = {}
    for key, fault in spec.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) < n_jobs) or fault not in FAULTS:
            raise UsageError(usage + f"; got {schema.show(key)}: {schema.show(fault)}")
        out[int(key)] = fault
    return out


def job_cost(job: dict) -> float:
    """A rough relative cost (layers x hidden^2 x tokens), to start the largest cases first."""
    from ist_bench import zoo
    cfg = zoo.load_config(job["case"]["model"])
    return cfg.num_hidden_layers * cfg.hidden_size ** 2 * job["case"]["seq_len"] * (job["case"].get("steps", 1) + 1)

