"""Commands for a pack's routing: ``train-router``, ``calibrate-pool``, ``add-expert``."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import TTMoEError
from ..routing import BUCKET_RANGE, BUCKETS, VARIANTS, check_buckets
from .args import (
    UsageError,
    device_arg,
    int_in,
    parse_layers,
    positive_float,
    positive_int,
    seed_arg,
)
from .checks import check_max_length, check_writable, load_pack
from .show import confusion_text, stage_printer

MAX_HIDDEN = 16384           # router MLP width


def buckets_arg(text: str) -> int:
    """An argparse type: n-gram buckets per block (``routing.config.check_buckets``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        return check_buckets(value)
    except TTMoEError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_train_router(args: argparse.Namespace) -> int:
    """``train-router``: the pack, its folder, the layers and sizes are checked before the
    features are read; the best layer's router is saved into the pack (an ngram router with its
    replay rows, for add-expert). ``--all-rows``: the final recipe of ROUTING_STUDY.md."""
    # heavy: imports torch; kept out of the parser
    from .. import moe, routing, store
    from ..base.backbone import load_backbone

    check_writable(args.pack, f"the pack {args.pack}")
    pack = load_pack(args.pack)
    epochs = args.epochs or (8 if args.all_rows else 60)
    config = routing.RouterConfig(variant=args.variant, hidden=args.hidden, epochs=epochs,
                                  lr=args.lr, seed=args.seed, max_length=args.max_length,
                                  buckets=args.buckets)
    if args.all_rows and len(args.layer) != 1:
        raise UsageError("--all-rows trains one router: give one --layer")
    progress = None if args.quiet else stage_printer()
    try:
        backbone = load_backbone(pack.base_model["name"], device=args.device)
        for layer in args.layer:      # the paper variant reads the last layer, but not a wrong one
            routing.RouterConfig(**{**config.to_dict(), "layer": layer,
                                    "variant": "linear"}).resolved(backbone.info.num_layers)
        pack = store.load_pack(args.pack, expected_fingerprint=backbone.info.fingerprint)
        check_max_length(backbone, args.max_length)
        pairs = [(e.name, e.config.task) for e in pack.experts]
        dev = None
        if args.all_rows:
            train_all, held, dev = routing.routing_splits(pairs, args.data_dir, args.seed,
                                                          args.eval_per_task)
            train, index = routing.recipe_rows(train_all, pairs, args.cap, args.sst2_sentences,
                                               args.seed)
            cfg = routing.RouterConfig(**{**config.to_dict(), "layer": args.layer[0]})
            results = [routing.fit(cfg, backbone, train, held, index, progress)]
            train_rows = len(index)
        else:
            train = routing.routing_data(pairs, "train", args.per_task, args.data_dir, args.seed)
            held = routing.routing_data(pairs, "validation", args.eval_per_task, args.data_dir,
                                        args.seed)
            results = routing.sweep_layers(config, args.layer, backbone, train, held, progress)
            train_rows = len(train.labels)
        best = max(results, key=lambda r: r["report"].accuracy)
        model = best["router"]
        companions = None
        if routing.variant_spec(args.variant).keeps_replay:
            idx = routing.replay_sample(train.labels, moe.REPLAY_PER_TASK, args.seed)
            part = routing.take(train, idx)
            feats = routing.extract_features(backbone.model, backbone.tokenizer, part.texts,
                                             part.text_pairs, model.config)
            cal = cal_labels = None
            if dev is not None:       # calibration rows for add-expert's capture budget
                cal_rows = routing.take(dev, routing.replay_sample(
                    dev.labels, moe.CALIBRATION_PER_TASK, args.seed))
                cal = routing.extract_features(backbone.model, backbone.tokenizer, cal_rows.texts,
                                               cal_rows.text_pairs, model.config)
                cal_labels = cal_rows.labels
            sets = moe.replay_sets(model, feats, part.labels, cal, cal_labels, args.seed)

            def companions(folder):
                store.write_replay(folder, sets, train.names, backbone.info.to_dict(), "hidden")
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    metrics = routing.router_metrics(best, train_rows, len(held.labels), held.sources,
                                     sweep=results)
    if args.all_rows:
        metrics["recipe"] = {"all_rows": True, "cap": args.cap, "sst2_sentences": args.sst2_sentences,
                             "epochs": epochs, "distinct_rows": len(train.texts)}
    try:
        store.save_router(args.pack, model, train.names, metrics, backbone.info,
                          companions=companions)
    except (TTMoEError, OSError) as exc:
        raise UsageError(f"the router could not be saved to {args.pack}: {exc}") from None
    summary = {"pack": str(args.pack), "variant": args.variant, "layer": model.config.layer,
               "accuracy": best["report"].accuracy, "per_layer": metrics["per_layer"],
               "per_task": best["report"].per_task, "confusion": best["report"].confusion,
               "names": train.names, "router_params": routing.params(model)}
    if args.json:
        print(json.dumps(summary))
    else:
        for layer, acc in summary["per_layer"].items():
            print(f"layer {layer:>2}: held-out routing accuracy {acc:.4f}")
        print(f"saved {args.variant} router (layer {summary['layer']}, "
              f"{summary['router_params']} params) to {args.pack}")
        print(confusion_text(summary["names"], summary["confusion"]))
        print("the out-of-pool detector, if any, was removed with the old router: run "
              f"`python -m ttmoe_core calibrate-pool --pack {args.pack}`")
    return 0


def _writable_pack_base(args: argparse.Namespace):
    """The base model of the pack ``args.pack`` that a command will change (calibrate-pool,
    add-expert): the folder writable, the pack readable, its base model loaded; UsageError else."""
    from ..base.backbone import load_backbone  # heavy: imports torch; kept out of the parser

    check_writable(args.pack, f"the pack {args.pack}")
    pack = load_pack(args.pack)
    try:
        return load_backbone(pack.base_model["name"], device=args.device)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None


def cmd_calibrate_pool(args: argparse.Namespace) -> int:
    """``calibrate-pool``: fit and calibrate the pack's out-of-pool detector (``poolfit``)."""
    from .. import moe  # heavy: imports torch; kept out of the parser

    backbone = _writable_pack_base(args)
    try:
        figures = moe.calibrate_pool(
            args.pack, backbone, args.data_dir, per_task=args.per_task,
            dims=None if args.dims == 0 else args.dims, bank_per_class=args.bank_per_class,
            false_flag=args.false_flag, seed=args.seed,
            progress=None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr)))
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"out-of-pool detector saved to {args.pack}: AUROC {figures['auroc']:.3f} (held-out "
          f"rows vs {', '.join(figures['evaluation_families'])}), in-pool rows flagged "
          f"{figures['false_flag']:.1%} (target {figures['false_flag_target']:.0%}), outside rows "
          f"caught {figures['caught']:.1%}; {figures['seconds']:.0f} s")
    return 0


def cmd_add_expert(args: argparse.Namespace) -> int:
    """``add-expert``: the expert joins the pack and its routing without retraining the router."""
    from .. import moe  # heavy: imports torch; kept out of the parser

    backbone = _writable_pack_base(args)
    try:
        out = moe.add_expert(args.pack, args.expert_dir, backbone, args.data_dir, rows=args.rows,
                                 max_capture=args.max_capture, evaluate=args.evaluate)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(out, default=float))
        return 0
    print(f"added expert {out['name']!r} ({out['task']}) to {args.pack} in {out['seconds']:.1f} s "
          f"(router grown, other experts' files untouched)")
    if args.evaluate:
        print(f"old tasks' routing accuracy {out['old_accuracy_before']:.4f} -> "
              f"{out['old_accuracy_after']:.4f}; new task routed to it "
              f"{out.get('new_accuracy', float('nan')):.4f}")
    return 0


def run_flags(p, func) -> None:
    """The flags every routing command that reads data and runs the base model takes; ``func``
    runs the command."""
    p.set_defaults(func=func)
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the rows drawn and the fit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")


def add_parsers(sub) -> None:
    """Register this module's commands on a subparsers action."""
    p = sub.add_parser("train-router", help="train a pack's router (experts stay frozen)")
    p.add_argument("--pack", required=True, help="pack folder")
    p.add_argument("--variant", default="fusion", choices=list(VARIANTS), help="router variant")
    p.add_argument("--layer", type=parse_layers, default=[2],
                   help="base layer k read by the router; a list (0,1,2) trains one per layer "
                        "and keeps the best on held-out inputs")
    p.add_argument("--per-task", type=positive_int, default=2000, help="training inputs per task")
    p.add_argument("--all-rows", action="store_true",
                   help="every training row (--cap a task, calibration rows kept apart): the "
                        "final recipe with --variant ngram")
    p.add_argument("--cap", type=positive_int, default=8000, help="rows a task with --all-rows")
    p.add_argument("--sst2-sentences", action=argparse.BooleanOptionalAction, default=True,
                   help="with --all-rows: SST-2's whole sentences only, not its phrases")
    p.add_argument("--eval-per-task", type=positive_int, default=500, help="held-out inputs per task")
    p.add_argument("--epochs", type=positive_int, default=None, help="default 60 (8 with --all-rows)")
    p.add_argument("--hidden", type=int_in(1, MAX_HIDDEN), default=256,
                   help="hidden width of the router's MLP (mlp, fusion, ngram)")
    p.add_argument("--buckets", type=buckets_arg, default=BUCKETS,
                   help="ngram: hash buckets per n-gram block, a power of two from "
                        f"{BUCKET_RANGE[0]:,} to {BUCKET_RANGE[1]:,} (the table has 4 × this × "
                        "experts weights)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="tokens an input is truncated to")
    run_flags(p, cmd_train_router)

    p = sub.add_parser("calibrate-pool", help="fit the pack's out-of-pool detector (in_pool, pool_score)")
    p.add_argument("--pack", required=True, help="pack folder")
    p.add_argument("--per-task", type=positive_int, default=2000, help="training rows a task to fit on")
    p.add_argument("--dims", type=int_in(0, 1 << 16), default=1024,
                   help="principal directions kept (0: all; the file grows with their square)")
    p.add_argument("--bank-per-class", type=positive_int, default=100, help="kNN rows kept a task")
    p.add_argument("--false-flag", type=float, default=0.02,
                   help="share of in-pool calibration rows allowed under the threshold")
    run_flags(p, cmd_calibrate_pool)

    p = sub.add_parser("add-expert", help="add a trained expert to a pack, growing its router")
    p.add_argument("--pack", required=True, help="pack folder")
    p.add_argument("expert_dir", help="the expert folder to add")
    p.add_argument("--rows", type=positive_int, default=1000, help="the new task's training rows")
    p.add_argument("--max-capture", type=float, default=0.0025,
                   help="at most this share of the old tasks' calibration rows may go to the new expert")
    p.add_argument("--evaluate", type=positive_int, default=None, metavar="N",
                   help="also route N validation rows a task before and after (slower)")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")
    p.set_defaults(func=cmd_add_expert)
