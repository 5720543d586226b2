"""The data-path benchmark's pure parts: iperf3 JSON, migration stalls, metrics text, the report."""

from __future__ import annotations

from typing import Any

import pytest

from bench.datapath import haproxy_config
from bench.datapath_apps import load_instance, parse_metrics
from bench.datapath_report import IperfError, combine_runs, iperf_summary, render, stall_after, summary_rows
from hostagent.agent.desired import sal_port
from registry.model import validate_instance

MS = 1_000_000


def iperf_doc(bps: float = 8e9) -> dict[str, Any]:
    return {
        "start": {},
        "intervals": [{"sum": {"bits_per_second": 7.5e9}}, {"sum": {"bits_per_second": 8.5e9}}],
        "end": {
            "sum_sent": {"bytes": 10_000, "bits_per_second": bps * 1.01, "seconds": 10.0, "retransmits": 3},
            "sum_received": {"bytes": 9_900, "bits_per_second": bps, "seconds": 10.0},
            "cpu_utilization_percent": {"host_total": 40.5, "remote_total": 20.25},
        },
    }


def test_iperf_summary_reads_the_received_rate_in_gbit_s() -> None:
    out = iperf_summary(iperf_doc(8e9))
    assert out["gbit_s"] == pytest.approx(8.0)
    assert out["retransmits"] == 3
    assert out["seconds"] == 10.0
    assert out["iperf3_server_cpu_pct"] == 20.25
    assert out["interval_gbit_s"] == [7.5, 8.5]


@pytest.mark.parametrize(
    "doc", [{"error": "unable to connect to server: Connection refused"}, {"start": {}, "end": {}}]
)
def test_iperf_summary_raises_on_an_error_or_missing_sums(doc: dict[str, Any]) -> None:
    with pytest.raises(IperfError):
        iperf_summary(doc)


def test_combine_runs_averages_rates_and_cores_and_keeps_the_range() -> None:
    runs = [
        {
            "gbit_s": 4.0,
            "retransmits": 1,
            "seconds": 10.0,
            "busy_cores": {"client_relay": 0.4, "machine": 1.0},
        },
        {
            "gbit_s": 6.0,
            "retransmits": 2,
            "seconds": 10.0,
            "busy_cores": {"client_relay": 0.6, "machine": 1.5},
        },
    ]
    out = combine_runs(runs)
    assert (out["gbit_s"], out["gbit_s_min"], out["gbit_s_max"]) == (5.0, 4.0, 6.0)
    assert out["retransmits"] == 3
    assert out["busy_cores"] == {"client_relay": 0.5, "machine": 1.25}
    assert out["runs"] == runs


def test_stall_after_finds_the_gap_the_change_caused() -> None:
    change = 1000 * MS
    arrivals = [t * MS for t in range(990, 1002)] + [t * MS for t in range(1240, 1260)]
    out = stall_after(arrivals, change, 2000 * MS, threshold_ns=20 * MS, start_within_ns=50 * MS)
    assert out["stalled"] is True
    assert out["stall_ms"] == 239.0
    assert out["stall_started_ms"] == 1.0
    assert out["recovery_ms"] == 240.0


def test_stall_after_without_a_stall_reports_the_jitter_near_the_change() -> None:
    change = 1000 * MS
    # a long gap before the change, one long after it began (not the change's), one past the window
    arrivals = [0, 500 * MS] + [t * MS for t in range(998, 1100, 2)] + [1400 * MS, 5000 * MS]
    out = stall_after(arrivals, change, 2000 * MS, threshold_ns=20 * MS, start_within_ns=50 * MS)
    assert out["stalled"] is False
    assert out["stall_ms"] == 2.0
    assert out["stall_started_ms"] == 0.0  # the first qualifying 2 ms gap: 1000 -> 1002 ms
    assert out["recovery_ms"] == 2.0


def test_stall_after_a_stall_just_under_the_threshold_still_reports_its_recovery() -> None:
    change = 1000 * MS
    arrivals = [t * MS for t in range(990, 1002)] + [t * MS for t in range(1020, 1030)]
    out = stall_after(arrivals, change, 2000 * MS, threshold_ns=20 * MS, start_within_ns=50 * MS)
    assert out["stalled"] is False
    assert out["recovery_ms"] == 20.0


def test_stall_after_without_data_after_the_change_is_an_error() -> None:
    with pytest.raises(ValueError):
        stall_after([1, 2, 3], 10, 100, threshold_ns=5, start_within_ns=5)


def test_parse_metrics_keeps_unlabelled_samples() -> None:
    text = (
        "# HELP serval_agent_table_rules Rules\n# TYPE serval_agent_table_rules gauge\n"
        "serval_agent_table_rules 100001.0\n"
        'serval_agent_legacy_connections_total{kind="socks"} 3.0\n'
        "serval_agent_applied_revision 4.2e+05\n"
    )
    assert parse_metrics(text) == {
        "serval_agent_table_rules": 100001.0,
        "serval_agent_applied_revision": 420000.0,
    }


def test_load_instances_are_valid_and_sal_capable() -> None:
    inst = load_instance(70_000, 1000)
    assert validate_instance(inst).service == "svc-000000.mem.bench"
    assert sal_port(inst) == 7946
    assert inst.instance_id == "i-70000"
    assert len({load_instance(n, 10).addresses for n in range(100_000)}) == 100_000


def test_haproxy_config_relays_bind_to_target_in_tcp_mode() -> None:
    cfg = haproxy_config("127.0.0.1:5202", "10.77.1.4:5203")
    assert "mode tcp" in cfg
    assert "bind 127.0.0.1:5202" in cfg
    assert "server next 10.77.1.4:5203" in cfg
    assert "splice" not in cfg


def test_haproxy_splice_config_asks_for_splice_in_both_directions() -> None:
    assert "option splice-auto" in haproxy_config("127.0.0.1:5204", "10.77.1.4:5205", splice=True)


def test_the_splice_chain_is_reported_as_context_beside_direct() -> None:
    results = sample_results(6.0, 150.0, 60.0)
    results["throughput"]["haproxy_splice"] = results["throughput"]["haproxy"] | {"gbit_s": 5.0}
    rows = {r.metric: r for r in summary_rows(results)}
    row = rows["throughput ratio haproxy splice chain / direct (context)"]
    assert row.value == "0.50" and not row.target
    assert "relaying with splice" in render(results)


def sample_results(serval_gbit: float, recovery_ms: float, rss_mb: float) -> dict[str, Any]:
    busy = {"client_relay": 0.5, "server_relay": 0.4, "iperf3_server": 0.2, "other": 0.3, "machine": 1.4}

    def path(gbit: float) -> dict[str, Any]:
        run = {"gbit_s": gbit, "retransmits": 0, "seconds": 10.0, "busy_cores": busy}
        return combine_runs([run, run])

    latency = {"count": 10, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 2.0, "max_ms": 3.0}
    setup = [
        {"path": p, "concurrency": c, "failed": 0, "latency": latency, "flows_per_s": 1000.0}
        for c in (1, 16)
        for p in ("serval", "direct")
    ]
    change = {
        "old": "10.77.1.4", "new": "10.77.1.200", "stalled": True, "stall_started_ms": 1.0,
        "stall_ms": recovery_ms - 1, "recovery_ms": recovery_ms,
    }  # fmt: skip
    return {
        "mode": "quick",
        "elapsed_s": 30.0,
        "address_poll_s": 0.5,
        "iperf3_version": "iperf 3.12",
        "haproxy_version": "HAProxy version 2.6",
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "mem_total_gb": 8,
            "kernel": "6",
            "python": "3.11",
            "loadavg_at_start": [0.1, 0.2, 0.3],
        },
        "throughput": {"nproc": 2, "direct": path(10.0), "serval": path(serval_gbit), "haproxy": path(4.0)},
        "setup": setup,
        "migration": {
            "changes": [change],
            "bytes_sent": 100,
            "bytes_received": 100,
            "chunk": 1024,
            "pace_ms": 1.0,
            "stall_threshold_ms": 20.0,
            "stall_start_within_ms": 50.0,
        },
        "memory": {
            "entries": 100_000,
            "services": 100_000,
            "rss_start_mb": 40.0,
            "rss_before_mb": 45.0,
            "rss_loaded_mb": rss_mb,
            "rss_peak_mb": rss_mb + 1,
            "server_rss_loaded_mb": rss_mb,
            "table_rules": 100_001.0,
            "table_generation": 12.0,
            "catch_up_s": 3.0,
            "load": {"registered": 100_000, "seconds": 50.0},
        },
    }


def test_summary_verdicts_follow_the_targets() -> None:
    passing = {r.metric: r.result for r in summary_rows(sample_results(6.0, 150.0, 60.0))}
    failing = {r.metric: r.result for r in summary_rows(sample_results(3.0, 250.0, 70.0))}
    ratios = ("throughput ratio Serval / direct", "throughput ratio Serval / haproxy chain")
    assert [passing[m] for m in ratios] == ["PASS", "PASS"]
    assert [failing[m] for m in ratios] == ["FAIL", "FAIL"]
    migration = next(m for m in passing if m.startswith("migration: address change"))
    assert "poll 0.5 s" in migration
    assert (passing[migration], failing[migration]) == ("PASS", "FAIL")
    rss = "client agent RSS with 100,000 service entries"
    assert (passing[rss], failing[rss]) == ("PASS", "FAIL")


def test_render_prints_every_table() -> None:
    text = render(sample_results(3.0, 250.0, 70.0))
    for title in ("Single-flow throughput", "Connection set-up", "Migration", "Agent memory", "Summary"):
        assert title in text
    assert "METRIC" in text and "TARGET" in text and "RESULT" in text
    assert "3.00" in text and "0.30" in text  # Serval Gbit/s and its ratio to direct


def test_a_run_of_only_some_phases_reports_just_those() -> None:
    results = sample_results(6.0, 150.0, 60.0)
    for phase in ("setup", "migration", "memory"):
        del results[phase]
    text = render(results)
    assert "Single-flow throughput" in text and "Summary" in text
    assert "Connection set-up" not in text and "Agent memory" not in text
    assert [r.metric for r in summary_rows(results)][-1] == "throughput ratio Serval / haproxy chain"
