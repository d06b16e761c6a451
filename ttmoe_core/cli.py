"""Command line: ``python -m ttmoe_core <command> ...``.

Usage errors (unknown task, missing folder, bad flag values, bad input files) print one line
``error: ...`` on stderr and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and raise UsageError."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _shape_arg(text: str) -> tuple[str, list[int]]:
    """``target=16,8,4,4`` -> ("target", [16, 8, 4, 4])."""
    target, sep, dims = text.partition("=")
    try:
        if not sep or not target:
            raise ValueError
        return target.strip(), [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write TARGET=d1,d2,... (e.g. q_proj=16,8,4,4,4,4,8,16)") from None


def _targets_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one target module name")
    return names


# ----------------------------------------------------------------------------- budget


def cmd_budget(args: argparse.Namespace) -> int:
    from . import budget

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


# ----------------------------------------------------------------------------- experts


def cmd_train_expert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import experts, store, tasks
    from .backbone import BackboneError, load_backbone

    config = experts.ExpertConfig(
        task=args.task, method=args.method, rank=args.rank, alpha=args.alpha,
        shapes=dict(args.shape) if args.shape else None, targets=args.targets, init=args.init,
        lr=args.lr, steps=args.max_steps, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, device=args.device, train_limit=args.train_limit,
        eval_limit=args.eval_limit)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    try:
        config = config.resolved()
        train = tasks.load_task(args.task, "train", data_dir=args.data_dir,
                                limit=config.train_limit, seed=config.seed)
        valid = tasks.load_task(args.task, "validation", data_dir=args.data_dir,
                                limit=config.eval_limit, seed=config.seed)
        backbone = load_backbone(args.model, device=args.device)
    except (experts.ConfigError, tasks.DataError, BackboneError) as exc:
        raise UsageError(str(exc)) from None
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
    except experts.ConfigError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    store.save_expert(expert, out)
    summary = {"expert": str(out), "task": args.task, "method": config.method,
               "trainable_params": expert.trainable_params(),
               "adapter_params": expert.adapter_params(),
               **{k: v for k, v in expert.metrics.items() if k != "confusion"}}
    print(json.dumps(summary) if args.json else
          "\n".join(f"{k:>18}: {v}" for k, v in summary.items()))
    return 0


def cmd_eval_expert(args: argparse.Namespace) -> int:
    from . import experts, store, tasks
    from .backbone import BackboneError, load_backbone

    try:
        expert = store.load_expert(args.expert)
        backbone = load_backbone(args.model or expert.base.name, device=args.device)
        expert = store.load_expert(args.expert, expected_fingerprint=backbone.info.fingerprint)
        if args.input_file:
            data = tasks.load_file(args.input_file, task=expert.config.task,
                                   label_names=expert.label_names or None)
        else:
            data = tasks.load_task(expert.config.task, "validation", data_dir=args.data_dir,
                                   limit=args.limit, seed=expert.config.seed)
        result = experts.evaluate_expert(expert, backbone, data)
    except (store.StoreError, tasks.DataError, BackboneError, experts.ConfigError) as exc:
        raise UsageError(str(exc)) from None
    report = {"expert": expert.name, "task": expert.config.task, "rows": result["rows"],
              "source": data.source, **result["metrics"], "confusion": result["confusion"],
              "label_names": expert.label_names}
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>12}: {value}")
    return 0


# ----------------------------------------------------------------------------- mixture

DEMO_TASKS = ("mnli", "cola", "rte", "sst2", "qnli", "qqp")


def default_pack() -> Path:
    """The committed demo pack of this repository."""
    return Path(__file__).resolve().parents[1] / "assets" / "demo"


def _read_jsonl_inputs(path: str) -> list[tuple[int, dict | None, str | None]]:
    """(line number, {"text", "text_pair"} or None, error or None) for each non-blank line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((number, None, f"line {number} is not JSON ({exc.msg})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            rows.append((number, None, f"line {number} has no non-empty \"text\""))
            continue
        pair = obj.get("text_pair")
        if pair is not None and (not isinstance(pair, str) or not pair.strip()):
            pair = None
        rows.append((number, {"text": obj["text"], "text_pair": pair}, None))
    if not rows:
        raise UsageError(f"{path} holds no input lines")
    return rows


def _load_moe(pack: str | None, device: str | None):
    from . import store
    from .backbone import BackboneError
    from .moe import MoEError, TTLoRAMoE

    path = Path(pack) if pack else default_pack()
    try:
        return TTLoRAMoE.from_pack(path, device=device)
    except (store.StoreError, BackboneError, MoEError) as exc:
        raise UsageError(str(exc)) from None


def cmd_predict(args: argparse.Namespace) -> int:
    from .moe import MoEError

    if args.input_file and args.text:
        raise UsageError("give texts or --input-file, not both")
    if args.input_file:
        rows = _read_jsonl_inputs(args.input_file)
    else:
        if not args.text:
            raise UsageError("nothing to predict: give a text or --input-file F.jsonl")
        if any(not t.strip() for t in args.text):
            raise UsageError("empty text: give some words to classify")
        rows = [(i + 1, {"text": t, "text_pair": args.text_pair}, None)
                for i, t in enumerate(args.text)]
    moe = _load_moe(args.pack, args.device)
    good = [(n, r) for n, r, err in rows if err is None]
    results: dict[int, dict] = {}
    if good:
        try:
            out = moe.predict([r["text"] for _, r in good], [r["text_pair"] for _, r in good],
                              expert=args.expert)
        except MoEError as exc:
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
            conf = record["router_probs"].get(record["expert"], float("nan"))
            label_p = max(record["label_probs"].values()) if record["label_probs"] else float("nan")
            text = record["text"] if len(record["text"]) < 60 else record["text"][:57] + "..."
            print(f"{text:<60}  expert={record['expert']:<6} ({conf:.2f})  "
                  f"label={record['label']} ({label_p:.2f})")
    return 1 if failures else 0


def _parse_layers(text: str) -> list[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer numbers like 2 or 0,1,2") from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError("layers must be >= 0")
    return layers


def cmd_train_router(args: argparse.Namespace) -> int:
    from . import router as routers, store, tasks
    from .backbone import BackboneError, load_backbone

    try:
        pack = store.load_pack(args.pack)
        backbone = load_backbone(pack.base_model["name"], device=args.device)
        pack = store.load_pack(args.pack, expected_fingerprint=backbone.info.fingerprint)
        pairs = [(e.name, e.config.task) for e in pack.experts]
        train = routers.routing_data(pairs, "train", args.per_task, args.data_dir, args.seed)
        held = routers.routing_data(pairs, "validation", args.eval_per_task, args.data_dir, args.seed)
        results = routers.sweep_layers(
            routers.RouterConfig(variant=args.variant, hidden=args.hidden, epochs=args.epochs,
                                 lr=args.lr, seed=args.seed, max_length=args.max_length),
            args.layer, backbone, train, held,
            progress=None if args.quiet else _stage_printer())
    except (store.StoreError, tasks.DataError, BackboneError, routers.RouterError) as exc:
        raise UsageError(str(exc)) from None
    best = max(results, key=lambda r: r["report"].accuracy)
    metrics = {**best["report"].to_dict(), "train_rows": len(train.labels),
               "held_out_rows": len(held.labels), "sources": held.sources,
               "per_layer": {str(r["layer"]): r["report"].accuracy for r in results},
               "cost_fraction_of_pass": best["cost"]}
    metrics.pop("history", None)
    store.save_router(args.pack, best["router"], train.names, metrics, backbone.info)
    summary = {"pack": str(args.pack), "variant": args.variant, "layer": best["router"].config.layer,
               "accuracy": best["report"].accuracy, "per_layer": metrics["per_layer"],
               "per_task": best["report"].per_task, "confusion": best["report"].confusion,
               "names": train.names, "router_params": routers.router_params(best["router"])}
    if args.json:
        print(json.dumps(summary))
    else:
        for layer, acc in summary["per_layer"].items():
            print(f"layer {layer:>2}: held-out routing accuracy {acc:.4f}")
        print(f"saved {args.variant} router (layer {summary['layer']}, "
              f"{summary['router_params']} params) to {args.pack}")
        print(_confusion_text(summary["names"], summary["confusion"]))
    return 0


def _stage_printer():
    last = {}

    def show(stage: str, done: int, total: int) -> None:
        if last.get(stage) != done and (done == total or done % max(1, total // 10) == 0):
            print(f"  {stage}: {done}/{total}", file=sys.stderr)
        last[stage] = done
    return show


def _confusion_text(names: list[str], confusion: list[list[int]]) -> str:
    width = max(6, *(len(n) for n in names)) + 1
    lines = ["true \\ routed".ljust(width + 8) + "".join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion):
        lines.append(name.ljust(width + 8) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def cmd_eval_moe(args: argparse.Namespace) -> int:
    from . import tasks
    from .moe import evaluate_mixture

    moe = _load_moe(args.pack, args.device)
    try:
        result = evaluate_mixture(moe, [(e.name, e.config.task) for e in moe.experts],
                                  args.per_task, args.data_dir)
    except tasks.DataError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"routing accuracy on held-out inputs: {result['routing_accuracy']:.4f} "
          f"({result['rows']} rows)")
    print(_confusion_text(result["names"], result["confusion"]))
    print(f"\n{'expert':<8} {'metric':<9} {'mixture':>8} {'oracle':>8} {'gap':>7}  routing")
    for name, row in result["per_task"].items():
        key = row["metric"]
        mix, ora = row["mixture"][key], row["oracle"][key]
        print(f"{name:<8} {key:<9} {mix:8.4f} {ora:8.4f} {mix - ora:+7.4f}  {row['routing_accuracy']:.4f}")
    return 0


def cmd_build_demo(args: argparse.Namespace) -> int:
    import time

    from . import experts, router as routers, store, tasks
    from .backbone import BackboneError, load_backbone

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to rebuild it")
    started = time.perf_counter()
    try:
        backbone = load_backbone(args.model, device=args.device)
        task_names = list(args.tasks)
        for task in task_names:
            tasks.get_task(task)
    except (tasks.DataError, BackboneError) as exc:
        raise UsageError(str(exc)) from None
    build = out.with_name(f".{out.name}.building")
    if build.exists():
        import shutil
        shutil.rmtree(build)
    for task in task_names:
        t0 = time.perf_counter()
        config = experts.ExpertConfig(task=task, steps=args.steps, batch_size=args.batch_size,
                                      max_length=args.max_length, seed=args.seed,
                                      eval_limit=args.eval_limit, init=args.init)
        expert = experts.train_expert(config, backbone, data_dir=args.data_dir)
        store.add_expert_to_pack(build, expert)
        shown = {k: round(v, 4) for k, v in expert.metrics.items() if isinstance(v, float)}
        print(f"expert {task}: {shown} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    pack = store.load_pack(build)
    pairs = [(e.name, e.config.task) for e in pack.experts]
    train = routers.routing_data(pairs, "train", args.per_task, args.data_dir, args.seed)
    held = routers.routing_data(pairs, "validation", args.eval_per_task, args.data_dir, args.seed)
    config = routers.RouterConfig(variant=args.variant, seed=args.seed, max_length=args.max_length)
    result = routers.sweep_layers(config, [args.layer], backbone, train, held)[0]
    router, report = result["router"], result["report"]
    metrics = {**report.to_dict(), "train_rows": len(train.labels), "held_out_rows": len(held.labels),
               "sources": held.sources}
    metrics.pop("history", None)
    seconds = time.perf_counter() - started
    store.save_router(build, router, train.names, metrics, backbone.info,
                      extra={"build": {"command": " ".join(sys.argv[1:]) or "build-demo",
                                       "seconds": round(seconds, 1), "steps": args.steps,
                                       "batch_size": args.batch_size, "max_length": args.max_length,
                                       "seed": args.seed}})
    store.replace_dir(build, out)
    print(json.dumps({"pack": str(out), "seconds": round(seconds, 1),
                      "routing_accuracy": report.accuracy}))
    return 0


# ----------------------------------------------------------------------------- parser


def _common_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="base model: all-minilm-l6-v2 (embedded default), a folder, or a hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, or auto (default)")
    parser.add_argument("--data-dir", default=None,
                        help="task data folder (default: $TTMOE_DATA_DIR, ../shared/datasets, "
                             "assets/samples); 'hub' for the Hugging Face hub")


def build_parser() -> Parser:
    parser = Parser(prog="python -m ttmoe_core",
                    description="TT-LoRA MoE Studio: train, store, count and serve TT-LoRA experts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("budget", help="trainable parameters of a method on a model")
    p.add_argument("--model", default="all-minilm-l6-v2",
                   help="preset (llama-3.2-1b, llama-3.1-8b, roberta-base, bert-base-uncased, "
                        "all-minilm-l6-v2) or a config.json path")
    p.add_argument("--method", default="tt-lora",
                   choices=["tt-lora", "lora", "adapter", "adapterfusion", "full"])
    p.add_argument("--rank", type=_positive_int, default=None)
    p.add_argument("--targets", type=_targets_arg, default=None, help="comma-separated names")
    p.add_argument("--shape", type=_shape_arg, action="append", metavar="TARGET=D1,D2,...",
                   help="TT shape of a target (input factors then output factors); repeatable")
    p.add_argument("--lora-rank", type=_positive_int, default=16, help="LoRA rank to compare with")
    p.add_argument("--adapter-reduction", type=_positive_int, default=16)
    p.add_argument("--adapter-kind", choices=["pfeiffer", "houlsby"], default="pfeiffer")
    p.add_argument("--num-tasks", type=_positive_int, default=1, help="tasks fused (adapterfusion)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("train-expert", help="train one expert on one task")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="expert folder to write")
    p.add_argument("--name", default=None, help="expert name (default: the task)")
    p.add_argument("--method", default="tt-lora", choices=["tt-lora", "lora"])
    p.add_argument("--rank", type=_positive_int, default=None)
    p.add_argument("--alpha", type=_positive_float, default=None)
    p.add_argument("--lr", type=_positive_float, default=None)
    p.add_argument("--init", choices=["kaiming", "zero"], default="zero")
    p.add_argument("--shape", type=_shape_arg, action="append", metavar="TARGET=D1,D2,...")
    p.add_argument("--targets", type=_targets_arg, default=None)
    p.add_argument("--max-steps", type=_positive_int, default=300)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-length", type=_positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=_positive_int, default=None)
    p.add_argument("--eval-limit", type=_positive_int, default=2000)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="final metrics as one JSON object")
    _common_model_flags(p)
    p.set_defaults(func=cmd_train_expert)

    p = sub.add_parser("eval-expert", help="evaluate an expert folder")
    p.add_argument("expert", help="expert folder")
    p.add_argument("--input-file", default=None,
                   help="JSONL/CSV with text, optional text_pair, label (default: validation split)")
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--json", action="store_true")
    _common_model_flags(p)
    p.set_defaults(func=cmd_eval_expert)

    p = sub.add_parser("predict", help="route texts to experts and answer them")
    p.add_argument("text", nargs="*", help="input text(s)")
    p.add_argument("--text-pair", default=None, help="second text (pair tasks), for every text")
    p.add_argument("--input-file", default=None, help="JSONL with text and optional text_pair")
    p.add_argument("--pack", default=None, help="pack folder (default: assets/demo)")
    p.add_argument("--expert", default=None, help="force this expert (oracle) instead of routing")
    p.add_argument("--json", action="store_true", help="one JSON line per input")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train-router", help="train a pack's router (experts stay frozen)")
    p.add_argument("--pack", required=True)
    p.add_argument("--variant", default="fusion", choices=["paper", "linear", "mlp", "fusion"])
    p.add_argument("--layer", type=_parse_layers, default=[2],
                   help="base layer k read by the router; a list (0,1,2) trains one per layer "
                        "and keeps the best on held-out inputs")
    p.add_argument("--per-task", type=_positive_int, default=2000, help="training inputs per task")
    p.add_argument("--eval-per-task", type=_positive_int, default=500, help="held-out inputs per task")
    p.add_argument("--epochs", type=_positive_int, default=60)
    p.add_argument("--hidden", type=_positive_int, default=256)
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument("--max-length", type=_positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_train_router)

    p = sub.add_parser("eval-moe", help="routing accuracy and mixture vs oracle per task")
    p.add_argument("--pack", default=None)
    p.add_argument("--per-task", type=_positive_int, default=500)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_eval_moe)

    p = sub.add_parser("build-demo", help="train the six demo experts and a router into a pack")
    p.add_argument("--out", default=str(default_pack()))
    p.add_argument("--tasks", type=_targets_arg, default=list(DEMO_TASKS))
    p.add_argument("--steps", type=_positive_int, default=300)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-length", type=_positive_int, default=128)
    p.add_argument("--eval-limit", type=_positive_int, default=2000)
    p.add_argument("--init", choices=["kaiming", "zero"], default="zero")
    p.add_argument("--variant", default="fusion", choices=["paper", "linear", "mlp", "fusion"])
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--per-task", type=_positive_int, default=2000)
    p.add_argument("--eval-per-task", type=_positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    _common_model_flags(p)
    p.set_defaults(func=cmd_build_demo)

    from .report import add_report_parser  # the paper's five experiments (report.py)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
