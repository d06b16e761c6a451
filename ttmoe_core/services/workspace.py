"""Every file operation a user can trigger, in one place: list, save, replace, rename and delete
experts, build packs and save their routers, all inside one root folder.

A workspace root holds experts as ``<root>/<name>/`` and packs as ``<root>/packs/<name>/``. Every
name follows ``names.NAME_RULE`` (a name is never a path); every folder written or removed is
checked to stay inside the root (symbolic links are refused); replace acts only on folders that
are valid experts or packs, delete also on a corrupt one whose folder holds nothing but the files
of its kind (so a broken expert can be removed, a folder of other files never). Problems raise
``WorkspaceError`` (a ``StoreError``), with a message a person can act on. Reading any folder
(``list_experts``, ``list_packs``) is harmless, allowed anywhere, and never raises.

Opening a workspace recovers what killed saves left in it (``store.recover``). A server's
workspace root may hold sub-workspaces (``sub_folders``, ``sub_workspace``), one a visitor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import store
from ..errors import WorkspaceError
from ..files import safefs
from ..files.names import NameRuleError, check_name, inside, is_valid_name

if TYPE_CHECKING:  # annotations only: the CLI's parser imports this module without torch
    from ..experts import Expert

PACKS = "packs"              # the sub-folder of the root that holds packs (not an expert name)
RESERVED = {PACKS, "reports"}   # folders of a workspace root that are not sub-workspaces
UNEXPECTED = "unreadable (unexpected "   # how a listing reports an error that is not a StoreError
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_pack() -> Path:
    """The committed demo pack of this repository (``assets/demo``)."""
    return REPO_ROOT / "assets" / "demo"


def shipped_packs() -> list[Path]:
    """The packs committed in this repository's ``assets/`` (the demo pack first), e.g. the
    MiniLM demo and the SmolLM2 decoder demo."""
    assets = REPO_ROOT / "assets"
    others = sorted(p for p in assets.iterdir() if p.is_dir() and p != default_pack()
                    and is_pack(p)) if assets.is_dir() else []
    return [default_pack(), *others]


def pack_file(folder: str | Path) -> Path:
    """The manifest whose presence makes ``folder`` a pack (``pack.json``)."""
    return Path(folder) / store.PACK_FILE


def is_pack(folder: str | Path) -> bool:
    """Whether ``folder`` holds a pack manifest (valid or not: ``store.load_pack`` says)."""
    return pack_file(folder).is_file()


def pack_experts(folder: str | Path) -> Path:
    """The folder of the pack ``folder``'s experts (one expert folder each)."""
    return Path(folder) / "experts"


def has_router(folder: str | Path) -> bool:
    """Whether the pack ``folder`` holds a router."""
    return (Path(folder) / store.ROUTER_CONFIG_FILE).is_file()


def router_file(folder: str | Path) -> Path:
    """The file of the pack ``folder``'s router configuration (for captions)."""
    return Path(folder) / store.ROUTER_CONFIG_FILE


def sub_folders(root: Path) -> list[str]:
    """The sub-workspaces of ``root`` a visitor may choose: real folders whose name follows the
    name rule and that are not an expert, a pack or one of the root's own folders (``RESERVED``)."""
    try:
        children = sorted(Path(root).iterdir())
    except OSError:
        return []
    return [c.name for c in children
            if is_valid_name(c.name) and c.name not in RESERVED and c.is_dir()
            and not c.is_symlink() and not (c / store.CONFIG_FILE).exists()
            and not (c / store.PACK_FILE).exists()]


def sub_workspace(root: Path, name: str | None) -> Workspace:
    """The workspace ``root/name`` (``root`` itself for None): ``name`` follows the name rule, is
    not one of the root's own folders, an expert or a symbolic link; WorkspaceError otherwise."""
    root = Path(root)
    if not name:
        return Workspace(root)
    if name in RESERVED or name not in sub_folders(root) and (root / name).exists():
        raise WorkspaceError(f"{name!r} is taken by an expert, a pack or the workspace's own "
                             "folders: choose another sub-folder")
    try:
        check_name(name, "sub-folder name")
        inside(root, name)
    except NameRuleError as exc:
        raise WorkspaceError(str(exc)) from None
    return Workspace(root / name)


def list_experts(folder: str | Path) -> tuple[list[Path], dict[Path, str]]:
    """Expert folders under ``folder`` (one level): (valid ones, {invalid one: reason}).

    Folders without an expert file and hidden ones (temporary saves) are skipped; never raises.
    """
    return _listing(folder, (store.CONFIG_FILE, store.WEIGHTS_FILE), store.load_expert)


def list_packs(folder: str | Path) -> tuple[list[Path], dict[Path, str]]:
    """Pack folders under ``folder`` (one level, those with a ``pack.json``): (valid, {invalid: reason})."""
    return _listing(folder, (store.PACK_FILE,), store.load_pack)


def _listing(folder: str | Path, markers: Sequence[str],
             load: Callable[[Path], object]) -> tuple[list[Path], dict[Path, str]]:
    valid: list[Path] = []
    invalid: dict[Path, str] = {}
    try:
        children = sorted(Path(e.path) for e in os.scandir(folder) if not e.name.startswith("."))
    except (OSError, ValueError):
        return valid, invalid
    for child in children:
        try:
            if not child.is_dir() or not any(os.path.lexists(child / m) for m in markers):
                continue
            if child.is_symlink():
                raise store.StoreError(f"{child} is a symbolic link: the workspace only uses real "
                                       "folders")
            load(child)
            valid.append(child)
        except store.StoreError as exc:
            invalid[child] = str(exc)
        except Exception as exc:    # noqa: BLE001 -- a listing shows every folder, whatever is in it
            invalid[child] = f"{UNEXPECTED}{type(exc).__name__}: {exc})"
    return valid, invalid


class Workspace:
    """The file operations of one workspace root (nothing is created until something is saved)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        store.recover(self.root)
        store.recover(self.packs_root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def packs_root(self) -> Path:
        return self.root / PACKS

    # ------------------------------------------------------------------ paths

    def expert_dir(self, name: str) -> Path:
        """``<root>/<name>``: the folder of the expert ``name`` (checked, not necessarily there)."""
        if name == PACKS:
            raise WorkspaceError(f"{PACKS!r} is the workspace's folder of packs: choose another "
                                 "expert name")
        return self._child(self.root, name, "expert name")

    def pack_dir(self, name: str) -> Path:
        """``<root>/packs/<name>``: the folder of the pack ``name`` (checked, not necessarily there)."""
        return self._child(self.packs_root, name, "pack name")

    def _child(self, parent: Path, name: str, what: str) -> Path:
        try:
            check_name(name, what)
            path = parent / name
            inside(self.root, path.relative_to(self.root))
        except NameRuleError as exc:
            raise WorkspaceError(str(exc)) from None
        if path.is_symlink():
            raise WorkspaceError(f"{path} is a symbolic link: the workspace only writes and "
                                 "removes real folders")
        return path

    # ------------------------------------------------------------------ listing

    def list_experts(self) -> tuple[list[Path], dict[Path, str]]:
        """The workspace's experts: (valid folders, {invalid folder: reason})."""
        return list_experts(self.root)

    def list_packs(self) -> tuple[list[Path], dict[Path, str]]:
        """The workspace's packs: (valid folders, {invalid folder: reason})."""
        return list_packs(self.packs_root)

    # ------------------------------------------------------------------ experts

    def expert_target(self, name: str, replace: bool = False) -> Path:
        """Where a new expert ``name`` may be written: its folder is free, or (with ``replace``)
        holds a valid expert. Call it before training to fail early."""
        path = self.expert_dir(name)
        if path.exists():
            if not replace:
                raise WorkspaceError(f"{path} already exists: choose another name or replace it")
            _valid(path, "expert", "replace")
        return path

    def save_expert(self, expert: Expert, replace: bool = False) -> Path:
        """Write ``expert`` to ``<root>/<expert.name>`` (atomic); ``replace``: over a valid expert.
        Without it, a folder another writer made meanwhile is never replaced."""
        with store.locked(self.expert_dir(expert.name)):
            return store.save_expert(expert, self.expert_target(expert.name, replace),
                                     new=not replace)

    def rename_expert(self, name: str, new_name: str) -> Path:
        """Give the expert ``name`` the name ``new_name`` (its folder and config); returns the new
        folder. The new folder is written whole before the old one is removed; both names are
        locked, so two renames to one name cannot both succeed."""
        source = self.expert_dir(name)
        with store.locked(source, self.expert_dir(new_name)):
            expert = _valid(source, "expert", "rename")
            target = self.expert_target(new_name)
            expert.name = new_name
            store.save_expert(expert, target, new=True)
            safefs.remove(source)
        return target

    def delete_expert(self, name: str) -> None:
        """Remove the folder of the expert ``name``: a valid expert, or a corrupt one whose folder
        holds only expert files."""
        path = self.expert_dir(name)
        with store.locked(path):
            _valid_or_only_ours(path, "expert", "delete")
            safefs.remove(path)

    # ------------------------------------------------------------------ packs

    def build_pack(self, name: str, experts: Sequence[Expert | str | Path], **router) -> list[Expert]:
        """A new pack ``<root>/packs/<name>`` of the given experts (objects or folders, which may
        lie outside the workspace: they are only read); ``router``: ``store.build_pack``'s router
        arguments. Refuses a name that is taken."""
        path = self.pack_dir(name)
        with store.locked(path):
            if path.exists():
                raise WorkspaceError(f"{path} already exists: choose another pack name")
            return store.build_pack(path, experts, **router)

    def save_router(self, name: str, router, expert_names: Sequence[str], metrics: Mapping,
                    base, extra: Mapping | None = None, companions=None) -> Path:
        """Write (or replace) the router of the workspace's pack ``name`` (``store.save_router``;
        ``companions(folder)`` writes its replay rows in the same step)."""
        path = self.pack_dir(name)
        with store.locked(path):
            _valid(path, "pack", "save a router to")
            store.save_router(path, router, list(expert_names), metrics, base, extra,
                              companions)
        return path

    def delete_pack(self, name: str) -> None:
        """Remove the folder of the pack ``name``: a valid pack, or a corrupt one whose folder
        holds only pack files and expert folders."""
        path = self.pack_dir(name)
        with store.locked(path):
            _valid_or_only_ours(path, "pack", "delete")
            safefs.remove(path)


def _valid(path: Path, kind: str, action: str):
    """The expert or pack (``kind``) at ``path``; WorkspaceError saying why ``action`` is refused."""
    if not path.is_dir():
        raise WorkspaceError(f"cannot {action} {path}: there is no such {kind}")
    try:
        return store.load_expert(path) if kind == "expert" else store.load_pack(path)
    except store.StoreError as exc:
        raise WorkspaceError(f"cannot {action} {path}: it is not a valid {kind} ({exc})") from None


PACK_ENTRIES = {store.PACK_FILE, store.ROUTER_CONFIG_FILE, store.ROUTER_WEIGHTS_FILE, "experts",
                store.CARD_FILE}
EXPERT_ENTRIES = {store.CONFIG_FILE, store.WEIGHTS_FILE, store.CARD_FILE}


def _valid_or_only_ours(path: Path, kind: str, action: str) -> None:
    """Like ``_valid``, but a corrupt ``kind`` passes when ``_only_ours``."""
    try:
        _valid(path, kind, action)
    except WorkspaceError:
        if not (path.is_dir() and _only_ours(path, kind)):
            raise


def _only_ours(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds nothing but what the store writes for ``kind`` (an expert: its two
    files; a pack: its files and ``experts/`` of such expert folders) and leftovers of killed
    saves, with its marker file (``adapter_config.json`` / ``pack.json``) present. A symbolic link
    with one of these names counts: removing a link never touches what it points to."""
    allowed = EXPERT_ENTRIES if kind == "expert" else PACK_ENTRIES
    marker = store.CONFIG_FILE if kind == "expert" else store.PACK_FILE
    seen = set()
    try:
        for entry in os.scandir(folder):
            if safefs.is_leftover(entry.name):
                continue
            if entry.name not in allowed:
                return False
            seen.add(entry.name)
            if entry.is_symlink():
                continue
            if entry.name == "experts":
                if not entry.is_dir(follow_symlinks=False) or not all(
                        e.is_symlink() or (e.is_dir(follow_symlinks=False)
                                           and _only_ours(Path(e.path), "expert"))
                        for e in os.scandir(entry.path)):
                    return False
            elif not entry.is_file(follow_symlinks=False):
                return False
    except OSError:
        return False
    return marker in seen
