"""Write the small sample data sets under assets/samples/ from a folder in the hub layout.

Usage: python scripts/make_samples.py [--src /work/shared/datasets] [--out assets/samples] [--seed 0]

Only train/validation files are read (never a test split). Rows are drawn at random (seeded)
and kept in their original order with their original columns, so the output has the same
layout as the source and ``ttmoe_core.tasks.load_task`` applies the same split rules to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]

# task -> ((source split, rows), ...); the output file is "<source split>.parquet"
SAMPLES: dict[str, tuple[tuple[str, int], ...]] = {
    "mnli": (("validation_matched", 300), ("validation_mismatched", 100)),
    "cola": (("train", 300), ("validation", 100)),
    "rte": (("train", 300), ("validation", 100)),
    "sst2": (("train", 300), ("validation", 100)),
    "qnli": (("validation", 400),),
    "qqp": (("validation", 400),),
    "mrpc": (("train", 300), ("validation", 100)),
}


def read_split(folder: Path, split: str) -> pd.DataFrame:
    """All shards of ``<split>.parquet`` / ``<split>-*-of-*.parquet`` in ``folder``."""
    files = sorted({*folder.glob(f"{split}.parquet"), *folder.glob(f"{split}-*-of-*.parquet")})
    if not files:
        raise SystemExit(f"no {split} file in {folder}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` random rows (seeded), in their original order."""
    return frame.sample(n=min(rows, len(frame)), random_state=seed).sort_index().reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "assets" / "samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for task, splits in SAMPLES.items():
        out_dir = args.out / task
        out_dir.mkdir(parents=True, exist_ok=True)
        for split, rows in splits:
            part = sample(read_split(args.src / task, split), rows, args.seed)
            part.to_parquet(out_dir / f"{split}.parquet", index=False)
            print(f"{task}/{split}.parquet: {len(part)} rows")


if __name__ == "__main__":
    main()
