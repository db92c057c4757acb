"""Human-readable views of result rows (rich tables, GiB)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ist_bench.units import gib

console = Console()
NOISY = 1.05  # step-time p90/p10 above which a timing run is flagged

_ROWS = [
    ("weights", "weights (params + buffers)"),
    ("activations", "activations (end of forward)"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer state"),
    ("method_state", "method state (AdaLoRA EMAs)"),
    ("temporary", "temporary / other (peak - the above)"),
    ("peak", "peak, live tensors"),
    ("allocated_peak_est", "peak allocated, estimated (allocator model)"),
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
        decisive = s.get("run_allocated_peak", s.get("run_allocated_peak_est", s["run_peak"]))
        console.print(f"run peak allocated: [bold]{gib(decisive)} GiB[/]  ·  optimizer state first step "
                      f"{gib(s['optimizer']['first'])} GiB, last {gib(s['optimizer']['last'])} GiB")
        if row.get("nvml", {}).get("nvml_peak"):
            n = row["nvml"]
            console.print(f"NVML {n['nvml_source']} memory: peak {gib(n['nvml_peak'])} GiB, of which CUDA context "
                          f"and start-up {gib(n['nvml_baseline'])} GiB", style="dim")
    if "settings" in row:
        st = row["settings"]
        info = (f"params {row['params'] / 1e6:,.1f}M · trainable {row['trainable_params'] / 1e6:,.2f}M · "
                f"{row['n_layers']} layers · " + " · ".join(f"{k}={v}" for k, v in st.items()))
        console.print(info, style="dim")
        if row["backend"] == "sim":
            console.print("sim: meta tensors, exact tensor bytes; allocator block rounding and the cuBLAS "
                          "workspaces are modelled (Hopper), not measured.", style="dim")


def _title(case: dict) -> str:
    sel = "" if case["select"] == "none" else f" + {case['select']} ({case['layers']:g})"
    return f"{case['model']} · {case['method']['name']}{sel}"


def print_time(row: dict) -> None:
    if row["status"] != "ok":
        console.print(f"[bold red]{row['status'].upper()}[/] {row['error']}")
        return
    t = row["time"]
    table = Table(title=f"{_title(row['case'])} · backend {row['backend']} · "
                        f"{t['phases_ms']['step']['n']} steps after {row['warmup']} warm-up", title_justify="left")
    for col in ("ms", "median", "p10", "p90", "min", "max"):
        table.add_column(col, justify="left" if col == "ms" else "right")
    for phase, s in t["phases_ms"].items():
        table.add_row(phase, *(f"{s[k]:.1f}" for k in ("median", "p10", "p90", "min", "max")))
    console.print(table)
    console.print(f"{t['tokens_per_s']:,.0f} tokens/s · {t['s_per_100_iter']:.2f} s per 100 iterations "
                  f"(all overheads) · step p90/p10 = {t['p90_over_p10']:.3f}")
    if t["p90_over_p10"] > NOISY:
        console.print(f"[yellow]noisy: p90/p10 = {t['p90_over_p10']:.2f} > {NOISY}; compare with the A/B mode "
                      f"(--compare-select) rather than across runs[/]")
    if t.get("host_cpu_ms"):
        import statistics
        cpu = t["host_cpu_ms"]
        console.print(f"host CPU per step: median {statistics.median(cpu):.1f} ms (min {min(cpu):.1f}, max "
                      f"{max(cpu):.1f}); hypervisor steal during timing: {t.get('host_steal_s')} s", style="dim")
    clocks = t.get("gpu_clocks") or {}
    if clocks:
        c = clocks["sm_clock_mhz"]
        console.print(f"SM clock during timing: {c['min']}-{c['max']} MHz (median {c['median']}); clock events: "
                      f"{', '.join(clocks['clock_event_reasons']) or 'none'}", style="dim")
    prov = row.get("provenance", {})
    console.print(" · ".join(f"{k}={prov[k]}" for k in ("gpu", "driver", "torch", "transformers", "peft")
                             if prov.get(k)), style="dim")


def print_compare(rows: list[dict], names: list[str]) -> None:
    """A/B table: per variant medians over rounds; B/A step-time ratio per round with its spread."""
    import statistics

    by = {n: [r for r in rows if r["case"]["select"] == n] for n in names}
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        console.print(f"[bold red]{r['status'].upper()}[/] {_title(r['case'])}: {r['error']}")
    if bad:
        return
    table = Table(title=f"A/B: {_title(rows[0]['case'])} · select {names[0]} vs {names[1]} · "
                        f"{len(by[names[0]])} rounds, alternating", title_justify="left")
    table.add_column("median ms")
    for n in names:
        table.add_column(n, justify="right")
    for phase in ("forward", "backward", "optimizer", "step"):
        table.add_row(phase, *(f"{statistics.median(r['time']['phases_ms'][phase]['median'] for r in by[n]):.1f}"
                               for n in names))
    table.add_row("s / 100 iter", *(f"{statistics.median(r['time']['s_per_100_iter'] for r in by[n]):.2f}"
                                    for n in names))
    console.print(table)
    ratios = [b["time"]["phases_ms"]["step"]["median"] / a["time"]["phases_ms"]["step"]["median"]
              for a, b in zip(by[names[0]], by[names[1]], strict=True)]
    console.print(f"step time {names[1]}/{names[0]}: [bold]{statistics.median(ratios):.3f}[/] "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} rounds)")


def print_suite_progress(suite, rows, out) -> int:
    """Consume result rows as they arrive: append each to `out`, show progress; return failures."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed = 0
    summary = Table(title=f"suite {suite.name} → {out}", title_justify="left")
    for col in ("case", "backend", "status", "peak GiB", "step ms"):
        summary.add_column(col, justify="left" if col in ("case", "backend", "status") else "right")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(f"{suite.name}: {len(suite.cases)} cases", total=len(suite.cases))
        with open(out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                f.flush()
                progress.advance(task)
                failed += row["status"] not in ("ok", "oom")
                s = row.get("memory", {}).get("summary", {})
                peak = s.get("run_allocated_peak", s.get("run_allocated_peak_est", row.get("peak_reached")))
                step = row.get("time", {}).get("phases_ms", {}).get("step", {}).get("median")
                summary.add_row(_title(row["case"]), row.get("backend") or "-", row["status"], gib(peak),
                                "-" if step is None else f"{step:.1f}")
    console.print(summary)
    return failed
