"""Commands for one expert: ``budget``, ``train-expert``, ``eval-expert``."""

from __future__ import annotations

import argparse
import json
import sys

from .args import (MAX_BATCH, UsageError, common_model_flags, int_in, name_arg, positive_float,
                   positive_int, seed_arg, shape_arg, targets_arg)
from .checks import check_max_length, check_output, check_targets

MAX_RANK = 1024              # TT/LoRA rank or adapter reduction factor (the paper: 5 and 16)


def cmd_budget(args: argparse.Namespace) -> int:
    from .. import budget

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
    from tqdm import tqdm

    from .. import experts, store, tasks
    from ..backbone import BackboneError, load_backbone

    config = experts.ExpertConfig(
        task=args.task, method=args.method, rank=args.rank, alpha=args.alpha,
        shapes=dict(args.shape) if args.shape else None, targets=args.targets, init=args.init,
        lr=args.lr, steps=args.max_steps, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, device=args.device, train_limit=args.train_limit,
        eval_limit=args.eval_limit)
    try:
        config = config.resolved()
        tasks.get_task(args.task)
    except (experts.ConfigError, tasks.DataError) as exc:
        raise UsageError(str(exc)) from None
    out = check_output(args.out, "expert", args.overwrite, store.load_expert)
    try:
        train = tasks.load_task(args.task, "train", data_dir=args.data_dir,
                                limit=config.train_limit, seed=config.seed)
        valid = tasks.load_task(args.task, "validation", data_dir=args.data_dir,
                                limit=config.eval_limit, seed=config.seed)
        backbone = load_backbone(args.model, device=args.device)
    except (experts.ConfigError, tasks.DataError, BackboneError) as exc:
        raise UsageError(str(exc)) from None
    check_targets(backbone.model, config.targets, config.shapes)
    check_max_length(backbone, config.max_length)
    print(f"training {config.method} expert for {args.task}: {len(train)} train rows "
          f"({train.source}), {len(valid)} validation rows, device {backbone.device}",
          file=sys.stderr)
    bar = tqdm(total=config.steps, unit="step", file=sys.stderr, disable=args.quiet)

    def progress(event: experts.Progress) -> None:
        bar.update(event.step - bar.n)
        bar.set_postfix(loss=f"{event.loss:.4f}", ex_s=f"{event.examples_per_s:.0f}")

    try:
        expert = experts.train_expert(config, backbone, train_data=train, eval_data=valid,
                                      progress=progress, name=args.name or args.task)
    except (experts.ConfigError, experts.TrainingError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    try:
        store.save_expert(expert, out)
    except (store.StoreError, OSError) as exc:
        raise UsageError(f"the trained expert could not be saved to {out}: {exc}") from None
    summary = {"expert": str(out), "task": args.task, "method": config.method,
               "trainable_params": expert.trainable_params(),
               "adapter_params": expert.adapter_params(),
               **{k: v for k, v in expert.metrics.items() if k != "confusion"}}
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k:>18}: {v}" for k, v in summary.items()))
    return 0


def cmd_eval_expert(args: argparse.Namespace) -> int:
    from .. import experts, store, tasks
    from ..backbone import BackboneError, check_fingerprint, load_backbone

    try:
        expert = store.load_expert(args.expert)                 # read and checked once
        backbone = load_backbone(args.model or expert.base.name, device=args.device)
        check_fingerprint(backbone.info, expert.base.fingerprint, f"expert {expert.name!r}",
                          store.StoreError)
        if args.input_file:
            data = tasks.load_file(args.input_file, task=expert.config.task,
                                   label_names=expert.label_names or None)
        else:
            data = tasks.load_task(expert.config.task, "validation", data_dir=args.data_dir,
                                   limit=args.limit, seed=expert.config.seed)
        result = experts.evaluate_expert(expert, backbone, data)
    except (store.StoreError, tasks.DataError, BackboneError, experts.ConfigError) as exc:
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
                   choices=["tt-lora", "lora", "adapter", "adapterfusion", "full"])
    p.add_argument("--rank", type=positive_int, default=None)
    p.add_argument("--targets", type=targets_arg, default=None, help="comma-separated names")
    p.add_argument("--shape", type=shape_arg, action="append", metavar="TARGET=D1,D2,...",
                   help="TT shape of a target (input factors then output factors); repeatable")
    p.add_argument("--lora-rank", type=positive_int, default=16, help="LoRA rank to compare with")
    p.add_argument("--adapter-reduction", type=positive_int, default=16)
    p.add_argument("--adapter-kind", choices=["pfeiffer", "houlsby"], default="pfeiffer")
    p.add_argument("--num-tasks", type=positive_int, default=1, help="tasks fused (adapterfusion)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("train-expert", help="train one expert on one task")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="expert folder to write")
    p.add_argument("--name", type=name_arg, default=None, help="expert name (default: the task)")
    p.add_argument("--method", default="tt-lora", choices=["tt-lora", "lora"])
    p.add_argument("--rank", type=int_in(1, MAX_RANK), default=None)
    p.add_argument("--alpha", type=positive_float, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--init", choices=["kaiming", "zero"], default="zero")
    p.add_argument("--shape", type=shape_arg, action="append", metavar="TARGET=D1,D2,...")
    p.add_argument("--targets", type=targets_arg, default=None)
    p.add_argument("--max-steps", type=positive_int, default=300)
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=32)
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--train-limit", type=positive_int, default=None)
    p.add_argument("--eval-limit", type=positive_int, default=2000)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="final metrics as one JSON object")
    common_model_flags(p)
    p.set_defaults(func=cmd_train_expert)

    p = sub.add_parser("eval-expert", help="evaluate an expert folder")
    p.add_argument("expert", help="expert folder")
    p.add_argument("--input-file", default=None,
                   help="JSONL/CSV with text, optional text_pair, label (default: validation split)")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--json", action="store_true")
    common_model_flags(p)
    p.set_defaults(func=cmd_eval_expert)
