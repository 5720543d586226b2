"""The DNS bridge over a real registry (etcd + gRPC) and real sockets, queried with dnspython.

One registry replica on the session etcd (its own prefix), the bridge in-loop on
127.0.0.1 (ephemeral port, UDP and TCP), fed by `RegistryFeed`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from registry.api.client import RegistryClient
from registry.model import Instance
from resolver.backends.registry import RegistryBackend
from resolver.dns_bridge.bridge import BridgeConfig
from resolver.dns_bridge.server import DnsConfig, DnsServer
from resolver.dns_bridge.zone import ZoneConfig
from resolver.merge import Resolver

pytestmark = pytest.mark.integration
ZONE = "svc.serval."


@dataclass
class Env:
    client: RegistryClient
    server: DnsServer
    feed: Resolver

    @property
    def port(self) -> int:
        return self.server.port

    async def ask(self, name: str, rdtype: str, *, tcp: bool = False, **kw: Any) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        if tcp:
            return await dns.asyncquery.tcp(q, "127.0.0.1", port=self.port, timeout=2)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, timeout=2)

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "the view did not catch up"
            await asyncio.sleep(0.01)

    async def register(self, *instances: Instance) -> None:
        revision = 0
        for i in instances:
            revision = int((await self.client.register(i)).revision)
        await self.until(lambda: self.feed.view().source_revisions.get("registry", 0) >= revision)


@pytest.fixture
async def env(registry_target: str) -> AsyncIterator[Env]:
    client = RegistryClient([registry_target], timeout=5)
    feed = Resolver([RegistryBackend([registry_target], subscriber_id="dns-bridge")], debounce=0.002)
    config = DnsConfig(BridgeConfig(zone=ZoneConfig(max_answers=100)), listen="127.0.0.1:0")
    server = DnsServer(config, feed)
    await server.start()
    task = asyncio.create_task(feed.run())
    try:
        yield Env(client, server, feed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        await client.close()


def inst(iid: str, service: str = "payments.prod", **kw: Any) -> Instance:
    # a long TTL: the lease of a lease-0 registration is not kept alive here
    fields: dict[str, Any] = {"addresses": ("10.0.0.1",), "port": 8080, "ttl_seconds": 3600, **kw}
    return Instance(service=service, instance_id=iid, **fields)


def rdatas(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


async def test_every_record_type_over_udp_and_tcp(env: Env) -> None:
    await env.register(
        inst("a1", addresses=("10.0.0.1", "fd00::1"), weight=200),
        inst("a2", addresses=("10.0.0.2",), port=9090, tier=1),
    )
    name = "Payments.PROD.svc.serval."
    for tcp in (False, True):
        r = await env.ask(name, "A", tcp=tcp)
        assert rdatas(r) == ["10.0.0.1", "10.0.0.2"] and str(r.answer[0].name) == name
        assert r.flags & dns.flags.AA and r.answer[0].ttl == 5
        assert rdatas(await env.ask(name, "AAAA", tcp=tcp)) == ["fd00::1"]
        srv = await env.ask(name, "SRV", tcp=tcp)
        assert rdatas(srv) == [f"0 200 8080 a1.payments.prod.{ZONE}", f"1 100 9090 a2.payments.prod.{ZONE}"]
        assert rdatas(await env.ask(f"a2.payments.prod.{ZONE}", "A", tcp=tcp)) == ["10.0.0.2"]
        txt = " ".join(rdatas(await env.ask(name, "TXT", tcp=tcp)))
        assert "service-id=" in txt and f"revision={env.feed.view().revision}" in txt and "age=" in txt
        soa = await env.ask(ZONE, "SOA", tcp=tcp)
        assert soa.answer[0].rdtype == dns.rdatatype.SOA
        assert rdatas(await env.ask(ZONE, "NS", tcp=tcp)) == [f"ns.{ZONE}"]
        assert rdatas(await env.ask(name, "ANY", tcp=tcp)) == ['"RFC8482" ""']


async def test_negative_answers_and_refused(env: Env) -> None:
    await env.register(inst("a1", addresses=("10.0.0.1",)))
    nx = await env.ask(f"missing.prod.{ZONE}", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert nx.authority[0].ttl == 5
    nodata = await env.ask(f"payments.prod.{ZONE}", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    ent = await env.ask(f"prod.{ZONE}", "A")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
    refused = await env.ask("example.com.", "A", use_edns=0)
    assert refused.rcode() == dns.rcode.REFUSED and not refused.answer


async def test_truncation_then_tcp_and_edns_sizes(env: Env) -> None:
    await env.register(*(inst(f"i{n:03d}", "big.prod", addresses=(f"fd00::{n:x}",)) for n in range(1, 80)))
    name = f"big.prod.{ZONE}"
    plain = await env.ask(name, "AAAA")
    assert plain.flags & dns.flags.TC  # 79 x 28 B > 512
    full = await env.ask(name, "AAAA", tcp=True)
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 79
    small = await env.ask(name, "AAAA", use_edns=0, payload=1232)
    assert small.flags & dns.flags.TC  # 79 x 28 B > 1232
    # dnspython's own retry: UDP, then TCP on TC
    q = dns.message.make_query(name, "AAAA")
    r, used_tcp = await dns.asyncquery.udp_with_fallback(q, "127.0.0.1", port=env.port, timeout=2)
    assert used_tcp and len(r.answer[0]) == 79
    few = await env.ask(f"i001.big.prod.{ZONE}", "AAAA", use_edns=0, payload=4096)
    assert not few.flags & dns.flags.TC and few.edns == 0 and few.payload == 1232


async def test_registration_visible_then_drained_gone(env: Env) -> None:
    name = f"orders.prod.{ZONE}"
    assert (await env.ask(name, "A")).rcode() == dns.rcode.NXDOMAIN
    await env.register(inst("o1", "orders.prod", addresses=("10.0.1.1",)))
    await env.register(inst("o2", "orders.prod", addresses=("10.0.1.2",)))
    assert rdatas(await env.ask(name, "A")) == ["10.0.1.1", "10.0.1.2"]
    resp = await env.client.drain("orders.prod", "o1")
    await env.until(lambda: env.feed.view().source_revisions.get("registry", 0) >= resp.revision)
    assert rdatas(await env.ask(name, "A")) == ["10.0.1.2"]
    assert (await env.ask(f"o1.orders.prod.{ZONE}", "A")).rcode() == dns.rcode.NXDOMAIN
    assert [r.target.to_text() for r in (await env.ask(name, "SRV")).answer[0]] == [f"o2.orders.prod.{ZONE}"]


def _mutations(rng: random.Random, seeds: list[bytes], count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 300)))
            continue
        p = bytearray(rng.choice(seeds))
        if kind == 1:
            for _ in range(rng.randrange(1, 6)):
                p[rng.randrange(len(p))] = rng.randrange(256)
        elif kind == 2:
            del p[rng.randrange(len(p)) :]
        else:
            p[rng.randrange(len(p)) : rng.randrange(len(p))] = rng.randbytes(rng.randrange(1, 40))
        out.append(bytes(p))
    return out


async def test_survives_random_and_mutated_packets(env: Env) -> None:
    await env.register(inst("a1", addresses=("10.0.0.1", "fd00::1")))
    seeds = [
        dns.message.make_query(f"payments.prod.{ZONE}", t, use_edns=e).to_wire()
        for t in ("A", "AAAA", "SRV", "TXT", "ANY", "SOA")
        for e in (-1, 0)
    ]
    rng = random.Random(20261126)
    total = 100_000
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    c = env.server.bridge.counters
    sent, deadline = 0, time.monotonic() + 90
    try:
        while sent < total and time.monotonic() < deadline:
            for packet in _mutations(rng, seeds, 100):
                sock.sendto(packet, ("127.0.0.1", env.port))
            sent += 100
            for _ in range(10_000):  # the bridge answers on this loop: let it catch up
                if c.fast + c.slow >= sent:
                    break
                await asyncio.sleep(0)
            while True:  # read (and discard) the answers so our buffer never fills
                try:
                    sock.recv(65535)
                except BlockingIOError:
                    break
    finally:
        sock.close()
    assert sent == total
    assert c.fast + c.slow >= total * 0.99  # (the kernel may drop a few)
    assert c.rcodes[1] > 0 and c.dropped > 0  # FORMERR for some, silence for others
    assert c.rcodes[2] == 0  # no SERVFAIL: no internal error on any packet
    assert rdatas(await env.ask(f"payments.prod.{ZONE}", "A")) == ["10.0.0.1"]
    assert rdatas(await env.ask(f"payments.prod.{ZONE}", "AAAA", tcp=True)) == ["fd00::1"]


async def test_forwarder_and_metrics(env: Env) -> None:
    """Outside the zone: forwarded when a forwarder is configured (here another bridge,
    authoritative for `other.`), else REFUSED; the counters on the Prometheus port."""
    upstream = DnsServer(
        DnsConfig(BridgeConfig(zone=ZoneConfig(zone="other.")), listen="127.0.0.1:0"), env.feed
    )
    up_port = await upstream.start()
    config = DnsConfig(
        BridgeConfig(forward=True), listen="127.0.0.1:0", forwarder=f"127.0.0.1:{up_port}", metrics_port=0
    )
    front = DnsServer(config, env.feed)
    port = await front.start()
    try:
        await env.register(inst("a1", addresses=("10.0.0.7",)))
        q = dns.message.make_query("payments.prod.other.", "A")
        for tcp in (False, True):
            query = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
            r = await query(q, "127.0.0.1", port=port, timeout=2)
            assert rdatas(r) == ["10.0.0.7"]
        r = await dns.asyncquery.udp(
            dns.message.make_query("x.invalid.", "A"), "127.0.0.1", port=port, timeout=3
        )
        assert r.rcode() == dns.rcode.REFUSED  # the upstream refused it: relayed as is
        assert front.bridge.counters.forwarded == 3
        reader, writer = await asyncio.open_connection("127.0.0.1", front.metrics_port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        await writer.wait_closed()
        assert "serval_dns_forwarded_total 3.0" in body
        assert 'serval_dns_queries_total{rcode="NOERROR"}' in body and "serval_dns_rate_limited_total" in body
    finally:
        await front.stop()
        await upstream.stop()
