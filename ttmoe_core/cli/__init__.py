"""Command line: ``python -m ttmoe_core <command> ...``.

Usage errors (unknown task, missing folder, bad flag values, bad input files) print one line
``error: ...`` on stderr and exit with code 2; no traceback. The library never imports this package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import experts, mixture, models, report
from .args import EXIT_USAGE, Parser, UsageError

__all__ = ["EXIT_USAGE", "Parser", "UsageError", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="python -m ttmoe_core",
                    description="TT-LoRA MoE Studio: train, store, count and serve TT-LoRA experts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (experts, mixture, report, models):
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
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
