"""Framing of the agent's local API (Unix stream socket), shared by the agent and `hostagent.client`.

Messages are JSON objects, one per line (UTF-8, at most `MAX_LINE` bytes).
A message that carries a file descriptor says so with ``"fds": 1`` and is
sent with the fd as SCM_RIGHTS ancillary data in the same `sendmsg` call.
The kernel delivers ancillary data no later than the first byte of its
message, so a receiver keeps received fds in a FIFO and pops one for each
complete line that announces one: fds and lines stay paired even when reads
split or merge messages.

Why not asyncio streams: they cannot send or receive ancillary data. Both
sides use non-blocking sockets with `loop.add_reader`/`add_writer` waits
(`AsyncFdSocket`) or plain blocking calls (the blocking client).
"""

from __future__ import annotations

import array
import asyncio
import functools
import json
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

MAX_LINE = 64 * 1024
RECV_SIZE = 64 * 1024
MAX_FDS_PER_READ = 16
DEFAULT_SOCKET = "/run/serval/agent.sock"
SOCKET_ENV = "SERVAL_AGENT_SOCKET"

Message = dict[str, Any]
T = TypeVar("T")


class ProtocolError(ValueError):
    """A line that is not a JSON object, or a line longer than `MAX_LINE`."""


def encode(message: Message) -> bytes:
    """One message as a JSON line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """Parse one line (without the newline); `ProtocolError` unless it is a JSON object."""
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"bad JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError("a message must be a JSON object")
    return value


class Framer:
    """Reassembles lines and pairs them with received fds. Pure; owns the fds it holds.

    `feed` takes what one read returned; `next_line` returns one complete
    line or None. `pop_fd` returns the oldest unclaimed fd (None if none).
    `close` closes every fd still held.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int]) -> None:
        self._buf += data
        self._fds.extend(fds)

    def next_line(self) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                self._buf.clear()
                raise ProtocolError(f"line longer than {MAX_LINE} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if len(line) > MAX_LINE:
            raise ProtocolError(f"line longer than {MAX_LINE} bytes")
        return line

    def pop_fd(self) -> int | None:
        return self._fds.popleft() if self._fds else None

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())


def recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One `recvmsg` with room for fds; closes the fds of a truncated control message."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(MAX_FDS_PER_READ * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    received = list(fds)
    if flags & socket.MSG_CTRUNC:
        for fd in received:
            os.close(fd)
        raise ProtocolError("too many file descriptors in one read")
    return data, received


class AsyncFdSocket:
    """A non-blocking Unix stream socket with fd passing, for one event loop.

    `send(message, fd)` writes the whole line (the fd, if any, goes with its
    first byte; the caller keeps ownership of `fd`); `receive()` returns the
    next message and its fd (None when it announces none); EOF raises
    `EOFError`. One sender and one receiver at a time.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.framer = Framer()
        self._send_lock = asyncio.Lock()

    async def send(self, message: Message, fd: int | None = None) -> None:
        data = encode({**message, "fds": 1} if fd is not None else message)
        async with self._send_lock:
            if fd is not None:
                sent = await self._io(
                    lambda: self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                    ),
                    write=True,
                )
                data = data[sent:]
            while data:
                sent = await self._io(functools.partial(self.sock.send, data), write=True)
                data = data[sent:]

    async def receive(self) -> tuple[Message, int | None]:
        while True:
            line = self.framer.next_line()
            if line is not None:
                message = decode(line)
                return message, self.framer.pop_fd() if message.get("fds") else None
            data, fds = await self._io(lambda: recv_with_fds(self.sock), write=False)
            if not data and not fds:
                raise EOFError("the peer closed the connection")
            self.framer.feed(data, fds)

    def close(self) -> None:
        self.framer.close()
        self.sock.close()

    async def _io(self, call: Callable[[], T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return call()
            except (BlockingIOError, InterruptedError):
                pass
            ready: asyncio.Future[None] = loop.create_future()
            fileno = self.sock.fileno()
            if write:
                loop.add_writer(fileno, _set_done, ready)
            else:
                loop.add_reader(fileno, _set_done, ready)
            try:
                await ready
            finally:
                (loop.remove_writer if write else loop.remove_reader)(fileno)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
