"""Table tests of the etcd key schema (`registry.raft.keys`) and record codec (`registry.raft.records`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from registry.model import Instance
from registry.raft import records
from registry.raft.keys import BadKey, KeySchema, range_end

# -- keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "service", "instance_id", "key"),
    [
        ("/serval", "payments.prod.acme", "i-1", b"/serval/inst/payments.prod.acme/i-1"),
        ("/t-1234", "a", "10.0.0.1:80", b"/t-1234/inst/a/10.0.0.1:80"),
        ("/x/y", "web", "A_b.c-D", b"/x/y/inst/web/A_b.c-D"),
    ],
)
def test_instance_key_round_trips(prefix: str, service: str, instance_id: str, key: bytes) -> None:
    schema = KeySchema(prefix)
    assert schema.instance_key(service, instance_id) == key
    assert schema.parse_instance_key(key) == (service, instance_id)
    assert key.startswith(schema.instances_prefix)
    assert key.startswith(schema.service_prefix(service))


def test_claim_key_is_outside_the_instance_range() -> None:
    schema = KeySchema()
    key = schema.claim_key("ab" * 32)
    assert key == b"/serval/sid/" + b"ab" * 32
    assert not key.startswith(schema.instances_prefix)
    assert key.startswith(schema.claims_prefix)


@pytest.mark.parametrize(
    "key",
    [
        b"/other/inst/svc/i-1",  # another prefix
        b"/serval/sid/abcd",  # a claim, not an instance
        b"/serval/inst/svc",  # no instance ID
        b"/serval/inst/svc/",  # empty instance ID
        b"/serval/inst//i-1",  # empty service
        b"/serval/inst/svc/i-1/extra",  # too many parts
        b"/serval/inst/sv\xc3\xa9/i-1",  # not ASCII
    ],
)
def test_parse_instance_key_rejects(key: bytes) -> None:
    with pytest.raises(BadKey):
        KeySchema().parse_instance_key(key)


@pytest.mark.parametrize("prefix", ["", "serval", "/serval/", "/", "/a//b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        KeySchema(prefix)


def test_prefixes_do_not_overlap() -> None:
    a, b = KeySchema("/t-a"), KeySchema("/t-ab")
    assert not b.instance_key("s", "i").startswith(a.instances_prefix)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/serval/inst/", b"/serval/inst0"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_range_end(prefix: bytes, end: bytes) -> None:
    assert range_end(prefix) == end


# -- records ------------------------------------------------------------------

_MINIMAL = Instance(service="web", instance_id="i-1", addresses=("10.0.0.1",), port=80)
_FULL = Instance(
    service="payments.prod.acme",
    instance_id="host-7:8443",
    addresses=("10.0.0.7", "2001:db8::7"),
    port=8443,
    weight=0,
    tier=3,
    region="eu-west",
    zone="eu-west-1a",
    metadata={"version": "1.2.3", "team/owner": "payments"},
    ttl_seconds=30,
    drained=True,
    drained_weight=250,
)


@pytest.mark.parametrize("instance", [_MINIMAL, _FULL], ids=["minimal", "full"])
def test_record_round_trips_with_store_fields_from_etcd(instance: Instance) -> None:
    value = records.encode_instance(instance)
    decoded = records.decode_instance(
        instance.service, instance.instance_id, value, lease_id=42, create_revision=7, mod_revision=9
    )
    assert decoded.lease_id == 42 and decoded.create_revision == 7 and decoded.mod_revision == 9
    assert decoded == replace(instance, lease_id=42, create_revision=7, mod_revision=9)


def test_record_is_compact_and_leaves_defaults_and_store_fields_out() -> None:
    with_store_fields = replace(_MINIMAL, lease_id=5, mod_revision=8)
    assert records.encode_instance(with_store_fields) == (
        b'{"addrs":["10.0.0.1"],"port":80,"ttl":10,"v":1,"weight":100}'
    )


def test_encoding_is_deterministic() -> None:
    reordered = replace(_FULL, metadata=dict(reversed(list(_FULL.metadata.items()))))
    assert records.encode_instance(reordered) == records.encode_instance(_FULL)


def test_v1_readers_ignore_unknown_fields() -> None:
    value = b'{"v":1,"addrs":["10.0.0.1"],"port":80,"ttl":10,"future":{"x":1}}'
    assert records.decode_instance("web", "i-1", value) == _MINIMAL


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (b"", records.RecordError, "not JSON"),
        (b"garbage", records.RecordError, "not JSON"),
        (b"\xff\xfe", records.RecordError, "not JSON"),
        (b"[1, 2]", records.RecordError, "JSON list"),
        (b"{}", records.UnknownVersion, "version None"),
        (b'{"v":"1"}', records.UnknownVersion, "version '1'"),
        (b'{"v":true}', records.UnknownVersion, "version True"),
        (b'{"v":2,"addrs":[]}', records.UnknownVersion, "version 2 is unknown"),
        (b'{"v":1}', records.RecordError, "'addrs' is missing"),
        (b'{"v":1,"addrs":"10.0.0.1","port":80,"ttl":10}', records.RecordError, "'addrs' is str"),
        (b'{"v":1,"addrs":[1],"port":80,"ttl":10}', records.RecordError, "list of strings"),
        (b'{"v":1,"addrs":[],"port":"80","ttl":10}', records.RecordError, "'port' is str"),
        (b'{"v":1,"addrs":[],"port":80}', records.RecordError, "'ttl' is missing"),
        (b'{"v":1,"addrs":[],"port":80,"ttl":10,"weight":true}', records.RecordError, "'weight' is bool"),
        (b'{"v":1,"addrs":[],"port":80,"ttl":10,"drained":1}', records.RecordError, "'drained' is int"),
        (b'{"v":1,"addrs":[],"port":80,"ttl":10,"meta":{"a":1}}', records.RecordError, "'meta' must map"),
    ],
)
def test_bad_records_raise_typed_errors(value: bytes, error: type[records.RecordError], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        records.decode_instance("web", "i-1", value)
    assert isinstance(info.value, records.RecordError)


def test_one_decoder_per_version() -> None:
    assert set(records.DECODERS) == {records.RECORD_VERSION} == {1}
