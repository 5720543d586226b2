"""A multi-host test bed on one Linux machine: each host of a `Topology` is a network namespace.

`NetnsLab` is the I/O shell around the pure `deploy.topology`: it builds the
topology (`create`), runs and supervises processes inside hosts (`run`,
`spawn`), changes links and addresses, and removes everything (`destroy`).

Layout: the networks are bridges inside one "switch" namespace (``sv-<run>``);
each host namespace (``sv-<run>-<host>``) has a veth per interface whose peer
is a port of that bridge. The root namespace gets no interface and no address,
and nothing here sends traffic from the root namespace: probes run inside hosts
(`deploy.netcheck`).

Ownership and cleanup:
- `destroy()` (idempotent; also on leaving the ``with`` block and, for labs not
  destroyed, at interpreter exit) stops the processes `spawn` started (SIGTERM
  to all, SIGKILL after a grace), SIGKILLs whatever else still runs in the
  lab's namespaces, then deletes the host namespaces and the switch namespace
  (which takes the veths and bridges with it).
- A live lab holds its run's lock (`deploy.netns_kernel`) from before its first
  namespace exists until after its last is gone; `create()` first calls
  `sweep()`, which removes the namespaces, and kills the processes, of runs
  whose owner died without destroying them. Live parallel runs are never
  touched. Only a SIGKILLed owner leaves anything behind, until the next sweep.

Requires root and iproute2 (``ip netns``). Synchronous: call from a thread in
an event loop. Not thread-safe.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from deploy.netns_kernel import (
    STATE_DIR,
    NetnsError,
    ip,
    namespace_pids,
    namespaces,
    remove_namespaces,
    sweep,
    unavailable_reason,
)
from deploy.topology import LabNames, Topology, exec_in, ip_in, setup_commands
from registry.processes import ChildProcess

__all__ = ["NetnsError", "NetnsLab", "namespace_pids", "namespaces", "sweep", "unavailable_reason"]


class NetnsLab:
    """One topology built in namespaces; see the module docstring for layout and cleanup."""

    def __init__(
        self, topology: Topology, log_dir: Path, *, run: str | None = None, state_dir: Path = STATE_DIR
    ) -> None:
        self.topology = topology
        self.names = LabNames(run or secrets.token_hex(3))
        self.log_dir = log_dir
        self._state_dir = state_dir
        self._lock: IO[bytes] | None = None
        self._children: list[ChildProcess] = []

    @property
    def run_id(self) -> str:
        return self.names.run

    @property
    def all_namespaces(self) -> list[str]:
        """The lab's namespaces: hosts in topology order, then the switch."""
        return [*(self.names.namespace(h) for h in self.topology.hosts), self.names.switch]

    def namespace(self, host: str) -> str:
        if host not in self.topology.hosts:
            raise KeyError(f"no host {host!r}")
        return self.names.namespace(host)

    # --- life cycle -------------------------------------------------------

    def create(self) -> None:
        """Sweep leftovers of aborted runs, take this run's lock, build the topology; no-op if created.

        On failure everything built so far is removed and the error raised.
        """
        if self._lock is not None:
            return
        sweep(state_dir=self._state_dir)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(json.dumps({"run": self.run_id, "pid": os.getpid()}).encode())
            lock.flush()
        except BaseException:
            lock.close()
            raise
        self._lock = lock
        _live_labs.add(self)
        try:
            for argv in setup_commands(self.topology, self.names):
                ip(argv)
            for host in self.topology.hosts:
                self._host_sysctls(host)
        except BaseException:
            self.destroy()
            raise

    def _host_sysctls(self, host: str) -> None:
        """Removing a host's primary IPv4 address keeps the others of its subnet (promoted),
        as address-change tests need; Linux's default deletes them all."""
        argv = ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/promote_secondaries"]  # no procps needed
        subprocess.run(exec_in(self.namespace(host), argv), check=True, capture_output=True, timeout=10)

    def destroy(self, grace: float = 3.0) -> None:
        """Stop every process, delete every namespace, release the lock; idempotent.

        `grace` is how long spawned processes get between SIGTERM and SIGKILL.
        """
        if self._lock is None:
            return
        try:
            self._stop_children(grace)
            remove_namespaces(self.all_namespaces)
        finally:
            if not set(self.all_namespaces) & set(namespaces()):
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path.unlink()
                self._lock.close()
                self._lock = None
                _live_labs.discard(self)

    def __enter__(self) -> NetnsLab:
        self.create()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    @property
    def lock_path(self) -> Path:
        """The run's lock file, held while the lab exists (see `sweep`)."""
        return self._state_dir / f"{self.run_id}.lock"

    def _stop_children(self, grace: float) -> None:
        for child in self._children:  # signal all first, so they shut down in parallel
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self._children):
            child.stop(grace=max(deadline - time.monotonic(), 0.0))
        self._children.clear()

    # --- processes --------------------------------------------------------

    def run(
        self, host: str, argv: Sequence[str], *, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `host` to completion (killed after `timeout`); output captured as text.

        The caller checks ``returncode``; a timeout raises `subprocess.TimeoutExpired`.
        """
        return subprocess.run(
            exec_in(self.namespace(host), argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        log_path: Path | None = None,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ChildProcess:
        """Start `argv` inside `host` as a supervised `ChildProcess` (own session, output to `log_path`).

        The lab owns it: `destroy` stops it. The caller may stop it earlier.
        Default log: ``<log_dir>/<host>-<name>.log``, name defaulting to the program's.
        """
        name = name or Path(argv[0]).name
        path = log_path or self.log_dir / f"{host}-{name}.log"
        child = ChildProcess(
            f"{host}/{name}", exec_in(self.namespace(host), argv), path, env=dict(env) if env else None
        )
        child.start()
        self._children.append(child)
        return child

    def pids(self, host: str) -> list[int]:
        """Every process running inside `host` now."""
        return namespace_pids(self.namespace(host))

    # --- links and addresses -----------------------------------------------

    def address(self, host: str, where: str, version: int = 4) -> str:
        """The planned address (no prefix length) of `host` on interface or network `where`."""
        iface = self.topology.interface(host, where)
        addr = iface.ipv4 if version == 4 else iface.ipv6
        if addr is None:
            raise KeyError(f"network {iface.network!r} has no IPv{version}")
        return str(addr.ip)

    def set_link(self, host: str, where: str, up: bool) -> None:
        """Take `host`'s interface (by name or network) down or up; addresses are kept."""
        iface = self.topology.interface(host, where)
        ip(ip_in(self.namespace(host), "link", "set", "dev", iface.name, "up" if up else "down"))

    def block_at_switch(self, host: str, where: str, blocked: bool) -> None:
        """Make the switch silently drop every frame to and from `host`'s interface `where` (or
        forward them again): a path failure the host cannot see, its link and addresses stay up."""
        iface = self.topology.interface(host, where)
        port = self.names.switch_port(self.topology.interfaces.index(iface))
        bridge = self.names.bridge([n.name for n in self.topology.networks].index(iface.network))
        # Out of its bridge, the port (still up, so the host keeps its carrier) reaches nothing.
        master = ["nomaster"] if blocked else ["master", bridge]
        ip(ip_in(self.names.switch, "link", "set", "dev", port, *master))

    def add_address(self, host: str, where: str, address: str) -> None:
        """Add `address` (prefix length defaults to the network's) to `host`'s interface `where`."""
        iface, addr = self._address_on(host, where, address)
        nodad = ["nodad"] if addr.version == 6 else []
        ip(ip_in(self.namespace(host), "addr", "add", str(addr), "dev", iface, *nodad))

    def remove_address(self, host: str, where: str, address: str) -> None:
        """Remove `address` (prefix length defaults to the network's) from `host`'s interface `where`."""
        iface, addr = self._address_on(host, where, address)
        ip(ip_in(self.namespace(host), "addr", "del", str(addr), "dev", iface))

    def _address_on(
        self, host: str, where: str, address: str
    ) -> tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        iface = self.topology.interface(host, where)
        if "/" not in address:
            net = self.topology.network(iface.network)
            subnet = net.ipv4 if ipaddress.ip_address(address).version == 4 else net.ipv6
            address = f"{address}/{subnet.prefixlen if subnet else 128}"
        return iface.name, ipaddress.ip_interface(address)

    # --- probes (run inside the lab; see deploy.netcheck) --------------------

    def reachable(
        self,
        host: str,
        targets: Sequence[str],
        *,
        wait: float = 0.0,
        timeout: float = 1.0,
        echo: bool = False,
    ) -> bool:
        """True if from inside `host` every ``addr:port`` target accepts TCP (and echoes) within `wait` s."""
        argv = [sys.executable, "-m", "deploy.netcheck", "connect", *targets, "--wait", str(wait)]
        argv += ["--timeout", str(timeout), *(["--echo"] if echo else [])]
        return self.run(host, argv, timeout=wait + timeout + 30).returncode == 0

    def wait_grpc_serving(self, host: str, target: str, timeout: float) -> bool:
        """True once the gRPC server `target` reports SERVING to a probe inside `host`, within `timeout`."""
        argv = [sys.executable, "-m", "deploy.netcheck", "grpc-health", target, "--wait", str(timeout)]
        return self.run(host, argv, timeout=timeout + 30).returncode == 0


_live_labs: weakref.WeakSet[NetnsLab] = weakref.WeakSet()


@atexit.register
def _destroy_live_labs() -> None:
    """Labs still alive at interpreter exit (e.g. after Ctrl-C) are destroyed."""
    for lab in list(_live_labs):
        with contextlib.suppress(Exception):
            lab.destroy(grace=1.0)
