"""Phase 1: registrations/s through the registry's gRPC API beside raw etcd puts/s.

Both runs use the same structure (see `bench.load`): `load_workers`
processes x `load_coroutines` loops = requests in flight, a warm-up, then a
fixed measurement window in which completed operations are counted. Raw etcd
goes first, then the registry, against the same single-node etcd. Besides
ops/s and latency, each run reports how many cores the replica, etcd, the
load generators and the whole machine kept busy during the window: on a small machine everything
(clients included) competes for the same CPUs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import CpuMeter, Settings, progress
from bench.load import LoadJob, LoadResult, load_worker
from bench.stats import latency_summary_ms
from bench.workers import Workers
from registry.api.client import RegistryClient

START_DELAY_NS = 300_000_000  # workers get the start time this far ahead


async def measure_throughput(
    settings: Settings, etcd_target: str, registry_target: str, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """Raw etcd puts, then registrations (unary Register, then RegisterStream).

    Returns ops/s, latency and busy cores of each, and the ratios to raw puts;
    `ratio` (the target's) is RegisterStream's, `ratio_unary` the unary call's.
    """
    client = RegistryClient([registry_target], timeout=30)

    async def etcd_revision() -> int:
        return int((await client.cluster_status()).etcd_revision)

    try:
        etcd = await run_load(settings, "etcd", etcd_target, pids, etcd_revision)
        registry = await run_load(settings, "registry", registry_target, pids, etcd_revision)
        stream = await run_load(settings, "registry-stream", registry_target, pids, etcd_revision)
    finally:
        await client.close()

    def ratio(run: dict[str, Any]) -> float:
        return float(run["ops_per_s"] / etcd["ops_per_s"]) if etcd["ops_per_s"] else 0.0

    return {
        "etcd_put": etcd,
        "registry_register": registry,
        "registry_stream": stream,
        "ratio": ratio(stream),
        "ratio_unary": ratio(registry),
    }


async def measure_floor_throughput(
    settings: Settings, echo_target: str, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """The RegisterStream load against `bench.echo_server`: gRPC alone, no registry, no etcd.

    Beside the registry's figure it shows what the gRPC clients and a Python
    gRPC server cost by themselves on this machine (no etcd revisions: nothing
    is written).
    """

    async def no_revisions() -> int:
        return 0

    return await run_load(settings, "registry-stream", echo_target, pids, no_revisions)


async def run_load(
    settings: Settings,
    kind: str,
    target: str,
    pids: dict[str, list[int]],
    etcd_revision: Callable[[], Awaitable[int]],
) -> dict[str, Any]:
    """One timed run of `kind` ("etcd", "registry" or "registry-stream") load against `target`.

    Besides the workers' counts: busy cores per process group and the number
    of etcd revisions (one per put or transaction) during the window.
    """
    progress(f"throughput: {kind}, {settings.in_flight} in flight, {settings.duration_s:.0f} s")
    job = LoadJob(
        kind=kind,
        target=target,
        coroutines=settings.load_coroutines,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        services=settings.load_services,
        zone="load",
    )
    with Workers(f"load-{kind}", load_worker, [job] * settings.load_workers) as workers:
        meter = CpuMeter({**pids, "clients": workers.pids})
        await workers.collect("ready", timeout=120)
        start_ns = time.monotonic_ns() + START_DELAY_NS
        workers.send_all(start_ns)
        await _sleep_until(start_ns + int(settings.warmup_s * 1e9))
        cpu_before, revision_before = meter.sample(), await etcd_revision()
        await _sleep_until(start_ns + int((settings.warmup_s + settings.duration_s) * 1e9))
        cpu = CpuMeter.busy_cores(cpu_before, meter.sample(), settings.duration_s)
        revisions = await etcd_revision() - revision_before
        results: list[LoadResult] = await workers.collect("result", timeout=settings.duration_s + 120)
    return _summary(results, settings, cpu, revisions)


def _summary(
    results: list[LoadResult], settings: Settings, cpu: dict[str, float], revisions: int
) -> dict[str, Any]:
    total = LoadResult()
    for r in results:
        total.merge(r)
    return {
        "in_flight": settings.in_flight,
        "processes": settings.load_workers,
        "duration_s": settings.duration_s,
        "ops": total.ops,
        "ops_per_s": total.ops / settings.duration_s,
        "errors": total.errors,
        "first_error": total.first_error,
        "ops_per_worker": [r.ops for r in results],
        "latency": latency_summary_ms(total.latencies_ns),
        "busy_cores": cpu,
        "etcd_revisions": revisions,
        "ops_per_etcd_revision": total.ops / revisions if revisions else 0.0,
    }


async def _sleep_until(monotonic_ns: int) -> None:
    await asyncio.sleep(max(0, monotonic_ns - time.monotonic_ns()) / 1e9)
