"""Experiment 3 (paper Table 5): the router variants on the six demo tasks, by accuracy, cost and size.

Each variant (the paper's, linear, MLP, our fusion) at each layer k of the budget
(``routing.sweep_layers``), and the shipped ``ngram`` router at each of the budget's table sizes
(``ReportBudget.router_buckets``, at ``MIXTURE_ROUTER``'s layer): held-out accuracy, parameters,
measured cost per input, confusion. Over all rows, the Pareto front of accuracy against router
parameters (``params_front``) and the smallest router within one point of the most accurate
(``smallest_near_best``): a router that keeps the mixture small. (Experiments 4-5 train the
shipped recipe's router themselves: ``mixture_seeds.recipe_router``.)

With ``ReportBudget.router_decoder`` the same fits run again on that causal decoder's frozen
states (routing trains no expert), at the same fractions of its depth (``layers_on``): there the
paper's router reads a last token that has seen the whole input, not an encoder's [SEP].
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from ..base.backbone import Backbone, tokenize_mixed
from ..routing import (
    ROUTERS,
    Router,
    RouterConfig,
    RoutingData,
    batch_features,
    params,
    sweep_layers,
    variant_spec,
)
from ..tasks import DEMO_TASKS
from .experiment import Run, median_ms, setup_differences, verdict
from .plan import MIXTURE_ROUTER

NEAR_BEST_POINTS = 1.0      # "within one point": accuracy at most 0.01 below the best


def _spread(n: int, total: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (all of them when ``total <= n``)."""
    return sorted({int(i * total / n) for i in range(n)}) if total > n else list(range(total))


def router_cost_ms(backbone: Backbone, router: Router, data: RoutingData,
                   rows: int = 64, repeats: int = 3) -> float:
    """Measured ms per input of tokenizing + features (base up to the router's layer) + router."""
    idx = _spread(rows, len(data.texts))
    texts = [data.texts[i] for i in idx]
    pairs = [data.text_pairs[i] for i in idx]
    config = router.config

    def once():
        batch, _ = tokenize_mixed(backbone.tokenizer, texts, pairs, config.max_length, backbone.device)
        feats = batch_features(backbone.model, batch, texts, pairs, config)
        return router(feats).argmax(-1)                                 # [rows] expert index

    router.eval()
    with torch.inference_mode():
        once()
        return median_ms(once, repeats) / len(texts)


def layers_on(layers: Sequence[int], from_layers: int, to_layers: int) -> list[int]:
    """The layers at the same fractions of depth on a model of ``to_layers`` layers: k·to/from
    rounded half up, distinct, ascending (MiniLM's 0, 2, 6 of 6 → 0, 10, 30 of 30)."""
    if from_layers < 1 or to_layers < 1:
        raise ValueError(f"depths must be positive, got {from_layers} and {to_layers}")
    return sorted({(2 * k * to_layers + from_layers) // (2 * from_layers) for k in layers})


def params_front(rows: Sequence[Mapping]) -> list[dict]:
    """The rows no other row dominates (at most as many parameters and at least the accuracy,
    one of them strictly), smallest first, as {"variant", "layer", "buckets", "params",
    "accuracy"}."""
    front = [r for r in rows
             if not any(q["params"] <= r["params"] and q["accuracy"] >= r["accuracy"]
                        and (q["params"] < r["params"] or q["accuracy"] > r["accuracy"])
                        for q in rows)]
    return [_key(r) | {"params": r["params"], "accuracy": r["accuracy"]}
            for r in sorted(front, key=lambda r: (r["params"], -r["accuracy"]))]


def smallest_near_best(rows: Sequence[Mapping], points: float = NEAR_BEST_POINTS) -> dict | None:
    """The router with the fewest parameters whose accuracy is at most ``points``/100 below the
    most accurate row's ("best"); None without rows."""
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["accuracy"], -r["params"]))
    near = [r for r in rows if r["accuracy"] >= best["accuracy"] - points / 100 - 1e-12]
    pick = min(near, key=lambda r: (r["params"], -r["accuracy"]))
    return {**_key(pick), "params": pick["params"], "accuracy": pick["accuracy"], "points": points,
            "best": {**_key(best), "params": best["params"], "accuracy": best["accuracy"]}}


def _key(row: Mapping) -> dict:
    return {"variant": row["variant"], "layer": row["layer"], "buckets": row.get("buckets")}


def _plan(layers: Sequence[int], buckets: Sequence[int], mixture_layer: int,
          num_layers: int) -> list[tuple[str, int | None, list[int]]]:
    """(variant, n-gram buckets or None, layers) of each sweep: the paper's comparison at
    ``layers`` (the paper's router: the last), the ngram router at ``mixture_layer`` per size."""
    plan = [(v, None, [num_layers] if variant_spec(v).last_layer_only else list(layers))
            for v in ROUTERS]
    return plan + [("ngram", size, [mixture_layer]) for size in buckets]


def fit_rows(run: Run, backbone: Backbone, train: RoutingData, held: RoutingData,
             layers: Sequence[int], mixture_layer: int, stage: str) -> list[tuple[dict, Router]]:
    """(results row, router) of every router of ``_plan`` on ``backbone``'s frozen states."""
    b = run.budget
    plan = _plan(layers, b.router_buckets, mixture_layer, backbone.info.num_layers)
    out = []
    for done, (variant, buckets, at) in enumerate(plan):
        size = {} if buckets is None else {"buckets": buckets}
        run.tell(f"{stage}: {variant}" + (f" ({buckets:,} buckets)" if buckets else ""), done, len(plan))
        config = RouterConfig(variant=variant, epochs=b.router_epochs, seed=b.seed,
                              max_length=b.max_length, **size)
        t0 = time.perf_counter()
        fitted = sweep_layers(config, at, backbone, train, held)
        fit_seconds = time.perf_counter() - t0
        for result in fitted:
            router, report = result["router"], result["report"]
            out.append(({"variant": variant, "layer": result["layer"], "buckets": buckets,
                         "cost_fraction": result["cost"], "params": params(router),
                         "accuracy": report.accuracy, "per_task": report.per_task,
                         "confusion": report.confusion,
                         "ms_per_input": round(router_cost_ms(backbone, router, held,
                                                              repeats=b.timing_repeats), 4),
                         "fit_seconds": round(fit_seconds / len(fitted), 2)}, router))
    return out


def summarise(rows: Sequence[Mapping], claim: str) -> dict:
    """Best layer per variant, the parameters' front, the smallest router near the best, and the
    verdict on ``claim`` (the paper's router against the best linear / MLP one)."""
    best: dict[str, Mapping] = {}
    for row in rows:
        if row["variant"] not in best or row["accuracy"] > best[row["variant"]]["accuracy"]:
            best[row["variant"]] = row
    paper_acc = best["paper"]["accuracy"]
    others = max(best[v]["accuracy"] for v in ("linear", "mlp"))
    top = max(rows, key=lambda r: r["accuracy"])
    return {"best_layer": {v: r["layer"] for v, r in best.items()},
            "params_frontier": params_front(rows), "smallest_near_best": smallest_near_best(rows),
            "claim": {"paper": claim, "verdict": verdict(paper_acc >= others),
                      "evidence": (f"held-out accuracy: paper {paper_acc:.3f}, best linear/MLP "
                                   f"{others:.3f}; most accurate here: {top['variant']} at layer "
                                   f"{top['layer']} ({top['accuracy']:.3f})")}}


CLAIM = ("the paper's router (last hidden state at the last token, noisy top-1 gating) routes at "
         "least as well as a linear layer or an MLP")


def on_decoder(run: Run, train: RoutingData, held: RoutingData) -> dict:
    """The same routers on ``run.budget.router_decoder``'s frozen states, at the same fractions
    of depth as the budget's layers on the run's base model."""
    b, depth = run.budget, run.backbone.info.num_layers
    decoder = run.other_model(b.router_decoder)
    to = decoder.info.num_layers
    layers = layers_on(b.router_layers, depth, to)
    mixture_layer = layers_on([MIXTURE_ROUTER[1]], depth, to)[0]
    rows = [row for row, _ in fit_rows(run, decoder, train, held, layers, mixture_layer,
                                       f"router variants on {decoder.info.name}")]
    return {"model": decoder.info.name, "num_layers": to, "hidden_size": decoder.info.hidden_size,
            "layers": layers, "rows": rows,
            **summarise(rows, f"on a causal decoder, whose last token has read the whole input, {CLAIM}")}


def exp_routers(run: Run) -> dict:
    """Each router variant (paper: last layer; others: every layer of the budget; ngram: each
    table size) on six tasks; on the budget's decoder as well."""
    b = run.budget
    train, held = run.routing(DEMO_TASKS)
    rows = []
    for row, _router in fit_rows(run, run.backbone, train, held, b.router_layers,
                                 MIXTURE_ROUTER[1], "router variants"):
        rows.append(row)
    out = {
        "tasks": list(DEMO_TASKS), "names": train.names, "rows": rows,
        "train_rows": len(train.labels), "held_out_rows": len(held.labels), "sources": held.sources,
        **summarise(rows, CLAIM),
        "differences": setup_differences(run)[:1] + [
            f"Six tasks ({', '.join(DEMO_TASKS)}), {b.router_train_rows} training inputs and "
            f"{b.router_eval_rows} held-out validation inputs a task (unseen by every router); "
            f"{b.router_epochs} epochs on cached features. Cost per input measured here (tokenizing, "
            "the base model up to layer k, the router; batch of 64) rather than reported as FLOPs.",
            "The fusion variant (pooled layers 0..k + character n-grams of the raw text) is ours, "
            "not the paper's; so is the ngram variant (pooled states per segment + hashed n-grams "
            f"of the case-free text), fitted at layer {MIXTURE_ROUTER[1]} with "
            f"{', '.join(f'{n:,}' for n in b.router_buckets)} hash buckets per n-gram block."],
    }
    if b.router_decoder is not None:
        out["decoder"] = on_decoder(run, train, held)
        dec = out["decoder"]
        out["differences"].append(
            f"Also on the decoder {dec['model']} ({dec['num_layers']} layers, frozen, no expert "
            f"trained): layers {', '.join(map(str, dec['layers']))} (the same fractions of depth "
            "as above); its tokenizer and the same rows.")
    return out
