//! Datagram flows (UDP semantics) over real loopback UDP sockets: set-up by
//! name, message boundaries both ways, refusal, failover, migration after a
//! removed address, forged RSYN, oversized messages, close, keep-alive.

mod datapath_common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use datapath_common::*;
use sal_core::datapath::{Datapath, DatapathConfig, Event};
use sal_core::flow::{self, Config, Effect, SynInfo};
use sal_core::wire;

fn dcfg(listen: &[&str]) -> DatapathConfig {
    let mut c = config();
    c.sal_listen = listen.iter().map(|a| a.parse().unwrap()).collect();
    c.setup_timeout_ms = 600;
    c.dgram_flow = Config {
        time_wait_ms: 200,
        ..Config::message()
    };
    c
}

fn dstart(listen: &[&str]) -> Datapath {
    Datapath::start(dcfg(listen)).expect("data path starts")
}

/// The app's end of a seqpacket pair.
struct App(OwnedFd);

#[derive(Debug, PartialEq)]
enum Got {
    Msg(Vec<u8>),
    Eof,
    Nothing,
}

fn seqpacket_pair() -> (App, OwnedFd) {
    let mut fds = [0; 2];
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    unsafe {
        (
            App(OwnedFd::from_raw_fd(fds[0])),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

impl App {
    fn send(&self, m: &[u8]) {
        let r = unsafe { libc::send(self.0.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        assert_eq!(r as usize, m.len());
    }

    fn recv_within(&self, wait: Duration) -> Got {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut p, 1, wait.as_millis() as i32) } <= 0 {
            return Got::Nothing;
        }
        let mut buf = vec![0u8; 70_000];
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0);
        if n == 0 {
            return Got::Eof;
        }
        buf.truncate(n as usize);
        Got::Msg(buf)
    }

    fn recv(&self) -> Got {
        self.recv_within(WAIT)
    }
}

struct DPair {
    a: Datapath,
    b: Datapath,
    client: App,
    server: App,
    a_flow: u64,
    b_flow: u64,
}

fn dgram_pair(name: &str, a: Datapath, b: Datapath) -> DPair {
    b.listen_datagram(3);
    apply(&b, 1, vec![demux(name, 3)]);
    apply(&a, 1, vec![forward(name, &[(sal(&b), 0)])]);
    let (client, fd) = seqpacket_pair();
    a.connect_datagram(9, sid(name), fd, WAIT).unwrap();
    let a_flow = match Events::new(&a).wait("connected", is_connected) {
        Event::Connected { flow_id, .. } => flow_id,
        _ => unreachable!(),
    };
    let (b_flow, server) = match Events::new(&b).wait("accepted", is_accepted) {
        Event::Accepted {
            flow_id, app_fd, ..
        } => (flow_id, App(app_fd)),
        _ => unreachable!(),
    };
    DPair {
        a,
        b,
        client,
        server,
        a_flow,
        b_flow,
    }
}

fn wait_stat(dp: &Datapath, name: &str, at_least: u64) {
    let end = Instant::now() + WAIT;
    while stat(dp, name) < at_least {
        assert!(Instant::now() < end, "{name} stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn closed_reason(ev: Event) -> String {
    match ev {
        Event::FlowClosed { reason, .. } => reason,
        e => panic!("not FlowClosed: {e:?}"),
    }
}

fn is_closed(e: &Event) -> bool {
    matches!(e, Event::FlowClosed { .. })
}

fn is_migrated(e: &Event) -> bool {
    matches!(e, Event::Migrated { .. })
}

/// Ping-pong until one round trip works (loss is allowed, not expected on loopback).
fn round_trip(p: &DPair, msg: &[u8]) {
    p.client.send(msg);
    assert_eq!(p.server.recv(), Got::Msg(msg.to_vec()));
    p.server.send(msg);
    assert_eq!(p.client.recv(), Got::Msg(msg.to_vec()));
}

#[test]
fn messages_keep_their_boundaries_both_ways_and_close_is_eof() {
    let p = dgram_pair(
        "echo.dgram",
        dstart(&["127.0.0.1:0"]),
        dstart(&["127.0.0.1:0"]),
    );
    for (i, len) in [1usize, 7, 1200, 9000, 60_000, 65_467]
        .into_iter()
        .enumerate()
    {
        let m = pattern(len, i as u64);
        round_trip(&p, &m);
    }
    for i in 0..20u8 {
        p.client.send(&[i; 3]);
    }
    for i in 0..20u8 {
        assert_eq!(
            p.server.recv(),
            Got::Msg(vec![i; 3]),
            "one message per send"
        );
    }
    // The counters are bumped just after the app can have the message.
    wait_stat(&p.a, "dgram_out", 26);
    wait_stat(&p.b, "dgram_in", 26);
    // App close -> FIN -> the peer's app reads EOF; its close ends both.
    drop(p.client);
    assert_eq!(p.server.recv(), Got::Eof);
    drop(p.server);
    assert_eq!(
        closed_reason(Events::new(&p.b).wait("closed", is_closed)),
        "fin"
    );
    assert_eq!(
        closed_reason(Events::new(&p.a).wait("closed", is_closed)),
        "fin"
    );
    assert_eq!(stat(&p.a, "dgram_flows_active"), 0);
}

#[test]
fn oversized_message_is_dropped_and_counted() {
    let p = dgram_pair(
        "big.dgram",
        dstart(&["127.0.0.1:0"]),
        dstart(&["127.0.0.1:0"]),
    );
    p.client.send(&vec![1u8; flow::MAX_MESSAGE + 1]);
    p.client.send(b"after");
    assert_eq!(p.server.recv(), Got::Msg(b"after".to_vec()));
    assert_eq!(stat(&p.a, "dgram_oversized"), 1);
    assert!(stat(&p.a, "dgram_dropped") >= 1);
}

#[test]
fn no_listener_is_refused_with_reason() {
    let a = dstart(&["127.0.0.1:0"]);
    let b = dstart(&["127.0.0.1:0"]);
    apply(&a, 1, vec![forward("none.dgram", &[(sal(&b), 0)])]);
    let (_app, fd) = seqpacket_pair();
    a.connect_datagram(1, sid("none.dgram"), fd, WAIT).unwrap();
    match Events::new(&a).wait("failed", |e| matches!(e, Event::ConnectFailed { .. })) {
        Event::ConnectFailed { reason, tried, .. } => {
            assert_eq!(tried, vec![(sal(&b), "no service".to_string())]);
            assert!(reason.contains(&sid("none.dgram").to_hex()), "{reason}");
        }
        _ => unreachable!(),
    }
    assert_eq!(stat(&b, "flows_refused"), 1);
}

#[test]
fn a_stream_listener_does_not_take_datagram_flows() {
    let a = dstart(&["127.0.0.1:0"]);
    let b = dstart(&["127.0.0.1:0"]);
    b.listen(4, None);
    apply(&b, 1, vec![demux("kind.dgram", 4)]);
    apply(&a, 1, vec![forward("kind.dgram", &[(sal(&b), 0)])]);
    let (_app, fd) = seqpacket_pair();
    a.connect_datagram(1, sid("kind.dgram"), fd, WAIT).unwrap();
    Events::new(&a).wait("failed", |e| matches!(e, Event::ConnectFailed { .. }));
}

#[test]
fn set_up_fails_over_from_a_silent_target() {
    let a = dstart(&["127.0.0.1:0"]);
    let b = dstart(&["127.0.0.1:0"]);
    // A bound UDP port that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    b.listen_datagram(3);
    apply(&b, 1, vec![demux("fo.dgram", 3)]);
    apply(&a, 1, vec![forward("fo.dgram", &[(dead, 0), (sal(&b), 1)])]);
    let (client, fd) = seqpacket_pair();
    a.connect_datagram(5, sid("fo.dgram"), fd, WAIT).unwrap();
    let mut ev = Events::new(&a);
    match ev.wait("target failed", |e| matches!(e, Event::TargetFailed { .. })) {
        Event::TargetFailed { target, reason, .. } => {
            assert_eq!(target, dead);
            assert_eq!(reason, "timeout");
        }
        _ => unreachable!(),
    }
    match ev.wait("connected", is_connected) {
        Event::Connected { target, .. } => assert_eq!(target, sal(&b)),
        _ => unreachable!(),
    }
    let server = match Events::new(&b).wait("accepted", is_accepted) {
        Event::Accepted { app_fd, .. } => App(app_fd),
        _ => unreachable!(),
    };
    client.send(b"hi");
    assert_eq!(server.recv(), Got::Msg(b"hi".to_vec()));
    assert_eq!(stat(&a, "failovers"), 1);
}

#[test]
fn removed_address_moves_the_flow_with_an_rsyn_and_messages_continue() {
    let b = dstart(&["127.0.0.1:0", "127.0.0.2:0"]);
    let p = dgram_pair("move.dgram", dstart(&["127.0.0.1:0"]), b);
    round_trip(&p, b"before");
    let second = p.b.sal_addresses()[1];
    p.b.address_removed("127.0.0.1".parse().unwrap());
    match Events::new(&p.a).wait("migrated", is_migrated) {
        Event::Migrated {
            flow_id, remote, ..
        } => {
            assert_eq!(flow_id, p.a_flow);
            assert_eq!(remote, second, "A now sends to B's remaining address");
        }
        _ => unreachable!(),
    }
    match Events::new(&p.b).wait("migrated", is_migrated) {
        Event::Migrated { local, .. } => assert_eq!(local, second),
        _ => unreachable!(),
    }
    for i in 0..5u8 {
        round_trip(&p, &[i; 100]);
    }
    assert!(stat(&p.a, "migrations") >= 1 && stat(&p.b, "migrations") >= 1);
}

#[test]
fn forged_rsyn_is_ignored_and_counted() {
    let p = dgram_pair(
        "forge.dgram",
        dstart(&["127.0.0.1:0"]),
        dstart(&["127.0.0.1:0"]),
    );
    let mallory = UdpSocket::bind("127.0.0.1:0").unwrap();
    mallory
        .send_to(&forged_rsyn(p.b_flow, p.a_flow), sal(&p.b))
        .unwrap();
    mallory
        .send_to(&forged_rsyn(0x1234_5678, p.a_flow), sal(&p.b))
        .unwrap();
    wait_stat(&p.b, "rsyn_rejected", 2);
    // B still sends to A (not to mallory), and nothing moved.
    round_trip(&p, b"still here");
    let mut buf = [0u8; 256];
    mallory
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(mallory.recv_from(&mut buf).is_err(), "mallory got a frame");
    let mut ev = Events::new(&p.b);
    ev.drain();
    assert!(!ev.seen.iter().any(is_migrated), "{:?}", ev.seen);
}

/// A hand-driven acceptor (the pure machine on a plain UDP socket) that
/// completes the set-up and then falls silent: the keep-alive ends the flow.
#[test]
fn keepalive_ends_a_flow_whose_peer_fell_silent() {
    let mut cfg = dcfg(&["127.0.0.1:0"]);
    cfg.dgram_flow.keepalive_idle_ms = 200;
    cfg.dgram_flow.keepalive_interval_ms = 100;
    cfg.dgram_flow.keepalive_probes = 2;
    let a = Datapath::start(cfg).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    apply(
        &a,
        1,
        vec![forward("quiet.dgram", &[(peer.local_addr().unwrap(), 0)])],
    );
    let (_client, fd) = seqpacket_pair();
    a.connect_datagram(1, sid("quiet.dgram"), fd, WAIT).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from): (usize, SocketAddr) = peer.recv_from(&mut buf).unwrap();
    let syn = SynInfo::parse(&wire::decode_datagram(&buf[..n]).unwrap()).unwrap();
    let mut acc = flow::accept(Config::message(), &syn, 0x77, 0x99, 0);
    for e in acc.take_effects() {
        if let Effect::Send(f) = e {
            let mut out = Vec::new();
            wire::encode(&f.as_frame(), &mut out).unwrap();
            peer.send_to(&out, from).unwrap();
        }
    }
    let mut ev = Events::new(&a);
    ev.wait("connected", is_connected);
    let t0 = Instant::now();
    assert_eq!(closed_reason(ev.wait("closed", is_closed)), "timeout");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(stat(&a, "dgram_keepalive_timeouts"), 1);
    // The probes reached the silent peer.
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut probes = 0;
    while let Ok((n, _)) = peer.recv_from(&mut buf) {
        let f = wire::decode_datagram(&buf[..n]).unwrap();
        probes += usize::from(f.header.flags & wire::FLAG_ACK_NOW != 0);
    }
    assert!(probes >= 2, "{probes} probes");
}
