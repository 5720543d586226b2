//! The example frames of `docs/sal-wire.md`: built here, hex-dumped, and
//! checked against the document so its dumps are always right. Run with
//! `SAL_PRINT_EXAMPLES=1 cargo test print_examples -- --nocapture` to
//! print them after a format change.

use std::net::SocketAddr;

use super::*;
use crate::flow::{self, Direction, FlowKey, SynInfo};
use crate::service_id::service_id;

const FLOW_C: u64 = 0x1111_1111_1111_1111;
const FLOW_S: u64 = 0x2222_2222_2222_2222;
const NONCE_C: u64 = 0x0102_0304_0506_0708;
const NONCE_S: u64 = 0x1112_1314_1516_1718;
const WINDOW: u32 = 1 << 20;

fn hdr(frame_type: FrameType, src_flow: u64, dst_flow: u64) -> Header {
    Header {
        frame_type,
        flags: 0,
        src_flow,
        dst_flow,
    }
}

fn ctl_ext(flags: u8, seq: u32, ack: u32, nonce: u64) -> Option<Control> {
    Some(Control {
        flags,
        seq,
        ack,
        nonce,
    })
}

fn window(ack: u64) -> Option<Ack> {
    Some(Ack {
        ack,
        window: WINDOW,
    })
}

/// (title, frame) of every example, in document order.
pub(crate) fn examples() -> Vec<(&'static str, OwnedFrame)> {
    let key = FlowKey::derive(NONCE_C, NONCE_S, FLOW_C, FLOW_S);
    let syn = OwnedFrame {
        header: hdr(FrameType::Control, FLOW_C, 0),
        ext: Extensions {
            control: ctl_ext(ctl::SYN, 0, 0, NONCE_C),
            service: Some(service_id("payments.prod.acme").expect("valid name")),
            ack: window(0),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    let mut syn_ack = OwnedFrame {
        header: hdr(FrameType::Control, FLOW_S, FLOW_C),
        ext: Extensions {
            control: ctl_ext(ctl::SYN | ctl::ACK, 0, 1, NONCE_S),
            ack: window(0),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    key.sign(Direction::FromAcceptor, &mut syn_ack, 1);
    let data = OwnedFrame {
        header: hdr(FrameType::Data, FLOW_C, FLOW_S),
        ext: Extensions {
            data_seq: Some(0),
            ack: window(0),
            ..Default::default()
        },
        payload: b"hello, serval".to_vec(),
    };
    let ack = OwnedFrame {
        header: hdr(FrameType::Ack, FLOW_S, FLOW_C),
        ext: Extensions {
            ack: Some(Ack {
                ack: 13,
                window: WINDOW - 13,
            }),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    let addrs: Vec<SocketAddr> = vec![
        "192.0.2.10:54325".parse().expect("addr"),
        "[2001:db8::10]:54325".parse().expect("addr"),
    ];
    let mut rsyn = OwnedFrame {
        header: hdr(FrameType::Control, FLOW_C, FLOW_S),
        ext: Extensions {
            control: ctl_ext(ctl::RSYN, 1, 1, 0),
            ack: window(0),
            addrs: Some(AddrList::new(&addrs).expect("two addresses")),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    key.sign(Direction::FromInitiator, &mut rsyn, 2);
    let info = SynInfo::parse(&syn.as_frame()).expect("a SYN");
    let rst = flow::refuse(&info, RstReason::NoService);
    vec![
        ("SYN", syn),
        ("SYN-ACK", syn_ack),
        ("DATA", data),
        ("ACK", ack),
        ("RSYN", rsyn),
        ("RST (refusal)", rst),
    ]
}

/// `0000  01 03 00 ...` lines of 16 bytes.
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{:04x}  {}\n", i * 16, hex.join(" ")));
    }
    out
}

fn encoded(f: &OwnedFrame) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&f.as_frame(), &mut v).expect("example encodes");
    v
}

const DOC: &str = include_str!("../../../../docs/sal-wire.md");

#[test]
fn doc_hex_dumps_match_the_encoder() {
    for (title, frame) in examples() {
        let bytes = encoded(&frame);
        let dump = hex_dump(&bytes);
        assert!(
            DOC.contains(&dump),
            "docs/sal-wire.md lacks the {title} dump:\n{dump}"
        );
        assert_eq!(
            decode_datagram(&bytes).expect("decodes").to_owned_frame(),
            frame
        );
    }
}

#[test]
fn example_macs_verify() {
    let key = FlowKey::derive(NONCE_C, NONCE_S, FLOW_C, FLOW_S);
    let ex = examples();
    assert!(key.verify(Direction::FromAcceptor, &ex[1].1.as_frame()));
    assert!(key.verify(Direction::FromInitiator, &ex[4].1.as_frame()));
    assert!(
        !key.verify(Direction::FromAcceptor, &ex[4].1.as_frame()),
        "direction is bound"
    );
}

#[test]
fn print_examples() {
    if std::env::var_os("SAL_PRINT_EXAMPLES").is_none() {
        return;
    }
    for (title, frame) in examples() {
        let bytes = encoded(&frame);
        println!(
            "### {title} ({} bytes)\n\n```text\n{}```\n",
            bytes.len(),
            hex_dump(&bytes)
        );
    }
}
