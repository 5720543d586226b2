"""The printed report: per-phase tables and the final metric | value | target | result table. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RATIO_TARGET = 0.8
PROPAGATION_P99_TARGET_MS = 50.0
RSS_TARGET_MB = 300.0


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = ""
    passed: bool | None = None  # None: no target, figure for information

    @property
    def result(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "FAIL")


def summary_rows(results: dict[str, Any]) -> list[Row]:
    """The final table: every target with its verdict, and the baselines beside them."""
    t, fanout, mem = results["throughput"], results["propagation"], results["memory"]
    reg, stream, raw = t["registry_register"], t["registry_stream"], t["etcd_put"]
    inflight = reg["in_flight"]
    errors = reg["errors"] + stream["errors"] + raw["errors"]
    rows = [
        Row(f"registrations/s via gRPC RegisterStream ({inflight} in flight)", f"{stream['ops_per_s']:,.0f}"),
        Row(f"registrations/s via gRPC unary Register ({inflight} in flight)", f"{reg['ops_per_s']:,.0f}"),
        Row(f"baseline: raw etcd puts/s ({inflight} in flight)", f"{raw['ops_per_s']:,.0f}"),
        Row(
            "throughput ratio RegisterStream / etcd",
            f"{t['ratio']:.2f}",
            f">= {RATIO_TARGET}",
            t["ratio"] >= RATIO_TARGET,
        ),
        Row("throughput ratio unary Register / etcd", f"{t['ratio_unary']:.2f}"),
    ]
    if "bare_grpc_stream" in t:
        bare = t["bare_grpc_stream"]["ops_per_s"]
        rows += [
            Row("baseline: bare gRPC RegisterStream/s (no registry, no etcd)", f"{bare:,.0f}"),
            Row("ratio bare gRPC RegisterStream / etcd", f"{bare / raw['ops_per_s']:.2f}"),
        ]
    rows += [
        Row("RegisterStream latency p50 / p99", _p50_p99(stream["latency"])),
        Row("Register latency p50 / p99", _p50_p99(reg["latency"])),
        Row("baseline: etcd put latency p50 / p99", _p50_p99(raw["latency"])),
        Row("registration errors", str(errors), "0", errors == 0),
    ]
    largest = max(r["subscribers"] for r in fanout)
    for r in fanout:
        p99 = r["latency"].get("p99_ms", float("nan"))
        target = r["subscribers"] == largest
        rows.append(
            Row(
                f"propagation p99, {r['subscribers']} subscribers, 1 registration/{r['interval_ms']:.0f} ms",
                f"{p99:.1f} ms",
                f"<= {PROPAGATION_P99_TARGET_MS:.0f} ms" if target else "",
                p99 <= PROPAGATION_P99_TARGET_MS if target else None,
            )
        )
    for r in results.get("propagation_floor", []):
        p99 = r["latency"].get("p99_ms", float("nan"))
        rows.append(
            Row(
                f"baseline: bare gRPC fan-out p99, {r['subscribers']} subscribers, "
                f"1 registration/{r['interval_ms']:.0f} ms",
                f"{p99:.1f} ms",
            )
        )
    missing = sum(r["missing"] for r in fanout)
    rows.append(Row("missing deliveries (all rounds)", str(missing), "0", missing == 0))
    rss = mem["rss_with_subscribers_mb"]
    what = f"{mem['instances']:,} instances + {mem['subscribers']:,} subscribers"
    rows.append(
        Row(f"replica RSS, {what}", f"{rss:.0f} MB", f"<= {RSS_TARGET_MB:.0f} MB", rss <= RSS_TARGET_MB)
    )
    rows.append(Row("replica peak RSS (VmHWM, loading included)", f"{mem['rss_peak_mb']:.0f} MB"))
    return rows


def render(results: dict[str, Any]) -> str:
    """Every table of the report, as text."""
    parts = [
        _machine(results),
        "Throughput (same etcd, same client structure)",
        _throughput_table(results["throughput"]),
        "Propagation: Register ack -> PUT delta at each subscriber (negative: delta beat the ack)",
        _propagation_table(results["propagation"], results.get("propagation_floor", [])),
        "Memory of one replica",
        _memory_table(results["memory"]),
        "Summary",
        table(
            [(r.metric, r.value, r.target or "-", r.result) for r in summary_rows(results)],
            ("METRIC", "VALUE", "TARGET", "RESULT"),
        ),
    ]
    return "\n\n".join(parts)


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"serval registry benchmark, {results['mode']} mode, {results['elapsed_s']:.0f} s\n"
        f"machine: nproc {m['nproc']}, {m['cpu_model']}, {m['mem_total_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, grpcio {m['grpcio']}, etcd {results['etcd_version']} (one node, same host)\n"
        f"load average at start: {' '.join(map(str, m['loadavg_at_start']))}"
    )


def _throughput_table(t: dict[str, Any]) -> str:
    rows = []
    runs = [
        ("etcd put (aetcd)", t["etcd_put"]),
        ("registry Register", t["registry_register"]),
        ("registry RegisterStream", t["registry_stream"]),
    ]
    if "bare_grpc_stream" in t:
        runs.append(("bare gRPC RegisterStream", t["bare_grpc_stream"]))
    for name, r in runs:
        lat = r["latency"]
        rows.append(
            (
                name,
                f"{r['ops_per_s']:,.0f}",
                r["ops"],
                r["errors"],
                _ms(lat.get("p50_ms")),
                _ms(lat.get("p99_ms")),
                _ms(lat.get("max_ms")),
                f"{r['ops_per_etcd_revision']:.1f}",
                *_cores(r["busy_cores"], ("replica", "etcd", "clients", "other", "machine")),
            )
        )
    header = (
        "OPERATION", "OPS/S", "OPS", "ERRORS", "P50", "P99", "MAX", "OPS/REV",
        "REPLICA", "ETCD", "CLIENTS", "OTHER", "ALL",
    )  # fmt: skip
    note = (
        f"ratio RegisterStream / etcd: {t['ratio']:.2f}, unary Register / etcd: {t['ratio_unary']:.2f}\n"
        "(OPS/REV: operations per etcd revision, i.e. per transaction; "
        "REPLICA .. ALL: cores kept busy in the window; OTHER: the rest of the machine;\n"
        "bare gRPC: the same RegisterStream clients against bench.echo_server, which answers without "
        "a registry or etcd: the floor under the registry's figure; its REPLICA column is that server)"
    )
    return table(rows, header) + "\n" + note


def _propagation_table(rounds: list[dict[str, Any]], floor: list[dict[str, Any]]) -> str:
    """The registry's rounds, then the same rounds through the bare fan-out baseline (`bench.echo_server`)."""
    labelled = [("registry", r) for r in rounds] + [("bare gRPC", r) for r in floor]
    rows = [
        (
            server,
            r["subscribers"],
            r["worker_processes"],
            f"{r['registrations_per_s']:.1f}",
            _ms(r["register_latency"].get("p99_ms")),
            f"{r['pairs_delivered']}/{r['pairs_expected']}",
            r["missing"],
            r["negative"],
            _ms(r["latency"].get("min_ms")),
            _ms(r["latency"].get("p50_ms")),
            _ms(r["latency"].get("p99_ms")),
            _ms(r["latency"].get("max_ms")),
            _ms(r["latency_from_send"].get("p99_ms")),
            r["reconnects"],
            f"{r['connect_s']:.1f}",
            *_cores(r["busy_cores"], ("replica", "etcd", "subscribers", "other", "machine")),
        )
        for server, r in labelled
    ]
    header = (
        "SERVER", "N", "PROCS", "REG/S", "REG P99", "DELIVERED", "MISSING", "NEGATIVE", "MIN", "P50", "P99",
        "MAX", "P99 FROM SEND", "RECONNECTS", "CONNECT S", "REPLICA", "ETCD", "SUBS", "OTHER", "ALL",
    )  # fmt: skip
    note = (
        "(REG/S: registrations per second achieved, REG P99: their Register latency; "
        "REPLICA .. ALL: cores kept busy from the first registration until every delta arrived; "
        "OTHER: the rest of the machine: supervisor, kernel, anything else;\n"
        "bare gRPC: the same client code against bench.echo_server, which only fans each Register out "
        "over grpc.aio, one write per message (the registry merges queued deltas, so under backlog it "
        "can beat it); its REPLICA column is that server)"
    )
    return table(rows, header) + "\n" + note


def _cores(busy: dict[str, float], names: Sequence[str]) -> list[str]:
    return [f"{busy.get(name, 0.0):.2f}" for name in names]


def _memory_table(m: dict[str, Any]) -> str:
    load = m["load"]
    rows = [
        ("RSS idle (empty view)", f"{m['rss_idle_mb']:.0f} MB"),
        (
            f"RSS with {m['instances']:,} instances ({m['services']:,} services)",
            f"{m['rss_before_subscribers_mb']:.0f} MB",
        ),
        (f"RSS with {m['subscribers']:,} subscribers connected", f"{m['rss_with_subscribers_mb']:.0f} MB"),
        ("peak RSS (VmHWM)", f"{m['rss_peak_mb']:.0f} MB"),
        (
            "loaded via",
            f"{m['loaded_via']}: {load['registered']:,} in {load['seconds']:.0f} s ({load['per_s']:,.0f}/s)",
        ),
        (
            "subscribers that took the snapshot",
            f"{m['took_snapshot']} ({m['snapshot_instances_each']:,} instances each)",
        ),
        (
            "subscribers that resumed",
            f"{m['subscribers'] - m['took_snapshot']} (from revision {m['resumed_from_revision']})",
        ),
        (
            "replica: subscribers / TCP connections",
            f"{m['subscribers_seen_by_replica']} / {m['replica_tcp_connections']}",
        ),
    ]
    return table(rows, ("MEASURE", "VALUE"))


def _p50_p99(lat: dict[str, Any]) -> str:
    return f"{_ms(lat.get('p50_ms'))} / {_ms(lat.get('p99_ms'))}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
