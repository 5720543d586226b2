"""Serval's own processes inside a `NetnsLab`: etcd, registry replicas and host agents.

Each `start_*` spawns one supervised process inside a lab host (`NetnsLab.spawn`,
so `destroy()` stops it) on that host's address, waits until it serves, and
returns what a client needs to reach it. Waits are bounded and probe from inside
the lab (never from the root namespace); a process that does not come up raises
`LabServiceError` with the tail of its log.

Used by the data-path benchmark (`bench/datapath.py`). The end-to-end tests and
``serval testbed`` use the test bed instead (`deploy.testbed`: the same processes,
planned as stages and started in parallel within a stage).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.netns import NetnsLab
from registry.processes import ChildProcess
from registry.raft.local_etcd import EtcdSettings, etcd_command, etcd_env, find_etcd

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
REGISTRY_PORT = 7070
SAL_PORT = 7946


class LabServiceError(RuntimeError):
    """A service did not come up in time (the message carries its log tail)."""


@dataclass(frozen=True)
class Agent:
    """A running agent: its host, Unix socket and SAL endpoint."""

    host: str
    socket: Path
    sal_endpoint: str
    process: ChildProcess


def start_etcd(lab: NetnsLab, host: str, data_dir: Path, network: str = "lan") -> str:
    """A single-member etcd on `host`; returns its client endpoint ``ip:port``."""
    ip = lab.address(host, network)
    child = lab.spawn(
        host,
        etcd_command(
            binary=find_etcd(),
            name=f"etcd-{host}",
            data_dir=data_dir,
            client_url=f"http://{ip}:{ETCD_CLIENT_PORT}",
            peer_url=f"http://{ip}:{ETCD_PEER_PORT}",
            initial_cluster=f"etcd-{host}=http://{ip}:{ETCD_PEER_PORT}",
            state="new",
            token=f"serval-lab-{lab.run_id}",
            settings=EtcdSettings(),
        ),
        env=etcd_env(),
        name=f"etcd-{host}",
    )
    endpoint = f"{ip}:{ETCD_CLIENT_PORT}"
    if not lab.reachable(host, [endpoint], wait=20):
        raise LabServiceError(f"etcd on {host} did not listen on {endpoint}:\n{child.log_tail()}")
    return endpoint


def start_registry(lab: NetnsLab, host: str, etcd: str, network: str = "lan") -> str:
    """A registry replica on `host` against `etcd`; returns its gRPC target once it serves."""
    target = f"{lab.address(host, network)}:{REGISTRY_PORT}"
    argv = [
        sys.executable, "-m", "deploy.cli", "registry", "--etcd", etcd,
        "--listen", target, "--replica-id", f"lab-{host}",
    ]  # fmt: skip
    child = lab.spawn(host, argv, name=f"registry-{host}")
    if not lab.wait_grpc_serving(host, target, timeout=30):
        raise LabServiceError(f"registry on {host} is not serving at {target}:\n{child.log_tail()}")
    return target


def start_agent(
    lab: NetnsLab,
    host: str,
    registry: str,
    state_dir: Path,
    *,
    network: str = "lan",
    zone: str = "",
    lease_ttl: int = 5,
    extra_args: Sequence[str] = (),
) -> Agent:
    """A host agent on `host` (SAL on its `network` address), its socket under `state_dir`.

    `extra_args` are appended to ``serval agent`` (e.g. ``--expose``, ``--socks-listen``).
    Returns once the agent's local socket accepts connections.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    socket_path = state_dir / f"agent-{host}.sock"
    sal = f"{lab.address(host, network)}:{SAL_PORT}"
    argv = [
        sys.executable, "-m", "deploy.cli", "agent", "--registry", registry, "--agent-id", host,
        "--socket", str(socket_path), "--sal-listen", f"0.0.0.0:{SAL_PORT}",
        "--lease-ttl", str(lease_ttl), "--address-poll", "2",
    ]  # fmt: skip
    if zone:
        argv += ["--zone", zone]
    argv += list(extra_args)
    child = lab.spawn(host, argv, name=f"agent-{host}")
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if time.monotonic() > deadline or not child.running:
            raise LabServiceError(f"agent on {host} did not open {socket_path}:\n{child.log_tail()}")
        time.sleep(0.1)
    return Agent(host, socket_path, sal, child)
