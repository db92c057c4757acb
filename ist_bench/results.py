"""Result rows: one JSON object per line (JSONL), schema version 1 (docs/results.md).

    import ist_bench.results
    df = ist_bench.results.load("results/table1.jsonl")      # a flat pandas DataFrame, one row per result
    rows = ist_bench.results.read_rows("results/table1.jsonl")  # the raw dicts

A row is written with flush + fsync as soon as its case finishes, so an interrupted run keeps
every finished case. A last line cut short by a crash or a full disk is reported and skipped
on load, never merged; any other malformed line is an error naming the file and line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ist_bench import schema
from ist_bench.errors import UsageError
from ist_bench.safeio import append_rows, write_atomic  # noqa: F401  (written there; re-exported)

SCHEMA = schema.SCHEMA
GiB = 1 << 30


def case_key(case: dict) -> str:
    """What identifies a case across runs: every case field (backend included)."""
    return json.dumps(case, sort_keys=True)


def row_key(row: dict) -> str:
    """What pairs a row (or a job: it has `kind` and `case` too) with the same case's rows of another
    run: its kind and every case field."""
    return row.get("kind", "memory") + case_key(row["case"])


def model_label(model: str) -> str:
    """How a case's model is shown (console, reports, compare): a zoo name as is; a config-file path by
    the file's stem (`cfgs/big-llama.json` -> `big-llama`), or by its folder's name for a folder or a
    `<folder>/config.json`, so that a path never wraps a table."""
    if "/" not in model and "\\" not in model and not model.endswith(".json"):
        return model
    path = Path(model.replace("\\", "/").rstrip("/"))
    if path.name == "config.json" and path.parent.name:
        return path.parent.name
    return path.stem or model


def case_label(case: dict) -> str:
    """`lora`, `lora+ist`, `lora+ist(mu=100)`: the method, the policy and its options."""
    name = case["method"]["name"]
    if case.get("select", "none") != "none":
        name += f"+{case['select']}"
        opts = case.get("select_opts") or {}
        if opts:
            name += "(" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"
    return name


def read_rows(path: str | Path, *, warn=lambda msg: print(f"ist-bench: warning: {msg}", file=sys.stderr)) -> list[dict]:
    """Every row of a results file, each checked against the row schema. Read a line at a time (a file of
    millions of blank lines costs no memory); a missing or non-regular file (a folder, a FIFO, a device)
    is one line; a last line cut short (an interrupted write) is reported and skipped."""
    import os
    import stat

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"results file not found: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read results file {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        from ist_bench.safeio import _kind
        raise UsageError(f"results file {path} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    rows = []
    with os.fdopen(fd, "rb") as f:
        line, i = f.readline(), 1
        while line:
            following = f.readline()
            rows += _row(line, i, path, last=not following, warn=warn)
            line, i = following, i + 1
    return rows


def _row(raw: bytes, i: int, path: Path, *, last: bool, warn) -> list[dict]:
    """The row of line `i` ([] for a blank line or a cut last one)."""
    if not raw.strip():
        return []
    try:
        text = raw.decode("utf-8-sig" if i == 1 else "utf-8")
        row = json.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"{path}:{i} is not an ist-bench result row (not UTF-8)") from None
    except json.JSONDecodeError:
        if last and not raw.endswith(b"\n"):    # the last line, cut short
            warn(f"{path}:{i} is a truncated last line (an interrupted write); skipped")
            return []
        raise UsageError(f"{path}:{i} is not an ist-bench result row (not JSON)") from None
    except (ValueError, RecursionError):   # an integer of > 4300 digits, nesting deeper than Python's stack
        raise UsageError(f"{path}:{i} is not an ist-bench result row (a number or nesting out of bounds)") from None
    if not isinstance(row, dict) or not isinstance(row.get("case"), dict):
        raise UsageError(f"{path}:{i} is not an ist-bench result row")
    version = row.get("schema", SCHEMA)
    if version != SCHEMA or isinstance(version, bool):
        raise UsageError(f"{path}:{i} has result schema {schema.show(version)}; this ist-bench reads schema {SCHEMA}")
    schema.check_row(row, f"{path}:{i}: ")
    return [row]


def load(*paths: str | Path):
    """A flat DataFrame of result rows: case fields, status, the memory figures in bytes (`first_*`,
    `typical_*`, `steady_*`, `max_*`, `run_*`, `at_peak_*`), times in ms (`<phase>_ms` median,
    `_ms_mean`/`_p10`/`_p90`, `<phase>_busy_ms`), settings and provenance: every figure the console
    prints (docs/results.md). The latest row of a case wins."""
    import pandas as pd

    latest: dict[str, dict] = {}
    for p in paths:
        for row in read_rows(p):
            latest[row_key(row)] = row
    return pd.DataFrame.from_records([flatten(r) for r in latest.values()])


def flatten(row: dict) -> dict:
    c = row["case"]
    out = {"kind": row.get("kind", "memory"), "model": c["model"], "method": c["method"]["name"],
           "select": c.get("select", "none"), "select_opts": json.dumps(c.get("select_opts") or {}, sort_keys=True),
           "optimizer_state": c.get("optimizer_state", "keep"), "backend": row.get("backend"),
           "status": row.get("status"), "error": row.get("error"), "seq_len": c.get("seq_len"),
           "batch": c.get("batch", 1), "dtype": c.get("dtype"), "n_layers": row.get("n_layers"),
           "params": row.get("params"), "trainable_params": row.get("trainable_params"),
           "peak_reached": row.get("peak_reached")}
    summary = row.get("memory", {}).get("summary", {})
    for key, fig in summary.items():
        if isinstance(fig, dict):
            for which in ("first", "typical", "steady", "max"):
                if which in fig:
                    out[f"{which}_{key}"] = fig[which]
        else:
            out[key] = fig
    steps = row.get("memory", {}).get("steps") or []
    if steps and steps[-1].get("at_peak"):
        out.update({f"at_peak_{k}": v for k, v in steps[-1]["at_peak"].items()})
    for phase, s in row.get("time", {}).get("phases_ms", {}).items():
        out[f"{phase}_ms"] = s.get("median")
        for stat in ("mean", "p10", "p90"):
            out[f"{phase}_ms_{stat}"] = s.get(stat)
    t = row.get("time", {})
    for phase, b in ((t.get("device") or {}).get("busy") or {}).items():
        out[f"{phase}_busy_ms"] = b.get("median")
    for key in ("wall_ratio", "busy_ratio"):
        if key in (t.get("overhead") or {}):
            out[f"overhead_{key}"] = t["overhead"][key]
    for key in ("s_per_100_iter", "tokens_per_s", "p90_over_p10", "importance_ms_per_iter"):
        if key in t:
            out[key] = t[key]
    for key, value in (t.get("device") or {}).items():
        if not isinstance(value, (dict, list)):
            out[f"device_{key}"] = value
    nvml = row.get("nvml") or {}
    out["nvml_peak"] = nvml.get("nvml_peak")
    out["nvml_baseline"] = nvml.get("nvml_baseline")
    st = row.get("settings") or {}
    for key in ("attn_implementation", "gradient_checkpointing", "optimizer", "data"):
        out[key] = st.get(key)
    prov = row.get("provenance", {})
    for key in ("gpu", "torch", "transformers", "peft", "git_commit"):
        out[key] = prov.get(key)
    return out
