"""The bad-input catalogue: every entry gets one line (< 300 characters) on stderr naming the problem
(and the valid choices where there are some), exit code 2, and no traceback."""

import json

import pytest

from ist_bench.cli import main

ROW = {"schema": 1, "kind": "memory", "case": {"model": "m", "method": {"name": "lora"}}, "status": "ok",
       "memory": {"summary": {"peak": {"first": 1, "max": 1}}}}
# BART's causal LM is its decoder (3 blocks) while num_hidden_layers names the encoder's 2: no list of 2 blocks
BART = {"model_type": "bart", "vocab_size": 64, "d_model": 32, "encoder_layers": 2, "decoder_layers": 3,
        "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}
XLM = {"model_type": "xlm", "vocab_size": 64, "emb_dim": 32, "n_layers": 2, "n_heads": 2, "max_position_embeddings": 2048}   # asks .item() of lengths
FILES = {
    "gird.yaml": "name: x\ngird:\n  model: [tiny-llama]\n",
    "empty.yaml": "",
    "broken.yaml": "grid: [1, 2",
    "s.yaml": "grid: {model: [tiny-llama], backend: [sim]}\n",
    "schema2.jsonl": json.dumps({**ROW, "schema": 2}) + "\n",
    "broken.jsonl": "{\"schema\": 1, \"case\"\n" + json.dumps(ROW) + "\n",
    "nomodeltype.json": json.dumps({"hidden_size": 64}),
    "malformed.json": "{\"model_type\": ",
    "bart.json": json.dumps(BART),
    "xlm.json": json.dumps(XLM),
    "alpaca.json": json.dumps([{"instruction": "x", "input": "", "output": "y"}]),
    "ok.jsonl": json.dumps(ROW) + "\n",
    "nostatus.jsonl": json.dumps({k: v for k, v in ROW.items() if k != "status"}) + "\n",
    "nocase.jsonl": json.dumps({k: v for k, v in ROW.items() if k != "case"}) + "\n",
    "nomemory.jsonl": json.dumps({k: v for k, v in ROW.items() if k != "memory"}) + "\n",
    "huge.jsonl": json.dumps({**ROW, "memory": {"summary": {"peak": {"first": 1, "max": 10**400}}}}) + "\n",
    "inf.jsonl": json.dumps({**ROW, "memory": {"summary": {"peak": {"first": 1, "max": 1e400}}}}) + "\n",   # Infinity
    "zerolayers.json": json.dumps({"model_type": "llama", "num_hidden_layers": 0}),
    "neghidden.json": json.dumps({"model_type": "llama", "hidden_size": -64}),
    "millionlayers.json": json.dumps({"model_type": "llama", "num_hidden_layers": 10**6}),
    "zerovocab.json": json.dumps({"model_type": "llama", "vocab_size": 0}),
    "heads.json": json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 5}),
    "kvheads.json": json.dumps({"model_type": "llama", "num_key_value_heads": 5}),
    "gpt2layers.json": json.dumps({"model_type": "gpt2", "n_layer": -1}),
    "notype.yaml": "kind: memory\nwarmup: 1.5\ngrid: {model: [tiny-llama]}\n",
    "nankind.yaml": "kind: [memory, train]\ngrid: {model: [tiny-llama]}\n",
    "bigint.yaml": "grid: {model: [tiny-llama], steps: [" + "9" * 5000 + "]}\n",
    "nanlr.yaml": "grid: {model: [tiny-llama], backend: [sim], lr: [.nan]}\n",
    "zerolr.yaml": "grid: {model: [tiny-llama], backend: [sim], lr: [0]}\n",
    "nanmu.yaml": "grid: {model: [tiny-llama], backend: [sim], select: [{name: ist, mu: .inf}]}\n",
    "explode.yaml": "grid: {" + ", ".join(f"k{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for i in range(12)) + "}\n",
    "alpaca2.json": json.dumps([{"instruction": "hello world", "input": "", "output": "x"}]),
}
BINARY = {   # written as bytes: encodings a suite must not be in
    "utf16.yaml": "grid: {model: [tiny-llama]}\n".encode("utf-16"),
    "latin1.yaml": "name: caf\xe9\ngrid: {model: [tiny-llama]}\n".encode("latin-1"),
}

CATALOGUE = [
    (["memory", "--model", "llama-70b"], "unknown model 'llama-70b'; did you mean llama2-70b"),
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
    (["memory", "--model", "{bart.json}", "--method", "full", "--select", "rst"],
     "cannot locate the transformer blocks of bart: no list of 2 blocks"),
    (["memory", "--model", "{xlm.json}", "--method", "lora"], "sim cannot run"),
    (["memory", "--capacity", "80"], "cannot read '80' as a size"),
    (["memory", "--json", "{tmp}"], "cannot write results to"),
    (["time", "--backend", "cpu", "--model", "tiny-llama", "--rounds", "0", "--compare-select", "none,rst"],
     "--rounds must be >= 1"),
    (["run", "{s.yaml}", "--timeout", "-1"], "--timeout must be > 0 seconds, got -1"),
    (["time", "--backend", "sim", "--model", "tiny-llama", "--gpu", "h300"], "unknown GPU 'h300'; valid: a10g"),
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
    (["fit", "--gpu", "titan"], "unknown GPU 'titan'; valid: a10g, l4, rtx4090"),
    (["fit", "--gpu", "rtx4090", "--granularity", "0"], "--granularity must be >= 2 (the shortest sequence a step takes), got 0"),
    (["memroy"], "argument COMMAND: invalid choice: 'memroy' (choose from 'memory'"),
    # issue 17: hostile input files and values, each a schema error naming the field
    (["run", "{utf16.yaml}"], "is UTF-16/32 text; save it as UTF-8"),
    (["run", "{latin1.yaml}"], "is not UTF-8 (invalid byte at offset 9)"),
    (["run", "{notype.yaml}"], "'warmup' must be an integer >= 0"),
    (["run", "{nankind.yaml}"], "'kind' must be memory, time (or a list of both), got ['memory', 'train']"),
    (["run", "{bigint.yaml}"], "malformed suite"),
    (["run", "{nanlr.yaml}"], "nanlr.yaml: grid.lr.0 must be a finite number, got nan"),
    (["run", "{zerolr.yaml}"], "lr must be a finite number > 0, got 0"),
    (["run", "{nanmu.yaml}"], "nanmu.yaml: grid.select.0.mu must be a finite number, got inf"),
    (["run", "{explode.yaml}"], "expands to 1,000,000,000,000 cases; at most 10,000"),
    (["validate", "{nostatus.jsonl}"], "nostatus.jsonl:1: status is missing"),
    (["validate", "{nocase.jsonl}"], "nocase.jsonl:1 is not an ist-bench result row"),
    (["report", "{nomemory.jsonl}"], "nomemory.jsonl:1: a finished memory row needs its 'memory' figures"),
    (["compare", "{ok.jsonl}", "{huge.jsonl}"], "huge.jsonl:1: memory.summary.peak.max must be a number within int64, "
                                                "got 10**400"),
    (["baseline", "update", "{inf.jsonl}"], "inf.jsonl:1: memory.summary.peak.max must be a finite number, got inf"),
    (["memory", "--backend", "sim", "--model", "{zerolayers.json}"], "num_hidden_layers must be >= 1, got 0"),
    (["memory", "--backend", "sim", "--model", "{neghidden.json}"], "hidden_size must be >= 1, got -64"),
    (["memory", "--backend", "sim", "--model", "{millionlayers.json}"], "num_hidden_layers must be <= 256, got 1000000"),
    (["memory", "--backend", "sim", "--model", "{zerovocab.json}"], "vocab_size must be >= 1, got 0"),
    (["memory", "--backend", "sim", "--model", "{heads.json}"], "num_attention_heads (5) must divide hidden_size (64)"),
    (["memory", "--backend", "sim", "--model", "{kvheads.json}"], "num_key_value_heads (5) must divide"),
    (["memory", "--backend", "sim", "--model", "{gpt2layers.json}"], "n_layer must be >= 1, got -1"),
    (["memory", "--backend", "sim", "--data", "{alpaca2.json}", "--tokenizer", "{empty_tokenizer.json}"],
     "yields no tokens"),
    (["memory", "--backend", "sim", "--batch", "1000000000"], "batch must be <= 8388608, got 1000000000"),
    (["memory", "--backend", "sim", "--batch", "8193", "--seq-len", "2048"], "batch x seq_len must be <= 16,777,216"),
    (["memory", "--backend", "sim", "--select", "ist", "--select-opt", "mu=nan"], "--select ist: mu must be a number in ASCII digits"),
    (["memory", "--backend", "sim", "--select", "rst", "--select-opt", "layers=inf"], "--select rst: layers must be"),
    (["memory", "--backend", "sim", "--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
    (["memory", "--backend", "sim", "--seed", "-1"], "seed must be >= 0, got -1"),
    (["memory", "--backend", "sim", "--capacity", "9" * 400 + "GiB"], "is beyond any memory; at most 8 EiB"),
    (["compare", "{ok.jsonl}", "{ok.jsonl}", "--memory-floor", "1" + "0" * 400 + "B"], "is beyond any memory"),
    (["run", "{s.yaml}", "--timeout", "nan"], "--timeout must be > 0 seconds, got nan"),
    (["run", "{s.yaml}", "--timeout", "inf"], "--timeout must be > 0 seconds, got inf"),
    (["compare", "{ok.jsonl}", "{ok.jsonl}", "--memory-pct", "nan"], "--memory-pct must be a finite number >= 0"),
    (["compare", "{ok.jsonl}", "{ok.jsonl}", "--device-factor", "nan"], "--device-factor is a slow-down factor"),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    import types

    import psutil
    # the host-RAM guard's verdict must not depend on the machine the tests run on: a 24 GiB one
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=24 << 30))
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    for name, data in BINARY.items():
        (tmp_path / name).write_bytes(data)
    from tokenizers import Tokenizer, models
    Tokenizer(models.BPE()).save(str(tmp_path / "empty_tokenizer.json"))   # no vocabulary: no tokens at all
    return tmp_path


@pytest.mark.parametrize("argv,message", CATALOGUE, ids=[" ".join(a)[:60] for a, _ in CATALOGUE])
def test_bad_input_is_one_short_line_and_exit_code_2(files, capsys, argv, message):
    subst = {"{tmp}": str(files), **{"{" + n + "}": str(files / n) for n in [*FILES, *BINARY, "empty_tokenizer.json"]}}
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
