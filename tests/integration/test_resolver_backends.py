"""The resolver's back-ends against real things: files, the registry (real etcd and
gRPC on loopback) and a DNS server (`dnsmasq` on a loopback port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from registry.api.client import RegistryClient
from registry.model import Instance
from resolver.backends.dns import DnsBackend, DnsName
from resolver.backends.registry import RegistryBackend
from resolver.backends.static import StaticBackend
from resolver.merge import Resolver
from resolver.model import Backend, Snapshot

pytestmark = pytest.mark.integration


async def wait_for(backend: Backend, check: Callable[[Snapshot], bool], timeout: float = 10) -> Snapshot:
    """Wait until `check` holds for `backend`'s snapshot (checked after each change)."""
    changed = asyncio.Event()
    backend.subscribe(changed.set)
    async with asyncio.timeout(timeout):
        while not check(snap := backend.snapshot()):
            await changed.wait()
            changed.clear()
    return snap


@contextlib.asynccontextmanager
async def running(backend: Backend) -> AsyncIterator[None]:
    task = asyncio.create_task(backend.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ids(snap: Snapshot, service: str) -> list[str]:
    return [e.instance_id for e in snap.services.get(service, ())]


# ---- static ----------------------------------------------------------------------

FILE = """
[[service]]
name = "web.example"
[[service.instance]]
id = "{iid}"
addresses = ["10.0.0.5"]
port = 8080
"""


def write(path: Path, text: str) -> None:
    """Replace `path` atomically (how editors and config managers write)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_static_reload_and_broken_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "services.toml"
    write(path, FILE.format(iid="w1"))
    backend = StaticBackend(path, interval=0.05)
    async with running(backend):
        await wait_for(backend, lambda s: ids(s, "web.example") == ["w1"])
        write(path, FILE.format(iid="w2"))
        await wait_for(backend, lambda s: ids(s, "web.example") == ["w2"])

        write(path, FILE.format(iid="w2") + "[[service]]\nname = 'bad_name'\n")
        snap = await wait_for(backend, lambda s: bool(s.error))
        assert "bad_name" in snap.error and ids(snap, "web.example") == ["w2"]

        path.write_text("this is [not toml")  # in place: same inode, new size
        snap = await wait_for(backend, lambda s: "TOML syntax" in s.error)
        assert ids(snap, "web.example") == ["w2"]

        path.unlink()
        snap = await wait_for(backend, lambda s: "No such file" in s.error)
        assert ids(snap, "web.example") == ["w2"]

        write(path, FILE.format(iid="w3"))
        snap = await wait_for(backend, lambda s: ids(s, "web.example") == ["w3"])
        assert snap.error == ""


# ---- registry ----------------------------------------------------------------------


async def test_registry_backend_follows_the_registry(registry_target: str) -> None:
    client = RegistryClient([registry_target])
    backend = RegistryBackend([registry_target])
    try:
        session = await client.open_session(30)
        inst = Instance("pay.prod", "i1", ("10.0.0.1",), 8080, tier=2, zone="z", metadata={"k": "v"})
        await client.register(inst, lease_id=session.lease_id)
        async with running(backend):
            snap = await wait_for(backend, lambda s: ids(s, "pay.prod") == ["i1"])
            [e] = snap.services["pay.prod"]
            assert (e.addresses, e.port, e.weight, e.tier, e.zone, dict(e.metadata), e.source) == (
                ("10.0.0.1",), 8080, 100, 2, "z", {"k": "v"}, "registry",
            )  # fmt: skip

            await client.register(Instance("pay.prod", "i2", ("10.0.0.2",), 8080), lease_id=session.lease_id)
            # (tier, instance id) order: i2 is tier 0, i1 tier 2
            await wait_for(backend, lambda s: ids(s, "pay.prod") == ["i2", "i1"])

            await client.drain("pay.prod", "i1")
            await wait_for(
                backend, lambda s: [e.weight for e in s.services["pay.prod"] if e.instance_id == "i1"] == [0]
            )

            await client.deregister("pay.prod", "i1")
            await wait_for(backend, lambda s: ids(s, "pay.prod") == ["i2"])
            await client.deregister("pay.prod", "i2")
            snap = await wait_for(backend, lambda s: "pay.prod" not in s.services)
            assert snap.error == ""
    finally:
        await client.close()


async def test_resolver_merges_registry_and_static(registry_target: str, tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    write(path, FILE.format(iid="i1").replace("10.0.0.5", "10.0.0.9"))
    client = RegistryClient([registry_target])
    try:
        session = await client.open_session(30)
        await client.register(Instance("web.example", "i1", ("10.0.0.1",), 8080), lease_id=session.lease_id)
        resolver = Resolver([RegistryBackend([registry_target]), StaticBackend(path, interval=0.05)])
        task = asyncio.create_task(resolver.run())
        try:
            changed = asyncio.Event()
            resolver.subscribe(changed.set)
            async with asyncio.timeout(10):
                while len(resolver.view().conflicts) < 2:
                    await changed.wait()
                    changed.clear()
            view = resolver.view()
            [e] = view.endpoints("web.example")
            assert (e.source, e.addresses, e.tier) == ("registry", ("10.0.0.1",), 0)
            assert [(c.instance_id, c.sources) for c in view.conflicts] == [
                ("", ("registry", "static")),
                ("i1", ("registry", "static")),
            ]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await client.close()


# ---- dns (dnsmasq) -------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dnsmasq:
    """dnsmasq serving only the records of its config, on 127.0.0.1:`port`."""

    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary, self.tmp, self.port = binary, tmp, free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, records: str, ttl: int) -> None:
        conf = self.tmp / "dnsmasq.conf"
        conf.write_text(
            f"port={self.port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
            f"no-poll\nlocal=/test/\nlocal-ttl={ttl}\npid-file=\nuser=\n" + records
        )
        argv = [self.binary, "--keep-in-foreground", f"--conf-file={conf}", "--log-facility=-"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while True:  # ready once it answers
            try:
                dns.query.udp(dns.message.make_query("db.test", "A"), "127.0.0.1", 0.2, self.port)
                return
            except (dns.exception.Timeout, OSError):
                assert time.monotonic() < deadline, "dnsmasq did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("dnsmasq is not installed (make system-deps)")
    server = Dnsmasq(binary, tmp_path)
    try:
        yield server
    finally:
        server.stop()


SRV = """
srv-host=_web._tcp.web.test,a.node.test,8080,10,5
srv-host=_web._tcp.web.test,b.node.test,8081,20,0
host-record=a.node.test,10.0.0.1
host-record=b.node.test,10.0.0.2,fd00::2
host-record=db.test,10.0.1.1
"""


async def test_dns_backend_srv_and_a(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(SRV, ttl=60)
    backend = DnsBackend(
        [DnsName("_web._tcp.web.test"), DnsName("db.test", port=5432)],
        [f"127.0.0.1:{dnsmasq.port}"],
        ttl_floor=0.2,
    )
    async with running(backend):
        snap = await wait_for(backend, lambda s: "web.test" in s.services and "db.test" in s.services)
        got = [(e.instance_id, e.addresses, e.port, e.weight, e.tier) for e in snap.services["web.test"]]
        assert got == [
            ("a.node.test:8080", ("10.0.0.1",), 8080, 5, 0),
            ("b.node.test:8081", ("10.0.0.2", "fd00::2"), 8081, 1, 1),
        ]
        [db] = snap.services["db.test"]
        assert (db.instance_id, db.addresses, db.port, db.source) == ("db.test", ("10.0.1.1",), 5432, "dns")
        assert snap.error == ""


async def test_dns_backend_honours_ttl_and_keeps_last_good(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(SRV, ttl=1)
    backend = DnsBackend(
        [DnsName("db.test", port=5432)], [f"127.0.0.1:{dnsmasq.port}"], ttl_floor=0.2, timeout=0.3
    )
    async with running(backend):
        await wait_for(
            backend, lambda s: [e.addresses for e in s.services.get("db.test", ())] == [("10.0.1.1",)]
        )
        dnsmasq.stop()
        dnsmasq.start(SRV.replace("10.0.1.1", "10.0.1.2"), ttl=1)  # same port
        await wait_for(
            backend, lambda s: [e.addresses for e in s.services.get("db.test", ())] == [("10.0.1.2",)]
        )

        dnsmasq.stop()  # failures: the last answer is kept until its TTL, then dropped
        snap = await wait_for(backend, lambda s: bool(s.error))
        assert "db.test" in snap.error
        await wait_for(backend, lambda s: s.services == {}, timeout=5)
        dnsmasq.start(SRV, ttl=1)
        snap = await wait_for(backend, lambda s: "db.test" in s.services, timeout=10)
        assert snap.error == ""
