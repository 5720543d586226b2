"""The `serval` command: one entry point for every component and tool.

    serval up                      the complete local cluster (foreground)
    serval testbed up|down|status  the multi-host test bed in network namespaces (root)
    serval registry ...            run a registry replica
    serval agent ...               run the host agent
    serval dns ...                 serve the service zone over DNS
    serval dashboard ...           serve the ops dashboard (web, REST API)
    serval register|deregister|drain|weight|resolve|list|watch|status ...

`serval <command> --help` documents each command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dashboard import cli as dashboard_cli
from deploy import local_cluster, testbed_cli
from hostagent.agent import cli as agent_cli
from registry import __version__
from registry import cli as registry_cli
from resolver.dns_bridge import cli as dns_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serval", description="Serval service registry and access layer")
    parser.add_argument("--version", action="version", version=f"serval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local_cluster.add_command(sub)
    testbed_cli.add_command(sub)
    registry_cli.add_commands(sub)
    agent_cli.add_command(sub)
    dns_cli.add_command(sub)
    dashboard_cli.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "sync_handler"):
        return int(args.sync_handler(args))
    return registry_cli.run(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
