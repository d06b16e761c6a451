"""Put retrained experts into a pack, keeping its router and out-of-pool detector (issue 12).

A pack's router (and its pool and replay files) reads only the frozen base model's layers 0..k,
never an expert, so experts retrained on the same base model under the same names slot in
without retraining it. This script checks that (same names, same base-model fingerprint, one set
of targets for all), writes the pack anew in one step (a hard-linked copy of the pack with the
new expert folders; the old pack stays whole if anything fails), records each expert's
validation verdict (``quality.pack_entry``) and the build in pack.json, and loads the result.

    python scripts/swap_experts.py --pack assets/demo --parts /work/runs/demo-next.parts \
        --command "build-demo --targets query,key,value,dense --steps 4000 ..."

Then ``python -m ttmoe_core eval-moe --pack assets/demo --save`` re-measures the mixture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttmoe_core import store  # noqa: E402
from ttmoe_core.experts import quality
from ttmoe_core.files import safefs


def swap(pack: Path, parts: Path, command: str, only: list[str] | None = None) -> dict:
    """Swap the experts ``only`` (default: every expert of the pack) for those in ``parts``."""
    old = store.load_pack(pack)
    names = [e.name for e in old.experts]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SystemExit(f"the pack has no experts {unknown}")
    swapped = [n for n in names if only is None or n in only]
    new = {name: store.load_expert(parts / name) for name in swapped}
    fingerprint = old.manifest["base_model"]["fingerprint"]
    for name, expert in new.items():
        if expert.name != name:
            raise SystemExit(f"{parts / name} holds expert {expert.name!r}, not {name!r}")
        if expert.base.fingerprint != fingerprint:
            raise SystemExit(f"{name} was trained on another base model than the pack's")
    targets = {tuple(e.config.targets or ()) for e in [*new.values(), *old.experts]}
    if len(targets) != 1:
        raise SystemExit(f"the experts adapt different modules: {sorted(targets)}")
    with safefs.atomic_dir(pack, template=pack) as tmp:
        for name in swapped:
            folder = store.expert_folder(tmp, name)
            safefs.remove(folder)                       # the hard links, not the old files
            shutil.copytree(parts / name, folder)
        manifest = json.loads((tmp / "pack.json").read_text(encoding="utf-8"))
        manifest["build"] = {"command": command, "experts_from": str(parts),
                             "swapped": swapped,
                             "router": "kept: it reads only the frozen base model",
                             "lr": {name: e.config.lr for name, e in new.items()},
                             "previous": manifest.get("build")}
        manifest["validation"] = {**manifest.get("validation", {}),
                                  **{name: quality.pack_entry(e) for name, e in new.items()}}
        (tmp / "pack.json").unlink()                    # a hard link to the old manifest
        safefs.write_json(tmp / "pack.json", manifest)
        store.load_pack(tmp)                            # a pack that does not load is not published
    return manifest["validation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--parts", type=Path, required=True, help="folder of expert folders")
    parser.add_argument("--command", required=True, help="how the experts were trained")
    parser.add_argument("--only", default=None,
                        help="comma-separated experts to swap (default: all of the pack's)")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    for name, entry in swap(args.pack, args.parts, args.command, only).items():
        print(name, json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
