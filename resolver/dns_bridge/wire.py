"""DNS wire format: the minimal question parser of the fast path, and answer encoding with dnslib.

No I/O and no clock. `parse_query` reads the header and the one question (and an
optional OPT record) of an ordinary query by hand, in a few microseconds; anything
it does not recognise goes to `slow_answer`, which parses with dnslib and answers
FORMERR/NOTIMP/BADVERS where due. `prepare` encodes an `Answer` into every variant
the fast path may send (`Prepared`); `respond` picks one and patches it for a query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dnslib

from resolver.dns_bridge.zone import (
    AAAA,
    FORMERR,
    HINFO,
    NOTIMP,
    NS,
    OPT,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
    Record,
)

PLAIN_UDP_LIMIT = 512
TCP_LIMIT = 65535
BADVERS = 16


@dataclass(frozen=True, slots=True)
class Query:
    """An ordinary query as the fast path sees it. `key` is the lower-cased question name
    in wire form plus the type; `qend` the offset just after the question."""

    key: tuple[bytes, int]
    qend: int
    edns_size: int  # the client's UDP payload size; 0 without EDNS


def parse_query(packet: bytes) -> Query | None:
    """A standard query with one IN question and at most an OPT record (version 0), or
    None when the packet is anything else (the slow path decides)."""
    n = len(packet)
    if n < 17 or packet[2] & 0xF8 or packet[4:8] != b"\x00\x01\x00\x00" or packet[8:10] != b"\x00\x00":
        return None  # a response, an opcode other than QUERY, or not exactly one question
    arcount = packet[11] | packet[10] << 8
    if arcount > 1:
        return None
    i = 12
    while True:
        length = packet[i] if i < n else 0xFF
        if length == 0:
            break
        if length > 63 or i + length + 1 >= n:
            return None
        i += length + 1
    qname_end = i + 1
    if qname_end - 12 > 255 or qname_end + 4 > n or packet[qname_end + 2 : qname_end + 4] != b"\x00\x01":
        return None
    qtype = packet[qname_end] << 8 | packet[qname_end + 1]
    qend = qname_end + 4
    edns = 0
    if arcount:
        # root name, type OPT, class = payload size, ext-rcode, version 0, flags, rdlength
        if n < qend + 11 or packet[qend : qend + 3] != b"\x00\x00\x29" or packet[qend + 6] != 0:
            return None
        rdlen = packet[qend + 9] << 8 | packet[qend + 10]
        if qend + 11 + rdlen != n:
            return None
        edns = max(PLAIN_UDP_LIMIT, packet[qend + 3] << 8 | packet[qend + 4])
    elif qend != n:
        return None
    return Query((packet[12:qname_end].lower(), qtype), qend, edns)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One answer in every form the fast path sends: without and with OPT, each whole,
    without the additional section, and truncated (TC, question only). Sent with the
    query's ID, RD/CD bits and question bytes (0x20 case) patched in."""

    plain: tuple[bytes, bytes, bytes]
    edns: tuple[bytes, bytes, bytes]
    rcode: int


def prepare(answer: Answer, qname: str, qtype: int, edns_payload: int) -> Prepared:
    """Encode `answer` to the question (`qname` lower-case, as every variant is stored)."""
    return Prepared(
        _variants(answer, qname, qtype, None),
        _variants(answer, qname, qtype, edns_payload),
        answer.rcode,
    )


def respond(prepared: Prepared, packet: bytes, query: Query, limit: int) -> tuple[bytes, bool]:
    """The reply to `packet` (parsed as `query`) that fits `limit` bytes, and whether it is
    truncated. `limit` is the transport's: 512 / the EDNS size (capped) over UDP, 65535 TCP."""
    full, no_extra, truncated = prepared.edns if query.edns_size else prepared.plain
    body = full if len(full) <= limit else no_extra if len(no_extra) <= limit else truncated
    out = bytearray(body)
    out[0:2] = packet[0:2]
    out[2] |= packet[2] & 0x01  # RD
    out[3] |= packet[3] & 0x10  # CD
    out[12 : query.qend] = packet[12 : query.qend]  # the question as asked (0x20 case)
    return bytes(out), body is truncated


def _variants(answer: Answer, qname: str, qtype: int, edns_payload: int | None) -> tuple[bytes, bytes, bytes]:
    full = _record(answer, qname, qtype, edns_payload, additional=True, truncated=False).pack()
    no_extra = _record(answer, qname, qtype, edns_payload, additional=False, truncated=False).pack()
    tc = _record(answer, qname, qtype, edns_payload, additional=False, truncated=True).pack()
    return full, no_extra, tc


def _record(
    answer: Answer, qname: str, qtype: int, edns_payload: int | None, *, additional: bool, truncated: bool
) -> dnslib.DNSRecord:
    header = dnslib.DNSHeader(id=0, qr=1, aa=1, ra=0, rd=0, rcode=answer.rcode & 0xF, tc=int(truncated))
    reply = dnslib.DNSRecord(header, q=dnslib.DNSQuestion(qname, qtype))
    if not truncated:
        for r in answer.answer:
            reply.add_answer(_rr(r))
        for r in answer.authority:
            reply.add_auth(_rr(r))
        if additional:
            for r in answer.additional:
                reply.add_ar(_rr(r))
    if edns_payload is not None:
        reply.add_ar(dnslib.EDNS0(udp_len=edns_payload, ext_rcode=answer.rcode >> 4))
    return reply


_RDATA: dict[int, Callable[[object], dnslib.RD]] = {
    A: lambda d: dnslib.A(d),
    AAAA: lambda d: dnslib.AAAA(d),
    NS: lambda d: dnslib.NS(d),
    SRV: lambda d: dnslib.SRV(*d),  # type: ignore[misc]
    TXT: lambda d: dnslib.TXT([s.encode()[:255] for s in d]),  # type: ignore[attr-defined]
    SOA: lambda d: dnslib.SOA(d[0], d[1], d[2:]),  # type: ignore[index]
    HINFO: lambda d: dnslib.RD(b"".join(bytes([len(s)]) + s.encode() for s in d)),  # type: ignore[attr-defined]
}


def _rr(r: Record) -> dnslib.RR:
    return dnslib.RR(r.name, r.rtype, ttl=r.ttl, rdata=_RDATA[r.rtype](r.rdata))


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """A header-only reply with `rcode` (FORMERR, NOTIMP, REFUSED...) when the header
    parses (12 bytes), else None (the packet is dropped)."""
    if len(packet) < 12 or packet[2] & 0x80:
        return None  # too short to answer, or itself a response: never answer those
    flags = 0x80 | (packet[2] & 0x79)  # QR, opcode and RD as asked
    return packet[0:2] + bytes([flags, rcode & 0xF]) + b"\x00" * 8


def refused(packet: bytes, query: Query, rcode: int) -> bytes:
    """A reply with the question echoed and no records (REFUSED outside the zone)."""
    flags = 0x80 | (packet[2] & 0x01)
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if query.edns_size else b""
    counts = b"\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if opt else b"\x00\x00")
    return packet[0:2] + bytes([flags, rcode]) + counts + packet[12 : query.qend] + opt


@dataclass(frozen=True, slots=True)
class SlowQuery:
    """A query the slow path could parse: name as asked, lower-cased name, type."""

    record: dnslib.DNSRecord
    qname: str
    qtype: int
    edns_size: int  # 0 without EDNS


def parse_slow(packet: bytes) -> SlowQuery | bytes | None:
    """Parse with dnslib: a `SlowQuery`, an error reply (bytes) or None (drop)."""
    try:
        record = dnslib.DNSRecord.parse(packet)
    except Exception:  # dnslib raises many types on garbage; none may escape
        return error_reply(packet, FORMERR)
    h = record.header
    if h.qr:
        return None
    if h.opcode != 0:
        return error_reply(packet, NOTIMP)
    if len(record.questions) != 1:
        return error_reply(packet, FORMERR)
    opts = [r for r in record.ar if r.rtype == OPT]
    if len(opts) > 1:
        return error_reply(packet, FORMERR)
    edns = 0
    if opts:
        if (opts[0].ttl >> 16) & 0xFF != 0:  # EDNS version other than 0
            return _badvers(record)
        edns = max(PLAIN_UDP_LIMIT, opts[0].rclass)
    q = record.questions[0]
    return SlowQuery(record, str(q.qname), q.qtype, edns)


def _badvers(record: dnslib.DNSRecord) -> bytes:
    reply = record.reply(ra=0, aa=1)
    reply.ar = []
    reply.add_ar(dnslib.EDNS0(udp_len=1232, ext_rcode=BADVERS >> 4))
    return bytes(reply.pack())


def slow_reply(q: SlowQuery, answer: Answer, edns_payload: int, limit: int) -> tuple[bytes, bool]:
    """Encode `answer` for a slow-path query (ID, flags and question as asked; answer
    records at the question's name carry its case)."""
    payload = edns_payload if q.edns_size else None
    question = q.record.questions[0]
    for additional, truncated in ((True, False), (False, False), (False, True)):
        rec = _record(answer, ".", q.qtype, payload, additional=additional, truncated=truncated)
        rec.header.id = q.record.header.id
        rec.header.rd = q.record.header.rd
        rec.questions = [question]
        lower = q.qname.lower()
        for rr in rec.rr:
            if str(rr.rname) == lower:
                rr.rname = question.qname
        data = bytes(rec.pack())
        if len(data) <= limit or truncated:
            return data, truncated
    raise AssertionError("unreachable")
