"""The SOCKS5 server handshake (RFC 1928) as a pure state machine: bytes in, decisions out.

Scope (Serval's translator for legacy clients, `docs/agent-datapath.md`):
- method 0x00 (no authentication) only; a greeting without it gets
  ``05 FF`` ("no acceptable methods") and the connection is closed;
- command CONNECT only (others: reply 0x07);
- the destination must be a DOMAINNAME, read as a Serval service name
  (IPv4/IPv6 destinations: reply 0x08, there is no forwarder); the
  destination **port is ignored** — a service name already names the
  service, and clients always send some port (80 for ``http://name/``).

Exact reads: `need()` says how many bytes the next step wants and `feed`
never takes more, so the shell reads exactly the handshake and not one byte
past the CONNECT request. Whatever the client sends after it stays in the
kernel for the data path to relay (Python never touches flow bytes).
Sizes are bounded by the protocol itself (at most 257 bytes of greeting and
262 of request). Malformed input ends in `Refuse` (with the protocol's reply
where one exists), never in an exception.

No I/O, no clock: the shell (`legacy.py`) reads, writes and times out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = 5
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
_REQUEST_HEAD = 5  # VER CMD RSV ATYP + the first byte of the address (a domain's length)


class Reply(enum.IntEnum):
    """REP codes of RFC 1928 section 6."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


def reply(code: Reply) -> bytes:
    """A reply with BND.ADDR 0.0.0.0 and BND.PORT 0 (there is no local socket to name)."""
    return bytes([VERSION, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


SUCCESS_REPLY = reply(Reply.SUCCEEDED)


@dataclass(frozen=True)
class Send:
    """Write `data` and continue the handshake."""

    data: bytes


@dataclass(frozen=True)
class Refuse:
    """Write `data` (possibly empty: no reply exists for the error), then close."""

    data: bytes
    why: str


@dataclass(frozen=True)
class Connect:
    """The handshake is done: set up a flow to service `name`; reply when the outcome is known."""

    name: str
    port: int


Action = Send | Refuse | Connect


class _State(enum.Enum):
    GREETING = "greeting"
    METHODS = "methods"
    REQUEST = "request"
    ADDRESS = "address"
    DONE = "done"


class Handshake:
    """One client's handshake. Feed it exactly `need()` bytes (or fewer) at a time."""

    def __init__(self) -> None:
        self._state = _State.GREETING
        self._want = 2
        self._buf = b""
        self._head = (0, 0, 0)  # the request's VER, CMD, ATYP

    def need(self) -> int:
        """Bytes the current step still needs; 0 once the handshake ended (`Connect` or `Refuse`)."""
        return 0 if self._state is _State.DONE else self._want - len(self._buf)

    def feed(self, data: bytes) -> Action | None:
        """Take `data` (at most `need()` bytes); an action once a step completes, else None."""
        if len(data) > self.need():
            raise ValueError(f"fed {len(data)} bytes, the handshake needs {self.need()}")
        self._buf += data
        if len(self._buf) < self._want:
            return None
        message, self._buf = self._buf, b""
        action = self._step(message)
        if isinstance(action, Connect | Refuse):
            self._state = _State.DONE
        return action

    def _step(self, message: bytes) -> Action | None:
        match self._state:
            case _State.GREETING:
                return self._greeting(message)
            case _State.METHODS:
                return self._methods(message)
            case _State.REQUEST:
                return self._request(message)
            case _State.ADDRESS:
                return self._address(message)
        raise AssertionError("fed after the handshake ended")  # need() was 0: unreachable

    def _greeting(self, head: bytes) -> Action | None:
        version, count = head
        if version != VERSION:
            return Refuse(b"", f"not SOCKS5 (version {version})")
        if count == 0:
            return Refuse(bytes([VERSION, METHOD_NONE_ACCEPTABLE]), "no methods offered")
        self._state, self._want = _State.METHODS, count
        return None

    def _methods(self, methods: bytes) -> Action:
        if METHOD_NO_AUTH not in methods:
            return Refuse(bytes([VERSION, METHOD_NONE_ACCEPTABLE]), "no acceptable method")
        self._state, self._want = _State.REQUEST, _REQUEST_HEAD
        return Send(bytes([VERSION, METHOD_NO_AUTH]))

    def _request(self, head: bytes) -> Action | None:
        version, command, _reserved, atyp, first = head
        if atyp not in (ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6):
            return Refuse(reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED), f"address type {atyp}")
        # Read the rest of the address and the port before answering, so that
        # closing never leaves unread request bytes (which would reset the reply).
        rest = {ATYP_IPV4: 3, ATYP_IPV6: 15, ATYP_DOMAIN: first}[atyp] + 2
        self._state, self._want, self._head = _State.ADDRESS, rest, (version, command, atyp)
        return None

    def _address(self, rest: bytes) -> Action:
        version, command, atyp = self._head
        address, port = rest[:-2], int.from_bytes(rest[-2:], "big")
        if version != VERSION:
            return Refuse(reply(Reply.GENERAL_FAILURE), f"request version {version}")
        if command != CMD_CONNECT:
            return Refuse(reply(Reply.COMMAND_NOT_SUPPORTED), f"command {command}")
        if atyp != ATYP_DOMAIN:
            return Refuse(reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED), "IP destinations need a name")
        if not address or not address.isascii():
            return Refuse(reply(Reply.HOST_UNREACHABLE), "empty or non-ASCII name")
        return Connect(address.decode("ascii"), port)


def failure_reply(tried: Sequence[str]) -> Reply:
    """The REP code for a failed set-up, from the ``why`` of each target tried.

    Every target refused (no agent, or the exposed server refused) →
    CONNECTION_REFUSED; otherwise (no route, unknown name, timeouts) → HOST_UNREACHABLE.
    """
    if tried and all(why == "refused" for why in tried):
        return Reply.CONNECTION_REFUSED
    return Reply.HOST_UNREACHABLE
