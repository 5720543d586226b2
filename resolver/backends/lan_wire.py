"""The LAN back-end's pure core: the wire format (version 1) and what a listener knows.

No sockets, no clock: `decode(data, sender)` turns a datagram into a message or raises
`Malformed` / `Unsupported` (never anything else, whatever the bytes);
`encode_announcements` splits endpoints into datagrams within `MAX_DATAGRAM` bytes
and `MAX_SERVICES` entries; `LanTable` keeps the entries heard, each until
`now + ttl` (`now` passed in). The format and the expiry rules are described in
`resolver/backends/lan.py` and `resolver/README.md`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from registry.errors import InvalidArgument
from registry.model import MAX_TTL_SECONDS, Instance, validate_instance
from resolver.backends.registry import endpoint_from_instance
from resolver.backends.state import group
from resolver.model import Endpoint

VERSION = 1
MAX_DATAGRAM = 1200
MAX_SERVICES = 16
HOST_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Malformed(ValueError):
    """A datagram that is not a valid version-1 message."""


class Unsupported(ValueError):
    """A well-formed datagram of another wire version."""


@dataclass(frozen=True, slots=True)
class Announcement:
    host: str
    ttl: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Query:
    pass


@dataclass(frozen=True, slots=True)
class Bye:
    host: str


Message = Announcement | Query | Bye


# ---- codec (pure) ---------------------------------------------------------------


def _entry(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"n": e.service, "i": e.instance_id, "a": list(e.addresses), "p": e.port}
    if e.weight != 100:
        out["w"] = e.weight
    if e.tier:
        out["t"] = e.tier
    if e.metadata:
        out["m"] = dict(e.metadata)
    return out


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_announcements(host: str, ttl: int, endpoints: Sequence[Endpoint]) -> list[bytes]:
    """Datagrams announcing `endpoints` (split to respect both limits). Raises ValueError
    for an endpoint that alone does not fit in a datagram. No endpoints → one empty
    announcement (a heartbeat)."""
    out: list[bytes] = []
    batch: list[dict[str, Any]] = []

    def datagram(entries: list[dict[str, Any]]) -> bytes:
        return _dump({"v": VERSION, "t": "ann", "host": host, "ttl": ttl, "s": entries})

    for e in endpoints:
        entry = _entry(e)
        if len(datagram([entry])) > MAX_DATAGRAM:
            raise ValueError(f"the announcement of {e.service}/{e.instance_id} exceeds {MAX_DATAGRAM} bytes")
        if batch and (len(batch) == MAX_SERVICES or len(datagram([*batch, entry])) > MAX_DATAGRAM):
            out.append(datagram(batch))
            batch = []
        batch.append(entry)
    if batch or not out:
        out.append(datagram(batch))
    return out


def encode_query() -> bytes:
    return _dump({"v": VERSION, "t": "q"})


def encode_bye(host: str) -> bytes:
    return _dump({"v": VERSION, "t": "bye", "host": host})


def decode(data: bytes, sender: str, source: str = "lan") -> Message:
    """The message in `data` from `sender` (its IP address), or raise `Malformed` /
    `Unsupported`. Never raises anything else, whatever the bytes."""
    if len(data) > MAX_DATAGRAM:
        raise Malformed(f"{len(data)} bytes, more than {MAX_DATAGRAM}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed("not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise Malformed("not a JSON object")
    version = obj.get("v")
    if type(version) is not int:
        raise Malformed("no wire version")
    if version != VERSION:
        raise Unsupported(f"wire version {version}")
    kind = obj.get("t")
    if kind == "q":
        return Query()
    host = obj.get("host")
    if not isinstance(host, str) or not HOST_RE.fullmatch(host):
        raise Malformed("bad host")
    if kind == "bye":
        return Bye(host)
    if kind != "ann":
        raise Malformed(f"unknown message type {str(kind)[:16]!r}")
    ttl = obj.get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise Malformed("bad ttl")
    entries = obj.get("s", [])
    if not isinstance(entries, list) or len(entries) > MAX_SERVICES:
        raise Malformed("bad service list")
    return Announcement(host, ttl, tuple(_decode_entry(e, sender, source) for e in entries))


def _decode_entry(e: Any, sender: str, source: str) -> Endpoint:
    if not isinstance(e, dict):
        raise Malformed("service entry is not an object")
    name, iid, port = e.get("n"), e.get("i"), e.get("p")
    addresses = e.get("a") or [sender]
    weight, tier, metadata = e.get("w", 100), e.get("t", 0), e.get("m", {})
    if not (isinstance(name, str) and isinstance(iid, str) and isinstance(addresses, list)):
        raise Malformed("bad service entry")
    if not (_is_int(port) and _is_int(weight) and _is_int(tier)):
        raise Malformed("bad service entry numbers")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise Malformed("bad metadata")
    if not all(isinstance(a, str) for a in addresses):
        raise Malformed("bad addresses")
    try:
        instance = validate_instance(
            Instance(name, iid, tuple(addresses), port, weight=weight, tier=tier, metadata=metadata)
        )
    except InvalidArgument as err:
        raise Malformed(str(err)) from None
    return endpoint_from_instance(instance, source)


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int


# ---- what a listener knows (pure) -------------------------------------------------


@dataclass
class LanTable:
    """The live entries heard from other hosts. `now` is a monotonic time in seconds."""

    entries: dict[tuple[str, str], tuple[Endpoint, str, float]] = field(
        default_factory=dict
    )  # → (endpoint, host, expiry)

    def apply(self, msg: Announcement | Bye, now: float) -> bool:
        """Apply an announcement or bye; True if the set of endpoints changed."""
        if isinstance(msg, Bye):
            gone = [k for k, (_, host, _) in self.entries.items() if host == msg.host]
            for k in gone:
                del self.entries[k]
            return bool(gone)
        changed = False
        for e in msg.endpoints:
            old = self.entries.get(e.key)
            changed = changed or old is None or old[0] != e
            self.entries[e.key] = (e, msg.host, now + msg.ttl)
        return changed

    def expire(self, now: float) -> int:
        """Drop entries whose TTL has passed; return how many."""
        gone = [k for k, (_, _, expiry) in self.entries.items() if expiry <= now]
        for k in gone:
            del self.entries[k]
        return len(gone)

    def next_expiry(self) -> float | None:
        return min((x for _, _, x in self.entries.values()), default=None)

    def services(self) -> dict[str, tuple[Endpoint, ...]]:
        return group([e for e, _, _ in self.entries.values()])
