"""`serval dns`: the command line of the DNS bridge.

Only argparse at import time: `deploy.cli` builds every command's parser in each
`serval` process (the host agent's too), so the bridge itself (dnslib, the server,
the registry client) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from resolver.sources import add_discovery_arguments, discovery_from_args, extra_backends

DEFAULT_ZONE = "svc.serval."  # resolver.dns_bridge.zone.DEFAULT_ZONE (not imported: see above)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dns", help="serve the service zone over DNS (authoritative, from the registry)")
    p.add_argument(
        "--registry",
        default=os.environ.get("SERVAL_REGISTRY", "127.0.0.1:7070"),
        help="registry replicas host:port[,...] (default $SERVAL_REGISTRY or %(default)s)",
    )
    p.add_argument("--listen", default="127.0.0.1:5353", help="UDP and TCP address (default %(default)s)")
    p.add_argument("--zone", default=DEFAULT_ZONE, help="zone served (default %(default)s)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of positive answers, seconds (default 5)")
    p.add_argument("--negative-ttl", type=int, default=5, help="TTL of negative answers (default 5)")
    p.add_argument("--max-answers", type=int, default=8, help="A/AAAA/SRV records per answer (default 8)")
    p.add_argument("--edns-max", type=int, default=1232, help="largest UDP answer, 512..4096 (default 1232)")
    p.add_argument("--rate-limit", type=float, default=1000.0, help="queries/s per client prefix; 0 = off")
    p.add_argument("--forwarder", default="", help="host:port to forward names outside the zone to")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (off by default)")
    add_discovery_arguments(
        p.add_argument_group("other discovery back-ends, merged with the registry's (all off by default)")
    )
    p.set_defaults(sync_handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from resolver.dns_bridge.server import config_from_args, serve

    if args.dns_name and not args.dns_server:
        print("serval dns: --dns-name needs --dns-server", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        discovery = discovery_from_args(args)
        extras = extra_backends(discovery)
    except ValueError as e:
        print(f"serval dns: {e}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.registry.split(",") if t.strip()]
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works the same, slower
        uvloop = None  # type: ignore[assignment]
    runner = uvloop.run if uvloop is not None else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(config, targets, extras, discovery.precedence))
    return 0
