"""Which discovery back-ends run beside the registry, shared by `serval agent` and `serval dns`.

`DiscoveryConfig` says which of the static, LAN and DNS back-ends run and the
precedence of every source (the registry's included); `extra_backends` builds
them; `add_discovery_arguments` / `discovery_from_args` are their command-line
options (the same in both commands). No I/O here: the back-ends start when run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from resolver.backends import lan
from resolver.backends.lan import DEFAULT_GROUP, DEFAULT_PORT, LanBackend
from resolver.backends.static import DEFAULT_INTERVAL, StaticBackend
from resolver.model import TIERS_PER_SOURCE, Backend

DEFAULT_PRECEDENCE = {"registry": 0, "static": 1, "dns": 2, "lan": 3}


@dataclass(frozen=True)
class DiscoveryConfig:
    """Which back-ends run beside the registry; all off by default. `dns_names` holds
    ``(name, port or None)`` (None: SRV)."""

    static_file: Path | None = None
    static_interval: float = DEFAULT_INTERVAL
    lan: bool = False
    lan_group: str = DEFAULT_GROUP
    lan_port: int = DEFAULT_PORT
    lan_interface: str = "0.0.0.0"
    dns_names: tuple[tuple[str, int | None], ...] = ()
    dns_servers: tuple[str, ...] = ()
    precedence: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PRECEDENCE))

    @property
    def enabled(self) -> bool:
        return self.static_file is not None or self.lan or bool(self.dns_names)

    @property
    def registry_tier_offset(self) -> int:
        return self.precedence.get("registry", 0) * TIERS_PER_SOURCE


def extra_backends(config: DiscoveryConfig) -> list[Backend]:
    """The configured back-ends beside the registry (static, LAN, DNS), in that order."""
    backends: list[Backend] = []
    if config.static_file is not None:
        backends.append(StaticBackend(config.static_file, interval=config.static_interval))
    if config.lan:
        backends.append(
            LanBackend(group=config.lan_group, port=config.lan_port, interface=config.lan_interface)
        )
    if config.dns_names:
        from resolver.backends.dns import DnsBackend, DnsName

        dns_names = [DnsName(name, port) for name, port in config.dns_names]
        backends.append(DnsBackend(dns_names, list(config.dns_servers)))
    return backends


def parse_dns_name(text: str) -> tuple[str, int | None]:
    """``NAME`` (SRV) or ``NAME=PORT`` (A/AAAA with that port); `argparse.ArgumentTypeError` otherwise."""
    name, sep, port = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME[=PORT]")
    if not sep:
        return name, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1..65535")
    return name, int(port)


def parse_precedence(text: str) -> dict[str, int]:
    """``registry=0,static=1,...`` over the defaults; `argparse.ArgumentTypeError` otherwise."""
    out = dict(DEFAULT_PRECEDENCE)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, rank = part.partition("=")
        if not sep or name not in DEFAULT_PRECEDENCE or not rank.isdigit() or int(rank) > 15:
            known = ", ".join(DEFAULT_PRECEDENCE)
            raise argparse.ArgumentTypeError(f"{part!r} is not SOURCE=0..15 (sources: {known})")
        out[name] = int(rank)
    return out


def add_discovery_arguments(extra: argparse._ArgumentGroup) -> None:
    """The options of the discovery back-ends beside the registry (`serval agent`, `serval dns`)."""
    extra.add_argument("--static", type=Path, default=None, metavar="FILE", help="services of a TOML file")
    extra.add_argument("--static-interval", type=float, default=2.0, help="seconds between checks of FILE")
    extra.add_argument("--lan", action="store_true", help="hear LAN multicast announcements")
    extra.add_argument("--lan-group", default=lan.DEFAULT_GROUP, help="(default %(default)s)")
    extra.add_argument("--lan-port", type=int, default=lan.DEFAULT_PORT, help="(default %(default)s)")
    extra.add_argument("--lan-interface", default="0.0.0.0", help="an address of the LAN interface")
    extra.add_argument(
        "--dns-name",
        type=parse_dns_name,
        action="append",
        default=[],
        metavar="NAME[=PORT]",
        help="follow NAME in DNS: SRV, or A/AAAA with PORT (repeatable; needs --dns-server)",
    )
    extra.add_argument(
        "--dns-server", action="append", default=[], metavar="IP[:PORT]", help="nameserver (repeatable)"
    )
    extra.add_argument(
        "--precedence",
        type=parse_precedence,
        default=dict(DEFAULT_PRECEDENCE),
        metavar="SOURCE=N,...",
        help="0 = preferred (default registry=0,static=1,dns=2,lan=3)",
    )


def discovery_from_args(args: argparse.Namespace) -> DiscoveryConfig:
    """The `DiscoveryConfig` of `add_discovery_arguments`' options."""
    return DiscoveryConfig(
        static_file=args.static,
        static_interval=args.static_interval,
        lan=args.lan,
        lan_group=args.lan_group,
        lan_port=args.lan_port,
        lan_interface=args.lan_interface,
        dns_names=tuple(args.dns_name),
        dns_servers=tuple(args.dns_server),
        precedence=args.precedence,
    )
