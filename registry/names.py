"""Service names and the service IDs derived from them.

Pure module: no I/O. The Rust SAL core (`hostagent/sal_core/src/service_id.rs`)
implements the same derivation; both check `tests/testdata/service_ids.json`.

Contract:
- A *service name* is 1 to 8 DNS labels, most specific first
  (``payments.prod.acme``), each 1-63 characters of ``a-z``, ``0-9`` and ``-``
  (not at either end), 253 characters at most. Names are case-insensitive:
  `normalize` lower-cases them and drops one trailing dot.
- The *service ID* is 256 bits. The labels are reversed and each contributes
  one 32-bit chunk, the first four bytes of SHA-256 over ``LABEL_HASH_TAG``
  followed by the label, from the most significant end; the rest is zero. A
  parent's ID is therefore a bit-prefix of each child's ID, and its prefix
  length is ``32 * labels``.
- Different names can, rarely, share an ID (32-bit chunks); the registry
  refuses the second name (see ``registry/raft``'s ID claims).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

ID_BYTES = 32
BITS_PER_LABEL = 32
MAX_LABELS = 8
MAX_NAME_LEN = 253
MAX_LABEL_LEN = 63
LABEL_HASH_TAG = b"serval-sid-v1\0"
_CACHE_SIZE = 1 << 16

_LABEL_CHARS = re.compile(r"[a-z0-9-]+")


class InvalidName(ValueError):
    """The text is not a valid service name; the message says why."""


@dataclass(frozen=True, slots=True)
class ServiceId:
    """A 256-bit service ID and how many leading bits of it are significant."""

    raw: bytes
    prefix_bits: int

    def hex(self) -> str:
        """All 32 bytes as 64 lower-case hex characters."""
        return self.raw.hex()

    def __str__(self) -> str:
        return f"{self.hex()}/{self.prefix_bits}"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def normalize(name: str) -> str:
    """Return `name` lower-cased without a trailing dot, or raise `InvalidName`.

    Memoised (names repeat on every call of a hot path); errors are not cached.
    """
    lowered = name[:-1] if name.endswith(".") else name
    lowered = lowered.lower()
    if not lowered:
        raise InvalidName("service name is empty")
    if len(lowered) > MAX_NAME_LEN:
        raise InvalidName(f"service name is {len(lowered)} characters, more than {MAX_NAME_LEN}")
    labels = lowered.split(".")
    if len(labels) > MAX_LABELS:
        raise InvalidName(f"service name has {len(labels)} labels, more than {MAX_LABELS}")
    for label in labels:
        _check_label(label)
    return lowered


def _check_label(label: str) -> None:
    if not label:
        raise InvalidName("service name has an empty label")
    if len(label) > MAX_LABEL_LEN:
        raise InvalidName(f"label {label!r} is longer than {MAX_LABEL_LEN} characters")
    if not label.isascii() or not _LABEL_CHARS.fullmatch(label):
        raise InvalidName(f"label {label!r} may hold only letters, digits and '-'")
    if label.startswith("-") or label.endswith("-"):
        raise InvalidName(f"label {label!r} starts or ends with '-'")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def service_id(name: str) -> ServiceId:
    """Derive the service ID of `name` (normalised first); raise `InvalidName`. Memoised."""
    labels = normalize(name).split(".")
    chunks = [hashlib.sha256(LABEL_HASH_TAG + label.encode()).digest()[:4] for label in reversed(labels)]
    raw = b"".join(chunks).ljust(ID_BYTES, b"\0")
    return ServiceId(raw=raw, prefix_bits=BITS_PER_LABEL * len(labels))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def service_id_hex(name: str) -> str:
    """`service_id(name).hex()`, memoised."""
    return service_id(name).hex()


def parse_service_id(text: str) -> ServiceId:
    """Parse ``HEX`` or ``HEX/BITS`` (1-64 hex digits, left-aligned) into a raw ID.

    Raw IDs may use any prefix length from 0 to 256 bits; bits past the prefix
    must be zero. Raise `InvalidName` on malformed text.
    """
    hex_part, _, bits_part = text.partition("/")
    if not hex_part or len(hex_part) > 2 * ID_BYTES or not re.fullmatch(r"[0-9a-fA-F]+", hex_part):
        raise InvalidName(f"service ID {text!r} must be 1 to 64 hex digits, optionally followed by /BITS")
    raw = bytes.fromhex(hex_part.ljust(2 * ID_BYTES, "0"))
    bits = len(hex_part) * 4 if not bits_part else _parse_bits(text, bits_part)
    value = int.from_bytes(raw, "big")
    if bits < ID_BYTES * 8 and value & ((1 << (ID_BYTES * 8 - bits)) - 1):
        raise InvalidName(f"service ID {text!r} has bits set past its /{bits} prefix")
    return ServiceId(raw=raw, prefix_bits=bits)


def _parse_bits(text: str, bits_part: str) -> int:
    if not bits_part.isdigit() or not 0 <= int(bits_part) <= ID_BYTES * 8:
        raise InvalidName(f"service ID {text!r} has a prefix length outside 0..256")
    return int(bits_part)
