"""Benchmarks, measured side by side in one run: ``python -m ttmoe_core.bench adapters|moe|serve|http|soak|jobs``.

``adapters``: on the base model (default: the embedded all-MiniLM-L6-v2)
  - inference: frozen model vs the same model with TT-LoRA (rank 5) on every query/value module;
  - training step (forward + backward + AdamW step): TT-LoRA vs PEFT LoRA r16, same head and loss;
  - the adapter alone, contraction (``tt.tt_contract``, and the paper's mode-by-mode order
    ``tt.tt_contract_sequential``) vs reconstruction (``ΔW`` from the cores, then ``x @ ΔW^T``) for
    a 384×384 layer and the paper's 2048×2048 LLaMA-3.2-1B q_proj shape, per number of tokens;
  - peak memory of each variant.
``moe``: a mixed batch (rows of every expert's task, interleaved) through
  (a) the mixture ``moe.TTLoRAMoE`` (routing included, and its expert part alone),
  (b) one TT-LoRA expert alone on the same rows,
  (c) the paper's scheme: a router pass over the whole base model, then a second full pass where
      every layer sums the gate-weighted outputs of ALL E experts (``GateWeightedMoE``, checked
      equal to the mixture before timing);
  then the mixture's expert part for E = 1, 6, 16, 64 experts (random cores beyond the pack).
``serve``: the same mixed rows (96 validation rows of the pack's tasks) from text to answers:
  the frozen floor on length-sorted micro-batches, the mixture before (one padded batch) and now,
  with upper-layer experts (router prefix shared), PEFT LoRA r16 with ``adapter_names=`` (one
  padded batch and the same micro-batches), the paper's scheme; the expert part per row and the
  memory for E = 6, 64, 1,000, 10,000; a 1,000-expert pack loaded from disk; single-row latency.
``http``: the HTTP API (``python -m ttmoe_core serve``) on a loopback port of this process, mixed
  validation rows from 1, 8, 32 and 64 concurrent clients: rows/s and latency p50/p95/p99 with
  requests coalesced into one model call and without (each request alone), beside the offline
  ``predict`` on the same rows in one call.
``soak``: 10,000 requests to the HTTP API on a loopback port (bounded in time), the resident
  memory of the process after a warm-up and along the way (growth target: under 50 MB).

``jobs``: one expert training alone with every thread vs ``--jobs`` copies of it at once, each
  with its share of the threads, every one in a fresh process (what ``report --jobs`` does):
  training steps per second of wall time, and CPU seconds per step.

Timing: the variants of a table run interleaved (the order rotates each round) and each figure
is the median over the rounds; ``torch.cuda.synchronize`` brackets every sample on CUDA.
``--json`` prints one JSON object with the same figures (seconds, bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from ..base.backbone import pick_device
from ..cli.args import (
    EXIT_USAGE,
    Parser,
    UsageError,
    int_in,
    positive_float,
    positive_int,
    positive_int_list,
)
from ..runtime.runinfo import usable_cores
from .adapters import ADAPTER_DEFAULTS, ADAPTER_QUICK, bench_adapters, format_adapters
from .http import HTTP_DEFAULTS, HTTP_QUICK, bench_http, format_http
from .jobs import JOBS_DEFAULTS, JOBS_QUICK, bench_jobs, format_jobs
from .moe import DEMO_PACK, MOE_DEFAULTS, MOE_QUICK, bench_moe, format_moe
from .serve import SERVE_DEFAULTS, SERVE_QUICK, bench_serve, format_serve
from .soak import SOAK_DEFAULTS, SOAK_QUICK, bench_soak, format_soak


def _settings(args: argparse.Namespace, defaults: dict, quick: dict) -> dict:
    """The defaults (``--quick``: the tiny ones), each overridden by its flag when given."""
    base = quick if args.quick else defaults
    return {key: (getattr(args, key) if getattr(args, key, None) is not None else value)
            for key, value in base.items()}


def _run_adapters(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    result = bench_adapters(_settings(args, ADAPTER_DEFAULTS, ADAPTER_QUICK), args.model, device)
    return result, format_adapters(result)


def _run_moe(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    result = bench_moe(_settings(args, MOE_DEFAULTS, MOE_QUICK), args.pack, args.data_dir, device)
    return result, format_moe(result)


def _run_serve(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    settings = _settings(args, SERVE_DEFAULTS, SERVE_QUICK)
    if args.no_rss:
        settings["rss"] = False
    result = bench_serve(settings, args.pack, args.data_dir, device, upper_pack=args.upper_pack)
    return result, format_serve(result)


def _serving_packages(what: str) -> None:
    """UsageError naming the missing one when fastapi, uvicorn or httpx (the serve extra) is absent."""
    try:
        import fastapi  # noqa: F401,E401 -- the optional serving packages
        import httpx
        import uvicorn
    except ImportError as exc:
        raise UsageError(f"{what} needs fastapi, uvicorn and httpx ({exc.name} is missing): "
                         "pip install -e '.[serve]'") from None


def _run_http(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    _serving_packages("the http benchmark")
    result = bench_http(_settings(args, HTTP_DEFAULTS, HTTP_QUICK), args.pack, args.data_dir, device)
    return result, format_http(result)


def _run_soak(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    _serving_packages("the soak run")
    result = bench_soak(_settings(args, SOAK_DEFAULTS, SOAK_QUICK), args.pack, args.data_dir, device)
    return result, format_soak(result)


def _run_jobs(args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    if device.type != "cpu":
        raise UsageError("the jobs benchmark compares CPU trainings: give --device cpu")
    settings = _settings(args, JOBS_DEFAULTS, JOBS_QUICK)
    if settings["jobs"] > torch.get_num_threads():
        raise UsageError(f"--jobs {settings['jobs']} needs a thread per training: give --threads "
                         f"{settings['jobs']} or more (now {torch.get_num_threads()})")
    result = bench_jobs(settings, args.data_dir, torch.get_num_threads())
    return result, format_jobs(result)


def _pack_flags(parser, quick_length: int | None = None) -> None:
    """--pack, --data-dir and --max-length of the benchmarks that serve a pack's mixture on mixed
    rows (``quick_length``: the row length of --quick, when it sets one)."""
    parser.add_argument("--pack", default=str(DEMO_PACK), help="pack folder (default: assets/demo)")
    parser.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")
    quick = "" if quick_length is None else f"; quick {quick_length}"
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help=f"tokens per row at most (default: the pack's{quick})")


def build_parser() -> Parser:
    """One subcommand per benchmark; each sets ``run(args, device) -> (result, text)``."""
    parser = Parser(prog="python -m ttmoe_core.bench", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    common.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: all cores)")
    common.add_argument("--repeats", type=positive_int, default=None,
                        help="interleaved rounds per table (default 10; quick 2)")
    common.add_argument("--quick", action="store_true", help="tiny settings (tests, smoke runs)")
    common.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if present)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    a = sub.add_parser("adapters", parents=[common], help="TT-LoRA vs frozen / LoRA; contraction")
    a.add_argument("--model", default=None, help="base model (default: embedded all-MiniLM-L6-v2)")
    a.add_argument("--batch", type=positive_int, default=None, help="rows (default 32)")
    a.add_argument("--length", type=positive_int, default=None, help="tokens per row (default 64)")
    a.add_argument("--rank", type=positive_int, default=None, help="TT rank (default 5)")
    a.add_argument("--lora-rank", type=positive_int, default=None, help="LoRA rank (default 16)")
    a.add_argument("--tokens", type=positive_int_list, default=None,
                   help="token counts for contraction vs reconstruction "
                        "(default 1,4,16,64,256,1024,4096)")
    a.set_defaults(run=_run_adapters)

    m = sub.add_parser("moe", parents=[common], help="mixture vs single expert vs paper scheme")
    _pack_flags(m)
    m.add_argument("--rows", type=positive_int, default=None, help="mixed batch rows (default 48)")
    m.add_argument("--experts-scan", type=positive_int_list, default=None,
                   help="numbers of experts for the expert-part scan (default 1,6,16,64)")
    m.set_defaults(run=_run_moe)

    s = sub.add_parser("serve", parents=[common], help="mixed rows served: mixture vs frozen floor "
                                                      "vs PEFT adapter_names; large pools")
    _pack_flags(s)
    s.add_argument("--upper-pack", default=None,
                   help="pack of trained upper-layer experts (default: the pack's experts with "
                        "their cores below the router's layer zeroed, same cost)")
    s.add_argument("--rows", type=positive_int, default=None, help="mixed rows (default 96)")
    s.add_argument("--experts-scan", type=positive_int_list, default=None,
                   help="numbers of experts for the expert part and memory "
                        "(default 6,64,1000,10000)")
    serve_counts = (("--disk-experts", "experts in the pack written and loaded back (default 1000)"),
                    ("--latency-rows", "rows timed one at a time (default 8)"),
                    ("--latency-repeats", "rounds per single row (default 15)"))
    for flag, text in serve_counts:
        s.add_argument(flag, type=positive_int, default=None, help=text)
    s.add_argument("--no-rss", action="store_true",
                   help="skip the memory probes (a fresh process per E)")
    s.set_defaults(run=_run_serve)

    h = sub.add_parser("http", parents=[common], help="the HTTP server under 1-64 concurrent "
                                                     "clients, coalescing on and off, vs offline")
    _pack_flags(h, quick_length=32)
    h.add_argument("--rows", type=positive_int, default=None, help="mixed rows (default 256)")
    h.add_argument("--clients", type=positive_int_list, default=None,
                   help="concurrent clients per level (default 1,8,32,64)")
    load_limits = (("--requests", positive_int, "requests per level at most (default 256; quick 64)"),
                   ("--seconds", positive_float, "seconds per level at most (default 20; quick 5)"),
                   ("--rows-per-request", positive_int, "rows in each request (default 1)"))
    for flag, kind, text in load_limits:
        h.add_argument(flag, type=kind, default=None, help=text)
    h.add_argument("--max-wait-ms", type=int_in(0, 10_000), default=None,
                   help="the coalescing server's wait for more requests (default 5)")
    h.set_defaults(run=_run_http)

    k = sub.add_parser("soak", parents=[common], help="10,000 requests to the HTTP server on "
                                                     "loopback: resident memory growth")
    _pack_flags(k)
    soak_limits = (("--requests", positive_int, "requests in all (default 10,000; quick 200)"),
                   ("--seconds", positive_float, "seconds at most (default 1800; quick 60)"),
                   ("--clients", positive_int, "concurrent clients (default 16)"))
    for flag, kind, text in soak_limits:
        k.add_argument(flag, type=kind, default=None, help=text)
    k.set_defaults(run=_run_soak)

    j = sub.add_parser("jobs", parents=[common], help="one training with every thread vs several "
                                                     "side by side (report --jobs)")
    j.add_argument("--model", default=None, help="base model (default: embedded all-MiniLM-L6-v2)")
    j.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")
    j.add_argument("--task", default=None, help="task trained (default mnli; quick: sst2)")
    j.add_argument("--method", default=None, choices=["tt-lora", "lora", "adapter"],
                   help="method trained (default tt-lora)")
    j.add_argument("--steps", type=positive_int, default=None, help="steps per training (default 100)")
    j.add_argument("--jobs", type=int_in(2, 64), default=None, help="trainings side by side (default 2)")
    j.add_argument("--train-rows", type=positive_int, default=None, help="training rows (default 2000)")
    j.set_defaults(run=_run_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; print its tables (or, with ``--json``, its result). Bad flags print
    one line ``error: ...`` on stderr and return 2."""
    try:
        args = build_parser().parse_args(argv)
        torch.set_num_threads(args.threads or usable_cores())
        result, text = args.run(args, pick_device(args.device))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
