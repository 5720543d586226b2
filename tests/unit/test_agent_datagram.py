"""Datagram flows through the local API and the client library, against the fake data path."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hostagent import client
from hostagent.agent.desired import SAL_PORT_KEY
from hostagent.agent.events import Overflow
from hostagent.agent.listeners import PROTO_KEY
from hostagent.sal_core.table import RuleKind
from registry.model import Instance
from tests.support.agent import agent_harness, eventually
from tests.unit.test_agent_local_api import open_app, request, rule_for

REMOTE = Instance(
    service="stats.prod",
    instance_id="remote-1",
    addresses=("10.0.0.9",),
    port=7946,
    metadata={SAL_PORT_KEY: "7946", PROTO_KEY: "dgram"},
)


async def test_datagram_listen_registers_dgram_metadata_and_delivers_seqpacket_fds(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        app = await open_app(h.socket_path)
        reply, _ = await request(app, {"op": "listen", "name": "stats.prod", "datagram": True})
        assert reply["ok"] is True
        lid = int(str(reply["listener"]))
        assert lid in h.datapath.datagram_listeners and rule_for(h, "stats.prod") == RuleKind.DEMUX
        (registered,) = h.registrar.instances.values()
        assert registered.metadata[PROTO_KEY] == "dgram"

        remote = h.datapath.inject_accept(lid)
        event, fd = await asyncio.wait_for(app.receive(), 5)
        assert event["event"] == "accept" and fd is not None
        with remote, socket.socket(fileno=fd) as conn:
            assert conn.type == socket.SOCK_SEQPACKET
            remote.send(b"one")
            remote.send(b"two")
            assert conn.recv(100) == b"one" and conn.recv(100) == b"two"  # boundaries kept

        # An overflow re-lists the listener with its kind.
        h.datapath.listening.clear()
        h.datapath.datagram_listeners.clear()
        h.datapath.inject(Overflow(1))
        await eventually(lambda: lid in h.datapath.datagram_listeners)
        app.close()
        await eventually(lambda: not h.registrar.instances)
        assert lid not in h.datapath.datagram_listeners


async def test_stream_listeners_carry_no_proto_and_bad_datagram_flag_is_an_error(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        app = await open_app(h.socket_path)
        reply, _ = await request(app, {"op": "listen", "name": "web.prod", "datagram": "yes"})
        assert reply == {"ok": False, "error": "'datagram' must be a boolean"}
        reply, _ = await request(app, {"op": "listen", "name": "web.prod"})
        assert reply["ok"] is True
        (registered,) = h.registrar.instances.values()
        assert PROTO_KEY not in registered.metadata
        app.close()


async def test_client_datagram_connect_send_recv_and_local_kind_mismatch(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        path = str(h.socket_path)
        flow = await asyncio.to_thread(client.connect, "stats.prod", 2, agent_socket=path, datagram=True)
        with flow:
            (flow_end,) = h.datapath.flows.values()
            assert flow_end.type == socket.SOCK_SEQPACKET
            flow.send(b"a")
            flow.send(b"bc")
            assert flow_end.recv(10) == b"a" and flow_end.recv(10) == b"bc"
            flow_end.send(b"reply")
            assert flow.recv(timeout=2) == b"reply"
            with pytest.raises(ValueError, match="zero-length"):
                flow.send(b"")
            with pytest.raises(ValueError, match="at most"):
                flow.send(b"x" * (client.MAX_MESSAGE + 1))
            flow_end.close()
            assert flow.recv(timeout=2) == b""  # the flow ended: end of stream

        # A stream connect to a local datagram listener is refused (one kind per name).
        listener = await asyncio.to_thread(client.listen, "local.dev", agent_socket=path, datagram=True)
        with listener:
            with pytest.raises(client.ConnectError, match="no service"):
                await asyncio.to_thread(client.connect, "local.dev", 1, agent_socket=path)
            dgram = await asyncio.to_thread(client.connect, "local.dev", 1, agent_socket=path, datagram=True)
            accepted, _peer = await asyncio.to_thread(listener.accept, 5)
            with dgram, accepted:
                dgram.send(b"ping")
                assert accepted.recv(timeout=2) == b"ping"


async def test_asyncio_open_datagram(tmp_path: Path) -> None:
    async with agent_harness(tmp_path, remote=[REMOTE]) as h:
        flow = await client.open_datagram("stats.prod", 2, agent_socket=str(h.socket_path))
        try:
            (flow_end,) = h.datapath.flows.values()
            await flow.send(b"hello")
            assert flow_end.recv(10) == b"hello"
            flow_end.send(b"world")
            assert await asyncio.wait_for(flow.recv(), 2) == b"world"
        finally:
            flow.close()
        h.datapath.reachable = set()
        with pytest.raises(client.ConnectError, match="refused"):
            await client.open_datagram("stats.prod", 1, agent_socket=str(h.socket_path))
