"""The SAL frame codec through its Python binding (the Rust core has its own tests and fuzzer)."""

from __future__ import annotations

import contextlib
import random

import pytest

from hostagent import sal_core
from hostagent.sal_core.wire import Control, ControlFlags, Frame, FrameType, decode_frame, encode_frame

SYN = Frame(
    FrameType.CONTROL,
    src_flow=0x1122334455667788,
    control=Control(ControlFlags.SYN, seq=7, nonce=0xDEADBEEFCAFEF00D),
    service=sal_core.service_id("payments.prod"),
)
FRAMES = [
    SYN,
    Frame(FrameType.DATA, src_flow=1, dst_flow=2, payload=b"hello" * 100, data_seq=4096),
    Frame(FrameType.ACK, src_flow=1, dst_flow=2, ack=(123456, 65536)),
    Frame(
        FrameType.CONTROL,
        src_flow=1,
        dst_flow=2,
        control=Control(ControlFlags.RSYN | ControlFlags.FIN, seq=9, ack=3),
        addresses=(("10.0.0.1", 7000), ("2001:db8::1", 7001)),
        mac=(5, bytes(range(16))),
    ),
    Frame(FrameType.CONTROL, src_flow=1, dst_flow=2, control=Control(ControlFlags.RST), rst_reason=1),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f"{f.type}")
def test_frames_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data + b"next frame") == (frame, len(data))


def test_the_checksum_catches_a_flipped_header_bit() -> None:
    data = bytearray(encode_frame(SYN))
    data[10] ^= 0x01  # inside the source flow ID
    with pytest.raises(ValueError, match="checksum"):
        decode_frame(bytes(data))


@pytest.mark.parametrize("cut", [0, 1, 27, 40])
def test_truncated_input_is_a_typed_error(cut: int) -> None:
    with pytest.raises(ValueError, match=r"(?i)truncated|need"):
        decode_frame(encode_frame(SYN)[:cut])


def test_garbage_never_crashes_the_decoder() -> None:
    rng = random.Random(1)
    valid = [encode_frame(f) for f in FRAMES]
    for _ in range(5000):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(ValueError):
            decode_frame(bytes(data[: rng.randint(0, len(data))]))


def test_unencodable_frames_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_frame(Frame(FrameType.ACK, payload=b"an ACK carries no payload"))
