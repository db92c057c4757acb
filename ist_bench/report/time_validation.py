"""Predicted vs measured step time, cell by cell (docs/time-prediction.md, "Validation").

A measured row (backend cuda, kind time) pairs with every predicted row (backend sim) of the same case
(everything but the backend) whose card is the card it ran on; a prediction from another card's tables
(the held-out experiment) is its own pair, labelled by the tables it read. The error is
100 x (predicted - measured) / measured, for GPU busy time per phase and step (the profiler's sum of kernel
times) and for the wall step (CUDA events around each phase, the median over the timed steps).
"""

from __future__ import annotations

import pandas as pd

from ist_bench.report.cells import column
from ist_bench.results import case_key

PHASES = ("forward", "backward", "optimizer", "step")
HOST_BOUND_BUSY = 0.8     # a measured step whose GPU is busy less than this share of the wall is host-bound
                          # (the console's "launch-bound" line uses the same share)


def _key(row: dict) -> str:
    """The case but its backend and AdaLoRA's schedule length (a timed run sets it to the steps it takes)."""
    case = {k: v for k, v in row["case"].items() if k not in ("backend", "capacity")}
    case["method"] = {k: v for k, v in case["method"].items() if k != "total_steps"}
    return case_key(case)


def _card(row: dict) -> str | None:
    if row.get("prediction"):
        return row["prediction"]["card"]
    return row.get("time", {}).get("device", {}).get("card")


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(measured, predicted) pairs; the latest row of a (case, backend, card, tables) stands for it."""
    latest = {}
    for r in rows:
        if r.get("kind") != "time" or r.get("status") != "ok" or r.get("backend") not in ("cuda", "sim"):
            continue
        tables = r.get("prediction", {}).get("tables")
        latest[(_key(r), r["backend"], _card(r), tables)] = r
    out = []
    for (key, backend, card, _), measured in latest.items():
        if backend != "cuda":
            continue
        out += [(measured, p) for (k, b, c, _), p in latest.items() if b == "sim" and k == key and c == card]
    return out


def _err(predicted: float | None, measured: float | None) -> float:
    if not predicted or not measured:
        return float("nan")
    return 100.0 * (predicted - measured) / measured


def time_frame(rows: list[dict]) -> pd.DataFrame:
    records = []
    for m, p in pairs(rows):
        mt, pt = m["time"], p["time"]
        mb, pb = mt.get("device", {}).get("busy_ms", {}), pt.get("device", {}).get("busy_ms", {})
        wall_m, wall_p = mt["phases_ms"]["step"]["median"], pt["phases_ms"]["step"]["median"]
        busy_share = mb.get("step", 0) / wall_m if wall_m else 0
        rec = {"card": _card(m), "tables": p["prediction"]["tables"], "model": m["case"]["model"],
               "cell": column(m["case"]), "busy ms": mb.get("step"), "predicted busy ms": pb.get("step"),
               "busy err %": _err(pb.get("step"), mb.get("step")), "wall ms": wall_m, "predicted wall ms": wall_p,
               "wall err %": _err(wall_p, wall_m),
               "host-bound": busy_share < HOST_BOUND_BUSY or p["prediction"].get("host_bound", False)}
        for phase in PHASES[:3]:
            rec[f"{phase} busy err %"] = _err(pb.get(phase), mb.get(phase))
        records.append(rec)
    return pd.DataFrame.from_records(records)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per card and tables: the cells, median / p90 / max |busy error|, and |wall error| where not host-bound."""
    out = []
    for (card, tables), g in df.groupby(["card", "tables"], sort=True):
        busy = g["busy err %"].abs().dropna()
        wall = g.loc[~g["host-bound"], "wall err %"].abs().dropna()
        out.append({"card": card, "tables": tables, "cells": len(g),
                    "busy median |err| %": busy.median(), "busy p90 |err| %": busy.quantile(0.9),
                    "busy max |err| %": busy.max(), "wall median |err| % (not host-bound)": wall.median(),
                    "wall max |err| % (not host-bound)": wall.max(), "host-bound cells": int(g["host-bound"].sum())})
    return pd.DataFrame.from_records(out)


def time_report(rows: list[dict]) -> str:
    """Markdown: the summary per card and tables, then every cell (worst |busy error| first)."""
    df = time_frame(rows)
    if df.empty:
        return ""
    s = summary(df)
    cells = df.sort_values("busy err %", key=lambda c: c.abs(), ascending=False)
    cols = ["card", "tables", "model", "cell", "busy ms", "predicted busy ms", "busy err %", "wall ms",
            "predicted wall ms", "wall err %", "host-bound"]
    return ("## predicted vs measured step time\n\nerror % = 100 (predicted - measured) / measured; busy = the GPU's "
            "kernel time per step (profiler), wall = the step's CUDA-event time; a cell whose GPU is busy under "
            f"{100 * HOST_BOUND_BUSY:.0f}% of the wall is host-bound (its wall error is not in the wall figures).\n\n"
            + s.round(2).to_markdown(index=False) + "\n\n" + cells[cols].round(2).to_markdown(index=False) + "\n")
