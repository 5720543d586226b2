"""Datagram flows (UDP semantics) of the Rust data path through `hostagent.sal_core.datapath`.

Two real data paths on loopback: A's table FORWARDs a name to B's SAL endpoint (UDP on
the same ip:port as its TCP listener), B DEMUXes it to a datagram listener. The apps
hold ``SOCK_SEQPACKET`` socketpair ends.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator

import pytest

from hostagent import sal_core
from hostagent.sal_core.datapath import (
    MAX_MESSAGE,
    Accepted,
    Connected,
    ConnectFailed,
    Datapath,
    DatapathConfig,
    FlowClosed,
    Migrated,
)
from hostagent.sal_core.table import Rule, RuleKind, Target
from tests.integration.test_datapath import Events, sal

CONFIG = DatapathConfig(time_wait_ms=200, setup_timeout_ms=600, dgram_app_queue=8)


@pytest.fixture
def dps() -> Iterator[tuple[Datapath, Datapath]]:
    a = Datapath.start(CONFIG)
    b = Datapath.start(dataclasses.replace(CONFIG, sal_listen=(("127.0.0.1", 0), ("127.0.0.2", 0))))
    yield a, b
    for dp in (a, b):
        dp.shutdown()
        assert dp.join(5000)
        for ev in dp.poll_events(4096, 0):
            if isinstance(ev, Accepted):
                os.close(ev.app_fd)


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def dgram_connect(a: Datapath, b: Datapath, name: str) -> tuple[socket.socket, socket.socket, Connected]:
    b.listen(7, datagram=True)
    b.apply_table(1, [Rule.for_name(name, RuleKind.DEMUX, listener=7)])
    a.apply_table(1, [Rule.for_name(name, RuleKind.FORWARD, [sal(b)])])
    client, theirs = seqpacket_pair()
    a.connect(1, sal_core.service_id(name), theirs, 10_000, datagram=True)
    connected = Events(a).wait(Connected)
    accepted = Events(b).wait(Accepted)
    server = socket.socket(fileno=accepted.app_fd)
    for s in (client, server):
        s.settimeout(10)
    return client, server, connected


def test_messages_keep_boundaries_both_ways_and_close_is_eof(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    client, server, connected = dgram_connect(a, b, "echo.dgram.test")
    assert connected.target == b.sal_addresses()[0]
    for size in (1, 5, 1400, 30_000, MAX_MESSAGE):
        message = os.urandom(size)
        client.send(message)
        assert server.recv(MAX_MESSAGE + 1) == message
        server.send(message[::-1])
        assert client.recv(MAX_MESSAGE + 1) == message[::-1]
    assert a.stats()["dgram_out"] == 5 and b.stats()["dgram_in"] == 5
    client.close()
    assert server.recv(100) == b""  # peer FIN
    server.close()
    assert Events(a).wait(FlowClosed).reason == "fin"


def test_oversized_messages_and_a_slow_app_drop_and_count(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    client, server, _ = dgram_connect(a, b, "slow.dgram.test")
    client.send(b"x" * (MAX_MESSAGE + 1))
    for i in range(300):  # the server app does not read: B queues 8, the socket some more
        client.send(i.to_bytes(2, "big") * 500)
    deadline = time.monotonic() + 10
    while b.stats()["dgram_dropped"] == 0:
        assert time.monotonic() < deadline, b.stats()
        time.sleep(0.02)
    assert a.stats()["dgram_oversized"] == 1
    got = server.recv(2000)
    assert len(got) == 1000  # whole messages, never merged or cut
    client.close()
    server.close()


def test_no_datagram_listener_is_refused_and_names_the_service(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    b.listen(3)  # a *stream* listener: datagram SYNs are refused
    b.apply_table(1, [Rule.for_name("kind.dgram.test", RuleKind.DEMUX, listener=3)])
    a.apply_table(1, [Rule.for_name("kind.dgram.test", RuleKind.FORWARD, [sal(b)])])
    mine, theirs = seqpacket_pair()
    a.connect(2, sal_core.service_id("kind.dgram.test"), theirs, 5000, datagram=True)
    failed = Events(a).wait(ConnectFailed)
    host, port = b.sal_addresses()[0]
    assert failed.tried == ((f"{host}:{port}", "no service"),)
    assert b.stats()["flows_refused"] == 1
    assert mine.recv(10) == b""  # the data path closed its end
    mine.close()


def test_removed_address_moves_the_flow_and_messages_continue(dps: tuple[Datapath, Datapath]) -> None:
    a, b = dps
    client, server, _ = dgram_connect(a, b, "move.dgram.test")
    client.send(b"before")
    assert server.recv(100) == b"before"
    b.address_removed("127.0.0.1")
    moved = Events(a).wait(Migrated)
    assert moved.remote == b.sal_addresses()[1]
    Events(b).wait(Migrated)
    for i in range(5):
        server.send(b"after %d" % i)
        assert client.recv(100) == b"after %d" % i
        client.send(b"back %d" % i)
        assert server.recv(100) == b"back %d" % i
    client.close()
    server.close()


def test_bad_arguments_leave_the_fd_with_the_caller(dps: tuple[Datapath, Datapath]) -> None:
    a, _ = dps
    stream, other = socket.socketpair()
    sid = sal_core.service_id("x.dgram.test")
    with pytest.raises(ValueError, match="SEQPACKET"):
        a.connect(5, sid, stream.fileno(), 1000, datagram=True)
    stream.send(b"still mine")
    assert other.recv(20) == b"still mine"
    packet, _peer = seqpacket_pair()
    with pytest.raises(ValueError, match="greeting"):
        a.connect(6, sid, packet.fileno(), 1000, greeting=b"hi", datagram=True)
    with pytest.raises(ValueError, match="expose"):
        a.listen(9, expose=("127.0.0.1", 1), datagram=True)
    for s in (stream, other, packet, _peer):
        s.close()


def test_keepalive_settings_reach_the_data_path() -> None:
    dp = Datapath.start(DatapathConfig(dgram_keepalive_ms=0, dgram_keepalive_probes=1, dgram_app_queue=1))
    try:
        stats = dp.stats()
        assert stats["dgram_keepalive_timeouts"] == 0 and stats["dgram_flows_active"] == 0
        assert Target(*dp.sal_addresses()[0]).port > 0
    finally:
        dp.shutdown()
        assert dp.join(2000)
