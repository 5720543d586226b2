"""The test bed as a user runs it: ``serval testbed up|status|down`` as commands, on the full
default bed (3 etcd members, 2 registry replicas, the DNS bridge, the dashboard, 3 agents),
checked through it from inside its namespaces, and ``down`` leaving nothing behind.

The bed gets a random name (so it never meets a user's ``tb``) and ``--owner-pid`` of this
process (so it goes away even if pytest is SIGKILLed); the fixture runs ``down`` pass or fail.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from deploy.netns import namespace_pids, namespaces, unavailable_reason
from deploy.netns_kernel import STATE_DIR
from deploy.testbed_cli import pid_alive
from deploy.topology import run_of_namespace
from registry.raft.local_etcd import free_ports

pytestmark = pytest.mark.e2e

PY = sys.executable


@dataclass
class BedCommand:
    name: str
    state_dir: Path

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [
            PY,
            "-m",
            "deploy.cli",
            "testbed",
            *args,
            "--name",
            self.name,
            "--state-dir",
            str(self.state_dir),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def serval_testbed(tmp_path: Path) -> Iterator[BedCommand]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    command = BedCommand(f"e{secrets.token_hex(3)}", tmp_path / "bed")
    try:
        yield command
    finally:
        command("down", timeout=90)


def in_ns(namespace: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True, timeout=10).stdout
    return {link["ifname"] for link in json.loads(out)}


def root_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True, timeout=10).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


def eventually(check: Any, timeout: float = 15.0) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        time.sleep(0.2)
    return result


def test_full_default_bed_up_status_use_fault_down(serval_testbed: BedCommand) -> None:
    links_before = root_links()
    (port,) = free_ports("127.0.0.1", 1)
    exposed = f"127.0.0.1:{port}"
    up = serval_testbed("up", "--owner-pid", str(os.getpid()), "--expose-dashboard", exposed, timeout=150)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ip netns exec" in up.stdout and "serval testbed down" in up.stdout, up.stdout
    record = json.loads((serval_testbed.state_dir / "state.json").read_text())
    ns, addr = record["namespaces"], record["addresses"]
    kinds = Counter(c["kind"] for c in record["components"])
    assert kinds == {"etcd": 3, "registry": 2, "dns": 1, "dashboard": 1, "agent": 3, "relay": 1}
    assert not [a for a in root_addresses() if a.startswith(("10.77.", "fd00:77:"))]
    again = serval_testbed("up")
    assert again.returncode == 1 and "already up" in again.stdout, again.stdout + again.stderr

    status = serval_testbed("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(c["healthy"] for c in json.loads(status.stdout)["components"]), status.stdout

    r1, r2 = record["registry"].split(",")
    dns = next(c["endpoint"] for c in record["components"] if c["kind"] == "dns")
    dashboard = next(c["endpoint"] for c in record["components"] if c["kind"] == "dashboard")

    def register(iid: str, host: str, registry: str) -> None:
        argv = [PY, "-m", "deploy.cli", "register", "web.tb", iid, "-a", addr[host], "-p", "8080"]
        out = in_ns(ns[host], *argv, "--ttl", "60", "--detach", "--registry", registry, "--timeout", "10")
        assert out.returncode == 0, out.stderr

    def resolved(host: str, registry: str) -> set[str]:
        argv = [PY, "-m", "deploy.cli", "resolve", "web.tb", "--json", "--registry", registry]
        out = in_ns(ns[host], *argv, "--timeout", "10")
        return (
            {i["instance_id"] for i in json.loads(out.stdout)["instances"]} if out.returncode == 0 else set()
        )

    def over_dns(host: str) -> set[str]:
        out = in_ns(ns[host], PY, "-m", "deploy.netcheck", "dns", "web.tb.svc.serval.", "--server", dns)
        return (
            {r["data"] for r in json.loads(out.stdout) if r["type"] == "A"} if out.returncode == 0 else set()
        )

    # written through one replica, read through the other and over DNS, each from another host
    register("w-1", "agent1", r1)
    eventually(lambda: resolved("agent2", r2) == {"w-1"})
    eventually(lambda: over_dns("agent3") == {addr["agent1"]})
    healthz = in_ns(ns["agent2"], PY, "-m", "deploy.netcheck", "http", f"{dashboard}/healthz", "--wait", "5")
    assert healthz.returncode == 0, healthz.stderr
    # and from the root namespace only through the relay on loopback (a Unix socket in between)
    with urllib.request.urlopen(f"http://{exposed}/healthz", timeout=5) as response:
        assert response.status == 200
    # the dashboard sees both replicas, and every agent subscribed to one of them
    token = (serval_testbed.state_dir / "dashboard-tokens").read_text().strip().split(":")[2]

    def dashboard_api(path: str) -> Any:
        request = urllib.request.Request(f"http://{exposed}/api/v1/{path}")
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    eventually(
        lambda: (
            sorted((r["replica_id"], r["reachable"]) for r in dashboard_api("cluster")["replicas"])
            == [("registry1", True), ("registry2", True)]
        )
    )
    eventually(
        lambda: (
            sorted(a["agent_id"] for a in dashboard_api("agents")["agents"] if a["subscribed"])
            == ["agent1", "agent2", "agent3"]
        )
    )

    # an etcd member crashes (the first, which the replicas try first): the bed keeps working
    for pid in namespace_pids(ns["etcd1"]):
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: not namespace_pids(ns["etcd1"]), timeout=5)
    register("w-2", "agent2", r2)
    eventually(lambda: resolved("agent3", r1) == {"w-1", "w-2"}, timeout=20)
    eventually(lambda: over_dns("agent1") == {addr["agent1"], addr["agent2"]}, timeout=20)
    status = serval_testbed("status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    down_now = {c["component"] for c in json.loads(status.stdout)["components"] if not c["healthy"]}
    assert down_now == {"etcd1"}, status.stdout

    commands = {p.pid: " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])}
    relay = [pid for pid, cmd in commands.items() if "deploy.relay tcp-to-unix" in cmd and exposed in cmd]
    assert len(relay) == 1, commands  # the root namespace's end of the relay
    pids = [pid for n in ns.values() for pid in namespace_pids(n)] + [record["pid"], *relay]
    down = serval_testbed("down", timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [n for n in namespaces() if run_of_namespace(n) == serval_testbed.name]
    with pytest.raises(OSError):  # the root namespace's relay is gone too
        urllib.request.urlopen(f"http://{exposed}/healthz", timeout=2)
    assert not [pid for pid in pids if pid_alive(pid)], "processes outlived down"
    assert root_links() == links_before
    assert not serval_testbed.state_dir.exists()
    assert not (STATE_DIR / f"{serval_testbed.name}.lock").exists()
    again = serval_testbed("status")
    assert again.returncode == 3, again.stdout + again.stderr
