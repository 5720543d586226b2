"""Legacy access: Serval's translator for unmodified TCP clients and servers (thin asyncio shell).

- **SOCKS5** (`socks_listen`): each client's handshake is decided by the pure
  `socks5.Handshake`; this shell reads exactly what it asks for (never a byte of
  flow data), writes its replies, and on `Connect` hands the client's TCP socket
  itself to `Control.connect_socket` — the Rust data path relays it from then on.
- **Upstream ports** (`upstreams`): a TCP listener per ``endpoint=name``; each
  accepted connection goes straight to `connect_socket` for that name.
- **Expose** (`exposes`): ``name=endpoint`` registers an unmodified local TCP
  server under the agent's lease (`Control.expose`); the data path connects every
  accepted flow to it. It lives as long as the agent.

SOCKS reply and fd ownership. The data path owns the client socket once its
`connect` returns, and may relay the peer's bytes as soon as the flow is up, so
Python cannot write the success reply afterwards without racing them. Instead:
- success: the 10-byte reply is the connect's `greeting`, which the data path
  writes once the flow is established, before any relayed byte;
- failure: before handing the socket over the shell keeps a `dup()` of it (same
  open socket). The data path closes its fd on `ConnectFailed`; the shell then
  writes the failure reply (SOCKS) or sets SO_LINGER 0 (upstream: the client sees
  a reset) on the dup and closes it — the last reference, so the client sees the
  end. On `Connected` the dup is just closed. If the data path does not answer in
  time, the flow's fate is unknown and the dup is closed without a reply.

Bounds: at most `max_pending` connections in handshake or set-up (beyond that a new
one is closed at once), a handshake must finish within `handshake_timeout`.
Counters (`connections[kind]`, `failures[(kind, reason)]`, kind ``socks`` or
``upstream``, reason ``handshake``, ``connect`` or ``overload``) feed the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass

from hostagent.agent import socks5
from hostagent.agent.control import ConnectFailure, Control
from hostagent.agent.events import Endpoint
from registry.names import InvalidName

log = logging.getLogger(__name__)

SOCKS, UPSTREAM = "socks", "upstream"  # the metrics' `kind` label (metrics.LEGACY_KINDS)


@dataclass(frozen=True)
class LegacyConfig:
    """What to translate (`serval agent --socks-listen/--upstream/--expose`)."""

    socks_listen: Endpoint | None = None
    upstreams: tuple[tuple[Endpoint, str], ...] = ()
    exposes: tuple[tuple[str, Endpoint], ...] = ()
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    max_pending: int = 1024


def bind_tcp(endpoint: Endpoint) -> socket.socket:
    """A non-blocking listening TCP socket on `endpoint` (SO_REUSEADDR); `OSError` if it cannot bind."""
    host, port = endpoint
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _reset(sock: socket.socket) -> None:
    """Close so that the TCP peer sees a reset (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class LegacyAccess:
    """The translator's listeners and exposed servers of one agent (event-loop thread only)."""

    def __init__(self, control: Control, config: LegacyConfig) -> None:
        self.control = control
        self.config = config
        self.connections: Counter[str] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.exposed: list[int] = []
        self._listening: list[tuple[socket.socket, str, str | None]] = []  # (sock, kind, upstream name)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.socks_listen is not None or bool(c.upstreams) or bool(c.exposes)

    def addresses(self) -> list[tuple[str, Endpoint]]:
        """``(kind, bound endpoint)`` of every listener (port 0 resolved)."""
        out = []
        for sock, kind, _ in self._listening:
            address = sock.getsockname()
            out.append((kind, (str(address[0]), int(address[1]))))
        return out

    async def start(self) -> None:
        """Bind every listener (`OSError`), then register the exposed servers (registry errors raise)."""
        cfg = self.config
        if cfg.socks_listen is not None:
            self._listening.append((bind_tcp(cfg.socks_listen), SOCKS, None))
        for endpoint, name in cfg.upstreams:
            self._listening.append((bind_tcp(endpoint), UPSTREAM, name))
        loop = asyncio.get_running_loop()
        for sock, kind, upstream in self._listening:
            loop.add_reader(sock.fileno(), self._accept_ready, sock, kind, upstream)
        for service, (host, port) in cfg.exposes:
            self.exposed.append(await self.control.expose(service, (host, port)))
            log.info("exposing %s at %s:%d", service, host, port)

    async def close(self) -> None:
        """Stop accepting, abandon handshakes and set-ups in progress, withdraw the exposed servers."""
        loop = asyncio.get_running_loop()
        for sock, _, _ in self._listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listening.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self.exposed:
            await self.control.unlisten(self.exposed.pop())

    # ---- accepting -----------------------------------------------------------------

    def _accept_ready(self, listening: socket.socket, kind: str, name: str | None) -> None:
        while True:
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accepting %s connections failed: %s", kind, e)
                return
            self.connections[kind] += 1
            if len(self._tasks) >= self.config.max_pending:
                self.failures[kind, "overload"] += 1
                _reset(sock)
                continue
            sock.setblocking(False)
            coro = self._socks(sock) if name is None else self._relay(UPSTREAM, sock, name)
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- per connection ---------------------------------------------------------------

    async def _socks(self, sock: socket.socket) -> None:
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                action = await self._handshake(sock)
        except (TimeoutError, OSError) as e:
            action = socks5.Refuse(b"", f"handshake: {type(e).__name__}")
        if isinstance(action, socks5.Refuse):
            log.debug("SOCKS client refused: %s", action.why)
            self.failures[SOCKS, "handshake"] += 1
            with contextlib.suppress(OSError):
                sock.send(action.data)
            sock.close()
            return
        await self._relay(SOCKS, sock, action.name)

    async def _handshake(self, sock: socket.socket) -> socks5.Connect | socks5.Refuse:
        """Run the pure handshake over `sock` (exact reads) until it connects or refuses."""
        loop = asyncio.get_running_loop()
        machine = socks5.Handshake()
        while True:
            data = await loop.sock_recv(sock, machine.need())
            if not data:
                return socks5.Refuse(b"", "client closed during the handshake")
            action = machine.feed(data)
            if isinstance(action, socks5.Send):
                await loop.sock_sendall(sock, action.data)
            elif action is not None:
                return action

    async def _relay(self, kind: str, sock: socket.socket, name: str) -> None:
        """Hand `sock` to the data path for a flow to `name`; answer a failure on a kept dup."""
        keep = sock.dup()
        greeting = socks5.SUCCESS_REPLY if kind == SOCKS else b""
        try:
            await self.control.connect_socket(name, sock, self.config.connect_timeout, greeting)
        except (ConnectFailure, InvalidName) as e:
            self.failures[kind, "connect"] += 1
            log.info("%s connection to %r failed: %s", kind, name, e)
            if isinstance(e, ConnectFailure) and not e.settled:
                return  # the flow's fate is unknown: no reply, just let go of the dup
            if kind == SOCKS:
                with contextlib.suppress(OSError):
                    keep.send(socks5.reply(self._failure_code(e)))
            else:
                _reset(keep)
        finally:
            keep.close()

    @staticmethod
    def _failure_code(error: Exception) -> socks5.Reply:
        if isinstance(error, ConnectFailure) and error.event is not None:
            return socks5.failure_reply([why for _, why in error.event.tried])
        if isinstance(error, InvalidName):
            return socks5.Reply.HOST_UNREACHABLE
        return socks5.Reply.GENERAL_FAILURE
