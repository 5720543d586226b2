"""Phase 2: propagation from a registration's acknowledgement to N watch subscribers.

For each (N, interval) in `fanout_rounds`: N subscribers (in `subscriber_workers`
processes, see `bench.subscribers`) connect with `from_revision` 0 and take
the snapshot. Once all hold it, this process registers
`fanout_registrations` instances one at a time, one every
`interval` seconds (or right after the previous response when a call takes
longer: the achieved rate is reported), and notes when each Register
response arrived (the ack). Latency of a (subscriber, instance) pair =
arrival of the instance's PUT delta at the subscriber - ack, both
`time.monotonic_ns()` on this machine. A delta can beat the ack to a
subscriber (the replica publishes the change from its etcd watch while the
response is still on its way): such pairs have a negative latency and are
reported as they are, and counted. A pair whose delta never arrived (within
the workers' grace period) is missing. For context, the latency from the
moment the Register call was sent is reported too (``latency_from_send``:
never negative), and the cores kept busy by the replica, the subscriber
processes and the machine from the first registration until every delta
arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bench.common import CpuMeter, Settings, progress, sample_instance, service_name
from bench.stats import latency_summary_ms, propagation_latencies
from bench.subscribers import Subscribers, split_jobs
from registry.api.client import RegistryClient

SESSION_TTL = 300


async def measure_propagation(
    settings: Settings, target: str, pids: dict[str, list[int]]
) -> list[dict[str, Any]]:
    """One round per subscriber count; see the module docstring."""
    return [
        await propagation_round(settings, target, n, interval, pids) for n, interval in settings.fanout_rounds
    ]


async def propagation_round(
    settings: Settings, target: str, n: int, interval: float, pids: dict[str, list[int]]
) -> dict[str, Any]:
    """N subscribers, paced registrations, latency per (subscriber, instance) pair."""
    progress(f"propagation: {n} subscribers, {settings.fanout_registrations} registrations {interval}s apart")
    prefix = f"n{n}-{int(interval * 1000)}-"
    instance_ids = [f"{prefix}{i}" for i in range(settings.fanout_registrations)]
    subscribers = [(f"bench/fanout-{prefix}{i}", 0) for i in range(n)]
    jobs = split_jobs(target, subscribers, settings.subscriber_workers, prefix, expected=len(instance_ids))
    client = RegistryClient([target], timeout=30)
    lease = (await client.open_session(SESSION_TTL)).lease_id
    try:
        async with Subscribers(f"subscribers-{n}", jobs) as subs:
            meter = CpuMeter({**pids, "subscribers": subs.pids})
            before, started = meter.sample(), time.monotonic()
            sent, acks = await register_paced(client, lease, instance_ids, interval)
            await subs.drain()
            seconds = time.monotonic() - started
            cpu = CpuMeter.busy_cores(before, meter.sample(), seconds)
            reports = await subs.reports()
    finally:
        with contextlib.suppress(Exception):
            await client.close_session(lease)
        await client.close()
    arrivals = [r.arrivals_ns for r in reports]
    latencies, missing = propagation_latencies(acks, arrivals)
    from_send, _ = propagation_latencies(sent, arrivals)
    register_ns = [acks[i] - sent[i] for i in instance_ids]
    sending_s = (max(sent.values()) - min(sent.values())) / 1e9  # first to last Register sent
    return {
        "subscribers": n,
        "worker_processes": len(jobs),
        "registrations": len(instance_ids),
        "interval_ms": interval * 1000,
        "registrations_per_s": (len(instance_ids) - 1) / sending_s if sending_s else 0.0,
        "register_latency": latency_summary_ms(register_ns),
        "connect_s": round(subs.connect_s, 2),
        "pairs_expected": n * len(instance_ids),
        "pairs_delivered": len(latencies),
        "missing": missing,
        "negative": sum(1 for x in latencies if x < 0),
        "reconnects": sum(r.reconnects for r in reports),
        "stream_errors": sum(1 for r in reports if r.error),
        "latency": latency_summary_ms(latencies),
        "latency_from_send": latency_summary_ms(from_send),
        "seconds": round(seconds, 2),
        "busy_cores": cpu,
        "replica_cpu_us_per_delivery": cpu["replica"] * seconds / len(latencies) * 1e6 if latencies else 0.0,
    }


async def register_paced(
    client: RegistryClient, lease_id: int, instance_ids: list[str], interval_s: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Register each instance at ``start + i * interval_s`` (or later); send and ack times by ID."""
    sent: dict[str, int] = {}
    acks: dict[str, int] = {}
    start = time.monotonic()
    for i, iid in enumerate(instance_ids):
        await asyncio.sleep(max(0.0, start + i * interval_s - time.monotonic()))
        inst = sample_instance(service_name(i % 10, "fanout"), iid, SESSION_TTL, i)
        sent[iid] = time.monotonic_ns()
        await client.register(inst, lease_id=lease_id)
        acks[iid] = time.monotonic_ns()
    return sent, acks
