"""The DNS back-end: services that an existing DNS server knows (Consul, Kubernetes DNS).

Configuration: the nameservers to ask (`"ip"`, `"ip:port"` or `"[v6]:port"`) and the
names to follow, each a `DnsName`:
- `DnsName("web.service.consul")` (no port): an SRV query. Each SRV record is one
  endpoint (instance id `"<target>:<port>"`), its target resolved to A and AAAA; SRV
  priority → tier by rank (the lowest priority is tier 0, the next 1, ... capped at
  15), SRV weight → weight (clamped to 1..10000: SRV weight 0 means "rarely", not
  "drained").
- `DnsName("db.example", port=5432)`: A and AAAA queries; one endpoint (instance id
  = the name) with all addresses and the configured port.
The service name in the view is `service` if given, else the queried name with its
leading `_label.` parts removed (`_http._tcp.web.ns.svc.cluster.local` →
`web.ns.svc.cluster.local`), normalised by `registry.names.normalize`.

Freshness: each name is re-queried when its answer's TTL (the smallest TTL among the
records used) expires, clamped to `[ttl_floor, ttl_ceiling]`. NXDOMAIN or an empty
answer is a valid answer (no endpoints) re-asked after `negative_ttl`. A failure
(timeout, SERVFAIL, refused) keeps the last good answer until its own TTL has run
out, then drops it; the error is in `snapshot().error` (one line per failing name)
until that name answers again; failures are retried after `ttl_floor` doubling up to
`ttl_ceiling`. Pure core: `endpoints_from_srv`, `endpoints_from_addresses`,
`service_name`, `next_delay`; the shell (`DnsBackend`) uses dnspython's asyncio
resolver, one task per name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from registry import names
from registry.model import MAX_TIER, MAX_WEIGHT
from resolver.backends.state import Published, PublishingBackend, group
from resolver.model import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DnsName:
    """One name to follow: SRV when `port` is None, else A/AAAA with `port`."""

    query: str
    port: int | None = None
    service: str = ""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


# ---- pure core ----------------------------------------------------------------------


def service_name(name: DnsName) -> str:
    """The view's service name for `name` (raises `names.InvalidName`)."""
    if name.service:
        return names.normalize(name.service)
    labels = name.query.rstrip(".").split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return names.normalize(".".join(labels))


def endpoints_from_srv(
    service: str,
    records: Sequence[SrvRecord],
    addresses: Mapping[str, Sequence[str]],
    source: str = "dns",
) -> tuple[Endpoint, ...]:
    """Endpoints for SRV `records`; `addresses` maps a target (no trailing dot, lower
    case) to its A/AAAA addresses. Targets without addresses are left out."""
    tiers = {p: min(rank, MAX_TIER) for rank, p in enumerate(sorted({r.priority for r in records}))}
    out: dict[str, Endpoint] = {}
    for r in records:
        target = r.target.rstrip(".").lower()
        found = tuple(dict.fromkeys(ipaddress.ip_address(a).compressed for a in addresses.get(target, ())))
        if not found or not 1 <= r.port <= 65535:
            continue
        iid = f"{target}:{r.port}"[:128]
        out[iid] = Endpoint(
            service=service,
            instance_id=iid,
            addresses=found,
            port=r.port,
            weight=min(max(r.weight, 1), MAX_WEIGHT),
            tier=tiers[r.priority],
            source=source,
        )
    return tuple(sorted(out.values(), key=lambda e: (e.tier, e.instance_id)))


def endpoints_from_addresses(
    service: str, name: str, addresses: Sequence[str], port: int, source: str = "dns"
) -> tuple[Endpoint, ...]:
    """The one endpoint of a plain A/AAAA name (none when it has no address)."""
    found = tuple(dict.fromkeys(ipaddress.ip_address(a).compressed for a in addresses))
    if not found:
        return ()
    return (Endpoint(service, name.rstrip(".").lower()[:128], found, port, source=source),)


def next_delay(ttl: float, floor: float, ceiling: float) -> float:
    """When to ask again after an answer with `ttl` seconds."""
    return min(max(ttl, floor), ceiling)


def parse_server(text: str) -> tuple[str, int]:
    """`"ip"`, `"ip:port"` or `"[v6]:port"` → (ip, port); raises ValueError."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    return host, port


# ---- asyncio shell ------------------------------------------------------------------


@dataclass
class _Answer:
    endpoints: tuple[Endpoint, ...]
    expires: float  # loop time after which the answer may no longer be used


class DnsBackend(PublishingBackend):
    """Follows `names` at `servers` (a `Backend`). `timeout`: per query attempt."""

    def __init__(
        self,
        names_: Sequence[DnsName],
        servers: Sequence[str],
        *,
        name: str = "dns",
        ttl_floor: float = 1.0,
        ttl_ceiling: float = 300.0,
        negative_ttl: float = 30.0,
        timeout: float = 2.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not servers:
            raise ValueError("the DNS back-end needs at least one nameserver")
        if not 0 < ttl_floor <= ttl_ceiling:
            raise ValueError("the DNS back-end needs 0 < ttl_floor <= ttl_ceiling")
        self.name = name
        self.names = list(names_)
        self._services = {n: service_name(n) for n in self.names}  # raises on a bad name
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in map(parse_server, servers)
        ]
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self.floor, self.ceiling, self.negative_ttl = ttl_floor, ttl_ceiling, negative_ttl
        self._clock = clock
        self._answers: dict[DnsName, _Answer] = {}
        self._errors: dict[DnsName, str] = {}
        self._state = Published(name)

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for n in self.names:
                tg.create_task(self._follow(n))

    async def _follow(self, n: DnsName) -> None:
        backoff = self.floor
        while True:
            try:
                endpoints, ttl = await self.query(n)
            except dns.exception.DNSException as e:
                left = self._failed(n, f"{n.query}: {type(e).__name__}: {e}")
                delay = backoff if left is None else min(left, backoff)
                backoff = min(backoff * 2, self.ceiling)
            else:
                backoff = self.floor
                delay = next_delay(ttl, self.floor, self.ceiling)
                self._answers[n] = _Answer(endpoints, self._now() + max(ttl, self.floor))
                self._errors.pop(n, None)
                self._publish()
            await asyncio.sleep(delay)

    def _failed(self, n: DnsName, error: str) -> float | None:
        """Record a failure; return the seconds until the last good answer expires (None:
        there is none any more; an expired one is dropped here)."""
        if self._errors.get(n) != error:
            log.warning("%s: %s", self.name, error)
        self._errors[n] = error
        left = None
        answer = self._answers.get(n)
        if answer is not None:
            left = answer.expires - self._now()
            if left <= 0:
                del self._answers[n]
                left = None
        self._publish()
        return None if left is None else max(left, 0.05)

    def _publish(self) -> None:
        endpoints = [e for a in self._answers.values() for e in a.endpoints]
        services = group(endpoints)
        for n in self._answers:
            services.setdefault(self._services[n], ())
        self._state.publish(services, "; ".join(self._errors[n] for n in self.names if n in self._errors))

    async def query(self, n: DnsName) -> tuple[tuple[Endpoint, ...], float]:
        """Ask the servers about `n`: its endpoints and the answer's TTL. Raises
        `dns.exception.DNSException` on failure (NXDOMAIN / no answer are answers)."""
        service = self._services[n]
        if n.port is not None:
            addrs, ttl = await self._addresses(n.query)
            return endpoints_from_addresses(service, n.query, addrs, n.port, self.name), ttl
        try:
            answer = await self._resolver.resolve(n.query, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return (), self.negative_ttl
        records = [SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else self.negative_ttl
        targets = sorted({r.target.rstrip(".").lower() for r in records})
        found = await asyncio.gather(*(self._addresses(t) for t in targets))
        addresses = {t: a for t, (a, _) in zip(targets, found, strict=True)}
        ttl = min([ttl, *(t for a, t in found if a)])
        return endpoints_from_srv(service, records, addresses, self.name), ttl

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        """A and AAAA addresses of `name` and the smaller TTL (negative_ttl when none).
        Raises only when no family answered and one failed."""
        out: list[str] = []
        ttls: list[float] = []
        errors: list[dns.exception.DNSException] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as e:  # the other family may still answer
                errors.append(e)
                continue
            out.extend(r.address for r in answer)
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
        if errors and not out:
            raise errors[0]
        return out, min(ttls, default=self.negative_ttl)
