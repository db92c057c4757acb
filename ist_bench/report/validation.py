"""sim vs cuda, cell by cell (issue: GPU truth). Input: rows of the same cases on both backends."""

from __future__ import annotations

import pandas as pd

from ist_bench.results import case_key, case_label

GiB = 1 << 30
CATEGORIES = ("weights", "activations", "gradients", "optimizer")


def _key(row: dict) -> str:
    """Everything that defines the case except the backend (and its sim-only capacity)."""
    case = {k: v for k, v in row["case"].items() if k not in ("backend", "capacity")}
    return case_key(case)


def pair_rows(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(cuda row, sim row) of each case measured on both backends, in suite order."""
    latest = {}
    for r in rows:
        if r.get("kind", "memory") == "memory" and r.get("backend") in ("cuda", "sim"):
            latest[(_key(r), r["backend"])] = r
    keys = list(dict.fromkeys(k for k, _ in latest))
    return [(latest[(k, "cuda")], latest[(k, "sim")]) for k in keys if (k, "cuda") in latest and (k, "sim") in latest]


def _gap(sim: float, cuda: float) -> float:
    return 100.0 * (sim - cuda) / cuda if cuda else float("nan")


def validation_frame(rows: list[dict]) -> pd.DataFrame:
    records = []
    for cuda, sim in pair_rows(rows):
        c = cuda["case"]
        knobs = "".join(f" {k}={c[k]}" for k in ("batch", "attn", "grad_checkpointing", "seq_len")
                        if k in c and c[k] != {"batch": 1, "attn": "eager", "grad_checkpointing": False,
                                               "seq_len": 1024}[k])
        rec = {"model": c["model"], "method": case_label(c) + knobs,
               "cuda status": cuda["status"], "sim status": sim["status"]}
        if cuda["status"] == "ok" and sim["status"] == "ok":
            cs, ss = cuda["memory"]["summary"], sim["memory"]["summary"]
            rec["cuda peak alloc"] = cs["run_allocated_peak"] / GiB
            rec["sim peak est"] = ss["run_allocated_peak_est"] / GiB
            rec["gap %"] = _gap(ss["run_allocated_peak_est"], cs["run_allocated_peak"])
            rec["tensor peak gap %"] = _gap(ss["run_peak"], cs["run_peak"])
            for cat in CATEGORIES:
                rec[f"{cat} gap %"] = _gap(ss[cat]["max"], cs[cat]["max"])
            if "activations_allocated" in cs:
                # steady state (median step): the first forward also takes cuBLAS's workspace
                rec["act. vs allocator gap %"] = _gap(ss["activations"]["median"],
                                                      cs["activations_allocated"]["median"])
            rec["cuda reserved"] = cs["run_reserved_peak"] / GiB
            rec["nvml peak"] = (cuda.get("nvml", {}).get("nvml_peak") or 0) / GiB
        elif cuda["status"] == "oom":
            rec["cuda peak alloc"] = (cuda.get("peak_reached") or 0) / GiB
            if sim["status"] == "ok":
                rec["sim peak est"] = sim["memory"]["summary"]["run_allocated_peak_est"] / GiB
        records.append(rec)
    return pd.DataFrame.from_records(records)


def validation_report(rows: list[dict], worst_first: bool = False) -> str:
    df = validation_frame(rows)
    if worst_first and "gap %" in df:
        df = df.loc[df["gap %"].abs().fillna(-1).sort_values(ascending=False, kind="stable").index]
    if df.empty:
        return "no case was measured on both cuda and sim\n"
    prov = next((r["provenance"] for r, _ in pair_rows(rows) if r.get("provenance")), {})
    gpu = prov.get("gpu", "GPU")
    versions = ", ".join(f"{k} {prov[k]}" for k in ("torch", "transformers", "peft", "driver", "git_commit")
                         if prov.get(k))
    gaps = df["gap %"].dropna().abs() if "gap %" in df else pd.Series(dtype=float)
    lines = [f"## sim vs cuda on {gpu}", "", f"cuda rows: {versions}.", "",
             f"{len(df)} cells, {len(gaps)} measured on both; largest |gap| of sim's estimated peak to "
             f"max_memory_allocated: {gaps.max():.2f}% (mean |gap| {gaps.mean():.2f}%)." if len(gaps) else
             f"{len(df)} cells; none finished on both backends.", "",
             "GiB; gap % = (sim - cuda) / cuda. `sim peak est` = tensor bytes in modelled allocator blocks "
             "plus the measured cuBLAS workspace; `tensor peak gap` compares the tracker's tensor-level peak "
             "on both backends; category gaps compare the maximum over steps.", "",
             df.to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)
