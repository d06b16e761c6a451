"""Several seeds of one training: mean ± std per (task, method), and when a difference is real.

Experiment 2 trains each (task, method) once per seed of the budget. ``aggregate`` folds the
per-seed rows into one row per (task, method): the mean and the sample standard deviation
(n − 1 in the denominator; None for one seed) of each measured number. ``compare`` tells
whether two such means differ by more than their seeds' spread, by ``SPREAD_RULE``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

# the numbers of a per-seed row that are averaged (absent or None values are left out)
AGGREGATED = ("value", "steps_run", "best_step", "train_seconds", "cpu_seconds", "wall_seconds",
              "peak_growth_mib")
SPREAD_RULE = ("a difference counts as real when |mean difference| > std A + std B (sample "
               "standard deviations over seeds); otherwise the seed spread swallows it; with one "
               "seed the spread is not measured")


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std, n) of the finite values; std None below two values, mean None at none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None, 0
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return statistics.fmean(finite), std, len(finite)


def aggregate(rows: Sequence[Mapping], keys: Sequence[str] = AGGREGATED) -> list[dict]:
    """One row per (task, method) in first-seen order: ``seeds`` (the seeds in it), and for each
    of ``keys`` ``<key>_mean`` and ``<key>_std`` over its per-seed rows."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    out = []
    for (task, method), mine in groups.items():
        entry = {"task": task, "method": method, "metric": mine[0].get("metric"),
                 "seeds": [r.get("seed") for r in mine], "n": len(mine)}
        for key in keys:
            mean, std, _ = mean_std(r.get(key) for r in mine)
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean, std
        out.append(entry)
    return out


def compare(a_mean: float | None, a_std: float | None, b_mean: float | None,
            b_std: float | None) -> dict:
    """``SPREAD_RULE`` on two means: ``difference`` (a − b), ``spread`` (std a + std b; None
    when either std is unknown) and ``exceeds_spread`` (None when the spread or a mean is)."""
    if a_mean is None or b_mean is None:
        return {"difference": None, "spread": None, "exceeds_spread": None}
    difference = a_mean - b_mean
    spread = None if a_std is None or b_std is None else a_std + b_std
    return {"difference": difference, "spread": spread,
            "exceeds_spread": None if spread is None else abs(difference) > spread}
