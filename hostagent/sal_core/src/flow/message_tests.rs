//! Message mode (datagram flows with UDP semantics) and keep-alive:
//! scripted transitions and a property test under loss, duplication,
//! reordering, corruption, garbage, forged and replayed control frames.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::wire::{self, ctl, FrameType, Mac, RstReason};

use super::test_net::*;

impl Net {
    fn send(&mut self, s: usize, m: &[u8]) -> Result<(), MessageError> {
        let now = self.now;
        let r = self.f(s).send_message(m, now);
        if r.is_ok() {
            self.ends[s].sent.push(m.to_vec());
        }
        self.collect(s);
        r
    }

    /// Every message delivered was sent by the other end, at most once.
    fn check_messages(&self) {
        for (s, r) in [(A, B), (B, A)] {
            let mut seen = HashSet::new();
            for m in &self.ends[r].msgs {
                assert!(
                    self.ends[s].sent.contains(m),
                    "delivered a message never sent"
                );
                assert!(seen.insert(m.clone()), "message delivered twice");
            }
        }
    }
}

fn msg(id: u32, len: usize) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend((0..len).map(|i| (i as u8).wrapping_mul(7)));
    m
}

fn ctl_of(b: &[u8]) -> Option<u8> {
    wire::decode_datagram(b).ok()?.ext.control.map(|c| c.flags)
}

#[test]
fn set_up_then_one_frame_per_message_both_ways() {
    let mut n = Net::established(Config::message());
    let before = n.ends[A].frames_out;
    for (i, len) in [1, 100, 1200, MAX_MESSAGE - 4].into_iter().enumerate() {
        n.send(A, &msg(i as u32, len)).unwrap();
        n.send(B, &msg(100 + i as u32, len)).unwrap();
    }
    assert_eq!(
        n.ends[A].frames_out - before,
        4,
        "one DATA frame per message"
    );
    n.settle();
    assert_eq!(n.ends[B].msgs, n.ends[A].sent);
    assert_eq!(n.ends[A].msgs, n.ends[B].sent);
    assert!(
        n.ends[A].inbox.is_empty() && n.ends[B].inbox.is_empty(),
        "no acks"
    );
}

#[test]
fn send_errors_are_typed() {
    let mut n = Net::new(Config::message());
    n.accept_next(Config::message());
    assert_eq!(n.send(A, b"x"), Err(MessageError::NotOpen), "before set-up");
    n.settle();
    assert_eq!(n.send(A, b""), Err(MessageError::Empty));
    let big = vec![0u8; MAX_MESSAGE + 1];
    assert_eq!(
        n.send(A, &big),
        Err(MessageError::TooLarge {
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE
        })
    );
    let mut s = Net::established(Config::stream());
    assert_eq!(s.send(A, b"x"), Err(MessageError::NotMessageFlow));
}

#[test]
fn lost_messages_are_not_resent_and_late_ones_arrive_once_in_arrival_order() {
    let mut n = Net::established(Config::message());
    for i in 0..4 {
        n.send(A, &msg(i, 10)).unwrap();
    }
    n.ends[B].inbox.remove(0); // lost
    n.ends[B].inbox.swap(0, 2); // reordered: 3, 2, 1
    let dup = n.ends[B].inbox[0].clone();
    n.ends[B].inbox.push_back(dup); // duplicated
    n.settle();
    assert_eq!(n.ends[B].msgs, vec![msg(3, 10), msg(2, 10), msg(1, 10)]);
    assert_eq!(n.f(B).stats().duplicates, 1);
    let out = n.ends[A].frames_out;
    n.tick(60_000);
    n.settle();
    assert_eq!(n.ends[B].msgs.len(), 3, "message 0 stays lost");
    // Only keep-alive probes went out, no data.
    assert!(n.ends[A].frames_out - out <= 2);
}

#[test]
fn close_is_fin_and_the_peer_sees_its_end_at_once() {
    let mut n = Net::established(Config::message());
    n.send(A, b"last").unwrap();
    n.input(A, Flow::close);
    n.settle();
    assert!(n.ends[B].events.contains(&Event::PeerClosed));
    assert_eq!(n.state(B), State::CloseWait);
    n.send(B, b"reply after EOF").unwrap();
    n.input(B, Flow::close);
    n.settle();
    assert_eq!(n.ends[A].msgs, vec![b"reply after EOF".to_vec()]);
    assert!(n.ends[B].events.contains(&Event::Closed));
    assert_eq!(n.state(A), State::TimeWait);
    n.tick(Config::message().time_wait_ms);
    assert_eq!(n.state(A), State::Closed);
}

#[test]
fn rsyn_moves_the_peer_and_forged_ones_do_not() {
    let mut n = Net::established(Config::message());
    n.input(B, Flow::resync);
    assert_eq!(ctl_of(&n.ends[A].inbox[0]), Some(ctl::RSYN));
    n.settle();
    assert!(n.ends[A].events.contains(&Event::PeerMigrated));
    assert!(n.ends[B].events.contains(&Event::MigrationDone));
    n.send(A, b"after").unwrap();
    n.settle();
    assert_eq!(n.ends[B].msgs, vec![b"after".to_vec()]);
    // A forged RSYN (random MAC) and a replayed one move nothing.
    let forged = forged_rsyn(FLOW_A, FLOW_B, 1 << 40, [9; 16]);
    let replay = n.ends[A].seen_control[0].clone();
    let events = n.ends[A].events.len();
    n.deliver_bytes(A, &forged);
    n.deliver_bytes(A, &replay);
    assert_eq!(n.ends[A].events.len(), events);
    let st = n.f(A).stats();
    assert_eq!((st.bad_mac, st.replayed), (1, 1));
}

#[test]
fn keepalive_probes_an_idle_peer_and_gives_up_when_it_is_silent() {
    let cfg = Config {
        keepalive_idle_ms: 1000,
        keepalive_interval_ms: 200,
        keepalive_probes: 2,
        ..Config::message()
    };
    let mut n = Net::established(cfg);
    // An answering peer keeps the flow alive indefinitely.
    for _ in 0..20 {
        n.tick(500);
        n.settle();
    }
    assert_eq!(n.state(A), State::Established);
    // A silent peer: two probes, then a reset with Timeout.
    n.ends[B].flow = None;
    n.tick(1000);
    assert_eq!(n.ends[B].inbox.len(), 1, "one probe after the idle time");
    n.tick(200);
    n.tick(200);
    assert_eq!(n.state(A), State::Closed);
    assert!(n.ends[A].events.contains(&Event::Reset {
        reason: RstReason::Timeout,
        remote: false
    }));
    assert_eq!(Config::stream().keepalive_idle_ms, 0, "streams: off");
}

fn forged_rsyn(dst: u64, src: u64, counter: u64, tag: [u8; 16]) -> Vec<u8> {
    let f = wire::OwnedFrame {
        header: wire::Header {
            frame_type: FrameType::Control,
            flags: 0,
            src_flow: src,
            dst_flow: dst,
        },
        ext: wire::Extensions {
            control: Some(wire::Control {
                flags: ctl::RSYN,
                seq: counter as u32,
                ack: 0,
                nonce: 0,
            }),
            ack: Some(wire::Ack { ack: 0, window: 0 }),
            mac: Some(Mac { counter, tag }),
            ..Default::default()
        },
        payload: Vec::new(),
    };
    let mut v = Vec::new();
    wire::encode(&f.as_frame(), &mut v).unwrap();
    v
}

// ---- property ----

#[derive(Clone, Debug)]
enum Op {
    Deliver(usize),
    Drop(usize),
    Dup(usize),
    Swap(usize),
    Mutate(usize, usize, u8),
    Garbage(usize, Vec<u8>),
    Tick(u64),
    Send(usize, usize),
    Resync(usize),
    ForgeRsyn(usize, u64, [u8; 16]),
    Replay(usize, usize),
    Close(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    prop_oneof![
        10 => side.clone().prop_map(Op::Deliver),
        2 => side.clone().prop_map(Op::Drop),
        1 => side.clone().prop_map(Op::Dup),
        1 => side.clone().prop_map(Op::Swap),
        1 => (side.clone(), any::<usize>(), 1u8..=255).prop_map(|(s, i, x)| Op::Mutate(s, i, x)),
        1 => (side.clone(), proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(s, g)| Op::Garbage(s, g)),
        2 => (1u64..5000).prop_map(Op::Tick),
        4 => (side.clone(), 1usize..3000).prop_map(|(s, n)| Op::Send(s, n)),
        1 => side.clone().prop_map(Op::Resync),
        1 => (side.clone(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(s, c, t)| Op::ForgeRsyn(s, c, t)),
        1 => (side.clone(), any::<usize>()).prop_map(|(s, i)| Op::Replay(s, i)),
        1 => side.prop_map(Op::Close),
    ]
}

type Snapshot = Option<(State, Resync, u64)>;

fn snapshot(n: &Net, s: usize) -> (Snapshot, usize, usize) {
    let f = n.ends[s]
        .flow
        .as_ref()
        .map(|f| (f.state(), f.resync_state(), f.peer_flow()));
    (f, n.ends[s].events.len(), n.ends[s].msgs.len())
}

/// A forged, rewritten or replayed control frame moves nothing (a flow in
/// SYN-SENT believes a refusal on its nonce echo alone: exempt).
fn unauthorised(n: &mut Net, s: usize, bytes: &[u8]) {
    if n.state(s) == State::SynSent {
        return n.deliver_bytes(s, bytes);
    }
    let before = snapshot(n, s);
    n.deliver_bytes(s, bytes);
    assert_eq!(before, snapshot(n, s), "unauthorised frame moved the flow");
}

fn apply(n: &mut Net, op: &Op, next_id: &mut u32) {
    match op.clone() {
        Op::Deliver(s) => {
            n.deliver(s);
        }
        Op::Drop(s) => {
            n.ends[s].inbox.pop_front();
        }
        Op::Dup(s) => {
            if let Some(f) = n.ends[s].inbox.front().cloned() {
                n.ends[s].inbox.push_back(f);
            }
        }
        Op::Swap(s) => {
            if n.ends[s].inbox.len() >= 2 {
                n.ends[s].inbox.swap(0, 1);
            }
        }
        Op::Mutate(s, i, x) => {
            let Some(mut f) = n.ends[s].inbox.pop_front() else {
                return;
            };
            let control = ctl_of(&f).is_some();
            let head = (usize::from(f.get(3).copied().unwrap_or(0)) * 4).clamp(1, f.len());
            let i = i % head;
            let original = wire::decode_datagram(&f).ok().map(|x| x.to_owned_frame());
            f[i] ^= x;
            if control && f.len() >= 28 && i != 3 && !(4..8).contains(&i) {
                let hlen = (usize::from(f[3]) * 4).min(f.len());
                let crc = wire::header::header_checksum(&f[..hlen]);
                f[24..28].copy_from_slice(&crc.to_be_bytes());
            }
            let now = wire::decode_datagram(&f).ok().map(|x| x.to_owned_frame());
            if control && now.is_some() && now != original {
                unauthorised(n, s, &f);
            }
        }
        Op::Garbage(s, g) => n.deliver_bytes(s, &g),
        Op::Tick(dt) => n.tick(dt),
        Op::Send(s, len) => {
            *next_id += 1;
            if n.ends[s].flow.is_some() {
                let _ = n.send(s, &msg(*next_id, len));
            }
        }
        Op::Resync(s) => {
            if n.ends[s].flow.is_some() {
                n.input(s, Flow::resync);
            }
        }
        Op::ForgeRsyn(s, c, t) => {
            let (src, dst) = if s == A {
                (FLOW_B, FLOW_A)
            } else {
                (FLOW_A, FLOW_B)
            };
            unauthorised(n, s, &forged_rsyn(dst, src, c, t));
        }
        Op::Replay(s, i) => {
            let seen = &n.ends[s].seen_control;
            if !seen.is_empty() {
                let f = seen[i % seen.len()].clone();
                unauthorised(n, s, &f);
            }
        }
        Op::Close(s) => {
            if n.ends[s].flow.is_some() {
                n.input(s, Flow::close);
            }
        }
    }
}

fn run(ops: &[Op]) {
    let cfg = Config {
        max_retries: 30,
        keepalive_idle_ms: 20_000,
        ..Config::message()
    };
    let mut n = Net::new(cfg);
    n.accept_next(cfg);
    let mut id = 0;
    for op in ops {
        apply(&mut n, op, &mut id);
        n.check_messages();
    }
    // Heal: no faults; let retransmissions finish the set-up.
    for _ in 0..50 {
        n.settle();
        match n
            .ends
            .iter()
            .filter_map(|e| e.flow.as_ref()?.next_deadline())
            .min()
        {
            Some(t) if n.state(A) == State::SynSent || n.state(B) == State::SynReceived => {
                n.tick(t.saturating_sub(n.now).max(1))
            }
            _ => break,
        }
    }
    n.settle();
    n.check_messages();
    // Both open: a fresh message each way arrives exactly once.
    let open = |s: State| matches!(s, State::Established | State::CloseWait);
    let gone = |e: &End| e.events.iter().any(|ev| matches!(ev, Event::Reset { .. }));
    if open(n.state(A)) && open(n.state(B)) && !gone(&n.ends[A]) && !gone(&n.ends[B]) {
        for s in [A, B] {
            n.send(s, &msg(u32::MAX - s as u32, 5)).unwrap();
        }
        n.settle();
        n.check_messages();
        assert_eq!(n.ends[B].msgs.last(), Some(&msg(u32::MAX, 5)));
        assert_eq!(n.ends[A].msgs.last(), Some(&msg(u32::MAX - 1, 5)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]

    #[test]
    fn prop_message_flows_deliver_at_most_once_and_resist_forgery(ops in proptest::collection::vec(arb_op(), 0..150)) {
        run(&ops);
    }
}
