"""TTLoRAMoE: one frozen base model, a pool of E frozen TT-LoRA experts, and a router.

``predict`` serves a batch whose rows belong to different tasks. Rows are tokenized once
(``prepare``), sorted by length and cut into micro-batches by a token budget (``batching``), so
the cost tracks real tokens, not the longest row; repeated rows run once. Per micro-batch:
1. route: the router reads the frozen base model up to its layer k only (the text features of a
   fusion router are computed once for all rows);
2. experts: the pool (``pool.ExpertPool``) gathers the cores of the batch's distinct experts and
   merges each chain once; ONE pass of the base model adds each row's update in every adapted
   layer (``adapters.GatheredTTLinear``): the cost does not grow with E. When no chosen expert
   adapts a layer below k, the pass starts from the router's state after layer k instead of
   from the embeddings (layers 0..k run once for both). Otherwise the rows' expert pass runs
   after routing, regrouped: an expert with enough rows gets micro-batches of its own, where its
   update is merged into the weights (the frozen model's speed), the other rows run mixed;
3. each row's head (padded to the largest label count, extra logits masked) on its expert's
   pooling of the last hidden state (mean, or the last real token for decoder experts).
Answers come back in input order. Without a router (``mixture_from_folders``: chosen expert
folders served without a pack, nothing written) each ``predict`` call names every row's expert. The experts' updates travel with the call (context variables
of ``adapters``) and tokenization never changes the shared tokenizer, so one cached mixture is
safe under concurrent threads. No forward is monkey-patched. The encoder shares the backbone's
weights (``backbone.weight_sharing_copy``); converting the mixture (``.double()``, ``.to``)
first gives it its own copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import adapters, tasks
from ..base import batching
from ..base.backbone import (
    Backbone,
    BackboneError,
    Encoded,
    check_fingerprint,
    check_positions,
    encode_rows,
    load_backbone,
    pool,
    weight_sharing_copy,
)
from ..base.partial import continue_layers, hidden_states, runs_in_parts
from ..experts import Expert
from ..routing import (
    PoolModel,
    Router,
    pool_dense,
    segment_pools,
    state_features,
    text_features,
)
from ..runtime import precision
from ..store import Pack, StoreError, load_expert, load_pack, read_pack_manifest
from ..store.detector import read_pool
from .lazy import open_pack
from .pool import ExpertCard, ExpertPool, MoEError

MAX_BATCH_ROWS = batching.MAX_ROWS        # rows per micro-batch when serving
MAX_BATCH_TOKENS = batching.MAX_TOKENS    # padded tokens (rows × longest row) per micro-batch
GROUP_MIN_ROWS = batching.GROUP_MIN_ROWS  # an expert with this many rows: micro-batches of its own

__all__ = ["MAX_BATCH_ROWS", "MAX_BATCH_TOKENS", "MoEError", "Scores", "TTLoRAMoE",
           "evaluate_mixture"]


@dataclass(frozen=True)
class Scores:
    """The mixture's raw answers for N rows, in input order."""
    expert_idx: torch.Tensor               # [N] long: the expert that answered each row
    router_probs: torch.Tensor | None      # [N, E]; None when the router did not run
    logits: torch.Tensor                   # [N, C_max]; labels beyond a row's expert's are -inf
    truncated: tuple[bool, ...]            # row longer than the mixture's max_length
    pool_score: torch.Tensor | None = None  # [N] float: higher = one of the pool's tasks;
                                            # None without an out-of-pool detector or router


class TTLoRAMoE(nn.Module):
    """Frozen base + a pool of experts + router; see module docstring.

    ``experts``: Expert objects (TT-LoRA, same targets and TT factors; ranks and label counts may
    differ; their cores kept in ``pool_dtype``, None: float32) or an ``ExpertPool`` (large or
    lazily loaded pools). ``router``: None, or a router with one output per expert. ``openworld``: the pack's out-of-pool detector (its rows get
    ``in_pool`` / ``pool_score``), or None.
    """

    def __init__(self, backbone: Backbone, experts: Sequence[Expert] | ExpertPool,
                 router: Router | None, max_length: int = 128, openworld: PoolModel | None = None,
                 pool_dtype: torch.dtype | None = None):
        super().__init__()
        pool = (experts if isinstance(experts, ExpertPool)
                else ExpertPool.from_experts(experts, storage=pool_dtype))
        if pool.base is not None:
            check_fingerprint(backbone.info, pool.base.fingerprint,
                              f"the experts ({pool.base.name!r} base model)")
        if router is not None and router.num_experts != len(pool):
            raise MoEError(f"the router has {router.num_experts} outputs for {len(pool)} experts")
        if openworld is not None and (router is None or openworld.num_classes != len(pool)
                                      or openworld.layer > router.config.layer):
            raise MoEError("the out-of-pool detector does not fit the router and the experts: "
                           "recalibrate it (calibrate-pool)")
        check_positions(backbone, max_length, "the pack's router or experts")
        self.openworld = openworld
        self.backbone = backbone
        self.max_length = max_length
        self.encoder = weight_sharing_copy(backbone.model)
        self._owns_encoder = False
        try:
            adapters.inject_gathered(self.encoder, [s.name for s in pool.slots],
                                     {s.name: (s.d_in, s.d_out) for s in pool.slots})
        except ValueError as exc:
            raise MoEError(f"the experts do not fit the base model: {exc}") from None
        device = backbone.device
        self.pool = pool.to(device)
        self.router = router.to(device).eval() if router is not None else None
        self.eval()

    def _apply(self, fn, *args, **kwargs):
        """Converting the mixture converts its own copy of the encoder, never the backbone's."""
        if not self._owns_encoder:
            self.encoder = copy.deepcopy(self.encoder)
            self._owns_encoder = True
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ the pool

    @property
    def names(self) -> list[str]:
        return self.pool.names

    @property
    def cards(self) -> list[ExpertCard]:
        return self.pool.cards

    @property
    def experts(self) -> list[Expert | None]:
        """The Expert of each pool entry (lazy ones: metadata without tensors)."""
        return [card.expert for card in self.pool.cards]

    @property
    def num_labels(self) -> list[int]:
        return [card.num_labels for card in self.pool.cards]

    def expert_index(self, expert: str | Sequence[str]) -> list[int]:
        names = [expert] if isinstance(expert, str) else list(expert)
        unknown = [n for n in names if n not in self.pool.index]
        if unknown:
            shown = self.names if len(self.names) <= 20 else self.names[:20] + ["…"]
            raise MoEError(f"unknown expert {unknown[0]!r}; this mixture has {shown}")
        return [self.pool.index[n] for n in names]

    # ------------------------------------------------------------------ parts of the forward

    def _router_features(self, texts: Sequence[str], text_pairs: Sequence[str | None]
                         ) -> dict[str, torch.Tensor]:
        """Features of the raw text for the router (fusion: "surface" [N, F]), on the device."""
        feats = text_features(texts, text_pairs, self.router.config)
        return {k: v.to(self.backbone.device) for k, v in feats.items()}

    def _route_states(self, batch: dict[str, torch.Tensor], text_feats: dict[str, torch.Tensor]
                      ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                 dict[str, torch.Tensor]]:
        """(frozen hidden states 0..k, each [B, T, H]; router probabilities [B, E]; logits [B, E];
        the router's state features, e.g. "pooled" [B, k+1, H], for the detector to reuse)."""
        rows = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        with adapters.adapters_off(rows, device), precision.autocast(device, self.backbone.dtype):
            states = hidden_states(self.encoder, batch, self.router.config.layer)
        state_feats = state_features(states, batch, self.router.config)
        feats = state_feats | text_feats
        dtype = next(self.router.parameters()).dtype
        logits = self.router({k: v.to(dtype) if v.is_floating_point() else v for k, v in feats.items()})
        return states, torch.softmax(logits, dim=-1), logits, state_feats

    def _pool_dense(self, batch: dict[str, torch.Tensor], states: Sequence[torch.Tensor],
                    state_feats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The detector's dense input [B, D] of a routed micro-batch (states 0..k of the frozen
        base): the router's per-segment pools when it computed them (the ``ngram`` router:
        "pooled", "seg"), else pooled from ``states``."""
        if state_feats is not None and {"pooled", "seg"} <= state_feats.keys():
            pooled, seg = state_feats["pooled"], state_feats["seg"]
        else:
            pooled, seg = segment_pools(states[: self.openworld.layer + 1], batch)
        return pool_dense({"pooled": pooled, "seg": seg}, self.openworld.layer)

    def _pool_scores(self, plan: Sequence[Sequence[int]], dense: Sequence[torch.Tensor],
                     logits: Sequence[torch.Tensor], texts: Sequence[str],
                     pairs: Sequence[str | None]) -> list[torch.Tensor]:
        """``pool_score`` of every routed row, scored in one call (one text hashing, one product
        with the detector's bank for all micro-batches), split back per micro-batch of ``plan``
        (dense [B, D] and router logits [B, E] per micro-batch; texts and pairs of all rows)."""
        order = [r for rows in plan for r in rows]
        scores = self.openworld.score(torch.cat(list(dense)).cpu(),
                                      torch.cat(list(logits)).float().cpu(),
                                      [texts[r] for r in order], [pairs[r] for r in order])
        device = logits[0].device
        return list(scores.to(device).split([len(rows) for rows in plan]))

    @torch.inference_mode()
    def route(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
              text_pairs: Sequence[str | None]) -> torch.Tensor:
        """Router probabilities [B, E] (base model up to the router's layer, adapters off)."""
        if self.router is None:
            raise MoEError("this mixture has no router: pass expert=... to choose one")
        return self._route_states(batch, self._router_features(texts, text_pairs))[1]

    @torch.inference_mode()
    def expert_logits(self, batch: dict[str, torch.Tensor], expert_idx: torch.Tensor,
                      states: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, C_max] of each row's expert in one pass (padded labels are -inf).

        ``states``: the frozen hidden states 0..k of this batch (``hidden_states``); when no
        row's expert adapts a layer below k, the pass continues from ``states[k]``.
        """
        gathered = self.pool.gather(expert_idx)
        start = None if states is None else len(states) - 1
        device = batch["input_ids"].device
        with adapters.use_row_halves(gathered.halves), precision.autocast(device, self.backbone.dtype):
            if start is not None and gathered.first_layer >= start and runs_in_parts(self.encoder):
                hidden = continue_layers(self.encoder, states[-1], batch["attention_mask"], start)
            else:
                hidden = self.encoder(**batch).last_hidden_state                # [B, T, H]
        pooled = pool(hidden, batch["attention_mask"], gathered.last_token)     # [B, H]
        pooled = pooled.to(gathered.head_weight.dtype)
        return torch.einsum("bch,bh->bc", gathered.head_weight, pooled) + gathered.head_bias

    # ------------------------------------------------------------------ public API

    def prepare(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None,
                expert: str | Sequence[str] | None = None) -> tuple[Encoded, list[int] | None]:
        """Checked rows tokenized once (``Encoded``), and the forced expert of each row (None:
        route). MoEError for no rows, an empty row, unknown experts or mismatched lengths."""
        texts = list(texts)
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        if not texts:
            raise MoEError("no input texts")
        if len(pairs) != len(texts):
            raise MoEError(f"{len(texts)} texts but {len(pairs)} text pairs")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise MoEError(f"input {i + 1} is empty: give some text")
        forced = None
        if expert is not None:
            forced = self.expert_index(expert)
            if len(forced) == 1:
                forced = forced * len(texts)
            if len(forced) != len(texts):
                raise MoEError(f"{len(texts)} texts but {len(forced)} forced experts")
        if forced is None and self.router is None:
            raise MoEError("this mixture has no router: pass expert=... to choose one")
        return encode_rows(self.backbone.tokenizer, texts, pairs, self.max_length), forced

    @torch.inference_mode()
    def score(self, encoded: Encoded, forced: Sequence[int] | None = None, route: bool = True,
              batch_size: int = MAX_BATCH_ROWS, max_tokens: int | None = MAX_BATCH_TOKENS,
              share_prefix: bool = True, group_min_rows: int | None = GROUP_MIN_ROWS) -> Scores:
        """Route and answer N prepared rows in length-sorted micro-batches (at most
        ``batch_size`` rows and ``max_tokens`` padded tokens each); results in input order.

        ``forced[i]``: the expert of row i instead of the router's choice; ``route=False`` skips
        the router when every row is forced. Repeated rows (same texts, same forced expert) are
        computed once. The expert pass of a routed micro-batch continues from the router's prefix
        when its experts adapt no lower layer (``share_prefix=False``: never; the simple path,
        for comparison); other rows run after routing, an expert with at least
        ``group_min_rows`` rows in micro-batches of its own (its merged weights: the frozen
        model's speed, ``adapters.shared_update``), the rest mixed (None: all mixed).
        """
        if forced is None and (not route or self.router is None):
            raise MoEError("this mixture has no router: pass expert=... to choose one")
        if forced is not None and (len(forced) != len(encoded)
                                   or not all(0 <= f < len(self.names) for f in forced)):
            raise MoEError(f"forced experts must be {len(encoded)} indices in 0..{len(self.names) - 1}")
        route = route and self.router is not None
        keys = zip(encoded.texts, encoded.text_pairs, forced or [None] * len(encoded))
        first, slot = batching.distinct(list(keys))
        unique = encoded.take(first)
        batches = batching.plan(unique.lengths, max_tokens, batch_size)
        device = self.backbone.device
        chosen = torch.tensor([forced[f] for f in first] if forced is not None
                              else [0] * len(first), device=device)             # [U]
        text_feats = self._router_features(unique.texts, unique.text_pairs) if route else {}
        probs_parts, dense_parts, logits_parts = [], [], []
        expert_batches, logit_parts = [], []
        later = [] if route else list(range(len(first)))        # unrouted: all after, grouped
        for rows in batches if route else ():
            rows_t = torch.tensor(rows, device=device)
            batch = unique.batch(rows, device)                                   # [B, T_max] each
            states, probs, router_logits, state_feats = self._route_states(
                batch, {k: v[rows_t] for k, v in text_feats.items()})            # probs [B, E]
            if self.openworld is not None:
                dense_parts.append(self._pool_dense(batch, states, state_feats))
                logits_parts.append(router_logits)
            probs_parts.append(probs)
            if forced is None:
                chosen[rows_t] = probs.argmax(-1)                                # [B]
            idx = chosen[rows_t]
            if share_prefix and self._continues(idx, len(states) - 1):
                expert_batches.append(rows)
                logit_parts.append(self.expert_logits(batch, idx, states))
            else:
                later += rows
        pool_parts = (self._pool_scores(batches, dense_parts, logits_parts, unique.texts,
                                        unique.text_pairs) if dense_parts else [])
        if later:
            later_lengths = [unique.lengths[r] for r in later]
            later_experts = chosen[torch.tensor(later, device=device)].tolist()
            plan = (batching.plan(later_lengths, max_tokens, batch_size) if group_min_rows is None
                    else batching.plan_by_group(later_lengths, later_experts, max_tokens,
                                                batch_size, group_min_rows))
            for part in plan:
                rows = [later[i] for i in part]
                expert_batches.append(rows)
                logit_parts.append(self.expert_logits(unique.batch(rows, device),
                                                      chosen[torch.tensor(rows, device=device)]))
        slot_idx = torch.tensor(slot, device=device)

        def in_order(plan: list[list[int]], parts: list[torch.Tensor]) -> torch.Tensor:
            return batching.restore_order(plan, parts)[slot_idx]                # [U, ...] -> [N, ...]

        return check_finite(Scores(expert_idx=chosen[slot_idx],
                                   router_probs=in_order(batches, probs_parts) if route else None,
                                   logits=in_order(expert_batches, logit_parts),
                                   truncated=encoded.truncated,
                                   pool_score=in_order(batches, pool_parts) if pool_parts else None),
                            self.names, self.num_labels)

    def _continues(self, expert_idx: torch.Tensor, start: int) -> bool:
        """Whether the expert pass of these rows can start from the frozen state after layer
        ``start`` (no row's expert adapts a lower layer, and the encoder runs in parts)."""
        return self.pool.first_layer(expert_idx.tolist()) >= start and runs_in_parts(self.encoder)

    def answers(self, encoded: Encoded, scores: Scores, router_top: int | None = None,
                abstain: bool = False) -> list[dict]:
        """One dict per row of ``encoded`` from its ``scores`` (see ``predict``)."""
        probs, pool = scores.router_probs, scores.pool_score
        return [self._row(encoded.texts[i], encoded.text_pairs[i], int(scores.expert_idx[i]),
                          None if probs is None else probs[i], scores.logits[i],
                          scores.truncated[i], router_top,
                          None if pool is None else float(pool[i]), abstain)
                for i in range(len(encoded))]

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None,
                expert: str | Sequence[str] | None = None, batch_size: int = MAX_BATCH_ROWS,
                max_tokens: int | None = MAX_BATCH_TOKENS,
                router_top: int | None = None, abstain: bool = False,
                route: bool = True) -> list[dict]:
        """One dict per row, in input order: text, text_pair, expert, task, router_probs, label,
        label_probs, truncated, in_pool, pool_score.

        ``in_pool`` (bool) / ``pool_score`` (float, higher: more likely one of the pool's tasks)
        come from the pack's out-of-pool detector (None, None without one or when the router did
        not run). By default every row keeps the router's top-1 answer (the paper's); with
        ``abstain`` a row out of the pool gets expert, task and label None and no label_probs
        (router_probs and pool_score stay, to show why).

        ``expert``: a name (every row) or one name per row forces the choice (oracle); the
        router's probabilities are still reported when there is a router (all E of them, or the
        ``router_top`` largest: for large pools), unless ``route=False``: then neither the router
        nor the detector runs (router_probs {}, in_pool and pool_score None; the fastest forced
        call). Rows run in length-sorted micro-batches of at
        most ``batch_size`` rows and ``max_tokens`` tokens (padding included; None: no budget).
        """
        encoded, forced = self.prepare(texts, text_pairs, expert)
        if not route and forced is None:
            raise MoEError("route=False needs expert=...: name the expert of every row")
        scores = self.score(encoded, forced, route=route, batch_size=batch_size,
                            max_tokens=max_tokens)
        return self.answers(encoded, scores, router_top, abstain=abstain and forced is None)

    def _row(self, text: str, pair: str | None, idx: int, probs: torch.Tensor | None,
             logits: torch.Tensor, truncated: bool, router_top: int | None = None,
             pool_score: float | None = None, abstain: bool = False) -> dict:
        card = self.pool.cards[idx]
        router_probs = {}
        if probs is not None:
            order = range(len(probs)) if router_top is None else probs.topk(
                min(router_top, len(probs))).indices.tolist()
            router_probs = {self.pool.cards[j].name: float(probs[j]) for j in order}
        if card.is_regression:
            label, label_probs = float(logits[0]), {}
        else:
            label_p = torch.softmax(logits[:card.num_labels], -1).tolist()
            label = card.label_names[int(torch.tensor(label_p).argmax())]
            label_probs = dict(zip(card.label_names, label_p))
        in_pool = None if pool_score is None else bool(pool_score >= self.openworld.threshold)
        row = {"text": text, "text_pair": pair, "expert": card.name, "task": card.task,
               "router_probs": router_probs, "label": label, "label_probs": label_probs,
               "truncated": truncated, "in_pool": in_pool, "pool_score": pool_score}
        if abstain and in_pool is False:
            row.update(expert=None, task=None, label=None, label_probs={})
        return row

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_loaded_pack(cls, pack: Pack, backbone: Backbone | None = None,
                         device: str | None = None, dtype: str | None = None,
                         pool_dtype: str | None = None, detector: bool = True) -> "TTLoRAMoE":
        """The mixture of a pack read by ``store.load_pack`` (nothing is read again), on
        ``backbone`` or else on the pack's base model loaded here (in ``dtype``: ``precision``);
        ``detector=False`` leaves the pack's out-of-pool detector out (no in_pool, pool_score:
        a single row costs ~8 % less, bench/RESULTS.md). StoreError when the pack was built on
        another base model than ``backbone``."""
        backbone = backbone or load_backbone(pack.base_model["name"], device=device, dtype=dtype)
        router = pack.build_router() if pack.router_state is not None else None
        openworld = (read_pool(pack.path, pack.manifest) if router is not None and detector
                     else None)
        try:
            return cls(backbone, pack.experts, router, max_length=pack.max_length,
                       openworld=openworld, pool_dtype=_storage(pool_dtype))
        except BackboneError as exc:
            raise StoreError(f"pack {pack.path.name!r}: {exc}") from None

    @classmethod
    def from_pack(cls, path: str | Path, backbone: Backbone | None = None,
                  device: str | None = None, lazy: bool = False,
                  dtype: str | None = None, pool_dtype: str | None = None,
                  detector: bool = True) -> "TTLoRAMoE":
        """Read a pack folder (experts + router) once and build its mixture (``from_loaded_pack``;
        ``detector=False``: without the pack's out-of-pool detector).

        ``lazy``: the experts' configs are checked now, their weights read (memory-mapped) when a
        batch first needs them (``lazy.open_pack``): large packs are ready at once.
        ``pool_dtype``: "float16" or "int8" keeps the experts' cores smaller (half, or 28 %, of
        a large pool's memory; bench/RESULTS.md gives the answers' agreement with float32)."""
        if not lazy:
            return cls.from_loaded_pack(load_pack(path), backbone=backbone, device=device,
                                        dtype=dtype, pool_dtype=pool_dtype, detector=detector)
        pool, router, max_length = open_pack(path, storage=_storage(pool_dtype))
        openworld = None
        if router is not None and detector:
            openworld = read_pool(path, read_pack_manifest(Path(path)))
        backbone = backbone or load_backbone(pool.base.name, device=device, dtype=dtype)
        try:
            return cls(backbone, pool, router, max_length=max_length, openworld=openworld)
        except BackboneError as exc:
            raise StoreError(f"pack {Path(path).name!r}: {exc}") from None


def _storage(pool_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The cores' dtype at rest named by ``pool_dtype`` (None: the compute dtype)."""
    return precision.parse_storage(pool_dtype)


def check_finite(scores: Scores, names: Sequence[str], num_labels: Sequence[int]) -> Scores:
    """``scores`` when no answer is NaN or infinite (a label's masked ``-inf`` beyond its expert's
    labels aside); else MoEError naming the file that made it: the router, the out-of-pool
    detector or the expert's weights. No NaN ever leaves the engine as an answer."""
    if scores.router_probs is not None and not bool(torch.isfinite(scores.router_probs).all()):
        raise MoEError("the router (router.safetensors) gave NaN or infinite probabilities: "
                       "its weights are damaged; retrain the router")
    if scores.pool_score is not None and not bool(torch.isfinite(scores.pool_score).all()):
        raise MoEError("the out-of-pool detector (pool.safetensors) gave NaN or infinite scores: "
                       "recalibrate it (calibrate-pool)")
    counts = torch.tensor(num_labels, device=scores.logits.device)[scores.expert_idx]      # [N]
    real = torch.arange(scores.logits.shape[1], device=counts.device) < counts[:, None]    # [N, C]
    bad = (real & ~torch.isfinite(scores.logits)).any(-1)                                  # [N]
    if bool(bad.any()):
        name = names[int(scores.expert_idx[bad.nonzero()[0, 0]])]
        raise MoEError(f"expert {name!r} (its adapter_model.safetensors) gave NaN or infinite "
                       "logits: its weights are damaged; retrain it")
    return scores


def mixture_from_folders(folders: Sequence[str | Path], backbone: Backbone | None = None,
                         device: str | None = None, dtype: str | None = None) -> TTLoRAMoE:
    """The router-less mixture of the experts in ``folders`` (in that order), on ``backbone`` or
    else on the first expert's base model loaded here. Inputs are cut at the longest
    ``max_length`` the experts were trained with.

    StoreError for a folder that is not an expert (or a base model that does not match);
    MoEError for no folders, repeated names, a LoRA/adapter expert or TT layouts that differ.
    """
    if not folders:
        raise MoEError("choose at least one expert folder")
    experts = [load_expert(folder) for folder in folders]
    names = [e.name for e in experts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MoEError(f"two folders hold an expert named {repeated[0]!r}: choose one of them")
    backbone = backbone or load_backbone(experts[0].base.name, device=device, dtype=dtype)
    max_length = max(e.config.max_length for e in experts)
    try:
        return TTLoRAMoE(backbone, experts, router=None, max_length=max_length)
    except BackboneError as exc:
        raise StoreError(f"expert {experts[0].name!r}: {exc}") from None


def evaluate_mixture(moe: TTLoRAMoE, expert_tasks: Sequence[tuple[str, str]], per_task: int | None,
                     data_dir=None, seed: int = 0, batch_size: int = MAX_BATCH_ROWS) -> dict:
    """Routing accuracy, E×E confusion, and each task's metric through the mixture vs its oracle.

    The oracle forces the right expert. Rows are tokenized once; rows the router sends to the
    right expert give the same answer either way, so only misrouted rows run a second time (expert
    pass only, in length-sorted micro-batches of at most ``batch_size`` rows).
    """

    names = moe.names
    confusion = [[0] * len(names) for _ in names]
    by_expert: dict[str, dict] = {}
    for name, task in expert_tasks:
        data = tasks.load_task(task, "validation", data_dir=data_dir, limit=per_task, seed=seed)
        encoded, _ = moe.prepare(data.texts, data.text_pairs)
        routed = moe.answers(encoded, moe.score(encoded, batch_size=batch_size))
        wrong = [i for i, row in enumerate(routed) if row["expert"] != name]
        oracle = list(routed)
        if wrong:
            misrouted = encoded.take(wrong)
            forced = moe.score(misrouted, moe.expert_index(name) * len(wrong), route=False,
                               batch_size=batch_size)
            for i, row in zip(wrong, moe.answers(misrouted, forced)):
                oracle[i] = row
        true_idx = names.index(name)
        for row in routed:
            confusion[true_idx][moe.pool.index[row["expert"]]] += 1
        expert = moe.cards[true_idx]

        def as_pred(row: dict, true, expert=expert, name=name):
            """The expert's label index; a row answered by another expert counts as wrong."""
            if expert.is_regression:
                return float(row["label"]) if row["expert"] == name else float("nan")
            if row["expert"] != name:
                return (int(true) + 1) % expert.num_labels
            return expert.label_names.index(row["label"])

        spec = tasks.TASKS.get(task, "accuracy")
        mixture_metrics = tasks.compute_metrics(
            spec, data.labels, [as_pred(r, t) for r, t in zip(routed, data.labels)])
        oracle_metrics = tasks.compute_metrics(
            spec, data.labels, [as_pred(r, t) for r, t in zip(oracle, data.labels)])
        by_expert[name] = {"task": task, "rows": len(data), "source": data.source,
                          "routing_accuracy": 1 - len(wrong) / max(1, len(data)),
                          "mixture": mixture_metrics, "oracle": oracle_metrics,
                          "metric": tasks.primary_metric(spec)}
    total = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(names)))
    return {"routing_accuracy": correct / max(1, total), "confusion": confusion, "names": names,
            "per_task": by_expert, "rows": total}
