"""The ``serve`` command: a pack's mixture behind an HTTP API (``services.server``) on uvicorn.

SIGTERM or Ctrl-C stops it gracefully: no new connections, requests in flight and queued ones
are answered, then it exits with 0 (SIGTERM) or 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from ..runtime import allocator
from .args import (
    UsageError,
    device_arg,
    dtype_flag,
    int_in,
    no_detector_flag,
    pool_dtype_flag,
    positive_float,
    positive_int,
)
from .checks import load_mixture


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (UsageError when it cannot be had). TCP_NODELAY,
    inherited by each connection: an answer's head and body go out at once (no 40 ms wait for
    the client's delayed ACK)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        # optional: the serve extra
        import uvicorn

        # optional: the serve extra (fastapi)
        from ..services.server import ServeSettings, create_app
    except ImportError as exc:
        raise UsageError(f"serve needs fastapi, uvicorn and prometheus_client ({exc.name} is "
                         "missing): pip install -r requirements.txt") from None
    settings = ServeSettings(max_wait_ms=args.max_wait_ms, max_batch_rows=args.max_batch_rows,
                             queue_size=args.queue_size, timeout_s=args.timeout_s,
                             coalesce=not args.no_coalesce)
    sock = _listen(args.host, args.port)
    allocator.fix_mmap_threshold()           # a flat RSS over many requests (runtime.allocator)
    moe = load_mixture(args.pack, args.device, args.dtype, args.pool_dtype, not args.no_detector)
    shown = ", ".join(moe.names[:10]) + (", ..." if len(moe.names) > 10 else "")
    print(f"serving {len(moe.names)} experts ({shown}) on http://{args.host}:{args.port} "
          "(API docs at /docs)", file=sys.stderr)
    config = uvicorn.Config(create_app(moe, settings), log_level=args.log_level,
                            timeout_graceful_shutdown=int(settings.timeout_s) + 1)
    # uvicorn re-raises the signal that stopped it once it is done: SIGTERM then exits with 0
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main_thread else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def add_parsers(sub) -> None:
    """Register this module's commands on a subparsers action."""
    p = sub.add_parser("serve", help="serve a pack over HTTP (predict, experts, health, metrics)")
    p.add_argument("--pack", default=None,
                   help="pack folder or hub repo id (default: assets/demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="TCP port to listen on")
    p.add_argument("--max-wait-ms", type=int_in(0, 10_000), default=5,
                   help="how long a request waits for others to share its model call (ms)")
    p.add_argument("--max-batch-rows", type=positive_int, default=256,
                   help="rows per model call at most")
    p.add_argument("--queue-size", type=positive_int, default=256,
                   help="requests waiting at most; beyond, 503 with Retry-After")
    p.add_argument("--timeout-s", type=positive_float, default=30.0,
                   help="seconds a request may take (body, then answer): 408 / 504 beyond")
    p.add_argument("--no-coalesce", action="store_true",
                   help="serve each request alone (one model call per request)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   default="info", help="uvicorn's log level")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda, cuda:N, mps or auto (default)")
    dtype_flag(p)
    pool_dtype_flag(p)
    no_detector_flag(p)
    p.set_defaults(func=cmd_serve)
