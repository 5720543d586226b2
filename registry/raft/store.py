"""The `Store` seam: everything the registry needs from etcd, and nothing more.

`registry.raft.etcd.EtcdStore` implements it over a real etcd cluster;
`tests/fakes/store.py` keeps an in-memory implementation with the same
contract (revisions, leases, watch order) for unit tests of the pure cores.

Contract shared by every implementation:
- Revisions are etcd's: one global counter, raised by every committed write.
  Every write method returns the revision at which it committed.
- An instance lives exactly as long as its lease. When a lease expires or is
  revoked every instance on it is deleted, and watchers see DELETE events.
- `put_instances` commits a batch of writes (one etcd transaction on the fast
  path) and reports one outcome per write, in order. A write that fails its
  precondition never hides another write's success: only acknowledged
  (returned as a revision) writes are durable, and they always are.
- `watch(from_revision)` yields every change with revision >= `from_revision`
  in revision order, grouped so that a `WatchBatch` never splits a revision.
  If that history was compacted it raises `Compacted`. Batches with no events
  report progress (the store has reached `revision`).
- Any method may raise `registry.errors.Unavailable` when no etcd member can
  answer in time; nothing was applied in that case unless the method says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from registry.errors import RegistryError
from registry.model import Instance


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease (one per registering client session)."""

    lease_id: int
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class InstanceWrite:
    """Create or replace one instance on `lease_id`.

    The write is refused with `AlreadyExists` when the service name's ID is
    claimed by a different name, or when the instance exists on another lease
    and `replace` is false; with `NotFound` when the lease does not exist.
    """

    instance: Instance
    lease_id: int
    replace: bool = False


# One outcome per write: the commit revision, or the domain error that refused it.
WriteOutcome = int | RegistryError


@dataclass(frozen=True, slots=True)
class InstancePut:
    """An instance was created or changed (the full new record)."""

    instance: Instance
    revision: int


@dataclass(frozen=True, slots=True)
class InstanceDeleted:
    """An instance was deregistered or its lease ended."""

    service: str
    instance_id: str
    revision: int


StoreEvent = InstancePut | InstanceDeleted


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more whole revisions, in order; `revision` is the last one seen."""

    revision: int
    events: Sequence[StoreEvent] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every instance at `revision` (a consistent read)."""

    instances: Sequence[Instance]
    revision: int


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One etcd member as seen by the store. `reachable` is False if its status call failed."""

    member_id: int
    name: str
    client_urls: tuple[str, ...]
    is_leader: bool
    reachable: bool
    db_size_bytes: int = 0
    version: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A registry replica's announcement of itself (kept under the replica's own lease)."""

    replica_id: str
    address: str
    version: str
    started_unix_ms: int


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The etcd cluster behind a store, and the registry replicas announced in it.

    `compact_revision` is etcd's last compaction (0: history was never
    compacted); `replicas` is every live announcement, by replica ID.
    """

    members: tuple[MemberStatus, ...]
    leader_id: int
    revision: int
    db_size_bytes: int
    db_quota_bytes: int
    endpoint: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    compact_revision: int = 0
    replicas: tuple[ReplicaRecord, ...] = ()


class Compacted(RegistryError):
    """The requested history was compacted away; list again, then watch."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd history is compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


class Store(Protocol):
    """Registry state in etcd. See the module docstring for the shared contract."""

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        """Grant a new lease of `ttl_seconds`."""
        ...

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh the lease; return its TTL afterwards. `NotFound` if it expired."""
        ...

    async def revoke_lease(self, lease_id: int) -> int:
        """Revoke the lease, deleting its instances. `NotFound` if it does not exist."""
        ...

    async def put_instances(self, writes: Sequence[InstanceWrite]) -> list[WriteOutcome]:
        """Commit the writes (see `InstanceWrite`); one outcome per write, in order."""
        ...

    async def delete_instance(self, service: str, instance_id: str) -> int:
        """Delete one instance; return the revision. `NotFound` if absent."""
        ...

    async def get_instance(self, service: str, instance_id: str) -> Instance:
        """Read one instance (linearizable). `NotFound` if absent."""
        ...

    async def replace_instance(self, old: Instance, new: Instance) -> int | None:
        """Write `new` over `old` iff the record is unchanged since `old.mod_revision`.

        Keeps the record's lease. Return the revision, or None if the record
        changed or vanished meanwhile (the caller re-reads and retries).
        """
        ...

    async def lease_time_left(self, lease_id: int) -> int:
        """Whole seconds `lease_id` has left; -1 if it has expired or never existed."""
        ...

    async def announce_replica(self, record: ReplicaRecord, lease_id: int) -> None:
        """Put (or overwrite) `record` on `lease_id`: it lives as long as that lease.

        `NotFound` if the lease does not exist (expired: grant a new one).
        """
        ...

    async def snapshot(self) -> Snapshot:
        """Every instance, read consistently at one revision."""
        ...

    def watch(self, from_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes from `from_revision` on (see module docstring); `Compacted` if gone."""
        ...

    async def compact(self, revision: int) -> None:
        """Compact etcd history up to `revision` (operations and tests)."""
        ...

    async def cluster_status(self) -> ClusterStatus:
        """Members, leader, revision, database size, last compaction; the announced replicas."""
        ...

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...
