"""What every command shares: the usage error, the one-line-error parser, argument types."""

from __future__ import annotations

import argparse

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and raise UsageError."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def shape_arg(text: str) -> tuple[str, list[int]]:
    """``target=16,8,4,4`` -> ("target", [16, 8, 4, 4])."""
    target, sep, dims = text.partition("=")
    try:
        if not sep or not target:
            raise ValueError
        return target.strip(), [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write TARGET=d1,d2,... (e.g. q_proj=16,8,4,4,4,4,8,16)") from None


def targets_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one target module name")
    return names


def int_list(text: str, minimum: int, example: str) -> list[int]:
    """``"1,4,16"`` -> [1, 4, 16]: at least one integer, each >= ``minimum``; ``example`` says
    what to write instead (e.g. "layer numbers like 2 or 0,1,2")."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give {example}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"{text!r}: give {example}, each >= {minimum}")
    return values


def parse_layers(text: str) -> list[int]:
    return int_list(text, 0, "layer numbers like 2 or 0,1,2")


def positive_int_list(text: str) -> list[int]:
    return int_list(text, 1, "integers separated by commas, like 1,4,16")


def common_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="base model: all-minilm-l6-v2 (embedded default), a folder, or a hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, or auto (default)")
    parser.add_argument("--data-dir", default=None,
                        help="task data folder (default: $TTMOE_DATA_DIR, ../shared/datasets, "
                             "assets/samples); 'hub' for the Hugging Face hub")
