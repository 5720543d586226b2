"""The pure test-bed topology (`deploy.topology`): parsing, addressing, names, set-up commands."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from deploy.topology import (
    LabNames,
    Topology,
    TopologyError,
    run_of_namespace,
    setup_commands,
)

SPEC: dict[str, Any] = {
    "networks": {"wan": {"ipv4": "10.77.9.0/24", "ipv6": False}},
    "hosts": {"a": ["lan"], "b": ["lan"], "gw": {"eth0": "lan", "up0": "wan"}},
}


def test_addresses_are_deterministic_from_declaration_order() -> None:
    topo = Topology.from_dict(SPEC)
    assert topo.hosts == ("a", "b", "gw")
    assert [(n.name, str(n.ipv4), str(n.ipv6)) for n in topo.networks] == [
        ("wan", "10.77.9.0/24", "None"),
        ("lan", "10.77.2.0/24", "fd00:77:2::/64"),
    ]
    assert [(i.host, i.name, i.network, str(i.ipv4), str(i.ipv6)) for i in topo.interfaces] == [
        ("a", "eth0", "lan", "10.77.2.1/24", "fd00:77:2::1/64"),
        ("b", "eth0", "lan", "10.77.2.2/24", "fd00:77:2::2/64"),
        ("gw", "eth0", "lan", "10.77.2.3/24", "fd00:77:2::3/64"),
        ("gw", "up0", "wan", "10.77.9.3/24", "None"),
    ]
    assert Topology.from_dict(SPEC) == topo


def test_appending_a_host_renumbers_nobody() -> None:
    bigger = {**SPEC, "hosts": {**SPEC["hosts"], "c": ["lan", "wan"]}}
    before = Topology.from_dict(SPEC).interfaces
    assert Topology.from_dict(bigger).interfaces[: len(before)] == before


def test_interface_lookup_by_name_or_network() -> None:
    topo = Topology.from_dict(SPEC)
    assert topo.interface("gw", "up0") == topo.interface("gw", "wan")
    with pytest.raises(KeyError):
        topo.interface("a", "wan")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"hosts": {}}, "at least one host"),
        ({"hosts": {"A": ["lan"]}}, "bad host name"),
        ({"hosts": {"a-b": ["lan"]}}, "bad host name"),
        ({"hosts": {"a": ["Lan"]}}, "bad network name"),
        ({"hosts": {"a": {"averyveryverylong0": "lan"}}}, "bad interface name"),
        ({"hosts": {"a": ["lan", "lan"]}}, "one interface per network"),
        ({"hosts": {"a": "lan"}}, "expected a list"),
        ({"hosts": {"a": ["x", "y"]}, "networks": {"x": {"ipv4": "10.77.0.0/16"}}}, "overlap"),
        ({"hosts": {"a": ["x"]}, "networks": {"x": {"ipv4": "8.8.8.0/24"}}}, "private"),
        ({"hosts": {"a": ["x"]}, "networks": {"x": {"ipv4": "10.1.1.1/24"}}}, "host bits"),
        ({"hosts": {"a": ["x"]}, "networks": {"x": {"mtu": 9000}}}, "unknown keys"),
        ({"hosts": {"a": ["x"]}, "links": []}, "unknown topology keys"),
        (
            {"hosts": {f"h{i}": ["x"] for i in range(3)}, "networks": {"x": {"ipv4": "10.7.0.0/31"}}},
            "too small",
        ),
    ],
)
def test_invalid_descriptions_say_why(spec: dict[str, Any], why: str) -> None:
    with pytest.raises(TopologyError, match=why):
        Topology.from_dict(spec)


def test_names_are_unique_per_run_and_short() -> None:
    names = LabNames("0a1b2c")
    assert names.switch == "sv-0a1b2c"
    assert names.namespace("gw") == "sv-0a1b2c-gw"
    assert run_of_namespace(names.switch) == run_of_namespace(names.namespace("gw")) == "0a1b2c"
    assert run_of_namespace("sv-0a1b2c-") is None
    assert run_of_namespace("other") is None
    assert max(len(names.bridge(999)), len(names.switch_port(9999))) <= 15
    with pytest.raises(ValueError):
        LabNames("../x")
    named = LabNames("tb")  # a `serval testbed` uses its name as the run id
    assert run_of_namespace(named.namespace("etcd1")) == run_of_namespace(named.switch) == "tb"


def test_setup_commands_never_touch_the_root_namespace() -> None:
    topo = Topology.from_dict(SPEC)
    cmds = setup_commands(topo, LabNames("0a1b2c"))
    adds = [c[3] for c in cmds if c[:3] == ["ip", "netns", "add"]]
    assert adds == ["sv-0a1b2c", "sv-0a1b2c-a", "sv-0a1b2c-b", "sv-0a1b2c-gw"]
    rest = cmds[len(adds) :]
    # every other command names a namespace: `ip -n NS ...` or `ip netns exec NS ...`
    assert all(c[:2] == ["ip", "-n"] or c[:3] == ["ip", "netns", "exec"] for c in rest)
    veths = [c for c in rest if "veth" in c]
    assert len(veths) == len(topo.interfaces)
    assert all(c[-2:] == ["netns", "sv-0a1b2c"] for c in veths)  # peer goes straight to the switch
    addrs = [c[5] for c in rest if c[3:5] == ["addr", "add"]]
    assert [ipaddress.ip_interface(a) for a in addrs] == [
        a for i in topo.interfaces for a in (i.ipv4, i.ipv6) if a is not None
    ]
