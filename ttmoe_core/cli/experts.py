"""Commands for one expert: ``budget``, ``train-expert``, ``eval-expert``; ``full-finetune``
(the reference an expert is measured against: every base weight trained, a JSON record)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from .. import tasks
from ..errors import TTMoEError
from ..files import safefs
from ..runtime.tracking import TRACK_ENV, TRACKERS, default_tracker
from .args import (
    MAX_BATCH,
    UsageError,
    common_model_flags,
    fraction_arg,
    int_in,
    name_arg,
    positive_float,
    positive_int,
    seed_arg,
    shape_arg,
    targets_arg,
)
from .checks import (
    check_max_length,
    check_output,
    check_storable,
    check_targets,
    check_writable,
    writing,
)

MAX_RANK = 1024              # TT/LoRA rank or adapter reduction factor (the paper: 5 and 16)


def cmd_budget(args: argparse.Namespace) -> int:
    from .. import budget  # heavy: imports torch; kept out of the parser

    try:
        report = budget.compute_budget(args.model, args.method, rank=args.rank,
                                       targets=args.targets, shapes=dict(args.shape or []),
                                       lora_rank=args.lora_rank,
                                       adapter_reduction=args.adapter_reduction,
                                       adapter_kind=args.adapter_kind, num_tasks=args.num_tasks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report.to_dict()) if args.json else report.format_table())
    return 0


def cmd_train_expert(args: argparse.Namespace) -> int:
    """``train-expert``: every input is checked (settings, name, --out, data, model, targets)
    before the first step; the expert is saved atomically at the end."""
    # heavy: imports torch; kept out of the parser
    from .. import experts, store

    config = experts.ExpertConfig(
        task=args.task, method=args.method, rank=args.rank, alpha=args.alpha,
        shapes=dict(args.shape) if args.shape else None, targets=args.targets, init=args.init,
        lr=args.lr, steps=args.max_steps, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, device=args.device, train_limit=args.train_limit,
        eval_limit=args.eval_limit, dtype=args.dtype, min_layer=args.min_layer,
        head_lr=args.head_lr,
        **convergence_settings(args))
    try:
        config = config.resolved()
        tasks.get_task(args.task)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    check_storable(config.to_dict(), "training")
    with writing(args.out):
        out = check_output(args.out, "expert", args.overwrite, store.load_expert)
        return _train_and_save(args, config, out)


def _train_and_save(args: argparse.Namespace, config, out: Path) -> int:
    """``train-expert`` once its settings and --out are checked and --out is held."""
    # heavy: imports torch; kept out of the parser
    from .. import experts, store
    from ..runtime import distributed, tracking

    train, valid, backbone = run_inputs(args, config)
    check_targets(backbone.model, config.targets, config.shapes)
    check_max_length(backbone, config.max_length)
    print(f"training {config.method} expert for {args.task}: {len(train)} train rows "
          f"({train.source}), {len(valid)} validation rows, device {backbone.device}",
          file=sys.stderr)
    bar = tqdm(total=config.steps, unit="step", file=sys.stderr,
               disable=args.quiet or not distributed.is_main_process())
    checkpoint_dir = announced_checkpoint(out, args.resume)
    tracker = args.track if distributed.is_main_process() else None
    try:
        with tracking.tracked(tracker, args.name or args.task, config.to_dict(),
                              progress_bar(bar)) as track:
            expert = experts.train_expert(config, backbone, train_data=train, eval_data=valid,
                                          progress=track.progress, name=args.name or args.task,
                                          checkpoint_dir=checkpoint_dir, resume=args.resume)
            track.end(expert.metrics)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    if not distributed.is_main_process():   # accelerate launch: the main process writes
        return 0
    try:
        store.save_expert(expert, out, new=not args.overwrite)
    except (TTMoEError, OSError) as exc:
        raise UsageError(f"the trained expert could not be saved to {out}: {exc}") from None
    safefs.remove(checkpoint_dir)                       # the expert is saved: nothing to resume
    summary = {"expert": str(out), "task": args.task, "method": config.method,
               "trainable_params": expert.trainable_params(),
               "adapter_params": expert.adapter_params(),
               **{k: v for k, v in expert.metrics.items() if k != "confusion"}}
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k:>18}: {v}" for k, v in summary.items()))
    return 0


def cmd_full_finetune(args: argparse.Namespace) -> int:
    """``full-finetune``: every weight of the base model trained on one task through the experts'
    loop and stopping rule; writes the run's record (metrics, hold-out curve, steps, CPU time) as
    JSON to --out. The weights are not kept (a whole model per task)."""
    # heavy: imports torch; kept out of the parser
    from .. import store
    from ..baselines import fullft

    out = Path(args.out)
    if out.is_dir() or out.is_symlink():
        raise UsageError(f"--out {out} is a folder or a link: give a .json file to write")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out} exists: pass --overwrite to replace it")
    if out.exists() and not _is_full_record(out):
        raise UsageError(f"--out {out} is not a full fine-tuning record of this project, so "
                         "--overwrite does not replace it: give another file")
    check_writable(out.parent, f"--out {out}")
    settings = convergence_settings(args)
    config = fullft.FullConfig(
        task=args.task, lr=args.lr, steps=args.max_steps, batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed, train_limit=args.train_limit,
        eval_limit=args.eval_limit, device=args.device, dtype=args.dtype or "float32",
        schedule=settings.pop("schedule") or "linear", **settings)
    try:
        config.checked()
        tasks.get_task(args.task)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    train, valid, backbone = run_inputs(args, config)
    check_max_length(backbone, config.max_length)
    print(f"full fine-tuning for {args.task}: {len(train)} train rows ({train.source}), "
          f"{len(valid)} validation rows, device {backbone.device}", file=sys.stderr)
    bar = tqdm(total=config.steps, unit="step", file=sys.stderr, disable=args.quiet)
    checkpoint_dir = announced_checkpoint(out, args.resume)
    try:
        record = fullft.train_full(config, backbone, train_data=train, eval_data=valid,
                                   progress=progress_bar(bar), checkpoint_dir=checkpoint_dir,
                                   resume=args.resume)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        store.write_json(out, record)
    except (TTMoEError, OSError) as exc:
        raise UsageError(f"the record could not be written to {out}: {exc}") from None
    safefs.remove(checkpoint_dir)
    summary = {"out": str(out), "task": args.task, "method": fullft.METHOD,
               "trainable_params": record["trainable_params"], record["metric"]: record["value"],
               **{k: record.get(k) for k in ("steps_run", "best_step", "train_seconds",
                                             "train_cpu_seconds")}}
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k:>18}: {v}" for k, v in summary.items()))
    return 0


def _is_full_record(path: Path) -> bool:
    """Whether ``path`` holds a record ``full-finetune`` wrote (a JSON object, method "full")."""
    try:
        data = safefs.parse_json(safefs.read_bounded(path, 64 << 20, "--out"), str(path))
    except TTMoEError:
        return False
    return isinstance(data, dict) and data.get("method") == "full" and "task" in data


def run_inputs(args: argparse.Namespace, config):
    """(train rows, validation rows, base model) of one training command (``config``: an
    ``ExpertConfig`` or ``fullft.FullConfig``); UsageError when one cannot be had."""
    from ..base.backbone import load_backbone  # heavy: imports torch; kept out of the parser

    try:
        train = tasks.load_task(args.task, "train", data_dir=args.data_dir,
                                limit=config.train_limit, seed=config.seed)
        valid = tasks.load_task(args.task, "validation", data_dir=args.data_dir,
                                limit=config.eval_limit, seed=config.seed)
        backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    return train, valid, backbone


def convergence_settings(args: argparse.Namespace) -> dict:
    """The ``ExpertConfig`` fields of the convergence flags (``add_convergence_flags``)."""
    return {"holdout_fraction": args.holdout_fraction, "holdout_limit": args.holdout_limit,
            "eval_every": args.eval_every, "patience": args.patience,
            "min_steps": args.min_steps, "schedule": args.schedule,
            "checkpoint_every": args.checkpoint_every}


def checkpoint_folder(out: Path) -> Path:
    """Where a run writing ``out`` keeps its checkpoint: ``<out>.checkpoint`` next to it."""
    return out.parent / f"{out.name}.checkpoint"


def announced_checkpoint(out: Path, resume: bool) -> Path:
    """``checkpoint_folder(out)``, saying on stderr when an earlier run left one that this run
    (without ``--resume``) starts afresh over."""
    checkpoint_dir = checkpoint_folder(out)
    if checkpoint_dir.exists() and not resume:
        print(f"a checkpoint of an earlier run is at {checkpoint_dir}: starting afresh (pass "
              "--resume to continue it)", file=sys.stderr)
    return checkpoint_dir


def progress_bar(bar):
    """A ``Progress`` callback showing the loss and, after each evaluation, the best hold-out
    score so far on a tqdm bar."""
    shown = {}

    def progress(event) -> None:
        bar.update(event.step - bar.n)
        if event.holdout:
            key, value = next(iter(event.holdout.items()))
            shown["holdout"] = f"{key} {value:.3f} (best @{event.best_step})"
        bar.set_postfix(loss=f"{event.loss:.4f}", ex_s=f"{event.examples_per_s:.0f}", **shown)

    return progress


def add_run_flags(p: argparse.ArgumentParser, steps: int, batch_size: int) -> None:
    """The flags of one training run (train-expert, full-finetune): cap, batch, rows, output."""
    p.add_argument("--max-steps", type=positive_int, default=steps,
                   help="the step cap (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=batch_size,
                   help="training rows per step")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="tokens an input is truncated to")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the initialisation, the batches and the hold-out split")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="train on at most this many rows (default: all of the train split)")
    p.add_argument("--eval-limit", type=positive_int, default=2000,
                   help="validation rows scored at the end")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_convergence_flags(p: argparse.ArgumentParser) -> None:
    """Early stopping, learning-rate schedule and checkpoint flags (train-expert, build-demo,
    full-finetune)."""
    p.add_argument("--holdout-fraction", type=fraction_arg, default=0.1,
                   help="share of the TRAIN rows held out for early stopping (0: none)")
    p.add_argument("--holdout-limit", type=positive_int, default=1000,
                   help="at most this many hold-out rows")
    p.add_argument("--eval-every", type=int_in(0), default=100,
                   help="steps between hold-out evaluations (0: only at the end)")
    p.add_argument("--patience", type=int_in(0), default=5,
                   help="evaluations without a better hold-out score before stopping (0: never)")
    p.add_argument("--min-steps", type=int_in(0), default=0,
                   help="never stop early before this step")
    p.add_argument("--schedule", choices=["linear", "cosine", "constant"], default=None,
                   help="learning rate after warm-up (default: the method's, linear)")
    p.add_argument("--checkpoint-every", type=int_in(0), default=100,
                   help="steps between checkpoints (0: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (same settings)")


def cmd_eval_expert(args: argparse.Namespace) -> int:
    # heavy: imports torch; kept out of the parser
    from .. import experts, store
    from ..base.backbone import check_fingerprint, load_backbone

    try:
        expert = store.load_expert(args.expert)                 # read and checked once
        backbone = load_backbone(args.model or expert.base.name, device=args.device,
                                 dtype=args.dtype)
        check_fingerprint(backbone.info, expert.base.fingerprint, f"expert {expert.name!r}",
                          store.StoreError)
        if args.input_file:
            data = tasks.load_file(args.input_file, task=expert.config.task,
                                   label_names=expert.label_names or None)
        else:
            data = tasks.load_task(expert.config.task, "validation", data_dir=args.data_dir,
                                   limit=args.limit, seed=expert.config.seed)
        result = experts.evaluate_expert(expert, backbone, data)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {args.input_file}: {exc.strerror or exc}") from None
    report = {"expert": expert.name, "task": expert.config.task, "rows": result["rows"],
              "source": data.source, **result["metrics"], "confusion": result["confusion"],
              "label_names": expert.label_names}
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>12}: {value}")
    return 0



def add_parsers(sub) -> None:
    """Register this module's commands on a subparsers action."""
    p = sub.add_parser("budget", help="trainable parameters of a method on a model")
    p.add_argument("--model", default="all-minilm-l6-v2",
                   help="preset (llama-3.2-1b, llama-3.1-8b, roberta-base, bert-base-uncased, "
                        "all-minilm-l6-v2) or a config.json path")
    p.add_argument("--method", default="tt-lora",
                   choices=["tt-lora", "lora", "adapter", "adapterfusion", "full"],
                   help="the fine-tuning method counted")
    p.add_argument("--rank", type=positive_int, default=None,
                   help="rank (default: the method's: 5 for tt-lora, 16 for lora and adapters)")
    p.add_argument("--targets", type=targets_arg, default=None, help="comma-separated names")
    p.add_argument("--shape", type=shape_arg, action="append", metavar="TARGET=D1,D2,...",
                   help="TT shape of a target (input factors then output factors); repeatable")
    p.add_argument("--lora-rank", type=positive_int, default=16, help="LoRA rank to compare with")
    p.add_argument("--adapter-reduction", type=positive_int, default=16,
                   help="bottleneck reduction factor of an adapter")
    p.add_argument("--adapter-kind", choices=["pfeiffer", "houlsby"], default="pfeiffer",
                   help="adapter placement: one per layer (pfeiffer) or two (houlsby)")
    p.add_argument("--num-tasks", type=positive_int, default=1, help="tasks fused (adapterfusion)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("train-expert", help="train one expert on one task")
    p.add_argument("--task", required=True, help="task name (see the README's task table)")
    p.add_argument("--out", required=True, help="expert folder to write")
    p.add_argument("--name", type=name_arg, default=None, help="expert name (default: the task)")
    p.add_argument("--method", default="tt-lora", choices=["tt-lora", "lora"],
                   help="tt-lora (tensor-train cores) or lora (the PEFT-loadable baseline)")
    p.add_argument("--rank", type=int_in(1, MAX_RANK), default=None,
                   help="TT rank or LoRA rank (default: 5 for tt-lora, 16 for lora)")
    p.add_argument("--alpha", type=positive_float, default=None,
                   help="scaling of the update (default: 16 for tt-lora, 8 for lora)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: 5e-3 for tt-lora, 5e-4 for lora)")
    p.add_argument("--init", choices=["kaiming", "zero"], default="zero",
                   help="initialisation of the last TT core (zero: the update starts at 0)")
    p.add_argument("--shape", type=shape_arg, action="append", metavar="TARGET=D1,D2,...",
                   help="TT shape of a target (input factors then output factors); repeatable "
                        "(default: factored from the layer's sizes)")
    p.add_argument("--targets", type=targets_arg, default=None,
                   help="comma-separated modules adapted (default: the architecture's "
                        "query,value)")
    p.add_argument("--head-lr", type=float, default=None,
                   help="the head's learning rate (default: --lr; 0: a random head kept frozen, "
                        "as the authors' code trains none)")
    p.add_argument("--min-layer", type=int_in(0, 1000), default=0,
                   help="first layer adapted (tt-lora): a mixture whose router reads layers "
                        "below it computes them once for router and expert")
    add_run_flags(p, steps=300, batch_size=32)
    p.add_argument("--json", action="store_true", help="final metrics as one JSON object")
    p.add_argument("--track", choices=TRACKERS, default=default_tracker(),
                   help=f"log the run to a tracker (default: ${TRACK_ENV}, else none)")
    add_convergence_flags(p)
    common_model_flags(p)
    p.set_defaults(func=cmd_train_expert)

    p = sub.add_parser("full-finetune", help="reference: fine-tune every base weight on one task "
                                             "(same loop and stopping rule; a JSON record)")
    p.add_argument("--task", required=True, help="task name (see the README's task table)")
    p.add_argument("--out", required=True, help="JSON file to write the run's record to")
    p.add_argument("--lr", type=positive_float, default=3e-5, help="learning rate")
    add_run_flags(p, steps=4000, batch_size=16)
    p.add_argument("--json", action="store_true", help="a summary as one JSON object")
    add_convergence_flags(p)
    p.set_defaults(eval_every=200, checkpoint_every=500)   # a checkpoint holds the whole model
    common_model_flags(p)
    p.set_defaults(func=cmd_full_finetune)

    p = sub.add_parser("eval-expert", help="evaluate an expert folder")
    p.add_argument("expert", help="expert folder")
    p.add_argument("--input-file", default=None,
                   help="JSONL/CSV with text, optional text_pair, label (default: validation split)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score at most this many rows (default: all)")
    p.add_argument("--json", action="store_true", help="the metrics as one JSON object")
    common_model_flags(p)
    p.set_defaults(func=cmd_eval_expert)
