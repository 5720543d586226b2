"""The agent's domain operations behind the local API, and the data-path event handler.

`Control` owns the listeners, the connects in flight and the host identity;
the local API (`local_api.py`) only parses requests and calls it. Order of
effects:

- `listen(name, deliver)`: validate → allocate the listener id →
  `datapath.listen(id)` → register the instance on the agent's lease → ask
  for a table pass and wait for it (so the DEMUX rule is in force when the
  app hears "ok"). A registry failure undoes the first two steps.
- `unlisten(id)`: forget the listener → `datapath.unlisten(id)` → table pass
  → deregister (a registry failure is logged: the lease still bounds the
  record's life).
- `connect(name, timeout)`: validate → `socketpair()` → hand one end to
  `connect_socket` → the app's end, or `ConnectFailure` with the contract's message.
- `connect_socket(name, sock, timeout, greeting)`: any connected stream socket
  (a socketpair end, or a legacy client's accepted TCP socket): validate →
  `datapath.connect` (which owns it from then on; on a refusing call or an
  invalid name the socket is closed here) → wait for Connected/ConnectFailed
  (the data path's deadline plus `CONNECT_GRACE`).
- `expose(name, endpoint)`: `listen` with the data path relaying each accepted
  flow to a local TCP server (the translator for unmodified servers).
- Datagram flows: `listen(..., datagram=True)` opens a datagram listener
  (registered with ``serval.proto=dgram``; accepted fds are seqpacket sockets);
  `connect(..., datagram=True)` uses a ``SOCK_SEQPACKET`` socketpair and a
  datagram connect; the order of effects is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable

from hostagent.agent.datapath import DatapathPort
from hostagent.agent.events import Accepted, Connected, ConnectFailed, Delayed, Endpoint, Overflow
from hostagent.agent.listeners import Deliver, HostIdentity, Listeners, listener_instance
from hostagent.agent.reconcile import Reconciler
from hostagent.agent.session import Registrar
from registry import names

log = logging.getLogger(__name__)

CONNECT_GRACE = 1.0
MAX_CONNECT_TIMEOUT = 300.0


class ConnectFailure(Exception):
    """A connect that failed; the message names the service and what was tried.

    `event` is the data path's answer when there was one. `settled` is True when
    no flow can exist (an answer, an invalid name, a refusing call) and False
    when the data path did not answer in time (the flow's fate is unknown).
    """

    def __init__(self, message: str, event: ConnectFailed | None = None, *, settled: bool = True) -> None:
        super().__init__(message)
        self.event = event
        self.settled = settled


def failure_message(name: str, event: ConnectFailed) -> str:
    """``name: reason; tried ip:port (why), ...`` (the contract's error text)."""
    tried = [f"{target} ({why})" for target, why in event.tried]
    return f"{name}: {event.reason}" + (f"; tried {', '.join(tried)}" if tried else "")


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Control:
    """Listeners, connects in flight and data-path events of one agent (event-loop thread only)."""

    def __init__(
        self,
        datapath: DatapathPort,
        session: Registrar,
        reconciler: Reconciler,
        host: HostIdentity,
        known: Callable[[bytes], bool],
    ) -> None:
        self.datapath = datapath
        self.session = session
        self.reconciler = reconciler
        self.host = host
        self.known = known  # service ID bytes -> has a SAL-capable instance in the registry
        self.listeners = Listeners()
        self._pending: dict[int, asyncio.Future[Connected | ConnectFailed]] = {}
        self._request_ids = itertools.count(1)

    # ---- local API operations --------------------------------------------------

    async def listen(
        self, name: str, deliver: Deliver, expose: Endpoint | None = None, datagram: bool = False
    ) -> tuple[int, str]:
        """Open a listener for `name`; return ``(listener id, service id hex)``. `InvalidName`.

        With `expose`, the data path connects each accepted flow to that local TCP
        server instead of emitting `Accepted` (`deliver` then only sees strays).
        `datagram`: a datagram listener (`ValueError` with `expose`).
        """
        service = names.normalize(name)
        if datagram and expose is not None:
            raise ValueError("a datagram listener cannot expose a TCP server")
        listener = self.listeners.open(service, deliver, expose, datagram)
        try:
            self._listen_datapath(listener.listener_id)
            await self.session.put(listener_instance(self.host, listener, datagram))
        except BaseException:
            self.listeners.close(listener.listener_id)
            with contextlib.suppress(Exception):
                self.datapath.unlisten(listener.listener_id)
            raise
        await self.reconciler.settled()
        return listener.listener_id, names.service_id_hex(service)

    def _listen_datapath(self, listener_id: int) -> None:
        if self.listeners.is_datagram(listener_id):
            self.datapath.listen(listener_id, None, datagram=True)
        else:
            self.datapath.listen(listener_id, self.listeners.exposed(listener_id))

    async def unlisten(self, listener_id: int) -> None:
        listener = self.listeners.close(listener_id)
        if listener is None:
            return
        self.datapath.unlisten(listener_id)
        self.reconciler.request()
        instance = listener_instance(self.host, listener)
        try:
            await self.session.remove(instance.service, instance.instance_id)
        except Exception as e:
            log.warning("deregistering %s failed (its lease still bounds it): %s", instance.key, e)

    async def expose(self, name: str, endpoint: Endpoint) -> int:
        """Register `name` for the unmodified TCP server at `endpoint`; the listener id."""
        listener_id, _ = await self.listen(name, _refuse_stray, expose=endpoint)
        return listener_id

    async def connect(
        self, name: str, timeout: float, datagram: bool = False
    ) -> tuple[socket.socket, Connected]:
        """Set up a flow to `name`; the app's end of the stream (of a ``SOCK_SEQPACKET``
        pair for a datagram flow). `InvalidName`, `ConnectFailure`."""
        names.service_id(name)  # an invalid name raises before any socket exists
        kind = socket.SOCK_SEQPACKET if datagram else socket.SOCK_STREAM
        app_end, dp_end = socket.socketpair(socket.AF_UNIX, kind)
        try:
            connected = await self.connect_socket(name, dp_end, timeout, datagram=datagram)
        except BaseException:
            app_end.close()
            raise
        return app_end, connected

    async def connect_socket(
        self, name: str, sock: socket.socket, timeout: float, greeting: bytes = b"", datagram: bool = False
    ) -> Connected:
        """Relay the connected stream socket `sock` over a new flow to `name`.

        Always takes `sock`: the data path owns it once its `connect` returns, and
        it is closed here if the name is invalid or the call refuses. `greeting`
        is written to `sock` by the data path once the flow is established, before
        any byte from the peer. `datagram`: a datagram flow (`sock` is a
        ``SOCK_SEQPACKET`` socket, no greeting). `InvalidName`, `ConnectFailure`.
        """
        try:
            sid = names.service_id(name)
        except BaseException:
            sock.close()
            raise
        service = names.normalize(name)
        timeout = min(max(timeout, 0.001), MAX_CONNECT_TIMEOUT)
        request_id = next(self._request_ids)
        fut: asyncio.Future[Connected | ConnectFailed] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            fd = sock.detach()
            try:
                if datagram:
                    self.datapath.connect(request_id, sid.raw, fd, int(timeout * 1000), datagram=True)
                else:
                    self.datapath.connect(request_id, sid.raw, fd, int(timeout * 1000), greeting)
            except Exception as e:
                os.close(fd)  # not taken: a refusing call does not own the fd
                raise ConnectFailure(f"{service}: {e}") from e
            try:
                result = await asyncio.wait_for(fut, timeout + CONNECT_GRACE)
            except TimeoutError:
                raise ConnectFailure(f"{service}: no answer from the data path", settled=False) from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(result, ConnectFailed):
            raise ConnectFailure(failure_message(service, result), result)
        return result

    async def set_host(self, host: HostIdentity) -> None:
        """The host identity changed (addresses): re-register every listener with it."""
        self.host = host
        for listener in list(self.listeners):
            datagram = self.listeners.is_datagram(listener.listener_id)
            await self.session.put(listener_instance(host, listener, datagram))

    # ---- data-path events (EventHandler) ---------------------------------------------

    def on_connect_result(self, event: Connected | ConnectFailed) -> None:
        fut = self._pending.get(event.request_id)
        if fut is not None and not fut.done():
            fut.set_result(event)

    def on_accepted(self, event: Accepted) -> None:
        deliver = self.listeners.deliverer(event.listener_id)
        if deliver is None:
            os.close(event.app_fd)  # the listener closed meanwhile: the flow is refused
            return
        deliver(event)

    def on_delayed(self, event: Delayed) -> None:
        """Hook for DELAY rules: release when the mirror now has SAL-capable instances of the ID."""
        self.datapath.settle_delay(event.request_id, self.known(event.service_id))

    def on_overflow(self, event: Overflow) -> None:
        self.reconciler.resync()
        for listener in self.listeners:
            self._listen_datapath(listener.listener_id)


def _refuse_stray(event: Accepted) -> None:
    """An exposed listener gets no `Accepted` events by contract; close any that arrives."""
    os.close(event.app_fd)
