"""The steady step is a bound: no step a real run of the policy can take peaks above it.

Each test compares the steady step's figures with steps measured here on sim: the steps a run
takes (warm-ups, importance rounds, every sample), and every draw the policy can make, each
forced under the steady step's conditions (`probe_draws`)."""

import itertools
from pathlib import Path

import pytest

from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory

PEAKS = ("peak", "peak_blocks", "allocated_peak_est")
WIDE = str(Path(__file__).parent / "configs" / "wide-llama.json")   # a layer's gradients outweigh its activations


def row_of(tokenizer=None, probe=False, **kw):
    data = {"data": None, "tokenizer": None}
    if tokenizer is not None:
        from ist_bench.data import SAMPLE_FILE
        data = {"data": str(SAMPLE_FILE), "tokenizer": str(tokenizer)}
    method = kw.pop("method", "lora")
    case = Case(model=kw.pop("model", "tiny-llama"), method=MethodSpec(name=method), backend="sim",
                seq_len=kw.pop("seq_len", 64), **data, **kw).check()
    row = measure_memory(case, probe_draws=probe)
    assert row["status"] == "ok", row.get("traceback") or row["error"]
    return row


def steady_of(row) -> dict:
    return next(s for s in row["memory"]["steps"] if s["phase"] == "steady")


# Tensor bytes are bounded exactly. Allocator figures replay the caching allocator over the run (docs/sim.md),
# so two steps that hold the same tensors can book different blocks: a reused block books up to 1 MiB more
# than its request, depending on what earlier steps left cached (the H200 showed 512 KiB between two
# identical steps, suites/steady-check.yaml). The steady step bounds them within that.
ALLOCATOR_SLACK = 1 << 20


def assert_bounded(row, steps):
    steady = steady_of(row)
    for s in steps:
        for k in PEAKS:
            slack = 0 if k == "peak" else ALLOCATOR_SLACK
            assert s[k] <= steady[k] + slack, (k, s["step"], s.get("phase"), s.get("active_layers"), s[k] - steady[k])
        for k in ("importance_peak", "importance_allocated_peak_est"):
            if k in s:
                assert s[k] <= steady[k], (k, s["step"])


# -- the four under-reports of issue 16, each pinned ----------------------------------------
def test_ila_steady_step_covers_its_warmup_where_every_layer_trains():
    row = row_of(select="ila", select_opts={"warmup": 3}, steps=6)
    warm = [s for s in row["memory"]["steps"] if s["phase"] != "steady" and s["step"] < 3]
    assert warm and all(s["active_layers"] is None for s in warm)
    assert_bounded(row, row["memory"]["steps"])


def test_adalora_steady_step_holds_its_importance_emas_at_steps_zero():
    zero = steady_of(row_of(method="adalora", select="rst", steps=0))
    later = row_of(method="adalora", select="rst", steps=3)
    assert zero["method_state"] == steady_of(later)["method_state"] > 0
    for k in PEAKS:
        assert zero[k] == steady_of(later)[k], k
    assert_bounded(later, later["memory"]["steps"])


def test_sample_mode_steady_step_trains_the_longest_sample_whatever_steps(tokenizer_file):
    rows = [row_of(tokenizer_file, select="rst", data_mode="sample", seq_len=512, steps=n) for n in (0, 3, 7)]
    steadies = [steady_of(r) for r in rows]
    assert all(s[k] == steadies[0][k] for s in steadies for k in PEAKS)     # the bound does not move with --steps
    # and it is at least every sample's step: run one step per sample of the file
    from ist_bench.data import SAMPLE_FILE, load_samples
    every = row_of(tokenizer_file, select="rst", data_mode="sample", seq_len=512, steps=len(load_samples(SAMPLE_FILE)))
    assert all(steady_of(every)[k] == steadies[0][k] for k in PEAKS)
    assert_bounded(every, every["memory"]["steps"])


@pytest.mark.parametrize("seq_len", [64, 256])
@pytest.mark.parametrize("select", ["lift", "lisa", "rst"])
def test_full_finetuning_worst_draw_is_the_top_layers_when_embeddings_train(select, seq_len):
    row = row_of(model=WIDE, method="full", select=select, steps=0, probe=True, seq_len=seq_len)
    n = row["selection"]["n_active"]
    assert steady_of(row)["active_layers"] == list(range(4 - n, 4))
    assert row["memory"]["probes"]
    assert_bounded(row, row["memory"]["probes"])


# -- brute force: every policy x a few methods x data modes -----------------------------------
POLICIES = {
    "none": {}, "rst": {}, "ist": {"interval": 2}, "ist-code": {"interval": 2},
    "lisa": {"gamma": 2, "interval": 1}, "ila": {"warmup": 2}, "lift": {"interval": 1},
    "badam": {"interval": 1}, "hift": {"group": 2}, "dropbp": {}, "ows": {"interval": 1},
}
METHODS = ("lora", "full", "series", "adalora")


def _cells():
    """Fast tier: the wide model (where a draw's position matters most), keep, LoRA and full, and
    LoRA with reset; every other combination in the slow tier."""
    for (select, opts), method, state, model in itertools.product(POLICIES.items(), METHODS, ("keep", "reset"),
                                                                   (WIDE, "tiny-llama")):
        if select.startswith("ist") and method == "full":
            continue
        fast = model == WIDE and (method, state) in (("lora", "keep"), ("full", "keep"), ("lora", "reset"))
        yield pytest.param(select, opts, method, state, model, marks=() if fast else pytest.mark.slow,
                           id=f"{select}-{method}-{state}-{Path(model).stem}")


@pytest.mark.parametrize("select,opts,method,state,model", list(_cells()))
def test_no_step_or_draw_of_a_policy_peaks_above_its_steady_step(select, opts, method, state, model):
    """4 layers, 64 tokens: a 6-step run (warm-ups, rounds, every LIFT/LISA position) and every draw
    of the policy's size, each forced under steady conditions."""
    row = row_of(model=model, method=method, select=select, select_opts=opts, steps=6, optimizer_state=state,
                 probe=True)
    assert_bounded(row, row["memory"]["steps"] + row["memory"]["probes"])


INTERLEAVED = str(Path(__file__).parent / "configs" / "tiny-interleaved-moe.json")   # MoE blocks 0, 2; dense 1, 3


@pytest.mark.parametrize("select", ["lisa", "rst", pytest.param("lift", marks=pytest.mark.slow)])
def test_blocks_of_different_weights_put_the_heaviest_among_the_candidates(select):
    """MoE blocks between dense ones train more bytes: LISA's worst draw of two is [0, 2] (layer 0 and the heavier
    MoE block), not [0, 3] at the top (it once reported 1.9% under that draw)."""
    row = row_of(model=INTERLEAVED, select=select, steps=6, probe=True)
    assert_bounded(row, row["memory"]["steps"] + row["memory"]["probes"])
    if select == "lisa":
        assert steady_of(row)["active_layers"] == [0, 2]


@pytest.mark.parametrize("select", ["rst", *(pytest.param(p, marks=pytest.mark.slow) for p in ("lift", "ila", "lisa"))])
def test_sample_mode_no_step_or_draw_peaks_above_steady(select, tokenizer_file):
    row = row_of(tokenizer_file, select=select, select_opts={"warmup": 2} if select == "ila" else {},
                 data_mode="sample", seq_len=512, steps=8, probe=True)
    assert_bounded(row, row["memory"]["steps"] + row["memory"]["probes"])


@pytest.mark.slow
@pytest.mark.parametrize("model,seq_len", [("tiny-gpt2", 256), ("gpt2-small", 128)])
@pytest.mark.parametrize("method,select", [("lora", "rst"), ("full", "lift"), ("full", "lisa"), ("lora", "ila")])
def test_mid_size_models_no_draw_peaks_above_steady(model, seq_len, method, select):
    row = row_of(model=model, method=method, select=select, seq_len=seq_len, steps=3, probe=True,
                 select_opts={"warmup": 1} if select == "ila" else {})
    assert_bounded(row, row["memory"]["steps"] + row["memory"]["probes"])


# -- typical: the expected step over the policy's draws -----------------------------------------
@pytest.mark.parametrize("select,opts,steps,state", [
    ("rst", {}, 0, "keep"), ("rst", {}, 5, "keep"), ("lisa", {"interval": 1}, 4, "keep"),
    ("lift", {"interval": 1}, 3, "keep"), ("rst", {}, 4, "reset"),
    ("ist", {}, 4, "keep")])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_typical_is_the_mean_over_every_draw_of_the_policy(select, opts, steps, state, model):
    """Every draw of the policy's size is equally likely on sim (uniform draws; LIFT visits each
    layer once a pass; ILA's kept set with nothing learned), so typical = the mean of the figures
    of every draw, each measured here under the steady step's conditions: exactly, to the byte."""
    row = row_of(model=model, select=select, select_opts=opts, steps=steps, optimizer_state=state, seq_len=256,
                 probe=True)
    summary = row["memory"]["summary"]
    probes = [p for p in row["memory"]["probes"] if p["active_layers"] is not None]   # not ILA's warm-up
    for k in ("peak", "activations", "gradients", "optimizer"):
        mean = sum(p[k] for p in probes) / len(probes)
        assert summary[k]["typical"] == pytest.approx(mean, abs=1), k
    assert summary["peak"]["typical"] < summary["peak"]["steady"]
    # allocator figures: the typical tensor peak plus the steady step's overhead beyond its tensors, within
    # that overhead of the mean (a kernel's scratch sets some draws' peaks, not all: measure/memory.py)
    for k in ("peak_blocks", "allocated_peak_est"):
        overhead = summary[k]["steady"] - summary["peak"]["steady"]
        mean = sum(p[k] for p in probes) / len(probes)
        assert summary[k]["typical"] == summary["peak"]["typical"] + overhead, k
        assert abs(summary[k]["typical"] - mean) <= overhead, k


def test_typical_of_a_wide_toy_model_is_within_a_layers_temporaries_of_the_mean():
    """On a model whose layers' weight-gradient temporaries outweigh their activations (64 tokens,
    wide layers) the lowest layer is not all that matters: typical is then within 0.1% of the mean."""
    row = row_of(model=WIDE, select="rst", steps=0, probe=True)
    probes = row["memory"]["probes"]
    mean = sum(p["allocated_peak_est"] for p in probes) / len(probes)
    assert row["memory"]["summary"]["allocated_peak_est"]["typical"] == pytest.approx(mean, rel=1e-3)


@pytest.mark.parametrize("method,select", [("lora", "none"), ("full", "lisa"), ("lora", "ila")])
def test_typical_is_the_steady_step_where_no_draw_changes_the_lowest_trained_layer(method, select):
    row = row_of(method=method, select=select, steps=2)
    summary = row["memory"]["summary"]
    assert all(v["typical"] == v["steady"] for k, v in summary.items()
               if isinstance(v, dict) and "typical" in v and k != "reserved_peak")
    assert not any(s.get("phase") == "anchor" for s in row["memory"]["steps"])   # no extra step


def test_the_gpu_steady_check_runs_end_to_end_on_sim(tmp_path):
    """suites/steady-check.yaml's cases on tiny Llama (sim, 12 steps, ILA's warm-up 4) through
    `ist-bench run`, then scripts/steady_check.py: every case ok, and a lowered steady figure fails."""
    import importlib.util
    import json

    import yaml

    from ist_bench.cli import main
    root = Path(__file__).parent.parent
    spec = yaml.safe_load((root / "suites" / "steady-check.yaml").read_text())
    spec["defaults"].update(model="tiny-llama", steps=12, seq_len=128, backend="sim")
    spec["cases"][0]["select"] = {"name": "ila", "warmup": 4}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "r.jsonl"
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out)]) == 0
    loader = importlib.util.spec_from_file_location("steady_check", root / "scripts" / "steady_check.py")
    checker = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(checker)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    results = checker.check(rows)
    assert len(results) == 3 and all(r["ok"] for r in results), results
    assert all(len(r["memory"]["steps"]) >= 13 for r in rows)
    assert checker.main([str(out)]) == 0
    for r in rows:   # a steady figure below a step's is caught
        next(s for s in r["memory"]["steps"] if s["phase"] == "steady")["allocated_peak_est"] = 0
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert checker.main([str(out)]) == 1


# -- every knob: the steady step bounds every draw and step; typical is the mean over the draws ------------
KNOBS = {"ckpt": {"grad_checkpointing": True}, "sdpa": {"attn": "sdpa"}, "nf4": {"quant": "nf4"},
         "nf4-ckpt": {"quant": "nf4", "grad_checkpointing": True}, "batch": {"batch": 2}, "fp16": {"dtype": "fp16"},
         "sample": {"data_mode": "sample"}, "fsdp2": {"nproc": 2}, "reset": {"optimizer_state": "reset"}}
ONE_OR_HALF = {"lift": {"interval": 1}, "lisa-1": {"gamma": 1, "interval": 1}, "rst-half": {"layers": 0.5},
               "ist-half": {"interval": 2, "layers": 0.5}}
FAST_KNOBS = {("ckpt", "lift"), ("ckpt", "rst-half"), ("nf4-ckpt", "lisa-1"), ("sdpa", "rst-half"), ("fsdp2", "lift")}
# Where every block is in the autograd graph whatever the draw (a quantized base prepared for checkpointing:
# peft makes the input require grad), a draw's figures follow its highest layer too, not only its lowest:
# typical is then within this fraction of the mean over the draws (docs/measurement.md, "typical").
NOT_BY_LOWEST = {"nf4-ckpt": 0.01}


def _knob_row(knob: str, policy: str, tokenizer, method: str = "lora"):
    kw = dict(KNOBS[knob])
    select = policy.split("-")[0]
    opts = ONE_OR_HALF[policy]
    data = {"tokenizer": tokenizer, "seq_len": 512} if knob == "sample" else {"seq_len": 128}
    if knob != "fsdp2":
        return row_of(method=method, select=select, select_opts=opts, steps=4, probe=True, **data, **kw)
    from ist_bench.distributed.fake import fake_world
    from ist_bench.distributed.wrap import shard_fsdp2
    case = Case(model="tiny-llama", method=MethodSpec(name=method), backend="sim", select=select, select_opts=opts,
                steps=4, seq_len=128, **kw).check()
    with fake_world(0, 2):
        row = measure_memory(case, probe_draws=True, wrap=shard_fsdp2)
    assert row["status"] == "ok", row.get("traceback") or row["error"]
    return row


def _knob_cells(methods=("lora",)):
    for knob, policy, method in itertools.product(KNOBS, ONE_OR_HALF, methods):
        if method == "full" and (policy.startswith("ist") or knob.startswith("nf4")):
            continue
        fast = (knob, policy) in FAST_KNOBS and method == "lora"
        yield pytest.param(knob, policy, method, marks=() if fast else pytest.mark.slow, id=f"{knob}-{policy}-{method}")


@pytest.mark.parametrize("knob,policy,method", list(_knob_cells(("lora", "full"))))
def test_steady_bounds_every_draw_and_step_under_every_knob(knob, policy, method, tokenizer_file):
    """Checkpointing re-runs every block in backward: there the worst one-layer draw is the top block, not
    layer 0 (LLaMA-7B LoRA+LIFT at 1024 tokens: steady was 52 MiB under draw [31])."""
    row = _knob_row(knob, policy, tokenizer_file, method)
    assert_bounded(row, row["memory"]["steps"] + row["memory"]["probes"])


@pytest.mark.parametrize("knob,policy,method", list(_knob_cells()))
def test_typical_is_the_mean_over_every_draw_under_every_knob(knob, policy, method, tokenizer_file):
    row = _knob_row(knob, policy, tokenizer_file, method)
    summary = row["memory"]["summary"]
    probes = [p for p in row["memory"]["probes"] if p["active_layers"] is not None]
    for k in ("peak", "activations"):
        mean = sum(p[k] for p in probes) / len(probes)
        if knob in NOT_BY_LOWEST and row["selection"]["n_active"] > 1:
            assert summary[k]["typical"] == pytest.approx(mean, rel=NOT_BY_LOWEST[knob]), k
        else:
            assert summary[k]["typical"] == pytest.approx(mean, abs=1), k
