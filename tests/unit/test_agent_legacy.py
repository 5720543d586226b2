"""Legacy access over the fake data path: exposed servers, SOCKS5 set-up by name, options, metrics."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from deploy.cli import build_parser
from hostagent.agent.cli import config_from_args
from hostagent.agent.events import Overflow
from hostagent.agent.legacy import LegacyAccess, LegacyConfig
from hostagent.agent.metrics import AgentGauges, collect, render
from hostagent.sal_core.table import Rule, RuleKind, Target
from tests.support.agent import agent_harness, eventually
from tests.support.legacy_clients import socks_connect

SERVER = ("127.0.0.1", 8080)


async def test_expose_registers_the_name_with_the_server_and_survives_an_overflow(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        access = LegacyAccess(h.control, LegacyConfig(exposes=(("pay.prod", SERVER),)))
        await access.start()
        (lid,) = access.exposed
        assert h.datapath.listening == {lid: SERVER}
        assert [i.service for i in h.registrar.instances.values()] == ["pay.prod"]
        assert any(r.kind == RuleKind.DEMUX and r.listener == lid for r in h.datapath.rules)
        h.datapath.listening.clear()  # as if lost: the overflow resync re-lists with the endpoint
        h.datapath.inject(Overflow(dropped=1))
        await eventually(lambda: h.datapath.listening == {lid: SERVER})
        await access.close()
        assert not h.datapath.listening and not h.registrar.instances


async def test_socks5_success_reply_comes_from_the_data_path_greeting(tmp_path: Path) -> None:
    async with agent_harness(tmp_path) as h:
        h.datapath.apply_table(
            10_000, [Rule.for_name("pay.prod", RuleKind.FORWARD, [Target("10.0.0.5", 7946)])]
        )
        access = LegacyAccess(h.control, LegacyConfig(socks_listen=("127.0.0.1", 0)))
        await access.start()
        ((_, proxy),) = access.addresses()
        sock, rep = await asyncio.to_thread(socks_connect, proxy, "pay.prod")
        with sock:
            assert rep == 0
            (flow,) = h.datapath.flows.values()  # the fake keeps the client's own TCP socket
            assert flow.type == socket.SOCK_STREAM and flow.family == socket.AF_INET
            flow.sendall(b"hello")
            assert await asyncio.to_thread(sock.recv, 5) == b"hello"
        assert access.connections["socks"] == 1 and not access.failures
        await access.close()


def test_legacy_options_parse_into_the_config() -> None:
    args = build_parser().parse_args(
        ["agent", "--socks-listen", "127.0.0.1:1080", "--upstream", "127.0.0.1:9000=Payments.Prod",
         "--upstream", "[::1]:9001=b.prod", "--expose", "web.prod=127.0.0.1:8080"]
    )  # fmt: skip
    legacy = config_from_args(args).legacy
    assert legacy.socks_listen == ("127.0.0.1", 1080)
    assert legacy.upstreams == ((("127.0.0.1", 9000), "payments.prod"), (("::1", 9001), "b.prod"))
    assert legacy.exposes == (("web.prod", ("127.0.0.1", 8080)),)
    assert config_from_args(build_parser().parse_args(["agent"])).legacy == LegacyConfig()


@pytest.mark.parametrize(
    "argv",
    [
        ["--upstream", "127.0.0.1:9000"],
        ["--upstream", "127.0.0.1:9000=bad name"],
        ["--expose", "a.b=127.0.0.1:0"],
        ["--expose", "127.0.0.1:80"],
        ["--socks-listen", "localhost:1080"],
    ],
)
def test_bad_legacy_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", *argv])
    capsys.readouterr()


def test_legacy_metrics() -> None:
    gauges = AgentGauges(
        datapath_stats=dict,
        applied_revision=lambda: 0,
        mirror_revision=lambda: 0,
        table_generation=lambda: 0,
        table_rules=lambda: 0,
        listeners=lambda: 0,
        registry_reconnects=lambda: 0,
        legacy_connections=lambda: {"socks": 3},
        legacy_failures=lambda: {("socks", "connect"): 1},
    )
    lines = render(collect(gauges)).decode().splitlines()
    for line in [
        'serval_agent_legacy_connections_total{kind="socks"} 3.0',
        'serval_agent_legacy_connections_total{kind="upstream"} 0.0',
        'serval_agent_legacy_failures_total{kind="socks",reason="connect"} 1.0',
        'serval_agent_legacy_failures_total{kind="upstream",reason="handshake"} 0.0',
    ]:
        assert line in lines, line
