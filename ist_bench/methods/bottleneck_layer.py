"""The modules of the Series and Parallel bottleneck adapters (methods/bottleneck.py says where they go)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ist_bench.zoo import locate_layers

MODES = ("series_in", "series_out", "parallel")


class BottleneckAdapter(nn.Module):
    def __init__(self, d_in: int, d_out: int, bottleneck: int, device=None):
        super().__init__()
        self.down = nn.Linear(d_in, bottleneck, bias=False, device=device, dtype=torch.float32)
        self.up = nn.Linear(bottleneck, d_out, bias=False, device=device, dtype=torch.float32)
        self.scaling = 1.0
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the adapter's own dtype: fp32 (its weights), as the paper's code up-casts; under FSDP2's mixed
        # precision the gathered weights are bf16, and an fp32 input would not match them.
        return self.up(torch.tanh(self.down(x.to(self.down.weight.dtype)))).to(x.dtype) * self.scaling


class AdaptedLinear(nn.Module):
    """A frozen projection (nn.Linear or GPT-2's Conv1D), or a whole module mapping the hidden size to itself
    (an MoE: `width` given), with a bottleneck adapter around it."""

    def __init__(self, base: nn.Module, mode: str, bottleneck: int, width: tuple[int, int] | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        d_in, d_out = width or features(base)
        width = {"series_in": (d_in, d_in), "series_out": (d_out, d_out), "parallel": (d_in, d_out)}[mode]
        self.base, self.mode = base, mode
        device = next(base.parameters()).device
        self.adapter = BottleneckAdapter(*width, bottleneck, device=device)

    def __getattr__(self, name: str):
        # a model that reads its projection's own attributes (`down_proj.weight.dtype`, RWKV rescaling
        # `value.weight` in place) reads the wrapped module's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.mode == "series_in":
            return self.base(x + self.adapter(x), *args, **kwargs)
        out = self.base(x, *args, **kwargs)
        h, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)   # an MoE may return its router logits
        h = h + self.adapter(h if self.mode == "series_out" else x)
        return h if rest is None else (h, *rest)


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of nn.Linear, or of transformers' Conv1D (weight stored as in x out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "nf") and module.weight.dim() == 2:  # transformers.pytorch_utils.Conv1D
        return module.weight.shape[0], module.nf
    raise TypeError(f"cannot adapt {type(module).__name__}: not a Linear or Conv1D")


def inject(model: nn.Module, placements, bottleneck: int) -> nn.Module:
    """Wrap, in every block, the modules `placements(kind)` names for the block's kind ({'mlp.up_proj':
    'series_in', ...}; `path#out`: that module again, outside the first wrapper). Everything else is
    frozen; only the adapters train."""
    from ist_bench.zoo.structure import discover

    s = discover(model)
    hidden = s.hidden
    for p in model.parameters():
        p.requires_grad_(False)
    for i, block in enumerate(locate_layers(model)):
        kind = s.kinds[s.kind_of[i]]
        for place, mode in placements(kind).items():
            path = place.split("#")[0]
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            base = getattr(parent, name)
            width = None if kind.moe is None else (hidden, hidden)
            setattr(parent, name, AdaptedLinear(base, mode, bottleneck, width))
    return model


def scale_output(module: nn.Module, factor: float) -> Callable[[], None] | None:
    """Scale a bottleneck adapter's output by `factor`; returns the undo."""
    if not isinstance(module, BottleneckAdapter):
        return None
    saved = module.scaling
    module.scaling = saved * factor

    def restore() -> None:
        module.scaling = saved
    return restore
