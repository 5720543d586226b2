"""`serval agent`: run the host agent in the foreground (SIGINT/SIGTERM stop it cleanly)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

from hostagent.agent.agent import Agent, AgentConfig
from hostagent.agent.datapath import DatapathUnavailable
from hostagent.agent.events import Endpoint
from hostagent.agent.legacy import LegacyConfig
from hostagent.localproto import DEFAULT_SOCKET, SOCKET_ENV
from registry import names
from resolver.sources import add_discovery_arguments, discovery_from_args


def parse_endpoint(text: str) -> Endpoint:
    """``ip:port`` or ``[v6]:port`` → ``(ip, port)``; `argparse.ArgumentTypeError` otherwise."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if ":" in host and not bracketed:
        raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 endpoints as [ip]:port")
    try:
        ip = ipaddress.ip_address(host).compressed
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ip:port") from None
    if not sep or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not ip:port (port 0..65535)")
    return (ip, number)


def parse_upstream(text: str) -> tuple[Endpoint, str]:
    """``ip:port=name`` → ``((ip, port), normalised name)``; `argparse.ArgumentTypeError` otherwise."""
    endpoint, sep, name = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not ip:port=name")
    return parse_endpoint(endpoint), _service_name(name)


def parse_expose(text: str) -> tuple[str, Endpoint]:
    """``name=ip:port`` → ``(normalised name, (ip, port))``; `argparse.ArgumentTypeError` otherwise."""
    name, sep, endpoint = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not name=ip:port")
    ip, port = parse_endpoint(endpoint)
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the exposed server needs a port")
    return _service_name(name), (ip, port)


def _service_name(name: str) -> str:
    try:
        return names.normalize(name)
    except names.InvalidName as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serval agent` to the `serval` parser."""
    p = sub.add_parser("agent", help="run the host agent (registry watch, SAL data path, local API)")
    p.add_argument(
        "--registry",
        default=os.environ.get("SERVAL_REGISTRY", "127.0.0.1:7070"),
        help="registry replicas host:port[,...] (default %(default)s), or `none` for an ad-hoc "
        "network without a registry (names then come from --lan / --static / --dns-name)",
    )
    p.add_argument("--agent-id", default=socket.gethostname(), help="this agent's id (default: hostname)")
    p.add_argument("--zone", default="", help="the host's zone (locality preference)")
    p.add_argument("--region", default="", help="the host's region (locality preference)")
    p.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV, DEFAULT_SOCKET),
        help=f"local API Unix socket (default ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    p.add_argument("--socket-group", default=None, help="group owning the socket (mode 0660)")
    p.add_argument(
        "--sal-listen",
        type=parse_endpoint,
        action="append",
        help="SAL listen endpoint ip:port, repeatable (default 0.0.0.0:7946)",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: off)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="Prometheus bind address")
    p.add_argument("--address-poll", type=float, default=1.0, help="seconds between address polls")
    p.add_argument("--lease-ttl", type=int, default=10, help="registry lease TTL in seconds")
    p.add_argument(
        "--path-timeout",
        type=float,
        default=20.0,
        help="seconds without progress (unacknowledged data, unanswered keep-alives) after which a "
        "connection to another agent counts as broken and its flows move to another path "
        "(0: the kernel's defaults, minutes; default %(default)s)",
    )
    legacy = p.add_argument_group("legacy access (Serval's translator; all off by default)")
    legacy.add_argument(
        "--socks-listen",
        type=parse_endpoint,
        default=None,
        help="SOCKS5 proxy ip:port (no auth, CONNECT to a service NAME; the port is ignored)",
    )
    legacy.add_argument(
        "--upstream",
        type=parse_upstream,
        action="append",
        default=[],
        metavar="IP:PORT=NAME",
        help="TCP listener whose connections are relayed to service NAME (repeatable)",
    )
    legacy.add_argument(
        "--expose",
        type=parse_expose,
        action="append",
        default=[],
        metavar="NAME=IP:PORT",
        help="register NAME for the unmodified local TCP server at IP:PORT (repeatable)",
    )
    add_discovery_arguments(
        p.add_argument_group(
            "other discovery back-ends (their SAL-capable endpoints join the table; all off by default)"
        )
    )
    p.set_defaults(handler=run_agent)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        registry=[]
        if args.registry.strip() == "none"
        else [t.strip() for t in args.registry.split(",") if t.strip()],
        agent_id=args.agent_id,
        zone=args.zone,
        region=args.region,
        socket_path=Path(args.socket),
        socket_group=args.socket_group,
        sal_listen=tuple(args.sal_listen or [("0.0.0.0", 7946)]),
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        address_poll=args.address_poll,
        lease_ttl=args.lease_ttl,
        path_timeout=max(args.path_timeout, 0.0),
        keepalive_interval=max(args.lease_ttl / 3, 0.5),
        legacy=LegacyConfig(
            socks_listen=args.socks_listen, upstreams=tuple(args.upstream), exposes=tuple(args.expose)
        ),
        discovery=discovery_from_args(args),
    )


async def run_agent(args: argparse.Namespace) -> int:
    if args.dns_name and not args.dns_server:
        print("serval agent: --dns-name needs --dns-server", file=sys.stderr)
        return 2
    try:
        agent = Agent(config_from_args(args))
    except ValueError as e:  # e.g. an invalid DNS name or server
        print(f"serval agent: {e}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        await agent.run()
    except DatapathUnavailable as e:
        print(f"serval agent: {e}", file=sys.stderr)
        return 2
    return 0
