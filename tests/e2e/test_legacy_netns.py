"""Legacy access end to end, each host a network namespace: an unmodified TCP echo server
on server1 exposed by its agent (``--expose``), and unmodified clients on the client host
reaching it by name through that host's agent (``--socks-listen`` and ``--upstream``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.lab_services import start_agent, start_etcd, start_registry
from tests.e2e.test_agent_netns import Cluster
from tests.support.netns import MakeLab

pytestmark = pytest.mark.e2e

TOPOLOGY = {"hosts": {"etcd": ["lan"], "registry": ["lan"], "server1": ["lan"], "client": ["lan"]}}
ECHO_PORT = 9000
SOCKS = "127.0.0.1:1080"
UPSTREAM = "127.0.0.1:9100"
NAME = "legacy.e2e"


@pytest.fixture
def cluster(netns_lab: MakeLab, tmp_path: Path) -> Iterator[Cluster]:
    lab = netns_lab(TOPOLOGY)
    etcd = start_etcd(lab, "etcd", tmp_path / "etcd")
    registry = start_registry(lab, "registry", etcd)
    echo = [sys.executable, "-m", "deploy.netcheck", "echo", "--port", str(ECHO_PORT), "--seconds", "60"]
    lab.spawn("server1", echo, name="echo-server1")
    agents = {
        "server1": start_agent(
            lab, "server1", registry, tmp_path / "agents",
            extra_args=["--expose", f"{NAME}=127.0.0.1:{ECHO_PORT}"],
        ),
        "client": start_agent(
            lab, "client", registry, tmp_path / "agents",
            extra_args=["--socks-listen", SOCKS, "--upstream", f"{UPSTREAM}={NAME}"],
        ),
    }  # fmt: skip
    yield Cluster(lab, registry, agents, tmp_path)


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
