"""Prometheus metrics of the agent (`serval_agent_…`), read at scrape time.

Nothing is counted on a hot path here: a custom collector reads the data
path's `stats()` and the control plane's state when Prometheus scrapes. The
collector runs on the HTTP server's thread; `stats()` is thread-safe by
contract and the control-plane values are plain ints read without locks
(a scrape may see values a moment apart, never torn ones).

| metric | type | source |
|---|---|---|
| `serval_agent_flows_active` | gauge | data path `flows_active` |
| `serval_agent_flows_opened_total`, `_accepted_total` | counter | data path |
| `serval_agent_bytes_in_total`, `_bytes_out_total` | counter | data path |
| `serval_agent_{migrations,failovers,connect_failures,events_dropped}_total` | counter | data path |
| `serval_agent_flows_refused_total` | counter | data path: incoming set-ups refused (no listener) |
| `serval_agent_rsyn_rejected_total` | counter | data path: resynchronisations refused (bad MAC, replay) |
| `serval_agent_dgram_{in,out}_total` | counter | data path: datagram-flow messages to / from local apps |
| `serval_agent_dgram_dropped_total` | counter | data path: datagram-flow messages dropped |
| `serval_agent_dgram_oversized_total` | counter | data path: of those, too large for one datagram |
| `serval_agent_dgram_stray_total` | counter | data path: datagrams that matched no flow |
| `serval_agent_dgram_keepalive_timeouts_total` | counter | data path: flows ended by the keep-alive |
| `serval_agent_dgram_flows_active` | gauge | data path: datagram flows open now |
| `serval_agent_applied_revision` | gauge | registry revision of the table in force |
| `serval_agent_mirror_revision` | gauge | registry revision of the mirror |
| `serval_agent_table_generation` | gauge | generation of the table in force |
| `serval_agent_table_rules` | gauge | rules in the table in force |
| `serval_agent_listeners` | gauge | open local listeners |
| `serval_agent_registry_reconnects_total` | counter | watch resumptions |
| `serval_agent_legacy_connections_total{kind}` | counter | translator: accepted (`socks`/`upstream`) |
| `serval_agent_legacy_failures_total{kind,reason}` | counter | of those, failed (see below) |

Legacy failure reasons: `handshake` (SOCKS5 refused or abandoned), `connect`
(no flow could be set up), `overload` (too many connections pending).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostagent.agent.datapath import GAUGE_KEYS, STATS_KEYS

NAMESPACE = "serval_agent"
LEGACY_KINDS = ("socks", "upstream")
LEGACY_FAILURES = ("handshake", "connect", "overload")
# Every data-path counter but the gauges (`flows_active`, `dgram_flows_active`).
_DATAPATH_COUNTERS = tuple(key for key in STATS_KEYS if key not in GAUGE_KEYS)


@dataclass
class AgentGauges:
    """Readers of the control plane's state, one callable per metric."""

    datapath_stats: Callable[[], dict[str, int]]
    applied_revision: Callable[[], int]
    mirror_revision: Callable[[], int]
    table_generation: Callable[[], int]
    table_rules: Callable[[], int]
    listeners: Callable[[], int]
    registry_reconnects: Callable[[], int]
    legacy_connections: Callable[[], Mapping[str, int]] = field(default=dict)
    legacy_failures: Callable[[], Mapping[tuple[str, str], int]] = field(default=dict)


class AgentCollector(Collector):
    """Turns `AgentGauges` into metric families on each scrape."""

    def __init__(self, gauges: AgentGauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        g = self.gauges
        stats = g.datapath_stats()
        yield GaugeMetricFamily(f"{NAMESPACE}_flows_active", "Flows open now", stats.get("flows_active", 0))
        yield GaugeMetricFamily(
            f"{NAMESPACE}_dgram_flows_active", "Datagram flows open now", stats.get("dgram_flows_active", 0)
        )
        for key in _DATAPATH_COUNTERS:
            yield CounterMetricFamily(f"{NAMESPACE}_{key}", f"Data path counter {key}", stats.get(key, 0))
        for name, doc, read in (
            ("applied_revision", "Registry revision of the table in force", g.applied_revision),
            ("mirror_revision", "Registry revision of the agent's mirror", g.mirror_revision),
            ("table_generation", "Generation of the table in force", g.table_generation),
            ("table_rules", "Rules in the table in force", g.table_rules),
            ("listeners", "Open local listeners", g.listeners),
        ):
            yield GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, read())
        yield CounterMetricFamily(
            f"{NAMESPACE}_registry_reconnects", "Registry watch resumptions", g.registry_reconnects()
        )
        yield from self._legacy()

    def _legacy(self) -> Iterator[Metric]:
        connections, failures = self.gauges.legacy_connections(), self.gauges.legacy_failures()
        total = CounterMetricFamily(
            f"{NAMESPACE}_legacy_connections", "Connections accepted by the translator", labels=["kind"]
        )
        failed = CounterMetricFamily(
            f"{NAMESPACE}_legacy_failures", "Translator connections that failed", labels=["kind", "reason"]
        )
        for kind in LEGACY_KINDS:
            total.add_metric([kind], connections.get(kind, 0))
            for reason in LEGACY_FAILURES:
                failed.add_metric([kind, reason], failures.get((kind, reason), 0))
        yield total
        yield failed


def make_registry(gauges: AgentGauges) -> CollectorRegistry:
    """A private registry holding only the agent's collector (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(gauges))
    return registry


class MetricsServer:
    """`start_http_server` on `(addr, port)` (port 0 = any) with a clean stop."""

    def __init__(self, registry: CollectorRegistry, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.addr = addr
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def start(self) -> int:
        """Serve in a daemon thread; return the bound port."""
        self._server, self._thread = start_http_server(self.port, self.addr, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
