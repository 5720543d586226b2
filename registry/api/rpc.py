"""The seam between `RegistryClient` and a gRPC library: one connection, its calls, its errors.

`client.py` holds the failover, retry and watch/resume logic once; a
`Transport` only carries calls to one replica. Two implement it:
`transport_grpcio` (grpcio, the default: CLI, bench, tests) and
`transport_grpclib` (pure-Python grpclib over h2: the host agent, whose
process must stay small and never imports grpcio). This module imports
neither library.

Contract of every transport:
- a failed call raises `RpcError` with the gRPC status code the server sent, or
  UNAVAILABLE when the replica cannot be reached or the connection broke, or
  DEADLINE_EXCEEDED when the call's timeout passed;
- a call cut short because its own transport was closed locally (`close()`,
  e.g. by `RegistryClient.reconnect` in another task) raises `ChannelClosed`,
  never a bare `asyncio.CancelledError` (which always means "this task was cancelled");
- methods are named as in the `Registry` service of `v1/registry.proto`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from registry.api.v1 import registry_pb2 as pb

R = TypeVar("R", bound=Message)
R_co = TypeVar("R_co", bound=Message, covariant=True)

SERVICE = pb.DESCRIPTOR.services_by_name["Registry"].full_name


def method_path(method: str) -> str:
    """The HTTP/2 path of a `Registry` method: ``/serval.registry.v1.Registry/<method>``."""
    return f"/{SERVICE}/{method}"


class StatusCode(enum.IntEnum):
    """gRPC status codes, with their wire values."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> StatusCode:
        """The code for a wire value; UNKNOWN for values outside the table."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


RETRYABLE = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})
"""Codes after which a call may be repeated on another replica."""


class RpcError(Exception):
    """A registry call that ended with a non-OK status (from the server or the transport)."""

    def __init__(self, code: StatusCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ChannelClosed(RpcError):
    """The call's transport was closed locally while the call was in flight.

    Not a failure of the replica: the caller may repeat the call on the client's
    new transport (same target). Its code is CANCELLED, as gRPC reports a call
    cancelled on the client side.
    """

    def __init__(self, details: str = "the channel was closed during the call") -> None:
        super().__init__(StatusCode.CANCELLED, details)


class Call(Protocol[R_co]):
    """A bidirectional-streaming call in flight. It starts when created."""

    def __aiter__(self) -> AsyncIterator[R_co]:
        """The responses, in order; ends when the server ends the call with OK,
        raises `RpcError` / `ChannelClosed` otherwise. Iterate once."""
        ...

    def cancel(self) -> None:
        """End the call now (idempotent; a no-op once it ended): stops consuming the requests."""
        ...


class Transport(Protocol):
    """A connection to one replica, opened lazily by the first call. Owned by one `RegistryClient`."""

    async def unary(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        """One unary call, bounded by `timeout` seconds (connection set-up included)."""
        ...

    def stream(
        self,
        method: str,
        requests: AsyncIterator[Message],
        response_type: type[R],
        timeout: float | None = None,
    ) -> Call[R]:
        """Start a bidirectional-streaming call; `requests` is consumed as the transport can
        send it (the call ends its side when `requests` ends). No timeout by default."""
        ...

    async def close(self) -> None:
        """Close the connection; calls in flight end with `ChannelClosed`. Idempotent."""
        ...


Dial = Callable[[str], Transport]
"""Opens a `Transport` to one target ("host:port" or "[v6]:port"), without I/O yet."""
