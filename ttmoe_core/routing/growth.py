"""Growing a pack's routing by one expert without retraining the router from scratch.

A trained router maps features to E logits. ``GrownRouter`` keeps it frozen and appends one logit
per added expert, computed from what the router already computes:

    logits = [ base(feats) (E, frozen) , φ(feats) · W_newᵀ + b_new (+ n-gram column) ]

φ is the router's penultimate representation (the input of its last linear layer: the MLP's
hidden units for ``mlp`` / ``fusion`` / ``ngram`` routers, the pooled state for ``linear``). Only
``W_new``, ``b_new`` (and, for ``ngram`` routers, one column of n-gram weights) are fitted, by
cross-entropy over all E+1 logits on the new task's rows and a small replay sample of the old
tasks' rows (their features cached when the router was trained). Consequences:
- the old experts' logits never change, so between two old experts the choice is exactly the
  same as before; an old input changes expert only where the new logit wins (measured);
- the fit is a convex problem in a few hundred parameters (plus the n-gram column): seconds;
- the old experts' files are not touched (the pack writes only the router's files).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..errors import GrowthError

SOURCES = ("hidden", "input", "both")


def _linears(router: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(first, last) linear layer of the router's scoring path: the last one makes the logits."""
    for attr in ("mlp", "proj", "gate"):
        part = getattr(router, attr, None)
        if isinstance(part, nn.Sequential) and isinstance(part[-1], nn.Linear) \
                and isinstance(part[0], nn.Linear):
            return part[0], part[-1]
        if isinstance(part, nn.Linear):
            return part, part
    raise GrowthError(f"{type(router).__name__} has no final linear layer to grow from")


def last_linear(router: nn.Module) -> nn.Linear:
    """The layer that produces the router's logits (its input is the "hidden" φ)."""
    return _linears(router)[1]


def phi_width(router: nn.Module, source: str = "hidden") -> int:
    """D, the width of ``router``'s φ read from ``source`` (no forward pass: meta-safe)."""
    first, last = _linears(router)
    widths = {"hidden": last.in_features, "input": first.in_features,
              "both": last.in_features + first.in_features}
    if source not in widths:
        raise GrowthError(f"unknown φ source {source!r}: use one of {SOURCES}")
    return widths[source]


def cached_outputs(router: nn.Module, feats: dict[str, torch.Tensor], source: str = "hidden",
                   ) -> dict[str, torch.Tensor]:
    """``feats`` reduced to what growth needs of them: "base_logits" [N, E], "phi_<source>"
    [N, D] and the n-gram ids / weights when present. Growth and a grown router's forward accept
    these in place of the full features (a pack's replay file stores them: small)."""
    logits, phi = base_outputs(router, feats, source)
    kept = {k: feats[k] for k in ("ngram_ids", "ngram_w") if k in feats}
    return {"base_logits": logits, f"phi_{source}": phi, **kept}


@torch.no_grad()
def base_outputs(router: nn.Module, feats: dict[str, torch.Tensor], source: str = "hidden",
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, E], φ [N, D]) of a router in eval mode, φ read by forward hooks: "hidden"
    the input of its last linear layer, "input" the input of its first (the normalised
    features), "both" the two side by side."""
    if source not in SOURCES:
        raise GrowthError(f"unknown φ source {source!r}: use one of {SOURCES}")
    if "base_logits" in feats and f"phi_{source}" in feats:      # ``cached_outputs``
        return feats["base_logits"], feats[f"phi_{source}"]
    first, last = _linears(router)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output) -> None:      # returns None: the output is unchanged
            seen[name] = inputs[0]
        return hook

    hooks = [first.register_forward_hook(keep("input")), last.register_forward_hook(keep("hidden"))]
    try:
        router.eval()
        logits = router(feats)
    finally:
        for hook in hooks:
            hook.remove()
    phi = torch.cat([seen["hidden"], seen["input"]], 1) if source == "both" else seen[source]
    return logits, phi


class GrownRouter(nn.Module):
    """A frozen router plus ``added`` appended logits (see the module docstring).

    ``weight`` [A, D], ``bias`` [A]; ``ngrams`` [4·buckets, A] when the base router has n-gram
    weights (``ngram`` variant), else absent.
    """

    def __init__(self, base: nn.Module, added: int, width: int, ngram_rows: int | None = None,
                 source: str = "hidden"):
        super().__init__()
        self.source = source
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.config = base.config
        self.generator = getattr(base, "generator", None)
        self.num_experts = base.num_experts + added
        self.hidden_size = base.hidden_size
        self.weight = nn.Parameter(torch.zeros(added, width))
        self.bias = nn.Parameter(torch.zeros(added))
        self.ngrams = nn.Parameter(torch.zeros(ngram_rows, added)) if ngram_rows else None

    def added_logits(self, feats: dict[str, torch.Tensor], phi: torch.Tensor) -> torch.Tensor:
        """[N, A]: φ·Wᵀ + b (+ Σ_j w_j · ngrams[id_j])."""
        out = phi @ self.weight.T + self.bias
        if self.ngrams is not None:
            ids = feats["ngram_ids"].long()
            out = out + (self.ngrams[ids] * feats["ngram_w"].unsqueeze(-1)).sum(1)
        return out

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, phi = base_outputs(self.base, feats, self.source)
        return torch.cat([logits, self.added_logits(feats, phi)], -1)    # [N, E + A]


def replay_sample(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded sample of at most ``per_class`` rows of each class."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(out)


def grow_router(router: nn.Module, replay_feats: dict[str, torch.Tensor], replay_labels: torch.Tensor,
                new_feats: dict[str, torch.Tensor], *, l2: float = 1e-3, steps: int = 300,
                ngram_l2: float = 1e-4, calibration: dict[str, torch.Tensor] | None = None,
                max_capture: float = 0.0025, source: str = "hidden") -> tuple[GrownRouter, dict]:
    """Append one expert to ``router`` (a router, or a ``GrownRouter`` to grow again).

    ``replay_feats`` / ``replay_labels`` [R]: old tasks' rows (features as the router reads them;
    labels index the router's current experts); ``new_feats``: the new task's rows (label E).
    Fits only the new logit, by full-batch L-BFGS on the class-balanced cross-entropy over all
    E+1 logits (the new task weighs as much as all old rows together), with L2 ``l2`` on its
    weights and ``ngram_l2`` on its n-gram column (``ngram_l2`` None: no n-gram column); φ from
    ``source`` (``base_outputs``; a grown router keeps the source it was grown with).

    Capture budget: given ``calibration`` (features of old tasks' rows the router never trained
    on), the new logit's bias is lowered, if needed, until at most ``max_capture`` of those rows
    go to the new expert (the old tasks' routing then changes on about that share of inputs).
    Returns the grown router (eval mode) and {"seconds", "loss", "rows_new", "rows_replay",
    "bias_shift", "captured_before"}.
    """
    start = time.time()
    rows_new = next(iter(new_feats.values())).shape[0]
    if rows_new == 0 or replay_labels.numel() == 0:
        raise GrowthError("adding an expert needs rows of the new task and replay rows of the old ones")
    base = router.base if isinstance(router, GrownRouter) else router
    source = router.source if isinstance(router, GrownRouter) else source
    keys = set(new_feats) & set(replay_feats)
    feats = {k: cat_rows(replay_feats[k], new_feats[k]) for k in keys}
    old_logits, phi = _current(router, base, feats, source)              # [R+M, E], [R+M, D]
    num_old = old_logits.shape[1]
    labels = torch.cat([replay_labels, torch.full((rows_new,), num_old)])
    weights = torch.where(labels == num_old, 0.5 / rows_new, 0.5 / replay_labels.numel())
    has_ngrams = isinstance(getattr(base, "ngrams", None), nn.Embedding) and ngram_l2 is not None
    ngram_rows = base.ngrams.weight.shape[0] if has_ngrams else None
    probe = GrownRouter(base, 1, phi.shape[1], ngram_rows, source)        # the new logit alone
    params = [p for p in (probe.weight, probe.bias, probe.ngrams) if p is not None]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")
    state = {}

    def closure():
        opt.zero_grad()
        logits = torch.cat([old_logits, probe.added_logits(feats, phi)], -1)
        loss = (nn.functional.cross_entropy(logits, labels, reduction="none") * weights).sum()
        loss = loss + l2 * probe.weight.pow(2).sum()
        if probe.ngrams is not None:
            loss = loss + ngram_l2 * probe.ngrams.pow(2).sum()
        loss.backward()
        state["loss"] = float(loss.detach())
        return loss

    opt.step(closure)
    shift, captured = _capture_budget(router, base, probe, calibration, max_capture)
    grown = _appended(router, base, probe)
    return grown.eval(), {"seconds": time.time() - start, "loss": state["loss"],
                          "rows_new": rows_new, "rows_replay": int(replay_labels.numel()),
                          "bias_shift": shift, "captured_before": captured}


@torch.no_grad()
def _current(router: nn.Module, base: nn.Module, feats: dict[str, torch.Tensor], source: str,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(``router``'s logits [N, E], the base's φ [N, D]) of full or cached features."""
    router.eval()
    base_logits, phi = base_outputs(base, feats, source)
    return (router(feats) if isinstance(router, GrownRouter) else base_logits), phi


@torch.no_grad()
def _capture_budget(router: nn.Module, base: nn.Module, probe: GrownRouter,
                    calibration: dict[str, torch.Tensor] | None, max_capture: float) -> tuple[float, float | None]:
    """Lower ``probe``'s bias so that at most ``max_capture`` of the ``calibration`` rows (old
    tasks) prefer the new logit; returns (bias shift ≤ 0, share captured before the shift; None
    without calibration rows)."""
    if calibration is None:
        return 0.0, None
    logits, phi = _current(router, base, calibration, probe.source)
    margin = probe.added_logits(calibration, phi)[:, 0] - logits.max(-1).values     # [C]
    captured = float((margin > 0).float().mean())
    if captured <= max_capture:
        return 0.0, captured
    shift = -float(torch.quantile(margin.double(), 1 - max_capture)) - 1e-6
    probe.bias += shift
    return shift, captured


@torch.no_grad()
def _appended(router: nn.Module, base: nn.Module, probe: GrownRouter) -> GrownRouter:
    """``router``'s added rows (none for a plain router) followed by ``probe``'s one row."""
    before = router if isinstance(router, GrownRouter) else None
    added = (before.weight.shape[0] if before is not None else 0) + 1
    grown = GrownRouter(base, added, probe.weight.shape[1],
                        None if probe.ngrams is None else probe.ngrams.shape[0], probe.source)
    rows = [before] if before is not None else []
    grown.weight.copy_(torch.cat([r.weight for r in rows] + [probe.weight]))
    grown.bias.copy_(torch.cat([r.bias for r in rows] + [probe.bias]))
    if grown.ngrams is not None:
        grown.ngrams.copy_(torch.cat([r.ngrams for r in rows] + [probe.ngrams], 1))
    grown.requires_grad_(False)
    return grown


def cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate rows; 2-D tensors of different widths (n-gram ids/weights) are zero-padded."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a = nn.functional.pad(a, (0, width - a.shape[1]))
        b = nn.functional.pad(b, (0, width - b.shape[1]))
    return torch.cat([a, b.to(a.dtype)])
