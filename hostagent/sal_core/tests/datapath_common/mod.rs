//! Helpers for the data-path tests: two (or more) real data paths on
//! 127.0.0.1 ephemeral ports, apps on Unix socketpairs, event waiting.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sal_core::datapath::{Datapath, DatapathConfig, Event};
use sal_core::service_id::{service_id, ServiceId};
use sal_core::table::{Rule, ServicePrefix, TableConfig, Target};
use sal_core::wire::{self, ctl, Ack, Control, Extensions, FrameType, Header, Mac, OwnedFrame};
use sha2::{Digest, Sha256};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn config() -> DatapathConfig {
    let mut c = DatapathConfig::default();
    c.flow.time_wait_ms = 200;
    c.flow.resync_timeout_ms = 10_000;
    c
}

pub fn start() -> Datapath {
    Datapath::start(config()).expect("data path starts")
}

pub fn sal(dp: &Datapath) -> SocketAddr {
    dp.sal_addresses()[0]
}

pub fn sid(name: &str) -> ServiceId {
    service_id(name).expect("valid name")
}

fn prefix(name: &str) -> ServicePrefix {
    let id = sid(name);
    ServicePrefix::new(id.bytes, id.prefix_bits).unwrap()
}

pub fn forward(name: &str, targets: &[(SocketAddr, u32)]) -> (ServicePrefix, Rule) {
    let targets = targets
        .iter()
        .map(|(a, tier)| Target::new(*a, 1, *tier))
        .collect();
    (prefix(name), Rule::Forward(targets))
}

pub fn demux(name: &str, listener: u64) -> (ServicePrefix, Rule) {
    (prefix(name), Rule::Demux(listener))
}

pub fn delay(name: &str) -> (ServicePrefix, Rule) {
    (prefix(name), Rule::Delay)
}

pub fn apply(dp: &Datapath, generation: u64, rules: Vec<(ServicePrefix, Rule)>) {
    dp.apply_table(TableConfig { generation, rules })
        .expect("table applies");
}

/// An app's socket and the end handed to the data path.
pub fn app_pair() -> (UnixStream, OwnedFd) {
    let (mine, theirs) = UnixStream::pair().unwrap();
    mine.set_read_timeout(Some(WAIT)).unwrap();
    (mine, OwnedFd::from(theirs))
}

/// The app side of an accepted flow.
pub fn app_of(fd: OwnedFd) -> UnixStream {
    let s = UnixStream::from(fd);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Events of one data path, with the ones not yet asked for kept aside.
pub struct Events<'a> {
    pub dp: &'a Datapath,
    pub seen: Vec<Event>,
}

impl<'a> Events<'a> {
    pub fn new(dp: &'a Datapath) -> Self {
        Events {
            dp,
            seen: Vec::new(),
        }
    }

    /// The first event (seen or new) matching `pred`, within `WAIT`.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.seen.iter().position(&pred) {
                return self.seen.remove(i);
            }
            assert!(Instant::now() < end, "no {what} event; saw {:?}", self.seen);
            let more = self.dp.poll_events(64, Duration::from_millis(50));
            self.seen.extend(more);
        }
    }

    pub fn drain(&mut self) {
        self.seen
            .extend(self.dp.poll_events(1024, Duration::from_millis(10)));
    }
}

pub fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected { .. })
}
pub fn is_accepted(e: &Event) -> bool {
    matches!(e, Event::Accepted { .. })
}

/// A deterministic pseudo-random byte pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Sends `data` then half-closes (in a thread).
pub fn send_all(mut s: UnixStream, data: Vec<u8>) -> std::thread::JoinHandle<UnixStream> {
    std::thread::spawn(move || {
        for chunk in data.chunks(100_000) {
            s.write_all(chunk).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s
    })
}

/// Reads to EOF (in a thread), counting progress; returns the SHA-256 and length.
pub fn read_all(
    mut s: UnixStream,
    progress: Arc<AtomicU64>,
) -> std::thread::JoinHandle<([u8; 32], usize)> {
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut total = 0;
        let mut buf = vec![0; 65536];
        loop {
            let n = s.read(&mut buf).expect("read within the timeout");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        (h.finalize().into(), total)
    })
}

/// A connected flow A → B for `name` (B listens as listener 1).
pub struct Pair {
    pub a: Datapath,
    pub b: Datapath,
    pub client: UnixStream,
    pub server: UnixStream,
    pub a_flow: u64,
    pub b_flow: u64,
}

pub fn connected_pair(name: &str) -> Pair {
    let a = start();
    let b = start();
    b.listen(1, None);
    apply(&b, 1, vec![demux(name, 1)]);
    apply(&a, 1, vec![forward(name, &[(sal(&b), 0)])]);
    let (client, fd) = app_pair();
    a.connect(7, sid(name), fd, WAIT).unwrap();
    let a_flow = match Events::new(&a).wait("connected", is_connected) {
        Event::Connected { flow_id, .. } => flow_id,
        _ => unreachable!(),
    };
    let (b_flow, server) = match Events::new(&b).wait("accepted", is_accepted) {
        Event::Accepted {
            flow_id, app_fd, ..
        } => (flow_id, app_of(app_fd)),
        _ => unreachable!(),
    };
    Pair {
        a,
        b,
        client,
        server,
        a_flow,
        b_flow,
    }
}

pub fn stat(dp: &Datapath, name: &str) -> u64 {
    dp.stats()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap()
}

/// An RSYN from `src` to `dst` with a made-up MAC (what an attacker who
/// knows both flow IDs can send).
pub fn forged_rsyn(dst: u64, src: u64) -> Vec<u8> {
    let f = OwnedFrame {
        header: Header {
            frame_type: FrameType::Control,
            flags: 0,
            src_flow: src,
            dst_flow: dst,
        },
        ext: Extensions {
            control: Some(Control {
                flags: ctl::RSYN,
                seq: 1,
                ack: 1,
                nonce: 0,
            }),
            ack: Some(Ack {
                ack: 0,
                window: 1 << 20,
            }),
            mac: Some(Mac {
                counter: 1 << 40,
                tag: [0x5a; 16],
            }),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    let mut out = Vec::new();
    wire::encode(&f.as_frame(), &mut out).unwrap();
    out
}
