"""Legacy access end to end, each host a network namespace of the test bed: an unmodified TCP echo server
on server1 exposed by its agent (``--expose``), and unmodified clients on the client host
reaching it by name through that host's agent (``--socks-listen`` and ``--upstream``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.testbed import AgentSpec, TestbedSpec
from tests.e2e.test_agent_netns import Cluster
from tests.support.testbed import MakeTestbed

pytestmark = pytest.mark.e2e

ECHO_PORT = 9000
SOCKS = "127.0.0.1:1080"
UPSTREAM = "127.0.0.1:9100"
NAME = "legacy.e2e"
SPEC = TestbedSpec(
    etcd_members=1,
    registries=1,
    dns=False,
    dashboard=False,
    agents=(
        AgentSpec("server1", args=("--expose", f"{NAME}=127.0.0.1:{ECHO_PORT}")),
        AgentSpec("client", args=("--socks-listen", SOCKS, "--upstream", f"{UPSTREAM}={NAME}")),
    ),
)


@pytest.fixture
def cluster(testbed: MakeTestbed, tmp_path: Path) -> Cluster:
    bed = testbed(SPEC)
    echo = [sys.executable, "-m", "deploy.netcheck", "echo", "--port", str(ECHO_PORT), "--seconds", "60"]
    bed.lab.spawn("server1", echo, name="echo-server1")
    return Cluster(bed.lab, bed.registry, bed.agents, tmp_path)


def legacy_client(cluster: Cluster, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    argv = [sys.executable, "-m", "tests.support.legacy_clients", "echo", *args]
    out = cluster.lab.run("client", argv, timeout=60)
    result: dict[str, object] = json.loads(out.stdout) if out.stdout.strip() else {}
    return out, result


def test_unmodified_clients_reach_an_exposed_unmodified_server_by_name(cluster: Cluster) -> None:
    (instance,) = cluster.wait_instances(NAME, 1)
    assert instance["addresses"] == [cluster.lab.address("server1", "lan")]
    for via in (["--socks", SOCKS, "--name", NAME], ["--direct", UPSTREAM]):
        out, result = legacy_client(cluster, *via, "--bytes", str(2 << 20))
        assert out.returncode == 0, f"{via}: {out.stdout}{out.stderr}{cluster.logs()}"
        assert result["match"] is True and result["received"] == 2 << 20


def test_socks5_to_an_unknown_name_is_refused_with_host_unreachable(cluster: Cluster) -> None:
    cluster.wait_instances(NAME, 1)
    out, result = legacy_client(cluster, "--socks", SOCKS, "--name", "nobody.e2e", "--bytes", "16")
    assert out.returncode == 1, out.stderr
    assert result == {"reply": 4, "sent": 16, "received": 0, "match": False}
