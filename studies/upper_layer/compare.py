"""Upper-layer experts (``min_layer`` 2) against the shipped pack's experts, task by task.

    python -m studies.upper_layer.compare [--runs studies/upper_layer/runs] [--pack assets/demo]

Reads each finished run's JSON (``train-expert --json``; of several learning rates, the run with
the best TRAIN hold-out score) and the pack's validation entries (pack.json), prints a Markdown table (validation metric of each, the difference in points, steps
and CPU seconds of the upper-layer run) and the experts whose loss is at most ``--max-loss``
points: issue 32's rule for rebuilding the pack's experts (one seed each: the difference carries
that seed's noise, about ±0.5–1 point on SST-2 over seeds, reports/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def candidates(runs: Path, name: str) -> list[tuple[Path, dict]]:
    """The finished runs of an expert: ``<name>.json`` and ``<name>-lr<LR>.json``."""
    paths = [runs / f"{name}.json", *sorted(runs.glob(f"{name}-lr*.json"))]
    return [(path, json.loads(path.read_text())) for path in paths if path.exists()]


def compare(runs: Path, pack: Path, max_loss: float) -> tuple[list[dict], dict[str, Path]]:
    """One row per pack expert; the learning rate of each kept by its TRAIN hold-out score
    (never by validation); {expert: folder} of those within ``max_loss`` points."""
    shipped = json.loads((pack / "pack.json").read_text())["validation"]
    rows, keep = [], {}
    for name, entry in shipped.items():
        metric = entry["metric"]
        found = candidates(runs, name)
        if not found:
            rows.append({"task": name, "metric": metric, "full": entry["value"]})
            continue
        path, run = max(found, key=lambda c: c[1].get(f"holdout_{metric}", float("-inf")))
        upper = run[metric]
        diff = 100 * (upper - entry["value"])
        rows.append({"task": name, "metric": metric, "full": entry["value"], "upper": upper,
                     "points": diff, "steps": run["steps_run"], "best_step": run["best_step"],
                     "cpu_s": sum(r.get("train_cpu_seconds") or 0 for _, r in found),
                     "lrs": ", ".join(f"{p.stem.removeprefix(name).removeprefix('-lr') or 'pack'}"
                                      f" {r.get(f'holdout_{metric}', float('nan')):.3f}"
                                      for p, r in found),
                     "kept": path.stem})
        if diff >= -max_loss:
            keep[name] = path.with_suffix("")
    return rows, keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("studies/upper_layer/runs"))
    parser.add_argument("--pack", type=Path, default=Path("assets/demo"))
    parser.add_argument("--max-loss", type=float, default=0.5, help="points")
    args = parser.parse_args(argv)
    rows, keep = compare(args.runs, args.pack, args.max_loss)
    print("| task | metric | shipped (layers 0–5) | upper (layers 2–5) | points | steps (best) "
          "| runs: lr hold-out | CPU s (all runs) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "upper" not in r:
            print(f"| {r['task']} | {r['metric']} | {r['full']:.4f} | (not finished) | | | | |")
            continue
        print(f"| {r['task']} | {r['metric']} | {r['full']:.4f} | {r['upper']:.4f} | "
              f"{r['points']:+.2f} | {r['steps']} ({r['best_step']}) | {r['lrs']} | "
              f"{r['cpu_s']:.0f} |")
    print(f"\nwithin {args.max_loss} points (swap): "
          + (", ".join(f"{n} ({p})" for n, p in keep.items()) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
