"""The bad-input catalogue: every entry gets one line (< 300 characters) on stderr naming the problem
(and the valid choices where there are some), exit code 2, and no traceback."""

import json

import pytest

from ist_bench.cli import main

ROW = {"schema": 1, "kind": "memory", "case": {"model": "m", "method": {"name": "lora"}}, "status": "ok"}
JAMBA = {"model_type": "jamba", "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "attn_layer_period": 2,
         "attn_layer_offset": 1, "expert_layer_period": 100, "num_experts": 1}
FILES = {
    "gird.yaml": "name: x\ngird:\n  model: [tiny-llama]\n",
    "empty.yaml": "",
    "broken.yaml": "grid: [1, 2",
    "s.yaml": "grid: {model: [tiny-llama], backend: [sim]}\n",
    "schema2.jsonl": json.dumps({**ROW, "schema": 2}) + "\n",
    "broken.jsonl": "{\"schema\": 1, \"case\"\n" + json.dumps(ROW) + "\n",
    "nomodeltype.json": json.dumps({"hidden_size": 64}),
    "malformed.json": "{\"model_type\": ",
    "jamba.json": json.dumps(JAMBA),
    "alpaca.json": json.dumps([{"instruction": "x", "input": "", "output": "y"}]),
    "ok.jsonl": json.dumps(ROW) + "\n",
}

CATALOGUE = [
    (["memory", "--model", "llama-70b"], "unknown model 'llama-70b'; valid: bloomz-7b1, gemma2-9b"),
    (["memory", "--method", "prefix"], "unknown method 'prefix'; valid: full, lora, dora, adalora, series, parallel"),
    (["memory", "--select", "ist9"], "unknown selection policy 'ist9'; valid: none, rst, ist, ist-code, lisa"),
    (["memory", "--select", "rst", "--select-opt", "layers=0"], "--select rst: layers must be in (0, 1], got 0"),
    (["memory", "--select", "ist", "--select-opt", "beta=2"], "--select ist: beta must be in [0, 1], got 2"),
    (["memory", "--select", "ist", "--select-opt", "interval=0"], "--select ist: interval must be >= 1, got 0"),
    (["memory", "--select", "ist", "--select-opt", "tau=3"], "unknown option for --select ist 'tau'; valid: layers"),
    (["memory", "--select", "ist", "--method", "full"], "--select ist scales each layer's PEFT output and --method full"),
    (["memory", "--optimizer-state", "wipe"], "unknown optimizer-state policy 'wipe'; valid: keep, reset"),
    (["memory", "--model", "gpt2-small", "--seq-len", "2048"], "--seq-len 2048 is longer than gpt2-small's 1024"),
    (["memory", "--model", "bloomz-7b1", "--seq-len", "100000"], "bloomz-7b1 has no position limit (ALiBi)"),
    (["memory", "--seq-len", "1.5"], "argument --seq-len: invalid int value: '1.5'"),
    (["memory", "--capacity", "lots"], "cannot read 'lots' as a size; write e.g. 80GiB"),
    (["memory", "--capacity", "-5GiB"], "argument --capacity: expected one argument"),
    (["memory", "--backend", "tpu"], "unknown backend 'tpu'; valid: auto, sim, cpu, cuda"),
    (["memory", "--dtype", "int8"], "unknown dtype 'int8'; valid: bf16, fp16, fp32"),
    (["memory", "--attn", "flash"], "unknown attention implementation 'flash'; valid: eager, sdpa"),
    (["memory", "--batch", "0"], "batch must be >= 1, got 0"),
    (["memory", "--data", "{alpaca.json}"], "--data and --tokenizer go together"),
    (["memory", "--data", "nope.json", "--tokenizer", "nope.json"], "data file not found: nope.json"),
    (["memory", "--backend", "cpu", "--model", "llama-13b"], "llama-13b on --backend cpu needs about"),
    (["memory", "--model", "{nomodeltype.json}"], "no 'model_type' key"),
    (["memory", "--model", "{malformed.json}"], "malformed config file"),
    (["memory", "--model", "{jamba.json}", "--method", "full", "--select", "rst"],
     "cannot locate the transformer blocks of JambaForCausalLM"),
    (["memory", "--model", "{jamba.json}", "--method", "lora"], "unknown model family 'jamba'; valid: bloom, gemma"),
    (["memory", "--capacity", "80"], "cannot read '80' as a size"),
    (["memory", "--json", "{tmp}"], "cannot write results to"),
    (["time", "--backend", "cpu", "--model", "tiny-llama", "--rounds", "0", "--compare-select", "none,rst"],
     "--rounds must be >= 1"),
    (["run", "{s.yaml}", "--timeout", "-1"], "--timeout must be > 0 seconds, got -1"),
    (["time", "--backend", "sim", "--model", "tiny-llama"], "timing needs real compute"),
    (["time", "--backend", "cpu", "--model", "tiny-llama", "--compare-select", "rst,rst"], "two different policies"),
    (["run", "{gird.yaml}"], "unknown key 'gird' in suite"),
    (["run", "{empty.yaml}"], "has no cases"),
    (["run", "{broken.yaml}"], "malformed suite"),
    (["run", "nope.yaml"], "suite file not found: nope.yaml"),
    (["run", "{s.yaml}", "--resume", "--append"], "--resume and --append exclude each other"),
    (["run", "{s.yaml}", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["validate", "{schema2.jsonl}"], "has result schema 2; this ist-bench reads schema 1"),
    (["validate", "{broken.jsonl}"], "broken.jsonl:1 is not an ist-bench result row (not JSON)"),
    (["report", "missing.jsonl"], "results file not found: missing.jsonl"),
    (["compare", "{ok.jsonl}", "{ok.jsonl}", "--wall-factor", "0.9"], "--wall-factor is a slow-down factor >= 1"),
    (["fit", "--gpu", "titan"], "unknown GPU 'titan'; valid: rtx4090"),
    (["fit", "--gpu", "rtx4090", "--granularity", "0"], "--granularity must be >= 1, got 0"),
    (["memroy"], "argument COMMAND: invalid choice: 'memroy' (choose from 'memory'"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    import types

    import psutil
    # the host-RAM guard's verdict must not depend on the machine the tests run on: a 24 GiB one
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=24 << 30))
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("argv,message", CATALOGUE, ids=[" ".join(a)[:60] for a, _ in CATALOGUE])
def test_bad_input_is_one_short_line_and_exit_code_2(files, capsys, argv, message):
    subst = {"{tmp}": str(files), **{"{" + n + "}": str(files / n) for n in FILES}}
    argv = [subst.get(a, a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own errors leave through sys.exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and len(err) < 300 and "Traceback" not in err, err
    assert message in err, err


def test_the_catalogue_is_long_enough():
    assert len(CATALOGUE) >= 25


def test_debug_shows_the_traceback(capsys):
    from ist_bench.errors import UsageError
    with pytest.raises(UsageError):
        main(["memory", "--model", "llama-70b", "--debug"])
