"""The grpclib `Transport` (`rpc.py`): gRPC over h2 in pure Python, for the host agent.

Why: the agent follows the whole registry and must stay small; grpcio costs
~12-16 MB of RSS (its C core's text, threads and arenas) where grpclib and its
h2 stack cost ~2-3 MB. This module must not import grpcio (a test checks that
the agent process never loads it).

Behaviour matches `transport_grpcio`: one connection per transport (a new one
after `RegistryClient.reconnect`), no keepalive pings (grpcio's client
default), `timeout` bounds a unary call including connection set-up, and a
connection attempt gives up after `CONNECT_TIMEOUT` seconds with UNAVAILABLE
(grpcio's minimum connect timeout), also for streams without a deadline.
Errors: the server's status → `RpcError` with that code; refused / lost
connection, stream reset → UNAVAILABLE; deadline → DEADLINE_EXCEEDED; our
own `close()` under a call → `ChannelClosed`.

grpclib has no public way to read a stream's status while our request side
is still open (the server may end a stream while we still send, e.g.
KeepAlive with NOT_FOUND); `_raise_for_status` reads it from the finished
stream (`Stream._maybe_raise`, stable since grpclib 0.3).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from google.protobuf.message import Message
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import Deadline
from h2.exceptions import H2Error

from registry.api.rpc import ChannelClosed, R, RpcError, StatusCode, method_path

CONNECT_TIMEOUT = 20.0

STREAM_WINDOW = 1 << 20
"""HTTP/2 receive window per stream: how much a call the consumer does not read may buffer."""

CONNECTION_WINDOW = (1 << 31) - 1
"""HTTP/2 receive window of the connection: the largest allowed. grpclib returns connection
credit only as a stream's messages are read, so with a smaller one a stream nobody reads
would stall every other call on the connection; grpcio acknowledges connection credit on
receipt. What is buffered stays bounded by `STREAM_WINDOW` per stream."""


def dial(target: str) -> GrpclibTransport:
    """A `rpc.Dial`: the grpclib transport to `target` ("host:port" or "[v6]:port")."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"registry target {target!r} is not host:port")
    return GrpclibTransport(host.removeprefix("[").removesuffix("]"), int(port))


class GrpclibTransport:
    """`rpc.Transport` over one grpclib `Channel` (one HTTP/2 connection, opened on first use)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._channel: Channel | None = None
        self._calls: set[GrpclibCall[Any]] = set()
        self._closed = False

    def _open(self) -> Channel:
        if self._closed:
            raise ChannelClosed()
        if self._channel is None:  # created inside the running loop (grpclib binds it)
            config = Configuration(
                http2_connection_window_size=CONNECTION_WINDOW, http2_stream_window_size=STREAM_WINDOW
            )
            self._channel = Channel(self.host, self.port, config=config)
        return self._channel

    async def _connect(self, deadline: Deadline | None) -> Channel:
        """The channel, connected within `CONNECT_TIMEOUT` (or the call's deadline, if sooner)."""
        channel = self._open()
        limit = CONNECT_TIMEOUT if deadline is None else min(CONNECT_TIMEOUT, deadline.time_remaining())
        try:
            await asyncio.wait_for(channel.__connect__(), limit)
        except TimeoutError:
            if deadline is not None and limit < CONNECT_TIMEOUT:
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while connecting") from None
            raise RpcError(StatusCode.UNAVAILABLE, f"no connection within {CONNECT_TIMEOUT} s") from None
        if self._closed:  # closed while connecting: the connection made meanwhile is ours to close
            channel.close()
            raise ChannelClosed()
        return channel

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate grpclib's and the socket's errors into `RpcError` / `ChannelClosed`."""
        try:
            yield
        except RpcError:
            raise
        except GRPCError as e:
            raise RpcError(StatusCode.of(e.status.value), e.message or "") from None
        except TimeoutError:  # before OSError, of which it is a subclass
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
        except (StreamTerminatedError, ProtocolError, H2Error, OSError) as e:
            if self._closed:
                raise ChannelClosed() from None
            raise RpcError(StatusCode.UNAVAILABLE, f"{type(e).__name__}: {e}") from None

    async def unary(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        deadline = Deadline.from_timeout(timeout)
        with self._errors():
            channel = await self._connect(deadline)
            stream: Stream[Message, R]
            async with channel.request(
                method_path(method), Cardinality.UNARY_UNARY, Message, response_type, deadline=deadline
            ) as stream:
                _cancel_once(stream)
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
            if reply is None:
                raise RpcError(StatusCode.INTERNAL, "the server sent no response")
            return reply

    def stream(
        self,
        method: str,
        requests: AsyncIterator[Message],
        response_type: type[R],
        timeout: float | None = None,
    ) -> GrpclibCall[R]:
        call = GrpclibCall(self, method, requests, response_type, timeout)
        self._calls.add(call)
        return call

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._channel.close()  # calls in flight: StreamTerminatedError → ChannelClosed
        calls, self._calls = self._calls, set()
        for call in calls:
            call.cancel()  # a consumer not waiting in `recv_message` now gets `ChannelClosed` too
        await asyncio.gather(*(call.finished() for call in calls), return_exceptions=True)


class GrpclibCall(AsyncIterator[R]):
    """`rpc.Call` over a grpclib stream-stream call.

    A sender task opens the stream and sends `requests` (then ends our side);
    the consumer reads responses as it iterates (HTTP/2 flow control pushes
    back on the server when it does not). `cancel()` stops the sender and
    resets the stream; the transport's `close()` awaits the sender.
    """

    def __init__(
        self,
        transport: GrpclibTransport,
        method: str,
        requests: AsyncIterator[Message],
        response_type: type[R],
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._method = method
        self._response_type = response_type
        self._deadline = None if timeout is None else Deadline.from_timeout(timeout)
        self._stream: Stream[Message, R] | None = None
        self._opened: asyncio.Future[Stream[Message, R]] = asyncio.get_running_loop().create_future()
        self._sender = asyncio.create_task(self._send(requests))
        self._done = False
        self._ended: ChannelClosed | None = None  # why the call was ended locally

    def __aiter__(self) -> GrpclibCall[R]:
        return self

    async def __anext__(self) -> R:
        if self._ended is not None:
            raise self._ended
        if self._done:
            raise StopAsyncIteration
        try:
            with self._transport._errors():
                message = await self._recv(await asyncio.shield(self._opened))
        except RpcError:
            self._finish()
            raise
        if message is None:
            self._finish()
            raise StopAsyncIteration
        return message

    @staticmethod
    async def _recv(stream: Stream[Message, R]) -> R | None:
        """The next response; None once the server ended the call with OK."""
        try:
            message = await stream.recv_message()
        except StreamTerminatedError:
            _raise_for_status(stream)  # the server's status, if it sent one before the reset
            raise
        if message is None:
            _raise_for_status(stream)
        return message

    def cancel(self) -> None:
        if not self._done:
            self._ended = ChannelClosed("the call was cancelled")
        self._finish()

    async def finished(self) -> None:
        """Wait for the sender task to end (after `cancel()` or the end of the call)."""
        await asyncio.gather(self._sender, return_exceptions=True)

    def _finish(self) -> None:
        """End the call: stop sending, reset the stream if still open, let go of the stream."""
        if self._done:
            return
        self._done = True
        self._sender.cancel()
        self._transport._calls.discard(self)
        if not self._opened.done():  # a consumer waiting for the stream gets the error, not a cancellation
            self._opened.set_exception(self._ended or ChannelClosed("the call ended"))
        self._opened.exception()  # marks it retrieved: no "never retrieved" report
        if self._stream is not None:
            with contextlib.suppress(Exception):
                _release(self._stream)

    async def _send(self, requests: AsyncIterator[Message]) -> None:
        try:
            try:
                stream = await self._open_stream()
            except Exception as e:  # an `RpcError`, from `_errors`
                if not self._opened.done():
                    self._opened.set_exception(e)
                return
            if not self._opened.done():
                self._opened.set_result(stream)
            with contextlib.suppress(Exception):  # the stream ended or broke: the reader sees how
                async for request in requests:
                    await stream.send_message(request)
                await stream.end()
        finally:
            aclose = getattr(requests, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _open_stream(self) -> Stream[Message, R]:
        with self._transport._errors():
            channel = await self._transport._connect(self._deadline)
            stream = channel.request(
                method_path(self._method),
                Cardinality.STREAM_STREAM,
                Message,
                self._response_type,
                deadline=self._deadline,
            )
            await stream.__aenter__()
            _cancel_once(stream)
            self._stream = stream
            await stream.send_request()
            return stream


def _cancel_once(stream: Stream[Any, Any]) -> None:
    """Make `stream`'s wrapper interrupt its waiting tasks only once.

    grpclib may terminate a stream twice (our `close()` or a GOAWAY, then
    `connection_lost`; a deadline, then a reset), and its `Wrapper` then calls
    `task.cancel()` twice on the task waiting in it: the first request becomes the
    wrapper's error (`StreamTerminatedError`, `TimeoutError`), the second a stray
    `asyncio.CancelledError` at that task's next await, which would end the
    client's keep-alive or watch loop as if it had been cancelled.
    """
    wrapper = stream._wrapper
    first_cancel = wrapper.cancel

    def cancel(error: Exception) -> None:
        if wrapper._error is None:
            first_cancel(error)

    wrapper.cancel = cancel  # type: ignore[method-assign]


def _raise_for_status(stream: Stream[Any, Any]) -> None:
    """Raise `GRPCError` if the server ended `stream` with a non-OK status (see the module doc)."""
    stream._maybe_raise()


def _release(stream: Stream[Any, Any]) -> None:
    """Reset `stream` if it is still open and give its slot back to the connection
    (what `Stream.__aexit__` does, without waiting for the server's trailers)."""
    inner = getattr(stream, "_stream", None)
    if inner is None:
        return
    if inner.closable:
        inner.reset_nowait()
    stream._release_stream()
    if stream._wrapper_ctx is not None:
        stream._wrapper_ctx.__exit__(None, None, None)
