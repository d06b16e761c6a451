"""Open-world routing: is an input one of the pool's tasks at all?

Every router answers with one of its E experts, even for a paraphrase pair or a question over a
passage that none of them was trained on. ``PoolScorer`` gives each input a ``pool_score`` (higher:
more likely one of the pool's tasks) from the router's own input features and logits, and a
threshold under which the input is flagged ``in_pool = False``.

Components (each a score where higher means "in the pool"):
- ``msp``: the largest router probability (Hendrycks & Gimpel 2017), after temperature scaling;
- ``energy``: ``T · logsumexp(logits / T)`` (Liu et al. 2020);
- ``maha``: minus the smallest Mahalanobis distance to a task's mean (a covariance shared by the
  tasks, shrunk towards its diagonal; Lee et al. 2018), on standardised features;
- ``knn``: the cosine similarity to the k-th nearest stored training row (Sun et al. 2022);
- ``lm``: how well the best task's hashed word 1-3-gram model explains the input (``NgramLM``:
  mean log-probability per n-gram of each canonical segment, summed over segments): the style
  of a data set (question marks, passages, option lists, captions) in a few megabytes.
``pool_score`` is a weighted sum of the components, each z-scored on in-pool calibration rows.
The threshold is a quantile of in-pool calibration rows (rows the router never trained on), so the
share of in-pool inputs flagged is chosen, not hoped for; rows of task families outside the pack
choose the weights and give the AUROC.

Everything is plain tensors (``state_dict`` / ``from_state``: safetensors-ready); no training
loop, no I/O. Adding an expert adds its mean and its bank rows (``add_class``); the covariance
and the other tasks' statistics stay as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import OpenWorldError
from .ngram import canonical

COMPONENTS = ("msp", "energy", "maha", "knn", "lm")


def _standardise(feats: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (feats.double() - center) / scale                                  # [N, D]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@dataclass
class PoolScorer:
    """Statistics of the pool's tasks in a router's feature space (see module docstring).

    center, scale: [D] standardisation; basis: [D, K] principal directions the standardised rows
    are projected on (None: K = D, no projection); means: [E, K] per task; precision: [K, K]
    inverse of the shared, shrunk covariance; bank: [M, K] unit rows for kNN; bank_labels: [M];
    k: neighbour rank; temperature: router logits are divided by it; z: component -> (mean, std)
    on in-pool calibration rows; weights: component -> weight; threshold: flag below it.
    """
    center: torch.Tensor
    scale: torch.Tensor
    means: torch.Tensor
    precision: torch.Tensor
    bank: torch.Tensor
    bank_labels: torch.Tensor
    basis: torch.Tensor | None = None
    k: int = 10
    temperature: float = 1.0
    z: dict[str, tuple[float, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=lambda: {"maha": 1.0, "knn": 1.0})
    threshold: float = -math.inf
    # (the tensors they were computed from, (μᵀPμ [E], P, μ, the bank) in a dtype): ``_constants``
    _cache: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # (center, scale, basis, and their float32 copies): see ``_project``
    _cache32: tuple | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
            shrinkage: float = 0.1, bank_per_class: int = 1000, k: int = 10,
            seed: int = 0, dims: int | None = None) -> PoolScorer:
        """Statistics of training rows ``feats`` [N, D] with task ids ``labels`` [N] (0..E-1).

        ``dims``: keep the top ``dims`` principal directions of the standardised rows (the stored
        statistics shrink from D² to D·dims + dims²; None keeps all D).

        Covariance: pooled within-task covariance, ``(1 - s)·Σ + s·diag(Σ)`` (s = ``shrinkage``).
        The kNN bank keeps a seeded sample of at most ``bank_per_class`` rows of each task.
        """
        if feats.ndim != 2 or feats.shape[0] != labels.shape[0] or feats.shape[0] == 0:
            raise OpenWorldError(f"need features [N, D] and labels [N], got {tuple(feats.shape)} "
                                 f"and {tuple(labels.shape)}")
        x = feats.double()
        center, scale = x.mean(0), x.std(0).clamp(min=1e-6)
        x = (x - center) / scale
        basis = None
        if dims is not None and dims < x.shape[1]:
            basis = torch.linalg.svd(x - x.mean(0), full_matrices=False)[2][:dims].T   # [D, K]
            x = x @ basis
        means = torch.stack([x[labels == c].mean(0) if (labels == c).any()
                             else torch.zeros(x.shape[1], dtype=x.dtype) for c in range(num_classes)])
        resid = x - means[labels]
        cov = resid.T @ resid / max(1, x.shape[0] - num_classes)              # [D, D]
        cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
        precision = torch.linalg.inv(cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype))
        bank, bank_labels = _bank(x, labels, num_classes, bank_per_class, seed)
        return cls(center, scale, means, precision, bank, bank_labels, basis, k=k)

    def add_class(self, feats: torch.Tensor, bank_per_class: int = 1000, seed: int = 0) -> int:
        """Add one task from its rows [N, D]: its mean and bank rows; returns its index. The
        standardisation, covariance and the other tasks' statistics do not change."""
        x = self._project(feats)
        index = self.means.shape[0]
        self.means = torch.cat([self.means, x.mean(0, keepdim=True)])
        rows, labels = _bank(x, torch.full((x.shape[0],), index), index + 1, bank_per_class, seed)
        self.bank = torch.cat([self.bank, rows])
        self.bank_labels = torch.cat([self.bank_labels, labels])
        return index

    # ------------------------------------------------------------------ scoring

    def _project(self, feats: torch.Tensor) -> torch.Tensor:
        """Standardised (and projected) rows: [N, D] -> [N, K] float64.

        The projection, the scorer's largest product ([N, D]·[D, K], e.g. 3,456 × 1,024), runs
        in float32 on rows standardised in float32: they are O(1) and the basis orthonormal, so it
        agrees with float64 to ~1e-6 (tested) at half the cost (``components`` then runs in
        float32 too)."""
        if self.basis is None:
            return _standardise(feats, self.center, self.scale)
        key = (self.center, self.scale, self.basis)
        if self._cache32 is None or not all(a is b for a, b in zip(self._cache32[0], key)):
            self._cache32 = (key, tuple(t.float() for t in key))
        center, scale, basis = self._cache32[1]
        return ((feats.float() - center) / scale @ basis).double()

    def _constants(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(μᵀPμ of each task [E], P [K, K], μ [E, K], the bank [M, K]) in ``dtype``: computed
        once (μᵀPμ in float64) for the current means, precision and bank (``add_class`` replaces
        those tensors, so they are recomputed)."""
        key = (self.means, self.precision, self.bank, dtype)
        if self._cache is None or not all(a is b for a, b in zip(self._cache[0], key)):
            mpm = ((self.means @ self.precision) * self.means).sum(1)        # [E]
            self._cache = (key, tuple(t.to(dtype) for t in (mpm, self.precision, self.means,
                                                              self.bank)))
        return self._cache[1]

    def components(self, feats: torch.Tensor, logits: torch.Tensor | None = None,
                   lm: torch.Tensor | None = None, chunk: int = 2048) -> dict[str, torch.Tensor]:
        """Each component [N] for rows ``feats`` [N, D], router ``logits`` [N, E] (else no msp,
        energy) and ``NgramLM.loglik`` [N, E] (else no lm). Higher: more like the pool."""
        # float32: P (K × K) and the bank are the scorer's largest reads; against float64 the
        # pool_score moves by < 3e-6 on 600 mixed rows, no in_pool decision flips (NOTES.md)
        x = self._project(feats).float()
        maha, knn = [], []
        mpm, precision, means, bank = self._constants(x.dtype)   # [E], [K, K], [E, K], [M, K]
        for start in range(0, x.shape[0], chunk):
            part = x[start:start + chunk]
            xp = part @ precision                                             # [n, D]
            # (x - μ)ᵀ P (x - μ) = xᵀPx - 2 xᵀPμ + μᵀPμ: [n, E]
            dist = ((xp * part).sum(1, keepdim=True) - 2 * xp @ means.T + mpm[None])
            maha.append(-dist.min(1).values.clamp(min=0) / x.shape[1])   # ≥ 0 in exact arithmetic
            sims = _unit(part) @ bank.T                                       # [n, M]
            kth = min(self.k, bank.shape[0])
            knn.append(sims.topk(kth, dim=1).values[:, -1])
        out = {"maha": torch.cat(maha).float(), "knn": torch.cat(knn).float()}
        if logits is not None:
            scaled = logits.double() / self.temperature
            out["msp"] = torch.softmax(scaled, -1).max(-1).values.float()
            out["energy"] = (self.temperature * torch.logsumexp(scaled, -1)).float()
        if lm is not None:
            out["lm"] = lm.max(-1).values.float()
        return out

    def combine(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of z-scored components [N] (``pool_score``)."""
        missing = [c for c in self.weights if c not in parts or c not in self.z]
        if missing:
            raise OpenWorldError(f"components {missing} are not available or not calibrated "
                                 f"(have {sorted(parts)}; calibrated {sorted(self.z)})")
        total = None
        for name, weight in self.weights.items():
            mean, std = self.z[name]
            term = weight * (parts[name].double() - mean) / std
            total = term if total is None else total + term
        return total.float()

    def score(self, feats: torch.Tensor, logits: torch.Tensor | None = None,
              lm: torch.Tensor | None = None) -> torch.Tensor:
        """``pool_score`` [N] of rows ``feats`` [N, D] (router ``logits`` [N, E], n-gram model
        log-likelihoods ``lm`` [N, E])."""
        return self.combine(self.components(feats, logits, lm))

    def in_pool(self, scores: torch.Tensor) -> torch.Tensor:
        """[N] bool: the score reaches the threshold."""
        return scores >= self.threshold

    def calibrate(self, parts: Mapping[str, torch.Tensor], max_false_flag: float = 0.02,
                  weights: Mapping[str, float] | None = None) -> float:
        """Fit the z-scores on in-pool calibration components ``parts`` (rows the router never
        trained on), set ``weights`` when given, and the threshold at the ``max_false_flag``
        quantile of their ``pool_score``; returns the threshold."""
        if weights is not None:
            unknown = sorted(set(weights) - set(COMPONENTS))
            if unknown:
                raise OpenWorldError(f"unknown components {unknown}: use {COMPONENTS}")
            self.weights = dict(weights)
        self.z = {name: (float(v.double().mean()), float(v.double().std().clamp(min=1e-9)))
                  for name, v in parts.items()}
        scores = self.combine(parts)
        self.threshold = float(torch.quantile(scores.double(), max_false_flag))
        return self.threshold

    # ------------------------------------------------------------------ storage

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors): the statistics plus the scalars and z-scores as tensors."""
        names = sorted(self.z)
        basis = {} if self.basis is None else {"basis": self.basis}
        return basis | {"center": self.center, "scale": self.scale, "means": self.means,
                "precision": self.precision, "bank": self.bank, "bank_labels": self.bank_labels,
                "scalars": torch.tensor([self.k, self.temperature, self.threshold], dtype=torch.float64),
                "z": torch.tensor([self.z[n] for n in names], dtype=torch.float64).reshape(-1, 2),
                "weights": torch.tensor([self.weights.get(n, 0.0) for n in names], dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], components: Sequence[str]) -> PoolScorer:
        """Inverse of ``state_dict``; ``components``: the calibrated names, sorted (stored next to
        the tensors in the router's JSON)."""
        k, temperature, threshold = state["scalars"].tolist()
        names = list(components)
        z = {n: tuple(state["z"][i].tolist()) for i, n in enumerate(names)}
        weights = {n: float(w) for n, w in zip(names, state["weights"].tolist()) if w != 0.0}
        return cls(state["center"], state["scale"], state["means"], state["precision"],
                   state["bank"].float(), state["bank_labels"], state.get("basis"), k=int(k),
                   temperature=temperature,
                   z=z, weights=weights, threshold=threshold)


def _bank(x: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of at most ``per_class`` unit rows of each class: [M, D], [M]."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    idx = torch.cat(keep)
    return _unit(x[idx]).float(), labels[idx]


# ----------------------------------------------------------------------------- n-gram model


class NgramLM:
    """Per-task hashed word 1-3-gram log-probabilities of each segment (a multinomial model per
    task and segment, additive smoothing ``alpha``); ``tables`` [2, buckets, E] float32.

    The text is ``ngram.canonical`` (case-free) with sentence marks, so the model sees how a
    data set's inputs start and end ("<s> is", "? </s>") as well as its words.
    """

    def __init__(self, tables: torch.Tensor, alpha: float = 0.01):
        self.tables = tables
        self.alpha = alpha
        self._numpy: tuple[torch.Tensor, list] | None = None     # (tables, their float64 arrays)

    @staticmethod
    def _counts(texts, pairs, buckets: int):
        """Hashed n-gram counts of the two segments: two sparse [N, buckets] matrices."""
        # heavy: scikit-learn (~1 s to import), loaded on first use
        import sklearn
        from sklearn.feature_extraction.text import HashingVectorizer

        hasher = HashingVectorizer(analyzer="word", ngram_range=(1, 3), lowercase=False, norm=None,
                                   token_pattern=r"\S+", alternate_sign=False, n_features=buckets)
        pairs = list(pairs) if pairs is not None else [None] * len(texts)
        first = [f"<s> {canonical(t)} </s>" for t in texts]
        second = [f"<s> {canonical(p)} </s>" if p else "<none>" for p in pairs]
        with sklearn.config_context(skip_parameter_validation=True):   # fixed cost, for one row
            both = hasher.transform(first + second)                   # one call: [2N, buckets]
        return both[: len(first)], both[len(first):]

    @staticmethod
    def _log_probs(matrix, rows: torch.Tensor, alpha: float) -> torch.Tensor:
        """[buckets] log-probabilities of one task's n-grams (rows [N] bool)."""
        counts = torch.from_numpy(matrix[rows.numpy()].sum(0).A1).double() + alpha
        return (counts / counts.sum()).log().float()

    @classmethod
    def fit(cls, texts, pairs, labels: torch.Tensor, num_classes: int, buckets: int = 1 << 16,
            alpha: float = 0.01) -> NgramLM:
        mats = cls._counts(texts, pairs, buckets)
        tables = torch.stack([torch.stack([cls._log_probs(m, labels == c, alpha)
                                           for c in range(num_classes)], 1) for m in mats])
        return cls(tables, alpha)                                         # [2, buckets, E]

    def add_class(self, texts, pairs) -> int:
        """Add one task's tables from its rows; returns its index (other tasks unchanged)."""
        mats = self._counts(texts, pairs, self.tables.shape[1])
        rows = torch.ones(len(texts), dtype=torch.bool)
        new = torch.stack([self._log_probs(m, rows, self.alpha) for m in mats])   # [2, buckets]
        self.tables = torch.cat([self.tables, new[:, :, None]], 2)
        return self.tables.shape[2] - 1

    def loglik(self, texts, pairs) -> torch.Tensor:
        """[N, E]: per task, the mean log-probability per n-gram of each segment, summed."""
        if self._numpy is None or self._numpy[0] is not self.tables:       # add_class replaces it
            self._numpy = (self.tables, [t.double().numpy() for t in self.tables])
        total = 0
        for matrix, table in zip(self._counts(texts, pairs, self.tables.shape[1]), self._numpy[1]):
            sums = torch.from_numpy(matrix @ table)                                   # [N, E]
            grams = torch.from_numpy(matrix.sum(1).A1).clamp(min=1)[:, None]
            total = total + sums / grams
        return total.float()


# ----------------------------------------------------------------------------- a pack's detector


@dataclass
class PoolModel:
    """A pack's out-of-pool detector: ``scorer`` on the router's dense features of layers
    0..``layer`` (``ngram.pool_dense``) and logits, ``lm`` on the text; ``meta``: its
    calibration figures (stored in pool_config.json)."""
    scorer: PoolScorer
    lm: NgramLM
    layer: int
    meta: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def num_classes(self) -> int:
        return int(self.scorer.means.shape[0])

    def components(self, dense: torch.Tensor, logits: torch.Tensor | None, texts, pairs,
                   every: bool = False) -> dict[str, torch.Tensor]:
        """The scorer's components of N rows: those it weighs, or ``every`` one (calibration)."""
        lm = self.lm.loglik(texts, pairs) if every or "lm" in self.scorer.weights else None
        return self.scorer.components(dense, logits, lm)

    def score(self, dense: torch.Tensor, logits: torch.Tensor | None, texts, pairs) -> torch.Tensor:
        """``pool_score`` [N] of N rows: dense [N, D], router logits [N, E], their texts."""
        return self.scorer.combine(self.components(dense, logits, texts, pairs))

    def add_class(self, dense: torch.Tensor, texts, pairs, bank_per_class: int = 500) -> int:
        """One more task (``PoolScorer.add_class``, ``NgramLM.add_class``); returns its index."""
        index = self.scorer.add_class(dense, bank_per_class=bank_per_class)
        self.lm.add_class(texts, pairs)
        return index


def calibrated(probs: Mapping[str, float], temperature: float) -> dict[str, float]:
    """Router probabilities {expert: p} (softmax of the logits) at temperature T:
    softmax(log p / T), the same order; T > 1 flattens an over-confident router."""
    if not probs:
        return {}
    logp = torch.tensor([max(p, 1e-30) for p in probs.values()], dtype=torch.float64).log()
    return dict(zip(probs, torch.softmax(logp / temperature, 0).tolist()))


# ----------------------------------------------------------------------------- evaluation


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of scores where ``positive`` [P] should score above ``negative``
    [Q] (Mann-Whitney U, ties count one half)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise OpenWorldError("AUROC needs at least one positive and one negative score")
    scores = torch.cat([positive, negative]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks of ties
    uniq, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    p = positive.numel()
    u = ranks[:p].sum() - p * (p + 1) / 2
    return float(u / (p * negative.numel()))


def ood_report(in_scores: torch.Tensor, out_scores: Mapping[str, torch.Tensor],
               threshold: float) -> dict:
    """AUROC of in-pool rows [P] against all outside rows and each family, the share of in-pool
    rows flagged (``false_flag``) and of each family's rows caught (``caught``) at ``threshold``,
    and the share of outside rows caught when 95% of in-pool rows pass (``caught_at_tpr95``)."""
    everything = torch.cat(list(out_scores.values()))
    tpr95 = float(torch.quantile(in_scores.double(), 0.05))
    return {"auroc": auroc(in_scores, everything),
            "false_flag": float((in_scores < threshold).double().mean()),
            "caught": float((everything < threshold).double().mean()),
            "caught_at_tpr95": float((everything.double() < tpr95).double().mean()),
            "threshold": threshold,
            "families": {name: {"auroc": auroc(in_scores, s), "caught": float((s < threshold).double().mean()),
                                "rows": int(s.numel())} for name, s in out_scores.items()}}


# ----------------------------------------------------------------------------- calibration


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on rows the router
    never trained on (logits [N, E], labels [N]); argmax is unchanged."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)
    z, y = logits.double().detach(), labels.long()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-1 probability (probs [N, E], labels [N]) in ``bins`` equal-width bins."""
    conf, pred = probs.max(-1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf.double() > lo) & (conf.double() <= hi)
        if inside.any():
            total += float(inside.double().mean() * (conf[inside].double().mean() - right[inside].mean()).abs())
    return total
