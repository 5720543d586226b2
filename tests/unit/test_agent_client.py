"""The application library (blocking and asyncio) against the local API and the fake data path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hostagent import client
from hostagent.agent.desired import SAL_PORT_KEY
from registry.model import Instance
from tests.support.agent import agent_harness, eventually

REMOTE = Instance(
    service="pay.prod", instance_id="r1", addresses=("10.0.0.9",), port=7946, metadata={SAL_PORT_KEY: "7946"}
)


def test_socket_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVAL_AGENT_SOCKET", raising=False)
    assert client.agent_socket_path() == "/run/serval/agent.sock"
    monkeypatch.setenv("SERVAL_AGENT_SOCKET", "/tmp/env.sock")
    assert client.agent_socket_path() == "/tmp/env.sock"
    assert client.agent_socket_path("/x.sock") == "/x.sock"


def test_agent_unavailable(tmp_path: Path) -> None:
    with pytest.raises(client.AgentUnavailable, match="no Serval agent"):
        client.connect("pay.prod", agent_socket=str(tmp_path / "none.sock"))
    with pytest.raises(client.AgentUnavailable):
        client.listen("pay.prod", agent_socket=str(tmp_path / "none.sock"))


async def test_blocking_connect_and_listen(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        path = str(h.socket_path)
        sock = await asyncio.to_thread(client.connect, "pay.prod", 2, agent_socket=path)
        with sock:
            (flow_end,) = h.datapath.flows.values()
            sock.sendall(b"request")
            assert flow_end.recv(100) == b"request"

        h.datapath.reachable = set()
        with pytest.raises(client.ConnectError) as err:
            await asyncio.to_thread(client.connect, "pay.prod", 1, agent_socket=path)
        assert err.value.service == "pay.prod" and "tried 10.0.0.9:7946 (refused)" in str(err.value)
        with pytest.raises(client.ConnectError, match="empty label"):
            await asyncio.to_thread(client.connect, "bad..name", agent_socket=path)

        listener = await asyncio.to_thread(client.listen, "cart.prod", agent_socket=path)
        with listener:
            (lid,) = h.datapath.listening
            remote = h.datapath.inject_accept(lid, peer=("10.2.2.2", 4000))
            conn, peer = await asyncio.to_thread(listener.accept, 5)
            with conn, remote:
                assert peer == "10.2.2.2:4000"
                remote.sendall(b"hi")
                assert conn.recv(10) == b"hi"
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(listener.accept, 0.05)
        await eventually(lambda: not h.datapath.listening)
        with pytest.raises(client.ListenError, match="empty label"):
            await asyncio.to_thread(client.listen, "bad..name", agent_socket=path)


async def test_asyncio_open_connection_and_start_server(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        path = str(h.socket_path)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.readline()
            writer.write(b"echo " + data)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async with await client.start_server("echo.dev", echo, agent_socket=path) as server:
            assert server.service_id
            # a local connect is short-cut by the fake to the local listener
            reader, writer = await client.open_connection("echo.dev", 2, agent_socket=path)
            writer.write(b"hello\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"echo hello\n"
            writer.close()
            await writer.wait_closed()
            # and a remote flow arrives through an injected accept
            (lid,) = h.datapath.listening
            remote = h.datapath.inject_accept(lid)
            with remote:
                remote.sendall(b"remote\n")
                assert await asyncio.to_thread(remote.recv, 100) == b"echo remote\n"
        await eventually(lambda: not h.datapath.listening)

        with pytest.raises(client.ConnectError, match=r"nothing\.dev: no route"):
            await client.open_connection("nothing.dev", 1, agent_socket=path)
        with pytest.raises(client.ListenError):
            await client.start_server("-bad", echo, agent_socket=path)
        with pytest.raises(client.AgentUnavailable):
            await client.open_connection("x.dev", agent_socket=str(tmp_path / "none.sock"))
