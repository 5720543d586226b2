"""RegistryService and the gRPC layer over the in-memory fake store.

The fake store honours the Store contract; integration tests repeat the
important cases against real etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.message import Message

from registry.api.client import Mirror, RegistryClient
from registry.api.rpc import Dial, RpcError, StatusCode
from registry.api.server import Replica, ReplicaConfig
from registry.model import Instance
from tests.fakes.store import FakeStore
from tests.support.transports import TRANSPORTS

COLLIDING = json.loads((Path(__file__).parents[1] / "testdata" / "service_ids.json").read_text())[
    "colliding"
][0]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Dial:
    """Every test of the client against the server runs over both client transports."""
    dial: Dial = request.param
    return dial


@pytest.fixture
async def env(transport: Dial) -> AsyncIterator[tuple[FakeStore, Replica, RegistryClient]]:
    store = FakeStore()
    replica = Replica(
        ReplicaConfig(etcd_endpoints=[], listen="127.0.0.1:0", progress_interval=0.2), store=store
    )
    port = await replica.start()
    await replica.wait_ready()
    client = RegistryClient([f"127.0.0.1:{port}"], timeout=2, transport=transport)
    yield store, replica, client
    await client.close()
    await replica.stop(grace=0.1)


def inst(iid: str, service: str = "payments.prod", **kw: object) -> Instance:
    base = Instance(service, iid, ("10.0.0.1",), 8080)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


async def test_concurrent_registrations_on_one_session(
    env: tuple[FakeStore, Replica, RegistryClient],
) -> None:
    store, _replica, client = env
    session = await client.open_session(30)
    results = await asyncio.gather(
        *(client.register(inst(f"i{n}"), lease_id=session.lease_id) for n in range(50))
    )
    assert len({r.lease_id for r in results}) == 1
    assert store.put_calls <= 50
    res = await client.resolve("payments.prod", min_revision=max(r.revision for r in results))
    assert len(res.instances) == 50


@pytest.mark.parametrize(
    ("instance", "code"),
    [
        (inst("i1", service="Bad_Name"), StatusCode.INVALID_ARGUMENT),
        (inst("i/1"), StatusCode.INVALID_ARGUMENT),
        (inst("i1", port=0), StatusCode.INVALID_ARGUMENT),
        (inst("i1", weight=20000), StatusCode.INVALID_ARGUMENT),
        (inst("i1", metadata={"k": "x" * 1000}), StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_registrations_get_invalid_argument(
    env: tuple[FakeStore, Replica, RegistryClient], instance: Instance, code: StatusCode
) -> None:
    _, _, client = env
    with pytest.raises(RpcError) as err:
        await client.register(instance)
    assert err.value.code == code
    assert err.value.details


async def test_refusals_and_not_found(env: tuple[FakeStore, Replica, RegistryClient]) -> None:
    store, _, client = env
    first = await client.register(inst("i1", service=COLLIDING["names"][0]))
    for call, code in [
        (client.register(inst("i1", service=COLLIDING["names"][1])), StatusCode.ALREADY_EXISTS),
        (client.register(inst("i1", service=COLLIDING["names"][0])), StatusCode.ALREADY_EXISTS),
        (client.register(inst("i2"), lease_id=424242), StatusCode.NOT_FOUND),
        (client.deregister("payments.prod", "nope"), StatusCode.NOT_FOUND),
        (client.drain("payments.prod", "nope"), StatusCode.NOT_FOUND),
        (client.set_weight(COLLIDING["names"][0], "i1", 0), StatusCode.INVALID_ARGUMENT),
        (client.keep_alive_once(424242), StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(RpcError) as err:
            await call
        assert err.value.code == code, err.value.details
    took_over = await client.register(inst("i1", service=COLLIDING["names"][0]), replace=True)
    assert took_over.lease_id != first.lease_id
    # a refused registration on a fresh lease leaves no lease behind (the replica's
    # announcement holds a lease of its own)
    announcement = {lease for _, lease in store.replicas.values()}
    assert set(store.leases) - announcement == {first.lease_id, took_over.lease_id}


async def test_drain_and_undrain_restore_the_weight(env: tuple[FakeStore, Replica, RegistryClient]) -> None:
    _, _, client = env
    await client.register(inst("i1", weight=40))
    drained = await client.drain("payments.prod", "i1")
    assert (drained.instance.weight, drained.instance.drained, drained.instance.drained_weight) == (
        0,
        True,
        40,
    )
    again = await client.drain("payments.prod", "i1")
    assert again.revision == drained.revision  # idempotent: no new write
    back = await client.drain("payments.prod", "i1", drain=False)
    assert (back.instance.weight, back.instance.drained) == (40, False)
    heavier = await client.set_weight("payments.prod", "i1", 70)
    assert heavier.instance.weight == 70


async def test_lease_expiry_removes_instances_and_watchers_see_it(
    env: tuple[FakeStore, Replica, RegistryClient],
) -> None:
    store, _, client = env
    session = await client.open_session(5)
    await client.register(inst("i1"), lease_id=session.lease_id)
    await client.register(inst("i2"), lease_id=session.lease_id)
    mirror = Mirror()
    async for msg in client.watch(subscriber_id="t"):
        mirror.apply(msg)
        if len(mirror.instances) == 2:
            await store.advance(3)
            assert await client.keep_alive_once(session.lease_id) == 5
            await store.advance(3)  # refreshed: still alive
            assert session.lease_id in store.leases
            await store.advance(6)
        if mirror.revision and not mirror.instances:
            break
    res = await client.resolve("payments.prod", min_revision=mirror.revision)
    assert list(res.instances) == []


async def test_list_services_pages_and_filters(env: tuple[FakeStore, Replica, RegistryClient]) -> None:
    _, _, client = env
    for svc in ["a.prod", "b.prod", "c.prod", "a.dev"]:
        resp = await client.register(inst("i1", service=svc))
    page = await client.list_services(suffix="prod", limit=2, min_revision=resp.revision)
    assert [s.name for s in page.services] == ["a.prod", "b.prod"]
    rest = await client.list_services(suffix="prod", limit=2, page_token=page.next_page_token)
    assert [s.name for s in rest.services] == ["c.prod"]
    assert rest.next_page_token == ""


async def test_unavailable_store_maps_to_unavailable(env: tuple[FakeStore, Replica, RegistryClient]) -> None:
    store, _, client = env
    store.fail_next = 100
    with pytest.raises(RpcError) as err:
        await client.open_session(5)
    assert err.value.code == StatusCode.UNAVAILABLE
    store.fail_next = 0


async def test_status_reports_subscribers_and_lag(env: tuple[FakeStore, Replica, RegistryClient]) -> None:
    _, replica, client = env
    await client.register(inst("i1"))
    watch = client.watch(subscriber_id="agent/1")
    async for msg in watch:
        if msg.revision >= replica.view.revision and msg.kind != msg.SNAPSHOT:
            break
    status = await client.cluster_status()
    assert status.instances == 1 and status.view_revision == replica.view.revision
    assert status.members[0].is_leader
    await asyncio.sleep(0)


def test_drained_is_pure() -> None:
    from registry.service import drained

    i = inst("i1", weight=9)
    d = drained(i, True)
    assert drained(d, True) == d and drained(drained(d, False), False) == dataclasses.replace(i)


async def test_follower_recovers_from_compaction_by_listing_again() -> None:
    from registry.follower import Follower
    from registry.raft.store import InstanceWrite
    from registry.view import History, View

    store = FakeStore()
    lease = await store.grant_lease(30)
    await store.put_instances([InstanceWrite(inst("i1"), lease.lease_id)])
    published: list[int] = []
    view = View()
    follower = Follower(
        store, view, History(0, 100), lambda deltas, rev: published.extend(d.revision for d in deltas)
    )
    task = asyncio.create_task(follower.run())
    await follower.wait_ready()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # while the follower is away, history it would need is compacted
    await store.put_instances([InstanceWrite(inst("i2"), lease.lease_id)])
    await store.delete_instance("payments.prod", "i1")
    await store.compact(store.revision)
    task = asyncio.create_task(follower.run())
    assert await follower.wait_for_revision(store.revision, 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert follower.relists == 1
    assert [i.instance_id for i in view.instances()] == ["i2"]
    assert published == [store.revision, store.revision]  # i2 put and i1 delete, at the list revision


async def test_register_stream_answers_each_registration_in_band(
    env: tuple[FakeStore, Replica, RegistryClient],
) -> None:
    store, _, client = env
    session = await client.open_session(30)
    stream = client.registration_stream()
    good = [stream.register(inst(f"i{n}"), lease_id=session.lease_id) for n in range(40)]
    bad = [
        stream.register(inst("x", service="Bad_Name"), lease_id=session.lease_id),
        stream.register(inst("y"), lease_id=999_999),
    ]
    results = await asyncio.gather(*good, *bad, return_exceptions=True)
    assert all(r.lease_id == session.lease_id for r in results[:40])  # type: ignore[union-attr]
    codes = [r.code for r in results[40:]]  # type: ignore[union-attr]
    assert codes == [StatusCode.INVALID_ARGUMENT, StatusCode.NOT_FOUND]
    again = await stream.register(inst("i40"), lease_id=session.lease_id)  # the stream stays open
    assert again.revision > 0
    await stream.close()
    assert len(store.instances) == 41


async def test_malformed_envelopes_get_invalid_argument(
    env: tuple[FakeStore, Replica, RegistryClient],
) -> None:
    from registry.api.v1 import registry_pb2 as pb

    _, _, client = env
    channel = client.channel()
    calls = [
        channel.unary("Register", pb.RegisterRequest(), pb.RegisterResponse, 2),
        channel.unary(
            "UpdateInstance",
            pb.UpdateInstanceRequest(service="a.b", instance_id="i"),
            pb.UpdateInstanceResponse,
            2,
        ),
        channel.unary("ListServices", pb.ListServicesRequest(limit=10_001), pb.ListServicesResponse, 2),
        channel.unary(
            "ListServices", pb.ListServicesRequest(suffix="bad_suffix"), pb.ListServicesResponse, 2
        ),
        channel.unary("CloseSession", pb.CloseSessionRequest(lease_id=-1), pb.CloseSessionResponse, 2),
    ]
    for call in calls:
        with pytest.raises(RpcError) as err:
            await call
        assert err.value.code == StatusCode.INVALID_ARGUMENT, err.value.details
    for first in (
        pb.WatchRequest(applied=pb.WatchApplied(revision=3)),
        pb.WatchRequest(start=pb.WatchStart(from_revision=-1)),
    ):
        watch = channel.stream("Watch", one(first), pb.WatchResponse, timeout=2)
        with pytest.raises(RpcError) as err:
            async for _ in watch:
                pass
        watch.cancel()
        assert err.value.code == StatusCode.INVALID_ARGUMENT, err.value.details


async def test_a_watch_that_never_says_start_is_closed(
    env: tuple[FakeStore, Replica, RegistryClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.api import servicer
    from registry.api.v1 import registry_pb2 as pb

    monkeypatch.setattr(servicer, "FIRST_MESSAGE_TIMEOUT", 0.2)
    _, _, client = env
    silent = asyncio.Event()

    async def nothing() -> AsyncIterator[pb.WatchRequest]:
        await silent.wait()
        yield pb.WatchRequest()

    watch = client.channel().stream("Watch", nothing(), pb.WatchResponse, timeout=5)
    with pytest.raises(RpcError) as err:
        async for _ in watch:
            pass
    watch.cancel()
    assert err.value.code == StatusCode.INVALID_ARGUMENT
    assert "start" in err.value.details
    silent.set()
    await asyncio.sleep(0.05)


async def one(message: Message) -> AsyncIterator[Message]:
    yield message
