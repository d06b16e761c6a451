"""What an expert or a pack folder says about itself when it leaves this machine: no absolute
paths in its JSON (``publishable``), PEFT's keys for a LoRA expert (``peft_keys``), a model card
(``README.md``, ``huggingface_hub.ModelCard``: base model by its hub id, tags, metrics, the
command that trains it again), and a pack or expert named by a hub repo id (``resolve_folder``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.sources import cached_snapshot, hub_id, hub_offline
from ..files.safefs import StoreError
from .filenames import CARD_FILE, CONFIG_FILE, PACK_FILE

if TYPE_CHECKING:
    from ..experts import ExpertConfig

# an absolute path inside a text: a "/" at the start or after a space, bracket or quote
_ABSOLUTE = re.compile(r"(?<![\w.~/:])/(?:[^\s/,;:()'\"]+/)*[^\s/,;:()'\"]+")


def publishable(value: Any) -> Any:
    """``value`` (JSON data) with every absolute path in its texts cut to its last two parts
    (a task's data file ``/data/dir/cola/train.parquet`` -> ``cola/train.parquet``): where the
    data lay on the machine that trained it is not part of what is shared."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: "/".join(m.group(0).split("/")[1:][-2:]), value)
    if isinstance(value, Mapping):
        return {k: publishable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [publishable(v) for v in value]
    return value


def peft_keys(config: ExpertConfig, base_name: str) -> dict:
    """The ``adapter_config.json`` keys with which ``peft.PeftModel.from_pretrained`` loads a LoRA
    expert onto its base model (``AutoModel``: no task type); the weights already carry PEFT's
    names."""
    return {"peft_type": "LORA", "task_type": None, "r": config.rank, "lora_alpha": config.alpha,
            "target_modules": list(config.targets or []), "lora_dropout": 0.0, "bias": "none",
            "base_model_name_or_path": hub_id(base_name) or base_name, "inference_mode": True}


def train_command(training: Mapping) -> str:
    """The ``train-expert`` command that trains an expert with these settings again."""
    flags = [("--task", training["task"]), ("--method", training["method"]),
             ("--rank", training.get("rank")), ("--alpha", training.get("alpha")),
             ("--lr", training.get("lr")), ("--max-steps", training.get("steps")),
             ("--batch-size", training.get("batch_size")),
             ("--max-length", training.get("max_length")), ("--seed", training.get("seed")),
             ("--init", training.get("init")),
             ("--targets", ",".join(training.get("targets") or []) or None),
             ("--eval-every", training.get("eval_every")), ("--patience", training.get("patience")),
             ("--min-steps", training.get("min_steps"))]
    return " ".join(["ttmoe train-expert"] + [f"{flag} {value:g}" if isinstance(value, float)
                                               else f"{flag} {value}"
                                               for flag, value in flags if value is not None]
                    + ["--out", training.get("name") or training["task"]])


def _card(base_name: str, tags: list[str], library: str, title: str, body: str):
    # network clients, only when a hub id is resolved or a card is written
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=hub_id(base_name), library_name=library, license=None,
                         tags=tags, pipeline_tag="text-classification")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n")


def _metric_rows(metrics: Mapping) -> list[str]:
    return [f"| {k} | {v:.4f} |" for k, v in metrics.items()
            if isinstance(v, float) and not k.endswith("seconds")]


def expert_card(config: Mapping):
    """The model card of an expert from its ``adapter_config.json`` content."""
    lora = config["method"] == "lora"
    what = ("A **LoRA adapter** in PEFT's format: `PeftModel.from_pretrained(AutoModel."
            "from_pretrained(base), folder)` loads it; the task head is in the same file "
            "(`head.*`)." if lora else
            "A **TT-LoRA expert**: tensor-train cores for the adapted projections of every layer "
            "and a task head, in this project's format (not a PEFT adapter): "
            "`ttmoe_core.store.load_expert(folder)` loads it; `ttmoe predict --expert-dir` "
            "serves it.")
    rows = _metric_rows(config.get("metrics") or {})
    data = config.get("data") or {}
    body = "\n".join([
        what, "",
        f"- task: `{config['task']}` (labels: {', '.join(config['label_names']) or 'a score'})",
        f"- method: {config['method']}, rank {config.get('rank')}, targets "
        f"{', '.join(config.get('targets') or [])}; {config.get('trainable_params', 0):,} "
        "trainable parameters",
        f"- base model: `{hub_id(config['base_model']['name']) or config['base_model']['name']}`",
        f"- data: {data.get('train_rows', '?')} training rows of `{data.get('train', '?')}`", "",
        "## Metrics (validation split)", "", "| metric | value |", "|---|---|", *rows, "",
        "## Training", "", f"```bash\n{train_command(config['training'])}\n```"])
    return _card(config["base_model"]["name"], ["ttmoe", config["method"], config["task"]],
                 "peft" if lora else "ttmoe", f"{config['name']}: {config['method']} expert", body)


def pack_card(folder: Path, name: str | None = None):
    """The model card of the pack in ``folder`` (its manifest and its experts' configs), titled
    ``name`` (default: the folder's name; a pack written through a temporary folder names the
    folder it lands in)."""
    pack = json.loads((folder / PACK_FILE).read_text())          # written by the store just now
    experts = [json.loads((folder / "experts" / name / CONFIG_FILE).read_text())
               for name in pack["experts"]]
    router = pack.get("router") or {}
    routing = (pack.get("metrics") or {}).get("router") or {}
    rows = [f"| {e['name']} | {e['task']} | {e['method']} | "
            + ", ".join(f"{k} {v:.4f}" for k, v in (e.get("metrics") or {}).items()
                        if isinstance(v, float) and not k.endswith("seconds")
                        and not k.startswith("holdout")) + " |" for e in experts]
    command = (pack.get("build") or {}).get("command")
    body = "\n".join([
        f"A TT-LoRA MoE pack: {len(experts)} experts on one frozen base model behind a "
        f"router ({router.get('variant', 'none')}) that picks one expert per input. "
        "`ttmoe predict --pack <this repo id>` serves it.", "",
        "| expert | task | method | metrics |", "|---|---|---|---|", *rows, "",
        f"Router: {router.get('variant', 'none')}, routing accuracy "
        f"{routing['accuracy']:.4f} on {routing.get('rows', '?')} held-out inputs."
        if "accuracy" in routing else "Router: none yet.", "",
        "## Built with", "", f"```bash\nttmoe {command}\n```" if command else "(not recorded)"])
    tags = ["ttmoe", "mixture-of-experts", "tt-lora", *sorted({e["task"] for e in experts})]
    return _card(pack["base_model"]["name"], tags, "ttmoe", f"{name or folder.resolve().name}: TT-LoRA MoE pack",
                 body)


def write_pack_card(folder: Path, name: str | None = None) -> None:
    """The pack card, titled ``name`` (default: the folder's), into ``folder``'s ``README.md``
    (an unpublished pack folder)."""
    pack_card(folder, name).save(folder / CARD_FILE)


def resolve_folder(spec: str | Path, what: str = "pack") -> Path:
    """A local folder as it is; else a hub repo id (``owner/name``) from the local hub cache, or
    downloaded when the hub is not turned off. StoreError when neither holds it."""
    path = Path(spec).expanduser()
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)):
        return path
    found = cached_snapshot(str(spec))
    if found is None and not hub_offline():
        # network clients, only when a hub id is resolved or a card is written
        from huggingface_hub import snapshot_download

        try:
            found = snapshot_download(str(spec))
        except Exception as exc:  # noqa: BLE001 -- network, auth or a repo that does not exist
            raise StoreError(f"{what} {spec}: no such folder, and the hub has no such repo "
                             f"reachable ({type(exc).__name__})") from None
    if found is None:
        raise StoreError(f"{what} {spec}: no such folder, and the hub repo is not in the local "
                         "cache (the hub is turned off)")
    return Path(found)
