"""The DNS bridge's I/O shell: UDP and TCP listeners, the forwarder, metrics (`cli.py` runs `serve`).

One event loop: the UDP protocol answers in `datagram_received` (no task per query);
TCP connections each get a task reading length-prefixed queries (pipelined, answers
in order, idle timeout). A view change (`ViewSource.subscribe`) calls
`Bridge.set_view` on the same loop, between two queries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass

from registry.exposition import Family, MetricsServer, render
from resolver.dns_bridge.bridge import FORWARD, Bridge, BridgeConfig
from resolver.dns_bridge.feed import ViewSource
from resolver.dns_bridge.wire import error_reply
from resolver.dns_bridge.zone import SERVFAIL, ZoneConfig, normalize_zone
from resolver.model import Backend

log = logging.getLogger(__name__)
TCP_IDLE = 10.0
TCP_MAX_CONNECTIONS = 256
FORWARD_TIMEOUT = 2.0
FORWARD_MAX_PENDING = 1024  # forwarded UDP queries in flight; past it: SERVFAIL at once


def split_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        bridge = self.server.bridge
        if bridge.limiter is None:  # the hot lane: an exact repeat of a query already answered
            hit = bridge.replies.get(data[2:])
            if hit is not None and self.transport is not None:
                c = bridge.counters
                c.fast += 1
                c.rcodes[hit[1]] += 1
                if hit[2]:
                    c.truncated += 1
                self.transport.sendto(data[:2] + hit[0], addr)
                return
        try:
            reply = self.server.bridge.handle(data, addr[0], time.time(), tcp=False)
        except Exception:  # never let one packet stop the listener
            log.exception("dns: internal error on a UDP query")
            reply = error_reply(data, SERVFAIL)
        if reply is FORWARD:
            if self.server.pending >= FORWARD_MAX_PENDING:
                reply = error_reply(data, SERVFAIL)  # the forwarder is not keeping up
                self.server.bridge.counters.forward_failures += 1
            else:
                self.server.spawn(self._forward(data, addr))
                return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.server.forward(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class _ForwardProtocol(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.done.done():
            self.done.set_result(data)


@dataclass
class DnsConfig:
    bridge: BridgeConfig
    listen: str = "127.0.0.1:5353"
    forwarder: str = ""  # "host:port" of a recursive resolver for names outside the zone
    metrics_port: int | None = None


class DnsServer:
    """Serves `bridge` on UDP and TCP at `config.listen` (port 0 = ephemeral, the same for both)."""

    def __init__(self, config: DnsConfig, source: ViewSource) -> None:
        self.config = config
        self.bridge = Bridge(config.bridge)
        self.source = source
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics: MetricsServer | None = None
        self.bridge.set_view(source.view())
        source.subscribe(lambda: self.bridge.set_view(source.view()))

    async def start(self) -> int:
        """Listen on UDP and TCP; return the port."""
        loop = asyncio.get_running_loop()
        host, port = split_hostport(self.config.listen)
        for _ in range(20):  # port 0: find one free for both UDP and TCP
            udp, _proto = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
            chosen = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, chosen)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp, self.port = udp, chosen
            break
        else:
            raise OSError(f"no port free for both UDP and TCP on {host}")
        if self.config.metrics_port is not None:
            self._metrics = MetricsServer(lambda: render(collect(self)), host, self.config.metrics_port)
            await self._metrics.start()
        return self.port

    @property
    def pending(self) -> int:
        """Tasks in flight: TCP connections and forwarded queries."""
        return len(self._tasks)

    @property
    def metrics_port(self) -> int:
        return self._metrics.port if self._metrics else 0

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics is not None:
            await self._metrics.stop()

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forward(self, data: bytes) -> bytes | None:
        """`data` relayed to the forwarder; SERVFAIL when it does not answer in time."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _ForwardProtocol(done), remote_addr=split_hostport(self.config.forwarder)
            )
        except OSError:
            self.bridge.counters.forward_failures += 1
            return error_reply(data, SERVFAIL)
        try:
            transport.sendto(data)
            return await asyncio.wait_for(done, FORWARD_TIMEOUT)
        except (TimeoutError, OSError):
            self.bridge.counters.forward_failures += 1
            return error_reply(data, SERVFAIL)
        finally:
            transport.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        try:
            while True:
                (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                try:
                    reply = self.bridge.handle(data, client, time.time(), tcp=True)
                except Exception:
                    log.exception("dns: internal error on a TCP query")
                    reply = error_reply(data, SERVFAIL)
                if reply is FORWARD:
                    reply = await self.forward(data)
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


def collect(server: DnsServer) -> Iterator[Family]:
    """`serval_dns_…` metric families, read now."""
    c = server.bridge.counters
    queries = Family("serval_dns_queries_total", "counter", "Answers sent, by response code")
    for rcode, name in ((0, "NOERROR"), (1, "FORMERR"), (2, "SERVFAIL"), (3, "NXDOMAIN"), (4, "NOTIMP")):
        queries.samples.append(((("rcode", name),), c.rcodes[rcode]))
    queries.samples.append(((("rcode", "REFUSED"),), c.rcodes[5]))
    yield queries
    for name, doc, value in (
        ("rate_limited", "Queries dropped by the per-client rate limit", c.rate_limited),
        ("formerr", "Malformed queries answered FORMERR", c.rcodes[1]),
        ("dropped", "Packets dropped unanswered (no header, or a response)", c.dropped),
        ("truncated", "UDP answers sent truncated (TC)", c.truncated),
        ("fast_path", "Queries answered from a prepared answer", c.fast),
        ("slow_path", "Queries parsed by the full parser", c.slow),
        ("forwarded", "Queries passed to the forwarder", c.forwarded),
        ("forward_failures", "Forwarded queries that got no answer", c.forward_failures),
    ):
        yield Family(f"serval_dns_{name}_total", "counter", doc, [((), value)])
    yield Family(
        "serval_dns_view_revision",
        "gauge",
        "Revision of the view served",
        [((), server.bridge.view.revision)],
    )


def config_from_args(args: argparse.Namespace) -> DnsConfig:
    host, _ = split_hostport(args.listen)
    zone = ZoneConfig(
        zone=normalize_zone(args.zone),
        ttl=args.ttl,
        negative_ttl=args.negative_ttl,
        max_answers=args.max_answers,
        ns_addresses=(host,) if host not in ("0.0.0.0", "::", "") else (),
    )
    bridge = BridgeConfig(
        zone=zone, edns_max=args.edns_max, rate_limit=args.rate_limit, forward=bool(args.forwarder)
    )
    return DnsConfig(bridge, args.listen, args.forwarder, args.metrics_port)


async def serve(
    config: DnsConfig,
    targets: list[str],
    extras: Sequence[Backend] = (),
    precedence: Mapping[str, int] | None = None,
) -> None:
    """Serve the merged view of the registry at `targets` and the `extras` back-ends until
    cancelled (`precedence`: back-end name → rank, 0 first; default: the registry, then
    `extras` in order)."""
    from resolver.backends.registry import RegistryBackend
    from resolver.merge import Resolver

    registry = RegistryBackend(targets, subscriber_id="dns-bridge")
    resolver = Resolver([registry, *extras], precedence, debounce=0.002)
    server = DnsServer(config, resolver)
    port = await server.start()
    host, _ = split_hostport(config.listen)
    zone = config.bridge.zone.zone
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"serval dns: {zone} on {host}:{port} (UDP+TCP, {loop} loop); "
        f"try: dig @{host} -p {port} <service>.{zone} SRV",
        flush=True,
    )
    try:
        await resolver.run()
    finally:
        await server.stop()
