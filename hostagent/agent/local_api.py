"""The local API: a Unix stream socket speaking JSON lines with fds (`hostagent.localproto`).

Requests (`docs/agent-datapath.md`, "Local API"):
- ``{"op": "connect", "name": N, "timeout": S}`` → ``{"ok": true, "flow", "target", "fds": 1}``
  with the stream fd, or ``{"ok": false, "error"}``.
- ``{"op": "listen", "name": N}`` → ``{"ok": true, "service_id", "listener"}``; then
  ``{"event": "accept", "flow", "peer", "fds": 1}`` with an fd per accepted flow.
  One listener per connection; closing the connection closes the listener.
- ``"datagram": true`` on either: a datagram flow / listener; the fds are
  ``SOCK_SEQPACKET`` sockets (one message per datagram, EOF when the peer closes).
- Anything malformed → ``{"ok": false, "error"}``; the connection stays usable.

Handlers are thin: parse, call `Control`, answer. Accepted flows queue per
listener connection (at most `ACCEPT_BACKLOG`; beyond that a flow's fd is
closed, i.e. refused) and one sender task writes them in order.

Socket file: bound under a temporary name in the same directory, given mode
0660 (and the `group`, if any), then renamed over `path`, so the path never
exists with looser permissions. An existing file at `path` is replaced only
when it is a socket nobody answers on (stale); a live agent there, or a
non-socket file, is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

from hostagent.agent.control import ConnectFailure, Control, format_endpoint
from hostagent.agent.events import Accepted
from hostagent.localproto import AsyncFdSocket, Message, ProtocolError
from registry.names import InvalidName

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
ACCEPT_BACKLOG = 1024
DEFAULT_CONNECT_TIMEOUT = 5.0


class SocketInUse(RuntimeError):
    """Another process answers on the socket path, or the path is not a socket."""


def bind_unix_socket(path: Path, group: str | None = None) -> socket.socket:
    """A listening Unix socket at `path` with mode 0660 (see the module docstring)."""
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        if group:
            shutil.chown(tmp, group=group)
        os.rename(tmp, path)
        sock.listen(128)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUse(f"an agent is already serving {path}")


class LocalApi:
    """Serves `control` on `path` until `close()`."""

    def __init__(self, control: Control, path: Path, group: str | None = None) -> None:
        self.control = control
        self.path = path
        self.group = group
        self.connections = 0
        self._sock: socket.socket | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._conns: set[AsyncFdSocket] = set()

    def open(self) -> None:
        self._sock = bind_unix_socket(self.path, self.group)

    async def serve(self) -> None:
        """Accept connections until cancelled; each runs in its own task.

        Accepting happens in a reader callback (not `loop.sock_accept`), so a
        cancellation can never drop a connection that was already accepted.
        """
        assert self._sock is not None, "open() first"
        loop = asyncio.get_running_loop()
        listening = self._sock
        loop.add_reader(listening.fileno(), self._accept_ready, listening)
        try:
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(listening.fileno())

    def _accept_ready(self, listening: socket.socket) -> None:
        while True:
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accepting on %s failed: %s", self.path, e)
                return
            conn = AsyncFdSocket(sock)
            self._conns.add(conn)
            task = asyncio.create_task(self._serve_client(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def close(self) -> None:
        """Stop serving: close the socket, end every connection (closing its listener)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for conn in self._conns:  # connections whose task was cancelled before it ran
            conn.close()
        self._conns.clear()

    async def _serve_client(self, conn: AsyncFdSocket) -> None:
        self.connections += 1
        session = _ClientSession(self.control, conn)
        try:
            await session.run()
        except (EOFError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            self._conns.discard(conn)
            await session.close()


class _ClientSession:
    """One app connection: its requests, and (after `listen`) its accepted flows."""

    def __init__(self, control: Control, conn: AsyncFdSocket) -> None:
        self.control = control
        self.conn = conn
        self.listener_id: int | None = None
        self.accepted: asyncio.Queue[Accepted] = asyncio.Queue()
        self.sender: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                message, fd = await self.conn.receive()
            except ProtocolError as e:
                await self.conn.send({"ok": False, "error": str(e)})
                continue
            if fd is not None:
                os.close(fd)  # apps send no fds
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        op, name, datagram = message.get("op"), message.get("name"), message.get("datagram", False)
        if not isinstance(name, str):
            return await self.conn.send({"ok": False, "error": "'name' must be a string"})
        if not isinstance(datagram, bool):
            return await self.conn.send({"ok": False, "error": "'datagram' must be a boolean"})
        try:
            if op == "connect":
                await self._connect(name, message.get("timeout", DEFAULT_CONNECT_TIMEOUT), datagram)
            elif op == "listen":
                await self._listen(name, datagram)
            else:
                await self.conn.send({"ok": False, "error": f"unknown op {op!r}"})
        except (InvalidName, ConnectFailure) as e:
            await self.conn.send({"ok": False, "error": str(e)})

    async def _connect(self, name: str, timeout: Any, datagram: bool) -> None:
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            return await self.conn.send({"ok": False, "error": "'timeout' must be a positive number"})
        app_end, connected = await self.control.connect(name, float(timeout), datagram=datagram)
        with app_end:
            reply = {"ok": True, "flow": str(connected.flow_id), "target": format_endpoint(connected.target)}
            await self.conn.send(reply, app_end.fileno())

    async def _listen(self, name: str, datagram: bool) -> None:
        if self.listener_id is not None:
            return await self.conn.send({"ok": False, "error": "this connection already listens"})
        try:
            lid, sid = await self.control.listen(name, self._deliver, datagram=datagram)
        except InvalidName:
            raise
        except Exception as e:
            log.warning("listen(%s) failed: %s", name, e)
            return await self.conn.send({"ok": False, "error": f"{name}: registration failed: {e}"})
        self.listener_id = lid
        await self.conn.send({"ok": True, "service_id": sid, "listener": lid})
        self.sender = asyncio.create_task(self._send_accepted())  # accepts only after the "ok"

    def _deliver(self, event: Accepted) -> None:
        if self.accepted.qsize() >= ACCEPT_BACKLOG:
            os.close(event.app_fd)
            return
        self.accepted.put_nowait(event)

    async def _send_accepted(self) -> None:
        while True:
            event = await self.accepted.get()
            try:
                msg = {"event": "accept", "flow": str(event.flow_id), "peer": format_endpoint(event.peer)}
                await self.conn.send(msg, event.app_fd)
            finally:
                os.close(event.app_fd)

    async def close(self) -> None:
        """End the session: the synchronous part first (a second cancel cannot skip it)."""
        if self.sender is not None:
            self.sender.cancel()  # its `finally` closes the fd it was sending
        while not self.accepted.empty():
            os.close(self.accepted.get_nowait().app_fd)
        self.conn.close()
        try:
            if self.listener_id is not None:  # unlisten's synchronous part runs before its first await
                await self.control.unlisten(self.listener_id)
        finally:
            if self.sender is not None:
                await asyncio.gather(self.sender, return_exceptions=True)
