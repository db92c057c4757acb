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


MAX_JSON_BYTES = {"config file": 4 << 20, "data file": 512 << 20}   # a config.json is a few KB; Alpaca 22 MB


def read_json(path, what: str):
    """Parse a JSON file the user gave us, bounded (size; nesting and numbers Python can read); a missing,
    non-regular, too large or malformed one is a UsageError naming it."""
    import json

    from ist_bench.safeio import decode_text, read_bounded

    text = decode_text(read_bounded(path, what, MAX_JSON_BYTES.get(what, 64 << 20)), path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"malformed {what} {path}: {e}") from None
    except RecursionError:
        raise UsageError(f"malformed {what} {path}: it nests too deep") from None
    except ValueError as e:   # an integer of thousands of digits
        raise UsageError(f"malformed {what} {path}: a value cannot be read ({str(e).split('(')[0].strip()[:80]})") from None
