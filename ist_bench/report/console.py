"""Human-readable views of result rows (rich tables, GiB)."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.table import Table

from ist_bench.report.cells import check_note, column
from ist_bench.results import case_label, model_label
from ist_bench.safeio import terminal_width
from ist_bench.units import human, in_unit, unit_for

console = Console(width=terminal_width())   # ist_bench/safeio.py: PYTHONIOENCODING=ascii, COLUMNS=0
NOISY = 1.05  # step-time p90/p10 above which a timing run is flagged

def _title(case: dict) -> str:
    return f"{model_label(case['model'])} · {case_label(case)}"


def _cell_title(case: dict) -> str:
    """A suite table's row: the title and every knob off the paper's setting (`lora N=2`, `lora batch=4`),
    so two cases of a grid never read the same."""
    return f"{model_label(case['model'])} · {column(case)}"


# (summary key, label, at-peak key)
_ROWS = [
    ("weights", "weights", "weights"),
    ("activations", "activations", "activations"),
    ("gradients", "gradients", "gradients"),
    ("optimizer", "optimizer state", "optimizer"),
    ("optimizer_paged", "optimizer state (paged)", None),
    ("method_state", "method state", "method_state"),
    (None, "temporaries", "temporary"),
    (None, "FSDP2 buffers", "fsdp_buffers"),     # gathered weights, all-gather / reduce-scatter buffers
    (None, "allocator rounding", "rounding"),
    (None, "cuBLAS workspace", "workspace"),
    ("peak", "peak, tensors", None),
    ("allocated_peak_est", "peak allocated (est.)", "total"),
    ("allocated_peak", "peak allocated", "total"),
    ("reserved_peak", "peak reserved", None),
    ("importance_allocated_peak_est", "importance fwd peak", None),
    ("importance_allocated_peak", "importance fwd peak", None),
]
_COLS = (("first", "first"), ("typical", "typical"), ("steady", "steady"))


def memory_table(row: dict) -> Table:
    summary = row.get("memory", {}).get("summary", {})
    steps = row.get("memory", {}).get("steps", [])
    steady = steps[-1] if steps and steps[-1].get("phase") == "steady" else None
    at_peak = dict(steady.get("at_peak", {})) if steady else {}
    if at_peak:
        at_peak["total"] = sum(at_peak.values())
    lines = []
    for key, label, peak_key in _ROWS:
        if key is not None and key not in summary:
            continue
        if key == "method_state" and not summary[key]["max"]:
            continue
        at = at_peak.get(peak_key) if peak_key else None
        if key is None and not at:
            continue
        vals = [summary[key].get(c) for c, _ in _COLS] if key else [None] * len(_COLS)
        if key and key.startswith("importance_"):   # one round, in the steady step
            vals = [None, None, summary[key].get("steady")]
        lines.append((label, vals, at))
    unit, size = unit_for([v for _, vals, at in lines for v in [*vals, at]])
    unchecked = row["backend"] == "sim" and check_note(row).startswith("NOT")
    table = Table(title=f"{_title(row['case'])} · {row['backend']}" + (" · not GPU-validated" if unchecked else ""),
                  title_justify="left")
    table.add_column(unit, style="bold")
    typical = any(vals[1] is not None for _, vals, _ in lines)
    for i, (_, head) in enumerate(_COLS):
        if i != 1 or typical:
            table.add_column(head, justify="right")
    table.add_column("at peak", justify="right")
    for label, vals, at in lines:
        vals = vals if typical else [vals[0], vals[2]]
        table.add_row(label, *(in_unit(v, size) for v in vals), in_unit(at, size))
    return table


def _ranges(layers) -> str:
    """[0, 25, 26, 27] -> '0, 25-27'."""
    out: list[list[int]] = []
    for i in sorted(layers):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def _steady_note(row: dict) -> str:
    """What each column of the memory table holds, said from the row itself (never a stock phrase
    that the numbers beside it could contradict)."""
    summary = row["memory"]["summary"]
    steps = row["memory"]["steps"]
    sel = row.get("selection", {})
    pol = sel.get("policy", {})
    keep = pol.get("optimizer_state", "keep") == "keep"
    opt_first = (summary.get("optimizer") or {}).get("first")
    sparse = pol.get("name", "none") != "none"
    first = ("first: step 0, no optimizer state yet" if not opt_first else
             "first: step 0, with the optimizer state its own AdamW step creates" +
             (" (for the layers step 0 trains)" if sparse else ""))
    if not sparse:
        what = "every layer trains"
    else:
        active = steps[-1].get("active_layers") if steps and steps[-1].get("phase") == "steady" else None
        what = (f"the worst draw of {sel.get('n_active')} of {row['n_layers']} layers" +
                (f" (layers {_ranges(active)})" if active else ""))
    typical = any("typical" in v for v in summary.values() if isinstance(v, dict))
    note = (f"{first}. " + ("typical: the expected step over the policy's draws (docs/measurement.md, "
                            "\"typical\"). " if typical else "") +
            f"steady: the bound a long run's training step reaches: {what}; optimizer state "
            f"{'keep (every layer' if keep else 'reset (the active layers'}'s moments held). at peak: what is "
            f"live at the steady step's peak, summing to it.")
    key = next((k for k in ("allocated_peak", "allocated_peak_est", "peak") if f"importance_{k}" in summary), None)
    if key:   # IST's importance round: a phase of its own before the step, bounded by the steady step's round
        step, rnd = summary[key]["steady"], summary[f"importance_{key}"]["steady"]
        note += (f" The importance round is not in those figures: its peak is the \"importance fwd peak\" row "
                 f"({human(rnd)}, {'above' if rnd > step else 'below'} the step's {human(step)}); a long run's "
                 f"peak is the larger, the run peak above.")
    return note


def print_memory(row: dict) -> None:
    if row["status"] != "ok":
        console.print(f"[bold red]{row['status'].upper()}[/] {row['error']}")
        if row.get("peak_reached"):
            console.print(f"peak reached before failing: {human(row['peak_reached'])}")
    if "memory" in row and row["memory"]["steps"]:
        console.print(memory_table(row))
        s = row["memory"]["summary"]
        decisive = s.get("run_allocated_peak", s.get("run_allocated_peak_est", s["run_peak"]))
        console.print(f"run peak allocated: [bold]{human(decisive)}[/]")
        console.print(_steady_note(row), style="dim")
        note = check_note(row)
        console.print(note, style="yellow" if note.startswith("NOT") else "dim")
        tops = row["memory"]["steps"][-1].get("top_activations") or {}
        if tops:
            console.print("activations at the peak, by module: " +
                          ", ".join(f"{k} {human(v)}" for k, v in list(tops.items())[:3]), style="dim")
        if row.get("nvml", {}).get("nvml_peak"):
            n = row["nvml"]
            console.print(f"NVML {n['nvml_source']} memory: peak {human(n['nvml_peak'])}, of which CUDA context "
                          f"and start-up {human(n['nvml_baseline'])}", style="dim")
    if "settings" in row:
        console.print(settings_line(row), style="dim")
        if row["settings"].get("quant"):
            console.print(quant_line(row), style="dim")
        if row["backend"] == "sim":
            console.print("sim: meta tensors, exact tensor bytes; allocator block rounding and the cuBLAS "
                          "workspaces are modelled (Hopper), not measured.", style="dim")


def quant_line(row: dict) -> str:
    """The quantized base and what peft's prepare_model_for_kbit_training did (docs/quant.md)."""
    q = row["settings"]["quant"]
    fmt = (f"{q['quant']}{' + double quant' if q.get('double_quant') else ''}, blocks of {q.get('blocksize')}, "
           f"compute {q.get('compute_dtype')}" if q["quant"] != "int8" else f"int8, threshold {q.get('int8_threshold')}")
    prep = q.get("prepared") or {}
    line = (f"base: {q['layers']} bitsandbytes layers in {fmt}: {human(q['packed_bytes'])} packed + "
            f"{human(q['state_bytes'])} quantization state; prepare_model_for_kbit_training upcast "
            f"{prep.get('n_upcast', 0)} parameters to fp32 ({', '.join(prep.get('upcast_to_fp32', [])[:3])}"
            f"{', ...' if len(prep.get('upcast_to_fp32', [])) > 3 else ''}), checkpointing "
            f"{'on' if prep.get('use_gradient_checkpointing') else 'off'}")
    paged = row.get("memory", {}).get("summary", {}).get("optimizer_paged")
    if paged is not None:
        line += (". Paged optimizer state: bitsandbytes keeps it in CUDA managed memory, outside the caching "
                 "allocator, so it is its own line, not in the allocated peak" if row["backend"] != "cpu" else
                 ". Paged optimizer: bitsandbytes falls back to plain buffers on the CPU (counted as optimizer state)")
    return line


def print_ranks(row: dict) -> None:
    """A distributed row's ranks: status, peak and the shards each holds."""
    if not row.get("ranks"):
        return
    d = row["dist"]
    table = Table(title=f"{d['shard']} on {d['nproc']} ranks ({d['launcher']}; reshard after forward "
                        f"{'on' if d['reshard_after_forward'] else 'off'})", title_justify="left")
    if row.get("kind") == "time":
        console.print(", ".join(f"rank {r['rank']}: {r['status']}" + (f" {r['step_ms']:.1f} ms/step" if r.get("step_ms")
                                else f" {r.get('error')}" if r["status"] != "ok" else "")
                                + (f" (communication {r['comm_ms']:.1f} ms busy, {r['comm_exposed_ms']:.1f} exposed)"
                                   if r.get("comm_ms") is not None else "") for r in row["ranks"]))
        return
    keys = ("weights", "gradients", "optimizer", "activations", "fsdp_buffers_at_peak")
    vals = [[r.get("run_allocated_peak", r.get("run_allocated_peak_est", r.get("run_peak"))), *map(r.get, keys)]
            for r in row["ranks"]]
    unit, size = unit_for([v for vs in vals for v in vs if v is not None])
    for c in ("rank", "status", f"peak {unit}", "weights", "grads", "optim", "acts", "FSDP2 buf"):
        table.add_column(c, justify="right")
    for r, vs in zip(row["ranks"], vals, strict=True):
        table.add_row(str(r["rank"]), r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error')}",
                      *("-" if v is None else in_unit(v, size) for v in vs))
    console.print(table)


def settings_line(row: dict) -> str:
    """The settings the step actually used, in one line (also the data source and real lengths)."""
    st = row["settings"]
    data = st.get("data", "synthetic")
    if "mean_len" in st:
        tokens = f"one Alpaca sample per step (max {st['max_len']}, mean {st['mean_len']} tokens)"
    else:
        tokens = f"batch {st.get('batch', 1)} x {st.get('seq_len')} tokens ({data})"
    return (f"{row['params'] / 1e9:.2f}B params, {row['trainable_params'] / 1e6:,.2f}M trainable, {row['n_layers']} "
            f"layers · {tokens} · {st['dtype']} · {st['attn_implementation']} attention · checkpointing "
            f"{'on' if st['gradient_checkpointing'] else 'off'} · {st['optimizer']} · optimizer state "
            f"{st.get('optimizer_state', 'keep')} · {st['device']}")


def print_time(row: dict) -> None:
    if row["status"] != "ok":
        console.print(f"[bold red]{row['status'].upper()}[/] {row['error']}")
        return
    t = row["time"]
    dev = t.get("device") or {}
    busy = dev.get("busy") or {}
    table = Table(title=f"{_title(row['case'])} · {row['backend']} · {t['phases_ms']['step']['n']} steps "
                        f"after {row['warmup']} warm-up", title_justify="left")
    cols = ["ms", "median", "mean", "p10", "p90"] + (["GPU busy", "busy %", "busy p90/p10"] if busy else [])
    for col in cols:
        table.add_column(col, justify="left" if col == "ms" else "right")
    for phase, s in t["phases_ms"].items():
        cells = [f"{s[k]:.1f}" for k in ("median", "mean", "p10", "p90")]
        if busy:
            b = busy.get(phase)
            frac = dev.get("busy_fraction", {}).get(phase)
            cells += [f"{b['median']:.1f}" if b else "", f"{100 * frac:.0f}%" if frac else "",
                      f"{b['p90'] / b['p10']:.3f}" if b and b["p10"] else ""]
        table.add_row(phase, *cells)
    console.print(table)
    console.print(f"{t['tokens_per_s']:,.0f} tokens/s · {t['s_per_100_iter']:.2f} s per 100 iterations "
                  f"(all overheads) · step p90/p10 = {t['p90_over_p10']:.3f}")
    if dev.get("flops_per_step"):
        line = f"{dev['flops_per_step'] / 1e12:.2f} TFLOP per step · {dev['tflops_wall']:.1f} TFLOP/s on wall time"
        if dev.get("tflops_busy"):
            line += f", {dev['tflops_busy']:.1f} on GPU busy time"
        if dev.get("mfu") is not None:
            line += f" · MFU {100 * dev['mfu']:.1f}% of {dev['card']}'s {dev['peak_tflops']:g} dense bf16 TFLOP/s"
        console.print(line)
    comm = dev.get("comm")
    if comm:
        step = {k: v.get("step", 0) for k, v in comm.items()}
        console.print(f"GPU busy per step: communication {step['comm']:.1f} ms (collectives' kernels), compute "
                      f"{step['compute']:.1f} ms; {step['exposed']:.1f} ms of communication overlaps no compute")
    if busy and dev.get("busy_fraction", {}).get("step", 1) < 0.8:
        console.print(f"[yellow]the GPU is busy {100 * dev['busy_fraction']['step']:.0f}% of the step: it is "
                      f"launch-bound, wall time moves with the host; compare GPU busy time[/]")
    if t["p90_over_p10"] > NOISY and not row.get("prediction"):   # a prediction's spread is its draws', not noise
        console.print(f"[yellow]noisy: p90/p10 = {t['p90_over_p10']:.2f} > {NOISY}; compare with the A/B mode "
                      f"(--compare-select) or on GPU busy time rather than across runs[/]")
    over = t.get("overhead")
    if over:
        line = (f"harness vs bare loop, {over['blocks']} interleaved pairs of {over['block_steps']}-step blocks: wall "
                f"x{over['wall_ratio']:.3f} (blocks {over['wall_ratio_min']:.3f}-{over['wall_ratio_max']:.3f})")
        if "busy_ratio" in over:
            line += f", GPU busy x{over['busy_ratio']:.4f}"
        console.print(line)
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


def print_prediction(row: dict) -> None:
    """What a predicted time row assumed: the card, its tables, the host, the stand-in ops."""
    p = row.get("prediction")
    if not p or row["status"] != "ok":
        return
    cal = p["calibration"]
    where = (f"tables measured on {cal.get('gpu')} ({cal.get('date')}, torch {cal.get('torch')})"
             if isinstance(cal, dict) else cal)
    line = f"predicted for {p['card']} (no GPU used): {where}"
    if p.get("uncertainty_pct"):
        line += f"; uncertainty ±{p['uncertainty_pct']:g}% (a held-out card's error)"
    console.print(line)
    bound = "host-bound: the GPU waits for the CPU's launches" if p["host_bound"] else "GPU-bound"
    console.print(f"host {p['host_ms_per_step']:.1f} ms vs GPU busy {p['busy_ms_per_step']:.1f} ms per step: {bound} "
                  f"(host costs measured on {p['host']})")
    if p.get("fallback"):
        share = sum(p["fallback"].values())
        console.print(f"[yellow]{100 * share:.1f}% of the predicted kernel time is from stand-in models: "
                      f"{', '.join(list(p['fallback'])[:5])}[/]")


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


def print_suite_progress(suite, rows, out, total: int) -> int:
    """Consume result rows as they arrive: append each to `out` (flushed and fsynced), show case i/n,
    elapsed time and ETA; return how many failed. Closing on an exception stops the workers."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ist_bench.results import append_rows

    failed = 0
    summary = Table(title=f"suite {suite.name} → {out}", title_justify="left")
    for col in ("case", "backend", "status", "peak", "step ms"):
        summary.add_column(col, justify="left" if col in ("case", "backend", "status") else "right")
    with contextlib.closing(rows), Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                            TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task(suite.name, total=total)
        for row in rows:
            append_rows(out, [row])
            progress.advance(task)
            progress.update(task, description=f"{suite.name}: {_title(row['case'])[:28]}")
            failed += row["status"] not in ("ok", "oom")
            s = row.get("memory", {}).get("summary", {})
            peak = s.get("run_allocated_peak", s.get("run_allocated_peak_est"))
            if row["status"] == "oom" and row.get("peak_reached"):   # the failing step's, not the steps before it
                peak = max(peak or 0, row["peak_reached"])
            step = row.get("time", {}).get("phases_ms", {}).get("step", {}).get("median")
            summary.add_row(_cell_title(row["case"]), row.get("backend") or "-", row["status"], human(peak) if peak else "-",
                            "-" if step is None else f"{step:.1f}")
    console.print(summary)
    return failed


@contextlib.contextmanager
def step_progress(planned: int | None = None, min_interval_s: float = 0.5, line_every_s: float = 15.0):
    """A progress callback (stage, done, total) for long timing runs, on stderr. `planned`: the steps of
    the whole run (warm-up, timed, profiled), so it can say how long the rest will take from the pace so
    far. On a terminal, a bar redrawn at most every `min_interval_s`; elsewhere (a log, a CI job), a plain
    line after the first step and then every `line_every_s`, so a long run is never silent."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    start, done = time.monotonic(), {}

    def eta() -> str:
        total_done = sum(done.values())
        if not planned or not total_done:
            return ""
        left = (time.monotonic() - start) / total_done * max(planned - total_done, 0)
        return f"about {left:.0f} s left" if left < 120 else f"about {left / 60:.1f} min left"

    if not err.is_terminal:
        last = [None]

        def line(stage: str, n: int, total: int) -> None:
            done[stage] = n
            now = time.monotonic()
            if last[0] is None or now - last[0] >= line_every_s or (n == total and stage == "timed"):
                last[0] = now
                pace = (now - start) / max(sum(done.values()), 1)
                err.print(f"time: {stage} step {n} of {total}, {pace:.2f} s per step" +
                          (f", {eta()}" if eta() else ""), soft_wrap=True, highlight=False)
        yield line
        return
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=err, auto_refresh=False,
                  transient=True) as bar:
        tasks: dict[str, int] = {}
        last_draw = [0.0]

        def update(stage: str, n: int, total: int) -> None:
            done[stage] = n
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, eta="")
            bar.update(tasks[stage], completed=n, eta=eta())
            now = time.monotonic()
            if n == total or now - last_draw[0] >= min_interval_s:
                last_draw[0] = now
                bar.refresh()
        yield update
