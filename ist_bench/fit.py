"""`ist-bench fit`: the longest sequence and the largest batch that fit a GPU, per method and policy,
searched on sim (seconds, no GPU).

Each probe is sim's steady-state step alone (`steps=0`: a long run's optimizer state, the policy's
worst draw and its importance round), whose estimated allocated peak decides. A length fits when

    estimate + margin <= usable,   margin = max(fraction x estimate, MARGIN_MIN)

- `usable`: for a named card, its memory minus the CUDA context (CONTEXT, measured); for a size
  (`--gpu 40GiB`), that size, as `--capacity` caps the caching allocator (context outside).
- `margin`: what the caching allocator reserves beyond what it hands out (fragmentation, cached
  blocks it cannot return). Measured on the H200 (results/validation/h200.jsonl, results/gpu/):
  reserved over allocated reached 7.3% for full fine-tuning (LLaMA-13B) and 4.4% for PEFT
  methods, at most 351 MiB on small models; under a capped allocator at fit's boundaries, 1.7-3.6%.
  So the fraction is 8% for full fine-tuning, 4% for PEFT methods, and never less than 512 MiB.
  The GPU check of fit's answers is in docs/fit.md.

Memory grows with length (quadratically with eager attention) and batch, so the search fits a
quadratic to three probes, predicts the boundary and then probes around it until it holds a
length that fits next to one that does not: the answer is always checked by two probes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ist_bench import cards, zoo
from ist_bench.errors import UsageError, choice_error
from ist_bench.results import case_label
from ist_bench.runner.case import Case
from ist_bench.units import parse_bytes

GiB, MiB = 1 << 30, 1 << 20
CONTEXT = 640 * MiB            # the CUDA context and start-up (NVML baseline on the lent H200: 610-640 MiB)
MARGIN_FRACTION = {"full": 0.08}    # by method; PEFT methods: PEFT_MARGIN
PEFT_MARGIN = 0.04
MARGIN_MIN = 512 * MiB
MAX_BATCH = 4096


@dataclass
class Target:
    name: str
    usable: int                 # bytes the allocator may hold
    note: str


def target(spec: str) -> Target:
    """`rtx4090`, `h100-80g`, ... or a size such as `40GiB`."""
    if spec in cards.CARDS:
        card = cards.CARDS[spec]
        return Target(card.name, card.memory - CONTEXT,
                      f"{card.name}: {card.memory / GiB:.1f} GiB less {CONTEXT / MiB:.0f} MiB of CUDA context")
    try:
        size = parse_bytes(spec)
    except UsageError:
        raise choice_error("GPU", spec, list(cards.CARDS) + ["a size such as 40GiB"]) from None
    if size <= 0:
        raise UsageError(f"--gpu size must be > 0, got {spec}")
    return Target(spec, size, f"{size / GiB:.1f} GiB for the caching allocator (as --capacity; context outside)")


def margin(estimate: int, method: str = "lora") -> int:
    return max(int(fraction(method) * estimate), MARGIN_MIN)


def fraction(method: str) -> float:
    return MARGIN_FRACTION.get(method, PEFT_MARGIN)


@dataclass
class Answer:
    method: str
    select: str
    fits: bool
    granularity: int
    max_seq_len: int | None = None        # longest length (a multiple of granularity) that fits at batch 1
    at_limit: bool = False                # ... and it is the model's position limit (more might fit)
    peak_at_max: int | None = None
    dominant: str | None = None           # the largest category at that step's peak
    batch_len: int | None = None
    max_batch: int | None = None          # largest batch that fits at batch_len
    over_by: int | None = None            # when nothing fits: estimate + margin - usable at the shortest length
    probes: dict = field(default_factory=dict)   # seq_len -> estimated peak (batch 1)
    target_modules: str | None = None

    @property
    def label(self) -> str:
        label = case_label({"method": {"name": self.method}, "select": self.select})
        return label + (f" targets={self.target_modules}" if self.target_modules else "")


class Fitter:
    def __init__(self, base: Case, tgt: Target, granularity: int):
        self.base, self.target, self.granularity = base, tgt, granularity
        self.cache: dict[tuple, dict] = {}
        limit = zoo.max_positions(zoo.load_config(base.model))
        self.max_len = (limit or zoo.UNBOUNDED_MAX_LEN) // granularity * granularity
        if self.max_len < granularity:
            raise UsageError(f"--granularity {granularity} is longer than {base.model}'s {limit} positions")

    def probe(self, seq_len: int, batch: int = 1) -> dict:
        from ist_bench.runner.memory import measure_memory

        key = (seq_len, batch)
        if key not in self.cache:
            row = measure_memory(dataclasses.replace(self.base, seq_len=seq_len, batch=batch, steps=0))
            if row["status"] != "ok":
                raise RuntimeError(f"sim probe failed at {seq_len} tokens, batch {batch}: {row['error']}")
            step = row["memory"]["steps"][-1]
            self.cache[key] = {"peak": row["memory"]["summary"]["run_allocated_peak_est"], "at_peak": step["at_peak"]}
        return self.cache[key]

    def margin(self, peak: int) -> int:
        return margin(peak, self.base.method.name)

    def fits(self, seq_len: int, batch: int = 1) -> bool:
        peak = self.probe(seq_len, batch)["peak"]
        return peak + self.margin(peak) <= self.target.usable

    @staticmethod
    def largest(fits, lo: int, hi: int, guess: int) -> int:
        """The largest k in [lo, hi] with fits(k), for a monotone `fits` with fits(lo) true: probe the
        guess, gallop away from it until the answer is bracketed, then bisect."""
        guess = min(max(guess, lo), hi)
        if fits(guess):
            good, bad, step = guess, hi + 1, 1
            while good + step <= hi:
                if not fits(good + step):
                    bad = good + step
                    break
                good, step = good + step, step * 2
        else:
            good, bad, step = lo, guess, 1
            while bad - step > lo:
                if fits(bad - step):
                    good = bad - step
                    break
                bad, step = bad - step, step * 2
        while bad - good > 1:
            mid = (good + bad) // 2
            if fits(mid):
                good = mid
            else:
                bad = mid
        return good

    def _predict(self, xs: list[int], peaks: list[int]) -> float:
        """x where a quadratic through (xs, peaks) plus the margin meets the usable memory."""
        import numpy as np

        coeff = np.polyfit(xs, peaks, deg=min(2, len(xs) - 1))
        grid = np.arange(1, 1 + max(xs) * 64)
        est = np.polyval(coeff, grid)
        ok = grid[est + np.maximum(fraction(self.base.method.name) * est, MARGIN_MIN) <= self.target.usable]
        return float(ok.max()) if len(ok) else 1.0

    def seq_len(self, answer: Answer) -> None:
        g = self.granularity
        first = self.probe(g)["peak"]
        if first + self.margin(first) > self.target.usable:
            answer.fits, answer.over_by = False, first + self.margin(first) - self.target.usable
            answer.dominant = _dominant(self.probe(g)["at_peak"])
            return
        kmax = self.max_len // g
        ks = [k for k in (1, min(2, kmax), min(4, kmax)) if k <= kmax]
        peaks = [self.probe(k * g)["peak"] for k in dict.fromkeys(ks)]
        guess = int(self._predict(list(dict.fromkeys(ks)), peaks))
        k = self.largest(lambda k: self.fits(k * g), 1, kmax, guess)
        answer.fits, answer.max_seq_len, answer.at_limit = True, k * g, k == kmax
        best = self.probe(k * g)
        answer.peak_at_max, answer.dominant = best["peak"], _dominant(best["at_peak"])

    def batch(self, answer: Answer, seq_len: int) -> None:
        if not self.fits(seq_len, 1):
            answer.batch_len, answer.max_batch = seq_len, 0
            return
        p1, p2 = self.probe(seq_len, 1)["peak"], self.probe(seq_len, 2)["peak"]
        per = max(1, p2 - p1)
        guess = int((self.target.usable - p1) / per / (1 + fraction(self.base.method.name))) + 1
        answer.batch_len = seq_len
        answer.max_batch = self.largest(lambda b: self.fits(seq_len, b), 1, MAX_BATCH, guess)


def _dominant(at_peak: dict) -> str:
    tensors = {k: v for k, v in at_peak.items() if k not in ("rounding", "workspace")}
    return max(tensors, key=tensors.get)


def fit(model: str, gpu: str, methods: list[str], selects: list[str], granularity: int = 256,
        batch_len: int = 1024, target_modules: str | None = None, **case_kw) -> tuple[Target, list[Answer]]:
    from ist_bench.methods import MethodSpec

    if granularity < 2:   # a length is a multiple of it, and a step takes at least 2 tokens
        raise UsageError(f"--granularity must be >= 2 (the shortest sequence a step takes), got {granularity}")
    if not methods or not selects:
        raise UsageError(f"--{'method' if not methods else 'select'} names no method or policy; give a comma-separated "
                         f"list, e.g. lora,full")
    if batch_len < 2:
        raise UsageError(f"--batch-len must be >= 2, got {batch_len}")
    tgt = target(gpu)
    bases = [Case(model=model, method=MethodSpec(name=method, target_modules=_targets(method, target_modules)),
                  select=select, backend="sim", steps=0, **case_kw).check()
             for method in methods for select in selects]   # every input before any search
    answers = []
    for base in bases:
        f = Fitter(base, tgt, granularity)
        a = Answer(base.method.name, base.select, fits=False, granularity=granularity,
                   target_modules=base.method.target_modules)
        f.seq_len(a)
        f.batch(a, min(batch_len, f.max_len))
        a.probes = {str(k[0]): v["peak"] for k, v in sorted(f.cache.items()) if k[1] == 1}
        answers.append(a)
    return tgt, answers


def speeds(model: str, gpu: str, answers: list[Answer], **case_kw) -> list[tuple[Answer, dict]]:
    """The fastest setting that fits: each answer's step at its batch length with its largest batch (or, where
    no batch fits there, its longest sequence alone), its time predicted for the card (ist_bench/predict),
    fastest by tokens/s first. Returns (answer, batch, seq_len, predicted row)."""
    from ist_bench.methods import MethodSpec
    from ist_bench.predict import card_named, predict_time

    card_named(gpu)   # a card, not a size: a prediction needs its tables or spec sheet
    out = []
    for a in answers:
        if not a.fits:
            continue
        batch, seq_len = (a.max_batch, a.batch_len) if a.max_batch else (1, a.max_seq_len)
        case = Case(model=model, method=MethodSpec(name=a.method, target_modules=a.target_modules), select=a.select,
                    backend="sim", steps=10, seq_len=seq_len, batch=batch, **case_kw).check()
        row = predict_time(case, gpu, warmup=10)
        if row["status"] == "ok":
            out.append((a, batch, seq_len, row))
    return sorted(out, key=lambda x: -x[3]["time"]["tokens_per_s"])


def _targets(method: str, target_modules: str | None) -> str | None:
    """--target-modules applies to the LoRA family only: the other methods of a comma list place their own."""
    return target_modules if method in ("lora", "dora", "adalora") else None


WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class ShardAnswer:
    """`fit --nproc`: whether one step of `seq_len` tokens (batch 1) fits each rank under FSDP2."""
    method: str
    select: str
    seq_len: int
    nproc: int | None = None               # the N asked, or (auto) the smallest N that fits; None: none <= 64
    fits: bool = False
    peak: int | None = None                # per-rank estimated allocated peak at nproc (rank 0: the largest shards)
    dominant: str | None = None
    probes: dict = field(default_factory=dict)   # N -> per-rank peak

    @property
    def label(self) -> str:
        return case_label({"method": {"name": self.method}, "select": self.select})


def fit_nproc(model: str, gpu: str, methods: list[str], selects: list[str], nproc: int | str, seq_len: int = 1024,
              **case_kw) -> tuple[Target, list[ShardAnswer]]:
    """Per-rank fit under FSDP2 on sim (fake process group): at `nproc` ranks, or (`auto`) the smallest
    power of two up to 64 at which the steady step plus the margin fits the card, found by bisection
    (the per-rank peak falls as N grows). Each method x policy searches in a process of its own, as many
    at once as there are cores (a 70B probe is a full sim step: seconds of one core's Python)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ist_bench.methods import MethodSpec

    if nproc != "auto" and (not isinstance(nproc, int) or nproc < 1):
        raise UsageError(f"--nproc must be an integer >= 1 or auto, got {nproc!r}")
    tgt = target(gpu)
    jobs = []
    for method in methods:
        for select in selects:   # every input checked before any search starts
            Case(model=model, method=MethodSpec(name=method), select=select, backend="sim", steps=0,
                 seq_len=seq_len, nproc=1, **case_kw).validate()    # a method FSDP2 cannot shard: one line
            jobs.append(Case(model=model, method=MethodSpec(name=method), select=select, backend="sim", steps=0,
                             seq_len=seq_len, **case_kw).check())
    lanes = min(len(jobs), os.cpu_count() or 1)
    if lanes == 1:
        return tgt, [_shard_answer(c, tgt.usable, nproc) for c in jobs]
    # the slowest search (a policy's importance round makes each probe longer) runs here, the others in
    # workers that start meanwhile (a spawned worker imports torch and transformers again: seconds)
    here = max(range(len(jobs)), key=lambda i: jobs[i].select != "none")
    from ist_bench.process import prepare

    with ProcessPoolExecutor(lanes - 1, mp_context=multiprocessing.get_context("spawn"), initializer=prepare) as pool:
        futures = {i: pool.submit(_shard_answer, c, tgt.usable, nproc) for i, c in enumerate(jobs) if i != here}
        mine = _shard_answer(jobs[here], tgt.usable, nproc)
        return tgt, [mine if i == here else futures[i].result() for i in range(len(jobs))]


def _shard_answer(base: Case, usable: int, nproc: int | str) -> ShardAnswer:
    """One method x policy of `fit_nproc`: its probes and answer."""
    from ist_bench.distributed.fake import simulate
    from ist_bench.runner.memory import measure_memory

    method = base.method.name
    a = ShardAnswer(method, base.select, base.seq_len)

    def probe(n: int) -> bool:
        row = measure_memory(base) if n == 1 else simulate(base, n)
        if row["status"] != "ok":
            raise RuntimeError(f"sim probe failed at --nproc {n}: {row['error']}")
        peak = row["memory"]["summary"]["run_allocated_peak_est"]
        a.probes[str(n)] = {"peak": peak, "dominant": _dominant(row["memory"]["steps"][-1]["at_peak"])}
        return peak + margin(peak, method) <= usable
    if nproc == "auto":
        lo, hi = -1, len(WORLD_SIZES)          # WORLD_SIZES[hi] fits (hi = len: none known to)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(WORLD_SIZES[mid]):
                hi = mid
            else:
                lo = mid
        a.nproc = WORLD_SIZES[hi] if hi < len(WORLD_SIZES) else None
        a.fits = a.nproc is not None
    else:
        a.nproc, a.fits = nproc, probe(nproc)
    shown = a.probes.get(str(a.nproc)) or a.probes[str(max(map(int, a.probes)))]
    a.peak, a.dominant = shown["peak"], shown["dominant"]
    return a
