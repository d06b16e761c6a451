"""Routers: pick one expert per input from the frozen base model's representations.

Every router is trained with cross-entropy against the task id on features cached once, while the
base model and the experts stay frozen; inference is argmax (top-1), no noise.

Variants (``RouterConfig.variant``):
- ``paper``: the authors' router: the last hidden state projected to E logits at the last real
  token, with Shazeer noisy gating in training (``logits + N(0,1)·softplus(W_noise · mean h)``).
- ``linear`` / ``mlp``: on the mean-pooled hidden state of layer k.
- ``fusion`` (ours): an MLP over the mean-pooled states of layers 0..k concatenated with cheap
  surface features of the raw text (hashed, cased character n-grams of each segment and segment
  lengths: what the uncased tokenizer cannot see, e.g. SST-2's lower-cased, space-tokenised
  sentences vs CoLA's, or RTE's long news premises vs MNLI's).
Cost: ``linear``/``mlp``/``fusion`` run the base model up to layer k only (k/L of a pass), for
BERT-family encoders and LLaMA-style decoders alike (``layers``).
Randomness (initial weights, dropout, gating noise, batch order) comes from the router's own
generator, seeded with ``RouterConfig.seed`` by ``build_router``; the global RNG is never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ..base import batching
from ..base.backbone import last_token, mean_pool
from ..base.partial import hidden_states
from ..errors import RouterError
from ..runtime import rng

VARIANTS = ("paper", "linear", "mlp", "fusion", "ngram")   # ngram: router_v2 (built by routers)
GROW_SOURCES = ("hidden", "input", "both")
SURFACE_DIM = 512          # hashed char n-gram features per segment


@dataclass
class RouterConfig:
    variant: str = "fusion"
    layer: int | None = 2          # k: deepest base layer read (None: last layer; paper: last)
    hidden: int = 256              # MLP width (mlp, fusion)
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    seed: int = 0
    max_length: int = 128
    added_experts: int = 0         # experts appended later by growth (routers.grow), not retrained
    grow_source: str = "hidden"    # what their logits read (growth.base_outputs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "RouterConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise RouterError(f"unknown router config keys {sorted(unknown)}")
        return cls(**dict(data))

    def resolved(self, num_layers: int) -> "RouterConfig":
        if self.variant not in VARIANTS:
            raise RouterError(f"unknown router variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        layer = num_layers if (self.layer is None or self.variant == "paper") else int(self.layer)
        if not 0 <= layer <= num_layers:
            raise RouterError(f"router layer {layer} out of range 0..{num_layers}")
        if self.added_experts < 0 or self.grow_source not in GROW_SOURCES:
            raise RouterError(f"bad growth settings: {self.added_experts} added experts reading "
                              f"{self.grow_source!r} (use one of {', '.join(GROW_SOURCES)})")
        return RouterConfig(**{**self.to_dict(), "layer": layer})


# ----------------------------------------------------------------------------- features


def surface_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                     dim: int = SURFACE_DIM) -> torch.Tensor:
    """Cased character n-grams (1-4, hashed) of each segment + length statistics: [N, 2*dim+6].

    Both segments of all rows are hashed in one call, without sklearn's per-call argument checks
    (``skip_parameter_validation``, a thread-local setting): the fixed cost matters for one row.
    """
    import sklearn
    from sklearn.feature_extraction.text import HashingVectorizer

    pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
    hasher = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False,
                               n_features=dim, alternate_sign=False, norm="l2")
    with sklearn.config_context(skip_parameter_validation=True):
        hashed = hasher.transform(list(texts) + [p or "" for p in pairs]).toarray()   # [2N, dim]
    first, second = hashed[: len(texts)], hashed[len(texts):]

    def stats(segment: str | None) -> list[float]:
        if not segment:
            return [0.0, 0.0, 0.0]
        words = segment.split()
        return [math.log1p(len(segment)) / 6, math.log1p(len(words)) / 5,
                sum(c.isupper() for c in segment) / max(1, len(segment)) * 10]

    lengths = np.array([stats(t) + stats(p) for t, p in zip(texts, pairs)], dtype=np.float32)
    return torch.from_numpy(np.concatenate([first, second, lengths], axis=1).astype(np.float32))


def text_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                  config: RouterConfig) -> dict[str, torch.Tensor]:
    """Router inputs read from the raw text, N rows at once on the CPU: fusion: "surface"
    [N, F]; {} for the other variants."""
    return {"surface": surface_features(texts, text_pairs)} if config.variant == "fusion" else {}


def state_features(states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                   config: RouterConfig) -> dict[str, torch.Tensor]:
    """Router inputs read from the frozen hidden states 0..k (each [B, T, H]): "pooled"
    [B, k+1, H] mean-pooled; paper: also "last" [B, H] (last real token) and "mean_last" [B, H]."""
    feats = {"pooled": torch.stack([mean_pool(h, attention_mask) for h in states], 1).float()}
    if config.variant == "paper":
        feats["last"] = last_token(states[-1], attention_mask).float()
        feats["mean_last"] = mean_pool(states[-1], attention_mask).float()
    return feats


@torch.no_grad()
def base_states(model: nn.Module, batch: dict[str, torch.Tensor], layer: int) -> list[torch.Tensor]:
    """Hidden states 0..``layer`` of ``model`` with its adapters off (the frozen base model)."""
    from ..adapters import adapters_off

    with adapters_off(batch["input_ids"].shape[0], batch["input_ids"].device):
        return hidden_states(model, batch, layer)


@torch.no_grad()
def batch_features(model: nn.Module, batch: dict[str, torch.Tensor], texts: Sequence[str],
                   text_pairs: Sequence[str | None] | None,
                   config: RouterConfig) -> dict[str, torch.Tensor]:
    """Router inputs of one tokenized batch, read from the base model with adapters off
    (``state_features`` of ``base_states`` and ``text_features``)."""
    feats = state_features(base_states(model, batch, config.layer), batch["attention_mask"], config)
    device = batch["attention_mask"].device
    return feats | {k: v.to(device) for k, v in text_features(texts, text_pairs, config).items()}


def _states_of(states, batch, config):
    return state_features(states, batch["attention_mask"], config)


def extract_features(model: nn.Module, tokenizer, texts: Sequence[str],
                     text_pairs: Sequence[str | None] | None, config: RouterConfig,
                     batch_size: int = 64, max_tokens: int | None = 4096,
                     progress: Callable[[int, int], None] | None = None,
                     state_fn: Callable | None = None, text_fn: Callable | None = None,
                     ) -> dict[str, torch.Tensor]:
    """Router inputs of N rows, on the CPU in input order: rows tokenized once, run in
    length-sorted micro-batches (at most ``batch_size`` rows, ``max_tokens`` padded tokens);
    text features in one call. ``progress(rows done, N)`` after each micro-batch.
    ``state_fn(states, batch, config)`` / ``text_fn(texts, pairs, config)``: the variant's
    feature functions (default: this module's; ``routers`` passes the ngram variant's)."""
    state_fn = state_fn or _states_of
    text_fn = text_fn or text_features
    from ..base.backbone import encode_rows

    device = next(model.parameters()).device
    encoded = encode_rows(tokenizer, texts, text_pairs, config.max_length)
    batches = batching.plan(encoded.lengths, max_tokens, batch_size)
    parts: list[dict[str, torch.Tensor]] = []
    done = 0
    for rows in batches:
        batch = encoded.batch(rows, device)                                   # [B, T_max] each
        states = base_states(model, batch, config.layer)
        parts.append({k: v.cpu() for k, v in state_fn(states, batch, config).items()})
        done += len(rows)
        if progress is not None:
            progress(done, len(encoded))
    feats = {k: batching.restore_order(batches, [p[k] for p in parts]) for k in parts[0]}
    return feats | text_fn(texts, text_pairs, config)


# ----------------------------------------------------------------------------- modules


class Router(nn.Module):
    """Features -> logits [N, E]. Subclasses read the feature keys they need.

    ``generator`` draws dropout masks and noise (and the weights, when built by ``build_router``).
    """

    def __init__(self, config: RouterConfig, num_experts: int, hidden_size: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.generator = rng.given_or_seeded(generator, config.seed)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class PaperRouter(Router):
    """Last hidden state at the last real token -> E logits; noisy gating while training."""

    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.gate = nn.Linear(hidden_size, num_experts)
        self.noise = nn.Linear(hidden_size, num_experts)

    def forward(self, feats):
        logits = self.gate(feats["last"])
        if self.training:
            noise_std = nn.functional.softplus(self.noise(feats["mean_last"]))
            logits = logits + rng.gaussian(logits, self.generator) * noise_std
        return logits


class LinearRouter(Router):
    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.proj = nn.Linear(hidden_size, num_experts)

    def forward(self, feats):
        return self.proj(feats["pooled"][:, self.config.layer])


class MLPRouter(Router):
    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, config.hidden), nn.GELU(),
                                 rng.Dropout(config.dropout, self.generator),
                                 nn.Linear(config.hidden, num_experts))

    def forward(self, feats):
        return self.mlp(feats["pooled"][:, self.config.layer])


class FusionRouter(Router):
    """MLP over [pooled layers 0..k, surface features of the raw text]."""

    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        width = (config.layer + 1) * hidden_size + 2 * SURFACE_DIM + 6
        self.norm = nn.LayerNorm((config.layer + 1) * hidden_size)
        self.mlp = nn.Sequential(nn.Linear(width, config.hidden), nn.GELU(),
                                 rng.Dropout(config.dropout, self.generator),
                                 nn.Linear(config.hidden, num_experts))

    def forward(self, feats):
        pooled = self.norm(feats["pooled"][:, : self.config.layer + 1].flatten(1))
        return self.mlp(torch.cat([pooled, feats["surface"]], dim=1))


ROUTERS: dict[str, type[Router]] = {"paper": PaperRouter, "linear": LinearRouter,
                                    "mlp": MLPRouter, "fusion": FusionRouter}


def build_router(config: RouterConfig, num_experts: int, hidden_size: int, num_layers: int,
                 generator: torch.Generator | None = None) -> Router:
    """A fresh router; ``generator`` (None: one seeded with ``config.seed``) draws its weights
    and stays with it for dropout, noise and ``train_router``'s batch order."""
    config = config.resolved(num_layers)
    if config.variant not in ROUTERS or config.added_experts:
        raise RouterError(f"a {config.variant!r} router (or a grown one) is built by routers.build")
    generator = rng.given_or_seeded(generator, config.seed)
    with rng.drawing_from(generator):
        return ROUTERS[config.variant](config, num_experts, hidden_size, generator)


def router_params(router: Router) -> int:
    return sum(p.numel() for p in router.parameters())


# ----------------------------------------------------------------------------- training


@dataclass
class RouterReport:
    accuracy: float
    confusion: list[list[int]]            # [E, E], rows: true task
    per_task: dict[str, float]            # recall per task
    rows: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _take(feats: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in feats.items()}


def train_router(router: Router, feats: dict[str, torch.Tensor], labels: torch.Tensor,
                 progress: Callable[[int, int, float], None] | None = None) -> list[dict]:
    """Cross-entropy on the task id, Adam, minibatches; returns the loss history per epoch.

    Batch order, dropout and noise come from ``router.generator`` (never the global RNG).
    ``progress(epoch, epochs, loss)`` after each epoch may raise to stop (a cancel); RouterError
    when the loss stops being finite (e.g. too high a learning rate).
    """
    cfg = router.config
    generator = router.generator
    optimizer = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    history = []
    num = labels.shape[0]
    router.train()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(num, generator=generator)
        total = 0.0
        for start in range(0, num, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(router(_take(feats, idx)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        schedule.step()
        if not math.isfinite(total):
            raise RouterError(f"router loss became {total / num} in epoch {epoch}: lower the "
                              f"learning rate (now {cfg.lr:g})")
        history.append({"epoch": epoch, "loss": total / num})
        if progress is not None:
            progress(epoch, cfg.epochs, total / num)
    router.eval()
    return history


@torch.no_grad()
def evaluate_router(router: Router, feats: dict[str, torch.Tensor], labels: torch.Tensor,
                    names: Sequence[str]) -> RouterReport:
    router.eval()
    pred = router(feats).argmax(-1)
    num = len(names)
    confusion = torch.zeros(num, num, dtype=torch.long)
    for true, guess in zip(labels.tolist(), pred.tolist()):
        confusion[true, guess] += 1
    per_task = {name: float(confusion[i, i] / max(1, confusion[i].sum())) for i, name in enumerate(names)}
    return RouterReport(accuracy=float((pred == labels).float().mean()), confusion=confusion.tolist(),
                        per_task=per_task, rows=int(labels.shape[0]))


# ----------------------------------------------------------------------------- data + fitting


@dataclass
class RoutingData:
    texts: list[str]
    text_pairs: list[str | None]
    labels: torch.Tensor          # [N] expert index
    names: list[str]              # expert names, index order
    sources: dict[str, str]


def routing_data(expert_tasks: Sequence[tuple[str, str]], split: str, per_task: int,
                 data_dir=None, seed: int = 0) -> RoutingData:
    """Inputs of each expert's task labelled with the expert's index.

    ``expert_tasks``: (expert name, task) pairs. ``split`` "train" for fitting and "validation"
    for held-out scoring (inputs the router never saw).
    """
    from .. import tasks

    texts, pairs, labels, sources = [], [], [], {}
    for idx, (name, task) in enumerate(expert_tasks):
        data = tasks.load_task(task, split, data_dir=data_dir, limit=per_task, seed=seed)
        texts += data.texts
        pairs += data.text_pairs if data.text_pairs is not None else [None] * len(data)
        labels += [idx] * len(data)
        sources[name] = f"{len(data)} rows of {data.source}"
    return RoutingData(texts, pairs, torch.tensor(labels), [n for n, _ in expert_tasks], sources)


def sweep_layers(config: RouterConfig, layers: Sequence[int], backbone, train: RoutingData,
                 held_out: RoutingData,
                 progress: Callable[[str, int, int], None] | None = None,
                 build_fn: Callable | None = None, extract_fn: Callable | None = None) -> list[dict]:
    """One router per layer k, features cached once at the deepest layer; held-out reports.

    Returns [{"layer", "router", "report", "cost"}], cost = fraction of a full base pass.
    ``build_fn`` / ``extract_fn``: ``build_router`` / ``extract_features`` of another variant
    (``routers.sweep_layers`` passes its own: every variant).
    ``progress(stage, done, total)``: stages "features", "held-out features" (rows) and
    "training layer k" (epochs); it may raise to stop (a cancel).
    """
    num_layers = backbone.info.num_layers
    deepest = config.resolved(num_layers).layer if config.variant == "paper" else max(layers)
    cache_cfg = RouterConfig(**{**config.to_dict(), "layer": deepest}).resolved(num_layers)

    def stage(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    build_fn = build_fn or build_router
    extract = extract_fn or extract_features
    feats = extract(backbone.model, backbone.tokenizer, train.texts, train.text_pairs,
                             cache_cfg, progress=stage("features"))
    held = extract(backbone.model, backbone.tokenizer, held_out.texts,
                            held_out.text_pairs, cache_cfg, progress=stage("held-out features"))
    results = []
    for layer in ([deepest] if config.variant == "paper" else layers):
        cfg = RouterConfig(**{**config.to_dict(), "layer": layer})
        router = build_fn(cfg, len(train.names), backbone.info.hidden_size, num_layers)
        history = train_router(router, feats, train.labels, progress=(
            lambda epoch, epochs, _loss, k=router.config.layer:
            progress(f"training layer {k}", epoch, epochs)) if progress else None)
        report = evaluate_router(router, held, held_out.labels, train.names)
        report.history = history
        results.append({"layer": router.config.layer, "router": router, "report": report,
                        "cost": router.config.layer / num_layers})
    return results


def router_metrics(result: dict, train_rows: int, held_out_rows: int, sources: dict[str, str],
                   sweep: Sequence[dict] | None = None) -> dict:
    """The metrics stored with a router: ``result`` (one entry of ``sweep_layers``) as its held-out
    report without the loss history, the data sizes and sources, and, given the whole ``sweep``,
    the accuracy per layer and the chosen layer's cost (fraction of a full base pass)."""
    metrics = {k: v for k, v in result["report"].to_dict().items() if k != "history"}
    metrics.update(train_rows=train_rows, held_out_rows=held_out_rows, sources=dict(sources))
    if sweep is not None:
        metrics["per_layer"] = {str(r["layer"]): r["report"].accuracy for r in sweep}
        metrics["cost_fraction_of_pass"] = result["cost"]
    return metrics
