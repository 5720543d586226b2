"""Tiny, always-bounded network probes, run inside a lab host: ``python -m deploy.netcheck ...``.

    echo --listen ADDR --port P --seconds S     TCP echo server; exits by itself after S seconds
    connect TARGET... [--wait S] [--timeout T] [--echo]
                                                 exit 0 once every ``host:port`` (``[v6]:port``)
                                                 accepts a connection (and echoes, with --echo)
                                                 within S seconds; else print why and exit 1
    grpc-health TARGET [--wait S]                exit 0 once a gRPC server reports SERVING
    http URL [--contains TEXT] [--wait S]        exit 0 once GET URL answers 200 (with TEXT in the body)
    dns-soa SERVER [--zone Z] [--wait S]         exit 0 once the DNS server ``host:port`` answers
                                                 the SOA of zone Z (default svc.serval.) over UDP
    dns QNAME --server SERVER [--type A]         one UDP query; print the answer's records as JSON

A `connect` target may also be ``unix:PATH`` (a Unix stream socket).

`deploy.netns.NetnsLab` runs these with ``ip netns exec`` so that every packet
stays inside the lab: the root namespace never talks to the lab's networks.
"""

from __future__ import annotations

import argparse
import functools
import json
import selectors
import socket
import sys
import time
from collections.abc import Callable, Sequence

PAYLOAD = b"serval-netcheck\n"


def parse_target(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"target {text!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def probe(host: str, port: int, timeout: float, echo: bool) -> str | None:
    """One attempt: None on success, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if echo:
                sock.sendall(PAYLOAD)
                got = b""
                while len(got) < len(PAYLOAD):
                    chunk = sock.recv(len(PAYLOAD) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got != PAYLOAD:
                    return f"bad echo {got!r}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def probe_unix(path: str, timeout: float) -> str | None:
    """One attempt to connect to the Unix stream socket `path`: None on success, else the reason."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def connect(targets: Sequence[str], wait: float, timeout: float, echo: bool) -> int:
    deadline = time.monotonic() + wait
    for target in targets:
        if target.startswith("unix:"):
            attempt = functools.partial(probe_unix, target.removeprefix("unix:"), timeout)
        else:
            attempt = functools.partial(probe, *parse_target(target), timeout, echo)
        while (why := attempt()) is not None:
            if time.monotonic() >= deadline:
                print(f"netcheck: {target}: {why}", file=sys.stderr)
                return 1
            time.sleep(0.05)
    return 0


def echo_server(listen: str, port: int, seconds: float) -> int:
    """Echo every connection's bytes back until the peer closes; stop after `seconds`."""
    deadline = time.monotonic() + seconds
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server, selectors.DefaultSelector() as sel:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind((listen, port))
        server.listen(64)
        server.setblocking(False)
        sel.register(server, selectors.EVENT_READ)
        print(f"netcheck: echo on {listen} port {port} for {seconds:.0f}s", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=min(left, 0.5)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    conn, _ = server.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        sock.setblocking(True)
                        sock.settimeout(1.0)
                        sock.sendall(data)
                        sock.setblocking(False)
                        continue
                except OSError:
                    pass
                sel.unregister(sock)
                sock.close()
    return 0


def grpc_health(target: str, wait: float) -> int:
    from deploy.local_cluster import registry_serving  # imports grpc: only this probe pays for it

    deadline = time.monotonic() + wait
    while not registry_serving(target):
        if time.monotonic() >= deadline:
            print(f"netcheck: {target} not SERVING after {wait:.0f}s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    return 0


def retry(check: Callable[[], str | None], what: str, wait: float) -> int:
    """Call `check` (None = success, else the reason) until it succeeds or `wait` s have passed."""
    deadline = time.monotonic() + wait
    while (why := check()) is not None:
        if time.monotonic() >= deadline:
            print(f"netcheck: {what}: {why}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    return 0


def http_check(url: str, contains: str) -> str | None:
    """One GET: None if it answers 200 (with `contains` in the body), else the reason."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read().decode(errors="replace")
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None if contains in body else f"no {contains!r} in {body[:200]!r}"


def dns_query(server: str, qname: str, qtype: str, timeout: float = 1.0) -> list[dict[str, object]]:
    """One UDP query to `server` (``host:port``); the answer section as JSON-friendly dicts.

    Raises OSError if nothing answers in time, ValueError if the answer's rcode is not NOERROR.
    """
    import dnslib

    host, port = parse_target(server)
    query = dnslib.DNSRecord.question(qname, qtype)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query.pack(), (host, port))
        reply = dnslib.DNSRecord.parse(sock.recv(65535))
    if reply.header.id != query.header.id or reply.header.rcode != dnslib.RCODE.NOERROR:
        raise ValueError(f"rcode {dnslib.RCODE.get(reply.header.rcode)}")
    return [
        {"name": str(rr.rname), "type": dnslib.QTYPE.get(rr.rtype), "ttl": rr.ttl, "data": str(rr.rdata)}
        for rr in reply.rr
    ]


def soa_check(server: str, zone: str) -> str | None:
    """None if `server` answers the SOA query of `zone` with an SOA record, else the reason."""
    try:
        records = dns_query(server, zone, "SOA")
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None if any(r["type"] == "SOA" for r in records) else f"no SOA in {records}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.netcheck", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--listen", default="::")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("connect")
    p.add_argument("targets", nargs="+")
    p.add_argument("--wait", type=float, default=0.0, help="keep trying this long (default: one try)")
    p.add_argument("--timeout", type=float, default=1.0, help="per attempt (default %(default)s s)")
    p.add_argument("--echo", action="store_true")
    p = sub.add_parser("grpc-health")
    p.add_argument("target")
    p.add_argument("--wait", type=float, default=0.0)
    p = sub.add_parser("http")
    p.add_argument("url")
    p.add_argument("--contains", default="", help="text the body must contain")
    p.add_argument("--wait", type=float, default=0.0)
    p = sub.add_parser("dns-soa")
    p.add_argument("server")
    p.add_argument("--zone", default="svc.serval.")
    p.add_argument("--wait", type=float, default=0.0)
    p = sub.add_parser("dns")
    p.add_argument("qname")
    p.add_argument("--server", required=True)
    p.add_argument("--type", default="A")
    args = parser.parse_args(argv)
    if args.command == "http":
        return retry(functools.partial(http_check, args.url, args.contains), args.url, args.wait)
    if args.command == "dns-soa":
        return retry(functools.partial(soa_check, args.server, args.zone), args.server, args.wait)
    if args.command == "dns":
        print(json.dumps(dns_query(args.server, args.qname, args.type)))
        return 0
    if args.command == "echo":
        return echo_server(args.listen, args.port, args.seconds)
    if args.command == "connect":
        return connect(args.targets, args.wait, args.timeout, args.echo)
    return grpc_health(args.target, args.wait)


if __name__ == "__main__":
    sys.exit(main())
