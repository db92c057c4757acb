"""README's two commands are the interface: CI must run exactly those."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_commands_verbatim():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0].startswith("pip install") and "ist-bench memory" in blocks[0]
    assert blocks[1] == "python -m pytest"
    for command in blocks:
        assert command in ci
