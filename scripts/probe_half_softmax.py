"""What CUDA does for softmax(x_fp16, dtype=float32), transformers' eager attention in fp16 (issue 18):
the ops the dispatcher shows, their outputs and their scratch, forward and backward.

    python3 scripts/probe_half_softmax.py OUT.json
"""

import json
import sys

import torch

sys.path.insert(0, "scripts")
from probe_op_temporaries import MiB, Probe  # noqa: E402


class Ops(Probe):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = func(*args, **(kwargs or {}))
        peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        self.ops.append((str(func), round((after - before) / MiB, 2), round((peak - after) / MiB, 2)))
        return out


result = {}
for dtype in (torch.float16, torch.bfloat16):
    x = torch.randn(1, 32, 2048, 2048, device="cuda", dtype=dtype, requires_grad=True)
    probe = Ops()
    with probe:
        y = torch.nn.functional.softmax(x, dim=-1, dtype=torch.float32).to(dtype)
        y.backward(torch.ones_like(y))
    result[str(dtype)] = probe.ops
    print(dtype, probe.ops, flush=True)
    del x, y
json.dump(result, open(sys.argv[1], "w"), indent=1)
