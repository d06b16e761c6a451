"""The app's and the CLI's workflows: train an expert, train a router and save it, build the demo
pack, and prepare an uploaded file for training.

The job functions (``train_expert_job``, ``train_router_job``) run inside a ``jobs.Job``: they call
the engine, write files only through a ``workspace.Workspace``, and translate the engine's
callbacks into ``job.report``. Their last event says what was written: ``{"stage": "saved",
"saved": True, "path": ...}`` or ``{"stage": "not saved", "saved": False, "path": None,
"reason": ...}``. ``start_training`` / ``start_router_training`` are the app's buttons (check,
then submit, in one call); ``build_demo`` is ``python -m ttmoe_core build-demo`` without its flags.
Every problem raises a ``TTMoEError`` whose message says what to do; nothing imports streamlit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import experts, moe, routing, store, tasks
from ..base import sources
from ..errors import CheckpointError, DataError, RouterError, StoreError, TrainingError, one_line
from ..files import safefs
from ..runtime import tracking
from .jobs import Job, JobRegistry

CHECKPOINTS = ".checkpoints"      # workspace folder of unfinished training runs (hidden)
UPLOAD_SEED = 0                   # the seed of an uploaded file's 80/20 split
MIN_UPLOAD_ROWS = 5               # rows an uploaded file needs (80% train, 20% validation)


# ----------------------------------------------------------------------------- uploaded data


def split_upload(data: tasks.TaskData, seed: int = UPLOAD_SEED) -> tuple[tasks.TaskData,
                                                                           tasks.TaskData]:
    """A seeded 80/20 split of an uploaded file into training and validation rows (disjoint,
    each in file order)."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = int(round(0.8 * len(data)))
    note = f"{data.source}: seeded 80/20 split (seed {seed})"
    return (data.select(sorted(order[:cut]), f"{note}, first part"),
            data.select(sorted(order[cut:]), f"{note}, second part"))


def read_upload(file_name: str, content: bytes, label_task: str | None = None
                ) -> tuple[tasks.TaskData, tasks.TaskData, tasks.TaskData]:
    """An uploaded CSV/JSONL (``tasks.load_file``; ``label_task``: read labels as that task's)
    as (all rows, training rows, validation rows) (``split_upload``). DataError, naming the
    upload, when it is bad, has fewer than ``MIN_UPLOAD_ROWS`` rows or no labels."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(file_name).name
        path.write_bytes(content)
        try:
            data = tasks.load_file(path, task=label_task)
        except DataError as exc:
            raise DataError(str(exc).replace(str(path), file_name)) from None
    if len(data) < MIN_UPLOAD_ROWS:
        raise DataError(f"{file_name} has {len(data)} rows: at least {MIN_UPLOAD_ROWS} are needed "
                        "(80% train, 20% validation)")
    if not data.labels:
        raise DataError(f"{file_name} has no labels")
    return (data, *split_upload(data))


# ----------------------------------------------------------------------------- the app's buttons


def start_training(registry: JobRegistry, owner: str, settings: Mapping[str, Any],
                   backbone: Callable[[], Any], workspace, name: str, replace: bool = False,
                   train_data: tasks.TaskData | None = None,
                   eval_data: tasks.TaskData | None = None) -> Job:
    """The Train button: check ``settings`` (``ExpertConfig`` fields; ConfigError), get the base
    model (``backbone()``, e.g. the app's shared copy), then start ``train_expert_job`` as a job
    of ``owner``."""
    config = experts.ExpertConfig(**settings)
    config.resolved()
    base = backbone()
    label = f"{name} ({config.task}, {config.method}, {config.steps} steps)"
    return registry.submit(owner, "train", label, train_expert_job, config, base, workspace, name,
                           replace=replace, train_data=train_data, eval_data=eval_data)


def start_router_training(registry: JobRegistry, owner: str, variant: str, layers: Sequence[int],
                          epochs: int, backbone: Callable[[], Any],
                          expert_dirs: Sequence[str | Path], workspace, pack_name: str,
                          per_task: int, eval_per_task: int) -> Job:
    """The Train router button: a ``RouterConfig`` of ``variant`` and ``epochs``, the base model
    (``backbone()``), then ``train_router_job`` over ``layers`` (none given: the last layer) as
    a job of ``owner``."""
    config = routing.RouterConfig(variant=variant, layer=max(layers) if layers else None,
                                  epochs=epochs)
    base = backbone()
    return registry.submit(owner, "router", f"{pack_name} ({variant})", train_router_job, config,
                           sorted(layers) or [base.info.num_layers], base,
                           [Path(d) for d in expert_dirs], workspace, pack_name, per_task,
                           eval_per_task)


def start_model_pull(registry: JobRegistry, owner: str, name: str) -> Job:
    """The "Pull it now" button: ``models pull NAME`` as a job of ``owner`` (``pull_model_job``)."""
    return registry.submit(owner, "pull", f"pull {name}", pull_model_job, name)


# ----------------------------------------------------------------------------- the jobs


def pull_model_job(job: Job, name: str) -> dict:
    """Fetch and convert a registered base model into the cache (``sources.pull``), each step a
    progress event {"stage": what it is doing}; returns {"name", "path"}."""
    job.report(stage=f"pulling {name}")
    folder = sources.pull(name, progress=lambda message: job.report(stage=message))
    job.report(stage="done", path=str(folder))
    return {"name": name, "path": str(folder)}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _finish(job: Job, path: Path | None, reason: str = "", **fields: Any) -> None:
    """The job's last event: what it wrote (``path``) or that it wrote nothing, and why."""
    if path is not None:
        job.report(stage="saved", saved=True, path=str(path), **fields)
    else:
        job.report(stage="not saved", saved=False, path=None, reason=reason, **fields)


def job_checkpoint(root: Path, name: str, config) -> Path:
    """``<root>/.checkpoints/<name>-<hash of the settings>``: where an app job training ``name``
    with ``config`` checkpoints (keyed by the job's name and settings, so jobs of other settings
    under one name never share a folder)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    return Path(root) / CHECKPOINTS / f"{name}-{digest.hexdigest()[:12]}"


@contextlib.contextmanager
def _holding(checkpoint_dir: Path, name: str):
    """The lock of a job's checkpoint folder while it trains; TrainingError at once when another
    job holds it."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(store.locked(checkpoint_dir, wait_s=0))
    except StoreError:
        raise TrainingError(f"another job is training {name!r} with these settings: wait for it "
                            "or choose another name") from None
    with stack:
        yield


def _train_resuming(config, backbone, train_data, eval_data, progress, job, log_every, name,
                    checkpoint_dir):
    """``experts.train_expert`` continuing ``checkpoint_dir`` when it holds this run; a
    checkpoint of other settings is dropped and training starts afresh."""
    kwargs = dict(train_data=train_data, eval_data=eval_data, progress=progress,
                  should_stop=job.cancelled, log_every=log_every, name=name,
                  checkpoint_dir=checkpoint_dir)
    if not config.checkpoint_every:       # the app checkpoints every 50 steps unless told
        config = dataclasses.replace(config, checkpoint_every=50)
    try:
        return experts.train_expert(config, backbone, resume=True, **kwargs)
    except CheckpointError:
        safefs.remove(checkpoint_dir)
        return experts.train_expert(config, backbone, resume=False, **kwargs)


def train_expert_job(job: Job, config, backbone, workspace, name: str, replace: bool = False,
                     train_data=None, eval_data=None, data_dir=None) -> dict:
    """Train one expert (``experts.train_expert``), save it as ``name`` in ``workspace`` (a
    ``workspace.Workspace``; ``replace``: over an expert of that name), return a summary.

    The target folder is checked before training starts. Data not given is loaded for
    ``config.task`` from ``data_dir`` (``tasks.load_task``). Events: ``stage`` "loading data",
    "training" (step, total, loss, examples_per_s, elapsed_s), "evaluating" (rows), "saving" (path),
    then "saved"
    (path) or "not saved" (reason; an expert being replaced is left as it was). A cancel is
    honoured until saving starts (``Job.commit``), during evaluation too; after that it is refused.
    """
    config = config.resolved()
    target = workspace.expert_target(name, replace)
    try:
        if train_data is None or eval_data is None:
            job.report(stage="loading data")
            if train_data is None:
                train_data = tasks.load_task(config.task, "train", data_dir=data_dir,
                                             limit=config.train_limit, seed=config.seed)
            if eval_data is None:
                eval_data = tasks.load_task(config.task, "validation", data_dir=data_dir,
                                            limit=config.eval_limit, seed=config.seed)
        total = config.steps
        job.report(stage="training", step=0, total=total, train_rows=len(train_data),
                   eval_rows=len(eval_data))

        def progress(event: experts.Progress) -> None:
            held = {"holdout": event.holdout, "best_step": event.best_step} if event.holdout else {}
            job.report(stage="training", step=event.step, total=event.total_steps,
                       loss=event.loss, examples_per_s=event.examples_per_s,
                       elapsed_s=event.elapsed_s, **held)
            if event.final:
                job.report(stage="evaluating", rows=len(eval_data))

        # a cancelled (or crashed) job of this name and settings continues where it stopped;
        # the folder is keyed by both and held while the job runs: another session's job never
        # resumes or deletes it
        checkpoint_dir = job_checkpoint(workspace.root, name, config)
        with _holding(checkpoint_dir, name), tracking.tracked(
                tracking.default_tracker(), name, config.to_dict(), progress) as track:
            # $TTMOE_TRACK: off when unset
            expert = _train_resuming(config, backbone, train_data, eval_data, track.progress, job,
                                     max(1, total // 60), name, checkpoint_dir)
            track.end(expert.metrics)
        if not job.commit():
            raise TrainingError("training cancelled after evaluation, before saving")
        job.report(stage="saving", path=str(target))
        out_dir = workspace.save_expert(expert, replace=replace)
        safefs.remove(checkpoint_dir)                  # saved: nothing left to resume
    except BaseException as exc:
        kept = f"; the expert at {target} is unchanged" if replace and target.exists() else ""
        _finish(job, None, f"{one_line(exc)}: nothing was saved{kept}")
        raise
    _finish(job, out_dir)
    return {"path": str(out_dir), "name": expert.name, "task": expert.config.task,
            "method": expert.config.method, "metrics": expert.metrics,
            "label_names": list(expert.label_names), "history": expert.history,
            "data": expert.data, "training": expert.config.to_dict(),
            "trainable_params": expert.trainable_params(),
            "adapter_params": expert.adapter_params(), "created": expert.created}


def train_router_job(job: Job, router_config, layers: Sequence[int], backbone,
                     expert_dirs: Sequence[str | Path], workspace, pack_name: str, per_task: int,
                     eval_per_task: int, data_dir=None) -> dict:
    """Build the pack ``pack_name`` of ``workspace`` from expert folders and fit one router per
    layer (``routing.sweep_layers``).

    Returns the pack, expert names, and per layer the router and its held-out report; the caller
    saves the one it wants with ``save_trained_router``. Events: ``stage``, done, total (stages
    "building pack", "loading data", "features", "held-out features", "training layer k"), then
    "saved" (the pack of experts, no router yet) or "not saved". A cancel is honoured at every
    event, during router training too; a failed or cancelled run removes the pack it made.
    """
    def progress(stage: str, done: int, total: int) -> None:
        if job.cancelled():
            raise RouterError(f"router training cancelled during {stage}")
        job.report(stage=stage, done=done, total=total)

    built: Path | None = None           # the pack folder this job made
    try:
        progress("building pack", 0, len(expert_dirs))
        experts_ = workspace.build_pack(pack_name, expert_dirs)
        built = workspace.pack_dir(pack_name)
        progress("building pack", len(experts_), len(expert_dirs))
        pairs = [(e.name, e.config.task) for e in experts_]
        progress("loading data", 0, 2)
        train = routing.routing_data(pairs, "train", per_task, data_dir)
        held = routing.routing_data(pairs, "validation", eval_per_task, data_dir)
        progress("loading data", 2, 2)
        results = routing.sweep_layers(router_config, list(layers), backbone, train, held,
                                        progress=progress)
        if not job.commit():
            raise RouterError("router training cancelled at its end")
    except BaseException as exc:
        if built is not None:
            with contextlib.suppress(ValueError):     # the original error matters, not this one
                workspace.delete_pack(pack_name)
        if built is not None and built.exists():      # could not be removed: say so
            _finish(job, built, note=f"{one_line(exc)}; the pack could not be removed")
        else:
            _finish(job, None, f"{one_line(exc)}: no pack was written")
        raise
    _finish(job, built, note=f"pack of {len(experts_)} experts, no router yet: save one",
            done=len(results), total=len(results))
    return {"pack": str(built), "pack_name": pack_name,
            "workspace": workspace, "names": train.names, "sources": held.sources,
            "train_rows": len(train.labels), "held_out_rows": len(held.labels),
            "results": results, "base": backbone.info, "created": _now(),
            "train": train, "backbone": backbone}


def save_trained_router(result: dict, index: int, extra: dict | None = None) -> Path:
    """Save the router of layer ``result["results"][index]`` (a ``train_router_job`` result) into
    its pack, with its metrics (``routing.router_metrics``), the run's date and ``extra``; returns
    the pack folder."""
    chosen = result["results"][index]
    metrics = routing.router_metrics(chosen, result["train_rows"], result["held_out_rows"],
                                     result["sources"], sweep=result["results"])
    return result["workspace"].save_router(
        result["pack_name"], chosen["router"], result["names"], metrics, result["base"],
        extra={"created": result["created"], **(extra or {})},
        companions=_replay_writer(chosen["router"], result))


def _replay_writer(model, result: dict):
    """For an ngram router: a writer of its replay rows (add-expert grows it from them), from
    the run's training rows; None for other variants or a result without them."""
    train, backbone = result.get("train"), result.get("backbone")
    if model.config.variant != "ngram" or train is None or backbone is None:
        return None
    part = routing.take(train, routing.replay_sample(train.labels, moe.REPLAY_PER_TASK))
    feats = routing.extract_features(backbone.model, backbone.tokenizer, part.texts,
                                      part.text_pairs, model.config)
    sets = moe.replay_sets(model, feats, part.labels, None, None)
    return lambda folder: store.write_replay(folder, sets, result["names"],
                                                 backbone.info.to_dict(), "hidden")


# ----------------------------------------------------------------------------- build-demo


def build_demo(out: str | Path, backbone, configs: Sequence[experts.ExpertConfig],
               router_config: routing.RouterConfig, *, per_task: int, eval_per_task: int,
               data_dir=None, parts: str | Path | None = None, resume: bool = False,
               command: str = "build-demo",
               progress: Callable[[str], None] | None = None) -> dict:
    """Train one expert per config on ``backbone``, fit a router of ``router_config`` on their
    tasks (``per_task`` training and ``eval_per_task`` held-out rows a task) and write the pack
    ``out`` in one step at the end (replacing a pack there; the caller checks ``out`` first).

    Each finished expert waits in ``parts`` (default ``<out>.parts``) with its checkpoint beside
    it; ``resume`` keeps the ones trained earlier with the same settings (``finished_part``) and
    continues their checkpoints. ``progress(line)`` hears of each expert. The pack records the
    build (``command``, seconds, settings) and each expert's validation verdict. Returns
    {"pack", "seconds", "routing_accuracy"}; a TTMoEError says what went wrong.
    """
    out = Path(out)
    started = time.perf_counter()
    parts = Path(parts) if parts else out.parent / f"{out.name}.parts"
    trained = []
    for config in configs:
        t0 = time.perf_counter()
        expert = finished_part(parts / config.task, config) if resume else None
        if expert is None:     # train it (continuing its checkpoint when resuming), keep it
            expert = experts.train_expert(config, backbone, data_dir=data_dir,
                                          checkpoint_dir=parts / f"{config.task}.checkpoint",
                                          resume=resume)
            store.save_expert(expert, parts / config.task)
            safefs.remove(parts / f"{config.task}.checkpoint")
            took = f"{time.perf_counter() - t0:.0f} s"
        else:
            took = f"done earlier, kept from {parts / config.task}"
        trained.append(expert)
        if progress is not None:
            verdict = experts.assess(expert.metrics, expert.label_names)
            progress(f"expert {config.task}: {experts.words(verdict)} "
                     f"({expert.metrics.get('steps_run')} steps, {took})")
    pairs = [(e.name, e.config.task) for e in trained]
    seed = router_config.seed
    train = routing.routing_data(pairs, "train", per_task, data_dir, seed)
    held = routing.routing_data(pairs, "validation", eval_per_task, data_dir, seed)
    result = routing.sweep_layers(router_config, [router_config.layer], backbone, train, held)[0]
    seconds = time.perf_counter() - started
    first = configs[0]
    try:
        store.build_pack(out, trained, router=result["router"],
                         router_metrics=routing.router_metrics(result, len(train.labels),
                                                               len(held.labels), held.sources),
                         extra={"build": {"command": command, "seconds": round(seconds, 1),
                                          "steps": first.steps, "batch_size": first.batch_size,
                                          "max_length": first.max_length, "seed": first.seed,
                                          "lr": {e.name: e.config.lr for e in trained},
                                          "parts": str(parts)},
                                # each expert's validation metric and verdict (quality.assess)
                                "validation": {e.name: experts.pack_entry(e) for e in trained}},
                         replace=True)
    except (StoreError, OSError) as exc:
        raise StoreError(f"the pack could not be written to {out}: {exc}") from None
    return {"pack": str(out), "seconds": round(seconds, 1),
            "routing_accuracy": result["report"].accuracy}


def finished_part(folder: Path, config: experts.ExpertConfig):
    """The expert a resumed build trained earlier into ``folder`` with these settings, or None
    (absent, unreadable, or trained with other settings: then it is trained again)."""
    if not (folder / store.CONFIG_FILE).is_file():
        return None
    try:
        expert = store.load_expert(folder)
    except StoreError:
        return None
    wanted = config.resolved().to_dict()
    have = expert.config.to_dict()
    unset = {"device", "checkpoint_every",
             *(k for k in ("targets", "shapes", "pooling") if wanted[k] is None)}
    same = all(have.get(k) == v for k, v in wanted.items() if k not in unset)
    return expert if same else None
