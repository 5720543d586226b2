"""The static back-end's file format: what parses, and what each error says."""

from __future__ import annotations

import pytest

from resolver.backends.static import StaticError, parse

GOOD = """
[[service]]
name = "Web.Shop.Example."

[[service.instance]]
id = "web-2"
addresses = ["10.0.0.6"]
port = 8080
weight = 0
tier = 2
zone = "a"
region = "eu"
metadata = { "serval.sal_port" = "7946" }

[[service.instance]]
id = "web-1"
addresses = ["10.0.0.5", "fd00:0::5"]
port = 8080

[[service]]
name = "empty.example"
"""


def test_good_file() -> None:
    services = parse(GOOD, "static")
    assert list(services) == ["empty.example", "web.shop.example"]
    assert services["empty.example"] == ()
    web1, web2 = services["web.shop.example"]
    assert (web1.instance_id, web1.addresses, web1.port, web1.weight, web1.tier) == (
        "web-1",
        ("10.0.0.5", "fd00::5"),
        8080,
        100,
        0,
    )
    assert (web2.weight, web2.tier, web2.zone, web2.region) == (0, 2, "a", "eu")
    assert web2.metadata == {"serval.sal_port": "7946"}
    assert {web1.source, web2.source} == {"static"}


def test_empty_file_is_no_services() -> None:
    assert parse("") == {}


def _one(**fields: str) -> str:
    instance = {"id": '"i1"', "addresses": '["10.0.0.1"]', "port": "80"} | fields
    body = "\n".join(f"{k} = {v}" for k, v in instance.items() if v != "")
    return f'[[service]]\nname = "svc.example"\n[[service.instance]]\n{body}\n'


BAD = [
    ("syntax", "[[service]\nname = 1", "TOML syntax"),
    ("unknown top-level", "foo = 1", "unknown top-level"),
    ("service not a table array", "service = 3", "array of tables"),
    ("name missing", "[[service]]\n", "'name'"),
    ("invalid name", '[[service]]\nname = "bad_name.example"', "may hold only"),
    ("unknown service key", '[[service]]\nname = "a"\nport = 1', "unknown keys"),
    ("twice", '[[service]]\nname = "a"\n[[service]]\nname = "A."', "listed twice"),
    ("bad address", _one(addresses='["10.0.0.300"]'), "not an IPv4 or IPv6"),
    ("no address", _one(addresses="[]"), "at least one address"),
    ("address not a string", _one(addresses="[1]"), "must be strings"),
    ("port range", _one(port="70000"), "outside 1..65535"),
    ("port type", _one(port='"80"'), "'port' must be a int"),
    ("port missing", _one(port=""), "'port' is required"),
    ("weight range", _one(weight="20000"), "weight 20000"),
    ("weight bool", _one(weight="true"), "'weight' must be a int"),
    ("tier range", _one(tier="16"), "tier 16"),
    ("bad id", _one(id='"a b"'), "instance_id"),
    ("metadata type", _one(metadata="{ k = 1 }"), "table of strings"),
    ("unknown instance key", _one(ttl="5"), "unknown keys"),
    (
        "duplicate id",
        _one() + '[[service.instance]]\nid = "i1"\naddresses = ["10.0.0.2"]\nport = 1\n',
        "twice",
    ),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files(text: str, message: str) -> None:
    with pytest.raises(StaticError, match=message):
        parse(text)
