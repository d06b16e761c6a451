"""Tests of ttmoe_core.quality: the weak/not-weak verdict from validation metrics and the
majority-class rate in the recorded confusion matrix, with its reason in words."""

from __future__ import annotations

import pytest

from ttmoe_core.experts import quality

# 30 unacceptable, 70 acceptable (rows are true labels)
COLA = [[10, 20], [5, 65]]


def test_low_mcc_is_weak_even_with_fair_accuracy():
    v = quality.assess({"mcc": 0.048, "accuracy": 0.75, "confusion": COLA},
                       ["unacceptable", "acceptable"])
    assert v.weak and v.metric == "mcc" and v.value == pytest.approx(0.048)
    assert v.majority == pytest.approx(0.7)
    assert "MCC 0.048 is below 0.2" in v.reason and "accuracy" not in v.reason


def test_accuracy_near_the_majority_class_is_weak():
    rte = [[40, 5], [40, 15]]                                    # 55% of rows are label 1
    v = quality.assess({"accuracy": 0.549, "confusion": rte}, ["entailment", "not_entailment"])
    assert v.weak and v.majority == pytest.approx(0.55)
    assert "always answering the most common label 'not_entailment' (0.550)" in v.reason
    strong = quality.assess({"accuracy": 0.62, "confusion": rte})
    assert not strong.weak and strong.reason.startswith("validation accuracy 0.620")


def test_f1_near_always_positive_is_weak():
    qqp = [[60, 3], [30, 7]]                                    # 37% positive: trivial F1 0.540
    v = quality.assess({"f1": 0.55, "accuracy": 0.80, "confusion": qqp})
    assert v.weak and v.metric == "f1" and "positive label (0.540)" in v.reason
    assert not quality.assess({"f1": 0.78, "accuracy": 0.85, "confusion": qqp}).weak


def test_regression_and_missing_metrics():
    assert quality.assess({"pearson": 0.1, "spearman": 0.1}).weak
    assert not quality.assess({"pearson": 0.8}).weak
    none = quality.assess({"train_seconds": 3.0})
    assert not none.weak and none.value is None
    assert quality.words(none) == "No validation score recorded for this expert."


def test_words_say_weak_plainly():
    weak = quality.assess({"mcc": 0.05, "accuracy": 0.7, "confusion": COLA})
    assert quality.words(weak).startswith("Weak expert (validation mcc 0.050)")
    ok = quality.assess({"accuracy": 0.9, "confusion": COLA})
    assert quality.words(ok) == ("Validation accuracy 0.900 (always answering the most common "
                                 "label: 0.700).")
