"""Real faults against safe output and bounded work (issue 17): a full disk, two runs on one --out, planted
symlinks, device nodes and FIFOs, names that try to leave their folder, SIGHUP, SIGKILL leftovers, a slow
worker start under --timeout, hostile YAML, a hostile terminal; and a property test: after any sequence of
kill / resume / full disk / concurrent run, every case has exactly one row."""

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ist_bench import safeio
from ist_bench.cli import main
from ist_bench.errors import UsageError
from ist_bench.results import read_rows

ROW = {"schema": 1, "kind": "memory", "case": {"model": "m", "method": {"name": "lora"}}, "status": "ok",
       "memory": {"summary": {"run_peak": 1}, "steps": []}}   # the least a finished row holds (schema.Row)


def _suite(folder: Path, n: int, name: str = "faults", **extra) -> Path:
    cases = [{"seed": i, **extra} for i in range(n)]
    f = folder / f"{name.replace('/', '_')}.yaml"
    f.write_text(f"name: {json.dumps(name)}\nkind: memory\ndefaults: {{model: tiny-llama, method: lora, steps: 1, "
                 f"seq_len: 32, backend: sim}}\ncases:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cases))
    return f


def _seeds(path: Path) -> list[int]:
    return sorted(r["case"]["seed"] for r in read_rows(path))


def _cli(*argv, env=None, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "ist_bench.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


# --- safe output -------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 KiB tmpfs (room for about two rows), or skip where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_then_more_space_then_resume_loses_no_row(tmp_path, small_disk, capsys):
    suite, out = _suite(tmp_path, 5), small_disk / "o.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    data = out.read_bytes()
    assert 0 < len(data) <= 8 * 1024 and not data.endswith(b"\n")          # the disk cut the last row
    whole = data.count(b"\n")
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)   # enlarge
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    assert "dropped a cut last line" in capsys.readouterr().err
    assert _seeds(out) == list(range(5))                                    # each case once, none lost
    assert out.read_bytes().count(b"\n") == 5 and out.read_bytes()[: len(data) - 1].count(b"\n") == whole


@pytest.mark.parametrize("tail", [b"\xef\xbb\xbf", json.dumps(ROW).encode(), json.dumps(ROW).encode()[:30]])
def test_appending_after_a_bom_a_missing_newline_or_a_cut_line_never_glues_rows(tmp_path, tail):
    f = tmp_path / "r.jsonl"
    f.write_bytes(tail)
    safeio.repair_tail(f)
    safeio.append_rows(f, [ROW])
    lines = f.read_bytes().split(b"\n")
    expected = 2 if tail.endswith(b"}") else 1                              # a whole row is kept, a cut one dropped
    assert lines[-1] == b"" and len(lines) == expected + 1
    assert all(json.loads(line) == ROW for line in lines[:-1])


def test_two_runs_started_together_on_one_out_one_runs_the_other_refuses_with_one_line(tmp_path):
    suite, out = _suite(tmp_path, 4), tmp_path / "o.jsonl"
    argv = [sys.executable, "-m", "ist_bench.cli", "run", str(suite), "--out", str(out), "--jobs", "1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "exists" in err or "being written by another ist-bench run" in err
    assert _seeds(out) == [0, 1, 2, 3]                                      # every case once, not twice


def test_a_resume_while_a_run_holds_the_file_refuses_with_one_line(tmp_path, capsys):
    suite, out = _suite(tmp_path, 2), tmp_path / "o.jsonl"
    with safeio.ResultsLock(out, create=True):                              # what a running `run` holds
        assert main(["run", str(suite), "--out", str(out), "--resume"]) == 2
        assert main(["run", str(suite), "--out", str(out), "--append"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("being written by another ist-bench run" in line for line in err)


def test_a_symlink_planted_at_the_temp_name_is_never_followed(tmp_path, monkeypatch):
    victim, target = tmp_path / "victim", tmp_path / "report.md"
    victim.write_text("precious\n")
    # the old writer's predictable name, and the first name mkstemp will try, both point at the victim
    for name in (f".report.md.tmp-{os.getpid()}", ".report.md.planted.tmp"):
        (tmp_path / name).symlink_to(victim)
    names = iter(["planted", "fresh01", "fresh02"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    safeio.write_atomic(target, "new\n")
    assert victim.read_text() == "precious\n" and target.read_text() == "new\n"
    assert not target.is_symlink() and (tmp_path / ".report.md.planted.tmp").is_symlink()


def test_a_device_node_a_fifo_and_a_symlink_are_refused_never_replaced_or_blocked_on(tmp_path, capsys):
    """A symlink too, dangling or to a regular file: no file is written through a link."""
    dev, fifo, dangling, link = tmp_path / "null", tmp_path / "fifo", tmp_path / "dangling", tmp_path / "link.jsonl"
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    link.symlink_to(victim)
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    os.mkfifo(fifo)
    dangling.symlink_to(tmp_path / "nowhere" / "x.jsonl")
    for target, what in ((dev, "a character device"), (fifo, "a FIFO"), (dangling, "it is a symlink"),
                         (link, "it is a symlink")):
        done = []
        for write in (safeio.check_writable, lambda p: safeio.write_atomic(p, "x"), lambda p: safeio.append_rows(p, [ROW])):
            t = threading.Thread(target=lambda w=write, p=target, d=done: d.append(_refusal(w, p)), daemon=True)
            t.start()
            t.join(10)
            assert not t.is_alive(), f"blocked on {target}"
        assert all(what in msg for msg in done), done
    assert stat.S_ISCHR(os.lstat(dev).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)   # still what they were
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "nowhere").exists()
    # and from the command line: one line, exit 2, before any work
    assert main(["validate", str(_rows(tmp_path)), "--md", str(dev)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a character device, not a regular file" in err


def _refusal(write, path) -> str:
    try:
        write(path)
    except UsageError as e:
        return str(e)
    return "written"


def _rows(folder: Path) -> Path:
    f = folder / "rows.jsonl"
    f.write_text(json.dumps(ROW) + "\n")
    return f


def test_names_from_inputs_never_leave_their_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = _suite(tmp_path, 1, name="../escaped")
    assert main(["run", str(suite)]) == 2
    assert "suite name '../escaped' is not a plain file name" in capsys.readouterr().err
    (tmp_path / "base").mkdir()
    assert main(["baseline", "update", str(_rows(tmp_path)), "--name", "../x", "--dir", "base"]) == 2
    assert "baseline name '../x' is not a plain file name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["../escaped.yaml".replace("/", "_"), "base", "rows.jsonl"]
    assert not (tmp_path.parent / "escaped.jsonl").exists() and list((tmp_path / "base").iterdir()) == []


def test_plots_are_written_atomically_through_safeio(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ist_bench.report import plots
    calls = []
    real = safeio.write_atomic
    monkeypatch.setattr(safeio, "write_atomic", lambda p, d: (calls.append(p), real(p, d)))
    fig = plt.figure()
    plots._save(fig, tmp_path / "f.png")
    assert calls == [tmp_path / "f.png"] and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


# --- bounded work ------------------------------------------------------------------------------------------

BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' +
        "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)))
SHADOW = "".join(f"user{i}:$6$saltsalt$c2VjcmV0aGFzaA{i}:20228:0:99999:7:::\n" for i in range(5))


@pytest.mark.parametrize("content,expected", [
    (BOMB.encode(), "aliases expand to more than 100,000 values"),       # ~400 bytes -> 9^9 strings printed
    (b"[" * 20000 + b"]" * 20000, "nests deeper than 32 levels"),
    ("name: x\n".encode("utf-16"), "is UTF-16/32 text"),
    (b"name: caf\xe9\n", "is not UTF-8"),
    (b"a: &a [*a]\n", "refer to themselves"),
    (b"x" * (2 << 20), "the limit is 1,048,576"),
    (SHADOW.encode(), "is not a suite file: the key at line 1 is not a name"),
])
def test_hostile_suite_files_are_one_line_before_any_worker_starts_and_never_echoed(tmp_path, capsys, monkeypatch,
                                                                                   content, expected):
    from ist_bench.runner import isolate
    monkeypatch.setattr(isolate, "Worker", lambda: pytest.fail("a worker started"))
    f = tmp_path / "s.yaml"
    f.write_bytes(content)
    start = time.monotonic()
    assert main(["run", str(f), "--jobs", "8"]) == 2
    out, err = capsys.readouterr()
    assert time.monotonic() - start < 5 and err.count("\n") == 1 and expected in err, err
    assert not any(line and line in out + err for line in SHADOW.splitlines())
    assert "lol" not in err


def test_jobs_are_capped_by_cores_and_cases_and_a_missing_suite_starts_no_worker(tmp_path, monkeypatch, capsys):
    from ist_bench.runner import isolate
    started = []

    class Counted(isolate.Worker):
        def __init__(self):
            started.append(1)
            super().__init__()
    monkeypatch.setattr(isolate, "Worker", Counted)
    assert main(["run", str(tmp_path / "missing.yaml"), "--jobs", "8"]) == 2
    assert "suite file not found" in capsys.readouterr().err and started == []
    suite, out = _suite(tmp_path, 2), tmp_path / "o.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--jobs", "8"]) == 0
    assert len(started) <= min(2, len(os.sched_getaffinity(0))) and _seeds(out) == [0, 1]
    assert "--jobs 8 capped at" in " ".join(capsys.readouterr().out.split())


FAKE_WORKER = """
import json, os, sys, time
time.sleep(3)                                    # a slow start: imports on a loaded machine
for line in sys.stdin:
    job = json.loads(line)
    open(job["result"][:-5] + ".start", "w").close()
    if job.get("fault") == "hang":
        time.sleep(60)
    with open(job["result"] + ".part", "w") as f:
        json.dump({"case": job["case"], "status": "ok", "memory": {"summary": {"run_peak": 1}, "steps": []}}, f)
    os.replace(job["result"] + ".part", job["result"])
"""


def test_a_timeout_starts_with_the_case_not_with_the_replacement_workers_imports(tmp_path, monkeypatch):
    """Workers that take 3 s to start, a 1 s timeout: a quick case is ok, a hanging one times out ~1 s after
    it started, and the next worker's slow start does not count against its case."""
    from ist_bench.runner import isolate
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    real = subprocess.Popen
    monkeypatch.setattr(isolate.subprocess, "Popen", lambda argv, **kw: real([sys.executable, str(script)], **kw))
    jobs = [{"kind": "memory", "case": {"seed": 0, "backend": "sim"}, "fault": "hang"},
            {"kind": "memory", "case": {"seed": 1, "backend": "sim"}}]
    start = time.monotonic()
    rows = list(isolate.run_isolated(jobs, timeout_s=1.0))
    status = {r["case"]["seed"]: r["status"] for r in rows}
    assert status == {0: "timeout", 1: "ok"}
    assert rows[0]["error"] == "no result within 1 s; killed" and time.monotonic() - start > 6   # two slow starts


def _wait_rows(out: Path, n: int, proc, limit: float = 240) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} row(s) in {out}: {proc.poll()}")


def test_sighup_is_an_interrupt_exit_130_no_worker_no_temp_folder_left(tmp_path):
    suite, out, tmp = _suite(tmp_path, 6), tmp_path / "o.jsonl", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ist_bench.cli", "run", str(suite), "--out", str(out), "--jobs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    _wait_rows(out, 1, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Resume with:" in err
    time.sleep(0.5)
    assert list(tmp.iterdir()) == []


def test_a_sigkilled_runs_temp_folder_is_collected_and_its_finished_row_recovered(tmp_path, monkeypatch, capsys):
    suite, out, tmp = _suite(tmp_path, 4), tmp_path / "o.jsonl", tmp_path / "tmp"
    tmp.mkdir()
    # case 1 is slow: the parent is SIGKILLed while its worker runs it; the orphaned worker finishes it
    suite.write_text(suite.read_text().replace('{"seed": 1}', '{"seed": 1, "steps": 20, "seq_len": 256}'))
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "ist_bench.cli", "run", str(suite), "--out", str(out), "--jobs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_rows(out, 1, proc)
    proc.kill()
    proc.wait()
    left = [d for d in tmp.iterdir() if d.name.startswith("ist-bench-")]
    assert left                                                           # what SIGKILL leaves behind
    deadline = time.time() + 180                                          # the orphaned worker finishes its case
    while time.time() < deadline and not any(f.name[0].isdigit() and f.suffix == ".json" for d in left
                                             for f in d.iterdir()):
        time.sleep(0.2)
    before = out.read_bytes().count(b"\n")
    recovered = sum(1 for d in left for f in d.iterdir() if f.name[0].isdigit() and f.suffix == ".json")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    deadline = time.time() + 60                                           # until the worker has exited
    while time.time() < deadline and any(_worker_alive(d) for d in left):
        time.sleep(0.2)
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    assert recovered == 1 and "recovered 1 row(s)" in capsys.readouterr().err   # case 1, finished after the kill
    assert _seeds(out) == [0, 1, 2, 3] and before + recovered <= 4      # each case once: recovered, not re-run
    assert not any(d.exists() for d in left)


def _worker_alive(d: Path) -> bool:
    from ist_bench.runner.isolate import _alive
    return d.exists() and any(_alive(int(f.name[4:])) for f in d.iterdir() if f.name.startswith("pid-"))


# --- a hostile terminal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"COLUMNS": "0"}, {"COLUMNS": "junk"}])
def test_an_ascii_terminal_or_a_zero_width_still_prints_the_table(env):
    proc = _cli("models", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "tiny-llama" in proc.stdout and "llama-7b" in proc.stdout


# --- the property: no row lost or duplicated ---------------------------------------------------------------

N_CASES = 5
ACTIONS = st.lists(st.tuples(st.sampled_from(["kill", "sigkill", "full", "concurrent", "done"]),
                             st.integers(0, N_CASES)), min_size=1, max_size=4)


class _Killed(BaseException):
    """The parent process dying at once (SIGKILL): nothing after this point in it runs."""


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@settings(max_examples=int(os.environ.get("IST_BENCH_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_no_row_is_lost_or_duplicated_after_any_sequence_of_faults(tmp_path, actions):
    """Runs with fast fake workers (the CLI, the lock, the repair, the leftover collection and the appends are
    the real ones); each run meets one fault after k rows, then a clean --resume finishes."""
    with pytest.MonkeyPatch.context() as mp:
        _fault_sequence(mp, Path(tempfile.mkdtemp(dir=tmp_path)), actions)


def _fault_sequence(mp, tmp: Path, actions) -> None:
    from ist_bench.runner import isolate
    suite, out = _suite(tmp, N_CASES), tmp / "o.jsonl"
    (tmp / "t").mkdir()
    mp.setattr(tempfile, "tempdir", str(tmp / "t"))
    disk = {"full": False}
    real_write = safeio._write_all

    def write(fd, data):
        if disk["full"]:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)
    mp.setattr(safeio, "_write_all", write)
    mp.setattr(isolate, "Worker", _FakeWorker)
    plan: list = []

    def fake_run(todo, *, out=None, **kw):
        action, k = plan.pop(0) if plan else ("done", 0)
        for i, job in enumerate(todo):
            if i == k:
                if action == "kill":
                    raise KeyboardInterrupt
                if action == "full":
                    disk["full"] = True
                if action == "concurrent":
                    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 2
                if action == "sigkill":                 # the worker had finished job i; the parent dies
                    d = Path(tempfile.mkdtemp(prefix=f"ist-bench-{_dead_pid()}-", dir=tmp / "t"))
                    (d / "owner.json").write_text(json.dumps({"out": os.path.realpath(out)}))
                    (d / "1.json").write_text(json.dumps(_row(job)))
                    raise _Killed
            yield _row(job)
    mp.setattr(isolate, "run_isolated", fake_run)
    first = True
    for step in actions:
        plan[:] = [step]
        with contextlib.suppress(_Killed):
            code = main(["run", str(suite), "--out", str(out), "--jobs", "1"] + ([] if first else ["--resume"]))
            assert code in (0, 2, 130)
        disk["full"] = False                            # more space
        first = first and not out.exists()
    plan[:] = []
    assert main(["run", str(suite), "--out", str(out), "--jobs", "1"] + ([] if first else ["--resume"])) == 0
    assert _seeds(out) == list(range(N_CASES))
    assert out.read_bytes().endswith(b"\n") and list((tmp / "t").iterdir()) == []


def _row(job: dict) -> dict:
    return {"schema": 1, "kind": "memory", "case": job["case"], "backend": "sim", "status": "ok",
            "memory": {"summary": {"run_peak": 1}, "steps": []}}


class _FakeWorker:
    def close(self):
        pass
