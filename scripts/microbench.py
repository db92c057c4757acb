"""Measure a GPU's kernel tables for the time prediction and write them into its card file
(ist_bench/cards/<card>.json, key `calibration`): one device call, about two minutes on an H100.

    python3 scripts/microbench.py [--card NAME] [--out FILE] [--quick]

What it measures (ist_bench/predict/kernels.py reads each):
- `gemm`: M x N x K on a log grid per dtype (bf16 everywhere below 2 TFLOP; fp32 where a side is <= 512: LoRA
  and adapter GEMMs run in fp32), each as a CUDA graph of repeated launches (no host time in it). Grid points
  past the FLOP cap take the time of the largest measured point they dominate, scaled by the FLOPs.
- `bmm_factor`, `grouped_factor`: a batched GEMM (eager attention's shapes) and a grouped GEMM (MoE experts,
  even routing) against the GEMM table's reading of the same work.
- `attention`: SDPA forward and backward per backend (flash, memory-efficient, cuDNN), causal, 32 heads,
  per sequence length and head size.
- `memory`: time against bytes moved for elementwise (add), softmax, norm (layer norm), reduce (sum), index
  (embedding lookup) kernels.
- `optimizer`: fused and foreach AdamW on parameter lists of several sizes, a least-squares fit
  a + bytes x b + tensors x c.
- `host`: microseconds per dispatched op by phase, from ist-bench's own timed steps of tiny models (their
  kernels are negligible: the step is the host's) against the ops their traces hold; the launch latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

DIMS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
QUICK_DIMS = [16, 128, 1024, 4096]
FLOP_CAP = {"bfloat16": 2e12, "float32": 2e11}
SEQS = [256, 512, 1024, 2048, 4096]
HEAD_DIMS = [64, 128, 256]
HEADS = 32
BYTES = [2 ** e for e in range(12, 32, 2)]


def timed_us(fn, reps: int = 10, graph: bool = True) -> float:
    """Median microseconds of one call of fn (on the GPU: CUDA-graph replays, no host time in them)."""
    if not torch.cuda.is_available():
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e6
    fn()
    torch.cuda.synchronize()
    if graph:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(reps):
                    fn()
            times = []
            for _ in range(3):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) * 1e3 / reps)
            return statistics.median(times)
        except Exception:   # an op graphs do not capture: events around plain launches
            torch.cuda.synchronize()
    times = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / reps)
    return statistics.median(times)


def gemm_table(device, dims, log) -> dict:
    out = {"dims": dims}
    for dtype in ("bfloat16", "float32"):
        dt = getattr(torch, dtype)
        n = len(dims)
        grid = [[[None] * n for _ in range(n)] for _ in range(n)]
        measured = []
        for i, m in enumerate(dims):
            for j, nn_ in enumerate(dims):
                for k_, kk in enumerate(dims):
                    flops = 2 * m * nn_ * kk
                    if flops > FLOP_CAP[dtype] or (dtype == "float32" and min(m, nn_, kk) > 512):
                        continue
                    a = torch.randn(m, kk, device=device, dtype=dt)
                    b = torch.randn(kk, nn_, device=device, dtype=dt)
                    c = torch.empty(m, nn_, device=device, dtype=dt)
                    reps = 3 if flops > (2e11 if dtype == "bfloat16" else 1e10) else 10
                    grid[i][j][k_] = timed_us(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), reps)
                    measured.append((i, j, k_))
                    del a, b, c
        for i in range(n):        # the unmeasured: the largest measured point below them, scaled by the FLOPs
            for j in range(n):
                for k_ in range(n):
                    if grid[i][j][k_] is None:
                        below = [p for p in measured if p[0] <= i and p[1] <= j and p[2] <= k_]
                        p = max(below, key=lambda p: dims[p[0]] * dims[p[1]] * dims[p[2]])
                        scale = dims[i] * dims[j] * dims[k_] / (dims[p[0]] * dims[p[1]] * dims[p[2]])
                        grid[i][j][k_] = grid[p[0]][p[1]][p[2]] * scale
        out[dtype] = grid
        log(f"gemm {dtype}: {len(measured)} shapes measured")
    return out


def factors(device, table, log) -> dict:
    from ist_bench.predict.kernels import gemm_table_us

    ratios = []
    for s in (512, 1024, 2048):
        for d in (64, 128):
            q = torch.randn(HEADS, s, d, device=device, dtype=torch.bfloat16)
            kt = torch.randn(HEADS, d, s, device=device, dtype=torch.bfloat16)
            p = torch.randn(HEADS, s, s, device=device, dtype=torch.bfloat16)
            v = torch.randn(HEADS, s, d, device=device, dtype=torch.bfloat16)
            for x, y, m, n, k in ((q, kt, s, s, d), (p, v, s, d, s)):
                t = timed_us(lambda x=x, y=y: torch.bmm(x, y))
                ratios.append(t / gemm_table_us(table, "bfloat16", HEADS * m, n, k))
    out = {"bmm_factor": statistics.median(ratios)}
    grouped = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if grouped is not None and device.type == "cuda":
        rs = []
        for experts, hidden, width, rows in ((8, 4096, 14336, 2048), (64, 2048, 1024, 8192), (128, 2048, 768, 8192)):
            a = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16)
            w = torch.randn(experts, hidden, width, device=device, dtype=torch.bfloat16)
            offs = torch.arange(1, experts + 1, device=device, dtype=torch.int32) * (rows // experts)
            try:
                t = timed_us(lambda a=a, w=w, offs=offs: grouped(a, w, offs=offs))
            except Exception as e:
                log(f"grouped mm: {type(e).__name__}: {e}"[:200])
                break
            rs.append(t / gemm_table_us(table, "bfloat16", rows, width, hidden))
        if rs:
            out["grouped_factor"] = statistics.median(rs)
    log(f"factors: {out}")
    return out


def attention_table(device, log) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    out = {"seq": SEQS, "head_dim": HEAD_DIMS, "heads": HEADS}
    for name, backend in backends.items():
        fwd, bwd = [], []
        try:
            for d in HEAD_DIMS:
                rf, rb = [], []
                for s in SEQS:
                    q, k, v = (torch.randn(1, HEADS, s, d, device=device, dtype=torch.bfloat16, requires_grad=True)
                               for _ in range(3))
                    with sdpa_kernel([backend]):
                        rf.append(timed_us(lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=True), graph=False))
                        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                        g = torch.randn_like(o)
                        rb.append(timed_us(lambda o=o, g=g, q=q, k=k, v=v: torch.autograd.grad(
                            o, (q, k, v), g, retain_graph=True), graph=False))
                fwd.append(rf)
                bwd.append(rb)
        except Exception as e:   # a backend this card or torch does not run
            log(f"attention {name}: {type(e).__name__}: {str(e)[:120]}")
            continue
        out[name], out[name + "_bwd"] = fwd, bwd
    log(f"attention: {[k for k in out if k not in ('seq', 'head_dim', 'heads')]}")
    return out


def memory_table(device, log) -> dict:
    import torch.nn.functional as F

    out = {"bytes": BYTES}
    curves = {c: [] for c in ("elementwise", "softmax", "norm", "reduce", "index")}
    for nbytes in BYTES:   # each kernel sized so that it moves `nbytes` (reads and writes)
        n = max(nbytes // 6, 1024)        # add: two bf16 reads, one write
        a, b = (torch.randn(n, device=device, dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty_like(a)
        curves["elementwise"].append(timed_us(lambda a=a, b=b, c=c: torch.add(a, b, out=c)))
        rows = max(nbytes // 4096, 1)     # softmax, norm: read and write (rows, 1024) bf16
        x = torch.randn(rows, 1024, device=device, dtype=torch.bfloat16)
        curves["softmax"].append(timed_us(lambda x=x: torch.softmax(x, -1)))
        w = torch.ones(1024, device=device, dtype=torch.bfloat16)
        curves["norm"].append(timed_us(lambda x=x, w=w: F.layer_norm(x, (1024,), w, w)))
        x2 = torch.randn(max(nbytes // 2048, 1), 1024, device=device, dtype=torch.bfloat16)   # reduce: read only
        curves["reduce"].append(timed_us(lambda x2=x2: x2.sum(-1)))
        emb = torch.randn(32000, 1024, device=device, dtype=torch.bfloat16)
        ids = torch.randint(0, 32000, (rows,), device=device)   # index: gather rows, write them
        curves["index"].append(timed_us(lambda emb=emb, ids=ids: F.embedding(ids, emb)))
    out.update(curves)
    log("memory: " + ", ".join(f"{c} {min(BYTES[-1] / (v[-1] * 1e-6) / 1e9, 1e9):.0f} GB/s" for c, v in curves.items()))
    return out


def optimizer_fit(device, log) -> dict:
    import numpy as np

    out = {}
    for cls, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
        xs, ys = [], []
        for tensors, numel, dtype in ((64, 65536, torch.float32), (224, 131072, torch.float32),
                                      (224, 1 << 20, torch.float32), (32, 1 << 24, torch.bfloat16),
                                      (291, 1 << 21, torch.bfloat16)):
            params = [torch.zeros(numel, device=device, dtype=dtype, requires_grad=True) for _ in range(tensors)]
            for p in params:
                p.grad = torch.zeros_like(p)
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            opt.step()
            t = timed_us(opt.step, reps=5, graph=False)
            size = params[0].element_size()
            nbytes = tensors * numel * (size * 2 + size * 2 + size * 3)   # p, g read; m, v read; p, m, v written
            xs.append([1.0, nbytes, tensors])
            ys.append(t)
            del params, opt
        coef, *_ = np.linalg.lstsq(np.array(xs), np.array(ys), rcond=None)
        out[cls] = {"a_us": float(max(coef[0], 0.0)), "us_per_byte": float(max(coef[1], 0.0)),
                    "us_per_tensor": float(max(coef[2], 0.0))}
    log(f"optimizer: {out}")
    return out


HOST_CASES = [("tiny-llama", "lora", "none"), ("tiny-llama", "full", "none"), ("tiny-gpt2", "lora", "none"),
              ("tiny-llama", "series", "ist"), ("tiny-llama", "lora", "rst")]


def host_costs(device, log) -> dict:
    """Host µs per dispatched op by phase: the tiny cases' timed phases (their kernels take a few µs each:
    the host is the step) over the ops their traces hold."""
    from ist_bench.methods import MethodSpec
    from ist_bench.predict import trace_case
    from ist_bench.runner.case import Case
    from ist_bench.runner.time import measure_time

    totals = {p: [0.0, 0] for p in ("forward", "backward", "optimizer", "importance")}
    for model, method, select in HOST_CASES:
        case = Case(model=model, method=MethodSpec(name=method), select=select, seq_len=64, steps=30,
                    select_opts={"interval": 2} if select == "ist" else {},
                    backend="cuda" if device.type == "cuda" else "cpu").check()
        row = measure_time(case, warmup=5, profile_steps=0, busy_gpu="ignore")
        if row["status"] != "ok":
            log(f"host {model} {method}+{select}: {row.get('error')}")
            continue
        ops = trace_case(case)["traces"]
        phases = row["time"]["phases_ms"]
        for p in ("forward", "backward", "optimizer"):
            n = sum(1 for o in ops["low"] if o.phase == p and o.kind != "mark")
            totals[p][0] += phases[p]["median"] * 1e3
            totals[p][1] += n
        if "round" in ops and "importance" in phases:
            n = sum(1 for o in ops["round"] if o.phase == "importance" and o.kind != "mark")
            totals["importance"][0] += phases["importance"]["median"] * 1e3
            totals["importance"][1] += n
    per_op = {p: (us / n if n else None) for p, (us, n) in totals.items()}
    per_op["importance"] = per_op["importance"] or per_op["forward"]
    per_op["other"] = per_op["forward"]
    out = {"per_op_us": per_op, "launch_us": 4.0, "mark_us": 3.0,
           "measured_on": f"{_cpu_name()}, torch {torch.__version__}"}
    log(f"host: {out}")
    return out


def _rounded(x):
    """4 significant digits: the tables' noise is larger."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None) -> int:
    from ist_bench.process import prepare

    prepare()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--card", help="the card's name (default: the one torch reports)")
    ap.add_argument("--out", help="write the card file here (default: ist_bench/cards/<card>.json)")
    ap.add_argument("--quick", action="store_true", help="a small grid (tests, a CPU dry run)")
    args = ap.parse_args(argv)
    from ist_bench import cards

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.card or (cards.card_of(torch.cuda.get_device_name(0)).name if device.type == "cuda" else None)
    if name not in cards.CARDS:
        print(f"microbench: unknown card {name!r}; give --card (one of {', '.join(cards.CARDS)})", file=sys.stderr)
        return 2
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)
    dims = QUICK_DIMS if args.quick else DIMS
    cal = {"measured": {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "quick": args.quick}}
    cal["gemm"] = gemm_table(device, dims, log)
    cal.update(factors(device, cal["gemm"], log))
    if device.type == "cuda":
        cal["attention"] = attention_table(device, log)
    cal["memory"] = memory_table(device, log)
    cal["optimizer"] = optimizer_fit(device, log)
    cal["host"] = host_costs(device, log)
    path = Path(args.out) if args.out else cards.path_of(name)
    data = json.loads(cards.path_of(name).read_text())
    data.pop("calibration", None)
    head = json.dumps(data, indent=1)[:-2]   # the card's own keys one per line, the tables compact
    path.write_text(head + ',\n "calibration": ' + json.dumps(_rounded(cal), separators=(",", ":")) + "\n}\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
