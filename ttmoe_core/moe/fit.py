"""A pack's open-world routing: calibrate its out-of-pool detector, report it, grow the pack.

- ``calibrate_pool``: fit ``PoolScorer`` + ``NgramLM`` on training rows of the pack's
  tasks, the router's temperature and the components' z-scores on calibration rows (``dev``:
  rows the router never trained on, ``routing_splits``), the components' weights by
  logistic regression of dev rows against rows of *calibration families* (tasks of the data
  folder outside the pack), the threshold at the ``false_flag`` quantile of dev scores; reports
  AUROC and false flags on the held-out rows against the *evaluation families* (never used for a
  choice). Writes pool.safetensors + pool_config.json (``poolfiles``) in one step.
- ``openworld_report``: the same figures for a loaded mixture (``eval-moe``).
- ``add_expert``: a trained expert folder added to the pack without retraining the router:
  ``grow`` on the pack's replay rows (old experts' logits frozen, a capture budget on
  its calibration rows), the detector's new task (``PoolModel.add_class``); the old experts'
  files are not rewritten (byte-identical), everything else changes in one step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import store, tasks
from ..errors import PoolFitError
from ..routing import (
    GrownRouter,
    NgramLM,
    PoolModel,
    PoolScorer,
    RouterConfig,
    RoutingData,
    cached_outputs,
    cat_rows,
    extract_features,
    fit_temperature,
    grow,
    ood_report,
    pool_dense,
    recipe_rows,
    replay_sample,
    routing_data,
    routing_splits,
)
from ..store import detector as poolfiles

# the routing study's split of the data folder's other task families (ROUTING_STUDY.md)
CALIBRATION_FAMILIES = ("mrpc", "cb", "boolq", "winogrande_l", "socialiqa")
FAMILY_ROWS = 600
FIT_PER_TASK = 2000
REPLAY_PER_TASK = 300
CALIBRATION_PER_TASK = 200


def outside_families(pack_tasks: Sequence[str], data_dir=None) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) families: the data folder's tasks outside the pack, split as in
    the routing study (others alternate between the two)."""
    outside = [t for t in tasks.available_tasks(data_dir) if t not in set(pack_tasks)]
    cal = [t for t in outside if t in CALIBRATION_FAMILIES]
    rest = [t for t in outside if t not in CALIBRATION_FAMILIES]
    if not cal:
        cal, rest = rest[::2], rest[1::2]
    return cal, rest


def _family_rows(families: Sequence[str], data_dir, rows: int) -> dict[str, tasks.TaskData]:
    return {f: tasks.load_task(f, "validation", data_dir=data_dir, limit=rows, seed=0) for f in families}


def _ngram_config(layer: int) -> RouterConfig:
    return RouterConfig(variant="ngram", layer=layer)


def features(backbone, model, texts, pairs, pool_layer: int, progress=None) -> dict:
    """{"logits" [N, E], "dense" [N, D], "feats": the router's features} of N rows."""
    config = model.config
    feats = extract_features(backbone.model, backbone.tokenizer, texts, pairs, config,
                             progress=progress)
    dense_src = feats if "seg" in feats else extract_features(
        backbone.model, backbone.tokenizer, texts, pairs, _ngram_config(pool_layer))
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        logits = model({k: v.to(device) for k, v in feats.items()}).float().cpu()
    return {"logits": logits, "dense": pool_dense(dense_src, pool_layer), "feats": feats}


def _learned_weights(dev: dict, outside: dict, scorer: PoolScorer) -> dict[str, float]:
    """Logistic-regression weights of the z-scored components: dev (in pool) vs outside rows."""
    # heavy: scikit-learn (~1 s to import), loaded on first use
    from sklearn.linear_model import LogisticRegression

    names = sorted(dev)

    def z(parts):
        return torch.stack([(parts[n].double() - scorer.z[n][0]) / scorer.z[n][1] for n in names], 1)

    x = torch.cat([z(dev), z(outside)]).numpy()
    y = [1] * len(dev[names[0]]) + [0] * len(outside[names[0]])
    fit = LogisticRegression(C=1.0, class_weight="balanced").fit(x, y)
    return {n: float(w) for n, w in zip(names, fit.coef_[0])}


def _holding_pack(function: Callable) -> Callable:
    """``function(pack_dir, ...)`` run under the pack's lock (``store.locked``): what it reads of
    the pack and what it writes back are one step, so no other writer's update is lost."""
    @functools.wraps(function)
    def run(pack_dir, *args, **kwargs):
        with store.locked(pack_dir):
            return function(pack_dir, *args, **kwargs)
    return run


def _layout(expert) -> set[tuple]:
    return {(t, tuple(v["in_factors"]), tuple(v["out_factors"])) for t, v in expert.tt_layout.items()}


def check_joins(pack, expert) -> None:
    """PoolFitError unless ``expert`` can join ``pack``'s mixture: a TT-LoRA expert with the pack
    experts' targets and TT shapes (the base model is checked on loading), and a new name."""
    first = pack.experts[0]
    if expert.name in pack.names:
        raise PoolFitError(f"pack {pack.path} already has an expert named {expert.name!r}")
    if expert.config.method != "tt-lora":
        raise PoolFitError(f"expert {expert.name!r} is a {expert.config.method} expert: a pack "
                           "serves TT-LoRA experts only")
    if _layout(expert) != _layout(first):
        raise PoolFitError(f"expert {expert.name!r} adapts {sorted(expert.tt_layout)} with TT "
                           f"shapes {expert.tt_layout}; the pack's experts adapt "
                           f"{sorted(first.tt_layout)} with {first.tt_layout}: train it with "
                           "the same --targets and --shape")


@_holding_pack
def calibrate_pool(pack_dir: str | Path, backbone, data_dir=None, *, per_task: int = FIT_PER_TASK,
                   dims: int | None = 1024, bank_per_class: int = 100, false_flag: float = 0.02,
                   family_rows: int = FAMILY_ROWS, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Fit, calibrate and save the pack's out-of-pool detector (module docstring); returns its
    figures (also stored in pool_config.json and pack.json)."""
    say = progress or (lambda _msg: None)
    start = time.time()
    pack = store.load_pack(pack_dir, expected_fingerprint=backbone.info.fingerprint)
    if pack.router_state is None:
        raise PoolFitError(f"pack {pack.path} has no router: train one first (train-router)")
    model = pack.build_router()
    layer = model.config.layer
    pairs = [(e.name, e.config.task) for e in pack.experts]
    cal_f, eval_f = outside_families([t for _, t in pairs], data_dir)
    if not cal_f or not eval_f:
        raise PoolFitError("calibration needs task families outside the pack in the data folder "
                           f"(found {cal_f + eval_f})")
    train, held, dev = routing_splits(pairs, data_dir, seed)
    fit_rows, _ = recipe_rows(train, pairs, per_task, seed=seed + 3)
    say(f"features of {len(fit_rows.texts)} training rows")
    fit = features(backbone, model, fit_rows.texts, fit_rows.text_pairs, layer)
    scorer = PoolScorer.fit(fit["dense"], fit_rows.labels, len(pairs), dims=dims,
                            bank_per_class=bank_per_class, seed=seed)
    lm = NgramLM.fit(fit_rows.texts, fit_rows.text_pairs, fit_rows.labels, len(pairs))
    detector = PoolModel(scorer, lm, layer)
    say(f"features of {len(dev.texts)} calibration and {len(held.texts)} held-out rows")
    dev_f = features(backbone, model, dev.texts, dev.text_pairs, layer)
    held_f = features(backbone, model, held.texts, held.text_pairs, layer)
    scorer.temperature = fit_temperature(dev_f["logits"], dev.labels)
    dev_parts = detector.components(dev_f["dense"], dev_f["logits"], dev.texts, dev.text_pairs,
                                    every=True)
    scorer.calibrate(dev_parts, false_flag)                       # z-scores of every component
    fam = {}
    for name, data in _family_rows(cal_f + eval_f, data_dir, family_rows).items():
        say(f"features of {len(data)} rows of {name}")
        f = features(backbone, model, data.texts, data.text_pairs, layer)
        fam[name] = detector.components(f["dense"], f["logits"], data.texts, data.text_pairs,
                                        every=True)
    outside = {k: torch.cat([fam[f][k] for f in cal_f]) for k in dev_parts}
    weights = _learned_weights(dev_parts, outside, scorer)
    threshold = scorer.calibrate(dev_parts, false_flag, weights)
    held_scores = detector.score(held_f["dense"], held_f["logits"], held.texts, held.text_pairs)
    report = ood_report(held_scores, {f: scorer.combine(fam[f]) for f in eval_f}, threshold)
    detector.meta = {"auroc": report["auroc"], "false_flag": report["false_flag"],
                     "caught": report["caught"], "caught_at_tpr95": report["caught_at_tpr95"],
                     "threshold": threshold, "false_flag_target": false_flag,
                     "temperature": scorer.temperature, "weights": weights, "dims": dims,
                     "bank_per_class": bank_per_class, "fit_rows_per_task": per_task,
                     "calibration_families": cal_f, "evaluation_families": eval_f,
                     "families": report["families"], "held_out_rows": len(held.texts),
                     "calibration_rows": len(dev.texts), "seconds": round(time.time() - start, 1)}
    store.update_pack(pack.path, lambda folder, names: poolfiles.write_pool(
        folder, detector, names, pack.base_model))
    return detector.meta


def openworld_report(moe, expert_tasks: Sequence[tuple[str, str]], per_task: int | None,
                     data_dir=None, family_rows: int = FAMILY_ROWS) -> dict | None:
    """AUROC and false flags of a mixture's detector: held-out rows (validation, ``per_task`` a
    task, seed 0) against validation rows of every family outside the pack; None without one."""
    if moe.openworld is None:
        return None
    held = []
    for _, task in expert_tasks:
        data = tasks.load_task(task, "validation", data_dir=data_dir, limit=per_task, seed=0)
        held.append(_route_scores(moe, data))
    cal_f, eval_f = outside_families([t for _, t in expert_tasks], data_dir)
    fams = {f: _route_scores(moe, d) for f, d in _family_rows(cal_f + eval_f, data_dir, family_rows).items()}
    if not fams:
        return None
    report = ood_report(torch.cat(held), fams, moe.openworld.threshold)
    report["calibration_families"], report["evaluation_families"] = cal_f, eval_f
    if eval_f:
        report["evaluation_only"] = ood_report(
            torch.cat(held), {f: fams[f] for f in eval_f}, moe.openworld.threshold)["auroc"]
    return report


def _route_scores(moe, data: tasks.TaskData) -> torch.Tensor:
    """``pool_score`` [N] of the rows as ``predict`` gives it (router and detector only: the
    base model to layer k, no expert pass)."""
    pairs = data.text_pairs or [None] * len(data)
    f = features(moe.backbone, moe.router, data.texts, pairs, moe.openworld.layer)
    return moe.openworld.score(f["dense"], f["logits"], data.texts, pairs)


# ----------------------------------------------------------------------------- growth


def replay_sets(model, feats: dict, labels: torch.Tensor, cal_feats: dict | None, cal_labels,
                seed: int = 0) -> dict:
    """The replay file's rows from a freshly trained router's training (and calibration) rows:
    ``REPLAY_PER_TASK`` / ``CALIBRATION_PER_TASK`` a task, as ``cached_outputs``."""
    idx = replay_sample(labels, REPLAY_PER_TASK, seed)
    sets = {"replay": cached_outputs(model, {k: v[idx] for k, v in feats.items()})
            | {"labels": labels[idx]}}
    if cal_feats is not None:
        cidx = replay_sample(cal_labels, CALIBRATION_PER_TASK, seed)
        sets["calibration"] = cached_outputs(model, {k: v[cidx] for k, v in cal_feats.items()})
    return sets


@_holding_pack
def add_expert(pack_dir: str | Path, expert_dir: str | Path, backbone, data_dir=None, *,
               rows: int = 1000, max_capture: float = 0.0025, seed: int = 0,
               evaluate: int | None = None) -> dict:
    """Add the expert at ``expert_dir`` to the pack and its routing (module docstring). With
    ``evaluate`` = N, N validation rows a task (the new one too) are routed before and after
    (not counted in "seconds"): "old_accuracy_before" / "old_accuracy_after" (old tasks) and
    "new_accuracy" (the new task's rows sent to the new expert)."""
    start = time.time()
    pack_dir = Path(pack_dir)
    pack = store.load_pack(pack_dir, expected_fingerprint=backbone.info.fingerprint)
    expert = store.load_expert(expert_dir, expected_fingerprint=backbone.info.fingerprint)
    check_joins(pack, expert)
    if pack.router_state is None:
        raise PoolFitError(f"pack {pack_dir} has no router: build one with train-router")
    model = pack.build_router()
    base = model.base if isinstance(model, GrownRouter) else model
    replay = poolfiles.read_replay(pack_dir, pack.manifest, base.num_experts,
                                   base.config.buckets)
    if replay is None:
        raise PoolFitError(f"pack {pack_dir} has no replay rows: retrain its router with "
                           "`train-router --variant ngram` (it writes them)")
    source, sets = replay
    detector = poolfiles.read_pool(pack_dir, pack.manifest)
    data = tasks.load_task(expert.config.task, "train", data_dir=data_dir, limit=rows, seed=seed)
    layer = model.config.layer
    new = features(backbone, model, data.texts, data.text_pairs, detector.layer if detector else layer)
    new_cached = cached_outputs(base, new["feats"], source)
    replay_rows = dict(sets["replay"])
    labels = replay_rows.pop("labels")
    grown, info = grow(model, replay_rows, labels, new_cached,
                       calibration=sets.get("calibration"), max_capture=max_capture,
                       source=source)
    if detector is not None:
        detector.add_class(new["dense"], data.texts, data.text_pairs)
    keep = replay_sample(torch.zeros(len(data.texts), dtype=torch.long), REPLAY_PER_TASK, seed)
    sets["replay"] = {k: cat_rows(sets["replay"][k], v) for k, v in (
        {k: new_cached[k][keep] for k in new_cached} | {"labels": torch.full((len(keep),), len(pack.names))}).items()}
    metrics = {**pack.router_metrics, "added": [*pack.router_metrics.get("added", []), {
        "expert": expert.name, "task": expert.config.task, "rows": len(data.texts),
        "max_capture": max_capture, **{k: v for k, v in info.items() if k != "loss"}}]}
    info_base = store.BackboneInfo(**pack.base_model)

    def write(folder: Path, names: list[str]) -> None:
        store.write_expert_into(folder, expert, names)
        names = names + [expert.name]
        store.write_router_into(folder, grown, names, metrics, info_base)
        poolfiles.write_replay(folder, sets, names, pack.base_model, source)
        if detector is not None:
            poolfiles.write_pool(folder, detector, names, pack.base_model)

    store.update_pack(pack_dir, write)
    out = {"name": expert.name, "task": expert.config.task, "seconds": time.time() - start,
           "growth": info, "experts": pack.names + [expert.name]}
    if evaluate:
        pairs = [(e.name, e.config.task) for e in pack.experts] + [(expert.name, expert.config.task)]
        held_out = routing_data(pairs, "validation", evaluate, data_dir, seed)
        before, after = _routed((model, grown), backbone, held_out)
        old = held_out.labels < len(pack.names)
        out["old_accuracy_before"] = float((before[old] == held_out.labels[old]).float().mean())
        out["old_accuracy_after"] = float((after[old] == held_out.labels[old]).float().mean())
        if bool((~old).any()):
            out["new_accuracy"] = float((after[~old] == len(pack.names)).float().mean())
    return out


def _routed(models: Sequence, backbone, rows: RoutingData) -> list[torch.Tensor]:
    """Each model's choice [N] for ``rows`` (features read once: the models share a base)."""
    feats = extract_features(backbone.model, backbone.tokenizer, rows.texts,
                             rows.text_pairs, models[0].config)
    with torch.no_grad():
        return [m.eval()(feats).argmax(-1) for m in models]
