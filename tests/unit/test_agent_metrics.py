"""The agent's Prometheus exposition (`render`) and its asyncio HTTP endpoint (`MetricsServer`)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from hostagent.agent.metrics import CONTENT_TYPE, AgentGauges, Family, MetricsServer, collect, render
from resolver.model import Conflict, Endpoint, View


def gauges(value: int) -> AgentGauges:
    return AgentGauges(
        datapath_stats=lambda: {"flows_active": 2, "bytes_in": value, "migrations": 1},
        applied_revision=lambda: value,
        mirror_revision=lambda: 43,
        table_generation=lambda: 7,
        table_rules=lambda: 100_001,
        listeners=lambda: 1,
        registry_reconnects=lambda: 0,
        legacy_connections=lambda: {"socks": 3},
        legacy_failures=lambda: {("upstream", "overload"): 5},
    )


def as_prometheus_client(family: Family) -> Metric:
    """The same family built with `prometheus_client` (the reference writer)."""
    labels = sorted({k for sample_labels, _ in family.samples for k, _ in sample_labels})
    cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = cls(family.name, family.doc, labels=labels)
    for sample_labels, value in family.samples:
        metric.add_metric([dict(sample_labels)[k] for k in labels], value)
    return metric


class Reference:
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return [as_prometheus_client(f) for f in self.families]


@pytest.mark.parametrize("value", [0, 42, 1_234_567, 98_765_432_101, 2**63])
def test_render_matches_prometheus_client_byte_for_byte(value: int) -> None:
    families = list(collect(gauges(value)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference(families))  # type: ignore[arg-type]
    assert render(families) == generate_latest(registry)


def test_render_escapes_and_parses() -> None:
    odd = Family("x_total", "counter", "a \\ doc\nline", [((("k", 'q"\\\n'),), 1.0)])
    text = render([odd]).decode()
    assert text == '# HELP x_total a \\\\ doc\\nline\n# TYPE x_total counter\nx_total{k="q\\"\\\\\\n"} 1.0\n'
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.samples[0].labels == {"k": 'q"\\\n'}


def test_every_family_parses_with_its_type() -> None:
    text = render(collect(gauges(10))).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["serval_agent_flows_active"] == "gauge"
    assert types["serval_agent_bytes_in"] == "counter"
    assert types["serval_agent_legacy_failures"] == "counter"


def test_discovery_back_ends_are_exported_per_source_when_configured() -> None:
    assert not any("discovery" in f.name for f in collect(gauges(1)))  # registry alone: none
    ep = Endpoint("web.x", "1", ("10.0.0.1",), 80, source="static")
    view = View(
        revision=3,
        services={"web.x": (ep, replace(ep, instance_id="2"), replace(ep, source="lan", tier=48))},
        source_revisions={"static": 2, "lan": 5, "dns": 1},
        conflicts=(Conflict("web.x", "", ("static", "lan"), "known to 2 back-ends"),),
        errors={"dns": "SERVFAIL"},
    )
    families = list(collect(replace(gauges(1), discovery=lambda: view)))
    samples = {f.name: f.samples for f in families}
    assert samples["serval_agent_discovery_endpoints"] == [
        ((("source", "dns"),), 0),
        ((("source", "lan"),), 1),
        ((("source", "static"),), 2),
    ]
    assert [v for _, v in samples["serval_agent_discovery_error"]] == [1, 0, 0]
    assert samples["serval_agent_discovery_conflicts"] == [((), 1)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference(families))  # type: ignore[arg-type]
    assert render(families) == generate_latest(registry)


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    return status, dict(f.split(": ", 1) for f in fields), body


async def test_server_serves_metrics_reads_at_scrape_time_and_refuses_the_rest() -> None:
    value = [1]
    g = gauges(0)
    g.applied_revision = lambda: value[-1]
    server = MetricsServer(lambda: render(collect(g)), "127.0.0.1", 0)
    port = await server.start()
    try:
        value.append(99)
        status, fields, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and fields["Content-Type"] == CONTENT_TYPE
        assert int(fields["Content-Length"]) == len(body)
        assert "serval_agent_applied_revision 99.0" in body.decode().splitlines()
        assert (await http(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.0 404 Not Found"
        assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.0 405 Method Not Allowed"
        # a request head that never ends is dropped at stop, without a leaked task
        _, stuck = await asyncio.open_connection("127.0.0.1", port)
        stuck.write(b"GET /metrics HTTP/1.1\r\n")
        await stuck.drain()
        await asyncio.sleep(0.05)
    finally:
        await server.stop()
    stuck.close()
    await stuck.wait_closed()
