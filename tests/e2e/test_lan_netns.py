"""LAN discovery between hosts in network namespaces (the test bed without etcd or registry):
host A announces over multicast, host B's LAN back-end sees it, and forgets it when A
stops (by TTL expiry when A goes silent, at once when A says bye)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deploy.netns import NetnsLab
from deploy.testbed import AgentSpec, TestbedSpec
from tests.support.testbed import MakeTestbed

pytestmark = pytest.mark.e2e

NO_REGISTRY = TestbedSpec(etcd_members=0, registries=0, dns=False, dashboard=False, agents=())


def tool(lab: NetnsLab, host: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "resolver.lan_tool", "--interface", lab.address(host, "lan"), *args]


def snapshots(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def wait_services(log: Path, want: dict[str, Any], timeout: float) -> float:
    """Wait until the listener's latest snapshot has exactly `want`; return when."""
    deadline = time.monotonic() + timeout
    while True:
        seen = snapshots(log)
        if seen and seen[-1]["services"] == want:
            return time.monotonic()
        assert time.monotonic() < deadline, f"listener never saw {want}; last: {seen[-1:]}"
        time.sleep(0.05)


def test_lan_discovery_and_expiry(testbed: MakeTestbed, tmp_path: Path) -> None:
    lab = testbed(replace(NO_REGISTRY, hosts=("a", "b"))).lab  # two bare hosts
    log = tmp_path / "b-listen.log"
    listener = lab.spawn("b", tool(lab, "b", "listen", "--json"), log, name="listen")
    time.sleep(0.5)  # joined the group
    addr_a = lab.address("a", "lan")
    announce = ["announce", "--host-id", "a", "--interval", "0.3"]
    silent_args = [*announce, "--service", "web.lan:8080", "--ttl", "2", "--no-bye"]
    silent = lab.spawn("a", tool(lab, "a", *silent_args), name="announce1")
    seen_web = {"web.lan": [["a-web.lan", [addr_a], 8080]]}
    wait_services(log, seen_web, timeout=10)

    silent.stop()  # no bye: B keeps the entry until its TTL (2 s) has passed
    stopped = time.monotonic()
    gone = wait_services(log, {}, timeout=10)
    assert 1.5 <= gone - stopped <= 5.0, f"expired after {gone - stopped:.2f}s, TTL 2 s"

    polite_args = [*announce, "--service", "db.lan:5432", "--ttl", "60"]
    polite = lab.spawn("a", tool(lab, "a", *polite_args), name="announce2")
    wait_services(log, {"db.lan": [["a-db.lan", [addr_a], 5432]]}, timeout=10)
    polite.stop()  # bye: gone at once, long before the 60 s TTL
    stopped = time.monotonic()
    gone = wait_services(log, {}, timeout=10)
    assert gone - stopped < 2.0
    assert listener.running


def test_agents_without_a_registry_find_each_other_on_the_lan(testbed: MakeTestbed) -> None:
    """An ad-hoc network: two agents with `--registry none --lan` and nothing else. A name an
    app listens on at A is announced on the link; an app at B connects to it by name."""
    bed = testbed(replace(NO_REGISTRY, agents=(AgentSpec("a", lan=True), AgentSpec("b", lan=True))))
    lab, agents = bed.lab, bed.agents
    app = [sys.executable, "-m", "tests.support.agent_apps"]
    lab.spawn(
        "a", [*app, "serve", "web.adhoc", "--socket", str(agents["a"].socket), "--tag", "on-a"], name="serve"
    )
    deadline, result = time.monotonic() + 30, dict[str, Any]()
    while time.monotonic() < deadline:
        out = lab.run(
            "b", [*app, "hello", "web.adhoc", "--socket", str(agents["b"].socket), "--timeout", "3"]
        )
        result = json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 and out.stdout else {}
        if result.get("tags") == {"on-a": 1}:
            break
        time.sleep(0.5)
    assert result.get("tags") == {"on-a": 1}, f"{result}\n{agents['b'].process.log_tail(20)}"
