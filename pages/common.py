"""What the pages share: the sidebar's workspace choice, cached engine objects and views, safe
calls, job widgets. What is shown (summaries, words, formats) comes from
``ttmoe_core.services.views``; every file rule from ``ttmoe_core.services.workspace``.

A plain module (``st.navigation`` lists the pages explicitly, so this file is never a page).
Cached resources are shared by every session of the server: the base model and each mixture are
read-only at inference (the expert of each row travels with the call), and training works on a
copy of the base model. Results read from disk are cached with a stamp of the files' mtimes, so a
changed folder is read again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st


def legacy_pages_dir_workaround() -> None:
    """WORKAROUND for Streamlit 1.67, which has no supported switch for this; remove it when
    ``pages/`` is renamed or Streamlit fixes it. Tracking: streamlit/streamlit#9624 (deep links
    on first load) and the review of streamlit/streamlit#10276 (a ``pages/`` folder with
    ``st.navigation``: a direct URL falls back to the legacy mode).

    A ``pages/`` folder next to app.py makes Streamlit treat the app as a legacy multipage app
    until the first ``st.navigation`` call of the process: a fresh server whose first visitor
    opens a deep link (``/budget``) runs ``pages/budget.py`` alone, without app.py's navigation
    and page config, and shows the raw file list meanwhile. ``st.navigation`` itself sets
    ``PagesManager.uses_pages_directory = False`` for the whole process; this sets the same flag
    on that first request, then reruns once (per session at most: the rerun drops one-shot values
    such as a click) so app.py runs the page. It runs when this module is first imported, before
    the engine's (slow) imports, so the raw file list shows for a moment only.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        if not st.session_state.get("_app_navigation_rerun"):
            st.session_state["_app_navigation_rerun"] = True
            st.rerun()


legacy_pages_dir_workaround()

# the engine's (slow) imports come after the workaround, see its docstring
import torch

from ttmoe_core import budget, moe, report, store
from ttmoe_core.base import backbone
from ttmoe_core.errors import TTMoEError, one_line
from ttmoe_core.files import names
from ttmoe_core.services import jobs, views, workflows, workspace

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_ENV = "TTMOE_PACK"              # another pack as the app's default (else assets/demo)
WORKSPACE_ENV = "TTMOE_WORKSPACE"    # the server's workspace root (else <repo>/workspace)
WORKSPACE_FLAG = "--workspace"       # `streamlit run app.py -- --workspace DIR` (beats the variable)
TOP_LEVEL = "(top level)"            # the root itself in the sub-folder choice
NEW_SUB = "New sub-folder…"
BUILD_DEMO = "python -m ttmoe_core build-demo"
SESSION_KEY = "_session_id"          # session-state key of ``session_id()``
TRY_KEY = "_try_experts"             # expert folders the Playground opens with ("Try it")
EMBEDDED_BASE = budget.PRESETS[backbone.DEFAULT_MODEL]   # the embedded base model's dimensions

# shown as one st.error line: the engine's errors, plain ValueErrors of its maths (a TT shape
# that does not fit) and the disk's OSErrors
ENGINE_ERRORS = (TTMoEError, ValueError, OSError)


# ----------------------------------------------------------------------------- folders


def default_pack_dir() -> Path:
    return Path(os.environ.get(PACK_ENV) or workspace.default_pack())


def workspace_root() -> Path:
    """The server's workspace root, fixed when the server starts: ``--workspace DIR`` after
    ``--`` on the ``streamlit run`` line, else $TTMOE_WORKSPACE, else ``<repo>/workspace``. No
    visitor can change it; they choose a sub-folder inside it (``setup``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(WORKSPACE_FLAG)
    flag = parser.parse_known_args(sys.argv[1:])[0].workspace
    return Path(flag or os.environ.get(WORKSPACE_ENV) or REPO_ROOT / "workspace").expanduser()


def setup() -> workspace.Workspace:
    """Every page's first call: app navigation, the sidebar's settings; returns the workspace
    (the server's root, or the sub-folder of it this session chose)."""
    root = workspace_root()
    with st.sidebar:
        choices = [TOP_LEVEL, *workspace.sub_folders(root)]
        chosen = st.session_state.get("workspace_sub")
        if chosen and chosen not in choices:         # a new sub-folder, not saved into yet
            choices.append(chosen)
        pick = st.selectbox("Workspace folder", [*choices, NEW_SUB],
                            index=choices.index(chosen) if chosen in choices else 0,
                            help=f"Where trained experts and new packs are saved: the server's "
                                 f"workspace (`{root}`) or a sub-folder of it.")
        sub = None if pick == TOP_LEVEL else pick
        if pick == NEW_SUB:
            sub = st.text_input("Sub-folder name", key="workspace_new_sub",
                                help=f"A name, not a path ({names.NAME_RULE}).").strip() or None
        ws = safe(workspace.sub_workspace, root, sub, what="workspace folder")
        if ws is None:
            sub, ws = None, workspace.Workspace(root)
        st.session_state["workspace_sub"] = sub
        st.caption(f"Saving to `{ws.root}`")
        device = "CUDA GPU" if _cuda() else "CPU"
        st.caption(f"Base model: all-MiniLM-L6-v2 (embedded) · device: {device}")
    return ws


@st.cache_resource(show_spinner=False)
def _cuda() -> bool:
    return torch.cuda.is_available()


def pack_choices(ws: workspace.Workspace) -> dict[str, Path]:
    """{label: folder} of the demo pack and every pack (valid or not) of the workspace ``ws``."""
    demo = default_pack_dir()
    choices = {f"demo pack ({short_path(demo)})": demo}
    for shipped in workspace.shipped_packs()[1:]:      # e.g. the SmolLM2 decoder demo
        choices[f"shipped pack: {shipped.name} ({short_path(shipped)})"] = shipped
    packs = ws.packs_root
    valid, invalid = folder_packs(str(packs), views.stamp(packs))
    for folder in sorted(valid + list(invalid)):
        choices[f"workspace pack: {Path(folder).name}"] = Path(folder)
    return choices


def pick_pack(ws: workspace.Workspace, key: str) -> Path:
    """A selectbox of the packs (demo first, then the workspace's); returns the chosen folder."""
    choices = pack_choices(ws)
    if len(choices) == 1:
        return next(iter(choices.values()))
    label = st.selectbox("Pack", list(choices), key=key,
                         help="A pack shipped with the app (the MiniLM demo; the SmolLM2 decoder "
                              "demo), or a pack built on the Router page.")
    return choices[label]


def base_model_missing(path: Path, key: str) -> bool:
    """True (with the command that fetches it and a button that runs it as a background job,
    its progress shown) when the pack's base model is a registered model not pulled yet."""
    status = views.pack_base_model(path)
    if status["ready"]:
        return False
    registry, job_key = job_registry(), f"pull_job_{status['name']}"
    st.info(f"This pack was built on **{status['name']}**, which is not on this machine yet. "
            f"Fetch it once (a few hundred MB, then converted) with\n\n```\n"
            f"{status['command']}\n```\n\nor here, as a background job.",
            icon=":material/download:")
    job = registry.get(session_id(), st.session_state.get(job_key))
    if job is None:
        if st.button(f"Pull {status['name']} now", key=f"{key}_pull", icon=":material/download:"):
            job = safe(workflows.start_model_pull, registry, session_id(), status["name"],
                       what=f"pulling {status['name']}")
            if job is not None:
                st.session_state[job_key] = job.id
                st.rerun()
        return True
    watch_job(job, lambda job_id, polling: _pull_view(registry, job_id, polling), every=1.0)
    return True


def _pull_view(registry: jobs.JobRegistry, job_id: str, polling: bool) -> None:
    """A pull job's last step while it runs; when it is done, the page again (the pack loads)."""
    job = registry.get(session_id(), job_id)
    if job is None:
        return
    if polling and not job.running:
        st.rerun()
    if job.running:
        last = job.last() or {}
        st.progress(0.5, text=f"{last.get('stage', 'starting')} · {job.elapsed:.0f} s")
    elif job.status == "done":
        st.success(f"Pulled to `{job.result['path']}`.", icon=":material/check:")
    else:
        job_outcome(job, "Pulling the base model")


def pack_missing(path: Path) -> bool:
    """True (and a friendly note on how to build it) when ``path`` holds no pack."""
    if workspace.is_pack(path):
        return False
    manifest = workspace.pack_file(path)
    if path == default_pack_dir():
        command = (BUILD_DEMO if path == workspace.default_pack()
                   else f"{BUILD_DEMO} --out {path}")
        st.info(f"The demo pack is not built yet (no `{short_path(manifest)}`). Build it "
                f"once with\n\n```\n{command}\n```\n\nIt trains six TT-LoRA experts (MNLI, "
                "CoLA, RTE, SST-2, QNLI, QQP) and a router on the embedded MiniLM; on a laptop "
                "CPU this takes a while. Everything else in the app works without it.",
                icon=":material/info:")
    else:
        st.warning(f"{path} holds no pack ({manifest.name} is missing).")
    return True


def short_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (for captions)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- safe calls


def safe(fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``; on failure one ``st.error`` line (never a traceback) and None."""
    try:
        return fn(*args, **kwargs)
    except ENGINE_ERRORS as exc:
        st.error(f"{what + ': ' if what else ''}{one_line(exc)}", icon=":material/error:")
    except Exception as exc:  # a bug: log the traceback for the developer, show one line
        log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
        st.error(f"Unexpected error{' in ' + what if what else ''}: {type(exc).__name__}: "
                 f"{one_line(exc)}", icon=":material/error:")
    return None


# ----------------------------------------------------------------------------- cached engine objects


@st.cache_resource(show_spinner=False, max_entries=2)
def _backbone(spec: str | None = None) -> backbone.Backbone:
    """One loaded copy per base model, shared by the mixtures, routers and trainings using it."""
    return backbone.load_backbone(spec)


def _base_of(name: str) -> backbone.Backbone:
    """The shared base model called ``name`` in a pack or expert (the default one: ``None``)."""
    # the default one under the key the warm-up and get_backbone use (no argument): one copy
    return _backbone() if name == backbone.DEFAULT_MODEL else _backbone(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def _mixture(path: str, folder_stamp: float) -> moe.TTLoRAMoE:
    pack = store.load_pack(path)          # read (and checked) once, before any base model
    return moe.TTLoRAMoE.from_loaded_pack(pack, backbone=_base_of(pack.base_model["name"]))


@st.cache_resource(show_spinner=False, max_entries=8)
def _adhoc_mixture(folders: tuple[str, ...], folder_stamp: float) -> moe.TTLoRAMoE:
    base = store.open_expert(folders[0]).expert.base.name if folders else backbone.DEFAULT_MODEL
    return moe.mixture_from_folders(folders, backbone=_base_of(base))


@st.cache_resource(show_spinner=False)
def _ready() -> set[tuple]:
    """Keys of the resources loaded so far in this server (a first use shows a spinner)."""
    return set()


def _loaded(key: tuple, message: str, load: Callable[[], T]) -> T:
    """``load()`` (a cached resource); with a spinner saying ``message`` while it is cold."""
    if key in _ready():
        return load()
    with st.spinner(message, show_time=True):
        value = load()
    _ready().add(key)
    return value


def _warm() -> None:
    """Load the base model and the default pack's mixture into the shared caches."""
    try:
        _backbone()
        _ready().add(("backbone",))
        pack = default_pack_dir()
        if workspace.is_pack(pack):
            key = (str(pack), views.stamp(pack))
            _mixture(*key)
            _ready().add(("pack", *key))
    except Exception:  # the page that needs it will say what is wrong
        log.warning("warm-up failed", exc_info=True)


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Once per server (app.py's first run): load the base model and the demo pack in the
    background, so the first Train or Playground answer does not wait for them."""
    thread = threading.Thread(target=_warm, name="ttmoe-warm-up", daemon=True)
    thread.start()
    return thread


def get_backbone() -> backbone.Backbone:
    """The frozen base model, shared by all sessions (never modified: training copies it)."""
    return _loaded(("backbone",), "Loading the base model (all-MiniLM-L6-v2)…", _backbone)


def get_mixture(path: str, folder_stamp: float) -> moe.TTLoRAMoE:
    """A pack's mixture on the shared base model; ``folder_stamp`` reloads it when files change."""
    return _loaded(("pack", path, folder_stamp), "Loading the pack's experts and router…",
                   lambda: _mixture(path, folder_stamp))


def get_adhoc_mixture(folders: tuple[str, ...], folder_stamp: float) -> moe.TTLoRAMoE:
    """The router-less mixture of expert folders (served with a forced choice), shared."""
    return _loaded(("experts", folders, folder_stamp), "Loading the chosen experts…",
                   lambda: _adhoc_mixture(folders, folder_stamp))


@st.cache_resource
def job_registry() -> jobs.JobRegistry:
    """The server's background jobs (survive reruns and page changes); each session sees its own
    (``session_id`` is their owner). At most ``$TTMOE_JOBS_PER_SESSION`` (2) of a session's jobs
    and ``$TTMOE_JOBS_TOTAL`` (4) in all run at once; the rest wait in order ("queued")."""
    return jobs.JobRegistry(per_owner=int(os.environ.get(JOBS_PER_SESSION_ENV, "2")),
                            total=int(os.environ.get(JOBS_TOTAL_ENV, "4")))


def session_id() -> str:
    """This browser session's id, the owner of the jobs it starts (kept in its session state, so
    it lives and ends with the session)."""
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = uuid.uuid4().hex
    return st.session_state[SESSION_KEY]


def quality_line(cards, name: str) -> None:
    """Under an answer: the answering expert's validation score, and plainly when it is weak
    (``quality.assess``); ``cards``: the mixture's ``ExpertCard`` list."""
    card = next((c for c in cards if c.name == name), None)
    if card is None or card.expert is None:
        return
    weak, words = views.quality_note(card.expert)
    (st.warning if weak else st.caption)(words)


@st.cache_data(show_spinner=False, max_entries=16)
def pack_summary(path: str, folder_stamp: float) -> dict:
    """``views.pack_summary``, cached until the pack's files change (``folder_stamp``)."""
    return views.pack_summary(path)


@st.cache_data(show_spinner=False, max_entries=16)
def folder_packs(root: str, folder_stamp: float) -> tuple[list[str], dict[str, str]]:
    """``views.folder_packs``, cached until the folder's files change."""
    return views.folder_packs(root)


@st.cache_data(show_spinner=False, max_entries=64)
def folder_experts(root: str, folder_stamp: float) -> tuple[list[dict], dict[str, str]]:
    """``views.folder_experts``, cached until the folder's files change."""
    return views.folder_experts(root)


JOBS_PER_SESSION_ENV = "TTMOE_JOBS_PER_SESSION"   # a session's jobs running at once
JOBS_TOTAL_ENV = "TTMOE_JOBS_TOTAL"                # the server's jobs running at once
REPORT_ENV = "TTMOE_REPORT_DIR"        # another report folder to show (else <repo>/reports)


def report_dir() -> Path:
    """The report folder the app reads (``$TTMOE_REPORT_DIR``, else the committed ``reports/``)."""
    return Path(os.environ.get(REPORT_ENV) or REPO_ROOT / "reports")


@st.cache_data(show_spinner=False, max_entries=4)
def _report(path: str, folder_stamp: float) -> dict | None:
    try:
        return report.read_results(path)
    except report.ReportError:
        return None


def committed_report() -> dict | None:
    """The report's results (cached until results.json changes); None when there is none."""
    folder = report_dir()
    return _report(str(folder), views.stamp(folder / report.RESULTS_FILE))


def try_experts(folders: list[str]) -> None:
    """Open the Playground serving the expert folders ``folders`` (no pack, forced choice)."""
    st.session_state[TRY_KEY] = list(folders)
    st.switch_page("pages/playground.py")


def default_state(key: str, value: Any) -> None:
    """Give a keyed widget its first value through session state (so callbacks may change it)."""
    if key not in st.session_state:
        st.session_state[key] = value


def watch_job(job: jobs.Job, view: Callable[[str, bool], None], every: float = 1.0) -> None:
    """``view(job_id, polling)``: re-run every ``every`` seconds (a fragment) while the job runs,
    once when it has ended."""
    if job.running:
        st.fragment(run_every=every)(view)(job.id, True)
    else:
        view(job.id, False)


def staged_job_status(registry: jobs.JobRegistry, job_id: str, polling: bool, what: str,
                      key: str) -> "jobs.Job | None":
    """Progress bar + cancel while a staged job runs, its failure as one line; the job once done.

    Returns the finished job (status "done") or None (running, failed, cancelled or unknown).
    """
    job = registry.get(session_id(), job_id)
    if job is None:
        return None
    if polling and not job.running:
        st.rerun()
    if job.status == "queued":
        waiting = job.last(stage="queued") or {}
        st.info(f"Queued: {waiting.get('reason', 'waiting for a free slot')}; it starts when one "
                "of the running jobs ends.", icon=":material/schedule:")
    if job.running:
        last = job.last() or {}
        done, total = last.get("done", 0), max(1, last.get("total", 1))
        st.progress(min(1.0, done / total),
                    text=f"{last.get('stage', 'starting')}: {done} of {total} · {job.elapsed:.0f} s")
        if st.button("Cancel", key=f"cancel_{key}_{job_id}", icon=":material/stop_circle:"):
            st.toast("Cancelling…" if registry.cancel(session_id(), job_id)
                     else "Too late to cancel: the result is being saved.")
        return None
    if job.status != "done":
        job_outcome(job, what)
        return None
    return job


def job_outcome(job: jobs.Job, what: str) -> None:
    """A cancelled or failed job in one line: why, and what it wrote (its last event)."""
    final = job.last(saved=False) or job.last(saved=True) or {}
    if final.get("saved"):
        detail = f"{job.error}; {final['path']} was written ({final.get('note', '')})"
    else:
        detail = final.get("reason") or f"{job.error or 'stopped'}"
    (st.warning if job.status == "cancelled" else st.error)(
        f"{what} {job.status}: {detail}", icon=":material/warning:")
