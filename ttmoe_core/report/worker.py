"""One expert's training in a fresh Python process, so that its peak memory is that training's alone.

Experiment 2 of the ``full`` budget measures each method's peak resident memory (``ru_maxrss``)
on CPU; a process's peak never goes down, so each training runs in its own subprocess:
``train_in_fresh_process`` pickles the arguments, runs ``main`` in a new interpreter and reads
the pickled result back.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .. import experts, tasks
from ..base.backbone import Backbone, load_backbone, tokenize_mixed
from ..runtime import runinfo
from .plan import ReportError

REPO_ROOT = Path(__file__).resolve().parents[2]   # the folder holding ttmoe_core/


def warm_up(backbone: Backbone) -> None:
    """One-time costs out of the measurement: library imports, first forward/backward kernels."""
    for module in ("adapters", "peft", "sklearn.metrics"):   # what training imports on first use
        importlib.import_module(module)
    batch, _ = tokenize_mixed(backbone.tokenizer, ["warm up", "a second, longer warm-up input"], None,
                              16, backbone.device)
    embeds = backbone.model.embeddings.word_embeddings(batch["input_ids"]).detach().requires_grad_()
    hidden = backbone.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            token_type_ids=batch.get("token_type_ids")).last_hidden_state  # [B, T, H]
    hidden.sum().backward()


def measured_training(config: dict, model_name: str, train: tasks.TaskData,
                      valid: tasks.TaskData, threads: int, checkpoint_dir: str | None = None,
                      resume: bool = False) -> dict:
    """Train one expert in this (fresh) process; peak RSS growth (MiB) over the memory before
    training. ``checkpoint_dir``/``resume``: as ``experts.train_expert``'s (a resumed run
    measures the memory of the part run here)."""
    torch.set_num_threads(threads)
    backbone = load_backbone(model_name, device="cpu")
    warm_up(backbone)
    baseline = runinfo.rss_mib()
    peak_before = runinfo.peak_rss_mib()
    peak: dict[str, float] = {}

    def progress(event: experts.Progress) -> None:
        if event.final:                          # end of training (cap or early stop), before evaluation
            peak["mib"] = runinfo.peak_rss_mib()

    expert = experts.train_expert(experts.ExpertConfig.from_dict(config), backbone,
                                  train_data=train, eval_data=valid, progress=progress,
                                  checkpoint_dir=checkpoint_dir, resume=resume)
    peak.setdefault("mib", runinfo.peak_rss_mib())   # a resumed run that had no step left
    base = baseline if baseline is not None else peak_before
    return {"expert": expert, "peak_growth_mib": max(0.0, peak["mib"] - base),
            "rss_before_training_mib": base, "peak_rss_mib": peak["mib"],
            "peak_rss_before_training_mib": peak_before}


def main(src: str, dst: str) -> None:
    """Entry point of the training subprocess: pickled arguments in ``src``, result to ``dst``."""
    with open(src, "rb") as f:
        kwargs = pickle.load(f)
    result = measured_training(**kwargs)
    with open(dst, "wb") as f:
        pickle.dump(result, f)


def train_in_fresh_process(config: dict, model_name: str, train: tasks.TaskData,
                           valid: tasks.TaskData, checkpoint_dir: Path | None = None,
                           resume: bool = False, threads: int | None = None,
                           stop: Callable[[], bool] | None = None) -> dict:
    """``measured_training`` in a new Python process (so ru_maxrss is that training's alone),
    with ``threads`` torch threads (None: as many as this process has). ``stop()``, asked every
    ``POLL_S`` seconds while the child runs, ends it early: the child is terminated (its last
    checkpoint stays, so ``resume`` continues it) and ReportError is raised.

    A plain subprocess rather than multiprocessing: spawn would re-import the caller's main
    script, which breaks scripts without a ``__main__`` guard.
    """
    what = f"training {config['method']} on {config['task']}"
    with tempfile.TemporaryDirectory(prefix="ttmoe-report-") as tmp:
        src, dst, log = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl", Path(tmp) / "stderr.txt"
        with src.open("wb") as f:
            pickle.dump({"config": config, "model_name": model_name, "train": train, "valid": valid,
                         "threads": threads or torch.get_num_threads(), "resume": resume,
                         "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir)}, f)
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        if threads:                          # the child's OpenMP/MKL pools: no more than its share
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        code = "import sys; from ttmoe_core.report.worker import main; main(sys.argv[1], sys.argv[2])"
        with log.open("w") as err:
            child = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=err)
            try:
                returncode = _wait(child, stop)
            except BaseException:            # stopped, or this process interrupted: no orphan
                child.terminate()
                child.wait()
                raise
        if returncode is None:
            raise ReportError(f"{what} stopped (its checkpoint, if any, is kept: --resume continues it)")
        if returncode != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise ReportError(f"{what} in a subprocess failed (exit {returncode}): {tail}")
        with dst.open("rb") as f:
            return pickle.load(f)


POLL_S = 1.0   # how often a waiting ``train_in_fresh_process`` asks ``stop()``


def _wait(child: subprocess.Popen, stop: Callable[[], bool] | None) -> int | None:
    """The child's exit code; None when ``stop()`` said to end it first (then it is terminated)."""
    if stop is None:
        return child.wait()
    while True:
        try:
            return child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if stop():
                child.terminate()
                child.wait()
                return None
