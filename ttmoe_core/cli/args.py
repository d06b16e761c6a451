"""What every command shares: the usage error, the one-line-error parser, argument types."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..files.names import NAME_RULE, is_valid_name

EXIT_USAGE = 2
EXIT_BUG = 70                  # sysexits' EX_SOFTWARE: an error no check foresaw (a bug)
DEBUG_ENV = "TTMOE_DEBUG"      # set to 1 for the traceback of such an error


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it names one already or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if "default" in (action.help or "") or default is None or default is False or default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and raise UsageError; help shows every default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


MAX_SEED = 2**63 - 1           # torch.Generator.manual_seed takes a signed 64-bit integer
MAX_BATCH = 65536              # rows per training batch


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {value:,}")
        return value
    parse.__name__ = "integer"        # argparse names the type in its messages
    return parse


positive_int = int_in(1)
seed_arg = int_in(0, MAX_SEED)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def fraction_arg(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {value}")
    return value


def name_arg(text: str) -> str:
    """A name (of an expert): ``names.NAME_RULE``."""
    if not is_valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid name ({NAME_RULE})")
    return text


def device_arg(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    if text == "auto":
        return text
    import torch  # heavy: kept out of the parser

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N, mps "
                                         "or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU (use cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has "
                                         f"{torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    return text


def shape_arg(text: str) -> tuple[str, list[int]]:
    """``target=16,8,4,4`` -> ("target", [16, 8, 4, 4])."""
    from ..tt import parse_shape  # heavy: imports torch; kept out of the parser

    target, sep, dims = text.partition("=")
    try:
        shape = parse_shape(dims)
        if not sep or not target or not shape:
            raise ValueError
        return target.strip(), shape
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write TARGET=d1,d2,... (e.g. q_proj=16,8,4,4,4,4,8,16)") from None


def task_lr_arg(text: str) -> tuple[str, float]:
    """``sst2=3e-3`` -> ("sst2", 0.003): one task's learning rate, > 0 and finite."""
    task, sep, value = text.partition("=")
    try:
        if not sep or not task.strip():
            raise ValueError
        lr = float(value)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write TASK=LR with LR > 0 (e.g. sst2=3e-3)") from None
    return task.strip(), lr


def names_list(what: str):
    """An argparse type: ``"a,b"`` -> ["a", "b"], at least one ``what``."""
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        return names
    return parse


targets_arg = names_list("target module name")


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


def model_arg(text: str) -> str:
    """A base model: a name or hub id, or a path (``/``, ``./``, ``../``, ``~``) that exists."""
    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"no model folder {text}")
    return text


def dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="compute precision of the base model (autocast; adapters and heads "
                             "stay float32); bfloat16/float16 are for GPUs, bfloat16 works on CPU")


def pool_dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool-dtype", choices=["float32", "float16", "int8"], default="float32",
                        help="precision the experts' cores are kept in: float16 halves a large "
                             "pack's memory, int8 (one scale per TT core) about 28%% with the heads "
                             "(answers agree, bench/RESULTS.md)")


def no_detector_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-detector", action="store_true",
                        help="leave the pack's out-of-pool detector out: no in_pool or pool_score "
                             "(null), abstaining does nothing; one row costs ~8%% less")


def common_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=model_arg, default=None,
                        help="base model: all-minilm-l6-v2 (embedded default), a folder, or a hub id")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N, mps or auto (default)")
    dtype_flag(parser)
    parser.add_argument("--data-dir", default=None,
                        help="task data folder (default: $TTMOE_DATA_DIR, ../shared/datasets, "
                             "assets/samples); 'hub' for the Hugging Face hub")
