"""Task data from disk or the hub, and users' own CSV/JSONL files, rendered by the registry.

Sources: a folder in the Hugging Face hub's Parquet layout
(``<data_dir>/<task>/<split>[-00000-of-00001].parquet``), the hub itself
(``data_dir="hub"``, needs the ``datasets`` package and network), or a user's CSV/JSONL file
(:func:`load_file`).

Splits: ``load_task(split="train" | "validation")``. Where a task has no train file (mnli,
qnli, qqp, scitail, cosmosqa), MNLI trains on validation_matched and evaluates on
validation_mismatched; the others use a fixed 80/20 split (seed 0) of their one file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..files.safefs import MAX_JSON_DEPTH, json_depth
from ..files.schema import MAX_LABELS
from .registry import TASKS, DataError, TaskData, TaskSpec, get_task, is_missing, render_frame

DATA_DIR_ENV = "TTMOE_DATA_DIR"
HUB = "hub"
SPLIT_SEED = 0
SPLIT_TRAIN_FRACTION = 0.8
LOGICAL_SPLITS = ("train", "validation")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]      # ttmoe_core/tasks/loading.py -> the repo


def default_data_dir() -> Path | None:
    """$TTMOE_DATA_DIR, else ../shared/datasets next to the repo, else assets/samples, else None.

    ``TTMOE_DATA_DIR=hub`` means "load from the hub": there is no local folder, so None.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return None if env == HUB else Path(env).expanduser()
    for candidate in (_repo_root().parent / "shared" / "datasets", _repo_root() / "assets" / "samples"):
        if candidate.is_dir():
            return candidate
    return None


def _split_files(folder: Path, split_name: str) -> list[Path]:
    """``<split>.parquet`` or its shards ``<split>-00000-of-0000N.parquet``."""
    return sorted({*folder.glob(f"{split_name}.parquet"), *folder.glob(f"{split_name}-*-of-*.parquet")})


def available_tasks(data_dir: str | Path | None = None) -> list[str]:
    """Registry tasks (registry order) that have a folder with Parquet files in ``data_dir``."""
    root = default_data_dir() if data_dir is None else Path(data_dir)
    if root is None or not root.is_dir():
        return []
    return [name for name in TASKS if any((root / name).glob("*.parquet"))]



def _no_data_hint() -> str:
    return (f"point at a folder in the hub layout (<dir>/<task>/<split>.parquet) with the "
            f"{DATA_DIR_ENV} environment variable or the data_dir argument, or use data_dir='hub'")


def _read_split(spec: TaskSpec, folder: Path, split_name: str) -> tuple[pd.DataFrame, str]:
    files = _split_files(folder, split_name)
    if not files:
        present = sorted(p.name for p in folder.glob("*.parquet"))
        raise DataError(
            f"{spec.name}: no file {folder / split_name}[-*-of-*].parquet (files there: {present or 'none'}); "
            + _no_data_hint())
    try:
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{spec.name}: cannot read {files[0]} ({type(exc).__name__}: {exc})") from exc
    return frame, ", ".join(str(f) for f in files)


def _fixed_split(n_rows: int, part: str) -> np.ndarray:
    """Row indices of the train or validation part of the fixed 80/20 split (seed 0)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_rows)
    n_train = int(round(SPLIT_TRAIN_FRACTION * n_rows))
    return np.sort(perm[:n_train] if part == "train" else perm[n_train:])


def _load_local(spec: TaskSpec, split: str, root: Path) -> TaskData:
    folder = root / spec.name
    if not folder.is_dir():
        raise DataError(f"{spec.name}: no folder {folder}; " + _no_data_hint())
    if spec.train_split is not None:
        split_name = spec.train_split if split == "train" else spec.eval_split
        frame, where = _read_split(spec, folder, split_name)
        if spec.train_split != "train":
            where += (f" ({spec.name} has no train file here: trains on {spec.train_split}, "
                      f"evaluates on {spec.eval_split})")
        return render_frame(spec, frame, split, where)
    frame, where = _read_split(spec, folder, spec.eval_split)
    part = "first part" if split == "train" else "second part"
    idx = _fixed_split(len(frame), split)
    where = (f"seeded {round(SPLIT_TRAIN_FRACTION * 100)}/{round((1 - SPLIT_TRAIN_FRACTION) * 100)} split "
             f"(seed {SPLIT_SEED}) of {where}: {part}, {len(idx)} of {len(frame)} rows "
             f"({spec.name} has no train file here)")
    return render_frame(spec, frame.iloc[idx].reset_index(drop=True), split, where)


def _load_hub(spec: TaskSpec, split: str) -> TaskData:
    """Load from the Hugging Face hub (every registry task has a train split there)."""
    hub_split = "train" if split == "train" else spec.eval_split
    try:
        import datasets  # lazy: optional dependency
    except ImportError as exc:
        raise DataError("loading from the hub needs the `datasets` package (pip install datasets); "
                        f"or set {DATA_DIR_ENV} to a local folder") from exc
    try:
        dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=hub_split)
    except Exception as exc:  # network, auth, unknown config: all reported the same way
        raise DataError(
            f"{spec.name}: could not load {spec.hub_id}/{spec.hub_config or ''} split {hub_split} from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}); without network, set {DATA_DIR_ENV} "
            "or data_dir to a local folder") from exc
    where = f"hub {spec.hub_id}" + (f"/{spec.hub_config}" if spec.hub_config else "") + f" split {hub_split}"
    return render_frame(spec, dataset.to_pandas(), split, where)


def load_task(name: str, split: str = "train", data_dir: str | Path | None = None,
              limit: int | None = None, seed: int = 0) -> TaskData:
    """Rendered examples of ``name`` for the logical ``split`` ("train" | "validation").

    ``data_dir``: a folder in the hub layout, ``"hub"``, or None for :func:`default_data_dir`.
    ``limit``: a seeded (``seed``) random subset of that many rows, kept in file order.
    """
    spec = get_task(name)
    if split not in LOGICAL_SPLITS:
        raise DataError(f"split must be one of {LOGICAL_SPLITS}, got {split!r}")
    if data_dir is None and os.environ.get(DATA_DIR_ENV) == HUB:
        data_dir = HUB
    if isinstance(data_dir, str) and data_dir == HUB:
        data = _load_hub(spec, split)
    else:
        root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
        if root is None:
            raise DataError(f"{spec.name}: no data folder found; " + _no_data_hint())
        data = _load_local(spec, split, root)
    return data if limit is None else data.subset(limit, seed=seed)


# --------------------------------------------------------------------------- user files


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (bad byte 0x{raw[exc.start]:02x} on line {line}); "
                        "save it as UTF-8 and try again") from None


def _read_jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        if json_depth(text) > MAX_JSON_DEPTH:
            raise DataError(f"{path}: nests more than {MAX_JSON_DEPTH} levels deep")
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON on line {exc.lineno}: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:     # a 5,000-digit number
            raise DataError(f"{path}: not JSON we can read ({type(exc).__name__})") from None
        rows = list(enumerate(records, start=1))
        where = "item"
    else:
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if json_depth(line) > MAX_JSON_DEPTH:
                raise DataError(f"{path}: line {line_no} nests more than {MAX_JSON_DEPTH} levels deep")
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no} is not valid JSON ({exc.msg}); "
                                "each line must be one object like {\"text\": ..., \"label\": ...}") from None
            except (ValueError, RecursionError) as exc:
                raise DataError(f"{path}: line {line_no} is not JSON we can read "
                                f"({type(exc).__name__})") from None
        where = "line"
    for pos, record in rows:
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where} {pos} is not a JSON object")
    return rows


def _read_csv(text: str, path: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if reader.fieldnames is None:
        return []
    fieldnames = [name.strip() for name in reader.fieldnames]
    reader.fieldnames = fieldnames
    return [(reader.line_num, {k: v for k, v in record.items() if k is not None})
            for record in reader if any((v or "").strip() for v in record.values() if isinstance(v, str))]


def _file_label(value: Any, names: tuple[str, ...], regression: bool, where: str, path: Path) -> int | float:
    if regression:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {where}: label {value!r} is not a number") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{path}: {where}: label {value!r} must be a class index or a label name")
    if isinstance(value, str):
        by_name = {n.lower(): i for i, n in enumerate(names)}
        key = value.strip().lower()
        if key in by_name:
            return by_name[key]
        if not key.lstrip("-").isdigit():
            raise DataError(f"{path}: {where}: unknown label name {value!r}; known names: {list(names)}")
        value = int(key)
    if not 0 <= value < len(names):
        raise DataError(f"{path}: {where}: label index {value} outside 0..{len(names) - 1} "
                        f"(labels: {list(names)})")
    return value


def load_file(path: str | Path, task: str | None = None, label_names: Sequence[str] | None = None,
              allow_unlabeled: bool = False) -> TaskData:
    """Examples from a CSV/TSV or JSONL (or JSON array) file with ``text``, [``text_pair``], ``label``.

    Labels are class indices or names (case-insensitive) from ``label_names``, else the task's
    label names; with neither, names are the sorted distinct strings (or "0".."k" for indices).
    A regression task (stsb) takes float labels. ``allow_unlabeled``: no ``label`` column -> labels [].
    """
    path = Path(path)
    spec = get_task(task) if task is not None else None
    if not path.is_file():
        raise DataError(f"no file {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv, .tsv, .jsonl or .json")
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a `text` column and a `label` column")
    is_csv = suffix in (".csv", ".tsv")
    rows = _read_csv(text, path) if is_csv else _read_jsonl(text, path)
    if not rows:
        raise DataError(f"{path} has no data rows")
    where_word = "data row ending on line" if is_csv else "line"
    columns = set().union(*(record.keys() for _, record in rows))
    if "text" not in columns:
        raise DataError(f"{path}: no `text` column (found: {sorted(columns)}); rename the input column to `text`")
    has_label = "label" in columns
    if not has_label and not allow_unlabeled:
        raise DataError(f"{path}: no `label` column (found: {sorted(columns)}); add one, or pass allow_unlabeled=True")
    has_pair = "text_pair" in columns

    texts: list[str] = []
    pairs: list[str] = []
    raw_labels: list[tuple[str, Any]] = []
    for pos, record in rows:
        where = f"{where_word} {pos}"
        value = record.get("text")
        if is_missing(value) or not str(value).strip():
            raise DataError(f"{path}: {where}: empty `text`")
        texts.append(str(value).strip())
        if has_pair:
            pair = record.get("text_pair")
            pairs.append("" if is_missing(pair) else str(pair).strip())
        if has_label:
            label = record.get("label")
            if is_missing(label) or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{path}: {where}: missing `label`")
            raw_labels.append((where, label))

    regression = spec is not None and spec.kind == "regression"
    if label_names is not None:
        names = tuple(str(n) for n in label_names)
    elif spec is not None:
        names = spec.label_names
    else:
        names = _infer_label_names([v for _, v in raw_labels])
    labels = [_file_label(v, names, regression, where, path) for where, v in raw_labels]
    return TaskData(
        task=spec.name if spec else path.stem, split="file", texts=texts,
        text_pairs=pairs if has_pair else None, labels=labels, label_names=() if regression else names,
        source=str(path),
    )


def _infer_label_names(values: list[Any]) -> tuple[str, ...]:
    """Sorted distinct names for string labels; "0".."max" for integer labels. DataError, before
    any list is built, for more than ``MAX_LABELS`` classes (a label 20000000 once built 20
    million names)."""
    as_int: list[int] = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            as_int.append(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit() and len(v.strip()) < 20:
            as_int.append(int(v))
        else:
            names = sorted({str(x).strip() for x in values})
            if len(names) > MAX_LABELS:
                raise DataError(f"{len(names):,} distinct labels: an expert has at most "
                                f"{MAX_LABELS:,} classes (a regression task needs numbers)")
            return tuple(names)
    top = max(as_int, default=-1)
    if top >= MAX_LABELS:
        raise DataError(f"label {top} means {top + 1:,} classes: an expert has at most "
                        f"{MAX_LABELS:,} (labels are class indices 0, 1, …)")
    return tuple(str(i) for i in range(top + 1))
