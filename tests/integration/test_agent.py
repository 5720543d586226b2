"""The agent against real etcd and a real registry replica, with the FAKE data path.

The app side goes through the client library and the real local API socket;
only the data path is simulated (`tests/fakes/datapath.py`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostagent import client
from hostagent.agent.agent import Agent, AgentConfig
from hostagent.agent.datapath import DatapathConfig
from hostagent.agent.desired import ADDRESS_RANKS, AGENTS_SERVICE, SAL_PORT_KEY
from hostagent.sal_core.table import RuleKind, Target
from registry import names
from registry.api.client import RegistryClient
from registry.model import Instance
from tests.fakes.datapath import FakeDatapath
from tests.support.agent import eventually

pytestmark = pytest.mark.integration

LEASE_TTL = 2
REPO = Path(__file__).parents[2]


@pytest.fixture
async def registry(registry_target: str) -> AsyncIterator[tuple[str, RegistryClient]]:
    registry_client = RegistryClient([registry_target], timeout=5)
    try:
        yield registry_target, registry_client
    finally:
        await registry_client.close()


async def _has_instances(reg: RegistryClient, service: str) -> bool:
    return bool((await reg.resolve(service)).instances)


def rule_kinds(fake: FakeDatapath) -> dict[tuple[bytes, int], tuple[RuleKind, tuple[Target, ...]]]:
    return {(r.prefix, r.prefix_bits): (r.kind, r.targets) for r in fake.rules}


def key(name: str) -> tuple[bytes, int]:
    sid = names.service_id(name)
    return sid.raw, sid.prefix_bits


async def test_agent_registers_listeners_and_applies_the_desired_table(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    target, reg = registry
    fake = FakeDatapath(DatapathConfig(sal_listen=(("0.0.0.0", 0),)))
    config = AgentConfig(
        registry=[target],
        agent_id="agent-1",
        zone="z1",
        region="r1",
        socket_path=tmp_path / "agent.sock",
        sal_listen=(("0.0.0.0", 0),),
        metrics_port=0,
        address_poll=0.2,
        lease_ttl=LEASE_TTL,
        keepalive_interval=0.5,
    )
    agent = Agent(config, datapath_factory=lambda cfg: fake, address_reader=lambda: frozenset({"10.1.0.1"}))
    await agent.start()
    try:
        # the host record, on the agent's lease
        # (the replica's view follows etcd's commit within milliseconds; no read-your-writes)
        await eventually(lambda: _has_instances(reg, AGENTS_SERVICE))
        (host,) = (await reg.resolve(AGENTS_SERVICE)).instances
        assert host.instance_id == "agent-1" and list(host.addresses) == ["10.1.0.1"]
        assert host.metadata[SAL_PORT_KEY] == "17946" and host.lease_id == agent.session.lease_id != 0
        assert fake.addresses == {"10.1.0.1"}
        url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
        scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert "serval_agent_table_generation 1.0" in scrape.splitlines()

        # a remote SAL-capable instance appears as a FORWARD rule
        remote = Instance(
            service="y.prod",
            instance_id="other-agent-l1",
            addresses=("10.2.0.7",),
            port=7000,
            zone="z2",
            region="r1",
            metadata={SAL_PORT_KEY: "7000"},
        )
        await reg.register(remote)

        listener = await asyncio.to_thread(client.listen, "x.prod", agent_socket=str(config.socket_path))
        with listener:
            (inst,) = (await reg.resolve("x.prod")).instances
            assert inst.metadata[SAL_PORT_KEY] == "17946" and inst.port == 17946
            assert inst.lease_id == agent.session.lease_id
            assert listener.service_id == names.service_id_hex("x.prod")

            async def table_has_both() -> bool:
                kinds = rule_kinds(fake)
                return key("x.prod") in kinds and key("y.prod") in kinds

            await eventually(table_has_both)
            kinds = rule_kinds(fake)
            assert kinds[key("x.prod")][0] == RuleKind.DEMUX
            assert kinds[key("y.prod")] == (
                RuleKind.FORWARD,
                (Target("10.2.0.7", 7000, 100, 1 * ADDRESS_RANKS),),
            )
            assert key(AGENTS_SERVICE) not in kinds
            assert agent.reconciler.applied_revision >= (await reg.resolve("y.prod")).revision

        async def deregistered() -> bool:
            return not (await reg.resolve("x.prod")).instances

        await eventually(deregistered, timeout=LEASE_TTL)
        await eventually(lambda: key("x.prod") not in rule_kinds(fake))
    finally:
        await agent.stop()
    assert not (await reg.resolve(AGENTS_SERVICE)).instances
    assert fake.stopped and not config.socket_path.exists()


async def test_address_change_re_registers_host_record_and_listeners(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    target, reg = registry
    fake = FakeDatapath(DatapathConfig(sal_listen=(("0.0.0.0", 0),)))
    addresses = {"now": frozenset({"10.1.0.1"})}
    config = AgentConfig(
        registry=[target],
        agent_id="agent-2",
        socket_path=tmp_path / "agent.sock",
        address_poll=0.05,
        lease_ttl=LEASE_TTL,
        keepalive_interval=0.5,
    )
    agent = Agent(config, datapath_factory=lambda cfg: fake, address_reader=lambda: addresses["now"])
    await agent.start()
    try:
        async with await client.start_server(
            "z.prod", lambda r, w: None, agent_socket=str(config.socket_path)
        ):
            addresses["now"] = frozenset({"10.1.0.2", "10.1.0.3"})

            async def moved() -> bool:
                host = (await reg.resolve(AGENTS_SERVICE)).instances
                inst = (await reg.resolve("z.prod")).instances
                want = ["10.1.0.2", "10.1.0.3"]
                return bool(host and inst) and list(host[0].addresses) == want == list(inst[0].addresses)

            await eventually(moved)
            assert ("removed", "10.1.0.1") in fake.address_log and fake.addresses == {"10.1.0.2", "10.1.0.3"}
    finally:
        await agent.stop()


async def test_lost_lease_is_replaced_and_everything_re_registered(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    target, reg = registry
    fake = FakeDatapath(DatapathConfig(sal_listen=(("0.0.0.0", 0),)))
    config = AgentConfig(
        registry=[target],
        agent_id="agent-3",
        socket_path=tmp_path / "agent.sock",
        lease_ttl=LEASE_TTL,
        keepalive_interval=0.2,
    )
    agent = Agent(config, datapath_factory=lambda cfg: fake, address_reader=lambda: frozenset({"10.1.0.1"}))
    await agent.start()
    try:
        listener = await asyncio.to_thread(client.listen, "w.prod", agent_socket=str(config.socket_path))
        with listener:
            old_lease = agent.session.lease_id
            await reg.close_session(old_lease)  # as if the lease had expired during a partition

            async def back() -> bool:
                host = (await reg.resolve(AGENTS_SERVICE)).instances
                inst = (await reg.resolve("w.prod")).instances
                return bool(host and inst) and host[0].lease_id == inst[0].lease_id != old_lease

            await eventually(back)
            assert agent.session.renewals == 1
    finally:
        await agent.stop()


# What `serval agent` imports (the CLI's parser included), then an agent that registers, follows
# the watch, keeps its lease alive and reconnects; the fake data path stands in for the Rust one.
AGENT_PROCESS = """
import asyncio, json, sys
from pathlib import Path

import deploy.cli
from hostagent.agent.agent import Agent, AgentConfig
from tests.fakes.datapath import FakeDatapath

async def main(target: str, socket_path: str) -> None:
    deploy.cli.build_parser()
    config = AgentConfig(
        registry=[target], agent_id="lean", socket_path=Path(socket_path), lease_ttl=2, keepalive_interval=0.2
    )
    agent = Agent(config, datapath_factory=FakeDatapath, address_reader=lambda: frozenset({"10.1.0.1"}))
    await agent.start()
    try:
        while not agent.link.synced:
            await asyncio.sleep(0.05)
        await agent.client.reconnect()
        await asyncio.sleep(0.5)
        state = {"lease": agent.session.lease_id, "renewals": agent.session.renewals}
    finally:
        await agent.stop()
    state["grpc"] = sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "grpc_")))
    print(json.dumps(state))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_the_agent_process_never_imports_grpcio(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    """The agent talks to the registry over grpclib: grpcio (~10 MB of RSS) must never load."""
    target, _ = registry
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT_PROCESS,
        target,
        str(tmp_path / "agent.sock"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    state = json.loads(out.decode().splitlines()[-1])
    assert state["lease"] != 0 and state["renewals"] == 0
    assert state["grpc"] == []
