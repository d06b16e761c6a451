"""``push DIR REPO_ID``: publish an expert or a pack folder to the Hugging Face Hub
(``huggingface_hub.upload_folder``), with its model card; the token is the hub's own (``HF_TOKEN``
or ``huggingface-cli login``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import TTMoEError
from .args import UsageError

KINDS = {"adapter_config.json": "expert", "pack.json": "pack"}   # marker file -> what a folder is


def cmd_push(args: argparse.Namespace) -> int:
    # heavy: imports torch; kept out of the parser
    from huggingface_hub import HfApi

    # heavy: imports torch; kept out of the parser
    from .. import store

    folder = Path(args.dir)
    kind = next((k for marker, k in KINDS.items() if (folder / marker).is_file()), None)
    if kind is None:
        raise UsageError(f"{folder} is neither an expert folder nor a pack (no "
                         f"{' or '.join(KINDS)})")
    try:
        if kind == "expert":
            store.load_expert(folder)
            if not (folder / store.CARD_FILE).exists():
                config = json.loads((folder / store.CONFIG_FILE).read_text())
                store.expert_card(config).save(folder / store.CARD_FILE)
        else:
            store.load_pack(folder)
            if not (folder / store.CARD_FILE).exists():
                store.update_pack(folder, lambda tmp, names: None)   # writes the card
    except TTMoEError as exc:
        raise UsageError(f"{folder} cannot be pushed: {exc}") from None
    api = HfApi()
    try:
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=args.repo_id,
                                   commit_message=args.message or f"ttmoe push: {kind} {folder.name}")
    except Exception as exc:  # noqa: BLE001 -- network, token or permission: one line
        raise UsageError(f"push to {args.repo_id} failed: {type(exc).__name__}: {exc}") from None
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{args.repo_id}"
    print(json.dumps({"repo_id": args.repo_id, "kind": kind, "url": str(url)}) if args.json else url)
    return 0


def add_parsers(sub) -> None:
    """Register ``push``."""
    p = sub.add_parser("push", help="publish an expert or a pack folder to the Hugging Face Hub")
    p.add_argument("dir", help="expert or pack folder")
    p.add_argument("repo_id", help="hub repo id, owner/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", default=None,
                   help="commit message (default: 'ttmoe push: <kind> <folder name>')")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_push)
