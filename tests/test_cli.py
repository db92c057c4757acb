import json
import subprocess
import sys

import pytest

from ist_bench.cli import main


@pytest.mark.parametrize("argv,message", [
    (["memory", "--model", "llama-70b"], "unknown model 'llama-70b'; valid: bloomz-7b1, gpt2-large"),
    (["memory", "--method", "prefix"], "unknown method 'prefix'; valid: full, lora, dora, adalora, series, parallel"),
    (["memory", "--select", "ist9"], "unknown selection policy 'ist9'; valid: none, rst"),
    (["memory", "--select", "rst", "--layers", "0"], "--layers must be a fraction in (0, 1], got 0"),
    (["memory", "--select", "rst", "--layers", "1.5"], "--layers must be a fraction in (0, 1], got 1.5"),
    (["memory", "--model", "gpt2-small", "--seq-len", "2048"], "--seq-len 2048 is longer than gpt2-small's 1024 positions"),
    (["memory", "--model", "tiny-llama", "--data", "nope.json", "--tokenizer", "nope.json"], "data file not found: nope.json"),
    (["memory", "--backend", "tpu"], "unknown backend 'tpu'; valid: auto, sim, cpu, cuda"),
    (["memory", "--dtype", "int8"], "unknown dtype 'int8'; valid: bf16, fp16, fp32"),
    (["memory", "--capacity", "lots"], "cannot read 'lots' as a size"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_malformed_config_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text("{\"model_type\": ")
    assert main(["memory", "--model", str(bad)]) == 2
    assert "malformed config file" in capsys.readouterr().err


def test_cuda_backend_without_a_gpu_says_so(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["memory", "--backend", "cuda"]) == 2
    assert "backend 'cuda' is not available" in capsys.readouterr().err


def test_memory_prints_a_table_and_writes_the_json_row(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["memory", "--model", "tiny-llama", "--method", "series", "--select", "rst",
                 "--seq-len", "64", "--steps", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("weights", "activations", "gradients", "optimizer state", "peak", "data=synthetic",
                  "attn_implementation=eager", "gradient_checkpointing=False"):
        assert label in text
    row = json.loads(out.read_text())
    assert row["status"] == "ok" and row["backend"] == "sim" and len(row["memory"]["steps"]) == 3
    assert row["case"]["method"] == {"name": "series", "bottleneck": 256}


def test_models_and_methods_list_what_exists(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llama-13b" in out and "6,738.4M" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "series" in out and "rst" in out


def test_the_installed_command_runs_without_traceback_on_bad_input():
    proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", "memory", "--layers", "0", "--select", "rst"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("ist-bench: error:")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
