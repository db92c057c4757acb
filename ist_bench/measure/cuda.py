"""The GPU's own view of memory: NVML process memory (CUDA context included), polled."""

from __future__ import annotations

import os
import threading


class NvmlPoller:
    """Samples this process's GPU memory from NVML in a background thread.

    `baseline` is read at start (call it after the CUDA context exists, before the model is
    built); `peak` is the largest sample. Process memory includes the CUDA context and the
    caching allocator's reserve, so it is reported beside the allocator's peak, never instead.
    Where NVML cannot list processes (some containers), the device's used memory is sampled.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.005):
        self.interval_s, self.device_index = interval_s, device_index
        self.baseline = self.peak = None
        self.source = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlPoller:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception:  # no NVML: report nothing rather than fail the case
            return self
        self.baseline = self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, self._sample() or 0)
            self._nvml.nvmlShutdown()

    def _sample(self) -> int | None:
        nvml = self._nvml
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    self.source = "process"
                    return int(proc.usedGpuMemory)
        except nvml.NVMLError:
            pass
        self.source = "device"
        return int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self._sample()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value

    def result(self) -> dict:
        return {"nvml_baseline": self.baseline, "nvml_peak": self.peak, "nvml_source": self.source}


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


class ClockPoller:
    """Samples the GPU's SM clock and its clock-event (throttle) reasons while steps are timed,
    so a slow stretch can be told apart from a slow kernel. Sampling is sparse (100 ms)."""

    _REASONS = {0x1: "idle", 0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal",
                0x40: "hw_thermal", 0x80: "hw_power_brake"}

    def __init__(self, device_index: int = 0, interval_s: float = 0.1):
        self.device_index, self.interval_s = device_index, interval_s
        self.clocks: list[int] = []
        self.reasons: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClockPoller:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception:  # no NVML: no clock record
            return self
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.wait(self.interval_s):
            try:
                self.clocks.append(nvml.nvmlDeviceGetClockInfo(self._handle, nvml.NVML_CLOCK_SM))
                mask = nvml.nvmlDeviceGetCurrentClocksEventReasons(self._handle)
                self.reasons |= {name for bit, name in self._REASONS.items() if mask & bit}
            except Exception:  # a missing query on this driver: keep what we have
                return

    def result(self) -> dict:
        if not self.clocks:
            return {}
        s = sorted(self.clocks)
        return {"sm_clock_mhz": {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "n": len(s)},
                "clock_event_reasons": sorted(self.reasons)}
