"""Prometheus metrics of the agent (`serval_agent_…`), read at scrape time.

Nothing is counted on a hot path here: `collect` reads the data path's
`stats()` and the control plane's state when Prometheus scrapes. The scrape
is served on the agent's event loop (`MetricsServer`, a minimal HTTP/1.0
endpoint on asyncio), so the values are read between two loop steps: a
scrape may see values a moment apart, never torn ones.

The exposition is the Prometheus text format 0.0.4, written here
(`render`) as `prometheus_client.generate_latest` writes it — the
`prometheus_client` package, its HTTP server and `http.server` cost the agent
~4.5 MB of RSS for two metric types (`tests/unit/test_agent_metrics.py`
compares the bytes with `generate_latest`'s and parses them with
`prometheus_client`'s parser; `prometheus-client` is a dev dependency only).

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

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from hostagent.agent.datapath import GAUGE_KEYS, STATS_KEYS
from resolver.model import View

NAMESPACE = "serval_agent"
LEGACY_KINDS = ("socks", "upstream")
LEGACY_FAILURES = ("handshake", "connect", "overload")
# Every data-path counter but the gauges (`flows_active`, `dgram_flows_active`).
_DATAPATH_COUNTERS = tuple(key for key in STATS_KEYS if key not in GAUGE_KEYS)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: `name` is the exposed name (counters end in `_total`)."""

    name: str
    kind: str  # "counter" or "gauge"
    doc: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


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


def render(families: Iterator[Family] | Sequence[Family]) -> bytes:
    """The Prometheus text format (0.0.4), as `prometheus_client.generate_latest` writes it."""
    out: list[str] = []
    for f in families:
        doc = f.doc.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {f.name} {doc}\n# TYPE {f.name} {f.kind}\n")
        for labels, value in f.samples:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
            out.append(
                f"{f.name}{{{pairs}}} {_go_float(value)}\n" if pairs else f"{f.name} {_go_float(value)}\n"
            )
    return "".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go_float(value: float) -> str:
    """Go's float formatting, as Prometheus clients write sample values."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class MetricsServer:
    """`GET /metrics` on `(addr, port)` (port 0 = any), served on the running event loop.

    HTTP/1.0-style: one request per connection, then close. Any other path is
    404, any other method 405; a request head over 8 KiB or slower than 5 s
    is dropped. `stop()` closes the socket and cancels scrapes in progress.
    """

    HEAD_LIMIT = 8192
    HEAD_TIMEOUT = 5.0

    def __init__(self, gauges: AgentGauges, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.gauges = gauges
        self.addr = addr
        self.port = port
        self._server: asyncio.Server | None = None
        self._scrapes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._server = await asyncio.start_server(self._serve, self.addr, self.port, limit=self.HEAD_LIMIT)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._scrapes):
            task.cancel()
        await asyncio.gather(*self._scrapes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._scrapes.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.HEAD_TIMEOUT)
            writer.write(self._respond(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            self._scrapes.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def body(self) -> bytes:
        """The exposition served; a subclass serving other metrics overrides it (`serval dns`)."""
        return render(collect(self.gauges))

    def _respond(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path not in (b"/metrics", b"/"):
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        else:
            status, ctype, body = "200 OK", CONTENT_TYPE, self.body()
        fields = f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        return f"HTTP/1.0 {status}\r\n{fields}\r\n".encode() + body
