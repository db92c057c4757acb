import json
import os
import re
import subprocess
import sys

import pytest

from ist_bench.cli import main


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
    for label in ("weights", "activations", "gradients", "optimizer state", "peak", "(synthetic)",
                  "eager attention", "checkpointing off", "batch 1 x 64 tokens"):
        assert label in text
    row = json.loads(out.read_text())
    # the 3 steps, then the candidate worst draws of one layer of 4: [0] and the top one (the steady step is the higher)
    assert row["status"] == "ok" and row["backend"] == "sim" and len(row["memory"]["steps"]) == 3 + 2
    assert [s["phase"] for s in row["memory"]["steps"]][-2:] == ["candidate", "steady"]
    assert row["case"]["method"] == {"name": "series", "bottleneck": 256}


def test_models_and_methods_list_what_exists(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llama-13b" in out and "6.74B" in out
    assert re.search(r"mixtral-8x7b\s+mixtral\s+MoE .* 46\.70B\s+12\.88B", out)  # total and active parameters
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "series" in out and "rst" in out


@pytest.mark.slow
def test_the_installed_command_runs_without_traceback_on_bad_input():
    proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", "memory", "--select-opt", "layers=0", "--select", "rst"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("ist-bench: error:")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("config,message", [
    ({"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}, "cannot build a config of model_type 'llama'"),
    ({"model_type": "llama", "vocab_size": "abc"}, "cannot build a config of model_type 'llama'"),
])
def test_config_json_with_bad_values_is_one_line(tmp_path, capsys, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["memory", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("yaml_text,message", [
    ("grid: {select: [{name: rst, layers: abc}]}", "--select rst: layers must be a number in ASCII digits (e.g. 0.5), got 'abc'"),
    ("grid: {select: [{layers: 0.5}]}", "a select mapping needs a policy name"),
    ("grid: {select_opts: [[1]]}", "select_opts must be dict, got [1]"),
    ("grid: {steps: ['3']}", "steps must be int, got '3'"),
    ("grid: {seq_len: [64.5]}", "seq_len must be int, got 64.5"),
    ("grid: {seed: [null]}", "seed must be int, got None"),
    ("grid: {model: [[a]]}", "model must be str, got ['a']"),
    ("grid: {method: [{name: lora, rank: 4}]}", "unknown method field 'rank'"),
    ("grid: {method: [{name: lora, r: four}]}", "r must be int, got 'four'"),
    ("grid: {capacity: [80]}", "capacity must be str or null, got 80"),
    ("defaults: [1, 2]\ngrid: {}", "'defaults' must be a mapping"),
    ("warmup: abc\ngrid: {}", "'warmup' must be an integer >= 0"),
])
def test_suite_values_of_the_wrong_type_are_one_line_errors(tmp_path, capsys, yaml_text, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml_text)
    assert main(["run", str(path), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_validate_reports_malformed_and_unpaired_results(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1]\n")
    assert main(["validate", str(bad)]) == 2
    assert "is not an ist-bench result row" in capsys.readouterr().err
    only_errors = tmp_path / "err.jsonl"
    case = {"model": "m", "method": {"name": "lora"}, "select": "none"}
    only_errors.write_text("\n".join(json.dumps({"kind": "memory", "backend": b, "status": "error", "case": case})
                                     for b in ("cuda", "sim")) + "\n")
    assert main(["validate", str(only_errors)]) == 0
    assert "none finished on both backends" in capsys.readouterr().out


HEAVY = ("torch", "transformers", "peft")
LIGHT_COMMANDS = [["--help"], ["--version"], ["models"], ["methods"], ["memory", "--help"], ["time", "--help"],
                  ["memory", "--steps", "abc"], ["memory", "--bogus"], ["memory", "--method", "prefix"],
                  ["memory", "--select", "ist9"], ["memory", "--model", "llama-70b"], ["memory", "--dtype", "int8"],
                  ["fit", "--help"], ["compare", "--help"], []]


def test_help_listings_and_bad_arguments_import_no_torch_transformers_or_peft():
    """Run each command in one fresh interpreter, in turn, and name the first that imports a heavy package."""
    code = ("import json, sys\nfrom ist_bench.cli import main\n"
            f"for argv in {LIGHT_COMMANDS!r}:\n"
            "    try:\n        code = main(argv)\n    except SystemExit as e:\n        code = e.code\n"
            f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "    print('RESULT', json.dumps([argv, code, heavy]), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stderr.splitlines() if line.startswith("RESULT ")]
    assert [r[0] for r in results] == LIGHT_COMMANDS, proc.stderr[-2000:]
    for argv, code, heavy in results:
        assert heavy == [], f"`ist-bench {' '.join(argv)}` imported {heavy}"
        assert code == (0 if argv in (["--help"], ["--version"], ["models"], ["methods"]) or argv[-1:] == ["--help"]
                        else 2), argv


def test_bad_names_answer_in_the_words_case_check_uses(capsys):
    assert main(["memory", "--select", "ist9"]) == 2
    assert "unknown selection policy 'ist9'; valid: none, rst, ist, ist-code, lisa, ila, lift" in capsys.readouterr().err
    assert main(["memory", "--model", "llama-70b"]) == 2
    assert "unknown model 'llama-70b'; did you mean llama2-70b" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ist-bench {version('ist-bench')}"


def test_help_shows_the_defaults_and_choices_of_the_case_and_the_registries(capsys):
    """--help reads `Case`'s and `MethodSpec`'s defaults and the registries' names (one source of truth)."""
    from ist_bench.methods import METHODS, MethodSpec
    from ist_bench.runner.case import OPTIM_IMPLS, QUANTS, Case
    from ist_bench.selection import POLICIES

    with pytest.raises(SystemExit):
        main(["memory", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    case, spec = Case(), MethodSpec()
    for shown in (f"(default {case.model})", f"(default {case.seq_len})", f"(default {spec.r})",
                  f"(default {spec.bottleneck})", f"(default {case.optim})", ", ".join(METHODS), ", ".join(POLICIES),
                  ", ".join(OPTIM_IMPLS), ", ".join(QUANTS)):
        assert shown in text, shown


@pytest.mark.slow
def test_zoo_summary_matches_the_models_built_on_meta():
    from ist_bench import zoo
    from ist_bench.zoo import build
    assert zoo.summary() == build.summarize(), "regenerate with ist_bench.zoo.build.write_summary()"


def test_compare_table_fits_80_columns_and_shows_the_change_in_percent(tmp_path):
    from test_compare import GiB, _memory_row, _time_row, _write

    base = _write(tmp_path / "b.jsonl", [_memory_row(), _time_row("none")])
    cur = _write(tmp_path / "c.jsonl", [_memory_row(activations=15 * GiB), _time_row("none", backward=95.0)])
    proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", "compare", base, cur, "--all"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    activations = next(line for line in lines if "steady activations" in line)
    assert "regressed" in activations and f"+{(15 - 14) / 14 * 100:.1f}%" in activations   # +7.1%
    backward = next(line for line in lines if "GPU busy backward" in line)
    assert f"+{(95 * 0.97 - 80 * 0.97) / (80 * 0.97) * 100:.1f}%" in backward   # the rows' busy backward ms
    assert next(line for line in lines if "steady weights" in line).split()[-1] == "0%"


def test_json_dash_writes_the_row_to_stdout_and_the_table_to_stderr(capsys):
    assert main(["memory", "--model", "tiny-llama", "--seq-len", "32", "--steps", "1", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1 and rows[0]["case"]["seq_len"] == 32 and rows[0]["status"] == "ok"
    assert "peak allocated (est.)" in err


def test_json_file_says_it_appends(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text('{"kept": true}\n')
    assert main(["memory", "--model", "tiny-llama", "--seq-len", "32", "--steps", "1", "--json", str(out)]) == 0
    assert f"appended 1 row to {out}" in capsys.readouterr().out
    assert out.read_text().splitlines()[0] == '{"kept": true}' and len(out.read_text().splitlines()) == 2


def test_validate_takes_markdown_like_compare_and_keeps_md_as_an_alias(tmp_path, capsys):
    for flag in ("--markdown", "--md"):
        md = tmp_path / f"v{flag}.md"
        assert main(["validate", "results/empty.jsonl", flag, str(md)]) == 0
        assert capsys.readouterr().out == md.read_text() + "\n"
    assert "--md" not in subprocess.run([sys.executable, "-m", "ist_bench.cli", "validate", "--help"],
                                        capture_output=True, text=True, timeout=60).stdout.replace("--markdown", "")


def test_a_simulated_oom_says_where_and_how_much_in_human_units(tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["memory", "--model", "tiny-llama", "--seq-len", "1024", "--capacity", "70MiB", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["status"] == "oom"
    assert "at step 0, forward, in model.layers.0.self_attn: " in row["error"]
    assert "MiB needed" in row["error"] and "> capacity 70.0 MiB" in row["error"]
    assert f"> {70 * 2**20:,} bytes)" in row["error"]


def test_third_party_warnings_are_filtered_at_the_entry_point():
    """The known transformers/peft deprecation warning does not reach a user's stderr (an adapted model warns
    on every build without the filter)."""
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "ist_bench.cli", "memory", "--model", "tiny-llama",
                           "--seq-len", "32", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr


def test_a_suite_shows_an_oom_rows_failing_peak_not_the_steps_before_it(tmp_path, capsys):
    """An OOM in the steady step after an importance round: the table shows the peak the failing step
    reached (78 GiB on the H200's 70B cell), not the round's lower one."""
    import json

    from ist_bench.report.console import print_suite_progress
    from ist_bench.runner.case import Case
    from ist_bench.runner.suite import Suite

    case = Case(model="tiny-llama", backend="sim")
    row = {"kind": "memory", "case": case.to_dict(), "backend": "cuda", "status": "oom", "error": "OutOfMemoryError",
           "peak_reached": 78 * 2**30, "memory": {"summary": {"run_allocated_peak": 56 * 2**30}}}
    print_suite_progress(Suite("s", ["memory"], [case]), (r for r in [row]), tmp_path / "o.jsonl", 1)
    out = capsys.readouterr().out
    assert "78.00 GiB" in out and "56.00" not in out
    assert json.loads((tmp_path / "o.jsonl").read_text())["peak_reached"] == 78 * 2**30
