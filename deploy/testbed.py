"""The local multi-host test bed, as pure data: a `TestbedSpec` becomes a `Plan`.

The test bed is Serval as it runs in a datacenter, on one Linux machine: every
component is a process in its own network namespace (a host of a
`deploy.topology.Topology`), all hosts on one shared network ``lan`` (agents may
join more networks). By default: 3 etcd members forming one cluster, 2 registry
replicas, the DNS bridge, the ops dashboard and 3 host agents.

`plan(spec, ...)` decides everything and does no I/O: the topology, and the
components in start stages. Each `Component` carries the argv to run inside its
host, the endpoint clients use, and a probe (a ``python -m deploy.netcheck``
argv, run inside the same host) that exits 0 when the component is healthy.
The components of one stage start together; a stage starts once every probe of
the previous one has passed (etcd members, then registry replicas, then the
DNS bridge, dashboard and agents). `deploy.testbed_run` executes the plan.

Fixed ports on each host's ``lan`` address: etcd 2379 (peers 2380), registry
7070, DNS 53 (UDP+TCP), dashboard 8080 (HTTP), agent SAL 7946; an agent's
metrics on 127.0.0.1:9464 of its own host and its local API socket in the state
folder (``agents/<host>.sock``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deploy.topology import Topology
from registry.raft.local_etcd import EtcdSettings, etcd_command

NETWORK = "lan"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
REGISTRY_PORT = 7070
DNS_PORT = 53
DASHBOARD_PORT = 8080
SAL_PORT = 7946
AGENT_METRICS_PORT = 9464
DNS_ZONE = "svc.serval."
TOKEN_FILE = "dashboard-tokens"

_HOST = re.compile(r"[a-z][a-z0-9]{0,15}")
_RESERVED = re.compile(r"etcd\d+|registry\d+|dns|dashboard")


class SpecError(ValueError):
    """The spec is invalid; the message says why."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A host running a host agent.

    `networks`: the host's networks, one interface each (``eth0``, ``eth1``, ...);
    the first carries the address the agent is reached at. `lan`: LAN discovery
    (``--lan``, announced on that address). `args`: extra ``serval agent`` flags.
    """

    host: str
    networks: tuple[str, ...] = (NETWORK,)
    args: tuple[str, ...] = ()
    lan: bool = False
    zone: str = ""


def numbered_agents(count: int) -> tuple[AgentSpec, ...]:
    """Agents on hosts ``agent1`` .. ``agent<count>``, on ``lan`` only."""
    return tuple(AgentSpec(f"agent{i}") for i in range(1, count + 1))


@dataclass(frozen=True, slots=True)
class TestbedSpec:
    """What to run. The default is the full bed: 3 etcd, 2 registries, DNS, dashboard, 3 agents.

    `etcd_members` 0 means no etcd (then no registry: agents run with
    ``--registry none``); `registries` needs etcd, `dns` and `dashboard` need a
    registry. `hosts` are extra hosts on ``lan`` that run nothing (for the
    test's own processes). `lease_ttl` and `address_poll` are the agents'.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    etcd_members: int = 3
    registries: int = 2
    dns: bool = True
    dashboard: bool = True
    agents: tuple[AgentSpec, ...] = field(default_factory=lambda: numbered_agents(3))
    hosts: tuple[str, ...] = ()
    lease_ttl: int = 5
    address_poll: float = 2.0

    def validate(self) -> None:
        """Raise `SpecError` unless the spec can be planned."""
        if not 0 <= self.etcd_members <= 7:
            raise SpecError(f"{self.etcd_members} etcd members: want 0..7")
        if not 0 <= self.registries <= 9:
            raise SpecError(f"{self.registries} registries: want 0..9")
        if self.registries and not self.etcd_members:
            raise SpecError("registry replicas need etcd members")
        if (self.dns or self.dashboard) and not self.registries:
            raise SpecError("the DNS bridge and the dashboard need a registry replica")
        names = [a.host for a in self.agents] + list(self.hosts)
        for name in names:
            if not _HOST.fullmatch(name) or _RESERVED.fullmatch(name):
                raise SpecError(f"bad or reserved host name {name!r}")
        if len(set(names)) != len(names):
            raise SpecError(f"duplicate host names in {names}")
        for agent in self.agents:
            if not agent.networks or len(set(agent.networks)) != len(agent.networks):
                raise SpecError(
                    f"agent {agent.host!r}: networks {agent.networks} must be distinct, not empty"
                )


@dataclass(frozen=True, slots=True)
class Component:
    """One process of the bed. `probe` runs inside `host` and exits 0 when healthy;
    append ``--wait SECONDS`` to keep trying (see `probe_argv`)."""

    name: str
    kind: str  # etcd | registry | dns | dashboard | agent
    host: str
    argv: tuple[str, ...]
    endpoint: str
    probe: tuple[str, ...]


def probe_argv(component: Component, wait: float) -> list[str]:
    """The component's probe, retrying for `wait` seconds."""
    return [*component.probe, "--wait", str(wait)]


@dataclass(frozen=True, slots=True)
class Plan:
    """The topology (a `Topology.from_dict` description) and the components in start stages."""

    topology: dict[str, Any]
    stages: tuple[tuple[Component, ...], ...]
    addresses: dict[str, str]  # host -> its address on its first network (``lan`` but for some agents)
    state_dir: Path

    @property
    def components(self) -> list[Component]:
        return [c for stage in self.stages for c in stage]

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r}")

    def endpoints(self, kind: str) -> list[str]:
        """The endpoints of every component of `kind`, in start order."""
        return [c.endpoint for c in self.components if c.kind == kind]


def topology_of(spec: TestbedSpec) -> dict[str, Any]:
    """Hosts in a fixed order (etcd, registries, DNS, dashboard, agents, plain hosts), so the same
    spec always gives the same addresses; every host is on ``lan``, agents also on their others."""
    hosts: dict[str, list[str]] = {}
    for i in range(1, spec.etcd_members + 1):
        hosts[f"etcd{i}"] = [NETWORK]
    for i in range(1, spec.registries + 1):
        hosts[f"registry{i}"] = [NETWORK]
    if spec.dns:
        hosts["dns"] = [NETWORK]
    if spec.dashboard:
        hosts["dashboard"] = [NETWORK]
    for agent in spec.agents:
        hosts[agent.host] = list(agent.networks)
    for host in spec.hosts:
        hosts[host] = [NETWORK]
    return {"networks": {NETWORK: {}}, "hosts": hosts}


def plan(spec: TestbedSpec, *, run: str, state_dir: Path, python: str, etcd_binary: str) -> Plan:
    """Decide the whole bed for `spec` (validated; raises `SpecError`).

    `run` names the bed's namespaces (etcd's cluster token too), `state_dir`
    holds data, sockets and the dashboard's token file, `python` runs Serval's
    commands (``python -m deploy.cli``) and the probes.
    """
    spec.validate()
    topo_dict = topology_of(spec)
    topo = Topology.from_dict(topo_dict)
    addr = {h: str(topo.interface(h, nets[0]).ipv4.ip) for h, nets in topo_dict["hosts"].items()}
    serval = (python, "-m", "deploy.cli")
    check = (python, "-m", "deploy.netcheck")
    etcd = _etcd_members(spec, addr, run, state_dir, etcd_binary, check)
    etcd_endpoints = ",".join(c.endpoint for c in etcd)
    registries = tuple(
        _registry(f"registry{i}", addr[f"registry{i}"], etcd_endpoints, serval, check)
        for i in range(1, spec.registries + 1)
    )
    registry = ",".join(c.endpoint for c in registries) or "none"
    last: list[Component] = []
    if spec.dns:
        last.append(_dns(addr["dns"], registry, serval, check))
    if spec.dashboard:
        last.append(_dashboard(addr["dashboard"], registry, state_dir, serval, check))
    last += [_agent(a, addr[a.host], registry, spec, state_dir, serval, check) for a in spec.agents]
    stages = tuple(s for s in (etcd, registries, tuple(last)) if s)
    return Plan(topo_dict, stages, addr, state_dir)


def agent_socket(state_dir: Path, host: str) -> Path:
    """Where the agent on `host` serves its local API."""
    return state_dir / "agents" / f"{host}.sock"


def _etcd_members(
    spec: TestbedSpec, addr: dict[str, str], run: str, state_dir: Path, binary: str, check: Sequence[str]
) -> tuple[Component, ...]:
    names = [f"etcd{i}" for i in range(1, spec.etcd_members + 1)]
    initial = ",".join(f"{n}=http://{addr[n]}:{ETCD_PEER_PORT}" for n in names)
    members = []
    for name in names:
        client = f"http://{addr[name]}:{ETCD_CLIENT_PORT}"
        argv = etcd_command(
            binary=binary,
            name=name,
            data_dir=state_dir / "etcd" / name,
            client_url=client,
            peer_url=f"http://{addr[name]}:{ETCD_PEER_PORT}",
            initial_cluster=initial,
            state="new",
            token=f"serval-testbed-{run}",
            settings=EtcdSettings(),
        )
        probe = (*check, "http", f"{client}/health", "--contains", '"health":"true"')
        members.append(Component(name, "etcd", name, tuple(argv), f"{addr[name]}:{ETCD_CLIENT_PORT}", probe))
    return tuple(members)


def _registry(host: str, address: str, etcd: str, serval: Sequence[str], check: Sequence[str]) -> Component:
    where = f"{address}:{REGISTRY_PORT}"
    argv = (*serval, "registry", "--etcd", etcd, "--listen", where, "--replica-id", host)
    return Component(host, "registry", host, argv, where, (*check, "grpc-health", where))


def _dns(address: str, registry: str, serval: Sequence[str], check: Sequence[str]) -> Component:
    where = f"{address}:{DNS_PORT}"
    argv = (*serval, "dns", "--registry", registry, "--listen", where, "--zone", DNS_ZONE)
    return Component("dns", "dns", "dns", argv, where, (*check, "dns-soa", where, "--zone", DNS_ZONE))


def _dashboard(
    address: str, registry: str, state_dir: Path, serval: Sequence[str], check: Sequence[str]
) -> Component:
    where = f"{address}:{DASHBOARD_PORT}"
    argv = (
        *serval, "dashboard", "--registry", registry, "--listen", where,
        "--token-file", str(state_dir / TOKEN_FILE),
        "--audit-file", str(state_dir / "logs" / "dashboard-audit.jsonl"),
    )  # fmt: skip
    probe = (*check, "http", f"http://{where}/healthz")
    return Component("dashboard", "dashboard", "dashboard", argv, f"http://{where}", probe)


def _agent(
    agent: AgentSpec,
    address: str,
    registry: str,
    spec: TestbedSpec,
    state_dir: Path,
    serval: Sequence[str],
    check: Sequence[str],
) -> Component:
    socket = agent_socket(state_dir, agent.host)
    argv = [
        *serval, "agent", "--registry", registry, "--agent-id", agent.host, "--socket", str(socket),
        "--sal-listen", f"0.0.0.0:{SAL_PORT}", "--metrics-port", str(AGENT_METRICS_PORT),
        "--lease-ttl", str(spec.lease_ttl), "--address-poll", str(spec.address_poll),
    ]  # fmt: skip
    if agent.zone:
        argv += ["--zone", agent.zone]
    if agent.lan:
        argv += ["--lan", "--lan-interface", address]
    argv += agent.args
    probe = (*check, "connect", f"unix:{socket}")
    return Component(agent.host, "agent", agent.host, tuple(argv), f"{address}:{SAL_PORT}", probe)


def describe(plan: Plan, namespaces: dict[str, str], python: str, name: str) -> str:
    """What runs where and how to use it: the text `serval testbed up` prints.

    `python` is the interpreter that has Serval installed; its ``serval`` is beside it.
    """
    serval = str(Path(python).with_name("serval"))
    lines = [f"Serval test bed {name!r} is up (state and logs in {plan.state_dir}).", ""]
    for c in plan.components:
        lines.append(f"  {c.name:<10} {namespaces[c.host]:<18} {c.endpoint}")
    registry = ",".join(plan.endpoints("registry"))
    agents = [c for c in plan.components if c.kind == "agent"]
    lines += ["", "Every address is inside the namespaces; run commands there with `ip netns exec`:"]
    if registry and agents:
        ns, sock = namespaces[agents[0].host], agent_socket(plan.state_dir, agents[0].host)
        lines += [
            f"  ip netns exec {ns} {serval} register web.tb w-1 -a {plan.addresses[agents[0].host]} -p 80 "
            f"--ttl 60 --detach --registry {registry}",
            f"  ip netns exec {ns} {serval} resolve web.tb --registry {registry}",
            f"  ip netns exec {ns} {serval} status --registry {registry}",
            f"  ({agents[0].host}'s agent: local API {sock}, metrics http://127.0.0.1:{AGENT_METRICS_PORT}/metrics)",
        ]
    dns = plan.endpoints("dns")
    if dns and agents:
        lines.append(
            f"  ip netns exec {namespaces[agents[0].host]} {python} -m deploy.netcheck "
            f"dns web.tb.{DNS_ZONE} --server {dns[0]} --type SRV"
        )
    if plan.endpoints("dashboard"):
        lines.append(f"  dashboard admin token: in {plan.state_dir / TOKEN_FILE}")
    lines += ["", f"serval testbed status --name {name}    health of every component",
              f"serval testbed down --name {name}      stop everything and remove it"]  # fmt: skip
    return "\n".join(lines)
