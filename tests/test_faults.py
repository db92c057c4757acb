"""Reliability: a fault-injection suite, interrupts, truncated files, resource guards, safety."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ist_bench.cli import main
from ist_bench.results import read_rows

N = 30


def _suite(tmp_path: Path, n: int = N) -> Path:
    """n tiny sim cases (seeds); case 5 runs against 1 MiB and must OOM; case 9 is killed in its first
    backward pass (IST_BENCH_FAULTS below)."""
    cases = [{"seed": i} for i in range(n)]
    if n == N:
        cases[5]["capacity"] = "1MiB"
        cases[9].update(steps=40, seq_len=512)
    f = tmp_path / "faults.yaml"
    f.write_text("name: faults\nkind: memory\ndefaults: {model: tiny-llama, method: lora, steps: 1, seq_len: 32, "
                 "backend: sim}\ncases:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cases))
    return f


@pytest.mark.slow
def test_a_30_case_suite_survives_oom_kill_hang_and_an_invalid_case_and_resumes(tmp_path, monkeypatch, capsys):
    suite, out = _suite(tmp_path), tmp_path / "faults.jsonl"
    monkeypatch.setenv("IST_BENCH_FAULTS", json.dumps({"9": "kill-mid-step", "17": "hang", "23": "invalid"}))
    code = main(["run", str(suite), "--out", str(out), "--timeout", "25", "--jobs", "2"])
    assert code == 1                                         # "some cases failed" (README: exit codes)
    rows = read_rows(out)
    status = {r["case"]["seed"]: r["status"] for r in rows}
    assert len(rows) == N and sorted(status) == list(range(N))          # every case has its row, once
    assert (status[5], status[9], status[17], status[23]) == ("oom", "killed", "timeout", "error")
    assert all(s == "ok" for seed, s in status.items() if seed not in (5, 9, 17, 23))
    by = {r["case"]["seed"]: r for r in rows}
    assert "capacity" in by[5]["error"] and by[9]["error"] == "worker killed by signal 9"
    assert by[17]["error"] == "no result within 25 s; killed"
    assert by[23]["error"].startswith("UsageError: --seq-len 1000000000 is longer than tiny-llama's 2048")
    assert "3 case(s) failed" in capsys.readouterr().out
    # --resume without the faults: only the three failed cases run again; nothing finished is redone
    monkeypatch.delenv("IST_BENCH_FAULTS")
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    again = read_rows(out)[N:]
    assert sorted(r["case"]["seed"] for r in again) == [9, 17, 23] and all(r["status"] == "ok" for r in again)


def _workers_of(tmp: Path) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ist_bench.runner.worker" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("TMPDIR") == str(tmp):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("signum,twice", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_an_interrupt_stops_workers_at_once_and_leaves_no_process_or_temp_file(tmp_path, signum, twice):
    suite, out, tmp = _suite(tmp_path, n=12), tmp_path / "o.jsonl", tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "ist_bench.cli", "run", str(suite), "--out", str(out),
                             "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or not out.read_text()):
        time.sleep(0.1)
    sent = time.time()
    proc.send_signal(signum)
    if twice:
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.time() - sent < 10
    if not twice:
        assert f"Resume with: ist-bench run {suite} --out {out} --resume" in err
    n = len(read_rows(out))
    assert 1 <= n < 12
    time.sleep(0.5)
    assert _workers_of(tmp) == []                                      # no orphaned worker
    assert [p.name for p in tmp.iterdir()] == []                       # no temp file left
    assert len(read_rows(out)) == n                                    # and nothing wrote after the exit


def test_a_truncated_last_line_is_reported_and_skipped_a_broken_middle_line_is_an_error(tmp_path, capsys):
    good = json.dumps({"schema": 1, "kind": "memory", "case": {"model": "m", "method": {"name": "lora"}},
                       "status": "ok", "memory": {"summary": {"run_peak": 1}, "steps": []}})
    f = tmp_path / "r.jsonl"
    f.write_text(good + "\n" + good[:40])                             # a write cut short by a crash
    assert len(read_rows(f)) == 1
    assert "r.jsonl:2 is a truncated last line (an interrupted write); skipped" in capsys.readouterr().err
    f.write_text(good[:40] + "\n" + good + "\n")
    assert main(["validate", str(f)]) == 2
    assert "r.jsonl:1 is not an ist-bench result row (not JSON)" in capsys.readouterr().err


def test_reports_and_baselines_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from ist_bench import results, safeio
    target = tmp_path / "b.jsonl"
    target.write_text("old\n")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safeio.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        results.write_atomic(target, "new\n" * 1000)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["b.jsonl"]


@pytest.mark.slow
def test_a_full_disk_while_appending_rows_is_one_line_and_keeps_the_rows_written(tmp_path, monkeypatch, capsys):
    from ist_bench import safeio
    suite, out = _suite(tmp_path, n=3), tmp_path / "o.jsonl"
    real, calls = safeio.os.fsync, []

    def fills_up(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real(fd)
    monkeypatch.setattr(safeio.os, "fsync", fills_up)
    assert main(["run", str(suite), "--out", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert len(read_rows(out)) >= 1


@pytest.mark.slow
def test_sim_allocates_nothing_proportional_to_the_model():
    """LLaMA-13B's steady step on sim (48 GiB on a GPU) moves this process's RSS by well under 1 GiB."""
    code = ("import psutil, sys; from ist_bench.runner.case import Case; from ist_bench.runner.memory import "
            "measure_memory; from ist_bench.methods import MethodSpec; p = psutil.Process(); "
            "measure_memory(Case(model='tiny-llama', backend='sim', steps=0).check()); before = p.memory_info().rss; "
            "r = measure_memory(Case(model='llama-13b', method=MethodSpec(name='lora'), backend='sim', steps=0).check()); "
            "assert r['status'] == 'ok', r['error']; print(r['memory']['summary']['run_allocated_peak_est'], "
            "p.memory_info().rss - before)")
    peak, grown = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          timeout=300, check=True).stdout.split())
    assert peak > 40 * 2**30 and grown < 2**30


@pytest.mark.slow
def test_the_cli_works_with_the_network_blocked(tmp_path):
    """HF_HUB_OFFLINE=1 and a socket guard (any connect raises): nothing is ever downloaded."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _blocked(*a, **k):\n    raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = _blocked\nsocket.create_connection = _blocked\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=f"{guard}{os.pathsep}{os.getcwd()}")
    for argv in (["memory", "--model", "gpt2-small", "--method", "adalora", "--select", "ist", "--steps", "1",
                  "--seq-len", "64"],
                 ["fit", "--model", "tiny-gpt2", "--gpu", "1GiB", "--select", "none"]):
        proc = subprocess.run([sys.executable, "-m", "ist_bench.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "network access attempted" not in proc.stderr


def test_no_remote_code_no_pickles_no_downloads_in_the_source():
    root = Path(__file__).resolve().parents[1] / "ist_bench"
    text = "\n".join(p.read_text() for p in root.rglob("*.py"))
    for forbidden in ("trust_remote_code=True", "torch.load(", "pickle.load", "from_pretrained(", "hf_hub_download"):
        assert forbidden not in text, forbidden
