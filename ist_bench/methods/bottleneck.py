"""Series and Parallel bottleneck adapters (ours: peft has none, AdapterHub pins transformers 4).

Follows the setup of the IST paper's public code (after LLM-Adapters):
- Series ("where {Up, Down}"): on the MLP's up projection the adapter acts on the
  linear's *input* (linear(x + a(x))); on the down projection on its *output* (h + a(h)).
- Parallel ("where {Up, Gate}"): the adapter reads the linear's input and is added to
  its output (linear(x) + a(x)).
- On a mixture of experts the projections are the experts' (fused 3-D weights in transformers 5): the
  adapters go around the whole MoE module instead (Series: on its input and its output; Parallel: beside
  it), so every token passes each adapter once whichever experts it is routed to.
- a(x) = up(tanh(down(x in the adapter's dtype))).to(x.dtype) * scaling, no biases, fp32 weights
  (so fp32 compute, as the paper's code; under FSDP2's bf16 param policy the gathered weights are bf16),
  down Kaiming-uniform, up zero-initialised: the model's output is unchanged at start.
`scaling` is what IST's response suppression multiplies (`scale_output`). The modules live in
bottleneck_layer.py (torch), imported when a model is adapted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ist_bench.methods.base import Method

if TYPE_CHECKING:
    from torch import nn


class Series(Method):
    name = "series"
    description = "Series bottleneck adapter around the MLP's up (input) and down (output) projections"
    knobs = ("bottleneck",)

    def apply(self, model: nn.Module, spec) -> nn.Module:
        from ist_bench.methods.bottleneck_layer import inject

        def places(kind):   # a dense MLP: its up projection's input, its down projection's output; an MoE: its own
            if kind.moe is not None:
                return {kind.moe.path: "series_in", kind.moe.path + "#out": "series_out"}
            return {kind.up: "series_in", kind.down: "series_out"}
        return inject(model, places, spec.bottleneck)


class Parallel(Method):
    name = "parallel"
    description = "Parallel bottleneck adapter beside the MLP's up and gate projections"
    knobs = ("bottleneck",)

    def apply(self, model: nn.Module, spec) -> nn.Module:
        from ist_bench.methods.bottleneck_layer import inject

        def places(kind):   # a dense MLP: beside its up and gate projections; an MoE: beside the whole module
            if kind.moe is not None:
                return {kind.moe.path: "parallel"}
            return {t: "parallel" for t in (kind.up, kind.gate) if t}
        return inject(model, places, spec.bottleneck)
