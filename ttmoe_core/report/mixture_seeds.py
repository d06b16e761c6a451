"""What experiments 4 and 5 share: the mixtures' router and per-seed results folded over seeds.

``recipe_router`` trains the router of a set of experts once by the shipped pack's recipe
(``routing.recipe``: variant and layer ``MIXTURE_ROUTER``, every training row balanced to the
budget's cap a task, SST-2 whole sentences only) and keeps it on the run: routing reads only the
frozen base model, so one router serves both experiments and every seed's mixture.
``over_seeds`` folds per-seed rows into one row per task (mean and sample std over seeds, by
``seeds.mean_std``); ``seed_summary`` folds per-seed scalars the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from ..routing import RouterConfig, params, recipe
from . import seeds
from .experiment import Run
from .plan import MIXTURE_ROUTER


def recipe_router(run: Run, names: Sequence[str]) -> dict:
    """The router over ``names``' experts (each expert's task is its name), trained on first use
    and kept on ``run``: {"router", "record"}; the record (results.json) holds the variant,
    layer, recipe, parameters and held-out routing accuracy, recall and confusion."""
    key = tuple(names)
    kept = run.recipe_router.get(key)
    if kept is not None:
        return kept
    b = run.budget
    variant, layer = MIXTURE_ROUTER
    pairs = [(name, name) for name in names]
    run.tell(f"router over {len(names)} experts ({variant}, shipped recipe)", 0, 1)
    t0 = time.perf_counter()
    # train: every training row but RTE's calibration rows; held: router_eval_rows validation
    # rows a task (seeded), never trained on; the calibration rows are not used here
    train_all, held, _ = recipe.routing_splits(pairs, run.data_dir, b.seed, b.router_eval_rows)
    train, index = recipe.recipe_rows(train_all, pairs, b.mixture_router_cap, True, b.seed)
    config = RouterConfig(variant=variant, layer=layer, epochs=b.mixture_router_epochs, seed=b.seed,
                          max_length=b.max_length)
    fitted = recipe.fit(config, run.backbone, train, held, index)
    report = fitted["report"]
    record = {"variant": variant, "layer": layer, "params": params(fitted["router"]),
              "accuracy": report.accuracy, "per_task": report.per_task,
              "confusion": report.confusion, "held_out_rows": report.rows,
              "recipe": {"cap": b.mixture_router_cap, "epochs": b.mixture_router_epochs,
                         "sst2_sentences": True, "train_rows": len(index),
                         "distinct_rows": len(train.texts), "rows_available": len(train_all.texts)},
              "fit_seconds": round(time.perf_counter() - t0, 1)}
    entry = {"router": fitted["router"], "record": record}
    run.recipe_router[key] = entry
    run.tell(f"router over {len(names)} experts: held-out accuracy {report.accuracy:.3f}", 1, 1)
    return entry


def recipe_words(record: Mapping) -> str:
    """How the router was trained, for an experiment's differences."""
    r = record["recipe"]
    return (f"Router: the shipped pack's recipe (routing.recipe), the {record['variant']} variant at "
            f"layer {record['layer']}, {record['params']:,} parameters: every training row of each "
            f"task ({r['rows_available']:,} in all), SST-2 whole sentences only, balanced to "
            f"{r['cap']:,} rows a task ({r['train_rows']:,} rows, {r['distinct_rows']:,} distinct), "
            f"{r['epochs']} epochs; held-out routing accuracy {record['accuracy']:.3f} on "
            f"{record['held_out_rows']:,} validation inputs it never saw. Trained once, shared by "
            "experiments 4 and 5 and every seed's mixture (it reads only the frozen base model).")


def over_seeds(per_seed: Sequence[Mapping], keys: Sequence[str]) -> list[dict]:
    """One row per task from ``per_seed`` ([{"seed", "rows": [{"task", "metric", ...}]}]), in
    the first seed's order: ``task``, ``metric``, ``seeds`` (those with the task), ``n``, and for
    each of ``keys`` the mean over seeds under the key's own name and the sample std as
    ``<key>_std`` (None for one seed; NaN values left out, as ``seeds.mean_std`` does)."""
    tasks: dict[str, list[tuple[int, Mapping]]] = {}
    for entry in per_seed:
        for row in entry["rows"]:
            tasks.setdefault(row["task"], []).append((entry["seed"], row))
    out = []
    for task, mine in tasks.items():
        row = {"task": task, "metric": mine[0][1]["metric"], "seeds": [s for s, _ in mine],
               "n": len(mine)}
        for key in keys:
            mean, std, _ = seeds.mean_std(r.get(key) for _, r in mine)
            row[key], row[f"{key}_std"] = mean, std
        out.append(row)
    return out


def seed_summary(per_seed: Sequence[Mapping], keys: Sequence[str]) -> dict:
    """``seeds`` and ``n``, and for each of ``keys`` (a number of each per-seed entry) its mean
    over seeds as ``<key>`` and sample std as ``<key>_std``."""
    out: dict = {"seeds": [e["seed"] for e in per_seed], "n": len(per_seed)}
    for key in keys:
        out[key], out[f"{key}_std"], _ = seeds.mean_std(e.get(key) for e in per_seed)
    return out


def pm(mean: float | None, std: float | None, spec: str = ".3f") -> str:
    """``0.804 ± 0.012`` (just the mean for one seed, a dash for none) for a claim's evidence;
    ``spec`` formats both (a sign only on the mean)."""
    if mean is None:
        return "–"
    return format(mean, spec) + ("" if std is None else f" ± {format(std, spec.lstrip('+'))}")
