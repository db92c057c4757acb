"""`ist-bench` command line: argument parsing only; the work lives in the packages."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ist_bench.errors import UsageError

EPILOG = "Defaults follow the IST paper's Table 1 setting: batch 1, 1024 tokens, bf16, eager attention."


def _case_args(p: argparse.ArgumentParser, steps: int | None = None) -> None:
    """The case options; defaults and choices are `Case`'s, `MethodSpec`'s and the registries' (all light
    to import: no torch, transformers or peft)."""
    import dataclasses

    from ist_bench.methods import METHODS, MethodSpec
    from ist_bench.runner import case as cases
    from ist_bench.selection import OPTIMIZER_STATES, POLICIES

    c, m = dataclasses.asdict(cases.Case()), dataclasses.asdict(MethodSpec())
    ch = {"method": tuple(METHODS), "select": tuple(POLICIES), "dtype": cases.DTYPES, "optim": cases.OPTIM_IMPLS,
          "quant": cases.QUANTS, "optimizer_state": OPTIMIZER_STATES}
    p.add_argument("--model", default=c["model"], help=f"zoo name (see `ist-bench models`) or a config.json path "
                                                        f"(default {c['model']})")
    p.add_argument("--method", default=m["name"], help=f"one of {', '.join(ch['method'])} (default {m['name']})")
    p.add_argument("--select", default=c["select"], help=f"layer selection policy: {', '.join(ch['select'])} "
                                                         f"(default {c['select']}; `ist-bench methods` lists their "
                                                         f"options)")
    p.add_argument("--select-opt", metavar="K=V,...", default="",
                   help="policy options, e.g. layers=0.25 (rst, ist), beta=0.5,mu=100 (ist), gamma=2 (lisa)")
    p.add_argument("--optimizer-state", default=c["optimizer_state"],
                   help=f"a deselected layer's AdamW state: {' | '.join(ch['optimizer_state'])} "
                        f"(default {c['optimizer_state']})")
    p.add_argument("--backend", default=c["backend"],
                   help="sim | cpu | cuda | auto (default auto: cuda if a GPU is present, else sim)")
    steps = steps or c["steps"]
    p.add_argument("--steps", type=int, default=steps, help=f"measured steps (default {steps})")
    p.add_argument("--seq-len", type=int, default=c["seq_len"], help=f"tokens per sequence (default {c['seq_len']})")
    p.add_argument("--batch", type=int, default=c["batch"], help=f"sequences per step (default {c['batch']})")
    p.add_argument("--attn", default=c["attn"], help=f"attention: eager (the paper's) or sdpa (flash kernels on a "
                                                     f"GPU; default {c['attn']})")
    p.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing on (default off)")
    p.add_argument("--dtype", default=c["dtype"], help=f"weight dtype: {', '.join(ch['dtype'])} (default {c['dtype']})")
    p.add_argument("--seed", type=int, default=c["seed"])
    p.add_argument("--data", help="Alpaca-format JSON file (needs --tokenizer; else synthetic tokens)")
    p.add_argument("--tokenizer", help="local tokenizer.json or a folder holding one")
    p.add_argument("--data-mode", default=c["data_mode"],
                   help="pack: exactly --seq-len tokens per step; sample: one sample per step (default pack)")
    p.add_argument("--optim", default=c["optim"], help=f"AdamW kernel: {', '.join(ch['optim'])} "
                                                       f"(default {c['optim']})")
    p.add_argument("--quant", default=c["quant"], help=f"quantized base (bitsandbytes; docs/quant.md): "
                                                       f"{', '.join(ch['quant'])} (default {c['quant']})")
    p.add_argument("--double-quant", action="store_true", help="4-bit: quantize the absmax too (QLoRA's double quant)")
    p.add_argument("--quant-compute-dtype", default=c["quant_compute_dtype"],
                   help=f"4-bit: dtype each layer dequantizes to (default {c['quant_compute_dtype']})")
    p.add_argument("--r", type=int, default=m["r"], help=f"LoRA/DoRA rank (default {m['r']})")
    p.add_argument("--alpha", type=int, default=m["alpha"], help=f"LoRA alpha (default {m['alpha']})")
    p.add_argument("--dropout", type=float, default=m["dropout"], help=f"LoRA dropout (default {m['dropout']})")
    p.add_argument("--bottleneck", type=int, default=m["bottleneck"],
                   help=f"Series/Parallel adapter bottleneck (default {m['bottleneck']})")
    p.add_argument("--target-modules", default=None, metavar="NAMES",
                   help="LoRA/DoRA/AdaLoRA: peft's target_modules, comma-separated names (q_proj,v_proj) or "
                        "all-linear (default: the paper's q,k,v,up,down, found in the model: docs/models.md)")


def _case_from(args: argparse.Namespace):
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.selection import parse_options

    method = MethodSpec(name=args.method, r=args.r, alpha=args.alpha, dropout=args.dropout,
                        bottleneck=args.bottleneck, target_modules=args.target_modules)
    return Case(model=args.model, method=method, select=args.select, select_opts=parse_options(args.select_opt),
                optimizer_state=args.optimizer_state, backend=args.backend,
                steps=args.steps, seq_len=args.seq_len, batch=args.batch, attn=args.attn,
                grad_checkpointing=args.grad_checkpointing, dtype=args.dtype, seed=args.seed, data=args.data,
                tokenizer=args.tokenizer, data_mode=args.data_mode, optim=args.optim,
                capacity=getattr(args, "capacity", None), quant=args.quant, double_quant=args.double_quant,
                quant_compute_dtype=args.quant_compute_dtype, nproc=getattr(args, "nproc", None),
                shard=getattr(args, "shard", "fsdp2"), reshard_after_forward=getattr(args, "reshard_after_forward", "on") == "on")


def cmd_memory(args: argparse.Namespace) -> int:
    case = _case_from(args).validate()   # light: a bad input is refused before torch is imported
    _check_writable(args.json, _case_inputs(case), rows=True)
    if args.timeline:
        from ist_bench.measure.timeline import FORMATS
        if Path(args.timeline).suffix not in FORMATS:
            raise UsageError(f"--timeline {args.timeline!r}: the file must end in {', '.join(FORMATS)}")
        _check_writable(args.timeline, _case_inputs(case))
        check_distinct({"--json": args.json, "--timeline": args.timeline})
    if case.nproc is not None and args.timeline:
        raise UsageError("--timeline is for one process; leave it out with --nproc")
    from ist_bench.report.console import print_memory
    from ist_bench.runner.memory import measure_memory

    case = case.check()
    if case.nproc is not None:
        return _memory_dist(args, case)
    row = measure_memory(case, busy_gpu=args.busy_gpu, timeline=args.timeline)
    print_memory(row)
    if row.get("timeline"):
        from ist_bench.report.console import console
        console.print(f"timeline: wrote {', '.join(row['timeline'])}", soft_wrap=True)
    _append_json(args.json, [row])
    return 0 if row["status"] in ("ok", "oom") else 1


def _memory_dist(args: argparse.Namespace, case) -> int:
    """`memory --nproc N`: N ranks under FSDP2/DDP (torchrun on cpu/cuda; a fake process group on sim)."""
    from ist_bench.dist.launch import run_case
    from ist_bench.report.console import print_memory, print_ranks

    row = run_case(case)
    print_memory(row)
    print_ranks(row)
    _append_json(args.json, [row])
    return 0 if row["status"] in ("ok", "oom") else 1


def _dist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, help="ranks (world size): cpu/cuda launch torchrun with N workers (gloo / "
                                             "NCCL); sim plays rank 0 of N under a fake process group (any N, one "
                                             "CPU). Default: one process, no sharding")
    p.add_argument("--shard", default="fsdp2", help="with --nproc: fsdp2 (fully_shard on each block, then the root; "
                                                    "bf16 params, fp32 reduce) or ddp (default fsdp2)")
    p.add_argument("--reshard-after-forward", choices=("on", "off"), default="on",
                   help="fsdp2: free each block's gathered weights after its forward (on, ZeRO-3) or keep them "
                        "for backward (off, ZeRO-2-like; default on)")


CPU_TIME_MAX_PARAMS = 400e6  # above this a CPU step takes minutes: refuse rather than hang


def cmd_time(args: argparse.Namespace) -> int:
    import dataclasses

    from ist_bench.runner.case import gpu_may_be_visible

    case = _case_from(args)
    if case.backend == "auto" and not gpu_may_be_visible():
        raise UsageError("timing needs a GPU (none is visible): predict it for a card with --backend sim --gpu CARD, "
                         "or time the tiny and GPT-2 models with --backend cpu")
    if args.gpu is not None and case.backend != "sim":
        raise UsageError("--gpu names the card a prediction is for (--backend sim); a measurement times the card "
                         "it runs on")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    variants = [case]
    if args.compare_select:
        names = [n.strip() for n in args.compare_select.split(",") if n.strip()]
        if len(names) != 2 or names[0] == names[1]:
            raise UsageError(f"--compare-select takes two different policies, A,B; got {args.compare_select!r}")
        variants = [dataclasses.replace(case, select=n, select_opts=_options_for(n, case.select_opts, names))
                    for n in names]
    for v in variants:
        v.validate()   # light: refused before torch is imported
    _check_writable(args.json, _case_inputs(case), rows=True)
    if case.backend == "sim":
        return _predict_time(args, variants, names if args.compare_select else None)
    if args.profile_steps is not None and args.profile_steps < 0:
        raise UsageError(f"--profile-steps must be >= 0, got {args.profile_steps}")
    if args.overhead_blocks < 0:
        raise UsageError(f"--overhead-blocks must be >= 0, got {args.overhead_blocks}")
    from ist_bench import zoo
    from ist_bench.report.console import print_compare, print_time
    from ist_bench.runner.isolate import run_isolated
    from ist_bench.runner.time import measure_time

    variants = [v.check() for v in variants]
    case = variants[0]
    if case.backend == "sim":   # auto without a GPU torch can use
        raise UsageError("timing needs a GPU (none is visible); for the tiny and GPT-2 models use --backend cpu")
    params = zoo.count_parameters(zoo.load_config(case.model))
    if case.backend == "cpu" and params > CPU_TIME_MAX_PARAMS:
        raise UsageError(f"{case.model} has {params / 1e9:.1f}B parameters: too big to time on the CPU "
                         f"(limit {CPU_TIME_MAX_PARAMS / 1e6:.0f}M); use --backend cuda")
    if case.nproc is not None:
        from ist_bench.dist.launch import run_case
        from ist_bench.report.console import print_ranks
        if args.compare_select:
            raise UsageError("--compare-select runs one process per side; leave it out with --nproc")
        row = run_case(case, "time", args.warmup)
        if row.get("time"):
            print_time(row)
        print_ranks(row)
        _append_json(args.json, [row])
        return 0 if row["status"] in ("ok", "oom") else 1
    if args.compare_select:
        jobs = [{"kind": "time", "case": v.to_dict(), "warmup": args.warmup, "profile_steps": args.profile_steps,
                 "busy_gpu": args.busy_gpu} for _ in range(args.rounds) for v in variants]   # A B A B ...
        rows = list(run_isolated(jobs))
        print_compare(rows, names)
    else:
        from ist_bench.report.console import step_progress
        profiled = (case.steps if args.profile_steps is None else args.profile_steps) if case.backend == "cuda" else 0
        with step_progress(planned=args.warmup + case.steps + profiled) as progress:
            rows = [measure_time(case, warmup=args.warmup, profile_steps=args.profile_steps,
                                 overhead_blocks=args.overhead_blocks, busy_gpu=args.busy_gpu, progress=progress)]
        print_time(rows[0])
    _append_json(args.json, rows)
    return 0 if all(r["status"] in ("ok", "oom") for r in rows) else 1


def _predict_time(args: argparse.Namespace, variants: list, names: list[str] | None) -> int:
    """`time --backend sim --gpu CARD`: the step's time predicted from the card's kernel tables."""
    from ist_bench.predict import card_named

    gpu = args.gpu or "h100-80g"
    card_named(gpu)   # an unknown card is one line before the model is built
    if args.nproc is not None:
        raise UsageError("--backend sim predicts one GPU's step; leave --nproc out")
    from ist_bench.predict import predict_time
    from ist_bench.report.console import print_compare, print_prediction, print_time

    rows = [predict_time(v.check(), gpu, args.warmup) for v in variants]
    if names:
        print_compare(rows, names)
    else:
        print_time(rows[0])
    for r in rows:
        print_prediction(r)
    _append_json(args.json, rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _options_for(name: str, options: dict, names: list[str]) -> dict:
    """The --select-opt options that policy `name` takes (an A/B run may set options of one side);
    an option neither side takes is an error."""
    import dataclasses

    from ist_bench.selection import POLICIES

    def fields(n):
        return {f.name for f in dataclasses.fields(POLICIES[n].Settings)} if n in POLICIES else set()
    unknown = [k for k in options if not any(k in fields(n) for n in names)]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for --select {' or '.join(names)}")
    return {k: v for k, v in options.items() if k in fields(name)}


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from ist_bench.safeio import load_yaml
    for signum in (signal.SIGTERM, signal.SIGHUP):   # a closed terminal stops a run as Ctrl-C does (exit 130)
        signal.signal(signum, _raise_interrupt)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):   # nan too
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.resume and args.append:
        raise UsageError("--resume and --append exclude each other: --resume skips finished cases, --append adds rows")
    # Before any worker starts: the suite must be a readable, bounded YAML mapping (no torch needed), and
    # there are never more workers than cores or than the suite's cases.
    spec = load_yaml(args.suite, "suite", keys=()) or {}
    if not isinstance(spec, dict):
        raise UsageError(f"malformed suite {args.suite}: expected a mapping with keys name, grid or cases, ...")
    args.jobs_asked, args.jobs = args.jobs, args.jobs and min(args.jobs, _cores(cap=None))
    from ist_bench.runner.isolate import Worker
    guess = min(args.jobs or (_cores() if args.backend in ("sim", "cpu") else 1), _most_cases(spec))
    ready = [Worker() for _ in range(guess)]
    try:
        return _run_suite(args, ready)
    finally:
        for w in ready:
            w.close()


def _most_cases(spec: dict) -> int:
    """An upper bound on a suite's cases from its raw YAML (before exclusions), without importing torch."""
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    n = 1
    for v in grid.values():
        n *= len(v) if isinstance(v, list) else 1
    listed = spec.get("cases")
    kinds = spec.get("kind")
    return max(1, n * (len(listed) if isinstance(listed, list) and listed else 1)
               * (len(kinds) if isinstance(kinds, list) and kinds else 1))


def _run_suite(args: argparse.Namespace, ready: list) -> int:
    import signal

    from ist_bench.report.console import console, print_suite_progress
    from ist_bench.results import append_rows, read_rows, row_key
    from ist_bench.runner.isolate import leftovers, run_isolated
    from ist_bench.runner.suite import job_cost, jobs, load_suite
    from ist_bench.safeio import ResultsLock, repair_tail

    suite = load_suite(args.suite, backend=args.backend)
    gpu_or_timed = "time" in suite.kinds or any(c.backend == "cuda" for c in suite.cases)
    if args.jobs is not None and args.jobs > 1 and gpu_or_timed:
        raise UsageError("--jobs > 1 would share the machine between GPU or timed cases; use it for sim/cpu "
                         "memory suites only")
    args.jobs = args.jobs or (1 if gpu_or_timed else _cores())
    out, mode = _run_output(args, suite)
    with ResultsLock(out, create=mode == "written to"):      # held until the run ends: a second run refuses
        repair_tail(out, warn=lambda m: print(f"ist-bench: warning: {m}", file=sys.stderr))
        found = leftovers(out)                                # rows a SIGKILLed run's workers finished
        if found and mode == "written to":                    # for a file since removed: theirs, not ours
            print(f"ist-bench: warning: dropped {len(found)} row(s) a killed run left for an earlier {out}",
                  file=sys.stderr)
        elif found:
            append_rows(out, found)
            print(f"ist-bench: recovered {len(found)} row(s) a killed run left in its temp folder", file=sys.stderr)
        todo = jobs(suite, busy_gpu=args.busy_gpu)
        if args.resume:
            finished = {row_key(r) for r in read_rows(out) if r.get("status") in ("ok", "oom")}
            todo = [j for j in todo if row_key(j) not in finished]
        if args.jobs > 1:
            todo.sort(key=job_cost, reverse=True)   # the largest first: lanes finish together
        capped = f" (--jobs {args.jobs_asked} capped at {args.jobs} cores)" if (args.jobs_asked or 0) > args.jobs else ""
        console.print(f"{suite.name}: {len(todo)} of {len(suite.cases) * len(suite.kinds)} cases to run; rows {mode} "
                      f"{out}{capped}")
        resume = f"ist-bench run {args.suite} --out {out} --resume" + (f" --backend {args.backend}" if args.backend else "")
        try:
            rows = run_isolated(todo, timeout_s=args.timeout, parallel=args.jobs, ready=ready, out=out)
            failed = print_suite_progress(suite, rows, out, total=len(todo))
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, lambda *a: os._exit(130))   # a second Ctrl-C leaves at once
            print(f"ist-bench: interrupted; finished cases are in {out}. Resume with: {resume}", file=sys.stderr)
            return 130
    if failed:
        console.print(f"{failed} case(s) failed (their rows say why); exit code 1. Re-run them with: {resume}")
    return 1 if failed else 0


def _cores(cap: int | None = 4) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cap or n, n))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_output(args: argparse.Namespace, suite) -> tuple[Path, str]:
    """Where `run` writes, and how: a new file (never over an old one), or --resume / --append. A suite's
    name becomes a file name in results/, never a path."""
    from ist_bench.safeio import safe_name

    if args.out:
        out = Path(args.out)
    else:
        stem = "results/" + safe_name(suite.name, "suite name") + (f"-{safe_name(args.backend, '--backend')}"
                                                                   if args.backend else "")
        out = Path(f"{stem}.jsonl")
        if not (args.resume or args.append):
            n = 2
            while out.exists():
                out, n = Path(f"{stem}.{n}.jsonl"), n + 1
    _check_writable(str(out), [args.suite], rows=True)
    if args.resume:
        if not out.exists():
            raise UsageError(f"--resume: no results to resume at {out}")
        return out, "appended to"
    if args.append:
        if not out.exists():
            return out, "written to"
        return out, "appended to"
    if out.exists():
        raise UsageError(f"{out} exists; pass --resume to finish its run, --append to add rows, or another --out")
    return out, "written to"


def cmd_validate(args: argparse.Namespace) -> int:
    from ist_bench.report.validation import validation_report
    from ist_bench.results import read_rows, write_atomic

    _check_writable(args.markdown, args.results)
    if args.sample is not None:
        rows = _validate_sample(args)
    elif args.results:
        rows = [r for path in args.results for r in read_rows(path)]   # in order: a later sim row of a case wins
    else:
        raise UsageError("validate needs a results file, or --sample N to draw and measure N cells (on a GPU)")
    text = validation_report(rows, worst_first=args.sample is not None)
    if args.markdown and args.markdown != "-":
        write_atomic(args.markdown, text)
    print(text)
    return 0


def _validate_sample(args: argparse.Namespace) -> list[dict]:
    """`validate --sample N --seed S`: draw N cells, measure each on sim and cuda, return their rows."""
    if args.results:
        raise UsageError("validate takes a results file or --sample, not both")
    if args.sample < 1:
        raise UsageError(f"--sample must be >= 1, got {args.sample}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeline_worst and not args.timeline_worst.endswith(".png"):
        raise UsageError(f"--timeline-worst {args.timeline_worst!r}: a .png file")
    import torch

    from ist_bench.measure.cuda import card_memory
    from ist_bench.report.console import console
    from ist_bench.results import model_label
    from ist_bench.runner.sample import draw_cases, run_sample

    if not torch.cuda.is_available():
        raise UsageError("validate --sample measures each cell on cuda and sim: it needs a GPU (none is visible)")
    out = args.out or f"results/validation/sample-{args.seed}.jsonl"
    _check_writable(out, rows=True)
    _check_writable(args.timeline_worst)
    check_distinct({"--out": out, "--timeline-worst": args.timeline_worst, "--markdown": args.markdown})
    cases = draw_cases(args.sample, args.seed)
    console.print(f"validate: {len(cases)} cells drawn with seed {args.seed}; rows to {out}")
    count = iter(range(1, 2 * len(cases) + 1))
    lanes = args.jobs or max(1, min(12, os.cpu_count() or 1))   # sim cells at once (cuda cells one by one)
    rows = run_sample(cases, out, timeout_s=args.timeout, parallel=lanes, card_bytes=card_memory(),
                      on_row=lambda r: console.print(f"  {next(count)}: {r['backend']} {model_label(r['case']['model'])} "
                                                     f"{r['status']}", style="dim"))
    if args.timeline_worst:
        from ist_bench.runner.sample import worst_cell_timelines
        drawn = worst_cell_timelines(rows, args.timeline_worst, timeout_s=args.timeout)
        console.print(f"worst cell's timelines (cuda, sim): {drawn or 'none: no cell finished on both'}")
    return rows


def cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from rich.table import Table

    from ist_bench import fit
    from ist_bench.report.console import console
    from ist_bench.units import human

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    selects = [s.strip() for s in args.select.split(",") if s.strip()]
    from ist_bench import zoo
    inputs = [args.model] if zoo.is_path(args.model) else []
    _check_writable(args.json, inputs, rows=True)
    if args.plot:
        if Path(args.plot).suffix != ".png":
            raise UsageError(f"--plot {args.plot!r}: a .png file")
        _check_writable(args.plot, inputs)
        check_distinct({"--json": args.json, "--plot": args.plot})
    start = time.time()
    if args.nproc is not None:
        return _fit_nproc(args, methods, selects, start)
    tgt, answers = fit.fit(args.model, args.gpu, methods, selects, granularity=args.granularity,
                           target_modules=args.target_modules,
                           batch_len=args.batch_len, dtype=args.dtype, attn=args.attn,
                           grad_checkpointing=args.grad_checkpointing, optimizer_state=args.optimizer_state,
                           quant=args.quant, double_quant=args.double_quant,
                           quant_compute_dtype=args.quant_compute_dtype, optim=args.fit_optim)
    base = "" if args.quant == "none" else f" · {args.quant}{' + double quant' if args.double_quant else ''} base"
    opt = "" if args.fit_optim == "fused" else f" · {args.fit_optim}"
    table = Table(title=f"{args.model}{base}{opt} on {tgt.note}", title_justify="left")
    for col in ("method", "longest seq", "peak there", "dominant", f"batch @{answers[0].batch_len}"):
        table.add_column(col, justify="left" if col in ("method", "dominant") else "right")
    for a in answers:
        if a.fits:
            table.add_row(a.label, f"{a.max_seq_len:,}" + (" (limit)" if a.at_limit else ""), human(a.peak_at_max),
                          a.dominant, str(a.max_batch))
        else:
            table.add_row(a.label, "[red]none[/]", f"{human(a.over_by)} over", a.dominant, "0")
    console.print(table)
    console.print(f"lengths in steps of {args.granularity} tokens; a step fits when sim's estimated allocated peak "
                  f"plus a margin (the caching allocator's reserve: max({fit.PEFT_MARGIN:.0%}, "
                  f"{fit.MARGIN_MIN // (1 << 20)} MiB), full fine-tuning {fit.MARGIN_FRACTION['full']:.0%}) is within "
                  f"{human(tgt.usable)}; batch 1, {args.attn} attention, "
                  f"checkpointing {'on' if args.grad_checkpointing else 'off'}; (limit): the model's position "
                  f"limit; {time.time() - start:.0f} s",
                  style="dim")
    if args.json:
        _append_json(args.json, [{"kind": "fit", "model": args.model, "gpu": args.gpu, "usable": tgt.usable,
                                  "note": tgt.note, "answers": [dataclasses.asdict(a) for a in answers]}])
    if args.plot:
        from ist_bench.report.plots import fit_curves
        console.print(f"wrote {fit_curves(args.model, tgt, answers, args.plot)}")
    return 0


def _fit_nproc(args: argparse.Namespace, methods: list[str], selects: list[str], start: float) -> int:
    import dataclasses
    import time

    from rich.table import Table

    from ist_bench import fit
    from ist_bench.report.console import console
    from ist_bench.schema import MAX_RANKS
    from ist_bench.units import human

    nproc = args.nproc if args.nproc == "auto" else _int_arg("--nproc", args.nproc, "an integer >= 1 or auto")
    if nproc != "auto" and nproc > MAX_RANKS:
        raise UsageError(f"--nproc must be at most {MAX_RANKS} (or auto), got {nproc}")
    tgt, answers = fit.fit_nproc(args.model, args.gpu, methods, selects, nproc, seq_len=args.batch_len,
                                 dtype=args.dtype, attn=args.attn, grad_checkpointing=args.grad_checkpointing,
                                 optimizer_state=args.optimizer_state)
    from ist_bench.results import model_label
    table = Table(title=f"{model_label(args.model)} on {tgt.note}, FSDP2", title_justify="left")
    for col in ("method", "nproc", "per-rank peak", "dominant", "tried (N: peak)"):
        table.add_column(col, justify="left" if col in ("method", "dominant", "tried (N: peak)") else "right")
    for a in answers:
        tried = ", ".join(f"{n}: {human(p['peak'])}" for n, p in sorted(a.probes.items(), key=lambda x: int(x[0])))
        table.add_row(a.label, str(a.nproc) if a.fits else f"[red]{'none <= 64' if a.nproc is None else a.nproc}[/]",
                      human(a.peak), a.dominant, tried)
    console.print(table)
    console.print(f"one steady step of {args.batch_len} tokens (batch 1) per rank, FSDP2 on sim (rank 0 of N under "
                  f"a fake process group; bf16 params, fp32 reduce, reshard after forward); fits when the estimated "
                  f"allocated peak plus fit's margin is within {human(tgt.usable)}; {time.time() - start:.0f} s",
                  style="dim")
    if args.json:
        _append_json(args.json, [{"kind": "fit", "model": args.model, "gpu": args.gpu, "usable": tgt.usable,
                                  "note": tgt.note, "shard": "fsdp2",
                                  "answers": [dataclasses.asdict(a) for a in answers]}])
    return 0


def _int_arg(name: str, value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{name} must be {what}, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{name} must be {what}, got {value!r}")
    return n


def cmd_report(args: argparse.Namespace) -> int:
    from ist_bench.report.console import console
    from ist_bench.report.render import render
    from ist_bench.results import read_rows

    paths = [Path(p) for p in args.results]
    if not sum(len(read_rows(p)) for p in paths):   # a missing, malformed or empty input: before anything is written
        raise UsageError(f"no result rows in {', '.join(map(str, paths))}: nothing to report")
    out = Path(args.out) if args.out else Path("reports") / paths[0].stem
    if out.suffix in (".md", ".tex", ".csv"):
        out = out.with_suffix("")
    if out.name in ("", ".", "..") or out.name.startswith(".") or out.is_dir():
        raise UsageError(f"--out {args.out!r}: a report's path without extension, e.g. reports/table1 "
                         f"(it writes <path>.md, .tex, .csv and .png files)")
    for suffix in (".md", ".tex", ".csv", ".png"):
        _check_writable(f"{out}{suffix}", args.results)
    from ist_bench import fit
    fit.target(args.card)   # an unknown card fails before anything is written
    written = render([str(p) for p in paths], out, card=args.card)
    console.print("wrote " + ", ".join(written))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ist_bench import compare
    from ist_bench.report.console import console
    from ist_bench.units import parse_bytes

    th = compare.Thresholds(memory_pct=_positive("--memory-pct", args.memory_pct),
                            memory_floor=parse_bytes(args.memory_floor),
                            device_factor=_factor("--device-factor", args.device_factor),
                            wall_factor=_factor("--wall-factor", args.wall_factor),
                            p_value=args.p_value, gate_wall=args.gate_wall)
    if not 0 < th.p_value < 1:
        raise UsageError(f"--p-value must be in (0, 1), got {th.p_value:g}")
    for path in (args.markdown, args.junit):
        _check_writable(path, [args.baseline, args.current])
    check_distinct({"--markdown": args.markdown, "--junit": args.junit})
    cmp = compare.compare_files(args.baseline, args.current, th, args.allow_mismatch, args.allow_missing)
    _print_findings(console, [f for f in cmp.findings if f.outcome != "unchanged" or args.all],
                    f"{args.baseline} -> {args.current}", compare._fmt)
    counts = cmp.counts()
    console.print(", ".join(f"{n} {k}" for k, n in counts.items()) +
                  (f" -> [bold red]{cmp.verdict()}[/]" if cmp.failed else f" -> {cmp.verdict()}"))
    if args.markdown:
        _write_text(args.markdown, compare.markdown(cmp, args.baseline, args.current))
    if args.junit:
        _write_text(args.junit, compare.junit(cmp))
    return 1 if cmp.failed else 0


_OUTCOME_STYLE = {"regressed": "red", "improved": "green", "missing": "yellow", "new": "cyan", "advisory": "yellow"}
_ROW = "  {outcome:<9} {figure:<21} {baseline:>10} {current:>10} {delta:>9}"


def _print_findings(console, findings: list, title: str, fmt) -> None:
    """Findings grouped by case: the case on its own line, then one line per figure with baseline,
    current and the change in % (as pytest-benchmark and asv show it); the note follows on the line
    when it fits the terminal, else under it. 80 columns are enough."""
    from rich.markup import escape

    console.print(escape(title), overflow="fold")
    head = _ROW.format(outcome="outcome", figure="figure", baseline="baseline", current="current", delta="change")
    console.print(head + "  note", style="dim", overflow="fold")
    case = None
    for f in findings:
        if f.case != case:
            case = f.case
            console.print(escape(case), style="bold", overflow="fold")
        line = _ROW.format(outcome=f.outcome, figure=f.figure, baseline=fmt(f.baseline), current=fmt(f.current),
                           delta=_change(f.baseline, f.current))
        style = _OUTCOME_STYLE.get(f.outcome, "")
        text = escape(line) if not style else f"[{style}]{escape(line[:12])}[/]{escape(line[12:])}"
        if f.note and len(line) + 2 + len(f.note) <= console.width:
            console.print(f"{text}  [dim]{escape(f.note)}[/]", overflow="fold")
        else:
            console.print(text, overflow="fold")
            if f.note:
                console.print(" " * 12 + escape(f.note), style="dim", overflow="fold")


def _change(baseline, current) -> str:
    """current vs baseline in %: +7.1%, -0.25%, +3.7e-05% (a few bytes of 27 GiB), 0%; blank if not two numbers."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (baseline, current)):
        return ""
    if current == baseline:
        return "0%"
    if not baseline:
        return "new" if current else ""
    pct = (current - baseline) / abs(baseline) * 100
    return f"{pct:+.1f}%" if abs(pct) >= 1 else f"{pct:+.2f}%" if abs(pct) >= 0.01 else f"{pct:+.1e}%"


def _positive(name: str, value: float) -> float:
    if not value >= 0 or value == float("inf"):   # nan and inf too
        raise UsageError(f"{name} must be a finite number >= 0, got {value:g}")
    return value


def _factor(name: str, value: float) -> float:
    if not value >= 1 or value == float("inf"):
        raise UsageError(f"{name} is a slow-down factor >= 1, got {value:g}")
    return value


def cmd_baseline(args: argparse.Namespace) -> int:
    from ist_bench import compare
    from ist_bench.report.console import console
    from ist_bench.results import read_rows, write_atomic

    rows = [r for p in args.results for r in read_rows(p)]
    if not rows:
        raise UsageError("no result rows to make a baseline of")
    from ist_bench.safeio import safe_name
    path = Path(args.dir) / f"{safe_name(args.name or compare.baseline_name(rows), 'baseline name')}.jsonl"
    if args.action == "path":
        print(path)
        return 0
    bad = [r for r in rows if r["status"] not in ("ok", "oom")]
    if bad and not args.keep_failed:
        raise UsageError(f"{len(bad)} row(s) failed (e.g. {compare.title(bad[0])}: {bad[0]['status']}); "
                         f"a baseline should not hold them (--keep-failed to keep them)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"baseline {path}: {len(rows)} rows (commit it: it is what `ist-bench compare` gates on)")
    return 0


def _check_writable(path: str | None, inputs=(), rows: bool = False) -> None:
    """Fail before the work, not after it, on an output path we cannot or must not write: a non-regular
    file (device, FIFO), a symlink, an unwritable folder, one of the command's `inputs`, and with `rows`
    (rows are appended) an existing file that is not JSONL rows. Creates nothing but the parent folders.
    `-`: stdout."""
    if not path or path == "-":
        return
    from ist_bench.safeio import check_jsonl, check_not_an_input, check_writable
    check_writable(path)
    check_not_an_input(path, inputs)
    if rows:
        check_jsonl(path)


def check_distinct(outputs: dict) -> None:
    """Two outputs of one command on one file: the second would overwrite the first."""
    from ist_bench.safeio import same_file

    named = [(k, v) for k, v in outputs.items() if v and v != "-"]
    for i, (a, pa) in enumerate(named):
        for b, pb in named[i + 1:]:
            if same_file(pa, pb):
                raise UsageError(f"{a} and {b} name the same file ({pa}); give each its own")


def _case_inputs(case) -> tuple:
    """The files a case reads (a config path, data, tokenizer): no output may be one of them."""
    from ist_bench import zoo
    return (case.model if zoo.is_path(case.model) else None, case.data, case.tokenizer)


def _append_json(path: str | None, rows: list[dict]) -> None:
    """Append rows (flushed and fsynced) to a path `_check_writable` has already vetted, after repairing
    a cut last line (so the new row is never glued onto it); `-`: stdout."""
    if path == "-":
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows))
    elif path:
        from ist_bench.report.console import console
        from ist_bench.safeio import append_rows, repair_tail
        if Path(path).exists():
            repair_tail(path, warn=lambda m: print(f"ist-bench: warning: {m}", file=sys.stderr))
        append_rows(path, rows)
        console.print(f"appended {len(rows)} row{'s' * (len(rows) != 1)} to {path}", style="dim", soft_wrap=True)


def _write_text(path: str, text: str) -> None:
    """Write (replace) a file atomically; `-`: stdout."""
    if path == "-":
        sys.stdout.write(text)
    else:
        from ist_bench.results import write_atomic
        write_atomic(path, text)


def _to_stdout(args: argparse.Namespace) -> bool:
    """Whether an output option is `-`: the data then owns stdout and the human view goes to stderr."""
    return "-" in (getattr(args, "json", None), getattr(args, "markdown", None), getattr(args, "junit", None))


def _count(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ist_bench import zoo
    from ist_bench.report.console import console

    table = Table(title="ist-bench model zoo (published configs, random weights); any other config.json works "
                        "too (docs/models.md)", title_justify="left", box=None)
    for col in ("name", "family", "kind", "layers", "hidden", "params", "active", "positions"):
        table.add_column(col, justify="left" if col in ("name", "family", "kind") else "right", no_wrap=True)
    def natural(name: str) -> list:  # gemma3-4b before gemma3-12b
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    for name, m in sorted(zoo.summary().items(), key=lambda item: natural(item[0])):
        moe = "active_params" in m
        table.add_row(name, m["family"], "MoE" if moe else "dense", str(m["layers"]), str(m["hidden"]),
                      _count(m["params"]), _count(m["active_params"]) if moe else "", str(m["positions"] or "-"))
    console.print(table)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.table import Table

    from ist_bench.methods import METHODS
    from ist_bench.report.console import console
    from ist_bench.selection import POLICIES

    methods = Table(title="methods: what in a layer trains (--method)", title_justify="left", box=None)
    methods.add_column("name", style="bold", no_wrap=True)
    methods.add_column("")
    for m in METHODS.values():
        methods.add_row(m.name, m.description)
    console.print(methods)
    policies = Table(title="selection policies: which layers train each step (--select; --select-opt K=V)",
                     title_justify="left", box=None)
    policies.add_column("name", style="bold", no_wrap=True)
    policies.add_column("")
    for p in POLICIES.values():
        opts = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(p.Settings()).items())
        policies.add_row(p.name, p.description + (f"\n[dim]options: {opts}[/]" if opts else ""))
    console.print(policies)
    return 0


def _busy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--busy-gpu", default="refuse", choices=("refuse", "warn", "ignore"),
                   help="before a GPU case, another process using the card: refuse the case (default), warn, "
                        "or do not look")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser. Light: it imports neither torch nor transformers nor peft (the case, the methods and the
    policies are light to import), so `--help`, `models` and a bad option answer at once. `command` is
    accepted for callers of the old signature and ignored."""
    from ist_bench import __version__
    from ist_bench.cards import CARDS

    parser = Parser(prog="ist-bench", description="Memory and throughput profiling for PEFT "
                    "and layer-sparse tuning (IST) of LLMs. Add --debug to any command for tracebacks.",
                    epilog=EPILOG + " " + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"ist-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("memory", help="memory breakdown of one controlled training step",
                       description="Measure weights, activations, gradients, optimizer state and peak of "
                                   "controlled training steps. " + EPILOG)
    _case_args(p)
    p.add_argument("--capacity", help="memory to run against, e.g. 80GiB: sim simulates the OOM, cuda caps "
                                      "its allocator")
    _busy_arg(p)
    _dist_args(p)
    p.add_argument("--json", metavar="FILE", help="append the result row (bytes) to this JSONL file (created if "
                                                  "missing; '-': write it to stdout, the table to stderr)")
    p.add_argument("--timeline", metavar="FILE", help="also write the memory timeline (live bytes by category over "
                                                       "the steps, phases and peak marked): .png, .html (memory_viz), "
                                                       ".pickle (a torch.cuda memory snapshot) or .json; on cuda the "
                                                       "allocator's own snapshot goes beside it (.cuda.pickle)")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("time", help="per-phase time of controlled training steps (GPU; CPU for small models)",
                       description="Time forward, backward and optimizer step with CUDA events (host clock on "
                                   "CPU), after uncounted warm-up steps; no memory tracker runs. " + EPILOG)
    _case_args(p, steps=100)
    p.add_argument("--warmup", type=int, default=10, help="uncounted warm-up steps (default 10)")
    p.add_argument("--compare-select", metavar="A,B",
                   help="A/B-compare two selection policies, alternating A B A B in fresh processes")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds with --compare-select (default 3)")
    p.add_argument("--gpu", metavar="CARD", help="with --backend sim: the card to predict the step's time for "
                                                 "(default h100-80g; `ist-bench time --help` lists them; or a "
                                                 "card file's path) — docs/time-prediction.md")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="cuda: steps profiled separately for the GPU's busy time per phase (default: as many as "
                        "timed; 0 skips)")
    p.add_argument("--overhead-blocks", type=int, default=0,
                   help="also time the harness against a bare PyTorch loop in this many interleaved pairs of "
                        "10-step blocks (default 0: off)")
    _busy_arg(p)
    _dist_args(p)
    p.add_argument("--json", metavar="FILE", help="append the result row(s) to this JSONL file (created if missing; "
                                                  "'-': write them to stdout, the table to stderr)")
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("run", help="run a suite (YAML grid) of cases in worker processes",
                       description="Run every case of a suite: GPU and timed cases each in a fresh process, sim "
                                   "and CPU memory cases in warm workers. Each row is written (flushed, fsynced) "
                                   "as its case finishes; an OOM, a crash or a timeout is a row, not an abort. "
                                   "Exit codes: 0 every case ok or oom, 1 some cases failed, 2 bad input, "
                                   "130 interrupted (finished rows kept; --resume finishes the run).")
    p.add_argument("suite", help="suite YAML, e.g. suites/table1.yaml")
    p.add_argument("--out", help="JSONL to write (default results/<suite>[-<backend>].jsonl, or the first free "
                                 "<...>.N.jsonl: a run never writes into an old file unless told to)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run: skip cases that have an ok "
                                                          "or oom row in the output, run the rest")
    p.add_argument("--append", action="store_true", help="add rows to an existing output file")
    p.add_argument("--backend", help="run every case on this backend instead of the suite's")
    p.add_argument("--jobs", type=int, default=None, help="cases at once (sim/cpu memory suites only; default: "
                                                          "one per CPU core, up to 4, for those, else 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a case is killed (default none)")
    _busy_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="sim vs cuda, cell by cell, from a suite's results or a random sample",
                       description="Compare sim with cuda for every case measured on both: peak allocated, "
                                   "each category, and the gap in %%. With --sample N, draw N cells at random "
                                   "from the whole case space (models, methods, policies and their options, "
                                   "batch, length, attention, checkpointing, dtype, optimizer, optimizer state), "
                                   "measure each on sim and then on this machine's GPU, and list the worst "
                                   "cells first (how to check sim on your own card).")
    p.add_argument("results", nargs="*", help="JSONL files with cuda and sim rows of the same cases (a later "
                                               "file's row of a case replaces an earlier one's)")
    p.add_argument("--sample", type=int, metavar="N", help="draw and measure N random cells (needs a GPU)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0): a seed names the same cells "
                                                       "everywhere")
    p.add_argument("--out", help="--sample's rows (default results/validation/sample-<seed>.jsonl; cells already "
                                 "finished there are not run again)")
    p.add_argument("--timeout", type=float, default=600, help="--sample: seconds before a cell is killed "
                                                               "(default 600)")
    p.add_argument("--jobs", type=int, help="--sample: sim cells at once (default: the cores, up to 12)")
    p.add_argument("--timeline-worst", metavar="PNG", help="--sample: measure the worst cell again on both backends "
                                                          "and draw their memory timelines side by side here")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown here, replacing the file ('-': "
                                                      "stdout only)")
    p.add_argument("--md", dest="markdown", help=argparse.SUPPRESS)   # its old name
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="the longest sequence and largest batch that fit a GPU, per method (sim, "
                                   "seconds)",
                       description="Search, on sim, the longest --seq-len (in steps of --granularity) and the "
                                   "largest batch that fit a card or a memory size, for each method and "
                                   "selection policy; says which memory category dominates at the peak, and how "
                                   "far over a case is that fits at no length. Conservative by a measured margin "
                                   "for the caching allocator (docs/fit.md).")
    p.add_argument("--model", default="llama-7b", help="zoo name or config.json (default llama-7b)")
    p.add_argument("--gpu", required=True, help=f"a card ({', '.join(CARDS)}) or a size such as 40GiB")
    p.add_argument("--method", default="lora", help="comma-separated methods (default lora)")
    p.add_argument("--target-modules", default=None, metavar="NAMES",
                   help="the LoRA family's peft target_modules (comma-separated, or all-linear; default: the paper's)")
    p.add_argument("--select", default="none,ist", help="comma-separated policies (default none,ist)")
    p.add_argument("--granularity", type=int, default=256, help="length step in tokens (default 256)")
    p.add_argument("--batch-len", type=int, default=1024, help="length at which the batch is searched (1024)")
    p.add_argument("--attn", default="eager", help="eager | sdpa (default eager)")
    p.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing on")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--optimizer-state", default="keep", help="keep | reset (default keep)")
    p.add_argument("--quant", default="none", help="quantized base: none | nf4 | fp4 | int8 (bitsandbytes; default none)")
    p.add_argument("--double-quant", action="store_true", help="4-bit: double quantization (QLoRA's)")
    p.add_argument("--quant-compute-dtype", default="bf16", help="4-bit: compute dtype (default bf16)")
    p.add_argument("--optim", dest="fit_optim", default="fused",
                   help="optimizer: fused | foreach | for-loop (torch AdamW) | adamw8bit | paged-adamw8bit | "
                        "paged-adamw32bit (bitsandbytes; default fused)")
    p.add_argument("--nproc", help="ranks under FSDP2 (sim, per rank): an integer, or auto for the smallest power of "
                                   "two up to 64 at which one --batch-len step fits (no length/batch search then)")
    p.add_argument("--json", metavar="FILE", help="append the answers to this JSONL file (created if missing; '-': "
                                                  "stdout, the table to stderr)")
    p.add_argument("--plot", help="write a PNG of peak memory vs length per method, with the card's line")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("report", help="paper-style tables (Markdown, LaTeX, CSV) and plots from result files",
                       description="Render Table 1 (memory) and Table 13 (time) layouts with the paper's numbers "
                                   "beside ours, which of our figures matches the paper best, what each policy "
                                   "saves, and plots (memory at the peak, savings, time per phase, IST importance); "
                                   "sharded rows (--nproc) go to a scale table and a plot of per-rank peak vs N.")
    p.add_argument("results", nargs="+", help="JSONL result files (a later row of a case replaces an earlier one)")
    p.add_argument("--out", help="output path without extension (default reports/<first file's name>)")
    p.add_argument("--card", default="h100-80g", help="the card whose memory the scale plot and table mark "
                                                      "(default h100-80g; a size such as 80GiB also works)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="the regression gate: compare results with a baseline (exit 1 on a "
                                       "regression)",
                       description="Pair cases by their settings and compare memory (sim: exact bytes; cuda: "
                                   "a tolerance) and time (GPU busy time by a factor; wall median by a factor "
                                   "and a Mann-Whitney U test). Prints improved / unchanged / regressed / missing "
                                   "/ new. Exit codes: 0 no regression, 1 regression or a baseline case missing "
                                   "from the current run, 2 bad input or results measured on another GPU, "
                                   "backend or package versions.")
    p.add_argument("baseline", help="baseline JSONL (e.g. results/baselines/<gpu>.jsonl)")
    p.add_argument("current", help="current JSONL")
    p.add_argument("--memory-pct", type=float, default=2.0, help="cuda memory tolerance in %% (default 2)")
    p.add_argument("--memory-floor", default="64MiB", help="... or this many bytes, the larger (default 64MiB)")
    p.add_argument("--device-factor", type=float, default=1.05, help="GPU busy time slow-down (default 1.05)")
    p.add_argument("--wall-factor", type=float, default=1.10, help="wall median slow-down (default 1.10)")
    p.add_argument("--p-value", type=float, default=0.002, help="Mann-Whitney U threshold (default 0.002)")
    p.add_argument("--allow-mismatch", action="store_true", help="compare across GPUs, backends or versions")
    p.add_argument("--allow-missing", action="store_true", help="pass although the current run lacks baseline cases "
                                                                 "(default: a missing case fails the gate, as a "
                                                                 "regression does; the verdict says it was allowed)")
    p.add_argument("--gate-wall", action="store_true", help="also fail on wall time where GPU busy time exists "
                                                            "(off: wall time then only moves with the host)")
    p.add_argument("--markdown", metavar="FILE", help="also write a Markdown summary (a PR comment) here, replacing "
                                                      "the file ('-': stdout, the table to stderr)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here, replacing the file ('-': stdout)")
    p.add_argument("--all", action="store_true", help="also list unchanged figures")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("baseline", help="make or locate the committed baseline of a GPU (or sim)",
                       description="`update` writes results/baselines/<gpu>.jsonl from result files (the only "
                                   "way a baseline changes: deliberately, then committed); `path` prints where "
                                   "the baseline for these results lives.")
    p.add_argument("action", choices=("update", "path"))
    p.add_argument("results", nargs="+", help="JSONL result files")
    p.add_argument("--name", help="baseline name (default: the GPU's name, or the backend)")
    p.add_argument("--dir", default="results/baselines", help="where baselines live (default results/baselines)")
    p.add_argument("--keep-failed", action="store_true", help="keep failed rows in the baseline")
    p.set_defaults(func=cmd_baseline)

    sub.add_parser("models", help="list the model zoo").set_defaults(func=cmd_models)
    sub.add_parser("methods", help="list methods and selection policies").set_defaults(func=cmd_methods)
    return parser


EXIT_CODES = ("exit codes: 0 done (every case ok or oom); 1 some cases failed, or `compare` found a regression; "
              "2 bad input (one line on stderr; --debug shows the traceback); 130 interrupted")
MAX_MESSAGE = 300


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line naming it (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: str) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    from ist_bench.process import entry

    with entry():   # offline; bitsandbytes hidden until a quantized case asks for it
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if _to_stdout(args):
            from ist_bench.report.console import console
            console.stderr = True
            try:
                return args.func(args)
            finally:
                console.stderr = False
        return args.func(args)
    except UsageError as e:
        if debug:
            raise
        print(f"ist-bench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a vanished or unwritable file: say which, keep what was written
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"ist-bench: error: {_one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ist-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
