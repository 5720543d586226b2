"""`EtcdStore`: the `Store` over a real etcd cluster (aetcd's gRPC stubs).

Contract: the `Store` protocol (see `store`), plus what etcd adds: any method
may raise `Unavailable` after `request_timeout` without a member answering
(`put_instances` reports it per write instead), and a retried call is safe.
Retried writes are compare-and-swap and recognise their own commit; a retried
delete or revoke that finds nothing counts as done.

This module composes the store from its parts, and holds the calls that need
nothing more than one request with failover (leases, delete, reads, compact,
replica announcements):
- `connection`: endpoint pool, failover and retry budget, error translation;
- `writes`: `put_instances` and `replace_instance` as `plan`'s transactions;
- `keepalive`: the one lease keep-alive stream shared by all refreshes;
- `watch`: the instance watch stream, re-created across endpoint failures;
- `status`: cluster status, member by member, and etcd's last compaction.
Every decision that can be pure lives elsewhere: keys in `keys`, record
encoding in `records`, what to compare and put in `plan`, protobuf
conversions in `convert`.

Concurrency: all methods may be called concurrently from one event loop.
`close()` ends the keep-alive stream and closes every channel; a watch still
open then ends with `Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from aetcd import rpc

from registry.errors import NotFound, Unavailable
from registry.model import Instance
from registry.raft import plan
from registry.raft.connection import (
    REQUIRE_LEADER,
    Connection,
    LeaseNotFound,
    Pool,
    RevisionCompacted,
    translate,
)
from registry.raft.convert import decode_instance
from registry.raft.keepalive import KeepAlive
from registry.raft.keys import KeySchema, range_end
from registry.raft.records import RecordError, decode_replica, encode_replica
from registry.raft.status import cluster_status, compact_revision
from registry.raft.store import (
    ClusterStatus,
    InstanceWrite,
    Lease,
    ReplicaRecord,
    Snapshot,
    WatchBatch,
    WriteOutcome,
)
from registry.raft.watch import watch_instances
from registry.raft.writes import InstanceWriter

if TYPE_CHECKING:
    from registry.raft.store import Store

# aetcd's generated protobuf modules are untyped; `_Pb` marks a protobuf message.
_Pb = Any

log = logging.getLogger(__name__)

_SNAPSHOT_ATTEMPTS = 3


class EtcdStore:
    """The registry's `Store` on etcd. See the module docstring for failover and retries."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/serval",
        request_timeout: float = 5.0,
        db_quota_bytes: int = 2 * 1024**3,
        max_txn_ops: int = 128,
        snapshot_page_size: int = 10_000,
    ) -> None:
        """Connects lazily. `max_txn_ops` must not exceed the servers' ``--max-txn-ops``."""
        self._pool = Pool(endpoints, request_timeout)
        self._keys = KeySchema(prefix)
        self._db_quota_bytes = db_quota_bytes
        self._page_size = snapshot_page_size
        self._writer = InstanceWriter(self._pool, self._keys, plan.TxnLimits(max_ops=max_txn_ops))
        self._keepalive = KeepAlive(self._pool)

    # -- leases ---------------------------------------------------------------

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        """Grant a lease; a retried grant may leave an unused lease that simply expires."""
        response = await self._pool.call(
            "lease grant",
            lambda c, t: c.lease.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl_seconds), timeout=t, metadata=REQUIRE_LEADER
            ),
        )
        if response.error:
            raise Unavailable(f"etcd refused to grant a lease: {response.error}")
        return Lease(lease_id=int(response.ID), ttl_seconds=int(response.TTL))

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh over the store's one keep-alive stream; `NotFound` once the lease is gone."""
        return await self._keepalive.refresh(lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        """Revoke; `NotFound` if etcd does not know the lease.

        If an earlier attempt may have reached etcd (the call was retried), a
        missing lease counts as revoked by that attempt.
        """
        attempts = 0

        async def revoke(c: Connection, t: float) -> int:
            nonlocal attempts
            attempts += 1
            try:
                response = await c.lease.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease_id), timeout=t, metadata=REQUIRE_LEADER
                )
            except rpc.AioRpcError as e:
                if attempts > 1 and isinstance(translate(e), LeaseNotFound):
                    return await self._current_revision(c, t)
                raise
            return int(response.header.revision)

        try:
            return await self._pool.call("lease revoke", revoke)
        except LeaseNotFound:
            raise plan.lease_not_found(lease_id) from None

    async def lease_time_left(self, lease_id: int) -> int:
        """Whole seconds the lease has left (etcd's LeaseTimeToLive); -1 once it is gone."""
        response = await self._pool.call(
            "lease time-to-live",
            lambda c, t: c.lease.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=t),
        )
        return max(-1, int(response.TTL))

    async def announce_replica(self, record: ReplicaRecord, lease_id: int) -> None:
        """Put the replica's announcement on `lease_id`; `NotFound` if the lease is gone."""
        request = rpc.PutRequest(
            key=self._keys.replica_key(record.replica_id), value=encode_replica(record), lease=lease_id
        )
        try:
            await self._pool.call(
                "replica announcement", lambda c, t: c.kv.Put(request, timeout=t, metadata=REQUIRE_LEADER)
            )
        except LeaseNotFound:
            raise plan.lease_not_found(lease_id) from None

    # -- instance writes ------------------------------------------------------

    async def put_instances(self, writes: Sequence[InstanceWrite]) -> list[WriteOutcome]:
        """Commit `writes` (group commit on the fast path); one outcome per write, in order.

        Writes to the same instance key apply in batch order. Never raises
        `Unavailable`: each write that could not be confirmed gets it as its
        outcome (it may or may not have been applied; retrying is safe), so
        the successes before it are still reported.
        """
        return await self._writer.put_instances(writes)

    async def delete_instance(self, service: str, instance_id: str) -> int:
        """Delete; `NotFound` if absent (unless a retried attempt may have deleted it)."""
        key = self._keys.instance_key(service, instance_id)
        attempts = 0

        async def delete(c: Connection, t: float) -> tuple[int, int]:
            nonlocal attempts
            attempts += 1
            response = await c.kv.DeleteRange(
                rpc.DeleteRangeRequest(key=key), timeout=t, metadata=REQUIRE_LEADER
            )
            return int(response.deleted), int(response.header.revision)

        deleted, revision = await self._pool.call(f"delete of instance {instance_id} of {service}", delete)
        if deleted == 0 and attempts == 1:
            raise NotFound(f"instance {instance_id!r} of service {service!r} not found")
        return revision

    async def replace_instance(self, old: Instance, new: Instance) -> int | None:
        """Compare-and-swap on `old.mod_revision`, keeping `old.lease_id`; None if the record moved.

        If the record is already exactly `new` on that lease (a retried call
        that committed), return its revision.
        """
        return await self._writer.replace_instance(old, new)

    # -- reads ----------------------------------------------------------------

    async def get_instance(self, service: str, instance_id: str) -> Instance:
        """Linearizable read; `NotFound` if absent or if its record cannot be decoded (logged)."""
        key = self._keys.instance_key(service, instance_id)
        response = await self._pool.call(
            f"read of instance {instance_id} of {service}",
            lambda c, t: c.kv.Range(rpc.RangeRequest(key=key), timeout=t, metadata=REQUIRE_LEADER),
        )
        instance = decode_instance(self._keys, response.kvs[0]) if response.kvs else None
        if instance is None:
            raise NotFound(f"instance {instance_id!r} of service {service!r} not found")
        return instance

    async def snapshot(self) -> Snapshot:
        """Every decodable instance at one revision, read in pages of `snapshot_page_size` keys.

        If that revision is compacted while paging, start over (a few times).
        """
        for _ in range(_SNAPSHOT_ATTEMPTS):
            with contextlib.suppress(RevisionCompacted):
                return await self._snapshot_once()
        raise Unavailable(f"snapshot kept losing its revision to compaction ({_SNAPSHOT_ATTEMPTS} attempts)")

    async def _snapshot_once(self) -> Snapshot:
        start, end = self._keys.instances_prefix, range_end(self._keys.instances_prefix)
        revision = 0
        instances: list[Instance] = []
        while True:
            response = await self._range_page(start, end, revision)
            revision = revision or int(response.header.revision)
            instances += [
                i for i in (decode_instance(self._keys, kv) for kv in response.kvs) if i is not None
            ]
            if not response.more or not response.kvs:
                return Snapshot(instances=instances, revision=revision)
            start = bytes(response.kvs[-1].key) + b"\0"

    def watch(self, from_revision: int) -> AsyncGenerator[WatchBatch, None]:
        """Batches of every instance change from `from_revision` on, across endpoint failures.

        A broken stream is re-created on the next endpoint from the revision
        after the last one yielded; `Unavailable` if that fails for
        `request_timeout`, `Compacted` if the history is gone. Batches carry
        whole revisions; an event batch's `revision` is its last event's.
        Close the iterator (``aclose``) to end the watch.
        """
        return watch_instances(self._pool, self._keys, from_revision)

    # -- operations -----------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision`; compacting an already compacted revision is a no-op."""
        request = rpc.CompactionRequest(revision=revision)
        with contextlib.suppress(RevisionCompacted):
            await self._pool.call(
                "compaction", lambda c, t: c.kv.Compact(request, timeout=t, metadata=REQUIRE_LEADER)
            )

    async def cluster_status(self) -> ClusterStatus:
        """Members and each one's own status (unreachable ones flagged, not raised), etcd's
        last compaction and the replica announcements (undecodable ones logged, skipped)."""
        status, compacted, replicas = await asyncio.gather(
            cluster_status(self._pool, self._db_quota_bytes),
            compact_revision(self._pool),
            self._replicas(),
        )
        return dataclasses.replace(status, compact_revision=compacted, replicas=replicas)

    async def _replicas(self) -> tuple[ReplicaRecord, ...]:
        prefix = self._keys.replicas_prefix
        request = rpc.RangeRequest(key=prefix, range_end=range_end(prefix))
        response = await self._pool.call("replica list", lambda c, t: c.kv.Range(request, timeout=t))
        records = []
        for kv in response.kvs:
            try:
                records.append(decode_replica(bytes(kv.value)))
            except RecordError as e:
                log.warning("skipping replica announcement %r: %s", bytes(kv.key), e)
        return tuple(sorted(records, key=lambda r: r.replica_id))

    async def close(self) -> None:
        """End the keep-alive stream and close every connection; the store is unusable afterwards."""
        await self._keepalive.close()
        await self._pool.close()

    # -- helpers --------------------------------------------------------------

    async def _range_page(self, start: bytes, end: bytes, revision: int) -> _Pb:
        request = rpc.RangeRequest(key=start, range_end=end, limit=self._page_size, revision=revision)
        return await self._pool.call(
            "snapshot page", lambda c, t: c.kv.Range(request, timeout=t, metadata=REQUIRE_LEADER)
        )

    async def _current_revision(self, conn: Connection, timeout: float) -> int:
        request = rpc.RangeRequest(key=self._keys.instances_prefix, count_only=True)
        response = await conn.kv.Range(request, timeout=timeout, metadata=REQUIRE_LEADER)
        return int(response.header.revision)


if TYPE_CHECKING:

    def _conforms(store: EtcdStore) -> Store:  # mypy checks EtcdStore against the protocol
        return store
