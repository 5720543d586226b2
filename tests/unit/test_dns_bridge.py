"""The DNS bridge's pure parts: the answer builder (`zone.lookup`) and the wire/fast path
(`Bridge.handle`), checked with dnspython as an independent decoder."""

from __future__ import annotations

import random

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.dns_bridge import zone as z
from resolver.dns_bridge.bridge import Bridge, BridgeConfig, RateLimiter, client_prefix
from resolver.dns_bridge.zone import Zone, ZoneConfig, lookup
from resolver.model import Endpoint, View

CFG = ZoneConfig(ns_addresses=("127.0.0.1",), max_answers=3)


def ep(iid: str, *addrs: str, service: str = "payments.prod", **kw: object) -> Endpoint:
    return Endpoint(service, iid, addrs, 8080, **kw)  # type: ignore[arg-type]


VIEW = View(
    revision=42,
    services={
        "payments.prod": (
            ep("a1", "10.0.0.1", "fd00::1", weight=50),
            ep("a2", "10.0.0.2", weight=200),
            ep("drained", "10.0.0.9", weight=0),
            ep("sick", "10.0.0.8", healthy=False),
        ),
        "big.prod": tuple(ep(f"i{n:02d}", f"10.1.0.{n}", service="big.prod") for n in range(1, 40)),
        "v6only.prod": (ep("x", "fd00::2", service="v6only.prod"),),
    },
    source_revisions={"registry": 42},
    built_at=1000.0,
)
ZONE = Zone.build(VIEW, CFG)


@pytest.mark.parametrize(
    ("qname", "qtype", "rcode", "answer", "authority"),
    [
        ("payments.prod.svc.serval.", z.A, z.NOERROR, ["10.0.0.2", "10.0.0.1"], 0),
        ("payments.prod.svc.serval.", z.AAAA, z.NOERROR, ["fd00::1"], 0),
        (
            "payments.prod.svc.serval.",
            z.SRV,
            z.NOERROR,
            [(0, 200, 8080, "a2.payments.prod.svc.serval."), (0, 50, 8080, "a1.payments.prod.svc.serval.")],
            0,
        ),
        ("a1.payments.prod.svc.serval.", z.A, z.NOERROR, ["10.0.0.1"], 0),
        ("a1.payments.prod.svc.serval.", z.AAAA, z.NOERROR, ["fd00::1"], 0),
        ("a1.payments.prod.svc.serval.", z.TXT, z.NOERROR, [], 1),  # NODATA
        ("drained.payments.prod.svc.serval.", z.A, z.NXDOMAIN, [], 1),  # drained: gone
        ("sick.payments.prod.svc.serval.", z.A, z.NXDOMAIN, [], 1),
        ("v6only.prod.svc.serval.", z.A, z.NOERROR, [], 1),  # NODATA
        ("prod.svc.serval.", z.A, z.NOERROR, [], 1),  # empty non-terminal: NODATA
        ("nope.prod.svc.serval.", z.A, z.NXDOMAIN, [], 1),
        ("svc.serval.", z.SOA, z.NOERROR, ["soa"], 0),
        ("svc.serval.", z.NS, z.NOERROR, ["ns.svc.serval."], 0),
        ("svc.serval.", z.A, z.NOERROR, [], 1),
        ("ns.svc.serval.", z.A, z.NOERROR, ["127.0.0.1"], 0),
        ("example.com.", z.A, z.REFUSED, [], 0),
        ("serval.", z.A, z.REFUSED, [], 0),
        ("payments.prod.svc.serval.", z.ANY, z.NOERROR, [("RFC8482", "")], 0),
    ],
)
def test_lookup(qname: str, qtype: int, rcode: int, answer: list[object], authority: int) -> None:
    got = lookup(ZONE, qname, qtype, now=1001.0)
    assert got.rcode == rcode
    rdata = [r.rdata for r in got.answer]
    assert rdata == answer or (answer == ["soa"] and got.answer[0].rtype == z.SOA)
    assert len(got.authority) == authority
    if authority:  # RFC 2308: the SOA, with the negative TTL as TTL and MINIMUM
        soa = got.authority[0]
        assert soa.rtype == z.SOA and soa.ttl == CFG.negative_ttl and soa.rdata[-1] == CFG.negative_ttl  # type: ignore[index]
        assert soa.rdata[2] == 42  # type: ignore[index]  # serial = view revision


def test_max_answers_and_txt() -> None:
    assert len(lookup(ZONE, "big.prod.svc.serval.", z.A, 0).answer) == CFG.max_answers
    txt = lookup(ZONE, "payments.prod.svc.serval.", z.TXT, now=1002.5)
    strings = txt.answer[0].rdata
    assert "revision=42" in strings and "age=2.500" in strings  # type: ignore[operator]
    assert any(s.startswith("service-id=") and len(s) == 11 + 64 for s in strings)  # type: ignore[union-attr]
    assert not txt.cacheable


def test_instance_labels() -> None:
    assert z.instance_label("Web-1") == "web-1"
    assert z.instance_label("host:8080").startswith("i-")
    labels = z.instance_labels((ep("A", "10.0.0.1"), ep("a", "10.0.0.2")))
    assert len(labels) == 2


def bridge(view: View = VIEW, **kw: object) -> Bridge:
    b = Bridge(BridgeConfig(zone=CFG, **kw))  # type: ignore[arg-type]
    b.set_view(view)
    return b


def ask(b: Bridge, q: dns.message.Message, tcp: bool = False) -> dns.message.Message | None:
    wire = b.handle(q.to_wire(), "192.0.2.1", 1001.0, tcp)
    return None if wire is None else dns.message.from_wire(wire)


@pytest.mark.parametrize("edns", [-1, 0])
@pytest.mark.parametrize(
    ("qname", "qtype", "rcode", "count"),
    [
        ("payments.prod.svc.serval.", "A", "NOERROR", 2),
        ("PAYments.Prod.svc.serval.", "SRV", "NOERROR", 2),
        ("a1.payments.prod.svc.serval.", "AAAA", "NOERROR", 1),
        ("nope.svc.serval.", "A", "NXDOMAIN", 0),
        ("prod.svc.serval.", "A", "NOERROR", 0),
        ("svc.serval.", "SOA", "NOERROR", 1),
        ("example.org.", "A", "REFUSED", 0),
        ("payments.prod.svc.serval.", "ANY", "NOERROR", 1),
    ],
)
def test_wire(edns: int, qname: str, qtype: str, rcode: str, count: int) -> None:
    b = bridge()
    for _ in range(2):  # the first prepares the answer, the second is served from the cache
        q = dns.message.make_query(qname, qtype, use_edns=edns)
        q.flags |= dns.flags.RD
        r = ask(b, q)
        assert r is not None and r.id == q.id and dns.rcode.to_text(r.rcode()) == rcode
        assert r.flags & dns.flags.RD and not r.flags & dns.flags.RA
        assert str(r.question[0].name) == qname  # 0x20: the case as asked
        assert sum(len(rrset) for rrset in r.answer) == count
        assert all(str(rrset.name) == qname for rrset in r.answer)
        assert (r.edns >= 0) == (edns >= 0)
        if rcode in ("NXDOMAIN",) or (rcode == "NOERROR" and count == 0):
            assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert b.counters.fast >= 1


def test_truncation_and_edns_sizes() -> None:
    many = {"big.prod": tuple(ep(f"i{n:03d}", f"fd00::{n:x}", service="big.prod") for n in range(1, 120))}
    b = Bridge(BridgeConfig(zone=ZoneConfig(max_answers=100)))
    b.set_view(View(1, many, {}))
    q = dns.message.make_query("big.prod.svc.serval.", "AAAA")
    r = ask(b, q)
    assert r is not None and r.flags & dns.flags.TC and not r.answer  # 100 x 28 B > 512
    r = ask(b, q, tcp=True)
    assert r is not None and not r.flags & dns.flags.TC and len(r.answer[0]) == 100
    q = dns.message.make_query("big.prod.svc.serval.", "AAAA", use_edns=0, payload=4096)
    r = ask(b, q)  # capped at edns_max = 1232: still truncated
    assert r is not None and r.flags & dns.flags.TC and r.edns == 0
    b4 = Bridge(BridgeConfig(zone=ZoneConfig(max_answers=100), edns_max=4096))
    b4.set_view(View(1, many, {}))
    r = ask(b4, q)
    assert r is not None and not r.flags & dns.flags.TC and len(r.answer[0]) == 100
    assert b.counters.truncated == 2


def test_srv_additional_dropped_before_truncating() -> None:
    svc = {"s.prod": tuple(ep(f"instance-{n:02d}", f"fd00::{n:x}", service="s.prod") for n in range(8))}
    b = Bridge(BridgeConfig(zone=ZoneConfig(max_answers=8)))
    b.set_view(View(1, svc, {}))
    r = ask(b, dns.message.make_query("s.prod.svc.serval.", "SRV"))
    assert r is not None and not r.flags & dns.flags.TC and len(r.answer[0]) == 8 and not r.additional


def test_view_change_invalidates() -> None:
    b = bridge()
    q = dns.message.make_query("payments.prod.svc.serval.", "A")
    assert ask(b, q) is not None
    drained = dict(VIEW.services)
    drained["payments.prod"] = (ep("a1", "10.0.0.1", weight=0), ep("a2", "10.0.0.2"))
    b.set_view(View(43, drained, {}))
    r = ask(b, q)
    assert r is not None and [x.address for x in r.answer[0]] == ["10.0.0.2"]
    r = ask(b, dns.message.make_query("new.prod.svc.serval.", "A"))
    assert r is not None and r.rcode() == dns.rcode.NXDOMAIN
    drained["new.prod"] = (ep("n", "10.0.0.5", service="new.prod"),)
    b.set_view(View(44, drained, {}))
    r = ask(b, dns.message.make_query("new.prod.svc.serval.", "A"))
    assert r is not None and r.rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    ("packet", "expect"),
    [
        (b"", None),
        (b"\x12\x34\x01", None),
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc", dns.rcode.FORMERR),
        (b"\x12\x34\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00", None),  # a response: never answered
        (b"\x12\x34\x28\x00\x00\x00\x00\x00\x00\x00\x00\x00", dns.rcode.NOTIMP),  # UPDATE
    ],
)
def test_malformed(packet: bytes, expect: int | None) -> None:
    wire = bridge().handle(packet, "192.0.2.1", 0.0, False)
    assert (None if wire is None else wire[3] & 0x0F) == expect


def test_badvers() -> None:
    q = dns.message.make_query("payments.prod.svc.serval.", "A", use_edns=1)
    r = ask(bridge(), q)
    assert r is not None and r.rcode() == dns.rcode.BADVERS


def test_rate_limiter() -> None:
    rl = RateLimiter(rate=10, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert rl.allow("b", 0.0)
    assert rl.allow("a", 0.1) and not rl.allow("a", 0.1)
    b = bridge(rate_limit=1.0, rate_burst=1.0)
    q = dns.message.make_query("payments.prod.svc.serval.", "A")
    assert ask(b, q) is not None and ask(b, q) is None and b.counters.rate_limited == 1


@pytest.mark.parametrize(
    ("source", "unit"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # same /64: one bucket
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # dual-stack socket: the IPv4 client itself
        ("::ffff:198.51.100.1", "198.51.100.1"),  # ... not one bucket for all of IPv4
        ("not-an-address", "not-an-address"),
    ],
)
def test_rate_limited_unit_of_a_source_address(source: str, unit: str) -> None:
    assert client_prefix(source) == unit


def test_names_too_long_for_dns_are_left_out() -> None:
    service = ".".join(["x" * 29] * 7 + ["y" * 30])  # 240 characters: the name fits, SRV targets not
    long_zone = Zone.build(View(1, {service: (ep("i-1", "10.0.0.1", service=service),)}, {}), CFG)
    qname = f"{service}.svc.serval."
    srv = lookup(long_zone, qname, z.SRV, 0.0)
    assert srv.rcode == z.NOERROR and not srv.answer  # NODATA rather than a name DNS cannot carry
    b = Bridge(BridgeConfig(zone=CFG))
    b.set_view(long_zone.view)
    r = ask(b, dns.message.make_query(qname, "TXT"))  # the 255-byte service string: over 512 B
    assert r is not None and r.flags & dns.flags.TC
    r = ask(b, dns.message.make_query(qname, "TXT"), tcp=True)
    assert r is not None and r.rcode() == dns.rcode.NOERROR and len(r.answer[0]) == 1


def test_cli_default_zone_is_the_zone_default() -> None:
    from resolver.dns_bridge import cli

    assert cli.DEFAULT_ZONE == z.DEFAULT_ZONE == z.normalize_zone("SVC.Serval")


def test_incremental_zone_matches_a_fresh_build() -> None:
    """Random add/remove/change steps: the reused index answers like one built from scratch."""
    rng = random.Random(7)
    names = ["a.prod", "b.prod", "x.a.prod", "prod", "c.dev", "d.c.dev", "e.x.a.prod"]
    services: dict[str, tuple[Endpoint, ...]] = {}
    b = Bridge(BridgeConfig(zone=CFG))
    for step in range(300):
        name = rng.choice(names)
        if name in services and rng.random() < 0.4:
            del services[name]
        else:
            services[name] = (
                ep(rng.choice(["i1", "i2", "a"]), f"10.0.0.{rng.randrange(1, 9)}", service=name),
            )
        view = View(step + 1, dict(services), {})
        assert z.changed_services(b.view, view) == {
            s for s in b.view.services.keys() | services.keys() if b.view.services.get(s) != services.get(s)
        }
        b.set_view(view)
        fresh = Zone.build(view, CFG)
        for rel in [*names, "dev", "a.prod", "i1.a.prod", "a.a.prod", "x.prod", "nope"]:
            for qtype in (z.A, z.SRV):
                qname = f"{rel}.{CFG.zone}"
                assert lookup(b.zone, qname, qtype, 0.0) == lookup(fresh, qname, qtype, 0.0), (step, rel)
                wire = b.handle(dns.message.make_query(qname, qtype).to_wire(), "192.0.2.1", 0.0, False)
                assert wire is not None
                expected = lookup(fresh, qname, qtype, 0.0)
                assert dns.message.from_wire(wire).rcode() == expected.rcode, (step, rel)
