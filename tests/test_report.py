"""`ist-bench report`: the right numbers in the right cells, valid images; `run --resume` loses nothing."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ist_bench.cli import main
from ist_bench.results import read_rows

GiB = 1 << 30
ROOT = Path(__file__).resolve().parent.parent   # tests may chdir: paths into the repository are absolute


def mem_row(model, method, select="none", peak=20.0, weights=12.5, backend="cuda", status="ok", reserved=None):
    at_peak = {"weights": int(weights * GiB), "activations": int((peak - weights) * GiB), "gradients": 0,
               "optimizer": 0, "method_state": 0, "temporary": 0, "rounding": 0, "workspace": 0}
    summary = {"weights": {"first": int(weights * GiB)}, "run_peak": int(peak * GiB),
               "run_allocated_peak": int(peak * GiB)}
    if reserved:
        summary["run_reserved_peak"] = int(reserved * GiB)
    return {"schema": 1, "kind": "memory", "backend": backend, "status": status,
            "case": {"model": model, "method": {"name": method}, "select": select, "select_opts": {},
                     "seq_len": 1024, "backend": backend},
            "memory": {"summary": summary, "steps": [{"phase": "steady", "at_peak": at_peak,
                                                      "top_activations": {"model.layers.*.mlp": GiB}}]},
            "settings": {"data": "synthetic"}, "provenance": {"gpu": "Test GPU 80GB"},
            "params": int(weights * GiB) // 2,   # bf16: the base model's weights are params x 2 bytes
            **({"peak_reached": int(90 * GiB)} if status == "oom" else {})}


def time_row(method, select, fwd, bwd, s100, importance=0.0, reward=0.005):
    phases = {p: {"median": v, "mean": v, "n": 100} for p, v in
              (("forward", fwd), ("backward", bwd), ("optimizer", 1.0), ("step", fwd + bwd + 1))}
    return {"schema": 1, "kind": "time", "backend": "cuda", "status": "ok",
            "case": {"model": "llama-7b", "method": {"name": method}, "select": select, "select_opts": {}},
            "time": {"phases_ms": phases, "s_per_100_iter": s100, "importance_ms_per_iter": importance},
            "provenance": {"gpu": "Test GPU 80GB"},
            "selection": {"policy": {"name": select},
                          "history": [{"step": s, "active": [s % 4], "importance": [0.1 * s, 0, -0.1 * s, 0]}
                                      for s in range(20)] if select == "ist" else [],
                          "rounds": [{"step": 10, "candidates": [[0, 1], [2, 3]], "losses": [2.0, 2.1],
                                      "rewards": [reward, -reward]}] if select == "ist" else []}}


@pytest.fixture
def results(tmp_path):
    rows = [mem_row("llama-7b", "lora", peak=27.0, reserved=28.0), mem_row("llama-7b", "lora", "ist", peak=21.6),
            mem_row("llama-7b", "full", status="oom"),
            time_row("lora", "none", 60.0, 80.0, 14.2), time_row("full", "lisa", 50.0, 90.0, 14.0),
            time_row("lora", "ist", 60.0, 70.0, 13.9, importance=4.5)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_puts_ours_and_the_papers_numbers_in_the_right_cells(results, tmp_path, capsys):
    out = tmp_path / "rep" / "t"
    assert main(["report", str(results), "--out", str(out)]) == 0
    md = (tmp_path / "rep" / "t.md").read_text()
    # Table 1: weights 12.5 vs the paper's 14; LoRA 27.0 vs 24 (1.12x); LoRA+IST 21.6 vs 20 (1.08x); full OOM
    row = next(line for line in md.splitlines() if line.startswith("| llama-7b"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in md.splitlines()[md.splitlines().index(row) - 2].strip("|").split("|")]
    by = dict(zip(header, cells, strict=True))
    assert by["weights"] == "12.5 / 14 (0.89x)"
    assert by["lora"] == "27.0 / 24 (1.12x)" and by["lora+ist"] == "21.6 / 20 (1.08x)"
    assert by["full"] == "OOM / 60"
    # the saving a policy brings: 1 - 21.6/27 = 20%; above the weights 1 - 9.1/14.5 = 37.2%
    assert "20.0% of the peak, 37.2% of the memory above the base model's weights" in md
    # Table 13: forward means and s/100 iter, ours / paper
    assert "60.0 / 135 (0.44x)" in md and "13.9 / 32.6 (0.43x)" in md and "50.0 / 101 (0.50x)" in md
    csv = pd.read_csv(tmp_path / "rep" / "t.csv")
    lora = csv[(csv["column"] == "lora")].iloc[0]
    assert lora["allocated peak (GiB)"] == pytest.approx(27.0) and lora["reserved peak (GiB)"] == pytest.approx(28.0)
    assert lora["paper (GiB)"] == 24
    tex = (tmp_path / "rep" / "t.tex").read_text()
    # LaTeX: one column per model (a page fits it), ours / paper without the ratio
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"lora & 27.0 / 24 \\" in tex
    assert "lora+ist" in tex and r"\_" not in "lora+ist"
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["t-cuda-breakdown.png", "t-cuda-savings.png", "t-importance.png", "t-time.png"]
    from PIL import Image
    for name in pngs:
        with Image.open(tmp_path / "rep" / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_report_says_which_of_our_figures_is_closest_to_the_paper(results, tmp_path):
    main(["report", str(results), "--out", str(tmp_path / "t")])
    md = (tmp_path / "t.md").read_text()
    # allocated: 27/24 and 21.6/20 -> mean |r-1| 0.1; reserved: 28/24 only -> 0.167
    assert "Closest: **allocated peak** on cuda" in md


def _suite(tmp_path, n=6):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nkind: memory\ndefaults: {steps: 1, seq_len: 32, model: tiny-llama}\n"
                 f"grid:\n  seed: {list(range(n))}\n  method: [lora]\n  backend: [sim]\n")
    return f


@pytest.mark.slow
def test_a_run_killed_midway_resumes_without_losing_or_redoing_a_case(tmp_path):
    suite, out = _suite(tmp_path), tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "ist_bench.cli", "run", str(suite), "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err
    first = read_rows(out)
    assert 2 <= len(first) < 6
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    rows = read_rows(out)
    seeds = [r["case"]["seed"] for r in rows]
    assert sorted(seeds) == list(range(6))                   # every case once: none lost, none redone
    assert rows[: len(first)] == first                       # the finished rows are untouched


@pytest.mark.slow
def test_run_never_writes_into_an_old_file_unless_told(tmp_path, capsys, monkeypatch):
    suite, out = _suite(tmp_path, n=1), tmp_path / "o.jsonl"
    out.write_text("")
    assert main(["run", str(suite), "--out", str(out)]) == 2
    assert "exists; pass --resume" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite)]) == 0 and main(["run", str(suite)]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["s.2.jsonl", "s.jsonl"]


def _report(tmp_path, rows, name="t"):
    """Report `rows` in tmp_path/name (run there, so every report names its input `rows.jsonl`)."""
    import contextlib
    (tmp_path / name).mkdir()
    with contextlib.chdir(tmp_path / name):
        Path("rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert main(["report", "rows.jsonl", "--out", "out/r"]) == 0
    return {p.name: p.read_bytes() for p in sorted((tmp_path / name / "out").iterdir())}


def _table1_cells(md: str, model: str) -> dict:
    lines = md.splitlines()
    row = next(line for line in lines if line.startswith(f"| {model} "))
    header = lines[lines.index(row) - 2]
    return dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")],
                    strict=True))


def test_weights_are_the_base_models_whatever_the_order_and_a_report_is_the_same_for_shuffled_rows(tmp_path):
    import random
    params = 6_738_415_616                                  # LLaMA-7B: 12.55 GiB in bf16
    lora = mem_row("llama-7b", "lora", peak=27.6, weights=12.76)          # adapter weights included
    full = mem_row("llama-7b", "full", peak=50.4, weights=12.55)
    ist = mem_row("llama-7b", "lora", "ist", peak=25.1, weights=12.76)
    for r in (lora, full, ist):
        r["params"] = params
    rows = [lora, full, ist, time_row("lora", "none", 60.0, 80.0, 14.2), time_row("lora", "ist", 60.0, 70.0, 13.9)]
    first = _report(tmp_path, rows, "a")
    assert _table1_cells(first["r.md"].decode(), "llama-7b")["weights"] == f"{params * 2 / GiB:.1f} / 14 (0.90x)"
    csv = pd.read_csv(tmp_path / "a" / "out" / "r.csv").set_index("column")
    assert csv.loc["lora", "adapter weights (GiB)"] == pytest.approx(12.76 - params * 2 / GiB, abs=1e-4)
    assert csv.loc["full", "adapter weights (GiB)"] == pytest.approx(12.55 - params * 2 / GiB, abs=1e-4)
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert _report(tmp_path, shuffled, f"s{seed}") == first


def test_a_cell_listed_twice_is_shown_and_counted_once(tmp_path):
    short = mem_row("llama-7b", "lora", peak=99.0)
    short["case"]["steps"] = 2
    long = mem_row("llama-7b", "lora", peak=27.0)
    long["case"]["steps"] = 4                              # the longer run stands for the cell
    rows = [long, short, long, mem_row("llama-7b", "lora", "ist", peak=21.6)]
    md = _report(tmp_path, rows)["r.md"].decode()
    assert "(4 rows, 2 cells; 2 rows repeat cells shown once" in md
    assert _table1_cells(md, "llama-7b")["lora"] == "27.0 / 24 (1.12x)"
    # the figure match scores 2 cells (lora 27/24, lora+ist 21.6/20), not 4
    assert "| cuda      | allocated peak |       2 |" in md


def test_importance_is_drawn_only_when_the_rewards_carry_signal(tmp_path):
    noise = [time_row("lora", "ist", 60.0, 70.0, 13.9, reward=1e-5)]
    files = _report(tmp_path, noise, "noise")
    assert "r-importance.png" not in files
    assert "Not drawn: the largest |reward| of llama-7b lora+ist on cuda is 1.0e-05 < 0.001" in files["r.md"].decode()
    files = _report(tmp_path, [time_row("lora", "ist", 60.0, 70.0, 13.9, reward=0.01)], "signal")
    assert "r-importance.png" in files and "largest |reward| 1.0e-02" in files["r.md"].decode()
    short = time_row("lora", "ist", 60.0, 70.0, 13.9, reward=0.01)
    short["selection"]["history"] = short["selection"]["history"][:5]   # a memory case's few steps
    files = _report(tmp_path, [short], "short")
    assert "r-importance.png" not in files and "What IST learned" not in files["r.md"].decode()


def test_a_sim_cell_no_gpu_validation_covers_is_marked(tmp_path):
    rows = [mem_row("llama-7b", "lora", peak=27.6, backend="sim"), mem_row("llama-7b", "dora", peak=28.0, backend="sim")]
    md = _report(tmp_path, rows)["r.md"].decode()
    cells = _table1_cells(md, "llama-7b")
    assert cells["dora"] == "28.0\u2020" and cells["lora"] == "27.6 / 24 (1.15x)"
    assert "marks cells no GPU validation covers (llama-7b dora)" in md


def test_validated_cells_are_the_cells_of_reports_validation(tmp_path):
    from ist_bench.report.cells import validated
    resim = read_rows(ROOT / "results/validation/resim-2026-12-01.jsonl")   # today's sim rows of the same cells
    rows = read_rows(ROOT / "results/validation/h200-2026-11-27.jsonl")
    # independently: LLaMA-7B LoRA, the paper's setting, on both backends (sim: the newest row of the case)
    def pick(rows, backend):
        return [r for r in rows if r["backend"] == backend and r["case"]["model"] == "llama-7b"
                and r["case"]["method"]["name"] == "lora" and r["case"]["select"] == "none"
                and r["case"].get("batch", 1) == 1 and not r["case"].get("grad_checkpointing")
                and r["case"].get("attn", "eager") == "eager" and r["case"]["seq_len"] == 1024][-1]
    cuda, sim = pick(rows, "cuda"), pick(rows + resim, "sim")
    gap = 100 * (sim["memory"]["summary"]["run_allocated_peak_est"] / cuda["memory"]["summary"]["run_allocated_peak"] - 1)
    v = validated()
    assert v["cells"]["llama-7b lora"] == round(gap, 2)
    sample = read_rows(ROOT / "results/validation/sample-2026.jsonl")
    measured = {json.dumps({k: x for k, x in r["case"].items() if k not in ("backend", "capacity")}, sort_keys=True)
                for r in sample if r["status"] == "ok" and r["backend"] == "sim"} & \
        {json.dumps({k: x for k, x in r["case"].items() if k not in ("backend", "capacity")}, sort_keys=True)
         for r in sample if r["status"] == "ok" and r["backend"] == "cuda"}
    assert len(measured) == 39 and "llama-7b dora" not in v["cells"]
    quant = [c for c in v["cells"] if " nf4" in c or " int8" in c]
    sharded = [c for c in v["cells"] if " N=" in c]
    assert len(v["cells"]) == 35 + 39 + 12 + 8 and len(quant) == 12 and len(sharded) == 8
    assert v["max_abs_gap_pct"] <= 0.5
    md = (ROOT / "reports/validation.md").read_text()
    assert "35 cells, 35 measured on both" in md and "39 cells, 39 measured on both" in md
    assert "the 74 cells of the two tables above" in md and "94 cells" in md


@pytest.mark.parametrize("name", ["h200-2026-11-27", "sample-18", "sample-2026"])
def test_validate_fits_80_columns(name):
    from ist_bench.report.validation import validation_report
    text = validation_report(read_rows(ROOT / f"results/validation/{name}.jsonl"))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "-0.00" not in text and "nan" not in text


def _mem_summary(opt_first):
    fig = {"first": 1, "typical": 2, "steady": 3, "min": 1, "median": 2, "max": 3, "last": 3}
    return {"weights": fig, "activations": fig, "gradients": fig, "optimizer": {**fig, "first": opt_first},
            "peak": fig, "allocated_peak_est": fig, "run_peak": 3, "run_allocated_peak_est": 3}


def _console_row(model="llama-7b", method="lora", opt_first=5):
    return {"schema": 1, "kind": "memory", "backend": "sim", "status": "ok", "n_layers": 8,
            "case": {"model": model, "method": {"name": method}, "select": "ist", "select_opts": {}, "seq_len": 1024},
            "selection": {"policy": {"name": "ist", "optimizer_state": "keep"}, "n_active": 4},
            "memory": {"summary": _mem_summary(opt_first),
                       "steps": [{"phase": "first"}, {"phase": "steady", "active_layers": [7, 0, 5, 6]}]}}


def test_the_memory_footer_says_what_the_row_holds():
    from ist_bench.report.console import _steady_note
    held = _steady_note(_console_row(opt_first=5))
    assert "no optimizer state yet" not in held and "with the optimizer state its own AdamW step creates" in held
    assert "no optimizer state yet" in _steady_note(_console_row(opt_first=0))
    assert "(layers 0, 5-7)" in held and "median" not in held and "docs/measurement.md" in held


def test_the_console_says_whether_a_gpu_validated_the_cell():
    from ist_bench.report.cells import check_note
    assert check_note(_console_row()).startswith("validated")   # llama-7b lora+ist: in reports/validation.md
    note = check_note(_console_row(method="dora"))
    assert note.startswith("NOT validated") and "reports/validation.md" in note


def test_no_report_or_console_text_calls_typical_a_median():
    files = [*(ROOT / "ist_bench/report").glob("*.py"), *(ROOT / "reports").glob("*.md"), ROOT / "README.md",
             ROOT / "docs/reports.md"]
    for f in files:
        text = f.read_text()
        assert "median of the drawn" not in text and "median drawn" not in text, f


def test_load_carries_every_figure_the_console_shows(tmp_path):
    from ist_bench.results import load
    row = _console_row()
    row.update(params=10, trainable_params=1, settings={"attn_implementation": "eager"},
               nvml={"nvml_peak": 7, "nvml_baseline": 2})
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n")
    df = load(path).iloc[0]
    for fig in ("weights", "activations", "gradients", "optimizer", "peak", "allocated_peak_est"):
        assert (df[f"first_{fig}"], df[f"typical_{fig}"], df[f"steady_{fig}"]) == (
            row["memory"]["summary"][fig]["first"], 2, 3)
    assert df["nvml_peak"] == 7 and df["nvml_baseline"] == 2 and df["attn_implementation"] == "eager"


TEX = r"""\documentclass[%s]{article}
\usepackage{booktabs}
\begin{document}
%s
\end{document}
"""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex (Debian: apt-get install "
                    "texlive-latex-base texlive-latex-recommended)")
@pytest.mark.parametrize("columns", ["onecolumn", "twocolumn"])
def test_latex_tables_fit_the_page(tmp_path, columns):
    """Every committed .tex report and a fresh one compile, with no overfull box (a table wider than
    the page), and their captions use one unit, GiB."""
    fresh = _report(tmp_path, [mem_row("llama-7b", "lora", peak=27.0), time_row("lora", "ist", 60.0, 70.0, 13.9)])
    tables = [*sorted((ROOT / "reports").glob("*.tex")), tmp_path / "t" / "out" / "r.tex"]
    assert fresh["r.tex"] and len(tables) >= 4
    body = "\n".join(p.read_text() for p in tables)
    for caption in re.findall(r"\\caption\{(.*)\}", body):
        assert not re.findall(r"\bGB\b", caption.replace("printed as GB", "")), caption
    (tmp_path / "doc.tex").write_text(TEX % (columns, body))
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)


def test_a_typical_that_is_one_seeds_median_is_not_printed_as_the_policys(tmp_path):
    def with_draws(select, peaks, typical, steady):
        r = mem_row("llama-7b", "lora", select, peak=steady)
        r["memory"]["summary"]["allocated_peak"] = {"first": int(steady * GiB), "typical": int(typical * GiB)}
        r["memory"]["steps"][:0] = [{"phase": "drawn", "allocated_peak": int(p * GiB)} for p in peaks]
        return r
    base = with_draws("none", [27.0, 27.0, 27.0], 27.0, 27.0)
    legacy = with_draws("ist", [21.0, 21.6, 20.0], 21.0, 21.6)      # median_low of 20.0, 21.0, 21.6
    md = _report(tmp_path, [base, legacy], "legacy")["r.md"].decode()
    assert "Not shown: in 1 cell with" in md and "at the typical step" not in md
    derived = with_draws("ist", [21.0, 21.6, 20.0], 20.7, 21.6)     # an expectation over the draws
    derived["memory"]["typical"] = "draws"
    md = _report(tmp_path, [base, derived], "derived")["r.md"].decode()
    assert "Not shown" not in md and "at the typical step: 23.3% of the peak" in md   # 1 - 20.7/27


@pytest.mark.parametrize("model,label", [("llama-7b", "llama-7b"), ("qwen2.5-7b", "qwen2.5-7b"),
                                         ("/data/cfgs/big-llama.json", "big-llama"), ("my.json", "my"),
                                         ("runs/llama-33b/config.json", "llama-33b"), ("runs/llama-33b/", "llama-33b")])
def test_a_config_path_is_labelled_by_its_stem(model, label):
    from ist_bench.results import model_label
    assert model_label(model) == label


def test_a_case_whose_model_is_a_path_shows_the_stem_in_console_reports_and_compare(tmp_path):
    from ist_bench.compare import title
    from ist_bench.report.console import _title
    from ist_bench.report.frame import build

    path = "/some/very/long/folder/of/configs/big-llama.json"
    row = mem_row(path, "lora")
    assert _title(row["case"]).startswith("big-llama · ") and path not in _title(row["case"])
    assert title(row) == "memory: big-llama lora [cuda]"
    assert list(build([row])["model"]) == ["big-llama"]
    md = _report(tmp_path, [row, mem_row("llama-7b", "lora")])["r.md"].decode()
    assert "| big-llama " in md and "/some/very" not in md


def test_every_saving_is_computed_within_one_cell_and_names_its_knobs():
    """The QLoRA report once showed 'llama-7b lora ist' four times (the quantization knob dropped) and a
    Llama-2-70B 'saving above weights' of -183% (another row's bf16 weights taken as the nf4 base's)."""
    from ist_bench.report import frame, tables

    rows = read_rows(ROOT / "results/gpu/table1-h200.jsonl") + read_rows(ROOT / "results/gpu/quant-h200.jsonl")
    sv = tables.savings(frame.build(rows), "cuda")
    assert not sv.duplicated(["model", "cell"]).any()
    for r in sv.to_dict("records"):
        assert r["against"].split(" ")[0] == r["cell"].split(" ")[0].split("+")[0], r   # the method without the policy
        assert r["cell"].split(" ")[1:] == r["against"].split(" ")[1:], r     # the same knobs on both sides
        assert 0 < r["saving above weights %"] < 100, r
    nf4 = sv[(sv["model"] == "llama2-70b") & (sv["cell"] == "lora+ist nf4 dq")].iloc[0]
    assert 10 < nf4["saving above weights %"] < 30
    row = next(r for r in rows if r["case"]["model"] == "llama2-70b" and r["case"].get("select") == "ist"
               and r["status"] == "ok")
    base = frame.base_weights(row)   # the nf4 base as it lies in memory: far under the bf16 weights
    assert base < 0.5 * row["params"] * 2


def test_a_report_reads_its_rows_into_one_frame_of_cells_once(tmp_path, monkeypatch):
    """issue 30: every table and plot is a function of one tidy frame (report/frame.py), built once: the
    rows are grouped into cells twice (memory, time) per report, never again by a table or a plot."""
    from ist_bench.report import frame

    grouped, built = [], []
    real_cells_of, real_build = frame.cells_of, frame.build
    monkeypatch.setattr(frame, "cells_of", lambda rows, kind: grouped.append(kind) or real_cells_of(rows, kind))
    monkeypatch.setattr(frame, "build", lambda rows: built.append(len(rows)) or real_build(rows))
    rows = [mem_row("llama-7b", "lora"), mem_row("llama-7b", "lora", "ist", peak=15.0),
            time_row("lora", "none", 60, 80, 20), time_row("lora", "ist", 50, 60, 15)]
    out = _report(tmp_path, rows)
    assert built == [4] and sorted(grouped) == ["memory", "time"]
    assert {"r.md", "r.csv", "r-time.csv"} <= set(out)
    df = real_build(rows)
    assert list(df["kind"]) == ["memory", "memory", "time", "time"]
    assert len(df.drop_duplicates(["kind", "model", "column", "backend"])) == len(df)     # one row per cell
    figures = [c for c in df.columns if c not in ("kind", "model", "column", "backend", "status", "gpu", "data",
                                                  "seq_len", "steps", "top activations", "seed's median as typical")]
    assert figures and all(c.endswith(("(GiB)", "ms (mean)", "ms (median)", " busy ms", "ms/iter", "/ 100 iter"))
                           for c in figures), figures
    assert df.loc[1, "allocated peak (GiB)"] == 15.0
