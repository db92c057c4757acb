"""sim vs cuda, cell by cell (issue: GPU truth). Input: rows of the same cases on both backends."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd

from ist_bench.report.cells import column
from ist_bench.report.frame import preference
from ist_bench.results import case_key, model_label

GiB = 1 << 30
CATEGORIES = ("weights", "activations", "gradients", "optimizer")


def _key(row: dict) -> str:
    """Everything that defines the case except the backend (and its sim-only capacity)."""
    case = {k: v for k, v in row["case"].items() if k not in ("backend", "capacity")}
    return case_key(case)


def pair_rows(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(cuda row, sim row) of each cell measured on both backends, in suite order. A pair is the same
    case on both; a cell measured twice (two suites listing it) counts once: the pair with the most
    steps stands for it (frame.cells_of's rule)."""
    latest = {}
    for r in rows:
        if r.get("kind", "memory") == "memory" and r.get("backend") in ("cuda", "sim"):
            latest[(_key(r), r["backend"])] = r
    keys = list(dict.fromkeys(k for k, _ in latest))
    pairs = [(latest[(k, "cuda")], latest[(k, "sim")]) for k in keys if (k, "cuda") in latest and (k, "sim") in latest]
    cells: dict[tuple, tuple[dict, dict]] = {}
    for cuda, sim in pairs:
        cell = (cuda["case"]["model"], column(cuda["case"]))
        if cell not in cells or preference(cuda) > preference(cells[cell][0]):
            cells[cell] = (cuda, sim)
    return list(cells.values())


def _gap(sim: float, cuda: float) -> float:
    return 100.0 * (sim - cuda) / cuda if cuda else float("nan")


def validation_frame(rows: list[dict]) -> pd.DataFrame:
    records = []
    for cuda, sim in pair_rows(rows):
        c = cuda["case"]
        rec = {"model": c["model"], "method": column(c),
               "cuda status": cuda["status"], "sim status": sim["status"]}
        if cuda["status"] == "ok" and sim["status"] == "ok":
            cs, ss = cuda["memory"]["summary"], sim["memory"]["summary"]
            if "run_allocated_peak" not in cs or "run_allocated_peak_est" not in ss:   # rows without the figures
                rec["cuda status"] = rec["sim status"] = "no allocator peak in the rows"     # compared: said, not a crash
                records.append(rec)
                continue
            rec["cuda peak alloc"] = cs["run_allocated_peak"] / GiB
            rec["sim peak est"] = ss["run_allocated_peak_est"] / GiB
            rec["gap %"] = _gap(ss["run_allocated_peak_est"], cs["run_allocated_peak"])
            if "run_peak" in ss and "run_peak" in cs:
                rec["tensor peak gap %"] = _gap(ss["run_peak"], cs["run_peak"])
            for cat in CATEGORIES:
                if cat in ss and cat in cs and "max" in ss[cat] and "max" in cs[cat]:
                    rec[f"{cat} gap %"] = _gap(ss[cat]["max"], cs[cat]["max"])
            if "activations_allocated" in cs and "median" in ss.get("activations", {}):
                # steady state (median step): the first forward also takes cuBLAS's workspace
                rec["act. vs allocator gap %"] = _gap(ss["activations"]["median"],
                                                      cs["activations_allocated"]["median"])
            if "run_reserved_peak" in cs:
                rec["cuda reserved"] = cs["run_reserved_peak"] / GiB
            rec["nvml peak"] = (cuda.get("nvml", {}).get("nvml_peak") or 0) / GiB
        elif cuda["status"] == "oom":
            rec["cuda peak alloc"] = (cuda.get("peak_reached") or 0) / GiB
            if sim["status"] == "ok" and "run_allocated_peak_est" in sim["memory"]["summary"]:
                rec["sim peak est"] = sim["memory"]["summary"]["run_allocated_peak_est"] / GiB
        records.append(rec)
    return pd.DataFrame.from_records(records)


def rank_frame(rows: list[dict]) -> pd.DataFrame:
    """Sharded cells (`--nproc`), rank by rank: each rank's allocated peak on cuda against sim's estimate
    for the same rank (sim plays rank 0 unless told more ranks), and whether the rank's weight, gradient
    and optimizer bytes are equal."""
    records = []
    for cuda, sim in pair_rows(rows):
        sim_ranks = {r["rank"]: r for r in sim.get("ranks") or [] if r.get("status") == "ok"}
        for r in cuda.get("ranks") or []:
            s = sim_ranks.get(r["rank"])
            if r.get("status") != "ok" or s is None:
                continue
            c, e = r.get("run_allocated_peak"), s.get("run_allocated_peak_est")
            records.append({"model": model_label(cuda["case"]["model"]), "cell": column(cuda["case"]), "rank": r["rank"],
                            "cuda": c / GiB, "sim": e / GiB, "gap %": _gap(e, c),
                            "shards equal": all(r.get(k) == s.get(k) for k in ("weights", "gradients", "optimizer"))})
    return pd.DataFrame.from_records(records)


def _wrap(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_on_hyphens=False)


def validation_report(rows: list[dict], worst_first: bool = False) -> str:
    """The sim-vs-cuda table, at most 80 columns wide (every line): per cell the two peaks (GiB) and
    the gaps; the per-category gaps summed up in one line (all of them are in validation_frame).
    `worst_first`: the cells by |gap| of the allocated peak, largest first (else in suite order)."""
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
    cats = [f"{c} gap %" for c in CATEGORIES if f"{c} gap %" in df]
    cat_max = float(df[cats].abs().max().max()) if cats and df[cats].notna().any().any() else None
    short = df.reindex(columns=list(SHORT)).rename(columns=SHORT)
    short["status"] = [c if c == s else f"{c}/{s}" for c, s in zip(df["cuda status"], df["sim status"], strict=True)]
    if (short["status"] == "ok").all():
        short = short.drop(columns="status")
    for col in ("cuda", "sim", "gap %", "tensors %"):
        short[col] = short[col].round(2) + 0.0   # no -0.00
    short = _fold(short)
    lines = [f"## sim vs cuda on {gpu}", "", _wrap(f"cuda rows: {versions}."), "",
             _wrap(f"{len(df)} cells, {len(gaps)} measured on both; largest |gap| of sim's estimated peak to "
                   f"max_memory_allocated: {gaps.max():.2f}% (mean |gap| {gaps.mean():.2f}%).") if len(gaps) else
             f"{len(df)} cells; none finished on both backends.", "",
             _wrap("cuda = max_memory_allocated, sim = sim's estimate of it (tensor bytes in modelled allocator "
                   "blocks, the measured cuBLAS workspace and kernels' scratch: docs/sim.md), GiB; gap % = 100 (sim-cuda)/cuda; tensors % "
                   "compares the tracker's tensor-level peak on both backends." +
                   (f" Largest |gap| of any category (weights, activations, gradients, optimizer state; maximum "
                    f"over steps): {cat_max:.2f}%." if cat_max is not None else "")), "",
             short.to_markdown(index=False, floatfmt=".2f", missingval="", numalign="right"), ""]
    ranks = rank_frame(rows)
    if not ranks.empty:
        ranks.insert(0, "sharded cell", [f"{m} {c}" for m, c in zip(ranks.pop("model"), ranks.pop("cell"), strict=True)])
        ranks["shards equal"] = ranks["shards equal"].map({True: "yes", False: "NO"})
        lines += ["### Per rank", "", _wrap(f"{len(ranks)} ranks of {ranks['sharded cell'].nunique()} sharded cells; "
                                           f"largest |gap| {ranks['gap %'].abs().max():.2f}%; weights, gradients and "
                                           f"optimizer bytes equal on {int((ranks['shards equal'] == 'yes').sum())}."),
                  "", ranks.to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)


WIDTH = 80


def _fold(short: pd.DataFrame) -> pd.DataFrame:
    """Model and cell in one column, folded onto continuation rows (blank figures) so that the
    table is at most WIDTH wide however many knobs a cell has."""
    short = short.astype(object).where(short.notna(), "-")   # a figure not measured: "-"
    short.insert(0, "cell", [f"{m} {c}" for m, c in zip(short.pop("model"), short.pop("cell"), strict=True)])
    figures = short.drop(columns="cell").to_markdown(index=False, floatfmt=".2f", missingval="-")
    room = WIDTH - len(figures.splitlines()[0]) - 3
    if max(map(len, short["cell"])) <= room:
        return short
    out = []
    for rec in short.to_dict("records"):
        first, *rest = textwrap.wrap(rec["cell"], room, subsequent_indent="..", break_on_hyphens=False)
        out += [{**rec, "cell": first}, *({"cell": line} for line in rest)]
    folded = pd.DataFrame.from_records(out, columns=short.columns).astype(object)
    return folded.where(folded.notna(), None)   # a continuation row's figures: blank, not nan
SHORT = {"model": "model", "method": "cell", "status": "status", "cuda peak alloc": "cuda", "sim peak est": "sim",
         "gap %": "gap %", "tensor peak gap %": "tensors %"}


def coverage(rows: list[dict]) -> dict:
    """What a validation covers: the cells (model, column) whose sim estimate was checked against the
    GPU's allocator peak, with the gap. ist_bench/report/validated.json is this, for the rows of
    reports/validation.md (`python -m ist_bench.report.validation FILE` rewrites it)."""
    df = validation_frame(rows)
    ok = df[df["gap %"].notna()] if "gap %" in df else df.iloc[0:0]
    prov = next((r["provenance"] for r, _ in pair_rows(rows) if r.get("provenance")), {})
    return {"gpu": prov.get("gpu"), "report": "reports/validation.md",
            "max_abs_gap_pct": round(float(ok["gap %"].abs().max()), 2) if len(ok) else None,
            "cells": {f"{m} {c}": round(float(g), 2) + 0.0 for m, c, g in zip(ok["model"], ok["method"], ok["gap %"],
                                                                             strict=True)}}


if __name__ == "__main__":   # rewrite validated.json from the rows of reports/validation.md
    import sys

    from ist_bench.results import read_rows

    data = coverage([r for p in sys.argv[1:] for r in read_rows(p)])   # the files validation.md shows
    (Path(__file__).parent / "validated.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
