"""Check sim's replay of the CUDA caching allocator (ist_bench/measure/allocator.py) against the GPU's.

    python3 scripts/probe_allocator.py OUT_DIR [CASES.jsonl]

1. Synthetic sequences (seeds 0-5, 4000 events each): allocations of sizes around the allocator's
   thresholds and far from them, frees in random and LIFO order, run with `torch.empty` on the GPU;
   `memory_allocated()` and `memory_reserved()` after every event, beside the replay's.
2. Real steps: each case (a result row's `case`, one a line; default: the cells below) runs in its own
   process with the allocator's history recorded from the first CUDA call; the trace (alloc, free,
   segment events) is replayed and its largest allocated total compared with the run's
   `max_memory_allocated`, its new segments with the GPU's.
   The same case also runs on sim in that process, its allocator requests recorded (size, block, the
   module running): OUT_DIR/caseN.requests.json.gz holds both request sequences, for aligning offline.
Writes OUT_DIR/allocator-probe.json (summary) and OUT_DIR/allocator-sequences.json.gz (the synthetic
sequences with the GPU's figures: tests/test_allocator.py replays them).
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

from ist_bench.measure.allocator import CachingAllocator

MiB = 1 << 20
CASES = [
    dict(model="gpt2-large", method={"name": "series"}, select="ist-code", seq_len=512, attn="sdpa",
         grad_checkpointing=True, dtype="fp16", steps=1),
    dict(model="llama-7b", method={"name": "lora"}, select="ist", steps=2),
    dict(model="tinyllama-1.1b", method={"name": "parallel", "bottleneck": 256}, select="ist-code", seq_len=256,
         grad_checkpointing=True, attn="sdpa", dtype="fp16", optim="for-loop", steps=1),
    dict(model="tinyllama-1.1b", method={"name": "dora"}, attn="sdpa", batch=8, seq_len=1024, steps=1),
]


def sequence(seed: int, n: int = 4000) -> list[list[int]]:
    """[[1, id, nbytes] alloc | [0, id, 0] free]: sizes near 512 B, 1 MiB, 10 MiB and 2 MiB multiples, and log-uniform."""
    rng = random.Random(seed)
    live, out, serial = [], [], 0
    for _ in range(n):
        if live and (rng.random() < 0.45 or len(live) > 300):
            i = len(live) - 1 if rng.random() < 0.5 else rng.randrange(len(live))
            out.append([0, live.pop(i), 0])
            continue
        kind = rng.random()
        if kind < 0.25:
            size = MiB + rng.randint(-8192, 3 * MiB)
        elif kind < 0.35:
            size = 10 * MiB + rng.randint(-4096, 4096)
        elif kind < 0.5:
            size = rng.randint(1, 64) * 2 * MiB + rng.randint(-3 * MiB // 2, MiB)
        else:
            size = int(2 ** rng.uniform(0, 28))
        serial += 1
        live.append(serial)
        out.append([1, serial, max(1, size)])
    return out


def synthetic() -> list[dict]:
    import torch
    results = []
    for seed in range(6):
        torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() == 0
        base_reserved = torch.cuda.memory_reserved()
        events, tensors, gpu = sequence(seed), {}, []
        for op, ident, size in events:
            if op:
                tensors[ident] = torch.empty(size, dtype=torch.uint8, device="cuda")
            else:
                del tensors[ident]
            gpu.append([torch.cuda.memory_allocated(), torch.cuda.memory_reserved() - base_reserved])
        tensors.clear()
        emu, blocks, mine = CachingAllocator(), {}, []
        for op, ident, size in events:
            if op:
                blocks[ident] = emu.alloc(size)
            else:
                emu.free(blocks.pop(ident))
            mine.append([emu.allocated, emu.reserved])
        bad = [i for i, (g, m) in enumerate(zip(gpu, mine, strict=True)) if g != m]
        results.append({"seed": seed, "events": events, "gpu": gpu, "mismatches": len(bad),
                        "first_mismatch": bad[0] if bad else None})
        print(f"synthetic seed {seed}: {len(events)} events, {len(bad)} mismatches", flush=True)
    return results


def replay(trace: list[dict]) -> dict:
    emu, blocks, peak, segments = CachingAllocator(), {}, 0, []
    for e in trace:
        action = e["action"]
        if action == "alloc":
            before = emu.reserved
            blocks[e["addr"]] = emu.alloc(e["size"])
            if emu.reserved > before:
                segments.append(emu.reserved - before)
            peak = max(peak, emu.allocated)
        elif action == "free_completed":
            emu.free(blocks.pop(e["addr"]))
        elif action == "segment_free":
            emu.empty_cache()
    return {"peak": peak, "segments": segments}


def one_case(case: dict, out: Path) -> None:
    """In a fresh process: record, run the case on cuda, replay the trace."""
    import torch
    torch.cuda.memory._record_memory_history(max_entries=5_000_000, context=None, stacks="python")
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    row = measure_memory(Case.from_dict({**case, "backend": "cuda"}), busy_gpu="warn")   # the parent holds a context
    if row["status"] != "ok":
        out.write_text(json.dumps({"case": case, "status": row["status"], "error": row["error"]}))
        return
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    gpu_segments = [e["size"] for e in trace if e["action"] == "segment_alloc"]
    steps = row["memory"]["steps"]
    cuda_peak = max(s["allocated_peak"] for s in steps)
    r = replay(trace)
    requests = {"cuda": [[{"alloc": 1, "free_completed": 0, "segment_alloc": 2, "segment_free": 3}[e["action"]],
                          e["addr"], e["size"]] for e in trace
                         if e["action"] in ("alloc", "free_completed", "segment_alloc", "segment_free")],
                "sim": sim_requests(case)}
    with gzip.open(out.with_suffix(".requests.json.gz"), "wt") as f:
        json.dump(requests, f)
    n = min(len(gpu_segments), len(r["segments"]))
    first_diff = next((i for i in range(n) if gpu_segments[i] != r["segments"][i]), None)
    out.write_text(json.dumps({"case": case, "status": row["status"], "events": len(trace), "cuda_peak": cuda_peak,
                               "replay_peak": r["peak"], "gap": r["peak"] - cuda_peak,
                               "gpu_segments": len(gpu_segments), "replay_segments": len(r["segments"]),
                               "segments_equal": gpu_segments == r["segments"], "first_segment_diff": first_diff}))


def sim_requests(case: dict) -> list:
    """The case on sim, every allocator request recorded: [1, nbytes, block, module] or [0, block]."""
    from ist_bench.measure import backends
    from ist_bench.runner import memory
    from ist_bench.runner.case import Case

    made = backends.tracker
    log: list = []

    class Recording(CachingAllocator):
        tracker = None

        def alloc(self, nbytes):
            block = super().alloc(nbytes)
            if block is not None:
                log.append([1, nbytes, block.size, self.tracker.tag])
            return block

        def free(self, block):
            if block is not None:
                log.append([0, block.size])
            super().free(block)

    def tracker(backend, **kw):
        t = made(backend, **kw)
        t.allocator = Recording()
        t.allocator.tracker = t
        return t
    memory.backends.tracker = tracker
    try:
        memory.measure_memory(Case.from_dict({**case, "backend": "sim"}))
    finally:
        memory.backends.tracker = made
    return log


def main(out: Path, cases_file: str | None = None) -> None:
    import torch
    out.mkdir(parents=True, exist_ok=True)
    summary = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    seqs = synthetic()
    summary["synthetic"] = [{k: v for k, v in s.items() if k not in ("events", "gpu")} for s in seqs]
    with gzip.open(out / "allocator-sequences.json.gz", "wt") as f:
        json.dump({"torch": summary["torch"], "gpu": summary["gpu"], "sequences": seqs}, f)
    cases = [json.loads(x) for x in Path(cases_file).read_text().splitlines()] if cases_file else CASES
    summary["cases"] = []
    for i, case in enumerate(cases):
        res = out / f"case{i}.json"
        p = subprocess.run([sys.executable, __file__, "--case", json.dumps(case), str(res)], capture_output=True,
                           text=True, timeout=400)
        entry = json.loads(res.read_text()) if res.exists() else {"case": case, "error": p.stderr[-2000:]}
        summary["cases"].append(entry)
        print({k: v for k, v in entry.items() if k != "case"}, flush=True)
    (out / "allocator-probe.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--case":
        one_case(json.loads(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
