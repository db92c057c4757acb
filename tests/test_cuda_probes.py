"""The NVML samplers, against a stand-in pynvml (CI has no GPU; the real one ran on the H200)."""

import os
import sys
import time
import types

import pytest

from ist_bench.measure.cuda import ClockPoller, NvmlPoller


@pytest.fixture
def fake_nvml(monkeypatch):
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda i: "gpu0"
    nvml.memory = iter(range(1000, 10**9, 1000))
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=1, usedGpuMemory=5), types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=next(nvml.memory))]
    nvml.NVML_CLOCK_SM = 0
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: 1980
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x4 | 0x40
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def test_nvml_poller_keeps_the_first_sample_as_baseline_and_the_largest_as_peak(fake_nvml):
    with NvmlPoller() as poller:
        time.sleep(0.05)
    r = poller.result()
    assert r["nvml_baseline"] == 1000 and r["nvml_peak"] > 2000 and r["nvml_source"] == "process"


def test_nvml_poller_falls_back_to_device_memory_when_processes_are_hidden(fake_nvml):
    def hidden(h):
        raise fake_nvml.NVMLError("not supported")
    fake_nvml.nvmlDeviceGetComputeRunningProcesses = hidden
    fake_nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=7 * 2**30)
    with NvmlPoller() as poller:
        pass
    assert poller.result() == {"nvml_baseline": 7 * 2**30, "nvml_peak": 7 * 2**30, "nvml_source": "device"}


def test_clock_poller_names_the_clock_event_reasons(fake_nvml):
    with ClockPoller() as clocks:
        time.sleep(0.25)
    r = clocks.result()
    assert r["sm_clock_mhz"]["min"] == r["sm_clock_mhz"]["max"] == 1980
    assert r["clock_event_reasons"] == ["hw_thermal", "sw_power_cap"]


def test_samplers_record_nothing_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with NvmlPoller() as poller, ClockPoller() as clocks:
        pass
    assert poller.result()["nvml_peak"] is None and clocks.result() == {}


def _idle(nvml, used=600 << 20, util=0, others=()):
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=p, usedGpuMemory=1 << 30)
                                                           for p in others]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=used)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util)


def test_busy_gpu_guard_passes_an_idle_card_and_records_what_it_saw(fake_nvml):
    from ist_bench.measure.cuda import gpu_guard
    _idle(fake_nvml)
    seen = gpu_guard("refuse", interval_s=0)
    assert seen["busy"] is False and seen["used_memory"] == 600 << 20 and seen["utilization"] == [0] * 5


@pytest.mark.parametrize("kw,reason", [({"others": [4242]}, "1 other process(es) on the card (pids 4242)"),
                                       ({"used": 30 << 30}, "30.0 GiB of its memory in use"),
                                       ({"util": 97}, "utilization 97-97%")])
def test_busy_gpu_guard_refuses_or_warns(fake_nvml, capsys, kw, reason):
    from ist_bench.measure.cuda import BusyGPU, gpu_guard
    _idle(fake_nvml, **kw)
    with pytest.raises(BusyGPU, match=reason.replace("(", r"\(").replace(")", r"\)")):
        gpu_guard("refuse", interval_s=0, settle_s=0.05)
    seen = gpu_guard("warn", interval_s=0, settle_s=0.05)
    assert seen["busy"] is True and reason in capsys.readouterr().err
    assert gpu_guard("ignore") == {"mode": "ignore"}


def test_busy_gpu_guard_lets_a_lone_utilization_reading_settle(fake_nvml):
    # right after the previous case's process exits, NVML's utilization (an average over its last window)
    # still reads busy though nothing is on the card: two runs on the H200 lost a cell to that
    from ist_bench.measure.cuda import gpu_guard
    _idle(fake_nvml)
    readings = iter([60] * 7 + [0] * 100)
    fake_nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=next(readings))
    seen = gpu_guard("refuse", interval_s=0, settle_s=5)
    assert seen["busy"] is False and seen["utilization"] == [60, 60, 0, 0, 0]   # the first 5 read busy
