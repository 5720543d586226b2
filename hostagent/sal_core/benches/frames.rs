//! SAL frame encode+decode throughput. `cargo bench -p sal_core --bench frames`
//! prints a plain-text table; each row runs for about 1.5 s.
//!
//! - data rows: encode a DATA frame (DATA SEQUENCE + ACKNOWLEDGEMENT + payload)
//!   into a reused `Vec` (this copies the payload), then decode it (the
//!   payload is borrowed) and read its length. GB/s counts payload bytes.
//!   Target >= 1 GB/s.
//! - control row: encode+decode an RSYN-sized CONTROL frame (CONTROL, ACK,
//!   ADDRESS LIST, MAC with a precomputed tag). Target >= 1 M frames/s (ours).
//! - MAC row (information): HMAC-SHA-256 sign+verify of that frame.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sal_core::flow::{Direction, FlowKey};
use sal_core::wire::{
    self, ctl, Ack, AddrList, Control, Extensions, Frame, FrameType, Header, Mac, OwnedFrame,
};

const ROW_TIME: Duration = Duration::from_millis(1500);

/// Runs `op` in batches until `ROW_TIME` passes; returns (ops, seconds).
fn run(mut op: impl FnMut()) -> (u64, f64) {
    for _ in 0..1000 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROW_TIME {
        for _ in 0..256 {
            op();
        }
        n += 256;
    }
    (n, start.elapsed().as_secs_f64())
}

fn header(t: FrameType) -> Header {
    Header {
        frame_type: t,
        flags: 0,
        src_flow: 0x1111,
        dst_flow: 0x2222,
    }
}

fn data_row(size: usize) -> f64 {
    let payload = vec![0xa5u8; size];
    let frame = Frame {
        header: header(FrameType::Data),
        ext: Extensions {
            data_seq: Some(1 << 33),
            ack: Some(Ack {
                ack: 12345,
                window: 1 << 20,
            }),
            ..Default::default()
        },
        payload: &payload,
    };
    let mut buf = Vec::with_capacity(size + 128);
    let (n, secs) = run(|| {
        buf.clear();
        wire::encode(black_box(&frame), &mut buf).expect("encodes");
        let (f, used) = wire::decode(black_box(&buf)).expect("decodes");
        black_box((f.payload.len(), used));
    });
    (n as f64 * size as f64) / secs / 1e9
}

fn control_frame() -> OwnedFrame {
    let addrs = AddrList::new(&[
        "192.0.2.10:54325".parse().unwrap(),
        "[2001:db8::10]:54325".parse().unwrap(),
    ])
    .unwrap();
    OwnedFrame {
        header: header(FrameType::Control),
        ext: Extensions {
            control: Some(Control {
                flags: ctl::RSYN,
                seq: 7,
                ack: 9,
                nonce: 0,
            }),
            ack: Some(Ack {
                ack: 1 << 30,
                window: 1 << 20,
            }),
            addrs: Some(addrs),
            mac: Some(Mac {
                counter: 3,
                tag: [0x5a; 16],
            }),
            ..Default::default()
        },
        payload: Vec::new(),
    }
}

fn control_row() -> f64 {
    let frame = control_frame();
    let mut buf = [0u8; 256];
    let (n, secs) = run(|| {
        let len = wire::encode_into(black_box(&frame.as_frame()), &mut buf).expect("encodes");
        let (f, used) = wire::decode(black_box(&buf[..len])).expect("decodes");
        black_box((f.ext.control, used));
    });
    n as f64 / secs
}

fn mac_row() -> f64 {
    let key = FlowKey::derive(1, 2, 3, 4);
    let mut frame = control_frame();
    let mut counter = 0;
    let (n, secs) = run(|| {
        counter += 1;
        key.sign(Direction::FromInitiator, &mut frame, counter);
        assert!(key.verify(Direction::FromInitiator, black_box(&frame.as_frame())));
    });
    n as f64 / secs
}

fn main() {
    // `cargo bench` passes "--bench"; other arguments are ignored.
    println!("SAL frame codec benchmark (release build, one thread)");
    println!("{:<42} {:>14} {:>14} {:>6}", "case", "result", "target", "");
    let mut all_pass = true;
    for (label, size) in [
        ("DATA 1 KiB encode+decode", 1024),
        ("DATA 16 KiB encode+decode", 16 * 1024),
        ("DATA 64 KiB encode+decode", 64 * 1024),
    ] {
        let gbs = data_row(size);
        let pass = gbs >= 1.0;
        all_pass &= pass;
        println!(
            "{label:<42} {:>9.2} GB/s {:>9} GB/s {:>6}",
            gbs,
            ">= 1.00",
            if pass { "PASS" } else { "FAIL" }
        );
    }
    let cps = control_row();
    let pass = cps >= 1e6;
    all_pass &= pass;
    println!(
        "{:<42} {:>9.2} M/s  {:>9} M/s  {:>6}",
        "CONTROL (RSYN-sized) encode+decode",
        cps / 1e6,
        ">= 1.00",
        if pass { "PASS" } else { "FAIL" }
    );
    println!(
        "{:<42} {:>9.3} M/s  {:>14} {:>6}",
        "MAC sign+verify (HMAC-SHA-256), info",
        mac_row() / 1e6,
        "-",
        ""
    );
    println!("overall: {}", if all_pass { "PASS" } else { "FAIL" });
}
