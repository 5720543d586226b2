"""`serval dashboard`: serve the ops dashboard (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboard", help="serve the ops dashboard (web pages, REST API, SSE)")
    p.add_argument(
        "--registry", default=os.environ.get("SERVAL_REGISTRY", "127.0.0.1:7070"), help="host:port[,...]"
    )
    p.add_argument("--listen", default="127.0.0.1:8080", help="HTTP listen address (default %(default)s)")
    p.add_argument(
        "--token-file", type=Path, default=None, help="lines name:role:token (role admin or read-only)"
    )
    p.add_argument("--open-reads", action="store_true", help="reads need no token (actions still do)")
    p.add_argument("--audit-file", type=Path, default=None, help="append one JSON line per action")
    p.set_defaults(sync_handler=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from dashboard.app import create_app
    from dashboard.auth import load_tokens
    from dashboard.state import DashboardConfig

    logging.basicConfig(level=os.environ.get("SERVAL_LOG", "INFO"), format="%(asctime)s %(name)s %(message)s")
    tokens = load_tokens(args.token_file)
    if not tokens and not args.open_reads:
        logging.warning("no tokens configured: every request will be refused (see --token-file)")
    config = DashboardConfig(
        registry=args.registry.split(","),
        listen=args.listen,
        tokens=tokens,
        open_reads=args.open_reads,
        audit_file=args.audit_file,
    )
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(create_app(config), host=host.strip("[]"), port=int(port), log_level="warning")
    return 0
