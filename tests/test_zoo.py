import json
from pathlib import Path

import pytest
from torch import nn

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case

CONFIGS = Path(__file__).parent / "configs"

PUBLISHED = {  # (layers, hidden, params) from the published model cards
    "gpt2-small": (12, 768, 124.4e6),
    "tinyllama-1.1b": (22, 2048, 1.100e9),
    "llama-7b": (32, 4096, 6.738e9),
    "llama-13b": (40, 5120, 13.016e9),
    "llama3-8b": (32, 4096, 8.030e9),
    "bloomz-7b1": (30, 4096, 7.069e9),
    # beyond one GPU (issue 19): exact counts from the published checkpoints' safetensors indexes
    "llama-30b": (60, 6656, 32.529e9),
    "llama2-70b": (80, 8192, 68.977e9),
    "llama3.1-70b": (80, 8192, 70.554e9),
    "qwen2.5-32b": (64, 5120, 32.764e9),
    "qwen2.5-72b": (80, 8192, 72.706e9),
}


def test_zoo_has_the_papers_models_and_tiny_test_models():
    names = zoo.names()
    for name in ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "tinyllama-1.1b", "llama-7b", "llama-13b",
                 "llama2-7b", "llama3-8b", "bloomz-7b1", "tiny-gpt2", "tiny-llama"]:
        assert name in names


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_configs_match_published_sizes(name):
    layers, hidden, params = PUBLISHED[name]
    cfg = zoo.load_config(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (layers, hidden)
    assert zoo.count_parameters(cfg) == pytest.approx(params, rel=0.002)


def _llama_params(h, f, L, V, heads, kv, qkv_bias=False):
    d = h // heads
    attn = 2 * h * h + 2 * h * kv * d + (h + 2 * kv * d if qkv_bias else 0)   # q,o + k,v (+ Qwen's q,k,v bias)
    return L * (attn + 3 * h * f + 2 * h) + 2 * V * h + h


@pytest.mark.parametrize("name,shape", [
    ("llama-30b", (6656, 17920, 60, 32000, 52, 52, False)),
    ("llama2-70b", (8192, 28672, 80, 32000, 64, 8, False)),
    ("llama3.1-70b", (8192, 28672, 80, 128256, 64, 8, False)),
    ("qwen2.5-32b", (5120, 27648, 64, 152064, 40, 8, True)),
    ("qwen2.5-72b", (8192, 29568, 80, 152064, 64, 8, True)),
])
def test_models_beyond_one_gpu_have_the_published_shapes(name, shape):
    h, f, L, V, heads, kv, bias = shape
    cfg = zoo.load_config(name)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size,
            cfg.num_attention_heads, cfg.num_key_value_heads) == (h, f, L, V, heads, kv)
    assert zoo.count_parameters(cfg) == _llama_params(h, f, L, V, heads, kv, bias)


def test_llama3_1_70b_uses_llama3_rope_scaling_and_llama2_70b_its_4k_context():
    c = zoo.load_config("llama3.1-70b")
    rope = getattr(c, "rope_parameters", None) or c.rope_scaling
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("llama3", 8.0, 8192)
    assert rope.get("rope_theta", getattr(c, "rope_theta", None)) == 500000.0
    assert zoo.max_positions(zoo.load_config("llama2-70b")) == 4096


def test_llama7b_parameter_count_equals_the_formula():
    h, f, L, V = 4096, 11008, 32, 32000
    per_layer = 4 * h * h + 3 * h * f + 2 * h  # q,k,v,o + gate,up,down + two RMSNorm weights
    assert zoo.count_parameters(zoo.load_config("llama-7b")) == L * per_layer + 2 * V * h + h


@pytest.mark.parametrize("model_type,extra", [
    ("gpt2", {"n_layer": 3, "n_embd": 32, "n_head": 2}),
    ("llama", {"num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}),
    ("mistral", {"num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                 "num_key_value_heads": 2}),
    ("qwen2", {"num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_key_value_heads": 2}),
    ("opt", {"num_hidden_layers": 3, "hidden_size": 32, "ffn_dim": 64, "num_attention_heads": 2,
             "word_embed_proj_dim": 32}),
    ("bloom", {"n_layer": 3, "hidden_size": 32, "n_head": 2}),
    ("gptj", {"n_layer": 3, "n_embd": 32, "n_head": 2, "rotary_dim": 8}),
])
def test_layer_locator_finds_blocks_of_each_family(tmp_path, model_type, extra):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type, "vocab_size": 64, **extra}))
    model = zoo.build_model(zoo.load_config(str(path)), device="meta")
    layers = zoo.locate_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 3
    assert all(type(b).__name__.endswith(("Block", "Layer", "DecoderLayer")) for b in layers)


def test_layer_locator_finds_blocks_through_peft_wrapping():
    from ist_bench.methods import MethodSpec, apply_method

    model = zoo.build_model(zoo.load_config("tiny-llama"), device="meta")
    wrapped = apply_method(model, MethodSpec(name="lora"))
    assert len(zoo.locate_layers(wrapped)) == 4


def test_layer_locator_says_when_it_cannot_find_blocks():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    with pytest.raises(UsageError, match="cannot locate the transformer blocks"):
        zoo.locate_layers(Odd())


def test_unknown_model_names_the_closest_and_where_all_are_listed():
    with pytest.raises(UsageError, match=r"unknown model 'llama-70b'; did you mean llama2-70b, .*listed by `ist-bench models`"):
        zoo.load_config("llama-70b")


def test_a_short_list_of_choices_is_given_whole():
    from ist_bench.errors import choice_error
    assert str(choice_error("policy", "x", ["a", "b"], listed_by="ist-bench methods")) == "unknown policy 'x'; valid: a, b"


def test_malformed_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="malformed config file"):
        zoo.load_config(str(bad))
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UsageError, match="no 'model_type'"):
        zoo.load_config(str(bad))


def test_an_attention_the_models_class_does_not_offer_is_one_line(capsys):
    from ist_bench.cli import main
    from ist_bench.zoo import build

    config = build.load_config("gemma2-9b")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    if getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_supports_sdpa", True):
        pytest.skip("this transformers offers SDPA for Gemma-2")
    assert main(["memory", "--model", "gemma2-9b", "--attn", "sdpa"]) == 2
    err = capsys.readouterr().err
    assert "--attn sdpa: gemma2-9b (gemma2) has no SDPA attention" in err and len(err.splitlines()) == 1


# -- structure discovery (zoo/structure.py) ------------------------------------------------------------------
# The placements the old hand-kept family table gave (paper: LoRA on q, k, v, up, down; Series on the MLP's up
# input and down output; Parallel beside up and gate): discovery must find exactly these.
PAPER_PLACEMENTS = {
    "tiny-llama": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj",
                                    "mlp.down_proj"], "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj"),
    "tiny-gpt2": ("transformer.h", ["attn.c_attn", "mlp.c_fc", "mlp.c_proj"], "mlp.c_fc", "mlp.c_proj", None),
    "phi3-mini": ("model.layers", ["self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"], "mlp.gate_up_proj",
                  "mlp.down_proj", None),
    "bloomz-7b1": ("transformer.h", ["self_attention.query_key_value", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
                   "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", None),
    "gemma2-9b": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj",
                                   "mlp.down_proj"], "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj"),
}


@pytest.mark.parametrize("name", sorted(PAPER_PLACEMENTS))
def test_discovery_finds_the_papers_placements(name):
    from ist_bench.zoo.structure import discover

    s = discover(zoo.build_model(zoo.load_config(name), device="meta"))
    layers, lora, up, down, gate = PAPER_PLACEMENTS[name]
    assert s.layers == layers and s.lora_modules() == lora and len(s.kinds) == 1
    k = s.kinds[0]
    assert (k.up, k.down, k.gate) == (up, down, gate)
    assert s.conv1d == (name == "tiny-gpt2") and not s.is_moe


@pytest.mark.parametrize("model_type,extra,qkv,output", [
    ("opt", {"num_hidden_layers": 2, "hidden_size": 32, "ffn_dim": 64, "num_attention_heads": 2,
             "word_embed_proj_dim": 32}, ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], "self_attn.out_proj"),
    ("gptj", {"n_layer": 2, "n_embd": 32, "n_head": 2, "rotary_dim": 8},
     ["attn.k_proj", "attn.v_proj", "attn.q_proj"], "attn.out_proj"),
    ("gpt_neox", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
     ["attention.query_key_value"], "attention.dense"),
    ("falcon", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2},
     ["self_attention.query_key_value"], "self_attention.dense"),
])
def test_discovery_of_families_no_table_listed(tmp_path, model_type, extra, qkv, output):
    """OPT keeps its MLP's fc1/fc2 on the block itself; GPT-J, Pythia and Falcon have names of their own."""
    from ist_bench.zoo.structure import discover

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type, "vocab_size": 64, **extra}))
    s = discover(zoo.build_model(zoo.load_config(str(path)), device="meta"))
    k = s.kinds[0]
    assert sorted(k.qkv) == sorted(qkv) and k.output == output
    assert k.up and k.down and k.up != k.down


def test_discovery_of_a_mixture_of_experts_and_of_deepseeks_mixed_blocks():
    from ist_bench.zoo.structure import discover

    mixtral = discover(zoo.build_model(zoo.load_config(str(CONFIGS / "tiny-mixtral.json")), device="meta"))
    assert mixtral.is_moe and mixtral.lora_modules() == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert mixtral.lora_parameters() == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    assert mixtral.kinds[0].moe.router == "mlp.gate"
    ds = discover(zoo.build_model(zoo.load_config(str(CONFIGS / "tiny-deepseek-v3.json")), device="meta"))
    assert ds.kind_of == (0, 1, 1, 1) and ds.kinds[0].moe is None and ds.kinds[1].moe.shared == ("mlp.shared_experts",)
    assert ds.kinds[0].qkv == ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                               "self_attn.kv_b_proj")   # multi-head latent attention: every projection but o_proj
    assert "mlp.shared_experts.up_proj" in ds.lora_modules() and "mlp.up_proj" in ds.lora_modules()


@pytest.mark.parametrize("method,select", [("lora", "ist"), ("series", "ist"), ("parallel", "rst"), ("full", "lisa")])
def test_every_method_and_policy_runs_on_a_mixture_of_experts(method, select):
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    case = Case(model=str(CONFIGS / "tiny-mixtral.json"), method=MethodSpec(name=method), select=select,
                backend="sim", seq_len=64, steps=2).check()
    row = measure_memory(case)
    assert row["status"] == "ok", row.get("traceback")
    if method == "lora":   # fused experts take peft's ParamWrapper, which takes no dropout
        assert case.method.dropout == 0.0 and row["settings"]["structure"]["lora_parameters"]
    if method == "series":
        assert row["trainable_params"] == 4 * 2 * 2 * 64 * 256   # two adapters (64 -> 256 -> 64) around each MoE


def test_dora_on_fused_experts_is_refused_in_one_line_and_runs_on_attention(capsys):
    from ist_bench.cli import main

    path = str(CONFIGS / "tiny-mixtral.json")
    assert main(["memory", "--model", path, "--method", "dora", "--steps", "0", "--seq-len", "64"]) == 2
    err = capsys.readouterr().err
    assert "fused 3-D weights" in err and "--target-modules self_attn.q_proj" in err and err.count("\n") == 1
    assert main(["memory", "--model", path, "--method", "dora", "--steps", "0", "--seq-len", "64",
                 "--target-modules", "q_proj,v_proj"]) == 0


@pytest.mark.parametrize("targets,message", [
    ("nope", "--target-modules 'nope' matches no module of tiny-llama (llama)"),
    ("lm_head", "--target-modules 'lm_head' matches the LM head of tiny-llama"),
    ("q_proj;v", "--target-modules takes comma-separated module names"),
])
def test_target_modules_that_match_nothing_or_the_head_are_one_line(capsys, targets, message):
    from ist_bench.cli import main

    assert main(["memory", "--model", "tiny-llama", "--target-modules", targets, "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_target_modules_choose_what_lora_adapts_and_label_the_cell():
    from ist_bench.methods import MethodSpec
    from ist_bench.report.cells import column
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    rows = {t: measure_memory(Case(model="tiny-llama", method=MethodSpec(name="lora", target_modules=t), backend="sim",
                                   seq_len=64, steps=0).check()) for t in (None, "q_proj,v_proj", "all-linear")}
    r = 32   # tiny-llama: 4 layers, hidden 64, key/value width 32
    assert rows["q_proj,v_proj"]["trainable_params"] == 4 * r * ((64 + 64) + (64 + 32))
    assert rows["all-linear"]["trainable_params"] > rows[None]["trainable_params"] > rows["q_proj,v_proj"]["trainable_params"]
    assert column(rows["q_proj,v_proj"]["case"]) == "lora seq=64 targets=q_proj,v_proj"
    assert column(rows[None]["case"]) == "lora seq=64"


def test_a_model_sim_cannot_run_is_refused_with_the_reason(tmp_path, capsys):
    """A forward that reads tensor values beyond a mask check (XLM asks `.item()` of its lengths)."""
    from ist_bench.cli import main

    path = tmp_path / "xlm.json"
    path.write_text(json.dumps({"model_type": "xlm", "vocab_size": 64, "emb_dim": 32, "n_layers": 2, "n_heads": 2}))
    assert main(["memory", "--model", str(path), "--steps", "0", "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "sim cannot run" in err and "(xlm)" in err and "--backend cuda or cpu" in err and err.count("\n") == 1


def _tiny(tmp_path, model_type: str, **extra) -> str:
    from ist_bench.zoo.sweep import shrink

    path = tmp_path / f"{model_type}.json"
    path.write_text(json.dumps({**shrink(model_type), **extra}, default=str))
    return str(path)


@pytest.mark.parametrize("model_type", ["bert", "qwen3_next", "lfm2"])
def test_a_mask_check_is_answered_as_the_gpu_answers_an_unpadded_batch(tmp_path, model_type):
    """BERT's `padding_mask.all()` and linear attention's `torch.all(mask == 1)` read values meta does not
    hold; sim answers True (ist-bench's batches are never padded): these once were refused."""
    from ist_bench.runner.memory import measure_memory

    row = measure_memory(Case(model=_tiny(tmp_path, model_type), method=MethodSpec(name="lora"), select="ist",
                              backend="sim", seq_len=32, steps=0).check())
    assert row["status"] == "ok", row.get("error")


def test_the_mask_answer_is_only_for_whole_reductions_of_masks():
    import torch

    from ist_bench.measure.sim import cuda_kernels

    with cuda_kernels():
        assert bool(torch.all(torch.ones(3, 4, dtype=torch.long, device="meta") == 1))
        assert bool(torch.ones(3, 4, dtype=torch.bool, device="meta").all())
        assert torch.all(torch.zeros(2, 3, device="meta")).is_meta              # floating point: a value, not a mask
        assert torch.ones(3, 4, dtype=torch.bool, device="meta").all(dim=1).is_meta   # per row: left to meta
        assert not bool(torch.all(torch.tensor([1, 0]) == 1))                  # real tensors keep their values
    assert torch.all(torch.ones(2, dtype=torch.bool, device="meta")).is_meta   # outside sim: torch's own


def test_a_multimodal_config_adapts_its_language_model(tmp_path):
    """Gemma 3 as published: sizes under text_config; the vision tower is built (loading the checkpoint
    would load it) and frozen, the language model's blocks are what LoRA adapts and IST selects."""
    from ist_bench.runner.build import structure_of
    from ist_bench.runner.memory import measure_memory
    from ist_bench.zoo import raw_positions, raw_text

    path = _tiny(tmp_path, "gemma3")
    raw = json.loads(open(path).read())
    assert "num_hidden_layers" not in raw and raw_text(raw)["num_hidden_layers"] == 2
    assert raw_positions(raw) == raw["text_config"]["max_position_embeddings"]
    s = structure_of(path)
    assert s.n_layers == 2 and "language_model" in s.layers
    row = measure_memory(Case(model=path, method=MethodSpec(name="lora"), select="ist", backend="sim", seq_len=32,
                              steps=0).check())
    assert row["status"] == "ok" and row["params"] > row["trainable_params"] > 0


def test_a_state_space_model_takes_lora_and_refuses_bottleneck_adapters_in_one_line(tmp_path, capsys):
    """Mamba: no attention, no MLP, no experts (its conv1d's 3-D kernel is no expert stack): LoRA adapts the
    mixer's input projections; Series has no MLP to sit on and says so."""
    from ist_bench.cli import main
    from ist_bench.runner.build import structure_of

    path = _tiny(tmp_path, "mamba")
    s = structure_of(path)
    assert not s.is_moe and s.lora_modules() == ["mixer.in_proj", "mixer.x_proj", "mixer.dt_proj"]
    assert main(["memory", "--model", path, "--method", "lora", "--steps", "0", "--seq-len", "32"]) == 0
    capsys.readouterr()
    assert main(["memory", "--model", path, "--method", "series", "--steps", "0", "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "no MLP" in err and "MambaBlock" in err and "--method lora" in err and err.count("\n") == 1


def test_published_config_forms_are_taken(tmp_path):
    """Mamba-2's time_step_limit [0, Infinity], LongCat-Flash's num_layers (pairs of blocks), Gemma 3n's
    per-layer intermediate_size: as published, not refused (NaN still is)."""
    from ist_bench.zoo import load_config, raw_config

    p = tmp_path / "inf.json"
    p.write_text(json.dumps({"model_type": "mamba2", "time_step_limit": [0.0, float("inf")], "num_hidden_layers": 2}))
    assert raw_config(str(p))["time_step_limit"][1] == float("inf")
    p.write_text(json.dumps({"model_type": "mamba2", "time_step_limit": [0.0, float("nan")], "num_hidden_layers": 2}))
    with pytest.raises(UsageError, match="time_step_limit.1 must be a number"):
        raw_config(str(p))
    assert load_config(_tiny(tmp_path, "longcat_flash")).num_hidden_layers == 2
    import types

    from ist_bench import schema

    shape = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512)
    schema.check_config(types.SimpleNamespace(**shape, intermediate_size=[128, 256]), "")
    with pytest.raises(UsageError, match="intermediate_size"):
        schema.check_config(types.SimpleNamespace(**shape, intermediate_size=[128, 0]), "")


def test_a_linear_whose_output_is_not_its_width_is_not_adapted(tmp_path):
    """DeepSeek-V4's grouped o_a_proj is an nn.Linear mapping each of g groups: peft's LoRA update would not
    fit it (once a broadcast error); discovery sees its output on the meta forward and leaves it out."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from ist_bench.runner.build import structure_of

    if "deepseek_v4" not in CONFIG_MAPPING_NAMES:
        pytest.skip("this transformers has no DeepSeek-V4")
    s = structure_of(_tiny(tmp_path, "deepseek_v4"))
    assert "self_attn.o_a_proj" not in s.lora_modules() and "self_attn.q_a_proj" in s.lora_modules()


@pytest.mark.slow
def test_the_sweep_of_every_causal_lm_type_finds_no_error(tmp_path):
    """Every model type transformers registers for causal LM, built tiny: none ends in an error (a
    traceback or a failure of ours); the families users bring today run LoRA and Series + IST on sim."""
    from ist_bench.zoo.sweep import main

    out = tmp_path / "models.jsonl"
    assert main(["--out", str(out)]) == 0
    rows = {r["model_type"]: r for r in map(json.loads, out.read_text().splitlines()[1:])}
    assert not [t for t, r in rows.items() if r["status"] == "error"]
    for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "gemma2",
              "gemma3", "gemma3_text", "phi", "phi3", "falcon", "olmo2", "olmoe", "deepseek_v3", "gpt_oss",
              "granitemoe", "llama4", "gpt2", "gptj", "gpt_neox", "opt", "bloom", "jamba"):
        assert rows[t]["status"] == "ok", (t, rows[t])
