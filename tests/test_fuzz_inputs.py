"""A fuzzing campaign over every input ist-bench reads: suites (YAML text, garbage, unicode, deep
nesting), model configs, result rows and command-line arguments (hypothesis, a fixed seed).

The contract each property checks, in-process through `ist_bench.cli.main` (a few cases also as a
real subprocess): the exit code is 0, 1, 2 or 130; nothing escapes as a traceback (main lets any
exception other than bad input, OSError and Ctrl-C through, so a crash fails the property); exit 2
comes with exactly one line on stderr, `ist-bench: error: ...`; and no file appears outside the
output path. The work behind accepted input (a sim step, a worker pool) is replaced by a stub that
raises `Accepted`: what is fuzzed is the validation, which must answer before any work starts.

CI runs a modest number of examples (derandomized: the same ones every run, in well under a minute).
The long campaign: `HYPOTHESIS_PROFILE=long pytest tests/test_fuzz_inputs.py` (50x the examples;
IST_BENCH_FUZZ_FACTOR=N for N x).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ist_bench.cli import main
from ist_bench.errors import UsageError

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
FACTOR = int(os.environ.get("IST_BENCH_FUZZ_FACTOR", "50")) if LONG else 1


def budget(n: int):
    """Hypothesis settings for a property worth `n` examples in CI (FACTOR x n in the long campaign)."""
    return settings(max_examples=n * FACTOR, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


class Accepted(Exception):
    """Raised by the stubbed work: the input passed validation."""


def _accept(*args, **kwargs):
    raise Accepted


class _IdleWorker:
    def __init__(self, *a, **k):
        pass

    def close(self):
        pass


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Work in an empty folder with the measuring stubbed out; yields the folder."""
    import ist_bench.runner.isolate as isolate
    import ist_bench.runner.memory as memory
    import ist_bench.runner.time as timing

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(memory, "measure_memory", _accept)
    monkeypatch.setattr(timing, "measure_time", _accept)
    monkeypatch.setattr(isolate, "run_isolated", _accept)
    monkeypatch.setattr(isolate, "Worker", _IdleWorker)
    return tmp_path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `ist-bench argv`; Accepted (valid input reached the work) counts as 0."""
    capsys.readouterr()
    try:
        code = main(argv)
    except Accepted:
        code = 0
    except SystemExit as e:          # argparse's own errors leave through sys.exit
        code = e.code
    return code, capsys.readouterr().err


def assert_contract(code: int, err: str) -> None:
    assert code in (0, 1, 2, 130), (code, err)
    assert "Traceback" not in err, err
    if code == 2:   # one error line, last; before it only warnings (a truncated last line skipped)
        *warnings, last = err.splitlines() or [""]
        assert last.startswith("ist-bench") and "error: " in last and len(last) < 400, err
        assert all(w.startswith("ist-bench: warning: ") for w in warnings), err


# -- value strategies ---------------------------------------------------------------------------

WILD_NUMBERS = st.sampled_from([0, -1, 1, 2, 10**6, 10**9, 2**63, 10**400, -(10**400), 0.5, -0.0, 1e308,
                                math.nan, math.inf, -math.inf, 1.5])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | WILD_NUMBERS |
           st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
                    max_size=12)

MODELS = st.sampled_from(["tiny-llama", "tiny-gpt2", "llama-7b", "gpt2-small", "nope", "", "../x"])
CASE_VALUES = {
    "model": MODELS, "method": st.sampled_from(["lora", "full", "series", "prefix", "dora"]) | JSON_VALUES,
    "select": st.sampled_from(["none", "rst", "ist", "lisa", "nope"]) |
    st.fixed_dictionaries({"name": st.sampled_from(["rst", "ist", "lisa"])},
                          optional={"layers": WILD_NUMBERS, "mu": WILD_NUMBERS, "beta": WILD_NUMBERS}),
    "backend": st.sampled_from(["sim", "cpu", "cuda", "auto", "tpu"]),
    "steps": WILD_NUMBERS | SCALARS, "seq_len": WILD_NUMBERS | st.sampled_from([64, 128, 4096]),
    "batch": WILD_NUMBERS, "lr": WILD_NUMBERS, "seed": WILD_NUMBERS, "dtype": st.sampled_from(["bf16", "int8"]),
    "capacity": st.sampled_from(["80GiB", "0", "-1GiB", "lots"]) | SCALARS,
}
CASE_FIELDS = st.dictionaries(st.sampled_from(sorted(CASE_VALUES)) | st.text(max_size=6),
                              st.just(None), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: CASE_VALUES.get(k, JSON_VALUES) for k in keys}))
GRID = st.dictionaries(st.sampled_from(sorted(CASE_VALUES)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.lists(CASE_VALUES[k], min_size=1, max_size=3) | CASE_VALUES[k]
                                        for k in keys}))
SUITE_VALUES = {"name": SAFE_TEXT | SCALARS, "kind": st.sampled_from(["memory", "time", ["memory", "time"], [],
                                                                      "train"]) | SCALARS,
                "grid": GRID | JSON_VALUES, "cases": st.lists(CASE_FIELDS, max_size=2) | JSON_VALUES,
                "defaults": CASE_FIELDS | JSON_VALUES, "exclude": st.lists(CASE_FIELDS, max_size=2) | JSON_VALUES,
                "warmup": WILD_NUMBERS | SCALARS, "profile_steps": WILD_NUMBERS | SCALARS,
                "overhead_blocks": WILD_NUMBERS}
SUITES = st.dictionaries(st.sampled_from(sorted(SUITE_VALUES)) | st.text(max_size=6), st.just(None),
                         max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: SUITE_VALUES.get(k, JSON_VALUES) for k in keys}))


def suite_text(spec) -> str:
    return yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)


GARBAGE_TEXT = (st.text(max_size=200) | st.binary(max_size=200) |
                st.integers(1, 300).map(lambda n: "[" * n + "]" * n) |       # nesting (20,000 deep: an @example)
                st.integers(1, 300).map(lambda n: "a:\n" + "".join(" " * i + "- b:\n" for i in range(1, n)) + "1") |
                st.sampled_from(["a: &a [1]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",   # aliases
                                 "grid: {model: [tiny-llama]}\n".encode("utf-16"), b"\xff\xfe\x00",
                                 "\ufeffgrid: {model: [tiny-llama], backend: [sim]}\n", "grid: !!python/object {}\n",
                                 "steps: " + "9" * 5000 + "\n"]))


# -- suites -------------------------------------------------------------------------------------

def _write_suite(root: Path, content) -> Path:
    path = root / "suite.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else suite_text(content), errors="surrogatepass")
    return path


@budget(100)
@given(spec=SUITES | GARBAGE_TEXT)
@example(spec="grid: {model: [tiny-llama], backend: [sim]}\n")
@example(spec="[" * 20_000 + "]" * 20_000)
@example(spec={"grid": {"model": ["tiny-llama"], "backend": ["sim"], "batch": [10**9]}})
@example(spec={"grid": {f"k{i}": list(range(10)) for i in range(12)}})
def test_any_suite_is_loaded_or_refused_in_one_line(sandbox, spec):
    from ist_bench.runner.suite import load_suite

    path = _write_suite(sandbox, spec)
    try:
        suite = load_suite(path)
    except UsageError as e:
        assert "\n" not in str(e).strip() and "Traceback" not in str(e)
        return
    assert 1 <= len(suite.cases) <= 10_000 and all(c.batch * c.seq_len <= 1 << 24 for c in suite.cases)


@budget(40)
@given(spec=SUITES | GARBAGE_TEXT, extra=st.lists(st.sampled_from(["--resume", "--append", "--jobs", "2", "--timeout",
                                                                    "nan", "inf", "1", "--backend", "sim"]), max_size=3))
def test_run_on_any_suite_keeps_the_contract_and_writes_nothing_else(sandbox, capsys, spec, extra):
    path = _write_suite(sandbox, spec)
    before = files_under(sandbox)
    code, err = run_cli(["run", str(path), "--out", "out/r.jsonl", *extra], capsys)
    assert_contract(code, err)
    assert files_under(sandbox) - before <= {"out/r.jsonl"}


# -- model configs ------------------------------------------------------------------------------

SIZE_KEYS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
             "intermediate_size", "max_position_embeddings", "head_dim", "n_layer", "n_embd", "n_head", "n_positions"]
CONFIGS = st.fixed_dictionaries({"model_type": st.sampled_from(["llama", "gpt2", "mistral", "qwen2", "opt", "bloom",
                                                                "nope"]) | SCALARS},
                                optional={k: WILD_NUMBERS | st.integers(-4, 4096) | SCALARS for k in SIZE_KEYS})


@budget(150)
@given(config=CONFIGS | JSON_VALUES)
@example(config={"model_type": "llama", "num_hidden_layers": 10**6})
@example(config={"model_type": "llama", "hidden_size": 64, "num_attention_heads": 3, "intermediate_size": 128})
def test_any_model_config_is_accepted_within_bounds_or_refused_in_one_line(sandbox, config):
    from ist_bench import schema, zoo
    from ist_bench.runner.case import Case

    path = sandbox / "config.json"
    path.write_text(json.dumps(config))
    try:
        cfg = zoo.load_config(str(path))
        Case(model=str(path), backend="sim", seq_len=64).check()
    except UsageError as e:
        assert "\n" not in str(e).strip()
        return
    assert 1 <= cfg.num_hidden_layers <= schema.MAX_LAYERS and 1 <= cfg.vocab_size <= schema.MAX_VOCAB
    assert 1 <= cfg.hidden_size <= schema.MAX_HIDDEN


# -- result rows --------------------------------------------------------------------------------

SIM_BASELINE = Path(__file__).parent.parent / "results" / "baselines" / "sim.jsonl"
GOOD_ROW = json.loads(SIM_BASELINE.read_text().splitlines()[1])


def _paths(value, prefix=()):
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in items:
        yield from _paths(v, (*prefix, key))


ROW_PATHS = [p for p in _paths(GOOD_ROW) if p and len(p) <= 4]


@st.composite
def mutated_rows(draw):
    """The sim baseline's row with a few fields deleted or replaced by anything JSON can hold."""
    row = json.loads(json.dumps(GOOD_ROW))
    for path in draw(st.lists(st.sampled_from(ROW_PATHS), min_size=1, max_size=3)):
        node = row
        try:
            for key in path[:-1]:
                node = node[key]
            if draw(st.booleans()):
                del node[path[-1]]
            else:
                node[path[-1]] = draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    return row


def _line(row) -> str:
    return row if isinstance(row, str) else json.dumps(row)


ROWS = st.lists(mutated_rows() | JSON_VALUES | st.text(max_size=60), min_size=0, max_size=3)


@budget(60)
@given(rows=ROWS, newline=st.booleans())
@example(rows=[], newline=True)
@example(rows=[{**GOOD_ROW, "memory": {"summary": {}}}], newline=True)
@example(rows=[{**GOOD_ROW, "status": "ok", "memory": {"summary": {"peak": {"max": 10**400}}}}], newline=True)
def test_readers_of_any_rows_keep_the_contract(sandbox, capsys, rows, newline):
    base = sandbox / "base.jsonl"
    base.write_text(json.dumps(GOOD_ROW) + "\n")
    cur = sandbox / "cur.jsonl"
    cur.write_text("\n".join(_line(r) for r in rows) + ("\n" if newline and rows else ""))
    before = files_under(sandbox)
    for argv in (["validate", str(cur)], ["compare", str(base), str(cur)], ["compare", str(cur), str(cur)],
                 ["baseline", "update", str(cur), "--dir", "b", "--name", "x"], ["baseline", "path", str(cur)]):
        code, err = run_cli(argv, capsys)
        assert_contract(code, err)
    assert files_under(sandbox) - before <= {"b/x.jsonl"}


@budget(8)
@given(rows=ROWS)
def test_report_on_any_rows_keeps_the_contract(sandbox, capsys, rows):
    cur = sandbox / "cur.jsonl"
    cur.write_text("".join(_line(r) + "\n" for r in rows))
    code, err = run_cli(["report", str(cur), "--out", "rep/r"], capsys)
    assert_contract(code, err)
    assert all(p.startswith("rep/") or p == "cur.jsonl" for p in files_under(sandbox))


def test_a_compare_that_is_refused_never_hides_a_regression(sandbox, capsys):
    """The gate's answer on a real 50% regression is 1, and with any non-finite threshold 2, never 0."""
    base, cur = sandbox / "b.jsonl", sandbox / "c.jsonl"
    worse = json.loads(json.dumps(GOOD_ROW))
    for fig in worse["memory"]["summary"].values():
        if isinstance(fig, dict):
            for k in fig:
                fig[k] = int(fig[k] * 1.5) if isinstance(fig[k], int) else fig[k]
    base.write_text(json.dumps(GOOD_ROW) + "\n")
    cur.write_text(json.dumps(worse) + "\n")
    assert run_cli(["compare", str(base), str(cur)], capsys)[0] == 1
    for option in ("--memory-pct", "--device-factor", "--wall-factor", "--p-value"):
        for value in ("nan", "inf", "-inf"):
            code, err = run_cli(["compare", str(base), str(cur), option, value], capsys)
            assert code == 2 and option in err, (option, value, err)


# -- command-line arguments ---------------------------------------------------------------------

def _options(command: str) -> list[str]:
    from ist_bench.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help")


ARG_VALUES = (st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "64", "1e400", "9" * 400, "abc", "",
                               "é", "tiny-llama", "tiny-gpt2", "sim", "cpu", "cuda", "lora", "full", "ist", "rst",
                               "mu=nan", "layers=0.5", "layers=inf", "beta=2", "80GiB", "-5GiB", "--", "-x",
                               "none,rst", "rtx4090", "0.5"]) | SAFE_TEXT)
COMMANDS = {   # the command and the arguments that make it cheap (a tiny model on sim)
    "memory": ["--model", "tiny-llama", "--backend", "sim", "--steps", "0", "--seq-len", "64"],
    "time": ["--model", "tiny-llama", "--backend", "cpu", "--steps", "1", "--warmup", "0"],
    "fit": ["--model", "tiny-llama", "--gpu", "1GiB"],
    "compare": ["base.jsonl", "base.jsonl"],
    "run": ["suite.yaml", "--out", "out/r.jsonl"],
    "validate": ["base.jsonl"],
}


@budget(40)
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_any_command_line_keeps_the_contract_and_writes_nothing_else(sandbox, capsys, data, command):
    (sandbox / "base.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    (sandbox / "suite.yaml").write_text("grid: {model: [tiny-llama], backend: [sim], seq_len: [64]}\n")
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(_options(command)), ARG_VALUES), max_size=4))
    argv = [command, *COMMANDS[command], *(x for pair in pairs for x in pair)]
    before = files_under(sandbox)
    code, err = run_cli(argv, capsys)
    assert_contract(code, err)
    outputs = {v for o, v in pairs if o in ("--json", "--md", "--markdown", "--junit", "--plot", "--out")}
    assert all(p in outputs or p.startswith("out/") for p in files_under(sandbox) - before), argv


# -- a few as real processes: what a user sees ----------------------------------------------------

@pytest.mark.parametrize("argv,content,message", [
    (["validate", "{f}"], (json.dumps(GOOD_ROW) + "\n").encode("utf-16"), "is not an ist-bench result row (not UTF-8)"),
    (["validate", "{f}"], (json.dumps({**GOOD_ROW, "wall_s": 10**400}) + "\n").encode(), "within int64, got 10**400"),
    pytest.param(["memory", "--backend", "sim", "--select", "ist", "--select-opt", "mu=nan"], None,
                 "mu must be a number in ASCII digits", marks=pytest.mark.slow),   # imports torch: ~10 s
], ids=["utf16-rows", "10**400-row", "nan-option"])
def test_a_real_process_answers_hostile_input_in_one_line(tmp_path, argv, content, message):
    path = tmp_path / "input"
    if content is not None:
        path.write_bytes(content)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", *[a.replace("{f}", str(path)) for a in argv]],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name for p in tmp_path.iterdir()} <= {"input"}
