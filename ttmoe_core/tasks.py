"""Task registry and data loaders: every task becomes (text, text_pair, label) examples.

Sources: a folder in the Hugging Face hub's Parquet layout
(``<data_dir>/<task>/<split>[-00000-of-00001].parquet``), the hub itself
(``data_dir="hub"``, needs the ``datasets`` package and network), or a user's CSV/JSONL file
(:func:`load_file`).

Rendering rules (:func:`render_example`):

- ``single``: ``text`` = the one text field, ``text_pair`` = None.
- ``pair``: ``text``, ``text_pair`` = the two text fields (premise/hypothesis, question/passage, ...).
- ``regression`` (stsb): a pair; the label is a float similarity in [0, 5].
- String labels become class indices through ``TaskSpec.label_values`` (raw value of class 0,
  1, ...): sick ``entailment_label`` ENTAILMENT/NEUTRAL/CONTRADICTION -> 0/1/2; scitail
  ``gold_label`` entailment/neutral -> 0/1; boolq ``answer`` False/True -> 0/1; winogrande
  ``answer`` "1"/"2" -> 0/1; csqa ``answerKey`` A-E -> 0-4; socialiqa ``label`` "1"-"3" -> 0-2.
  Integer labels (GLUE, cb, cosmosqa 0-3) are used as they are.
- ``multiple_choice`` (winogrande_l, csqa, socialiqa, cosmosqa) is ONE classification example:
  ``text`` = the prompt fields joined by a space (winogrande: the sentence; csqa: the question;
  socialiqa and cosmosqa: "context question"), ``text_pair`` = the options as
  ``"(A) opt1 (B) opt2 ..."`` with the task's label names as markers (winogrande: ``(1) .. (2) ..``),
  label = index of the right option. The options are the last ``num_labels`` text fields, or the
  ``text`` list of a ``{label, text}`` struct (csqa ``choices``).
- Rows whose label is missing or out of range, or whose text is empty, are dropped; the count
  is written in ``TaskData.source``. cb here is a prompt-rendered copy (each example repeated
  once per prompt template); it is reduced to its unique (premise, hypothesis, label) rows.

Splits: ``load_task(split="train" | "validation")``. Where a task has no train file (mnli,
qnli, qqp, scitail, cosmosqa), MNLI trains on validation_matched and evaluates on
validation_mismatched; the others use a fixed 80/20 split (seed 0) of their one file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

DATA_DIR_ENV = "TTMOE_DATA_DIR"
HUB = "hub"
SPLIT_SEED = 0
SPLIT_TRAIN_FRACTION = 0.8
LOGICAL_SPLITS = ("train", "validation")
METRICS = ("accuracy", "mcc", "f1_accuracy", "pearson_spearman")
KINDS = ("single", "pair", "multiple_choice", "regression")


class DataError(ValueError):
    """Bad or missing task data; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task's rows look like and how it is scored."""

    name: str
    hub_id: str
    hub_config: str | None
    text_fields: tuple[str, ...]
    label_field: str
    label_names: tuple[str, ...]
    metric: str
    kind: str
    train_split: str | None
    eval_split: str
    label_values: tuple[Any, ...] = ()  # raw label of class 0, 1, ...; () = integer labels
    dedupe: bool = False  # drop repeated (text fields, label) rows

    @property
    def num_labels(self) -> int:
        """Number of classes; 1 for regression."""
        return 1 if self.kind == "regression" else len(self.label_names)


def _glue(name: str, fields: tuple[str, ...], labels: tuple[str, ...], metric: str = "accuracy",
          train_split: str | None = "train", eval_split: str = "validation") -> TaskSpec:
    kind = "single" if len(fields) == 1 else "pair"
    return TaskSpec(name, "glue", name, fields, "label", labels, metric, kind, train_split, eval_split)


_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")

TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    spec.name: spec for spec in (
        _glue("sst2", ("sentence",), ("negative", "positive")),
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), metric="mcc"),
        _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), metric="f1_accuracy"),
        _glue("rte", ("sentence1", "sentence2"), _NLI2),
        _glue("mnli", ("premise", "hypothesis"), _NLI3,
              train_split="validation_matched", eval_split="validation_mismatched"),
        _glue("qnli", ("question", "sentence"), _NLI2, train_split=None),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
              metric="f1_accuracy", train_split=None),
        TaskSpec("stsb", "glue", "stsb", ("sentence1", "sentence2"), "label", (),
                 "pearson_spearman", "regression", "train", "validation"),
        TaskSpec("cb", "super_glue", "cb", ("premise", "hypothesis"), "label",
                 ("entailment", "contradiction", "neutral"), "accuracy", "pair", "train", "validation",
                 dedupe=True),
        TaskSpec("boolq", "boolq", None, ("question", "passage"), "answer", ("false", "true"),
                 "accuracy", "pair", "train", "validation", label_values=(False, True)),
        TaskSpec("sick", "sick", None, ("sentence_A", "sentence_B"), "entailment_label", _NLI3,
                 "accuracy", "pair", "train", "validation",
                 label_values=("ENTAILMENT", "NEUTRAL", "CONTRADICTION")),
        TaskSpec("scitail", "scitail", "snli_format", ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral"), "accuracy", "pair", None, "validation",
                 label_values=("entailment", "neutral")),
        TaskSpec("winogrande_l", "winogrande", "winogrande_l", ("sentence", "option1", "option2"),
                 "answer", ("1", "2"), "accuracy", "multiple_choice", "train", "validation",
                 label_values=("1", "2")),
        TaskSpec("csqa", "commonsense_qa", None, ("question", "choices"), "answerKey",
                 ("A", "B", "C", "D", "E"), "accuracy", "multiple_choice", "train", "validation",
                 label_values=("A", "B", "C", "D", "E")),
        TaskSpec("socialiqa", "social_i_qa", None, ("context", "question", "answerA", "answerB", "answerC"),
                 "label", ("A", "B", "C"), "accuracy", "multiple_choice", "train", "validation",
                 label_values=("1", "2", "3")),
        TaskSpec("cosmosqa", "cosmos_qa", None,
                 ("context", "question", "answer0", "answer1", "answer2", "answer3"),
                 "label", ("A", "B", "C", "D"), "accuracy", "multiple_choice", None, "validation"),
    )
})

# the six tasks of the demo pack and of the paper report's router and mixed-task experiments
DEMO_TASKS: tuple[str, ...] = ("mnli", "cola", "rte", "sst2", "qnli", "qqp")



@dataclass
class TaskData:
    """Rendered examples of one task and split; ``labels[i]`` belongs to ``texts[i]``."""

    task: str
    split: str
    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int] | list[float]
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise DataError(f"{self.task}: {len(self.texts)} texts but {len(self.text_pairs)} text pairs")
        if self.labels and len(self.labels) != len(self.texts):
            raise DataError(f"{self.task}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int], source: str | None = None) -> TaskData:
        """The rows at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return TaskData(
            task=self.task, split=self.split,
            texts=[self.texts[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
            labels=[self.labels[i] for i in idx] if self.labels else [],
            label_names=self.label_names,
            source=self.source if source is None else source,
        )

    def subset(self, n: int, seed: int = 0) -> TaskData:
        """A seeded random subset of ``n`` rows, kept in their original order."""
        if n < 0:
            raise ValueError(f"subset size must be >= 0, got {n}")
        if n >= len(self):
            return self.select(range(len(self)))
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.select(idx, source=f"{self.source}; random {n} of {len(self)} rows (seed {seed})")


# --------------------------------------------------------------------------- rendering


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _parse_label(spec: TaskSpec, row: Mapping) -> int | float:
    """Class index (or float score) of a raw row; DataError when missing or invalid."""
    if spec.label_field in row:
        raw, from_fallback = row[spec.label_field], False
    elif "label" in row:  # e.g. sick on the hub stores an integer `label`
        raw, from_fallback = row["label"], True
    else:
        raise DataError(f"{spec.name}: row has no label column {spec.label_field!r}")
    if isinstance(raw, np.generic):
        raw = raw.item()
    if _is_missing(raw):
        raise DataError(f"{spec.name}: missing label")
    if spec.kind == "regression":
        if isinstance(raw, bool) or not isinstance(raw, Real):
            raise DataError(f"{spec.name}: regression label must be a number, got {raw!r}")
        score = round(float(raw), 4)
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{spec.name}: score {score} outside [0, 5]")
        return score
    if spec.label_values and not from_fallback:
        if raw in spec.label_values:
            return spec.label_values.index(raw)
        raise DataError(f"{spec.name}: label {raw!r} is not one of {list(spec.label_values)}")
    if isinstance(raw, bool) or not isinstance(raw, Integral):
        raise DataError(f"{spec.name}: label {raw!r} is not a class index")
    if not 0 <= raw < spec.num_labels:
        raise DataError(f"{spec.name}: label {raw} outside 0..{spec.num_labels - 1}")
    return int(raw)


def _text(spec: TaskSpec, row: Mapping, field_name: str) -> str:
    if field_name not in row:
        raise DataError(f"{spec.name}: row has no column {field_name!r} (columns: {sorted(row)})")
    value = row[field_name]
    if _is_missing(value) or not str(value).strip():
        raise DataError(f"{spec.name}: empty {field_name!r}")
    return str(value).strip()


def _options(spec: TaskSpec, row: Mapping) -> tuple[list[str], list[str]]:
    """(prompt parts, option texts) of a multiple-choice row."""
    last = row.get(spec.text_fields[-1])
    if isinstance(last, Mapping) and "text" in last:  # csqa: choices = {label: [...], text: [...]}
        options = [str(t).strip() for t in list(last["text"])]
        prompt_fields = spec.text_fields[:-1]
    else:
        k = spec.num_labels
        options = [_text(spec, row, f) for f in spec.text_fields[-k:]]
        prompt_fields = spec.text_fields[:-k]
    if len(options) != spec.num_labels or not all(options):
        raise DataError(f"{spec.name}: expected {spec.num_labels} non-empty options, got {options}")
    return [_text(spec, row, f) for f in prompt_fields], options


def render_example(spec: TaskSpec, row: Mapping) -> tuple[str, str | None, int | float]:
    """(text, text_pair, label) of one raw row, following the module's rendering rules."""
    label = _parse_label(spec, row)
    if spec.kind == "single":
        return _text(spec, row, spec.text_fields[0]), None, label
    if spec.kind in ("pair", "regression"):
        return _text(spec, row, spec.text_fields[0]), _text(spec, row, spec.text_fields[1]), label
    if spec.kind == "multiple_choice":
        prompt, options = _options(spec, row)
        pair = " ".join(f"({name}) {opt}" for name, opt in zip(spec.label_names, options))
        return " ".join(prompt), pair, label
    raise DataError(f"{spec.name}: unknown task kind {spec.kind!r}")


def _render_frame(spec: TaskSpec, frame: pd.DataFrame, split: str, source: str) -> TaskData:
    """Render every row; invalid rows are dropped and counted in ``source``."""
    missing = [c for c in spec.text_fields if c not in frame.columns]
    if missing:
        raise DataError(f"{spec.name}: {source} lacks column(s) {missing}; it has {list(frame.columns)}")
    if spec.label_field not in frame.columns and "label" not in frame.columns:
        raise DataError(f"{spec.name}: {source} lacks the label column {spec.label_field!r}")
    notes = []
    if spec.dedupe:
        keys = [c for c in (*spec.text_fields, spec.label_field) if c in frame.columns]
        before = len(frame)
        frame = frame.drop_duplicates(subset=keys)
        if len(frame) < before:
            notes.append(f"{len(frame)} unique of {before} rows (prompt-template copies removed)")
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[int | float] = []
    dropped = 0
    for row in frame.to_dict("records"):
        try:
            text, pair, label = render_example(spec, row)
        except DataError:
            dropped += 1
            continue
        texts.append(text)
        pairs.append(pair)  # type: ignore[arg-type]
        labels.append(label)
    if dropped:
        notes.append(f"dropped {dropped} of {len(frame)} rows with a missing or invalid label or text")
    if not texts:
        raise DataError(f"{spec.name}: no usable rows in {source}")
    return TaskData(
        task=spec.name, split=split, texts=texts,
        text_pairs=None if spec.kind == "single" else pairs,
        labels=labels, label_names=spec.label_names,
        source="; ".join([source, *notes]),
    )


# --------------------------------------------------------------------------- loading


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


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


def get_task(name: str) -> TaskSpec:
    """The registry entry; DataError listing the known tasks when unknown."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


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
        return _render_frame(spec, frame, split, where)
    frame, where = _read_split(spec, folder, spec.eval_split)
    part = "first part" if split == "train" else "second part"
    idx = _fixed_split(len(frame), split)
    where = (f"seeded {round(SPLIT_TRAIN_FRACTION * 100)}/{round((1 - SPLIT_TRAIN_FRACTION) * 100)} split "
             f"(seed {SPLIT_SEED}) of {where}: {part}, {len(idx)} of {len(frame)} rows "
             f"({spec.name} has no train file here)")
    return _render_frame(spec, frame.iloc[idx].reset_index(drop=True), split, where)


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
    return _render_frame(spec, dataset.to_pandas(), split, where)


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
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON on line {exc.lineno}: {exc.msg}") from None
        rows = list(enumerate(records, start=1))
        where = "item"
    else:
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no} is not valid JSON ({exc.msg}); "
                                "each line must be one object like {\"text\": ..., \"label\": ...}") from None
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
        if _is_missing(value) or not str(value).strip():
            raise DataError(f"{path}: {where}: empty `text`")
        texts.append(str(value).strip())
        if has_pair:
            pair = record.get("text_pair")
            pairs.append("" if _is_missing(pair) else str(pair).strip())
        if has_label:
            label = record.get("label")
            if _is_missing(label) or (isinstance(label, str) and not label.strip()):
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
    """Sorted distinct names for string labels; "0".."max" for integer labels."""
    as_int: list[int] = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            as_int.append(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            as_int.append(int(v))
        else:
            return tuple(sorted({str(x).strip() for x in values}))
    return tuple(str(i) for i in range(max(as_int, default=-1) + 1))


# --------------------------------------------------------------------------- metrics


def _metric_name(spec_or_metric: TaskSpec | str) -> str:
    if isinstance(spec_or_metric, TaskSpec):
        return spec_or_metric.metric
    if spec_or_metric in METRICS:
        return spec_or_metric
    return get_task(spec_or_metric).metric


def primary_metric(spec_or_metric: TaskSpec | str) -> str:
    """The headline key of :func:`compute_metrics` ("accuracy", "mcc", "f1" or "pearson")."""
    return {"accuracy": "accuracy", "mcc": "mcc", "f1_accuracy": "f1",
            "pearson_spearman": "pearson"}[_metric_name(spec_or_metric)]


def compute_metrics(spec_or_metric: TaskSpec | str, labels: Sequence, predictions: Sequence) -> dict[str, float]:
    """Task metrics of ``predictions`` against ``labels``.

    ``spec_or_metric``: a TaskSpec, a task name, or a metric name. ``predictions``: class indices
    [N] or scores [N, C] (argmax taken); for regression, scores [N] or [N, 1].
    """
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    metric = _metric_name(spec_or_metric)
    y_true = np.asarray(labels)
    y_pred = np.asarray(predictions)
    if metric == "pearson_spearman":
        y_true = y_true.astype(np.float64)
        y_pred = y_pred.astype(np.float64).reshape(len(y_pred), -1)[:, 0]
    elif y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=1)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"need equal, non-zero numbers of labels and predictions, got {len(y_true)} and {len(y_pred)}")
    if metric == "pearson_spearman":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            return {"pearson": float(pearsonr(y_true, y_pred)[0]), "spearman": float(spearmanr(y_true, y_pred)[0])}
    result = {"accuracy": float(accuracy_score(y_true, y_pred))}
    if metric == "mcc":
        result = {"mcc": float(matthews_corrcoef(y_true, y_pred)), **result}
    elif metric == "f1_accuracy":
        average = "binary" if set(np.unique(np.concatenate([y_true, y_pred]))) <= {0, 1} else "macro"
        result = {"f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)), **result}
    return result
