"""Mutation run over a package or a module (default ist_bench/selection/): does a wrong algorithm fail a test?

Each mutant is one small change to one file, made on the AST (an operator swapped, a constant
changed, a condition negated, a call or a return value removed, a keyword argument dropped, a
`with` context replaced by a null one, min/max, any/all, eval/train swapped). For each, in a copy
of the repository (the worktree is never touched), the mutated file is written and the tests run
with `-x` in a forked process (torch, transformers and peft imported once, before the fork;
ist_bench imported fresh in each child), killed after a timeout. Two phases per mutant: the tests
that existed before issue 16's contract tests (`--tests`), then, only where those all pass, the
contract tests (`--new-tests`). A mutant is *killed* when a test fails or errors (or times out),
*survived* when every test passes; the score before counts phase 1, the score after both.

    nice python scripts/mutate.py --budget-min 35 --sample 60 --seed 0
    nice python scripts/mutate.py --rerun results/mutation/selection.json   # survivors, phase 2 again
    nice python scripts/mutate.py --target ist_bench/compare.py --tests tests/test_compare.py \
        --new-tests tests/test_gate.py                                        # the regression gate

Writes results/mutation/<target>.json (every mutant: file:line, the change, the outcomes, the test
that killed it) and <target>.md (the scores and the survivors). `--list` prints the mutants only.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "ist_bench/selection"
TESTS = ["tests/test_selection.py", "tests/test_trainer.py", "tests/test_steady.py"]
NEW_TESTS = ["tests/test_selection_contract.py"]
DESELECT = ["tests/test_steady.py::test_the_gpu_steady_check_runs_end_to_end_on_sim"]   # the CLI + script path

BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
NAMES = {"min": "max", "max": "min", "any": "all", "all": "any", "sorted": "list"}
METHODS = {"eval": "train", "train": "eval"}
# the mutants issue 16 names: importance rounds in train mode or with grad, the callback never calling
# after_backward, weighted draws made uniform, candidate draws on the selection's stream (1 -> 2 is another)
ISSUE = [("method", "model.eval()"), ("call", "model.eval()"), ("call", "model.train(was_training)"),
         ("with", "inference_mode"), ("with", "no_grad"), ("call", "self.after_backward("),
         ("keyword", "p=w / w.sum()"), ("keyword", "rng(self.seed, step, 0).choice"),
         ("constant", "rng(self.seed, step, 1)"), ("constant", "rng(self.seed, step, 0)")]
QUIET_KEYWORDS = {"strict", "stacklevel"}   # dropping them changes no result


def _nullcontext() -> ast.expr:
    return ast.parse("__import__('contextlib').nullcontext()", mode="eval").body


def _text(node: ast.AST, limit: int = 70) -> str:
    s = " ".join(ast.unparse(node).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def candidates(node: ast.AST):
    """(kind, make) pairs: make() returns (replacement, before, after) built from a copy of `node`."""
    def swap(attr, table, label):
        def make():
            new = copy.deepcopy(node)
            setattr(new, attr, table[type(getattr(node, attr))]())
            return new, _text(node), _text(new)
        return label, make
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        yield swap("op", BINOPS, "binop")
    if isinstance(node, ast.AugAssign):
        if type(node.op) in BINOPS:
            yield swap("op", BINOPS, "augassign")
        yield "augassign", lambda: (ast.Assign(targets=[copy.deepcopy(node.target)], value=copy.deepcopy(node.value),
                                               lineno=node.lineno), _text(node), _text(ast.Assign(
                                    targets=[node.target], value=node.value, lineno=node.lineno)))
    if isinstance(node, ast.BoolOp):
        yield swap("op", {ast.And: ast.Or, ast.Or: ast.And}, "boolop")
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMPOPS:
                def make(i=i):
                    new = copy.deepcopy(node)
                    new.ops[i] = CMPOPS[type(node.ops[i])]()
                    return new, _text(node), _text(new)
                yield "compare", make
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield "unary", lambda: (copy.deepcopy(node.operand), _text(node), _text(node.operand))
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
        v = node.value
        new_v = (not v) if isinstance(v, bool) else v + 1 if isinstance(v, int) else (v * 2 if v else 1.0)
        yield "constant", lambda: (ast.Constant(new_v), repr(v), repr(new_v))
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in NAMES:
            def make():
                new = copy.deepcopy(node)
                new.func.id = NAMES[node.func.id]
                return new, _text(node), _text(new)
            yield "name", make
        if isinstance(node.func, ast.Attribute) and node.func.attr in METHODS:
            def make():
                new = copy.deepcopy(node)
                new.func.attr = METHODS[node.func.attr]
                return new, _text(node), _text(new)
            yield "method", make
        for i, kw in enumerate(node.keywords):
            if kw.arg is not None and kw.arg not in QUIET_KEYWORDS:
                def make(i=i):
                    new = copy.deepcopy(node)
                    del new.keywords[i]
                    return new, _text(node), _text(new)
                yield "keyword", make
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        yield "call", lambda: (ast.Pass(), _text(node), "pass")
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield "return", lambda: (ast.Return(value=None), _text(node), "return None")
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        def make():
            new = copy.deepcopy(node)
            new.test = ast.UnaryOp(op=ast.Not(), operand=new.test)
            return new, _text(node.test), _text(new.test)
        yield "negate", make
    if isinstance(node, ast.With):
        for i in range(len(node.items)):
            def make(i=i):
                new = copy.deepcopy(node)
                new.items[i].context_expr = _nullcontext()
                return new, _text(node.items[i].context_expr), "nullcontext()"
            yield "with", make


class Mutator(ast.NodeTransformer):
    """Enumerates the sites (target=None) or applies site number `target`, in one fixed walk order."""

    def __init__(self, target: int | None = None):
        self.target, self.n, self.found, self.applied = target, 0, [], None

    def visit(self, node):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node                                     # docstrings
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.arg)):
            return node                                     # imports, argument annotations
        if isinstance(node, ast.AnnAssign):                 # the annotation stays (dataclass fields)
            if node.value is not None:
                node.value = self.visit(node.value)
            return self._sites(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.args = self.visit(node.args)
            node.body = self._visit_list(node.body)
            return node
        node = self.generic_visit(node)
        return self._sites(node)

    def _visit_list(self, nodes):
        out = []
        for n in nodes:
            r = self.visit(n)
            out.extend(r if isinstance(r, list) else [r])
        return out

    def _sites(self, node):
        for kind, make in candidates(node):
            i, self.n = self.n, self.n + 1
            if self.target is None:
                _, before, after = make()
                self.found.append({"site": i, "line": node.lineno, "col": node.col_offset, "kind": kind,
                                   "mutation": f"`{before}` -> `{after}`"})
            elif i == self.target:
                new, before, after = make()
                self.applied = f"`{before}` -> `{after}`"
                return ast.copy_location(new, node)
        return node


def enumerate_mutants(root: Path, target: str = TARGET) -> list[dict]:
    out = []
    where = root / target
    for path in ([where] if where.is_file() else sorted(where.glob("*.py"))):
        m = Mutator()
        m.visit(ast.parse(path.read_text()))
        rel, lines = str(path.relative_to(root)), path.read_text().splitlines()
        out += [{"file": rel, **s, "source": lines[s["line"] - 1].strip()} for s in m.found]
    for x in out:
        x["id"] = f"{x['file']}:{x['line']}:{x['col']}:{x['kind']}:{x['mutation']}"
    return out


def mutated_source(text: str, site: int) -> str:
    m = Mutator(site)
    tree = ast.fix_missing_locations(m.visit(ast.parse(text)))
    assert m.applied is not None, site
    return ast.unparse(tree) + "\n"


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def run_tests(copy_root: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float, str]:
    """Fork; the child runs pytest on the copy. Returns (outcome, seconds, first failing test)."""
    start = time.time()
    pid = os.fork()
    if pid == 0:   # child
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy_root)
            sys.path.insert(0, str(copy_root))
            os.environ["PYTHONPATH"] = str(copy_root)
            import pytest
            args = [*tests, "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-W", "ignore",
                    *(f"--deselect={d}" for d in DESELECT)]
            code = pytest.main(args)
        except BaseException:
            code = 3
        os._exit(int(code))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.time() - start, ""
        time.sleep(0.2)
    code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = next((ln.split(" ", 2)[1] for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))), "")
    outcome = {0: "survived", 1: "killed"}.get(code, "error")    # error: the mutant breaks import/collection
    return outcome, time.time() - start, failed


def summary_md(result: dict) -> str:
    ran = result["ran"]
    target = result.get("target", TARGET)
    lines = [f"# Mutation run over `{target}`", "",
             f"Command: `{result['command']}`" + (f" (runs: {'; '.join('`' + h['command'] + '`' for h in result['history'])})"
                                                  if len(result["history"]) > 1 else ""), "",
             f"Tests before: {', '.join(result['tests'])}; after: those and {', '.join(result['new_tests'])} "
             f"(`-m 'not slow' -x`; deselected: {', '.join(DESELECT)}). Unmutated run: "
             f"{result['baseline_s']['old']:.0f} s + {result['baseline_s']['new']:.0f} s.", "",
             f"Mutants: {result['total_sites']} in {target}; ran {ran}"
             + (f" (a sample of {result['sample']}, seed {result['seed']}, plus the mutants issue 16 names)"
                if result["sample"] else "") + ".", "",
             f"**Score before: {result['killed_before']}/{ran} = {result['score_before']:.1%}; "
             f"after: {result['killed_after']}/{ran} = {result['score_after']:.1%}** "
             f"(killed includes {result['errors']} that break import or collection, {result['timeouts']} timeouts)", ""]
    fixed = [m for m in result["mutants"] if m["before"] == "survived" and m["after"] != "survived"]
    lines += [f"## Killed by the contract tests only ({len(fixed)})", "", "| file:line | mutation | killed by |",
              "|---|---|---|"]
    lines += [f"| {m['file']}:{m['line']} | {_cell(m['mutation'])} | {m['killed_by']} |" for m in fixed]
    surv = [m for m in result["mutants"] if m["after"] == "survived"]
    lines += ["", f"## Survivors ({len(surv)})", "", "| file:line | kind | mutation | why |", "|---|---|---|---|"]
    lines += [f"| {m['file']}:{m['line']} | {m['kind']} | {_cell(m['mutation'])} | {m.get('note', '')} |" for m in surv]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default=TARGET, help=f"a package folder or a module (default {TARGET})")
    p.add_argument("--budget-min", type=float, default=25, help="stop starting mutants after this many minutes")
    p.add_argument("--sample", type=int, default=0, help="a deterministic sample of N mutants (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=240, help="seconds per mutant's test run")
    p.add_argument("--tests", nargs="+", default=TESTS, help="phase 1: the tests before issue 16's contract tests")
    p.add_argument("--new-tests", nargs="+", default=NEW_TESTS, help="phase 2: run where phase 1 passes")
    p.add_argument("--include", action="append", default=None, metavar="TEXT",
                   help="also run every mutant whose change contains TEXT (default: the mutants issue 16 names)")
    p.add_argument("--rerun", help="a previous selection.json: run its survivors only (and keep its other outcomes)")
    p.add_argument("--notes", help="a JSON {mutant id: note} for survivors (why equivalent or left)")
    p.add_argument("--out", help="results file (default results/mutation/<target's name>.json)")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = p.parse_args(argv)
    args.out = args.out or str(ROOT / "results" / "mutation" / f"{Path(args.target).stem}.json")

    mutants = enumerate_mutants(ROOT, args.target)
    if args.list:
        for m in mutants:
            print(f"{m['file']}:{m['line']}  {m['kind']:9s} {m['mutation']}")
        print(f"{len(mutants)} mutants")
        return 0
    previous = json.loads(Path(args.rerun).read_text()) if args.rerun else None
    rng_order = random.Random(args.seed)
    if previous:
        by_id = {m["id"]: m for m in mutants}
        missing = [m["id"] for m in previous["mutants"] if m["id"] not in by_id]
        if missing:
            print(f"{len(missing)} mutants of {args.rerun} no longer exist (the code changed); first: {missing[0]}")
            return 2
        chosen = [dict(m) for m in previous["mutants"]]
        todo = [m for m in chosen if m.get("after") in ("survived", "timeout")]
        for m in todo:
            m["phase1_cached"] = m.get("before") == "survived"   # a phase-1 timeout runs phase 1 again
    else:
        chosen = rng_order.sample(mutants, args.sample) if 0 < args.sample < len(mutants) else list(mutants)
        wanted = [(None, t) for t in args.include] if args.include else ISSUE if args.target == TARGET else []
        chosen += [m for m in mutants if m not in chosen and any(k in (None, m["kind"]) and t in m["source"]
                                                                 for k, t in wanted)]
        rng_order.shuffle(chosen)     # a run cut short by the budget is still a random subset
        todo = chosen
    old = [t for t in args.tests if (ROOT / t.split("::")[0]).exists()]
    new = [t for t in args.new_tests if (ROOT / t.split("::")[0]).exists()]

    import numpy  # noqa: F401  the heavy imports, once, before forking
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401
    torch.set_num_threads(1)
    assert not any(k.startswith("ist_bench") for k in sys.modules), "ist_bench must be imported by the children only"
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        work = Path(tmp) / "repo"
        copy_tree(work)
        shutil.rmtree((work / args.target).parent / "__pycache__", ignore_errors=True)
        shutil.rmtree(work / args.target / "__pycache__", ignore_errors=True)
        baseline = {}
        if previous and all(m["phase1_cached"] for m in todo):   # phase 1 is not run again: its old figure
            baseline["old"] = previous["baseline_s"]["old"]
        for name, tests in (("old", old), ("new", new)):
            if name in baseline:
                continue
            outcome, baseline[name], failed = run_tests(work, tests, 1800, Path(tmp) / "baseline.log")
            if outcome != "survived":
                print(f"the unmutated code fails its {name} tests ({outcome}, {failed}):\n"
                      + (Path(tmp) / "baseline.log").read_text()[-3000:])
                return 1
        # a survivor runs every test: allow it 2.5x the unmutated run (the machine is shared)
        limits = {k: max(args.timeout, 2.5 * v) for k, v in baseline.items()}
        print(f"baseline: old tests {baseline['old']:.0f} s, new {baseline['new']:.0f} s; {len(todo)} mutants", flush=True)
        for k, m in enumerate(todo):
            if time.time() - start > args.budget_min * 60:
                print(f"budget of {args.budget_min:g} min spent: {len(todo) - k} mutants not run", flush=True)
                break
            path = work / m["file"]
            original = path.read_text()
            try:
                path.write_text(mutated_source(original, m["site"]))
                if not m.pop("phase1_cached", False):
                    m["before"], secs, m["killed_by"] = run_tests(work, old, limits["old"], Path(tmp) / "m.log")
                    m["seconds"] = round(secs, 1)
                if m["before"] == "survived":
                    m["after"], secs, m["killed_by"] = run_tests(work, new, limits["new"], Path(tmp) / "m.log")
                    m["seconds"] = round(m.get("seconds", 0) + secs, 1)
                else:
                    m["after"] = m["before"]
            finally:
                path.write_text(original)
            print(f"[{k + 1}/{len(todo)}] {m['before']:8s} {m['after']:8s} {m['seconds']:5.0f}s {m['file']}:{m['line']} "
                  f"{m['mutation']}  {m['killed_by']}", flush=True)
    ran = sorted((m for m in chosen if "after" in m), key=lambda m: (m["file"], m["site"]))
    notes = json.loads(Path(args.notes).read_text()) if args.notes else {}
    for m in ran:
        if m["id"] in notes:
            m["note"] = notes[m["id"]]
    cmd = "nice python scripts/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    score = {ph: sum(m[ph] != "survived" for m in ran) for ph in ("before", "after")}
    result = {"command": cmd.strip(), "target": args.target, "tests": old, "new_tests": new,
              "total_sites": len(mutants), "sample": previous.get("sample") if previous else args.sample,
              "seed": previous.get("seed") if previous else args.seed, "rerun": args.rerun,
              "baseline_s": {k: round(v, 1) for k, v in baseline.items()}, "ran": len(ran),
              "killed_before": score["before"], "killed_after": score["after"],
              "score_before": score["before"] / max(1, len(ran)), "score_after": score["after"] / max(1, len(ran)),
              "errors": sum(m["after"] == "error" for m in ran), "timeouts": sum(m["after"] == "timeout" for m in ran),
              "wall_s": round(time.time() - start), "mutants": ran,
              "history": [*(previous or {}).get("history", []), {"command": cmd.strip(), "ran": len(todo)}]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(summary_md(result))
    print(f"score before {score['before']}/{len(ran)} = {result['score_before']:.1%}, after {score['after']}/{len(ran)} "
          f"= {result['score_after']:.1%}; {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
