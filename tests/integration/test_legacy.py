"""Legacy access (`hostagent.agent.legacy`) over the REAL Rust data path, two agents on loopback.

Agent B exposes an unmodified TCP echo server (`expose`); agent A runs the SOCKS5
proxy and an upstream port. Both control planes are the production `Control` +
`Reconciler` + `EventPump`; a shared in-memory registrar stands in for the
registry (each agent's table is computed from what both registered).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from hostagent.agent.control import Control
from hostagent.agent.desired import Locality, desired_rules
from hostagent.agent.events import Accepted, Endpoint, EventPump
from hostagent.agent.legacy import LegacyAccess, LegacyConfig
from hostagent.agent.listeners import HostIdentity
from hostagent.agent.reconcile import Reconciler
from hostagent.sal_core.datapath import Datapath, DatapathConfig
from hostagent.sal_core.table import Rule
from tests.support.agent import RecordingRegistrar, eventually
from tests.support.legacy_clients import echo_over, payload, socks_connect

CONFIG = DatapathConfig(time_wait_ms=200, resync_timeout_ms=10_000)


@dataclass
class MiniAgent:
    datapath: Datapath
    control: Control
    reconciler: Reconciler
    legacy: LegacyAccess
    tasks: list[asyncio.Task[None]]

    def endpoint(self, kind: str) -> Endpoint:
        (endpoint,) = [e for k, e in self.legacy.addresses() if k == kind]
        return endpoint


@contextlib.asynccontextmanager
async def mini_agent(
    agent_id: str, registrar: RecordingRegistrar, legacy: LegacyConfig
) -> AsyncIterator[MiniAgent]:
    dp = Datapath.start(CONFIG)
    host = HostIdentity(agent_id=agent_id, addresses=("127.0.0.1",), sal_port=dp.sal_addresses()[0][1])
    holder: dict[str, Control] = {}

    def compute() -> tuple[list[Rule], int]:
        return desired_rules(registrar.instances.values(), Locality(), holder["c"].listeners), len(
            registrar.log
        )

    reconciler = Reconciler(dp, compute, debounce=0.01)
    control = holder["c"] = Control(dp, registrar, reconciler, host, lambda sid: False)
    pump = EventPump(dp, control, poll_ms=20)
    reconciler.reconcile_now()
    tasks = [asyncio.create_task(reconciler.run()), asyncio.create_task(pump.run())]
    access = LegacyAccess(control, legacy)
    try:
        await access.start()
        yield MiniAgent(dp, control, reconciler, access, tasks)
    finally:
        await access.close()
        pump.stop()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        dp.shutdown()
        await asyncio.to_thread(dp.join, 5000)
        for ev in dp.poll_events(4096, 0):
            if isinstance(ev, Accepted):
                socket.close(ev.app_fd)


@pytest.fixture
def echo_server() -> Iterator[Endpoint]:
    """An unmodified TCP echo server on loopback (threads; knows nothing of Serval)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    thread.join()
    server.close()


def closed_port() -> Endpoint:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[:2]  # nobody listens once closed


@contextlib.asynccontextmanager
async def two_agents(echo: Endpoint) -> AsyncIterator[tuple[MiniAgent, MiniAgent]]:
    registrar = RecordingRegistrar()
    exposes = (("legacy.it", echo), ("down.it", closed_port()))
    async with mini_agent("b", registrar, LegacyConfig(exposes=exposes)) as b:
        a_config = LegacyConfig(
            socks_listen=("127.0.0.1", 0), upstreams=((("127.0.0.1", 0), "legacy.it"),), connect_timeout=3
        )
        async with mini_agent("a", registrar, a_config) as a:
            a.reconciler.request()
            await a.reconciler.settled()
            yield a, b


def socks_echo(proxy: Endpoint, name: str, size: int) -> tuple[int, bytes]:
    sock, rep = socks_connect(proxy, name)
    with sock:
        return rep, (echo_over(sock, size) if rep == 0 else sock.recv(100))


async def test_socks5_connect_by_name_reaches_an_exposed_unmodified_server(echo_server: Endpoint) -> None:
    async with two_agents(echo_server) as (a, b):
        size = 3 << 20
        rep, got = await asyncio.to_thread(socks_echo, a.endpoint("socks"), "legacy.it", size)
        assert rep == 0
        assert got == payload(size)
        assert b.datapath.stats()["flows_accepted"] == 1
        assert a.legacy.connections["socks"] == 1
        assert not a.legacy.failures


async def test_upstream_port_relays_to_the_service(echo_server: Endpoint) -> None:
    async with two_agents(echo_server) as (a, _):

        def direct() -> bytes:
            with socket.create_connection(a.endpoint("upstream"), timeout=10) as sock:
                return echo_over(sock, 1 << 20)

        results = await asyncio.gather(*(asyncio.to_thread(direct) for _ in range(8)))
        assert all(r == payload(1 << 20) for r in results)
        assert a.legacy.connections["upstream"] == 8


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("nobody.it", 0x04),  # no route: host unreachable
        ("down.it", 0x05),  # the exposed server refuses: connection refused
        ("not a name", 0x04),  # invalid service name
    ],
)
async def test_socks5_failure_replies_then_closes(echo_server: Endpoint, name: str, code: int) -> None:
    async with two_agents(echo_server) as (a, _):
        rep, rest = await asyncio.to_thread(socks_echo, a.endpoint("socks"), name, 0)
        assert rep == code
        assert rest == b"", "the proxy closes after a failure reply"
        assert a.legacy.failures["socks", "connect"] == 1


async def test_socks5_refuses_ip_destinations_and_other_commands(echo_server: Endpoint) -> None:
    async with two_agents(echo_server) as (a, _):

        def attempt(request: bytes) -> bytes:
            with socket.create_connection(a.endpoint("socks"), timeout=10) as sock:
                sock.sendall(b"\x05\x01\x00" + request)
                data = b""
                while chunk := sock.recv(100):
                    data += chunk
                return data

        ipv4 = await asyncio.to_thread(attempt, b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        assert ipv4 == b"\x05\x00" + b"\x05\x08\x00\x01" + bytes(6)
        bind = await asyncio.to_thread(attempt, b"\x05\x02\x00\x03\x03a.b\x00\x50")
        assert bind == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)
        await eventually(lambda: a.legacy.failures["socks", "handshake"] == 2)


async def test_upstream_failure_resets_the_client() -> None:
    registrar = RecordingRegistrar()
    config = LegacyConfig(upstreams=((("127.0.0.1", 0), "nobody.it"),), connect_timeout=1)
    async with mini_agent("a", registrar, config) as a:

        def attempt() -> bytes | str:
            with socket.create_connection(a.endpoint("upstream"), timeout=10) as sock:
                try:
                    return sock.recv(100)
                except ConnectionResetError:
                    return "reset"

        assert await asyncio.to_thread(attempt) == "reset"
        await eventually(lambda: a.legacy.failures["upstream", "connect"] == 1)
