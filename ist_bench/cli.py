"""`ist-bench`: the entry point (the commands live in ist_bench/commands/, one module each)."""

from __future__ import annotations

import sys

from ist_bench.commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
