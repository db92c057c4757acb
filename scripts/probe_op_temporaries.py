"""Which GPU ops allocate memory that no tensor of theirs holds (issue 18's "tools that find the next miss").

    python3 scripts/probe_op_temporaries.py OUT.json

sim counts the tensors an op returns; a CUDA kernel may also take temporaries from the caching allocator
(workspaces, internal copies) that live only inside the op, and may pick another kernel than meta does
(other saved tensors). Per op this probe reads the allocator around the call: `temp` = the allocator's
peak during the op minus what stays allocated after it, and `outside` = bytes allocated between two
visible ops (by code the dispatcher never shows). It runs a two-layer LLaMA-7B-shaped model with LoRA and
with Parallel adapters at 2048 tokens: training with and without checkpointing, and an inference-mode
forward; and it records which SDPA kernel CUDA picks with and without grouped-query attention.
"""

from __future__ import annotations

import collections
import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ist_bench import zoo
from ist_bench.methods import MethodSpec, apply_method

MiB = 1 << 20


class Probe(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.temps = collections.Counter()
        self.examples: dict = {}
        self.outside = []
        self.last_after, self.last_op = None, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = torch.cuda.memory_allocated()
        if self.last_after is not None and before - self.last_after >= MiB:
            self.outside.append((self.last_op, str(func), before - self.last_after))
        torch.cuda.reset_peak_memory_stats()
        out = func(*args, **(kwargs or {}))
        peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        if peak - after >= MiB:
            sig = str(func) + " " + ",".join(f"{tuple(a.shape)}:{str(a.dtype)[6:]}:{'c' if a.is_contiguous() else 'nc'}"
                                              for a in args if isinstance(a, torch.Tensor))
            self.temps[sig] += peak - after
            self.examples.setdefault(sig, []).append(peak - after)
        self.last_after, self.last_op = after, str(func)
        return out


def sdpa_kernels() -> dict:
    out = {}
    for name, kv in (("mha", 32), ("gqa", 4)):
        q = torch.randn(8, 32, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(8, kv, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(8, kv, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != 32)
        out[name] = type(o.grad_fn).__name__
    return out


def softmax_backward_sweep() -> dict:
    """The temporary of `_softmax_backward_data` by softmax length and dtype (rows of 32 x 256)."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for n in (256, 512, 1024, 1025, 1536, 2048, 4096, 32000):
            x = torch.randn(32, 256, n, device="cuda", dtype=dtype, requires_grad=True)
            y = torch.softmax(x, -1)
            g = torch.randn_like(y)
            probe = Probe()
            with probe:
                y.backward(g)
            out[f"{str(dtype)[6:]}/{n}"] = round(sum(probe.temps.values()) / (g.numel() * g.element_size()), 3)
            del x, y, g
    return out


def reduction_sweep() -> dict:
    """The temporary of `sum` over leading dims (what a weight-norm or a norm's weight gradient does)."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for shape, dims in (((1, 1024, 4096), [0, 1]), ((1, 2048, 4096), [0, 1]), ((1, 2048, 11008), [0, 1]),
                            ((8, 1024, 2048), [0, 1]), ((2048, 4096), [0]), ((4096, 4096), [1]),
                            ((1, 2048, 4096), [-1]), ((1024, 3072), [0])):
            x = torch.randn(*shape, device="cuda", dtype=dtype)
            probe = Probe()
            with probe:
                x.sum(dims)
            out[f"{str(dtype)[6:]}/{shape}/{dims}"] = sorted(v for vs in probe.examples.values() for v in vs)
            del x
    return out


def cudnn_backward_sweep() -> dict:
    out = {}
    for b, h, kv, t, d in ((1, 32, 32, 1024, 128), (1, 32, 32, 2048, 128), (4, 32, 32, 1024, 128), (8, 32, 4, 1024, 64),
                           (1, 12, 12, 1024, 64), (1, 40, 40, 1024, 128)):
        q = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, kv, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, kv, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != h)
        probe = Probe()
        with probe:
            o.backward(torch.ones_like(o))
        out[f"{(b, h, kv, t, d)}"] = {k2: v2 for k2, v2 in probe.examples.items()}
    return out


def run(method: str, mode: str, seq_len: int = 2048, model_name: str = "llama-7b", attn: str = "eager",
        optimizer: bool = False) -> dict:
    cfg = zoo.load_config(model_name)
    cfg.num_hidden_layers = 2
    model = zoo.build_model(cfg, dtype=torch.bfloat16, device=torch.device("cuda"), seed=0, attn=attn)
    model = apply_method(model, MethodSpec(name=method))
    if mode == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(mode != "inference")
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len), device="cuda")
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(seq_len, device="cuda")[None])
    probe = Probe()
    if mode == "inference":
        with torch.inference_mode(), probe:
            model(**kw)
    else:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True) if optimizer else None
        with probe:
            loss = model(**kw, labels=ids).loss
            loss.backward()
            if opt is not None:
                opt.step()
                opt.step()
    top = sorted(probe.temps.items(), key=lambda kv: -kv[1])[:12]
    res = {"temps_MiB": {k: round(v / MiB, 2) for k, v in top},
           "per_call_MiB": {k: sorted({round(x / MiB, 3) for x in probe.examples[k]}) + [len(probe.examples[k])]
                            for k, _ in top},
           "outside_MiB": [(a, b, round(n / MiB, 2)) for a, b, n in probe.outside[:20]]}
    del model
    torch.cuda.empty_cache()
    return res


def main(path: str) -> None:
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "sdpa": sdpa_kernels(),
              "softmax_backward_temp_per_grad_byte": softmax_backward_sweep(),
              "reductions": reduction_sweep(), "cudnn_backward": cudnn_backward_sweep()}
    print(json.dumps(result, indent=1), flush=True)
    cells = [(m, "plain", 2048, "llama-7b", "eager", True) for m in ("dora", "full", "adalora")]
    cells += [("dora", "plain", 1024, "tinyllama-1.1b", "sdpa", False)]
    cells += [(m, "plain", 1024, "gpt2-small", "eager", True) for m in ("lora", "series", "full")]
    for cell in cells:
        key = "/".join(map(str, cell))
        try:
            result[key] = run(*cell)
        except Exception as e:  # noqa: BLE001 - a probe reports and goes on
            result[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(key, json.dumps(result[key]), flush=True)
    print("sdpa", result["sdpa"])
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
