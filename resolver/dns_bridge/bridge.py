"""The DNS bridge's query handling: view → zone → cached wire answers; one call per packet.

No sockets here (`server.py` owns them) and no clock of its own (`now` is passed in).
Event-loop thread only: `set_view` and `handle` are never called concurrently.

Cost of a query on the fast path (`wire.parse_query` accepted it and the answer is
prepared): a hand-rolled parse of header + question, one dict lookup, a copy of the
prepared bytes with the ID, RD/CD bits and the question's case bytes patched in.
Answers are prepared on first use and kept until the view changes what they depend
on: an answer owned by a service (its name and its instances' names) is dropped
when that service's endpoints (or a child service, which may shadow an instance
name) change; negative answers and the apex (whose SOA serial is the view's
revision) are dropped at every change. Preparing all names eagerly would cost
~50 µs x names x types at every registry change and delay freshness; lazily, a
change costs one identity comparison per service plus work for the changed ones.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from resolver.dns_bridge import wire
from resolver.dns_bridge.zone import (
    ANY,
    NOERROR,
    REFUSED,
    SRV,
    Answer,
    Zone,
    ZoneConfig,
    changed_services,
    lookup,
)
from resolver.model import EMPTY_VIEW, View

VOLATILE_LIMIT = 65536  # cached negative answers kept at most (random names cannot grow memory)
_STABLE_TYPES = frozenset({1, 28, SRV, ANY})  # A, AAAA, SRV, ANY: positive answers cached per service


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    zone: ZoneConfig = field(default_factory=ZoneConfig)
    edns_max: int = 1232  # the largest UDP answer sent to an EDNS client (512..4096)
    rate_limit: float = 0.0  # queries per second per client prefix; 0 = unlimited
    rate_burst: float = 0.0  # bucket size; 0 = 2 x rate_limit
    forward: bool = False  # queries outside the zone are forwarded (server.py) instead of REFUSED

    def __post_init__(self) -> None:
        if not wire.PLAIN_UDP_LIMIT <= self.edns_max <= 4096:
            raise ValueError(f"edns_max {self.edns_max} is outside 512..4096")


class RateLimiter:
    """A token bucket per client prefix (IPv4 /32, IPv6 /64). `allow` spends one token.
    The table is bounded: past `max_clients` it is cleared (clients start with a full bucket)."""

    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst or 2 * rate, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float) -> bool:
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) >= self.max_clients and client not in self._buckets:
            self._buckets.clear()
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        return True


def client_prefix(host: str) -> str:
    """The rate-limited unit of a source address: the IPv4 address or the IPv6 /64. An
    IPv4-mapped IPv6 address (a dual-stack socket's IPv4 client) counts as its IPv4
    address: as a /64, every IPv4 client would share one bucket."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


FORWARD = b""  # `handle`'s answer for a query to pass to the forwarder


@dataclass
class Counters:
    """What `serval_dns_…` exposes; `rcodes[n]` counts answers sent with rcode n."""

    rcodes: list[int] = field(default_factory=lambda: [0] * 16)
    rate_limited: int = 0
    dropped: int = 0  # unparseable (no header) or a response sent to us
    truncated: int = 0
    fast: int = 0  # answered from a prepared answer
    slow: int = 0  # parsed by dnslib
    forwarded: int = 0
    forward_failures: int = 0


class Bridge:
    """Answers DNS packets from the latest `View` (`set_view`)."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.zone = Zone.build(EMPTY_VIEW, config.zone)
        self.counters = Counters()
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None
        self._stable: dict[tuple[bytes, int], wire.Prepared] = {}
        self._owned: dict[str, list[tuple[bytes, int]]] = {}
        self._volatile: dict[tuple[bytes, int], wire.Prepared] = {}
        # Replies by the query's bytes after the ID (UDP only): (reply after the ID, rcode,
        # truncated). A repeated query costs one slice, one lookup and one concatenation.
        # Cleared (never replaced) at every view change; the UDP shell reads it directly
        # when no rate limit applies (`server._Udp`), counting what it sends.
        self.replies: dict[bytes, tuple[bytes, int, bool]] = {}

    @property
    def view(self) -> View:
        return self.zone.view

    def set_view(self, view: View) -> None:
        """Serve `view` from now on; drop the prepared answers it invalidates."""
        changed = changed_services(self.zone.view, view)
        for service in changed | {s.partition(".")[2] for s in changed}:
            for key in self._owned.pop(service, ()):
                self._stable.pop(key, None)
        self._volatile.clear()
        self.replies.clear()
        self.zone = Zone.build(view, self.config.zone, self.zone, changed)

    def handle(self, packet: bytes, client: str, now: float, tcp: bool) -> bytes | None:
        """The reply to one query from `client` (its host), `FORWARD`, or None (drop)."""
        if self.limiter is not None and not self.limiter.allow(client_prefix(client), now):
            self.counters.rate_limited += 1
            return None
        if not tcp:
            hit = self.replies.get(packet[2:])
            if hit is not None:
                c = self.counters
                c.fast += 1
                c.rcodes[hit[1]] += 1
                c.truncated += hit[2]
                return packet[:2] + hit[0]
        query = wire.parse_query(packet)
        reply = self._fast(packet, query, now, tcp) if query is not None else None
        if reply is None:
            reply = self._slow(packet, now, tcp)
        if reply is None:
            self.counters.dropped += 1
        elif reply is not FORWARD:
            self.counters.rcodes[reply[3] & 0x0F] += 1
        return reply

    def _fast(self, packet: bytes, query: wire.Query, now: float, tcp: bool) -> bytes | None:
        self.counters.fast += 1
        prepared = self._stable.get(query.key) or self._volatile.get(query.key)
        memo = not tcp
        if prepared is None:
            name = _wire_name(query.key[0])
            if name is None:
                self.counters.fast -= 1
                return None  # a label with a dot or a control byte in it: dnslib escapes it
            answer = lookup(self.zone, name, query.key[1], now)
            if answer.rcode == REFUSED:
                return self._outside(packet, query)
            prepared = wire.prepare(answer, name, query.key[1], self.config.edns_max)
            memo = memo and answer.cacheable
            if answer.cacheable:
                self._keep(query.key, answer, prepared)
        reply, truncated = wire.respond(prepared, packet, query, self._limit(query.edns_size, tcp))
        self.counters.truncated += truncated
        if memo:
            if len(self.replies) >= VOLATILE_LIMIT:
                self.replies.clear()
            self.replies[packet[2:]] = (reply[2:], prepared.rcode & 0x0F, truncated)
        return reply

    def _outside(self, packet: bytes, query: wire.Query) -> bytes:
        if self.config.forward:
            self.counters.forwarded += 1
            return FORWARD
        return wire.refused(packet, query, REFUSED)

    def _keep(self, key: tuple[bytes, int], answer: Answer, prepared: wire.Prepared) -> None:
        if answer.rcode == NOERROR and answer.answer and answer.owner and key[1] in _STABLE_TYPES:
            self._stable[key] = prepared
            self._owned.setdefault(answer.owner, []).append(key)
            return
        if len(self._volatile) >= VOLATILE_LIMIT:
            self._volatile.clear()
        self._volatile[key] = prepared

    def _slow(self, packet: bytes, now: float, tcp: bool) -> bytes | None:
        self.counters.slow += 1
        parsed = wire.parse_slow(packet)
        if not isinstance(parsed, wire.SlowQuery):
            return parsed
        q = parsed.record.questions[0]
        if q.qclass != 1:
            return wire.error_reply(packet, REFUSED)
        answer = lookup(self.zone, parsed.qname.lower(), parsed.qtype, now)
        if answer.rcode == REFUSED and self.config.forward:
            self.counters.forwarded += 1
            return FORWARD
        reply, truncated = wire.slow_reply(
            parsed, answer, self.config.edns_max, self._limit(parsed.edns_size, tcp)
        )
        self.counters.truncated += truncated
        return reply

    def _limit(self, edns_size: int, tcp: bool) -> int:
        if tcp:
            return wire.TCP_LIMIT
        return min(edns_size, self.config.edns_max) if edns_size else wire.PLAIN_UDP_LIMIT


def _wire_name(raw: bytes) -> str | None:
    """`raw` (wire-form labels) as a dotted absolute name, or None when a label holds a byte
    that would need escaping in text form."""
    labels, i = [], 0
    while raw[i]:
        label = raw[i + 1 : i + 1 + raw[i]]
        if any(c <= 0x20 or c >= 0x7F or c in (0x2E, 0x5C) for c in label):
            return None
        labels.append(label.decode("ascii"))
        i += 1 + raw[i]
    return ".".join(labels) + "." if labels else "."
