import pytest
import torch

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec, apply_method, trainable_parameters

# Independent shape facts of the two tiny test models (see ist_bench/zoo/configs).
LLAMA = dict(h=64, f=176, kv=32, L=4)      # 4 heads, 2 KV heads of 16 -> k,v project to 32
GPT2 = dict(h=64, f=256, L=4)              # MLP width 4h; c_attn projects to 3h


def expected_trainable(model: str, method: str, r=32, b=256, init_r=12) -> int:
    if model == "tiny-llama":
        h, f, kv, L = LLAMA["h"], LLAMA["f"], LLAMA["kv"], LLAMA["L"]
        shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv), "up": (h, f), "down": (f, h)}  # (in, out)
        lora_on = ["q", "k", "v", "up", "down"]
        series = 2 * h * b + 2 * h * b                          # up: h->b->h on the input; down: h->b->h on the output
        parallel = 2 * (h * b + b * f)                          # up and gate: h->b->f beside the linear
    else:
        h, f, L = GPT2["h"], GPT2["f"], GPT2["L"]
        shapes = {"c_attn": (h, 3 * h), "c_fc": (h, f), "c_proj": (f, h)}
        lora_on = list(shapes)
        series = 2 * h * b + 2 * h * b
        parallel = h * b + b * f                                # no gate: beside c_fc only
    per_layer = {
        "lora": sum(r * (shapes[t][0] + shapes[t][1]) for t in lora_on),
        "dora": sum(r * (shapes[t][0] + shapes[t][1]) + shapes[t][1] for t in lora_on),
        "adalora": sum(init_r * (shapes[t][0] + shapes[t][1]) + init_r for t in lora_on),
        "series": series,
        "parallel": parallel,
    }[method]
    return L * per_layer


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "series", "parallel"])
def test_trainable_parameters_match_the_formula(model, method):
    net = zoo.build_model(zoo.load_config(model), device="meta")
    net = apply_method(net, MethodSpec(name=method, total_steps=10))
    assert sum(p.numel() for p in trainable_parameters(net)) == expected_trainable(model, method)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_full_finetuning_trains_every_parameter(model):
    net = zoo.build_model(zoo.load_config(model), device="meta")
    total = sum(p.numel() for p in net.parameters())
    net = apply_method(net, MethodSpec(name="full"))
    assert sum(p.numel() for p in trainable_parameters(net)) == total


def test_llama7b_lora_adapters_are_fp32_on_a_bf16_base():
    net = zoo.build_model(zoo.load_config("llama-7b"), device="meta", dtype=torch.bfloat16)
    net = apply_method(net, MethodSpec(name="lora"))
    trainable = trainable_parameters(net)
    assert {p.dtype for p in trainable} == {torch.float32}
    per_layer = 32 * (3 * (4096 + 4096) + 2 * (4096 + 11008))
    assert sum(p.numel() for p in trainable) == 32 * per_layer == 56_098_816


@pytest.mark.parametrize("method", ["series", "parallel", "lora"])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_adapters_leave_the_models_output_unchanged_at_start(model, method):
    torch.manual_seed(0)
    net = zoo.build_model(zoo.load_config(model), device="cpu", dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 16))
    before = net(input_ids=ids).logits
    adapted = apply_method(net, MethodSpec(name=method)).eval()
    assert torch.equal(adapted(input_ids=ids).logits, before)


def test_series_adapter_changes_output_once_trained():
    from ist_bench.methods.bottleneck_layer import BottleneckAdapter
    net = zoo.build_model(zoo.load_config("tiny-llama"), device="cpu", dtype=torch.float32).eval()
    net = apply_method(net, MethodSpec(name="series"))
    ids = torch.randint(0, 512, (1, 8))
    before = net(input_ids=ids).logits
    for m in net.modules():
        if isinstance(m, BottleneckAdapter):
            torch.nn.init.normal_(m.up.weight, std=0.1)
    assert not torch.allclose(net(input_ids=ids).logits, before)


def test_bad_method_values_are_usage_errors():
    with pytest.raises(UsageError, match="unknown method 'prefix'; valid: full, lora"):
        MethodSpec(name="prefix")
    with pytest.raises(UsageError, match="--r must be >= 1"):
        MethodSpec(name="lora", r=0)
    with pytest.raises(UsageError, match="--dropout must be in"):
        MethodSpec(name="lora", dropout=1.5)


def test_adalora_rank_counter_is_not_trained():
    net = zoo.build_model(zoo.load_config("tiny-llama"), device="meta")
    net = apply_method(net, MethodSpec(name="adalora", total_steps=10))
    ranknums = [p for n, p in net.named_parameters() if ".ranknum." in n]
    assert len(ranknums) == 5 * 4 and not any(p.requires_grad for p in ranknums)
