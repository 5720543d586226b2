"""An agent with a static file besides the registry: the file's SAL-capable services join
its table behind the registry's (real registry over etcd, fake data path)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostagent.agent.agent import Agent, AgentConfig
from hostagent.agent.datapath import DatapathConfig
from hostagent.agent.desired import ADDRESS_RANKS, LOCALITY_RANKS, SAL_PORT_KEY
from hostagent.sal_core.table import RuleKind, Target
from registry import names
from registry.api.client import RegistryClient
from registry.model import Instance
from resolver.model import TIERS_PER_SOURCE
from resolver.sources import DiscoveryConfig
from tests.fakes.datapath import FakeDatapath
from tests.support.agent import eventually

pytestmark = pytest.mark.integration

STATIC = """
[[service]]
name = "y.prod"
[[service.instance]]
id = "backup"
addresses = ["10.3.0.1"]
port = 80
metadata = {{ "serval.sal_port" = "7946" }}

[[service]]
name = "{only}"
[[service.instance]]
id = "s1"
addresses = ["10.3.0.2"]
port = 80
metadata = {{ "serval.sal_port" = "7946" }}
"""


@pytest.fixture
async def registry(registry_target: str) -> AsyncIterator[tuple[str, RegistryClient]]:
    registry_client = RegistryClient([registry_target], timeout=5)
    try:
        yield registry_target, registry_client
    finally:
        await registry_client.close()


def forward(fake: FakeDatapath, name: str) -> tuple[Target, ...] | None:
    sid = names.service_id(name)
    for r in fake.rules:
        if (r.prefix, r.prefix_bits) == (sid.raw, sid.prefix_bits) and r.kind == RuleKind.FORWARD:
            return r.targets
    return None


def table_tier(tier: int) -> int:
    """The data-path tier of a first address at an unknown locality (rank 2)."""
    return (tier * LOCALITY_RANKS + 2) * ADDRESS_RANKS


async def test_static_services_join_the_table_behind_the_registry(
    registry: tuple[str, RegistryClient], tmp_path: Path
) -> None:
    target, reg = registry
    path = tmp_path / "services.toml"
    path.write_text(STATIC.format(only="z.static"))
    fake = FakeDatapath(DatapathConfig(sal_listen=(("0.0.0.0", 0),)))
    config = AgentConfig(
        registry=[target],
        agent_id="agent-d",
        socket_path=tmp_path / "agent.sock",
        address_poll=0.2,
        lease_ttl=2,
        keepalive_interval=0.5,
        discovery=DiscoveryConfig(static_file=path, static_interval=0.05),
    )
    agent = Agent(config, datapath_factory=lambda cfg: fake, address_reader=lambda: frozenset({"10.1.0.1"}))
    await reg.register(
        Instance("y.prod", "r1", ("10.2.0.7",), 7000, metadata={SAL_PORT_KEY: "7000"}), lease_id=0
    )
    await agent.start()
    try:
        # the file may be read before the registry's snapshot arrives, or after: wait for both
        await eventually(
            lambda: len(forward(fake, "y.prod") or ()) == 2 and forward(fake, "z.static") is not None
        )
        static_tier = table_tier(1 * TIERS_PER_SOURCE)
        assert forward(fake, "y.prod") == (
            Target("10.2.0.7", 7000, 100, table_tier(0)),
            Target("10.3.0.1", 7946, 100, static_tier),
        )
        assert forward(fake, "z.static") == (Target("10.3.0.2", 7946, 100, static_tier),)

        tmp = path.with_suffix(".new")
        tmp.write_text(STATIC.format(only="w.static"))
        os.replace(tmp, path)
        await eventually(lambda: forward(fake, "w.static") is not None and forward(fake, "z.static") is None)
    finally:
        await agent.stop()
