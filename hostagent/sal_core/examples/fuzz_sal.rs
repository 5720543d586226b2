//! Mutation fuzzer for the SAL frame parser and flow machine, on stable Rust.
//!
//! `cargo run --release -p sal_core --example fuzz_sal -- [--seconds N] [--seed S]`
//! (or `FUZZ_SECONDS` / `FUZZ_SEED`). Seeds a corpus with valid frames
//! (hand-built and captured from a simulated flow), then loops until the
//! time is up: pick an input, apply 1-4 mutations (bit flips, byte writes,
//! truncation, extension, splices, inserted TLVs, often a re-computed
//! checksum so mutations get past it), and check that
//! - decoding never panics,
//! - a frame that decodes re-encodes canonically and decodes to itself,
//! - the streaming decoder agrees with the one-shot decoder,
//! - feeding the frame to two established flows never panics.
//!
//! Interesting inputs (new error kinds or decoded frames) join the corpus.
//! Deterministic for a given seed; a failing input is written to
//! `target/fuzz-sal-crash.bin` and the process exits with status 1.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use sal_core::flow::{self, Config, Effect, Flow, SynInfo};
use sal_core::service_id::service_id;
use sal_core::wire::{
    self, ctl, Ack, AddrList, Control, Extensions, FrameType, Header, Mac, OwnedFrame, RstReason,
};

/// xorshift64*: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn args() -> (u64, u64) {
    let mut seconds = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        match w[0].as_str() {
            "--seconds" => seconds = w[1].parse().expect("--seconds N"),
            "--seed" => seed = w[1].parse().expect("--seed S"),
            _ => {}
        }
    }
    if seed == 0 {
        seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
    }
    (seconds, seed)
}

fn encode(f: &OwnedFrame) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(&f.as_frame(), &mut v).expect("seed frames are valid");
    v
}

/// Two established flows, and every frame they exchanged on the way.
fn flow_pair() -> (Flow, Flow, Vec<Vec<u8>>) {
    let sid = service_id("fuzz.serval").expect("name");
    let cfg = Config::datagram();
    let mut a = Flow::connect(cfg, sid, 0xA, 0x1, 0);
    let mut frames = Vec::new();
    let syn = match a.take_effects().remove(0) {
        Effect::Send(f) => f,
        other => panic!("expected a SYN, got {other:?}"),
    };
    frames.push(encode(&syn));
    let info = SynInfo::parse(&syn.as_frame()).expect("SYN");
    let mut b = flow::accept(cfg, &info, 0xB, 0x2, 0);
    a.write(&[7u8; 3000], 0);
    b.write(&[9u8; 500], 0);
    for _ in 0..10 {
        exchange(&mut b, &mut a, &mut frames);
        exchange(&mut a, &mut b, &mut frames);
    }
    a.close(1);
    b.resync(1);
    for from in [&mut a, &mut b] {
        for e in from.take_effects() {
            if let Effect::Send(f) = e {
                frames.push(encode(&f));
            }
        }
    }
    (a, b, frames)
}

/// Delivers `from`'s frames to `to`, recording them.
fn exchange(from: &mut Flow, to: &mut Flow, frames: &mut Vec<Vec<u8>>) {
    for e in from.take_effects() {
        if let Effect::Send(f) = e {
            let bytes = encode(&f);
            to.on_frame(&wire::decode_datagram(&bytes).expect("own frame"), 0);
            frames.push(bytes);
        }
    }
}

fn hand_built() -> Vec<Vec<u8>> {
    let h = |t| Header {
        frame_type: t,
        flags: 0,
        src_flow: 1,
        dst_flow: 2,
    };
    let addrs =
        AddrList::new(&["10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()]).unwrap();
    let full = Extensions {
        control: Some(Control {
            flags: ctl::RSYN | ctl::FIN,
            seq: 3,
            ack: 4,
            nonce: 5,
        }),
        service: Some(service_id("a.b").unwrap()),
        data_seq: Some(6),
        ack: Some(Ack { ack: 7, window: 8 }),
        addrs: Some(addrs),
        mac: Some(Mac {
            counter: 9,
            tag: [1; 16],
        }),
        rst_reason: Some(RstReason::Timeout),
    };
    vec![
        encode(&OwnedFrame {
            header: h(FrameType::Control),
            ext: full,
            payload: vec![],
        }),
        encode(&OwnedFrame {
            header: h(FrameType::Data),
            ext: Extensions {
                data_seq: Some(1),
                ..Default::default()
            },
            payload: b"payload".to_vec(),
        }),
        encode(&OwnedFrame {
            header: h(FrameType::Ack),
            ext: Extensions {
                ack: Some(Ack::default()),
                ..Default::default()
            },
            payload: vec![],
        }),
    ]
}

fn fix_crc(v: &mut [u8]) {
    if v.len() >= 28 {
        let hlen = (usize::from(v[3]) * 4).clamp(28, v.len());
        let crc = wire::header::header_checksum(&v[..hlen]);
        v[24..28].copy_from_slice(&crc.to_be_bytes());
    }
}

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len().min(128));
                v[i] = [0, 0xff, 0x80, 0x7f, 1, 4][rng.below(6)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => v.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            5 if v.len() >= 28 => {
                // Insert a TLV at the start of the extension area and fix the lengths.
                let t = rng.next() as u8;
                let len = 4 * (1 + rng.below(6));
                let mut tlv = vec![t, len as u8];
                tlv.extend((2..len).map(|_| rng.next() as u8));
                v.splice(28..28, tlv);
                v[3] = v[3].wrapping_add((len / 4) as u8);
                let total = v.len() as u32;
                v[4..8].copy_from_slice(&total.to_be_bytes());
            }
            6 if v.len() >= 8 => {
                let total = v.len() as u32 ^ (rng.below(3) as u32);
                v[4..8].copy_from_slice(&total.to_be_bytes());
            }
            7 if v.len() >= 40 => {
                // Overwrite a field-sized run with interesting values.
                let i = 28 + rng.below(v.len() - 36);
                v[i..i + 8].copy_from_slice(
                    &[0u64, u64::MAX, 1 << 63, rng.next()][rng.below(4)].to_be_bytes(),
                );
            }
            _ => {}
        }
    }
    if rng.below(4) != 0 {
        fix_crc(&mut v);
    }
    v
}

/// The invariants; returns a coverage key for the corpus.
fn check(bytes: &[u8], a: &mut Flow, b: &mut Flow, now: u64) -> String {
    match wire::decode(bytes) {
        Ok((f, used)) => {
            assert!(used <= bytes.len());
            let mut v = Vec::new();
            let n = wire::encode(&f, &mut v).expect("decoded frame re-encodes");
            assert!(n <= used);
            let (g, m) = wire::decode(&v).expect("re-encoding decodes");
            assert_eq!((g, m), (f, n));
            assert!(
                matches!(wire::decode_stream(bytes), Ok(wire::Decoded::Frame(_, u)) if u == used)
            );
            a.on_frame(&f, now);
            b.on_frame(&f, now);
            let _ = (a.take_effects(), b.take_effects());
            format!(
                "ok:{:?}:{:?}",
                f.header.frame_type,
                f.ext.present().collect::<Vec<_>>()
            )
        }
        Err(e) => {
            let _ = e.to_string();
            if !matches!(e, wire::WireError::Truncated { .. }) {
                assert!(
                    wire::decode_stream(bytes).is_err(),
                    "stream decoder disagrees on {e:?}"
                );
            }
            format!("err:{:?}", std::mem::discriminant(&e))
        }
    }
}

fn main() {
    let (seconds, seed) = args();
    println!("fuzz_sal: seed {seed}, {seconds} s (repeat with --seed {seed})");
    let (mut a, mut b, captured) = flow_pair();
    let mut corpus = hand_built();
    corpus.extend(captured);
    let seeds = corpus.len();
    let mut rng = Rng(seed);
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut execs, mut decoded, mut now) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            let pick = rng.below(corpus.len());
            let input = mutate(&mut rng, &corpus[pick], &corpus);
            now += rng.below(50) as u64;
            let result =
                panic::catch_unwind(AssertUnwindSafe(|| check(&input, &mut a, &mut b, now)));
            execs += 1;
            match result {
                Ok(key) => {
                    decoded += u64::from(key.starts_with("ok"));
                    if seen.insert(key) && corpus.len() < 4096 {
                        corpus.push(input);
                    }
                }
                Err(_) => {
                    let _ = std::fs::create_dir_all("target");
                    let _ = std::fs::write("target/fuzz-sal-crash.bin", &input);
                    eprintln!("fuzz_sal: FAILED after {execs} inputs (seed {seed}); input in target/fuzz-sal-crash.bin");
                    std::process::exit(1);
                }
            }
        }
        if a.state() == flow::State::Closed || b.state() == flow::State::Closed {
            let (na, nb, _) = flow_pair();
            (a, b) = (na, nb);
        }
    }
    println!(
        "fuzz_sal: OK: {execs} inputs ({:.0}/s), {decoded} decoded as frames, {} coverage keys, corpus {} ({} seeds)",
        execs as f64 / seconds.max(1) as f64,
        seen.len(),
        corpus.len(),
        seeds
    );
}
