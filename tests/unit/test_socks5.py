"""The pure SOCKS5 handshake (`hostagent.agent.socks5`), table-driven."""

from __future__ import annotations

import pytest

from hostagent.agent.socks5 import (
    SUCCESS_REPLY,
    Action,
    Connect,
    Handshake,
    Refuse,
    Reply,
    Send,
    failure_reply,
    reply,
)

NO_AUTH = b"\x05\x00"
NONE_ACCEPTABLE = b"\x05\xff"


def domain(name: bytes, port: int = 80, cmd: int = 1, version: int = 5) -> bytes:
    return bytes([version, cmd, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


def run(stream: bytes, chunk: int | None = None) -> tuple[list[Action], int]:
    """Feed `stream` as the shell would (at most `need()` bytes, or `chunk`); actions, bytes left."""
    machine, actions, pos = Handshake(), [], 0
    while machine.need() and pos < len(stream):
        n = min(machine.need(), chunk or machine.need(), len(stream) - pos)
        action = machine.feed(stream[pos : pos + n])
        pos += n
        if action is not None:
            actions.append(action)
    return actions, len(stream) - pos


GREETING = b"\x05\x01\x00"


def refused(code: Reply, why: str) -> list[Action]:
    """The actions of a greeting accepted, then a request refused with `code`."""
    return [Send(NO_AUTH), Refuse(reply(code), why)]


R = Reply


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # greeting variants
        (GREETING + domain(b"payments.prod"), [Send(NO_AUTH), Connect("payments.prod", 80)]),
        (b"\x05\x03\x02\x01\x00" + domain(b"a.b", 443), [Send(NO_AUTH), Connect("a.b", 443)]),
        (b"\x05\x02\x00\x02" + domain(b"x", 0), [Send(NO_AUTH), Connect("x", 0)]),
        (b"\x05\x01\x02", [Refuse(NONE_ACCEPTABLE, "no acceptable method")]),
        (b"\x05\x00", [Refuse(NONE_ACCEPTABLE, "no methods offered")]),
        (b"\x04\x01\x00\x50", [Refuse(b"", "not SOCKS5 (version 4)")]),
        (b"GET / HTTP/1.1\r\n", [Refuse(b"", "not SOCKS5 (version 71)")]),
        # requests
        (GREETING + domain(b"a.b", cmd=2), refused(R.COMMAND_NOT_SUPPORTED, "command 2")),
        (GREETING + domain(b"a.b", cmd=3), refused(R.COMMAND_NOT_SUPPORTED, "command 3")),
        (GREETING + domain(b"a.b", version=4), refused(R.GENERAL_FAILURE, "request version 4")),
        (
            GREETING + b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50",
            refused(R.ADDRESS_TYPE_NOT_SUPPORTED, "IP destinations need a name"),
        ),
        (
            GREETING + b"\x05\x01\x00\x04" + bytes(16) + b"\x00\x50",
            refused(R.ADDRESS_TYPE_NOT_SUPPORTED, "IP destinations need a name"),
        ),
        (GREETING + b"\x05\x01\x00\x07\x00", refused(R.ADDRESS_TYPE_NOT_SUPPORTED, "address type 7")),
        (GREETING + domain(b""), refused(R.HOST_UNREACHABLE, "empty or non-ASCII name")),
        (GREETING + domain("bücher.de".encode()), refused(R.HOST_UNREACHABLE, "empty or non-ASCII name")),
        # the longest legal request: a 255-byte name
        (GREETING + domain(b"a" * 255, 65535), [Send(NO_AUTH), Connect("a" * 255, 65535)]),
    ],
)
def test_handshake(stream: bytes, expected: list[Action]) -> None:
    assert run(stream)[0] == expected
    assert run(stream, chunk=1)[0] == expected, "byte by byte gives the same decisions"


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\x05",
        GREETING[:2],
        GREETING,
        GREETING + domain(b"payments.prod")[:-1],
        GREETING + b"\x05\x01\x00",
    ],
)
def test_truncated_input_waits_for_more_and_decides_nothing(stream: bytes) -> None:
    actions, left = run(stream)
    assert left == 0
    assert not any(isinstance(a, Connect | Refuse) for a in actions)


def test_reads_never_go_past_the_connect_request() -> None:
    early = b"GET / HTTP/1.1\r\n\r\n"  # a client that sends data before the reply
    actions, left = run(GREETING + domain(b"web.prod") + early)
    assert actions[-1] == Connect("web.prod", 80)
    assert left == len(early), "the early bytes stay in the kernel for the data path"


def test_refusals_end_the_handshake_without_reading_more() -> None:
    actions, left = run(b"\x05\x01\x02" + domain(b"a.b"))
    assert actions == [Refuse(NONE_ACCEPTABLE, "no acceptable method")]
    assert left == len(domain(b"a.b"))


@pytest.mark.parametrize("request_", [domain(b"a.b", cmd=2), domain(b"a.b", version=4)])
def test_a_refused_request_is_read_whole_before_the_reply(request_: bytes) -> None:
    actions, left = run(GREETING + request_ + b"extra")
    assert isinstance(actions[-1], Refuse)
    assert left == len(b"extra")


def test_oversized_feed_is_a_programming_error_and_need_is_zero_when_done() -> None:
    machine = Handshake()
    assert machine.need() == 2
    with pytest.raises(ValueError, match="needs 2"):
        machine.feed(GREETING)
    assert machine.feed(b"\x05\x00") == Refuse(NONE_ACCEPTABLE, "no methods offered")
    assert machine.need() == 0
    with pytest.raises(ValueError):
        machine.feed(b"\x00")


@pytest.mark.parametrize("data", [bytes([i]) * 300 for i in (0, 3, 5, 255)] + [bytes(range(256))])
def test_arbitrary_input_never_raises(data: bytes) -> None:
    actions, _ = run(data)
    assert all(isinstance(a, Send | Refuse | Connect) for a in actions)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (Reply.SUCCEEDED, b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
        (Reply.HOST_UNREACHABLE, b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"),
        (Reply.CONNECTION_REFUSED, b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"),
        (Reply.ADDRESS_TYPE_NOT_SUPPORTED, b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00"),
    ],
)
def test_reply_encoding(code: Reply, expected: bytes) -> None:
    assert reply(code) == expected
    assert reply(Reply.SUCCEEDED) == SUCCESS_REPLY


@pytest.mark.parametrize(
    ("tried", "code"),
    [
        ([], Reply.HOST_UNREACHABLE),  # no route / unknown name
        (["refused"], Reply.CONNECTION_REFUSED),
        (["refused", "refused"], Reply.CONNECTION_REFUSED),
        (["refused", "timeout"], Reply.HOST_UNREACHABLE),
        (["no service"], Reply.HOST_UNREACHABLE),
    ],
)
def test_failure_reply(tried: list[str], code: Reply) -> None:
    assert failure_reply(tried) == code
