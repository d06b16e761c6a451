"""Training checkpoints: one folder per run, replaced atomically (``safefs.atomic_dir``) each time.

    <folder>/state.safetensors   trainable tensors ``param.<name>``, best weights ``best.<name>``,
                                 AdamW moments ``opt.<index>.<key>``, generator state ``generator``
    <folder>/state.json          what the run was (``fingerprint``: its settings), the loop's
                                 position, the batch order, the schedule, the optimizer's settings

Tensors go to safetensors and everything else to JSON, so loading a checkpoint never unpickles
anything. A checkpoint resumes only the run that wrote it: ``load`` compares the fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..files import safefs, schema, tensorfile
from ..files.locks import locked
from ..files.safefs import StoreError

FORMAT = "ttmoe-checkpoint"
TENSORS, STATE = "state.safetensors", "state.json"
JSON_LIMIT = 200_000_000      # bytes: the batch order of a large epoch is the biggest part


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").clone().contiguous()


def _split(state: Mapping) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON) of a loop state (``training.fit``'s ``state()``)."""
    tensors = {f"param.{n}": _cpu(p) for n, p in state["params"].items()}
    if state["best"] is not None:
        tensors |= {f"best.{n}": _cpu(p) for n, p in state["best"].items()}
    tensors["generator"] = _cpu(state["generator"])
    opt = state["optimizer"]
    plain: dict[str, dict] = {}
    for index, values in opt["state"].items():
        plain[str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{key}"] = _cpu(value)
            else:
                plain[str(index)][key] = value
    data = {"loop": state["loop"], "batches": state["batches"], "schedule": state["schedule"],
            "optimizer": {"param_groups": opt["param_groups"], "state": plain},
            "has_best": state["best"] is not None}
    return tensors, data


def _join(tensors: Mapping[str, torch.Tensor], data: Mapping) -> dict:
    """The loop state back from ``_split``'s parts."""
    opt_state: dict[int, dict] = {int(i): dict(v) for i, v in data["optimizer"]["state"].items()}
    params, best = {}, {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "param":
            params[rest] = value
        elif kind == "best":
            best[rest] = value
        elif kind == "opt":
            index, _, name = rest.partition(".")
            opt_state.setdefault(int(index), {})[name] = value
    return {"loop": data["loop"], "batches": data["batches"], "schedule": data["schedule"],
            "optimizer": {"state": opt_state, "param_groups": data["optimizer"]["param_groups"]},
            "generator": tensors["generator"], "params": params,
            "best": best if data["has_best"] else None}


class Checkpointer:
    """Where and how often one run saves itself; ``resume``: continue from the saved state.

    ``fingerprint``: the run's settings (JSON); a checkpoint with another fingerprint is refused.
    ``added``: settings introduced after checkpoints of older versions were written, with the
    value those versions used (a checkpoint that lacks such a key is read as having that value,
    so a long run started by an older checkout resumes under a newer one).
    """

    def __init__(self, folder: str | Path, every: int = 0, resume: bool = False,
                 fingerprint: Mapping | None = None, added: Mapping | None = None):
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0, got {every}")
        self.folder = Path(folder)
        self.every = int(every)
        self.resume = bool(resume)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint or {})))
        self.added = json.loads(json.dumps(dict(added or {})))

    def exists(self) -> bool:
        return (self.folder / STATE).is_file() and (self.folder / TENSORS).is_file()

    def save(self, state: Mapping) -> None:
        tensors, data = _split(state)
        data = safefs.nan_to_null({"format": FORMAT, "fingerprint": self.fingerprint, **data})
        with locked(self.folder), safefs.atomic_dir(self.folder) as tmp:
            save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
            safefs.write_json(tmp / STATE, data)

    def load(self) -> dict | None:
        """The saved state (None when there is no checkpoint); CheckpointError when it is
        unreadable, damaged (every value of ``state.json`` is checked against its schema) or was
        written by a run with other settings."""
        safefs.recover(self.folder.parent, self.folder.name)
        if not self.exists():
            return None
        what = f"checkpoint {self.folder}"
        try:
            with locked(self.folder):       # never half of one save and half of the next
                raw = safefs.read_bounded(self.folder / STATE, JSON_LIMIT, what)
                data = safefs.parse_json(raw, what)
                header = tensorfile.read_header(self.folder / TENSORS, what)
                tensors = tensorfile.load(self.folder / TENSORS, header, what, max_abs=None)
        except (StoreError, OSError, ValueError) as exc:
            raise CheckpointError(f"{what} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{what}: {STATE} is not a training checkpoint")
        try:
            schema.validate(data, "checkpoint", STATE)
        except schema.SchemaError as exc:
            raise CheckpointError(f"{what} is damaged: {exc}: remove it to start again") from None
        theirs = data.get("fingerprint")
        if isinstance(theirs, dict):
            theirs = {**{k: v for k, v in self.added.items() if k in self.fingerprint}, **theirs}
        if theirs != self.fingerprint:
            theirs = theirs if isinstance(theirs, dict) else {}
            differ = sorted(k for k in set(theirs) | set(self.fingerprint)
                            if theirs.get(k) != self.fingerprint.get(k))
            raise CheckpointError(f"{what} belongs to a run with other settings (they differ in "
                                  f"{', '.join(differ) or 'format'}): remove it or resume that run")
        try:
            return _join(tensors, data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{what} is incomplete: {exc!r}") from None

    def remove(self) -> None:
        """Delete the checkpoint (after the run's result is safely saved)."""
        safefs.remove(self.folder)
