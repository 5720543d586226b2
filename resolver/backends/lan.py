"""The LAN back-end: discovery without a registry, by UDP multicast on an ad-hoc network.

Hosts announce their local services to a multicast group; every listening host keeps
what the others announce until it expires. Default group and port:
`239.255.77.77:7947` (IPv4, organisation-local scope, packet TTL 1: never routed
off the link).

Wire format, version 1: one UTF-8 JSON object per datagram, at most
`MAX_DATAGRAM` (1200) bytes, no more than `MAX_SERVICES` (16) entries::

    {"v": 1, "t": "ann", "host": "<announcer id>", "ttl": 15,
     "s": [{"n": "web.lan", "i": "web-1", "a": ["10.0.0.5"], "p": 8080,
            "w": 100, "t": 0, "m": {"serval.sal_port": "7946"}}]}
    {"v": 1, "t": "q"}                         # "announce now, please"
    {"v": 1, "t": "bye", "host": "<announcer id>"}   # the announcer stops

`host` is 1..64 of [A-Za-z0-9._:-]; an entry's `a` may be empty (or absent): the
datagram's source address is used. `w`, `t` and `m` are optional (100, 0, {}); all
fields are checked by the registry's rules (`registry.model.validate_instance`).
An announcer with more entries sends several datagrams. Datagrams with another
version are ignored (counted as `unsupported`); malformed (not JSON, wrong types,
invalid values) and oversized ones are dropped and counted, never raised.

Expiry: each entry lives `ttl` seconds (1..3600) after the announcement that carried
it; an announcer re-announces every `interval` seconds (default 5, TTL default 15 =
three missed announcements). An entry the announcer stopped announcing disappears at
its expiry; a `bye` drops all of a host's entries at once. Two hosts announcing the
same (service, instance id): the latest announcement wins.

Layout: the pure core is `lan_wire.py` (codec and `LanTable`; time is passed in as
`now`); this module is the thin asyncio shell (`LanBackend`, `LanAnnouncer`) that
owns the sockets and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from registry.model import MAX_TTL_SECONDS
from resolver.backends.lan_wire import (
    HOST_RE,
    MAX_DATAGRAM,
    LanTable,
    Malformed,
    Query,
    Unsupported,
    decode,
    encode_announcements,
    encode_bye,
    encode_query,
)
from resolver.backends.state import Published, PublishingBackend
from resolver.model import Endpoint

log = logging.getLogger(__name__)

DEFAULT_GROUP = "239.255.77.77"
DEFAULT_PORT = 7947
DEFAULT_INTERVAL = 5.0
DEFAULT_TTL = 15


# ---- asyncio shell ------------------------------------------------------------------


def multicast_socket(group_addr: str, port: int, interface: str = "0.0.0.0") -> socket.socket:
    """A non-blocking UDP socket bound to `port`, joined to `group_addr` on `interface`
    (an address of it; "0.0.0.0": the kernel's choice), sending with TTL 1 and loopback on
    (other processes on this host hear it). Several sockets may share the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group_addr, port))
        mreq = struct.pack("4s4s", socket.inet_aton(group_addr), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if interface != "0.0.0.0":
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, str], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("lan socket error: %s", exc)


async def _open(
    group_addr: str, port: int, interface: str, handler: Callable[[bytes, str], None]
) -> asyncio.DatagramTransport:
    sock = multicast_socket(group_addr, port, interface)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(handler), sock=sock)
    return transport


class LanBackend(PublishingBackend):
    """Listens on the group and keeps what other hosts announce (a `Backend`).

    `stats` counts datagrams: received, malformed, oversized, unsupported, expired
    (entries). On start it sends one query so announcers answer without waiting for
    their interval.
    """

    def __init__(
        self,
        *,
        name: str = "lan",
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        interface: str = "0.0.0.0",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.group, self.port, self.interface = group, port, interface
        self.table = LanTable()
        self.stats = dict.fromkeys(("received", "malformed", "oversized", "unsupported", "expired"), 0)
        self._clock = clock
        self._state = Published(name)
        self._wake = asyncio.Event()

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def on_datagram(self, data: bytes, sender: str) -> None:
        """Feed one datagram (the socket's callback; callable directly)."""
        self.stats["received"] += 1
        try:
            msg = decode(data, sender, self.name)
        except Unsupported:
            self.stats["unsupported"] += 1
            return
        except Malformed:
            self.stats["oversized" if len(data) > MAX_DATAGRAM else "malformed"] += 1
            return
        if isinstance(msg, Query):
            return
        if self.table.apply(msg, self._now()):
            self._state.publish(self.table.services())
        self._wake.set()  # the next expiry may be earlier now

    def expire(self) -> None:
        gone = self.table.expire(self._now())
        if gone:
            self.stats["expired"] += gone
            self._state.publish(self.table.services())

    async def run(self) -> None:
        transport = await _open(self.group, self.port, self.interface, self.on_datagram)
        try:
            transport.sendto(encode_query(), (self.group, self.port))
            while True:
                self.expire()
                nxt = self.table.next_expiry()
                delay = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self._now()) + 0.01)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            transport.close()


class LanAnnouncer:
    """Announces `endpoints` (replaceable with `set_endpoints`) every `interval` seconds,
    and at once when asked by a query (at most once per `min_answer_gap` seconds).
    Sends a `bye` when cancelled (unless `bye` is False). Endpoints with no addresses are announced with the
    datagram's source address."""

    def __init__(
        self,
        host: str,
        endpoints: Iterable[Endpoint] = (),
        *,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        interface: str = "0.0.0.0",
        interval: float = DEFAULT_INTERVAL,
        ttl: int = DEFAULT_TTL,
        min_answer_gap: float = 1.0,
        bye: bool = True,
    ) -> None:
        if not HOST_RE.fullmatch(host):
            raise ValueError(f"LAN host id {host!r} must be 1..64 of [A-Za-z0-9._:-]")
        if not 1 <= ttl <= MAX_TTL_SECONDS or interval <= 0:
            raise ValueError("LAN announcements need 0 < interval and 1 <= ttl <= 3600")
        self.host, self.group, self.port, self.interface = host, group, port, interface
        self.interval, self.ttl, self.min_answer_gap = interval, ttl, min_answer_gap
        self.bye = bye
        self.sent = 0
        self._datagrams = encode_announcements(host, ttl, list(endpoints))
        self._transport: asyncio.DatagramTransport | None = None
        self._last_answer = float("-inf")

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Announce these from now on (sent at once when running). Raises ValueError for an
        endpoint too large for a datagram (the previous set stays)."""
        self._datagrams = encode_announcements(self.host, self.ttl, list(endpoints))
        self._announce()

    def _announce(self) -> None:
        if self._transport is None:
            return
        for d in self._datagrams:
            self._transport.sendto(d, (self.group, self.port))
            self.sent += 1

    def _on_datagram(self, data: bytes, sender: str) -> None:
        try:
            msg = decode(data, sender)
        except ValueError:
            return
        now = asyncio.get_running_loop().time()
        if isinstance(msg, Query) and now - self._last_answer >= self.min_answer_gap:
            self._last_answer = now
            self._announce()

    async def run(self) -> None:
        self._transport = await _open(self.group, self.port, self.interface, self._on_datagram)
        try:
            while True:
                self._announce()
                await asyncio.sleep(self.interval)
        finally:
            transport, self._transport = self._transport, None
            if self.bye:
                transport.sendto(encode_bye(self.host), (self.group, self.port))
            transport.close()
