"""Issue 27's hostile campaign, generated (hypothesis, derandomized; the slow tier): 360 inputs across
command-line flags, suites, results files, model configs, data and tokenizer files, and the Python API.

The contract, everywhere: exit 0, 1, 2 or 130; exit 2 with one line; no traceback; no file written outside
the command's outputs; no output written over an input; and a bad model config, data file or option is
exit 2 before any work (never an exit-1 error row after it). Where the work runs for real (configs, data:
a tiny model, 64 tokens, on sim), it is the real work; elsewhere it is stubbed (test_fuzz_inputs' sandbox).
COUNTS collects how many inputs each part drew; the last test checks the total.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import test_fuzz_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_inputs import (
    ARG_VALUES,
    GOOD_ROW,
    JSON_VALUES,
    WILD_NUMBERS,
    _options,
    assert_contract,
    files_under,
    run_cli,
)

from ist_bench.errors import UsageError

pytestmark = pytest.mark.slow
sandbox = pytest.fixture(test_fuzz_inputs.sandbox.__wrapped__)   # the same fixture, as this module's
COUNTS: Counter = Counter()
ROOT = Path(__file__).resolve().parent.parent


def budget(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


# -- 1. command-line flags (stubbed work): every command, hostile values, outputs aimed at inputs -------
HOSTILE = ARG_VALUES | st.sampled_from([
    "base.jsonl", "suite.yaml", "./base.jsonl", "out/../base.jsonl", "link.jsonl", "fifo", "/dev/null", ".", "..",
    "out/\x1b[2Jx.md", "out/a\nb.md", "mu=５", "mu=1_0", "interval=99999999999999999999999", "n_candidates=1000000000",
    "0GiB", "0.5B", "1MiB", "auto", "100000", "4097", "1", "nf4", "int8", "paged-adamw8bit"])
COMMANDS = {
    "memory": ["--model", "tiny-llama", "--backend", "sim", "--steps", "0", "--seq-len", "64"],
    "fit": ["--model", "tiny-llama", "--gpu", "1GiB"],
    "compare": ["base.jsonl", "base.jsonl"],
    "run": ["suite.yaml", "--out", "out/r.jsonl"],
    "validate": ["base.jsonl"],
    "report": ["base.jsonl", "--out", "out/rep"],
    "baseline": ["update", "base.jsonl", "--dir", "out/b"],
}


@budget(140)
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_any_flag_of_any_command_keeps_the_contract(sandbox, capsys, data, command):
    COUNTS["flags"] += 1
    (sandbox / "base.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    (sandbox / "suite.yaml").write_text("grid: {model: [tiny-llama], backend: [sim], seq_len: [64]}\n")
    victim = sandbox / "victim.txt"
    victim.write_text("keep")
    if not (sandbox / "link.jsonl").exists():
        (sandbox / "link.jsonl").symlink_to(victim)
        os.mkfifo(sandbox / "fifo")
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(_options(command)), HOSTILE), max_size=4))
    argv = [command, *COMMANDS[command], *(x for pair in pairs for x in pair)]
    inputs = {p: (sandbox / p).read_bytes() for p in ("base.jsonl", "suite.yaml")}
    before = files_under(sandbox)
    code, err = run_cli(argv, capsys)
    assert_contract(code, err)
    assert victim.read_text() == "keep", argv                     # nothing written through a link
    for p, content in inputs.items():
        if (sandbox / p).read_bytes() != content:                  # an input changes only by appending rows
            assert command in ("run", "memory") and (sandbox / p).read_bytes().startswith(content), argv
            assert p == "base.jsonl", argv
    outputs = {v for o, v in pairs if o in ("--json", "--markdown", "--md", "--junit", "--plot", "--out",
                                            "--timeline", "--timeline-worst", "--dir")}
    new = files_under(sandbox) - before
    assert all(p in outputs or p.startswith("out/") or any(p.startswith(o) for o in outputs) for p in new), (argv, new)
    assert not any(any(ord(c) < 32 for c in p) for p in new), new  # no name with a control character


# -- 2. results files: generated rows, read by report / compare / validate / baseline ---------------------
def _mutate_row(draw) -> dict:
    row = json.loads(json.dumps(GOOD_ROW))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["summary", "case", "top", "time"]))
        if where == "summary":
            fig = draw(st.sampled_from(sorted(row["memory"]["summary"])))
            key = draw(st.sampled_from(["first", "steady", "max", "min"]))
            value = draw(WILD_NUMBERS | st.integers(-(2**40), 2**40) | st.text(max_size=4) | st.none())
            if isinstance(row["memory"]["summary"][fig], dict):
                row["memory"]["summary"][fig][key] = value
            else:
                row["memory"]["summary"][fig] = value
        elif where == "case":
            row["case"][draw(st.sampled_from(["seed", "seq_len", "model", "select_opts", "backend"]))] = draw(JSON_VALUES)
        elif where == "top":
            row[draw(st.sampled_from(["schema", "status", "kind", "backend", "wall_s"]))] = draw(JSON_VALUES)
        else:
            steps = draw(st.lists(st.floats(-10, 1e3) | st.just(0.0), min_size=0, max_size=5))
            row.update(kind="time", time={"phases_ms": {"step": {"median": draw(st.floats(-1, 1e3))}},
                                          "steps_ms": steps,
                                          "device": {"busy_ms": draw(st.dictionaries(
                                              st.sampled_from(["forward", "backward", "optimizer", "step"]),
                                              st.floats(-1, 100), max_size=4))}})
    return row


ROWS = st.composite(lambda draw: [_mutate_row(draw) for _ in range(draw(st.integers(1, 3)))])()


@budget(70)
@given(rows=ROWS, command=st.sampled_from(["report", "compare", "validate", "baseline"]))
def test_any_results_file_is_read_or_refused_and_nothing_half_written(sandbox, capsys, rows, command):
    COUNTS["results"] += 1
    path = sandbox / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (sandbox / "good.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    argv = {"report": ["report", str(path), "--out", "out/rep"],
            "compare": ["compare", "good.jsonl", str(path)],
            "validate": ["validate", str(path)],
            "baseline": ["baseline", "update", str(path), "--dir", "out/b"]}[command]
    before = files_under(sandbox)
    code, err = run_cli(argv, capsys)
    assert_contract(code, err)
    if code == 2:
        assert files_under(sandbox) == before, "a refused command left files"


# -- 3. model configs: mutations of a real config, run for real (tiny, sim) ------------------------------
BASE_CONFIG = {k: v for k, v in json.loads((ROOT / "ist_bench/zoo/configs/tiny-llama.json").read_text()).items()
               if k != "_ist_bench"}
CONFIG_VALUES = (WILD_NUMBERS | st.integers(-5, 5000) | st.sampled_from(["silu", "nope", "linear", "", "llama"]) |
                 st.fixed_dictionaries({"rope_type": st.sampled_from(["linear", "junk", "dynamic"]),
                                        "factor": WILD_NUMBERS}) | st.none())


@budget(45)
@given(changes=st.dictionaries(st.sampled_from(["hidden_size", "num_attention_heads", "num_key_value_heads",
                                                "intermediate_size", "num_hidden_layers", "vocab_size",
                                                "max_position_embeddings", "hidden_act", "rope_scaling",
                                                "head_dim", "rms_norm_eps", "model_type"]),
                               CONFIG_VALUES, max_size=3),
       drop=st.sets(st.sampled_from(["num_hidden_layers", "vocab_size", "hidden_act"]), max_size=1))
def test_any_model_config_is_measured_or_refused_before_any_work(tmp_path, monkeypatch, capsys, changes, drop):
    COUNTS["configs"] += 1
    monkeypatch.chdir(tmp_path)
    config = {k: v for k, v in {**BASE_CONFIG, **changes}.items() if k not in drop}
    (tmp_path / "c.json").write_text(json.dumps(config, allow_nan=True))
    code, err = run_cli(["memory", "--model", "c.json", "--backend", "sim", "--steps", "0", "--seq-len", "64"], capsys)
    assert_contract(code, err)
    assert code in (0, 2), (code, err, config)     # a bad config is bad input, never a failed case


# -- 4. data and tokenizer files, run for real -----------------------------------------------------------
SAMPLES = st.lists(st.fixed_dictionaries({"instruction": st.text(max_size=30) | JSON_VALUES},
                                         optional={"input": st.text(max_size=20), "output": st.text(max_size=40)}),
                   max_size=4) | JSON_VALUES


@budget(35)
@given(samples=SAMPLES, mode=st.sampled_from(["pack", "sample", "stream"]),
       tok=st.sampled_from(["good", "missing", "folder", "garbage", "empty"]))
def test_any_data_and_tokenizer_file_is_used_or_refused_before_any_work(tmp_path, monkeypatch, capsys,
                                                                         tokenizer_file, samples, mode, tok):
    COUNTS["data"] += 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps(samples))
    tok_path = {"good": str(tokenizer_file), "missing": "nope.json", "folder": str(tmp_path)}.get(tok)
    if tok_path is None:
        (tmp_path / "t.json").write_text("{" if tok == "garbage" else "")
        tok_path = "t.json"
    code, err = run_cli(["memory", "--model", "tiny-llama", "--backend", "sim", "--steps", "0", "--seq-len", "64",
                         "--data", "d.json", "--tokenizer", tok_path, "--data-mode", mode], capsys)
    assert_contract(code, err)
    assert code in (0, 2), (code, err)


# -- 5. the Python API ---------------------------------------------------------------------------------
API_VALUES = WILD_NUMBERS | st.integers(-3, 40) | st.text(max_size=4) | st.none() | st.booleans()


@budget(70)
@given(name=st.sampled_from(["rst", "ist", "ist-code", "lisa", "ila", "lift"]),
       kwargs=st.dictionaries(st.sampled_from(["seed", "layers", "beta", "mu", "interval", "gamma", "n_candidates",
                                               "warmup", "freeze", "order", "eval_batch", "candidates"]),
                              API_VALUES, max_size=3),
       active=st.none() | st.lists(st.integers(-3, 10) | API_VALUES, max_size=5) | API_VALUES,
       state=st.fixed_dictionaries({"importance": st.lists(WILD_NUMBERS | st.floats(-5, 5), max_size=6)})
       | JSON_VALUES)
def test_the_python_api_refuses_what_the_cli_refuses(name, kwargs, active, state):
    """Constructors, a forced draw and a state to resume: each works, or raises the CLI's one-line UsageError."""
    COUNTS["api"] += 1
    from ist_bench.selection import POLICIES

    seed = kwargs.pop("seed", 0)
    try:
        policy = POLICIES[name](seed=seed, **kwargs)
    except UsageError:
        return
    policy.n_layers = 4
    policy.setup()
    try:
        policy.check_draw(active)
        assert active is None or (set(active) <= {0, 1, 2, 3} and len(set(active)) == len(active))
    except UsageError:
        pass
    if hasattr(policy, "importance"):
        try:
            policy.load_state_dict(state)
            assert len(policy.importance) == 4 and all(map(math.isfinite, policy.importance))
        except UsageError:
            pass


def test_the_campaign_drew_at_least_300_inputs():
    """Runs after the parts above (file order): the total the closing note reports."""
    total = sum(COUNTS.values())
    print(f"campaign: {dict(COUNTS)}, total {total}")
    assert total >= 300, COUNTS
