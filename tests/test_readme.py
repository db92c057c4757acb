"""README's commands are the interface: CI runs the first two verbatim, and every command in a
```bash block runs as written in a fresh copy of the repository without changing a tracked file
(the committed reports rebuild byte for byte)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what must never run here, and why (a command with a "GPU:" comment needs one)
NOT_HERE = {"pip install": "installs packages: .ci/run does it, on a fresh environment",
            "python -m pytest": "the test suite itself"}
FAST = ("ist-bench report results/gpu/", "ist-bench validate", "ist-bench compare", "ist-bench baseline path",
        "ist-bench models", "ist-bench methods")


def readme_commands() -> list[tuple[str, str | None]]:
    """(command, why it is not run here or None) for every command of README's ```bash blocks;
    `a && b` is two commands."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command, _, comment = line.partition("  #")
            command = command.strip()
            if not command or command.startswith("#"):
                continue
            for part in command.split(" && "):
                why = next((w for k, w in NOT_HERE.items() if part.startswith(k)), None)
                if why is None and comment.strip().startswith("GPU:"):
                    why = "needs a GPU"
                out.append((part, why))
    return out


def test_ci_runs_the_readme_commands_verbatim():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0].startswith("pip install") and "ist-bench memory" in blocks[0]
    assert blocks[1] == "python -m pytest"
    for command in blocks:
        assert command in ci


def test_every_readme_command_is_one_we_can_run_or_says_why_not():
    commands = readme_commands()
    assert len(commands) >= 15
    for command, why in commands:
        assert command.startswith("ist-bench ") or why, command
        if why is None:   # every input a command names is in the repository
            args = shlex.split(command)[2:]
            for arg in [a for i, a in enumerate(args) if i == 0 or args[i - 1] != "--out"]:   # inputs, not outputs
                if re.fullmatch(r"(results|suites|reports)/[\w./-]+", arg) and not arg.startswith(("results/new/",
                                                                                                    "reports/new/")):
                    assert (ROOT / arg).exists(), f"README names {arg}, which does not exist"


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The tracked files of this checkout (as they are now) in a new git repository."""
    dest = tmp_path_factory.mktemp("clone") / "ist-bench"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=dest, check=True)
    return dest


def _run_in(copy: Path, commands: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "100"}
    for command in commands:
        argv = [sys.executable, "-m", "ist_bench.cli", *shlex.split(command)[1:]]
        proc = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=copy,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"README's commands changed tracked files:\n{status}"


def test_readme_rebuilds_the_committed_reports_byte_for_byte(fresh_copy):
    _run_in(fresh_copy, [c for c, why in readme_commands() if why is None and c.startswith(FAST)])


@pytest.mark.slow
def test_every_other_readme_command_runs_on_a_fresh_copy(fresh_copy):
    _run_in(fresh_copy, [c for c, why in readme_commands() if why is None and not c.startswith(FAST)])


@pytest.mark.parametrize("command,why", [c for c in readme_commands() if c[1]], ids=lambda x: str(x)[:40])
def test_readme_commands_not_run_here_say_why(command, why):
    pytest.skip(f"{command!r}: {why}")


def test_readmes_validation_figures_are_what_its_commands_print():
    """Each `ist-bench validate ...   # N cells: within X%` line of README prints N cells measured on both
    backends and X% as its largest gap (a claim in README comes with the command that reproduces it)."""
    claims = [(c, re.search(r"#\s*(\d+) cells: within ([\d.]+)%", line))
              for line in (ROOT / "README.md").read_text().splitlines()
              if (c := line.partition("  #")[0].strip()).startswith("ist-bench validate") and "  #" in line]
    claims = [(c, m) for c, m in claims if m]
    assert len(claims) >= 4
    for command, m in claims:
        out = subprocess.run([sys.executable, "-m", "ist_bench.cli", *shlex.split(command)[1:]], cwd=ROOT,
                             capture_output=True, text=True, timeout=300).stdout
        text = " ".join(out.split())
        assert f"{m[1]} measured on both; largest |gap| of sim's estimated peak to max_memory_allocated: {m[2]}%" \
            in text, (command, text[:400])


def test_readmes_sweep_figures_are_the_committed_sweeps():
    """README's "N of M run both ... K run LoRA only" is what results/sweep/models.jsonl holds."""
    import json

    rows = [json.loads(line) for line in (ROOT / "results" / "sweep" / "models.jsonl").read_text().splitlines()[1:]]
    m = re.search(r"(\d+) of (\d+) run both, (\d+) run LoRA only", " ".join((ROOT / "README.md").read_text().split()))
    assert m, "README states the sweep's figures"
    ok = sum(r["status"] == "ok" for r in rows)
    partial = sum(r["status"] == "partial" for r in rows)
    assert (int(m[1]), int(m[2]), int(m[3])) == (ok, len(rows), partial)
