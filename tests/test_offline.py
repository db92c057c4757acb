"""ist-bench never touches the network, and the main command's stderr is empty.

Every Python process the commands start (the CLI, suite workers) loads a `sitecustomize` that adds an
audit hook (PEP 578) logging each attempt to reach another host: a connect that is not a Unix socket,
a name lookup. Where the test may create a network namespace (`unshare -n`, root on Linux), the
commands run in one with no network at all, so an attempt also fails fast instead of waiting on DNS.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HOOK = textwrap.dedent("""
    import os, socket, sys

    LOG = os.environ["IST_BENCH_NET_LOG"]

    def _hook(event, args):
        if event == "socket.connect":
            sock, address = args
            if sock.family == socket.AF_UNIX:
                return
            what = f"connect {address!r}"
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                       "socket.gethostbyaddr", "socket.sendto"):
            what = f"{event} {args!r}"
        else:
            return
        with open(LOG, "a") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv)[:120]}: {what}\\n")

    sys.addaudithook(_hook)
""")


def _namespace() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture
def offline_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}   # ist-bench's own defaults
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), IST_BENCH_NET_LOG=str(log))
    return env, log


def _run(argv, env, cwd) -> subprocess.CompletedProcess:
    exe = [*_namespace(), sys.executable, "-m", "ist_bench.cli", *argv]
    return subprocess.run(exe, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_commands_make_no_network_attempt_and_the_main_command_prints_nothing_on_stderr(offline_env, tmp_path):
    env, log = offline_env
    root = Path(__file__).resolve().parent.parent
    suite = tmp_path / "two.yaml"
    # one warm worker: the nf4 case comes after peft was imported with bitsandbytes hidden
    suite.write_text("name: two\ndefaults: {steps: 1, seq_len: 64, backend: sim, model: tiny-llama}\n"
                     "cases: [{method: series, select: ist}, {method: lora, quant: nf4}]\n")
    main = _run(["memory", "--model", "llama-7b", "--method", "lora"], env, root)   # README's main command
    assert main.returncode == 0 and main.stderr == "", main.stderr
    for argv in (["memory", "--model", "tiny-llama", "--quant", "nf4", "--steps", "1"],   # bitsandbytes imported
                 ["run", str(suite), "--out", str(tmp_path / "two.jsonl"), "--jobs", "1"],   # a worker process
                 ["memory", "--model", "missing.json"]):
        proc = _run(argv, env, root)
        assert proc.returncode in (0, 2), proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert not log.exists(), log.read_text()


def test_the_hook_sees_an_attempt(offline_env, tmp_path):
    """The detector works: a lookup in a process with the hook is logged (so an empty log means none)."""
    env, log = offline_env
    code = "import socket\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError:\n    pass\n"
    subprocess.run([*_namespace(), sys.executable, "-c", code], env=env, timeout=60, capture_output=True)
    assert "huggingface.co" in log.read_text()


def test_a_command_runs_with_the_hubs_offline_switches_set_and_a_users_choice_kept(monkeypatch):
    from ist_bench import process

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")   # a user's explicit choice
    process.go_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"
