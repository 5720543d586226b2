"""The application library: connect to and listen on Serval names through the local agent.

    from hostagent import client
    sock = client.connect("payments.prod", timeout=5)        # a connected stream socket
    with client.listen("payments.prod") as listener:
        conn, peer = listener.accept()

    reader, writer = await client.open_connection("payments.prod")
    server = await client.start_server("payments.prod", handle)   # handle(reader, writer)

    dgram = client.connect("metrics.prod", datagram=True)     # a `DatagramSocket`
    dgram.send(b"one message"); reply = dgram.recv(timeout=1)
    with client.listen("metrics.prod", datagram=True) as listener:   # a `DatagramListener`
        flow, peer = listener.accept()                            # one per remote flow
    flow = await client.open_datagram("metrics.prod")            # `AsyncDatagramSocket`

Datagram flows have UDP semantics (message boundaries, best effort: no
retransmission, no ordering, loss when a reader is slow) but are SAL flows:
set up by name, demultiplexed by flow ID, moved by RSYN when an address
changes, ended by FIN/RST or the keep-alive. A message is at most
`MAX_MESSAGE` bytes; zero-length messages are not carried (`ValueError`).

The agent's socket is the `agent_socket` argument, else `$SERVAL_AGENT_SOCKET`,
else ``/run/serval/agent.sock``. Streams returned are ordinary sockets: the
bytes go through the agent's data path, never through this process's agent
connection. A `Listener` lives as long as its agent connection: closing it
(or exiting) closes the listener and deregisters the name.

Errors are `ServalError`s: `AgentUnavailable` (no agent answers on the
socket, or it hung up), `ConnectError` (the name could not be reached; the
message names the service and the targets tried), `ListenError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, overload

from hostagent.localproto import (
    DEFAULT_SOCKET,
    SOCKET_ENV,
    AsyncFdSocket,
    Framer,
    Message,
    ProtocolError,
    decode,
    encode,
    recv_with_fds,
)

AGENT_REPLY_GRACE = 2.0
MAX_MESSAGE = 65467  # bytes; the largest datagram-flow message (docs/agent-datapath.md)


class ServalError(Exception):
    """Base class of the library's errors."""


class AgentUnavailable(ServalError):
    """The local agent cannot be reached (or closed the connection)."""


class ConnectError(ServalError):
    """Connecting to `service` failed; `str()` is the agent's explanation."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(reason if reason.startswith(service) else f"{service}: {reason}")
        self.service = service
        self.reason = reason


class ListenError(ServalError):
    """Listening on `service` failed."""


def agent_socket_path(agent_socket: str | os.PathLike[str] | None = None) -> str:
    """The agent socket to use (argument, then ``$SERVAL_AGENT_SOCKET``, then the default)."""
    return os.fspath(agent_socket) if agent_socket else os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class _Channel:
    """A blocking connection to the agent (one request/response at a time, plus events)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.framer = Framer()
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise AgentUnavailable(f"no Serval agent at {path}: {e}") from e

    def send(self, message: Message) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as e:
            raise AgentUnavailable(f"the agent connection failed: {e}") from e

    def receive(self) -> tuple[Message, int | None]:
        while (line := self.framer.next_line()) is None:
            try:
                data, fds = recv_with_fds(self.sock)
            except (OSError, ProtocolError) as e:
                raise AgentUnavailable(f"the agent connection failed: {e}") from e
            if not data and not fds:
                raise AgentUnavailable("the agent closed the connection")
            self.framer.feed(data, fds)
        message = decode(line)
        return message, self.framer.pop_fd() if message.get("fds") else None

    def close(self) -> None:
        self.framer.close()
        self.sock.close()


def _stream(fd: int | None, what: str) -> socket.socket:
    if fd is None:
        raise AgentUnavailable(f"the agent's {what} reply carried no stream")
    return socket.socket(fileno=fd)


@dataclass(frozen=True)
class Flow:
    """A flow's stream and what the agent said about it: its flow ID (on this host's side)
    and the other end (the target agent for `connect_flow`, the peer agent for `accept_flow`)."""

    sock: socket.socket
    flow_id: int
    peer: str


def _check_message(message: bytes) -> None:
    if not message:
        raise ValueError("zero-length messages are not carried")
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a message is at most {MAX_MESSAGE} bytes, not {len(message)}")


class DatagramSocket:
    """One end of a datagram flow (UDP semantics over a SAL flow); owns `sock`, a
    ``SOCK_SEQPACKET`` socket whose every message is one datagram.

    `send` never blocks for the network: a message goes or is dropped (and counted by
    the agent) like UDP. `recv` returns one whole message, ``b""`` once the peer
    closed its side (or the flow ended)."""

    def __init__(self, sock: socket.socket, flow_id: int = 0, peer: str = "") -> None:
        self.sock = sock
        self.flow_id = flow_id
        self.peer = peer

    def send(self, message: bytes) -> None:
        """Send one message (1..`MAX_MESSAGE` bytes; `ValueError` otherwise)."""
        _check_message(message)
        self.sock.send(message)

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message (`TimeoutError` after `timeout` s; None = wait forever)."""
        self.sock.settimeout(timeout)
        return self.sock.recv(MAX_MESSAGE + 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close our side: the peer's `recv` returns ``b""`` (FIN)."""
        self.sock.close()

    def __enter__(self) -> DatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@overload
def connect(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None, datagram: Literal[False] = False
) -> socket.socket: ...
@overload
def connect(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None, datagram: Literal[True]
) -> DatagramSocket: ...
def connect(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None, datagram: bool = False
) -> socket.socket | DatagramSocket:
    """A stream socket connected to a listener of `name` (blocking, at most about `timeout` s);
    with ``datagram=True`` a `DatagramSocket` of a new datagram flow."""
    flow = connect_flow(name, timeout, agent_socket=agent_socket, datagram=datagram)
    return DatagramSocket(flow.sock, flow.flow_id, flow.peer) if datagram else flow.sock


def connect_flow(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None, datagram: bool = False
) -> Flow:
    """As `connect`, with the flow's ID and target (`sock` is a seqpacket socket for a datagram flow)."""
    channel = _Channel(agent_socket_path(agent_socket), timeout + AGENT_REPLY_GRACE)
    request: Message = {"op": "connect", "name": name, "timeout": timeout}
    if datagram:
        request["datagram"] = True
    try:
        channel.send(request)
        reply, fd = channel.receive()
    finally:
        channel.close()
    if not reply.get("ok"):
        raise ConnectError(name, str(reply.get("error", "refused")))
    return Flow(_stream(fd, "connect"), int(reply.get("flow", 0)), str(reply.get("target", "")))


class Listener:
    """A listener on a Serval name; `accept()` returns ``(socket, "ip:port")`` per remote flow."""

    def __init__(self, name: str, channel: _Channel, reply: Message) -> None:
        self.name = name
        self.service_id = str(reply.get("service_id", ""))
        self._channel = channel

    def fileno(self) -> int:
        """Readable when a flow is waiting (for `select`)."""
        return self._channel.sock.fileno()

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, str]:
        """Wait for the next flow (`TimeoutError` after `timeout` s; None = forever)."""
        flow = self.accept_flow(timeout)
        return flow.sock, flow.peer

    def accept_flow(self, timeout: float | None = None) -> Flow:
        """As `accept`, with the flow's ID."""
        self._channel.sock.settimeout(timeout)
        try:
            event, fd = self._channel.receive()
        except AgentUnavailable as e:
            if isinstance(e.__cause__, TimeoutError):
                raise TimeoutError(f"no flow for {self.name} within {timeout}s") from None
            raise
        if event.get("event") != "accept":
            if fd is not None:
                os.close(fd)
            raise AgentUnavailable(f"unexpected message from the agent: {event}")
        return Flow(_stream(fd, "accept"), int(event.get("flow", 0)), str(event.get("peer", "")))

    def close(self) -> None:
        """Close the listener (the agent deregisters the name)."""
        self._channel.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DatagramListener:
    """A datagram listener on a Serval name; `accept()` returns ``(DatagramSocket, "ip:port")``
    per remote datagram flow."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.name = listener.name
        self.service_id = listener.service_id

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self, timeout: float | None = None) -> tuple[DatagramSocket, str]:
        """Wait for the next flow (`TimeoutError` after `timeout` s; None = forever)."""
        flow = self._listener.accept_flow(timeout)
        return DatagramSocket(flow.sock, flow.flow_id, flow.peer), flow.peer

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> DatagramListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@overload
def listen(
    name: str, *, agent_socket: str | None = None, timeout: float = 30.0, datagram: Literal[False] = False
) -> Listener: ...
@overload
def listen(
    name: str, *, agent_socket: str | None = None, timeout: float = 30.0, datagram: Literal[True]
) -> DatagramListener: ...
def listen(
    name: str, *, agent_socket: str | None = None, timeout: float = 30.0, datagram: bool = False
) -> Listener | DatagramListener:
    """Listen on `name` (registered in the registry by the agent until the listener closes);
    ``datagram=True``: a `DatagramListener` (one kind per name)."""
    channel = _Channel(agent_socket_path(agent_socket), timeout)
    request: Message = {"op": "listen", "name": name}
    if datagram:
        request["datagram"] = True
    try:
        channel.send(request)
        reply, _ = channel.receive()
    except BaseException:
        channel.close()
        raise
    if not reply.get("ok"):
        channel.close()
        raise ListenError(f"{name}: {reply.get('error', 'refused')}")
    listener = Listener(name, channel, reply)
    return DatagramListener(listener) if datagram else listener


# ---- asyncio ---------------------------------------------------------------------------------------


async def _async_channel(path: str) -> AsyncFdSocket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except OSError as e:
        sock.close()
        raise AgentUnavailable(f"no Serval agent at {path}: {e}") from e
    return AsyncFdSocket(sock)


async def _request(channel: AsyncFdSocket, message: Message) -> tuple[Message, int | None]:
    try:
        await channel.send(message)
        return await channel.receive()
    except (OSError, EOFError, ProtocolError) as e:
        raise AgentUnavailable(f"the agent connection failed: {e}") from e


async def open_connection(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams connected to a listener of `name` (`kwargs` go to `asyncio.open_connection`)."""
    channel = await _async_channel(agent_socket_path(agent_socket))
    try:
        reply, fd = await asyncio.wait_for(
            _request(channel, {"op": "connect", "name": name, "timeout": timeout}),
            timeout + AGENT_REPLY_GRACE,
        )
    finally:
        channel.close()
    if not reply.get("ok"):
        raise ConnectError(name, str(reply.get("error", "refused")))
    return await asyncio.open_connection(sock=_stream(fd, "connect"), **kwargs)


class AsyncDatagramSocket:
    """`DatagramSocket` for asyncio (the socket is non-blocking; one reader at a time)."""

    def __init__(self, sock: socket.socket, flow_id: int = 0, peer: str = "") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.flow_id = flow_id
        self.peer = peer

    async def send(self, message: bytes) -> None:
        """Send one message (1..`MAX_MESSAGE` bytes; `ValueError` otherwise)."""
        _check_message(message)
        await asyncio.get_running_loop().sock_sendall(self.sock, message)

    async def recv(self) -> bytes:
        """The next message; ``b""`` once the peer closed."""
        return await asyncio.get_running_loop().sock_recv(self.sock, MAX_MESSAGE + 1)

    def close(self) -> None:
        self.sock.close()


async def open_datagram(
    name: str, timeout: float = 5.0, *, agent_socket: str | None = None
) -> AsyncDatagramSocket:
    """A new datagram flow to a datagram listener of `name` (asyncio)."""
    channel = await _async_channel(agent_socket_path(agent_socket))
    request = {"op": "connect", "name": name, "timeout": timeout, "datagram": True}
    try:
        reply, fd = await asyncio.wait_for(_request(channel, request), timeout + AGENT_REPLY_GRACE)
    finally:
        channel.close()
    if not reply.get("ok"):
        if fd is not None:
            os.close(fd)
        raise ConnectError(name, str(reply.get("error", "refused")))
    return AsyncDatagramSocket(
        _stream(fd, "connect"), int(reply.get("flow", 0)), str(reply.get("target", ""))
    )


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class Server:
    """Accepts flows for one name and runs `handler(reader, writer)` for each in its own task."""

    def __init__(self, name: str, channel: AsyncFdSocket, reply: Message, handler: Handler) -> None:
        self.name = name
        self.service_id = str(reply.get("service_id", ""))
        self._channel = channel
        self._handler = handler
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        try:
            while True:
                try:
                    event, fd = await self._channel.receive()
                except (OSError, EOFError, ProtocolError):
                    return
                if event.get("event") != "accept" or fd is None:
                    if fd is not None:
                        os.close(fd)
                    continue
                reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
                task = asyncio.create_task(self._run_handler(reader, writer))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        finally:
            self._channel.close()

    async def _run_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        result = self._handler(reader, writer)
        if result is not None:
            await result

    def close(self) -> None:
        """Stop accepting (the agent closes the listener and deregisters the name)."""
        self._accepting.cancel()  # its `finally` closes the agent connection

    async def wait_closed(self) -> None:
        """Wait until the accept loop and every handler started so far have ended."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        await asyncio.gather(*list(self._handlers), return_exceptions=True)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        await self.wait_closed()


async def start_server(name: str, handler: Handler, *, agent_socket: str | None = None) -> Server:
    """Listen on `name`; like `asyncio.start_server` for a Serval name."""
    channel = await _async_channel(agent_socket_path(agent_socket))
    try:
        reply, _ = await _request(channel, {"op": "listen", "name": name})
    except BaseException:
        channel.close()
        raise
    if not reply.get("ok"):
        channel.close()
        raise ListenError(f"{name}: {reply.get('error', 'refused')}")
    return Server(name, channel, reply, handler)
