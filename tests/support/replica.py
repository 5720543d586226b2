"""A real registry replica for tests, over a real etcd (`tests.support.etcd`).

- `started_replica(endpoints, prefix, replica_id)`: one replica on 127.0.0.1 (any
  port), ready to serve; yields the `Replica` and stops it on exit.
- `running_replica(endpoints, prefix)`: that, yielding its "host:port" target.
- `registry_target`: that, as a fixture over `etcd_single` and the test's `etcd_prefix`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from registry.api.server import Replica, ReplicaConfig


@contextlib.asynccontextmanager
async def started_replica(
    etcd_endpoints: Sequence[str], prefix: str, replica_id: str = "r1"
) -> AsyncIterator[Replica]:
    """One replica on 127.0.0.1 (any port, `replica.port`), ready to serve; stopped on exit."""
    replica = Replica(
        ReplicaConfig(
            etcd_endpoints=list(etcd_endpoints),
            listen="127.0.0.1:0",
            prefix=prefix,
            replica_id=replica_id,
            progress_interval=0.5,
            etcd_timeout=3.0,
        )
    )
    await replica.start()
    try:
        await replica.wait_ready(15)
        yield replica
    finally:
        await replica.stop(grace=0.2)


@contextlib.asynccontextmanager
async def running_replica(etcd_endpoints: Sequence[str], prefix: str) -> AsyncIterator[str]:
    async with started_replica(etcd_endpoints, prefix) as replica:
        yield f"127.0.0.1:{replica.port}"


@pytest.fixture
async def registry_target(etcd_single: Any, etcd_prefix: str) -> AsyncIterator[str]:
    async with running_replica(etcd_single.endpoints, etcd_prefix) as target:
        yield target
