"""The Rust data path through `hostagent.sal_core.datapath`, with real sockets on loopback.

Two data paths in one process: A's table FORWARDs a service to B's SAL endpoint,
B DEMUXes it to a listener. The apps are Unix socketpairs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from hostagent import sal_core
from hostagent.sal_core.datapath import (
    Accepted,
    Connected,
    ConnectFailed,
    Datapath,
    DatapathConfig,
    Event,
    FlowClosed,
    Migrated,
    TargetFailed,
)
from hostagent.sal_core.table import Rule, RuleKind, Target

E = TypeVar("E", bound=Event)
CONFIG = DatapathConfig(time_wait_ms=200, resync_timeout_ms=10_000)


class Events:
    """Events of one data path; those not asked for yet are kept."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.seen: list[Event] = []

    def wait(self, kind: type[E], pred: Callable[[E], bool] = lambda _: True, timeout: float = 10) -> E:
        end = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.seen):
                if isinstance(ev, kind) and pred(ev):
                    del self.seen[i]
                    return ev
            assert time.monotonic() < end, f"no {kind.__name__}; saw {self.seen}"
            self.seen.extend(self.dp.poll_events(64, 50))


@pytest.fixture
def dps() -> Iterator[tuple[Datapath, Datapath]]:
    a, b = Datapath.start(CONFIG), Datapath.start(CONFIG)
    yield a, b
    for dp in (a, b):
        dp.shutdown()
        assert dp.join(5000)
        # Close fds of accepted flows nobody asked for.
        for ev in dp.poll_events(4096, 0):
            if isinstance(ev, Accepted):
                os.close(ev.app_fd)


def sal(dp: Datapath) -> Target:
    host, port = dp.sal_addresses()[0]
    return Target(host, port)


def wire_up(a: Datapath, b: Datapath, name: str) -> None:
    b.listen(1)
    b.apply_table(1, [Rule.for_name(name, RuleKind.DEMUX, listener=1)])
    a.apply_table(1, [Rule.for_name(name, RuleKind.FORWARD, [sal(b)])])


def connect(a: Datapath, b: Datapath, name: str) -> tuple[socket.socket, socket.socket, Connected, Accepted]:
    client, theirs = socket.socketpair()
    a.connect(1, sal_core.service_id(name), theirs, 10_000)
    connected = Events(a).wait(Connected)
    accepted = Events(b).wait(Accepted)
    server = socket.socket(fileno=accepted.app_fd)
    for s in (client, server):
        s.settimeout(10)
    return client, server, connected, accepted


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "unexpected EOF"
        out += chunk
    return out


def test_connect_echo_and_orderly_close(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    wire_up(a, b, "echo.test")
    client, server, connected, accepted = connect(a, b, "echo.test")
    with client, server:
        assert connected.target == tuple(b.sal_addresses()[0])
        assert accepted.listener_id == 1
        client.sendall(b"hello")
        assert recv_exactly(server, 5) == b"hello"
        server.sendall(b"world")
        assert recv_exactly(client, 5) == b"world"
        client.shutdown(socket.SHUT_WR)
        assert server.recv(1) == b""
        server.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    assert Events(a).wait(FlowClosed).reason == "fin"
    assert Events(b).wait(FlowClosed).reason == "fin"
    stats = a.stats()
    assert stats["flows_opened"] == 1 and stats["bytes_out"] == 5 and stats["bytes_in"] == 5
    assert stats["flows_active"] == 0


def test_refused_service_reports_what_was_tried(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    a.apply_table(1, [Rule.for_name("nobody.test", RuleKind.FORWARD, [sal(b)])])
    app, theirs = socket.socketpair()
    with app:
        a.connect(4, sal_core.service_id("nobody.test"), theirs, 5000)
        events = Events(a)
        assert events.wait(TargetFailed).reason == "no service"
        failed = events.wait(ConnectFailed)
        assert failed.request_id == 4
        host, port = b.sal_addresses()[0]
        assert failed.tried == ((f"{host}:{port}", "no service"),)
        assert f"{host}:{port} (no service)" in failed.reason
        assert app.recv(1) == b"", "the app's socket is closed"


def test_failover_from_a_closed_port(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    b.listen(1)
    b.apply_table(1, [Rule.for_name("fo.test", RuleKind.DEMUX, listener=1)])
    targets = [Target("127.0.0.1", dead, tier=0), Target(sal(b).host, sal(b).port, tier=1)]
    a.apply_table(1, [Rule.for_name("fo.test", RuleKind.FORWARD, targets)])
    client, server, connected, _ = connect(a, b, "fo.test")
    with client, server:
        assert connected.target == (sal(b).host, sal(b).port)
    assert a.stats()["failovers"] == 1


def test_transfer_survives_a_broken_path(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    wire_up(a, b, "move.test")
    client, server, connected, _ = connect(a, b, "move.test")
    data = os.urandom(8 << 20)
    received = hashlib.sha256()
    got = 0

    def reader() -> None:
        nonlocal got
        while chunk := server.recv(65536):
            received.update(chunk)
            got += len(chunk)

    def writer() -> None:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)

    with client, server:
        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        while got < (1 << 20):
            time.sleep(0.001)
        assert a.debug_break_path(connected.flow_id)
        for t in threads:
            t.join(20)
        assert received.digest() == hashlib.sha256(data).digest()
    moved = Events(a).wait(Migrated)
    assert moved.flow_id == connected.flow_id
    assert a.stats()["migrations"] >= 1


def test_expose_relays_to_a_local_tcp_server(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    with socket.create_server(("127.0.0.1", 0)) as srv:

        def echo_once() -> None:
            conn, _ = srv.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

        t = threading.Thread(target=echo_once)
        t.start()
        b.listen(2, expose=srv.getsockname())
        b.apply_table(1, [Rule.for_name("legacy.test", RuleKind.DEMUX, listener=2)])
        a.apply_table(1, [Rule.for_name("legacy.test", RuleKind.FORWARD, [sal(b)])])
        app, theirs = socket.socketpair()
        with app:
            app.settimeout(10)
            a.connect(1, sal_core.service_id("legacy.test"), theirs, 5000)
            Events(a).wait(Connected)
            app.sendall(b"ping")
            assert recv_exactly(app, 4) == b"ping"
            app.shutdown(socket.SHUT_WR)
            assert app.recv(1) == b""
        t.join(10)


async def test_events_from_asyncio_via_a_thread(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    wire_up(a, b, "async.test")
    client, theirs = socket.socketpair()
    a.connect(9, sal_core.service_id("async.test"), theirs, 5000)
    connected = await asyncio.to_thread(Events(a).wait, Connected)
    accepted = await asyncio.to_thread(Events(b).wait, Accepted)
    assert connected.request_id == 9
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=accepted.app_fd))
    _c_reader, c_writer = await asyncio.open_unix_connection(sock=client)
    c_writer.write(b"over asyncio")
    await c_writer.drain()
    assert await reader.readexactly(12) == b"over asyncio"
    for w in (writer, c_writer):
        w.close()
        await w.wait_closed()


def test_bad_arguments_leave_the_fd_with_the_caller(dps: tuple[Datapath, Datapath]) -> None:
    a, _ = dps
    app, theirs = socket.socketpair()
    with app, theirs:
        with pytest.raises(ValueError):
            a.connect(1, b"short", theirs, 1000)
        assert theirs.fileno() >= 0
        with pytest.raises(ValueError):
            a.connect(1, sal_core.service_id("x.test"), 10**6, 1000)
        a.shutdown()
        with pytest.raises(RuntimeError):
            a.connect(1, sal_core.service_id("x.test"), theirs, 1000)
        assert theirs.fileno() >= 0
