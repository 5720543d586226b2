"""Host agents end to end, each host a network namespace of the test bed
(`deploy.testbed`): etcd, a registry replica, two server hosts and a multi-homed client
host, every process inside the bed. Applications use the client library
(`tests.support.agent_apps`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.netns import NetnsLab
from deploy.testbed import AGENT_METRICS_PORT, AgentSpec, TestbedSpec
from deploy.testbed_run import Agent
from registry.processes import ChildProcess
from tests.support.testbed import MakeTestbed

pytestmark = pytest.mark.e2e

METRICS_PORT = AGENT_METRICS_PORT  # each agent's Prometheus endpoint, on 127.0.0.1 of its host
SAL_PORT = 7946  # each agent's SAL listener (the `serval agent` default)
PATH_TIMEOUT_S = 3  # --path-timeout: a silent connection between agents counts as broken
PROPAGATION_S = 1.5  # registry watch -> every agent's table, with margin


def agents_spec(*agent_args: str) -> TestbedSpec:
    """One etcd member and one registry replica (enough here); agents on server1 and the client,
    multi-homed (lan + lan2), and on server2 (lan); mallory runs no agent."""
    return TestbedSpec(
        etcd_members=1,
        registries=1,
        dns=False,
        dashboard=False,
        agents=(
            AgentSpec("server1", networks=("lan", "lan2"), args=agent_args),
            AgentSpec("server2", args=agent_args),
            AgentSpec("client", networks=("lan", "lan2"), args=agent_args),
        ),
        hosts=("mallory",),
    )


SPEC = agents_spec("--path-timeout", str(PATH_TIMEOUT_S))


@dataclass
class Cluster:
    lab: NetnsLab
    registry: str
    agents: dict[str, Agent]
    tmp: Path

    def app(self, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "tests.support.agent_apps",
            *args,
            "--socket",
            str(self.agents[host].socket),
        ]
        return self.lab.run(host, argv, timeout=timeout)

    def serve(self, host: str, name: str, tag: str, seconds: float = 60) -> ChildProcess:
        argv = [
            sys.executable, "-m", "tests.support.agent_apps", "serve", name, "--socket",
            str(self.agents[host].socket), "--tag", tag, "--seconds", str(seconds),
        ]  # fmt: skip
        return self.lab.spawn(host, argv, name=f"serve-{tag}")

    def resolve(self, name: str) -> list[dict[str, object]]:
        argv = [sys.executable, "-m", "deploy.cli", "resolve", name, "--json", "--registry", self.registry]
        out = self.lab.run("client", argv, timeout=30)
        if out.returncode != 0:
            return []
        return list(json.loads(out.stdout)["instances"])

    def wait_instances(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """Poll the registry until `name` has exactly `count` instances; then let agents catch up."""
        deadline = time.monotonic() + timeout
        while len(found := self.resolve(name)) != count:
            assert time.monotonic() < deadline, f"{name}: {len(found)} instances, wanted {count}"
            time.sleep(0.2)
        time.sleep(PROPAGATION_S)
        return found

    def serval(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "deploy.cli", *args, "--registry", self.registry]
        return self.lab.run("client", argv, timeout=30)

    def instance_on(self, instances: list[dict[str, Any]], host: str) -> str:
        address = self.lab.address(host, "lan")
        (iid,) = [str(i["instance_id"]) for i in instances if address in i["addresses"]]
        return iid

    def start_send(self, name: str, size: int, pace_ms: float) -> subprocess.Popen[str]:
        """A paced transfer from the client, running in the background; `finish` reads its result."""
        argv = [
            "ip", "netns", "exec", self.lab.namespace("client"), sys.executable, "-m",
            "tests.support.agent_apps", "send", name, "--socket", str(self.agents["client"].socket),
            "--bytes", str(size), "--pace-ms", str(pace_ms),
        ]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def logs(self) -> str:
        return "\n".join(agent.process.log_tail(30) for agent in self.agents.values())

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"transfer did not finish in {timeout}s: {err}\n{self.logs()}") from None
        assert proc.returncode == 0, err + self.logs()
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
        return result


@pytest.fixture
def cluster(testbed: MakeTestbed, tmp_path: Path) -> Cluster:
    bed = testbed(SPEC)
    return Cluster(bed.lab, bed.registry, bed.agents, tmp_path)


def test_connect_by_name_reaches_the_listener_on_another_host(cluster: Cluster) -> None:
    server = cluster.serve("server1", "echo.e2e", "s1")
    cluster.wait_instances("echo.e2e", 1)
    out = cluster.app("client", "send", "echo.e2e", "--bytes", str(4 << 20))
    assert out.returncode == 0, out.stderr + server.log_tail()
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["tag"] == "s1"
    assert result["server_sha256"] == result["sent_sha256"]


def test_weights_1_to_3_split_4000_connections_25_75(cluster: Cluster) -> None:
    cluster.serve("server1", "split.e2e", "s1")
    cluster.serve("server2", "split.e2e", "s2")
    instances = cluster.wait_instances("split.e2e", 2)
    for host, weight in (("server1", "1"), ("server2", "3")):
        out = cluster.serval("weight", "split.e2e", cluster.instance_on(instances, host), weight)
        assert out.returncode == 0, out.stderr
    time.sleep(PROPAGATION_S)
    out = cluster.app("client", "hello", "split.e2e", "--count", "4000", timeout=110)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["errors"] == []
    share = result["tags"].get("s1", 0) / 4000
    assert 0.20 <= share <= 0.30, result["tags"]


def test_after_an_instance_dies_connects_succeed_on_the_other_and_it_is_deregistered(
    cluster: Cluster,
) -> None:
    doomed = cluster.serve("server1", "ha.e2e", "s1")
    cluster.serve("server2", "ha.e2e", "s2")
    cluster.wait_instances("ha.e2e", 2)
    assert doomed.proc is not None
    doomed.proc.kill()  # the app dies: its listener closes
    closed_at = time.monotonic()
    out = cluster.app("client", "hello", "ha.e2e", "--count", "200")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"tags": {"s2": 200}, "errors": []}
    cluster.wait_instances("ha.e2e", 1, timeout=5)  # within one keep-alive interval (lease TTL 5 s)
    assert time.monotonic() - closed_at < 5 + PROPAGATION_S + 2


def test_server_address_change_during_a_200_mb_transfer(cluster: Cluster) -> None:
    cluster.serve("server2", "bulk.e2e", "s2")
    cluster.wait_instances("bulk.e2e", 1)
    lab = cluster.lab
    old = lab.address("server2", "lan")
    transfer = cluster.start_send("bulk.e2e", 200 << 20, pace_ms=2)
    time.sleep(2.0)
    assert transfer.poll() is None, "the transfer ended before the address changed"
    new = old.rsplit(".", 1)[0] + ".200"  # same network, an address nobody has
    lab.add_address("server2", "lan", new)
    lab.remove_address("server2", "lan", old)
    result = cluster.finish(transfer)
    assert result["tag"] == "s2"
    assert result["server_sha256"] == result["sent_sha256"]


def test_client_interface_down_during_a_transfer_moves_the_flow_to_the_other(cluster: Cluster) -> None:
    cluster.serve("server1", "mh.e2e", "s1")
    cluster.wait_instances("mh.e2e", 1)
    transfer = cluster.start_send("mh.e2e", 200 << 20, pace_ms=2)
    time.sleep(2.0)
    assert transfer.poll() is None, "the transfer ended before the interface went down"
    cluster.lab.set_link("client", "eth0", up=False)
    result = cluster.finish(transfer)
    assert result["tag"] == "s1"
    assert result["server_sha256"] == result["sent_sha256"]


def test_a_path_failing_inside_the_network_moves_the_flow_to_another_address(cluster: Cluster) -> None:
    """The switch silently drops the server's interface that carries the flow. No host sees a
    change (links and addresses stay up), so only the path timeout can tell: the connection
    breaks within it and the flow resumes over the server's other address, intact (the kernel
    alone would retransmit for ~15 minutes)."""
    cluster.serve("server1", "pathfail.e2e", "s1")
    cluster.wait_instances("pathfail.e2e", 1)
    transfer = cluster.start_send("pathfail.e2e", 200 << 20, pace_ms=2)
    time.sleep(2.0)
    assert transfer.poll() is None, "the transfer ended before the path failed"
    used = cluster.lab.run("server1", ["ss", "-Htn", "state", "established", f"( sport = :{SAL_PORT} )"])
    local = {line.split()[-2].rpartition(":")[0] for line in used.stdout.splitlines() if line.strip()}
    (iface,) = [i for i in ("lan", "lan2") if cluster.lab.address("server1", i) in local]
    cluster.lab.block_at_switch("server1", iface, blocked=True)
    result = cluster.finish(transfer, timeout=90)
    assert result["tag"] == "s1"
    assert result["server_sha256"] == result["sent_sha256"]


FORGE_RSYN = """
import json, os, socket, sys
from hostagent.sal_core.wire import Control, ControlFlags, Frame, FrameType, encode_frame
target, src_flow, dst_flow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = target.rsplit(":", 1)
results = []
for counter in (1, 2**32, 2**63):  # low, high and huge counters: none may pass without the key
    frame = Frame(
        FrameType.CONTROL, src_flow=src_flow, dst_flow=dst_flow,
        control=Control(ControlFlags.RSYN, seq=counter & 0xFFFFFFFF),
        mac=(counter, os.urandom(16)),
    )
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(encode_frame(frame))
        s.settimeout(5)
        try:
            results.append(len(s.recv(4096)))
        except OSError as e:
            results.append(str(e))
print(json.dumps(results))
"""


def test_a_forged_rsyn_from_a_third_host_is_ignored(cluster: Cluster) -> None:
    """Mallory knows both flow IDs of a live flow and sends RSYNs with made-up MACs to the
    server's agent: the flow is not moved or broken, and the data path counts the refusals."""
    server = cluster.serve("server2", "guarded.e2e", "s2")
    cluster.wait_instances("guarded.e2e", 1)
    transfer = cluster.start_send("guarded.e2e", 100 << 20, pace_ms=2)
    assert transfer.stdout is not None
    client_flow = json.loads(transfer.stdout.readline())["flow"]
    deadline = time.monotonic() + 10
    while not (accepted := [line for line in server.log_path.read_text().splitlines() if "accepted" in line]):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    server_flow = int(accepted[0].split()[1])
    sal = f"{cluster.lab.address('server2', 'lan')}:7946"
    forged = cluster.lab.run(
        "mallory", [sys.executable, "-c", FORGE_RSYN, sal, str(client_flow), str(server_flow)], timeout=30
    )
    assert forged.returncode == 0, forged.stderr
    assert json.loads(forged.stdout) == [0, 0, 0]  # each connection closed, nothing answered
    result = cluster.finish(transfer)
    assert result["server_sha256"] == result["sent_sha256"]
    scrape = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"
    metrics = cluster.lab.run("server2", [sys.executable, "-c", scrape], timeout=10)
    rejected = [
        line for line in metrics.stdout.splitlines() if line.startswith("serval_agent_rsyn_rejected_total")
    ]
    assert rejected and float(rejected[0].split()[-1]) >= 3, metrics.stdout[-2000:]
