"""The command line: one module per command (its parser and its body), shared options in common.py.

A command is a module here with `add_parser(sub)` (which sets `func`) and its name in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ist_bench.commands.common import EPILOG, one_line, to_stdout
from ist_bench.errors import UsageError

COMMANDS = ("memory", "time", "run", "validate", "fit", "report", "compare", "baseline", "listing")

EXIT_CODES = ("exit codes: 0 done (every case ok or oom); 1 some cases failed, or `compare` found a regression; "
              "2 bad input (one line on stderr; --debug shows the traceback); 130 interrupted")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line naming it (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser. Light: it imports neither torch nor transformers nor peft (the case, the methods and the
    policies are light to import), so `--help`, `models` and a bad option answer at once."""
    from ist_bench import __version__

    parser = Parser(prog="ist-bench", description="Memory and throughput profiling for PEFT "
                    "and layer-sparse tuning (IST) of LLMs. Add --debug to any command for tracebacks.",
                    epilog=EPILOG + " " + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"ist-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"ist_bench.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ist_bench.process import entry

    with entry():   # offline; bitsandbytes hidden until a quantized case asks for it
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if to_stdout(args):
            from ist_bench.report.console import console
            console.stderr = True
            try:
                return args.func(args)
            finally:
                console.stderr = False
        return args.func(args)
    except UsageError as e:
        if debug:
            raise
        print(f"ist-bench: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a vanished or unwritable file: say which, keep what was written
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"ist-bench: error: {one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ist-bench: interrupted", file=sys.stderr)
        return 130
