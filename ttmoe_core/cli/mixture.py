"""Commands for the mixture: ``predict``, ``eval-moe``, ``build-demo`` (the router: ``routing``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import tasks
from ..errors import TTMoEError
from ..files.safefs import MAX_JSON_DEPTH, json_depth
from ..routing import VARIANTS
from ..services.workspace import default_pack
from .args import (
    MAX_BATCH,
    UsageError,
    common_model_flags,
    device_arg,
    dtype_flag,
    int_in,
    names_list,
    no_detector_flag,
    pool_dtype_flag,
    positive_float,
    positive_int,
    seed_arg,
    targets_arg,
    task_lr_arg,
)
from .checks import check_max_length, check_output, load_adhoc, load_mixture
from .experts import add_convergence_flags, convergence_settings
from .show import confusion_text

MAX_INPUT_BYTES = 256 * 2**20  # predict --input-file


def _read_jsonl_inputs(path: str) -> list[tuple[int, dict | None, str | None]]:
    """(line number, {"text", "text_pair"} or None, error or None) for each non-blank line.

    A line that is not JSON, not an object with a non-empty string "text" (and a string or null
    "text_pair"), or holds text that is not valid Unicode gets an error of its own; the other
    lines are answered. UsageError when the file cannot be read, is not UTF-8 or has no lines.
    Lines end at "\n" only (a JSON string may hold U+2028 and other separators).
    """
    try:
        with open(path, "rb") as file:        # a pipe or /dev/stdin too, but never without end
            raw = file.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_INPUT_BYTES:
        raise UsageError(f"{path} holds more than the {MAX_INPUT_BYTES:,} bytes predict reads "
                         "at once: split it")
    try:
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    rows = [(number, *_parse_input_line(number, line))
            for number, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise UsageError(f"{path} holds no input lines")
    return rows


def _parse_input_line(number: int, line: str) -> tuple[dict | None, str | None]:
    """One JSONL line as ({"text", "text_pair"}, None) or (None, a one-line error)."""
    if json_depth(line) > MAX_JSON_DEPTH:
        return None, f"line {number} nests more than {MAX_JSON_DEPTH} levels deep"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"line {number} is not JSON ({exc.msg})"
    except (ValueError, RecursionError) as exc:    # e.g. a 5,000-digit number
        return None, f"line {number} is not JSON we can read ({type(exc).__name__})"
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text.strip():
        return None, f"line {number} has no non-empty \"text\""
    pair = obj.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        return None, f"line {number}: \"text_pair\" must be a string or null"
    for key, value in (("text", text), ("text_pair", pair)):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:
            return None, f"line {number}: \"{key}\" holds an unpaired surrogate, not text"
    return {"text": text, "text_pair": pair if pair and pair.strip() else None}, None


def _shown(text: str, width: int = 60) -> str:
    """``text`` on one line of at most ``width`` characters (control characters as spaces)."""
    text = "".join(c if c.isprintable() else " " for c in text[:width])
    return text if len(text) < width else text[:width - 3] + "..."


def cmd_predict(args: argparse.Namespace) -> int:
    if args.expert_dir and args.pack:
        raise UsageError("give --pack or --expert-dir, not both")
    if args.abstain and args.no_detector:
        raise UsageError("--abstain needs the pack's out-of-pool detector: drop --no-detector")
    if args.input_file and args.text:
        raise UsageError("give texts or --input-file, not both")
    if args.input_file:
        rows = _read_jsonl_inputs(args.input_file)
    else:
        if not args.text:
            raise UsageError("nothing to predict: give a text or --input-file F.jsonl")
        if any(not t.strip() for t in args.text):
            raise UsageError("empty text: give some words to classify")
        for text in [*args.text, args.text_pair or ""]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"{_shown(text, 40)!r} is not UTF-8 text") from None
        rows = [(i + 1, {"text": t, "text_pair": args.text_pair}, None)
                for i, t in enumerate(args.text)]
    moe = (load_adhoc(args.expert_dir, args.device, args.dtype) if args.expert_dir
           else load_mixture(args.pack, args.device, args.dtype, args.pool_dtype,
                             not args.no_detector))
    if args.expert_dir and args.expert is None:
        if len(moe.names) > 1:
            raise UsageError(f"several experts and no router: choose one with --expert "
                             f"({', '.join(moe.names)})")
        args.expert = moe.names[0]
    if moe.router is None and args.expert is None:
        raise UsageError(f"the pack {args.pack or default_pack()} has no router: choose an "
                         f"expert with --expert ({', '.join(moe.names)}) or train a router "
                         "with train-router")
    good = [(n, r) for n, r, err in rows if err is None]
    results: dict[int, dict] = {}
    if good:
        try:
            out = moe.predict([r["text"] for _, r in good], [r["text_pair"] for _, r in good],
                              expert=args.expert, abstain=args.abstain)
        except TTMoEError as exc:
            raise UsageError(str(exc)) from None
        results = {n: res for (n, _), res in zip(good, out)}
    failures = 0
    table = []
    for number, _, error in rows:
        if error is not None:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            record = {"line": number, "error": error}
        else:
            record = results[number]
            if record["truncated"]:
                print(f"note: input {number} is longer than {moe.max_length} tokens and was "
                      "truncated", file=sys.stderr)
        if args.json:
            print(json.dumps(record))
        else:
            table.append(record)
    if not args.json:
        for record in table:
            if "error" in record:
                print(f"[{record['line']}] error: {record['error']}")
                continue
            text = _shown(record["text"])
            pool = "" if record["in_pool"] is None else (
                f"  pool={record['pool_score']:+.2f}{'' if record['in_pool'] else ' OUT OF POOL'}")
            if record["expert"] is None:
                print(f"{text:<60}  no expert fits this input (abstained){pool}")
                continue
            conf = record["router_probs"].get(record["expert"])
            label_p = max(record["label_probs"].values()) if record["label_probs"] else float("nan")
            chosen = "forced" if conf is None else f"{conf:.2f}"
            print(f"{text:<60}  expert={record['expert']:<6} ({chosen})  "
                  f"label={record['label']} ({label_p:.2f}){pool}")
    return 1 if failures else 0


def cmd_eval_moe(args: argparse.Namespace) -> int:
    # heavy: imports torch; kept out of the parser
    from ..moe import evaluate_mixture, openworld_report

    moe = load_mixture(args.pack, args.device, args.dtype, args.pool_dtype)
    if moe.router is None:
        where = args.pack or default_pack()
        raise UsageError(f"the pack {where} has no router to evaluate: train one with "
                         f"`python -m ttmoe_core train-router --pack {where}`")
    pairs = [(e.name, e.config.task) for e in moe.experts]
    try:
        result = evaluate_mixture(moe, pairs, args.per_task, args.data_dir)
        result["openworld"] = None if args.no_openworld else openworld_report(
            moe, pairs, args.per_task, args.data_dir)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    if args.save:
        _save_evaluation(args.pack or default_pack(), result)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"routing accuracy on held-out inputs: {result['routing_accuracy']:.4f} "
          f"({result['rows']} rows)")
    print(confusion_text(result["names"], result["confusion"]))
    print(f"\n{'expert':<8} {'metric':<9} {'mixture':>8} {'oracle':>8} {'gap':>7}  routing")
    for name, row in result["per_task"].items():
        key = row["metric"]
        mix, ora = row["mixture"][key], row["oracle"][key]
        print(f"{name:<8} {key:<9} {mix:8.4f} {ora:8.4f} {mix - ora:+7.4f}  {row['routing_accuracy']:.4f}")
    ood = result["openworld"]
    if ood is not None:
        print(f"\nout of pool: AUROC {ood['auroc']:.3f} (evaluation families only: "
              f"{ood.get('evaluation_only', float('nan')):.3f}); in-pool rows flagged "
              f"{ood['false_flag']:.1%}; outside rows caught {ood['caught']:.1%}")
        for family, row in ood["families"].items():
            tag = " [calibration]" if family in ood["calibration_families"] else ""
            print(f"  {family:<14} AUROC {row['auroc']:.3f}  caught {row['caught']:.1%}  "
                  f"({row['rows']} rows){tag}")
    return 0


def _save_evaluation(pack: str | Path, result: dict) -> None:
    """``eval-moe --save``: the figures into pack.json ("metrics" → "mixture"), in one step."""
    from .. import store  # heavy: imports torch; kept out of the parser

    summary = {"routing_accuracy": result["routing_accuracy"], "rows": result["rows"],
               "per_task": {name: {k: row[k] for k in ("task", "metric", "mixture", "oracle",
                                                       "routing_accuracy", "rows")}
                            for name, row in result["per_task"].items()},
               "openworld": result.get("openworld")}

    def write(folder: Path, _names) -> None:
        manifest = store.read_json(folder / store.PACK_FILE, "pack")
        manifest["metrics"] = {**manifest.get("metrics", {}), "mixture": summary}
        store.write_json(folder / store.PACK_FILE, manifest)

    try:
        store.update_pack(pack, write)
    except (TTMoEError, OSError) as exc:
        raise UsageError(f"the figures could not be saved to {pack}: {exc}") from None


def cmd_build_demo(args: argparse.Namespace) -> int:
    """``build-demo``: --out, the tasks, the router's layer and the model are checked before the
    first expert trains (``workflows.build_demo`` then trains, sweeps and writes the pack)."""
    # heavy: imports torch; kept out of the parser
    from .. import experts, routing, store
    from ..base.backbone import load_backbone
    from ..services import workflows

    out = check_output(args.out, "pack", args.overwrite, store.load_pack)
    router_config = routing.RouterConfig(variant=args.variant, layer=args.layer, seed=args.seed,
                                         max_length=args.max_length)
    try:
        task_names = list(args.tasks)
        for task in task_names:
            tasks.get_task(task)
        task_lr = _task_lrs(args.task_lr or [], task_names)
        backbone = load_backbone(args.model, device=args.device)
        routing.RouterConfig(**{**router_config.to_dict(), "variant": "linear"}).resolved(
            backbone.info.num_layers)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    check_max_length(backbone, args.max_length)
    configs = [experts.ExpertConfig(task=task, steps=args.steps, batch_size=args.batch_size,
                                    max_length=args.max_length, seed=args.seed,
                                    eval_limit=args.eval_limit, init=args.init,
                                    lr=task_lr.get(task, args.lr), targets=args.targets,
                                    **convergence_settings(args))
               for task in task_names]
    try:
        summary = workflows.build_demo(out, backbone, configs, router_config, per_task=args.per_task,
                                  eval_per_task=args.eval_per_task, data_dir=args.data_dir,
                                  parts=args.work_dir, resume=args.resume,
                                  command=" ".join(sys.argv[1:]) or "build-demo",
                                  progress=lambda line: print(line, file=sys.stderr))
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(summary))
    return 0


def _task_lrs(pairs: list[tuple[str, float]], task_names: list[str]) -> dict[str, float]:
    """``--task-lr`` as {task: lr}: each task once, each among the tasks built (UsageError)."""
    named = [task for task, _ in pairs]
    if len(set(named)) != len(named):
        raise UsageError(f"--task-lr gives a task twice: {', '.join(sorted(named))}")
    if set(named) - set(task_names):
        raise UsageError(f"--task-lr names {', '.join(sorted(set(named) - set(task_names)))}, "
                         f"not among the tasks built ({', '.join(task_names)})")
    return dict(pairs)


def add_parsers(sub) -> None:
    """Register this module's commands on a subparsers action."""
    p = sub.add_parser("predict", help="route texts to experts and answer them")
    p.add_argument("text", nargs="*", help="input text(s)")
    p.add_argument("--text-pair", default=None, help="second text (pair tasks), for every text")
    p.add_argument("--input-file", default=None, help="JSONL with text and optional text_pair")
    p.add_argument("--pack", default=None,
                   help="pack folder or hub repo id (default: assets/demo)")
    p.add_argument("--expert-dir", action="append", default=[], metavar="DIR",
                   help="serve this expert folder or hub repo id without a pack (repeatable; "
                        "with several, --expert chooses one)")
    p.add_argument("--expert", default=None, help="force this expert (oracle) instead of routing")
    p.add_argument("--json", action="store_true", help="one JSON line per input")
    p.add_argument("--abstain", action="store_true",
                   help="an input out of the pack's pool gets no expert and no label (default: "
                        "the router's top-1 answer, with in_pool reported)")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda, cuda:N, mps or auto (default)")
    dtype_flag(p)
    pool_dtype_flag(p)
    no_detector_flag(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval-moe", help="routing accuracy and mixture vs oracle per task")
    p.add_argument("--pack", default=None,
                   help="pack folder or hub repo id (default: assets/demo)")
    p.add_argument("--per-task", type=positive_int, default=500,
                   help="validation inputs a task")
    p.add_argument("--no-openworld", action="store_true",
                   help="skip the out-of-pool report (AUROC, false flags over outside families)")
    p.add_argument("--save", action="store_true",
                   help="record the figures in the pack's pack.json (shown on the Router page)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda, cuda:N, mps or auto (default)")
    dtype_flag(p)
    pool_dtype_flag(p)
    p.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")
    p.set_defaults(func=cmd_eval_moe)

    p = sub.add_parser("build-demo", help="train the six demo experts and a router into a pack")
    p.add_argument("--out", default=str(default_pack()), help="pack folder to write")
    p.add_argument("--tasks", type=names_list("task name"), default=list(tasks.DEMO_TASKS),
                   help="comma-separated tasks, one expert each")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps an expert (cap)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=32,
                   help="training rows per step")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="tokens an input is truncated to")
    p.add_argument("--eval-limit", type=positive_int, default=2000,
                   help="validation rows an expert is scored on")
    p.add_argument("--init", choices=["kaiming", "zero"], default="zero",
                   help="initialisation of the last TT core (zero: the update starts at 0)")
    p.add_argument("--variant", default="fusion", choices=list(VARIANTS), help="router variant")
    p.add_argument("--layer", type=int_in(0), default=2, help="base layer k read by the router")
    p.add_argument("--per-task", type=positive_int, default=2000,
                   help="router training inputs a task")
    p.add_argument("--eval-per-task", type=positive_int, default=500,
                   help="held-out router inputs a task")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every expert and the router")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--targets", type=targets_arg, default=None,
                   help="modules adapted (default: the architecture's query,value)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate of every expert (default: TT-LoRA's 5e-3)")
    p.add_argument("--task-lr", type=task_lr_arg, action="append", metavar="TASK=LR",
                   help="one task's learning rate instead of --lr (repeatable; e.g. chosen on "
                        "that task's train hold-out)")
    p.add_argument("--work-dir", default=None,
                   help="where finished experts and checkpoints wait for the pack (default: "
                        "<out>.parts); --resume continues from there")
    add_convergence_flags(p)
    common_model_flags(p)
    p.set_defaults(func=cmd_build_demo)

