"""The GPU's own view: NVML process memory (CUDA context included) and clocks, sampled in
a background thread; and the cuBLAS workspace probe behind sim's allocator model."""

from __future__ import annotations

import os
import threading


class _NvmlSampler:
    """Calls `_tick()` every `interval_s` seconds between `__enter__` and `__exit__`.
    Without NVML (no driver, no pynvml) it records nothing rather than fail the case."""

    interval_s = 0.1

    def __init__(self, device_index: int = 0):
        self.device_index = device_index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, _handle_of_torch_device(pynvml, self.device_index)
        except Exception:  # pynvml raises NVMLError subclasses, or is missing
            return self
        self._tick()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._tick()
            self._nvml.nvmlShutdown()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def _tick(self) -> None:
        raise NotImplementedError


def _handle_of_torch_device(nvml, index: int):
    """NVML's handle for torch's CUDA device `index`: NVML numbers cards in PCI order and ignores
    CUDA_VISIBLE_DEVICES, so match by UUID; fall back to the same index."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # older torch without .uuid, or no CUDA: the index is right on one-GPU boxes
        return nvml.nvmlDeviceGetHandleByIndex(index)


class NvmlPoller(_NvmlSampler):
    """This process's GPU memory as NVML sees it, every 5 ms.

    `baseline` is the first sample (enter after the CUDA context exists, before the model is
    built); `peak` the largest. Process memory includes the CUDA context and the caching
    allocator's reserve, so it is reported beside the allocator's peak, never instead. Where
    NVML cannot list processes (some containers), the device's used memory is sampled.
    """

    interval_s = 0.005

    def __init__(self, device_index: int = 0):
        super().__init__(device_index)
        self.baseline = self.peak = self.source = None

    def _tick(self) -> None:
        nvml, value = self._nvml, None
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    self.source, value = "process", int(proc.usedGpuMemory)
        except nvml.NVMLError:
            pass
        if value is None:
            self.source, value = "device", int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        if self.baseline is None:
            self.baseline = value
        self.peak = max(self.peak or 0, value)

    def result(self) -> dict:
        return {"nvml_baseline": self.baseline, "nvml_peak": self.peak, "nvml_source": self.source}


class ClockPoller(_NvmlSampler):
    """The SM clock and its clock-event (throttle) reasons while steps are timed, every
    100 ms, so a slow stretch can be told apart from a slow kernel."""

    _REASONS = {0x1: "idle", 0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
                0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clock"}

    def __init__(self, device_index: int = 0):
        super().__init__(device_index)
        self.clocks: list[int] = []
        self.reasons: set[str] = set()

    def _tick(self) -> None:
        nvml = self._nvml
        try:
            self.clocks.append(nvml.nvmlDeviceGetClockInfo(self._handle, nvml.NVML_CLOCK_SM))
            mask = nvml.nvmlDeviceGetCurrentClocksEventReasons(self._handle)
            self.reasons |= {name for bit, name in self._REASONS.items() if mask & bit}
        except Exception:  # a query this driver lacks: keep what we have
            pass

    def result(self) -> dict:
        if not self.clocks:
            return {}
        s = sorted(self.clocks)
        return {"sm_clock_mhz": {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "n": len(s)},
                "clock_event_reasons": sorted(self.reasons)}


def cublas_workspace_bytes() -> dict:
    """Allocator bytes that matmuls take beyond their tensors (cuBLAS/cuBLASLt workspaces),
    in forward (this thread) and in backward (autograd's device thread: another handle).
    Run in a fresh process: the workspaces are taken once per handle and kept."""
    import torch

    torch.zeros(1, device="cuda")
    a = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    y = a @ b
    torch.cuda.synchronize()
    forward = torch.cuda.memory_allocated() - base - y.untyped_storage().nbytes()
    loss = y.float().sum()
    torch.cuda.synchronize()
    before_bwd = torch.cuda.memory_allocated()
    loss.backward()
    torch.cuda.synchronize()
    grads = a.grad.untyped_storage().nbytes() + b.grad.untyped_storage().nbytes()
    backward = torch.cuda.memory_allocated() - before_bwd - grads
    return {"forward": forward, "backward": backward, "total": forward + backward}


BUSY_MODES = ("refuse", "warn", "ignore")
BUSY_MEMORY = 2 << 30      # device memory in use before our context exists (the driver's own is ~0.5 GiB)
BUSY_UTILIZATION = 20      # % in every sample


class BusyGPU(RuntimeError):
    """Another process holds memory or compute on the card a case is about to measure."""


def gpu_guard(mode: str = "refuse", samples: int = 5, interval_s: float = 0.1, settle_s: float = 15.0) -> dict:
    """Before a GPU case (and before this process creates its CUDA context): look for other users
    of the card: processes NVML lists, memory in use, utilization in every one of `samples`.
    `refuse` raises BusyGPU, `warn` prints a warning and goes on, `ignore` does not look. Utilization
    alone (no other process, little memory in use) is sampled again for up to `settle_s` first. What was
    seen is returned for the result row. Without NVML it records that it could not look."""
    import sys
    import time

    seen: dict = {"mode": mode}
    if mode == "ignore":
        return seen
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver or no pynvml: nothing to look at
        seen["error"] = "NVML unavailable"
        return seen
    try:
        handle = _handle_of_visible_device(pynvml)
        others = []
        try:
            others = [(p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                      if p.pid != os.getpid()]
        except pynvml.NVMLError:
            pass
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

        def sample() -> list[int]:
            out = []
            for _ in range(samples):
                out.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                time.sleep(interval_s)
            return out
        util = sample()
        # NVML's utilization is an average over its last sampling window: right after the previous case's
        # process exits (nothing else on the card) it still reads busy. Let it settle before refusing.
        deadline = time.monotonic() + settle_s
        while not others and used <= BUSY_MEMORY and min(util) >= BUSY_UTILIZATION and time.monotonic() < deadline:
            util = sample()
    finally:
        pynvml.nvmlShutdown()
    busy = []
    if others:
        busy.append(f"{len(others)} other process(es) on the card (pids {', '.join(str(p) for p, _ in others[:5])})")
    if used > BUSY_MEMORY:
        busy.append(f"{used / (1 << 30):.1f} GiB of its memory in use")
    if min(util) >= BUSY_UTILIZATION:
        busy.append(f"utilization {min(util)}-{max(util)}%")
    seen.update(other_processes=others, used_memory=used, utilization=util, busy=bool(busy))
    if busy:
        message = "GPU busy before the case started: " + "; ".join(busy)
        if mode == "refuse":
            raise BusyGPU(message + " (use --busy-gpu warn to measure anyway)")
        print(f"ist-bench: warning: {message}; measuring anyway (--busy-gpu warn)", file=sys.stderr)
    return seen


def _handle_of_visible_device(nvml):
    """The NVML handle of CUDA device 0 as this process will see it, without creating a CUDA
    context (CUDA_VISIBLE_DEVICES may name an index or a UUID)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    if first.startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(first)
    return nvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)


def card_memory() -> int | None:
    """Total memory of the card the cases will run on, from NVML (no CUDA context); None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver or no pynvml
        return None
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(_handle_of_visible_device(pynvml)).total)
    finally:
        pynvml.nvmlShutdown()
