"""What several commands share: the case's options and how a case is read from them, the output checks and
writers, number parsing. Light to import (no torch, transformers or peft)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ist_bench.errors import UsageError

EPILOG = "Defaults follow the IST paper's Table 1 setting: batch 1, 1024 tokens, bf16, eager attention."


def case_args(p: argparse.ArgumentParser, steps: int | None = None) -> None:
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


def case_from(args: argparse.Namespace):
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


def dist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, help="ranks (world size): cpu/cuda launch torchrun with N workers (gloo / "
                                             "NCCL); sim plays rank 0 of N under a fake process group (any N, one "
                                             "CPU). Default: one process, no sharding")
    p.add_argument("--shard", default="fsdp2", help="with --nproc: fsdp2 (fully_shard on each block, then the root; "
                                                    "bf16 params, fp32 reduce) or ddp (default fsdp2)")
    p.add_argument("--reshard-after-forward", choices=("on", "off"), default="on",
                   help="fsdp2: free each block's gathered weights after its forward (on, ZeRO-3) or keep them "
                        "for backward (off, ZeRO-2-like; default on)")


def busy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--busy-gpu", default="refuse", choices=("refuse", "warn", "ignore"),
                   help="before a GPU case, another process using the card: refuse the case (default), warn, "
                        "or do not look")


def check_writable(path: str | None, inputs=(), rows: bool = False) -> None:
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


def case_inputs(case) -> tuple:
    """The files a case reads (a config path, data, tokenizer): no output may be one of them."""
    from ist_bench import zoo
    return (case.model if zoo.is_path(case.model) else None, case.data, case.tokenizer)


def append_json(path: str | None, rows: list[dict]) -> None:
    """Append rows (flushed and fsynced) to a path `check_writable` has already vetted, after repairing
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


def write_text(path: str, text: str) -> None:
    """Write (replace) a file atomically; `-`: stdout."""
    if path == "-":
        sys.stdout.write(text)
    else:
        from ist_bench.results import write_atomic
        write_atomic(path, text)


def to_stdout(args: argparse.Namespace) -> bool:
    """Whether an output option is `-`: the data then owns stdout and the human view goes to stderr."""
    return "-" in (getattr(args, "json", None), getattr(args, "markdown", None), getattr(args, "junit", None))


def count(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def int_arg(name: str, value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{name} must be {what}, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{name} must be {what}, got {value!r}")
    return n


def positive(name: str, value: float) -> float:
    if not value >= 0 or value == float("inf"):   # nan and inf too
        raise UsageError(f"{name} must be a finite number >= 0, got {value:g}")
    return value


def factor(name: str, value: float) -> float:
    if not value >= 1 or value == float("inf"):
        raise UsageError(f"{name} is a slow-down factor >= 1, got {value:g}")
    return value


def cores(cap: int | None = 4) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cap or n, n))


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


MAX_MESSAGE = 300


def one_line(message: str) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


__all__ = ['EPILOG', 'case_args', 'case_from', 'dist_args', 'busy_arg', 'check_writable', 'check_distinct', 'case_inputs', 'append_json', 'write_text', 'to_stdout', 'count', 'int_arg', 'positive', 'factor', 'cores', 'raise_interrupt', 'MAX_MESSAGE', 'one_line']
