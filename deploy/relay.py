"""A byte relay between a stream listener and a stream target: ``python -m deploy.relay``.

    unix-to-tcp --listen PATH --connect HOST:PORT   serve Unix socket PATH; each connection
                                                    is piped to a new TCP connection to HOST:PORT
    tcp-to-unix --listen HOST:PORT --connect PATH   serve TCP HOST:PORT; each connection is
                                                    piped to a new connection to Unix socket PATH
    --owner-pid PID                                 exit once process PID is gone

``serval testbed up --expose-dashboard 127.0.0.1:PORT`` runs one of each: `unix-to-tcp`
inside the dashboard's namespace (it reaches the dashboard over the bed's network) and
`tcp-to-unix` in the root namespace on loopback. They meet at a Unix socket in the
bed's state folder, so the root namespace never gets an address on, nor sends a packet
to, the bed's network. Each connection is independent; when either side closes, both do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from deploy.netcheck import parse_target

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or error, then half-close the other side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def _relay(opener: Opener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await opener()
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


async def serve(mode: str, listen: str, target: str, owner_pid: int) -> None:
    """Relay until the owner (if any) is gone; see the module docstring for the modes."""
    if mode == "unix-to-tcp":
        host, port = parse_target(target)

        def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return asyncio.open_connection(host, port)

        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        server = await asyncio.start_unix_server(lambda r, w: _relay(opener, r, w), listen)
    else:

        def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return asyncio.open_unix_connection(target)

        host, port = parse_target(listen)
        server = await asyncio.start_server(lambda r, w: _relay(opener, r, w), host, port)
    print(f"relay: {mode} {listen} -> {target}", flush=True)
    async with server:
        while True:
            await asyncio.sleep(1.0)
            if owner_pid and gone(owner_pid):
                return


def gone(pid: int) -> bool:
    """True once no process `pid` exists."""
    return not os.path.exists(f"/proc/{pid}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.relay", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["unix-to-tcp", "tcp-to-unix"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--connect", required=True)
    parser.add_argument("--owner-pid", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mode, args.listen, args.connect, args.owner_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
