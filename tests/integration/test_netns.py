"""The namespace test bed (`deploy.netns`): reachability, isolation, cleanup, the real
control plane across hosts, and link/address changes.

Every process of these tests, servers included, runs inside the lab's namespaces;
the root namespace only runs `ip` and never sends traffic to the lab's networks.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from deploy.netns import NetnsLab, namespace_pids, namespaces, sweep
from deploy.topology import run_of_namespace
from registry.raft.local_etcd import EtcdSettings, etcd_command, etcd_env, find_etcd
from tests.support.netns import MakeLab

pytestmark = pytest.mark.integration

ECHO_PORT = 9000

ABORTED_RUN = """
import sys, time
from pathlib import Path
from deploy.netns import NetnsLab
from deploy.topology import Topology
lab = NetnsLab(Topology.from_dict({"hosts": {"a": ["lan"], "b": ["lan"]}}), Path(sys.argv[1]))
lab.create()
lab.spawn("a", ["sleep", "60"])
print(lab.run_id, flush=True)
time.sleep(60)
"""


def start_echo(lab: NetnsLab, host: str, seconds: float = 30) -> None:
    """A TCP echo server on every address of `host`, port ECHO_PORT, that exits by itself."""
    argv = [
        sys.executable,
        "-m",
        "deploy.netcheck",
        "echo",
        "--port",
        str(ECHO_PORT),
        "--seconds",
        str(seconds),
    ]
    lab.spawn(host, argv, name="echo")


def target(lab: NetnsLab, host: str, where: str, version: int = 4, port: int = ECHO_PORT) -> str:
    addr = lab.address(host, where, version)
    return f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"


def root_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address of every interface of the root namespace (this process's)."""
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True, timeout=10).stdout
    return [ipaddress.ip_address(a["local"]) for link in json.loads(out) for a in link.get("addr_info", [])]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(lab: NetnsLab, pids: list[int]) -> None:
    """No namespace of the lab, none of `pids` and no lock file remain."""
    assert not [ns for ns in namespaces() if ns.startswith(lab.names.switch)]
    assert not [pid for pid in pids if alive(pid)]
    assert not lab.lock_path.exists()


def test_hosts_reach_each_other_only_on_shared_networks_and_destroy_leaves_nothing(
    netns_lab: MakeLab,
) -> None:
    lab = netns_lab(
        {
            "hosts": {
                "a": ["lan"],
                "b": ["lan"],
                "c": ["lan"],
                "m": {"eth0": "lan", "wan0": "wan"},
                "d": ["wan"],
            }
        }
    )
    assert set(namespaces()) >= set(lab.all_namespaces)
    for host in ("b", "c", "m", "d"):
        start_echo(lab, host)

    lan_peers = [target(lab, h, "lan", v) for h in ("b", "c", "m") for v in (4, 6)]
    assert lab.reachable("a", lan_peers, wait=10, echo=True)
    assert lab.reachable("m", [target(lab, "d", "wan", 4), target(lab, "d", "wan", 6)], wait=10, echo=True)
    assert lab.reachable("d", [target(lab, "m", "wan0", 4), target(lab, "m", "wan0", 6)], wait=10, echo=True)
    assert lab.address("m", "wan0") == lab.address("m", "wan") == "10.77.2.4"
    # no routing between networks: a (lan only) cannot reach d (wan only)
    assert not lab.reachable("a", [target(lab, "d", "wan")])

    ours = [n.ipv4 for n in lab.topology.networks] + [n.ipv6 for n in lab.topology.networks if n.ipv6]
    assert not [a for a in root_addresses() if any(a in net for net in ours)]
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert lab.run_id not in root_links

    pids = [pid for host in lab.topology.hosts for pid in lab.pids(host)]
    assert len(pids) == 4  # the echo servers
    lab.destroy()
    assert_gone(lab, pids)
    lab.destroy()  # idempotent


def test_control_plane_across_hosts(netns_lab: MakeLab, tmp_path: Path) -> None:
    lab = netns_lab({"hosts": {"etcd": ["lan"], "registry": ["lan"], "client": ["lan"]}})
    etcd_ip, registry_ip, client_ip = (lab.address(h, "lan") for h in ("etcd", "registry", "client"))
    etcd = lab.spawn(
        "etcd",
        etcd_command(
            binary=find_etcd(),
            name="etcd0",
            data_dir=tmp_path / "etcd0",
            client_url=f"http://{etcd_ip}:2379",
            peer_url=f"http://{etcd_ip}:2380",
            initial_cluster=f"etcd0=http://{etcd_ip}:2380",
            state="new",
            token="serval-netns-test",
            settings=EtcdSettings(),
        ),
        env=etcd_env(),
    )
    registry_target = f"{registry_ip}:7070"
    registry = lab.spawn(
        "registry",
        [
            sys.executable, "-m", "deploy.cli", "registry", "--etcd", f"{etcd_ip}:2379",
            "--listen", registry_target, "--replica-id", "netns-1",
        ],
        name="registry",
    )  # fmt: skip
    assert lab.reachable("registry", [f"{etcd_ip}:2379"], wait=20), etcd.log_tail()
    assert lab.wait_grpc_serving("client", registry_target, timeout=20), registry.log_tail()

    def serval(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "deploy.cli", *args, "--registry", registry_target, "--timeout", "10"]
        return lab.run("client", argv, timeout=30)

    reg = serval("register", "web.netns", "w-1", "-a", client_ip, "-p", "8080", "--detach", "--json")
    assert reg.returncode == 0, reg.stderr
    res = serval("resolve", "web.netns", "--json")
    assert res.returncode == 0, res.stderr
    [instance] = json.loads(res.stdout)["instances"]
    assert instance["instance_id"] == "w-1"
    assert instance["addresses"] == [client_ip]
    status = serval("status", "--json")
    assert json.loads(status.stdout)["replica_id"] == "netns-1"
    assert lab.pids("client") == []  # --detach left nothing running
    assert etcd.running and registry.running


def test_link_and_address_changes_are_visible(netns_lab: MakeLab) -> None:
    lab = netns_lab({"hosts": {"a": ["lan"], "b": ["lan"]}})
    start_echo(lab, "b")
    b4, b6 = target(lab, "b", "lan", 4), target(lab, "b", "lan", 6)
    assert lab.reachable("a", [b4, b6], wait=10, echo=True)

    lab.set_link("b", "eth0", up=False)
    assert not lab.reachable("a", [b4], timeout=0.5)
    assert not lab.reachable("a", [b6], timeout=0.5)
    lab.set_link("b", "lan", up=True)
    assert lab.reachable("a", [b4, b6], wait=10, echo=True)  # addresses survived the link flap

    lab.remove_address("b", "eth0", lab.address("b", "lan"))
    assert not lab.reachable("a", [b4], timeout=0.5)
    assert lab.reachable("a", [b6], echo=True)  # only that address went away
    lab.add_address("b", "eth0", lab.address("b", "lan"))
    assert lab.reachable("a", [b4], wait=10, echo=True)

    lab.add_address("b", "lan", "10.77.1.200")
    lab.add_address("b", "lan", "fd00:77:1::200")
    assert lab.reachable("a", ["10.77.1.200:9000", "[fd00:77:1::200]:9000"], wait=10, echo=True)
    lab.remove_address("b", "lan", "10.77.1.200")
    assert not lab.reachable("a", ["10.77.1.200:9000"], timeout=0.5)


def test_sweep_removes_aborted_runs_and_spares_live_ones(netns_lab: MakeLab, tmp_path: Path) -> None:
    live = netns_lab({"hosts": {"x": ["lan"]}})
    start_echo(live, "x")
    with subprocess.Popen(
        [sys.executable, "-c", ABORTED_RUN, str(tmp_path / "aborted")], stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            run = owner.stdout.readline().strip()
        finally:
            owner.kill()  # SIGKILL: the owner neither destroys nor runs atexit
    try:
        leftovers = [ns for ns in namespaces() if run_of_namespace(ns) == run]
        assert len(leftovers) == 3
        orphans = namespace_pids(f"sv-{run}-a")
        assert orphans  # `sleep` outlived its owner

        sweep()
        assert not [ns for ns in namespaces() if run_of_namespace(ns) == run]
        assert not [pid for pid in orphans if alive(pid)]
        assert set(live.all_namespaces) <= set(namespaces())
        assert live.pids("x")  # the live lab's echo server was not touched
    finally:
        sweep()
