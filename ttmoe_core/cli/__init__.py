"""Command line: ``python -m ttmoe_core <command> ...``.

Usage errors (unknown task, missing folder, bad flag values, bad input files, an ``--out`` that
cannot be written, too little memory for the sizes asked) print one line ``error: ...`` on stderr
and exit with code 2; ``predict --input-file`` exits with 1 when some lines failed. An error no
check foresaw (a bug) also prints one line, exits with 70, and shows its traceback with
``TTMOE_DEBUG=1``. The library never imports this package.

May import: every engine package; nothing in the engine imports it (only ``__main__``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import one_line
from . import base_models, experts, mixture, push, report, routing, serve
from .args import DEBUG_ENV, EXIT_BUG, EXIT_USAGE, Parser, UsageError

__all__ = ["EXIT_BUG", "EXIT_USAGE", "Parser", "UsageError", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="ttmoe" if Path(sys.argv[0]).name == "ttmoe" else "python -m ttmoe_core",
                    description="TT-LoRA MoE Studio: train, store, count and serve TT-LoRA experts.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser,
                                help="one of these; COMMAND --help for its options")
    for module in (experts, mixture, routing, report, base_models, serve, push):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.func(args)
    except UsageError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- one line instead of a traceback, even for a bug
        if os.environ.get(DEBUG_ENV):
            raise
        if _out_of_memory(exc):
            print("error: not enough memory for the sizes asked (rank, hidden width, batch "
                  f"size, inputs): use smaller ones ({one_line(exc)[:200]})", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)[:500]} (a bug: run with "
              f"{DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_BUG


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's CPU allocator failing, or CUDA out of memory."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text))
