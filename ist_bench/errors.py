"""Errors that the CLI turns into one line and exit code 2 (never a traceback)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an out-of-range value, a missing file."""


def choice_error(what: str, value: object, valid, listed_by: str | None = None) -> UsageError:
    """`unknown model 'llama-70b'; valid: gpt2-small, llama-7b, ...`; a list too long for one line names
    the closest choices and the command that lists them all (`listed_by`)."""
    valid = list(map(str, valid))
    text = ", ".join(valid)
    if len(text) > 160 and listed_by:
        import difflib
        close = difflib.get_close_matches(str(value), valid, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return UsageError(f"unknown {what} {value!r}; {hint}{len(valid)} valid, listed by `{listed_by}`")
    return UsageError(f"unknown {what} {value!r}; valid: {text}")


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
