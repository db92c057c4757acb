"""Errors that the CLI turns into one line and exit code 2 (never a traceback)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an out-of-range value, a missing file."""


def choice_error(what: str, value: object, valid) -> UsageError:
    """`unknown model 'llama-70b'; valid: gpt2-small, llama-7b, ...`"""
    return UsageError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def read_json(path, what: str):
    """Parse a JSON file the user gave us; a missing or malformed one is a UsageError."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"malformed {what} {path}: {e}") from None
