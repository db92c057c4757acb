import json

import pytest
from torch import nn

from ist_bench import zoo
from ist_bench.errors import UsageError

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
