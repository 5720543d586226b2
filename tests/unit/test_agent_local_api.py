"""The local API over a real Unix socket, against the fake data path (fds really passed)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from hostagent.agent.desired import SAL_PORT_KEY
from hostagent.agent.events import Delayed, Overflow
from hostagent.agent.local_api import SocketInUse, bind_unix_socket
from hostagent.localproto import AsyncFdSocket
from hostagent.sal_core.table import RuleKind
from registry import names
from registry.model import Instance
from tests.support.agent import Harness, agent_harness, eventually

REMOTE = Instance(
    service="pay.prod",
    instance_id="remote-1",
    addresses=("10.0.0.9",),
    port=7946,
    metadata={SAL_PORT_KEY: "7946"},
)


async def open_app(path: Path) -> AsyncFdSocket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return AsyncFdSocket(sock)


async def request(app: AsyncFdSocket, message: dict[str, object]) -> tuple[dict[str, object], int | None]:
    await app.send(message)
    return await asyncio.wait_for(app.receive(), 5)


def rule_for(h: Harness, name: str) -> RuleKind | None:
    sid = names.service_id(name)
    found = [r.kind for r in h.datapath.rules if (r.prefix, r.prefix_bits) == (sid.raw, sid.prefix_bits)]
    return found[0] if found else None


def test_socket_file_mode_0660_and_stale_socket_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: stale
    sock = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with pytest.raises(SocketInUse, match="already serving"):
            bind_unix_socket(path)
    finally:
        sock.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_unix_socket(tmp_path / "file")
    assert not list(tmp_path.glob(".*.tmp"))


async def test_listen_registers_installs_demux_and_delivers_accepted_fds(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        app = await open_app(h.socket_path)
        reply, fd = await request(app, {"op": "listen", "name": "Pay.Prod"})
        assert reply["ok"] is True and fd is None
        assert reply["service_id"] == names.service_id_hex("pay.prod")
        lid = int(str(reply["listener"]))
        assert lid in h.datapath.listening and rule_for(h, "pay.prod") == RuleKind.DEMUX
        (registered,) = h.registrar.instances.values()
        assert (registered.service, registered.instance_id) == ("pay.prod", f"a1-l{lid}")
        assert registered.metadata[SAL_PORT_KEY] == "17946" and registered.port == 17946

        remote = h.datapath.inject_accept(lid, peer=("10.1.1.1", 5555))
        event, fd = await asyncio.wait_for(app.receive(), 5)
        assert event["event"] == "accept" and event["peer"] == "10.1.1.1:5555" and fd is not None
        with remote, socket.socket(fileno=fd) as conn:
            remote.sendall(b"hello app")
            assert conn.recv(100) == b"hello app"
            conn.sendall(b"hello remote")
            assert remote.recv(100) == b"hello remote"

        app.close()  # closing the connection closes the listener
        await eventually(lambda: not h.registrar.instances and rule_for(h, "pay.prod") is None)
        assert lid not in h.datapath.listening
        assert h.registrar.log[-1] == ("remove", "pay.prod", f"a1-l{lid}")


async def test_connect_success_passes_a_working_stream(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        assert rule_for(h, "pay.prod") == RuleKind.FORWARD
        app = await open_app(h.socket_path)
        reply, fd = await request(app, {"op": "connect", "name": "pay.prod", "timeout": 2})
        assert reply["ok"] is True and reply["target"] == "10.0.0.9:7946" and fd is not None
        (flow_end,) = h.datapath.flows.values()
        with socket.socket(fileno=fd) as stream:
            flow_end.sendall(b"from the remote")
            assert stream.recv(100) == b"from the remote"
        app.close()


async def test_connect_failure_names_service_and_what_was_tried(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        h.datapath.reachable = set()
        app = await open_app(h.socket_path)
        reply, fd = await request(app, {"op": "connect", "name": "pay.prod", "timeout": 1})
        assert fd is None
        assert reply == {"ok": False, "error": "pay.prod: no target reachable; tried 10.0.0.9:7946 (refused)"}
        reply, _ = await request(app, {"op": "connect", "name": "nothing.prod"})
        assert reply == {"ok": False, "error": "nothing.prod: no route"}
        app.close()


async def test_bad_requests_get_errors_and_the_connection_stays_usable(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        app = await open_app(h.socket_path)
        app.sock.send(b"{not json\n")
        reply, _ = await asyncio.wait_for(app.receive(), 5)
        assert reply["ok"] is False and "bad JSON" in str(reply["error"])
        app.sock.send(b"[1, 2]\n")
        reply, _ = await asyncio.wait_for(app.receive(), 5)
        assert reply["ok"] is False and "JSON object" in str(reply["error"])
        for bad, why in [
            ({"op": "listen", "name": "bad..name"}, "empty label"),
            ({"op": "listen"}, "'name' must be a string"),
            ({"op": "dance", "name": "pay.prod"}, "unknown op"),
            ({"op": "connect", "name": "pay.prod", "timeout": "soon"}, "timeout"),
        ]:
            reply, _ = await request(app, bad)
            assert reply["ok"] is False and why in str(reply["error"]), reply
        reply, fd = await request(app, {"op": "connect", "name": "pay.prod"})
        assert reply["ok"] is True and fd is not None
        os.close(fd)
        app.close()


async def test_local_connect_reaches_local_listener(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        server = await open_app(h.socket_path)
        reply, _ = await request(server, {"op": "listen", "name": "echo.dev"})
        client = await open_app(h.socket_path)
        reply, cfd = await request(client, {"op": "connect", "name": "echo.dev"})
        assert reply["ok"] is True and cfd is not None
        event, sfd = await asyncio.wait_for(server.receive(), 5)
        assert event["event"] == "accept" and sfd is not None
        with socket.socket(fileno=cfd) as c, socket.socket(fileno=sfd) as s:
            c.sendall(b"ping")
            assert s.recv(10) == b"ping"
        client.close()
        server.close()


async def test_listen_registration_failure_is_reported_and_undone(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        h.registrar.fail = RuntimeError("registry down")
        app = await open_app(h.socket_path)
        reply, _ = await request(app, {"op": "listen", "name": "pay.prod"})
        assert reply["ok"] is False and "registry down" in str(reply["error"])
        assert not h.datapath.listening and len(h.control.listeners) == 0
        app.close()


async def test_overflow_resyncs_table_and_listeners(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        app = await open_app(h.socket_path)
        await request(app, {"op": "listen", "name": "pay.prod"})
        calls = len(h.datapath.listen_calls)
        h.datapath.inject(Overflow(dropped=3))
        await eventually(lambda: len(h.datapath.listen_calls) > calls)
        await h.reconciler.settled()
        assert h.pump.counts["Overflow"] == 1
        app.close()


async def test_delayed_is_released_when_the_mirror_knows_the_name(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        known, unknown = names.service_id("pay.prod").raw, names.service_id("zzz.prod").raw
        released: list[tuple[int, bool]] = []
        h.datapath.settle_delay = lambda rid, release: released.append((rid, release))  # type: ignore[method-assign]
        h.datapath.inject(Delayed(1, known))
        h.datapath.inject(Delayed(2, unknown))
        await eventually(lambda: len(released) == 2)
        assert released == [(1, True), (2, False)]
