"""Routing study of issue 14: better routers, out-of-pool detection, growing the pool, Arrow.

    python studies/routing_cache.py                 # MiniLM representations, once (/tmp/route_cache)
    python studies/routing_study.py routers         # router variants (accuracy, casing, params)
    python studies/routing_study.py speed           # ms per input of each router, one thread
    python studies/routing_study.py ood             # pool_score: AUROC, false flags
    python studies/routing_study.py grow [--task mrpc]   # a seventh expert without retraining
    python studies/routing_study.py arrow           # zero-shot routing from the TT cores

Protocol (NOTES.md "Routing"): held-out rows = ``routing_data(validation, 500, seed 0)`` of the six
demo tasks, never trained on; ``dev`` = other validation rows (RTE: train rows outside the
2,000) for choices (temperature, OOD weights and threshold). Results: <cache>/results/<cmd>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from routing_cache import CACHE, OUTSIDE

from ttmoe_core import routing, store

PACK = Path(__file__).resolve().parents[1] / "assets" / "demo"
NAMES = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
_SETS: dict[str, dict] = {}


def load(name: str) -> dict:
    if name not in _SETS:
        _SETS[name] = torch.load(CACHE / f"{name}.pt")
    return _SETS[name]


def take(data: dict, idx) -> dict:
    """Rows ``idx`` of a cached row set (texts, labels and representations)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    out = {"names": data["names"]}
    for key in ("texts", "pairs", "tasks"):
        out[key] = [data[key][i] for i in idx.tolist()]
    for key in ("labels", "pooled", "seg", "cls", "lengths"):
        if key in data:
            out[key] = data[key][idx]
    return out


def lowered(data: dict) -> dict:
    """The same rows lower-cased (MiniLM's tokenizer is uncased: its states do not change)."""
    return {**data, "texts": [t.lower() for t in data["texts"]],
            "pairs": [p.lower() if p else p for p in data["pairs"]]}


def features(data: dict, variant: str, layer: int = 2) -> dict[str, torch.Tensor]:
    """Router inputs of cached rows for ``variant`` ("fusion" | "ngram" | "attn")."""
    pooled = data["pooled"][:, : layer + 1].float()
    if variant == "fusion":
        return {"pooled": pooled, "surface": routing.surface_features(data["texts"], data["pairs"])}
    ids, weights = routing.ngram_features(data["texts"], data["pairs"])
    return {"pooled": pooled, "seg": data["seg"][:, : layer + 1].float(), "ngram_ids": ids,
            "ngram_w": weights, "flags": routing.text_flags(data["texts"], data["pairs"])}


def sentence_level(text: str) -> bool:
    """An SST-2 training row that is a whole sentence (SST-2 validation rows are), not a phrase
    of a parse tree: ends in . ! ? and has at least 8 words."""
    return text.rstrip()[-1:] in ".!?" and len(text.split()) >= 8


def balanced(data: dict, cap: int, seed: int = 0, keep=None) -> torch.Tensor:
    """Row indices with ``cap`` rows per task: a seeded sample of larger tasks, every row of
    smaller ones repeated (with a seeded remainder) up to ``cap``. ``keep``: row filter [N] bool."""
    gen = torch.Generator().manual_seed(seed)
    labels = data["labels"]
    out = []
    for c in range(len(data["names"])):
        mask = labels == c if keep is None else (labels == c) & keep
        idx = torch.nonzero(mask).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        reps = -(-cap // max(1, len(idx)))
        out.append(idx.repeat(reps)[:cap])
    return torch.cat(out)


def train(variant: str, data: dict, idx=None, epochs: int = 20, hidden: int = 256,
          seed: int = 0) -> tuple[torch.nn.Module, float]:
    """A router of ``variant`` trained on rows ``idx`` of ``data`` (all: None); (router, seconds)."""
    idx = torch.arange(len(data["texts"])) if idx is None else idx
    rows = take(data, idx)
    start = time.time()
    feats = features(rows, variant)
    cfg = routing.RouterConfig(variant=variant, layer=2, hidden=hidden, epochs=epochs, seed=seed)
    model = routing.build(cfg, len(NAMES), 384, 6)
    routing.train_router(model, feats, rows["labels"])
    return model, time.time() - start


@torch.no_grad()
def logits_of(model, variant: str, data: dict) -> torch.Tensor:
    model.eval()
    return model(features(data, variant))                                 # [N, E]


def report(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    per = {n: float((pred[labels == i] == i).float().mean()) for i, n in enumerate(NAMES)
           if (labels == i).any()}
    return {"accuracy": float((pred == labels).float().mean()), "per_task": per,
            "mnli_to_rte": int(((labels == 0) & (pred == 2)).sum()),
            "sst2_to_cola": int(((labels == 3) & (pred == 1)).sum()),
            "cola_to_sst2": int(((labels == 1) & (pred == 3)).sum())}


def assess(model, variant: str, seconds: float = 0.0, note: str = "") -> dict:
    """Held-out accuracy, lower-cased held-out accuracy and agreement, natural SST-2 rows."""
    held, natural = load("held"), load("held_natural")
    cased = logits_of(model, variant, held).argmax(-1)
    lower = logits_of(model, variant, lowered(held)).argmax(-1)
    nat = logits_of(model, variant, natural).argmax(-1)
    out = {"variant": variant, "note": note, "train_seconds": round(seconds, 1),
           "params": sum(p.numel() for p in model.parameters()),
           "held": report(cased, held["labels"]), "lower": report(lower, held["labels"]),
           "lower_agreement": float((cased == lower).float().mean()),
           "natural_sst2": float((nat == 3).float().mean())}
    h = out["held"]
    print(f"| {note} | {h['accuracy']:.2%} | {out['lower']['accuracy']:.2%} | "
          f"{out['lower_agreement']:.2%} | {out['natural_sst2']:.1%} | "
          f"{h['per_task']['mnli']:.1%} | {h['per_task']['rte']:.1%} | {h['per_task']['sst2']:.1%} | "
          f"{h['per_task']['cola']:.1%} | {out['params']:,} | {seconds:.0f} s |", flush=True)
    return out


def shipped() -> torch.nn.Module:
    return store.load_pack(PACK).build_router()


def all_rows(sentences_only: bool = False) -> tuple[dict, torch.Tensor | None]:
    """Every training row of the six tasks; with ``sentences_only`` SST-2 keeps whole sentences."""
    data = load("all_train")
    if not sentences_only:
        return data, None
    keep = torch.tensor([t != "sst2" or sentence_level(x) for t, x in zip(data["tasks"], data["texts"])])
    return data, keep


def hard_mined(variant: str, data: dict, idx: torch.Tensor, epochs: int, factor: int = 3) -> torch.Tensor:
    """Round two of hard-example mining: a 2-fold cross-fitted first round scores every training
    row; MNLI and RTE rows it misroutes, or routes with a margin under 1 logit, appear ``factor``
    times in the returned index."""
    gen = torch.Generator().manual_seed(7)
    order = idx[torch.randperm(len(idx), generator=gen)]
    halves = [order[: len(order) // 2], order[len(order) // 2:]]
    hard = []
    for fit, score in (halves, halves[::-1]):
        model, _ = train(variant, data, fit, epochs=epochs)
        rows = take(data, score)
        logits = logits_of(model, variant, rows)
        top2 = logits.topk(2, -1)
        right = logits.gather(1, rows["labels"][:, None]).squeeze(1)
        margin = right - torch.where(top2.indices[:, 0] == rows["labels"], top2.values[:, 1],
                                     top2.values[:, 0])
        nli = (rows["labels"] == 0) | (rows["labels"] == 2)
        hard.append(score[nli & (margin < 1.0)])
    hard = torch.unique(torch.cat(hard))
    print(f"hard MNLI/RTE rows: {len(hard)}", flush=True)
    return torch.cat([idx] + [hard] * (factor - 1))


def cmd_routers(args) -> dict:
    print("| router | held-out | lower-cased | same route cased/lower | natural SST-2 | MNLI | RTE "
          "| SST-2 | CoLA | params | train |\n|---|---|---|---|---|---|---|---|---|---|---|")
    results = [assess(shipped(), "fusion", note="shipped fusion (2,000/task)")]
    train2k = load("train2k")
    for variant in ("fusion", "ngram"):
        model, sec = train(variant, train2k, epochs=args.epochs)
        results.append(assess(model, variant, sec, f"{variant}, 2,000/task"))
    data, keep = all_rows()
    cap = args.cap
    for variant in ("fusion", "ngram"):
        model, sec = train(variant, data, balanced(data, cap), epochs=args.epochs_all)
        results.append(assess(model, variant, sec, f"{variant}, all rows ({cap:,}/task balanced)"))
    data, keep = all_rows(sentences_only=True)
    idx = balanced(data, cap, keep=keep)
    for variant in ("fusion", "ngram"):
        model, sec = train(variant, data, idx, epochs=args.epochs_all)
        results.append(assess(model, variant, sec, f"{variant}, all rows, SST-2 sentences only"))
    start = time.time()
    mined = hard_mined("ngram", data, idx, args.epochs_all)
    model, sec = train("ngram", data, mined, epochs=args.epochs_all)
    results.append(assess(model, "ngram", time.time() - start,
                          "ngram, all rows, SST-2 sentences, hard MNLI/RTE ×3"))
    return {"results": results}


# ----------------------------------------------------------------------------- (b) attention pooling


class AttnNgram(torch.nn.Module):
    """The ``ngram`` router plus attention pooling over the tokens of layers 0..2: per layer, 4
    learned queries attend over the real tokens (zero init = mean pooling); the 12 pooled vectors
    join the MLP's input. Token states: ``tokens`` [B, T, 3, H], ``mask`` [B, T]."""

    def __init__(self, cfg, heads: int = 4):
        super().__init__()
        self.inner = routing.build(cfg, len(NAMES), 384, 6)
        self.config, self.generator = self.inner.config, self.inner.generator
        self.queries = torch.nn.Parameter(torch.zeros(3, heads, 384))
        self.norm = torch.nn.LayerNorm(3 * heads * 384)
        self.proj = torch.nn.Linear(3 * heads * 384, cfg.hidden)

    def forward(self, feats):
        tok, mask = feats["tokens"], feats["mask"]                          # [B, T, 3, H], [B, T]
        att = torch.einsum("btlh,lqh->blqt", tok, self.queries) / 384 ** 0.5
        att = att.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        pooled = torch.einsum("blqt,btlh->blqh", att, tok).flatten(1)       # [B, 3·heads·H]
        mlp = self.inner.mlp
        hidden = mlp[0](self.inner.dense_input(feats)) + self.proj(self.norm(pooled))
        return mlp[3](mlp[2](mlp[1](hidden))) + self.inner.ngram_logits(feats)


def token_batch(data: dict, rows: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Padded token states [B, T, 3, H] and mask [B, T] of ``rows`` of a cached token set."""
    lengths = data["lengths"][rows]
    width = int(lengths.max())
    tok = torch.zeros(len(rows), width, 3, 384)
    for b, (r, n) in enumerate(zip(rows.tolist(), lengths.tolist())):
        tok[b, :n] = data["tokens"][starts[r]: starts[r] + n].float()
    return {"tokens": tok, "mask": torch.arange(width)[None] < lengths[:, None]}


def attn_logits(model, data: dict, feats: dict, batch: int = 256) -> torch.Tensor:
    starts = torch.cat([torch.zeros(1, dtype=torch.long), data["lengths"].cumsum(0)[:-1]])
    out = []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(data["texts"]), batch):
            rows = torch.arange(lo, min(lo + batch, len(data["texts"])))
            part = {k: v[rows] for k, v in feats.items()} | token_batch(data, rows, starts)
            out.append(model(part))
    return torch.cat(out)


def cmd_attention(args) -> dict:
    """(b) on the 2,000/task rows (token states are cached for those): ngram vs ngram + attention."""
    data, held = load("train2k"), load("held")
    cfg = routing.RouterConfig(variant="ngram", layer=2, hidden=256, epochs=args.epochs)
    model = AttnNgram(cfg)
    feats = features(data, "ngram")
    starts = torch.cat([torch.zeros(1, dtype=torch.long), data["lengths"].cumsum(0)[:-1]])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    start = time.time()
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(data["texts"]), generator=model.generator).split(cfg.batch_size):
            part = {k: v[idx] for k, v in feats.items()} | token_batch(data, idx, starts)
            loss = torch.nn.functional.cross_entropy(model(part), data["labels"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    seconds = time.time() - start
    pred = attn_logits(model, held, features(held, "ngram")).argmax(-1)
    out = {"note": "ngram + attention pooling (layers 0..2, 4 queries each), 2,000/task",
           "held": report(pred, held["labels"]), "train_seconds": seconds,
           "params": sum(p.numel() for p in model.parameters())}
    print(out)
    return out


# ----------------------------------------------------------------------------- final router, (e), speed

MODELS = CACHE / "models"


def rte_dev_rows(data: dict) -> torch.Tensor:
    """[N] bool: the RTE training rows outside the shipped router's 2,000 (``dev``'s RTE rows)."""
    from routing_cache import _subset_index

    rte = torch.nonzero(torch.tensor([t == "rte" for t in data["tasks"]])).flatten()
    inside = torch.as_tensor(_subset_index(len(rte), 2000, 0))
    mask = torch.zeros(len(data["tasks"]), dtype=torch.bool)
    mask[rte] = True
    mask[rte[inside]] = False
    return mask


def final_router(args, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """The chosen variant (ROUTING_STUDY.md): ngram, every training row except ``dev``'s RTE rows,
    SST-2 whole sentences, balanced to ``--cap`` rows a task; cached in <cache>/models."""
    suffix = (f"_e{args.epochs_all}" if args.epochs_all != 8 else "") + (f"_s{seed}" if seed else "")
    path = MODELS / f"final_{args.cap}{suffix}.pt"
    cfg = routing.RouterConfig(variant="ngram", layer=2, hidden=256, epochs=args.epochs_all, seed=seed)
    model = routing.build(cfg, len(NAMES), 384, 6)
    if path.exists():
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return model.eval(), saved["seconds"]
    data, keep = all_rows(sentences_only=True)
    keep = keep & ~rte_dev_rows(data)
    model, seconds = train("ngram", data, balanced(data, args.cap, seed=seed, keep=keep),
                           epochs=args.epochs_all, seed=seed)
    MODELS.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "seconds": seconds}, path)
    return model, seconds


def cmd_final(args) -> dict:
    """The chosen router: accuracy, casing, and (e) temperature / bias calibration on ``dev``."""
    model, seconds = final_router(args)
    out = assess(model, "ngram", seconds, f"ngram final, all rows (cap {args.cap:,}), SST-2 sentences")
    dev, held = load("dev"), load("held")
    dev_logits, held_logits = logits_of(model, "ngram", dev), logits_of(model, "ngram", held)
    t = routing.fit_temperature(dev_logits, dev["labels"])
    ece = {f"T={tt:.2f}": routing.expected_calibration_error(torch.softmax(held_logits / tt, -1),
                                                             held["labels"]) for tt in (1.0, t)}
    nll = {f"T={tt:.2f}": float(torch.nn.functional.cross_entropy(held_logits / tt, held["labels"]))
           for tt in (1.0, t)}
    bias = torch.zeros(len(NAMES), requires_grad=True)
    opt = torch.optim.LBFGS([bias], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(dev_logits / t + bias, dev["labels"])
        loss.backward()
        return loss

    opt.step(closure)
    biased = report((held_logits / t + bias.detach()).argmax(-1), held["labels"])
    out.update(temperature=t, ece_held=ece, nll_held=nll, bias=bias.detach().tolist(),
               held_with_dev_bias=biased)
    print(json.dumps({k: out[k] for k in ("temperature", "ece_held", "nll_held", "bias")}))
    print("with per-task logit biases fitted on dev:", json.dumps(biased))
    return out


def cmd_ensemble(args) -> dict:
    """Three seeds of the final recipe (``--cap``, ``--epochs-all``) and their mean logits."""
    held = load("held")
    models = [final_router(args, seed)[0] for seed in range(3)]
    logits = [logits_of(m, "ngram", held) for m in models]
    out = {"seeds": [report(lg.argmax(-1), held["labels"]) for lg in logits],
           "ensemble": report(torch.stack(logits).mean(0).argmax(-1), held["labels"])}
    print(json.dumps(out))
    return out


def route_timed(model, variant: str, data: dict, bb, repeats: int = 3) -> float:
    """ms per input of routing ``data``'s rows end to end (tokenize, MiniLM to layer 2, features,
    router) in length-sorted micro-batches of <= 16 rows / 1,024 tokens, one thread; best of
    ``repeats``."""
    from ttmoe_core.base import backbone, batching

    cfg = routing.RouterConfig(variant=variant, layer=2)
    extract = routing.batch_features
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        enc = backbone.encode_rows(bb.tokenizer, data["texts"], data["pairs"], 128)
        with torch.no_grad():
            for rows in batching.plan(enc.lengths, 1024, 16):
                part = enc.take(rows)
                feats = extract(bb.model, enc.batch(rows, "cpu"), part.texts, part.text_pairs, cfg)
                model(feats)
        best = min(best, (time.perf_counter() - start) / len(data["texts"]) * 1000)
    return best


def cmd_speed(args) -> dict:
    from ttmoe_core.base import backbone

    bb = backbone.load_backbone(None, device="cpu")
    held = load("held")
    idx = torch.cat([torch.nonzero(held["labels"] == c).flatten()[:50] for c in range(len(NAMES))])
    rows = take(held, idx)
    model, _ = final_router(args)
    out = {"rows": len(idx), "fusion (shipped)": route_timed(shipped(), "fusion", rows, bb),
           "ngram (final)": route_timed(model.eval(), "ngram", rows, bb)}
    print(out)
    return out


# ----------------------------------------------------------------------------- out-of-pool

CALIBRATION = ("mrpc", "cb", "boolq", "winogrande_l", "socialiqa")   # choose weights
EVALUATION = ("stsb", "sick", "scitail", "csqa", "cosmosqa")          # report
CANDIDATES = {"msp": {"msp": 1}, "energy": {"energy": 1}, "maha": {"maha": 1}, "knn": {"knn": 1},
              "lm": {"lm": 1}, "maha+knn": {"maha": 1, "knn": 1},
              "energy+maha+knn+lm": {"energy": 1, "maha": 1, "knn": 1, "lm": 1}}


POOL_DIMS = [None]        # --pool-dims: principal directions kept by the pool scorer


def dense(data: dict) -> torch.Tensor:
    """The feature space of ``maha`` / ``knn``: pooled ⊕ per-segment pooled states of layers 0..2
    [N, 3·3·H] (what the ngram router reads)."""
    return torch.cat([data["pooled"][:, :3].flatten(1), data["seg"][:, :3].flatten(1)], 1).float()


def pool_model(model, per_task: int = 2000) -> tuple[routing.PoolScorer, routing.NgramLM, float]:
    """Pool statistics and n-gram model from a seeded sample of the router's training rows."""
    start = time.time()
    data, keep = all_rows(sentences_only=True)
    keep = keep & ~rte_dev_rows(data)          # dev's RTE rows calibrate: never fitted on
    sample = torch.unique(balanced(data, per_task, seed=3, keep=keep))
    rows = take(data, sample)
    scorer = routing.PoolScorer.fit(dense(rows), rows["labels"], len(NAMES), bank_per_class=500,
                                    dims=POOL_DIMS[0])
    lm = routing.NgramLM.fit(rows["texts"], rows["pairs"], rows["labels"], len(NAMES))
    return scorer, lm, time.time() - start


def components(scorer, lm, model, data: dict, variant: str = "ngram") -> dict[str, torch.Tensor]:
    return scorer.components(dense(data), logits_of(model, variant, data),
                             lm.loglik(data["texts"], data["pairs"]))


def by_family(parts: dict[str, torch.Tensor], data: dict, families) -> dict[str, dict]:
    return {f: {k: v[torch.tensor([t == f for t in data["tasks"]])] for k, v in parts.items()}
            for f in families}


def learned_weights(dev_parts: dict, cal_parts: dict, scorer,
                    names=("msp", "energy", "maha", "knn", "lm")) -> dict[str, float]:
    """Logistic-regression weights of the z-scored components ``names``, dev (in pool) vs
    calibration families (outside); a fit of len(names) numbers."""
    from sklearn.linear_model import LogisticRegression


    def z(parts):
        return torch.stack([(parts[n].double() - scorer.z[n][0]) / scorer.z[n][1] for n in names], 1)

    x = torch.cat([z(dev_parts), z(cal_parts)]).numpy()
    y = [1] * len(dev_parts["lm"]) + [0] * len(cal_parts["lm"])
    fit = LogisticRegression(C=1.0, class_weight="balanced").fit(x, y)
    return {n: float(w) for n, w in zip(names, fit.coef_[0])}


def cmd_ood(args) -> dict:
    model, _ = final_router(args)
    scorer, lm, fit_seconds = pool_model(model)
    dev, held, out = load("dev"), load("held"), load("outside")
    scorer.temperature = routing.fit_temperature(logits_of(model, "ngram", dev), dev["labels"])
    parts = {name: components(scorer, lm, model, d) for name, d in (("dev", dev), ("held", held), ("out", out))}
    fam = by_family(parts["out"], out, OUTSIDE)
    cal = {k: torch.cat([fam[f][k] for f in CALIBRATION]) for k in parts["dev"]}
    scorer.calibrate(parts["dev"], args.false_flag)
    candidates = dict(CANDIDATES, learned=learned_weights(parts["dev"], cal, scorer))
    candidates["learned, no state-space stats (msp, energy, lm)"] = learned_weights(
        parts["dev"], cal, scorer, ("msp", "energy", "lm"))
    results = {}
    print("| score | AUROC dev vs calibration families | AUROC held vs evaluation families | "
          "false flags (held) | caught (evaluation families) | AUROC all 10 families |\n"
          "|---|---|---|---|---|---|")
    for name, weights in candidates.items():
        threshold = scorer.calibrate(parts["dev"], args.false_flag, weights)
        cal_auc = routing.auroc(scorer.combine(parts["dev"]), scorer.combine(cal))
        held_s = scorer.combine(parts["held"])
        rep = routing.ood_report(held_s, {f: scorer.combine(fam[f]) for f in EVALUATION}, threshold)
        every = routing.ood_report(held_s, {f: scorer.combine(fam[f]) for f in OUTSIDE}, threshold)
        results[name] = {"weights": weights, "calibration_auroc": cal_auc, "evaluation": rep,
                         "all_families": every}
        print(f"| {name} | {cal_auc:.3f} | {rep['auroc']:.3f} | {rep['false_flag']:.1%} | "
              f"{rep['caught']:.1%} | {every['auroc']:.3f} |", flush=True)
    chosen = "learned" if args.chosen is None else args.chosen   # the best on calibration families
    print(f"chosen on calibration families: {chosen}")
    threshold = scorer.calibrate(parts["dev"], args.false_flag, results[chosen]["weights"])
    held_s = scorer.combine(parts["held"])
    flagged = {n: float((held_s[held["labels"] == i] < threshold).float().mean()) for i, n in enumerate(NAMES)}
    results[chosen]["false_flag_per_task"] = flagged
    print("  held rows flagged per task:", {n: f"{v:.1%}" for n, v in flagged.items()})
    for f, r in results[chosen]["all_families"]["families"].items():
        print(f"  {f}: AUROC {r['auroc']:.3f}, caught {r['caught']:.1%} ({r['rows']} rows)"
              f"{' [calibration]' if f in CALIBRATION else ''}")
    base = shipped()
    base_parts = {n: routing.PoolScorer.components(scorer, dense(d), logits_of(base, "fusion", d))
                  for n, d in (("held", held), ("out", out))}
    base_fam = by_family(base_parts["out"], out, EVALUATION)
    shipped_auc = {c: routing.auroc(base_parts["held"][c], torch.cat([base_fam[f][c] for f in EVALUATION]))
                   for c in ("msp", "energy")}
    print("shipped fusion router, held vs evaluation families:", shipped_auc)
    return {"results": results, "chosen": chosen, "temperature": scorer.temperature,
            "fit_seconds": fit_seconds, "shipped": shipped_auc,
            "calibration_families": CALIBRATION, "evaluation_families": EVALUATION}


# ----------------------------------------------------------------------------- growth, Arrow


def seven_way(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"accuracy": float((pred == labels).float().mean()),
            "per_task": {n: float((pred[labels == i] == i).float().mean())
                         for i, n in enumerate(NAMES + ["new"]) if (labels == i).any()}}


def cmd_grow(args) -> dict:
    """A seventh expert (``--task``) added to the final router by ``growth.grow_router``."""
    from ttmoe_core.base import backbone
    from ttmoe_core.routing import growth
    from ttmoe_core.tasks import load_task

    model, _ = final_router(args)
    held = load("held")
    new_val = load(f"{args.task}_val")
    before = logits_of(model, "ngram", held).argmax(-1)
    # replay: 300 training rows a task, features as the pack would store them
    data, keep = all_rows(sentences_only=True)
    replay_idx = torch.cat([torch.nonzero((data["labels"] == c) & keep).flatten() for c in range(6)])
    replay_idx = replay_idx[growth.replay_sample(data["labels"][replay_idx], args.replay)]
    replay = take(data, replay_idx)
    replay_feats = features(replay, "ngram")
    # the new task: rows read from the data folder and run through MiniLM now (timed)
    bb = backbone.load_backbone(None, device="cpu")
    start = time.time()
    rows = load_task(args.task, "train", limit=args.new_rows, seed=0)
    enc = backbone.encode_rows(bb.tokenizer, rows.texts, rows.text_pairs, 128)
    from ttmoe_core.base import batching

    cfg = routing.RouterConfig(variant="ngram", layer=2)
    parts, order = [], batching.plan(enc.lengths, 4096, 128)
    for batch_rows in order:
        part = enc.take(batch_rows)
        parts.append(routing.batch_features(bb.model, enc.batch(batch_rows, "cpu"), part.texts,
                                            part.text_pairs, cfg))
    width = max(p["ngram_ids"].shape[1] for p in parts)
    new_feats = {}
    for key in parts[0]:
        chunks = [torch.nn.functional.pad(p[key], (0, width - p[key].shape[1])) if key.startswith("ngram")
                  else p[key] for p in parts]
        new_feats[key] = batching.restore_order(order, chunks)
    extract_seconds = time.time() - start
    dev_feats = features(load("dev"), "ngram")     # old tasks' rows never trained on: the budget
    out = {"task": args.task, "source": args.source, "new_rows": len(rows), "replay_rows": len(replay_idx),
           "extract_seconds": extract_seconds, "old_before": seven_way(before, held["labels"])}
    for label, budget in (("no_budget", None), ("budget", dev_feats)):
        fit_start = time.time()
        grown, info = growth.grow_router(model, replay_feats, replay["labels"], new_feats,
                                         calibration=budget, max_capture=args.max_capture,
                                         source=args.source)
        after = logits_of(grown, "ngram", held).argmax(-1)
        new_pred = logits_of(grown, "ngram", new_val).argmax(-1)
        out[label] = {"fit_seconds": time.time() - fit_start,
                      "total_seconds": extract_seconds + time.time() - fit_start, **info,
                      "old_after": seven_way(after, held["labels"]),
                      "old_changed_rows": int((before != after).sum()),
                      "old_to_new": int((after == 6).sum()),
                      "new_task_accuracy": float((new_pred == 6).float().mean()),
                      "new_task_routed_to": {n: int((new_pred == i).sum())
                                             for i, n in enumerate(NAMES + [args.task])}}
    out["added_params"] = sum(p.numel() for n, p in grown.named_parameters() if not n.startswith("base."))
    # the pool scorer grows the same way: one mean, its bank rows and its n-gram tables
    scorer, lm, _ = pool_model(model)
    dev = load("dev")
    scorer.temperature = routing.fit_temperature(logits_of(model, "ngram", dev), dev["labels"])
    scorer.calibrate(components(scorer, lm, model, dev), args.false_flag,
                     {"energy": 1, "maha": 1, "knn": 1, "lm": 1})
    start = time.time()
    train_rows = load(f"{args.task}_train")
    scorer.add_class(dense(train_rows))
    lm.add_class(train_rows["texts"], train_rows["pairs"])
    out["pool_grow_seconds"] = time.time() - start
    new_scores = scorer.combine(components(scorer, lm, grown, new_val))
    out["new_task_flagged_after"] = float((new_scores < scorer.threshold).float().mean())
    print(json.dumps(out, indent=1))
    return out


def cmd_scratch(args) -> dict:
    """The reference for ``grow``: the final recipe retrained from scratch on seven tasks (the
    old six + ``--task``'s train rows, repeated up to ``--cap``)."""
    from ttmoe_core.routing import growth

    data, keep = all_rows(sentences_only=True)
    old = take(data, balanced(data, args.cap, keep=keep & ~rte_dev_rows(data)))
    extra = load(f"{args.task}_train")
    new = take(extra, torch.arange(len(extra["texts"])).repeat(-(-args.cap // len(extra["texts"])))[: args.cap])
    start = time.time()
    f_old, f_new = features(old, "ngram"), features(new, "ngram")
    feats = {k: growth.cat_rows(f_old[k], f_new[k]) for k in f_old}
    labels = torch.cat([old["labels"], torch.full((len(new["texts"]),), len(NAMES))])
    cfg = routing.RouterConfig(variant="ngram", layer=2, hidden=256, epochs=args.epochs_all)
    model = routing.build(cfg, len(NAMES) + 1, 384, 6)
    routing.train_router(model, feats, labels)
    seconds = time.time() - start
    held, val = load("held"), load(f"{args.task}_val")
    out = {"task": args.task, "seconds": seconds,
           "old": seven_way(logits_of(model, "ngram", held).argmax(-1), held["labels"]),
           "new_task_accuracy": float((logits_of(model, "ngram", val).argmax(-1) == len(NAMES)).float().mean())}
    print(json.dumps(out))
    return out


def cmd_arrow(args) -> dict:
    """Zero-shot Arrow routing from the demo experts' TT cores (+ a quickly trained seventh)."""
    import arrow

    from ttmoe_core.base import backbone, batching
    from ttmoe_core.base import partial as layers
    from ttmoe_core.store import load_expert

    pack = store.load_pack(PACK)
    bb = backbone.load_backbone(None, device="cpu")
    experts = list(pack.experts)
    extra = Path(args.seventh)
    if extra.exists():
        experts.append(load_expert(extra))
    start = time.time()
    arrow_router = arrow.ArrowRouter(experts, top=4)
    prototype_seconds = time.time() - start
    out = {"experts": [e.name for e in experts], "prototype_seconds": prototype_seconds}
    sets = [("dev", load("dev")), ("held", load("held"))]
    sets += [("new", load(f"{args.task}_val"))] if extra.exists() else []
    scores = {}
    for set_name, data in sets:
        enc = backbone.encode_rows(bb.tokenizer, data["texts"], data["pairs"], 128)
        order = batching.plan(enc.lengths, 4096, 64)
        parts = {m: [] for m in ("arrow", "energy")}
        start = time.time()
        with torch.no_grad():
            for rows in order:
                batch = enc.batch(rows, "cpu")
                states = layers.hidden_states(bb.model, batch, 5)
                for mode, chunks in parts.items():
                    chunks.append(arrow_router.scores(states, batch["attention_mask"], mode))
        out[f"{set_name}_ms_per_input"] = (time.time() - start) / len(data["texts"]) * 1000
        scores[set_name] = {m: batching.restore_order(order, v) for m, v in parts.items()}
    for set_name, data in sets[1:]:
        labels = data["labels"] if set_name == "held" else torch.full((len(data["texts"]),), 6)
        for mode in ("arrow", "energy"):
            for standard in (False, True):
                arrow_router.center = None
                if standard:    # per-expert scale from the unlabeled dev rows
                    arrow_router.standardise(scores["dev"][mode])
                pred = arrow_router.decide(scores[set_name][mode])
                confusion = [[int(((labels == i) & (pred == j)).sum()) for j in range(len(experts))]
                             for i in range(len(experts)) if (labels == i).any()]
                key = f"{set_name}_{mode}{'_standardised' if standard else ''}"
                out[key] = {"accuracy": float((pred == labels).float().mean()), "confusion": confusion}
                print(key, f"{out[key]['accuracy']:.2%}", confusion, flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epochs-all", type=int, default=8)
    parser.add_argument("--cap", type=int, default=8000)
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--false-flag", type=float, default=0.02)
    parser.add_argument("--chosen", default=None, help="ood: the score whose details are printed")
    parser.add_argument("--pool-dims", type=int, default=None,
                        help="ood/grow: principal directions the pool scorer keeps (None: all)")
    parser.add_argument("--replay", type=int, default=300, help="replay rows a task (grow)")
    parser.add_argument("--new-rows", type=int, default=1000, help="new task's rows (grow)")
    parser.add_argument("--max-capture", type=float, default=0.0025,
                        help="share of old tasks' dev rows the new expert may take (grow)")
    parser.add_argument("--source", default="hidden", choices=("hidden", "input", "both"),
                        help="what the new logit reads (grow; growth.base_outputs)")
    parser.add_argument("--seventh", default="/tmp/mrpc60", help="seventh expert folder (arrow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    POOL_DIMS[0] = args.pool_dims
    start = time.time()
    out = COMMANDS[args.command](args)
    out["seconds"] = round(time.time() - start, 1)
    (CACHE / "results").mkdir(parents=True, exist_ok=True)
    suffix = {"grow": f"_{args.task}_{args.source}", "scratch": f"_{args.task}",
              "ood": f"_dims{args.pool_dims}" if args.pool_dims else ""}.get(args.command, "")
    path = CACHE / "results" / f"{args.command}{suffix}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path} ({out['seconds']:.0f} s)")


COMMANDS = {"routers": cmd_routers, "attention": cmd_attention, "final": cmd_final,
            "speed": cmd_speed, "ood": cmd_ood, "grow": cmd_grow, "arrow": cmd_arrow,
            "ensemble": cmd_ensemble, "scratch": cmd_scratch}

if __name__ == "__main__":
    main()
