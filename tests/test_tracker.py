"""The tracker is exact where exactness is computable: these tests compute the bytes independently."""

import pytest
import torch

from ist_bench import zoo
from ist_bench.measure.sim import CUBLAS_WORKSPACE_BYTES
from ist_bench.measure.tracker import MemoryTracker, storage_bytes
from tests.conftest import memory_row

CATS = ("weights", "activations", "gradients", "optimizer", "method_state", "peak")
AT_PEAK_TENSORS = ("weights", "activations", "gradients", "optimizer", "method_state", "temporary")


def test_tracker_counts_each_storage_once_and_uncounts_it_when_freed():
    t = MemoryTracker("cpu")
    with t:
        a = torch.empty(1000)                   # 4000 B
        v = a.view(10, 100)[2:]                 # a view: no new storage
        b = a * 2                               # 4000 B more
        assert (t.live, t.peak) == (8000, 8000)
        del b
        assert t.live == 4000
        c = torch.empty(250, dtype=torch.float16)  # 500 B
        assert (t.live, t.peak) == (4500, 8000)
        t.reset_peak()
        assert t.peak == 4500
    del a, v, c
    assert t.live == 0


def test_tracker_does_not_count_views_of_registered_weights_again():
    w = torch.nn.Parameter(torch.randn(64, 32))
    t = MemoryTracker("cpu")
    t.register([w])
    with t:
        y = torch.randn(8, 64) @ w              # w.t() views are not new storages
    # weight + input (saved by mm for w's gradient) + output
    assert t.live == 64 * 32 * 4 + 8 * 64 * 4 + 8 * 32 * 4
    del y


def test_storage_bytes_counts_tied_weights_once():
    model = zoo.build_model(zoo.load_config("tiny-gpt2"), device="meta", dtype=torch.float32)
    assert model.lm_head.weight is model.transformer.wte.weight
    unique = sum(p.numel() for p in model.parameters()) * 4
    assert storage_bytes(list(model.parameters())) == unique


@pytest.mark.parametrize("model,dtype", [("tiny-llama", "bf16"), ("tiny-llama", "fp32"), ("tiny-gpt2", "fp32")])
@pytest.mark.parametrize("method,select", [("lora", "none"), ("series", "rst"), ("parallel", "none"),
                                           ("full", "rst"), ("dora", "none"), ("adalora", "rst")])
def test_sim_and_cpu_give_identical_bytes_in_every_category(no_cuda_emulation, model, dtype, method, select):
    """With CUDA's kernels not emulated, meta takes the CPU's kernels: every byte must agree.

    (GPT-2 in bf16 differs by design: the CPU's LayerNorm keeps its saved mean and rstd in bf16,
    CUDA's and meta's in fp32; see test_sim_keeps_layernorm_statistics_in_fp32_as_cuda_does.)
    """
    rows = {b: memory_row(model, method, backend=b, select=select, steps=3, dtype=dtype) for b in ("sim", "cpu")}
    for s_sim, s_cpu in zip(rows["sim"]["memory"]["steps"], rows["cpu"]["memory"]["steps"], strict=True):
        assert {c: s_sim[c] for c in CATS} == {c: s_cpu[c] for c in CATS}
        assert {c: s_sim["at_peak"][c] for c in AT_PEAK_TENSORS} == {c: s_cpu["at_peak"][c] for c in AT_PEAK_TENSORS}
        assert s_sim["active_layers"] == s_cpu["active_layers"]


def _param_bytes(model_name, method):
    """Weight bytes from parameter counts x dtype sizes (bf16 base, fp32 adapters)."""
    from ist_bench.methods import MethodSpec, apply_method
    net = zoo.build_model(zoo.load_config(model_name), device="meta", dtype=torch.bfloat16)
    base = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    net = apply_method(net, MethodSpec(name=method))
    adapter = sum(p.numel() for p in net.parameters()) - base
    return base * 2 + adapter * 4 + buffers, adapter


@pytest.mark.parametrize("backend", ["sim", "cpu"])
def test_weights_equal_parameter_and_buffer_bytes(backend):
    row = memory_row("tiny-llama", "lora", backend=backend)
    expected, _ = _param_bytes("tiny-llama", "lora")
    assert row["memory"]["steps"][0]["weights"] == expected


def test_llama7b_lora_weights_are_12_76_gib_exactly():
    row = memory_row("llama-7b", "lora", backend="sim", steps=1, seq_len=16)
    expected, adapter = _param_bytes("llama-7b", "lora")
    assert adapter == 56_098_816
    assert row["memory"]["steps"][0]["weights"] == expected
    assert expected / 2**30 == pytest.approx(12.76, abs=0.005)


@pytest.mark.parametrize("backend", ["sim", "cpu"])
@pytest.mark.parametrize("select", ["none", "rst"])
def test_gradients_are_the_trainable_bytes_of_the_selected_layers(backend, select):
    row = memory_row("tiny-llama", "lora", backend=backend, select=select, steps=4,
                     select_opts={"layers": 0.5} if select == "rst" else {})
    per_layer = 32 * (64 + 64) + 2 * 32 * (64 + 32) + 32 * (64 + 176) + 32 * (176 + 64)  # q, k+v, up, down
    for s in row["memory"]["steps"]:
        n_active = 4 if select == "none" else 2
        assert (s["active_layers"] is None) == (select == "none")
        assert s["gradients"] == n_active * per_layer * 4


@pytest.mark.parametrize("backend", ["sim", "cpu"])
def test_adamw_state_is_two_fp32_moments_per_trained_parameter_plus_step_counters(backend):
    row = memory_row("tiny-llama", "lora", backend=backend, select="rst", steps=5, select_opts={"layers": 0.25})
    per_layer_numel = 32 * (64 + 64) + 2 * 32 * (64 + 32) + 32 * (64 + 176) + 32 * (176 + 64)
    per_layer_tensors = 2 * 5                     # lora_A and lora_B on 5 projections
    per_layer = 2 * 4 * per_layer_numel + 4 * per_layer_tensors
    first, *drawn, steady = row["memory"]["steps"]
    assert first["optimizer"] == len(first["active_layers"]) * per_layer    # only what step 0 trained
    # after the first step, `keep` holds every layer's moments, as a long run does, however few steps ran
    for s in drawn + [steady]:
        assert s["optimizer"] == 4 * per_layer
    assert steady["phase"] == "steady"
    summary = row["memory"]["summary"]["optimizer"]
    assert summary["first"] == per_layer and summary["steady"] == 4 * per_layer


def test_activations_of_tiny_llama_match_the_derived_formula():
    """Full fine-tuning, bf16, eager attention. Tensors alive at the end of forward, derived by
    reading transformers' Llama code and torch's autograd formulas (T tokens, h hidden, H heads
    of d, f MLP width, V vocab; the model repeats its 2 KV heads to 4, so k and v are copied):

    per layer:
      2 x RMSNorm: fp32 copy of the input (saved by pow and mul)      4Th
                   rsqrt of the variance (saved by rsqrt and mul)        4T
                   bf16 normalised input (saved by weight * x)           2Th
                   its output (saved by the next linears)                2Th
      rotated q (saved by q @ k^T)                                       2Th
      repeated k and v (saved by the two attention matmuls)              2 x 2Th
      softmax output, fp32 (saved by softmax) and its bf16 copy          4HT^2 + 2HT^2
      attention output made contiguous (saved by o_proj)                 2Th
      MLP: gate output (saved by SiLU), SiLU output and up output
           (saved by their product), the product (saved by down_proj)    4 x 2Tf
    once:
      final RMSNorm as above                                             8Th + 4T
      rotary cos and sin, bf16 (saved by q*cos, rotate_half(q)*sin)      2 x 2Td
      log-softmax of the fp32 logits (saved by log_softmax)              4TV
      labels padded by one, int64; the shifted labels nll_loss saves
      are a view of it (a [1, T] slice of [1, T+1] is already contiguous)  8(T+1)
      nll_loss's total weight and the loss, fp32 scalars                 4 + 4
    The residual stream and the bf16 logits are not saved, so they are gone.
    """
    T, h, H, d, f, V, L = 128, 64, 4, 16, 176, 512, 4
    per_layer = 2 * (4 * T * h + 4 * T + 2 * T * h + 2 * T * h) + 2 * T * h + 2 * 2 * T * h \
        + 6 * H * T * T + 2 * T * h + 4 * 2 * T * f
    expected = L * per_layer + (8 * T * h + 4 * T) + 2 * 2 * T * d + 4 * T * V + 8 * (T + 1) + 8
    for backend in ("cpu", "sim"):
        row = memory_row("tiny-llama", "full", backend=backend, seq_len=T, steps=1)
        assert row["memory"]["steps"][0]["activations"] == expected, backend


def test_sim_saves_cudas_one_byte_dropout_masks_instead_of_noise():
    """CPU/meta dropout saves noise in the input's dtype; CUDA's fused kernel a bool mask.

    LoRA applies dropout (p=0.05) to its fp32 copy of each adapted projection's input. Noise is
    saved only where that input needs a gradient: in layer 0, q, k and v read the (frozen)
    embeddings, so 4 layers x 5 sites - 3 sites save one. Each saves 4 bytes/element on the
    CPU and 1 on CUDA: sim must come out 3 bytes/element lower than cpu.
    """
    T, h, f, L = 64, 64, 176, 4
    elements = (L * 4 - 3) * T * h + L * T * f     # q, k, v, up read h features; down reads f
    cpu = memory_row("tiny-llama", "lora", backend="cpu", seq_len=T, steps=1)["memory"]["steps"][0]
    sim = memory_row("tiny-llama", "lora", backend="sim", seq_len=T, steps=1)["memory"]["steps"][0]
    assert cpu["activations"] - sim["activations"] == 3 * elements


def test_a_simulated_oom_is_a_result_row_with_the_peak_reached():
    from ist_bench.measure.sim import CUBLAS_WORKSPACE_BYTES
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    full = memory_row("tiny-llama", "full", backend="sim", steps=2)["memory"]["summary"]["run_allocated_peak_est"]
    cap = full - (full - CUBLAS_WORKSPACE_BYTES) // 2   # half of the tensors fit beside the workspace
    case = Case(model="tiny-llama", method=MethodSpec(name="full"), backend="sim", seq_len=64, steps=2,
                capacity=f"{cap}B").check()
    row = measure_memory(case)
    assert row["status"] == "oom" and "capacity" in row["error"]
    assert cap < row["peak_reached"] <= full


@pytest.mark.parametrize("request_bytes,block", [
    (1, 512), (512, 512), (513, 1024),                     # the small pool rounds to 512 B
    (2**20 + 1, 2**20 + 512),                              # > 1 MiB: still 512 B rounding (split from 20 MiB)
    (9 * 2**20, 9 * 2**20),
    (10 * 2**20, 10 * 2**20),                              # >= 10 MiB: own segment, rounded to 2 MiB
    (int(19.5 * 2**20), 20 * 2**20),                       # 0.5 MiB left: too little to split off
    (int(20.5 * 2**20), int(20.5 * 2**20)),                # 1.5 MiB left: split, the block is the request
    (21 * 2**20, 22 * 2**20),                              # exactly 1 MiB left: not split
])
def test_allocator_model_follows_the_caching_allocators_rules(request_bytes, block):
    from ist_bench.measure.sim import cuda_block_bytes
    assert cuda_block_bytes(request_bytes) == block


def test_sim_capacity_counts_the_estimate_not_just_the_tensors():
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    est = memory_row("tiny-llama", "lora", backend="sim")["memory"]["summary"]["run_allocated_peak_est"]

    def status(cap):
        case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", seq_len=64, steps=2,
                    capacity=f"{cap}B").check()
        return measure_memory(case)["status"]
    assert status(est) == "ok" and status(est - 1) == "oom"


# -- the measurement protocol: first step, drawn steps, a steady state that does not depend on --steps
def test_steady_state_figures_do_not_depend_on_the_number_of_steps():
    rows = [memory_row("tiny-llama", "lora", backend="sim", select="ist", steps=n, seq_len=64) for n in (2, 12)]
    short, long = (r["memory"]["steps"][-1] for r in rows)
    assert short["phase"] == long["phase"] == "steady"
    skip = {"step", "phase"}
    assert {k: v for k, v in short.items() if k not in skip} == {k: v for k, v in long.items() if k not in skip}
    assert short["importance_peak"] > 0                      # the steady step includes an importance round


def test_the_worst_draw_bounds_every_drawn_step():
    row = memory_row("tiny-llama", "full", backend="sim", select="rst", steps=16, seq_len=64,
                     select_opts={"layers": 0.5})
    *drawn, steady = row["memory"]["steps"]
    assert steady["active_layers"] == [2, 3]   # full FT trains the embeddings: the top layers are the worst draw
    for key in ("activations", "gradients", "optimizer", "peak", "allocated_peak_est"):
        assert steady[key] >= max(s[key] for s in drawn), key
    # with `reset` only the active layers hold state at the steady step
    reset = memory_row("tiny-llama", "full", backend="sim", select="rst", steps=3, seq_len=64,
                       select_opts={"layers": 0.5}, optimizer_state="reset")["memory"]["steps"][-1]
    assert reset["optimizer"] < steady["optimizer"]


@pytest.mark.parametrize("method,select", [("full", "none"), ("lora", "ist"), ("dora", "rst"), ("adalora", "none"),
                                           ("series", "lisa"), ("parallel", "ist-code"), ("full", "lift")])
def test_the_breakdown_at_the_peak_sums_to_the_peak_exactly(method, select):
    sim = memory_row("tiny-llama", method, backend="sim", select=select, steps=3, seq_len=64)
    for s in sim["memory"]["steps"]:
        assert sum(s["at_peak"].values()) == s["allocated_peak_est"]
        assert s["at_peak"]["workspace"] == CUBLAS_WORKSPACE_BYTES and s["at_peak"]["temporary"] >= 0
    cpu = memory_row("tiny-llama", method, backend="cpu", select=select, steps=3, seq_len=64)
    for s in cpu["memory"]["steps"]:
        assert sum(s["at_peak"].values()) == s["peak"] and s["at_peak"]["rounding"] == 0


def test_at_the_peak_of_full_finetuning_every_category_is_what_was_live():
    """Full FT, first step, sim: the peak comes in backward (the weights' gradients appear while the
    activations are still live); the old 'peak minus categories' went negative here."""
    row = memory_row("tiny-llama", "full", backend="sim", steps=1, seq_len=64)
    first, steady = row["memory"]["steps"]
    assert first["at_peak"]["weights"] == first["weights"]
    assert 0 < first["at_peak"]["activations"] <= first["activations"]
    assert steady["at_peak"]["optimizer"] == steady["optimizer"]      # AdamW state lives throughout
    assert list(steady["top_activations"])[0].startswith("model.layers.*.")


def test_adalora_budget_masking_changes_no_memory_figure(monkeypatch):
    """sim skips AdaLoRA's masking (it needs values); on the CPU it runs: every figure must agree."""
    from peft.tuners.adalora.layer import RankAllocator
    calls = []
    original = RankAllocator.mask_to_budget

    def counting(self, model, budget):
        calls.append(budget)
        return original(self, model, budget)
    monkeypatch.setattr(RankAllocator, "mask_to_budget", counting)
    masked = memory_row("tiny-llama", "adalora", backend="cpu", steps=4, seq_len=64)
    assert calls                                                      # the masking really ran
    monkeypatch.setattr(RankAllocator, "mask_to_budget", lambda self, model, budget: None)
    plain = memory_row("tiny-llama", "adalora", backend="cpu", steps=4, seq_len=64)
    keys = CATS + ("at_peak", "top_activations")
    for a, b in zip(masked["memory"]["steps"], plain["memory"]["steps"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_selection_history_and_settings_are_in_the_row():
    row = memory_row("tiny-llama", "lora", backend="sim", select="ist", steps=2, seq_len=64,
                     select_opts={"beta": 0.5, "mu": 100})
    sel = row["selection"]
    assert sel["policy"] == {"name": "ist", "layers": 0.25, "candidates": 0.5, "beta": 0.5, "interval": 10,
                             "n_candidates": 3, "mu": 100.0, "eval_batch": 1, "eval_data": "fixed", "seed": 0, "optimizer_state": "keep"}
    steps = [h["step"] for h in sel["history"]]
    assert steps[:2] == [0, 1] and set(steps[2:]) == {2} and len(steps) >= 4   # the run, then the steady-condition steps
    # no round is due in 2 steps at T_c = 10; each step under steady conditions runs one (its forced round)
    assert all(len(h["importance"]) == 4 for h in sel["history"]) and len(sel["rounds"]) == len(steps) - 2
    assert row["settings"]["optimizer_state"] == "keep"


@pytest.mark.parametrize("model,method,select", [("tiny-llama", "lora", "ist"), ("tiny-gpt2", "adalora", "rst"),
                                                 ("tiny-llama", "full", "lisa"), ("tiny-gpt2", "dora", "none")])
def test_memoized_meta_ops_give_the_same_bytes_as_the_meta_kernels(monkeypatch, model, method, select):
    from ist_bench.measure import backends, sim
    from ist_bench.measure.tracker import MemoryTracker
    memo = memory_row(model, method, backend="sim", select=select, steps=3)
    monkeypatch.setattr(backends, "tracker", lambda backend, capacity=None, history=False: MemoryTracker(
        "meta", block=sim.cuda_block_bytes, capacity=capacity, outside=sim.CUBLAS_WORKSPACE_BYTES, memo=False,
        scratch=sim.cuda_scratch, history=history))
    plain = memory_row(model, method, backend="sim", select=select, steps=3)
    assert memo["memory"]["steps"] == plain["memory"]["steps"]


def test_sim_refuses_a_mixed_dtype_matmul_as_the_device_does():
    """Meta kernels let fp32 activations meet bf16 weights; every device kernel refuses. Under the tracker
    sim refuses too (Series under FSDP2 ran on sim and failed on the H200 before this)."""
    import pytest
    import torch

    from ist_bench.measure.tracker import MemoryTracker

    a = torch.empty(4, 8, device="meta")
    w = torch.empty(3, 8, device="meta", dtype=torch.bfloat16)
    with MemoryTracker("meta"):
        assert torch.nn.functional.linear(a.bfloat16(), w).dtype == torch.bfloat16
        with pytest.raises(RuntimeError, match="expected mat1 and mat2 to have the same dtype"):
            torch.nn.functional.linear(a, w)
