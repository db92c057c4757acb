"""Live tensor bytes, counted per storage, the same way on cuda, cpu and meta tensors.

The tracker is a `TorchDispatchMode`: every op's output storage on the tracked device
is counted once (views share their base's storage) and un-counted when the storage is
freed, through a weak reference on the storage object. Tensors that existed before the
tracker (weights, optimizer state) are registered explicitly so their views are not
counted twice and their bytes are part of the total.

`live` is what a caching allocator would call "allocated", without its block rounding;
`peak` is the largest `live` since the last `reset_peak()`. An optional `block` function
(a block size per request) or `allocator` (sim's replay of the CUDA caching allocator,
measure/allocator.py: the block a request gets depends on what is cached) keeps a second
count of block bytes, and an optional
`capacity` turns exceeding it (with `outside` bytes, e.g. modelled workspaces, added) into
`SimulatedOOM`: what a GPU of that size would do. An optional `scratch` function (sim's model
of CUDA kernels' internal temporaries, `sim.cuda_scratch`) gives the bytes an op takes from the
allocator for itself while it runs: they count towards `peak_blocks` at that op (`peak_scratch`
says how many of the peak's bytes they are), never towards `live`.

An op that reaches the tracker undecomposed although it is only a composite of other ops (under
`torch.inference_mode`, autograd does not decompose them first: `softmax(x, dtype=float32)`
is a cast plus a softmax there) is decomposed here, so the tracker sees the tensors its parts
create, as the allocator does; otherwise they would live and die unseen inside the op.

On the meta device (sim) the tracker can also memoize ops (`memo=True`): the meta kernels are
Python code (~0.2 ms an op) and a transformer repeats the same op on the same shapes in every
layer. An op that creates fresh outputs and mutates nothing is looked up by (op, argument
shapes, strides, dtypes, other arguments); a hit returns new meta tensors with the recorded
shapes, strides, offsets and storage sizes, so every byte the tracker counts is what the kernel
would have produced (tests compare memoized and plain runs byte for byte).

Every storage gets a serial number and a birth and death time on one clock (an event counter),
plus the tag current at its birth (the meter sets `tag` to the running module). The moment of
the peak (in blocks) is a clock value, so `alive_at(moment)` can later list exactly which
storages were live then, without copying the live set at every new peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class SimulatedOOM(MemoryError):
    """A simulated step needed more than the capacity it was given."""


@dataclass
class Storage:
    nbytes: int
    blocks: int
    tag: str | None
    born: int
    died: int | None = None
    handle: object = None   # the allocator's block, to give back when the storage dies


_MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


def _check_matmul_dtypes(func, args) -> None:
    """Meta kernels accept a matmul of mixed dtypes that every device kernel refuses (fp32 activations into
    bf16 weights): sim refuses it too, in the device's words, so that what sim runs the GPU runs."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if tensors and tensors[0].is_meta and len({t.dtype for t in tensors}) > 1:
        a, b = tensors[-2:]
        raise RuntimeError(f"expected mat1 and mat2 to have the same dtype, but got: {a.dtype} != {b.dtype} "
                           f"({func.__name__} on sim)")


class MemoryTracker(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's hook in torch._disable_dynamo (a Python frame per op, ~10% of a sim step);
        # the tracker never runs under torch.compile, so it takes the hook unwrapped
        return False

    def __init__(self, device_type: str, *, block: Callable[[int], int] | None = None,
                 capacity: int | None = None, outside: int = 0, memo: bool = False,
                 scratch: Callable[..., int] | None = None, history: bool = False, allocator=None):
        super().__init__()
        self.allocator = allocator   # alloc(nbytes) -> block with .size (or None), free(block)
        self.history = history   # keep every storage's lifetime and each scratch (clock, blocks): a timeline
        self.scratch_log: list[tuple[int, int]] = []
        self.scratch = scratch
        self.peak_scratch = 0   # kernel scratch bytes (blocks) included in `peak_blocks`
        self._device_key = {"meta": torch._C.DispatchKey.Meta, "cpu": torch._C.DispatchKey.CPU,
                            "cuda": torch._C.DispatchKey.CUDA}.get(device_type)
        self.memo: dict | None = {} if memo and device_type == "meta" else None
        self.device_type = device_type
        self.block = block or (lambda n: n)
        self.capacity, self.outside = capacity, outside  # `outside`: bytes taken besides tensors
        self._live: dict[int, tuple[weakref.ref, int]] = {}   # id(storage) -> (ref, serial)
        self.log: dict[int, Storage] = {}                      # serial -> its bytes, tag and lifetime
        self.fsdp: set[int] = set()   # serials of FSDP2's gathered parameters and collective buffers (dist/track.py)
        self.clock = 0
        self.tag: str | None = None
        self.where: str | None = None   # what the run is doing (the meter sets "step 3, backward"), for OOM messages
        self.live = self.peak = 0
        self.live_blocks = self.peak_blocks = 0
        self.peak_moment = 0   # the clock when `peak_blocks` was reached
        # the clock when the tensors' blocks (no scratch) peaked: where a kernel's scratch sets `peak_blocks`,
        # this is the moment the tensors alone peak, whose make-up `measure.memory.typical` follows
        self.tensor_peak_moment, self._tensor_peak_blocks = 0, 0
        self._self_ref = weakref.ref(self)  # for the free callbacks: they must not keep the tracker alive
        meta = device_type == "meta"
        self._here = (lambda t: t.is_meta) if meta else (lambda t: t.device.type == device_type)

    # -- counting -------------------------------------------------------------------
    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors created outside the tracker (weights, inputs, optimizer state)."""
        for t in tensors:
            self._add(t)

    @property
    def peak_estimate(self) -> int:
        """Peak in allocator blocks plus the bytes taken besides tensors: the modelled allocated peak."""
        return self.peak_blocks + self.outside

    def reset_peak(self) -> None:
        self.peak, self.peak_blocks, self.peak_moment = self.live, self.live_blocks, self.clock
        self.tensor_peak_moment, self._tensor_peak_blocks = self.clock, self.live_blocks
        self.peak_scratch = 0
        if not self.history:
            self.log = {s: e for s, e in self.log.items() if e.died is None}   # forget the dead

    def serial(self, t: torch.Tensor) -> int | None:
        """The serial of a live tensor's storage (None if untracked)."""
        t = local(t)
        entry = self._live.get(id(t.untyped_storage())) if isinstance(t, torch.Tensor) else None
        return None if entry is None else entry[1]

    def alive_at(self, moment: int) -> dict[int, Storage]:
        return {s: e for s, e in self.log.items() if e.born <= moment and (e.died is None or e.died > moment)}

    def _add(self, t: torch.Tensor) -> None:
        t = local(t)
        if not isinstance(t, torch.Tensor) or not self._here(t) or t.is_sparse or getattr(t, "is_paged", False):
            return   # a paged tensor (bitsandbytes) lives in CUDA managed memory, outside the allocator
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        nbytes = storage.nbytes()
        blocks, handle = self._book(nbytes)
        self.clock += 1
        serial = self.clock
        self._live[key] = (weakref.ref(storage, self._freed(key)), serial)
        self.log[serial] = Storage(nbytes, blocks, self.tag, serial, handle=handle)
        self.live += nbytes
        self.live_blocks += blocks
        if self.live > self.peak:
            self.peak = self.live
        if self.live_blocks > self._tensor_peak_blocks:
            self._tensor_peak_blocks, self.tensor_peak_moment = self.live_blocks, self.clock
        self._reach(self.live_blocks, 0)

    def _book(self, nbytes: int) -> tuple[int, object]:
        """The block bytes a request of `nbytes` takes, and the allocator's handle on them."""
        if self.allocator is None:
            return self.block(nbytes), None
        handle = self.allocator.alloc(nbytes)
        return (0 if handle is None else handle.size), handle

    def _reach(self, blocks: int, scratch: int) -> None:
        """The allocator holds `blocks` now (`scratch` of them an op's own temporaries)."""
        if blocks > self.peak_blocks:
            self.peak_blocks, self.peak_moment, self.peak_scratch = blocks, self.clock, scratch
        if self.capacity is not None and blocks + self.outside > self.capacity:
            from ist_bench.units import human
            raise SimulatedOOM(f"simulated out of memory{self._at()}: {human(blocks + self.outside)} "
                               f"needed ({human(self.outside)} of it cuBLAS workspace) > capacity "
                               f"{human(self.capacity)} ({blocks + self.outside:,} > {self.capacity:,} bytes)")

    def _at(self) -> str:
        """' at step 3, backward, in model.layers.2.mlp': where the run was (what the meter and tags say)."""
        parts = [p for p in (self.where, self.tag and f"in {self.tag}") if p]
        return f" at {', '.join(parts)}" if parts else ""

    def retire(self, t: torch.Tensor) -> None:
        """Count a storage as freed now though its object lives on (FSDP2 frees by `storage.resize_(0)`)."""
        t = local(t)
        if isinstance(t, torch.Tensor) and self._here(t):
            self._freed(id(t.untyped_storage()))(None)

    def _freed(self, key: int):
        self_ref = self._self_ref

        def callback(_ref):
            tracker = self_ref()
            if tracker is None:
                return
            entry = tracker._live.pop(key, None)
            if entry is not None:
                tracker.clock += 1
                storage = tracker.log[entry[1]]
                storage.died = tracker.clock
                tracker.live -= storage.nbytes
                tracker.live_blocks -= storage.blocks
                if tracker.allocator is not None:
                    tracker.allocator.free(storage.handle)
        return callback

    # -- the dispatch hook ----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _composite(func, self._device_key):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func.overloadpacket in _MATMULS:
            _check_matmul_dtypes(func, args)
        key = _memo_key(func, args, kwargs) if self.memo is not None else None
        hit = self.memo.get(key) if key is not None else None
        if hit is not None:
            out = _rebuild(hit)
        else:
            try:
                out = func(*args, **kwargs)
            except torch.OutOfMemoryError as e:   # a real OOM (cuda): say where, in the message's first line
                raise type(e)(f"out of memory{self._at()}: {e}") from None
            if key is not None:
                # an op whose schema promises a fresh output may still return a view (`_unsafe_view`): a
                # rebuilt output would then be a storage of its own, an allocation the GPU never makes
                template = None if _aliases_input(out, args, kwargs) else _template(out)
                if template is not None:
                    self.memo[key] = template
        for t in _tensors(out):
            self._add(t)
        if self.scratch is not None:
            extra = self.scratch(func, args, kwargs, out)
            if extra:
                blocks, handle = self._book(extra)
                if self.allocator is not None:
                    self.allocator.free(handle)   # the kernel gives it back before it returns
                if self.history:
                    self.scratch_log.append((self.clock, blocks))
                self._reach(self.live_blocks + blocks, blocks)
        return out


_COMPOSITE: dict = {}


def _composite(func, device_key) -> bool:
    """An op with only a CompositeImplicitAutograd kernel for this device (its parts do the work)."""
    ok = _COMPOSITE.get(func)
    if ok is None:
        key = torch._C.DispatchKey
        ok = (device_key is not None and func.has_kernel_for_dispatch_key(key.CompositeImplicitAutograd)
              and not func.has_kernel_for_dispatch_key(device_key))
        _COMPOSITE[func] = ok
    return ok


def _tensors(out):
    """The tensors in an op's output (a tensor, or a tuple/list of tensors and other values)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return [t for x in out for t in _tensors(x)]
    return ()


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_PURE: dict = {}


def _pure(func) -> bool:
    """An op that returns fresh tensors (no alias of an input) and writes to no argument."""
    ok = _PURE.get(func)
    if ok is None:
        schema = func._schema
        ok = (all(r.alias_info is None for r in schema.returns)
              and all(a.alias_info is None or not a.alias_info.is_write for a in schema.arguments)
              and not schema.is_mutable and len(schema.returns) > 0)
        _PURE[func] = ok
    return ok


class _Unkeyable(Exception):
    pass


def _key_of(x):
    if isinstance(x, torch.Tensor):
        if (type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter) or not x.is_meta or x.is_sparse:
            raise _Unkeyable
        return (x.shape, x.stride(), x.storage_offset(), x.dtype)
    if isinstance(x, (tuple, list)):
        return (type(x), tuple(_key_of(v) for v in x))
    if isinstance(x, _PLAIN):
        return (type(x), x)
    raise _Unkeyable


def _memo_key(func, args, kwargs):
    if not _pure(func):
        return None
    try:
        return (func, _key_of(args), tuple((k, _key_of(v)) for k, v in kwargs.items()))
    except _Unkeyable:
        return None


def _template(out):
    """What `_rebuild` needs to make `out` again: per tensor its shape, strides, offset, dtype and
    storage size; None for outputs that are not meta tensors or share a storage."""
    seen = set()

    def of(x):
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            if not x.is_meta or id(st) in seen:
                raise _Unkeyable
            seen.add(id(st))
            shape, stride, offset, nbytes = tuple(x.shape), x.stride(), x.storage_offset(), st.nbytes()
            if offset == 0 and nbytes == _dense_bytes(shape, stride, x.dtype):
                return ("E", shape, stride, x.dtype)   # what empty_strided makes (one call, not three)
            return ("T", shape, stride, offset, x.dtype, nbytes)
        if isinstance(x, (tuple, list)):
            return (type(x), tuple(of(v) for v in x))
        raise _Unkeyable
    try:
        return of(out)
    except _Unkeyable:
        return None


def _aliases_input(out, args, kwargs) -> bool:
    inputs = {id(t.untyped_storage()) for t in _tensors([*args, *kwargs.values()])}
    return any(id(t.untyped_storage()) in inputs for t in _tensors(out))


def _dense_bytes(shape, stride, dtype) -> int:
    """The storage bytes `torch.empty_strided(shape, stride)` allocates."""
    if 0 in shape:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))) * dtype.itemsize


def _rebuild(template):
    if template[0] == "E":
        return torch.empty_strided(template[1], template[2], dtype=template[3], device="meta")
    if template[0] == "T":
        _, shape, stride, offset, dtype, nbytes = template
        t = torch.empty(0, dtype=dtype, device="meta")
        return t.set_(torch.UntypedStorage(nbytes, device="meta"), offset, shape, stride)
    kind, items = template
    return kind(_rebuild(x) for x in items)


def local(t):
    """A sharded (DTensor) parameter, gradient or state is counted by the shard this rank holds."""
    return getattr(t, "_local_tensor", t)


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the unique storages behind `tensors` (shared/tied storages once; a DTensor by its local shard)."""
    seen: dict[int, int] = {}
    for t in map(local, tensors):
        if isinstance(t, torch.Tensor) and not t.is_sparse:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())
