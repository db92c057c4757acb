"""Human-readable views of result rows (rich tables, GiB)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ist_bench.units import gib

console = Console()

_ROWS = [
    ("weights", "weights (params + buffers)"),
    ("activations", "activations (end of forward)"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer state"),
    ("method_state", "method state (AdaLoRA EMAs)"),
    ("temporary", "temporary / other"),
    ("peak", "peak (live tensors)"),
    ("peak_blocks", "peak (in CUDA allocator blocks)"),
    ("allocated_peak_est", "peak allocated, estimated"),
    ("allocated_peak", "peak allocated (max_memory_allocated)"),
    ("reserved_peak", "peak reserved (max_memory_reserved)"),
]


def memory_table(row: dict) -> Table:
    case = row["case"]
    title = f"{case['model']} · {case['method']['name']}"
    if case["select"] != "none":
        title += f" + {case['select']} ({case['layers']:g} of layers)"
    title += f" · backend {row['backend']}"
    summary = row.get("memory", {}).get("summary", {})
    multi = len(row.get("memory", {}).get("steps", [])) > 1
    table = Table(title=title, title_justify="left")
    table.add_column("GiB", style="bold")
    cols = ["first", "min", "median", "max"] if multi else ["first"]
    for c in cols:
        table.add_column(c if multi else "step", justify="right")
    for key, label in _ROWS:
        if key not in summary or (key == "method_state" and summary[key]["max"] == 0):
            continue
        table.add_row(label, *(gib(summary[key][c]) for c in cols))
    return table


def print_memory(row: dict) -> None:
    if row["status"] != "ok":
        console.print(f"[bold red]{row['status'].upper()}[/] {row['error']}")
        if row.get("peak_reached"):
            console.print(f"peak reached before failing: {gib(row['peak_reached'])} GiB")
    if "memory" in row and row["memory"]["steps"]:
        console.print(memory_table(row))
        s = row["memory"]["summary"]
        console.print(f"run peak: [bold]{gib(s['run_peak'])} GiB[/]  ·  optimizer state first step "
                      f"{gib(s['optimizer']['first'])} GiB, last {gib(s['optimizer']['last'])} GiB")
    if "settings" in row:
        st = row["settings"]
        info = (f"params {row['params'] / 1e6:,.1f}M · trainable {row['trainable_params'] / 1e6:,.2f}M · "
                f"{row['n_layers']} layers · " + " · ".join(f"{k}={v}" for k, v in st.items()))
        console.print(info, style="dim")
        if row["backend"] == "sim":
            console.print("sim: meta tensors, exact tensor bytes; allocator effects are modelled, not measured.",
                          style="dim")
