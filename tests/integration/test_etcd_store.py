"""`EtcdStore` against real etcd on loopback.

Most tests share the session's single-member etcd, each under its own key
prefix; fault tests get a fresh three-member cluster (`etcd_cluster3`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from registry.errors import AlreadyExists, NotFound, Unavailable
from registry.model import Instance
from registry.raft.etcd import EtcdStore
from registry.raft.local_etcd import EtcdNotInstalled, LocalEtcdCluster
from registry.raft.store import (
    Compacted,
    InstanceDeleted,
    InstancePut,
    InstanceWrite,
    StoreEvent,
    WatchBatch,
    WriteOutcome,
)

pytestmark = pytest.mark.integration

SERVICE = "web.test"
COLLIDING: list[str] = json.loads((Path(__file__).parents[1] / "testdata" / "service_ids.json").read_text())[
    "colliding"
][0]["names"]


def inst(n: int, service: str = SERVICE, **fields: Any) -> Instance:
    address = f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"
    return Instance(service=service, instance_id=f"i-{n}", addresses=(address,), port=8080, **fields)


def revisions(outcomes: Sequence[WriteOutcome]) -> list[int]:
    assert all(isinstance(o, int) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, int)]


def summary(events: Sequence[StoreEvent]) -> list[tuple[str, str, str, int]]:
    """Events as comparable tuples: (kind, service, instance_id, revision)."""
    return [
        ("put", e.instance.service, e.instance.instance_id, e.revision)
        if isinstance(e, InstancePut)
        else ("delete", e.service, e.instance_id, e.revision)
        for e in events
    ]


async def collect(
    store: EtcdStore, from_revision: int, until_revision: int, timeout: float = 10
) -> list[StoreEvent]:
    """Every event from `from_revision` until a batch reaches `until_revision`."""
    events: list[StoreEvent] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(store.watch(from_revision)) as batches:
        async for batch in batches:
            events.extend(batch.events)
            if batch.revision >= until_revision:
                return events
    raise AssertionError("watch ended")


@pytest.fixture
async def store(etcd_single: LocalEtcdCluster, etcd_prefix: str) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd_single.endpoints, prefix=etcd_prefix, max_txn_ops=1024)
    try:
        yield s
    finally:
        await s.close()


# -- single member --------------------------------------------------------------


async def test_register_read_delete(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    [revision] = revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    got = await store.get_instance(SERVICE, "i-1")
    assert got == replace(inst(1), lease_id=lease.lease_id, create_revision=revision, mod_revision=revision)
    assert await store.delete_instance(SERVICE, "i-1") > revision
    with pytest.raises(NotFound, match=r"instance 'i-1' of service 'web\.test' not found"):
        await store.get_instance(SERVICE, "i-1")
    with pytest.raises(NotFound):
        await store.delete_instance(SERVICE, "i-1")


async def test_a_batch_of_200_writes_commits_in_one_transaction(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    writes = [InstanceWrite(inst(n, service=f"svc{n % 4}.test"), lease.lease_id) for n in range(200)]
    committed = revisions(await store.put_instances(writes))
    assert len(set(committed)) == 1  # one transaction, one revision
    snapshot = await store.snapshot()
    assert sorted(i.key for i in snapshot.instances) == sorted(w.instance.key for w in writes)
    assert {i.mod_revision for i in snapshot.instances} == set(committed)
    assert (await store.get_instance("svc3.test", "i-199")).lease_id == lease.lease_id


async def test_a_mixed_batch_commits_the_good_writes_and_refuses_the_bad(store: EtcdStore) -> None:
    holder, other = await store.grant_lease(30), await store.grant_lease(30)
    revisions(
        await store.put_instances(
            [
                InstanceWrite(inst(1), holder.lease_id),
                InstanceWrite(inst(9, service=COLLIDING[0]), holder.lease_id),
            ]
        )
    )
    fresh = EtcdStore(
        store._pool.endpoints, prefix=store._keys.prefix
    )  # knows no claims yet: fast path fails
    try:
        outcomes = await fresh.put_instances(
            [
                InstanceWrite(inst(2), other.lease_id),
                InstanceWrite(inst(1), other.lease_id),  # held by `holder`
                InstanceWrite(inst(3, service=COLLIDING[1]), other.lease_id),  # service-ID collision
                InstanceWrite(inst(4), other.lease_id),
            ]
        )
        again = await fresh.put_instances([InstanceWrite(inst(5, service=COLLIDING[1]), other.lease_id)])
    finally:
        await fresh.close()
    assert isinstance(outcomes[0], int) and outcomes[3] == outcomes[0]  # one second-chance transaction
    assert isinstance(outcomes[1], AlreadyExists)
    assert str(outcomes[1]) == (
        f"instance 'i-1' of service 'web.test' is held by lease 0x{holder.lease_id:x}; "
        "use replace to take it over"
    )
    for error in (outcomes[2], again[0]):  # refused from etcd, then from the claim cache
        assert isinstance(error, AlreadyExists)
        assert f"'{COLLIDING[1]}'" in str(error) and f"'{COLLIDING[0]}'" in str(error)
    assert (await store.get_instance(SERVICE, "i-1")).lease_id == holder.lease_id
    assert (await store.get_instance(SERVICE, "i-4")).lease_id == other.lease_id
    with pytest.raises(NotFound):
        await store.get_instance(COLLIDING[1], "i-3")


async def test_replace_takes_an_instance_over(store: EtcdStore) -> None:
    old, new = await store.grant_lease(30), await store.grant_lease(30)
    revisions(await store.put_instances([InstanceWrite(inst(1), old.lease_id)]))
    [revision] = revisions(
        await store.put_instances([InstanceWrite(inst(1, weight=7), new.lease_id, replace=True)])
    )
    got = await store.get_instance(SERVICE, "i-1")
    assert (got.lease_id, got.weight, got.mod_revision) == (new.lease_id, 7, revision)
    await store.revoke_lease(old.lease_id)  # the old session ending no longer deletes it
    assert (await store.get_instance(SERVICE, "i-1")).lease_id == new.lease_id


async def test_rewriting_the_same_record_is_idempotent(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    write = InstanceWrite(inst(1), lease.lease_id)
    [first] = revisions(await store.put_instances([write]))
    [second] = revisions(await store.put_instances([write]))  # what a retried commit sees
    assert second == first


class LoseReplies:
    """Wraps a KV stub: the first `count` write transactions commit, but their replies are lost."""

    def __init__(self, kv: Any, count: int) -> None:
        self._kv = kv
        self.remaining = count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def Txn(self, request: Any, **kwargs: Any) -> Any:  # the gRPC method name
        response = await self._kv.Txn(request, **kwargs)
        if self.remaining and response.succeeded and request.compare:
            self.remaining -= 1
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="reply lost (test)")
        return response


async def test_a_write_whose_reply_was_lost_is_retried_and_recognised(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    connection = await store._pool.acquire()
    lossy = connection.kv = LoseReplies(connection.kv, count=1)
    await store._pool.release(connection)
    outcomes = await store.put_instances([InstanceWrite(inst(n), lease.lease_id) for n in range(3)])
    assert lossy.remaining == 0
    [committed] = set(revisions(outcomes))  # the lost commit, not a second one
    got = await store.get_instance(SERVICE, "i-2")
    assert got.create_revision == got.mod_revision == committed


async def test_replace_instance_compares_the_mod_revision(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    current = await store.get_instance(SERVICE, "i-1")
    drained = replace(current, weight=0, drained=True, drained_weight=current.weight)
    revision = await store.replace_instance(current, drained)
    assert revision is not None and revision > current.mod_revision
    assert await store.replace_instance(current, drained) == revision  # retry of a committed replace
    assert await store.replace_instance(current, replace(current, weight=5)) is None  # stale
    got = await store.get_instance(SERVICE, "i-1")
    assert (got.drained, got.weight, got.lease_id) == (True, 0, lease.lease_id)


async def test_writes_on_a_lease_that_is_gone_are_not_found(store: EtcdStore) -> None:
    live, gone = await store.grant_lease(30), await store.grant_lease(30)
    await store.revoke_lease(gone.lease_id)
    outcomes = await store.put_instances(
        [InstanceWrite(inst(1), live.lease_id), InstanceWrite(inst(2), gone.lease_id)]
    )
    assert isinstance(outcomes[0], int)
    assert isinstance(outcomes[1], NotFound)
    assert str(outcomes[1]) == f"lease 0x{gone.lease_id:x} not found (expired or revoked)"
    with pytest.raises(NotFound, match="not found"):
        await store.keep_alive(gone.lease_id)
    with pytest.raises(NotFound, match=f"lease 0x{gone.lease_id:x}"):
        await store.revoke_lease(gone.lease_id)


async def test_revoking_a_lease_deletes_its_instances(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    revision = revisions(
        await store.put_instances([InstanceWrite(inst(n), lease.lease_id) for n in range(3)])
    )[0]
    revoked_at = await store.revoke_lease(lease.lease_id)
    assert revoked_at > revision
    assert (await store.snapshot()).instances == []
    events = await collect(store, revision + 1, revoked_at)
    assert sorted(summary(events)) == [("delete", SERVICE, f"i-{n}", revoked_at) for n in range(3)]


async def test_lease_expiry_deletes_instances_and_the_watch_sees_it(store: EtcdStore) -> None:
    lease = await store.grant_lease(1)
    revision = revisions(
        await store.put_instances([InstanceWrite(inst(n), lease.lease_id) for n in range(2)])
    )[0]
    events: list[StoreEvent] = []
    async with asyncio.timeout(8), contextlib.aclosing(store.watch(revision + 1)) as batches:
        async for batch in batches:
            events.extend(batch.events)
            if len(events) == 2:
                break
    assert sorted((e.service, e.instance_id) for e in events if isinstance(e, InstanceDeleted)) == [
        (SERVICE, "i-0"),
        (SERVICE, "i-1"),
    ]
    with pytest.raises(NotFound):
        await store.get_instance(SERVICE, "i-0")
    with pytest.raises(NotFound):
        await store.keep_alive(lease.lease_id)


async def test_keep_alive_keeps_instances_past_their_ttl(store: EtcdStore) -> None:
    a, b = await store.grant_lease(1), await store.grant_lease(2)
    revisions(
        await store.put_instances([InstanceWrite(inst(1), a.lease_id), InstanceWrite(inst(2), b.lease_id)])
    )
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # many refreshes for two leases share one stream
        assert tuple(await asyncio.gather(store.keep_alive(a.lease_id), store.keep_alive(b.lease_id))) == (
            1,
            2,
        )
        await asyncio.sleep(0.25)
    assert (await store.get_instance(SERVICE, "i-1")).lease_id == a.lease_id
    assert (await store.get_instance(SERVICE, "i-2")).lease_id == b.lease_id


async def test_snapshot_pages_through_10k_instances_at_one_revision(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await store.grant_lease(60)
    base = [InstanceWrite(inst(n, service=f"s{n % 10}.test"), lease.lease_id) for n in range(10_050)]
    revisions(await store.put_instances(base))
    page_revisions: list[int] = []
    read_page = store._range_page

    async def spy(start: bytes, end: bytes, revision: int) -> object:
        page_revisions.append(revision)
        return await read_page(start, end, revision)

    monkeypatch.setattr(store, "_range_page", spy)
    extra: dict[str, int] = {}

    async def write_more() -> None:  # commits while the snapshot pages
        for n in range(20_000, 20_200):
            [revision] = revisions(await store.put_instances([InstanceWrite(inst(n), lease.lease_id)]))
            extra[f"i-{n}"] = revision

    writer = asyncio.create_task(write_more())
    await asyncio.sleep(0.01)
    snapshot = await store.snapshot()
    await writer
    assert len(page_revisions) == 2 and page_revisions[1] == snapshot.revision
    expected = {w.instance.instance_id for w in base} | {
        i for i, r in extra.items() if r <= snapshot.revision
    }
    assert {i.instance_id for i in snapshot.instances} == expected
    assert max(i.mod_revision for i in snapshot.instances) <= snapshot.revision


async def test_watch_from_a_revision_yields_exactly_the_later_events_in_order(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    [r1] = revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    [r2] = revisions(await store.put_instances([InstanceWrite(inst(2), lease.lease_id)]))
    current = await store.get_instance(SERVICE, "i-1")
    r3 = await store.replace_instance(current, replace(current, weight=3))
    r4 = await store.delete_instance(SERVICE, "i-2")
    assert r3 is not None and r1 < r2 < r3 < r4
    events = await collect(store, r2, r4)
    assert summary(events) == [
        ("put", SERVICE, "i-2", r2),
        ("put", SERVICE, "i-1", r3),
        ("delete", SERVICE, "i-2", r4),
    ]
    assert isinstance(events[1], InstancePut) and events[1].instance.weight == 3


async def test_an_idle_watch_reports_progress(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    [revision] = revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    batches: list[WatchBatch] = []
    async with asyncio.timeout(8), contextlib.aclosing(store.watch(revision + 1)) as stream:
        async for batch in stream:
            batches.append(batch)
            break
    assert batches[0].events == () and batches[0].revision >= revision


async def test_a_malformed_record_is_skipped_not_fatal(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    [r1] = revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    bad = replace(inst(2), lease_id=0)
    await _put_raw(store, store._keys.instance_key(SERVICE, "i-2"), b'{"v":99}')
    [r3] = revisions(await store.put_instances([InstanceWrite(inst(3), lease.lease_id)]))
    assert [i.instance_id for i in (await store.snapshot()).instances] == ["i-1", "i-3"]
    assert summary(await collect(store, r1, r3)) == [("put", SERVICE, "i-1", r1), ("put", SERVICE, "i-3", r3)]
    with pytest.raises(NotFound):
        await store.get_instance(bad.service, bad.instance_id)


async def test_a_watch_from_a_compacted_revision_raises_compacted(store: EtcdStore) -> None:
    lease = await store.grant_lease(30)
    [r1] = revisions(await store.put_instances([InstanceWrite(inst(1), lease.lease_id)]))
    [r2] = revisions(await store.put_instances([InstanceWrite(inst(2), lease.lease_id)]))
    await store.compact(r2)
    await store.compact(r2)  # again: a no-op
    with pytest.raises(Compacted) as info:
        await collect(store, r1, r2)
    assert info.value.compact_revision == r2
    assert summary(await collect(store, r2, r2)) == [("put", SERVICE, "i-2", r2)]


async def _put_raw(store: EtcdStore, key: bytes, value: bytes) -> None:
    """Write bytes the store would never write (a record from a broken or future writer)."""
    from aetcd import rpc

    await store._pool.call("raw put", lambda c, t: c.kv.Put(rpc.PutRequest(key=key, value=value), timeout=t))


# -- three members ------------------------------------------------------------


@pytest.mark.cluster
async def test_killing_the_connected_member_loses_nothing(
    etcd_cluster3: LocalEtcdCluster, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, prefix=etcd_prefix, max_txn_ops=1024)
    try:
        lease = await store.grant_lease(30)
        start = revisions(
            await store.put_instances([InstanceWrite(inst(n), lease.lease_id) for n in range(20)])
        )[0]
        assert (await store.cluster_status()).endpoint == etcd_cluster3.endpoints[0]
        seen: list[StoreEvent] = []
        last_seen = asyncio.Event()
        expected: list[tuple[str, str, str, int]] = []

        async def watch() -> None:
            async with contextlib.aclosing(store.watch(start + 1)) as batches:
                async for batch in batches:
                    seen.extend(batch.events)
                    if expected and batch.revision >= expected[-1][3]:
                        last_seen.set()

        watcher = asyncio.create_task(watch())
        try:
            before = [await _put_one(store, inst(n), lease.lease_id) for n in range(20, 30)]
            assert await store.keep_alive(lease.lease_id) == 30  # the keep-alive stream is on member 0 too
            etcd_cluster3.members[0].kill()
            after = [await _put_one(store, inst(n), lease.lease_id) for n in range(30, 40)]
            assert await store.keep_alive(lease.lease_id) == 30
            expected[:] = [
                ("put", SERVICE, f"i-{n}", r) for n, r in zip(range(20, 40), before + after, strict=True)
            ]
            async with asyncio.timeout(15):
                await last_seen.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        assert summary(seen) == expected
        snapshot = await store.snapshot()
        assert sorted(i.instance_id for i in snapshot.instances) == sorted(f"i-{n}" for n in range(40))
        assert (await store.get_instance(SERVICE, "i-0")).lease_id == lease.lease_id
        assert (await store.cluster_status()).endpoint != etcd_cluster3.endpoints[0]
    finally:
        await store.close()


async def _put_one(store: EtcdStore, instance: Instance, lease_id: int) -> int:
    [revision] = revisions(await store.put_instances([InstanceWrite(instance, lease_id)]))
    return revision


@pytest.mark.cluster
async def test_with_every_member_down_calls_fail_unavailable_in_time(
    etcd_cluster3: LocalEtcdCluster, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, prefix=etcd_prefix, request_timeout=1.5)
    try:
        lease = await store.grant_lease(30)
        etcd_cluster3.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await store.get_instance(SERVICE, "i-1")
        assert time.monotonic() - started < 3.0
        assert all(endpoint in str(info.value) for endpoint in etcd_cluster3.endpoints)
        [outcome] = await store.put_instances([InstanceWrite(inst(1), lease.lease_id)])
        assert isinstance(outcome, Unavailable)
        with pytest.raises(Unavailable):
            async with contextlib.aclosing(store.watch(1)) as batches:
                await anext(batches)
        assert time.monotonic() - started < 8.0
    finally:
        await store.close()


@pytest.mark.cluster
async def test_cluster_status_reports_members_leader_and_unreachable_ones(
    etcd_cluster3: LocalEtcdCluster, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, prefix=etcd_prefix, db_quota_bytes=123 * 1024**2)
    try:
        status = await store.cluster_status()
        assert len(status.members) == 3 and all(m.reachable for m in status.members)
        [leader] = [m for m in status.members if m.is_leader]
        assert leader.member_id == status.leader_id != 0
        assert status.revision >= 1 and status.db_size_bytes > 0 and status.db_quota_bytes == 123 * 1024**2
        assert {m.version[:4] for m in status.members} == {"3.4."}
        follower = next(m for m in etcd_cluster3.members if m.name != leader.name)
        follower.kill()
        after = await store.cluster_status()
        [down] = [m for m in after.members if not m.reachable]
        assert down.name == follower.name and down.error
        assert after.leader_id == status.leader_id
        follower.restart()  # rejoins from its data dir
        assert all(m.reachable for m in (await store.cluster_status()).members)
    finally:
        await store.close()


def test_a_missing_etcd_binary_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(EtcdNotInstalled, match=r"make system-deps.*etcd-server"):
        LocalEtcdCluster(tmp_path, etcd_binary=str(tmp_path / "no-etcd"))
