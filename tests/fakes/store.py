"""In-memory `Store` honouring the same contract as `EtcdStore` (for unit tests only).

Revisions rise by one per committed write (a whole batch shares one revision,
like one etcd transaction); leases expire when the test calls `expire` or
`advance`; `watch` replays the retained log then follows new commits;
`compact(r)` drops the log up to r, after which watching from r or earlier
raises `Compacted`. `fail_next` makes calls raise `Unavailable`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

from registry import names
from registry.errors import AlreadyExists, NotFound, Unavailable
from registry.model import Instance
from registry.raft.store import (
    ClusterStatus,
    Compacted,
    InstanceDeleted,
    InstancePut,
    InstanceWrite,
    Lease,
    MemberStatus,
    ReplicaRecord,
    Snapshot,
    StoreEvent,
    WatchBatch,
    WriteOutcome,
)


class FakeStore:
    def __init__(self) -> None:
        self.revision = 1
        self.instances: dict[tuple[str, str], Instance] = {}
        self.claims: dict[str, str] = {}
        self.leases: dict[int, float] = {}  # lease id -> remaining ttl
        self._ttl: dict[int, int] = {}
        self._next_lease = 0x1000
        self.log: list[StoreEvent] = []
        self.compacted = 0
        self._changed = asyncio.Condition()
        self.fail_next = 0
        self.put_calls = 0
        self.replicas: dict[str, tuple[ReplicaRecord, int]] = {}  # replica id -> (record, lease)

    def _check(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("fake etcd is down")

    async def _commit(self, events: list[StoreEvent]) -> None:
        self.log.extend(events)
        async with self._changed:
            self._changed.notify_all()

    # ---- leases ----
    async def grant_lease(self, ttl_seconds: int) -> Lease:
        self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = ttl_seconds
        self._ttl[self._next_lease] = ttl_seconds
        return Lease(self._next_lease, ttl_seconds)

    async def keep_alive(self, lease_id: int) -> int:
        self._check()
        if lease_id not in self.leases:
            raise NotFound(f"lease {lease_id:#x} not found")
        self.leases[lease_id] = self._ttl[lease_id]
        return self._ttl[lease_id]

    async def revoke_lease(self, lease_id: int) -> int:
        self._check()
        if lease_id not in self.leases:
            raise NotFound(f"lease {lease_id:#x} not found")
        await self.expire(lease_id)
        return self.revision

    async def expire(self, lease_id: int) -> None:
        """End a lease now, deleting its instances in one revision."""
        del self.leases[lease_id]
        self.replicas = {k: v for k, v in self.replicas.items() if v[1] != lease_id}
        doomed = [k for k, i in self.instances.items() if i.lease_id == lease_id]
        if doomed:
            self.revision += 1
            for key in doomed:
                del self.instances[key]
            await self._commit([InstanceDeleted(s, i, self.revision) for s, i in doomed])

    async def lease_time_left(self, lease_id: int) -> int:
        self._check()
        return int(self.leases[lease_id]) if lease_id in self.leases else -1

    async def announce_replica(self, record: ReplicaRecord, lease_id: int) -> None:
        self._check()
        if lease_id not in self.leases:
            raise NotFound(f"lease {lease_id:#x} not found")
        self.revision += 1
        self.replicas[record.replica_id] = (record, lease_id)

    async def advance(self, seconds: float) -> None:
        """Let time pass: leases whose TTL runs out expire."""
        for lease_id in list(self.leases):
            self.leases[lease_id] -= seconds
            if self.leases[lease_id] <= 0:
                await self.expire(lease_id)

    # ---- writes ----
    async def put_instances(self, writes: Sequence[InstanceWrite]) -> list[WriteOutcome]:
        self._check()
        self.put_calls += 1
        outcomes: list[WriteOutcome] = []
        events: list[StoreEvent] = []
        rev = self.revision + 1
        for w in writes:
            err = self._refusal(w)
            if err is not None:
                outcomes.append(err)
                continue
            inst = w.instance
            old = self.instances.get(inst.key)
            self.claims[names.service_id(inst.service).hex()] = inst.service
            stored = dataclasses.replace(
                inst,
                lease_id=w.lease_id,
                create_revision=old.create_revision if old else rev,
                mod_revision=rev,
            )
            self.instances[inst.key] = stored
            events.append(InstancePut(stored, rev))
            outcomes.append(rev)
        if events:
            self.revision = rev
            await self._commit(events)
        return outcomes

    def _refusal(self, w: InstanceWrite) -> AlreadyExists | NotFound | None:
        if w.lease_id not in self.leases:
            return NotFound(f"lease {w.lease_id:#x} not found (expired or revoked)")
        sid = names.service_id(w.instance.service).hex()
        owner = self.claims.get(sid)
        if owner is not None and owner != w.instance.service:
            return AlreadyExists(f"service {w.instance.service} has the same ID {sid} as {owner}")
        old = self.instances.get(w.instance.key)
        if old is not None and old.lease_id != w.lease_id and not w.replace:
            return AlreadyExists(f"instance {w.instance.instance_id} is held by lease {old.lease_id:#x}")
        return None

    async def delete_instance(self, service: str, instance_id: str) -> int:
        self._check()
        if (service, instance_id) not in self.instances:
            raise NotFound(f"instance {instance_id} of {service} not found")
        del self.instances[(service, instance_id)]
        self.revision += 1
        await self._commit([InstanceDeleted(service, instance_id, self.revision)])
        return self.revision

    async def get_instance(self, service: str, instance_id: str) -> Instance:
        self._check()
        try:
            return self.instances[(service, instance_id)]
        except KeyError:
            raise NotFound(f"instance {instance_id} of {service} not found") from None

    async def replace_instance(self, old: Instance, new: Instance) -> int | None:
        self._check()
        current = self.instances.get(old.key)
        if current is None or current.mod_revision != old.mod_revision:
            return None
        self.revision += 1
        stored = dataclasses.replace(new, lease_id=old.lease_id, mod_revision=self.revision)
        self.instances[old.key] = stored
        await self._commit([InstancePut(stored, self.revision)])
        return self.revision

    # ---- reads ----
    async def snapshot(self) -> Snapshot:
        self._check()
        return Snapshot(list(self.instances.values()), self.revision)

    async def watch(self, from_revision: int) -> AsyncIterator[WatchBatch]:
        self._check()
        if from_revision <= self.compacted:
            raise Compacted(self.compacted)
        seen = from_revision - 1
        while True:
            pending = [e for e in self.log if e.revision > seen]
            if pending:
                seen = pending[-1].revision
                yield WatchBatch(seen, pending)
            async with self._changed:
                if not self.log or self.log[-1].revision <= seen:
                    await self._changed.wait()

    async def compact(self, revision: int) -> None:
        self.compacted = revision
        self.log = [e for e in self.log if e.revision > revision]

    async def cluster_status(self) -> ClusterStatus:
        self._check()
        member = MemberStatus(1, "fake", ("fake://0",), True, True, 4096, "fake")
        return ClusterStatus(
            (member,),
            1,
            self.revision,
            4096,
            2 * 1024**3,
            "fake://0",
            compact_revision=self.compacted,
            replicas=tuple(record for _, (record, _lease) in sorted(self.replicas.items())),
        )

    async def close(self) -> None:
        pass
