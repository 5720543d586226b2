"""`serval agent` options and the data-path factory's refusal to run without the Rust data path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from deploy.cli import build_parser
from hostagent.agent import datapath
from hostagent.agent.cli import config_from_args, parse_endpoint


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [("0.0.0.0:7946", ("0.0.0.0", 7946)), ("[::1]:0", ("::1", 0)), ("10.0.0.1:65535", ("10.0.0.1", 65535))],
)
def test_parse_endpoint(text: str, endpoint: tuple[str, int]) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["7946", "host:1", "10.0.0.1:99999", "10.0.0.1:x", "::1:80"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_endpoint(text)


def test_agent_command_options() -> None:
    args = build_parser().parse_args(
        [
            "agent",
            "--registry",
            "a:1, b:2",
            "--agent-id",
            "h1",
            "--zone",
            "z1",
            "--region",
            "r1",
            "--socket",
            "/tmp/s.sock",
            "--sal-listen",
            "10.0.0.1:7946",
            "--sal-listen",
            "[fd00::1]:7946",
            "--metrics-port",
            "9100",
            "--address-poll",
            "0.5",
        ]
    )
    config = config_from_args(args)
    assert config.registry == ["a:1", "b:2"] and config.agent_id == "h1"
    assert (config.zone, config.region, config.socket_path) == ("z1", "r1", Path("/tmp/s.sock"))
    assert config.sal_listen == (("10.0.0.1", 7946), ("fd00::1", 7946))
    assert config.metrics_port == 9100 and config.address_poll == 0.5


def test_open_datapath_fails_clearly_without_the_rust_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, datapath.DATAPATH_MODULE, None)  # import now raises ImportError
    with pytest.raises(datapath.DatapathUnavailable, match="not available in this build"):
        datapath.open_datapath(datapath.DatapathConfig())


def test_agents_spread_over_the_registry_replicas_stably() -> None:
    from hostagent.agent.agent import spread

    replicas = ["r1:7070", "r2:7070", "r3:7070"]
    firsts = {spread(replicas, f"host-{n}")[0] for n in range(30)}
    assert firsts == set(replicas)  # 30 agents start on every replica
    assert spread(replicas, "host-7") == spread(replicas, "host-7")  # the same one each time
    assert sorted(spread(replicas, "host-7")) == sorted(replicas)  # and keep all for failover
    assert spread([], "host-7") == []
