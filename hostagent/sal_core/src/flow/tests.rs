//! Flow tests: scripted transitions between two connected machines and
//! property tests over random interleavings of faults.

use proptest::prelude::*;

use super::*;
use crate::wire::{self, ctl, FrameType, Mac, RstReason};

use super::test_net::*;

impl Net {
    fn write(&mut self, side: usize, data: &[u8]) -> usize {
        let now = self.now;
        let n = self.f(side).write(data, now);
        self.ends[side].written.extend_from_slice(&data[..n]);
        self.collect(side);
        n
    }

    /// The connection under the flow breaks: frames in flight are lost.
    fn lose_path(&mut self) {
        self.ends[A].inbox.clear();
        self.ends[B].inbox.clear();
        self.input(A, Flow::path_lost);
        self.input(B, Flow::path_lost);
    }

    fn events(&mut self, side: usize) -> Vec<Event> {
        std::mem::take(&mut self.ends[side].events)
    }

    /// Exactly-once, in-order and ack-safety invariants.
    fn check(&self) {
        for (s, r) in [(A, B), (B, A)] {
            let got = &self.ends[r].got;
            let written = &self.ends[s].written;
            assert!(got.len() <= written.len(), "delivered more than written");
            if let Some(i) = got.iter().zip(written).position(|(g, w)| g != w) {
                panic!("delivered byte {i} differs from the written one");
            }
            if let Some(f) = &self.ends[s].flow {
                assert!(f.acked() <= got.len() as u64, "acked bytes not delivered");
            }
        }
    }

    /// Decoded frames queued for `side` (for inspection).
    fn queued(&self, side: usize) -> Vec<wire::OwnedFrame> {
        self.ends[side]
            .inbox
            .iter()
            .map(|b| wire::decode_datagram(b).unwrap().to_owned_frame())
            .collect()
    }
}

fn ctl_flags(f: &wire::OwnedFrame) -> Option<u8> {
    f.ext.control.map(|c| c.flags)
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

// ---- set-up ----

#[test]
fn handshake_syn_synack_ack() {
    let cfg = Config::stream();
    let mut n = Net::new(cfg);
    let syn = n.queued(B).remove(0);
    assert_eq!(ctl_flags(&syn), Some(ctl::SYN));
    assert_eq!((syn.header.src_flow, syn.header.dst_flow), (FLOW_A, 0));
    assert_eq!(syn.ext.service, Some(SID));
    assert_eq!(syn.ext.control.unwrap().nonce, NONCE_A);
    assert!(syn.ext.mac.is_none());
    n.accept_next(cfg);
    assert_eq!(n.state(B), State::SynReceived);
    let synack = n.queued(A).remove(0);
    assert_eq!(ctl_flags(&synack), Some(ctl::SYN | ctl::ACK));
    assert_eq!(synack.ext.control.unwrap().nonce, NONCE_B);
    assert!(synack.ext.mac.is_some());
    n.deliver(A);
    assert_eq!(n.state(A), State::Established);
    assert_eq!(n.events(A), vec![Event::Established]);
    let ack = n.queued(B).remove(0);
    assert_eq!(ctl_flags(&ack), Some(ctl::ACK));
    n.deliver(B);
    assert_eq!(n.state(B), State::Established);
    assert_eq!(n.events(B), vec![Event::Established]);
}

#[test]
fn refused_syn_resets_initiator_with_reason() {
    for reason in [
        RstReason::NoService,
        RstReason::Refused,
        RstReason::Resources,
    ] {
        let mut n = Net::new(Config::stream());
        let bytes = n.ends[B].inbox.pop_front().unwrap();
        let syn = SynInfo::parse(&wire::decode_datagram(&bytes).unwrap()).unwrap();
        let rst = refuse(&syn, reason);
        let mut v = Vec::new();
        wire::encode(&rst.as_frame(), &mut v).unwrap();
        n.deliver_bytes(A, &v);
        assert_eq!(n.state(A), State::Closed);
        assert_eq!(
            n.events(A),
            vec![Event::Reset {
                reason,
                remote: true
            }]
        );
    }
}

#[test]
fn rst_with_wrong_nonce_is_ignored_in_syn_sent() {
    let mut n = Net::new(Config::stream());
    let bytes = n.ends[B].inbox.pop_front().unwrap();
    let mut syn = SynInfo::parse(&wire::decode_datagram(&bytes).unwrap()).unwrap();
    syn.nonce ^= 1;
    let mut v = Vec::new();
    wire::encode(&refuse(&syn, RstReason::Refused).as_frame(), &mut v).unwrap();
    n.deliver_bytes(A, &v);
    assert_eq!(n.state(A), State::SynSent);
}

#[test]
fn syn_ack_with_bad_mac_is_ignored() {
    let cfg = Config::stream();
    let mut n = Net::new(cfg);
    n.accept_next(cfg);
    let mut synack = n.queued(A).remove(0);
    n.ends[A].inbox.clear();
    synack.ext.mac.as_mut().unwrap().tag[0] ^= 1;
    let mut v = Vec::new();
    wire::encode(&synack.as_frame(), &mut v).unwrap();
    n.deliver_bytes(A, &v);
    assert_eq!(n.state(A), State::SynSent);
    assert_eq!(n.f(A).stats().bad_mac, 1);
}

#[test]
fn lost_syn_ack_is_recovered_by_repeated_syn() {
    let cfg = Config::stream();
    let mut n = Net::new(cfg);
    n.accept_next(cfg);
    n.ends[A].inbox.clear(); // SYN-ACK lost
    n.tick(cfg.rto_initial_ms); // A repeats the SYN, B repeats the SYN-ACK
    n.ends[A].inbox.retain(|b| {
        wire::decode_datagram(b).unwrap().ext.control.unwrap().flags == ctl::SYN | ctl::ACK
    });
    assert_eq!(n.ends[B].inbox.len(), 1, "repeated SYN");
    n.settle();
    assert_eq!(
        (n.state(A), n.state(B)),
        (State::Established, State::Established)
    );
}

#[test]
fn control_retransmits_back_off_then_abort() {
    let cfg = Config::stream();
    let mut n = Net::new(cfg);
    n.ends[B].inbox.clear();
    let mut deadlines = Vec::new();
    for _ in 0..=cfg.max_retries {
        let d = n.f(A).next_deadline().unwrap();
        deadlines.push(d);
        n.now = d;
        n.tick(0);
    }
    let gaps: Vec<u64> = deadlines.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps[..4], [2000, 4000, 8000, 16000]);
    assert_eq!(
        n.ends[B].inbox.len() as u32,
        cfg.max_retries,
        "one SYN per retry"
    );
    assert_eq!(n.state(A), State::Closed);
    assert_eq!(
        n.events(A),
        vec![Event::Reset {
            reason: RstReason::Timeout,
            remote: false
        }]
    );
}

// ---- data ----

#[test]
fn data_flows_both_ways_exactly_once() {
    let mut n = Net::established(Config::stream());
    let a = pattern(100_000, 1);
    let b = pattern(50_000, 2);
    assert_eq!(n.write(A, &a), a.len());
    assert_eq!(n.write(B, &b), b.len());
    n.settle();
    n.check();
    assert_eq!(n.ends[B].got, a);
    assert_eq!(n.ends[A].got, b);
    assert_eq!(n.f(A).acked(), a.len() as u64);
    assert_eq!(n.f(B).acked(), b.len() as u64);
}

#[test]
fn send_buffer_gives_back_pressure() {
    let cfg = Config {
        send_buffer: 1000,
        ..Config::stream()
    };
    let mut n = Net::established(cfg);
    assert_eq!(n.f(A).writable(), 1000);
    assert_eq!(n.write(A, &pattern(1500, 0)), 1000);
    assert_eq!(n.f(A).writable(), 0);
    n.settle();
    assert_eq!(n.f(A).writable(), 1000, "acks free the buffer");
    n.check();
}

#[test]
fn receive_window_limits_sender_until_read() {
    let cfg = Config {
        recv_window: 4096,
        ..Config::stream()
    };
    let mut n = Net::established(cfg);
    n.write(A, &pattern(10_000, 3));
    n.settle();
    assert_eq!(n.ends[B].got.len(), 4096, "window full");
    n.input(B, |f, now| f.read_done(4096, now));
    n.settle();
    assert_eq!(n.ends[B].got.len(), 8192);
    n.input(B, |f, now| f.read_done(8192, now));
    n.settle();
    n.check();
    assert_eq!(n.ends[B].got.len(), 10_000);
}

#[test]
fn a_batch_of_data_frames_is_acknowledged_once() {
    let cfg = Config {
        max_payload: 1000,
        ..Config::stream()
    };
    let mut n = Net::established(cfg);
    n.write(A, &pattern(3500, 6));
    let frames: Vec<Vec<u8>> = n.ends[B].inbox.drain(..).collect();
    assert_eq!(frames.len(), 4);
    let decoded = frames.iter().map(|b| wire::decode_datagram(b).unwrap());
    let now = n.now;
    n.f(B).on_frames(decoded, now);
    n.collect(B);
    let answers = n.queued(A);
    assert_eq!(answers.len(), 1, "one ACK for the batch");
    assert_eq!(answers[0].ext.ack.map(|a| a.ack), Some(3500));
    n.settle();
    assert_eq!(n.ends[B].got, pattern(3500, 6));
    assert_eq!(n.f(A).acked(), 3500);
    n.check();
}

#[test]
fn bytes_written_in_place_are_sent_like_written_ones() {
    let mut n = Net::established(Config::stream());
    let data = pattern(5000, 7);
    let now = n.now;
    let space = n.f(A).write_space(3000);
    assert_eq!(space.len(), 3000);
    space.copy_from_slice(&data[..3000]);
    n.f(A).commit_write(3000, now);
    n.ends[A].written.extend_from_slice(&data[..3000]);
    n.collect(A);
    n.write(A, &data[3000..]);
    n.settle();
    assert_eq!(n.ends[B].got, data);
    n.check();
}

#[test]
fn duplicate_and_overlapping_data_delivered_once() {
    let mut n = Net::established(Config::stream());
    n.write(A, b"hello world");
    let frames: Vec<Vec<u8>> = n.ends[B].inbox.drain(..).collect();
    for f in frames.iter().chain(frames.iter()) {
        n.deliver_bytes(B, f);
    }
    // An overlapping segment re-sent from offset 6 with extra bytes.
    n.write(A, b"!!");
    let mut data = wire::decode_datagram(&frames[0]).unwrap().to_owned_frame();
    data.ext.data_seq = Some(6);
    data.payload = b"world!!".to_vec();
    let mut v = Vec::new();
    wire::encode(&data.as_frame(), &mut v).unwrap();
    n.deliver_bytes(B, &v);
    n.settle();
    assert_eq!(n.ends[B].got, b"hello world!!");
    n.check();
}

#[test]
fn datagram_flow_retransmits_lost_data() {
    let cfg = Config::datagram();
    let mut n = Net::established(cfg);
    n.write(A, &pattern(5000, 4));
    n.ends[B].inbox.remove(1); // lose the second datagram
    n.settle();
    assert!(n.ends[B].got.len() < 5000);
    n.tick(cfg.rto_initial_ms);
    n.settle();
    assert_eq!(n.ends[B].got, pattern(5000, 4));
    n.check();
}

#[test]
fn datagram_flow_probes_zero_window() {
    let cfg = Config {
        recv_window: 1200,
        ..Config::datagram()
    };
    let mut n = Net::established(cfg);
    n.write(A, &pattern(3000, 5));
    n.settle();
    assert_eq!(n.ends[B].got.len(), 1200);
    n.input(B, |f, now| f.read_done(1200, now));
    n.ends[A].inbox.clear(); // window update lost
    n.tick(cfg.rto_initial_ms); // A probes with ACK_NOW
    let probe = n.queued(B).remove(0);
    assert_eq!(probe.header.frame_type, FrameType::Ack);
    assert_eq!(probe.header.flags & wire::FLAG_ACK_NOW, wire::FLAG_ACK_NOW);
    n.settle();
    assert_eq!(n.ends[B].got.len(), 2400);
}

// ---- close and reset ----

#[test]
fn orderly_close_walks_the_states() {
    let cfg = Config::stream();
    let mut n = Net::established(cfg);
    n.write(A, b"last words");
    n.input(A, Flow::close);
    assert_eq!(n.state(A), State::FinWait1);
    let fin = n.queued(B).pop().unwrap();
    assert_eq!(ctl_flags(&fin), Some(ctl::FIN));
    assert_eq!(fin.ext.data_seq, Some(10), "FIN carries the stream length");
    n.settle();
    assert_eq!(
        (n.state(A), n.state(B)),
        (State::FinWait2, State::CloseWait)
    );
    assert_eq!(n.events(B), vec![Event::PeerClosed]);
    assert_eq!(n.write(A, b"x"), 0, "no writes after close");
    n.write(B, b"reply");
    n.input(B, Flow::close);
    assert_eq!(n.state(B), State::LastAck);
    n.settle();
    assert_eq!((n.state(A), n.state(B)), (State::TimeWait, State::Closed));
    assert_eq!(n.events(B), vec![Event::Closed]);
    assert_eq!(n.events(A), vec![Event::PeerClosed]);
    n.tick(cfg.time_wait_ms - 1);
    assert_eq!(n.state(A), State::TimeWait);
    n.tick(1);
    assert_eq!(n.state(A), State::Closed);
    assert_eq!(n.events(A), vec![Event::Closed]);
    assert_eq!(n.ends[A].got, b"reply");
    n.check();
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut n = Net::established(Config::stream());
    n.input(A, Flow::close);
    n.input(B, Flow::close);
    n.deliver(A); // B's FIN reaches A before A's FIN is acked
    n.deliver(B);
    assert_eq!(n.state(A), State::Closing);
    n.settle();
    assert_eq!((n.state(A), n.state(B)), (State::TimeWait, State::TimeWait));
}

#[test]
fn abort_sends_authenticated_rst_with_reason() {
    let mut n = Net::established(Config::stream());
    n.input(A, |f, now| f.abort(RstReason::Aborted, now));
    assert_eq!(
        n.events(A),
        vec![Event::Reset {
            reason: RstReason::Aborted,
            remote: false
        }]
    );
    let rst = n.queued(B).remove(0);
    assert!(rst.ext.mac.is_some());
    n.settle();
    assert_eq!(n.state(B), State::Closed);
    assert_eq!(
        n.events(B),
        vec![Event::Reset {
            reason: RstReason::Aborted,
            remote: true
        }]
    );
}

#[test]
fn unauthenticated_rst_after_setup_is_ignored() {
    let mut n = Net::established(Config::stream());
    n.input(A, |f, now| f.abort(RstReason::Aborted, now));
    let mut rst = n.queued(B).remove(0);
    n.ends[B].inbox.clear();
    rst.ext.mac = None;
    let mut v = Vec::new();
    wire::encode(&rst.as_frame(), &mut v).unwrap();
    n.deliver_bytes(B, &v);
    assert_eq!(n.state(B), State::Established);
}

// ---- resynchronisation ----

/// A's RSYN as bytes, with the connection lost and A resynchronising.
fn rsyn_scenario() -> (Net, Vec<u8>) {
    let mut n = Net::established(Config::stream());
    n.write(A, &pattern(40_000, 6));
    n.write(B, &pattern(30_000, 7));
    n.deliver(B); // part of the data arrives, the rest is lost
    n.deliver(A);
    n.lose_path();
    assert!(n.f(A).is_frozen());
    n.input(A, Flow::resync);
    assert_eq!(n.f(A).resync_state(), Resync::RsynSent);
    let rsyn = n.ends[B].inbox[0].clone();
    (n, rsyn)
}

#[test]
fn rsyn_resumes_from_last_acked_byte() {
    let (mut n, _) = rsyn_scenario();
    let rsyn = n.queued(B).remove(0);
    assert_eq!(ctl_flags(&rsyn), Some(ctl::RSYN));
    assert!(rsyn.ext.mac.is_some() && rsyn.ext.ack.is_some());
    n.deliver(B);
    assert_eq!(n.events(B), vec![Event::PeerMigrated]);
    assert!(!n.f(B).is_frozen());
    assert_eq!(ctl_flags(&n.queued(A)[0]), Some(ctl::RSYN | ctl::ACK));
    n.settle();
    assert_eq!(n.events(A), vec![Event::MigrationDone]);
    assert_eq!(n.f(A).resync_state(), Resync::Idle);
    assert_eq!(n.ends[B].got, pattern(40_000, 6));
    assert_eq!(n.ends[A].got, pattern(30_000, 7));
    n.check();
}

#[test]
fn simultaneous_rsyn() {
    let mut n = Net::established(Config::stream());
    n.write(A, &pattern(20_000, 8));
    n.write(B, &pattern(20_000, 9));
    n.lose_path();
    n.input(A, Flow::resync);
    n.input(B, Flow::resync);
    n.deliver(A); // B's RSYN reaches A while A's RSYN is outstanding
    assert_eq!(n.f(A).resync_state(), Resync::RsynSentRecv);
    n.settle();
    for side in [A, B] {
        assert_eq!(n.f(side).resync_state(), Resync::Idle);
        let ev = n.events(side);
        assert!(
            ev.contains(&Event::PeerMigrated) && ev.contains(&Event::MigrationDone),
            "{ev:?}"
        );
    }
    assert_eq!(n.ends[B].got, pattern(20_000, 8));
    assert_eq!(n.ends[A].got, pattern(20_000, 9));
}

#[test]
fn forged_rsyns_never_move_the_flow() {
    let (n0, rsyn) = rsyn_scenario();
    let frame = wire::decode_datagram(&rsyn).unwrap().to_owned_frame();
    let tamper = |edit: &dyn Fn(&mut wire::OwnedFrame)| {
        let mut f = frame.clone();
        edit(&mut f);
        let mut v = Vec::new();
        wire::encode(&f.as_frame(), &mut v).unwrap();
        v
    };
    let forged: Vec<(&str, Vec<u8>)> = vec![
        ("no MAC", tamper(&|f| f.ext.mac = None)),
        (
            "random tag",
            tamper(&|f| {
                f.ext.mac = Some(Mac {
                    counter: 99,
                    tag: [7; 16],
                })
            }),
        ),
        (
            "counter bumped",
            tamper(&|f| f.ext.mac.as_mut().unwrap().counter += 1),
        ),
        (
            "ack changed",
            tamper(&|f| f.ext.ack.as_mut().unwrap().ack += 1),
        ),
        (
            "reflected",
            tamper(&|f| std::mem::swap(&mut f.header.src_flow, &mut f.header.dst_flow)),
        ),
    ];
    drop(n0);
    for (name, bytes) in forged {
        let (mut n, _) = rsyn_scenario();
        n.ends[B].inbox.clear();
        n.deliver_bytes(B, &bytes);
        assert!(n.events(B).is_empty(), "{name}");
        assert!(n.f(B).is_frozen(), "{name}");
        assert!(n.ends[A].inbox.is_empty(), "{name}: answered");
    }
    // Replay: the genuine RSYN works once, a second copy is refused.
    let (mut n, rsyn) = rsyn_scenario();
    n.deliver(B);
    assert_eq!(n.events(B), vec![Event::PeerMigrated]);
    n.settle();
    n.input(B, Flow::path_lost);
    n.deliver_bytes(B, &rsyn);
    assert!(n.events(B).is_empty());
    assert!(n.f(B).is_frozen());
    assert_eq!(n.f(B).stats().replayed, 1);
}

#[test]
fn close_during_rsyn_sends_fin_after_migration() {
    let (mut n, _) = rsyn_scenario();
    n.input(A, Flow::close);
    assert!(
        n.queued(B).iter().all(|f| ctl_flags(f) != Some(ctl::FIN)),
        "FIN waits"
    );
    n.settle();
    assert_eq!(n.state(B), State::CloseWait);
    assert_eq!(n.state(A), State::FinWait2);
    n.check();
}

#[test]
fn rsyn_while_fin_outstanding_carries_fin() {
    let mut n = Net::established(Config::stream());
    n.write(A, b"bye");
    n.input(A, Flow::close);
    n.lose_path(); // data and FIN lost
    n.input(A, Flow::resync);
    let rsyn = n.queued(B).remove(0);
    assert_eq!(ctl_flags(&rsyn), Some(ctl::RSYN | ctl::FIN));
    assert_eq!(rsyn.ext.data_seq, Some(3));
    n.settle();
    assert_eq!(n.ends[B].got, b"bye");
    assert_eq!(
        (n.state(A), n.state(B)),
        (State::FinWait2, State::CloseWait)
    );
    assert!(n.events(B).contains(&Event::PeerMigrated));
}

#[test]
fn rsyn_retransmits_then_aborts() {
    let cfg = Config::stream();
    let (mut n, _) = rsyn_scenario();
    n.ends[B].inbox.clear();
    for _ in 0..=cfg.max_retries {
        n.now = n.f(A).next_deadline().unwrap();
        n.tick(0);
    }
    assert_eq!(n.state(A), State::Closed);
    assert!(n.events(A).contains(&Event::Reset {
        reason: RstReason::Timeout,
        remote: false
    }));
}

#[test]
fn frozen_flow_gives_up_after_resync_timeout() {
    let cfg = Config::stream();
    let mut n = Net::established(cfg);
    n.lose_path();
    n.tick(cfg.resync_timeout_ms);
    assert_eq!(n.state(A), State::Closed);
    assert_eq!(
        n.events(A),
        vec![Event::Reset {
            reason: RstReason::Timeout,
            remote: false
        }]
    );
    assert!(n.ends[B].inbox.is_empty(), "no path, no RST");
}

// ---- unexpected input ----

#[test]
fn unexpected_frames_are_ignored() {
    let cfg = Config::stream();
    let mut n = Net::established(cfg);
    n.write(A, b"abc");
    let data = n.ends[B].inbox.pop_front().unwrap();
    let mut f = wire::decode_datagram(&data).unwrap().to_owned_frame();
    let variants: Vec<(&str, wire::OwnedFrame)> = vec![
        ("wrong dst", {
            let mut g = f.clone();
            g.header.dst_flow ^= 1;
            g
        }),
        ("wrong src", {
            let mut g = f.clone();
            g.header.src_flow ^= 1;
            g
        }),
        ("ack beyond sent", {
            let mut g = f.clone();
            g.header.frame_type = FrameType::Ack;
            g.ext.data_seq = None;
            g.ext.ack = Some(wire::Ack {
                ack: 1 << 40,
                window: 0,
            });
            g.payload.clear();
            g
        }),
    ];
    for (name, g) in variants {
        let mut v = Vec::new();
        wire::encode(&g.as_frame(), &mut v).unwrap();
        n.deliver_bytes(B, &v);
        assert!(n.ends[B].got.is_empty(), "{name}");
        assert_eq!(n.state(B), State::Established, "{name}");
    }
    assert_eq!(n.f(B).acked(), 0);
    // Anything is ignored once closed.
    n.input(B, |fl, now| fl.abort(RstReason::Aborted, now));
    f.header.dst_flow = FLOW_B;
    let mut v = Vec::new();
    wire::encode(&f.as_frame(), &mut v).unwrap();
    n.deliver_bytes(B, &v);
    assert!(n.ends[B].got.is_empty());
}

// ---- properties ----

#[derive(Clone, Debug)]
enum Op {
    Deliver(usize),
    Drop(usize),
    Dup(usize),
    Swap(usize),
    /// Flip bits (the checksum catches it) or, for control frames, rewrite
    /// a byte and fix the checksum (the MAC must catch it).
    Mutate(usize, usize, u8, bool),
    Garbage(usize, Vec<u8>),
    Tick(u64),
    Write(usize, usize),
    Read(usize, u64),
    LosePath,
    Resync(usize),
    ForgeRsyn(usize, u64, [u8; 16]),
    Replay(usize, usize),
    Close(usize),
}

fn arb_op(lossy: bool) -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    prop_oneof![
        8 => side.clone().prop_map(Op::Deliver),
        (if lossy { 1 } else { 8 }) => side.clone().prop_map(move |s| if lossy { Op::Drop(s) } else { Op::Deliver(s) }),
        1 => side.clone().prop_map(move |s| if lossy { Op::Dup(s) } else { Op::Deliver(s) }),
        1 => side.clone().prop_map(move |s| if lossy { Op::Swap(s) } else { Op::Deliver(s) }),
        1 => (side.clone(), any::<usize>(), 1u8..=255, any::<bool>()).prop_map(|(s, i, x, c)| Op::Mutate(s, i, x, c)),
        1 => (side.clone(), proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(s, g)| Op::Garbage(s, g)),
        2 => (1u64..3000).prop_map(Op::Tick),
        3 => (side.clone(), 1usize..40_000).prop_map(|(s, n)| Op::Write(s, n)),
        1 => (side.clone(), 1u64..50_000).prop_map(|(s, n)| Op::Read(s, n)),
        1 => Just(Op::LosePath),
        1 => side.clone().prop_map(Op::Resync),
        1 => (side.clone(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(s, c, t)| Op::ForgeRsyn(s, c, t)),
        1 => (side.clone(), any::<usize>()).prop_map(|(s, i)| Op::Replay(s, i)),
        (1) => side.prop_map(Op::Close),
    ]
}

fn is_control(bytes: &[u8]) -> bool {
    wire::decode_datagram(bytes).is_ok_and(|f| f.header.frame_type == FrameType::Control)
}

/// Applies `op`; returns false if the step moved a flow without authority
/// (a forged or replayed control frame changed state or raised an event).
fn apply(n: &mut Net, op: &Op, written: &mut u8) {
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
        Op::Mutate(s, i, x, fix) => {
            let Some(mut f) = n.ends[s].inbox.pop_front() else {
                return;
            };
            // Corruption of the header and extensions only: the payload is
            // protected by the TCP/UDP checksum under the SAL, not by the CRC.
            let control = is_control(&f);
            let head = (usize::from(f.get(3).copied().unwrap_or(0)) * 4).clamp(1, f.len());
            let i = i % head;
            let original = f.clone();
            f[i] ^= x;
            if fix && control && f.len() >= 28 && i != 3 && !(4..8).contains(&i) {
                let hlen = (usize::from(f[3]) * 4).min(f.len());
                let crc = wire::header::header_checksum(&f[..hlen]);
                f[24..28].copy_from_slice(&crc.to_be_bytes());
            }
            let same = wire::decode_datagram(&f).ok() == wire::decode_datagram(&original).ok();
            match wire::decode_datagram(&f) {
                Err(_) if !n.lossy => n.lose_path(),
                Err(_) => {}
                Ok(_) if same => n.deliver_bytes(s, &f), // only reserved bits changed
                Ok(_) => {
                    unauthorised(n, s, |n| n.deliver_bytes(s, &f));
                    if !n.lossy {
                        // On a byte stream this models an injected frame: the
                        // genuine one still arrives.
                        n.ends[s].inbox.push_front(original);
                    }
                }
            }
        }
        Op::Garbage(s, g) => {
            if wire::decode_datagram(&g).is_err() && !n.lossy {
                n.lose_path();
            } else {
                n.deliver_bytes(s, &g);
            }
        }
        Op::Tick(dt) => n.tick(dt),
        Op::Write(s, len) => {
            *written = written.wrapping_add(1);
            if n.ends[s].flow.is_some() {
                n.write(s, &pattern(len, *written));
            }
        }
        Op::Read(s, k) => {
            if n.ends[s].flow.is_some() {
                n.input(s, |f, now| f.read_done(k, now));
            }
        }
        Op::LosePath => {
            if n.ends[B].flow.is_some() {
                n.lose_path();
            }
        }
        Op::Resync(s) => {
            if n.ends[s].flow.is_some() {
                n.input(s, Flow::resync);
            }
        }
        Op::ForgeRsyn(s, counter, tag) => {
            let (src, dst) = if s == A {
                (FLOW_B, FLOW_A)
            } else {
                (FLOW_A, FLOW_B)
            };
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
                    ack: Some(wire::Ack {
                        ack: 0,
                        window: 1 << 20,
                    }),
                    mac: Some(Mac { counter, tag }),
                    ..Default::default()
                },
                payload: Vec::new(),
            };
            let mut v = Vec::new();
            wire::encode(&f.as_frame(), &mut v).unwrap();
            unauthorised(n, s, |n| n.deliver_bytes(s, &v));
        }
        Op::Replay(s, i) => {
            let seen = &n.ends[s].seen_control;
            if !seen.is_empty() {
                let f = seen[i % seen.len()].clone();
                unauthorised(n, s, |n| n.deliver_bytes(s, &f));
            }
        }
        Op::Close(s) => {
            if n.ends[s].flow.is_some() {
                n.input(s, Flow::close);
            }
        }
    }
}

/// Runs `step`, asserting it changed neither the state nor raised events at `s`.
/// A flow in SYN-SENT has no key yet: a refusal RST is believed on its nonce
/// echo alone (documented in sal-flow.md), so it is exempt.
fn unauthorised(n: &mut Net, s: usize, step: impl FnOnce(&mut Net)) {
    if n.state(s) == State::SynSent {
        step(n);
        return;
    }
    let before = n.ends[s]
        .flow
        .as_ref()
        .map(|f| (f.state(), f.resync_state(), f.is_frozen(), f.acked()));
    let events = n.ends[s].events.len();
    let got = n.ends[s].got.len();
    step(n);
    let after = n.ends[s]
        .flow
        .as_ref()
        .map(|f| (f.state(), f.resync_state(), f.is_frozen(), f.acked()));
    assert_eq!(before, after, "forged or replayed frame moved the flow");
    assert_eq!(
        n.ends[s].events.len(),
        events,
        "forged or replayed frame raised an event"
    );
    assert_eq!(
        n.ends[s].got.len(),
        got,
        "forged or replayed frame delivered data"
    );
}

/// Set-up, random ops (checking invariants after each), then a healing
/// phase: if neither flow was reset, every written byte arrives.
fn run_scenario(cfg: Config, ops: &[Op]) {
    let mut n = Net::new(cfg);
    n.accept_next(cfg);
    let mut salt = 0u8;
    for op in ops {
        apply(&mut n, op, &mut salt);
        n.check();
    }
    // Heal: no more faults, lift freezes, run until quiet.
    for side in [A, B] {
        if n.ends[side].flow.as_ref().is_some_and(Flow::is_frozen) {
            n.input(side, Flow::resync);
        }
    }
    let mut progress_at = (0, 0);
    for _ in 0..200 {
        n.settle();
        for side in [A, B] {
            let unread = n.ends[side].got.len() as u64;
            n.input(side, |f, now| f.read_done(unread, now));
        }
        n.settle();
        n.check();
        let done = n.ends[B].got.len() == n.ends[A].written.len()
            && n.ends[A].got.len() == n.ends[B].written.len();
        let progress = (n.ends[A].got.len(), n.ends[B].got.len());
        let next = n
            .ends
            .iter()
            .filter_map(|e| e.flow.as_ref()?.next_deadline())
            .min();
        match next {
            Some(t) if !done => n.tick(t.saturating_sub(n.now)),
            _ if done || progress == progress_at => break,
            _ => {}
        }
        progress_at = progress;
    }
    let reset = |e: &End| e.events.iter().any(|ev| matches!(ev, Event::Reset { .. }));
    if !reset(&n.ends[A]) && !reset(&n.ends[B]) {
        assert_eq!(
            n.ends[B].got.len(),
            n.ends[A].written.len(),
            "A->B incomplete"
        );
        assert_eq!(
            n.ends[A].got.len(),
            n.ends[B].written.len(),
            "B->A incomplete"
        );
    }
}

proptest! {
    // 128 cases by default; PROPTEST_CASES raises it for a longer soak.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]

    #[test]
    fn prop_stream_flows_survive_path_loss(ops in proptest::collection::vec(arb_op(false), 0..120)) {
        run_scenario(Config { send_buffer: 64 * 1024, recv_window: 48 * 1024, ..Config::stream() }, &ops);
    }

    #[test]
    fn prop_datagram_flows_survive_loss(ops in proptest::collection::vec(arb_op(true), 0..120)) {
        run_scenario(Config { send_buffer: 64 * 1024, recv_window: 48 * 1024, max_retries: 30, ..Config::datagram() }, &ops);
    }
}

/// SYN, SYN-ACK and RSYN advertise the sender's endpoints (ADDRESS LIST);
/// the list is MAC-bound after set-up, so a rewritten list is dropped.
#[test]
fn address_lists_ride_on_syn_synack_and_rsyn() {
    use crate::wire::AddrList;
    use std::net::SocketAddr;
    let a_addrs: Vec<SocketAddr> = vec!["192.0.2.1:7946".parse().unwrap()];
    let b_addrs: Vec<SocketAddr> = vec!["[2001:db8::2]:7946".parse().unwrap()];
    let b_moved: Vec<SocketAddr> = vec!["198.51.100.2:7946".parse().unwrap()];
    let cfg = Config::stream();
    let mut a = Flow::connect_advertising(
        cfg,
        SID,
        FLOW_A,
        NONCE_A,
        Some(AddrList::new(&a_addrs).unwrap()),
        0,
    );
    let syn = match a.take_effects().remove(0) {
        Effect::Send(f) => f,
        e => panic!("{e:?}"),
    };
    let info = SynInfo::parse(&syn.as_frame()).unwrap();
    assert_eq!(info.addrs.unwrap().as_slice(), &a_addrs[..]);
    let mut b = accept_advertising(
        cfg,
        &info,
        FLOW_B,
        NONCE_B,
        Some(AddrList::new(&b_addrs).unwrap()),
        0,
    );
    assert_eq!(b.peer_addrs(), &a_addrs[..]);
    let synack = match b.take_effects().remove(0) {
        Effect::Send(f) => f,
        e => panic!("{e:?}"),
    };
    // A rewritten list in the SYN-ACK breaks its MAC.
    let mut forged = synack.clone();
    forged.ext.addrs = Some(AddrList::new(&b_moved).unwrap());
    a.on_frame(&forged.as_frame(), 1);
    assert_eq!(a.state(), State::SynSent);
    assert_eq!(a.stats().bad_mac, 1);
    a.on_frame(&synack.as_frame(), 1);
    assert_eq!(a.state(), State::Established);
    assert_eq!(a.peer_addrs(), &b_addrs[..]);
    for e in a.take_effects() {
        if let Effect::Send(f) = e {
            b.on_frame(&f.as_frame(), 2);
        }
    }
    assert_eq!(b.state(), State::Established);
    b.take_effects();
    // B moves and advertises its new endpoint in the RSYN.
    b.set_local_addrs(Some(AddrList::new(&b_moved).unwrap()));
    b.path_lost(3);
    b.resync(3);
    let rsyn = b
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Send(f) if f.ext.control.is_some_and(|c| c.flags == ctl::RSYN) => Some(f),
            _ => None,
        })
        .expect("an RSYN");
    assert_eq!(rsyn.ext.addrs.unwrap().as_slice(), &b_moved[..]);
    a.on_frame(&rsyn.as_frame(), 4);
    assert_eq!(a.peer_addrs(), &b_moved[..]);
}
