"""TTLoRAMoE: one frozen base model, a bank of E frozen TT-LoRA experts, and a router.

``predict`` serves a batch whose rows belong to different tasks. Rows are tokenized once
(``prepare``), sorted by length and cut into micro-batches by a token budget (``batching``), so
the cost tracks real tokens, not the longest row; repeated rows run once. Per micro-batch:
1. route: the router reads the base model (adapters off) up to its layer k only;
2. experts: ONE pass over the base model where every TT-LoRA layer gathers each row's expert
   cores by index (cost independent of E), then each row's head (padded to the largest label
   count, extra logits masked).
Answers come back in input order. The expert choice travels with the call
(``adapters.use_experts``, a context variable) and tokenization never changes the shared
tokenizer, so one cached mixture is safe under concurrent threads. No forward is monkey-patched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import adapters, batching
from .backbone import (Backbone, BackboneError, Encoded, check_fingerprint, encode_rows,
                       load_backbone, mean_pool)
from .experts import Expert
from .router import Router, batch_features
from .store import Pack, StoreError, load_pack

MAX_BATCH_ROWS = 16        # rows per micro-batch when serving
MAX_BATCH_TOKENS = 1024    # padded tokens (rows × longest row) per micro-batch when serving (CPU-tuned)


class MoEError(ValueError):
    """Bad input to the mixture, or experts that cannot be stacked."""


@dataclass(frozen=True)
class Scores:
    """The mixture's raw answers for N rows, in input order."""
    expert_idx: torch.Tensor               # [N] long: the expert that answered each row
    router_probs: torch.Tensor | None      # [N, E]; None when the router did not run
    logits: torch.Tensor                   # [N, C_max]; labels beyond a row's expert's are -inf
    truncated: tuple[bool, ...]            # row longer than the mixture's max_length


def _stack_layout(experts: Sequence[Expert]) -> tuple[list[str], dict[str, list[int]], int]:
    """Shared targets and TT factors of the experts, and the largest rank (ranks are padded)."""
    if not experts:
        raise MoEError("a mixture needs at least one expert")
    first = experts[0]
    for expert in experts:
        if expert.config.method != "tt-lora":
            raise MoEError(f"expert {expert.name!r} is a {expert.config.method} expert; "
                           "the mixture stacks TT-LoRA experts only")
        if expert.base.fingerprint != first.base.fingerprint:
            raise MoEError(f"experts {first.name!r} and {expert.name!r} were trained on different "
                           "base models")
        if expert.tt_layout != first.tt_layout or expert.config.targets != first.config.targets:
            raise MoEError(f"expert {expert.name!r} has TT shapes {expert.tt_layout}, expert "
                           f"{first.name!r} has {first.tt_layout}: experts of one mixture must "
                           "share targets and TT shapes (ranks may differ)")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise MoEError(f"expert names must be unique, got {names}")
    shapes = {t: list(l["in_factors"]) + list(l["out_factors"]) for t, l in first.tt_layout.items()}
    return list(first.config.targets), shapes, max(e.config.rank for e in experts)


def per_row_logits(encoder: nn.Module, head_weight: torch.Tensor, head_bias: torch.Tensor,
                   batch: dict[str, torch.Tensor], expert_idx: torch.Tensor) -> torch.Tensor:
    """Logits [B, C_max]: one pass of ``encoder`` with row b's expert ``expert_idx[b]`` in every
    TT layer, mean-pooled, through row b's head (head_weight [E, C_max, H], head_bias [E, C_max])."""
    with adapters.use_experts(expert_idx):
        hidden = encoder(**batch).last_hidden_state                       # [B, T, H]
    pooled = mean_pool(hidden, batch["attention_mask"])                   # [B, H]
    weight, bias = head_weight[expert_idx], head_bias[expert_idx]         # [B, C_max, H], [B, C_max]
    return torch.einsum("bch,bh->bc", weight, pooled) + bias


def _pad_core(core: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad a core [r, s, r'] to [R, s, R'] (the padded chain computes the same ΔW)."""
    out = torch.zeros(shape, dtype=core.dtype)
    out[: core.shape[0], :, : core.shape[2]] = core
    return out


class TTLoRAMoE(nn.Module):
    """Frozen base + E stacked experts + heads bank + router; see module docstring."""

    def __init__(self, backbone: Backbone, experts: Sequence[Expert], router: Router | None,
                 max_length: int = 128):
        super().__init__()
        targets, shapes, rank = _stack_layout(experts)
        check_fingerprint(backbone.info, experts[0].base.fingerprint,
                          f"the experts ({experts[0].base.name!r} base model)")
        self.backbone = backbone
        self.names = [e.name for e in experts]
        self.experts = list(experts)
        self.max_length = max_length
        self.encoder = copy.deepcopy(backbone.model)
        adapters.inject_tt_lora(self.encoder, targets, rank=rank, alpha=1.0, shapes=shapes,
                                num_experts=len(experts), init="zero")
        self._load_banks(experts)
        hidden = backbone.info.hidden_size
        self.num_labels = [e.num_labels for e in experts]
        width = max(self.num_labels)
        head_w = torch.zeros(len(experts), width, hidden)
        head_b = torch.full((len(experts), width), float("-inf"))
        for idx, expert in enumerate(experts):
            n = expert.num_labels
            head_w[idx, :n] = expert.tensors["head.weight"]
            head_b[idx, :n] = expert.tensors["head.bias"]
        device = backbone.device
        self.register_buffer("head_weight", head_w.to(device))   # [E, C_max, H]
        self.register_buffer("head_bias", head_b.to(device))     # [E, C_max], -inf padding
        self.router = router.to(device).eval() if router is not None else None
        self.eval()

    @torch.no_grad()
    def _load_banks(self, experts: Sequence[Expert]) -> None:
        for layer_name, layer in adapters.tt_layers(self.encoder).items():
            for k, bank in enumerate(layer.cores):
                for idx, expert in enumerate(experts):
                    key = f"{layer_name}.cores.{k}"
                    if key not in expert.tensors:
                        raise MoEError(f"expert {expert.name!r} has no tensor {key!r}")
                    core = expert.tensors[key]
                    if k == 0:  # fold each expert's α into its first core (layer α is 1)
                        core = core * expert.config.alpha
                    bank[idx].copy_(_pad_core(core, bank.shape[1:]))

    # ------------------------------------------------------------------ parts of the forward

    def expert_index(self, expert: str | Sequence[str]) -> list[int]:
        names = [expert] if isinstance(expert, str) else list(expert)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise MoEError(f"unknown expert {unknown[0]!r}; this mixture has {self.names}")
        return [self.names.index(n) for n in names]

    @torch.inference_mode()
    def route(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
              text_pairs: Sequence[str | None]) -> torch.Tensor:
        """Router probabilities [B, E] (base model up to the router's layer, adapters off)."""
        if self.router is None:
            raise MoEError("this mixture has no router: pass expert=... to choose one")
        feats = batch_features(self.encoder, batch, texts, text_pairs, self.router.config)
        dtype = next(self.router.parameters()).dtype
        feats = {k: v.to(dtype) for k, v in feats.items()}
        return torch.softmax(self.router(feats), dim=-1)

    @torch.inference_mode()
    def expert_logits(self, batch: dict[str, torch.Tensor], expert_idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, C_max] of each row's expert in one pass (padded labels are -inf)."""
        return per_row_logits(self.encoder, self.head_weight, self.head_bias, batch, expert_idx)

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
              ) -> Scores:
        """Route and answer N prepared rows in length-sorted micro-batches (at most
        ``batch_size`` rows and ``max_tokens`` padded tokens each); results in input order.

        ``forced[i]``: the expert of row i instead of the router's choice; ``route=False`` skips
        the router when every row is forced. Repeated rows (same texts, same forced expert) are
        computed once.
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
        probs_parts, idx_parts, logit_parts = [], [], []
        for rows in batches:
            batch = unique.batch(rows, device)                               # [B, T_max] each
            part = unique.take(rows)
            probs = self.route(batch, part.texts, part.text_pairs) if route else None   # [B, E]
            if forced is not None:
                idx = torch.tensor([forced[first[r]] for r in rows], device=device)
            else:
                idx = probs.argmax(-1)                                           # [B]
            idx_parts.append(idx)
            probs_parts.append(probs)
            logit_parts.append(self.expert_logits(batch, idx))                   # [B, C_max]
        slot_idx = torch.tensor(slot, device=device)

        def in_order(parts: list[torch.Tensor]) -> torch.Tensor:      # [U, ...] -> [N, ...]
            return batching.restore_order(batches, parts)[slot_idx]

        return Scores(expert_idx=in_order(idx_parts),
                      router_probs=in_order(probs_parts) if route else None,
                      logits=in_order(logit_parts), truncated=encoded.truncated)

    def answers(self, encoded: Encoded, scores: Scores) -> list[dict]:
        """One dict per row of ``encoded`` from its ``scores`` (see ``predict``)."""
        probs = scores.router_probs
        return [self._row(encoded.texts[i], encoded.text_pairs[i], int(scores.expert_idx[i]),
                          None if probs is None else probs[i], scores.logits[i],
                          scores.truncated[i]) for i in range(len(encoded))]

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None,
                expert: str | Sequence[str] | None = None, batch_size: int = MAX_BATCH_ROWS,
                max_tokens: int | None = MAX_BATCH_TOKENS) -> list[dict]:
        """One dict per row, in input order: text, text_pair, expert, task, router_probs, label,
        label_probs, truncated.

        ``expert``: a name (every row) or one name per row forces the choice (oracle); the
        router's probabilities are still reported when there is a router. Rows run in
        length-sorted micro-batches of at most ``batch_size`` rows and ``max_tokens`` tokens
        (padding included; None: no budget).
        """
        encoded, forced = self.prepare(texts, text_pairs, expert)
        scores = self.score(encoded, forced, batch_size=batch_size, max_tokens=max_tokens)
        return self.answers(encoded, scores)

    def _row(self, text: str, pair: str | None, idx: int, probs: torch.Tensor | None,
             logits: torch.Tensor, truncated: bool) -> dict:
        expert = self.experts[idx]
        n = self.num_labels[idx]
        router_probs = ({name: float(p) for name, p in zip(self.names, probs.tolist())}
                        if probs is not None else {})
        if expert.is_regression:
            label, label_probs = float(logits[0]), {}
        else:
            label_p = torch.softmax(logits[:n], -1).tolist()
            label = expert.label_names[int(torch.tensor(label_p).argmax())]
            label_probs = dict(zip(expert.label_names, label_p))
        return {"text": text, "text_pair": pair, "expert": expert.name, "task": expert.config.task,
                "router_probs": router_probs, "label": label, "label_probs": label_probs,
                "truncated": truncated}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_loaded_pack(cls, pack: Pack, backbone: Backbone | None = None,
                         device: str | None = None) -> "TTLoRAMoE":
        """The mixture of a pack read by ``store.load_pack`` (nothing is read again), on
        ``backbone`` or else on the pack's base model loaded here. StoreError when the pack was
        built on another base model than ``backbone``."""
        backbone = backbone or load_backbone(pack.base_model["name"], device=device)
        router = pack.build_router() if pack.router_state is not None else None
        try:
            return cls(backbone, pack.experts, router, max_length=pack.max_length)
        except BackboneError as exc:
            raise StoreError(f"pack {pack.path.name!r}: {exc}") from None

    @classmethod
    def from_pack(cls, path: str | Path, backbone: Backbone | None = None,
                  device: str | None = None) -> "TTLoRAMoE":
        """Read a pack folder (experts + router) once and build its mixture (``from_loaded_pack``)."""
        return cls.from_loaded_pack(load_pack(path), backbone=backbone, device=device)


def evaluate_mixture(moe: TTLoRAMoE, expert_tasks: Sequence[tuple[str, str]], per_task: int | None,
                     data_dir=None, seed: int = 0, batch_size: int = MAX_BATCH_ROWS) -> dict:
    """Routing accuracy, E×E confusion, and each task's metric through the mixture vs its oracle.

    The oracle forces the right expert. Rows are tokenized once; rows the router sends to the
    right expert give the same answer either way, so only misrouted rows run a second time (expert
    pass only, in length-sorted micro-batches of at most ``batch_size`` rows).
    """
    from . import tasks

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
            confusion[true_idx][names.index(row["expert"])] += 1
        expert = moe.experts[true_idx]

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
