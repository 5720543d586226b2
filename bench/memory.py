"""Phase 3: resident memory of one replica holding many instances, with many subscribers.

The instances are registered through the gRPC API of the measured replica
itself (`bench.load.bulk_worker`: `load_workers` processes x `load_coroutines`
loops, each loop on one long session), spread over `memory_services`
services. Once the replica's view holds all of them, its RSS is read
(``before subscribers``). Then `memory_subscribers` watch streams connect:
`memory_snapshots` of them take the full snapshot; the others resume from
the view's current revision, as a subscriber that already holds the state
does (they get one PROGRESS message). With every stream connected and idle,
RSS is read again; VmHWM is the peak over the replica's life, loading
included.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import RegistryProcess, Settings, proc_status_kb, progress, tcp_connections
from bench.load import BulkJob, BulkResult, bulk_worker
from bench.subscribers import Subscribers, split_jobs
from bench.workers import Workers
from registry.api.client import RegistryClient

SETTLE_S = 2.0  # let the replica finish what it was doing before reading RSS


async def measure_memory(settings: Settings, replica: RegistryProcess) -> dict[str, Any]:
    """RSS when idle, after loading, with subscribers connected, and the peak (see module docstring)."""
    idle_kb = proc_status_kb(replica.pid)["VmRSS"]
    load = await load_instances(settings, replica.target)
    client = RegistryClient([replica.target], timeout=30)
    try:
        view_revision = await wait_for_view(client, settings.memory_instances, load["max_revision"])
        await asyncio.sleep(SETTLE_S)
        loaded_kb = proc_status_kb(replica.pid)["VmRSS"]
        subs = await connect_subscribers(settings, replica, client, view_revision)
    finally:
        await client.close()
    return {
        "instances": settings.memory_instances,
        "services": settings.memory_services,
        "loaded_via": "gRPC Register on the measured replica",
        "load": load,
        "rss_idle_mb": idle_kb / 1024,
        "rss_before_subscribers_mb": loaded_kb / 1024,
        **subs,
    }


async def load_instances(settings: Settings, target: str) -> dict[str, Any]:
    """Register `memory_instances` instances through the API; how long it took."""
    progress(f"memory: registering {settings.memory_instances:,} instances")
    jobs = [
        BulkJob(
            target=target,
            first=w,
            step=settings.load_workers,
            total=settings.memory_instances,
            coroutines=settings.load_coroutines,
            services=settings.memory_services,
            zone="mem",
        )
        for w in range(settings.load_workers)
    ]
    started = time.monotonic()
    with Workers("bulk-load", bulk_worker, jobs) as workers:
        results: list[BulkResult] = await workers.collect("result", timeout=900)
    seconds = time.monotonic() - started
    registered = sum(r.registered for r in results)
    return {
        "registered": registered,
        "seconds": round(seconds, 2),
        "per_s": registered / seconds,
        "max_revision": max(r.max_revision for r in results),
    }


async def wait_for_view(client: RegistryClient, instances: int, revision: int, timeout: float = 60) -> int:
    """Wait until the replica's view holds `instances` at `revision` or later; its revision."""
    deadline = time.monotonic() + timeout
    while True:
        status = await client.cluster_status()
        if status.instances >= instances and status.view_revision >= revision:
            return int(status.view_revision)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"replica view holds {status.instances} of {instances} instances after {timeout}s"
            )
        await asyncio.sleep(0.2)


async def connect_subscribers(
    settings: Settings, replica: RegistryProcess, client: RegistryClient, view_revision: int
) -> dict[str, Any]:
    """Connect the subscribers, read RSS while they are connected, disconnect them."""
    progress(f"memory: connecting {settings.memory_subscribers:,} subscribers")
    n, fresh = settings.memory_subscribers, settings.memory_snapshots
    subscribers = [(f"bench/memory/{i}", 0 if i < fresh else view_revision) for i in range(n)]
    jobs = split_jobs(replica.target, subscribers, settings.subscriber_workers)
    async with Subscribers("memory-subscribers", jobs) as subs:
        await asyncio.sleep(SETTLE_S)
        connected = proc_status_kb(replica.pid)
        connections = tcp_connections(replica.pid)
        status = await client.cluster_status()
        await subs.drain()
        reports = await subs.reports()
    return {
        "subscribers": n,
        "subscribers_seen_by_replica": len(status.subscribers),
        "replica_tcp_connections": connections,
        "took_snapshot": sum(1 for r in reports if r.took_snapshot),
        "snapshot_instances_each": max((r.snapshot_instances for r in reports), default=0),
        "resumed_from_revision": view_revision,
        "connect_s": round(subs.connect_s, 2),
        "rss_with_subscribers_mb": connected["VmRSS"] / 1024,
        "rss_peak_mb": connected["VmHWM"] / 1024,
    }
