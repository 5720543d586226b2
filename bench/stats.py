"""Summaries of measured samples. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

NS_PER_MS = 1_000_000


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank `q`-th percentile (0 < q <= 100) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary_ms(samples_ns: Sequence[int]) -> dict[str, float | int]:
    """count, min, p50, p90, p99, p99.9, max and mean of nanosecond samples, in milliseconds.

    Negative samples are kept as they are (see `propagation_latencies`).
    """
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)
    summary: dict[str, float | int] = {"count": len(ordered), "min_ms": ordered[0] / NS_PER_MS}
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        summary[f"{name}_ms"] = percentile(ordered, q) / NS_PER_MS
    summary["max_ms"] = ordered[-1] / NS_PER_MS
    summary["mean_ms"] = sum(ordered) / len(ordered) / NS_PER_MS
    return summary


def propagation_latencies(
    acks_ns: Mapping[str, int], arrivals_ns: Sequence[Mapping[str, int]]
) -> tuple[list[int], int]:
    """Latency of every (subscriber, instance) pair, and how many pairs never arrived.

    `acks_ns` maps an instance ID to when its registration was acknowledged;
    each element of `arrivals_ns` is one subscriber's map from instance ID to
    when its PUT delta arrived. Latency is arrival - ack; it is negative when
    the delta reached the subscriber before the registering client received
    its response. Nothing is clamped.
    """
    latencies: list[int] = []
    missing = 0
    for arrivals in arrivals_ns:
        for instance_id, acked in acks_ns.items():
            arrived = arrivals.get(instance_id)
            if arrived is None:
                missing += 1
            else:
                latencies.append(arrived - acked)
    return latencies, missing
