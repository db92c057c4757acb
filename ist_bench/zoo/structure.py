"""A model's structure, found from its built module graph (on meta) rather than listed per family.

`discover(model)` answers, for any causal LM transformers builds:

- the blocks: the list of `num_hidden_layers` modules (the largest such ModuleList);
- in each kind of block (blocks of one class and layout share an answer; DeepSeek's first dense blocks and
  Llama 4's interleaved MoE blocks are kinds of their own): the attention module and its projections, the
  output one apart; the MLP (dense: up, gate, down, or a fused gate_up) or the MoE (router, experts as
  modules or as fused 3-D parameters, shared experts);
- where the paper's methods go (`Placement`): LoRA's q, k, v (every attention projection but the output
  one: q/k/v, a fused qkv, or MLA's four) and up, down (a fused gate_up is the up side); the Series
  adapter on the MLP's up (its input) and down (its output), the Parallel adapter beside up and gate; on an
  MoE, up and down of every expert (peft's `target_parameters` for fused experts) and of the shared
  experts, and the bottleneck adapters around the whole MoE module.

How each part is recognised, in order: the names every family uses (`q_proj`, `query_key_value`, `c_fc`,
`dense_4h_to_h`, `experts`, ...), then the shapes (an MLP's down projection maps back to the hidden size),
then the order the forward calls them in (traced on meta: an attention's output projection and an MLP's
down projection run last). `OVERRIDES` holds what discovery cannot decide, each with its reason (none is
needed by the 200 model types the sweep builds: docs/models.md). A model none of this fits is refused in
one line naming its type and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ist_bench.errors import UsageError

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer", "attn_layer")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "feedforward", "ff", "mlp_layer")
OUTPUT = {"o_proj", "out_proj", "dense", "c_proj", "wo", "o", "proj", "out", "output_proj"}
DOWN = {"down_proj", "fc2", "fc_out", "c_proj", "dense_4h_to_h", "w2", "wo", "out_proj", "down", "fc_2"}
GATE = {"gate_proj", "w1", "wi_0", "gate", "fc_gate"}
UP = {"up_proj", "fc1", "fc_in", "c_fc", "dense_h_to_4h", "w3", "wi", "wi_1", "up", "fc_1", "gate_up_proj"}
ROUTER = ("gate", "router", "router_gate")
SHARED = ("shared_expert", "shared_experts", "shared_mlp")
EXPERT_UP = ("gate_up_proj", "up_proj", "w13", "w1")
EXPERT_DOWN = ("down_proj", "w2")


@dataclass(frozen=True)
class MoE:
    path: str                       # block-relative path of the MoE module
    router: str | None              # its router (a module whose weight is experts x hidden)
    experts: str                    # the experts: a module holding fused 3-D parameters, or a ModuleList
    fused: tuple[str, ...] = ()     # the fused parameters adapted (`experts.gate_up_proj`, `experts.down_proj`)
    shared: tuple[str, ...] = ()    # shared experts (dense MLPs beside the routed ones)


@dataclass(frozen=True)
class BlockKind:
    """What one kind of block holds, paths relative to the block."""

    attention: str | None
    qkv: tuple[str, ...]            # attention projections LoRA adapts (all but the output one)
    output: str | None
    mlp: str | None                 # the MLP or MoE module ('' : the block's own linears, as OPT's)
    up: str | None                  # dense MLP: up (or fused gate_up), gate, down
    gate: str | None
    down: str | None
    moe: MoE | None = None

    @property
    def lora(self) -> tuple[str, ...]:
        """LoRA's modules here: q, k, v and the MLP's up and down (an MoE's shared experts' up and down)."""
        names = list(self.qkv)
        if self.moe is None:
            names += [p for p in (self.up, self.down) if p]
        return tuple(names)


@dataclass(frozen=True)
class Structure:
    model_type: str
    layers: str                     # path of the blocks' ModuleList in the base model
    n_layers: int
    kinds: tuple[BlockKind, ...]    # the distinct kinds of block
    kind_of: tuple[int, ...]        # block i is kinds[kind_of[i]]
    conv1d: bool = False            # GPT-2's Conv1D projections (weight stored in x out): fan_in_fan_out
    forward_error: str | None = None   # why a forward on meta failed (sim cannot run such a model), if it did
    hidden: int | None = None       # the language model's hidden size (what an adapter around an MoE maps)

    @property
    def is_moe(self) -> bool:
        return any(k.moe is not None for k in self.kinds)

    def lora_modules(self) -> list[str]:
        """peft `target_modules`: block-relative suffixes of every kind (a suffix matches in every block)."""
        out: list[str] = []
        for k in self.kinds:
            names = list(k.lora)
            if k.moe is not None:
                for shared in k.moe.shared:
                    names += [f"{shared}.{n}" for n in ("up_proj", "down_proj", "c_fc", "c_proj", "fc1", "fc2")
                              if n in self._leaf_names]
            out += [n for n in names if n not in out]
        return out

    def lora_parameters(self) -> list[str]:
        """peft `target_parameters`: the fused expert weights (`mlp.experts.gate_up_proj`, ...)."""
        out: list[str] = []
        for k in self.kinds:
            if k.moe is not None:
                out += [f"{k.moe.path}.{p}" for p in k.moe.fused if f"{k.moe.path}.{p}" not in out]
        return out

    _leaf_names: frozenset = frozenset()


# -- finding it ---------------------------------------------------------------------------------------------
def discover(model: nn.Module) -> Structure:
    """The structure of a built (meta) causal LM; cached on the model."""
    cached = getattr(model, "_ist_structure", None)
    if cached is not None:
        return cached
    from ist_bench.zoo.build import text_config

    top = getattr(model, "config", None)
    config = text_config(top) if top is not None else None   # a multimodal model's language model decides
    layers_path, layers = _blocks(model, config)
    order, failed = _call_order(model, layers, n_experts(config))
    groups: dict[tuple, int] = {}
    kinds: list[BlockKind] = []
    kind_of = []
    for block in layers:
        sig = _signature(block)
        if sig not in groups:
            groups[sig] = len(kinds)
            kinds.append(_block_kind(block, order, config))
        kind_of.append(groups[sig])
    conv1d = any(type(m).__name__ == "Conv1D" for m in layers.modules())
    leaves = frozenset(n.rsplit(".", 1)[-1] for n, _ in layers.named_modules())
    model_type = getattr(top, "model_type", type(model).__name__)
    s = Structure(model_type, layers_path, len(layers), tuple(kinds), tuple(kind_of), conv1d, failed, _hidden(config),
                  leaves)
    if not any(k.qkv or k.up or k.moe for k in s.kinds):
        raise UsageError(f"{model_type}: no attention projection and no MLP found in its blocks "
                         f"({type(layers[0]).__name__}: {_children(layers[0])}); ist-bench adapts transformer blocks")
    model._ist_structure = s
    return s


def n_blocks(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _blocks(model: nn.Module, config) -> tuple[str, nn.ModuleList]:
    n = n_blocks(config) if config is not None else None
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
             and (n is None or len(m) == n) and all(any(True for _ in c.parameters()) for c in m)]
    if not lists:
        raise UsageError(f"cannot locate the transformer blocks of {getattr(config, 'model_type', None) or type(model).__name__}: "
                         f"no list of {n or 'same-kind'} blocks with parameters in {type(model).__name__}")

    def size(m):
        return sum(p.numel() for p in m.parameters())
    name, m = max(lists, key=lambda x: (size(x[1]), -x[0].count(".")))
    return name, m


def _signature(block: nn.Module) -> tuple:
    return (type(block).__name__, tuple((n, type(m).__name__) for n, m in block.named_modules()))


def _children(block: nn.Module) -> str:
    return ", ".join(f"{n} ({type(m).__name__})" for n, m in block.named_children())[:150]


def _is_linear(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (isinstance(m, nn.Linear) or type(m).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")) and \
        isinstance(w, torch.Tensor) and w.dim() == 2


EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")


def n_experts(config) -> int | None:
    """The number of routed experts a config declares, if any."""
    for key in EXPERT_COUNTS:
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 1:
            return v
    return None


def _fused_experts(m: nn.Module, experts: int | None) -> list[str]:
    """The parameters of `m` that hold every expert's weights stacked: 3-D, one slice per expert (a
    convolution's 3-D kernel, or RWKV's [1, 1, H] mixing vectors, are not: their first size is no expert count)."""
    if experts is None or isinstance(m, nn.modules.conv._ConvNd):
        return []
    return [n for n, p in m.named_parameters(recurse=False) if p.dim() == 3 and p.shape[0] == experts]


IRREGULAR = -2   # the call order of a Linear whose forward is its own (peft's LoRA layer would not fit it)


def _call_order(model: nn.Module, layers: nn.ModuleList, experts: int | None) -> tuple[dict[nn.Module, int], str | None]:
    """The order in which a forward on meta first calls each linear (and fused-experts module) of the
    blocks, and why such a forward failed if it did (the names and shapes decide alone then; and sim,
    which runs the step on meta, cannot run this model). A Linear whose output's last size is not its
    out_features (DeepSeek-V4's grouped `o_a_proj` maps each of g groups) is IRREGULAR: never adapted."""
    order: dict[nn.Module, int] = {}
    failed = None
    watched = [m for m in layers.modules() if _is_linear(m) or _fused_experts(m, experts)]
    def called(mod, args) -> None:   # a pre-hook that returns something replaces the module's inputs
        order.setdefault(mod, len(order))

    def returned(mod, args, out) -> None:   # a "linear" whose output is not [..., out_features] is no plain matmul
        if isinstance(out, torch.Tensor) and _is_linear(mod) and out.shape[-1] != _features(mod)[1]:
            order[mod] = IRREGULAR
    hooks = [m.register_forward_pre_hook(called) for m in watched] + \
        [m.register_forward_hook(returned) for m in watched]
    from ist_bench.measure.sim import cuda_kernels

    try:
        device = next(model.parameters()).device
        if device.type == "meta":
            from ist_bench.data import model_inputs, needs_mask

            inputs = model_inputs(torch.zeros((1, 8), dtype=torch.long), "meta", mask=needs_mask(model))
            inputs.pop("labels")
            with torch.no_grad(), cuda_kernels():   # as sim runs a step
                model(**inputs)
    except Exception as e:   # a model whose forward needs values; the names and shapes decide then
        order.clear()
        failed = " ".join(f"{type(e).__name__}: {e}".split())[:160]
    finally:
        for h in hooks:
            h.remove()
    return order, failed


def _sub(block: nn.Module, names: tuple[str, ...], cls_words: tuple[str, ...]) -> str | None:
    """The block-relative path of the first child (depth <= 2) named one of `names`, else whose class
    name holds one of `cls_words`."""
    found = [(n, m) for n, m in block.named_modules() if n and n.count(".") <= 1]
    for n, _ in found:
        if n.rsplit(".", 1)[-1] in names:
            return n
    for n, m in found:
        if any(w in type(m).__name__.lower() for w in cls_words):
            return n
    return None


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _hidden(config) -> int | None:
    return next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if getattr(config, k, None)), None)


def _block_kind(block: nn.Module, order: dict, config) -> BlockKind:
    hidden = _hidden(config)
    attn = _sub(block, ATTN_NAMES, ("attention",))
    linears = [(n, m) for n, m in block.named_modules() if _is_linear(m) and order.get(m) != IRREGULAR]
    in_attn = [(n, m) for n, m in linears if attn and (n == attn or n.startswith(attn + "."))]
    rest = [(n, m) for n, m in linears if (n, m) not in in_attn]
    qkv, output = _attention(in_attn, order)
    experts = n_experts(config)
    moe_path = next((n for n, m in block.named_modules() if _fused_experts(m, experts) or (
        isinstance(m, nn.ModuleList) and len(m) > 1 and _leaf(n) == "experts")), None)
    if moe_path is not None:
        return BlockKind(attn, qkv, output, *_moe(block, moe_path, experts))
    mlp = _sub(block, MLP_NAMES, ("mlp", "feedforward"))
    in_mlp = [(n, m) for n, m in rest if mlp is None or n.startswith(mlp + ".")] if mlp else rest
    up, gate, down = _mlp(in_mlp, order, hidden)
    return BlockKind(attn, qkv, output, mlp if mlp is not None else ("" if up else None), up, gate, down)


def _attention(linears: list, order: dict) -> tuple[tuple[str, ...], str | None]:
    if not linears:
        return (), None
    named = [n for n, _ in linears if _leaf(n) in OUTPUT]
    if named:
        output = named[0]
    elif order:
        output = max(linears, key=lambda x: order.get(x[1], -1))[0]
    else:
        output = linears[-1][0]
    return tuple(n for n, _ in linears if n != output), output


def _mlp(linears: list, order: dict, hidden: int | None) -> tuple[str | None, str | None, str | None]:
    if not linears:
        return None, None, None
    by_leaf = {_leaf(n): n for n, _ in linears}
    down = next((by_leaf[d] for d in DOWN if d in by_leaf), None)
    if down is None and hidden:       # the one that maps back to the hidden size
        back = [(n, m) for n, m in linears if _features(m)[1] == hidden]
        if len(back) == 1:
            down = back[0][0]
    if down is None and order:
        down = max(linears, key=lambda x: order.get(x[1], -1))[0]
    ins = [(n, m) for n, m in linears if n != down]
    gate = next((by_leaf[g] for g in GATE if g in by_leaf and by_leaf[g] != down), None)
    up = next((by_leaf[u] for u in UP if u in by_leaf and by_leaf[u] not in (down, gate)), None)
    others = [n for n, _ in sorted(ins, key=lambda x: order.get(x[1], 0)) if n not in (gate, up)]
    if up is None and others:         # unnamed: the last input-side projection called is up, a first one gate
        up = others.pop()
    if gate is None and others:
        gate = others.pop()
    return up, gate, down


def _features(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    w = m.weight
    if type(m).__name__ == "Conv1D":
        return w.shape[0], w.shape[1]
    return w.shape[1], w.shape[0]


def _moe(block: nn.Module, experts_path: str, experts: int | None) -> tuple:
    """(mlp, up, gate, down, MoE) of a block whose MLP is a mixture of experts."""
    path = experts_path.rsplit(".", 1)[0] if "." in experts_path else ""
    moe_module = block.get_submodule(path) if path else block
    router = next((f"{path}.{n}" if path else n for n, m in moe_module.named_children()
                   if n in ROUTER or "router" in type(m).__name__.lower()), None)
    leaf = _leaf(experts_path)
    fused = _fused_experts(block.get_submodule(experts_path), experts)
    adapt = tuple(f"{leaf}.{p}" for p in (next((u for u in EXPERT_UP if u in fused), None),
                                         next((d for d in EXPERT_DOWN if d in fused), None)) if p)
    shared = tuple(f"{path}.{n}" if path else n for n, m in moe_module.named_children()
                   if n in SHARED or "shared" in n)
    return path, None, None, None, MoE(path, router, experts_path, adapt, shared)


# -- what the methods read --------------------------------------------------------------------------------
def locate_layers(model: nn.Module) -> nn.ModuleList:
    """The list of blocks, through any PEFT or FSDP wrapping: the ModuleList the structure of the base model
    names (found by its path's suffix)."""
    base = getattr(model, "get_base_model", lambda: model)()
    s = getattr(base, "_ist_structure", None) or getattr(model, "_ist_structure", None)
    if s is None:
        s = discover(base)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and (name == s.layers or name.endswith("." + s.layers)) and len(m) == s.n_layers:
            return m
    raise UsageError(f"cannot find the blocks ({s.layers}) of {type(model).__name__}")


def describe(s: Structure) -> dict:
    """What a row records of the structure it ran on."""
    out = {"layers": s.layers, "n_layers": s.n_layers, "block_kinds": len(s.kinds), "moe": s.is_moe,
           "lora_modules": s.lora_modules()}
    if s.lora_parameters():
        out["lora_parameters"] = s.lora_parameters()
    return out


