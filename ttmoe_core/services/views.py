"""What the app shows, as plain data and words: summaries of experts and packs, ΔW spectra, and
the sentences and formats the pages put on screen.

Every function here reads through the store (never a file name of its own) and returns JSON-like
data or text, so the pages only draw it; nothing imports streamlit. Reading a folder that is not
a valid expert or pack gives {"error": ...} or lists it apart, never raises (but ``expert_spectra``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from .. import budget, experts, store, tasks, tt
from ..base import sources
from ..errors import TTMoEError, one_line
from ..routing import calibrated
from . import workspace

TEXT_MAX_CHARS = 20_000      # one Playground text (the engine keeps 64 characters a token anyway)
BATCH_MAX_CHARS = 200_000    # the Playground's batch box, all lines together

# ----------------------------------------------------------------------------- cache keys


def stamp(*paths: str | Path) -> float:
    """Latest mtime among the JSON files under ``paths`` and the folders themselves (0 when
    none): a cache key that changes when an expert or a pack changes."""
    latest = 0.0
    for path in map(Path, paths):
        if path.is_file():
            latest = max(latest, path.stat().st_mtime)
        elif path.is_dir():
            for child in path.rglob("*.json"):
                latest = max(latest, child.stat().st_mtime)
            latest = max(latest, path.stat().st_mtime)
    return latest


# ----------------------------------------------------------------------------- experts and packs


def expert_info(expert: experts.Expert, folder: str | Path) -> dict:
    """Plain-data summary of an expert for tables and captions."""
    cfg = expert.config
    head = sum(t.numel() for k, t in expert.tensors.items() if k.startswith("head."))
    metric = (tasks.primary_metric(cfg.task) if cfg.task in tasks.TASKS
              else ("pearson" if expert.is_regression else "accuracy"))
    return {"name": expert.name, "folder": str(folder), "task": cfg.task, "method": cfg.method,
            "rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets or []),
            "tt_layout": {t: {"in_factors": list(l["in_factors"]),
                              "out_factors": list(l["out_factors"])}
                          for t, l in expert.tt_layout.items()},
            "label_names": list(expert.label_names), "metrics": dict(expert.metrics),
            "metric": metric, "metric_value": expert.metrics.get(metric),
            "quality": experts.assess(expert.metrics, expert.label_names).to_dict(),
            "history": list(expert.history), "data": dict(expert.data), "created": expert.created,
            "training": cfg.to_dict(), "trainable_params": expert.trainable_params(),
            "adapter_params": expert.adapter_params(), "head_params": head,
            "base": expert.base.to_dict()}


def pack_summary(path: str | Path) -> dict:
    """{"error"} or the pack's manifest, experts (``expert_info``) and stored router (its config,
    metrics, parameters and file)."""
    try:
        pack = store.load_pack(path)
    except (TTMoEError, OSError, ValueError) as exc:
        return {"error": one_line(exc)}
    router_info = None
    if pack.router_config is not None:
        router_info = {"config": pack.router_config.to_dict(), "metrics": pack.router_metrics,
                       "params": (pack.manifest.get("router") or {}).get("params"),
                       "file": str(workspace.router_file(path))}
    folder = Path(path)
    infos = [expert_info(e, folder / "experts" / e.name) for e in pack.experts]
    created = pack.manifest.get("created") or max((i["created"] for i in infos), default="")
    return {"path": str(path), "names": pack.names, "manifest": pack.manifest,
            "router": router_info, "experts": infos, "created": created,
            "base_model": pack.base_model}


def pack_base_model(path: str | Path) -> dict:
    """The base model a pack was built on and whether this machine can load it now:
    {"name", "ready", "command"}: ``command`` pulls a registered model not pulled yet (None when
    nothing is to be pulled: embedded, pulled, a local folder or a hub id, which loading tells)."""
    try:
        name = store.read_pack_manifest(Path(path))["base_model"]["name"]
    except (TTMoEError, OSError, KeyError, TypeError):
        return {"name": None, "ready": True, "command": None}     # loading the pack says why
    known = {row["name"]: row for row in sources.list_models()}
    row = known.get(str(name).lower())
    if row is None or row["ready"]:
        return {"name": name, "ready": True, "command": None}
    return {"name": row["name"], "ready": False,
            "command": f"python -m ttmoe_core models pull {row['name']}"}


def folder_packs(root: str | Path) -> tuple[list[str], dict[str, str]]:
    """Packs under ``root`` (one level): ([valid folder], {invalid folder: reason})."""
    valid, invalid = workspace.list_packs(root)
    return [str(p) for p in valid], {str(k): v for k, v in invalid.items()}


def folder_experts(root: str | Path) -> tuple[list[dict], dict[str, str]]:
    """Experts under ``root`` (one level): ([expert_info], {invalid folder: reason})."""
    valid, invalid = workspace.list_experts(root)
    infos = []
    for folder in valid:
        try:
            infos.append(expert_info(store.load_expert(folder), folder))
        except store.StoreError as exc:  # changed between the listing and now
            invalid[folder] = str(exc)
    return infos, {str(k): v for k, v in invalid.items()}


def expert_spectra(folder: str | Path) -> dict | None:
    """The expert at ``folder``'s adapted layers, ‖α·ΔW‖_F and singular values of each
    (``experts.delta_w_spectra``, from the stored factors: ΔW is never formed); None for bottleneck
    adapters. StoreError when the folder is not a valid expert."""
    expert = store.load_expert(folder)
    cfg = expert.config
    if cfg.method not in ("tt-lora", "lora"):
        return None
    spectra = experts.delta_w_spectra(expert.tensors, cfg.method, cfg.alpha, cfg.rank, expert.tt_layout)
    return {"layers": list(spectra), "values": {k: v.tolist() for k, v in spectra.items()},
            "norms": [float(v.norm()) for v in spectra.values()]}   # ‖ΔW‖_F = ‖σ‖_2


def lora_reference(info: dict) -> int | None:
    """LoRA r16 parameters on the same targets of the same base model (None when unknown)."""
    name = info["base"].get("name", "")
    if name not in budget.PRESETS or not info["targets"]:
        return None
    try:
        return budget.compute_budget(name, "lora", rank=budget.DEFAULT_LORA_RANK,
                                     targets=info["targets"]).trainable_params
    except ValueError:
        return None


def quality_note(expert: experts.Expert) -> tuple[bool, str]:
    """(weak, words) of an expert's validation score (``experts.assess``)."""
    verdict = experts.assess(expert.metrics, expert.label_names)
    return verdict.weak, experts.words(verdict)


# ----------------------------------------------------------------------------- formats and words


def fmt_date(iso: str | None) -> str:
    """``2026-11-24T22:27:46+00:00`` -> ``2026-11-24 22:27 UTC`` (unknown: "date unknown")."""
    if not iso:
        return "date unknown"
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M") + " UTC"


def training_caption(info: dict) -> str:
    """Where an expert's numbers come from: date, settings, data."""
    cfg = info["training"]
    data = info.get("data") or {}
    parts = [f"trained {fmt_date(info['created'])}", f"{cfg.get('steps')} steps",
             f"batch {cfg.get('batch_size')}", f"lr {cfg.get('lr'):g}" if cfg.get("lr") else "",
             f"max length {cfg.get('max_length')}", f"init {cfg.get('init')}",
             f"seed {cfg.get('seed')}"]
    text = " · ".join(p for p in parts if p)
    if data.get("eval"):
        text += f". Validation: {data.get('eval_rows', '?')} rows of {data['eval']}"
    return text + "."


def shape_text(layout: dict) -> str:
    """``{"in_factors": [8, 8, 6], "out_factors": [6, 8, 8]}`` -> ``8,8,6 | 6,8,8``."""
    return (",".join(map(str, layout["in_factors"])) + " | "
            + ",".join(map(str, layout["out_factors"])))


def parse_shape(text: str, d_in: int, d_out: int) -> tuple[list[int] | None, str | None]:
    """A typed TT shape (``tt.parse_shape``) checked against a ``d_in`` → ``d_out`` layer:
    (None, None) for "automatic"/empty, (shape, None) or (None, error)."""
    text = (text or "").strip().lower()
    if text in ("", "auto", "automatic"):
        return None, None
    try:
        shape = tt.parse_shape(text)
    except ValueError:
        return None, f"“{text}” is not a list of integers: write e.g. 8,8,6,6,8,8 or “automatic”"
    try:
        m, n = tt.split_shape(shape, d_in, d_out)
    except ValueError as exc:
        return None, str(exc)
    return m + n, None


def holdout_words(events: list[dict]) -> str:
    """`` · hold-out accuracy 0.812 (best at step 300)`` from a training job's latest
    evaluation event (early stopping), or "" before the first one."""
    held = next((e for e in reversed(events) if e.get("holdout")), None)
    if held is None:
        return ""
    key, value = next(iter(held["holdout"].items()))
    return f" · hold-out {key} {value:.3f} (best at step {held.get('best_step')})"


def confidence_words(probability: float) -> str:
    """The router's confidence in its top choice, in words (a bar alone hides a weak choice)."""
    if probability >= 0.9:
        return f"The router is confident ({probability:.0%})."
    if probability >= 0.6:
        return f"The router is fairly sure ({probability:.0%}), not certain."
    return (f"The router is unsure ({probability:.0%}): the input may fit several experts, or "
            "none of their tasks; check the forced answers.")


def decision_words(row: dict, temperature: float | None) -> tuple[str, str] | None:
    """(level, sentence) for a routed row out of the pool or with a weak choice: "error" /
    "warning"; None when nothing needs saying. ``temperature``: the detector's calibration of
    the router (None: the raw probabilities)."""
    if row.get("in_pool") is False:
        return "error", ("No expert in this pack fits this input: it does not look like any of "
                         f"their tasks (pool score {row['pool_score']:+.2f}, below the pack's "
                         "threshold). Any answer below is a guess.")
    probs = row.get("router_probs") or {}
    if temperature is not None:
        probs = calibrated(probs, temperature)
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    if len(ranked) >= 2 and ranked[0][1] < 0.6:
        (a, pa), (b, pb) = ranked[:2]
        return "warning", (f"The router is unsure between {a} and {b} ({pa:.0%} / {pb:.0%}, "
                           "calibrated): compare their answers with the oracle toggle.")
    return None
