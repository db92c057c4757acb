"""sim's model of the GPU beyond tensor bytes: the kernels CUDA picks, the scratch they take, and ops
that reach the tracker whole. Each expected number below was measured on the H200 (torch 2.11) by
scripts/probe_op_temporaries.py; the probes' output is in results/probes/."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ist_bench.measure import sim
from ist_bench.measure.tracker import MemoryTracker

PROBES = Path(__file__).resolve().parents[1] / "results" / "probes"
aten = torch.ops.aten


def _meta(*shape, dtype=torch.bfloat16, grad=False):
    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=grad)


def test_sim_attention_saves_grouped_key_value_heads_as_the_gpu_does():
    # On the H200, SDPA with enable_gqa saved exactly these (cuDNN attention): k and v with their 4 heads,
    # never expanded to the query's 32 (the expansion was +1.29 GB on TinyLlama, batch 8).
    measured = [[2, 4, 512, 64], [2, 32, 512, 64], [2, 4, 512, 64], [2, 32, 512, 1], [2, 32, 512, 64], [], []]
    q = _meta(2, 32, 512, 64, grad=True)
    k, v = _meta(2, 4, 512, 64, grad=True), _meta(2, 4, 512, 64, grad=True)
    saved = []
    with sim.cuda_kernels(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert type(out.grad_fn).__name__ == "ScaledDotProductCudnnAttentionBackward0"
    assert sorted(list(t.shape) for t in saved) == sorted(measured)
    q_out, k_v, lse, rng = 2 * (2 * 32 * 512 * 64 * 2), 2 * (2 * 4 * 512 * 64 * 2), 2 * 32 * 512 * 4, 2 * 8
    assert sum(t.untyped_storage().nbytes() for t in saved) == q_out + k_v + lse + rng


def test_sim_flash_attention_of_head_size_256_keeps_grouped_key_value_heads():
    """Head size 256 (Gemma 2/3) takes FlashAttention, which also reads each key/value head for its group:
    k and v are saved with their 8 heads, never expanded to the query's 16 (the expansion over-estimated a
    Gemma-2 9B SDPA cell by 0.86% on the H100)."""
    q = _meta(1, 16, 1024, 256, grad=True)
    k, v = _meta(1, 8, 1024, 256, grad=True), _meta(1, 8, 1024, 256, grad=True)
    saved = []
    with sim.cuda_kernels(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert type(out.grad_fn).__name__ == "ScaledDotProductFlashAttentionBackward0"
    shapes = [list(t.shape) for t in saved]
    assert shapes.count([1, 8, 1024, 256]) == 2 and shapes.count([1, 16, 1024, 256]) == 2   # k, v; q, out


def test_softmax_backward_scratch_is_the_size_of_its_gradient():
    # Measured: 512 MiB in each eager-attention backward of LLaMA-7B at 2048 tokens (fp32 softmax), and a
    # ratio of exactly 1.0 of the gradient's bytes for lengths 256..32000 in fp32 and bf16.
    probes = json.loads((PROBES / "h200-op-temporaries-2.json").read_text())
    assert set(probes["softmax_backward_temp_per_grad_byte"].values()) == {1.0}
    grad = _meta(1, 32, 2048, 2048, dtype=torch.float32)
    out = aten._softmax_backward_data(grad, grad, -1, torch.float32)
    assert sim.cuda_scratch(aten._softmax_backward_data.default, (grad, grad, -1, torch.float32), {}, out) == 512 << 20


def test_cudnn_attention_backward_scratch_matches_the_measured_bytes():
    # (batch, query heads, key/value heads, tokens, head size) -> bytes, as measured inside the models
    # (LLaMA-7B; TinyLlama with grouped-query attention) and alone (within the allocator's 512 B).
    inside = {(1, 32, 32, 1024, 128): 16_908_288, (1, 32, 4, 1024, 64): 16_908_288}
    alone = {(1, 32, 32, 2048, 128): 33_817_088, (4, 32, 32, 1024, 128): 67_633_664, (8, 32, 4, 1024, 64): 135_266_816,
             (1, 12, 12, 1024, 64): 3_195_392, (1, 40, 40, 1024, 128): 21_135_872}
    for shapes, expected, slack in [(s, b, 0) for s, b in inside.items()] + [(s, b, 512) for s, b in alone.items()]:
        b, h, kv, t, d = shapes
        q, k = _meta(b, h, t, d), _meta(b, kv, t, d)
        got = sim.cuda_scratch(aten._scaled_dot_product_cudnn_attention_backward.default, (q, q, k, k), {}, None)
        assert expected - slack <= got <= expected, (shapes, got, expected)


def test_reduction_scratch_over_leading_dims_bounds_the_measured_bytes():
    measured = {((1, 1024, 4096), (0, 1)): 33_554_944, ((1, 2048, 4096), (0, 1)): 67_109_376,
                ((8, 1024, 2048), (0, 1)): 134_218_240, ((2048, 4096), (0,)): 67_109_376,
                ((1024, 3072), (0,)): 25_166_336, ((4096, 4096), (1,)): 0, ((1, 2048, 4096), (-1,)): 0}
    for (shape, dims), expected in measured.items():
        x = _meta(*shape, dtype=torch.float32)
        assert sim.cuda_scratch(aten.sum.dim_IntList, (x, list(dims)), {}, None) == expected, shape


def test_reduction_scratch_stops_growing_where_the_h200_measured_it():
    # 54 reductions on the H200 (scripts/probe_reduce_scratch.py): bf16, fp16, fp32; 256 to 16384 rows, 2048
    # to 65536 outputs. The probe saw the allocator's blocks: the model's request in a fresh segment's block
    # (the staging buffer; the 512 B of semaphores beside it), within 1.5 KiB.
    import json
    from pathlib import Path
    rows = json.loads((Path(__file__).parent.parent / "results/probes/h200-reduce-scratch.json").read_text())["rows"]
    assert len(rows) == 54 and {r["scratch"] for r in rows} > {0, 140_902_912}
    for r in rows:
        x = _meta(*r["shape"], dtype=getattr(torch, r["dtype"].split(".")[1]))
        got = sim.cuda_scratch(aten.sum.dim_IntList, (x, list(r["dims"])), {}, None)
        booked = sim.cuda_block_bytes(got - 512) + 512 if got else 0
        assert abs(booked - r["scratch"]) <= 1536, (r["shape"], r["dims"], booked, r["scratch"])


def test_kernel_scratch_raises_the_estimated_peak_but_not_the_tensor_peak():
    tracker = MemoryTracker("meta", block=sim.cuda_block_bytes, scratch=sim.cuda_scratch)
    x = _meta(4, 8, 256, 256, dtype=torch.float32, grad=True)
    with tracker:
        y = torch.softmax(x, dim=-1)
        tensors_before_backward = tracker.live
        y.backward(torch.ones_like(y))
    n = x.numel() * 4
    # during the softmax backward: the saved output, the incoming gradient, the result and a scratch
    # the result's size (x itself is registered by no one: it existed before the tracker)
    assert tracker.peak == tensors_before_backward + 2 * n
    assert tracker.peak_blocks == tracker.peak + n
    assert tracker.peak_scratch == n


def test_a_composite_op_under_inference_mode_is_seen_in_its_parts():
    # Under inference_mode, softmax(bf16, dtype=float32) reaches the tracker as one op; on the GPU it is
    # a cast to fp32 and a softmax, and the cast's copy (512 MiB at LLaMA-7B, 2048 tokens) was invisible.
    x = _meta(2, 4, 128, 128)
    tracker = MemoryTracker("meta")
    with torch.inference_mode(), tracker:
        y = torch.softmax(x, dim=-1, dtype=torch.float32)
    assert y.dtype == torch.float32
    assert tracker.peak == x.numel() * (4 + 4)   # the fp32 copy and the fp32 result (x is untracked)


def test_a_sample_is_a_function_of_its_seed_and_every_cell_can_run():
    from ist_bench.runner.sample import draw_cases
    a, b, c = draw_cases(6, seed=3), draw_cases(6, seed=3), draw_cases(6, seed=4)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in c]
    assert len({json.dumps(x.to_dict(), sort_keys=True) for x in a}) == 6
    assert len({(x.model, x.method.name, x.select) for x in draw_cases(12, seed=5)}) > 6   # spread, not one corner


def test_run_sample_skips_cuda_where_sim_says_it_cannot_fit_and_resumes_without_rerunning(tmp_path):
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.sample import run_sample
    cases = [Case(model="tiny-llama", method=MethodSpec(name=m), seq_len=32, steps=1, backend="sim").check()
             for m in ("lora", "series")]
    out = tmp_path / "sample.jsonl"
    rows = run_sample(cases, out, card_bytes=1)   # nothing fits a 1-byte card: no cuda job is started
    assert [r["backend"] for r in rows] == ["sim", "sim"] and all(r["status"] == "ok" for r in rows)
    seen = []
    again = run_sample(cases, out, card_bytes=1, on_row=seen.append)
    assert seen == [] and len(again) == 2 and len(out.read_text().splitlines()) == 2


def _timeline_case(tmp_path, capacity=None, suffix=".json"):
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), select="ist", seq_len=64, steps=2,
                backend="sim", capacity=capacity).check()
    path = tmp_path / f"tl{suffix}"
    return measure_memory(case, timeline=str(path)), path


def test_a_sim_timeline_reaches_the_estimated_peak_and_opens_in_torch_memory_viz(tmp_path):
    from torch.cuda import _memory_viz

    from ist_bench.measure.timeline import Timeline
    row, path = _timeline_case(tmp_path)
    tl = Timeline.load(path)
    totals = [sum(v[i] for v in tl.live.values()) + tl.workspace for i in range(len(tl.clock))]
    assert max(totals) == row["memory"]["summary"]["run_allocated_peak_est"] == tl.peak
    assert {p for p, _, _ in tl.phases} >= {"start", "forward", "backward", "optimizer", "importance_start"}
    row, pickle_path = _timeline_case(tmp_path, suffix=".pickle")
    import pickle
    snapshot = pickle.loads(pickle_path.read_bytes())
    trace = snapshot["device_traces"][0]
    assert f"{len(trace)} entries" in _memory_viz.trace(snapshot)   # torch's own reader of the format
    held = sum(e["size"] for e in trace if e["action"] == "alloc") - \
        sum(e["size"] for e in trace if e["action"] == "free_completed")
    assert held == sum(v[-1] for v in Timeline.load(path).live.values())


def test_a_timeline_is_written_up_to_a_simulated_oom(tmp_path):
    from ist_bench.measure.timeline import Timeline
    row, path = _timeline_case(tmp_path, capacity="66MiB")
    assert row["status"] == "oom"
    tl = Timeline.load(path)
    assert tl.clock and tl.peak == row["peak_reached"]


def test_the_worst_cell_is_measured_again_and_both_timelines_drawn(tmp_path):
    # The pairing reads each row's backend; the re-measurement runs each row's case. A cpu case filed as the
    # "cuda" row lets this run without a GPU.
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    from ist_bench.runner.sample import worst_cell_timelines
    rows = []
    for backend in ("sim", "cpu"):
        case = Case(model="tiny-llama", method=MethodSpec(name="lora"), seq_len=32, steps=1, backend=backend).check()
        row = measure_memory(case)
        if backend == "cpu":
            row["backend"] = "cuda"
            row["memory"]["summary"]["run_allocated_peak"] = row["memory"]["summary"]["run_peak"]
        rows.append(row)
    rows[0]["case"] = {**rows[1]["case"], "backend": "sim"}   # one cell: the same case on both
    out = worst_cell_timelines(rows, tmp_path / "worst.png")
    assert out and (tmp_path / "worst.png").stat().st_size > 10_000


def test_an_fp16_softmax_to_fp32_runs_as_cudas_single_half_to_float_kernel():
    # Measured on the H200 (results/probes/h200-half-softmax.json), x of (1, 32, 2048, 2048): fp16 runs
    # _softmax (512 MiB fp32 out) with no cast before it, and its backward returns fp16 (256 MiB) with a
    # 512 MiB scratch; bf16 casts to fp32 first (512 MiB) and its backward returns fp32.
    probes = json.loads((PROBES / "h200-half-softmax.json").read_text())
    assert probes["torch.float16"][0] == ["aten._softmax.default", 512.0, 0.0]
    assert ["aten._softmax_backward_data.default", 256.0, 512.0] in probes["torch.float16"]
    assert probes["torch.bfloat16"][0][0] == "aten._to_copy.default"
    x = _meta(1, 32, 2048, 2048, dtype=torch.float16, grad=True)
    with sim.cuda_kernels():
        y = F.softmax(x, dim=-1, dtype=torch.float32)
    assert y.dtype == torch.float32 and type(y.grad_fn).__name__ == "SoftmaxBackward0"
    g = torch.empty_like(y)
    gi = aten._softmax_backward_data(g, y, -1, torch.float16)
    assert gi.dtype == torch.float16
    assert sim.cuda_scratch(aten._softmax_backward_data.default, (g, y, -1, torch.float16), {}, gi) == 512 << 20
    b = _meta(1, 32, 64, 64, grad=True)   # bf16 keeps the cast
    with sim.cuda_kernels():
        assert type(F.softmax(b, dim=-1, dtype=torch.float32).grad_fn).__name__ == "SoftmaxBackward0"
