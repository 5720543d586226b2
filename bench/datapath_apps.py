"""The data-path benchmark's applications, each run inside one lab host by `bench.datapath`.

    python -m bench.datapath_apps serve NAME --socket S --seconds N
    python -m bench.datapath_apps tcp-serve --listen IP --port P --seconds N
    python -m bench.datapath_apps connect (--name NAME --socket S | --direct IP:PORT)
                                  --count K [--concurrency C] [--wait W]
    python -m bench.datapath_apps sink NAME --socket S --seconds N --out FILE
    python -m bench.datapath_apps pace NAME --socket S --seconds N [--chunk B] [--pace-ms P] [--wait W]
    python -m bench.datapath_apps load --registry T --instances N --services M [--in-flight F]
    python -m bench.datapath_apps wait-metric --port P --metric M --at-least V --timeout T

- `serve` / `tcp-serve`: accept connections (by Serval name through the agent's
  client library, or on a plain TCP port) and send one byte on each, then close it.
  Exit after N seconds (bounded).
- `connect`: K connections, C at a time (C threads); each one's time from just
  before the connect call to the first byte received, in ns. With ``--wait W``
  it first retries one unmeasured connection until it succeeds (at most W s: the
  name is routable); ``--connect-only`` skips waiting for the byte. Prints JSON
  ``{"samples_ns", "elapsed_s", "errors", "failed"}``.
- `sink`: listen on NAME, accept one flow, read to EOF, and write the arrival time
  (``time.monotonic_ns``) and size of every read to FILE as JSON.
- `pace`: connect to NAME (retrying for up to W s), print ``connected``, send a
  CHUNK every P ms for N seconds, then half-close and wait for the sink to close;
  prints JSON ``{"sent"}``.
- `load`: register N SAL-capable instances (metadata ``serval.sal_port``) over M
  services through RegisterStream (one session, F in flight); prints JSON
  ``{"registered", "seconds", "max_revision"}``.
- `wait-metric`: poll the agent's Prometheus endpoint on 127.0.0.1:P until metric
  M reaches V; prints JSON ``{"value", "seconds", "metrics"}`` (exit 1 on timeout).

Timestamps are CLOCK_MONOTONIC: network namespaces share it with the supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from hostagent import client
from registry.api.client import RegistryClient
from registry.model import Instance

SAL_PORT_KEY = "serval.sal_port"
LOAD_SAL_PORT = 7946
LOAD_SESSION_TTL = 900


# ---- servers -------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.seconds
    with client.listen(args.name, agent_socket=args.socket) as listener:
        print("listening", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            try:
                conn, _peer = listener.accept(timeout=left)
            except TimeoutError:
                break
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"x")
    return 0


def tcp_serve(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.seconds
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((args.listen, args.port))
        server.listen(1024)
        print("listening", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                conn, _peer = server.accept()
            except TimeoutError:
                break
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"x")
    return 0


# ---- connection set-up ---------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> socket.socket:
    if args.direct:
        host, _, port = args.direct.rpartition(":")
        return socket.create_connection((host, int(port)), timeout=args.timeout)
    return client.connect(args.name, timeout=args.timeout, agent_socket=args.socket)


def _one(args: argparse.Namespace) -> int:
    """One connection: ns from before the connect call to the first byte received."""
    started = time.perf_counter_ns()
    with _open(args) as sock:
        if args.connect_only:
            return time.perf_counter_ns() - started
        sock.settimeout(args.timeout)
        if not sock.recv(1):
            raise ConnectionError("closed before the first byte")
        return time.perf_counter_ns() - started


def connect(args: argparse.Namespace) -> int:
    if args.wait:
        deadline = time.monotonic() + args.wait
        while True:
            try:
                _one(args)
                break
            except (OSError, client.ServalError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    samples: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [
        args.count // args.concurrency + (i < args.count % args.concurrency) for i in range(args.concurrency)
    ]

    def run(n: int) -> None:
        for _ in range(n):
            try:
                ns = _one(args)
            except (OSError, client.ServalError) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                samples.append(ns)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {"samples_ns": samples, "elapsed_s": elapsed, "errors": errors[:20], "failed": len(errors)}
        )
    )
    return 0


# ---- migration -----------------------------------------------------------------------------------


def sink(args: argparse.Namespace) -> int:
    arrivals: list[tuple[int, int]] = []
    with client.listen(args.name, agent_socket=args.socket) as listener:
        print("listening", flush=True)
        conn, _peer = listener.accept(timeout=args.seconds)
        deadline = time.monotonic() + args.seconds
        with conn:
            conn.settimeout(1.0)
            while time.monotonic() < deadline:
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                arrivals.append((time.monotonic_ns(), len(data)))
    Path(args.out).write_text(json.dumps({"arrivals": arrivals}))
    return 0


def _connect_when_routable(name: str, agent_socket: str, wait: float) -> socket.socket:
    """`client.connect`, retried until it succeeds (the agent may not know the name yet)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return client.connect(name, timeout=5, agent_socket=agent_socket)
        except (OSError, client.ServalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def pace(args: argparse.Namespace) -> int:
    chunk = b"s" * args.chunk
    sent = 0
    with _connect_when_routable(args.name, args.socket, args.wait) as sock:
        print("connected", flush=True)
        started = time.monotonic()
        tick = started
        while time.monotonic() - started < args.seconds:
            sock.sendall(chunk)
            sent += len(chunk)
            tick += args.pace_ms / 1000
            time.sleep(max(0.0, tick - time.monotonic()))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(1 << 10):
            pass
    print(json.dumps({"sent": sent}))
    return 0


# ---- registry load and agent metrics -------------------------------------------------------------


def load_instance(n: int, services: int) -> Instance:
    """The `n`-th SAL-capable instance of the memory phase (service ``svc-<n % services>.mem.bench``)."""
    return Instance(
        service=f"svc-{n % services:06d}.mem.bench",
        instance_id=f"i-{n}",
        addresses=(f"10.{100 + (n >> 16 & 63)}.{n >> 8 & 255}.{n & 255}",),
        port=LOAD_SAL_PORT,
        metadata={SAL_PORT_KEY: str(LOAD_SAL_PORT)},
    )


async def _load(args: argparse.Namespace) -> dict[str, object]:
    reg = RegistryClient([args.registry], timeout=60)
    started = time.monotonic()
    try:
        lease = (await reg.open_session(LOAD_SESSION_TTL)).lease_id
        streams = [reg.registration_stream() for _ in range(args.streams)]
        numbers = iter(range(args.instances))
        max_revision = 0

        async def loop(stream_index: int) -> None:
            nonlocal max_revision
            stream = streams[stream_index % len(streams)]
            for n in numbers:
                inst = load_instance(n, args.services)
                for attempt in range(5):
                    try:
                        resp = await stream.register(inst, lease_id=lease)
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.5)
                max_revision = max(max_revision, int(resp.revision))

        await asyncio.gather(*(loop(i) for i in range(args.in_flight)))
        for stream in streams:
            await stream.close()
    finally:
        await reg.close()
    return {"registered": args.instances, "seconds": time.monotonic() - started, "max_revision": max_revision}


def load(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_load(args))))
    return 0


def scrape(port: int) -> dict[str, float]:
    """Every unlabelled sample of the Prometheus text endpoint on 127.0.0.1:`port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of the Prometheus text format without labels (``name value``), by name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return out


def wait_metric(args: argparse.Namespace) -> int:
    started = time.monotonic()
    metrics: dict[str, float] = {}
    while time.monotonic() - started < args.timeout:
        try:
            metrics = scrape(args.port)
        except OSError:
            metrics = {}
        if metrics.get(args.metric, float("-inf")) >= args.at_least:
            break
        time.sleep(args.poll)
    value = metrics.get(args.metric)
    print(json.dumps({"value": value, "seconds": time.monotonic() - started, "metrics": metrics}))
    return 0 if value is not None and value >= args.at_least else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("name")
    s.add_argument("--socket", required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.set_defaults(fn=serve)
    s = sub.add_parser("tcp-serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.set_defaults(fn=tcp_serve)
    s = sub.add_parser("connect")
    s.add_argument("--name")
    s.add_argument("--socket")
    s.add_argument("--direct", help="ip:port of a plain TCP server instead of a name")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--wait", type=float, default=0.0)
    s.add_argument("--connect-only", action="store_true", help="do not wait for a byte")
    s.set_defaults(fn=connect)
    s = sub.add_parser("sink")
    s.add_argument("name")
    s.add_argument("--socket", required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=sink)
    s = sub.add_parser("pace")
    s.add_argument("name")
    s.add_argument("--socket", required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--chunk", type=int, default=1024)
    s.add_argument("--pace-ms", type=float, default=1.0)
    s.add_argument("--wait", type=float, default=30.0, help="retry the connect this long")
    s.set_defaults(fn=pace)
    s = sub.add_parser("load")
    s.add_argument("--registry", required=True)
    s.add_argument("--instances", type=int, required=True)
    s.add_argument("--services", type=int, required=True)
    s.add_argument("--streams", type=int, default=4)
    s.add_argument("--in-flight", type=int, default=128)
    s.set_defaults(fn=load)
    s = sub.add_parser("wait-metric")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--metric", required=True)
    s.add_argument("--at-least", type=float, required=True)
    s.add_argument("--timeout", type=float, required=True)
    s.add_argument("--poll", type=float, default=0.5)
    s.set_defaults(fn=wait_metric)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
