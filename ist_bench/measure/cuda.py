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
