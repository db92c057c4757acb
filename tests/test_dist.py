"""FSDP2 (ist_bench/distributed): per-rank weight, gradient and optimizer bytes equal the shard sizes computed from
the shapes, on sim (fake process group) for N = 2, 4, 8 and on a real 2-process gloo run."""

from pathlib import Path

import pytest
import torch

from ist_bench.runner.case import Case

ODD = str(Path(__file__).parent / "configs" / "odd-llama.json")   # vocab 509, intermediate 178: padded shards
R = 32   # LoRA rank (the paper's)


def _lora_shapes():
    """(shape, itemsize, layer or None) of every parameter of odd-llama + LoRA on q,k,v,up,down, from its
    config alone: bf16 base, fp32 adapters (A: r x in, B: out x r)."""
    V, h, f, L, kv = 509, 64, 178, 4, 32   # kv: 2 heads x head_dim 16
    out = [((V, h), 2, None), ((V, h), 2, None), ((h,), 2, None)]   # embed, lm_head, final norm
    for layer in range(L):
        out += [(s, 2, None) for s in [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f), (h,), (h,)]]
        for d_in, d_out in [(h, h), (h, kv), (h, kv), (h, f), (f, h)]:   # q, k, v, up, down
            out += [((R, d_in), 4, layer), ((d_out, R), 4, layer)]
    return out


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _padded(shape, n):      # FSDP2 stores dim 0 ceil-divided by the world size, padding included
    return -(-shape[0] // n) * _numel(shape[1:])


def _local(shape, n, rank):  # torch.chunk's piece on `rank`: what zeros_like (AdamW's moments) copies
    c = -(-shape[0] // n)
    return max(0, min(c, shape[0] - rank * c)) * _numel(shape[1:])


ROPE_BUFFERS = 2 * 8 * 4   # inv_freq and original_inv_freq: head_dim / 2 fp32 each, replicated


def expected(n, rank, active_layers):
    shapes = _lora_shapes()
    lora = [(s, b, layer) for s, b, layer in shapes if layer is not None]
    weights = sum(_padded(s, n) * b for s, b, _ in shapes) + ROPE_BUFFERS
    grads = sum(_padded(s, n) * b for s, b, layer in lora if layer in active_layers)
    optimizer = sum(2 * _local(s, n, rank) * b + 4 for s, b, _ in lora)   # exp_avg, exp_avg_sq, step (keep)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def _case(select, backend, steps=1):
    return Case.from_dict({"model": ODD, "method": "lora", "select": select, "backend": backend, "steps": steps,
                           "seq_len": 32, "optim": "foreach"}).check()


def _figures(rank_row):
    return {k: rank_row[k] for k in ("weights", "gradients", "optimizer")}


def test_padded_shard_sizes_are_ceil_divided_dim0():
    from ist_bench.distributed.wrap import padded_shard_numel
    assert padded_shard_numel((509, 64), 8) == 64 * 64 and padded_shard_numel((178, 32), 4) == 45 * 32
    assert padded_shard_numel((64,), 3) == 22


@pytest.mark.parametrize("n", [pytest.param(2, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow), 8])
def test_sim_per_rank_bytes_equal_the_computed_shard_sizes(n):
    from ist_bench.distributed.fake import simulate

    row = simulate(_case("ist", "sim"), n, ranks=(0, n - 1))
    assert row["status"] == "ok", row["error"]
    first, last = row["ranks"]
    assert first["draws"] == last["draws"]                       # every rank trains the same layers
    steady = row["memory"]["steps"][-1]["active_layers"]
    assert len(steady) == 1                                      # IST: 25% of 4 layers
    assert _figures(first) == expected(n, 0, steady)
    assert _figures(last) == expected(n, n - 1, steady)
    if n == 8:   # the last rank's shards are shorter than rank 0's: only AdamW's moments (unpadded) see it
        assert last["optimizer"] < first["optimizer"] and last["weights"] == first["weights"]


def test_sim_without_selection_trains_every_layer_sharded():
    from ist_bench.distributed.fake import simulate

    row = simulate(_case("none", "sim"), 4)
    assert _figures(row["ranks"][0]) == expected(4, 0, range(4))


def test_fsdp2_groups_keep_fp32_adapter_grads_when_a_policy_freezes_blocks_first():
    """The lazy init runs at wrap time with every adapter trainable: a block IST leaves out at step 0
    still reduces its gradients in fp32 when drawn later."""
    from ist_bench.distributed.fake import simulate

    row = simulate(_case("ist", "sim", steps=3), 2)
    steps = row["memory"]["steps"]
    assert len({s["active_layers"][0] for s in steps}) > 1      # a block frozen at step 0 trains later
    assert [s["gradients"] for s in steps] == [expected(2, 0, [0])["gradients"]] * len(steps)   # fp32, not bf16


@pytest.mark.slow
@pytest.mark.parametrize("select", ["none", "ist"])
def test_real_gloo_fsdp2_run_matches_the_shard_sizes_and_sim(select):
    from ist_bench.distributed.fake import simulate
    from ist_bench.distributed.launch import launch

    real = launch(_case(select, "cpu"), 2, "fsdp2", timeout_s=600)
    assert real["status"] == "ok", (real["error"], real.get("log_tail"))
    sim = simulate(_case(select, "sim"), 2, ranks=(0, 1))
    steady = real["memory"]["steps"][-1]["active_layers"]
    active = range(4) if select == "none" else steady
    for rank in (0, 1):
        assert _figures(real["ranks"][rank]) == expected(2, rank, active)
        assert _figures(real["ranks"][rank]) == _figures(sim["ranks"][rank])
    assert real["ranks"][0]["draws"] == real["ranks"][1]["draws"] == sim["ranks"][0]["draws"]


@pytest.mark.slow
def test_a_failing_rank_is_a_row_not_a_hang(monkeypatch):
    from ist_bench.distributed.launch import launch

    monkeypatch.setenv("IST_BENCH_DIST_FAIL_RANK", "1")
    row = launch(_case("none", "cpu"), 2, "fsdp2", timeout_s=300, collective_timeout_s=20)
    assert row["status"] == "error" and row["error"].startswith("rank 1")
    assert [r["status"] for r in row["ranks"]][1] == "error"


def test_bad_world_sizes_and_shards_are_one_line():
    from ist_bench.distributed.launch import check_devices
    from ist_bench.errors import UsageError

    with pytest.raises(UsageError, match=r"nproc must be an integer >= 1.*got 0"):
        Case(model="tiny-llama", backend="cpu", nproc=0).validate()
    with pytest.raises(UsageError, match=r"unknown shard 'zero3'; valid: fsdp2, ddp"):
        Case(model="tiny-llama", backend="cpu", nproc=2, shard="zero3").validate()
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="only 0 GPU"):
            check_devices(2, "cuda")


def _gathered_bytes(n):
    """bf16 bytes of the unsharded (all-gathered, padding included) parameters: the root's and one block's."""
    shapes = _lora_shapes()
    root = sum(_padded(s, n) * n * 2 for s, _, layer in shapes[:3])
    block = sum(_padded(s, n) * n * 2 for s, _, layer in shapes[3:3 + 9 + 10])
    return root, block


def test_fsdp2_buffers_are_their_own_category_and_follow_reshard_after_forward():
    from ist_bench.distributed.fake import simulate

    root, block = _gathered_bytes(2)
    on = simulate(_case("none", "sim"), 2)
    off = simulate(_case("none", "sim"), 2, reshard_after_forward=False)
    assert on["ranks"][0]["fsdp_buffers_at_peak"] == root + block        # the root stays gathered; one block
    assert off["ranks"][0]["fsdp_buffers_at_peak"] >= root + 4 * block   # every block kept for backward
    assert on["ranks"][0]["activations"] == off["ranks"][0]["activations"]   # gathered weights are not activations


MID = str(Path(__file__).parent / "configs" / "mid-llama.json")   # ~0.2B params: sharding decides the fit


@pytest.mark.slow
def test_fit_nproc_auto_answers_the_smallest_world_size_that_fits():
    from ist_bench import fit

    tgt, (a,) = fit.fit_nproc(MID, "1.5GiB", ["full"], ["none"], "auto", seq_len=256)
    peaks = {int(n): p["peak"] for n, p in a.probes.items()}
    assert a.fits and peaks[a.nproc] + fit.margin(peaks[a.nproc], "full") <= tgt.usable
    below = [n for n in peaks if n < a.nproc]
    assert below and all(peaks[n] + fit.margin(peaks[n], "full") > tgt.usable for n in below)
    assert peaks[max(below)] > peaks[a.nproc]    # the per-rank peak falls as the world grows


@pytest.mark.parametrize("argv,message", [
    (["fit", "--model", "tiny-llama", "--gpu", "1GiB", "--nproc", "0"], "--nproc must be an integer >= 1 or auto"),
    (["fit", "--model", "tiny-llama", "--gpu", "1GiB", "--nproc", "many"], "got 'many'"),
    (["memory", "--model", "tiny-llama", "--backend", "sim", "--nproc", "0"], "nproc must be an integer >= 1"),
    (["memory", "--model", "tiny-llama", "--backend", "sim", "--shard", "ddp"], "give --nproc N"),
    (["memory", "--model", "tiny-llama", "--backend", "sim", "--nproc", "2", "--quant", "nf4"], "cannot run under --nproc"),
    (["memory", "--model", "tiny-llama", "--backend", "sim", "--nproc", "2", "--shard", "zero3"],
     "unknown shard 'zero3'; valid: fsdp2, ddp"),
    (["memory", "--model", "tiny-llama", "--backend", "sim", "--nproc", "2", "--shard", "ddp"],
     "--shard ddp is not modelled"),
    (["memory", "--model", "tiny-llama", "--method", "adalora", "--backend", "sim", "--nproc", "2"],
     "--method adalora cannot run under --shard fsdp2: its rank allocator"),
])
def test_bad_distributed_input_is_one_line_exit_2(argv, message, capsys):
    from ist_bench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_steady_step_alone_runs_sharded_when_the_importance_round_gathers_first():
    """fit's probe (steps=0): IST's importance round, under inference_mode, is the first to gather; the
    gathered parameters must still be trainable tensors afterwards."""
    from ist_bench.distributed.fake import simulate

    case = Case.from_dict({"model": ODD, "method": "lora", "select": "ist", "backend": "sim", "steps": 0,
                           "seq_len": 32}).check()
    row = simulate(case, 2)
    assert row["status"] == "ok", row["error"]
    assert row["ranks"][0]["gradients"] == expected(2, 0, [0])["gradients"]


@pytest.mark.slow
def test_ddp_ranks_hold_the_whole_model():
    from ist_bench.distributed.launch import launch

    row = launch(_case("none", "cpu"), 2, "ddp", timeout_s=600)
    assert row["status"] == "ok", (row["error"], row.get("log_tail"))
    full = expected(1, 0, range(4))
    for r in row["ranks"]:
        assert _figures(r) == full


@pytest.mark.parametrize("n", [1, 2])
def test_the_unsharded_originals_are_freed_once_sharded(n):
    """What lives before a step is the rank's shards and its optimizer state: the build must not keep the
    unsharded parameters FSDP2 replaced (a full copy of the model per rank, seen on the H200 at N = 1)."""
    from ist_bench.distributed.fake import simulate

    row = simulate(_case("none", "sim"), n)
    step = row["memory"]["steps"][-1]
    inputs = 1024   # 32 token ids and labels (int64) and their bookkeeping; an unsharded copy would be ~900 KB
    assert step["live_before"] - step["weights"] - step["optimizer"] <= inputs


def test_a_suite_runs_sharded_cases_from_its_nproc_and_shard_fields(tmp_path):
    """`nproc`, `shard`, `reshard_after_forward` are case fields: a suite grid over world sizes gives one
    row per N, each with its ranks, told apart by the case (never paired with the one-process row)."""
    from ist_bench.cli import main
    from ist_bench.results import read_rows, row_key

    suite = tmp_path / "fsdp.yaml"
    suite.write_text(f"name: fsdp\nkind: memory\ndefaults: {{model: '{ODD}', method: lora, backend: sim, steps: 1, "
                     f"seq_len: 32, optim: foreach}}\ngrid:\n  nproc: [null, 2, 4]\n")
    out = tmp_path / "rows.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--jobs", "1"]) == 0
    rows = {r["case"].get("nproc"): r for r in read_rows(out)}
    assert set(rows) == {None, 2, 4} and len({row_key(r) for r in rows.values()}) == 3
    assert "ranks" not in rows[None] and "shard" not in rows[None]["case"]
    for n in (2, 4):
        assert rows[n]["case"]["shard"] == "fsdp2" and rows[n]["dist"]["nproc"] == n
        assert _figures(rows[n]["ranks"][0]) == expected(n, 0, range(4))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["series", "parallel"])
def test_bottleneck_adapters_run_on_real_fsdp2_ranks(method):
    """FSDP2 gathers the fp32 adapters as bf16 (the param policy): the adapter computes in its weights'
    dtype, not a fixed fp32 (which failed on the H200: "expected mat1 and mat2 to have the same dtype");
    meta tensors do not check it, so only a real run shows it."""
    from ist_bench.distributed.launch import launch

    case = Case.from_dict({"model": ODD, "method": method, "select": "ist", "backend": "cpu", "steps": 1,
                           "seq_len": 32, "optim": "foreach"}).check()
    row = launch(case, 2, "fsdp2", timeout_s=600)
    assert row["status"] == "ok", (row["error"], row.get("log_tail"))


def test_the_scale_report_does_not_depend_on_row_order(tmp_path):
    """reports/scale.md from results/scale-sim.jsonl: the same table for any order of the rows, a repeated
    cell resolved by its rule (more steps, then the higher peak), IST's saving from the two peaks."""
    import random

    from ist_bench.cli import main
    from ist_bench.report.scale import scale_frame, scale_table
    from ist_bench.results import read_rows

    rows = read_rows("results/scale-sim.jsonl")
    want = scale_table(scale_frame(rows), 80 * 2**30)
    for seed in range(3):
        shuffled = rows + [dict(rows[0], case={**rows[0]["case"], "steps": 0})]   # a lesser repeat of a cell
        random.Random(seed).shuffle(shuffled)
        assert scale_table(scale_frame(shuffled), 80 * 2**30).equals(want)
    r = want.set_index(["model", "N"]).loc[("llama2-70b", 8)]
    assert r["lora"] == "87.4" and r["lora+ist"] == "80.5" and r["IST saves %"] == "7.9"   # neither fits 80 GiB
    assert main(["report", "results/scale-sim.jsonl", "--out", str(tmp_path / "scale")]) == 0
    assert (tmp_path / "scale-sim-scale.png").stat().st_size > 10_000
    assert "| llama2-70b  |   8 | 87.4   | 80.5" in (tmp_path / "scale.md").read_text()
