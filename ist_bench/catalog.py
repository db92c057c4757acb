"""What the CLI shows before any heavy import: names, defaults and descriptions, read from the source.

`--help`, `models`, `methods`, `--version` and argument errors must answer without importing torch,
transformers or peft (seconds on a small machine). The facts they show live in modules that do
import them: `Case`'s and `MethodSpec`'s defaults, the methods' and the selection policies' names,
descriptions and `Settings`. Rather than copy those facts into a second place, this module reads
them from those modules' source with `ast` (literal values only, never executed), so they keep one
source of truth; tests/test_cli.py checks every value here against the imported objects.
The zoo's parameter counts are the one derived fact: stored in each config's `_ist_bench` block,
checked against the model built on meta by the same test.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
from pathlib import Path

ROOT = Path(__file__).parent


@functools.cache
def _module(rel: str) -> ast.Module:
    return ast.parse((ROOT / rel).read_text())


def _literal(node: ast.AST | None):
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def constant(rel: str, name: str):
    """A module-level `NAME = <literal>` (a dict gives its keys when its values are not literals)."""
    for node in _module(rel).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Dict) and _literal(node.value) is None:
                return tuple(_literal(k) for k in node.value.keys)
            return _literal(node.value)
    raise LookupError(f"{name} not found in {rel}")


def _classes(rel: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in _module(rel).body if isinstance(n, ast.ClassDef)}


def fields(rel: str, cls: str) -> dict[str, object]:
    """A dataclass's fields with literal defaults, in order (`field(default_factory=...)` ones left out)."""
    out = {}
    for node in _classes(rel)[cls].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if not isinstance(node.value, ast.Call):
                out[node.target.id] = _literal(node.value)
    return out


def _attrs(rel: str, cls: str) -> dict[str, ast.AST]:
    """Class-level assignments, the base classes' (in the same file) first."""
    node = _classes(rel)[cls]
    out: dict[str, ast.AST] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in _classes(rel):
            out.update(_attrs(rel, base.id))
    for item in node.body:
        if isinstance(item, ast.Assign):
            out.update({t.id: item.value for t in item.targets if isinstance(t, ast.Name)})
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
            out[item.target.id] = item.value
    return out


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    description: str
    options: dict   # a policy's Settings fields and defaults (empty for methods)


def _registry(package: str, call: str) -> list[tuple[str, str]]:
    """(file, class) of each entry of a registry tuple in `package`/__init__.py, in its order:
    `{m.name: m for m in (Full(), Lora(), ...)}` (call=True) or `(SelectionPolicy, RST, ...)`."""
    where = {}
    for node in _module(f"{package}/__init__.py").body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"ist_bench.{package}."):
            rel = node.module.removeprefix("ist_bench.").replace(".", "/") + ".py"
            where.update({a.asname or a.name: (rel, a.name) for a in node.names})
    tree = _module(f"{package}/__init__.py")
    comp = next(n for n in ast.walk(tree) if isinstance(n, ast.DictComp))
    names = [(e.func.id if call else e.id) for e in comp.generators[0].iter.elts]
    return [where[n] for n in names]


@functools.cache
def methods() -> list[Entry]:
    return [Entry(_literal(a["name"]), _literal(a["description"]), {})
            for a in (_attrs(rel, cls) for rel, cls in _registry("methods", call=True))]


@functools.cache
def policies() -> list[Entry]:
    out = []
    for rel, cls in _registry("selection", call=False):
        a = _attrs(rel, cls)
        settings = a["Settings"].id
        home = rel if settings in _classes(rel) else "selection/base.py"
        out.append(Entry(_literal(a["name"]), _literal(a["description"]), fields(home, settings)))
    return out


def case_defaults() -> dict:
    """`Case()`'s literal defaults and, under "method", `MethodSpec()`'s."""
    return {**fields("runner/case.py", "Case"), "method": fields("methods/__init__.py", "MethodSpec")}


def choices() -> dict[str, tuple]:
    """The valid values of the case options that take a name."""
    return {"method": tuple(m.name for m in methods()), "select": tuple(p.name for p in policies()),
            "dtype": constant("runner/case.py", "DTYPES"), "optim": constant("runner/case.py", "OPTIM_IMPLS"),
            "attn": constant("runner/case.py", "ATTENTION"), "quant": constant("runner/case.py", "QUANTS"),
            "optimizer_state": constant("selection/base.py", "OPTIMIZER_STATES")}


@functools.cache
def zoo_configs() -> dict[str, dict]:
    """The shipped model configs (plain JSON), by name."""
    return {p.name.removesuffix(".json"): json.loads(p.read_text())
            for p in sorted((ROOT / "zoo" / "configs").glob("*.json"))}


ZOO_SUMMARY = ROOT / "zoo" / "summary.json"


def zoo_summary() -> dict[str, dict]:
    """What `ist-bench models` lists, per zoo name (derived from the configs by `summarize_zoo`)."""
    return json.loads(ZOO_SUMMARY.read_text())


def summarize_zoo() -> dict[str, dict]:
    """Heavy (builds each model on meta): the contents of zoo/summary.json. Regenerate it with
    `python -c "import ist_bench.catalog as c; c.write_zoo_summary()"` after adding a config."""
    from ist_bench import zoo

    out = {}
    for name in zoo.names():
        cfg = zoo.load_config(name)
        out[name] = {"family": cfg.model_type, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                     "params": zoo.count_parameters(cfg), "positions": zoo.max_positions(cfg)}
    return out


def write_zoo_summary() -> None:
    ZOO_SUMMARY.write_text(json.dumps(summarize_zoo(), indent=1) + "\n")
