"""`ist-bench models` and `ist-bench methods`: what the zoo, the methods and the policies hold."""

from __future__ import annotations

import argparse
import re

from ist_bench.commands.common import count


def add_parser(sub) -> None:
    sub.add_parser("models", help="list the model zoo").set_defaults(func=cmd_models)
    sub.add_parser("methods", help="list methods and selection policies").set_defaults(func=cmd_methods)


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
                      count(m["params"]), count(m["active_params"]) if moe else "", str(m["positions"] or "-"))
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
