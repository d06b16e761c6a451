"""Task metrics: accuracy, Matthews correlation, F1 + accuracy, Pearson/Spearman."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .registry import METRICS, TaskSpec, get_task


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
    # heavy: scipy, loaded on first use
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr

    # heavy: scikit-learn (~1 s to import), loaded on first use
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
