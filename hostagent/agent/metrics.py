"""Prometheus metrics of the agent (`serval_agent_…`), read at scrape time.

Nothing is counted on a hot path here: `collect` reads the data path's
`stats()` and the control plane's state when Prometheus scrapes. The scrape
is served on the agent's event loop (`MetricsServer`, a minimal HTTP/1.0
endpoint on asyncio), so the values are read between two loop steps: a
scrape may see values a moment apart, never torn ones.

The exposition is written by `registry.exposition` (`render`, `MetricsServer`:
the `prometheus_client` package, its HTTP server and `http.server` would cost
the agent ~4.5 MB of RSS for two metric types); `serve(gauges, ...)` is the
agent's endpoint.

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
| `serval_agent_discovery_endpoints{source}` | gauge | endpoints from each extra back-end (`--static` ...) |
| `serval_agent_discovery_error{source}` | gauge | 1 while it reports an error (last good state kept) |
| `serval_agent_discovery_conflicts` | gauge | conflicts between those back-ends (each is also logged) |

Legacy failure reasons: `handshake` (SOCKS5 refused or abandoned), `connect`
(no flow could be set up), `overload` (too many connections pending).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from hostagent.agent.datapath import GAUGE_KEYS, STATS_KEYS
from registry.exposition import CONTENT_TYPE, Family, MetricsServer, render
from resolver.model import View

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
    # The other discovery back-ends' merged view (`--static`/`--lan`/`--dns-name`), if any.
    discovery: Callable[[], View | None] = field(default=lambda: None)


def _gauge(name: str, doc: str, value: float) -> Family:
    return Family(f"{NAMESPACE}_{name}", "gauge", doc, [((), value)])


def _counter(name: str, doc: str, value: float | None = None) -> Family:
    return Family(f"{NAMESPACE}_{name}_total", "counter", doc, [] if value is None else [((), value)])


def collect(g: AgentGauges) -> Iterator[Family]:
    """Every metric family, read now."""
    stats = g.datapath_stats()
    yield _gauge("flows_active", "Flows open now", stats.get("flows_active", 0))
    yield _gauge("dgram_flows_active", "Datagram flows open now", stats.get("dgram_flows_active", 0))
    for key in _DATAPATH_COUNTERS:
        yield _counter(key, f"Data path counter {key}", stats.get(key, 0))
    for name, doc, read in (
        ("applied_revision", "Registry revision of the table in force", g.applied_revision),
        ("mirror_revision", "Registry revision of the agent's mirror", g.mirror_revision),
        ("table_generation", "Generation of the table in force", g.table_generation),
        ("table_rules", "Rules in the table in force", g.table_rules),
        ("listeners", "Open local listeners", g.listeners),
    ):
        yield _gauge(name, doc, read())
    yield _counter("registry_reconnects", "Registry watch resumptions", g.registry_reconnects())
    connections, failures = g.legacy_connections(), g.legacy_failures()
    total = _counter("legacy_connections", "Connections accepted by the translator")
    failed = _counter("legacy_failures", "Translator connections that failed")
    for kind in LEGACY_KINDS:
        total.samples.append(((("kind", kind),), connections.get(kind, 0)))
        for reason in LEGACY_FAILURES:
            labels = (("kind", kind), ("reason", reason))
            failed.samples.append((labels, failures.get((kind, reason), 0)))
    yield total
    yield failed
    view = g.discovery()
    if view is not None:
        yield from _discovery(view)


def _discovery(view: View) -> Iterator[Family]:
    """Per back-end: endpoints in the merged view, whether it reports an error; conflicts."""
    endpoints = Family(f"{NAMESPACE}_discovery_endpoints", "gauge", "Endpoints from a discovery back-end", [])
    errors = Family(f"{NAMESPACE}_discovery_error", "gauge", "1 if the back-end reports an error", [])
    counts = dict.fromkeys(view.source_revisions, 0)
    for eps in view.services.values():
        for e in eps:
            counts[e.source] = counts.get(e.source, 0) + 1
    for source in sorted(counts):
        endpoints.samples.append(((("source", source),), counts[source]))
        errors.samples.append(((("source", source),), 1 if view.errors.get(source) else 0))
    yield endpoints
    yield errors
    yield _gauge("discovery_conflicts", "Conflicts between discovery back-ends", len(view.conflicts))


def serve(gauges: AgentGauges, addr: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """The agent's `/metrics` endpoint (not started): `collect(gauges)` read at each scrape."""
    return MetricsServer(lambda: render(collect(gauges)), addr, port)


__all__ = ["CONTENT_TYPE", "AgentGauges", "Family", "MetricsServer", "collect", "render", "serve"]
