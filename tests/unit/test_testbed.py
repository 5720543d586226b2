"""The test bed's pure plan (`deploy.testbed`): topology, components, start order, validation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from deploy.testbed import (
    AgentSpec,
    Plan,
    SpecError,
    TestbedSpec,
    describe,
    plan,
    probe_argv,
    topology_of,
)
from deploy.topology import LabNames, Topology

STATE = Path("/run/serval-testbed/tb")


def make(spec: TestbedSpec) -> Plan:
    return plan(spec, run="tb", state_dir=STATE, python="/venv/bin/python", etcd_binary="/usr/bin/etcd")


def flag(argv: tuple[str, ...], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in `argv`."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise KeyError(name)


def test_the_default_bed_is_3_etcd_2_registries_dns_dashboard_3_agents_in_three_stages() -> None:
    p = make(TestbedSpec())
    assert [[c.name for c in stage] for stage in p.stages] == [
        ["etcd1", "etcd2", "etcd3"],
        ["registry1", "registry2"],
        ["dns", "dashboard", "agent1", "agent2", "agent3"],
    ]
    assert all(c.host == c.name for c in p.components)  # each component in its own namespace
    addresses = list(p.addresses.values())
    assert len(set(addresses)) == len(addresses) == 10
    assert all(ipaddress.ip_address(a).is_private for a in addresses)


def test_etcd_members_form_one_cluster_and_every_client_gets_every_replica() -> None:
    p = make(TestbedSpec())
    etcd = [c for c in p.components if c.kind == "etcd"]
    initial = {flag(c.argv, "--initial-cluster") for c in etcd}
    assert len(initial) == 1 and initial.pop().count("=http://") == 3
    assert {flag(c.argv, "--initial-cluster-token") for c in etcd} == {"serval-testbed-tb"}
    endpoints = ",".join(p.endpoints("etcd"))
    assert all(flag(c.argv, "--etcd") == endpoints for c in p.components if c.kind == "registry")
    registry = ",".join(p.endpoints("registry"))
    assert registry.count(":7070") == 2
    clients = [c for c in p.components if c.kind in ("dns", "dashboard", "agent")]
    assert all(flag(c.argv, "--registry") == registry for c in clients)


def test_every_component_listens_on_its_own_address_and_probes_it() -> None:
    p = make(TestbedSpec())
    for c in p.components:
        address = p.addresses[c.host]
        assert address in c.endpoint
        assert c.probe[:3] == ("/venv/bin/python", "-m", "deploy.netcheck")
        assert probe_argv(c, 5)[-2:] == ["--wait", "5"]
    assert p.component("dns").endpoint.endswith(":53")
    assert p.component("dashboard").probe[-1].endswith("/healthz")
    assert p.component("agent2").probe[-1] == f"unix:{STATE}/agents/agent2.sock"


def test_agents_may_be_multi_homed_and_plain_hosts_run_nothing() -> None:
    spec = TestbedSpec(
        etcd_members=1,
        registries=1,
        dns=False,
        dashboard=False,
        agents=(AgentSpec("server1", networks=("lan", "lan2"), args=("--path-timeout", "3")), AgentSpec("c")),
        hosts=("mallory",),
    )
    p = make(spec)
    topo = Topology.from_dict(p.topology)
    assert topo.hosts == ("etcd1", "registry1", "server1", "c", "mallory")
    assert [i.network for i in topo.interfaces if i.host == "server1"] == ["lan", "lan2"]
    assert [c.name for c in p.components] == ["etcd1", "registry1", "server1", "c"]
    assert p.component("server1").argv[-2:] == ("--path-timeout", "3")


def test_without_etcd_agents_run_without_a_registry_and_may_use_the_lan() -> None:
    spec = TestbedSpec(
        etcd_members=0, registries=0, dns=False, dashboard=False, agents=(AgentSpec("a", lan=True),)
    )
    p = make(spec)
    (agent,) = p.components
    assert flag(agent.argv, "--registry") == "none"
    assert flag(agent.argv, "--lan-interface") == p.addresses["a"]
    bare = make(
        TestbedSpec(etcd_members=0, registries=0, dns=False, dashboard=False, agents=(), hosts=("a",))
    )
    assert bare.stages == () and list(topology_of(TestbedSpec(agents=()))["hosts"])[-1] == "dashboard"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (TestbedSpec(etcd_members=0), "need etcd"),
        (TestbedSpec(registries=0), "need a registry"),
        (TestbedSpec(agents=(AgentSpec("etcd1"),)), "reserved"),
        (TestbedSpec(agents=(AgentSpec("a"),), hosts=("a",)), "duplicate"),
        (TestbedSpec(agents=(AgentSpec("a", networks=()),)), "networks"),
        (TestbedSpec(etcd_members=8), "etcd members"),
    ],
)
def test_invalid_specs_are_refused(spec: TestbedSpec, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        make(spec)


def test_describe_says_where_everything_is_and_how_to_use_it() -> None:
    p = make(TestbedSpec())
    names = LabNames("tb")
    text = describe(p, {h: names.namespace(h) for h in p.topology["hosts"]}, "/venv/bin/python", "tb")
    assert "ip netns exec sv-tb-agent1 /venv/bin/serval resolve web.tb" in text
    assert "sv-tb-etcd3" in text and "serval testbed down --name tb" in text
