"""Scratch a CUDA reduction over leading dimensions takes (sim.cuda_scratch's `_sum_scratch`):
for each shape and dtype, the allocator's peak during `x.sum(dims)` minus what is allocated after it.

    python3 scripts/probe_reduce_scratch.py OUT.json
"""

import json
import sys

import torch

SHAPES = [(1, 2048, 2048), (1, 2048, 4096), (4, 2048, 3072), (1, 2048, 11008), (4, 2048, 9216), (4, 2048, 16384),
          (8, 1024, 4096), (2, 512, 16384), (1, 256, 2048), (1, 4096, 8192), (8, 2048, 4096), (1, 1024, 32000)]


def main(out: str) -> None:
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in SHAPES:
            x = torch.randn(shape, dtype=dtype, device="cuda")
            for dims in ((0, 1), (1,)):
                if dims == (1,) and shape[0] == 1:
                    continue
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                y = x.sum(dims)
                torch.cuda.synchronize()
                scratch = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
                rows.append({"shape": shape, "dims": dims, "dtype": str(dtype), "scratch": scratch,
                             "input_elems": x.numel(), "outputs": y.numel(), "kept": torch.cuda.memory_allocated() - before})
                del y
            del x
    json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": rows}, open(out, "w"), indent=1)
    for r in rows:
        print(r["dtype"], r["shape"], r["dims"], r["scratch"], round(r["scratch"] / r["input_elems"], 3))


if __name__ == "__main__":
    main(sys.argv[1])
