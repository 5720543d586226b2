"""The dashboard's REST API, auth and SSE stream against a real registry replica and etcd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.model import LATENCY_KEY
from hostagent.agent.agent import Agent, AgentConfig
from hostagent.agent.datapath import DatapathConfig
from registry.api.client import keep_session_alive
from registry.api.v1 import registry_pb2 as pb
from tests.fakes.datapath import FakeDatapath
from tests.support.dashboard import ADMIN_TOKEN, READ_TOKEN, DashboardRig, dashboard_rig, inst, wait_for
from tests.support.replica import started_replica

pytestmark = pytest.mark.integration


@pytest.fixture
async def rig(etcd_single: Any, etcd_prefix: str) -> AsyncIterator[DashboardRig]:
    async with dashboard_rig(list(etcd_single.endpoints), etcd_prefix) as r:
        yield r


async def test_reads_show_services_instances_and_counts(rig: DashboardRig) -> None:
    await rig.registry.register(inst("i-1", weight=50, tier=1, zone="z1", region="eu"))
    await rig.registry.register(inst("i-2"))
    await rig.registry.register(inst("a-1", service="auth.prod"))
    await rig.registry.drain("payments.prod", "i-2")
    await wait_for(lambda: rig.state.model.counts().drained == 1)
    async with rig.http(READ_TOKEN) as http:
        over = (await http.get("/api/v1/overview")).json()
        assert (over["services"], over["instances"], over["usable"], over["drained"]) == (2, 3, 2, 1)
        page = (await http.get("/api/v1/services", params={"q": "pay"})).json()
        assert [s["name"] for s in page["services"]] == ["payments.prod"]
        assert page["services"][0] == {"name": "payments.prod", "instances": 2, "usable": 1, "drained": 1}
        page = (await http.get("/api/v1/services", params={"limit": 1, "offset": 1})).json()
        assert [s["name"] for s in page["services"]] == ["payments.prod"] and page["total"] == 2
        svc = (await http.get("/api/v1/services/payments.prod")).json()
        by_id = {i["instance_id"]: i for i in svc["instances"]}
        assert by_id["i-1"]["tier"] == 1 and by_id["i-1"]["zone"] == "z1" and by_id["i-1"]["weight"] == 50
        assert (
            by_id["i-2"]["drained"]
            and by_id["i-2"]["weight"] == 0
            and "drained" in by_id["i-2"]["why_not_usable"]
        )
        assert (await http.get("/api/v1/services/nope.prod")).status_code == 404
        events = (await http.get("/api/v1/events")).json()["events"]
        assert {e["instance_id"] for e in events} >= {"i-1", "i-2", "a-1"}
        cluster = (await http.get("/api/v1/cluster")).json()
        assert cluster["available"] and cluster["members"] and cluster["db_quota_bytes"] > 0
        assert any(s["subscriber_id"] == "dashboard" for s in cluster["subscribers"])
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200


async def test_agents_come_from_host_records(rig: DashboardRig) -> None:
    record = inst("host-7", service="agents.serval", metadata={"serval.version": "9.9"}, zone="z2")
    await rig.registry.register(record)
    await wait_for(lambda: rig.state.model.counts().agents == 1)
    async with rig.http() as http:
        agents = (await http.get("/api/v1/agents")).json()["agents"]
    assert agents[0]["agent_id"] == "host-7" and agents[0]["version"] == "9.9"
    assert agents[0]["subscribed"] is False  # no watch named agent/host-7 on this replica


async def test_every_replica_its_agents_propagation_compaction_and_lease_time(
    rig: DashboardRig, etcd_single: Any, etcd_prefix: str, tmp_path: Path
) -> None:
    """A second replica, an agent subscribed to it (fake data path), a registration: the
    dashboard lists both replicas, finds the agent on the other one, charts its
    registration → agent propagation, and shows etcd's compaction and the lease's time left."""
    async with started_replica(etcd_single.endpoints, etcd_prefix, replica_id="r2") as other:
        port = other.port
        config = AgentConfig(
            registry=[f"127.0.0.1:{port}"],
            agent_id="host-p",
            socket_path=tmp_path / "agent.sock",
            sal_listen=(("0.0.0.0", 0),),
            metrics_port=None,
            lease_ttl=5,
            keepalive_interval=1,
        )
        fake = FakeDatapath(DatapathConfig(sal_listen=(("0.0.0.0", 0),)))
        agent = Agent(
            config, datapath_factory=lambda cfg: fake, address_reader=lambda: frozenset({"10.9.0.1"})
        )
        await agent.start()
        try:
            await wait_for(lambda: rig.state.model.counts().agents == 1)
            reg = await rig.registry.register(inst("i-1", ttl_seconds=30))
            # the agent applies it after its debounce and reports that with its next ack (≤ 1 s)
            await wait_for(
                lambda: any(
                    p.revision >= reg.revision
                    for p in rig.state.model.propagation
                    if p.subscriber == "agent/host-p"
                ),
                10,
            )
            async with rig.http(READ_TOKEN) as http:
                prop = (await http.get("/api/v1/propagation")).json()
                (row,) = [r for r in prop["subscribers"] if r["subscriber"] == "agent/host-p"]
                assert row["samples"] >= 1 and 0 < row["max"] < 1.0
                assert prop["samples"] >= 1 and prop["p50"] <= prop["p99"] <= prop["max"]
                (agent_row,) = (await http.get("/api/v1/agents")).json()["agents"]
                assert agent_row["agent_id"] == "host-p" and agent_row["replica"] == "r2"
                assert agent_row["applied_revision"] >= reg.revision
                cluster = (await http.get("/api/v1/cluster")).json()
                replicas = {r["replica_id"]: r for r in cluster["replicas"]}
                assert set(replicas) == {"r1", "r2"} and replicas["r2"]["address"] == f"127.0.0.1:{port}"
                assert replicas["r2"]["reachable"] and replicas["r2"]["subscribers"] == 1
                await rig.replica.store.compact(reg.revision)
                await wait_for(
                    lambda: (rig.state.feed.status or pb.ClusterStatusResponse()).compact_revision > 0
                )
                cluster = (await http.get("/api/v1/cluster")).json()
                assert cluster["last_compaction_revision"] == reg.revision
                (i,) = (await http.get("/api/v1/services/payments.prod")).json()["instances"]
                assert 25 <= i["lease_remaining_seconds"] <= 30 and i["ttl_seconds"] == 30
            async with rig.http(None) as browser:  # the pages: a login session, not a bearer token
                await browser.post("/login", data={"token": READ_TOKEN})
                page = (await browser.get("/propagation")).text
                assert "agent/host-p" in page and "<polyline" in page
                assert "r2" in (await browser.get("/")).text
                assert "s left of 30 s" in (await browser.get("/services/payments.prod")).text
        finally:
            await agent.stop()


async def test_actions_drain_undrain_weight_deregister_are_audited(rig: DashboardRig) -> None:
    await rig.registry.register(inst("i-1", weight=70))
    await wait_for(lambda: rig.state.model.counts().instances == 1)
    base = "/api/v1/services/payments.prod/instances/i-1"
    async with rig.http(ADMIN_TOKEN) as http:
        assert (await http.post(f"{base}/drain")).status_code == 200
        assert (await rig.registry.resolve("payments.prod")).instances[0].weight == 0
        assert (await http.post(f"{base}/undrain")).status_code == 200
        assert (await rig.registry.resolve("payments.prod")).instances[0].weight == 70
        assert (await http.post(f"{base}/weight", json={"weight": 5})).status_code == 200
        assert (await rig.registry.resolve("payments.prod")).instances[0].weight == 5
        assert (await http.post(f"{base}/weight", json={"weight": 0})).status_code == 422
        assert (await http.delete(base)).status_code == 200
        assert (await http.post(f"{base}/drain")).status_code == 404
        audit = (await http.get("/api/v1/audit")).json()["entries"]
    assert [(a["who"], a["action"], a["result"]) for a in audit] == [
        ("alice", "drain", "ok"),
        ("alice", "undrain", "ok"),
        ("alice", "weight=5", "ok"),
        ("alice", "deregister", "ok"),
        ("alice", "drain", "refused"),
    ]
    async with rig.http(None) as http:
        metrics = (await http.get("/metrics")).text
    assert 'serval_dashboard_actions_total{action="drain",result="ok"} 1.0' in metrics


@pytest.mark.parametrize(
    ("token", "read", "act"),
    [(None, 401, 401), ("wrong-token-0123456789", 401, 401), (READ_TOKEN, 200, 403), (ADMIN_TOKEN, 200, 200)],
)
async def test_auth_roles(rig: DashboardRig, token: str | None, read: int, act: int) -> None:
    await rig.registry.register(inst("i-1"))
    await wait_for(lambda: rig.state.model.counts().instances == 1)
    async with rig.http(token) as http:
        assert (await http.get("/api/v1/services")).status_code == read
        assert (await http.post("/api/v1/services/payments.prod/instances/i-1/drain")).status_code == act


async def test_open_reads_still_guard_actions(etcd_single: Any, etcd_prefix: str) -> None:
    async with dashboard_rig(list(etcd_single.endpoints), etcd_prefix, open_reads=True) as rig:
        await rig.registry.register(inst("i-1"))
        async with rig.http(None) as http:
            assert (await http.get("/api/v1/overview")).status_code == 200
            assert (await http.get("/")).status_code == 200
            assert (await http.post("/api/v1/services/payments.prod/instances/i-1/drain")).status_code == 401


async def test_browser_form_needs_session_and_csrf(rig: DashboardRig) -> None:
    await rig.registry.register(inst("i-1"))
    await wait_for(lambda: rig.state.model.counts().instances == 1)
    url = "/ui/services/payments.prod/instances/i-1/drain"
    async with rig.http(None) as http:
        assert (await http.get("/", follow_redirects=False)).headers["location"] == "/login"
        assert (await http.post(url, data={"csrf": "x"})).status_code == 401
        login = await http.post("/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert login.status_code == 303 and "samesite=strict" in login.headers["set-cookie"].lower()
        assert (await http.post(url, data={"csrf": "forged"})).status_code == 403
        csrf = next(iter(rig.state.auth.sessions.values())).csrf
        assert (await http.post(url, data={"csrf": csrf}, follow_redirects=False)).status_code == 303
    assert (await rig.registry.resolve("payments.prod")).instances[0].weight == 0


async def test_sse_delivers_a_registration_within_a_second(etcd_single: Any, etcd_prefix: str) -> None:
    async with dashboard_rig(list(etcd_single.endpoints), etcd_prefix, serve=True) as rig:
        async with (
            rig.http(READ_TOKEN) as http,
            http.stream("GET", "/api/v1/events/stream") as resp,
            contextlib.aclosing(resp.aiter_lines()) as lines,
        ):
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert await anext(lines) == "event: hello"
            session = await rig.registry.open_session(10)
            keeper = asyncio.create_task(keep_session_alive(rig.registry, session.lease_id, 2))
            sent = time.time()
            stamp = {LATENCY_KEY: str(time.time_ns())}
            await rig.registry.register(inst("sse-1", metadata=stamp), lease_id=session.lease_id)
            async with asyncio.timeout(1.0):
                async for line in lines:
                    if line.startswith("data:") and "sse-1" in line:
                        events = json.loads(line[5:])["events"]
                        assert events[0]["kind"] == "put"
                        break
            assert time.time() - sent < 1.0
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await rig.registry.close_session(session.lease_id)
        async with rig.http(READ_TOKEN) as http:
            prop = (await http.get("/api/v1/propagation")).json()
        assert prop["dashboard"]["samples"] == 1 and 0 <= prop["dashboard"]["max"] < 1.0


async def test_registry_unreachable_shows_stale_banner(etcd_single: Any, etcd_prefix: str) -> None:
    async with dashboard_rig(
        list(etcd_single.endpoints), etcd_prefix, open_reads=True, stale_after=1.0
    ) as rig:
        await rig.registry.register(inst("i-1"))
        await wait_for(lambda: rig.state.model.counts().instances == 1)
        await rig.replica.stop(grace=0.1)
        await wait_for(lambda: rig.state.feed.stale_for() > 0, timeout=5)
        async with rig.http(None) as http:
            assert (await http.get("/healthz")).status_code == 503
            assert (await http.get("/api/v1/overview")).json()["stale_seconds"] > 1.0
            page = (await http.get("/")).text
            assert "Registry unreachable: data is stale" in page
            assert (await http.get("/api/v1/services/payments.prod")).status_code == 200  # last content kept
            drain = await http.post(
                "/api/v1/services/payments.prod/instances/i-1/drain",
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert drain.status_code == 503
