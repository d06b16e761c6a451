"""Checks of what a command is asked to do, made before any work starts (training can take hours:
a bad ``--out`` or target must fail at once, not when the result is saved): output folders, the
pack a command reads, the base model's target modules and its longest input."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import StoreError, TTMoEError
from ..files import schema
from ..files.locks import locked
from ..services.workspace import default_pack
from .args import UsageError


def check_storable(settings: Mapping, kind: str = "training") -> None:
    """UsageError when the store would refuse to read ``settings`` back (``schema``'s ``kind``:
    "training" for an expert's, "router_settings" for a router's): checked before any work, so
    an hour of training never ends in a file that ``eval-expert`` refuses."""
    try:
        schema.validate(dict(settings), kind, "the settings")
    except schema.SchemaError as exc:
        raise UsageError(f"{exc} (the store refuses such a value, so nothing is trained)") from None


@contextmanager
def writing(path: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold the lock of ``path`` for the whole command: a second command writing there fails at
    once with a UsageError, never replaces this one's result. The other processes of a
    distributed run (accelerate launch) take no lock: the main process writes."""
    from ..runtime import distributed  # heavy: imports torch; kept out of the parser

    stack = ExitStack()
    if distributed.is_main_process():
        try:
            stack.enter_context(locked(path, wait_s=0))
        except StoreError:
            raise UsageError(f"{flag} {path} is being written by another command: wait for it "
                             "or choose another folder") from None
    with stack:
        yield


def check_output(path: str | Path, kind: str, overwrite: bool, load: Callable[[Path], object],
                 flag: str = "--out") -> Path:
    """The folder ``path`` a command will write an expert or a pack (``kind``) to, checked:
    it is not a file or a symbolic link; when it exists and is not empty, it is replaced only with
    ``overwrite`` and only when ``load`` reads it as a valid ``kind`` (a StoreError otherwise);
    and a folder can be created next to it (``check_writable``). UsageError saying why not."""
    out = Path(path)
    if not str(path).strip():
        raise UsageError(f"{flag} is empty: give the folder to write the {kind} to")
    if out.is_symlink():
        raise UsageError(f"{flag} {out} is a symbolic link: give a real folder for the {kind}")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{flag} {out} is a file, not a folder: give a folder for the {kind}")
        if any(out.iterdir()):
            if not overwrite:
                raise UsageError(f"{flag} {out} exists and is not empty; pass --overwrite to "
                                 f"replace it")
            try:
                load(out)
            except TTMoEError as exc:
                raise UsageError(f"{flag} {out} is not a valid {kind}, so --overwrite does not "
                                 f"replace it ({exc})") from None
    check_writable(out.parent, f"{flag} {out}")
    return out


def load_pack(path: str | Path):
    """``store.load_pack``, its StoreError (every bad pack file ends in one) as a UsageError."""
    from .. import store  # heavy: imports torch; kept out of the parser

    try:
        return store.load_pack(path)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None


def shared_folder(spec: str, what: str) -> Path:
    """A local folder, or the snapshot of a hub repo id (``owner/name``: from the local hub
    cache, downloaded unless the hub is turned off), as a UsageError when neither exists."""
    from .. import store  # heavy: imports torch; kept out of the parser

    try:
        return store.resolve_folder(spec, what)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None


def load_mixture(pack: str | None, device: str | None, dtype: str = "float32",
                 pool_dtype: str = "float32", detector: bool = True):
    """The pack's mixture on its own base model, each file of the pack read once (``pack``: a
    folder or a hub repo id), its experts' cores kept in ``pool_dtype``, its out-of-pool
    detector left out when not ``detector``."""
    from ..moe import TTLoRAMoE  # heavy: imports torch; kept out of the parser

    loaded = load_pack(shared_folder(pack, "pack") if pack else default_pack())
    try:
        return TTLoRAMoE.from_loaded_pack(loaded, device=device, dtype=dtype,
                                          pool_dtype=pool_dtype, detector=detector)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None


def load_adhoc(folders: list[str], device: str | None, dtype: str = "float32"):
    """The router-less mixture of expert folders or hub repo ids (``moe.mixture_from_folders``)."""
    from ..moe import mixture_from_folders  # heavy: imports torch; kept out of the parser

    folders = [shared_folder(folder, "expert") for folder in folders]
    try:
        return mixture_from_folders(folders, device=device, dtype=dtype)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None


def check_writable(folder: str | Path, what: str) -> None:
    """UsageError unless a folder can be made in ``folder`` (or in its nearest existing parent,
    when it does not exist yet): a probe folder is created and removed at once. Permission bits
    alone do not say it (root ignores them; /proc refuses root too), so this tries."""
    folder = Path(os.path.abspath(folder))
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {what}: {folder} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ttmoe-probe-", dir=folder))
    except OSError as exc:
        raise UsageError(f"cannot write {what}: {folder} does not accept new files "
                         f"({exc.strerror or exc})") from None


def check_targets(model, targets: list[str] | None, shapes: dict[str, list[int]] | None) -> None:
    """UsageError unless every target names linear modules of ``model`` (the model family's
    defaults when ``targets`` is None) and every ``--shape`` names a target (or, where a target's
    layers differ in size, one of its roles such as ``intermediate.dense``) and fits its layers."""
    # heavy: imports torch; kept out of the parser
    from ..adapters import find_targets, resolve_shapes
    from ..base.backbone import default_targets

    try:
        chosen = list(targets or default_targets(model.config.model_type))
        for target in chosen:
            find_targets(model, [target])
    except ValueError as exc:
        raise UsageError(f"--targets: {exc}") from None
    try:
        resolve_shapes(model, chosen, shapes)
    except ValueError as exc:
        raise UsageError(f"--shape {exc}") from None


def check_max_length(backbone, max_length: int) -> None:
    """UsageError when ``max_length`` tokens exceed what the base model's positions allow."""
    from ..base.backbone import max_positions  # heavy: imports torch; kept out of the parser

    limit = max_positions(backbone)
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length} is more than the base model takes "
                         f"({limit} tokens)")
