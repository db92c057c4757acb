"""What the tracker needs to see FSDP2's own memory (real ranks and sim alike).

FSDP2 allocates and frees each block's gathered (unsharded) parameters by resizing their storages
(`_fsdp_param.alloc_storage` / `free_storage`: `storage.resize_(n)` / `resize_(0)`), which no tensor op
shows a dispatch mode; and it makes its all-gather and reduce-scatter buffers inside
`foreach_all_gather`, `foreach_all_gather_copy_out` and `foreach_reduce`. `install()` wraps those five
names (in the modules that call them) so that the active MemoryTracker counts a resize as a free and
a new allocation, and files every storage born inside them under `fsdp_buffers` (tracker.fsdp) --
unless it is a gradient (the reduce-scatter output is the sharded gradient). Idempotent; without an
active tracker the wrappers only call through.
"""

from __future__ import annotations

import functools

from ist_bench.measure.tracker import MemoryTracker

_INSTALLED = False


def active_tracker() -> MemoryTracker | None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return next((m for m in reversed(_get_current_dispatch_mode_stack()) if isinstance(m, MemoryTracker)), None)


def _collective(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = active_tracker()
        before = t.clock if t is not None else 0
        try:
            return fn(*args, **kwargs)
        finally:
            if t is not None:
                t.fsdp.update(s for s in t.log if s > before)
    return wrapper


def _alloc(fn):
    @functools.wraps(fn)
    def alloc_storage(tensor):
        t = active_tracker()
        if t is not None:
            t.retire(tensor)            # its 0-byte (or stale) entry
        fn(tensor)
        if t is not None:
            t.register([tensor])
            s = t.serial(tensor)
            if s is not None:
                t.fsdp.add(s)
    return alloc_storage


def _free(fn):
    @functools.wraps(fn)
    def free_storage(tensor):
        t = active_tracker()
        if t is not None:
            t.retire(tensor)
        fn(tensor)
    return free_storage


def install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    import torch.distributed.fsdp._fully_shard._fsdp_param as param
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as group

    param.alloc_storage = group.alloc_storage = _alloc(param.alloc_storage)
    param.free_storage = _free(param.free_storage)
    for name in ("foreach_all_gather", "foreach_all_gather_copy_out", "foreach_reduce"):
        setattr(group, name, _collective(getattr(group, name)))
    _INSTALLED = True
