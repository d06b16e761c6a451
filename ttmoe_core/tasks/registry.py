"""The task registry and the rendering of raw rows: every task becomes (text, text_pair, label).

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:  # annotations only: the registry's names stay light for the CLI's parser
    import pandas as pd

METRICS = ("accuracy", "mcc", "f1_accuracy", "pearson_spearman")
KINDS = ("single", "pair", "multiple_choice", "regression")


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


def get_task(name: str) -> TaskSpec:
    """The registry entry; DataError listing the known tasks when unknown."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None



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


def is_missing(value: Any) -> bool:
    """None or NaN: an empty cell of a frame or file."""
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
    if is_missing(raw):
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
    if is_missing(value) or not str(value).strip():
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
    """(text, text_pair, label) of one raw row, following the rendering rules above."""
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


def render_frame(spec: TaskSpec, frame: pd.DataFrame, split: str, source: str) -> TaskData:
    """Every row of ``frame`` rendered (:func:`render_example`).

    Invalid rows are dropped and counted in ``source``.
    """
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
