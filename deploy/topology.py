"""A multi-host network topology for one Linux machine, as pure data: no I/O, no clock.

A `Topology` has hosts, networks (L2 segments with an IPv4 subnet and, unless
disabled, an IPv6 /64) and each host's interfaces, one per network the host is
on (a host on several networks is multi-homed). `LabNames` gives every kernel
object of one run a unique name, and `setup_commands` is the ordered list of
`ip` commands that builds the topology; `deploy.netns.NetnsLab` executes them.

Determinism: the same description always yields the same addresses. Networks
without an explicit subnet get ``10.77.<n>.0/24`` and ``fd00:77:<n>::/64``,
where n is 1 + the network's position (networks section first, then in order
of first use by a host). A host's address on every network is
``network address + 1 + the host's position`` in declaration order, so
appending a host never renumbers the others.

The topology is described by a plain dict (TOML- and JSON-friendly)::

    {"networks": {"lan": {}, "wan": {"ipv4": "10.77.9.0/24", "ipv6": False}},
     "hosts": {"a": ["lan"], "b": ["lan"], "gw": {"eth0": "lan", "wan0": "wan"}}}

A host is either a list of network names (interfaces ``eth0``, ``eth1``, ... in
that order) or a mapping interface name -> network name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "sv-"
"""Every namespace a lab creates is named ``sv-<run>`` (the switch) or ``sv-<run>-<host>``."""

_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
_IFACE = re.compile(r"[a-z][a-z0-9]{0,14}")  # the kernel's limit is 15 characters
_RUN = re.compile(r"[a-z0-9]{1,12}")
_NAMESPACE = re.compile(rf"{re.escape(PREFIX)}(?P<run>[a-z0-9]{{1,12}})(-(?P<host>[a-z][a-z0-9]*))?")


class TopologyError(ValueError):
    """The description is invalid; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Network:
    """One L2 segment (a bridge in the switch namespace)."""

    name: str
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network | None


@dataclass(frozen=True, slots=True)
class Interface:
    """A host's interface on one network, with its planned addresses (with prefix length)."""

    host: str
    name: str
    network: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface | None


@dataclass(frozen=True, slots=True)
class Topology:
    """Hosts, networks and interfaces; build it with `from_dict`, which validates and assigns addresses."""

    hosts: tuple[str, ...]
    networks: tuple[Network, ...]
    interfaces: tuple[Interface, ...]

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Topology:
        """Parse and validate a description (see the module docstring); raise `TopologyError`."""
        unknown = set(spec) - {"hosts", "networks"}
        if unknown:
            raise TopologyError(f"unknown topology keys {sorted(unknown)}")
        hosts = _host_interfaces(spec.get("hosts") or {})
        networks = _networks(spec.get("networks") or {}, hosts)
        by_name = {n.name: n for n in networks}
        interfaces = tuple(
            _interface(host, index, iface, by_name[net])
            for index, (host, ifaces) in enumerate(hosts.items())
            for iface, net in ifaces.items()
        )
        return cls(tuple(hosts), networks, interfaces)

    def interface(self, host: str, where: str) -> Interface:
        """The interface of `host` named `where`, or else the one on network `where`; KeyError if none."""
        mine = [i for i in self.interfaces if i.host == host]
        for iface in mine:
            if iface.name == where:
                return iface
        for iface in mine:
            if iface.network == where:
                return iface
        raise KeyError(f"host {host!r} has no interface or network {where!r}")

    def network(self, name: str) -> Network:
        """The network called `name`; KeyError if none."""
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(f"no network {name!r}")


def _host_interfaces(hosts: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """host -> {interface name -> network name}, in declaration order, validated."""
    if not hosts:
        raise TopologyError("a topology needs at least one host")
    if len(hosts) > 250:
        raise TopologyError(f"{len(hosts)} hosts: at most 250")
    result: dict[str, dict[str, str]] = {}
    for host, value in hosts.items():
        _check_name("host", host)
        if isinstance(value, Mapping):
            ifaces = {str(k): str(v) for k, v in value.items()}
        elif isinstance(value, Sequence) and not isinstance(value, str):
            ifaces = {f"eth{i}": str(net) for i, net in enumerate(value)}
        else:
            raise TopologyError(f"host {host!r}: expected a list of networks or a mapping iface -> network")
        for iface, net in ifaces.items():
            if not _IFACE.fullmatch(iface):
                raise TopologyError(f"host {host!r}: bad interface name {iface!r} (want {_IFACE.pattern})")
            _check_name("network", net)
        if len(set(ifaces.values())) != len(ifaces):
            raise TopologyError(f"host {host!r}: at most one interface per network")
        result[host] = ifaces
    return result


def _networks(declared: Mapping[str, Any], hosts: Mapping[str, Mapping[str, str]]) -> tuple[Network, ...]:
    names = list(declared)
    for ifaces in hosts.values():
        names += [n for n in ifaces.values() if n not in names]
    networks = tuple(_network(i, name, declared.get(name) or {}) for i, name in enumerate(names))
    for i, a in enumerate(networks):
        for b in networks[i + 1 :]:
            if a.ipv4.overlaps(b.ipv4) or (a.ipv6 and b.ipv6 and a.ipv6.overlaps(b.ipv6)):
                raise TopologyError(f"networks {a.name!r} and {b.name!r} overlap")
    return networks


def _network(index: int, name: str, spec: Mapping[str, Any]) -> Network:
    _check_name("network", name)
    unknown = set(spec) - {"ipv4", "ipv6"}
    if unknown:
        raise TopologyError(f"network {name!r}: unknown keys {sorted(unknown)}")
    n = index + 1
    if n > 255 and "ipv4" not in spec:
        raise TopologyError(f"network {name!r}: give an explicit ipv4 subnet beyond 255 networks")
    try:
        ipv4 = ipaddress.IPv4Network(spec.get("ipv4") or f"10.77.{n}.0/24")
        v6 = spec.get("ipv6", True)
        ipv6 = None if v6 is False else ipaddress.IPv6Network(f"fd00:77:{n:x}::/64" if v6 is True else v6)
    except ValueError as e:
        raise TopologyError(f"network {name!r}: {e}") from None
    if not ipv4.is_private or (ipv6 is not None and not ipv6.is_private):
        raise TopologyError(f"network {name!r}: use private address ranges")
    return Network(name, ipv4, ipv6)


def _interface(host: str, host_index: int, name: str, net: Network) -> Interface:
    number = host_index + 1
    if number >= net.ipv4.num_addresses - 1:
        raise TopologyError(f"network {net.name!r} ({net.ipv4}) is too small for host {host!r}")
    ipv4 = ipaddress.IPv4Interface(f"{net.ipv4.network_address + number}/{net.ipv4.prefixlen}")
    ipv6 = None
    if net.ipv6 is not None:
        ipv6 = ipaddress.IPv6Interface(f"{net.ipv6.network_address + number}/{net.ipv6.prefixlen}")
    return Interface(host, name, net.name, ipv4, ipv6)


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TopologyError(f"bad {kind} name {name!r} (want {_NAME.pattern})")


@dataclass(frozen=True, slots=True)
class LabNames:
    """Kernel object names of one run: unique per run, so parallel or aborted runs never collide.

    Namespaces carry the run (``sv-<run>`` is the switch, ``sv-<run>-<host>`` a
    host). Interface names need no run: they live inside the run's namespaces.
    A run id is 1-12 lowercase letters and digits: random hex for a lab, or the
    name of a `serval testbed` (e.g. ``sv-tb-etcd1``); no run contains ``-``, so
    a namespace name always splits back into its run and host.
    """

    run: str

    def __post_init__(self) -> None:
        if not _RUN.fullmatch(self.run):
            raise ValueError(f"run id {self.run!r} must be 1-12 lowercase letters or digits")

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.run}"

    def namespace(self, host: str) -> str:
        return f"{PREFIX}{self.run}-{host}"

    @staticmethod
    def bridge(network_index: int) -> str:
        return f"br{network_index}"

    @staticmethod
    def switch_port(interface_index: int) -> str:
        """The switch-side end of the veth of `Topology.interfaces[interface_index]`."""
        return f"p{interface_index}"


def run_of_namespace(name: str) -> str | None:
    """The run id if `name` is a namespace a lab creates (``sv-<run>[-<host>]``), else None."""
    m = _NAMESPACE.fullmatch(name)
    return m.group("run") if m else None


def ip_in(namespace: str, *args: str) -> list[str]:
    """``ip -n NAMESPACE args...``."""
    return ["ip", "-n", namespace, *args]


def exec_in(namespace: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `namespace` (``ip netns exec``: it execs, so the pid is the command's)."""
    return ["ip", "netns", "exec", namespace, *argv]


def setup_commands(topo: Topology, names: LabNames) -> list[list[str]]:
    """Every command that builds `topo`, in order; the root namespace gets no interface or address.

    1. the switch namespace and the host namespaces, loopback up in each;
    2. per network, a bridge in the switch namespace (no STP, no multicast snooping);
    3. per interface, a veth created inside the host namespace whose peer goes
       straight into the switch namespace, enslaved to the network's bridge;
       addresses (IPv6 without DAD, kept when the link goes down), link up.
    """
    sw = names.switch
    cmds = [["ip", "netns", "add", sw], *(["ip", "netns", "add", names.namespace(h)] for h in topo.hosts)]
    for ns in [sw, *(names.namespace(h) for h in topo.hosts)]:
        cmds.append(ip_in(ns, "link", "set", "dev", "lo", "up"))
    for h in topo.hosts:
        keep = "net.ipv6.conf.all.keep_addr_on_down=1"
        cmds.append(exec_in(names.namespace(h), ["sysctl", "-q", "-w", keep]))
    for i, net in enumerate(topo.networks):
        br = names.bridge(i)
        cmds.append(ip_in(sw, "link", "add", br, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"))
        cmds.append(ip_in(sw, "link", "set", "dev", br, "alias", net.name, "up"))
    net_index = {n.name: i for i, n in enumerate(topo.networks)}
    for k, iface in enumerate(topo.interfaces):
        ns, port = names.namespace(iface.host), names.switch_port(k)
        cmds += [
            ip_in(ns, "link", "add", iface.name, "type", "veth", "peer", "name", port, "netns", sw),
            ip_in(sw, "link", "set", "dev", port, "alias", f"{iface.host}/{iface.name}"),
            ip_in(sw, "link", "set", "dev", port, "master", names.bridge(net_index[iface.network]), "up"),
            ip_in(ns, "addr", "add", str(iface.ipv4), "dev", iface.name),
        ]
        if iface.ipv6 is not None:
            cmds.append(ip_in(ns, "addr", "add", str(iface.ipv6), "dev", iface.name, "nodad"))
        cmds.append(ip_in(ns, "link", "set", "dev", iface.name, "up"))
    return cmds
