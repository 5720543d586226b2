//! Unit and property tests of the wire format.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::service_id::ServiceId;

fn header(t: FrameType) -> Header {
    Header {
        frame_type: t,
        flags: 0,
        src_flow: 0x0102_0304_0506_0708,
        dst_flow: 0x1112_1314_1516_1718,
    }
}

fn sid() -> ServiceId {
    ServiceId {
        bytes: [0xab; 32],
        prefix_bits: 96,
    }
}

fn addrs() -> AddrList {
    let list: Vec<SocketAddr> = vec![
        "192.0.2.1:54325".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    ];
    AddrList::new(&list).unwrap()
}

fn data_frame(payload: &[u8]) -> Frame<'_> {
    Frame {
        header: header(FrameType::Data),
        ext: Extensions {
            data_seq: Some(1 << 40),
            ack: Some(Ack {
                ack: 77,
                window: 65536,
            }),
            ..Default::default()
        },
        payload,
    }
}

fn control(flags: u8) -> Extensions {
    Extensions {
        control: Some(Control {
            flags,
            seq: 7,
            ack: 9,
            nonce: 0xdead_beef,
        }),
        ..Default::default()
    }
}

fn roundtrip(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    let n = encode(f, &mut v).unwrap();
    assert_eq!(n, v.len());
    assert_eq!(encoded_len(f).unwrap(), n);
    let mut slice = vec![0u8; n];
    assert_eq!(encode_into(f, &mut slice).unwrap(), n);
    assert_eq!(slice, v);
    let mut head = Vec::new();
    let h = encode_head(f, &mut head).unwrap();
    assert_eq!(
        (h, &head[..]),
        (n - f.payload.len(), &v[..h]),
        "head + payload = encode"
    );
    let (g, used) = decode(&v).unwrap();
    assert_eq!(used, n);
    assert_eq!(&g, f);
    assert_eq!(decode_datagram(&v).unwrap(), *f);
    v
}

#[test]
fn every_frame_type_and_extension_roundtrips() {
    let ack = Some(Ack {
        ack: u64::MAX,
        window: u32::MAX,
    });
    let mac = Some(Mac {
        counter: 3,
        tag: [0x5a; 16],
    });
    let cases: Vec<(&str, Frame<'_>)> = vec![
        ("data", data_frame(b"hello")),
        ("data empty", data_frame(b"")),
        (
            "ack",
            Frame {
                header: header(FrameType::Ack),
                ext: Extensions {
                    ack,
                    ..Default::default()
                },
                payload: &[],
            },
        ),
        ("syn", {
            let mut ext = control(ctl::SYN);
            ext.service = Some(sid());
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
        ("syn-ack", {
            let mut ext = control(ctl::SYN | ctl::ACK);
            ext.ack = ack;
            ext.mac = mac;
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
        ("rsyn with addresses", {
            let mut ext = control(ctl::RSYN);
            ext.ack = ack;
            ext.mac = mac;
            ext.addrs = Some(addrs());
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
        ("fin", {
            let mut ext = control(ctl::FIN | ctl::ACK);
            ext.data_seq = Some(12345);
            ext.mac = mac;
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
        ("rst", {
            let mut ext = control(ctl::RST);
            ext.rst_reason = Some(RstReason::Other(999));
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
        ("max payload", data_frame(&[7u8; MAX_PAYLOAD])),
        ("empty address list", {
            let mut ext = control(ctl::ACK);
            ext.addrs = Some(AddrList::new(&[]).unwrap());
            Frame {
                header: header(FrameType::Control),
                ext,
                payload: &[],
            }
        }),
    ];
    for (name, f) in cases {
        let bytes = roundtrip(&f);
        assert_eq!(
            bytes.len() % 4,
            f.payload.len() % 4,
            "{name}: header not aligned"
        );
    }
}

#[test]
fn rst_reason_codes_roundtrip() {
    for c in 0..10u16 {
        assert_eq!(RstReason::from_code(c).code(), c);
    }
}

fn encoded(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode(f, &mut v).unwrap();
    v
}

/// Recomputes the checksum after a test edited header or extension bytes.
fn fix_crc(v: &mut [u8]) {
    let hlen = usize::from(v[3]) * 4;
    let crc = header::header_checksum(&v[..hlen]);
    v[24..28].copy_from_slice(&crc.to_be_bytes());
}

/// Appends a raw extension to an encoded frame and fixes lengths and CRC.
fn with_raw_ext(f: &Frame<'_>, raw: &[u8]) -> Vec<u8> {
    let v = encoded(f);
    let hlen = usize::from(v[3]) * 4;
    let mut out = v[..hlen].to_vec();
    out.extend_from_slice(raw);
    out.extend_from_slice(&v[hlen..]);
    out[3] = (out[3] as usize + raw.len() / 4) as u8;
    let total = out.len() as u32;
    out[4..8].copy_from_slice(&total.to_be_bytes());
    fix_crc(&mut out);
    out
}

#[test]
fn malformed_inputs_give_typed_errors() {
    let good = encoded(&data_frame(b"abcd"));
    let ack_only = Frame {
        header: header(FrameType::Ack),
        ext: Extensions {
            ack: Some(Ack::default()),
            ..Default::default()
        },
        payload: &[],
    };
    let mutate = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        edit(&mut v);
        v
    };
    let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
        ("empty", vec![], WireError::Truncated { need: 8, have: 0 }),
        (
            "short",
            good[..20].to_vec(),
            WireError::Truncated {
                need: good.len(),
                have: 20,
            },
        ),
        ("version", mutate(&|v| v[0] = 2), WireError::BadVersion(2)),
        (
            "hlen too small",
            mutate(&|v| v[3] = 6),
            WireError::BadLength {
                header_len: 24,
                total_len: good.len(),
            },
        ),
        (
            "total below hlen",
            mutate(&|v| v[4..8].copy_from_slice(&10u32.to_be_bytes())),
            WireError::BadLength {
                header_len: 56,
                total_len: 10,
            },
        ),
        (
            "frame type",
            mutate(&|v| {
                v[1] = 9;
                fix_crc(v)
            }),
            WireError::BadFrameType(9),
        ),
        ("checksum", mutate(&|v| v[9] ^= 1), {
            let mut v = good.clone();
            v[9] ^= 1;
            let hlen = usize::from(v[3]) * 4;
            WireError::BadChecksum {
                expected: u32::from_be_bytes([v[24], v[25], v[26], v[27]]),
                actual: header::header_checksum(&v[..hlen]),
            }
        }),
        (
            "unknown critical",
            with_raw_ext(&data_frame(b"x"), &[0xC0, 4, 0, 0]),
            WireError::UnknownCritical(0xC0),
        ),
        (
            "extension length 0",
            with_raw_ext(&data_frame(b"x"), &[0x40, 0, 0, 0]),
            WireError::ExtensionTooLong {
                ext_type: 0x40,
                len: 0,
            },
        ),
        (
            "extension length unaligned",
            with_raw_ext(&data_frame(b"x"), &[0x40, 6, 0, 0]),
            WireError::ExtensionTooLong {
                ext_type: 0x40,
                len: 6,
            },
        ),
        (
            "extension past area",
            with_raw_ext(&data_frame(b"x"), &[0x40, 8, 0, 0]),
            WireError::ExtensionTooLong {
                ext_type: 0x40,
                len: 8,
            },
        ),
        (
            "duplicate",
            with_raw_ext(&data_frame(b"x"), &[0x83, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            WireError::DuplicateExtension(ext_type::DATA_SEQ),
        ),
        (
            "known with bad length",
            with_raw_ext(&ack_only, &[0x07, 8, 0, 1, 0, 0, 0, 0]),
            WireError::BadExtension(ext_type::RST_REASON),
        ),
        (
            "too many",
            with_raw_ext(&data_frame(b"x"), &[0x40, 4, 0, 0].repeat(MAX_EXTENSIONS)),
            WireError::TooManyExtensions,
        ),
        (
            "service prefix over 256",
            with_raw_ext(&ack_only, &{
                let mut e = vec![0x82, 36, 1, 1];
                e.extend([0; 32]);
                e
            }),
            WireError::BadExtension(ext_type::SERVICE_ID),
        ),
        (
            "address list count over limit",
            with_raw_ext(&ack_only, &[0x05, 4, 9, 0]),
            WireError::TooManyAddresses(9),
        ),
        (
            "address list bad family",
            with_raw_ext(&ack_only, &[0x05, 12, 1, 0, 5, 0, 0, 80, 1, 2, 3, 4]),
            WireError::BadExtension(ext_type::ADDRESS_LIST),
        ),
        (
            "address list short entry",
            with_raw_ext(&ack_only, &[0x05, 12, 1, 0, 6, 0, 0, 80, 1, 2, 3, 4]),
            WireError::BadExtension(ext_type::ADDRESS_LIST),
        ),
        (
            "address list trailing bytes",
            with_raw_ext(&ack_only, &[0x05, 12, 0, 0, 4, 0, 0, 80, 1, 2, 3, 4]),
            WireError::BadExtension(ext_type::ADDRESS_LIST),
        ),
        (
            "payload on ack frame",
            {
                let mut v = encoded(&ack_only);
                v.extend_from_slice(b"zz");
                let total = v.len() as u32;
                v[4..8].copy_from_slice(&total.to_be_bytes());
                fix_crc(&mut v);
                v
            },
            WireError::BadPayload { len: 2 },
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(decode(&bytes).map(|_| ()), Err(want), "{name}");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn bad_prefix_in_service_id_is_rejected() {
    let mut ext = control(ctl::SYN);
    ext.service = Some(sid());
    let f = Frame {
        header: header(FrameType::Control),
        ext,
        payload: &[],
    };
    let mut v = encoded(&f);
    // SERVICE follows CONTROL (28 + 20): prefix field at +2.
    v[48 + 2..48 + 4].copy_from_slice(&257u16.to_be_bytes());
    fix_crc(&mut v);
    assert_eq!(
        decode(&v),
        Err(WireError::BadExtension(ext_type::SERVICE_ID))
    );
}

#[test]
fn unknown_non_critical_extensions_are_skipped() {
    let f = data_frame(b"payload");
    let v = with_raw_ext(&f, &[0x40, 8, 1, 2, 3, 4, 5, 6]);
    let (g, used) = decode(&v).unwrap();
    assert_eq!(used, v.len());
    assert_eq!(g, f);
}

#[test]
fn encoder_refuses_invalid_frames() {
    let mut f = data_frame(b"x");
    f.ext.control = Some(Control::default());
    assert_eq!(
        encoded_len(&f),
        Err(WireError::UnexpectedExtension(ext_type::CONTROL))
    );
    let f = Frame {
        header: header(FrameType::Control),
        ext: Extensions::default(),
        payload: &[],
    };
    assert_eq!(
        encoded_len(&f),
        Err(WireError::MissingExtension(ext_type::CONTROL))
    );
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert_eq!(
        encoded_len(&data_frame(&big)),
        Err(WireError::BadPayload {
            len: MAX_PAYLOAD + 1
        })
    );
    let f = data_frame(b"abc");
    let mut small = [0u8; 10];
    assert!(matches!(
        encode_into(&f, &mut small),
        Err(WireError::BufferTooSmall { .. })
    ));
    let mut ext = control(ctl::SYN);
    ext.service = Some(ServiceId {
        bytes: [0; 32],
        prefix_bits: 300,
    });
    let f = Frame {
        header: header(FrameType::Control),
        ext,
        payload: &[],
    };
    assert_eq!(
        encode(&f, &mut Vec::new()),
        Err(WireError::BadExtension(ext_type::SERVICE_ID))
    );
    let many: Vec<SocketAddr> = (0..9)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
        .collect();
    assert_eq!(AddrList::new(&many), Err(WireError::TooManyAddresses(9)));
}

#[test]
fn stream_decoding_is_incremental() {
    let mut stream = Vec::new();
    let frames = [
        data_frame(b"one"),
        data_frame(b"two, longer"),
        data_frame(b""),
    ];
    for f in &frames {
        encode(f, &mut stream).unwrap();
    }
    // Feed byte by byte: NeedMore until each frame is complete.
    let mut buf: Vec<u8> = Vec::new();
    let mut got = Vec::new();
    for &b in &stream {
        buf.push(b);
        loop {
            match decode_stream(&buf).unwrap() {
                Decoded::NeedMore(n) => {
                    assert!(n > buf.len());
                    break;
                }
                Decoded::Frame(f, used) => {
                    got.push(f.to_owned_frame());
                    buf.drain(..used);
                }
            }
        }
    }
    assert!(buf.is_empty());
    let want: Vec<OwnedFrame> = frames.iter().map(Frame::to_owned_frame).collect();
    assert_eq!(got, want);
    assert_eq!(decode_stream(&[9]), Err(WireError::BadVersion(9)));
}

#[test]
fn datagram_must_hold_exactly_one_frame() {
    let mut v = encoded(&data_frame(b"abc"));
    v.push(0);
    assert_eq!(
        decode_datagram(&v),
        Err(WireError::LengthMismatch {
            header: v.len() - 1,
            datagram: v.len()
        })
    );
}

// ---- property tests ----

fn arb_ack() -> impl Strategy<Value = Ack> {
    (any::<u64>(), any::<u32>()).prop_map(|(ack, window)| Ack { ack, window })
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn arb_control_ext() -> impl Strategy<Value = Extensions> {
    (
        (any::<u8>(), any::<u32>(), any::<u32>(), any::<u64>()),
        proptest::option::of((any::<[u8; 32]>(), 0u32..=256)),
        proptest::option::of(any::<u64>()),
        proptest::option::of(arb_ack()),
        proptest::option::of(proptest::collection::vec(arb_addr(), 0..=MAX_ADDRESSES)),
        proptest::option::of((any::<u64>(), any::<[u8; 16]>())),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(
            |((flags, seq, ack, nonce), svc, ds, a, addrs, mac, rst)| Extensions {
                control: Some(Control {
                    flags,
                    seq,
                    ack,
                    nonce,
                }),
                service: svc.map(|(bytes, prefix_bits)| ServiceId { bytes, prefix_bits }),
                data_seq: ds,
                ack: a,
                addrs: addrs.map(|l| AddrList::new(&l).unwrap()),
                mac: mac.map(|(counter, tag)| Mac { counter, tag }),
                rst_reason: rst.map(RstReason::from_code),
            },
        )
}

/// (header, extensions, payload) of an arbitrary valid frame.
fn arb_frame() -> impl Strategy<Value = (Header, Extensions, Vec<u8>)> {
    let hdr = (any::<u8>(), any::<u64>(), any::<u64>());
    prop_oneof![
        (
            hdr,
            any::<u64>(),
            proptest::option::of(arb_ack()),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|((flags, s, d), seq, ack, p)| (
                Header {
                    frame_type: FrameType::Data,
                    flags,
                    src_flow: s,
                    dst_flow: d
                },
                Extensions {
                    data_seq: Some(seq),
                    ack,
                    ..Default::default()
                },
                p
            )),
        (hdr, arb_ack()).prop_map(|((flags, s, d), a)| (
            Header {
                frame_type: FrameType::Ack,
                flags,
                src_flow: s,
                dst_flow: d
            },
            Extensions {
                ack: Some(a),
                ..Default::default()
            },
            Vec::new()
        )),
        (hdr, arb_control_ext()).prop_map(|((flags, s, d), ext)| (
            Header {
                frame_type: FrameType::Control,
                flags,
                src_flow: s,
                dst_flow: d
            },
            ext,
            Vec::new()
        )),
    ]
}

proptest! {
    #[test]
    fn prop_valid_frames_roundtrip((h, ext, payload) in arb_frame()) {
        let f = Frame { header: h, ext, payload: &payload };
        let mut v = Vec::new();
        encode(&f, &mut v).unwrap();
        let (g, used) = decode(&v).unwrap();
        prop_assert_eq!(used, v.len());
        prop_assert_eq!(g, f);
        // Every strict prefix asks for more bytes, never errors.
        for cut in [0, 1, 7, 8, 27, v.len() - 1] {
            if cut < v.len() {
                prop_assert!(matches!(decode_stream(&v[..cut]), Ok(Decoded::NeedMore(_))));
            }
        }
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_decode_invariants(&bytes);
    }

    #[test]
    fn prop_mutated_frames_never_panic(
        (h, ext, payload) in arb_frame(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        recrc in any::<bool>(),
    ) {
        let f = Frame { header: h, ext, payload: &payload };
        let mut v = Vec::new();
        encode(&f, &mut v).unwrap();
        for (at, x) in flips {
            let i = at % v.len();
            v[i] ^= x;
        }
        if recrc && v.len() >= 28 && usize::from(v[3]) * 4 <= v.len() && v[3] >= 7 {
            fix_crc(&mut v);
        }
        let cut = cut % (v.len() + 1);
        check_decode_invariants(&v);
        check_decode_invariants(&v[..cut]);
    }
}

/// Decoding never panics; a frame that decodes re-encodes to bytes that
/// decode to the same frame (no bigger than the input).
pub(crate) fn check_decode_invariants(bytes: &[u8]) {
    match decode(bytes) {
        Ok((f, used)) => {
            assert!(used <= bytes.len());
            let mut v = Vec::new();
            let n = encode(&f, &mut v).expect("a decoded frame re-encodes");
            assert!(n <= used, "canonical encoding is never longer");
            let (g, _) = decode(&v).expect("re-encoding decodes");
            assert_eq!(g, f);
            assert!(matches!(decode_stream(bytes), Ok(Decoded::Frame(_, u)) if u == used));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
