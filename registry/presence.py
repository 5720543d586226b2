"""A replica's announcement of itself in etcd, kept alive under its own lease.

Contract: `announce(store, record, ttl, interval)` runs until cancelled. It
grants a lease of `ttl` seconds, puts `record` on it (`Store.announce_replica`)
and refreshes the lease every `interval` seconds (`interval` well under
`ttl`). While etcd is unavailable it retries every `interval`; a lease that
expired meanwhile (`NotFound`) is replaced by a new one and the record is put
again. When cancelled it revokes the lease (best effort, within `interval`),
so a replica that stops cleanly leaves the list at once and one that crashes
or loses etcd leaves it within `ttl`.

The announcements are what `ClusterStatus.replicas` lists: every replica
sees every other through etcd, with no configuration of peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from registry.errors import NotFound, RegistryError
from registry.raft.store import ReplicaRecord, Store

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 10
DEFAULT_INTERVAL_SECONDS = 3.0


async def announce(
    store: Store,
    record: ReplicaRecord,
    ttl: int = DEFAULT_TTL_SECONDS,
    interval: float = DEFAULT_INTERVAL_SECONDS,
) -> None:
    """Keep `record` announced until cancelled (see module docstring)."""
    lease_id, announced = 0, False
    try:
        while True:
            try:
                if lease_id == 0:
                    lease_id = (await store.grant_lease(ttl)).lease_id
                if not announced:
                    await store.announce_replica(record, lease_id)
                    announced = True
                    log.info("replica %s announced (lease %#x)", record.replica_id, lease_id)
                else:
                    await store.keep_alive(lease_id)
            except NotFound:
                log.warning(
                    "replica %s: its announcement's lease expired; announcing again", record.replica_id
                )
                lease_id, announced = 0, False
                continue
            except RegistryError as e:  # Unavailable and the like: keep trying
                log.warning("replica %s: cannot refresh its announcement: %s", record.replica_id, e)
            await asyncio.sleep(interval)
    finally:
        if lease_id:
            with contextlib.suppress(RegistryError, TimeoutError):
                async with asyncio.timeout(interval):
                    await store.revoke_lease(lease_id)
