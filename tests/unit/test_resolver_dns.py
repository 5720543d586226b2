"""The DNS back-end's pure core: SRV / A answers → endpoints, names, TTL clamping."""

from __future__ import annotations

import pytest

from resolver.backends.dns import (
    DnsName,
    SrvRecord,
    endpoints_from_addresses,
    endpoints_from_srv,
    next_delay,
    parse_server,
    service_name,
)


def test_srv_to_endpoints() -> None:
    records = [
        SrvRecord(20, 5, 8080, "b.node.consul."),
        SrvRecord(10, 0, 8080, "A.node.consul."),
        SrvRecord(10, 60000, 9090, "a.node.consul."),
        SrvRecord(30, 1, 80, "missing.node.consul."),
    ]
    addresses = {"a.node.consul": ["10.0.0.1", "fd00:0::1"], "b.node.consul": ["10.0.0.2"]}
    got = endpoints_from_srv("web.service.consul", records, addresses, "dns")
    assert [(e.instance_id, e.addresses, e.port, e.weight, e.tier, e.source) for e in got] == [
        ("a.node.consul:8080", ("10.0.0.1", "fd00::1"), 8080, 1, 0, "dns"),
        ("a.node.consul:9090", ("10.0.0.1", "fd00::1"), 9090, 10000, 0, "dns"),
        ("b.node.consul:8080", ("10.0.0.2",), 8080, 5, 1, "dns"),
    ]


def test_srv_priorities_rank_and_cap_at_15() -> None:
    records = [SrvRecord(p, 1, 1, f"t{p}.x") for p in range(0, 40, 2)]
    addresses = {f"t{p}.x": ["10.0.0.1"] for p in range(0, 40, 2)}
    tiers = {e.instance_id: e.tier for e in endpoints_from_srv("s.x", records, addresses)}
    assert tiers["t0.x:1"] == 0 and tiers["t2.x:1"] == 1 and tiers["t38.x:1"] == 15


def test_addresses_to_endpoint() -> None:
    [e] = endpoints_from_addresses("db.example", "DB.example.", ["10.0.0.3", "10.0.0.3", "::1"], 5432)
    assert (e.instance_id, e.addresses, e.port) == ("db.example", ("10.0.0.3", "::1"), 5432)
    assert endpoints_from_addresses("db.example", "db.example", [], 5432) == ()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (DnsName("web.service.consul"), "web.service.consul"),
        (DnsName("_http._tcp.web.ns.svc.cluster.local."), "web.ns.svc.cluster.local"),
        (DnsName("_x._tcp.web.consul", service="Web.Local"), "web.local"),
    ],
)
def test_service_name(name: DnsName, expected: str) -> None:
    assert service_name(name) == expected


@pytest.mark.parametrize(("ttl", "expected"), [(0, 1.0), (30, 30), (10_000, 300)])
def test_next_delay_clamped(ttl: float, expected: float) -> None:
    assert next_delay(ttl, 1.0, 300.0) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:54", ("::1", 54)),
        ("::1", ("::1", 53)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["nameserver", "10.0.0.1:0", "1.2.3.4:x"])
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text)
