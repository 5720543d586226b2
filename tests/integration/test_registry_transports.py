"""The client transports' contract (`registry/api/rpc.py`) where no replica answers properly.

Both transports against a TCP server that never answers, and a port nobody
listens on: the errors are `RpcError`s with the codes of the
contract, and closing a transport under a call ends it with `ChannelClosed`,
never with a cancellation of the calling task (grpcio and grpclib each have
their own way of producing one).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from registry.api.rpc import ChannelClosed, Dial, RpcError, StatusCode
from registry.api.v1 import registry_pb2 as pb
from tests.support.transports import TRANSPORTS

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("dial", TRANSPORTS)]


@pytest.fixture
def silent_target() -> Iterator[str]:
    """host:port of a server that never says a word: the kernel completes the TCP handshakes of
    its listening socket, nobody accepts or answers. Closing it resets those connections."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def beats(stop: asyncio.Event) -> AsyncIterator[pb.KeepAliveRequest]:
    yield pb.KeepAliveRequest(lease_id=1)
    await stop.wait()


async def test_a_unary_call_without_an_answer_ends_at_its_deadline(dial: Dial, silent_target: str) -> None:
    transport = dial(silent_target)
    try:
        with pytest.raises(RpcError) as err:
            await transport.unary(
                "OpenSession", pb.OpenSessionRequest(ttl_seconds=5), pb.OpenSessionResponse, 0.3
            )
        assert err.value.code == StatusCode.DEADLINE_EXCEEDED
    finally:
        await transport.close()


async def test_a_refused_connection_is_unavailable(dial: Dial) -> None:
    transport = dial(f"127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(RpcError) as err:
            await transport.unary(
                "OpenSession", pb.OpenSessionRequest(ttl_seconds=5), pb.OpenSessionResponse, 5
            )
        assert err.value.code == StatusCode.UNAVAILABLE
    finally:
        await transport.close()


@pytest.mark.parametrize("wait", [0.0, 0.3], ids=["opening", "open"])
async def test_closing_the_transport_ends_a_stream_with_channel_closed(
    dial: Dial, silent_target: str, wait: float
) -> None:
    """While the call is still being set up (`opening`) or waits for a response (`open`)."""
    transport = dial(silent_target)
    stop = asyncio.Event()
    call = transport.stream("KeepAlive", beats(stop), pb.KeepAliveResponse)

    async def consume() -> None:
        async for _ in call:
            pass

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(wait)
    await transport.close()
    with pytest.raises(ChannelClosed):
        await consumer
    assert not consumer.cancelled()
    stop.set()
    call.cancel()


async def test_closing_the_transport_ends_a_unary_call_with_channel_closed(
    dial: Dial, silent_target: str
) -> None:
    transport = dial(silent_target)

    async def call_then_sleep() -> None:
        try:
            await transport.unary(
                "OpenSession", pb.OpenSessionRequest(ttl_seconds=5), pb.OpenSessionResponse, 10
            )
        finally:
            await asyncio.sleep(0.2)  # no stray cancellation reaches the task after the error

    task = asyncio.create_task(call_then_sleep())
    await asyncio.sleep(0.3)
    await transport.close()
    with pytest.raises(ChannelClosed):
        await task
