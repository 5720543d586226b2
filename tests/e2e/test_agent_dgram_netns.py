"""Datagram flows end to end, each host a network namespace (the test bed and fixtures of
`test_agent_netns.py`): a datagram echo by name across hosts, and the server host's
address changing while datagrams flow (the server's agent sends an authenticated RSYN
from its new address; the client's agent follows it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from registry.processes import ChildProcess
from tests.e2e.test_agent_netns import METRICS_PORT, Cluster, agents_spec
from tests.support.testbed import MakeTestbed

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(testbed: MakeTestbed, tmp_path: Path) -> Cluster:
    """The bed of `test_agent_netns.py` (etcd, a registry, agents on server1, server2, client),
    the agents with their default path timeout."""
    bed = testbed(agents_spec())
    return Cluster(bed.lab, bed.registry, bed.agents, tmp_path)


def dserve(c: Cluster, host: str, name: str, tag: str, seconds: float = 60) -> ChildProcess:
    argv = [
        sys.executable, "-m", "tests.support.agent_apps", "dserve", name, "--socket",
        str(c.agents[host].socket), "--tag", tag, "--seconds", str(seconds),
    ]  # fmt: skip
    return c.lab.spawn(host, argv, name=f"dserve-{tag}")


def start_decho(c: Cluster, name: str, count: int, pace_ms: float) -> subprocess.Popen[str]:
    argv = [
        "ip", "netns", "exec", c.lab.namespace("client"), sys.executable, "-m", "tests.support.agent_apps",
        "decho", name, "--socket", str(c.agents["client"].socket), "--count", str(count),
        "--pace-ms", str(pace_ms),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(c: Cluster, proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    result: dict[str, Any] = c.finish(proc, timeout)
    assert not result["bad"], result
    return result


def test_datagram_echo_by_name_across_hosts(cluster: Cluster) -> None:
    dserve(cluster, "server2", "dgecho.e2e", "s2")
    instances = cluster.wait_instances("dgecho.e2e", 1)
    assert instances[0]["metadata"].get("serval.proto") == "dgram", instances
    result = finish(cluster, start_decho(cluster, "dgecho.e2e", count=50, pace_ms=5))
    assert result["tags"] == {"s2": len(result["replies"])}
    assert len(result["replies"]) >= 45, result  # best effort; a quiet lab loses next to nothing
    assert len(set(result["replies"])) == len(result["replies"]), "a message was delivered twice"


def test_server_address_change_while_datagrams_flow(cluster: Cluster) -> None:
    dserve(cluster, "server2", "dgmove.e2e", "s2")
    cluster.wait_instances("dgmove.e2e", 1)
    lab = cluster.lab
    old = lab.address("server2", "lan")
    count, pace_ms = 400, 15  # 6 s of messages
    proc = start_decho(cluster, "dgmove.e2e", count, pace_ms)
    time.sleep(2.0)
    assert proc.poll() is None, "the echo ended before the address changed"
    new = old.rsplit(".", 1)[0] + ".201"  # same network, an address nobody has
    lab.add_address("server2", "lan", new)
    lab.remove_address("server2", "lan", old)
    changed_at = int(2000 / pace_ms)  # about the message index sent at the change
    result = finish(cluster, proc)
    replies = result["replies"]
    after = [n for n in replies if n > changed_at + 100]  # well after the change (1.5 s)
    assert len(after) >= 0.8 * (count - changed_at - 100), (len(after), result, cluster.logs())
    assert result["tags"] == {"s2": len(replies)}
    assert len(set(replies)) == len(replies)
    scrape = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"
    metrics = cluster.lab.run("client", [sys.executable, "-c", scrape], timeout=10)
    migrations = [
        line for line in metrics.stdout.splitlines() if line.startswith("serval_agent_migrations_total")
    ]
    assert migrations and float(migrations[0].split()[-1]) >= 1, metrics.stdout[-2000:]
