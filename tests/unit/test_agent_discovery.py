"""The agent's extra discovery back-ends: view → DesiredTable entries, and the table
surviving a registry snapshot (the real Rust table), and the `serval agent` options."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import pytest

from deploy.cli import build_parser
from hostagent.agent.cli import config_from_args
from hostagent.agent.desired import SAL_PORT_KEY
from hostagent.agent.discovery import (
    AnnouncingRegistrar,
    ExtraSources,
    build_announcer,
    build_resolver,
    table_entries,
)
from hostagent.agent.mirror import AgentMirror
from hostagent.sal_core.desired import DesiredTable
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from resolver.merge import merge
from resolver.model import Endpoint, View
from resolver.sources import DEFAULT_PRECEDENCE, DiscoveryConfig, parse_dns_name, parse_precedence
from tests.fakes.backend import snapshot_of


def ep(iid: str, service: str = "web.x", sal: str | None = "7946", **kw: object) -> Endpoint:
    metadata = {SAL_PORT_KEY: sal} if sal is not None else {}
    return Endpoint(service, iid, ("10.0.0.1",), 80, metadata=metadata, **kw)  # type: ignore[arg-type]


def view_of(**sources: list[Endpoint]) -> View:
    return merge([snapshot_of(s, *es) for s, es in sources.items()], DEFAULT_PRECEDENCE)


def test_table_entries_keep_sal_capable_extras_with_effective_tiers() -> None:
    view = view_of(
        registry=[ep("r1")],
        static=[
            ep("s1", tier=2),
            ep("no-sal", sal=None),
            ep("bad-sal", sal="99999"),
            ep("sick", healthy=False),
        ],
        lan=[ep("l1", weight=0)],
    )
    assert table_entries(view) == {
        ("web.x", "static/s1"): (("10.0.0.1",), 7946, 100, 16 + 2, "", ""),
        ("web.x", "lan/l1"): (("10.0.0.1",), 7946, 0, 3 * 16, "", ""),
    }


def test_extras_update_and_survive_a_registry_snapshot() -> None:
    table = DesiredTable()
    extras = ExtraSources(table)
    mirror = AgentMirror(table, on_clear=extras.restore)
    assert extras.update(view_of(static=[ep("s1"), ep("s2", service="db.x")]))
    assert (table.instances, table.services) == (2, 2)
    assert not extras.update(view_of(static=[ep("s1"), ep("s2", service="db.x")]))

    reg = pb.Instance(service="web.x", instance_id="r1", addresses=["10.0.0.9"], port=1, weight=1,
                      metadata={SAL_PORT_KEY: "7000"})  # fmt: skip
    mirror.apply(pb.WatchResponse(kind=pb.WatchResponse.SNAPSHOT_END, instances=[reg], snapshot_start=True))
    assert table.instances == 3  # the snapshot cleared the table; the extras were put back

    assert extras.update(view_of(static=[ep("s1")]))
    assert (table.instances, table.services) == (2, 1)
    targets = {t.host: t.tier for rule in table.rules([], []) for t in rule.targets}
    assert targets["10.0.0.9"] < targets["10.0.0.1"]  # the registry instance is preferred


def test_registry_tier_offset() -> None:
    table = DesiredTable()
    mirror = AgentMirror(table, tier_offset=16)
    reg = pb.Instance(service="web.x", instance_id="r1", addresses=["10.0.0.9"], port=1, weight=1,
                      metadata={SAL_PORT_KEY: "7000"})  # fmt: skip
    mirror.apply(pb.WatchResponse(kind=pb.WatchResponse.SNAPSHOT_END, instances=[reg], snapshot_start=True))
    ExtraSources(table).update(view_of(static=[ep("s1")]))
    [rule] = table.rules([], [])
    assert [t.host for t in sorted(rule.targets, key=lambda t: t.tier)] == ["10.0.0.1", "10.0.0.9"]


def test_no_extra_backends_means_no_resolver() -> None:
    args = build_parser().parse_args(["agent"])
    assert build_resolver(config_from_args(args).discovery) is None


def test_agent_discovery_options(tmp_path: Path) -> None:
    argv = ["agent", "--static", str(tmp_path / "s.toml"), "--lan", "--lan-port", "9999",
            "--dns-name", "web.service.consul", "--dns-name", "db.example=5432",
            "--dns-server", "127.0.0.1:8600", "--precedence", "static=0,registry=1"]  # fmt: skip
    d = config_from_args(build_parser().parse_args(argv)).discovery
    assert d.static_file == tmp_path / "s.toml" and d.lan and d.lan_port == 9999
    assert d.dns_names == (("web.service.consul", None), ("db.example", 5432))
    assert d.dns_servers == ("127.0.0.1:8600",)
    assert d.precedence == {"registry": 1, "static": 0, "dns": 2, "lan": 3}
    assert d.registry_tier_offset == 16
    resolver = build_resolver(d)
    assert resolver is not None and [b.name for b in resolver.backends] == ["static", "lan", "dns"]


@pytest.mark.parametrize("text", ["=5", "a=0", "a=x", "a=70000"])
def test_parse_dns_name_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_dns_name(text)


@pytest.mark.parametrize("text", ["registry", "nope=1", "static=x", "static=16"])
def test_parse_precedence_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_precedence(text)


class RecordingRegistrar:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    async def put(self, instance: Instance) -> int:
        self.calls.append(("put", instance.service, instance.instance_id))
        if self.fail:
            raise RuntimeError("registry unreachable")
        return 7

    async def remove(self, service: str, instance_id: str) -> int:
        self.calls.append(("remove", service, instance_id))
        return 8


class RecordingAnnouncer:
    def __init__(self) -> None:
        self.sets: list[list[tuple[str, str, str]]] = []

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        self.sets.append([(e.service, e.instance_id, e.metadata.get(SAL_PORT_KEY, "")) for e in endpoints])


def listener(service: str, iid: str) -> Instance:
    return Instance(service, iid, ("10.0.0.5",), 7946, metadata={SAL_PORT_KEY: "7946"})


async def test_with_lan_what_the_agent_registers_is_also_announced_and_withdrawn() -> None:
    inner, announcer = RecordingRegistrar(), RecordingAnnouncer()
    reg = AnnouncingRegistrar(inner, announcer)  # type: ignore[arg-type]
    assert await reg.put(listener("web.x", "a-1")) == 7
    assert await reg.put(listener("db.x", "a-2")) == 7
    assert announcer.sets[-1] == [("web.x", "a-1", "7946"), ("db.x", "a-2", "7946")]
    assert await reg.remove("web.x", "a-1") == 8
    assert announcer.sets[-1] == [("db.x", "a-2", "7946")]
    assert [e.key for e in reg.announced] == [("db.x", "a-2")]
    assert inner.calls == [("put", "web.x", "a-1"), ("put", "db.x", "a-2"), ("remove", "web.x", "a-1")]


async def test_a_registry_failure_does_not_withhold_the_lan_announcement() -> None:
    announcer = RecordingAnnouncer()
    reg = AnnouncingRegistrar(RecordingRegistrar(fail=True), announcer)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await reg.put(listener("web.x", "a-1"))
    assert announcer.sets == [[("web.x", "a-1", "7946")]]


def test_the_announcer_exists_only_with_lan_and_gets_a_valid_host_id() -> None:
    assert build_announcer(DiscoveryConfig(), "h1") is None
    announcer = build_announcer(DiscoveryConfig(lan=True), "host with spaces/and-slashes")
    assert announcer is not None and announcer.host == "host-with-spaces-and-slashes"
