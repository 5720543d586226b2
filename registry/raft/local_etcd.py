"""Run etcd members as local processes: for `serval up` and for tests.

`LocalEtcdCluster` starts `size` members on loopback, each in its own
directory under `base_dir` (``{name}/data`` is the data dir, ``{name}/etcd.log``
gets its stdout and stderr), and waits until every member reports healthy.
Members can be killed, stopped and restarted individually to inject faults.

Process ownership: every member runs in its own process group (session), is
signalled through that group and always reaped by `wait`. `stop()` (or leaving
the ``with`` block) ends every member this object started; nothing is left
behind unless this Python process itself is SIGKILLed.

The API is synchronous (subprocess based); call it from a thread when inside
an event loop, or accept the short blocking.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from registry.processes import ChildProcess

DEFAULT_ETCD = "/usr/bin/etcd"
_POLL_SECONDS = 0.05


class EtcdNotInstalled(RuntimeError):
    """The etcd server binary is missing."""


class EtcdStartError(RuntimeError):
    """A member did not become healthy in time; the message ends with its log tail."""


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Server settings shared by every member; the defaults suit a local, fast test bed."""

    heartbeat_interval_ms: int = 50
    election_timeout_ms: int = 500
    quota_backend_bytes: int = 2 * 1024**3
    max_txn_ops: int = 1024
    watch_progress_interval_s: float = 1.0
    snapshot_count: int = 10_000
    log_level: str = "warn"


def find_etcd(binary: str | None = None) -> str:
    """Path of the etcd server binary; raise `EtcdNotInstalled` with the fix if absent."""
    candidates = [binary] if binary else [DEFAULT_ETCD, shutil.which("etcd")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise EtcdNotInstalled(
        f"etcd server not found (looked for {binary or DEFAULT_ETCD} and on PATH); "
        "run `make system-deps` (Debian package etcd-server)"
    )


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct TCP ports that were free on `host` a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


class LocalEtcdMember:
    """One etcd process of a `LocalEtcdCluster`. Not thread-safe."""

    def __init__(
        self,
        *,
        name: str,
        member_dir: pathlib.Path,
        host: str,
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        token: str,
        settings: EtcdSettings,
        binary: str,
    ) -> None:
        self.name = name
        self.member_dir = member_dir
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self._initial_cluster = initial_cluster
        self._token = token
        self._settings = settings
        self._binary = binary
        self._child = ChildProcess(name, [], member_dir / "etcd.log", env=etcd_env())

    @property
    def client_endpoint(self) -> str:
        """``host:port`` of the member's client (gRPC) listener."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log_path(self) -> pathlib.Path:
        return self._child.log_path

    @property
    def running(self) -> bool:
        """True while the process this object started has not exited."""
        return self._child.running

    def start(self, state: str = "new") -> None:
        """Launch the process (``--initial-cluster-state`` `state`); no-op if running."""
        self._child.start(self._command(state))

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the member's process group without waiting (no-op if not running)."""
        self._child.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the member (a crash) and reap it."""
        self._child.stop(10.0, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the member, wait up to `timeout`, then SIGKILL; always reaps."""
        self._child.stop(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop if running, start again on the same data dir and wait until healthy."""
        self.stop()
        self.start(state="existing")
        self.wait_healthy(timeout)

    def healthy(self) -> bool:
        """True if ``GET /health`` answers ``"health": "true"`` (leader elected, no alarm)."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0) as response:
                body = json.loads(response.read())
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def wait_healthy(self, timeout: float) -> None:
        """Block until healthy; raise `EtcdStartError` with the log tail on timeout or exit."""
        try:
            self._child.wait_until(self.healthy, timeout, poll=_POLL_SECONDS)
        except RuntimeError as e:
            raise EtcdStartError(f"etcd member {e}") from None

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the member's log, for error messages."""
        return self._child.log_tail(lines)

    def _command(self, state: str) -> list[str]:
        return etcd_command(
            binary=self._binary,
            name=self.name,
            data_dir=self.member_dir / "data",
            client_url=self.client_url,
            peer_url=self.peer_url,
            initial_cluster=self._initial_cluster,
            state=state,
            token=self._token,
            settings=self._settings,
        )


def etcd_command(
    *,
    binary: str,
    name: str,
    data_dir: pathlib.Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    state: str,
    token: str,
    settings: EtcdSettings,
) -> list[str]:
    """The argv of one etcd member (pure); every setting is an explicit flag, logs go to stderr.

    Also used to run members elsewhere than on loopback, e.g. inside network
    namespaces (`deploy.netns`); run it with `etcd_env()`.
    """
    s = settings
    flags = {
        "name": name,
        "data-dir": str(data_dir),
        "listen-client-urls": client_url,
        "advertise-client-urls": client_url,
        "listen-peer-urls": peer_url,
        "initial-advertise-peer-urls": peer_url,
        "initial-cluster": initial_cluster,
        "initial-cluster-state": state,
        "initial-cluster-token": token,
        "heartbeat-interval": str(s.heartbeat_interval_ms),
        "election-timeout": str(s.election_timeout_ms),
        "quota-backend-bytes": str(s.quota_backend_bytes),
        "max-txn-ops": str(s.max_txn_ops),
        "snapshot-count": str(s.snapshot_count),
        "experimental-watch-progress-notify-interval": f"{int(s.watch_progress_interval_s * 1000)}ms",
        "logger": "zap",
        "log-outputs": "stderr",
        "log-level": s.log_level,
    }
    return [binary, *(f"--{flag}={value}" for flag, value in flags.items())]


class LocalEtcdCluster:
    """`size` local etcd members forming one cluster. Use as a context manager or call `stop()`."""

    def __init__(
        self,
        base_dir: pathlib.Path,
        size: int = 1,
        host: str = "127.0.0.1",
        client_ports: list[int] | None = None,
        peer_ports: list[int] | None = None,
        name_prefix: str = "etcd",
        *,
        settings: EtcdSettings | None = None,
        etcd_binary: str | None = None,
    ) -> None:
        binary = find_etcd(etcd_binary)
        if size < 1:
            raise ValueError(f"cluster size {size} must be at least 1")
        clients = client_ports or free_ports(host, size)
        peers = peer_ports or free_ports(host, size)
        if len(clients) != size or len(peers) != size:
            raise ValueError(f"need {size} client and peer ports, got {len(clients)} and {len(peers)}")
        names = [f"{name_prefix}{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://{host}:{p}" for n, p in zip(names, peers, strict=True))
        token = f"serval-{uuid.uuid4().hex[:12]}"
        self.base_dir = base_dir
        self.settings = settings or EtcdSettings()
        self.members: Sequence[LocalEtcdMember] = [
            LocalEtcdMember(
                name=n,
                member_dir=base_dir / n,
                host=host,
                client_port=c,
                peer_port=p,
                initial_cluster=initial,
                token=token,
                settings=self.settings,
                binary=binary,
            )
            for n, c, p in zip(names, clients, peers, strict=True)
        ]

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member's client listener, in member order."""
        return [m.client_endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        """Launch every member and wait until all are healthy; on failure stop all and raise."""
        try:
            for member in self.members:
                member.start()
            deadline = time.monotonic() + timeout
            for member in self.members:
                member.wait_healthy(max(deadline - time.monotonic(), 0.0))
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 1.0) -> None:
        """Stop every member and reap them all: SIGTERM, then SIGKILL after `grace` seconds.

        The grace is short because a leader that sees its peers go away tries to
        hand over leadership for seconds; etcd syncs every commit to disk, so a
        SIGKILL loses nothing acknowledged.
        """
        for member in self.members:  # signal all first, so they shut down in parallel
            member.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for member in self.members:
            member.stop(timeout=max(deadline - time.monotonic(), 0.0))

    def __enter__(self) -> LocalEtcdCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def etcd_env() -> dict[str, str]:
    """The environment without ETCD_* settings (etcd refuses env vars that shadow flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH"}
    if platform.machine() in ("aarch64", "arm64"):
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "arm64")
    return env
