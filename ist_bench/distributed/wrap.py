"""FSDP2 wrapping: `fully_shard` on each transformer block, then on the root (torchtitan, torchtune, accelerate).

Mixed precision (`MP_DEFAULT`): parameters all-gathered in bf16, gradients reduced in fp32.
- param_dtype bf16: a PEFT model holds bf16 base weights and fp32 adapters in one block, and one FSDP group
  all-gathers one dtype. bf16 is the base's own dtype, so the frozen weights are never upcast (FSDP1's
  `use_orig_params` + fp32 flat parameters is the classic "LoRA takes more memory under FSDP" trap); the
  adapters compute in bf16 as they do under autocast, and their fp32 shards stay the optimizer's master copy.
- reduce_dtype fp32: only trainable parameters have gradients, and with PEFT those are the fp32 adapters,
  so reducing in fp32 costs no cast and loses no adapter-gradient precision (torchtune's and accelerate's
  FSDP2 defaults reduce in fp32 too; bf16 reduce halves a full fine-tune's reduce-scatter traffic, and is
  the knob to turn for `full`).
"""

from __future__ import annotations

import torch
from torch import nn

from ist_bench import zoo

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def mp_policy(param: str = "bf16", reduce: str = "fp32"):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=DTYPES[param], reduce_dtype=DTYPES[reduce])


def shard_fsdp2(model: nn.Module, *, mesh=None, reshard_after_forward: bool = True,
                param: str = "bf16", reduce: str = "fp32") -> nn.Module:
    """Shard each transformer block, then the root (embeddings, final norm, head), over `mesh` (default:
    the world). `reshard_after_forward=False` keeps each block's gathered weights from forward to backward
    (ZeRO-2-like: no second all-gather, N times a block's weights more memory).

    Each group's dtypes (orig and reduce) are fixed at FSDP's lazy init from the parameters that train at
    that moment, and the lazy init runs once, at the root's first forward. A selection policy (IST, LISA)
    may freeze a whole block before that forward; the block would then never get its reduce dtype and its
    gradients would come back in bf16. So the lazy init runs here, with every parameter the method made
    trainable: `FSDPState._lazy_init` (private; the one call the first forward makes, idempotent).
    Then each group is gathered and freed once (public `unshard()`/`reshard()`), so FSDP2 creates its
    gathered parameters here, as ordinary tensors: created first inside IST's importance round
    (`torch.inference_mode`) they would be inference tensors, and training them fails.
    """
    from torch.distributed.fsdp import fully_shard

    from ist_bench.distributed import track

    track.install()   # the tracker sees FSDP2's resize-based frees and its buffers
    kw = {"mesh": mesh, "mp_policy": mp_policy(param, reduce)}
    for block in zoo.locate_layers(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kw)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kw)
    model._get_fsdp_state()._lazy_init()
    for module in [model, *zoo.locate_layers(model)]:
        module.unshard()
        module.reshard()
    return model


def shard_ddp(model: nn.Module) -> nn.Module:
    """Replicate (DDP): every rank holds the whole model; gradients are all-reduced in buckets. torch's
    composable `replicate` (DDP in place) keeps the model object, so its config and layers stay where
    the runner and the policies look for them (`DistributedDataParallel` would wrap it)."""
    from torch.distributed._composable.replicate import replicate

    replicate(model)
    return model


def padded_shard_numel(shape: torch.Size | tuple, world: int) -> int:
    """What FSDP2 stores per rank for a parameter: dim 0 ceil-divided by the world size, padding included."""
    shape = tuple(shape)
    if not shape:
        return 1
    rest = 1
    for d in shape[1:]:
        rest *= d
    return -(-shape[0] // world) * rest
