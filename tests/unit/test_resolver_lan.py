"""The LAN back-end's pure core: codec (incl. hostile input), table and expiry."""

from __future__ import annotations

import json

import pytest

from resolver.backends.lan import LanBackend
from resolver.backends.lan_wire import (
    MAX_DATAGRAM,
    MAX_SERVICES,
    Announcement,
    Bye,
    LanTable,
    Malformed,
    Query,
    Unsupported,
    decode,
    encode_announcements,
    encode_bye,
    encode_query,
)
from resolver.model import Endpoint


def ep(
    name: str = "web.lan", iid: str = "w1", addrs: tuple[str, ...] = ("10.0.0.5",), **kw: object
) -> Endpoint:
    return Endpoint(name, iid, addrs, 8080, source="lan", **kw)  # type: ignore[arg-type]


def test_round_trip() -> None:
    e = ep(weight=7, tier=2, metadata={"serval.sal_port": "7946"})
    [data] = encode_announcements("host-a", 15, [e])
    assert decode(data, "10.9.9.9") == Announcement("host-a", 15, (e,))
    assert decode(encode_query(), "10.9.9.9") == Query()
    assert decode(encode_bye("host-a"), "10.9.9.9") == Bye("host-a")


def test_empty_addresses_use_the_sender() -> None:
    [data] = encode_announcements("h", 15, [ep(addrs=())])
    msg = decode(data, "192.168.1.7")
    assert isinstance(msg, Announcement) and msg.endpoints[0].addresses == ("192.168.1.7",)


def test_split_by_count_and_size() -> None:
    many = [ep(iid=f"i{n}", metadata={"k": "v" * 200}) for n in range(40)]
    datagrams = encode_announcements("h", 15, many)
    assert len(datagrams) > 40 // MAX_SERVICES
    got = []
    for d in datagrams:
        assert len(d) <= MAX_DATAGRAM
        msg = decode(d, "10.0.0.1")
        assert isinstance(msg, Announcement) and len(msg.endpoints) <= MAX_SERVICES
        got.extend(msg.endpoints)
    assert got == many


def test_endpoint_too_large_for_a_datagram() -> None:
    huge = ep(metadata={f"k{n}": "v" * 200 for n in range(8)})
    with pytest.raises(ValueError, match="exceeds"):
        encode_announcements("h", 15, [huge])


def _ann(**over: object) -> bytes:
    obj: dict[str, object] = {"v": 1, "t": "ann", "host": "h", "ttl": 15,
                              "s": [{"n": "web.lan", "i": "w1", "a": ["10.0.0.5"], "p": 80}]}  # fmt: skip
    obj.update(over)
    return json.dumps(obj).encode()


def _entry(**over: object) -> bytes:
    entry: dict[str, object] = {"n": "web.lan", "i": "w1", "a": ["10.0.0.5"], "p": 80}
    entry.update(over)
    return _ann(s=[entry])


MALFORMED = [
    ("empty", b""),
    ("garbage", b"\x00\xff\xfe garbage"),
    ("not an object", b"[1, 2]"),
    ("no version", b'{"t": "q"}'),
    ("bool version", b'{"v": true, "t": "q"}'),
    ("unknown type", b'{"v": 1, "t": "zap", "host": "h"}'),
    ("bad host", _ann(host="a b")),
    ("host not str", _ann(host=5)),
    ("ttl zero", _ann(ttl=0)),
    ("ttl huge", _ann(ttl=10**9)),
    ("services not list", _ann(s={"n": 1})),
    ("too many services", _ann(s=[{"n": "a", "i": f"i{n}", "a": ["10.0.0.1"], "p": 1} for n in range(17)])),
    ("entry not object", _ann(s=[1])),
    ("bad name", _entry(n="bad_name")),
    ("bad address", _entry(a=["300.1.1.1"])),
    ("multicast address", _entry(a=["239.1.1.1"])),
    ("address not str", _entry(a=[1])),
    ("port str", _entry(p="80")),
    ("port range", _entry(p=0)),
    ("weight bool", _entry(w=True)),
    ("tier range", _entry(t=99)),
    ("metadata not str", _entry(m={"k": 1})),
    ("deep nesting", b"[" * 100_000),
    ("oversized", b" " * (MAX_DATAGRAM + 1)),
]


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_is_rejected(data: bytes) -> None:
    with pytest.raises(Malformed):
        decode(data, "10.0.0.1")


def test_other_version_is_unsupported() -> None:
    with pytest.raises(Unsupported):
        decode(b'{"v": 2, "t": "ann", "whatever": []}', "10.0.0.1")


def test_backend_counts_bad_datagrams_and_survives() -> None:
    now = [0.0]
    backend = LanBackend(clock=lambda: now[0])
    for _, data in MALFORMED:
        backend.on_datagram(data, "10.0.0.1")
    backend.on_datagram(b'{"v": 9}', "10.0.0.1")
    assert backend.stats["oversized"] == 2  # "deep nesting" is oversized too
    assert backend.stats["malformed"] == len(MALFORMED) - 2
    assert backend.stats["unsupported"] == 1
    assert backend.snapshot().revision == 0
    [good] = encode_announcements("h", 15, [ep()])
    backend.on_datagram(good, "10.0.0.1")
    assert backend.snapshot().services == {"web.lan": (ep(),)}


def test_table_expiry_and_refresh() -> None:
    table = LanTable()
    assert table.apply(Announcement("a", 10, (ep(iid="a1"),)), now=0.0)
    assert table.apply(Announcement("b", 30, (ep(iid="b1"),)), now=0.0)
    assert not table.apply(Announcement("a", 10, (ep(iid="a1"),)), now=5.0)  # refresh: no change
    assert table.next_expiry() == 15.0
    assert table.expire(14.9) == 0
    assert table.expire(15.0) == 1
    assert [e.instance_id for e in table.services()["web.lan"]] == ["b1"]
    assert table.expire(30.0) == 1 and table.services() == {}


def test_table_bye_drops_the_host() -> None:
    table = LanTable()
    table.apply(Announcement("a", 10, (ep(iid="a1"), ep("db.lan", "a2"))), now=0.0)
    table.apply(Announcement("b", 10, (ep(iid="b1"),)), now=0.0)
    assert table.apply(Bye("a"), now=1.0)
    assert list(table.services()) == ["web.lan"]
    assert not table.apply(Bye("a"), now=1.0)


def test_backend_expires_with_its_clock() -> None:
    now = [100.0]
    backend = LanBackend(clock=lambda: now[0])
    [data] = encode_announcements("h", 3, [ep()])
    backend.on_datagram(data, "10.0.0.1")
    now[0] = 102.9
    backend.expire()
    assert "web.lan" in backend.snapshot().services
    now[0] = 103.0
    backend.expire()
    assert backend.snapshot().services == {} and backend.stats["expired"] == 1
