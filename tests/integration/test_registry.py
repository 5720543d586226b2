"""Registry replicas over real etcd and real gRPC on loopback.

Each test gets its own key prefix on the session's single-node etcd (or its
own 3-member cluster for fault tests) and in-process `Replica`s on ephemeral
ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from registry.api.client import Mirror, RegistryClient, dial_grpcio, keep_session_alive
from registry.api.rpc import Dial, RpcError, StatusCode
from registry.api.server import Replica, ReplicaConfig
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from tests.support.transports import TRANSPORTS

pytestmark = pytest.mark.integration

COLLIDING = json.loads((Path(__file__).parents[1] / "testdata" / "service_ids.json").read_text())[
    "colliding"
][0]

StartReplica = Callable[..., Awaitable[tuple[Replica, RegistryClient]]]

# The client-level behaviour the host agent relies on runs over both client transports.
both_transports = pytest.mark.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> Dial:
    """The clients' transport: grpcio, unless the test is marked `both_transports`."""
    dial: Dial = getattr(request, "param", dial_grpcio)
    return dial


@pytest.fixture
async def start_replica(etcd_single: Any, etcd_prefix: str, transport: Dial) -> AsyncIterator[StartReplica]:
    """Start replicas on the session etcd under this test's prefix; stop them afterwards."""
    started: list[tuple[Replica, RegistryClient]] = []

    async def start(
        endpoints: Sequence[str] | None = None, **overrides: Any
    ) -> tuple[Replica, RegistryClient]:
        config = ReplicaConfig(
            etcd_endpoints=list(endpoints or etcd_single.endpoints),
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            replica_id=f"r{len(started) + 1}",
            progress_interval=0.5,
            etcd_timeout=3.0,
            **overrides,
        )
        replica = Replica(config)
        port = await replica.start()
        await replica.wait_ready(15)
        client = RegistryClient([f"127.0.0.1:{port}"], timeout=5, transport=transport)
        started.append((replica, client))
        return replica, client

    yield start
    for replica, client in reversed(started):
        await client.close()
        await replica.stop(grace=0.2)


def inst(iid: str, service: str = "payments.prod", **kw: Any) -> Instance:
    fields: dict[str, Any] = {"addresses": ("10.0.0.1",), "port": 8080, **kw}
    return Instance(service=service, instance_id=iid, **fields)


async def collect(
    watch: Any, until: Callable[[Mirror, list[pb.WatchResponse]], bool]
) -> list[pb.WatchResponse]:
    """Read `watch` into a mirror until `until(mirror, messages)` holds (bounded by the test timeout)."""
    mirror, messages = Mirror(), []
    async for msg in watch:
        messages.append(msg)
        mirror.apply(msg)
        if until(mirror, messages):
            break
    return messages


def deltas_in(messages: Sequence[pb.WatchResponse]) -> list[pb.InstanceDelta]:
    return [d for m in messages for d in m.deltas]


@both_transports
async def test_two_replicas_serve_every_call(start_replica: StartReplica) -> None:
    _, a = await start_replica()
    _, b = await start_replica()
    session = await a.open_session(30)
    reg = await b.register(inst("i1"), lease_id=session.lease_id)
    assert reg.lease_id == session.lease_id
    for client in (a, b):
        res = await client.resolve("payments.prod", min_revision=reg.revision)
        assert [i.instance_id for i in res.instances] == ["i1"]
        assert res.instances[0].lease_id == session.lease_id
    drained = await a.drain("payments.prod", "i1")
    res = await b.resolve("payments.prod", min_revision=drained.revision)
    assert res.instances[0].weight == 0 and res.instances[0].drained
    await b.deregister("payments.prod", "i1")
    await a.close_session(session.lease_id)


async def test_resolve_orders_by_tier_then_weight(start_replica: StartReplica) -> None:
    _, client = await start_replica()
    for iid, tier, weight in [("backup", 1, 100), ("small", 0, 10), ("big", 0, 90)]:
        reg = await client.register(inst(iid, tier=tier, weight=weight))
    res = await client.resolve("payments.prod", min_revision=reg.revision)
    assert [i.instance_id for i in res.instances] == ["big", "small", "backup"]


@both_transports
async def test_lease_expiry_removes_instances_and_keep_alive_keeps_them(start_replica: StartReplica) -> None:
    _, client = await start_replica()
    kept = await client.open_session(2)
    lapsing = await client.open_session(2)
    await client.register(inst("kept"), lease_id=kept.lease_id)
    reg = await client.register(inst("lapsing"), lease_id=lapsing.lease_id)
    keeper = asyncio.create_task(keep_session_alive(client, kept.lease_id, interval=0.5))
    try:
        watch = client.watch(from_revision=reg.revision, subscriber_id="expiry")
        messages = await asyncio.wait_for(
            collect(watch, lambda m, msgs: any(d.kind == pb.InstanceDelta.DELETE for d in deltas_in(msgs))),
            15,
        )
        (gone,) = [d for d in deltas_in(messages) if d.kind == pb.InstanceDelta.DELETE]
        assert gone.instance.instance_id == "lapsing"
        await asyncio.sleep(1.5)  # past the 2 s TTL of the kept lease several times over by now
        res = await client.resolve("payments.prod", min_revision=gone.revision)
        assert [i.instance_id for i in res.instances] == ["kept"]
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    with pytest.raises(RpcError) as err:
        await client.keep_alive_once(lapsing.lease_id)
    assert err.value.code == StatusCode.NOT_FOUND


@both_transports
async def test_keep_alive_and_watch_survive_a_reconnect_by_another_task(start_replica: StartReplica) -> None:
    """A call whose channel another task closed ends with `ChannelClosed` (grpc.aio itself raises
    `asyncio.CancelledError` there); the client's long-running loops sharing that channel must
    resume, not end as if cancelled."""
    _, client = await start_replica()
    session = await client.open_session(2)
    first = await client.register(inst("kept"), lease_id=session.lease_id)
    keeper = asyncio.create_task(keep_session_alive(client, session.lease_id, interval=0.5))
    later_seen = asyncio.Event()

    async def follow() -> None:
        async for msg in client.watch(from_revision=first.revision, subscriber_id="reconnects"):
            if any(d.instance.instance_id == "later" for d in msg.deltas):
                later_seen.set()

    follower = asyncio.create_task(follow())
    try:
        for _ in range(3):
            await asyncio.sleep(0.8)
            await client.reconnect()
        await asyncio.sleep(1.5)  # past the 2 s TTL since the first reconnect
        assert not keeper.done() and not follower.done()
        later = await client.register(inst("later"), lease_id=session.lease_id)
        res = await client.resolve("payments.prod", min_revision=later.revision)
        assert sorted(i.instance_id for i in res.instances) == ["kept", "later"]
        await asyncio.wait_for(later_seen.wait(), 10)  # the watch resumed after the reconnects
    finally:
        for task in (keeper, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@both_transports
async def test_watch_resume_on_another_replica_sends_only_missing_deltas(start_replica: StartReplica) -> None:
    _, a = await start_replica()
    _, b = await start_replica()
    session = await a.open_session(30)
    for n in range(3):
        reg = await a.register(inst(f"i{n}"), lease_id=session.lease_id)
    first = a.watch(subscriber_id="resumer")
    await collect(first, lambda m, msgs: m.revision >= reg.revision and len(m.instances) == 3)
    applied = first.applied_revision
    assert applied >= reg.revision
    for n in range(3, 8):  # five changes while the subscriber is away
        last = await a.register(inst(f"i{n}"), lease_id=session.lease_id)
    await b.resolve("payments.prod", min_revision=last.revision)
    resumed = b.watch(from_revision=applied, subscriber_id="resumer")
    messages = await collect(resumed, lambda m, msgs: m.revision >= last.revision)
    assert all(m.kind == pb.WatchResponse.DELTAS for m in messages)
    assert len(deltas_in(messages)) == 5
    assert {d.instance.instance_id for d in deltas_in(messages)} == {f"i{n}" for n in range(3, 8)}
    assert {m.replica_id for m in messages} == {"r2"}


@both_transports
async def test_calls_keep_alive_and_watch_fail_over_when_the_replica_goes_away(
    start_replica: StartReplica, transport: Dial
) -> None:
    """One client over two replicas: the one it uses stops; every call, the lease keep-alive
    and the watch (resuming from its revision) move to the other."""
    replica_a, _ = await start_replica()
    replica_b, _ = await start_replica()
    targets = [f"127.0.0.1:{replica_a.port}", f"127.0.0.1:{replica_b.port}"]
    client = RegistryClient(targets, timeout=5, transport=transport)
    session = await client.open_session(2)
    first = await client.register(inst("kept"), lease_id=session.lease_id)
    keeper = asyncio.create_task(keep_session_alive(client, session.lease_id, interval=0.5))
    watch = client.watch(from_revision=first.revision, subscriber_id="failover")
    seen: list[pb.WatchResponse] = []
    later_seen = asyncio.Event()

    async def follow() -> None:
        async for msg in watch:
            seen.append(msg)
            if any(d.instance.instance_id == "later" for d in msg.deltas):
                later_seen.set()

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.5)  # the watch and the keep-alive are open on replica a
        await replica_a.stop(grace=0.2)
        later = await client.register(inst("later"), lease_id=session.lease_id)
        await asyncio.wait_for(later_seen.wait(), 10)
        assert watch.reconnects >= 1 and seen[-1].replica_id == "r2"
        assert [d.revision for m in seen for d in m.deltas] == [later.revision]  # resumed: no replay
        await asyncio.sleep(2.5)  # past the 2 s TTL: only the keep-alive on replica b kept the lease
        assert not keeper.done() and client.target == targets[1]
        res = await client.resolve("payments.prod", min_revision=later.revision)
        assert sorted(i.instance_id for i in res.instances) == ["kept", "later"]
        assert res.instances[0].lease_id == session.lease_id
    finally:
        for task in (keeper, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()


@both_transports
async def test_resume_from_compacted_history_gets_a_snapshot_and_converges(
    start_replica: StartReplica,
) -> None:
    replica_a, a = await start_replica()
    session = await a.open_session(30)
    for n in range(4):
        reg = await a.register(inst(f"i{n}"), lease_id=session.lease_id)
    watch = a.watch(subscriber_id="late")
    await collect(watch, lambda m, msgs: m.revision >= reg.revision and len(m.instances) == 4)
    applied = watch.applied_revision
    await a.deregister("payments.prod", "i0")
    for n in range(4, 7):
        last = await a.register(inst(f"i{n}"), lease_id=session.lease_id)
    await replica_a.store.compact(last.revision)
    # a replica started after the compaction holds no history before its own start
    _, c = await start_replica()
    resumed = c.watch(from_revision=applied, subscriber_id="late")
    mirror = Mirror()
    async for msg in resumed:
        mirror.apply(msg)
        if msg.kind == pb.WatchResponse.SNAPSHOT_END:
            break
    assert msg.revision >= last.revision
    assert sorted(iid for _, iid in mirror.instances) == ["i1", "i2", "i3", "i4", "i5", "i6"]


async def test_resume_older_than_a_small_history_gets_a_snapshot(start_replica: StartReplica) -> None:
    _, a = await start_replica(history_size=3)
    session = await a.open_session(30)
    reg = await a.register(inst("i0"), lease_id=session.lease_id)
    for n in range(1, 6):
        last = await a.register(inst(f"i{n}"), lease_id=session.lease_id)
    await a.resolve("payments.prod", min_revision=last.revision)
    watch = a.watch(from_revision=reg.revision, subscriber_id="old")
    messages = await collect(watch, lambda m, msgs: msgs[-1].kind == pb.WatchResponse.SNAPSHOT_END)
    assert messages[0].kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END)
    assert sum(len(m.instances) for m in messages) == 6


@both_transports
async def test_bad_inputs_get_the_right_codes(start_replica: StartReplica) -> None:
    _, client = await start_replica()
    await client.register(inst("i1", service=COLLIDING["names"][0]))
    cases: list[tuple[Awaitable[Any], StatusCode, str]] = [
        (client.register(inst("i1", service="no_underscores")), StatusCode.INVALID_ARGUMENT, "label"),
        (client.register(inst("i1", port=0)), StatusCode.INVALID_ARGUMENT, "port"),
        (client.register(inst("i1", weight=10_001)), StatusCode.INVALID_ARGUMENT, "weight"),
        (client.register(inst("i1", metadata={"k": "v" * 300})), StatusCode.INVALID_ARGUMENT, "256"),
        (client.register(inst("i1", addresses=("::",))), StatusCode.INVALID_ARGUMENT, "unspecified"),
        (client.register(inst("i1", service=COLLIDING["names"][1])), StatusCode.ALREADY_EXISTS, "ID"),
        (client.register(inst("i1", service=COLLIDING["names"][0])), StatusCode.ALREADY_EXISTS, "lease"),
        (client.register(inst("i2"), lease_id=0x7777777), StatusCode.NOT_FOUND, "lease"),
        (client.deregister("payments.prod", "missing"), StatusCode.NOT_FOUND, "missing"),
        (client.set_weight("payments.prod", "missing", 5), StatusCode.NOT_FOUND, "missing"),
        (client.open_session(0), StatusCode.INVALID_ARGUMENT, "ttl"),
        (client.resolve("a..b"), StatusCode.INVALID_ARGUMENT, "empty label"),
    ]
    for call, code, words in cases:
        with pytest.raises(RpcError) as err:
            await call
        assert err.value.code == code, err.value.details
        assert words in err.value.details, err.value.details


async def test_health_and_reflection_are_served(start_replica: StartReplica) -> None:
    replica, _ = await start_replica()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        for _ in range(50):
            check = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="serval.registry.v1.Registry")
            )
            if check.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for resp in stream:
            listed = {s.name for s in resp.list_services_response.service}
            break
    assert "serval.registry.v1.Registry" in listed


async def test_status_reports_etcd_and_subscriber_lag(start_replica: StartReplica) -> None:
    replica, client = await start_replica()
    reg = await client.register(inst("i1"))
    watch = client.watch(subscriber_id="agent/host-1")
    await collect(watch, lambda m, msgs: m.revision >= reg.revision)
    status = await client.cluster_status()
    assert len(status.members) == 1 and status.members[0].is_leader and status.leader_id
    assert status.etcd_revision >= reg.revision and status.db_size_bytes > 0
    assert status.instances == 1 and status.replica_id == "r1"
    assert status.view_revision == replica.view.revision


@pytest.mark.cluster
async def test_killing_the_connected_etcd_member_loses_no_acknowledged_registration(
    etcd_cluster3: Any, etcd_prefix: str, start_replica: StartReplica
) -> None:
    _, client = await start_replica(endpoints=etcd_cluster3.endpoints)
    session = await client.open_session(60)
    acknowledged: dict[str, int] = {}

    async def register(n: int) -> None:
        with contextlib.suppress(RpcError):  # refused writes were never acknowledged
            reg = await client.register(inst(f"i{n}"), lease_id=session.lease_id)
            acknowledged[f"i{n}"] = reg.revision

    await asyncio.gather(*(register(n) for n in range(20)))
    etcd_cluster3.members[0].kill()  # the replica's store talks to the first endpoint
    await asyncio.gather(*(register(n) for n in range(20, 60)))
    assert len(acknowledged) >= 40
    res = await client.resolve("payments.prod", min_revision=max(acknowledged.values()))
    assert {i.instance_id for i in res.instances} >= set(acknowledged)
    status = await client.cluster_status()
    assert sum(1 for m in status.members if not m.reachable) == 1


@pytest.mark.cluster
async def test_without_quorum_writes_fail_unavailable_and_recover(
    etcd_cluster3: Any, etcd_prefix: str, start_replica: StartReplica
) -> None:
    _, client = await start_replica(endpoints=etcd_cluster3.endpoints)
    session = await client.open_session(60)
    before = await client.register(inst("before"), lease_id=session.lease_id)
    etcd_cluster3.members[1].kill()
    etcd_cluster3.members[2].kill()  # one member left: no quorum
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RpcError) as err:
        await client.register(inst("during"), lease_id=session.lease_id)
    assert err.value.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)
    assert loop.time() - started < 15  # a clear refusal, not a hang
    await asyncio.to_thread(etcd_cluster3.members[1].restart)
    for _ in range(100):  # quorum is back once the restarted member has caught up
        try:
            after = await client.register(inst("after"), lease_id=session.lease_id)
            break
        except RpcError:
            await asyncio.sleep(0.2)
    res = await client.resolve("payments.prod", min_revision=after.revision)
    present = {i.instance_id for i in res.instances}
    # "during" was never acknowledged: etcd may still have committed it once quorum returned
    assert {"before", "after"} <= present <= {"before", "during", "after"}
    assert after.revision > before.revision


@both_transports
async def test_a_subscriber_that_stops_reading_is_cut_off_not_buffered(start_replica: StartReplica) -> None:
    replica, client = await start_replica(max_queued=4)
    session = await client.open_session(60)
    big = {f"k{n}": "v" * 256 for n in range(32)}  # ~8 KiB per delta fills transport buffers fast
    requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
    requests.put_nowait(pb.WatchRequest(start=pb.WatchStart(subscriber_id="stuck")))

    async def request_stream() -> AsyncIterator[pb.WatchRequest]:
        while (req := await requests.get()) is not None:
            yield req

    stuck = client.channel().stream("Watch", request_stream(), pb.WatchResponse)  # not read until the end
    for _ in range(100):
        if replica.hub.subscriber_count:
            break
        await asyncio.sleep(0.05)
    sent = 0
    while replica.hub.slow_disconnects == 0 and sent < 3000:
        await asyncio.gather(
            *(
                client.register(inst(f"i{sent + n}", metadata=big), lease_id=session.lease_id)
                for n in range(50)
            )
        )
        sent += 50
    assert replica.hub.slow_disconnects == 1, f"not cut off after {sent} registrations"
    assert replica.hub.subscriber_count == 0
    with pytest.raises(RpcError) as err:
        async for _ in stuck:
            pass
    requests.put_nowait(None)
    stuck.cancel()
    assert err.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "too slow" in err.value.details
    await asyncio.sleep(0.1)


async def wait_status(
    client: RegistryClient, until: Callable[[pb.ClusterStatusResponse], bool], timeout: float = 10
) -> pb.ClusterStatusResponse:
    """Poll ClusterStatus every 0.1 s until `until` holds, for up to `timeout`; the last answer."""
    for _ in range(round(timeout / 0.1)):
        status = await client.cluster_status()
        if until(status):
            break
        await asyncio.sleep(0.1)
    return status


async def test_status_lists_every_live_replica_and_drops_a_stopped_one(start_replica: StartReplica) -> None:
    r1, client = await start_replica()
    r2, _ = await start_replica(advertise="registry-2.example:7070")
    status = await wait_status(client, lambda s: len(s.replicas) == 2)
    assert [(r.replica_id, r.address) for r in status.replicas] == [
        ("r1", f"127.0.0.1:{r1.port}"),
        ("r2", "registry-2.example:7070"),
    ]
    assert all(r.version and r.started_unix_ms > 0 for r in status.replicas)
    await r2.stop(grace=0.1)  # a clean stop revokes its announcement's lease at once
    status = await wait_status(client, lambda s: len(s.replicas) == 1, timeout=3)
    assert [r.replica_id for r in status.replicas] == ["r1"]


async def test_status_reports_etcds_last_compaction(start_replica: StartReplica) -> None:
    replica, client = await start_replica()
    reg = await client.register(inst("i1"))
    await replica.store.compact(reg.revision)
    assert (await client.cluster_status()).compact_revision == reg.revision


async def test_resolve_reports_lease_time_left_only_when_asked(start_replica: StartReplica) -> None:
    _, client = await start_replica()
    reg = await client.register(inst("i1", ttl_seconds=30))
    plain = await client.resolve("payments.prod", min_revision=reg.revision)
    assert not plain.instances[0].HasField("lease_time_left_seconds")
    await asyncio.sleep(1.2)
    asked = await client.resolve("payments.prod", with_lease_time_left=True)
    assert 20 <= asked.instances[0].lease_time_left_seconds <= 29


async def test_acks_with_apply_delays_become_propagation_samples(start_replica: StartReplica) -> None:
    _, client = await start_replica()
    watch = client.watch(subscriber_id="agent/slow", explicit_confirm=True)
    watch.ack_interval = 0.05
    revisions: list[int] = []

    async def register_spaced() -> None:
        for n in range(4):
            revisions.append((await client.register(inst(f"i{n}"))).revision)
            await asyncio.sleep(0.3)

    writer = asyncio.create_task(register_spaced())
    async for msg in watch:
        if msg.kind == pb.WatchResponse.DELTAS:
            await asyncio.sleep(0.1)  # the subscriber takes 100 ms to apply each change
            watch.confirm(msg.revision)
        if len(revisions) == 4 and watch.applied_revision >= revisions[-1]:
            break
    await writer
    status = await wait_status(client, lambda s: len(s.propagation) >= 4)
    samples = [p for p in status.propagation if p.subscriber_id == "agent/slow"]
    assert [p.revision for p in samples] == revisions
    assert all(0.1 <= p.seconds < 1.0 and p.at_unix_ms > 0 for p in samples)


async def test_local_only_status_answers_without_etcd(start_replica: StartReplica) -> None:
    r1, client = await start_replica()
    await r1.store.close()  # no etcd for this replica any more: a full status would fail
    local = await client.cluster_status(local_only=True)
    assert not local.members and local.replica_id == "r1"
    assert [(r.replica_id, r.address) for r in local.replicas] == [("r1", f"127.0.0.1:{r1.port}")]
    assert local.view_revision == r1.view.revision
