"""Errors that the CLI turns into one line and exit code 2 (never a traceback)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: an unknown name, an out-of-range value, a missing file."""


def choice_error(what: str, value: object, valid) -> UsageError:
    """`unknown model 'llama-70b'; valid: gpt2-small, llama-7b, ...`"""
    return UsageError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")
