"""``report``: the paper's five experiments, the frontier and the methods on a decoder into a
report folder (also ``python -m ttmoe_core.report``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .. import report
from ..errors import TTMoEError
from .args import EXIT_USAGE, Parser, UsageError, int_in
from .checks import check_writable


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: run the experiments of one budget and write the report folder."""

    last = {"stage": None}

    def show(stage: str, done: int, total: int) -> None:
        if stage != last["stage"] or done == total:
            print(f"[{time.strftime('%H:%M:%S')}] {stage} ({done}/{total})", file=sys.stderr, flush=True)
        last["stage"] = stage

    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.parent / f"{out.name}.work"
    if args.status:
        return _status(work, args.json)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    check_writable(out, f"--out {out}")
    try:
        results = report.run_report(args.budget, out, progress=None if args.json else show,
                                    data_dir=args.data_dir, work_dir=work, resume=args.resume,
                                    jobs=args.jobs, reuse_from=args.reuse_from, only=args.only)
    except TTMoEError as exc:
        raise UsageError(str(exc)) from None
    if args.only is not None:
        done = sorted(results["experiments"])
        summary = {"work_dir": str(work), "experiments": done,
                   "seconds": round(sum(e.get("run", {}).get("seconds", 0)
                                        for e in results["experiments"].values()), 1)}
        print(json.dumps(summary) if args.json else
              f"finished in {work}: {', '.join(done) or 'nothing'} (no report written: "
              f"--only; a full run takes them with --reuse-from {work} or --resume)")
        return 0
    summary = {"out": str(out), "markdown": str(out / report.MARKDOWN_FILE), "results": str(out / report.RESULTS_FILE),
               "figures": sorted(v["html"] for v in results["figures"].values()),
               "seconds": results["meta"]["seconds"],
               "verdicts": {name: exp["claim"]["verdict"] for name, exp in results["experiments"].items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['markdown']} and {summary['results']} in {summary['seconds']} s")
        for name, verdict in summary["verdicts"].items():
            print(f"  {name}: the paper's claim {verdict}")
    return 0


def _status(work: Path, as_json: bool) -> int:
    """``report --status``: what the work folder of a (long, perhaps interrupted) run holds."""
    try:
        status = report.work_status(work)
    except report.ReportError as exc:
        raise UsageError(f"{exc}: give the run's --work-dir (or its --out)") from None
    print(json.dumps(status) if as_json else report.render_status(status))
    return 0


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand (``func(args) -> int``) on a subparsers action."""
    parser = subparsers.add_parser("report", help="re-run the paper's experiments into a report folder")
    parser.add_argument("--budget", choices=list(report.BUDGETS), default="small",
                        help="small: about 5 minutes on 2 CPU cores (CI); full: every method until its "
                             "hold-out metric is flat, 3 seeds, every task (tens of CPU-hours); "
                             "full-demo: the same on the six demo tasks")
    parser.add_argument("--out", default="reports", help="report folder (default: reports)")
    parser.add_argument("--data-dir", default=None,
                        help="task data folder (default: $TTMOE_DATA_DIR, ../shared/datasets, assets/samples)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary, no progress lines")
    parser.add_argument("--work-dir", default=None,
                        help="trained experts, checkpoints and finished experiments (default: "
                             "<out>.work); --resume continues from there")
    parser.add_argument("--reuse-from", action="append", default=[], metavar="WORK_DIR",
                        help="another report's work folder: its finished experts are taken where "
                             "their settings are this run's (copied, not retrained); repeatable")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted report: reuse its finished experts and "
                             "experiments, continue its checkpoints")
    parser.add_argument("--jobs", type=int_in(1, 64), default=1,
                        help="experiment 2: train this many experts at a time, each in its own process "
                             "with its share of the torch threads (CPU only; default 1). On 2 cores "
                             "2 one-thread jobs get through more steps an hour than one 2-thread job "
                             "(python -m ttmoe_core.bench jobs). Progress: a line per finished "
                             "training; --status shows the runs in progress")
    parser.add_argument("--only", type=lambda text: [t for t in text.split(",") if t],
                        default=None, metavar="EXPERIMENT[,...]",
                        help="run only these experiments into --work-dir (e.g. decoder, to train "
                             "the decoder pack's experts now), writing no report")
    parser.add_argument("--status", action="store_true",
                        help="run nothing: show what the work folder holds so far (finished "
                             "trainings, runs in progress, mean ± std over the seeds finished)")
    parser.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ttmoe_core.report [--budget ...]``: the ``report`` subcommand on its own."""
    parser = Parser(prog="python -m ttmoe_core.report")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    add_parsers(sub)
    try:
        args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
