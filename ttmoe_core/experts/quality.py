"""Is an expert worth trusting? Plain words from its validation metrics.

An expert is *weak* when its answers are little better than a trivial rule on its own
validation data: Matthews correlation below 0.2, accuracy within 5 points of always answering
the most common label, F1 within 5 points of always answering the positive label, or a Pearson
correlation below 0.2 (regression). The majority-class rate comes from the confusion matrix the
expert recorded (rows: true labels), so old experts are judged too.

    verdict = assess(expert.metrics, label_names=expert.label_names)
    verdict.weak, verdict.reason    # True, "accuracy 0.549 is within 5 points of always ..."
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

MIN_MCC = 0.2             # Matthews correlation below this: weak
MIN_PEARSON = 0.2         # regression: Pearson correlation below this: weak
MARGIN = 0.05             # accuracy / F1 within this of the trivial rule's: weak
ORDER = ("mcc", "f1", "accuracy", "pearson")   # the headline metric, first present


@dataclass(frozen=True)
class Quality:
    metric: str | None            # the headline metric ("mcc", "f1", "accuracy", "pearson")
    value: float | None           # its validation value
    majority: float | None        # share of the most common true label (None: unknown)
    weak: bool
    reason: str                   # one sentence: why weak, or what the score is

    def to_dict(self) -> dict:
        return asdict(self)


def label_rates(confusion: Sequence[Sequence[float]] | None) -> list[float] | None:
    """Share of each true label in the validation rows (confusion rows are true labels)."""
    if not confusion:
        return None
    totals = [float(sum(row)) for row in confusion]
    rows = sum(totals)
    return [t / rows for t in totals] if rows > 0 else None


def assess(metrics: Mapping, label_names: Sequence[str] | None = None) -> Quality:
    """The verdict on an expert from its validation ``metrics`` (``experts.evaluate_model``'s,
    with ``confusion``); ``label_names`` name the majority label in the reason."""
    values = {k: float(metrics[k]) for k in ORDER if isinstance(metrics.get(k), (int, float))}
    rates = label_rates(metrics.get("confusion"))
    majority = max(rates) if rates else None
    if not values:
        return Quality(None, None, majority, False, "no validation metric recorded")
    metric = next(k for k in ORDER if k in values)
    value = values[metric]
    names = list(label_names or [])
    common = ""
    if rates:
        index = rates.index(majority)
        common = f" '{names[index]}'" if index < len(names) else ""
    reasons = []
    if "mcc" in values and values["mcc"] < MIN_MCC:
        reasons.append(f"MCC {values['mcc']:.3f} is below {MIN_MCC} (0 is chance)")
    if "pearson" in values and values["pearson"] < MIN_PEARSON:
        reasons.append(f"Pearson {values['pearson']:.3f} is below {MIN_PEARSON}")
    if "accuracy" in values and majority is not None and values["accuracy"] < majority + MARGIN:
        reasons.append(f"accuracy {values['accuracy']:.3f} is within {MARGIN * 100:.0f} points "
                       f"of always answering the most common label{common} ({majority:.3f})")
    if "f1" in values and rates and len(rates) == 2:
        positive = rates[1]                      # F1 of always answering the positive label
        trivial = 2 * positive / (1 + positive) if positive > 0 else 0.0
        if values["f1"] < trivial + MARGIN:
            reasons.append(f"F1 {values['f1']:.3f} is within {MARGIN * 100:.0f} points of always "
                           f"answering the positive label ({trivial:.3f})")
    if reasons:
        return Quality(metric, value, majority, True, "; ".join(reasons))
    against = f" (most common label: {majority:.3f})" if majority is not None else ""
    return Quality(metric, value, majority, False,
                   f"validation {metric} {value:.3f}{against}")


def pack_entry(expert) -> dict:
    """What a pack's manifest records of one expert (``experts.Expert``): its task, headline
    validation metric and verdict, validation rows, steps run and best hold-out step."""
    verdict = assess(expert.metrics, expert.label_names)
    keep = ("eval_rows", "steps_run", "best_step", "train_seconds")
    return {"task": expert.config.task, **verdict.to_dict(),
            **{k: expert.metrics[k] for k in keep if k in expert.metrics}}


def words(verdict: Quality) -> str:
    """One line for a page: the score, and plainly when the expert is weak."""
    if verdict.value is None:
        return "No validation score recorded for this expert."
    score = f"validation {verdict.metric} {verdict.value:.3f}"
    if verdict.weak:
        return (f"Weak expert ({score}): {verdict.reason}. Its answers are little better than "
                "a trivial guess.")
    return f"{score[0].upper()}{score[1:]}" + (
        f" (always answering the most common label: {verdict.majority:.3f})."
        if verdict.majority is not None else ".")
