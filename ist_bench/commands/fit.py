"""`ist-bench fit`: the longest sequence and largest batch that fit a card, per method."""

from __future__ import annotations

import argparse
from pathlib import Path

from ist_bench.commands.common import append_json, check_distinct, check_writable, int_arg
from ist_bench.errors import UsageError


def add_parser(sub) -> None:
    from ist_bench.cards import CARDS

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
    p.add_argument("--speed", action="store_true", help="also rank what fits by tokens/s predicted for the card (at "
                                                         "--batch-len, the largest batch that fits; docs/time-prediction.md)")
    p.set_defaults(func=cmd_fit)


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
    check_writable(args.json, inputs, rows=True)
    if args.plot:
        if Path(args.plot).suffix != ".png":
            raise UsageError(f"--plot {args.plot!r}: a .png file")
        check_writable(args.plot, inputs)
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
    ranked = []
    if args.speed:
        ranked = fit.speeds(args.model, args.gpu, answers, dtype=args.dtype, attn=args.attn,
                            grad_checkpointing=args.grad_checkpointing, optimizer_state=args.optimizer_state,
                            quant=args.quant, double_quant=args.double_quant,
                            quant_compute_dtype=args.quant_compute_dtype, optim=args.fit_optim)
        speed = Table(title=f"the fastest setting that fits, predicted for {args.gpu} (no GPU used)", title_justify="left")
        for col in ("method", "batch x tokens", "step ms", "tokens/s", "MFU"):
            speed.add_column(col, justify="left" if col == "method" else "right")
        for a, batch, seq_len, row in ranked:
            t = row["time"]
            speed.add_row(a.label, f"{batch} x {seq_len}", f"{t['phases_ms']['step']['median']:.0f}",
                          f"{t['tokens_per_s']:,.0f}", f"{100 * t['device']['mfu']:.0f}%")
        console.print(speed)
    if args.json:
        append_json(args.json, [{"kind": "fit", "model": args.model, "gpu": args.gpu, "usable": tgt.usable,
                                  "note": tgt.note, "answers": [dataclasses.asdict(a) for a in answers],
                                  **({"speed": [{"method": a.label, "batch": batch, "seq_len": seq_len,
                                                 "tokens_per_s": row["time"]["tokens_per_s"]}
                                                for a, batch, seq_len, row in ranked]}
                                     if args.speed else {})}])
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

    nproc = args.nproc if args.nproc == "auto" else int_arg("--nproc", args.nproc, "an integer >= 1 or auto")
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
        append_json(args.json, [{"kind": "fit", "model": args.model, "gpu": args.gpu, "usable": tgt.usable,
                                  "note": tgt.note, "shard": "fsdp2",
                                  "answers": [dataclasses.asdict(a) for a in answers]}])
    return 0
