"""The data-path benchmark's pure parts: iperf3 results, migration stalls, the printed tables.

No I/O, no clock: `bench.datapath` gathers the figures, these functions read them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import Row, table

SERVAL_VS_DIRECT_TARGET = 0.5
SERVAL_VS_HAPROXY_TARGET = 1.0
MIGRATION_TARGET_MS = 200.0
AGENT_RSS_TARGET_MB = 64.0
NS_PER_MS = 1_000_000

PATHS = (
    ("direct", "direct TCP (client -> server)"),
    ("serval", "Serval (iperf3 -> agent -> agent -> iperf3)"),
    ("haproxy", "haproxy chain (iperf3 -> haproxy -> haproxy -> iperf3)"),
    ("haproxy_splice", "haproxy chain relaying with splice(2) (kernel zero-copy)"),
)


class IperfError(RuntimeError):
    """iperf3 reported an error, or its JSON lacks the end-of-test sums."""


def iperf_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Gbit/s received and sent, retransmits, seconds and the per-interval (1 s) sender rates from
    ``iperf3 -J`` output (one client run)."""
    if doc.get("error"):
        raise IperfError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received, sent = end.get("sum_received"), end.get("sum_sent")
    if not received or not sent:
        raise IperfError("iperf3: no end-of-test sums in its JSON output")
    cpu = end.get("cpu_utilization_percent") or {}
    intervals = [i["sum"]["bits_per_second"] / 1e9 for i in doc.get("intervals", []) if "sum" in i]
    return {
        "gbit_s": received["bits_per_second"] / 1e9,
        "sent_gbit_s": sent["bits_per_second"] / 1e9,
        "bytes": int(received["bytes"]),
        "seconds": float(received["seconds"]),
        "retransmits": int(sent.get("retransmits", 0)),
        "iperf3_client_cpu_pct": float(cpu.get("host_total", 0.0)),
        "iperf3_server_cpu_pct": float(cpu.get("remote_total", 0.0)),
        "interval_gbit_s": [round(x, 3) for x in intervals],
    }


def combine_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One path's iperf3 runs (`iperf_summary` + ``busy_cores``) as one figure: the mean rate,
    its range, retransmits summed, busy cores averaged; every run kept under ``runs``."""
    rates = [r["gbit_s"] for r in runs]
    cores = {k: round(sum(r["busy_cores"][k] for r in runs) / len(runs), 2) for k in runs[0]["busy_cores"]}
    return {
        "gbit_s": sum(rates) / len(rates),
        "gbit_s_min": min(rates),
        "gbit_s_max": max(rates),
        "retransmits": sum(int(r["retransmits"]) for r in runs),
        "seconds": sum(float(r["seconds"]) for r in runs),
        "busy_cores": cores,
        "runs": list(runs),
    }


def stall_after(
    arrivals_ns: Sequence[int], change_ns: int, window_end_ns: int, threshold_ns: int, start_within_ns: int
) -> dict[str, float | bool]:
    """How the receiver saw one address change at `change_ns`.

    The old address is gone at the change, so a flow that stalls stops within
    moments of it. Among the gaps between consecutive arrivals (ascending
    times) that end after the change, no later than `window_end_ns`, and start
    (last read before the gap) no later than `start_within_ns` after the
    change, the largest is the stall. ``recovery_ms``: from the change to the
    read that ends it (data flowing again); ``stall_ms``: the gap's length;
    ``stall_started_ms``: its start relative to the change (negative: before);
    ``stalled``: the gap reached `threshold_ns` (shorter: pacing jitter, and
    the recovery figure is at most about `start_within_ns` plus that gap).
    """
    best: tuple[int, int] | None = None  # (gap start, gap end)
    for before, after in itertools.pairwise(arrivals_ns):
        if after <= change_ns or after > window_end_ns or before > change_ns + start_within_ns:
            continue
        if best is None or after - before > best[1] - best[0]:
            best = (before, after)
    if best is None:
        raise ValueError("no data arrived after the change within the window")
    gap = best[1] - best[0]
    return {
        "stalled": gap >= threshold_ns,
        "stall_ms": gap / NS_PER_MS,
        "stall_started_ms": (best[0] - change_ns) / NS_PER_MS,
        "recovery_ms": (best[1] - change_ns) / NS_PER_MS,
    }


# ---- rendering -----------------------------------------------------------------------------------


def summary_rows(results: dict[str, Any]) -> list[Row]:
    """The final table: every target with its verdict, the baselines beside them (phases that
    did not run, see ``--only``, are left out)."""
    rows: list[Row] = []
    if "throughput" in results:
        rows += _throughput_rows(results["throughput"])
    if "setup" in results:
        rows += _setup_rows(results["setup"])
    if "migration" in results:
        rows += _migration_rows(results["migration"], results["address_poll_s"])
    if "memory" in results:
        rows += _memory_rows(results["memory"])
    return rows


def _throughput_rows(t: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    gbit = {name: t[name]["gbit_s"] for name, _ in PATHS if name in t}
    for name, label in PATHS:
        if name not in gbit:
            continue
        rows.append(Row(f"throughput, {label}", f"{gbit[name]:.2f} Gbit/s"))
    vs_direct = gbit["serval"] / gbit["direct"]
    vs_haproxy = gbit["serval"] / gbit["haproxy"]
    rows += [
        Row(
            "throughput ratio Serval / direct",
            f"{vs_direct:.2f}",
            f">= {SERVAL_VS_DIRECT_TARGET}",
            vs_direct >= SERVAL_VS_DIRECT_TARGET,
        ),
        Row(
            "throughput ratio Serval / haproxy chain",
            f"{vs_haproxy:.2f}",
            f">= {SERVAL_VS_HAPROXY_TARGET}",
            vs_haproxy >= SERVAL_VS_HAPROXY_TARGET,
        ),
    ]
    if "haproxy_splice" in gbit:  # context: what a zero-copy relay chain reaches on this machine
        rows.append(Row("throughput ratio haproxy splice chain / direct (context)",
                        f"{gbit['haproxy_splice'] / gbit['direct']:.2f}"))  # fmt: skip
    return rows


def _setup_rows(setup: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for run in setup:
        if run["concurrency"] == 1:
            lat = run["latency"]
            rows.append(
                Row(
                    f"set-up + first byte p50 / p99, {run['path']}",
                    f"{_ms(lat.get('p50_ms'), 2)} / {_ms(lat.get('p99_ms'), 2)}",
                )
            )
    for run in setup:
        rows.append(
            Row(
                f"flows set up per second, {run['path']}, {run['concurrency']} at a time",
                f"{run['flows_per_s']:,.0f}",
            )
        )
    failed = sum(run["failed"] for run in setup)
    rows.append(Row("failed connections (set-up phase)", str(failed), "0", failed == 0))
    return rows


def _migration_rows(mig: dict[str, Any], poll_s: float) -> list[Row]:
    rows: list[Row] = []
    worst = max(m["recovery_ms"] for m in mig["changes"])
    rows.append(
        Row(
            f"migration: address change -> data flowing again, worst of {len(mig['changes'])} "
            f"(agent address poll {poll_s:g} s)",
            f"{worst:.0f} ms",
            f"<= {MIGRATION_TARGET_MS:.0f} ms",
            worst <= MIGRATION_TARGET_MS,
        )
    )
    complete = mig["bytes_received"] == mig["bytes_sent"]
    rows.append(
        Row(
            "migration: bytes received / sent",
            f"{mig['bytes_received']:,} / {mig['bytes_sent']:,}",
            "equal",
            complete,
        )
    )
    return rows


def _memory_rows(mem: dict[str, Any]) -> list[Row]:
    return [
        Row("client agent RSS idle (after start)", f"{mem['rss_start_mb']:.0f} MB"),
        Row(
            f"client agent RSS with {mem['entries']:,} service entries",
            f"{mem['rss_loaded_mb']:.0f} MB",
            f"<= {AGENT_RSS_TARGET_MB:.0f} MB",
            mem["rss_loaded_mb"] <= AGENT_RSS_TARGET_MB,
        ),
    ]


def render(results: dict[str, Any]) -> str:
    """Every table of the report, as text."""
    parts = [_header(results)]
    if "throughput" in results:
        parts += [
            "Single-flow throughput (iperf3, one stream, client -> server)",
            _throughput_table(results["throughput"]),
        ]
    if "setup" in results:
        parts += ["Connection set-up: connect + first byte back", _setup_table(results["setup"])]
    if "migration" in results:
        parts += [
            "Migration: server address changed during a paced transfer (receiver's view)",
            _migration_table(results["migration"], results["address_poll_s"]),
        ]
    if "memory" in results:
        parts += ["Agent memory", _memory_table(results["memory"])]
    parts += [
        "Summary",
        table(
            [(r.metric, r.value, r.target or "-", r.result) for r in summary_rows(results)],
            ("METRIC", "VALUE", "TARGET", "RESULT"),
        ),
    ]
    return "\n\n".join(parts)


def _header(results: dict[str, Any]) -> str:
    m = results["machine"]
    phases = results.get("phases")
    only = f", phases: {', '.join(phases)}" if phases and len(phases) < 4 else ""
    return (
        f"serval data-path benchmark, {results['mode']} mode{only}, {results['elapsed_s']:.0f} s\n"
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, {m['mem_total_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}; {results['iperf3_version']}; {results['haproxy_version']}\n"
        f"lab: hosts etcd, registry, client, server in network namespaces on one bridge (veth); "
        f"agents: --address-poll {results['address_poll_s']:g} s\n"
        f"load average at start: {' '.join(map(str, m['loadavg_at_start']))}"
    )


def _throughput_table(t: dict[str, Any]) -> str:
    rows = []
    for name, label in PATHS:
        if name not in t:  # a results file from before that path was measured
            continue
        r = t[name]
        busy = r["busy_cores"]
        rows.append(
            (
                label,
                f"{r['gbit_s']:.2f}",
                f"{r['gbit_s_min']:.2f}-{r['gbit_s_max']:.2f}" if len(r["runs"]) > 1 else "-",
                f"{r['gbit_s'] / t['direct']['gbit_s']:.2f}",
                r["retransmits"],
                f"{r['seconds']:.1f}",
                *(f"{busy.get(k, 0.0):.2f}" if k in busy else "-" for k in ("client_relay", "server_relay")),
                f"{busy.get('iperf3_server', 0.0):.2f}",
                f"{busy['other']:.2f}",
                f"{busy['machine']:.2f}",
            )
        )
    header = ("PATH", "GBIT/S", "RANGE", "VS DIRECT", "RETRANSMITS", "SECONDS", "CLIENT RELAY",
              "SERVER RELAY", "IPERF3 SRV", "OTHER", "ALL")  # fmt: skip
    note = (
        f"(GBIT/S: received by the iperf3 server, mean of {len(t['direct']['runs'])} run(s) per path, "
        "paths in turn; RANGE: lowest-highest run;\nSECONDS: measured, all runs; CLIENT/SERVER RELAY: "
        "cores the client-side and server-side relay (agent or haproxy) kept busy during the runs;\n"
        "OTHER: the rest of the machine (iperf3 client, kernel softirq not charged to a process, "
        f"anything else); ALL: the machine, of {t['nproc']} cores)"
    )
    return table(rows, header) + "\n" + note


def _setup_table(runs: list[dict[str, Any]]) -> str:
    rows = [
        (
            r["path"],
            r["concurrency"],
            r["latency"].get("count", 0),
            r["failed"],
            _ms(r["latency"].get("p50_ms"), 2),
            _ms(r["latency"].get("p90_ms"), 2),
            _ms(r["latency"].get("p99_ms"), 2),
            _ms(r["latency"].get("max_ms"), 2),
            f"{r['flows_per_s']:,.0f}",
        )
        for r in runs
    ]
    header = ("PATH", "AT A TIME", "CONNECTIONS", "FAILED", "P50", "P90", "P99", "MAX", "FLOWS/S")
    note = (
        "(serval: hostagent.client.connect(name) -> client agent -> SAL -> server agent -> listening app, "
        "which sends 1 byte;\ndirect: socket.create_connection to a plain TCP server on the server host "
        "that sends 1 byte; both timed in the client from before connect to the byte's arrival)"
    )
    return table(rows, header) + "\n" + note


def _migration_table(mig: dict[str, Any], poll_s: float) -> str:
    rows = [
        (
            i + 1,
            f"{c['old']} -> {c['new']}",
            "yes" if c["stalled"] else "no",
            f"{c['stall_started_ms']:.0f} ms",
            f"{c['stall_ms']:.0f} ms",
            f"{c['recovery_ms']:.0f} ms",
        )
        for i, c in enumerate(mig["changes"])
    ]
    header = ("#", "SERVER ADDRESS", "STALLED", "LAST BYTE BEFORE", "STALL", "RECOVERY")
    note = (
        f"(a {mig['chunk']}-byte chunk every {mig['pace_ms']:g} ms by name from client to server; "
        "time 0 = just before the old address is removed (the new one was added before);\n"
        "RECOVERY: from then to the first read after the longest gap that began within "
        f"{mig['stall_start_within_ms']:.0f} ms of it; STALLED: that gap reached "
        f"{mig['stall_threshold_ms']:.0f} ms; the agents poll addresses every {poll_s:g} s;\n"
        f"bytes received / sent: {mig['bytes_received']:,} / {mig['bytes_sent']:,})"
    )
    return table(rows, header) + "\n" + note


def _memory_table(m: dict[str, Any]) -> str:
    load = m["load"]
    rows = [
        ("client agent RSS after start (idle, empty table)", f"{m['rss_start_mb']:.1f} MB"),
        ("client agent RSS before loading (after the other phases)", f"{m['rss_before_mb']:.1f} MB"),
        (
            f"client agent RSS with {m['entries']:,} entries ({m['services']:,} services)",
            f"{m['rss_loaded_mb']:.1f} MB",
        ),
        ("client agent peak RSS (VmHWM)", f"{m['rss_peak_mb']:.1f} MB"),
        ("server agent RSS with the same entries", f"{m['server_rss_loaded_mb']:.1f} MB"),
        (
            "client agent table rules / table generation",
            f"{m['table_rules']:,.0f} / {m['table_generation']:,.0f}",
        ),
        (
            "registered via RegisterStream (in the registry host)",
            f"{load['registered']:,} in {load['seconds']:.1f} s "
            f"({load['registered'] / load['seconds']:,.0f}/s)",
        ),
        ("client agent table caught up after loading", f"{m['catch_up_s']:.1f} s"),
    ]
    return table(rows, ("MEASURE", "VALUE"))


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"
