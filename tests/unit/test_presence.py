"""The replica announcement loop (`registry.presence`) over the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from registry import presence
from registry.raft.store import ReplicaRecord
from tests.fakes.store import FakeStore

RECORD = ReplicaRecord("r1", "10.0.0.1:7070", "0.1.0", 1)


async def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(round(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_announces_refreshes_reannounces_after_expiry_and_revokes_on_cancel() -> None:
    store = FakeStore()
    task = asyncio.create_task(presence.announce(store, RECORD, ttl=5, interval=0.01))
    await wait_for(lambda: "r1" in store.replicas)
    first_lease = store.replicas["r1"][1]
    await store.advance(4)  # the refreshes keep the lease at its full TTL
    await asyncio.sleep(0.05)
    assert store.leases[first_lease] == 5
    await store.expire(first_lease)  # etcd lost the lease (e.g. unreachable for longer than its TTL)
    assert "r1" not in store.replicas
    await wait_for(lambda: "r1" in store.replicas)
    second_lease = store.replicas["r1"][1]
    assert second_lease != first_lease
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "r1" not in store.replicas and second_lease not in store.leases


async def test_keeps_trying_while_etcd_is_unavailable() -> None:
    store = FakeStore()
    store.fail_next = 5
    task = asyncio.create_task(presence.announce(store, RECORD, ttl=5, interval=0.01))
    await wait_for(lambda: "r1" in store.replicas)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
