"""Typed face of the Rust SAL frame codec (for tests and tools; the data path stays in Rust).

`encode_frame(Frame) -> bytes` and `decode_frame(bytes) -> (Frame, consumed)`
follow `docs/sal-wire.md` exactly: the Rust codec does the work, this module
only converts between the dataclasses below and the plain dicts that cross the
boundary. Malformed or incomplete input raises `ValueError` with the codec's
typed error message (e.g. truncated, bad checksum, unknown critical
extension); nothing else is ever raised for bad bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag, StrEnum
from typing import Any

from hostagent.sal_core import _native


class FrameType(StrEnum):
    DATA = "data"
    ACK = "ack"
    CONTROL = "control"


class ControlFlags(IntFlag):
    SYN = 0x01
    ACK = 0x02
    RSYN = 0x04
    FIN = 0x08
    RST = 0x10


@dataclass(frozen=True)
class Control:
    """The CONTROL extension: flags, control sequence and acknowledgement, nonce."""

    flags: ControlFlags
    seq: int = 0
    ack: int = 0
    nonce: int = 0


@dataclass(frozen=True)
class Frame:
    """One SAL frame; extensions that are None are absent."""

    type: FrameType
    src_flow: int = 0
    dst_flow: int = 0
    flags: int = 0
    payload: bytes = b""
    control: Control | None = None
    service: tuple[bytes, int] | None = None  # (32-byte ID, prefix bits)
    data_seq: int | None = None
    ack: tuple[int, int] | None = None  # (cumulative ack, receive window)
    addresses: tuple[tuple[str, int], ...] | None = None
    mac: tuple[int, bytes] | None = None  # (counter, 16-byte tag)
    rst_reason: int | None = None

    def as_native(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type.value,
            "src_flow": self.src_flow,
            "dst_flow": self.dst_flow,
            "flags": self.flags,
            "payload": self.payload,
            "service": self.service,
            "data_seq": self.data_seq,
            "ack": self.ack,
            "addresses": None if self.addresses is None else list(self.addresses),
            "mac": self.mac,
            "rst_reason": self.rst_reason,
        }
        if self.control is not None:
            c = self.control
            d["control"] = {"flags": int(c.flags), "seq": c.seq, "ack": c.ack, "nonce": c.nonce}
        return d

    @classmethod
    def from_native(cls, d: dict[str, Any]) -> Frame:
        control = d.get("control")
        addresses = d.get("addresses")
        return cls(
            type=FrameType(d["type"]),
            src_flow=d["src_flow"],
            dst_flow=d["dst_flow"],
            flags=d["flags"],
            payload=d["payload"],
            control=None if control is None else Control(ControlFlags(control["flags"]), **_rest(control)),
            service=d.get("service"),
            data_seq=d.get("data_seq"),
            ack=d.get("ack"),
            addresses=None if addresses is None else tuple(addresses),
            mac=d.get("mac"),
            rst_reason=d.get("rst_reason"),
        )


def _rest(control: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in control.items() if k != "flags"}


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes (checksum filled in); `ValueError` if it cannot be encoded."""
    return _native.encode_frame(frame.as_native())


def decode_frame(data: bytes) -> tuple[Frame, int]:
    """The frame at the front of `data` and how many bytes it took; `ValueError` if malformed."""
    d, used = _native.decode_frame(data)
    return Frame.from_native(d), used
