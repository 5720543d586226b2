"""`python -m resolver.lan_tool`: announce services on, or listen to, the LAN back-end's group.

For operators debugging an ad-hoc network, and for the end-to-end tests:

    python -m resolver.lan_tool announce --host-id a --service web.lan:8080 [--address IP]
    python -m resolver.lan_tool listen [--json]

`announce` runs a `LanAnnouncer` until SIGTERM/SIGINT (then sends a `bye`, unless
`--no-bye`); `listen` runs a `LanBackend` and prints every new snapshot, one line each
(JSON with `--json`: {"revision", "services": {name: [[instance_id, [addresses], port]]}}).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence

from resolver.backends import lan
from resolver.model import Endpoint


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resolver.lan_tool", description=__doc__.split("\n")[0])
    p.add_argument("--group", default=lan.DEFAULT_GROUP)
    p.add_argument("--port", type=int, default=lan.DEFAULT_PORT)
    p.add_argument("--interface", default="0.0.0.0", help="an address of the interface to use")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("announce")
    a.add_argument("--host-id", required=True)
    a.add_argument("--service", action="append", default=[], metavar="NAME:PORT")
    a.add_argument("--address", action="append", default=[], help="default: the datagrams' source")
    a.add_argument("--interval", type=float, default=lan.DEFAULT_INTERVAL)
    a.add_argument("--ttl", type=int, default=lan.DEFAULT_TTL)
    a.add_argument("--no-bye", action="store_true", help="stop silently (the others expire us)")
    listen = sub.add_parser("listen")
    listen.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def endpoints(args: argparse.Namespace) -> list[Endpoint]:
    out = []
    for spec in args.service:
        name, _, port = spec.rpartition(":")
        out.append(Endpoint(name, f"{args.host_id}-{name}", tuple(args.address), int(port)))
    return out


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    where = {"group": args.group, "port": args.port, "interface": args.interface}
    if args.command == "announce":
        announcer = lan.LanAnnouncer(
            args.host_id, endpoints(args), interval=args.interval, ttl=args.ttl, bye=not args.no_bye, **where
        )
        await announcer.run()
        return
    backend = lan.LanBackend(**where)
    backend.subscribe(lambda: print_snapshot(backend, args.json))
    await backend.run()


def print_snapshot(backend: lan.LanBackend, as_json: bool) -> None:
    snap = backend.snapshot()
    if as_json:
        services = {
            s: [[e.instance_id, list(e.addresses), e.port] for e in es] for s, es in snap.services.items()
        }
        print(json.dumps({"revision": snap.revision, "services": services}), flush=True)
    else:
        print(f"revision {snap.revision}: {dict(snap.services)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
