"""Quantized bases (bitsandbytes) and its optimizers: every byte computed here from shapes and block sizes,
compared with sim (meta tensors) and with the cpu backend running bitsandbytes' real CPU path."""

import math

import pytest
import torch

pytest.importorskip("bitsandbytes")

from ist_bench import quant, zoo  # noqa: E402
from ist_bench.errors import UsageError  # noqa: E402
from ist_bench.measure import sim  # noqa: E402
from ist_bench.measure.tracker import MemoryTracker  # noqa: E402
from ist_bench.methods import MethodSpec  # noqa: E402
from ist_bench.runner.case import Case  # noqa: E402
from tests.conftest import memory_row  # noqa: E402

R = 32
TARGETS = ("q", "k", "v", "up", "down")   # the paper's LoRA targets


def _shapes(cfg) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer of one llama block."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    return {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (i, h), "up": (i, h), "down": (h, i)}


def _quantized_bytes(out_in, fmt, double) -> int:
    """bitsandbytes' storage of one weight, from its format: 4-bit packs two values a byte with an absmax
    per block of 64 values (fp32; with double quant uint8, plus per 256 of those an fp32 absmax, an fp32
    offset and the 256-entry fp32 code of the second quantization) and its 16-entry fp32 code table;
    int8 keeps a byte a value and an fp32 scale per output row."""
    n = math.prod(out_in)
    if fmt == "int8":
        return n + 4 * out_in[0]
    blocks = -(-n // 64)
    absmax = blocks + 4 * -(-blocks // 256) + 4 + 256 * 4 if double else 4 * blocks
    return -(-n // 2) + absmax + 16 * 4


def _expected_weights(cfg, fmt, double, r=R) -> int:
    """Quantized linears + what prepare_model_for_kbit_training upcasts to fp32 (embeddings, head, norms)
    + LoRA's fp32 adapters + RoPE's two fp32 buffers (inv_freq, original_inv_freq: head size / 2 each)."""
    shapes = _shapes(cfg)
    h, v, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    per_layer = sum(_quantized_bytes(s, fmt, double) for s in shapes.values())
    fp32 = 4 * (2 * v * h + (2 * layers + 1) * h)
    lora = 4 * sum(r * shapes[t][1] + shapes[t][0] * r for t in TARGETS)
    rope = 2 * 4 * (h // cfg.num_attention_heads // 2)
    return layers * (per_layer + lora) + fp32 + rope


def _adapters(cfg, r=R) -> list[int]:
    """Element counts of every LoRA matrix (A: r x in, B: out x r)."""
    shapes = _shapes(cfg)
    return [n for _ in range(cfg.num_hidden_layers) for t in TARGETS for n in (r * shapes[t][1], shapes[t][0] * r)]


def _row(backend, **kw):
    r = kw.pop("r", R)
    return memory_row("tiny-llama", backend=backend, spec=MethodSpec(name="lora", dropout=0.0, r=r), **kw)


FORMATS = [dict(quant="nf4", double_quant=True), dict(quant="nf4"), dict(quant="fp4"), dict(quant="int8")]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f["quant"] + ("-dq" if f.get("double_quant") else ""))
def test_quantized_weights_match_the_format_and_cpu_equals_sim_in_every_category(fmt):
    cfg = zoo.load_config("tiny-llama")
    expected = _expected_weights(cfg, fmt["quant"], fmt.get("double_quant", False))
    rows = {b: _row(b, **fmt) for b in ("sim", "cpu")}
    for b, row in rows.items():
        for step in row["memory"]["steps"]:
            assert step["weights"] == expected, b
            assert step["gradients"] == 4 * sum(_adapters(cfg))
    for s_sim, s_cpu in zip(rows["sim"]["memory"]["steps"], rows["cpu"]["memory"]["steps"], strict=True):
        for cat in ("weights", "activations", "gradients", "optimizer", "peak"):
            assert s_sim[cat] == s_cpu[cat], cat
        tensors = ("weights", "activations", "gradients", "optimizer", "temporary")
        assert {k: s_sim["at_peak"][k] for k in tensors} == {k: s_cpu["at_peak"][k] for k in tensors}
    q = rows["cpu"]["settings"]["quant"]
    assert q["layers"] == 7 * cfg.num_hidden_layers
    assert q["packed_bytes"] + q["state_bytes"] == cfg.num_hidden_layers * sum(
        _quantized_bytes(s, fmt["quant"], fmt.get("double_quant", False)) for s in _shapes(cfg).values())


def test_prepare_for_kbit_training_is_recorded_and_leaves_checkpointing_off_unless_asked():
    row = _row("sim", quant="nf4")
    prep = row["settings"]["quant"]["prepared"]
    assert prep["upcast_to_fp32"] == ["lm_head.weight", "model.embed_tokens.weight",
                                      "model.layers.*.input_layernorm.weight",
                                      "model.layers.*.post_attention_layernorm.weight", "model.norm.weight"]
    assert prep["use_gradient_checkpointing"] is False and row["settings"]["gradient_checkpointing"] is False
    on = _row("sim", quant="nf4", grad_checkpointing=True, steps=1)
    assert on["settings"]["quant"]["prepared"]["use_gradient_checkpointing"] is True
    assert on["settings"]["gradient_checkpointing"] is True


def test_adamw8bit_state_is_a_byte_a_moment_plus_fp32_scales_per_block_of_256():
    cfg = zoo.load_config("tiny-llama")
    # bitsandbytes keeps fp32 moments for tensors under 4096 values; else two uint8 moments, two fp32
    # absmax per block of 256, and two 256-entry fp32 code tables shared by all parameters
    expected = sum(8 * n if n < 4096 else 2 * n + 8 * -(-n // 256) for n in _adapters(cfg)) + 2 * 256 * 4
    assert any(n < 4096 for n in _adapters(cfg)) and any(n >= 4096 for n in _adapters(cfg))
    for b in ("sim", "cpu"):
        row = _row(b, quant="nf4", double_quant=True, optim="adamw8bit")
        assert row["memory"]["summary"]["optimizer"]["steady"] == expected, b
        assert row["settings"]["optimizer"] == "bnb.optim.AdamW8bit"


def test_paged_optimizer_state_is_its_own_category_outside_the_allocated_peak():
    cfg = zoo.load_config("tiny-llama")
    r = 2048     # adapters of >= 1e5 values, which bitsandbytes pages, beside smaller ones, which it does not
    sizes = _adapters(cfg, r)
    assert any(n >= 1e5 for n in sizes) and any(n < 1e5 for n in sizes)
    paged = sum(2 * n for n in sizes if n >= 1e5)     # two uint8 moments; their absmax stay in device memory
    rows = {b: _row(b, quant="nf4", optim="paged-adamw8bit", r=r, steps=1) for b in ("sim", "cpu")}
    s_sim, s_cpu = rows["sim"]["memory"]["steps"][-1], rows["cpu"]["memory"]["steps"][-1]
    assert s_sim["optimizer_paged"] == paged
    # on the CPU bitsandbytes falls back to plain buffers: all of it is ordinary optimizer state there
    assert s_cpu["optimizer_paged"] == 0 and s_cpu["optimizer"] == s_sim["optimizer"] + paged
    assert s_cpu["peak"] - s_sim["peak"] == paged     # sim, like the GPU's allocator, does not hold it


def _linear4bit(device, double):
    bnb = quant.require_bnb("test")
    lin = bnb.nn.Linear4bit(256, 128, bias=False, compute_dtype=torch.bfloat16, compress_statistics=double,
                            quant_type="nf4", device="meta")
    w = torch.empty(128, 256, dtype=torch.bfloat16, device=device)
    if device != "meta":
        w.normal_()
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double, quant_type="nf4",
                                   module=lin)._quantize(torch.device(device))
    return lin


@pytest.mark.parametrize("double", [True, False])
def test_backward_dequantizes_the_weight_into_a_temporary_of_its_full_size(double):
    """grad of the input = grad_out @ W: MatMul4Bit's backward dequantizes W (bf16, out x in) and, with
    double quant, the absmax first (two fp32 tensors of one value per block of 64). Same on meta and CPU."""
    born = {}
    for device in ("meta", "cpu"):
        lin = _linear4bit(device, double)
        x = torch.ones(4, 256, dtype=torch.bfloat16, device=device, requires_grad=True)
        y = lin(x)
        t = MemoryTracker(device, history=True)
        with t:
            y.sum().backward()
        born[device] = sorted(e.nbytes for e in t.log.values())
    blocks = 128 * 256 // 64
    assert 128 * 256 * 2 in born["meta"]
    if double:
        assert born["meta"].count(4 * blocks) >= 2
    assert born["meta"] == born["cpu"]


def test_sim_models_the_gemm_4bit_dequantized_weight_as_the_kernels_scratch():
    """Past 512 rows bitsandbytes' CUDA gemm_4bit dequantizes the weight (and the double-quantized absmax)
    inside the op, then calls F.linear: bytes no tensor of the op holds, modelled as its scratch."""
    lin = _linear4bit("meta", True)
    sim._add_bnb_scratch()
    for rows, scratch in ((1024, 128 * 256 * 2 + 2 * 4 * (128 * 256 // 64)), (512, 0)):
        x = torch.empty(rows, 256, dtype=torch.bfloat16, device="meta")
        t = MemoryTracker("meta", scratch=sim.cuda_scratch, block=sim.cuda_block_bytes)
        t.register([x, lin.weight, *quant.state_tensors(lin)])
        before = t.live_blocks
        with t, torch.no_grad():
            y = lin(x)
        assert t.live_blocks - before == sim.cuda_block_bytes(rows * 128 * 2)   # the output alone
        assert t.peak_blocks - t.live_blocks == scratch
        del y


def test_ist_runs_on_a_quantized_base_and_saves_gradients_and_optimizer_state():
    full = _row("sim", quant="nf4", double_quant=True, optim="adamw8bit")
    ist = _row("sim", quant="nf4", double_quant=True, optim="adamw8bit", select="ist", steps=3)
    assert ist["memory"]["summary"]["weights"]["steady"] == full["memory"]["summary"]["weights"]["steady"]
    assert ist["memory"]["summary"]["gradients"]["typical"] < full["memory"]["summary"]["gradients"]["typical"]


@pytest.mark.parametrize("method", ["series", "parallel", "dora", "adalora"])
def test_other_peft_methods_wrap_the_quantized_layers(method):
    """The same adapters as on the bf16 base, around 4-bit layers: as many trainable values, fewer weight bytes."""
    row = memory_row("tiny-llama", method, backend="sim", quant="nf4", steps=1)
    bf16 = memory_row("tiny-llama", method, backend="sim", steps=1)
    assert row["settings"]["quant"]["layers"] == 28
    assert row["trainable_params"] == bf16["trainable_params"] > 0
    assert row["memory"]["summary"]["gradients"]["steady"] == bf16["memory"]["summary"]["gradients"]["steady"]


@pytest.mark.parametrize("args,needle", [
    (["--quant", "nf4", "--method", "full"], "--quant nf4 freezes the base"),
    (["--quant", "nf3"], "quantization 'nf3'"),
    (["--quant", "int8", "--double-quant"], "--double-quant applies to 4-bit"),
    (["--optim", "adamw4bit"], "adamw4bit"),
])
def test_bad_quant_input_is_one_line_and_exit_2(args, needle, capsys):
    from ist_bench.cli import main

    assert main(["memory", "--model", "tiny-llama", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_missing_bitsandbytes_names_the_pip_command(monkeypatch):
    from ist_bench import process
    monkeypatch.setattr(process, "BNB", "bitsandbytes_not_installed")   # import fails as if not installed
    with pytest.raises(UsageError, match=r"pip install bitsandbytes"):
        Case(model="tiny-llama", quant="nf4", backend="sim").check()
    with pytest.raises(UsageError, match=r"--optim paged-adamw8bit needs bitsandbytes"):
        Case(model="tiny-llama", optim="paged-adamw8bit", backend="sim").check()


def test_a_quantized_cell_is_its_own_cell_and_not_validated_by_its_bf16_twin():
    from ist_bench.report.cells import check_note, column

    bf16 = {"model": "llama-7b", "method": {"name": "lora"}, "select": "none", "optim": "fused"}
    qlora = {**bf16, "quant": "nf4", "double_quant": True, "optim": "paged-adamw8bit"}
    assert column(qlora) == "lora nf4 dq paged-adamw8bit" and column(bf16) == "lora"
    assert check_note({"backend": "sim", "case": bf16}).startswith("validated")
    assert check_note({"backend": "sim", "case": qlora}).startswith("validated")   # on the H200 (quant suite)
    fp4 = {**qlora, "quant": "fp4"}                                                   # never measured on a GPU
    assert column(fp4) == "lora fp4 dq paged-adamw8bit"
    assert check_note({"backend": "sim", "case": fp4}).startswith("NOT validated")


def test_table1_gains_qlora_columns_beside_lora_from_the_h200_rows():
    """Table 1 of the H200's bf16 rows and its quantized rows: QLoRA +- IST are columns of their own, each
    cell the row's allocated peak, whatever the rows' order."""
    import random

    from ist_bench.report import frame, tables
    from ist_bench.results import read_rows

    rows = read_rows("results/gpu/table1-h200.jsonl") + read_rows("results/gpu/quant-h200.jsonl")
    peaks = {(r["case"]["select"]): r["memory"]["summary"]["run_allocated_peak"] / 2**30 for r in rows
             if r["case"]["model"] == "llama-7b" and r["case"].get("quant") == "nf4" and r["case"]["optim"] == "fused"}
    for seed in (0, 1):
        random.Random(seed).shuffle(rows)
        t1 = tables.table1(frame.build(rows), "cuda", "allocated peak (GiB)").set_index("model")
        assert {"lora", "lora nf4 dq", "lora+ist nf4 dq", "lora int8"} <= set(t1.columns)
        assert t1.loc["llama-7b", "lora nf4 dq"] == f"{peaks['none']:.1f}"
        assert t1.loc["llama-7b", "lora+ist nf4 dq"] == f"{peaks['ist']:.1f}"
