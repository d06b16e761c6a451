"""``models``: list the base models that can be used, and pull registered ones into the cache."""

from __future__ import annotations

import argparse
import json
import sys

from ..base import sources as models
from .args import UsageError


def cmd_models_list(args: argparse.Namespace) -> int:
    rows = models.list_models()
    if args.json:
        print(json.dumps({"cache": str(models.cache_dir()), "models": rows}))
        return 0
    for row in rows:
        state = "ready" if row["ready"] else f"not pulled (python -m ttmoe_core models pull {row['name']})"
        print(f"{row['name']:<18} {state}\n{'':<18} {row['description']}\n{'':<18} {row['location']}")
    print("Also accepted wherever --model is: a local model folder, a local .gguf file, a hub id.")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    try:
        folder = models.pull(args.name, progress=lambda message: print(message, file=sys.stderr, flush=True))
    except models.ModelError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({"model": args.name, "folder": str(folder)}) if args.json else folder)
    return 0


def add_parsers(sub) -> None:
    """Register ``models list`` and ``models pull NAME``."""
    p = sub.add_parser("models", help="base models: list what is available, pull a registered one")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p),
                               help="list or pull")
    actions.required = True
    q = actions.add_parser("list", help="registered models and whether they are ready")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=cmd_models_list)
    q = actions.add_parser("pull", help="download and convert a registered model (idempotent)")
    q.add_argument("name", help=f"one of {', '.join(models.REGISTRY)}")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=cmd_models_pull)
