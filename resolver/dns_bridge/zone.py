"""The service zone as DNS sees it, and the answer to one question. Pure: no I/O, no clock.

`Zone.build(view, config)` indexes an immutable `resolver.model.View`; `lookup(zone,
qname, qtype, now)` returns the `Answer` (rcode and the three sections as plain
`Record`s) — the wire encoding lives in `wire.py`, the sockets in `server.py`.

Names (`README.md` has the table): a service `payments.prod` is
`payments.prod.<zone>`; each usable instance of it is
`<instance-label>.payments.prod.<zone>` (the SRV targets). Lookup is
case-insensitive; the caller passes the name lower-cased and keeps the case of the
question for the answer (0x20).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from registry.names import service_id_hex
from resolver.model import Endpoint, View

# RR types and response codes (numbers as on the wire).
A, NS, SOA, HINFO, TXT, AAAA, SRV, OPT, ANY = 1, 2, 6, 13, 16, 28, 33, 41, 255
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

DEFAULT_ZONE = "svc.serval."
MAX_NAME = 254  # characters of an absolute name in text form (255 octets on the wire)
_LABEL_OK = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """What the operator configures. `zone` is absolute and lower-case (`normalize_zone`)."""

    zone: str = DEFAULT_ZONE
    ttl: int = 5  # positive answers
    negative_ttl: int = 5  # SOA MINIMUM and the SOA's own TTL in negative answers (RFC 2308)
    max_answers: int = 8  # A/AAAA/SRV records per answer, best first
    ns_addresses: tuple[str, ...] = ()  # A/AAAA of `ns.<zone>` (the bridge's own address)


def normalize_zone(zone: str) -> str:
    """`zone` lower-cased and absolute (one trailing dot); raises ValueError when empty."""
    z = zone.strip().lower().rstrip(".")
    if not z or any(not label for label in z.split(".")):
        raise ValueError(f"invalid zone {zone!r}")
    return z + "."


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record. `name` is absolute; `rdata` by type: A/AAAA the address text;
    NS the target; SRV (priority, weight, port, target); TXT a tuple of strings; SOA
    (mname, rname, serial, refresh, retry, expire, minimum); HINFO (cpu, os)."""

    name: str
    rtype: int
    ttl: int
    rdata: object


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    owner: str = ""  # the service the answer depends on ("" = the zone as a whole)
    cacheable: bool = True  # False when it depends on the clock (TXT age)


@dataclass
class Zone:
    """An index of one `View` for lookups: read-only once built, but for the per-service
    instance-label cache (filled on first use).

    `build(view, config, previous, changed)` reuses `previous`'s index and updates only the
    `changed` services (those whose endpoints differ between the two views): a registry
    change then costs O(changed), not O(services). `previous` must not be used afterwards
    (its parent counts now describe the new view).
    """

    config: ZoneConfig
    view: View
    _parents: dict[str, int]  # relative name -> services below it (a name with one exists)
    _labels: dict[str, Mapping[str, Endpoint]] = field(default_factory=dict)

    @staticmethod
    def build(
        view: View, config: ZoneConfig, previous: Zone | None = None, changed: AbstractSet[str] = frozenset()
    ) -> Zone:
        if previous is None or previous.config != config:
            parents: dict[str, int] = {}
            for name in view.services:
                _count_parents(parents, name, 1)
            return Zone(config, view, parents)
        parents, old = previous._parents, previous.view.services
        for name in changed:
            was, now = name in old, name in view.services
            if was != now:
                _count_parents(parents, name, 1 if now else -1)
        labels = {s: m for s, m in previous._labels.items() if s not in changed}
        return Zone(config, view, parents, labels)

    def is_parent(self, rel: str) -> bool:
        """True when `rel` (relative to the zone) is a parent of at least one service."""
        return self._parents.get(rel, 0) > 0

    def instances(self, service: str) -> Mapping[str, Endpoint]:
        """Usable endpoints of `service` by their DNS label (`instance_labels`)."""
        found = self._labels.get(service)
        if found is None:
            found = self._labels[service] = instance_labels(self.view.endpoints(service))
        return found


def _count_parents(parents: dict[str, int], name: str, delta: int) -> None:
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[i:])
        count = parents.get(parent, 0) + delta
        if count:
            parents[parent] = count
        else:
            del parents[parent]


def changed_services(old: View, new: View) -> set[str]:
    """Services whose endpoints differ between `old` and `new` (added and removed included).
    Identical tuples (what a source that rebuilds only touched services hands over) are
    skipped by identity; others compared by value."""
    o, n = old.services, new.services
    changed = {s for s, eps in n.items() if (prev := o.get(s)) is not eps and prev != eps}
    added = sum(1 for s in changed if s not in o)
    if len(n) - added != len(o):  # some service was removed
        changed.update(s for s in o if s not in n)
    return changed


def instance_label(instance_id: str) -> str:
    """The DNS label of an instance: its ID lower-cased when that is a valid label of
    ``[a-z0-9_-]``, else ``i-`` and 16 hex digits of SHA-256 of the ID."""
    lowered = instance_id.lower()
    if _LABEL_OK.fullmatch(lowered):
        return lowered
    return "i-" + hashlib.sha256(instance_id.encode()).hexdigest()[:16]


def instance_labels(endpoints: tuple[Endpoint, ...]) -> dict[str, Endpoint]:
    """Usable endpoints by label; IDs that differ only in case fall back to the hashed form."""
    out: dict[str, Endpoint] = {}
    for ep in ranked(endpoints):
        label = instance_label(ep.instance_id)
        if label in out:
            label = "i-" + hashlib.sha256(ep.instance_id.encode()).hexdigest()[:16]
        out[label] = ep
    return out


def ranked(endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
    """Usable endpoints, best first: lower tier, then heavier, then by instance ID."""
    return sorted((e for e in endpoints if e.usable), key=lambda e: (e.tier, -e.weight, e.instance_id))


def lookup(zone: Zone, qname: str, qtype: int, now: float) -> Answer:
    """The answer to `qname` (absolute, lower-case) `qtype` from `zone`. REFUSED outside
    the zone; NXDOMAIN for a name that does not exist; NOERROR with no answer (NODATA)
    for a name that exists without that type; SOA in the authority section of both."""
    cfg = zone.config
    if qname == cfg.zone:
        return _apex(zone, qtype)
    if not qname.endswith("." + cfg.zone):
        return Answer(REFUSED)
    rel = qname[: -len(cfg.zone) - 1]
    if rel in zone.view.services:
        return _service(zone, rel, qname, qtype, now)
    if rel == "ns":
        return _addresses(zone, "", qname, qtype, cfg.ns_addresses)
    label, _, parent = rel.partition(".")
    ep = zone.instances(parent).get(label) if parent in zone.view.services else None
    if ep is not None:
        return _addresses(zone, parent, qname, qtype, ep.addresses)
    if zone.is_parent(rel):
        return _negative(zone, NOERROR, "")
    return _negative(zone, NXDOMAIN, parent if parent in zone.view.services else "")


def soa(zone: Zone) -> Record:
    cfg = zone.config
    rdata = (
        "ns." + cfg.zone,
        "hostmaster." + cfg.zone,
        zone.view.revision & 0xFFFFFFFF,
        60,
        30,
        3600,
        cfg.negative_ttl,
    )
    return Record(cfg.zone, SOA, cfg.negative_ttl, rdata)


def _apex(zone: Zone, qtype: int) -> Answer:
    cfg = zone.config
    if qtype == SOA:
        return Answer(NOERROR, (soa(zone),))
    if qtype == NS:
        glue = _address_records("ns." + cfg.zone, cfg.ns_addresses, cfg.ttl, cfg.max_answers)
        return Answer(NOERROR, (Record(cfg.zone, NS, cfg.ttl, "ns." + cfg.zone),), (), glue)
    if qtype == ANY:
        return Answer(NOERROR, (soa(zone),))  # RFC 8482: one RRset of what exists
    return _negative(zone, NOERROR, "")


def _service(zone: Zone, service: str, qname: str, qtype: int, now: float) -> Answer:
    cfg = zone.config
    if qtype == TXT:
        return Answer(NOERROR, (_txt(zone, service, qname, now),), owner=service, cacheable=False)
    if qtype == ANY:
        return _hinfo(zone, service, qname)
    usable = ranked(zone.view.endpoints(service))[: cfg.max_answers]
    if qtype in (A, AAAA):
        addrs = [a for ep in usable for a in ep.addresses]
        return _addresses(zone, service, qname, qtype, tuple(dict.fromkeys(addrs)))
    if qtype != SRV:
        return _negative(zone, NOERROR, service)
    label_of = {ep.instance_id: label for label, ep in zone.instances(service).items()}
    answer: list[Record] = []
    extra: list[Record] = []
    for ep in usable:
        target = f"{label_of[ep.instance_id]}.{service}.{cfg.zone}"
        if len(target) > MAX_NAME:
            continue  # a target DNS cannot carry (a long service name in a long zone)
        answer.append(Record(qname, SRV, cfg.ttl, (min(ep.tier, 0xFFFF), ep.weight, ep.port, target)))
        extra.extend(_address_records(target, ep.addresses, cfg.ttl, cfg.max_answers))
    if not answer:
        return _negative(zone, NOERROR, service)
    return Answer(NOERROR, tuple(answer), (), tuple(extra), owner=service)


def _txt(zone: Zone, service: str, qname: str, now: float) -> Record:
    view = zone.view
    age = max(0.0, now - view.built_at) if view.built_at else 0.0
    strings = (
        f"service={service}",
        f"service-id={service_id_hex(service)}",
        f"revision={view.revision}",
        *(f"{source}-revision={rev}" for source, rev in sorted(view.source_revisions.items())),
        f"age={age:.3f}",
    )
    return Record(qname, TXT, zone.config.ttl, strings)


def _hinfo(zone: Zone, owner: str, qname: str) -> Answer:
    """RFC 8482 §4.2: ANY is answered with one synthesised HINFO."""
    return Answer(NOERROR, (Record(qname, HINFO, zone.config.ttl, ("RFC8482", "")),), owner=owner)


def _addresses(zone: Zone, owner: str, qname: str, qtype: int, addresses: tuple[str, ...]) -> Answer:
    if qtype == ANY:
        return _hinfo(zone, owner, qname)
    if qtype not in (A, AAAA):
        return _negative(zone, NOERROR, owner)
    wanted = [a for a in addresses if (":" in a) == (qtype == AAAA)]
    records = _address_records(qname, tuple(wanted), zone.config.ttl, zone.config.max_answers)
    if not records:
        return _negative(zone, NOERROR, owner)
    return Answer(NOERROR, records, owner=owner)


def _address_records(name: str, addresses: tuple[str, ...], ttl: int, limit: int) -> tuple[Record, ...]:
    out = []
    for text in addresses[:limit]:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        out.append(Record(name, AAAA if addr.version == 6 else A, ttl, addr.compressed))
    return tuple(out)


def _negative(zone: Zone, rcode: int, owner: str) -> Answer:
    """NXDOMAIN or NODATA: the SOA in authority, its TTL the negative TTL (RFC 2308 §3)."""
    return Answer(rcode, (), (soa(zone),), owner=owner)
